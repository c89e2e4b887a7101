//! Tariffs (TOML, see README.md) and how one device channel's intervals are priced.
//!
//! Every component prices one *quantity* (a name the registry maps channels to, e.g.
//! `import_energy`) in one billing *unit* (see [`crate::units`]). A tariff is a list of
//! components; a customer has one tariff.
//!
//! - [`model`]: the tariff file's structures;
//! - [`validate`]: the checks of a tariff file, every problem at once;
//! - [`pricing`]: one channel's intervals priced with one component;
//! - [`tou`]: the time-of-use period of an interval.

pub mod model;
pub mod pricing;
pub mod tou;
pub mod validate;

pub use model::*;
pub use pricing::*;
pub use tou::Classifier;
