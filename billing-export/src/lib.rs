//! gridmeter-billing: registry + tariffs + usage -> statements, invoices, Green Button and a
//! reconciliation the billing team can trust.
//!
//! - Reads the `usage_15m` (current revision per key) and `raw` Delta tables under the data root only
//!   through the contract in ARCHITECTURE.md ([`tables`]).
//! - Prices each device channel with the customer's tariff ([`tariff`]) in exact decimals,
//!   rounding once per line ([`money`]).
//! - Reconciles billed = usage = raw register difference ([`reconcile`]); a customer with a
//!   mismatch, a bad series or a channel its tariff cannot price is held with the reason in
//!   `exceptions.csv` ([`exceptions`]), and everyone else is billed.
//! - Writes `<out_dir>/exports/<period>/run-NNNN/` atomically; a later run of the same period
//!   writes only adjustment lines against the previous run's ledger; same inputs give the
//!   same bytes.
//!
//! ```no_run
//! # use gridmeter_billing::*;
//! let cfg = ExportConfig::load(std::path::Path::new("billing.toml"))?;
//! let summary = run(&cfg, "2026-10".parse::<Period>().map_err(BillingError::Input)?)?;
//! println!("{:?}", summary.run_dir);
//! # Ok::<(), BillingError>(())
//! ```

mod bill;
pub mod config;
pub mod csv_out;
pub mod error;
pub mod espi;
pub mod exceptions;
mod export;
pub mod invoice;
mod metrics;
pub mod money;
pub mod numbering;
pub mod period;
pub mod push;
pub mod quality;
pub mod reconcile;
pub mod registry;
mod stage;
pub mod statement;
pub mod tables;
pub mod tariff;
pub mod units;
pub mod webhooks;

pub use config::{ExportConfig, DEFAULT_CHUNK_CUSTOMERS};
pub use error::BillingError;
pub use exceptions::Exception;
pub use export::{run, ExportSummary};
pub use money::Rounding;
pub use period::Period;
pub use push::{push, PushSummary, Target};
pub use registry::{ChannelSpec, Customer, Device, Issuer, Registry, Site};
pub use tariff::{Component, Tariff, Tariffs};
