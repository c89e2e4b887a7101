//! One Delta table under the data root: creation, snapshots, data files, exactly-once
//! commits.
//!
//! Commits go through delta-rs's commit protocol: the next `_delta_log/<version>.json` is
//! created with a conditional PUT (`PutMode::Create`: `If-None-Match: *` on S3, an atomic
//! no-clobber link on a local disk), so two writers can never both win a version; the loser
//! re-reads the winning commits and, when they do not conflict with what it read and wrote
//! (delta-rs's conflict checker), commits at the next version. A logical conflict (a file it
//! removes was removed, a transaction id it writes was written) is returned as
//! [`TableError::Conflict`]; the callers in this crate then re-plan from a fresh snapshot.
//!
//! Exactly once: a commit may carry a transaction id `(app_id, version)` (Delta's `txn`
//! action). [`Snapshot::txn_version`] gives the highest version an application committed, so
//! a writer that retries after a crash sees whether its commit landed and does not repeat it.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use chrono::NaiveDate;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake::logstore::{default_logstore, LogStoreRef, StorageConfig};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::state::DeltaTableState;
use deltalake::DeltaTableError;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use url::Url;

use crate::root::Root;
use crate::stats;
use crate::TableError;

/// How a table is laid out.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Its directory under the data root (`raw`, `usage_15m`, …), also its name.
    pub name: String,
    /// The columns of its data files.
    pub schema: SchemaRef,
    /// Partitioned by `date` (`gridmeter_core::schema::PARTITION_DATE`).
    pub partitioned: bool,
    /// `delta.appendOnly`: no commit may remove data.
    pub append_only: bool,
    /// Columns with min/max statistics in the log (data skipping for every reader).
    pub stats_columns: &'static [&'static str],
    /// `delta.logRetentionDuration`, e.g. `interval 7 days`.
    pub log_retention: &'static str,
}

impl TableSpec {
    /// The table properties it is created with.
    fn properties(&self) -> Vec<(String, String)> {
        let mut p = vec![
            ("delta.checkpointInterval".into(), "100".into()),
            (
                "delta.logRetentionDuration".into(),
                self.log_retention.into(),
            ),
            (
                "delta.deletedFileRetentionDuration".into(),
                "interval 7 days".into(),
            ),
            (
                "delta.dataSkippingStatsColumns".into(),
                self.stats_columns.join(","),
            ),
        ];
        if self.append_only {
            p.push(("delta.appendOnly".into(), "true".into()));
        }
        p
    }
}

/// One data file of a table's snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    /// Path relative to the table directory (`date=2026-01-01/c1-…-0.parquet`).
    pub path: String,
    pub size: i64,
    /// The partition, for a partitioned table.
    pub date: Option<NaiveDate>,
    /// Rows, if the log says.
    pub rows: Option<u64>,
    /// Min/max statistics of the file (Delta `stats`), if any.
    pub stats: stats::FileStats,
    /// `tags` of its `add` action.
    pub tags: HashMap<String, String>,
}

impl DataFile {
    /// The tag `key`, if set.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// The `remove` action for this file.
    pub fn remove(&self, data_change: bool) -> Action {
        let now = chrono::Utc::now().timestamp_millis();
        Action::Remove(Remove {
            path: self.path.clone(),
            deletion_timestamp: Some(now),
            data_change,
            extended_file_metadata: Some(true),
            partition_values: Some(
                self.date
                    .map(|d| {
                        [(
                            gridmeter_core::schema::PARTITION_DATE.to_string(),
                            Some(d.to_string()),
                        )]
                        .into_iter()
                        .collect()
                    })
                    .unwrap_or_default(),
            ),
            size: Some(self.size),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
        })
    }
}

/// What one commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitSummary {
    /// `WRITE`, `MERGE`, `OPTIMIZE`, `DELETE`, …
    pub operation: Option<String>,
    /// Paths of the files added.
    pub added: Vec<String>,
    /// Paths of the files removed.
    pub removed: Vec<String>,
}

/// A version of a table.
#[derive(Clone)]
pub struct Snapshot {
    state: DeltaTableState,
    log_store: LogStoreRef,
}

impl Snapshot {
    /// The table version.
    pub fn version(&self) -> i64 {
        self.state.version() as i64
    }

    /// Every data file of this version.
    pub fn files(&self) -> Vec<DataFile> {
        let mut out = Vec::new();
        for f in self.state.log_data() {
            // The only accessor that carries the `tags` of the add action.
            #[allow(deprecated)]
            let add = f.add_action();
            let date = add
                .partition_values
                .get(gridmeter_core::schema::PARTITION_DATE)
                .and_then(|v| v.as_deref())
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
            let stats = add
                .stats
                .as_deref()
                .map(stats::FileStats::parse)
                .unwrap_or_default();
            out.push(DataFile {
                path: add.path.clone(),
                size: add.size,
                date,
                rows: stats.num_records,
                stats,
                tags: add
                    .tags
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v?)))
                    .collect(),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The highest version `app_id` committed with a transaction id, if any.
    pub async fn txn_version(&self, app_id: &str) -> Result<Option<i64>, TableError> {
        self.state
            .transaction_version(self.log_store.as_ref(), app_id)
            .await
            .map_err(|e| TableError::delta(app_id, e))
    }
}

/// A Delta table under the data root.
pub struct Table {
    spec: TableSpec,
    root: Root,
    log_store: LogStoreRef,
    /// The table directory's store (paths relative to it).
    files: Arc<dyn ObjectStore>,
    /// The latest snapshot read or written, updated incrementally.
    cached: tokio::sync::Mutex<Option<DeltaTableState>>,
    /// Transaction versions this handle committed or read from the log, per application: a
    /// writer that is the only one of its application (one process per collector id, per
    /// shard) reads the log's value once, not at every commit (a log replay each time).
    /// Two processes of one application still conflict on commit.
    own_txns: tokio::sync::Mutex<HashMap<String, i64>>,
    /// Set once the table is known to exist.
    exists: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.spec.name)
            .field("at", &self.root.display(&self.spec.name))
            .finish()
    }
}

impl Table {
    fn handle(root: &Root, spec: TableSpec) -> Result<Table, TableError> {
        let url_text = format!("{}/", root.url(&spec.name));
        let url = Url::parse(&url_text)
            .map_err(|e| TableError::Invalid(format!("table URL {url_text}: {e}")))?;
        let files = root.under(&spec.name);
        let log_store = default_logstore(
            files.clone(),
            root.storage().clone(),
            &url,
            &StorageConfig::default(),
        );
        Ok(Table {
            spec,
            root: root.clone(),
            log_store,
            files,
            cached: tokio::sync::Mutex::new(None),
            own_txns: tokio::sync::Mutex::new(HashMap::new()),
            exists: tokio::sync::OnceCell::new(),
        })
    }

    /// The table, created (empty, with its schema, partitioning and properties) if it does
    /// not exist yet. Safe to call from several processes at once.
    pub async fn open(root: &Root, spec: TableSpec) -> Result<Table, TableError> {
        let table = Table::handle(root, spec)?;
        table.ensure_exists().await?;
        Ok(table)
    }

    /// The table, created (as [`Table::open`] does) only when it is first used: a writer
    /// that has not written yet leaves no trace under the data root.
    pub fn lazy(root: &Root, spec: TableSpec) -> Result<Table, TableError> {
        Table::handle(root, spec)
    }

    async fn ensure_exists(&self) -> Result<(), TableError> {
        self.exists
            .get_or_try_init(|| async {
                if self.try_snapshot_existing().await?.is_none() {
                    self.create().await?;
                }
                Ok::<(), TableError>(())
            })
            .await
            .map(|_| ())
    }

    /// The table if it exists (readers: a table nobody wrote yet is `None`).
    pub async fn open_existing(root: &Root, spec: TableSpec) -> Result<Option<Table>, TableError> {
        let table = Table::handle(root, spec)?;
        Ok(table.try_snapshot_existing().await?.map(|_| table))
    }

    async fn create(&self) -> Result<(), TableError> {
        let schema: StructType = self
            .spec
            .schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e| TableError::delta(&self.spec.name, e.into()))?;
        let mut fields: Vec<_> = schema.fields().cloned().collect();
        let mut builder = deltalake::operations::create::CreateBuilder::new()
            .with_log_store(self.log_store.clone())
            .with_table_name(self.spec.name.clone())
            .with_save_mode(SaveMode::Ignore)
            .with_configuration(
                self.spec
                    .properties()
                    .into_iter()
                    .map(|(k, v)| (k, Some(v))),
            );
        if self.spec.partitioned {
            let date: StructType =
                (&arrow::datatypes::Schema::new(vec![gridmeter_core::schema::partition_date()]))
                    .try_into_kernel()
                    .map_err(|e| TableError::delta(&self.spec.name, e.into()))?;
            fields.extend(date.fields().cloned());
            builder = builder.with_partition_columns([gridmeter_core::schema::PARTITION_DATE]);
        }
        match builder.with_columns(fields).await {
            Ok(_) => Ok(()),
            // Another writer created it first: fine, as long as it exists now.
            Err(e) => match self.try_snapshot_existing().await? {
                Some(_) => Ok(()),
                None => Err(TableError::delta(&self.spec.name, e)),
            },
        }
    }

    async fn try_snapshot_existing(&self) -> Result<Option<Snapshot>, TableError> {
        // No log (yet): not a table.
        let mut log = self.files.list(Some(&Path::from("_delta_log")));
        match futures::StreamExt::next(&mut log).await {
            None | Some(Err(object_store::Error::NotFound { .. })) => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(_)) => {}
        }
        self.load_snapshot().await.map(Some)
    }

    /// The table's name (its directory under the data root).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its layout.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// The data root it is under.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The URL of the table directory (`file:///…/raw`, `s3://bucket/prefix/raw`).
    pub fn url(&self) -> String {
        self.root.url(&self.spec.name)
    }

    /// The URL of one of its data files, for scans through [`Root::storage`].
    pub fn file_url(&self, file: &DataFile) -> String {
        format!("{}/{}", self.url(), file.path)
    }

    /// The latest version (a lazy table is created first).
    pub async fn snapshot(&self) -> Result<Snapshot, TableError> {
        self.ensure_exists().await?;
        self.load_snapshot().await
    }

    /// The latest version, for readers that must never write (`gridmeter serve`): unlike
    /// [`Table::snapshot`] it never creates the table.
    pub async fn read_snapshot(&self) -> Result<Snapshot, TableError> {
        self.load_snapshot().await
    }

    async fn load_snapshot(&self) -> Result<Snapshot, TableError> {
        let mut cached = self.cached.lock().await;
        let state = match cached.take() {
            Some(mut s) => {
                s.update(self.log_store.as_ref(), None)
                    .await
                    .map_err(|e| TableError::delta(&self.spec.name, e))?;
                s
            }
            None => DeltaTableState::try_new(self.log_store.as_ref(), None)
                .await
                .map_err(|e| TableError::delta(&self.spec.name, e))?,
        };
        *cached = Some(state.clone());
        Ok(Snapshot {
            state,
            log_store: self.log_store.clone(),
        })
    }

    /// A given version (time travel).
    pub async fn snapshot_at(&self, version: i64) -> Result<Snapshot, TableError> {
        let state = DeltaTableState::try_new(self.log_store.as_ref(), Some(version.max(0) as u64))
            .await
            .map_err(|e| TableError::delta(&self.spec.name, e))?;
        Ok(Snapshot {
            state,
            log_store: self.log_store.clone(),
        })
    }

    /// The actions of commit `version`, or `None` if that log entry is gone (cleaned up).
    pub async fn commit_actions(&self, version: i64) -> Result<Option<Vec<Action>>, TableError> {
        let Some(bytes) = self
            .log_store
            .read_commit_entry(version.max(0) as u64)
            .await
            .map_err(|e| TableError::delta(&self.spec.name, e))?
        else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: Action = serde_json::from_slice(line).map_err(|e| TableError::Data {
                table: self.spec.name.clone(),
                message: format!("commit {version}: {e}"),
            })?;
            out.push(action);
        }
        Ok(Some(out))
    }

    /// What commit `version` did: its operation and the files it added and removed (`None`
    /// if that log entry is gone).
    pub async fn commit_summary(&self, version: i64) -> Result<Option<CommitSummary>, TableError> {
        let Some(actions) = self.commit_actions(version).await? else {
            return Ok(None);
        };
        let mut out = CommitSummary::default();
        for a in actions {
            match a {
                Action::CommitInfo(ci) => out.operation = ci.operation,
                Action::Add(add) => out.added.push(add.path),
                Action::Remove(r) => out.removed.push(r.path),
                _ => {}
            }
        }
        Ok(Some(out))
    }

    /// The highest version `app_id` committed: from this handle's own commits, else from the
    /// log (once per application and handle).
    async fn committed_version(
        &self,
        snapshot: &Snapshot,
        app_id: &str,
    ) -> Result<Option<i64>, TableError> {
        if let Some(v) = self.own_txns.lock().await.get(app_id) {
            return Ok(Some(*v));
        }
        let v = snapshot.txn_version(app_id).await?;
        if let Some(v) = v {
            self.own_txns.lock().await.insert(app_id.to_string(), v);
        }
        Ok(v)
    }

    /// Whether `snapshot` (or this writer's own commits) holds a commit of `app_id` at
    /// `version` or later.
    async fn is_committed(
        &self,
        snapshot: &Snapshot,
        app_id: &str,
        version: i64,
    ) -> Result<bool, TableError> {
        Ok(self
            .committed_version(snapshot, app_id)
            .await?
            .is_some_and(|v| v >= version))
    }

    /// Encodes `batch` as Parquet (`profile`), puts it at `path` (relative to the table) and
    /// returns its `add` action (statistics of [`TableSpec::stats_columns`], `tags`).
    pub async fn write_file(
        &self,
        path: &str,
        date: Option<NaiveDate>,
        batch: &RecordBatch,
        profile: crate::parquet_io::Profile,
        tags: &[(&str, String)],
    ) -> Result<Add, TableError> {
        let bytes = crate::parquet_io::encode(batch, profile)?;
        let size = bytes.len() as i64;
        self.files
            .put(&Path::from(path), PutPayload::from(bytes))
            .await?;
        let stats = stats::of_batch(batch, self.spec.stats_columns)?;
        Ok(Add {
            path: path.to_string(),
            partition_values: date
                .map(|d| {
                    [(
                        gridmeter_core::schema::PARTITION_DATE.to_string(),
                        Some(d.to_string()),
                    )]
                    .into_iter()
                    .collect()
                })
                .unwrap_or_default(),
            size,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change: true,
            stats: Some(stats),
            tags: (!tags.is_empty()).then(|| {
                tags.iter()
                    .map(|(k, v)| (k.to_string(), Some(v.clone())))
                    .collect()
            }),
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        })
    }

    /// Reads `columns` (all when `None`) of one data file (without the partition column).
    pub async fn read_file(
        &self,
        file: &DataFile,
        columns: Option<&[&str]>,
    ) -> Result<Vec<RecordBatch>, TableError> {
        let bytes = self.read_bytes(file).await?;
        let what = || format!("{}/{}", self.spec.name, file.path);
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| TableError::Data {
                table: what(),
                message: e.to_string(),
            })?;
        let builder = match columns {
            Some(cols) => {
                let schema = builder.parquet_schema();
                for c in cols {
                    if !schema.columns().iter().any(|col| col.name() == *c) {
                        return Err(TableError::Data {
                            table: what(),
                            message: format!("missing column {c:?}"),
                        });
                    }
                }
                let mask = ProjectionMask::columns(schema, cols.iter().copied());
                builder.with_projection(mask)
            }
            None => builder,
        };
        let reader = builder
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| TableError::Data {
                table: what(),
                message: e.to_string(),
            })?;
        reader
            .map(|b| {
                b.map_err(|e| TableError::Data {
                    table: what(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// The bytes of one data file.
    pub async fn read_bytes(&self, file: &DataFile) -> Result<bytes::Bytes, TableError> {
        Ok(self
            .files
            .get(&Path::from(file.path.as_str()))
            .await?
            .bytes()
            .await?)
    }

    /// Commits `actions` on top of `snapshot` as `operation`, with the transaction id `txn`
    /// if given. Version races are retried by delta-rs; a logical conflict is
    /// [`TableError::Conflict`] (re-plan from a fresh snapshot and try again). Returns the
    /// committed version.
    pub async fn commit(
        &self,
        snapshot: &Snapshot,
        actions: Vec<Action>,
        operation: DeltaOperation,
        txn: Option<(&str, i64)>,
    ) -> Result<i64, TableError> {
        let mut props = CommitProperties::default().with_max_retries(50);
        if let Some((app, version)) = txn {
            props = props.with_application_transaction(Transaction::new_with_last_update(
                app,
                version,
                Some(chrono::Utc::now().timestamp_millis()),
            ));
        }
        let result = CommitBuilder::from(props)
            .with_actions(actions)
            .build(Some(&snapshot.state), self.log_store.clone(), operation)
            .await;
        match result {
            Ok(done) => {
                let committed = done.version() as i64;
                *self.cached.lock().await = Some(done.snapshot());
                if let Some((app, version)) = txn {
                    self.own_txns.lock().await.insert(app.to_string(), version);
                }
                Ok(committed)
            }
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(c),
            }) => Err(TableError::Conflict {
                table: self.spec.name.clone(),
                message: c.to_string(),
            }),
            Err(e) => Err(TableError::delta(&self.spec.name, e)),
        }
    }

    /// Vacuum: deletes files no version younger than `retention` needs (removed files, and
    /// files no commit ever referenced, e.g. of a writer that crashed before committing).
    /// Returns how many files were deleted. `retention` below the table's
    /// `delta.deletedFileRetentionDuration` (7 days) is refused.
    pub async fn vacuum(
        &self,
        retention: chrono::Duration,
        dry_run: bool,
    ) -> Result<usize, TableError> {
        let snapshot = self.snapshot().await?;
        let mut table = deltalake::DeltaTable::new(self.log_store.clone());
        table.state = Some(snapshot.state.clone());
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(true)
            .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
            .with_dry_run(dry_run)
            .await
            .map_err(|e| TableError::delta(&self.spec.name, e))?;
        *self.cached.lock().await = None;
        Ok(metrics.files_deleted.len())
    }
}

/// A `Write` (append) operation.
pub fn append_op(partitioned: bool) -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: partitioned.then(|| vec![gridmeter_core::schema::PARTITION_DATE.to_string()]),
        predicate: None,
    }
}

/// A data file to append: its path under the table, partition, rows and `add` tags.
pub struct NewFile {
    pub path: String,
    pub date: Option<NaiveDate>,
    pub batch: RecordBatch,
    pub tags: Vec<(&'static str, String)>,
}

/// What [`Table::append_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// The table version committed, or `None` if `(app_id, version)` was committed before.
    pub version: Option<i64>,
    /// Bytes of data written.
    pub bytes: u64,
    /// Commits lost to concurrent writers and retried.
    pub retries: usize,
}

/// The data files of one append, written and not yet committed: the first half of
/// [`Table::append_once`] ([`Table::stage_once`]), for writers that encode the next append
/// while this one commits ([`Table::commit_staged`]).
#[derive(Debug, Clone)]
pub struct Staged {
    app_id: String,
    version: i64,
    adds: Vec<Action>,
    bytes: u64,
}

impl Staged {
    /// Bytes of data written.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Table {
    /// Appends `files` exactly once for the transaction id `(app_id, version)`: if the table
    /// already holds a commit of `app_id` at `version` or later, nothing is written. The data
    /// files are written first (a crash then leaves files no commit references: invisible to
    /// readers, rewritten under the same names by the retry, deleted by vacuum otherwise),
    /// then committed with the transaction id; commits lost to concurrent writers are retried.
    /// `crash_point` names a [`crate::failpoint`] between the two steps.
    pub async fn append_once(
        &self,
        app_id: &str,
        version: i64,
        files: Vec<NewFile>,
        profile: crate::parquet_io::Profile,
        crash_point: &str,
    ) -> Result<Appended, TableError> {
        match self
            .stage(app_id, version, files, profile, crash_point)
            .await?
        {
            Some((staged, checked)) => self.commit_from(&staged, checked).await,
            None => Ok(Appended::default()),
        }
    }

    /// The first half of [`Table::append_once`]: writes the data files of `(app_id,
    /// version)`, or returns `None` if there are none or that version (or a later one) of
    /// `app_id` is committed. Appends of one `app_id` must be committed in `version` order:
    /// stage the next while this one commits, never commit it first.
    pub async fn stage_once(
        &self,
        app_id: &str,
        version: i64,
        files: Vec<NewFile>,
        profile: crate::parquet_io::Profile,
        crash_point: &str,
    ) -> Result<Option<Staged>, TableError> {
        Ok(self
            .stage(app_id, version, files, profile, crash_point)
            .await?
            .map(|(staged, _)| staged))
    }

    /// The second half of [`Table::append_once`]: commits staged files with their
    /// transaction id (nothing if it was committed meanwhile); commits lost to concurrent
    /// writers are retried.
    pub async fn commit_staged(&self, staged: &Staged) -> Result<Appended, TableError> {
        self.commit_from(staged, None).await
    }

    /// Writes the files unless `(app_id, version)` is committed; returns them with the
    /// snapshot that was checked, if one had to be read: a writer's own commits are known
    /// without reading the log.
    async fn stage(
        &self,
        app_id: &str,
        version: i64,
        files: Vec<NewFile>,
        profile: crate::parquet_io::Profile,
        crash_point: &str,
    ) -> Result<Option<(Staged, Option<Snapshot>)>, TableError> {
        if files.is_empty() {
            return Ok(None);
        }
        let own = self.own_txns.lock().await.get(app_id).copied();
        let checked = match own {
            Some(v) if v >= version => return Ok(None),
            Some(_) => None,
            None => {
                let snapshot = self.snapshot().await?;
                if self.is_committed(&snapshot, app_id, version).await? {
                    return Ok(None);
                }
                Some(snapshot)
            }
        };
        let mut staged = Staged {
            app_id: app_id.to_string(),
            version,
            adds: Vec::with_capacity(files.len()),
            bytes: 0,
        };
        for f in &files {
            let add = self
                .write_file(&f.path, f.date, &f.batch, profile, &f.tags)
                .await?;
            staged.bytes += add.size as u64;
            staged.adds.push(Action::Add(add));
        }
        crate::failpoint::crash_point(crash_point);
        Ok(Some((staged, checked)))
    }

    /// Commits `staged` on `checked` (a snapshot on which it was found uncommitted) or, on
    /// every later attempt, on the latest snapshot.
    async fn commit_from(
        &self,
        staged: &Staged,
        mut checked: Option<Snapshot>,
    ) -> Result<Appended, TableError> {
        let (app_id, version) = (staged.app_id.as_str(), staged.version);
        let mut out = Appended {
            bytes: staged.bytes,
            ..Appended::default()
        };
        for _ in 0..crate::MAX_REPLANS {
            let snapshot = match checked.take() {
                Some(s) => s,
                None => {
                    let s = self.snapshot().await?;
                    if self.is_committed(&s, app_id, version).await? {
                        return Ok(out);
                    }
                    s
                }
            };
            match self
                .commit(
                    &snapshot,
                    staged.adds.clone(),
                    append_op(self.spec.partitioned),
                    Some((app_id, version)),
                )
                .await
            {
                Ok(v) => {
                    out.version = Some(v);
                    return Ok(out);
                }
                Err(e) if e.is_conflict() => {
                    // Another writer may have committed this application's version: read
                    // the log again.
                    self.own_txns.lock().await.remove(app_id);
                    out.retries += 1;
                    tracing::debug!(table = %self.spec.name, app_id, version, "commit conflict, retrying: {e}");
                }
                Err(e) => {
                    // The commit may have landed all the same (an error after the log entry
                    // was written): a retry must read the log, not trust what it knew.
                    self.own_txns.lock().await.remove(app_id);
                    return Err(e);
                }
            }
        }
        Err(TableError::Conflict {
            table: self.spec.name.clone(),
            message: format!(
                "{app_id} version {version}: still conflicting after {} attempts",
                crate::MAX_REPLANS
            ),
        })
    }
}
