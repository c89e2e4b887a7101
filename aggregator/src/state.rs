//! The aggregator's small persistent state (`usage/_state/aggregator.json`): the newest
//! event time seen per device (the watermark is that minus the allowed lateness) and the
//! raw files already processed. Losing it is harmless: the next run reprocesses every raw
//! file, finds the tables already current and writes nothing (only the late-reading
//! counter is then off). Devices whose aggregation failed are listed in `held` with the
//! reason (see [`HeldDevice`]).

use std::collections::{BTreeMap, BTreeSet};

use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::Error;

const PATH: &str = "usage/_state/aggregator.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Newest event time per device, µs since the epoch.
    pub watermarks: BTreeMap<String, i64>,
    /// Raw files (paths relative to the data root) already aggregated.
    pub processed: BTreeSet<String>,
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
    pub async fn load(store: &dyn ObjectStore) -> Result<State, Error> {
        match store.get(&object_store::path::Path::from(PATH)).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                serde_json::from_slice(&bytes).map_err(|e| Error::State(format!("{PATH}: {e}")))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(State::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the state file atomically (object_store put).
    pub async fn save(&self, store: &dyn ObjectStore) -> Result<(), Error> {
        let body = serde_json::to_vec(self).map_err(|e| Error::State(e.to_string()))?;
        store
            .put(
                &object_store::path::Path::from(PATH),
                PutPayload::from(body),
            )
            .await?;
        Ok(())
    }
}
