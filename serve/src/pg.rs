//! The PostgreSQL wire protocol (simple and extended query) over the [`Engine`].

use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;
use futures::{stream, Sink, SinkExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::format::FormatOptions;

use crate::engine::{Engine, Output, QueryError};
use crate::guard::{self, Classified};

/// An error answered to the client with its SQLSTATE.
pub fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

fn query_error(e: QueryError) -> PgWireError {
    user_error(e.sqlstate(), e.to_string())
}

fn refusal(e: guard::Refusal) -> PgWireError {
    user_error(e.sqlstate(), e.to_string())
}

/// A statement parsed by the extended protocol: what it is and, for a query, its plan.
#[derive(Debug, Clone)]
pub struct Prepared {
    kind: Classified,
    plan: Option<LogicalPlan>,
}

/// The query handlers of one server (shared by its connections).
pub struct Handler {
    engine: Arc<Engine>,
    parser: Arc<Parser>,
}

impl Handler {
    /// Handlers over `engine`.
    pub fn new(engine: Arc<Engine>) -> Handler {
        Handler {
            parser: Arc::new(Parser {
                engine: engine.clone(),
            }),
            engine,
        }
    }
}

/// Runs `plan` and answers with its rows (and a warning if the row limit cut them).
async fn answer<C>(
    engine: &Engine,
    client: &mut C,
    plan: LogicalPlan,
    params: Option<ParamValues>,
    format: &Format,
) -> PgWireResult<Response>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let started = std::time::Instant::now();
    let out: Output = engine.run(plan, params).await.map_err(|e| {
        tracing::info!(error = %e, "query failed");
        query_error(e)
    })?;
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    tracing::debug!(rows, ms = started.elapsed().as_millis() as u64, "query");
    if out.truncated {
        let limit = engine.limits().row_limit;
        client
            .send(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                ErrorInfo::new(
                    "WARNING".to_owned(),
                    "01000".to_owned(),
                    format!(
                        "result cut at row_limit = {limit} rows; aggregate or add a LIMIT to see the rest"
                    ),
                ),
            )))
            .await?;
    }
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let fields = Arc::new(arrow_schema_to_pg_fields(
        out.schema.as_ref(),
        format,
        Some(options),
    )?);
    let f = fields.clone();
    let data = stream::iter(
        out.batches
            .into_iter()
            .flat_map(move |b| encode_recordbatch(f.clone(), b))
            .collect::<Vec<_>>(),
    );
    Ok(Response::Query(QueryResponse::new(fields, data)))
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = guard::classify(query).map_err(refusal)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(statements.len());
        for s in statements {
            let r = match s {
                Classified::Query(statement) => {
                    let plan = self.engine.plan(&statement).await.map_err(query_error)?;
                    answer(&self.engine, client, plan, None, &Format::UnifiedText).await?
                }
                Classified::NoOp(tag) => Response::Execution(Tag::new(tag)),
                Classified::Transaction { start: true, tag } => {
                    Response::TransactionStart(Tag::new(tag))
                }
                Classified::Transaction { tag, .. } => Response::TransactionEnd(Tag::new(tag)),
            };
            out.push(r);
        }
        Ok(out)
    }
}

/// Parses and plans statements of the extended protocol.
pub struct Parser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = guard::classify(sql).map_err(refusal)?;
        if statements.len() > 1 {
            return Err(user_error(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let Some(kind) = statements.pop() else {
            return Ok(None);
        };
        let plan = match &kind {
            Classified::Query(statement) => {
                Some(self.engine.plan(statement).await.map_err(query_error)?)
            }
            _ => None,
        };
        Ok(Some(Prepared { kind, plan }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        let Some(plan) = &stmt.plan else {
            return Ok(Vec::new());
        };
        parameter_types(plan)?
            .into_iter()
            .map(|t| match t {
                Some(t) => into_pg_type(&t),
                None => Ok(Type::UNKNOWN),
            })
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.plan {
            Some(plan) => Ok(arrow_schema_to_pg_fields(
                plan.schema().as_arrow(),
                column_format.unwrap_or(&Format::UnifiedText),
                None,
            )?),
            None => Ok(Vec::new()),
        }
    }
}

/// The inferred types of `$1`, `$2`, ... in order.
fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<Option<DataType>>> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| user_error("42P18", e.to_string()))?;
    let mut ordered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(k, v)| Some((k.trim_start_matches('$').parse().ok()?, v)))
        .collect();
    ordered.sort_by_key(|(i, _)| *i);
    Ok(ordered.into_iter().map(|(_, t)| t).collect())
}

/// The value of parameter `idx` of `portal` as a DataFusion scalar of type `want`.
fn parameter(
    portal: &Portal<Prepared>,
    idx: usize,
    client_type: Option<&Type>,
    want: Option<&DataType>,
) -> PgWireResult<ScalarValue> {
    let ty = client_type.cloned().unwrap_or(Type::UNKNOWN);
    let value = match ty {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(idx, &ty)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(idx, &ty)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(idx, &ty)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(idx, &ty)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(idx, &ty)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(idx, &ty)?),
        Type::DATE => ScalarValue::Date32(
            portal
                .parameter::<NaiveDate>(idx, &ty)?
                .map(|d| (d - NaiveDate::default()).num_days() as i32),
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<DateTime<FixedOffset>>(idx, &ty)?
                .map(|t| t.timestamp_micros()),
            Some("UTC".into()),
        ),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<NaiveDateTime>(idx, &ty)?
                .map(|t| t.and_utc().timestamp_micros()),
            None,
        ),
        Type::NUMERIC => ScalarValue::Utf8(
            portal
                .parameter::<rust_decimal::Decimal>(idx, &ty)?
                .map(|d| d.to_string()),
        ),
        _ => {
            // Text (or unknown): the literal text, cast below.
            let raw = portal.parameters.get(idx).cloned().flatten();
            ScalarValue::Utf8(match raw {
                None => None,
                Some(b) => Some(String::from_utf8(b.to_vec()).map_err(|_| {
                    user_error("22021", format!("parameter ${} is not UTF-8", idx + 1))
                })?),
            })
        }
    };
    match want {
        Some(t) if value.data_type() != *t => value.cast_to(t).map_err(|e| {
            user_error(
                "22P02",
                format!("parameter ${}: cannot be read as {t}: {e}", idx + 1),
            )
        }),
        _ => Ok(value),
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        match (&prepared.kind, &prepared.plan) {
            (Classified::Query(_), Some(plan)) => {
                let want = parameter_types(plan)?;
                let n = portal.parameter_len().max(want.len());
                let params = if n == 0 {
                    None
                } else {
                    let client_types = &portal.statement.parameter_types;
                    let values = (0..n)
                        .map(|i| {
                            parameter(
                                portal,
                                i,
                                client_types.get(i).and_then(|t| t.as_ref()),
                                want.get(i).and_then(|t| t.as_ref()),
                            )
                        })
                        .collect::<PgWireResult<Vec<_>>>()?;
                    Some(ParamValues::from(values))
                };
                answer(
                    &self.engine,
                    client,
                    plan.clone(),
                    params,
                    &portal.result_column_format,
                )
                .await
            }
            (Classified::NoOp(tag), _) => Ok(Response::Execution(Tag::new(tag))),
            (Classified::Transaction { start: true, tag }, _) => {
                Ok(Response::TransactionStart(Tag::new(tag)))
            }
            (Classified::Transaction { tag, .. }, _) => Ok(Response::TransactionEnd(Tag::new(tag))),
            (Classified::Query(_), None) => Ok(Response::EmptyQuery),
        }
    }
}
