//! The time of a log line, for `replay`, which runs in log time.
//!
//! [`TimestampParser::parse`] returns milliseconds since the Unix epoch (UTC)
//! of the timestamp a line starts with (or, for web logs, carries in
//! brackets), or `None` when it finds none. Recognised, in the order they
//! are tried (the format that matched last is tried first):
//!
//! - RFC 3164 syslog, optionally after `<PRI>`: `Mar  3 06:25:01`,
//!   `Mar 03 06:25:01` (journalctl's `short`), with optional `.fraction`,
//!   then a space, a tab or the end of the line. The stamp has no year: see
//!   [`TimestampParser`] for how it is inferred.
//! - RFC 3339 / ISO 8601, optionally after `<PRI>` and an RFC 5424 version
//!   (`<34>1 `): `2024-06-01T12:00:00Z`, `2024-06-01 12:00:00,5`,
//!   `2024-06-01T12:00:00.123456+02:00`, `…+0200`, `…+02` (journalctl's
//!   `short-iso` too).
//! - Epoch seconds (9 or 10 digits, optional `.fraction`) or epoch
//!   milliseconds (13 digits) at line start, then a space, a tab or the end.
//! - Common/combined web log: the first `[10/Oct/2000:13:55:36 -0700]` in
//!   the line.
//!
//! Stamps without an offset (syslog, naive ISO) are taken as UTC. The result
//! orders lines and measures windows between them, for which a fixed offset
//! of the whole file changes nothing; only a file that crosses a daylight
//! saving change would be off by the shift, for an hour.
//!
//! Everything is byte-level and allocation-free: this runs for every line of
//! the replayed logs.

const MS_PER_SEC: i64 = 1_000;
const MS_PER_DAY: i64 = 86_400_000;
/// A backwards step longer than this between syslog stamps means the year
/// turned (Dec -> Jan); shorter steps are lines written out of order.
const HALF_YEAR_MS: i64 = 183 * MS_PER_DAY;
/// How far a line may seem to lie in the future of the reference time (clock
/// skew, time zones) before it is placed in the previous year instead.
const FUTURE_SLACK_MS: i64 = MS_PER_DAY;
/// A syslog stamp is `Mmm dd HH:MM:SS`: the cache key length.
const SYSLOG_LEN: usize = 15;
/// Years the parser will produce, so that the arithmetic cannot overflow
/// however odd the reference or the input.
const MIN_YEAR: i64 = 0;
const MAX_YEAR: i64 = 9_999;
/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// The formats, in the order they are tried when the last one fails: the
/// cheap checks on the first bytes come before the web log's scan for `[`.
const ORDER: [Format; 4] = [Format::Syslog, Format::Iso, Format::Epoch, Format::Web];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Syslog,
    Iso,
    Epoch,
    Web,
}

/// Extracts timestamps from log lines; one per input file, as it carries
/// the year inferred for that file's syslog stamps.
///
/// Year inference for syslog stamps: the first one gets the year of the
/// reference time, or the previous year if that would put it more than 24 h
/// after the reference (logs are not from the future). Afterwards a stamp
/// more than ~6 months *before* the previous syslog stamp means the year
/// turned (Dec -> Jan) and the year is incremented; smaller backwards steps
/// (lines written out of order) keep it. A stamp that would jump more than
/// ~6 months forward yet lies within 24 h before the previous stamp when put
/// in the previous year is a late line from before New Year: it gets the
/// previous year and the year is kept. Feb 29 of a non-leap year is invalid.
#[derive(Debug, Clone)]
pub struct TimestampParser {
    reference_ms: i64,
    last: Format,
    /// The year given to syslog stamps; `None` until the first one.
    syslog_year: Option<i64>,
    /// The previous syslog stamp, whole seconds, for the rollover rule.
    prev_syslog_ms: i64,
    /// The previous syslog stamp's 15 bytes and result (whole seconds):
    /// consecutive lines very often share their second, so most syslog
    /// lines are a 15-byte compare.
    cache_key: [u8; SYSLOG_LEN],
    cache_ms: i64,
    cache_valid: bool,
}

impl TimestampParser {
    /// A parser whose yearless syslog stamps are placed relative to
    /// `reference_ms` (the input file's mtime, or now), in ms since the epoch.
    pub fn new(reference_ms: i64) -> Self {
        TimestampParser {
            // Clamped so that the year arithmetic stays in range whatever
            // the file system reports.
            reference_ms: reference_ms.clamp(MIN_MS, MAX_MS),
            last: Format::Syslog,
            syslog_year: None,
            prev_syslog_ms: 0,
            cache_key: [0; SYSLOG_LEN],
            cache_ms: 0,
            cache_valid: false,
        }
    }

    /// The time of `line` in ms since the Unix epoch (UTC), or `None` when it
    /// has no recognised timestamp or an invalid one (Feb 30, 25:00, ...).
    pub fn parse(&mut self, line: &[u8]) -> Option<i64> {
        if let Some(ms) = self.try_format(self.last, line) {
            return Some(ms);
        }
        for format in ORDER {
            if format != self.last
                && let Some(ms) = self.try_format(format, line)
            {
                self.last = format;
                return Some(ms);
            }
        }
        None
    }

    fn try_format(&mut self, format: Format, line: &[u8]) -> Option<i64> {
        match format {
            Format::Syslog => self.parse_syslog(strip_pri(line)),
            Format::Iso => parse_iso(strip_version(strip_pri(line))),
            Format::Epoch => parse_epoch(line),
            Format::Web => parse_web(line),
        }
    }

    /// `Mmm dd HH:MM:SS[.frac]` then a space, a tab or the end.
    fn parse_syslog(&mut self, s: &[u8]) -> Option<i64> {
        let stamp: &[u8; SYSLOG_LEN] = s.first_chunk()?;
        // The tail first: a line that fails it must not move the year state.
        let (frac_ms, rest) = fraction_ms(&s[SYSLOG_LEN..], b'.', b'.')?;
        if !at_field_end(rest) {
            return None;
        }
        if self.cache_valid && *stamp == self.cache_key {
            return Some(self.cache_ms + frac_ms);
        }
        let ms = self.syslog_uncached(stamp)?;
        self.cache_key = *stamp;
        self.cache_ms = ms;
        self.cache_valid = true;
        Some(ms + frac_ms)
    }

    /// Parses the 15-byte stamp and places it in a year; whole seconds.
    fn syslog_uncached(&mut self, b: &[u8; SYSLOG_LEN]) -> Option<i64> {
        let month = month_number([b[0], b[1], b[2]])?;
        if b[3] != b' ' || b[6] != b' ' || b[9] != b':' || b[12] != b':' {
            return None;
        }
        // ` 3` (RFC 3164) or `03` (journalctl).
        let day = if b[4] == b' ' {
            digit(b[5])?
        } else {
            two_digits(b[4], b[5])?
        };
        let hour = two_digits(b[7], b[8])?;
        let minute = two_digits(b[10], b[11])?;
        let second = two_digits(b[13], b[14])?;
        if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let time_ms = time_of_day_ms(hour, minute, second);
        // Days past the end of the month (Feb 30) roll into the next one in
        // `at`, which is enough to choose the year; the day is validated
        // against the chosen year's month afterwards.
        let at = |year: i64| days_from_civil(year, month, day) * MS_PER_DAY + time_ms;

        let (year, ms, keep_year) = match self.syslog_year {
            None => {
                let mut year = year_of_ms(self.reference_ms);
                if at(year) > self.reference_ms + FUTURE_SLACK_MS {
                    year -= 1;
                }
                (year, at(year), year)
            }
            Some(current) => {
                let ms = at(current);
                if ms < self.prev_syslog_ms - HALF_YEAR_MS {
                    (current + 1, at(current + 1), current + 1)
                } else if ms > self.prev_syslog_ms + HALF_YEAR_MS {
                    let earlier = at(current - 1);
                    let behind = self.prev_syslog_ms - earlier;
                    if (0..=FUTURE_SLACK_MS).contains(&behind) {
                        (current - 1, earlier, current)
                    } else {
                        (current, ms, current)
                    }
                } else {
                    (current, ms, current)
                }
            }
        };
        if !(MIN_YEAR..=MAX_YEAR).contains(&year) || day > days_in_month(year, month) {
            return None;
        }
        self.syslog_year = Some(keep_year);
        self.prev_syslog_ms = ms;
        Some(ms)
    }
}

/// The rest of the line after a `<PRI>` (1 to 3 digits), or the line.
fn strip_pri(line: &[u8]) -> &[u8] {
    if line.first() != Some(&b'<') {
        return line;
    }
    for end in 2..=4 {
        match line.get(end) {
            Some(b'>') => return &line[end + 1..],
            Some(c) if c.is_ascii_digit() => {}
            _ => return line,
        }
    }
    line
}

/// The rest after an RFC 5424 version (`1 `: a non-zero digit, up to two
/// more, a space), or `s`. No ISO stamp starts like that, so it is safe to
/// skip even without a `<PRI>` (a file written without it).
fn strip_version(s: &[u8]) -> &[u8] {
    if !matches!(s.first(), Some(b'1'..=b'9')) {
        return s;
    }
    for end in 1..=3 {
        match s.get(end) {
            Some(b' ') => return &s[end + 1..],
            Some(c) if c.is_ascii_digit() => {}
            _ => return s,
        }
    }
    s
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.frac][Z|±HH[:MM]|±HHMM]`; what follows is not
/// checked (the shape is distinctive enough), except that a malformed offset
/// rejects the line rather than being ignored.
fn parse_iso(s: &[u8]) -> Option<i64> {
    let b: &[u8; 19] = s.first_chunk()?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = i64::from(two_digits(b[0], b[1])? * 100 + two_digits(b[2], b[3])?);
    let month = two_digits(b[5], b[6])?;
    let day = two_digits(b[8], b[9])?;
    let hour = two_digits(b[11], b[12])?;
    let minute = two_digits(b[14], b[15])?;
    let second = two_digits(b[17], b[18])?;
    if !valid_date(year, month, day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let (frac_ms, rest) = fraction_ms(&s[19..], b'.', b',')?;
    let offset_ms = match rest.first() {
        Some(b'Z' | b'z') => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let offset_ms = iso_offset_ms(&rest[1..])?;
            if sign == b'-' { -offset_ms } else { offset_ms }
        }
        _ => 0,
    };
    let local = days_from_civil(year, month, day) * MS_PER_DAY
        + time_of_day_ms(hour, minute, second)
        + frac_ms;
    Some(local - offset_ms)
}

/// `HH`, `HH:MM` or `HHMM` after the sign, in ms.
fn iso_offset_ms(s: &[u8]) -> Option<i64> {
    let hours = two_digits(*s.first()?, *s.get(1)?)?;
    let minutes = match s.get(2) {
        Some(b':') => two_digits(*s.get(3)?, *s.get(4)?)?,
        Some(c) if c.is_ascii_digit() => two_digits(*c, *s.get(3)?)?,
        _ => 0,
    };
    offset_ms(hours, minutes)
}

/// Epoch seconds (9 or 10 digits, optional `.frac`) or milliseconds (13
/// digits, optional `.frac` ignored), then a space, a tab or the end.
fn parse_epoch(line: &[u8]) -> Option<i64> {
    let mut value: i64 = 0;
    let mut digits = 0;
    for &c in line.iter().take(14) {
        let d = c.wrapping_sub(b'0');
        if d >= 10 {
            break;
        }
        value = value * 10 + i64::from(d);
        digits += 1;
    }
    let (frac_ms, rest) = fraction_ms(&line[digits..], b'.', b'.')?;
    if !at_field_end(rest) {
        return None;
    }
    match digits {
        9 | 10 => Some(value * MS_PER_SEC + frac_ms),
        13 => Some(value),
        _ => None,
    }
}

/// The first `[dd/Mon/yyyy:HH:MM:SS ±zzzz]` in the line.
fn parse_web(line: &[u8]) -> Option<i64> {
    memchr::memchr_iter(b'[', line).find_map(|at| parse_web_at(&line[at + 1..]))
}

/// `dd/Mon/yyyy:HH:MM:SS ±zzzz]`, just after the `[`.
fn parse_web_at(s: &[u8]) -> Option<i64> {
    let b: &[u8; 27] = s.first_chunk()?;
    if b[2] != b'/'
        || b[6] != b'/'
        || b[11] != b':'
        || b[14] != b':'
        || b[17] != b':'
        || b[20] != b' '
        || b[26] != b']'
    {
        return None;
    }
    let day = two_digits(b[0], b[1])?;
    let month = month_number([b[3], b[4], b[5]])?;
    let year = i64::from(two_digits(b[7], b[8])? * 100 + two_digits(b[9], b[10])?);
    let hour = two_digits(b[12], b[13])?;
    let minute = two_digits(b[15], b[16])?;
    let second = two_digits(b[18], b[19])?;
    if !valid_date(year, month, day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let offset = offset_ms(two_digits(b[22], b[23])?, two_digits(b[24], b[25])?)?;
    let offset = match b[21] {
        b'+' => offset,
        b'-' => -offset,
        _ => return None,
    };
    let local =
        days_from_civil(year, month, day) * MS_PER_DAY + time_of_day_ms(hour, minute, second);
    Some(local - offset)
}

/// An optional fraction of a second: `sep` (or `alt_sep`) then at least one
/// digit. Returns its whole milliseconds (further digits are truncated) and
/// what follows; `(0, s)` without a separator; `None` for a separator
/// without digits.
fn fraction_ms(s: &[u8], sep: u8, alt_sep: u8) -> Option<(i64, &[u8])> {
    match s.first() {
        Some(&c) if c == sep || c == alt_sep => {}
        _ => return Some((0, s)),
    }
    let digits = s[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut ms = 0;
    for i in 0..3 {
        ms *= 10;
        if i < digits {
            ms += i64::from(s[1 + i] - b'0');
        }
    }
    Some((ms, &s[1 + digits..]))
}

/// Whether a stamp ends the field: end of line, space or tab.
fn at_field_end(rest: &[u8]) -> bool {
    matches!(rest.first(), None | Some(b' ' | b'\t'))
}

fn digit(c: u8) -> Option<u32> {
    let d = c.wrapping_sub(b'0');
    (d < 10).then_some(u32::from(d))
}

fn two_digits(a: u8, b: u8) -> Option<u32> {
    Some(digit(a)? * 10 + digit(b)?)
}

/// `Jan`..`Dec` (the case syslog, web servers and C's locale write) -> 1..12.
fn month_number(name: [u8; 3]) -> Option<u32> {
    Some(match &name {
        b"Jan" => 1,
        b"Feb" => 2,
        b"Mar" => 3,
        b"Apr" => 4,
        b"May" => 5,
        b"Jun" => 6,
        b"Jul" => 7,
        b"Aug" => 8,
        b"Sep" => 9,
        b"Oct" => 10,
        b"Nov" => 11,
        b"Dec" => 12,
        _ => return None,
    })
}

fn offset_ms(hours: u32, minutes: u32) -> Option<i64> {
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(i64::from(hours * 60 + minutes) * 60 * MS_PER_SEC)
}

fn time_of_day_ms(hour: u32, minute: u32, second: u32) -> i64 {
    i64::from((hour * 60 + minute) * 60 + second) * MS_PER_SEC
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn valid_date(year: i64, month: u32, day: u32) -> bool {
    (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date. Counts in
/// 400-year eras starting on March 1st, so that the leap day is the last
/// day of its year and each month's first day is a linear function of it.
/// A day past the end of its month rolls into the next month.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400; // 0..=399
    let month_from_march = i64::from((month + 9) % 12); // Mar = 0 .. Feb = 11
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719_468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// The (proleptic Gregorian, UTC) year of an instant; the inverse of
/// [`days_from_civil`] as far as the year goes.
fn year_of_ms(ms: i64) -> i64 {
    let days = ms.div_euclid(MS_PER_DAY) + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097; // 0..=146_096
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    // Years here start on March 1st: January and February belong to the
    // next civil year.
    let year = year_of_era + era * 400;
    if month_from_march >= 10 {
        year + 1
    } else {
        year
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// ms since the epoch of a UTC date and time, by an independent route
    /// (counting days year by year), to check the parser against.
    fn utc(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> i64 {
        let mut days: i64 = 0;
        if year >= 1970 {
            for y in 1970..year {
                days += if is_leap_year(y) { 366 } else { 365 };
            }
        } else {
            for y in year..1970 {
                days -= if is_leap_year(y) { 366 } else { 365 };
            }
        }
        for m in 1..month {
            days += i64::from(days_in_month(year, m));
        }
        days += i64::from(day) - 1;
        days * MS_PER_DAY + time_of_day_ms(hour, minute, second)
    }

    fn parse_one(reference_ms: i64, line: &str) -> Option<i64> {
        TimestampParser::new(reference_ms).parse(line.as_bytes())
    }

    fn reference() -> i64 {
        utc(2024, 6, 15, 12, 0, 0)
    }

    #[test]
    fn days_from_civil_agrees_with_counting_days_over_many_years() {
        for year in [
            0, 1, 1600, 1899, 1900, 1969, 1970, 1999, 2000, 2024, 2100, 9999,
        ] {
            for month in 1..=12 {
                let expected = utc(year, month, 1, 0, 0, 0) / MS_PER_DAY;
                assert_eq!(days_from_civil(year, month, 1), expected, "{year}-{month}");
                assert_eq!(year_of_ms(expected * MS_PER_DAY), year, "{year}-{month}");
                assert_eq!(year_of_ms((expected + 27) * MS_PER_DAY + 1), year);
            }
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(year_of_ms(-1), 1969);
    }

    #[test]
    fn syslog_stamp_with_padded_day_gets_the_reference_year() {
        assert_eq!(
            parse_one(reference(), "Mar  3 06:25:01 host sshd[1]: x"),
            Some(utc(2024, 3, 3, 6, 25, 1))
        );
    }

    #[test]
    fn syslog_stamp_with_two_digit_and_zero_padded_days_parses() {
        assert_eq!(
            parse_one(reference(), "Mar 13 06:25:01 host x"),
            Some(utc(2024, 3, 13, 6, 25, 1))
        );
        // journalctl's short format.
        assert_eq!(
            parse_one(reference(), "Mar 03 06:25:01 host unit[42]: msg"),
            Some(utc(2024, 3, 3, 6, 25, 1))
        );
    }

    #[test]
    fn syslog_stamp_after_pri_parses() {
        assert_eq!(
            parse_one(reference(), "<34>Oct 11 22:14:15 mymachine su: x"),
            Some(utc(2023, 10, 11, 22, 14, 15))
        );
    }

    #[test]
    fn syslog_fractional_seconds_add_milliseconds() {
        assert_eq!(
            parse_one(reference(), "Mar  3 06:25:01.123456 host x"),
            Some(utc(2024, 3, 3, 6, 25, 1) + 123)
        );
        assert_eq!(
            parse_one(reference(), "Mar  3 06:25:01.5"),
            Some(utc(2024, 3, 3, 6, 25, 1) + 500)
        );
    }

    #[test]
    fn syslog_stamp_at_end_of_line_parses_but_glued_text_does_not() {
        assert_eq!(
            parse_one(reference(), "Mar  3 06:25:01"),
            Some(utc(2024, 3, 3, 6, 25, 1))
        );
        assert_eq!(parse_one(reference(), "Mar  3 06:25:01host"), None);
        assert_eq!(parse_one(reference(), "Mar  3 06:25:01. host"), None);
    }

    #[test]
    fn syslog_cache_reuses_the_second_but_keeps_each_lines_fraction() {
        let mut parser = TimestampParser::new(reference());
        let base = utc(2024, 3, 3, 6, 25, 1);
        assert_eq!(parser.parse(b"Mar  3 06:25:01 a"), Some(base));
        assert_eq!(parser.parse(b"Mar  3 06:25:01.250 b"), Some(base + 250));
        assert_eq!(parser.parse(b"Mar  3 06:25:01x"), None);
        assert_eq!(parser.parse(b"Mar  3 06:25:02 c"), Some(base + 1_000));
    }

    #[test]
    fn syslog_year_rolls_over_from_december_to_january() {
        let mut parser = TimestampParser::new(utc(2024, 1, 2, 0, 0, 0));
        assert_eq!(
            parser.parse(b"Dec 31 23:59:58 h x"),
            Some(utc(2023, 12, 31, 23, 59, 58))
        );
        assert_eq!(
            parser.parse(b"Dec 31 23:59:59 h x"),
            Some(utc(2023, 12, 31, 23, 59, 59))
        );
        assert_eq!(
            parser.parse(b"Jan  1 00:00:00 h x"),
            Some(utc(2024, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            parser.parse(b"Jan  1 00:00:05 h x"),
            Some(utc(2024, 1, 1, 0, 0, 5))
        );
    }

    #[test]
    fn syslog_late_line_from_before_new_year_keeps_its_year_and_the_new_one() {
        let mut parser = TimestampParser::new(utc(2024, 1, 2, 0, 0, 0));
        assert_eq!(
            parser.parse(b"Dec 31 23:59:59 h x"),
            Some(utc(2023, 12, 31, 23, 59, 59))
        );
        assert_eq!(
            parser.parse(b"Jan  1 00:00:01 h x"),
            Some(utc(2024, 1, 1, 0, 0, 1))
        );
        assert_eq!(
            parser.parse(b"Dec 31 23:59:58 h x"),
            Some(utc(2023, 12, 31, 23, 59, 58))
        );
        assert_eq!(
            parser.parse(b"Jan  1 00:00:02 h x"),
            Some(utc(2024, 1, 1, 0, 0, 2))
        );
    }

    #[test]
    fn syslog_small_backward_steps_do_not_change_the_year() {
        let mut parser = TimestampParser::new(reference());
        assert_eq!(
            parser.parse(b"Mar  3 06:25:01 h x"),
            Some(utc(2024, 3, 3, 6, 25, 1))
        );
        assert_eq!(
            parser.parse(b"Mar  3 06:24:01 h x"),
            Some(utc(2024, 3, 3, 6, 24, 1))
        );
        assert_eq!(
            parser.parse(b"Feb  3 06:24:01 h x"),
            Some(utc(2024, 2, 3, 6, 24, 1))
        );
        assert_eq!(
            parser.parse(b"Mar  4 00:00:00 h x"),
            Some(utc(2024, 3, 4, 0, 0, 0))
        );
    }

    #[test]
    fn syslog_forward_gap_of_months_stays_in_the_same_year() {
        let mut parser = TimestampParser::new(utc(2024, 12, 1, 0, 0, 0));
        assert_eq!(
            parser.parse(b"Feb  1 00:00:00 h x"),
            Some(utc(2024, 2, 1, 0, 0, 0))
        );
        assert_eq!(
            parser.parse(b"Oct  1 00:00:00 h x"),
            Some(utc(2024, 10, 1, 0, 0, 0))
        );
    }

    #[test]
    fn syslog_first_stamp_more_than_a_day_in_the_future_goes_to_the_previous_year() {
        let reference = utc(2024, 1, 5, 12, 0, 0);
        assert_eq!(
            parse_one(reference, "Dec 30 10:00:00 h x"),
            Some(utc(2023, 12, 30, 10, 0, 0))
        );
        // Within 24 h ahead of the reference is clock skew, not last year.
        assert_eq!(
            parse_one(reference, "Jan  6 11:00:00 h x"),
            Some(utc(2024, 1, 6, 11, 0, 0))
        );
        assert_eq!(
            parse_one(reference, "Jan  6 13:00:00 h x"),
            Some(utc(2023, 1, 6, 13, 0, 0))
        );
    }

    #[test]
    fn syslog_feb_29_is_valid_only_in_a_leap_year() {
        assert_eq!(
            parse_one(utc(2024, 6, 1, 0, 0, 0), "Feb 29 12:00:00 h x"),
            Some(utc(2024, 2, 29, 12, 0, 0))
        );
        assert_eq!(
            parse_one(utc(2023, 6, 1, 0, 0, 0), "Feb 29 12:00:00 h x"),
            None
        );
    }

    #[test]
    fn syslog_invalid_fields_are_rejected_without_moving_the_year() {
        let mut parser = TimestampParser::new(reference());
        for line in [
            "Foo  3 06:25:01 h x",
            "mar  3 06:25:01 h x",
            "Mar  0 06:25:01 h x",
            "Mar 32 06:25:01 h x",
            "Apr 31 06:25:01 h x",
            "Mar  3 24:00:00 h x",
            "Mar  3 06:60:00 h x",
            "Mar  3 06:25:61 h x",
            "Mar 3 06:25:01 h x",
            "Mar  3 6:25:01 h x",
        ] {
            assert_eq!(parser.parse(line.as_bytes()), None, "{line}");
        }
        assert_eq!(parser.syslog_year, None);
        assert_eq!(
            parser.parse(b"Mar  3 23:59:60 h x"),
            Some(utc(2024, 3, 4, 0, 0, 0)),
            "a leap second is accepted"
        );
    }

    #[test]
    fn iso_stamp_with_z_parses() {
        assert_eq!(
            parse_one(0, "2024-06-01T12:00:00Z host x"),
            Some(utc(2024, 6, 1, 12, 0, 0))
        );
        assert_eq!(
            parse_one(0, "2024-06-01t12:00:00z"),
            Some(utc(2024, 6, 1, 12, 0, 0))
        );
    }

    #[test]
    fn iso_offsets_in_every_spelling_convert_to_utc() {
        let noon_utc = utc(2024, 6, 1, 12, 0, 0);
        assert_eq!(parse_one(0, "2024-06-01T14:00:00+02:00 x"), Some(noon_utc));
        assert_eq!(parse_one(0, "2024-06-01T14:00:00+0200 x"), Some(noon_utc));
        assert_eq!(parse_one(0, "2024-06-01T14:00:00+02 x"), Some(noon_utc));
        assert_eq!(parse_one(0, "2024-06-01T06:30:00-05:30 x"), Some(noon_utc));
        assert_eq!(parse_one(0, "2024-06-01T12:00:00+00:00"), Some(noon_utc));
    }

    #[test]
    fn iso_fractions_with_point_or_comma_add_milliseconds() {
        let noon_utc = utc(2024, 6, 1, 12, 0, 0);
        assert_eq!(
            parse_one(0, "2024-06-01T14:00:00.123456+02:00 x"),
            Some(noon_utc + 123)
        );
        assert_eq!(
            parse_one(0, "2024-06-01 12:00:00,5 - app - x"),
            Some(noon_utc + 500)
        );
        assert_eq!(
            parse_one(0, "2024-06-01T12:00:00.999999999Z"),
            Some(noon_utc + 999)
        );
        assert_eq!(parse_one(0, "2024-06-01T12:00:00.Z"), None);
    }

    #[test]
    fn iso_naive_time_with_space_is_taken_as_utc() {
        assert_eq!(
            parse_one(0, "2024-06-01 12:00:00 host x"),
            Some(utc(2024, 6, 1, 12, 0, 0))
        );
    }

    #[test]
    fn iso_after_pri_and_rfc5424_version_parses() {
        assert_eq!(
            parse_one(
                0,
                "<165>1 2003-10-11T22:14:15.003Z mymachine evntslog - ID47 - x"
            ),
            Some(utc(2003, 10, 11, 22, 14, 15) + 3)
        );
        assert_eq!(
            parse_one(0, "<13>2024-06-01T12:00:00Z x"),
            Some(utc(2024, 6, 1, 12, 0, 0))
        );
    }

    #[test]
    fn iso_invalid_dates_and_offsets_are_rejected() {
        for line in [
            "2023-02-29T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-06-00T00:00:00Z",
            "2024-06-01T24:00:00Z",
            "2024-06-01T12:60:00Z",
            "2024-06-01T12:00:61Z",
            "2024-06-01T12:00:00+2",
            "2024-06-01T12:00:00+25:00",
            "2024-06-01T12:00:00+02:6",
            "2024-06-01X12:00:00Z",
            "2024-6-01T12:00:00Z",
        ] {
            assert_eq!(parse_one(0, line), None, "{line}");
        }
    }

    #[test]
    fn iso_leap_days_follow_the_gregorian_rules() {
        assert_eq!(
            parse_one(0, "2000-02-29 00:00:00"),
            Some(utc(2000, 2, 29, 0, 0, 0))
        );
        assert_eq!(
            parse_one(0, "2024-02-29 00:00:00"),
            Some(utc(2024, 2, 29, 0, 0, 0))
        );
        assert_eq!(parse_one(0, "1900-02-29 00:00:00"), None);
        assert_eq!(parse_one(0, "2100-02-29 00:00:00"), None);
    }

    #[test]
    fn web_log_stamp_with_negative_offset_converts_to_utc() {
        assert_eq!(
            parse_one(
                0,
                r#"1.2.3.4 - frank [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 2326"#
            ),
            Some(utc(2000, 10, 10, 20, 55, 36))
        );
    }

    #[test]
    fn web_log_stamp_with_positive_offset_converts_to_utc() {
        assert_eq!(
            parse_one(
                0,
                r#"::1 - - [01/Jan/2024:01:30:00 +0200] "GET / HTTP/1.1" 200 1"#
            ),
            Some(utc(2023, 12, 31, 23, 30, 0))
        );
    }

    #[test]
    fn web_log_skips_brackets_that_are_not_its_stamp() {
        assert_eq!(
            parse_one(0, "x [user] - [10/Oct/2000:13:55:36 +0000] \"GET\""),
            Some(utc(2000, 10, 10, 13, 55, 36))
        );
        assert_eq!(parse_one(0, "x - - [31/Sep/2000:13:55:36 +0000] y"), None);
        assert_eq!(parse_one(0, "x - - [10/Oct/2000:13:55:36] y"), None);
    }

    #[test]
    fn epoch_seconds_with_and_without_fraction_parse() {
        assert_eq!(parse_one(0, "1717243200 host x"), Some(1_717_243_200_000));
        assert_eq!(
            parse_one(0, "1717243200.123456\tx"),
            Some(1_717_243_200_123)
        );
        assert_eq!(parse_one(0, "1717243200"), Some(1_717_243_200_000));
        assert_eq!(parse_one(0, "999999999 x"), Some(999_999_999_000));
    }

    #[test]
    fn epoch_milliseconds_with_thirteen_digits_parse() {
        assert_eq!(parse_one(0, "1717243200123 x"), Some(1_717_243_200_123));
    }

    #[test]
    fn epoch_with_other_digit_counts_or_glued_text_is_rejected() {
        for line in [
            "12345678 x",
            "12345678901 x",
            "17172432001234 x",
            "1717243200x",
            "1717243200. x",
        ] {
            assert_eq!(parse_one(0, line), None, "{line}");
        }
    }

    #[test]
    fn lines_without_a_timestamp_give_none() {
        let mut parser = TimestampParser::new(reference());
        for line in [
            "",
            "hello world",
            "<34>",
            "<34>hello",
            "[",
            "Mar",
            "2024-06-01",
            "-- Boot 1234 --",
            "sshd[123]: Failed password for root",
        ] {
            assert_eq!(parser.parse(line.as_bytes()), None, "{line:?}");
        }
    }

    #[test]
    fn mixed_formats_are_each_recognised_after_one_another() {
        let mut parser = TimestampParser::new(reference());
        assert_eq!(
            parser.parse(b"Mar  3 06:25:01 h x"),
            Some(utc(2024, 3, 3, 6, 25, 1))
        );
        assert_eq!(parser.parse(b"1717243200 x"), Some(1_717_243_200_000));
        assert_eq!(
            parser.parse(b"2024-06-01T12:00:00Z"),
            Some(utc(2024, 6, 1, 12, 0, 0))
        );
        assert_eq!(
            parser.parse(b"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] x"),
            Some(utc(2000, 10, 10, 13, 55, 36))
        );
        assert_eq!(
            parser.parse(b"Mar  3 06:25:02 h x"),
            Some(utc(2024, 3, 3, 6, 25, 2))
        );
    }

    #[test]
    fn extreme_references_do_not_overflow() {
        for reference in [i64::MIN, i64::MAX, 0, -1] {
            let mut parser = TimestampParser::new(reference);
            let _ = parser.parse(b"Dec 31 23:59:59 h x");
            let _ = parser.parse(b"Jan  1 00:00:00 h x");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(
            lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..16),
            reference in any::<i64>(),
        ) {
            let mut parser = TimestampParser::new(reference);
            for line in &lines {
                let _ = parser.parse(line);
            }
        }

        #[test]
        fn parse_never_panics_on_near_miss_stamps(
            line in "(<[0-9]{1,4}>)?([0-9]{1,3} )?[0-9A-Za-z :.,+\\-\\[/\\]TZ]{0,40}",
        ) {
            let _ = TimestampParser::new(0).parse(line.as_bytes());
        }
    }

    /// Times `parse` over 1 M syslog lines built in memory:
    /// `cargo test -p rebuff --release --lib -- --ignored --nocapture parse_speed`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn parse_speed_over_a_million_syslog_lines() {
        const LINES: usize = 1_000_000;
        let months = [b"Jan", b"Feb", b"Mar"];
        let mut text = Vec::new();
        let mut offsets = Vec::with_capacity(LINES + 1);
        for i in 0..LINES {
            offsets.push(text.len());
            // About four lines per second, as a busy auth log.
            let second = i / 4;
            let month = months[(second / 86_400 / 28) % 3];
            let day = (second / 86_400) % 28 + 1;
            let time = second % 86_400;
            text.extend_from_slice(month);
            text.extend_from_slice(
                format!(
                    " {day:>2} {:02}:{:02}:{:02} host sshd[{}]: Failed password for root from 10.0.0.{} port 22 ssh2",
                    time / 3600,
                    time / 60 % 60,
                    time % 60,
                    1000 + i % 5000,
                    i % 250
                )
                .as_bytes(),
            );
        }
        offsets.push(text.len());
        let mut parser = TimestampParser::new(utc(2024, 6, 1, 0, 0, 0));
        let started = std::time::Instant::now();
        let mut sum: i64 = 0;
        let mut misses = 0;
        for window in offsets.windows(2) {
            match parser.parse(&text[window[0]..window[1]]) {
                Some(ms) => sum = sum.wrapping_add(ms),
                None => misses += 1,
            }
        }
        let elapsed = started.elapsed();
        assert_eq!(misses, 0);
        println!(
            "parse: {:.1} ns/line over {LINES} syslog lines (checksum {sum})",
            elapsed.as_nanos() as f64 / LINES as f64
        );
        let mut parser = TimestampParser::new(0);
        let iso: Vec<Vec<u8>> = (0..LINES)
            .map(|i| {
                format!(
                    "2024-06-{:02}T{:02}:{:02}:{:02}.{:03}+02:00 host x",
                    i / 86_400 % 28 + 1,
                    i / 3600 % 24,
                    i / 60 % 60,
                    i % 60,
                    i % 1000
                )
                .into_bytes()
            })
            .collect();
        let started = std::time::Instant::now();
        for line in &iso {
            match parser.parse(line) {
                Some(ms) => sum = sum.wrapping_add(ms),
                None => misses += 1,
            }
        }
        let elapsed = started.elapsed();
        assert_eq!(misses, 0);
        println!(
            "parse: {:.1} ns/line over {LINES} ISO lines (checksum {sum})",
            elapsed.as_nanos() as f64 / LINES as f64
        );
    }
}
