//! Instants as people type them in history flags (`--since`, `--until`, `--as-of`): RFC 3339,
//! `2026-06-12T18:00:00Z`, with or without fractional seconds or an offset, and `now`.
//!
//! Owns the syntax and its bounds; the result is milliseconds since the Unix epoch, the unit of
//! the leader times the history records. Relative forms (`-1h`, `30m ago`) are refused on
//! purpose: an auditor's question names an instant, and a query that means something else each
//! time it is run cannot be quoted in a report. A time without an offset is refused too: it
//! would silently depend on the machine's time zone.

use crate::output::now_ms;

/// Latest year accepted: RFC 3339 has four-digit years, and anything near it is a typo.
const YEAR_MAX: i64 = 9999;

/// Parses a `--since`/`--until`/`--as-of` value with this machine's clock for `now`.
pub fn parse(text: &str) -> Result<i64, String> {
    parse_at(text, now_ms())
}

/// Parses `text` to milliseconds since the Unix epoch; `now` is `now_ms`. Fractions finer than a
/// millisecond are cut, as the history records milliseconds. Pure, for tests.
pub fn parse_at(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    let usage = || {
        format!(
            "{text:?} is not a time; write it in RFC 3339 with a time zone, like \
             2026-06-12T18:00:00Z or 2026-06-12T20:00:00+02:00, or write now"
        )
    };
    if text.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    let ms = rfc3339_ms(text).ok_or_else(usage)?;
    if ms <= 0 {
        // 0 means "unbounded" in the history API; the history starts long after 1970 anyway.
        return Err(format!(
            "{text} is not after 1970-01-01T00:00:00Z; the history holds nothing that early"
        ));
    }
    Ok(ms)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `T` may be `t` or a space, `Z` may be `z`.
fn rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let number = |from: usize, len: usize| -> Option<i64> {
        let digits = text.get(from..from + len)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, c)| b[at] != c) {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    if !(1..=YEAR_MAX).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Right-pad to three digits, then cut: ".5" is 500 ms, ".123456" is 123 ms.
        let ms_digits = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = ms_digits.parse::<i64>().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let local_secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some((local_secs - offset_minutes * 60) * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm, the inverse
/// of the one `output::rfc3339_utc` prints with), so parsing needs no calendar crate.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::rfc3339_utc;

    const NOW: i64 = 1_781_287_200_000;

    #[test]
    fn rfc3339_times_parse_in_every_allowed_spelling() {
        // 2026-06-12T18:00:00Z
        let at = 1_781_287_200_000;
        for text in [
            "2026-06-12T18:00:00Z",
            "2026-06-12t18:00:00z",
            "2026-06-12 18:00:00Z",
            " 2026-06-12T18:00:00Z ",
            "2026-06-12T18:00:00.000Z",
            "2026-06-12T20:00:00+02:00",
            "2026-06-12T13:30:00-04:30",
            "2026-06-13T00:00:00+06:00",
        ] {
            assert_eq!(parse_at(text, NOW), Ok(at), "{text}");
        }
        assert_eq!(parse_at("2026-06-12T18:00:00.5Z", NOW), Ok(at + 500));
        assert_eq!(parse_at("2026-06-12T18:00:00.123987Z", NOW), Ok(at + 123));
        assert_eq!(parse_at("1970-01-01T00:00:00.001Z", NOW), Ok(1));
        assert_eq!(parse_at("2000-02-29T00:00:00Z", NOW), Ok(951_782_400_000));
    }

    #[test]
    fn now_is_the_clock_given() {
        assert_eq!(parse_at("now", NOW), Ok(NOW));
        assert_eq!(parse_at("NOW", 5), Ok(5));
    }

    #[test]
    fn parsing_inverts_printing() {
        for ms in [1_000, 951_782_400_000, 1_700_000_000_000, 4_107_542_400_000] {
            assert_eq!(parse_at(&rfc3339_utc(ms), NOW), Ok(ms));
        }
    }

    #[test]
    fn anything_else_is_refused_with_how_to_write_a_time() {
        for text in [
            "",
            "-1h",
            "30m ago",
            "yesterday",
            "1781287200000",
            "2026-06-12",
            "2026-06-12T18:00:00",
            "2026-06-12T18:00Z",
            "2026-06-12T18:00:00+0200",
            "2026-06-12T18:00:00.Z",
            "2026-06-12T18:00:00ZZ",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-06-12T24:00:00Z",
            "2026-06-12T18:60:00Z",
            "2026-06-12T18:00:60Z",
            "2026-06-12T18:00:00+24:00",
            "2026-06-12X18:00:00Z",
            "+026-06-12T18:00:00Z",
            "2026-06-12T18:00:00Zé",
        ] {
            let err = parse_at(text, NOW).unwrap_err();
            assert!(
                err.contains("is not a time; write it in RFC 3339"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn times_before_the_epoch_are_refused() {
        let err = parse_at("1969-12-31T23:59:59Z", NOW).unwrap_err();
        assert!(err.contains("is not after 1970-01-01T00:00:00Z"), "{err}");
        assert!(parse_at("1970-01-01T00:00:00Z", NOW).is_err());
    }
}
