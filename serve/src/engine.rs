//! Planning and running one query under the server's limits: a memory pool of its own
//! (`query_memory_mib`, no spilling), a timeout (`query_timeout`) and a row limit
//! (`row_limit`, the result is cut there).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use futures::StreamExt;
use gridmeter_tables::Root;

use crate::catalog::Catalog;
use crate::guard;

/// The limits every query runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Planning plus execution plus reading the result.
    pub timeout: Duration,
    /// Bytes the operators of one query may hold.
    pub memory_bytes: usize,
    /// Most rows of a result.
    pub row_limit: usize,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Refused(#[from] guard::Refusal),
    #[error("canceling statement due to statement timeout (query_timeout {0})")]
    Timeout(String),
    #[error("{0}")]
    DataFusion(String),
}

impl QueryError {
    /// The SQLSTATE to answer with.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            QueryError::Refused(r) => r.sqlstate(),
            QueryError::Timeout(_) => "57014",
            QueryError::DataFusion(m) if m.contains("Resources exhausted") => "53200",
            QueryError::DataFusion(m) if m.contains("not found") => "42P01",
            QueryError::DataFusion(_) => "XX000",
        }
    }
}

impl From<arrow::error::ArrowError> for QueryError {
    fn from(e: arrow::error::ArrowError) -> Self {
        QueryError::DataFusion(format!("arrow: {e}"))
    }
}

impl From<datafusion::error::DataFusionError> for QueryError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        let text = e.to_string();
        let text = match text.char_indices().nth(500) {
            Some((i, _)) => format!("{}…", &text[..i]),
            None => text,
        };
        QueryError::DataFusion(text)
    }
}

/// A result: its schema, its rows, and whether it was cut at the row limit.
pub struct Output {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub truncated: bool,
}

/// Plans and runs queries over the catalog.
pub struct Engine {
    ctx: SessionContext,
    stores: Vec<Root>,
    catalog: Arc<Catalog>,
    limits: Limits,
}

fn config() -> SessionConfig {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    SessionConfig::new()
        .with_target_partitions(threads)
        .with_information_schema(true)
        .with_default_catalog_and_schema("gridmeter", "public")
        .set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        )
        .set_bool("datafusion.execution.parquet.pushdown_filters", true)
        .set_bool("datafusion.sql_parser.enable_ident_normalization", true)
        .set_str("datafusion.sql_parser.dialect", "postgresql")
}

impl Engine {
    /// An engine over `catalog`, reading the object stores of `stores`.
    pub fn new(
        catalog: Arc<Catalog>,
        stores: Vec<Root>,
        limits: Limits,
    ) -> Result<Engine, QueryError> {
        let runtime = Self::runtime(&stores, limits.memory_bytes)?;
        let state = SessionStateBuilder::new()
            .with_config(config())
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);
        let cat = ctx
            .catalog("gridmeter")
            .ok_or_else(|| QueryError::DataFusion("no default catalog".into()))?;
        cat.register_schema("public", catalog.schema())?;
        Ok(Engine {
            ctx,
            stores,
            catalog,
            limits,
        })
    }

    /// The catalog served.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The limits queries run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A runtime with its own memory pool (one per query) and no spilling.
    fn runtime(stores: &[Root], memory: usize) -> Result<Arc<RuntimeEnv>, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(memory)))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        for root in stores {
            runtime.register_object_store(root.storage_url(), root.storage().clone());
        }
        Ok(runtime)
    }

    /// Plans a classified query statement (for Describe, and before running it).
    pub async fn plan(&self, statement: &DfStatement) -> Result<LogicalPlan, QueryError> {
        let plan = self
            .ctx
            .state()
            .statement_to_plan(statement.clone())
            .await?;
        guard::check_plan(&plan)?;
        Ok(plan)
    }

    /// Classifies, plans and runs one query statement (for reports and tests).
    pub async fn sql(&self, sql: &str) -> Result<Output, QueryError> {
        let mut statements = guard::classify(sql)?;
        match (statements.pop(), statements.is_empty()) {
            (Some(guard::Classified::Query(statement)), true) => {
                let plan = self.plan(&statement).await?;
                self.run(plan, None).await
            }
            _ => Err(QueryError::DataFusion(
                "expected exactly one query statement".into(),
            )),
        }
    }

    /// Runs `plan` with `params` bound, under the limits.
    pub async fn run(
        &self,
        plan: LogicalPlan,
        params: Option<ParamValues>,
    ) -> Result<Output, QueryError> {
        let limits = self.limits;
        let work = async {
            let plan = match params {
                Some(p) => plan.with_param_values(p)?,
                None => plan,
            };
            guard::check_plan(&plan)?;
            let state = SessionStateBuilder::new_from_existing(self.ctx.state())
                .with_runtime_env(Self::runtime(&self.stores, limits.memory_bytes)?)
                .build();
            let ctx = SessionContext::new_with_state(state);
            // One row more than the limit tells whether the result was cut.
            let df = ctx
                .execute_logical_plan(plan)
                .await?
                .limit(0, Some(limits.row_limit.saturating_add(1)))?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await?;
            let mut batches = Vec::new();
            let mut rows = 0usize;
            let mut truncated = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let room = limits.row_limit - rows;
                if batch.num_rows() > room {
                    truncated = true;
                    if room > 0 {
                        batches.push(batch.slice(0, room));
                    }
                    break;
                }
                rows += batch.num_rows();
                batches.push(batch);
            }
            Ok::<Output, QueryError>(Output {
                schema,
                batches,
                truncated,
            })
        };
        match tokio::time::timeout(limits.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(QueryError::Timeout(
                humantime::format_duration(limits.timeout).to_string(),
            )),
        }
    }
}
