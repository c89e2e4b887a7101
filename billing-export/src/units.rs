//! Unit conversion in exact decimals: from the unit a channel is measured in (usage tables)
//! to the unit a tariff prices in.
//!
//! | from (aliases) | to |
//! |---|---|
//! | `Wh` | `Wh`, `kWh` (÷1,000), `MWh` (÷1,000,000) |
//! | `kWh` | `kWh`, `MWh` (÷1,000), `Wh` (×1,000) |
//! | `s` (`seconds`) | `s`, `min` (÷60), `h` (÷3,600) |
//! | `B` (`bytes`, `By`) | `B`, `kB`, `MB`, `GB`, `TB` (÷10^3n), `GiB` (÷2^30) |
//! | `Bh` (byte-hours, from a bytes gauge's time-weighted average × hours) | `GBh` (÷10^9), `GiBh` (÷2^30) |
//! | `count` (`1`, `requests`, `req`, empty) | `count`/`requests`, `krequests` (÷1,000), `Mrequests` (÷1,000,000) |
//! | `L` | `L`, `m3` (÷1,000) |
//! | `m3` | `m3`, `L` (×1,000) |
//!
//! Demand charges convert energy per 15-minute interval to average power: `Wh` per
//! interval × 4 = `W`; `kW` = that ÷ 1,000.

use rust_decimal::Decimal;

/// The canonical spelling of a measured unit.
pub fn canonical(unit: &str) -> &str {
    match unit {
        "seconds" | "sec" => "s",
        "bytes" | "By" | "byte" => "B",
        "" | "1" | "requests" | "req" | "count" => "count",
        "m³" => "m3",
        "l" => "L",
        other => other,
    }
}

/// The exact factor `f` such that `quantity_in_to = quantity_in_from × f`, or `None` if the
/// conversion is not in the table.
pub fn factor(from: &str, to: &str) -> Option<Decimal> {
    let from = canonical(from);
    let to_c = canonical(to);
    if from == to_c {
        return Some(Decimal::ONE);
    }
    let div = |n: i64| Some(Decimal::ONE / Decimal::from(n));
    match (from, to) {
        ("Wh", "kWh") => div(1_000),
        ("Wh", "MWh") => div(1_000_000),
        ("kWh", "MWh") => div(1_000),
        ("kWh", "Wh") => Some(Decimal::from(1_000)),
        ("s", "min") => div(60),
        ("s", "h") => None, // not a terminating decimal factor: see `convert`
        ("B", "kB") => div(1_000),
        ("B", "MB") => div(1_000_000),
        ("B", "GB") | ("Bh", "GBh") => div(1_000_000_000),
        ("B", "TB") => div(1_000_000_000_000),
        ("count", "krequests") => div(1_000),
        ("count", "Mrequests") => div(1_000_000),
        ("L", "m3") => div(1_000),
        ("m3", "L") => Some(Decimal::from(1_000)),
        _ => None,
    }
}

/// The divisor for conversions whose factor is not a terminating decimal (s -> h, B -> GiB).
fn divisor(from: &str, to: &str) -> Option<Decimal> {
    match (canonical(from), to) {
        ("s", "h") => Some(Decimal::from(3_600)),
        ("B", "GiB") | ("Bh", "GiBh") => Some(Decimal::from(1_073_741_824i64)),
        _ => None,
    }
}

/// Whether `from` can be priced in `to`.
pub fn convertible(from: &str, to: &str) -> bool {
    factor(from, to).is_some() || divisor(from, to).is_some()
}

/// `q` (in `from`) expressed in `to`, exact when the factor is a power of ten; divisions by
/// 3,600 or 2^30 carry rust_decimal's 28 significant digits and are rounded by the caller
/// to the output scale.
pub fn convert(q: Decimal, from: &str, to: &str) -> Option<Decimal> {
    if let Some(f) = factor(from, to) {
        return q.checked_mul(f);
    }
    divisor(from, to).and_then(|d| q.checked_div(d))
}

/// Average power over a 15-minute interval, in `to` (`W` or `kW`), from energy `q` in `from`
/// (`Wh` or `kWh`).
pub fn demand(q: Decimal, from: &str, to: &str) -> Option<Decimal> {
    let wh = convert(q, from, "Wh")?;
    let w = wh * Decimal::from(4);
    match to {
        "W" => Some(w),
        "kW" => Some(w / Decimal::from(1_000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn conversions_are_exact() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(convert(d("1234.5"), "Wh", "kWh"), Some(d("1.2345")));
        assert_eq!(convert(d("7200"), "seconds", "h"), Some(d("2")));
        assert_eq!(convert(d("2500000000"), "bytes", "GB"), Some(d("2.5")));
        assert_eq!(convert(d("1500"), "1", "krequests"), Some(d("1.5")));
        assert_eq!(demand(d("250"), "Wh", "kW"), Some(d("1")));
        assert!(convert(d("1"), "Wh", "GB").is_none());
        assert!(!convertible("Wh", "h"));
    }
}
