//! The checkpoint: the dedup state as of the end of the last landed WAL segment.
//!
//! Written after that segment's Parquet files, atomically (temporary file, fsync, rename,
//! fsync of the directory), as `<wal_dir>/checkpoint.bin` =
//! `"GMCK" [version 2] [crc32 LE] [postcard(Checkpoint)]` (version 1, written before the
//! per-device floor and content history existed, is still read). At start-up the collector loads
//! it and replays the WAL segments after `last_segment` on top of it; because each segment
//! is replayed from exactly the state it was first processed with, replay makes the same
//! decisions (and the same files) as the first run.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dedup::{DedupState, DeviceState};
use crate::wal::sync_dir;

const MAGIC: &[u8; 5] = b"GMCK\x02";
const MAGIC_V1: &[u8; 5] = b"GMCK\x01";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last WAL segment whose output is in the object store (and whose effects are in
    /// `state`).
    pub last_segment: Option<u64>,
    pub state: DedupState,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is corrupt ({why}); refusing to start without dedup state (restore it or remove it deliberately)")]
    Corrupt { path: PathBuf, why: String },
}

pub fn path(wal_dir: &Path) -> PathBuf {
    wal_dir.join("checkpoint.bin")
}

/// Loads the checkpoint; a missing file is an empty state.
pub fn load(wal_dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let p = path(wal_dir);
    let data = match std::fs::read(&p) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
        Err(source) => return Err(CheckpointError::Io { path: p, source }),
    };
    let corrupt = |why: &str| CheckpointError::Corrupt {
        path: p.clone(),
        why: why.to_string(),
    };
    if data.len() < MAGIC.len() + 4 {
        return Err(corrupt("bad header"));
    }
    let v1 = match &data[..MAGIC.len()] {
        m if m == MAGIC => false,
        m if m == MAGIC_V1 => true,
        _ => return Err(corrupt("bad header")),
    };
    let crc_bytes: [u8; 4] = data[MAGIC.len()..MAGIC.len() + 4]
        .try_into()
        .map_err(|_| corrupt("short"))?;
    let body = &data[MAGIC.len() + 4..];
    if crc32fast::hash(body) != u32::from_le_bytes(crc_bytes) {
        return Err(corrupt("CRC mismatch"));
    }
    if v1 {
        return postcard::from_bytes::<v1::Checkpoint>(body)
            .map(Checkpoint::from)
            .map_err(|e| corrupt(&e.to_string()));
    }
    postcard::from_bytes(body).map_err(|e| corrupt(&e.to_string()))
}

/// The version 1 layout, read once after an upgrade.
mod v1 {
    use std::collections::HashMap;

    use serde::Deserialize;

    use crate::dedup::IntervalSet;

    #[derive(Deserialize)]
    pub struct Checkpoint {
        pub last_segment: Option<u64>,
        pub state: DedupState,
    }

    #[derive(Deserialize)]
    pub struct DedupState {
        pub devices: HashMap<String, DeviceState>,
        pub clock_us: i64,
    }

    #[derive(Deserialize)]
    pub struct DeviceState {
        pub seen: IntervalSet,
        pub lost: IntervalSet,
        pub declared_through: Option<u64>,
        pub pending_mark: u64,
        pub pending_since_us: i64,
        pub last_seen_us: i64,
    }
}

impl From<v1::Checkpoint> for Checkpoint {
    fn from(c: v1::Checkpoint) -> Checkpoint {
        let devices = c
            .state
            .devices
            .into_iter()
            .map(|(id, d)| {
                let state = DeviceState {
                    seen: d.seen,
                    lost: d.lost,
                    declared_through: d.declared_through,
                    pending_mark: d.pending_mark,
                    pending_since_us: d.pending_since_us,
                    last_seen_us: d.last_seen_us,
                    // Not recorded by version 1. A day past the last message bounds the ts of
                    // every reading it landed but one from a clock more than a day ahead
                    // (whose redelivery then reads as a regression: a false alarm, since it
                    // is already landed, never a loss).
                    max_ts_us: d.last_seen_us.saturating_add(86_400_000_000),
                    ..DeviceState::default()
                };
                (id, state)
            })
            .collect();
        Checkpoint {
            last_segment: c.last_segment,
            state: DedupState {
                devices,
                clock_us: c.state.clock_us,
            },
        }
    }
}

/// Writes the checkpoint atomically and durably.
pub fn store(wal_dir: &Path, cp: &Checkpoint) -> Result<(), CheckpointError> {
    let p = path(wal_dir);
    let tmp = wal_dir.join("checkpoint.bin.tmp");
    let io = |source| CheckpointError::Io {
        path: p.clone(),
        source,
    };
    let body = postcard::to_allocvec(cp).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(MAGIC).map_err(io)?;
    f.write_all(&crc32fast::hash(&body).to_le_bytes())
        .map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &p).map_err(io)?;
    sync_dir(wal_dir).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Checkpoint::default());
        let mut cp = Checkpoint {
            last_segment: Some(3),
            ..Default::default()
        };
        cp.state
            .devices
            .entry("d1".into())
            .or_default()
            .seen
            .insert_range(1, 100);
        cp.state.clock_us = 42;
        store(dir.path(), &cp).unwrap();
        assert_eq!(load(dir.path()).unwrap(), cp);
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(path(dir.path()), bytes).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(CheckpointError::Corrupt { .. })
        ));
    }

    /// A version 1 checkpoint (before floors and content history) still loads.
    #[test]
    fn version_1_is_read() {
        #[derive(serde::Serialize)]
        struct V1Device {
            seen: Vec<(u64, u64)>,
            lost: Vec<(u64, u64)>,
            declared_through: Option<u64>,
            pending_mark: u64,
            pending_since_us: i64,
            last_seen_us: i64,
        }
        let devices = std::collections::HashMap::from([(
            "d1".to_string(),
            V1Device {
                seen: vec![(1, 100), (102, 110)],
                lost: vec![(101, 101)],
                declared_through: Some(100),
                pending_mark: 110,
                pending_since_us: 5,
                last_seen_us: 6,
            },
        )]);
        let body = postcard::to_allocvec(&(Some(7u64), (devices, 42i64))).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut file = MAGIC_V1.to_vec();
        file.extend(crc32fast::hash(&body).to_le_bytes());
        file.extend(&body);
        std::fs::write(path(dir.path()), file).unwrap();
        let cp = load(dir.path()).unwrap();
        assert_eq!(cp.last_segment, Some(7));
        assert_eq!(cp.state.clock_us, 42);
        let d = &cp.state.devices["d1"];
        assert_eq!(d.seen.ranges(), vec![(1, 100), (102, 110)]);
        assert_eq!(d.lost.ranges(), vec![(101, 101)]);
        assert_eq!((d.pending_mark, d.last_seen_us, d.floor), (110, 6, None));
        assert_eq!(d.max_ts_us, 6 + 86_400_000_000);
        // A redelivery of a seq landed before the upgrade is a duplicate, not a regression.
        assert_eq!(d.verdict(50, 0, 5), crate::dedup::Verdict::Duplicate);
    }
}
