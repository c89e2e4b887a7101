//! Which tables `gridmeter serve` serves, under which SQL names.
//!
//! - every Delta table found under the data root that `gridmeter-tables` describes (`raw`,
//!   `gaps`, `deadletter`, `usage_<w>`, `usage_history_<w>`, ...), opened through that crate
//!   and read at its latest version at every query;
//! - `statement_lines`: the statement lines of every published billing run
//!   (`exports/<period>/run-NNNN/statement_lines.parquet`);
//! - `held_bills`: why customers were held, per run (`exceptions.csv` of each run);
//! - `meters`: the billing registry's devices with their site and customer (when a registry
//!   is configured).
//!
//! A table that does not exist (yet) is skipped; [`Catalog::refresh`] registers tables that
//! appeared since.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::{MemTable, TableProvider};
use gridmeter_tables::{
    deadletter, devices, edits, exceptions, gaps, raw, usage, Root, Table, TableSpec,
};
use object_store::ObjectStoreExt;

use crate::ServeError;

/// The layout of the Delta table in directory `dir` of the data root, if `serve` knows it.
///
/// A table of another component is served by adding its line here (its spec lives in
/// `gridmeter-tables`), e.g. `"exceptions" => Some(gridmeter_tables::exceptions::spec())`.
pub fn delta_spec(dir: &str) -> Option<TableSpec> {
    match dir {
        raw::TABLE => Some(raw::spec()),
        gaps::TABLE => Some(gaps::spec()),
        deadletter::TABLE => Some(deadletter::spec()),
        devices::TABLE => Some(devices::spec()),
        exceptions::TABLE => Some(exceptions::spec()),
        edits::TABLE => Some(edits::spec()),
        d => d
            .strip_prefix("usage_history_")
            .map(usage::history_spec)
            .or_else(|| d.strip_prefix("usage_").map(usage::current_spec)),
    }
}

/// The SQL name of the published runs' statement lines.
pub const STATEMENT_LINES: &str = "statement_lines";
/// The SQL name of the held customers per run.
pub const HELD_BILLS: &str = "held_bills";
/// The SQL name of the registry's devices.
pub const METERS: &str = "meters";

/// A key of a published run's file: `<prefix>/exports/<period>/run-NNNN/<file>` (not the
/// `.run-NNNN.tmp/` of a run being written).
fn run_file(key: &str, file: &str) -> Option<(String, String)> {
    let mut parts = key.rsplit('/');
    if parts.next()? != file {
        return None;
    }
    let run = parts.next()?;
    let period = parts.next()?;
    let exports = parts.next()?;
    (exports == "exports" && run.starts_with("run-") && !period.starts_with('.'))
        .then(|| (period.to_string(), run.to_string()))
}

fn is_statement_file(key: &str) -> bool {
    run_file(key, "statement_lines.parquet").is_some()
}

fn is_exceptions_file(key: &str) -> bool {
    run_file(key, "exceptions.csv").is_some()
}

/// The tables served, registered in one DataFusion schema.
pub struct Catalog {
    root: Root,
    /// The billing export's `out_dir` (holding `exports/`).
    exports: Root,
    registry: Option<PathBuf>,
    schema: Arc<MemorySchemaProvider>,
    registered: Mutex<BTreeSet<String>>,
}

impl Catalog {
    /// The catalog of `root`, with the billing runs under `exports` and the registry file.
    pub fn new(root: Root, exports: Root, registry: Option<PathBuf>) -> Catalog {
        Catalog {
            root,
            exports,
            registry,
            schema: Arc::new(MemorySchemaProvider::new()),
            registered: Mutex::new(BTreeSet::new()),
        }
    }

    /// The DataFusion schema holding the tables.
    pub fn schema(&self) -> Arc<dyn SchemaProvider> {
        self.schema.clone()
    }

    /// The SQL names registered so far, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.registered.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, name: &str, provider: Arc<dyn TableProvider>) -> Result<(), ServeError> {
        self.schema
            .register_table(name.to_string(), provider)
            .map_err(|e| ServeError::Catalog(format!("table {name}: {e}")))?;
        self.lock().insert(name.to_string());
        Ok(())
    }

    /// Registers the tables that exist now and were not registered yet; returns the names
    /// newly registered.
    pub async fn refresh(&self) -> Result<Vec<String>, ServeError> {
        let mut added = Vec::new();
        let known = self.lock().clone();
        let listing = self
            .root
            .store()
            .list_with_delimiter(None)
            .await
            .map_err(|e| ServeError::Catalog(format!("listing the data root: {e}")))?;
        for dir in listing.common_prefixes {
            let Some(name) = dir.filename().map(str::to_string) else {
                continue;
            };
            if known.contains(&name) {
                continue;
            }
            let Some(spec) = delta_spec(&name) else {
                continue;
            };
            if let Some(table) = Table::open_existing(&self.root, spec).await? {
                self.register(&name, Arc::new(crate::scan::DeltaProvider::new(table)))?;
                added.push(name);
            }
        }
        let exports_prefix = self.exports.key("exports");
        if !known.contains(STATEMENT_LINES) {
            if let Some(schema) = self.statement_schema(&exports_prefix).await? {
                let provider = crate::scan::ListedParquet::new(
                    self.exports.clone(),
                    exports_prefix.clone(),
                    is_statement_file,
                    schema,
                );
                self.register(STATEMENT_LINES, Arc::new(provider))?;
                added.push(STATEMENT_LINES.to_string());
            }
        }
        if !known.contains(HELD_BILLS) {
            let files = crate::scan::ListedParquet::list(
                &self.exports,
                &exports_prefix,
                is_exceptions_file,
            )
            .await?;
            if !files.is_empty() {
                let provider = HeldBills {
                    root: self.exports.clone(),
                    prefix: exports_prefix.clone(),
                };
                self.register(HELD_BILLS, Arc::new(provider))?;
                added.push(HELD_BILLS.to_string());
            }
        }
        if !known.contains(METERS) {
            if let Some(path) = &self.registry {
                self.register(METERS, Arc::new(meters(path)?))?;
                added.push(METERS.to_string());
            }
        }
        Ok(added)
    }

    /// The schema of the newest published statement file, if there is one.
    async fn statement_schema(&self, prefix: &str) -> Result<Option<SchemaRef>, ServeError> {
        let files =
            crate::scan::ListedParquet::list(&self.exports, prefix, is_statement_file).await?;
        let Some((key, _)) = files.last() else {
            return Ok(None);
        };
        let bytes = self
            .exports
            .storage()
            .get(&object_store::path::Path::from(key.as_str()))
            .await?
            .bytes()
            .await?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| ServeError::Catalog(format!("{key}: {e}")))?;
        Ok(Some(builder.schema().clone()))
    }
}

/// `held_bills`: the `exceptions.csv` of every published run, with its period and run.
#[derive(Debug)]
struct HeldBills {
    root: Root,
    prefix: String,
}

/// The columns of `held_bills`.
fn held_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("period"),
        s("run"),
        s("customer_id"),
        s("site_id"),
        s("device_id"),
        s("channel"),
        s("reason"),
    ]))
}

/// A text cell of the export's CSV: one leading `'` (the spreadsheet-safety prefix) removed.
fn cell(text: &str) -> String {
    text.strip_prefix('\'').unwrap_or(text).to_string()
}

impl HeldBills {
    async fn batch(&self) -> Result<RecordBatch, ServeError> {
        let files =
            crate::scan::ListedParquet::list(&self.root, &self.prefix, is_exceptions_file).await?;
        let mut cols: Vec<Vec<String>> = vec![Vec::new(); 7];
        for (key, _) in files {
            let Some((period, run)) = run_file(&key, "exceptions.csv") else {
                continue;
            };
            let bytes = self
                .root
                .storage()
                .get(&object_store::path::Path::from(key.as_str()))
                .await?
                .bytes()
                .await?;
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(&bytes[..]);
            for (i, record) in reader.records().enumerate() {
                let record =
                    record.map_err(|e| ServeError::Catalog(format!("{key} row {}: {e}", i + 1)))?;
                if record.len() < 5 {
                    return Err(ServeError::Catalog(format!(
                        "{key} row {}: {} columns, expected 5",
                        i + 1,
                        record.len()
                    )));
                }
                cols[0].push(period.clone());
                cols[1].push(run.clone());
                for c in 0..5 {
                    cols[c + 2].push(cell(&record[c]));
                }
            }
        }
        let arrays: Vec<ArrayRef> = cols
            .into_iter()
            .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
            .collect();
        Ok(RecordBatch::try_new(held_schema(), arrays)?)
    }
}

#[async_trait::async_trait]
impl TableProvider for HeldBills {
    fn schema(&self) -> SchemaRef {
        held_schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let batch = self
            .batch()
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        MemTable::try_new(held_schema(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// `meters`: one row per registry device with its site and customer.
fn meters(path: &std::path::Path) -> Result<MemTable, ServeError> {
    let registry: gridmeter_billing::Registry =
        gridmeter_core::config::load(path).map_err(|e| ServeError::Catalog(e.to_string()))?;
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    let schema = Arc::new(Schema::new(vec![
        s("device_id"),
        s("site_id"),
        s("site_name"),
        s("customer_id"),
        s("customer_name"),
        s("tariff"),
        s("currency"),
        s("time_zone"),
    ]));
    let mut cols: Vec<Vec<String>> = vec![Vec::new(); 8];
    for d in &registry.devices {
        let site = registry.sites.iter().find(|s| s.id == d.site);
        let customer = site.and_then(|s| registry.customer(&s.customer));
        let row = [
            d.id.clone(),
            d.site.clone(),
            site.map(|s| s.name.clone()).unwrap_or_default(),
            site.map(|s| s.customer.clone()).unwrap_or_default(),
            customer.map(|c| c.name.clone()).unwrap_or_default(),
            customer.map(|c| c.tariff.clone()).unwrap_or_default(),
            customer.map(|c| c.currency.clone()).unwrap_or_default(),
            customer.map(|c| c.time_zone.clone()).unwrap_or_default(),
        ];
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    let arrays: Vec<ArrayRef> = cols
        .into_iter()
        .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    Ok(MemTable::try_new(schema, vec![vec![batch]])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_published_run_files_are_selected() {
        assert_eq!(
            run_file(
                "d/exports/2026-10/run-0001/statement_lines.parquet",
                "statement_lines.parquet"
            ),
            Some(("2026-10".into(), "run-0001".into()))
        );
        assert!(!is_statement_file(
            "d/exports/2026-10/.run-0002.tmp/statement_lines.parquet"
        ));
        assert!(!is_statement_file(
            "d/exports/.2026-10/run-0002/statement_lines.parquet"
        ));
        assert!(!is_statement_file(
            "d/other/2026-10/run-0001/statement_lines.parquet"
        ));
        assert!(is_exceptions_file(
            "exports/2026-10/run-0003/exceptions.csv"
        ));
    }

    #[test]
    fn known_tables_have_specs() {
        assert_eq!(delta_spec("raw").unwrap().name, "raw");
        assert_eq!(delta_spec("usage_15m").unwrap().name, "usage_15m");
        assert_eq!(
            delta_spec("usage_history_1d").unwrap().name,
            "usage_history_1d"
        );
        assert!(delta_spec("_state").is_none());
        assert!(delta_spec("exports").is_none());
    }

    #[test]
    fn the_spreadsheet_prefix_is_removed_once() {
        assert_eq!(cell("'-12"), "-12");
        assert_eq!(cell("''x"), "'x");
        assert_eq!(cell("meter-1"), "meter-1");
    }
}
