//! Table `devices`: which physical meters stand behind each device's channels (nameplate
//! data: manufacturer, model, serial, firmware, bus address), one row per meter of the
//! device's latest metadata document ([`gridmeter_core::wire::meta`]). Written by the
//! collectors from the retained `gridmeter/v1/{device_id}/meta` messages; read by anyone
//! who needs to know which meter a usage row came from (join on `device_id` and a channel in
//! `channels`).
//!
//! The table is small (a few rows per device) and is kept as the current state: a change
//! rewrites it whole, in one commit that removes every file of the snapshot it read and adds
//! one file ([`Writer::upsert`]). A document replaces a device's rows when it is newer (its
//! `ts`; at equal `ts`, a different document received later wins), so applying documents
//! again, in any order, from several collectors, ends in the same table. Two writers that
//! rewrite at once conflict on the files both remove; the loser re-reads and merges again.
//! Only the very first commits, into an empty table, cannot conflict: a reader then takes
//! each device's rows from its newest document ([`current`]), and the next rewrite leaves
//! one row set per device.
//!
//! A document listing no meters removes the device's rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Int32Type, TimestampMicrosecondType};
use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};
use gridmeter_core::schema;
use gridmeter_core::wire::meta::DeviceMeta;

use crate::delta::{Table, TableSpec};
use crate::parquet_io::Profile;
use crate::root::Root;
use crate::TableError;

/// The table's directory under the data root.
pub const TABLE: &str = "devices";

/// The layout of `devices`.
pub fn spec() -> TableSpec {
    TableSpec {
        name: TABLE.into(),
        schema: schema::devices(),
        partitioned: false,
        append_only: false,
        stats_columns: &["device_id", "meta_ts"],
        log_retention: "interval 7 days",
    }
}

/// Opens (creates) `devices` under `root`.
pub async fn open(root: &Root) -> Result<Table, TableError> {
    Table::open(root, spec()).await
}

/// One meter of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub device_id: String,
    /// Position of the meter in the device's document, from 0.
    pub meter: i32,
    pub source: String,
    pub protocol: String,
    pub address: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware: Option<String>,
    pub channels: Vec<String>,
    pub agent_version: Option<String>,
    /// The document's `ts` (µs, UTC).
    pub meta_ts_us: i64,
    /// When the collector received the document (µs, UTC).
    pub received_at_us: i64,
}

/// A device's metadata document as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub meta: DeviceMeta,
    pub received_at_us: i64,
}

/// The rows of one document.
pub fn rows_of(doc: &Received) -> Vec<DeviceRow> {
    let m = &doc.meta;
    let ts = m.ts.timestamp_micros();
    m.meters
        .iter()
        .enumerate()
        .map(|(i, meter)| DeviceRow {
            device_id: m.device_id.to_string(),
            meter: i32::try_from(i).unwrap_or(i32::MAX),
            source: meter.source.clone(),
            protocol: meter.protocol.clone(),
            address: meter.address.clone(),
            manufacturer: meter.manufacturer.clone(),
            model: meter.model.clone(),
            serial: meter.serial.clone(),
            firmware: meter.firmware.clone(),
            channels: meter.channels.clone(),
            agent_version: m.agent_version.clone(),
            meta_ts_us: ts,
            received_at_us: doc.received_at_us,
        })
        .collect()
}

/// Rows as a batch of `schema::devices()`.
pub fn batch(rows: &[DeviceRow]) -> Result<RecordBatch, TableError> {
    let text = |f: fn(&DeviceRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let opt = |f: fn(&DeviceRow) -> Option<&str>| -> ArrayRef {
        Arc::new(StringArray::from_iter(rows.iter().map(f)))
    };
    let ts = |f: fn(&DeviceRow) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        text(|r| &r.device_id),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.meter))),
        text(|r| &r.source),
        text(|r| &r.protocol),
        opt(|r| r.address.as_deref()),
        opt(|r| r.manufacturer.as_deref()),
        opt(|r| r.model.as_deref()),
        opt(|r| r.serial.as_deref()),
        opt(|r| r.firmware.as_deref()),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.channels.join(",")),
        )),
        opt(|r| r.agent_version.as_deref()),
        ts(|r| r.meta_ts_us),
        ts(|r| r.received_at_us),
    ];
    Ok(RecordBatch::try_new(schema::devices(), columns)?)
}

fn column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    want: &DataType,
) -> Result<&'a ArrayRef, TableError> {
    let c = batch.column_by_name(name).ok_or_else(|| TableError::Data {
        table: TABLE.into(),
        message: format!("column {name} missing"),
    })?;
    let same = match (c.data_type(), want) {
        (DataType::Timestamp(a, _), DataType::Timestamp(b, _)) => a == b,
        (a, b) => a == b,
    };
    if !same {
        return Err(TableError::Data {
            table: TABLE.into(),
            message: format!(
                "column {name} is {} but the schema says {want}",
                c.data_type()
            ),
        });
    }
    Ok(c)
}

/// The inverse of [`batch`].
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<DeviceRow>, TableError> {
    let text = |n: &str| -> Result<StringArray, TableError> {
        Ok(column(batch, n, &DataType::Utf8)?
            .as_string::<i32>()
            .clone())
    };
    let ts = |n: &str| -> Result<TimestampMicrosecondArray, TableError> {
        Ok(column(batch, n, &schema::ts_type())?
            .as_primitive::<TimestampMicrosecondType>()
            .clone())
    };
    let (device, source, protocol, address, manufacturer, model, serial, firmware, channels, agent) = (
        text("device_id")?,
        text("source")?,
        text("protocol")?,
        text("address")?,
        text("manufacturer")?,
        text("model")?,
        text("serial")?,
        text("firmware")?,
        text("channels")?,
        text("agent_version")?,
    );
    let meter = column(batch, "meter", &DataType::Int32)?
        .as_primitive::<Int32Type>()
        .clone();
    let (meta_ts, received) = (ts("meta_ts")?, ts("received_at")?);
    let opt = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    Ok((0..batch.num_rows())
        .map(|i| DeviceRow {
            device_id: device.value(i).to_string(),
            meter: meter.value(i),
            source: source.value(i).to_string(),
            protocol: protocol.value(i).to_string(),
            address: opt(&address, i),
            manufacturer: opt(&manufacturer, i),
            model: opt(&model, i),
            serial: opt(&serial, i),
            firmware: opt(&firmware, i),
            channels: channels
                .value(i)
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            agent_version: opt(&agent, i),
            meta_ts_us: meta_ts.value(i),
            received_at_us: received.value(i),
        })
        .collect())
}

/// Each device's rows: the newest document's (see the module docs), meters in order.
pub type Current = BTreeMap<String, Vec<DeviceRow>>;

/// Groups rows by device, keeping per device the rows of its newest document: the highest
/// `(meta_ts, received_at)`.
pub fn current(rows: impl IntoIterator<Item = DeviceRow>) -> Current {
    let mut out: Current = BTreeMap::new();
    for r in rows {
        let rows = out.entry(r.device_id.clone()).or_default();
        let key = |r: &DeviceRow| (r.meta_ts_us, r.received_at_us);
        match rows.first().map(key) {
            Some(k) if k > key(&r) => continue,
            Some(k) if k < key(&r) => rows.clear(),
            _ => {}
        }
        if !rows.iter().any(|x| x.meter == r.meter) {
            rows.push(r);
        }
    }
    for rows in out.values_mut() {
        rows.sort_by_key(|r| r.meter);
    }
    out
}

/// Reads the current rows of a snapshot of `table`.
pub async fn read(table: &Table, snapshot: &crate::Snapshot) -> Result<Current, TableError> {
    let mut rows = Vec::new();
    for f in snapshot.files() {
        for b in table.read_file(&f, None).await? {
            rows.extend(from_batch(&b)?);
        }
    }
    Ok(current(rows))
}

/// Whether `doc` changes what `now` holds for its device.
fn changes(now: Option<&Vec<DeviceRow>>, new: &[DeviceRow], doc: &Received) -> bool {
    let Some(now) = now.filter(|r| !r.is_empty()) else {
        return !new.is_empty();
    };
    let held = (now[0].meta_ts_us, now[0].received_at_us);
    let doc_ts = doc.meta.ts.timestamp_micros();
    if doc_ts != held.0 {
        return doc_ts > held.0;
    }
    // Same document time: only a different document, received later, replaces it.
    let same = now.len() == new.len()
        && now.iter().zip(new).all(|(a, b)| {
            DeviceRow {
                received_at_us: b.received_at_us,
                ..a.clone()
            } == *b
        });
    !same && doc.received_at_us > held.1
}

/// What [`Writer::upsert`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upserted {
    /// Devices whose rows changed.
    pub devices: usize,
    /// The version committed, `None` when nothing changed.
    pub version: Option<i64>,
    /// Commits lost to concurrent writers and re-planned.
    pub retries: usize,
}

/// Keeps `devices` up to date for one writer (a collector).
pub struct Writer {
    table: Table,
    /// Names this writer's data files.
    writer_id: String,
    /// The rows of the version last read or written, to spare a re-read per document.
    cached: tokio::sync::Mutex<Option<(i64, Current)>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("devices::Writer")
            .field("writer_id", &self.writer_id)
            .finish()
    }
}

impl Writer {
    /// A writer of `devices` under `root` whose data files are named after `writer_id`; the
    /// table is created at the first change.
    pub fn new(root: &Root, writer_id: &str) -> Result<Writer, TableError> {
        Ok(Writer {
            table: Table::lazy(root, spec())?,
            writer_id: writer_id.to_string(),
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Applies `docs` (in any order; each replaces its device's rows if it is newer, see the
    /// module docs) in at most one commit.
    pub async fn upsert(&self, docs: &[Received]) -> Result<Upserted, TableError> {
        let mut out = Upserted::default();
        if docs.is_empty() {
            return Ok(out);
        }
        let mut cached = self.cached.lock().await;
        for _ in 0..crate::MAX_REPLANS {
            let snapshot = self.table.snapshot().await?;
            let mut now = match cached.take() {
                Some((v, rows)) if v == snapshot.version() => rows,
                _ => read(&self.table, &snapshot).await?,
            };
            let mut changed = 0;
            for doc in docs {
                let device = doc.meta.device_id.to_string();
                let new = rows_of(doc);
                if changes(now.get(&device), &new, doc) {
                    changed += 1;
                    if new.is_empty() {
                        now.remove(&device);
                    } else {
                        now.insert(device, new);
                    }
                }
            }
            if changed == 0 {
                *cached = Some((snapshot.version(), now));
                return Ok(out);
            }
            let mut actions: Vec<Action> =
                snapshot.files().iter().map(|f| f.remove(true)).collect();
            let rows: Vec<DeviceRow> = now.values().flatten().cloned().collect();
            let path = format!("{}-{:020}.parquet", self.writer_id, snapshot.version() + 1);
            let add = self
                .table
                .write_file(&path, None, &batch(&rows)?, Profile::Standard, &[])
                .await?;
            actions.push(Action::Add(add));
            let op = DeltaOperation::Write {
                mode: SaveMode::Overwrite,
                partition_by: None,
                predicate: None,
            };
            match self.table.commit(&snapshot, actions, op, None).await {
                Ok(v) => {
                    *cached = Some((v, now));
                    out.devices = changed;
                    out.version = Some(v);
                    return Ok(out);
                }
                Err(e) if e.is_conflict() => {
                    out.retries += 1;
                    tracing::debug!(table = TABLE, "rewrite conflicted, merging again: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Err(TableError::Conflict {
            table: TABLE.into(),
            message: format!("still conflicting after {} attempts", crate::MAX_REPLANS),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use gridmeter_core::store::DataRoot;
    use gridmeter_core::wire::meta::{Meter, VERSION};
    use gridmeter_core::DeviceId;

    fn doc(device: &str, ts: i64, serial: &str, received: i64) -> Received {
        Received {
            meta: DeviceMeta {
                v: VERSION,
                device_id: DeviceId::new(device).unwrap(),
                ts: DateTime::from_timestamp(ts, 0).unwrap(),
                agent_version: Some("0.1.0".into()),
                meters: vec![
                    Meter {
                        source: "bus1".into(),
                        protocol: "modbus_rtu".into(),
                        address: Some("unit 3".into()),
                        manufacturer: Some("Eastron".into()),
                        model: Some("SDM630".into()),
                        serial: Some(serial.into()),
                        firmware: None,
                        channels: vec!["flat3.energy_import_wh".into(), "flat3.power_w".into()],
                    },
                    Meter {
                        source: "pv".into(),
                        protocol: "sunspec".into(),
                        ..Meter::default()
                    },
                ],
            },
            received_at_us: received,
        }
    }

    async fn table_rows(root: &Root) -> Current {
        let t = Table::open_existing(root, spec()).await.unwrap().unwrap();
        let s = t.snapshot().await.unwrap();
        read(&t, &s).await.unwrap()
    }

    #[test]
    fn rows_round_trip_through_a_batch() {
        let rows = rows_of(&doc("site-1", 100, "A1", 5));
        assert_eq!(rows.len(), 2);
        assert_eq!(from_batch(&batch(&rows).unwrap()).unwrap(), rows);
        assert_eq!(rows[1].channels, Vec::<String>::new());
    }

    #[tokio::test]
    async fn newer_documents_win_in_any_order_and_again_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(&DataRoot::Local(dir.path().to_path_buf())).unwrap();
        let w = Writer::new(&root, "c1").unwrap();
        let (old, new) = (doc("site-1", 100, "OLD", 1), doc("site-1", 200, "NEW", 2));
        let other = doc("site-2", 50, "B", 3);
        let first = w
            .upsert(&[new.clone(), old.clone(), other.clone()])
            .await
            .unwrap();
        assert_eq!(first.devices, 2, "{first:?}");
        // The same documents again, and the older one alone: nothing to commit.
        assert_eq!(
            w.upsert(&[old.clone(), new.clone()]).await.unwrap().version,
            None
        );
        // A second writer (another collector) that never saw the table agrees.
        let w2 = Writer::new(&root, "c2").unwrap();
        assert_eq!(w2.upsert(&[old, other]).await.unwrap().version, None);
        let rows = table_rows(&root).await;
        assert_eq!(rows["site-1"][0].serial.as_deref(), Some("NEW"));
        assert_eq!(rows["site-2"].len(), 2);
        // A document without meters removes the device.
        let mut gone = doc("site-2", 60, "B", 4);
        gone.meta.meters.clear();
        assert_eq!(w2.upsert(&[gone]).await.unwrap().devices, 1);
        let rows = table_rows(&root).await;
        assert!(!rows.contains_key("site-2"));
        // Still one data file: the table is rewritten, not appended to.
        let t = Table::open_existing(&root, spec()).await.unwrap().unwrap();
        assert_eq!(t.snapshot().await.unwrap().files().len(), 1);
    }

    #[tokio::test]
    async fn same_time_different_document_received_later_wins() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(&DataRoot::Local(dir.path().to_path_buf())).unwrap();
        let w = Writer::new(&root, "c1").unwrap();
        w.upsert(&[doc("site-1", 100, "A", 10)]).await.unwrap();
        // Received earlier: an older delivery of the same moment, ignored.
        assert_eq!(
            w.upsert(&[doc("site-1", 100, "B", 5)])
                .await
                .unwrap()
                .devices,
            0
        );
        assert_eq!(
            w.upsert(&[doc("site-1", 100, "B", 20)])
                .await
                .unwrap()
                .devices,
            1
        );
        // The same document redelivered later: not a change.
        assert_eq!(
            w.upsert(&[doc("site-1", 100, "B", 30)])
                .await
                .unwrap()
                .devices,
            0
        );
        assert_eq!(
            table_rows(&root).await["site-1"][0].serial.as_deref(),
            Some("B")
        );
    }

    #[tokio::test]
    async fn concurrent_writers_merge_instead_of_losing_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(&DataRoot::Local(dir.path().to_path_buf())).unwrap();
        // The table exists with one device, so every rewrite removes a file.
        Writer::new(&root, "seed")
            .unwrap()
            .upsert(&[doc("site-0", 1, "S", 1)])
            .await
            .unwrap();
        let writers: Vec<Writer> = (0..4)
            .map(|i| Writer::new(&root, &format!("c{i}")).unwrap())
            .collect();
        let tasks = writers.iter().enumerate().map(|(i, w)| async move {
            let docs: Vec<Received> = (0..5)
                .map(|j| doc(&format!("site-{i}-{j}"), 10, "X", 2))
                .collect();
            w.upsert(&docs).await.unwrap()
        });
        let done = futures::future::join_all(tasks).await;
        assert!(done.iter().all(|u| u.devices == 5), "{done:?}");
        let rows = table_rows(&root).await;
        assert_eq!(rows.len(), 21, "{:?}", rows.keys().collect::<Vec<_>>());
        let t = Table::open_existing(&root, spec()).await.unwrap().unwrap();
        assert_eq!(t.snapshot().await.unwrap().files().len(), 1);
    }
}
