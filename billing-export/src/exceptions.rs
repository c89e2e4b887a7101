//! Held customers: a customer whose data cannot be billed (a bad usage or raw series, a
//! channel a tariff component cannot price, a reconciliation mismatch, an arithmetic overflow)
//! or whose bill a `[hold]` rule sends to review (too much estimated usage, an open
//! validation exception) is left out of the run with its reasons in `exceptions.csv`, while
//! everyone else is billed.
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

/// How the reasons of the `[hold]` rules begin: the estimated share rule's.
pub const HOLD_ESTIMATED_SHARE: &str = "hold rule max_estimated_share";
/// How the reasons of the `[hold]` rules begin: the open exception rule's.
pub const HOLD_OPEN_EXCEPTION: &str = "hold rule exception_severity";

/// The kinds of reasons, as [`reason_kind`] names them (the metrics' `reason` label).
pub const REASON_KINDS: [&str; 3] = ["estimated_share", "open_exception", "data"];

/// The kind of a reason: `estimated_share` and `open_exception` for the `[hold]` rules,
/// `data` for everything else (data that cannot be billed).
pub fn reason_kind(reason: &str) -> &'static str {
    if reason.starts_with(HOLD_ESTIMATED_SHARE) {
        REASON_KINDS[0]
    } else if reason.starts_with(HOLD_OPEN_EXCEPTION) {
        REASON_KINDS[1]
    } else {
        REASON_KINDS[2]
    }
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
