//! Parquet encoding of the data files.

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::TableError;

/// How a table's files are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Raw readings, written at ingest speed: zstd level 1; min/max statistics where readers
    /// prune on them (device_id, seq, ts, value, received_at), none for the low-cardinality
    /// descriptive columns; seq, ts and received_at delta-encoded (sorted runs shrink to a
    /// few bits a value), no dictionary for nearly unique columns. ≈ 4 bytes a reading.
    Raw,
    /// Everything else: zstd, default encodings.
    Standard,
}

/// Encodes a batch as one Parquet file (fixed `created_by`, so the bytes depend only on the
/// rows).
pub fn encode(batch: &RecordBatch, profile: Profile) -> Result<Vec<u8>, TableError> {
    let mut props = WriterProperties::builder()
        .set_created_by("gridmeter".into())
        .set_max_row_group_row_count(Some(256 * 1024));
    props = match profile {
        Profile::Raw => {
            let mut p = props.set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?));
            for column in ["channel", "kind", "unit", "quality"] {
                p = p.set_column_statistics_enabled(
                    ColumnPath::from(column),
                    EnabledStatistics::None,
                );
            }
            for column in ["seq", "ts", "received_at", "value"] {
                p = p.set_column_dictionary_enabled(ColumnPath::from(column), false);
            }
            for column in ["seq", "ts", "received_at"] {
                p = p.set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
            }
            p
        }
        Profile::Standard => props.set_compression(Compression::ZSTD(Default::default())),
    };
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props.build()))?;
    w.write(batch)?;
    w.close()?;
    Ok(buf)
}
