//! Kubernetes resource quantities (`6Gi`, `6442450944`, `1.5G`, `100m`, `1e3`) as whole
//! numbers: what the API server reports as a device's capacity and as the capacity a claim
//! consumed, and how the driver writes them.
//!
//! Parsing follows `k8s.io/apimachinery/pkg/api/resource`: an optional sign, a decimal number,
//! and a binary-SI (`Ki`..`Ei`), decimal-SI (`n`, `u`, `m`, `k`, `M`..`E`) or exponent (`e3`)
//! suffix. Values are rounded up to a whole number, as `Quantity.Value()` does.

use thiserror::Error;

/// A quantity could not be read as a whole, non-negative number.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("`{0}` is not a Kubernetes quantity (e.g. 6Gi, 6442450944, 1.5G)")]
    Malformed(String),
    #[error("`{0}` is negative")]
    Negative(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

const BINARY: [(&str, u32); 6] = [
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];

const DECIMAL: [(&str, i32); 9] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

/// Parses a quantity, rounding a fraction up (`1.5` → 2, `100m` → 1).
pub fn parse(text: &str) -> Result<u64, QuantityError> {
    let bad = || QuantityError::Malformed(text.to_string());
    let t = text.trim();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let number_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(number_len);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(bad());
    }
    // value = digits × 10^exp10 × 2^exp2
    let digits = format!("{int}{frac}");
    let mut exp10: i32 = -(frac.len() as i32);
    let mut exp2: u32 = 0;
    if let Some((_, e)) = BINARY.iter().find(|(s, _)| *s == suffix) {
        exp2 = *e;
    } else if let Some((_, e)) = DECIMAL.iter().find(|(s, _)| *s == suffix) {
        exp10 += e;
    } else if let Some(e) = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
    {
        let e: i32 = e.parse().map_err(|_| bad())?;
        if !(-100..=100).contains(&e) {
            return Err(QuantityError::Overflow(text.to_string()));
        }
        exp10 += e;
    } else if !suffix.is_empty() {
        return Err(bad());
    }
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(QuantityError::Negative(text.to_string()));
    }
    let over = || QuantityError::Overflow(text.to_string());
    if digits.len() > 38 {
        return Err(over());
    }
    let mut mantissa: u128 = digits.parse().map_err(|_| bad())?;
    let mut divisor: u128 = 1;
    for _ in 0..exp10.unsigned_abs() {
        if exp10 > 0 {
            mantissa = mantissa.checked_mul(10).ok_or_else(over)?;
        } else {
            divisor = divisor.checked_mul(10).ok_or_else(over)?;
        }
    }
    mantissa = mantissa.checked_mul(1u128 << exp2).ok_or_else(over)?;
    let value = mantissa.div_ceil(divisor);
    u64::try_from(value).map_err(|_| over())
}

/// Writes `n` the way the API server does for a binary quantity: with the largest binary
/// suffix that divides it exactly (`6Gi`, `1536Mi`), else as a plain number.
pub fn format_binary(n: u64) -> String {
    BINARY
        .iter()
        .rev()
        .find(|(_, e)| n != 0 && n.is_multiple_of(1u64 << e))
        .map_or_else(|| n.to_string(), |(s, e)| format!("{}{s}", n >> e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_api_server_writes() {
        for (text, want) in [
            ("0", 0),
            ("6Gi", 6 << 30),
            ("6442450944", 6 << 30),
            ("1536Mi", 1536 << 20),
            ("1.5Gi", 3 << 29),
            ("1G", 1_000_000_000),
            ("2k", 2000),
            ("3", 3),
            ("+3", 3),
            ("100m", 1),
            ("1500m", 2),
            ("1e3", 1000),
            ("1E3", 1000),
            ("0.5", 1),
            (".5", 1),
            ("15Ei", 15 << 60),
            ("-0", 0),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in ["", "Gi", "6GB", "6 Gi", "1.2.3", "x", "1e", "1ex", "6gi"] {
            assert!(
                matches!(parse(bad), Err(QuantityError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(parse("-1"), Err(QuantityError::Negative(_))));
        assert!(matches!(parse("16Ei"), Err(QuantityError::Overflow(_))));
        assert!(matches!(parse("1e99"), Err(QuantityError::Overflow(_))));
    }

    #[test]
    fn formats_with_the_largest_exact_suffix() {
        assert_eq!(format_binary(16 << 30), "16Gi");
        assert_eq!(format_binary(1536 << 20), "1536Mi");
        assert_eq!(format_binary(256 << 20), "256Mi");
        assert_eq!(format_binary(1000), "1000");
        assert_eq!(format_binary(0), "0");
        assert_eq!(format_binary(1024), "1Ki");
        for n in [0, 1, 1000, 256 << 20, 80 << 30, 85_520_809_984] {
            assert_eq!(parse(&format_binary(n)), Ok(n));
        }
    }
}
