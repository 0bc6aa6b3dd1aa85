//! Scalar value parsers for durations and sizes written as strings.

use std::time::Duration;

/// Why a duration string was rejected (the message is shown with the field path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurationError {
    #[error("`{0}` is not a duration like \"10s\"")]
    NotADuration(String),
    #[error("`{0}` needs a unit: ms, s, m or h")]
    NoUnit(String),
    #[error("unknown duration unit `{0}` (use ms, s, m or h)")]
    UnknownUnit(String),
    #[error("`{0}` is out of range")]
    OutOfRange(String),
}

/// "250ms", "10s", "2m", "1h", "1.5s"; "0" or "0s" means zero. Decimal, exact to the
/// nanosecond (digits past the ninth decimal of the unit are dropped); at most a year.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(DurationError::NotADuration(s.to_owned()));
    }
    let nanos_per_unit: u128 = match unit.trim() {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err(DurationError::NoUnit(s.to_owned())),
        u => return Err(DurationError::UnknownUnit(u.to_owned())),
    };
    let out_of_range = || DurationError::OutOfRange(s.to_owned());
    let whole: u128 = match int {
        "" => 0,
        i => i.parse().map_err(|_| out_of_range())?,
    };
    // The fraction in billionths of the unit.
    let billionths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u128, |acc, d| acc * 10 + u128::from(d - b'0'));
    let nanos = whole.checked_mul(nanos_per_unit).ok_or_else(out_of_range)?
        + billionths * nanos_per_unit / 1_000_000_000;
    if nanos > 365 * 86_400 * 1_000_000_000 {
        return Err(out_of_range());
    }
    Ok(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("10"),
            Err(DurationError::NoUnit("10".into()))
        );
        assert_eq!(
            parse_duration("10x"),
            Err(DurationError::UnknownUnit("x".into()))
        );
        assert_eq!(
            parse_duration("abc"),
            Err(DurationError::NotADuration("abc".into()))
        );
        assert_eq!(
            parse_duration("9999999h"),
            Err(DurationError::OutOfRange("9999999h".into()))
        );
    }
}
