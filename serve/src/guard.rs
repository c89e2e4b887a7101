//! Read-only: which statements `gridmeter serve` runs.
//!
//! A query (`SELECT`, `WITH … SELECT`, `VALUES`), `EXPLAIN` of one, and `SHOW TABLES` /
//! `SHOW COLUMNS` run. `SET`, `BEGIN`, `COMMIT`, `ROLLBACK` (which drivers send on their own)
//! are accepted and do nothing: they change no DataFusion setting, so no client can lift a
//! limit. Every other statement (`INSERT`, `UPDATE`, `DELETE`, `CREATE`, `DROP`, `COPY`,
//! `CREATE EXTERNAL TABLE`, ...) is refused with SQLSTATE 25006. The planned query is checked
//! again ([`check_plan`]): no DML, DDL or copy node anywhere in it.

use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

/// What a statement is, for the server.
#[derive(Debug, Clone)]
pub enum Classified {
    /// A query: plan and run it.
    Query(Box<DfStatement>),
    /// A statement accepted and ignored; the command tag to answer with.
    NoOp(&'static str),
    /// A transaction statement accepted and ignored (`BEGIN` / `COMMIT`, `ROLLBACK`).
    Transaction { start: bool, tag: &'static str },
}

/// Why a statement is not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("gridmeter serve is read-only: {0} statements are refused (only queries run)")]
    ReadOnly(String),
}

impl Refusal {
    /// The SQLSTATE of the refusal.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Refusal::Syntax(_) => "42601",
            Refusal::ReadOnly(_) => "25006",
        }
    }
}

/// Parses `sql` (PostgreSQL dialect) and classifies each statement.
pub fn classify(sql: &str) -> Result<Vec<Classified>, Refusal> {
    let statements = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
        .map_err(|e| Refusal::Syntax(cut(&e.to_string())))?;
    statements.into_iter().map(classify_one).collect()
}

fn classify_one(statement: DfStatement) -> Result<Classified, Refusal> {
    match &statement {
        DfStatement::Statement(s) => match s.as_ref() {
            SqlStatement::Query(_) => Ok(Classified::Query(Box::new(statement))),
            SqlStatement::Explain {
                statement: inner, ..
            } if matches!(inner.as_ref(), SqlStatement::Query(_)) => {
                Ok(Classified::Query(Box::new(statement)))
            }
            SqlStatement::ShowTables { .. } | SqlStatement::ShowColumns { .. } => {
                Ok(Classified::Query(Box::new(statement)))
            }
            SqlStatement::Set(_) => Ok(Classified::NoOp("SET")),
            SqlStatement::StartTransaction { .. } => Ok(Classified::Transaction {
                start: true,
                tag: "BEGIN",
            }),
            SqlStatement::Commit { .. } => Ok(Classified::Transaction {
                start: false,
                tag: "COMMIT",
            }),
            SqlStatement::Rollback { .. } => Ok(Classified::Transaction {
                start: false,
                tag: "ROLLBACK",
            }),
            other => Err(Refusal::ReadOnly(keyword(&other.to_string()))),
        },
        DfStatement::Explain(e) => match e.statement.as_ref() {
            DfStatement::Statement(s) if matches!(s.as_ref(), SqlStatement::Query(_)) => {
                Ok(Classified::Query(Box::new(statement)))
            }
            other => Err(Refusal::ReadOnly(keyword(&other.to_string()))),
        },
        DfStatement::CreateExternalTable(_) => {
            Err(Refusal::ReadOnly("CREATE EXTERNAL TABLE".into()))
        }
        DfStatement::CopyTo(_) => Err(Refusal::ReadOnly("COPY".into())),
        DfStatement::Reset(_) => Ok(Classified::NoOp("RESET")),
    }
}

/// Refuses a plan that would change anything (a second line behind [`classify`]).
pub fn check_plan(plan: &LogicalPlan) -> Result<(), Refusal> {
    let mut bad = None;
    let _ = plan.apply(|node| {
        let kind = match node {
            LogicalPlan::Dml(_) => Some("DML"),
            LogicalPlan::Ddl(_) => Some("DDL"),
            LogicalPlan::Copy(_) => Some("COPY"),
            LogicalPlan::Statement(_) => Some("SET/PREPARE"),
            _ => None,
        };
        if let Some(k) = kind {
            bad = Some(k);
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    match bad {
        Some(k) => Err(Refusal::ReadOnly(k.into())),
        None => Ok(()),
    }
}

/// The leading keywords of a statement (`INSERT`, `CREATE TABLE`), never its data.
fn keyword(text: &str) -> String {
    let words: Vec<&str> = text
        .split_whitespace()
        .take(2)
        .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
        .collect();
    match words.as_slice() {
        [] => "this".into(),
        [first, second]
            if matches!(
                first.to_ascii_uppercase().as_str(),
                "CREATE" | "DROP" | "ALTER"
            ) =>
        {
            format!(
                "{} {}",
                first.to_ascii_uppercase(),
                second.to_ascii_uppercase()
            )
        }
        [first, ..] => first.to_ascii_uppercase(),
    }
}

/// At most 200 characters of a message that may quote input.
fn cut(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        match classify(sql) {
            Err(e @ Refusal::ReadOnly(_)) => e.to_string(),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn queries_run() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
            "EXPLAIN SELECT 1",
            "VALUES (1), (2)",
            "SHOW TABLES",
        ] {
            let c = classify(sql).unwrap();
            assert!(
                matches!(c.as_slice(), [Classified::Query(_)]),
                "{sql}: {c:?}"
            );
        }
    }

    #[test]
    fn driver_chatter_is_accepted_and_ignored() {
        for sql in [
            "SET extra_float_digits = 3",
            "SET application_name = 'x'",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
        ] {
            let c = classify(sql).unwrap();
            assert!(
                matches!(
                    c.as_slice(),
                    [Classified::NoOp(_) | Classified::Transaction { .. }]
                ),
                "{sql}: {c:?}"
            );
        }
    }

    #[test]
    fn every_write_is_refused_by_name() {
        assert!(refused("INSERT INTO raw VALUES (1)").contains("INSERT statements are refused"));
        assert!(refused("UPDATE raw SET seq = 1").contains("UPDATE"));
        assert!(refused("DELETE FROM raw").contains("DELETE"));
        assert!(refused("DROP TABLE raw").contains("DROP TABLE"));
        assert!(refused("CREATE TABLE t (a int)").contains("CREATE TABLE"));
        assert!(
            refused("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'")
                .contains("CREATE EXTERNAL TABLE")
        );
        assert!(refused("COPY (SELECT 1) TO '/tmp/x.csv'").contains("COPY"));
        assert!(refused("EXPLAIN INSERT INTO raw VALUES (1)").contains("INSERT"));
        assert!(refused("SELECT 1; DELETE FROM raw").contains("DELETE"));
        assert_eq!(classify("TRUNCATE raw").unwrap_err().sqlstate(), "25006");
    }

    #[test]
    fn refusals_quote_no_data() {
        let text = refused("INSERT INTO raw VALUES ('secret-value-that-must-not-echo')");
        assert!(!text.contains("secret"), "{text}");
    }
}
