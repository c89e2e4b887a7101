//! Exact decimal parsing and the fixed-scale integer form used in Parquet.
//!
//! Values travel as decimal text (or JSON number text) and are parsed without ever passing
//! through binary floating point. In Parquet they are `Decimal128(38, 9)`: the value times
//! 10^9 as an `i128`.

use rust_decimal::Decimal;

use crate::model::VALUE_SCALE;

/// Why a text is not an acceptable decimal value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// The text (a bounded excerpt, see [`crate::text::excerpt`]) is not a number.
    #[error("{0} is not a decimal number")]
    Syntax(String),
    #[error("{0} is out of range (at most 28 significant digits)")]
    Range(String),
    #[error("{0} has more than {VALUE_SCALE} decimal places")]
    Scale(String),
}

/// Parses plain (`-12.50`) or scientific (`1.2e3`) decimal text exactly, and checks it fits
/// `Decimal128(38, 9)` without rounding. Trailing zeros beyond the scale are accepted.
pub fn parse_exact(text: &str) -> Result<Decimal, DecimalError> {
    let t = text.trim();
    let syntax = || DecimalError::Syntax(crate::text::excerpt(text));
    if t.is_empty() || t.len() > 80 {
        return Err(syntax());
    }
    // Only digits, sign, one dot, one exponent: rejects "NaN", "inf", "0x10", "1_000".
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let m = mantissa.strip_prefix(['-', '+']).unwrap_or(mantissa);
    let dots = m.chars().filter(|c| *c == '.').count();
    let digits = m.chars().filter(|c| c.is_ascii_digit()).count();
    if digits == 0 || dots > 1 || m.chars().any(|c| !(c.is_ascii_digit() || c == '.')) {
        return Err(syntax());
    }
    let exp: i32 = match exponent {
        None => 0,
        Some(e) => {
            let body = e.strip_prefix(['-', '+']).unwrap_or(e);
            if body.is_empty() || body.len() > 3 || !body.chars().all(|c| c.is_ascii_digit()) {
                return Err(syntax());
            }
            e.parse().map_err(|_| syntax())?
        }
    };
    // Normalise to digits + scale, then apply the exponent on the integer form.
    let negative = mantissa.starts_with('-');
    let (int_part, frac_part) = m.split_once('.').unwrap_or((m, ""));
    let all_digits = format!("{int_part}{frac_part}");
    let all_digits = all_digits.trim_start_matches('0');
    let mut scale: i32 = frac_part.len() as i32 - exp;
    let mut digits_str = if all_digits.is_empty() {
        "0".to_string()
    } else {
        all_digits.to_string()
    };
    // Drop trailing zeros that only add scale.
    while scale > 0 && digits_str.len() > 1 && digits_str.ends_with('0') {
        digits_str.pop();
        scale -= 1;
    }
    if digits_str == "0" {
        return Ok(Decimal::ZERO);
    }
    if scale > VALUE_SCALE as i32 {
        return Err(DecimalError::Scale(crate::text::excerpt(text)));
    }
    if scale < 0 {
        if digits_str.len() as i32 - scale > 29 {
            return Err(DecimalError::Range(crate::text::excerpt(text)));
        }
        digits_str.push_str(&"0".repeat((-scale) as usize));
        scale = 0;
    }
    if digits_str.len() > 28 {
        return Err(DecimalError::Range(crate::text::excerpt(text)));
    }
    let mantissa: i128 = digits_str.parse().map_err(|_| syntax())?;
    let mantissa = if negative { -mantissa } else { mantissa };
    Decimal::try_from_i128_with_scale(mantissa, scale as u32)
        .map_err(|_| DecimalError::Range(crate::text::excerpt(text)))
}

/// The value times 10^[`VALUE_SCALE`], for `Decimal128(38, 9)` columns. `None` if the value
/// has more decimal places than that (which [`parse_exact`] never lets through).
pub fn to_scaled_i128(d: Decimal) -> Option<i128> {
    let d = d.normalize();
    if d.scale() > VALUE_SCALE {
        return None;
    }
    let factor = 10i128.pow(VALUE_SCALE - d.scale());
    d.mantissa().checked_mul(factor)
}

/// The inverse of [`to_scaled_i128`]; `None` if the value is outside `Decimal`'s range.
pub fn from_scaled_i128(v: i128) -> Option<Decimal> {
    // Strip trailing zeros first: 10^9-scaled integers can exceed Decimal's 96-bit mantissa
    // while the value itself fits.
    let (mut m, mut scale) = (v, VALUE_SCALE);
    while scale > 0 && m % 10 == 0 {
        m /= 10;
        scale -= 1;
    }
    Decimal::try_from_i128_with_scale(m, scale).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    #[test]
    fn parses_exactly() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(parse_exact("1234.5").unwrap(), d("1234.5"));
        assert_eq!(parse_exact("-0.000000001").unwrap(), d("-0.000000001"));
        assert_eq!(parse_exact("1.2e3").unwrap(), d("1200"));
        assert_eq!(parse_exact("1.5E-2").unwrap(), d("0.015"));
        assert_eq!(parse_exact("0.10000000000000").unwrap(), d("0.1"));
        assert_eq!(parse_exact("+7").unwrap(), d("7"));
        assert_eq!(parse_exact("0e5").unwrap(), Decimal::ZERO);
        // 0.1 must not become 0.1000000000000000055511151231257827 as a float would.
        assert_eq!(parse_exact("0.1").unwrap().to_string(), "0.1");
    }

    #[test]
    fn rejects_what_is_not_exact() {
        assert!(matches!(parse_exact("NaN"), Err(DecimalError::Syntax(_))));
        assert!(matches!(parse_exact("inf"), Err(DecimalError::Syntax(_))));
        assert!(matches!(parse_exact("1.2.3"), Err(DecimalError::Syntax(_))));
        assert!(matches!(parse_exact(""), Err(DecimalError::Syntax(_))));
        assert!(matches!(parse_exact("1e"), Err(DecimalError::Syntax(_))));
        assert!(matches!(
            parse_exact("0.0000000001"),
            Err(DecimalError::Scale(_))
        ));
        assert!(matches!(parse_exact("1e40"), Err(DecimalError::Range(_))));
        assert!(matches!(parse_exact("1e-999"), Err(DecimalError::Scale(_))));
    }

    proptest! {
        #[test]
        fn scaled_round_trip(m in -10i128.pow(27)..10i128.pow(27), s in 0u32..=9) {
            let d = Decimal::from_i128_with_scale(m, s);
            let back = from_scaled_i128(to_scaled_i128(d).unwrap()).unwrap();
            prop_assert_eq!(back, d);
            prop_assert_eq!(parse_exact(&d.to_string()).unwrap(), d);
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_exact(&s);
        }
    }
}
