//! gridmeter-tables: the Delta Lake tables under a data root, shared by the collector (writes
//! `raw`, `gaps`, `deadletter`, `devices`), the aggregator (reads `raw`, writes the usage tables) and the
//! billing export (reads `usage_15m` and `raw`). These three never depend on each other; what
//! they agree on is here:
//!
//! - opening the data root, a local directory or S3 ([`root`]);
//! - the Delta machinery: snapshots, data files with statistics, commits with transaction
//!   ids for exactly-once, conflict handling, vacuum ([`delta`]);
//! - typed rows and their readers and writers for every table ([`raw`], [`gaps`],
//!   [`deadletter`], [`devices`], [`usage`]), including dedup on read ([`raw::dedup`]);
//! - the flags of readings and usage rows, one bit scheme ([`flags`]);
//! - the validation exceptions and the billing-team edits of usage ([`exceptions`], [`edits`]);
//! - the counter rules (register maximum, meter swaps) ([`counter`]);
//! - which aggregator shard owns a device ([`shard`]);
//! - the conversion of a data root in the pre-Delta layout ([`migrate`]).
//!
//! The layout, the schemas and how to read the tables from Spark, Trino, DuckDB, polars and
//! the rest are in docs/tables.md. Arrow schemas stay defined once, in
//! `gridmeter_core::schema`.

pub mod counter;
pub mod deadletter;
pub mod delta;
pub mod devices;
pub mod edits;
pub mod exceptions;
pub mod failpoint;
pub mod flags;
pub mod gaps;
pub mod migrate;
pub mod parquet_io;
pub mod raw;
pub mod root;
pub mod shard;
pub mod stats;
pub mod usage;

pub use delta::{DataFile, Snapshot, Table, TableSpec};
pub use flags::{Flags, Kind, Quality};
pub use root::Root;
pub use shard::Shard;

/// What can go wrong with a table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("table {table}: concurrent commit conflict: {message}")]
    Conflict { table: String, message: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    OpenStore(#[from] gridmeter_core::store::StoreError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("table {table}: {message}")]
    Data { table: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl TableError {
    pub(crate) fn delta(table: &str, source: deltalake::DeltaTableError) -> TableError {
        TableError::Delta {
            table: table.to_string(),
            source: Box::new(source),
        }
    }

    /// Whether retrying from a fresh snapshot may succeed (a concurrent commit won).
    pub fn is_conflict(&self) -> bool {
        matches!(self, TableError::Conflict { .. })
    }
}

/// How often a commit is re-planned after concurrent commits conflicted with it before the
/// error is returned (each attempt reads a fresh snapshot; some writer wins every round).
pub const MAX_REPLANS: usize = 64;
