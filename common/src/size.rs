//! Byte sizes as operators write them: a plain integer (bytes) or a number with a
//! `B`/`KiB`/`MiB`/`GiB`/`TiB` suffix (also `K`/`M`/`G`/`T`, all binary), and percentages.

use thiserror::Error;

/// Why a size or percentage could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("`{0}` is not a size: expected bytes or a number with KiB/MiB/GiB/TiB")]
    Malformed(String),
    #[error("`{0}` does not fit in 64 bits of bytes")]
    Overflow(String),
    #[error("`{0}` is not a percentage: expected e.g. \"30%\" (1% to 100%)")]
    BadPercent(String),
}

const UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("T", 1 << 40),
    ("G", 1 << 30),
    ("M", 1 << 20),
    ("K", 1 << 10),
    ("B", 1),
];

/// Parses `"10GiB"`, `"512 MiB"`, `"1.5GiB"`, `"4096"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let (number, multiplier) = UNITS
        .iter()
        .find_map(|(suffix, mult)| t.strip_suffix(suffix).map(|n| (n.trim(), *mult)))
        .unwrap_or((t, 1));
    if number.is_empty() || number.starts_with('-') || number.starts_with('+') {
        return Err(SizeError::Malformed(text.to_string()));
    }
    if let Ok(n) = number.parse::<u64>() {
        return n
            .checked_mul(multiplier)
            .ok_or_else(|| SizeError::Overflow(text.to_string()));
    }
    // Fractions are allowed with a unit ("1.5GiB"), rounded down to whole bytes.
    let (int, frac) = number
        .split_once('.')
        .ok_or_else(|| SizeError::Malformed(text.to_string()))?;
    if multiplier == 1
        || frac.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > 9
    {
        return Err(SizeError::Malformed(text.to_string()));
    }
    let whole: u64 = if int.is_empty() {
        0
    } else {
        int.parse()
            .map_err(|_| SizeError::Overflow(text.to_string()))?
    };
    let frac_num: u128 = frac
        .parse()
        .map_err(|_| SizeError::Malformed(text.to_string()))?;
    let frac_den: u128 = 10u128.pow(frac.len() as u32);
    let bytes = (whole as u128) * multiplier as u128 + frac_num * multiplier as u128 / frac_den;
    u64::try_from(bytes).map_err(|_| SizeError::Overflow(text.to_string()))
}

/// Formats bytes with the largest binary unit that keeps it readable (`"1.50 GiB"`).
pub fn format_size(bytes: u64) -> String {
    const STEPS: &[(&str, u64)] = &[
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, mult) in STEPS {
        if bytes >= *mult {
            if bytes.is_multiple_of(*mult) {
                return format!("{} {unit}", bytes / mult);
            }
            return format!("{:.2} {unit}", bytes as f64 / *mult as f64);
        }
    }
    format!("{bytes} B")
}

/// Parses `"30%"` (or `"30"`) into a fraction of device time in per-mille (1..=1000).
pub fn parse_percent_permille(text: &str) -> Result<u32, SizeError> {
    let t = text.trim();
    let n = t.strip_suffix('%').unwrap_or(t).trim();
    let value: f64 = n
        .parse()
        .map_err(|_| SizeError::BadPercent(text.to_string()))?;
    if !value.is_finite() || !(1.0..=100.0).contains(&value) {
        return Err(SizeError::BadPercent(text.to_string()));
    }
    Ok((value * 10.0).round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("7B"), Ok(7));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(
            parse_size("ten GiB"),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(parse_size("-1GiB"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("1.5"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("GiB"), Err(SizeError::Malformed(_))));
        assert!(matches!(
            parse_size("99999999999TiB"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn percent() {
        assert_eq!(parse_percent_permille("30%"), Ok(300));
        assert_eq!(parse_percent_permille("100%"), Ok(1000));
        assert_eq!(parse_percent_permille("12.5%"), Ok(125));
        parse_percent_permille("0%").unwrap_err();
        parse_percent_permille("150%").unwrap_err();
        parse_percent_permille("lots").unwrap_err();
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
        assert_eq!(format_size(12), "12 B");
    }

    proptest! {
        #[test]
        fn whole_units_round_trip(n in 0u64..1_000_000, unit in 0usize..4) {
            let (suffix, mult) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("", 1)][unit];
            prop_assert_eq!(parse_size(&format!("{n}{suffix}")), Ok(n * mult));
        }

        #[test]
        fn never_panics(s in ".{0,24}") {
            parse_size(&s).ok();
            parse_percent_permille(&s).ok();
        }
    }
}
