//! The stages of an export run, each with clear inputs and outputs:
//!
//! 1. [`plan`]: customers, devices and billed ranges; the chunks of customers;
//! 2. [`load`]: the usage and raw rows of one chunk's devices only;
//! 3. [`price`]: each device channel priced with the customer's tariff;
//! 4. [`charges`]: fixed charges per site and the tax lines;
//! 5. [`reconcile`]: billed = usage = raw register difference, the meter table; [`hold`]:
//!    the `[hold]` rules (estimated share, open exceptions);
//! 6. [`ledger`]: this run's lines against what earlier runs exported (adjustments);
//! 7. [`publish`]: the files of the run, streamed chunk by chunk, renamed into place.
//!
//! Stages 3 to 5 make up the billing of one customer ([`crate::bill`]); [`crate::export`]
//! drives the chunks through them. Memory is bounded by the chunk size
//! ([`crate::ExportConfig::chunk_customers`]), not by the number of customers.

pub(crate) mod charges;
pub(crate) mod hold;
pub(crate) mod ledger;
pub(crate) mod load;
pub(crate) mod plan;
pub(crate) mod price;
pub(crate) mod publish;
pub(crate) mod reconcile;
