//! The landing: the `raw`, `gaps`, `deadletter` and `devices` Delta tables under the data
//! root (a local directory or S3), through the shared table layer (`gridmeter_tables`).
//!
//! A sealed WAL segment is landed as at most one commit per table, each with the Delta
//! transaction id `(collector/<collector_id>, segment)`. Landing a segment again (replay
//! after a crash anywhere between "files written" and "checkpoint written") finds the
//! commits that landed and writes only what is missing: a reading is never committed twice
//! by one collector. Data file names are derived from `(collector_id, segment, part)`:
//!
//! | table | data files |
//! |---|---|
//! | raw | `raw/date=YYYY-MM-DD/<collector>-<segment:016>-<part>.parquet` (event date of `ts`) |
//! | dead letters | `deadletter/date=YYYY-MM-DD/<collector>-<segment:016>.parquet` (date of `received_at`) |
//! | gaps | `gaps/<collector>-<segment:016>.parquet` |
//! | devices | `devices/<collector>-<version:020>.parquet`: the whole table, rewritten when a metadata document changes it (`gridmeter_tables::devices`) |
//!
//! A commit that returned is durable (fsync'd on a local directory, a completed PUT on S3),
//! so "landed" — what the confirmations to the devices promise — means "committed".

use std::sync::Arc;

use gridmeter_core::store::DataRoot;
use gridmeter_tables::delta::Staged;
use gridmeter_tables::parquet_io::Profile;
use gridmeter_tables::{deadletter, devices, gaps, raw, Root, Table};

use crate::config::CollectorConfig;
use crate::process::{RawRow, SegmentOutput};

pub use gridmeter_tables::raw::MAX_ROWS_PER_FILE;

#[derive(Debug, thiserror::Error)]
pub enum LandingError {
    #[error(transparent)]
    Table(#[from] gridmeter_tables::TableError),
    #[error(transparent)]
    OpenStore(#[from] gridmeter_core::store::StoreError),
    #[error("{0}")]
    Config(String),
}

/// Where the collector writes its tables.
#[derive(Clone, Debug)]
pub struct Landing {
    root: Root,
    raw: Arc<Table>,
    gaps: Arc<Table>,
    dead: Arc<Table>,
    devices: Arc<devices::Writer>,
    collector_id: String,
}

/// The crash point between a segment's data files and its commit (crash tests).
pub const CRASH_AFTER_DATA_FILES: &str = "collector_after_data_files";

impl Landing {
    /// Opens the data root a config names and its three tables (created if missing).
    pub async fn open(cfg: &CollectorConfig) -> Result<Landing, LandingError> {
        let root = Root::open(&DataRoot::choose(
            cfg.data_root.as_deref(),
            cfg.object_store.as_ref(),
        )?)?;
        Landing::on(root, &cfg.collector_id).await
    }

    /// The tables under an opened data root, written as `collector_id`. Each table is
    /// created when the collector first writes to it.
    pub async fn on(root: Root, collector_id: &str) -> Result<Landing, LandingError> {
        Ok(Landing {
            raw: Arc::new(Table::lazy(&root, raw::spec())?),
            gaps: Arc::new(Table::lazy(&root, gaps::spec())?),
            dead: Arc::new(Table::lazy(&root, deadletter::spec())?),
            devices: Arc::new(devices::Writer::new(&root, collector_id)?),
            root,
            collector_id: collector_id.to_string(),
        })
    }

    /// The data root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The `raw` table.
    pub fn raw(&self) -> &Table {
        &self.raw
    }

    /// The `deadletter` table.
    pub fn deadletter(&self) -> &Table {
        &self.dead
    }

    /// The transaction application id of this collector's commits.
    pub fn app_id(&self) -> String {
        format!("collector/{}", self.collector_id)
    }

    /// The `devices` table.
    pub fn devices(&self) -> &Table {
        self.devices.table()
    }

    /// Commits every row of a segment, exactly once; returns the bytes of data written (0
    /// for what had been committed before). The segment's metadata documents are merged
    /// into `devices` (idempotent: a replay finds nothing newer to write).
    pub async fn write_segment(
        &self,
        segment: u64,
        out: &SegmentOutput,
    ) -> Result<(u64, devices::Upserted), LandingError> {
        let raw = self.stage_raw(segment, &out.raw).await?;
        self.commit_segment(segment, out, &raw).await
    }

    /// The first stage of [`Landing::write_segment`]: encodes and writes a segment's raw
    /// data files, uncommitted (nothing if the segment's raw commit exists). The next
    /// segment's files can be staged while this one commits; segments commit in order.
    pub async fn stage_raw(
        &self,
        segment: u64,
        rows: &[RawRow],
    ) -> Result<StagedRaw, LandingError> {
        let version = txn_version(segment)?;
        let files = raw::plan(&self.file_prefix(segment), rows)?;
        Ok(StagedRaw(
            self.raw
                .stage_once(
                    &self.app_id(),
                    version,
                    files,
                    Profile::Raw,
                    CRASH_AFTER_DATA_FILES,
                )
                .await?,
        ))
    }

    /// The second stage of [`Landing::write_segment`]: commits a segment's dead letters,
    /// gaps and metadata documents, then its staged raw files. Returns the bytes of data
    /// written by both stages.
    pub async fn commit_segment(
        &self,
        segment: u64,
        out: &SegmentOutput,
        raw: &StagedRaw,
    ) -> Result<(u64, devices::Upserted), LandingError> {
        let name = self.file_prefix(segment);
        let version = txn_version(segment)?;
        // Dead letters, gaps and devices first, raw last: a crash in between replays the
        // segment, and each table skips what it holds already.
        let mut bytes = self
            .append(
                &self.dead,
                segment,
                version,
                deadletter::plan(&name, &out.dead)?,
                Profile::Standard,
            )
            .await?;
        bytes += self
            .append(
                &self.gaps,
                segment,
                version,
                gaps::plan(&name, &out.gaps)?,
                Profile::Standard,
            )
            .await?;
        let updated = self.devices.upsert(&out.devices).await?;
        if let Some(staged) = &raw.0 {
            let r = self.raw.commit_staged(staged).await?;
            log_retries(&self.raw, segment, r.retries);
            bytes += r.bytes;
        }
        Ok((bytes, updated))
    }

    /// The prefix of a segment's data file names.
    fn file_prefix(&self, segment: u64) -> String {
        format!("{}-{segment:016}", self.collector_id)
    }

    /// Appends one table's files of a segment exactly once; returns the bytes written.
    async fn append(
        &self,
        table: &Table,
        segment: u64,
        version: i64,
        files: Vec<gridmeter_tables::delta::NewFile>,
        profile: Profile,
    ) -> Result<u64, LandingError> {
        let r = table
            .append_once(
                &self.app_id(),
                version,
                files,
                profile,
                CRASH_AFTER_DATA_FILES,
            )
            .await?;
        log_retries(table, segment, r.retries);
        Ok(r.bytes)
    }
}

/// A segment's raw data files, written and not yet committed ([`Landing::stage_raw`]).
#[derive(Debug, Default)]
pub struct StagedRaw(Option<Staged>);

/// The Delta transaction version of a segment.
fn txn_version(segment: u64) -> Result<i64, LandingError> {
    i64::try_from(segment)
        .map_err(|_| LandingError::Config(format!("segment {segment} is above 2^63 - 1")))
}

fn log_retries(table: &Table, segment: u64, retries: usize) {
    if retries > 0 {
        tracing::debug!(
            table = table.name(),
            segment,
            retries,
            "commit retried after concurrent commits"
        );
    }
}
