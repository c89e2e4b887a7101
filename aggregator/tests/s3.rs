//! The aggregator on S3: the `raw` Delta table in a bucket of a real S3 server (moto, on
//! 127.0.0.1), `run_once` with an `[object_store]` config, and the usage rows equal those
//! aggregated from the same table in a local `data_root`, through a first run, a late file
//! (revisions) and a rebuild. The state file and the usage tables land in the bucket under
//! the URL's prefix, committed with conditional PUTs.
//!
//! Needs `python3` with `moto[server]` (`.ci/requirements.txt`); skipped with a message
//! when `import moto` fails.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{write_raw, Raw, DAY};
use futures::StreamExt;
use gridmeter_aggregator::series::LATE;
use gridmeter_aggregator::{AggregatorConfig, Metrics, RunSummary, UsageRow};
use gridmeter_core::testkit::{upload_dir, Moto};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use rust_decimal::Decimal;

const MIN: i64 = 60_000_000;
const BASE: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
const BUCKET: &str = "gridmeter";
const PREFIX: &str = "fleet/prod";

/// 15-minute readings (jittered) of a few meters for `days` days: an energy counter (one
/// meter near its register maximum, so it rolls over) and a power gauge.
fn readings(devices: usize, days: i64) -> Vec<Raw> {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut rows = Vec::new();
    for d in 0..devices {
        let device = format!("meter-{d:02}");
        let mut v: i128 = if d == 0 {
            999_990_000_000_000
        } else {
            (next() % 50_000) as i128 * 1_000_000_000
        };
        let mut seq = 0;
        for k in 0..=(days * 96) {
            let tick = BASE + k * 15 * MIN;
            let ts = tick + (next() % (4 * MIN as u64)) as i64;
            if k > 0 {
                v += (next() % 2_000_000) as i128 * 1_000_000;
                if v > 999_999_000_000_000 {
                    v -= 1_000_000_000_000_000;
                }
            }
            for (channel, kind, value) in [
                ("energy_import", "counter", v),
                ("power", "gauge", (next() % 5_000_000) as i128 * 1_000),
            ] {
                seq += 1;
                rows.push(Raw {
                    device: device.clone(),
                    channel: channel.into(),
                    kind,
                    seq,
                    ts,
                    value,
                    quality: "",
                    received_at: ts + 1_500_000,
                });
            }
        }
    }
    rows
}

/// Copies the files of the local `raw` table (data and log) that `store` does not hold yet
/// into it, byte for byte; returns how many data files were copied.
async fn upload_raw(local: &Path, store: &dyn ObjectStore) -> usize {
    let data = |keys: Vec<String>| {
        keys.iter()
            .filter(|k| k.ends_with(".parquet") && !k.contains("_delta_log"))
            .count()
    };
    let before = data(keys(store, "raw").await);
    upload_dir(&local.join("raw"), store, "raw").await;
    data(keys(store, "raw").await) - before
}

/// Rows without what differs between two runs of the same computation.
fn values(rows: &[UsageRow]) -> Vec<UsageRow> {
    rows.iter()
        .map(|r| UsageRow {
            computed_at: 0,
            ..r.clone()
        })
        .collect()
}

async fn current_all(cfg: &AggregatorConfig) -> Vec<(String, Vec<UsageRow>)> {
    let mut out = Vec::new();
    for w in ["15m", "1h", "1d"] {
        let rows = gridmeter_aggregator::current(cfg, w)
            .await
            .unwrap_or_else(|e| panic!("current {w}: {e}"));
        out.push((w.to_string(), values(&rows)));
    }
    out
}

fn same_summary(s3: &RunSummary, local: &RunSummary) {
    assert_eq!(s3.files_processed, local.files_processed);
    assert_eq!(s3.readings_processed, local.readings_processed);
    assert_eq!(s3.late_readings, local.late_readings);
    assert_eq!(s3.rows_written, local.rows_written);
    assert_eq!(s3.revisions, local.revisions);
    assert_eq!(s3.commits, local.commits);
}

async fn keys(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let prefix = ObjectPath::from(prefix);
    let mut out = Vec::new();
    let mut listing = store.list(Some(&prefix));
    while let Some(meta) = listing.next().await {
        out.push(meta.expect("list").location.to_string());
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_usage_equals_local_usage() {
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.create_bucket(BUCKET);
    let url = format!("s3://{BUCKET}/{PREFIX}");
    let os = moto.config(&url);
    let s3_root: Arc<dyn ObjectStore> = os.open().expect("S3 store");
    let bucket: Arc<dyn ObjectStore> = os.bucket_store().expect("S3 bucket store");

    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("data");
    let mut raw = readings(6, 3);
    // One reading of meter-03 on day 1 (11:xx) is held back; it arrives late.
    let late_at = raw
        .iter()
        .position(|r| r.device == "meter-03" && r.ts > BASE + DAY + 11 * 60 * MIN)
        .unwrap();
    let late = raw.remove(late_at);
    // Two collectors; the second also landed a redelivered copy of meter-02's day 0
    // (received later: the first copy wins).
    let (a, b): (Vec<Raw>, Vec<Raw>) = raw
        .into_iter()
        .partition(|r| r.device.as_str() < "meter-03");
    let dup: Vec<Raw> = a
        .iter()
        .filter(|r| r.device == "meter-02" && r.ts < BASE + DAY)
        .map(|r| Raw {
            received_at: r.received_at + 60_000_000,
            ..r.clone()
        })
        .collect();
    write_raw(&local, "c1-0000000000000000-0", &a);
    write_raw(&local, "c2-0000000000000000-0", &[b, dup].concat());
    let uploaded = upload_raw(&local, s3_root.as_ref()).await;
    // Days 0 to 3 (the last reading falls just after day 2's end) from each collector.
    assert_eq!(uploaded, 8, "4 day partitions from each of 2 collectors");
    // The files are in the bucket under the URL's prefix.
    let raw_keys: Vec<String> = keys(bucket.as_ref(), &format!("{PREFIX}/raw"))
        .await
        .into_iter()
        .filter(|k| !k.contains("_delta_log"))
        .collect();
    assert_eq!(raw_keys.len(), 8);
    assert!(raw_keys[0].starts_with("fleet/prod/raw/date=2026-01-01/"));

    let register_max = Some(Decimal::from(999_999));
    let mut local_cfg = AggregatorConfig::new(&local);
    local_cfg.default_register_max = register_max;
    let mut s3_cfg = AggregatorConfig::on_object_store(os.clone());
    s3_cfg.default_register_max = register_max;
    // The same config in its TOML form.
    let parsed: AggregatorConfig = gridmeter_core::config::parse(
        &format!(
            "default_register_max = \"999999\"\n[object_store]\nurl = \"{url}\"\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\nallow_http = true\n",
            moto.endpoint()
        ),
        "aggregator.toml",
    )
    .expect("the TOML form of the S3 config");
    assert_eq!(parsed.object_store, s3_cfg.object_store);
    assert_eq!(parsed.data_root, None);
    let metrics = Metrics::unregistered();

    // First run: same summary, same rows.
    let s_local = gridmeter_aggregator::run_once(&local_cfg, &metrics)
        .await
        .expect("local run");
    let s_s3 = gridmeter_aggregator::run_once(&s3_cfg, &metrics)
        .await
        .expect("S3 run");
    eprintln!("S3 run: {s_s3:?}");
    same_summary(&s_s3, &s_local);
    assert_eq!(s_s3.files_processed, 8);
    assert!(s_s3.rows_written["15m"] > 0);
    let first = current_all(&s3_cfg).await;
    assert_eq!(first, current_all(&local_cfg).await, "first run");
    let rollovers = first[0]
        .1
        .iter()
        .filter(|r| r.flags.contains(gridmeter_aggregator::series::ROLLOVER))
        .count();
    assert!(rollovers > 0, "meter-00 rolls over");

    // Nothing new: the state file read back from S3 says every file is processed.
    let again = gridmeter_aggregator::run_once(&s3_cfg, &metrics)
        .await
        .expect("S3 run again");
    assert_eq!(again.files_processed, 0);
    assert!(again.rows_written.is_empty());

    // The late reading lands (on both), and is restated as revision 2 on both.
    write_raw(&local, "c2-0000000000000001-0", std::slice::from_ref(&late));
    assert_eq!(upload_raw(&local, s3_root.as_ref()).await, 1);
    let s_local = gridmeter_aggregator::run_once(&local_cfg, &metrics)
        .await
        .expect("local late run");
    let s_s3 = gridmeter_aggregator::run_once(&s3_cfg, &metrics)
        .await
        .expect("S3 late run");
    same_summary(&s_s3, &s_local);
    assert_eq!(s_s3.late_readings, 1);
    assert!(s_s3.revisions["15m"] >= 1, "{s_s3:?}");
    let after = current_all(&s3_cfg).await;
    assert_eq!(after, current_all(&local_cfg).await, "after the late file");
    let revised: Vec<&UsageRow> = after[0].1.iter().filter(|r| r.revision == 2).collect();
    assert!(!revised.is_empty());
    assert!(revised
        .iter()
        .all(|r| r.device_id == "meter-03" && r.flags.contains(LATE)));

    // A rebuild over S3 reads the tables back and finds nothing to change.
    let from = chrono::DateTime::from_timestamp_micros(BASE - DAY).unwrap();
    let to = chrono::DateTime::from_timestamp_micros(BASE + 5 * DAY).unwrap();
    let rebuilt = gridmeter_aggregator::rebuild(&s3_cfg, from, to, &metrics)
        .await
        .expect("S3 rebuild");
    assert!(rebuilt.rows_written.is_empty(), "{rebuilt:?}");

    // What the aggregator wrote is in the bucket under the prefix, nowhere else.
    let all = keys(bucket.as_ref(), PREFIX).await;
    for k in [
        "fleet/prod/_state/aggregator.json",
        "fleet/prod/usage_15m/_delta_log/00000000000000000001.json",
        "fleet/prod/usage_15m/_delta_log/00000000000000000002.json",
        "fleet/prod/usage_history_15m/_delta_log/00000000000000000002.json",
        "fleet/prod/usage_1d/_delta_log/00000000000000000000.json",
    ] {
        assert!(all.iter().any(|u| u == k), "{k} missing in {all:#?}");
    }
    for outside in ["usage_15m", "usage_history_15m", "_state"] {
        assert_eq!(
            keys(bucket.as_ref(), outside).await,
            Vec::<String>::new(),
            "nothing outside the prefix"
        );
    }
    let state: serde_json::Value = serde_json::from_slice(
        &s3_root
            .get(&ObjectPath::from("_state/aggregator.json"))
            .await
            .expect("state file")
            .bytes()
            .await
            .expect("state bytes"),
    )
    .expect("state JSON");
    assert_eq!(state["processed"].as_array().map(Vec::len), Some(9));

    // Delta commits are conditional creates, which S3 honours: a second writer of a taken
    // version fails instead of overwriting the commit.
    let claim = s3_root
        .put_opts(
            &ObjectPath::from("usage_15m/_delta_log/00000000000000000001.json"),
            PutPayload::from_static(b"{}"),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(claim, Err(object_store::Error::AlreadyExists { .. })),
        "{claim:?}"
    );
}
