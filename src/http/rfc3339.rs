//! RFC 3339 timestamps for the HTTP API: parsing what customers send
//! (`valid_until`, `scheduled_at`) and writing what lookups answer.
//!
//! Owns: the conversion between `YYYY-MM-DDTHH:MM:SS[.fff…](Z|±HH:MM)` and
//! Unix milliseconds. The calendar arithmetic (proleptic Gregorian) is
//! `smpp::time`'s, shared with SMPP times and receipt dates. Must not touch:
//! clocks (callers pass times), SMPP time fields.

use crate::smpp::time::{civil_from_days, days_from_civil, days_in_month};

/// Unix milliseconds of an RFC 3339 date-time; `None` if malformed or
/// before 1970.
pub fn parse_ms(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes.len() > 40 {
        return None;
    }
    let number = |from: usize, len: usize| -> Option<i64> {
        let digits = bytes.get(from..from + len)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let separator = |at: usize, allowed: &[u8]| bytes.get(at).is_some_and(|b| allowed.contains(b));
    if !(separator(4, b"-")
        && separator(7, b"-")
        && separator(10, b"Tt ")
        && separator(13, b":")
        && separator(16, b":"))
    {
        return None;
    }
    let year = number(0, 4)?;
    let (month, day) = (number(5, 2)?, number(8, 2)?);
    // Two digits each: both fit a u8, and the range checks follow.
    let (month, day) = (u8::try_from(month).ok()?, u8::try_from(day).ok()?);
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        // A leap second is read as the last second of its minute.
        || second > 60
    {
        return None;
    }
    let mut position = 19;
    let mut millis = 0i64;
    if bytes.get(position) == Some(&b'.') {
        position += 1;
        let start = position;
        while bytes.get(position).is_some_and(u8::is_ascii_digit) {
            if position - start < 3 {
                millis = millis * 10 + i64::from(bytes[position] - b'0');
            }
            position += 1;
        }
        let fraction_digits = position - start;
        if fraction_digits == 0 {
            return None;
        }
        for _ in fraction_digits..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match bytes.get(position..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let hours = number(position + 1, 2)?;
            let minutes = number(position + 4, 2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 60 + minutes;
            if *sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        _ => return None,
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset_minutes * 60;
    let total_ms = seconds.checked_mul(1000)?.checked_add(millis)?;
    u64::try_from(total_ms).ok()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for Unix milliseconds.
pub fn format_ms(unix_ms: u64) -> String {
    let seconds = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX / 2);
    let millis = unix_ms % 1000;
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        (of_day / 60) % 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_customers_send() {
        assert_eq!(parse_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_ms("2026-11-25T22:00:00Z"), Some(1_795_644_000_000));
        assert_eq!(
            parse_ms("2026-11-25T23:00:00+01:00"),
            Some(1_795_644_000_000)
        );
        assert_eq!(
            parse_ms("2026-11-25T21:30:00-00:30"),
            Some(1_795_644_000_000)
        );
        assert_eq!(parse_ms("2026-11-25T22:00:00.5Z"), Some(1_795_644_000_500));
        assert_eq!(
            parse_ms("2026-11-25t22:00:00.123456z"),
            Some(1_795_644_000_123)
        );
        assert_eq!(parse_ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
    }

    #[test]
    fn refuses_malformed_times() {
        for bad in [
            "",
            "2026-11-25",
            "2026-11-25T22:00:00",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T22:00:00.Z",
            "2026-11-25T22:00:00+0100",
            "1969-12-31T23:59:59Z",
            "2026-11-25T22:00:00Zjunk",
            "２０２６-11-25T22:00:00Z",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [0, 1_795_644_000_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_ms(&format_ms(ms)), Some(ms), "{}", format_ms(ms));
        }
        assert_eq!(format_ms(1_795_644_000_500), "2026-11-25T22:00:00.500Z");
    }
}
