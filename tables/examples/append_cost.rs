//! The cost of one small append to `raw` as the table grows: a commit per WAL segment adds
//! a data file, and every commit (snapshot refresh, conflict check, new snapshot) works on
//! the table's whole list of active files. Prints the mean append time per 250 appends.
//!
//! Usage: `cargo run --release --example append_cost [appends=3000]`
//! (`bench/tables/append_cost.sh`).

use std::sync::Arc;
use std::time::Instant;

use chrono::DateTime;
use gridmeter_core::store::DataRoot;
use gridmeter_core::{Channel, Kind, Quality, Reading};
use gridmeter_tables::parquet_io::Profile;
use gridmeter_tables::raw::{self, RawRow};
use gridmeter_tables::Root;

const EVERY: u64 = 250;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let appends: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 3000,
    };
    let dir = tempfile::tempdir()?;
    let root = Root::open(&DataRoot::Local(dir.path().to_path_buf()))?;
    let table = raw::open(&root).await?;
    let device: Arc<str> = Arc::from("meter-1");
    let channel = Channel::new("energy_import")?;
    let mut since = Instant::now();
    for segment in 1..=appends {
        let rows: Vec<RawRow> = (0..2u64)
            .map(|i| {
                let seq = segment * 2 + i;
                RawRow {
                    device_id: device.clone(),
                    reading: Reading {
                        seq,
                        ts: DateTime::from_timestamp(1_795_000_000 + seq as i64 * 60, 0)
                            .unwrap_or_default(),
                        channel: channel.clone(),
                        kind: Kind::Counter,
                        unit: "Wh".into(),
                        value: rust_decimal::Decimal::new(seq as i64, 3),
                        quality: Quality::GOOD,
                    },
                    received_at_us: 0,
                }
            })
            .collect();
        let files = raw::plan(&format!("bench-{segment:016}"), &rows)?;
        table
            .append_once("collector/bench", segment as i64, files, Profile::Raw, "")
            .await?;
        if segment % EVERY == 0 {
            let ms = since.elapsed().as_secs_f64() * 1000.0 / EVERY as f64;
            let active = table.snapshot().await?.files().len();
            println!("{segment} appends ({active} active files): {ms:.1} ms per append over the last {EVERY}");
            since = Instant::now();
        }
    }
    Ok(())
}
