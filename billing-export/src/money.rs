//! Exact money arithmetic: rounding rules and fixed-scale text.
//!
//! Every amount is `quantity × rate` rounded once, per statement line, to the currency's
//! minor units with the configured rule (half-even by default). Taxes are rounded once per
//! customer and tax rate. Nothing on this path is ever a float.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// Scale of quantities and rates in the outputs (the Parquet `Decimal128(38, 9)` scale).
pub const QUANTITY_SCALE: u32 = 9;
/// Scale of the quality share (fraction of estimated/interpolated usage).
pub const QUALITY_SCALE: u32 = 4;

/// How a value exactly between two representable amounts is rounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Banker's rounding: 0.125 -> 0.12, 0.135 -> 0.14. Unbiased over many lines.
    #[default]
    HalfEven,
    /// Commercial rounding: 0.125 -> 0.13 (away from zero: -0.125 -> -0.13).
    HalfUp,
}

impl Rounding {
    pub fn round(self, v: Decimal, dp: u32) -> Decimal {
        let strategy = match self {
            Rounding::HalfEven => RoundingStrategy::MidpointNearestEven,
            Rounding::HalfUp => RoundingStrategy::MidpointAwayFromZero,
        };
        let mut r = v.round_dp_with_strategy(dp, strategy);
        r.rescale(dp);
        r
    }
}

/// `v` as plain text with exactly `dp` decimal places (never scientific notation).
/// Quantities are rounded half-even to `dp` first if they carry more places.
pub fn fixed(v: Decimal, dp: u32) -> String {
    let mut r = v.round_dp_with_strategy(dp, RoundingStrategy::MidpointNearestEven);
    r.rescale(dp);
    if r.is_zero() {
        // Avoid "-0.00".
        r.set_sign_positive(true);
    }
    r.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn rounding_rules() {
        assert_eq!(Rounding::HalfEven.round(d("0.125"), 2).to_string(), "0.12");
        assert_eq!(Rounding::HalfEven.round(d("0.135"), 2).to_string(), "0.14");
        assert_eq!(Rounding::HalfUp.round(d("0.125"), 2).to_string(), "0.13");
        assert_eq!(Rounding::HalfUp.round(d("-0.125"), 2).to_string(), "-0.13");
        assert_eq!(Rounding::HalfEven.round(d("7"), 2).to_string(), "7.00");
    }

    #[test]
    fn fixed_text() {
        assert_eq!(fixed(d("1.5"), 9), "1.500000000");
        assert_eq!(fixed(d("-0.000"), 2), "0.00");
        assert_eq!(
            fixed(d("12345678901234567890"), 2),
            "12345678901234567890.00"
        );
        assert_eq!(fixed(d("0.0000000001"), 2), "0.00");
    }
}
