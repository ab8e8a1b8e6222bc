//! Durations as people type them: `90s`, `10m`, `1h30m`, `500ms` (units ms, s, m, h, d).
//!
//! Owns the syntax and the bounds each flag puts on it. A bare number is refused everywhere:
//! `10` could mean seconds or minutes, and a drain or a watch that lasts sixty times longer (or
//! shorter) than meant is worse than an error.

use std::time::Duration;

/// Longest drain deadline accepted: a week. Anything longer is most likely a typo (`10d` for
/// `10h`), and a drain meant to last longer can be re-issued. The scheduler accepts up to 30
/// days; the client is stricter on purpose.
pub const DRAIN_DEADLINE_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest `--watch-timeout` / `--wait-timeout`: a day. A terminal left watching longer has
/// been forgotten; the longest moves (a week's drain) are better checked now and then.
pub const WATCH_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses a duration of any length, 0 included (`0s`: "at once" in a spec's `[migration]`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let usage = || format!("{text:?} is not a duration; write it like 90s, 10m or 1h30m");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(usage());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(usage)?;
        if digits == 0 {
            return Err(usage());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| usage())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(usage()),
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(usage)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// `--deadline` of `node drain` (and the durations of a spec's health check): longer than 0,
/// at most `DRAIN_DEADLINE_MAX`.
pub fn parse_deadline(text: &str) -> Result<Duration, String> {
    parse_bounded(
        text,
        "deadline",
        (DRAIN_DEADLINE_MAX, "7d"),
        "drain again later if you need more",
    )
}

/// `--watch-timeout` and `--wait-timeout`: longer than 0, at most `WATCH_TIMEOUT_MAX`.
pub fn parse_watch_timeout(text: &str) -> Result<Duration, String> {
    parse_bounded(
        text,
        "timeout",
        (WATCH_TIMEOUT_MAX, "24h"),
        "watch again later if you need more",
    )
}

/// A duration longer than 0 and at most `max` (written as people would: `7d`, not `168h`);
/// `what` and `advice` make the errors.
fn parse_bounded(
    text: &str,
    what: &str,
    (max, max_text): (Duration, &str),
    advice: &str,
) -> Result<Duration, String> {
    let duration = parse(text)?;
    if duration.is_zero() {
        return Err(format!("the {what} must be longer than 0"));
    }
    if duration > max {
        return Err(format!(
            "{text} is longer than the maximum of {max_text}; {advice}"
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_combine() {
        for (text, ms) in [
            ("10m", 600_000),
            ("90s", 90_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("2d", 172_800_000),
            (" 1m1s ", 61_000),
            ("0s", 0),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        for text in [
            "",
            "10",
            "m",
            "10x",
            "1.5h",
            "-1m",
            "10 m",
            "99999999999999999999s",
        ] {
            for parser in [parse, parse_deadline, parse_watch_timeout] {
                let err = parser(text).unwrap_err();
                assert!(err.contains("is not a duration"), "{text}: {err}");
            }
        }
    }

    #[test]
    fn deadlines_are_positive_and_at_most_a_week() {
        assert_eq!(
            parse_deadline("0s").unwrap_err(),
            "the deadline must be longer than 0"
        );
        assert!(parse_deadline("8d").unwrap_err().contains("maximum of 7d"));
        assert_eq!(parse_deadline("7d"), Ok(DRAIN_DEADLINE_MAX));
        assert_eq!(parse_deadline("10m"), Ok(Duration::from_secs(600)));
    }

    #[test]
    fn watch_timeouts_are_positive_and_at_most_a_day() {
        assert_eq!(
            parse_watch_timeout("0m").unwrap_err(),
            "the timeout must be longer than 0"
        );
        assert!(
            parse_watch_timeout("25h")
                .unwrap_err()
                .contains("maximum of 24h")
        );
        assert_eq!(parse_watch_timeout("1d"), Ok(WATCH_TIMEOUT_MAX));
        assert_eq!(parse_watch_timeout("15m"), Ok(Duration::from_secs(900)));
    }
}
