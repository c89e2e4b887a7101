//! Benchmark (run by `bench/aggregator/run.sh`, release build):
//! 1. one day of 1-minute counter data from N devices (default 10,000: 14.4 M readings) in
//!    the `raw` Delta table (24 hourly commits of one file each, like collector segments);
//! 2. the aggregator over it: `gridmeter-aggregator run` (the release binary, a fresh
//!    process, on its own copy of the table), then `run_once` in this process (whose heap the
//!    generator has used); readings/s and readings/s per core of the latter;
//! 3. the same windowed query (dedup by (device_id, seq), 15m/1h/1d buckets with count,
//!    first/last ts, min/max and last-minus-first register) in DuckDB on the same files (the
//!    table's files as its Delta log lists them), in the same run (python3 + duckdb, same
//!    number of threads);
//! 4. one late reading for one device: time of the restatement (`run_once`);
//! 5. VEE on: the same raw (a copy of the table) aggregated with `[vee]` (every rule
//!    configured, the households' H0 standard load profile for long gaps); 1 % of the
//!    meters have a 4-hour gap at midday, estimated by the profile. Time against the VEE-off
//!    run of step 2 and DuckDB of step 3, same run;
//! 6. VEE off again, on a third copy, after the VEE run: the VEE ratio is taken against
//!    the faster of the two VEE-off runs, so the order of the runs does not favour either.
//!
//! The generated files are flushed to disk (`sync`) before anything is timed.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use gridmeter_aggregator::{AggregatorConfig, Metrics};

const MIN: i64 = 60_000_000;
const BASE: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

#[allow(clippy::too_many_arguments)]
fn batch(
    devices: &[String],
    ts: Vec<i64>,
    dev_idx: Vec<usize>,
    seqs: Vec<i64>,
    values: Vec<i128>,
) -> RecordBatch {
    let n = ts.len();
    let t = |v: &[i64]| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(v.iter().copied()).with_timezone("UTC"),
        )
    };
    let rec: Vec<i64> = ts.iter().map(|t| t + 1_500_000).collect();
    RecordBatch::try_new(
        gridmeter_core::schema::raw(),
        vec![
            Arc::new(StringArray::from_iter_values(
                dev_idx.iter().map(|&i| devices[i].as_str()),
            )),
            Arc::new(Int64Array::from(seqs)),
            t(&ts),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "energy_import",
                n,
            ))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "counter", n,
            ))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n("Wh", n))),
            Arc::new(
                Decimal128Array::from(values)
                    .with_precision_and_scale(38, 9)
                    .unwrap(),
            ),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n("", n))),
            t(&rec),
        ],
    )
    .unwrap()
}

/// Commits `b` to the `raw` table as one file of one day (a collector segment's commit).
fn write(rt: &tokio::runtime::Runtime, dir: &std::path::Path, name: &str, b: RecordBatch) {
    rt.block_on(async {
        let root = gridmeter_tables::Root::open(&gridmeter_core::store::DataRoot::Local(
            dir.to_path_buf(),
        ))
        .unwrap();
        let table = gridmeter_tables::raw::open(&root).await.unwrap();
        let date = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let file = gridmeter_tables::delta::NewFile {
            path: format!("date={date}/{name}.parquet"),
            date: Some(date),
            batch: b,
            tags: vec![],
        };
        table
            .append_once(
                &format!("bench/{name}"),
                1,
                vec![file],
                gridmeter_tables::parquet_io::Profile::Raw,
                "",
            )
            .await
            .unwrap();
    });
}

/// `gridmeter-aggregator run` (the release binary next to this example) over the raw table
/// under `data_root`, every window final: its wall time in seconds.
fn aggregator_process(data_root: &std::path::Path) -> f64 {
    let conf = data_root.with_extension("toml");
    std::fs::write(
        &conf,
        format!(
            "data_root = \"{}\"\nallowed_lateness = \"0s\"\n",
            data_root.display()
        ),
    )
    .unwrap();
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release/gridmeter-aggregator");
    let t = Instant::now();
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(&conf)
        .arg("run")
        .env("RUST_LOG", "warn")
        .output()
        .expect("build the release binary first (bench/aggregator/run.sh does)");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or("/tmp/gridmeter-agg-bench".into()),
    );
    let n_devices: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let _ = std::fs::remove_dir_all(&dir);
    let devices: Vec<String> = (0..n_devices).map(|i| format!("meter-{i:05}")).collect();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .unwrap();

    // 1. Raw: one file per hour, rows in arrival (time) order.
    let t0 = Instant::now();
    let mut values: Vec<i128> = (0..n_devices)
        .map(|i| (i as i128 % 1000) * 1_000_000_000_000)
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for hour in 0..24 {
        let (mut ts, mut di, mut seqs, mut vs) = (vec![], vec![], vec![], vec![]);
        for m in 0..60 {
            let minute = hour * 60 + m;
            for (d, v) in values.iter_mut().enumerate() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *v += (state % 20_000) as i128 * 1_000_000; // 0..20 Wh, 3 decimals
                                                            // 1 % of the meters do not report from 10:00 to 14:00.
                if d % 100 == 7 && (600..840).contains(&minute) {
                    continue;
                }
                ts.push(BASE + minute * MIN + (d as i64 % 60) * 1_000_000);
                di.push(d);
                seqs.push(minute + 1);
                vs.push(*v);
            }
        }
        let b = batch(&devices, ts, di, seqs, vs);
        write(&rt, &dir, &format!("bench-{hour:02}"), b);
    }
    let readings = n_devices as u64 * 1440 - (n_devices as u64).div_ceil(100) * 240;
    // Copies of the raw table, made before any usage table exists: for the VEE run, the
    // second VEE-off run and the aggregator process.
    let sibling = |suffix: &str| {
        dir.with_file_name(format!(
            "{}-{suffix}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("bench")
        ))
    };
    let (vee_dir, off_dir, process_dir) = (sibling("vee"), sibling("off"), sibling("process"));
    for copy in [&vee_dir, &off_dir, &process_dir] {
        let _ = std::fs::remove_dir_all(copy);
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(&dir)
            .arg(copy)
            .status()
            .unwrap();
        assert!(copied.success());
    }
    // Writeback of the generated files must not land in the first timed run.
    assert!(std::process::Command::new("sync")
        .status()
        .unwrap()
        .success());
    eprintln!("generated {readings} readings in {:?}", t0.elapsed());

    let mut cfg = AggregatorConfig::new(&dir);
    // Every window up to the newest reading is final (a day of data, no lateness wait).
    cfg.allowed_lateness = "0s".into();
    let metrics = Metrics::unregistered();

    // 2. The aggregator as deployed: the release binary in a fresh process, on its own copy.
    let agg_process = aggregator_process(&process_dir);
    eprintln!("aggregator process: {agg_process:.2}s");

    // The same work in this process, whose heap the generator has used.
    let t = Instant::now();
    let s = rt
        .block_on(gridmeter_aggregator::run_once(&cfg, &metrics))
        .unwrap();
    let agg = t.elapsed().as_secs_f64();
    eprintln!("aggregator: {agg:.2}s {s:?}");

    // 3. DuckDB, same files, same threads, same run.
    let script = format!(
        r#"
import duckdb, time
from deltalake import DeltaTable
files = DeltaTable("{raw}").file_uris()
con = duckdb.connect()
con.execute("SET threads TO {cores}")
t = time.time()
con.execute("""
CREATE TABLE r AS SELECT * FROM read_parquet(?)
QUALIFY row_number() OVER (PARTITION BY device_id, seq ORDER BY received_at) = 1""", [files])
for name, width in [("15m", "15 minutes"), ("1h", "1 hour"), ("1d", "1 day")]:
    con.execute(f"""
    COPY (SELECT device_id, channel, time_bucket(INTERVAL '{{width}}', ts) AS window_start,
                 count(*) AS readings, min(ts) AS first_ts, max(ts) AS last_ts,
                 min(value) AS min, max(value) AS max,
                 arg_max(value, ts) - arg_min(value, ts) AS usage, arg_max(value, ts) AS last
          FROM r GROUP BY ALL)
    TO '{out}/duck-{{name}}.parquet' (FORMAT parquet, COMPRESSION zstd)""")
print("DUCK", time.time() - t)
"#,
        raw = dir.join("raw").display(),
        out = dir.display(),
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duck: f64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("DUCK "))
        .next_back()
        .and_then(|t| t.trim().parse().ok())
        .unwrap();

    // 4. A late reading for one device: restate its day.
    let late_ts = BASE + 12 * 60 * MIN + 30 * 1_000_000;
    let b = batch(
        &devices,
        vec![late_ts],
        vec![42],
        vec![100_000],
        vec![42_000_000_000_000 + 1],
    );
    write(&rt, &dir, "late-0", b);
    let t = Instant::now();
    let s = rt
        .block_on(gridmeter_aggregator::run_once(&cfg, &metrics))
        .unwrap();
    let late = t.elapsed().as_secs_f64();
    eprintln!("late restatement: {late:.3}s {s:?}");

    // 5. VEE on, same raw.
    let mut vee_cfg = cfg.clone();
    vee_cfg.data_root = Some(vee_dir.clone());
    vee_cfg.vee = Some(
        gridmeter_core::config::parse::<AggregatorConfig>(
            r#"data_root = "/unused"
[vee]
max_interpolation = "2h"
profile_weeks = 4
[[vee.classes]]
name = "household"
devices = ["meter-*"]
standard_profile = "H0"
[[vee.rules]]
rule = "high_limit"
max = "400"
action = "estimate"
[[vee.rules]]
rule = "low_limit"
min = "0"
[[vee.rules]]
rule = "spike"
factor = "10"
action = "estimate"
[[vee.rules]]
rule = "stuck"
class = "household"
hours = 3
[[vee.rules]]
rule = "negative"
action = "estimate"
[[vee.rules]]
rule = "implausible_rollover"
max = "1000"
[[vee.rules]]
rule = "timestamp_gap"
max_gap = "30m"
"#,
            "bench",
        )
        .unwrap()
        .vee
        .unwrap(),
    );
    let t = Instant::now();
    let s = rt
        .block_on(gridmeter_aggregator::run_once(&vee_cfg, &metrics))
        .unwrap();
    let vee = t.elapsed().as_secs_f64();
    eprintln!("aggregator with VEE: {vee:.2}s {s:?}");
    let estimated_15m = s.estimated.get("15m").copied().unwrap_or(0);
    let exceptions: usize = s.exceptions.values().sum();

    // 6. VEE off again, after the VEE run, on its own copy of the raw table.
    let mut off_cfg = cfg.clone();
    off_cfg.data_root = Some(off_dir.clone());
    let t = Instant::now();
    let s = rt
        .block_on(gridmeter_aggregator::run_once(&off_cfg, &metrics))
        .unwrap();
    let off_again = t.elapsed().as_secs_f64();
    eprintln!("aggregator, VEE off again: {off_again:.2}s {s:?}");
    let off = agg.min(off_again);

    println!("readings: {readings}");
    println!("cores: {cores}");
    println!("aggregator_s: {agg:.3}");
    println!("aggregator_readings_per_s: {:.0}", readings as f64 / agg);
    println!(
        "aggregator_readings_per_s_per_core: {:.0}",
        readings as f64 / agg / cores as f64
    );
    println!("duckdb_s: {duck:.3}");
    println!(
        "duckdb_readings_per_s_per_core: {:.0}",
        readings as f64 / duck / cores as f64
    );
    println!("aggregator_process_s: {agg_process:.3}");
    println!(
        "ratio_aggregator_process_over_duckdb: {:.2}",
        agg_process / duck
    );
    println!("ratio_aggregator_over_duckdb: {:.2}", agg / duck);
    println!("late_restatement_device_day_s: {late:.3}");
    println!("vee_s: {vee:.3}");
    println!("vee_off_again_s: {off_again:.3}");
    println!("ratio_vee_over_vee_off: {:.2}", vee / off);
    println!("ratio_vee_over_duckdb: {:.2}", vee / duck);
    println!("vee_estimated_15m_rows: {estimated_15m}");
    println!("vee_exceptions: {exceptions}");
}
