//! Retention of the dead letters: `gridmeter-collector deadletter prune --older-than 90d`.
//!
//! Dead letters are partitioned by the UTC date they were received
//! (`deadletter/date=YYYY-MM-DD/…`). Pruning deletes every partition whose date is before
//! `now − older_than` (whole days: a partition goes once all of its day is older than
//! that). Nothing else under the data root is touched. Run it daily (a timer or CronJob);
//! re-running is harmless.

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use crate::landing::{Landing, LandingError};

/// What a prune did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneStats {
    /// Dates of the partitions deleted, ascending.
    pub pruned: Vec<NaiveDate>,
    /// Files deleted.
    pub files: usize,
    /// Partitions kept.
    pub kept: usize,
}

/// Deletes the dead-letter partitions received before `now − older_than`.
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
    let store = landing.store().clone();
    let files: Vec<Path> = store
        .list(Some(&Path::from("deadletter")))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    let mut by_date: std::collections::BTreeMap<NaiveDate, Vec<Path>> = Default::default();
    for f in files {
        let date = f.parts().find_map(|p| {
            p.as_ref()
                .strip_prefix("date=")
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        });
        match date {
            Some(d) => by_date.entry(d).or_default().push(f),
            None => tracing::warn!(path = %f, "not in a date=YYYY-MM-DD partition; left alone"),
        }
    }
    let mut stats = PruneStats::default();
    for (date, files) in by_date {
        if date >= cutoff {
            stats.kept += 1;
            continue;
        }
        for f in &files {
            if !dry_run {
                store.delete(f).await?;
            }
            stats.files += 1;
        }
        stats.pruned.push(date);
    }
    Ok(stats)
}
