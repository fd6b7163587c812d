//! SMPP times and calendar arithmetic.
//!
//! Owns: the SMPP 3.4 time formats (absolute `YYMMDDhhmmsstnnp` and relative
//! `YYMMDDhhmmss000R`, section 7.1.1), the 10- and 12-digit dates of
//! delivery-receipt texts, and the civil-calendar maths they need (no external
//! crate: Howard Hinnant's days-from-civil algorithm). Must not touch: clocks
//! (callers pass `now`), PDU layout, or how an error is sent back (the caller
//! picks ESME_RINVSCHED or ESME_RINVEXPIRY through [`TimeField`]).
//!
//! Two-digit years are read as 2000..=2099: SMPP times and receipt dates carry
//! no century and every peer in service today means this one.

use std::fmt;

use crate::smpp::status::CommandStatus;

const MS_PER_SECOND: i64 = 1_000;
const SECONDS_PER_DAY: i64 = 86_400;
const SECONDS_PER_QUARTER_HOUR: i64 = 900;
/// SMPP 3.4 allows offsets up to 48 quarter hours (12 hours) either way.
const MAX_OFFSET_QUARTER_HOURS: u8 = 48;
const CENTURY_BASE_YEAR: u16 = 2000;

/// Why a time or date text was refused. Positions count from 0 in the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("time field has {len_bytes} bytes, expected {expected_bytes}")]
    WrongLength {
        len_bytes: usize,
        expected_bytes: usize,
    },
    #[error("non-digit at position {position}")]
    NotDigit { position: usize },
    #[error("month {0} out of 1..=12")]
    BadMonth(u8),
    #[error("day {day} out of range for month {month}")]
    BadDay { day: u8, month: u8 },
    #[error("hour {0} out of 0..=23")]
    BadHour(u8),
    #[error("minute {0} out of 0..=59")]
    BadMinute(u8),
    #[error("second {0} out of 0..=59")]
    BadSecond(u8),
    #[error("UTC offset of {0} quarter hours exceeds 48")]
    BadOffset(u8),
    #[error("time indicator {0:#04x} is not '+', '-' or 'R'")]
    BadIndicator(u8),
    #[error("relative time field must end in 000R, tnn was not 000")]
    RelativeNotZeroPadded,
    #[error("time falls outside years 0..=9999")]
    OutOfRange,
}

/// Which PDU field a time came from, so a refusal earns the right status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeField {
    ScheduleDeliveryTime,
    ValidityPeriod,
}

impl TimeField {
    pub fn invalid_status(self) -> CommandStatus {
        match self {
            TimeField::ScheduleDeliveryTime => CommandStatus::ESME_RINVSCHED,
            TimeField::ValidityPeriod => CommandStatus::ESME_RINVEXPIRY,
        }
    }
}

impl TimeError {
    /// The command_status a submit carrying this bad time gets back.
    pub fn status_for(self, field: TimeField) -> CommandStatus {
        field.invalid_status()
    }
}

pub fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Days in `month` (1..=12) of `year`; 0 for a month outside 1..=12.
pub fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date. Shifting the year to
/// start in March puts the leap day last, so each era of 400 years is uniform.
pub fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day).
pub fn civil_from_days(days_since_epoch: i64) -> (i64, u8, u8) {
    let shifted = days_since_epoch + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are bounded by construction (1..=31, 1..=12), so the casts are exact.
    (year, month as u8, day as u8)
}

/// A calendar instant to the second, with no zone of its own: receipt dates and
/// the first 12 digits of an SMPP time. Always holds a valid date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DateTime {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    pub fn new(
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
    ) -> Result<DateTime, TimeError> {
        if !(1..=12).contains(&month) {
            return Err(TimeError::BadMonth(month));
        }
        if day == 0 || day > days_in_month(i64::from(year), month) {
            return Err(TimeError::BadDay { day, month });
        }
        if hour > 23 {
            return Err(TimeError::BadHour(hour));
        }
        if minute > 59 {
            return Err(TimeError::BadMinute(minute));
        }
        if second > 59 {
            return Err(TimeError::BadSecond(second));
        }
        if year > 9999 {
            return Err(TimeError::OutOfRange);
        }
        Ok(DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    pub fn year(&self) -> u16 {
        self.year
    }
    pub fn month(&self) -> u8 {
        self.month
    }
    pub fn day(&self) -> u8 {
        self.day
    }
    pub fn hour(&self) -> u8 {
        self.hour
    }
    pub fn minute(&self) -> u8 {
        self.minute
    }
    pub fn second(&self) -> u8 {
        self.second
    }

    /// Seconds since the Unix epoch, reading the fields as UTC.
    pub fn to_unix_seconds(&self) -> i64 {
        days_from_civil(i64::from(self.year), self.month, self.day) * SECONDS_PER_DAY
            + i64::from(self.hour) * 3_600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    pub fn to_unix_ms(&self) -> i64 {
        self.to_unix_seconds() * MS_PER_SECOND
    }

    /// The UTC calendar time of `unix_ms`, truncated to the second (toward the
    /// past for instants before 1970).
    pub fn from_unix_ms(unix_ms: i64) -> Result<DateTime, TimeError> {
        let seconds = unix_ms.div_euclid(MS_PER_SECOND);
        let days = seconds.div_euclid(SECONDS_PER_DAY);
        let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let year = u16::try_from(year)
            .ok()
            .filter(|y| *y <= 9999)
            .ok_or(TimeError::OutOfRange)?;
        // second_of_day < 86_400, so each part fits in a u8.
        DateTime::new(
            year,
            month,
            day,
            (second_of_day / 3_600) as u8,
            (second_of_day % 3_600 / 60) as u8,
            (second_of_day % 60) as u8,
        )
    }

    /// Parses a receipt date: `YYMMDDhhmm` (the de-facto form) or
    /// `YYMMDDhhmmss` (what many operators send).
    pub fn parse_receipt_date(text: &str) -> Result<DateTime, TimeError> {
        let bytes = text.as_bytes();
        if bytes.len() != 10 && bytes.len() != 12 {
            return Err(TimeError::WrongLength {
                len_bytes: bytes.len(),
                expected_bytes: 10,
            });
        }
        let year = two_digits(bytes, 0)?;
        let month = two_digits(bytes, 2)?;
        let day = two_digits(bytes, 4)?;
        let hour = two_digits(bytes, 6)?;
        let minute = two_digits(bytes, 8)?;
        let second = if bytes.len() == 12 {
            two_digits(bytes, 10)?
        } else {
            0
        };
        DateTime::new(
            CENTURY_BASE_YEAR + u16::from(year),
            month,
            day,
            hour,
            minute,
            second,
        )
    }

    /// `YYMMDDhhmm`, the receipt form (seconds dropped, as the form has none).
    pub fn receipt_date(&self) -> ReceiptDateText {
        ReceiptDateText {
            date_time: *self,
            with_seconds: false,
        }
    }

    /// `YYMMDDhhmmss`, the 12-digit receipt form.
    pub fn receipt_date_with_seconds(&self) -> ReceiptDateText {
        ReceiptDateText {
            date_time: *self,
            with_seconds: true,
        }
    }

    fn write_twelve_digits(&self, out: &mut [u8]) {
        debug_assert!(out.len() >= 12, "caller provides room for 12 digits");
        let fields = [
            (self.year % 100) as u8,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
        ];
        for (pair, value) in out.chunks_exact_mut(2).zip(fields) {
            pair[0] = b'0' + value / 10;
            pair[1] = b'0' + value % 10;
        }
    }
}

impl fmt::Display for DateTime {
    /// ISO 8601, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Formats a [`DateTime`] as a receipt date without allocating.
#[derive(Debug, Clone, Copy)]
pub struct ReceiptDateText {
    date_time: DateTime,
    with_seconds: bool,
}

impl fmt::Display for ReceiptDateText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; 12];
        self.date_time.write_twelve_digits(&mut digits);
        let len = if self.with_seconds { 12 } else { 10 };
        // Only ASCII digits were written.
        let text = std::str::from_utf8(digits.get(..len).unwrap_or(&[])).map_err(|_| fmt::Error)?;
        f.write_str(text)
    }
}

/// An SMPP absolute time: the sender's local calendar time plus its offset.
/// Kept as sent so that it formats back byte for byte (except `00-`, a zero
/// offset written with a minus, which formats as `00+`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AbsoluteTime {
    pub local: DateTime,
    /// Tenths of a second, 0..=9.
    pub tenths: u8,
    /// Local time minus UTC, in quarter hours, -48..=48.
    pub utc_offset_quarter_hours: i8,
}

impl AbsoluteTime {
    /// The instant in milliseconds since the Unix epoch.
    pub fn to_unix_ms(&self) -> i64 {
        let offset_seconds = i64::from(self.utc_offset_quarter_hours) * SECONDS_PER_QUARTER_HOUR;
        (self.local.to_unix_seconds() - offset_seconds) * MS_PER_SECOND
            + i64::from(self.tenths) * 100
    }

    /// The UTC form (`00+`) of an instant, to the tenth of a second. Fails
    /// outside 2000..=2099, which two-digit years cannot express.
    pub fn from_unix_ms(unix_ms: i64) -> Result<AbsoluteTime, TimeError> {
        let local = DateTime::from_unix_ms(unix_ms)?;
        if !(CENTURY_BASE_YEAR..CENTURY_BASE_YEAR + 100).contains(&local.year) {
            return Err(TimeError::OutOfRange);
        }
        Ok(AbsoluteTime {
            local,
            tenths: (unix_ms.rem_euclid(MS_PER_SECOND) / 100) as u8,
            utc_offset_quarter_hours: 0,
        })
    }
}

/// An SMPP relative time: a period after "now" (the SMSC's receipt of the
/// PDU). The fields are kept separately because years and months are calendar
/// lengths, not fixed durations. Each field is 0..=99: SMPP sets no smaller
/// bound and peers send e.g. `000000480000000R` for 48 hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RelativeTime {
    pub years: u8,
    pub months: u8,
    pub days: u8,
    pub hours: u8,
    pub minutes: u8,
    pub seconds: u8,
}

impl RelativeTime {
    /// `now_ms` plus this period: years and months step the calendar (a day
    /// past the end of the target month clamps to its last day), the rest is
    /// a fixed number of seconds.
    pub fn add_to(&self, now_ms: i64) -> Result<i64, TimeError> {
        let now = DateTime::from_unix_ms(now_ms)?;
        let sub_second_ms = now_ms.rem_euclid(MS_PER_SECOND);
        let month_index = i64::from(now.year) * 12
            + i64::from(now.month - 1)
            + i64::from(self.years) * 12
            + i64::from(self.months);
        let year = month_index.div_euclid(12);
        // rem_euclid(12) is 0..=11.
        let month = (month_index.rem_euclid(12) + 1) as u8;
        let day = now.day.min(days_in_month(year, month));
        let year = u16::try_from(year)
            .ok()
            .filter(|y| *y <= 9999)
            .ok_or(TimeError::OutOfRange)?;
        let stepped = DateTime::new(year, month, day, now.hour, now.minute, now.second)?;
        let fixed_seconds = i64::from(self.days) * SECONDS_PER_DAY
            + i64::from(self.hours) * 3_600
            + i64::from(self.minutes) * 60
            + i64::from(self.seconds);
        Ok((stepped.to_unix_seconds() + fixed_seconds) * MS_PER_SECOND + sub_second_ms)
    }
}

/// A parsed schedule_delivery_time or validity_period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmppTime {
    Absolute(AbsoluteTime),
    Relative(RelativeTime),
}

/// Length of an SMPP time without its terminating NUL.
pub const SMPP_TIME_LEN_BYTES: usize = 16;

impl SmppTime {
    /// Parses exactly 16 bytes (no NUL terminator).
    pub fn parse(field: &[u8]) -> Result<SmppTime, TimeError> {
        if field.len() != SMPP_TIME_LEN_BYTES {
            return Err(TimeError::WrongLength {
                len_bytes: field.len(),
                expected_bytes: SMPP_TIME_LEN_BYTES,
            });
        }
        let year = two_digits(field, 0)?;
        let month = two_digits(field, 2)?;
        let day = two_digits(field, 4)?;
        let hour = two_digits(field, 6)?;
        let minute = two_digits(field, 8)?;
        let second = two_digits(field, 10)?;
        let tenths = digit(field, 12)?;
        let offset = two_digits(field, 13)?;
        match field.get(15).copied() {
            Some(b'R') => {
                // SMPP 3.4 7.1.1.2: tnn "000" for relative times. A peer that
                // puts anything else there means something we cannot know.
                if tenths != 0 || offset != 0 {
                    return Err(TimeError::RelativeNotZeroPadded);
                }
                Ok(SmppTime::Relative(RelativeTime {
                    years: year,
                    months: month,
                    days: day,
                    hours: hour,
                    minutes: minute,
                    seconds: second,
                }))
            }
            Some(sign @ (b'+' | b'-')) => {
                if offset > MAX_OFFSET_QUARTER_HOURS {
                    return Err(TimeError::BadOffset(offset));
                }
                // offset <= 48, so it fits an i8 either way round.
                let magnitude = offset as i8;
                let local = DateTime::new(
                    CENTURY_BASE_YEAR + u16::from(year),
                    month,
                    day,
                    hour,
                    minute,
                    second,
                )?;
                Ok(SmppTime::Absolute(AbsoluteTime {
                    local,
                    tenths,
                    utc_offset_quarter_hours: if sign == b'-' { -magnitude } else { magnitude },
                }))
            }
            Some(other) => Err(TimeError::BadIndicator(other)),
            None => Err(TimeError::WrongLength {
                len_bytes: field.len(),
                expected_bytes: SMPP_TIME_LEN_BYTES,
            }),
        }
    }

    /// Parses a C-octet-string time field: empty (or just the NUL) means "not
    /// set"; one trailing NUL is allowed so the codec may pass either form.
    pub fn parse_optional(field: &[u8]) -> Result<Option<SmppTime>, TimeError> {
        let field = field.strip_suffix(&[0]).unwrap_or(field);
        if field.is_empty() {
            return Ok(None);
        }
        SmppTime::parse(field).map(Some)
    }

    /// The 16-byte wire form, without NUL.
    pub fn format(&self) -> [u8; SMPP_TIME_LEN_BYTES] {
        let mut out = [b'0'; SMPP_TIME_LEN_BYTES];
        match self {
            SmppTime::Absolute(absolute) => {
                absolute.local.write_twelve_digits(&mut out);
                debug_assert!(absolute.tenths <= 9, "tenths hold one digit");
                debug_assert!(
                    absolute.utc_offset_quarter_hours.unsigned_abs() <= MAX_OFFSET_QUARTER_HOURS,
                    "offset within SMPP's 48 quarter hours"
                );
                let offset = absolute.utc_offset_quarter_hours.unsigned_abs();
                out[12] = b'0' + absolute.tenths % 10;
                out[13] = b'0' + offset / 10 % 10;
                out[14] = b'0' + offset % 10;
                out[15] = if absolute.utc_offset_quarter_hours < 0 {
                    b'-'
                } else {
                    b'+'
                };
            }
            SmppTime::Relative(relative) => {
                let fields = [
                    relative.years,
                    relative.months,
                    relative.days,
                    relative.hours,
                    relative.minutes,
                    relative.seconds,
                ];
                for (pair, value) in out.chunks_exact_mut(2).zip(fields) {
                    debug_assert!(value <= 99, "relative fields hold two digits");
                    pair[0] = b'0' + value / 10 % 10;
                    pair[1] = b'0' + value % 10;
                }
                out[15] = b'R';
            }
        }
        out
    }

    /// The absolute UTC instant in ms since the epoch; relative times count
    /// from `now_ms`.
    pub fn resolve_unix_ms(&self, now_ms: i64) -> Result<i64, TimeError> {
        match self {
            SmppTime::Absolute(absolute) => Ok(absolute.to_unix_ms()),
            SmppTime::Relative(relative) => relative.add_to(now_ms),
        }
    }
}

impl fmt::Display for SmppTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.format();
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

fn digit(bytes: &[u8], position: usize) -> Result<u8, TimeError> {
    match bytes.get(position) {
        Some(b) if b.is_ascii_digit() => Ok(b - b'0'),
        _ => Err(TimeError::NotDigit { position }),
    }
}

fn two_digits(bytes: &[u8], position: usize) -> Result<u8, TimeError> {
    Ok(digit(bytes, position)? * 10 + digit(bytes, position + 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> i64 {
        DateTime::new(year, month, day, hour, minute, second)
            .expect("test date is valid")
            .to_unix_ms()
    }

    #[test]
    fn civil_day_numbers_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        // 2025-11-25 is 20_417 days after the epoch (1_764_028_800 s).
        assert_eq!(days_from_civil(2025, 11, 25) * 86_400, 1_764_028_800);
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn leap_years_and_month_lengths() {
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2025, 4), 30);
        assert_eq!(days_in_month(2025, 13), 0);
        assert!(DateTime::new(2025, 2, 29, 0, 0, 0).is_err());
        assert!(DateTime::new(2024, 2, 29, 0, 0, 0).is_ok());
    }

    #[test]
    fn receipt_dates_of_ten_and_twelve_digits() {
        let ten = DateTime::parse_receipt_date("2511251201").expect("10 digits");
        assert_eq!(ten, DateTime::new(2025, 11, 25, 12, 1, 0).expect("valid"));
        let twelve = DateTime::parse_receipt_date("251125120130").expect("12 digits");
        assert_eq!(
            twelve,
            DateTime::new(2025, 11, 25, 12, 1, 30).expect("valid")
        );
        assert_eq!(twelve.receipt_date().to_string(), "2511251201");
        assert_eq!(
            twelve.receipt_date_with_seconds().to_string(),
            "251125120130"
        );
        assert_eq!(
            DateTime::parse_receipt_date("25112512"),
            Err(TimeError::WrongLength {
                len_bytes: 8,
                expected_bytes: 10
            })
        );
        assert_eq!(
            DateTime::parse_receipt_date("2513251200"),
            Err(TimeError::BadMonth(13))
        );
        assert_eq!(
            DateTime::parse_receipt_date("25112a1200"),
            Err(TimeError::NotDigit { position: 5 })
        );
        assert_eq!(
            DateTime::parse_receipt_date("2511252400"),
            Err(TimeError::BadHour(24))
        );
        // Multi-byte text must be refused, not sliced.
        assert!(DateTime::parse_receipt_date("25112512é").is_err());
    }

    #[test]
    fn absolute_time_with_offsets_resolves_to_utc() {
        // 12:00 local at +1h (4 quarter hours) is 11:00 UTC.
        let t = SmppTime::parse(b"251125120000304+").expect("valid absolute");
        assert_eq!(t.resolve_unix_ms(0), Ok(ms(2025, 11, 25, 11, 0, 0) + 300));
        // 12:00 local at -5h (20 quarter hours) is 17:00 UTC.
        let t = SmppTime::parse(b"251125120000020-").expect("valid absolute");
        assert_eq!(t.resolve_unix_ms(0), Ok(ms(2025, 11, 25, 17, 0, 0)));
        // Offsets cross the date line.
        let t = SmppTime::parse(b"250101003000048+").expect("valid absolute");
        assert_eq!(t.resolve_unix_ms(0), Ok(ms(2024, 12, 31, 12, 30, 0)));
    }

    #[test]
    fn smpp_times_format_back_byte_for_byte() {
        for text in [
            &b"251125120000304+"[..],
            b"251125120000020-",
            b"991231235959948+",
            b"000101000000000+",
            b"000007000000000R",
            b"991231235959000R",
        ] {
            let parsed = SmppTime::parse(text).expect("valid time");
            assert_eq!(&parsed.format()[..], text);
            assert_eq!(parsed.to_string().as_bytes(), text);
        }
    }

    #[test]
    fn relative_times_add_calendar_and_fixed_parts() {
        let now = ms(2025, 11, 25, 12, 0, 0) + 250;
        let seven_days = SmppTime::parse(b"000007000000000R").expect("valid relative");
        assert_eq!(
            seven_days.resolve_unix_ms(now),
            Ok(ms(2025, 12, 2, 12, 0, 0) + 250)
        );
        let one_month = SmppTime::parse(b"000100000000000R").expect("valid relative");
        assert_eq!(
            one_month.resolve_unix_ms(ms(2024, 1, 31, 8, 0, 0)),
            Ok(ms(2024, 2, 29, 8, 0, 0)),
            "day clamps to the end of a shorter month"
        );
        let hours_48 = SmppTime::parse(b"000000480000000R").expect("48 hours is accepted");
        assert_eq!(hours_48.resolve_unix_ms(now), Ok(now + 48 * 3_600_000));
        let year_and_90s = SmppTime::parse(b"010000000130000R").expect("valid relative");
        assert_eq!(
            year_and_90s.resolve_unix_ms(now),
            Ok(ms(2026, 11, 25, 12, 1, 30) + 250)
        );
    }

    #[test]
    fn invalid_times_are_refused_with_the_field_status() {
        let cases: [(&[u8], TimeError); 11] = [
            (b"251325120000000+", TimeError::BadMonth(13)),
            (b"251100120000000+", TimeError::BadDay { day: 0, month: 11 }),
            (b"250230120000000+", TimeError::BadDay { day: 30, month: 2 }),
            (b"251125250000000+", TimeError::BadHour(25)),
            (b"251125126000000+", TimeError::BadMinute(60)),
            (b"251125120060000+", TimeError::BadSecond(60)),
            (b"251125120000049+", TimeError::BadOffset(49)),
            (b"251125120000000X", TimeError::BadIndicator(b'X')),
            (b"000007000000100R", TimeError::RelativeNotZeroPadded),
            (
                b"25112512000000+",
                TimeError::WrongLength {
                    len_bytes: 15,
                    expected_bytes: 16,
                },
            ),
            (b"2511251200000 0+", TimeError::NotDigit { position: 13 }),
        ];
        for (text, expected) in cases {
            assert_eq!(SmppTime::parse(text), Err(expected), "{text:?}");
        }
        let err = TimeError::BadMonth(13);
        assert_eq!(
            err.status_for(TimeField::ScheduleDeliveryTime),
            CommandStatus::ESME_RINVSCHED
        );
        assert_eq!(
            err.status_for(TimeField::ValidityPeriod),
            CommandStatus::ESME_RINVEXPIRY
        );
    }

    #[test]
    fn optional_fields_accept_empty_and_nul() {
        assert_eq!(SmppTime::parse_optional(b""), Ok(None));
        assert_eq!(SmppTime::parse_optional(b"\0"), Ok(None));
        assert!(matches!(
            SmppTime::parse_optional(b"000007000000000R\0"),
            Ok(Some(SmppTime::Relative(_)))
        ));
    }

    #[test]
    fn absolute_from_instant_round_trips() {
        let instant = ms(2025, 11, 25, 12, 0, 5) + 700;
        let absolute = AbsoluteTime::from_unix_ms(instant).expect("in century");
        assert_eq!(
            &SmppTime::Absolute(absolute).format()[..],
            b"251125120005700+"
        );
        assert_eq!(absolute.to_unix_ms(), instant);
        assert_eq!(
            AbsoluteTime::from_unix_ms(ms(1999, 12, 31, 0, 0, 0)),
            Err(TimeError::OutOfRange)
        );
    }

    #[test]
    fn instants_before_the_epoch_floor_to_the_second() {
        let dt = DateTime::from_unix_ms(-1).expect("in range");
        assert_eq!(dt, DateTime::new(1969, 12, 31, 23, 59, 59).expect("valid"));
        assert_eq!(DateTime::from_unix_ms(i64::MAX), Err(TimeError::OutOfRange));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_parse_without_panic_and_reformat(field in proptest::collection::vec(any::<u8>(), 0..20)) {
                if let Ok(parsed) = SmppTime::parse(&field) {
                    prop_assert_eq!(SmppTime::parse(&parsed.format()), Ok(parsed));
                }
                let _ = SmppTime::parse_optional(&field);
            }

            #[test]
            fn digit_strings_parse_or_fail_cleanly(digits in "[0-9]{15}[+R-]") {
                if let Ok(parsed) = SmppTime::parse(digits.as_bytes()) {
                    if !digits.ends_with("00-") {
                        prop_assert_eq!(&parsed.format()[..], digits.as_bytes());
                    }
                    let _ = parsed.resolve_unix_ms(1_764_072_000_000);
                }
            }

            #[test]
            fn instants_round_trip_through_the_calendar(unix_ms in -62_000_000_000_000i64..253_000_000_000_000) {
                let date_time = DateTime::from_unix_ms(unix_ms).expect("years 0..=9999");
                prop_assert_eq!(date_time.to_unix_ms(), unix_ms.div_euclid(1_000) * 1_000);
            }

            #[test]
            fn relative_times_never_panic(now_ms in any::<i64>(), fields in any::<[u8; 6]>()) {
                let relative = RelativeTime {
                    years: fields[0] % 100,
                    months: fields[1] % 100,
                    days: fields[2] % 100,
                    hours: fields[3] % 100,
                    minutes: fields[4] % 100,
                    seconds: fields[5] % 100,
                };
                if let Ok(later) = relative.add_to(now_ms) {
                    prop_assert!(later >= now_ms);
                }
            }
        }
    }
}
