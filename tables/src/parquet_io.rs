//! Parquet encoding of the data files.

use std::sync::Arc;

use arrow::array::RecordBatch;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowRowGroupWriterFactory};
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;

use crate::TableError;

/// How a table's files are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Raw readings, written at ingest speed: zstd level 1; min/max statistics where readers
    /// prune on them (device_id, seq, ts, value, received_at), none for the low-cardinality
    /// descriptive columns; seq, ts and received_at delta-encoded (sorted runs shrink to a
    /// few bits a value). No dictionaries: the string columns come in runs (rows sorted by
    /// device) or from a handful of values, which zstd shrinks as well as a dictionary
    /// would, and arrow-rs's dictionary encoder costs a hash lookup a value (more than half
    /// of a segment's encoding time with dictionaries). ≈ 4 bytes a reading.
    Raw,
    /// Everything else: zstd, default encodings.
    Standard,
}

/// Rows per row group.
const ROW_GROUP_ROWS: usize = 256 * 1024;

/// Encodes a batch as one Parquet file (fixed `created_by`, so the bytes depend only on the
/// rows). The column chunks of a row group are encoded in parallel on the rayon pool and
/// appended in schema order: the bytes are those `ArrowWriter` writes with the same
/// properties.
pub fn encode(batch: &RecordBatch, profile: Profile) -> Result<Vec<u8>, TableError> {
    let mut props = properties(profile)?;
    let schema = batch.schema();
    let parquet_schema = ArrowSchemaConverter::new()
        .with_coerce_types(props.coerce_types())
        .convert(&schema)?;
    add_encoded_arrow_schema_to_metadata(&schema, &mut props);
    let props = Arc::new(props);
    let mut buf = Vec::new();
    let mut file =
        SerializedFileWriter::new(&mut buf, parquet_schema.root_schema_ptr(), props.clone())?;
    let factory = ArrowRowGroupWriterFactory::new(&file, schema.clone());
    let mut offset = 0;
    let mut index = 0;
    while offset < batch.num_rows() {
        let rows = batch.slice(offset, ROW_GROUP_ROWS.min(batch.num_rows() - offset));
        let mut leaves = Vec::new();
        for (field, column) in schema.fields().iter().zip(rows.columns()) {
            leaves.extend(compute_leaves(field, column)?);
        }
        let writers = factory.create_column_writers(index)?;
        let chunks = writers
            .into_par_iter()
            .zip(leaves)
            .map(|(mut writer, leaf)| {
                writer.write(&leaf)?;
                writer.close()
            })
            .collect::<Result<Vec<ArrowColumnChunk>, ParquetError>>()?;
        let mut group = file.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut group)?;
        }
        group.close()?;
        offset += rows.num_rows();
        index += 1;
    }
    file.close()?;
    Ok(buf)
}

/// The writer properties of a profile.
fn properties(profile: Profile) -> Result<WriterProperties, TableError> {
    let mut props = WriterProperties::builder()
        .set_created_by("gridmeter".into())
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    props = match profile {
        Profile::Raw => {
            let mut p = props
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
                .set_dictionary_enabled(false);
            for column in ["channel", "kind", "unit", "quality"] {
                p = p.set_column_statistics_enabled(
                    ColumnPath::from(column),
                    EnabledStatistics::None,
                );
            }
            for column in ["seq", "ts", "received_at"] {
                p = p.set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
            }
            p
        }
        Profile::Standard => props.set_compression(Compression::ZSTD(Default::default())),
    };
    Ok(props.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, Decimal128Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use parquet::arrow::ArrowWriter;

    /// The reference: one `ArrowWriter` over the whole batch.
    fn serial(batch: &RecordBatch, profile: Profile) -> Vec<u8> {
        let mut buf = Vec::new();
        let props = properties(profile).unwrap();
        let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        buf
    }

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("seq", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("value", DataType::Decimal128(38, 9), false),
            Field::new("quality", DataType::Utf8, true),
        ]));
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| format!("dev-{}", i / 1000)),
        ));
        let seqs: ArrayRef = Arc::new(Int64Array::from_iter_values(
            (0..rows as i64).map(|i| i * 3),
        ));
        let quality: ArrayRef = Arc::new(StringArray::from_iter(
            (0..rows).map(|i| (i % 7 == 0).then_some("estimated")),
        ));
        let ts: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                (0..rows as i64).map(|i| 1_795_000_000_000_000 + i * 60_000_000),
            )
            .with_timezone("UTC"),
        );
        let value: ArrayRef = Arc::new(
            Decimal128Array::from_iter_values((0..rows as i128).map(|i| i * 1_250_000_000 + 7))
                .with_precision_and_scale(38, 9)
                .unwrap(),
        );
        RecordBatch::try_new(schema, vec![ids, seqs, ts, value, quality]).unwrap()
    }

    /// Parallel column encoding writes the bytes `ArrowWriter` writes, for empty batches, one
    /// row group and several.
    #[test]
    fn parallel_encoding_is_byte_identical_to_the_arrow_writer() {
        for rows in [0, 1, 5_000, ROW_GROUP_ROWS, ROW_GROUP_ROWS * 2 + 17] {
            for profile in [Profile::Raw, Profile::Standard] {
                let b = batch(rows);
                assert_eq!(
                    encode(&b, profile).unwrap(),
                    serial(&b, profile),
                    "{rows} rows, {profile:?}"
                );
            }
        }
    }
}
