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

/// "250ms", "10s", "2m", "1h", "1.5s"; "0" or "0s" means zero.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| DurationError::NotADuration(s.to_owned()))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "" => return Err(DurationError::NoUnit(s.to_owned())),
        u => return Err(DurationError::UnknownUnit(u.to_owned())),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(DurationError::OutOfRange(s.to_owned()));
    }
    Ok(Duration::from_secs_f64(secs))
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
