//! Bytes per reading, compact vs JSON, for realistic agent batches.
//! `cargo run --release -p gridmeter-core --example wire_ratio`

use std::str::FromStr;

use chrono::{Duration, TimeZone, Utc};
use gridmeter_core::wire::{compact, json};
use gridmeter_core::{Batch, Channel, DeviceId, Kind, Quality, Reading};
use rust_decimal::Decimal;

fn batch(n: u64, channels: &[(&str, Kind, &str)]) -> Batch {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    let mut readings = Vec::new();
    let mut seq = 1_000_000;
    for i in 0..n {
        for (j, (c, k, u)) in channels.iter().enumerate() {
            if readings.len() as u64 >= n {
                break;
            }
            let value = match k {
                Kind::Counter => Decimal::from_str("18234567.125").unwrap() + Decimal::from(i * 37),
                _ => {
                    Decimal::from_str("2315.4").unwrap()
                        + Decimal::new((i as i64 * 7 + j as i64) % 300, 1)
                }
            };
            readings.push(Reading {
                seq,
                ts: t0 + Duration::seconds(i as i64 * 15),
                channel: Channel::new(*c).unwrap(),
                kind: *k,
                unit: (*u).into(),
                value,
                quality: Quality::GOOD,
            });
            seq += 1;
        }
    }
    Batch {
        device_id: DeviceId::new("inv-042").unwrap(),
        readings,
        gaps: vec![],
    }
}

fn main() {
    let chans = [
        ("energy_import", Kind::Counter, "Wh"),
        ("energy_export", Kind::Counter, "Wh"),
        ("power", Kind::Gauge, "W"),
    ];
    println!("| readings per batch | JSON bytes/reading | compact bytes/reading | ratio |");
    println!("|---|---|---|---|");
    for n in [1u64, 10, 100, 500] {
        let b = batch(n, &chans);
        let j = json::encode(&b).len() as f64 / b.readings.len() as f64;
        let c = compact::encode(&b).unwrap().len() as f64 / b.readings.len() as f64;
        println!("| {n} | {j:.1} | {c:.1} | {:.1}x |", j / c);
    }
}
