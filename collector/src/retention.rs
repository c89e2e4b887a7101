//! Retention of the dead letters: `gridmeter-collector deadletter prune --older-than 90d`.
//!
//! Dead letters are partitioned by the UTC date they were received
//! (`deadletter/date=YYYY-MM-DD/…`). Pruning removes every partition whose date is before
//! `now − older_than` (whole days: a partition goes once all of its day is older than
//! that). Nothing else under the data root is touched. Run it daily (a timer or CronJob);
//! re-running is harmless.

use chrono::{DateTime, NaiveDate, Utc};

pub use gridmeter_tables::deadletter::PruneStats;

use crate::landing::{Landing, LandingError};

/// Removes the dead-letter partitions received before `now − older_than` (one commit; the
/// files stay for readers of older table versions until `vacuum` deletes them).
pub async fn prune_deadletters(
    landing: &Landing,
    older_than: std::time::Duration,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneStats, LandingError> {
    let age = chrono::Duration::from_std(older_than)
        .map_err(|_| LandingError::Config("--older-than is too large".into()))?;
    let cutoff = now
        .checked_sub_signed(age)
        .map(|t| t.date_naive())
        .unwrap_or(NaiveDate::MIN);
    Ok(gridmeter_tables::deadletter::prune(landing.deadletter(), cutoff, dry_run).await?)
}
