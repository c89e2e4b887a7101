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
    /// A remote system (Stripe, Zuora, a webhook receiver) refused or could not be reached.
    #[error("{what}: {message}")]
    Remote { what: String, message: String },
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
    pub(crate) fn remote(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        BillingError::Remote {
            what: what.into(),
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

/// A bounded, escaped excerpt of a value for an error message: at most 64 characters, plus the
/// value's length when it is longer. Error text never embeds unbounded input.
pub fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    let head: String = s.chars().take(MAX).collect();
    let esc: String = head.escape_debug().collect();
    if head.len() == s.len() {
        format!("\"{esc}\"")
    } else {
        format!("\"{esc}\"… ({} bytes)", s.len())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn excerpts_are_bounded() {
        assert_eq!(super::excerpt("Wh"), "\"Wh\"");
        let long = "x".repeat(1_000_000);
        let e = super::excerpt(&long);
        assert!(e.len() < 100 && e.ends_with("(1000000 bytes)"), "{e}");
        assert_eq!(super::excerpt("a\nb"), "\"a\\nb\"");
    }
}
