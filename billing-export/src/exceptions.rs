//! Held customers: a customer whose data cannot be billed (a bad usage or raw series, a
//! channel a tariff component cannot price, a reconciliation mismatch, an arithmetic overflow)
//! is left out of the run with its reasons in `exceptions.csv`, while everyone else is billed.
//! Its earlier exported lines (if any) stay in the ledger unchanged; once the data is fixed,
//! the next run bills it.

use serde::{Deserialize, Serialize};

/// One reason a customer is held (one row of `exceptions.csv`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Exception {
    pub customer_id: String,
    /// Empty when the reason is not about one site, device or channel.
    pub site_id: String,
    pub device_id: String,
    pub channel: String,
    /// Bounded text (values from the data appear as short escaped excerpts).
    pub reason: String,
}

/// Header of `exceptions.csv`.
pub const HEADER: &str = "customer_id,site_id,device_id,channel,reason";

/// `exceptions.csv`: every column is text, neutralised as in [`crate::csv_out`].
pub fn to_csv(rows: &[Exception]) -> String {
    let mut out = String::from(HEADER);
    out.push_str("\r\n");
    for e in rows {
        crate::csv_out::row(
            &mut out,
            &[
                (&e.customer_id, true),
                (&e.site_id, true),
                (&e.device_id, true),
                (&e.channel, true),
                (&e.reason, true),
            ],
        );
    }
    out
}
