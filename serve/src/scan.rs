//! Table providers that read a known list of Parquet files: the files of a Delta table's
//! current snapshot (never a directory listing: uncommitted or removed files stay invisible),
//! and the statement files of the billing export's published runs.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use chrono::NaiveDate;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use gridmeter_tables::{Root, Table};

/// Where the files of a scan are and what they hold.
struct Files {
    /// `(storage key, size, partition date)` of every file.
    files: Vec<(String, u64, Option<NaiveDate>)>,
}

/// What DataFusion asks a scan for.
struct Request<'a> {
    projection: Option<&'a Vec<usize>>,
    filters: &'a [Expr],
    limit: Option<usize>,
}

/// Builds the Parquet scan of `files` (storage keys under `root`'s storage).
fn parquet_scan(
    state: &dyn Session,
    root: &Root,
    file_schema: &SchemaRef,
    partition: Option<FieldRef>,
    files: Files,
    request: Request<'_>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let Request {
        projection,
        filters,
        limit,
    } = request;
    let partition_cols: Vec<FieldRef> = partition.into_iter().collect();
    let table_schema = TableSchema::builder(file_schema.clone())
        .with_table_partition_cols(partition_cols.clone())
        .build();
    let mut full: Vec<FieldRef> = file_schema.fields().iter().cloned().collect();
    full.extend(partition_cols.iter().cloned());
    let full = Arc::new(Schema::new(full));
    let mut source = ParquetSource::new(table_schema)
        .with_table_parquet_options(state.table_options().parquet.clone());
    if let Some(predicate) = conjunction(filters.to_vec()) {
        let df_schema = DFSchema::try_from(full.as_ref().clone())?;
        let physical = state.create_physical_expr(predicate, &df_schema)?;
        source = source.with_predicate(physical);
    }
    let n = state.config().target_partitions().max(1);
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); n];
    for (i, (key, size, date)) in files.files.into_iter().enumerate() {
        let mut f = PartitionedFile::new(key, size);
        if !partition_cols.is_empty() {
            f = f.with_partition_values(vec![ScalarValue::Date32(date.map(days_since_epoch))]);
        }
        groups[i % n].push(f);
    }
    groups.retain(|g| !g.is_empty());
    let url = ObjectStoreUrl::parse(root.storage_url().as_str())?;
    let config = FileScanConfigBuilder::new(url, Arc::new(source))
        .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - NaiveDate::default()).num_days() as i32
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A Delta table of the data root, read at its latest version at every query.
pub struct DeltaProvider {
    table: Table,
    file_schema: SchemaRef,
    schema: SchemaRef,
}

impl fmt::Debug for DeltaProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeltaProvider({})", self.table.name())
    }
}

impl DeltaProvider {
    /// The provider of `table` (its schema from its spec, plus `date` when partitioned).
    pub fn new(table: Table) -> DeltaProvider {
        let file_schema = table.spec().schema.clone();
        let mut fields: Vec<FieldRef> = file_schema.fields().iter().cloned().collect();
        if table.spec().partitioned {
            fields.push(Arc::new(gridmeter_core::schema::partition_date()));
        }
        DeltaProvider {
            table,
            file_schema,
            schema: Arc::new(Schema::new(fields)),
        }
    }
}

#[async_trait]
impl TableProvider for DeltaProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used to skip files (partition values) and row groups (statistics); DataFusion
        // still applies every filter to the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snapshot = self.table.read_snapshot().await.map_err(external)?;
        let root = self.table.root();
        let files = snapshot
            .files()
            .into_iter()
            .map(|f| {
                (
                    root.key(&format!("{}/{}", self.table.name(), f.path)),
                    f.size.max(0) as u64,
                    f.date,
                )
            })
            .collect();
        let partition = self
            .table
            .spec()
            .partitioned
            .then(|| Arc::new(gridmeter_core::schema::partition_date()));
        parquet_scan(
            state,
            root,
            &self.file_schema,
            partition,
            Files { files },
            Request {
                projection,
                filters,
                limit,
            },
        )
    }
}

/// Parquet files of the same schema found by listing at every query (the billing export's
/// published runs: a run appears by an atomic rename and its files never change).
pub struct ListedParquet {
    root: Root,
    /// Key prefix to list under.
    prefix: String,
    /// Which listed keys belong to the table.
    select: fn(&str) -> bool,
    schema: SchemaRef,
}

impl fmt::Debug for ListedParquet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ListedParquet({})", self.prefix)
    }
}

impl ListedParquet {
    /// The table of the files under `prefix` (a key under `root`'s storage) that `select`
    /// keeps, with `schema`.
    pub fn new(root: Root, prefix: String, select: fn(&str) -> bool, schema: SchemaRef) -> Self {
        ListedParquet {
            root,
            prefix,
            select,
            schema,
        }
    }

    /// The files now: `(key, size)`, sorted.
    pub async fn list(
        root: &Root,
        prefix: &str,
        select: fn(&str) -> bool,
    ) -> object_store::Result<Vec<(String, u64)>> {
        use futures::TryStreamExt;
        let prefix = object_store::path::Path::from(prefix);
        let mut out: Vec<(String, u64)> = root
            .storage()
            .list(Some(&prefix))
            .try_filter_map(|m| {
                let key = m.location.to_string();
                futures::future::ready(Ok(select(&key).then_some((key, m.size))))
            })
            .try_collect()
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(Vec::new()),
                e => Err(e),
            })?;
        out.sort();
        Ok(out)
    }
}

#[async_trait]
impl TableProvider for ListedParquet {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let files = ListedParquet::list(&self.root, &self.prefix, self.select)
            .await
            .map_err(external)?
            .into_iter()
            .map(|(k, s)| (k, s, None))
            .collect();
        parquet_scan(
            state,
            &self.root,
            &self.schema,
            None,
            Files { files },
            Request {
                projection,
                filters,
                limit,
            },
        )
    }
}
