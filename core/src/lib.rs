//! gridmeter-core: the language every gridmeter component speaks.
//!
//! - [`model`]: a reading is `(device_id, seq, ts, channel, kind, unit, value, quality)`;
//!   `(device_id, seq)` is its identity everywhere.
//! - [`wire`]: wire format v1 (MQTT topic, JSON and compact encodings, a decoder that
//!   never panics and names what is wrong and where).
//! - [`config`]: TOML loading that reports every problem at once.
//! - [`tls`]: rustls client configuration from PEM files, reloaded at every connection,
//!   with certificate errors an operator can act on.
//! - [`identity`]: certificate roles (device, collector, broker, client) and their names.
//! - [`text`]: bounded excerpts of untrusted text for error messages.
//! - [`metrics`]: a tiny `/metrics` HTTP endpoint for a Prometheus registry.
//! - `pki` (feature `pki`): a CA issuing, renewing and revoking (CRL) the broker, collector
//!   and device certificates.
//! - `schema` (feature `arrow`): the Arrow schemas of the raw and usage tables.
//! - `store` (feature `store`): the `[object_store]` config section and the S3 store it names.

pub mod config;
pub mod decimal;
pub mod identity;
pub mod metrics;
pub mod model;
#[cfg(feature = "pki")]
pub mod pki;
#[cfg(feature = "arrow")]
pub mod schema;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod text;
pub mod tls;
pub mod wire;

pub use model::{Batch, Channel, DeviceId, Gap, GapReason, Kind, Quality, Reading};
