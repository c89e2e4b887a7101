//! The aggregator's small persistent state (`_state/<app>.json` under the data root, one per
//! shard: `aggregator.json`, `aggregator-shard-1-of-3.json`): the newest event time seen per
//! device (the watermark is that minus the allowed lateness), the `raw` files already
//! processed and the `raw` version they were read at. Losing it is harmless: the next run
//! reprocesses every raw file, finds the tables already current and writes nothing (only the
//! late-reading counter is then off). Devices whose aggregation failed are listed in `held`
//! with the reason (see [`HeldDevice`]).

use std::collections::{BTreeMap, BTreeSet};

use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Where the state of `app` is, relative to the data root.
pub fn path(app: &str) -> String {
    format!("_state/{app}.json")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Newest event time per device, µs since the epoch.
    pub watermarks: BTreeMap<String, i64>,
    /// Files of the `raw` table (paths relative to the table) already aggregated.
    pub processed: BTreeSet<String>,
    /// The `raw` table version `processed` was read at.
    #[serde(default)]
    pub raw_version: Option<i64>,
    /// Devices held back: one of their series could not be aggregated. Their watermark did
    /// not advance; every run retries them from `earliest_new_us` until they succeed.
    #[serde(default)]
    pub held: BTreeMap<String, HeldDevice>,
}

/// A device whose aggregation failed, and the span of readings still to aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldDevice {
    /// Why (the series and what went wrong).
    pub reason: String,
    /// Earliest event time (µs) of the readings not aggregated yet.
    pub earliest_new_us: i64,
    /// Newest trusted event time (µs) among them.
    pub max_trusted_us: Option<i64>,
}

impl State {
    /// The state of `app` (empty if there is none yet).
    pub async fn load(store: &dyn ObjectStore, app: &str) -> Result<State, Error> {
        let path = path(app);
        match store
            .get(&object_store::path::Path::from(path.as_str()))
            .await
        {
            Ok(r) => {
                let bytes = r.bytes().await?;
                serde_json::from_slice(&bytes).map_err(|e| Error::State(format!("{path}: {e}")))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(State::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the state file atomically (object_store put).
    pub async fn save(&self, store: &dyn ObjectStore, app: &str) -> Result<(), Error> {
        let body = serde_json::to_vec(self).map_err(|e| Error::State(e.to_string()))?;
        store
            .put(
                &object_store::path::Path::from(path(app).as_str()),
                PutPayload::from(body),
            )
            .await?;
        Ok(())
    }
}
