//! The one error type of the billing library.

use std::path::PathBuf;

/// Why a billing export could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Config(#[from] gridmeter_core::config::ConfigError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
    #[error("writing {what}: {message}")]
    Output { what: String, message: String },
    /// The reconciliation found differences; the run wrote nothing to `run-NNNN/`.
    #[error("reconciliation failed with {count} mismatch(es):\n{details}")]
    Reconciliation { count: usize, details: String },
}

impl BillingError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BillingError::Io {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn data(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        BillingError::Data {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
    pub(crate) fn output(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        BillingError::Output {
            what: what.into(),
            message: message.to_string(),
        }
    }
}
