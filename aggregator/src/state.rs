//! The aggregator's small persistent state (`usage/_state/aggregator.json`): the newest
//! event time seen per device (the watermark is that minus the allowed lateness) and the
//! raw files already processed. Losing it is harmless: the next run reprocesses every raw
//! file, finds the tables already current and writes nothing (only the late-reading
//! counter is then off).

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
