//! reaction's duration grammar: `<number> <unit>`, whitespace optional.
//!
//! The number is a non-negative integer (no sign, no fraction); the unit is
//! one of `ms|millis|millisecond|milliseconds`, `s|sec|secs|second|seconds`,
//! `m|min|mins|minute|minutes`, `h|hour|hours`, `d|day|days`. A bare number
//! is rejected (`after: 10` would be ambiguous between seconds and
//! milliseconds), except `0`, which means the same in every unit. Arithmetic is checked, so an absurd value is an error, not
//! a wrapped small one.

use std::fmt;

const UNITS: &[(&[&str], u64)] = &[
    (&["ms", "millis", "millisecond", "milliseconds"], 1),
    (&["s", "sec", "secs", "second", "seconds"], 1_000),
    (&["m", "min", "mins", "minute", "minutes"], 60_000),
    (&["h", "hour", "hours"], 3_600_000),
    (&["d", "day", "days"], 86_400_000),
];

/// What the duration grammar accepts, for error messages.
pub const DURATION_HELP: &str = "a whole number followed by a unit: ms, s/sec/secs/seconds, \
     m/min/mins/minutes, h/hour/hours or d/day/days (e.g. '10 secs', '30m', '1day')";

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration is empty; expected {DURATION_HELP}")]
    Empty,
    #[error("duration '{0}' does not start with a whole number; expected {DURATION_HELP}")]
    NoNumber(String),
    #[error("duration '{0}' has no unit; expected {DURATION_HELP}")]
    NoUnit(String),
    #[error("unit '{unit}' in duration '{input}' is not recognised; expected {DURATION_HELP}")]
    UnknownUnit { input: String, unit: String },
    #[error("duration '{0}' is too large")]
    Overflow(String),
}

/// Parses a duration into milliseconds.
pub fn parse_duration(input: &str) -> Result<u64, DurationError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits_end == 0 {
        return Err(DurationError::NoNumber(input.to_owned()));
    }
    let number: u64 = text[..digits_end]
        .parse()
        .map_err(|_| DurationError::Overflow(input.to_owned()))?;
    let unit = text[digits_end..].trim_start();
    if unit.is_empty() {
        // A bare zero is unambiguous whatever the unit (Go's ParseDuration,
        // which reaction v1 used, accepts it too); any other bare number is not.
        if number == 0 {
            return Ok(0);
        }
        return Err(DurationError::NoUnit(input.to_owned()));
    }
    let factor = UNITS
        .iter()
        .find(|(names, _)| names.contains(&unit))
        .map(|&(_, factor)| factor)
        .ok_or_else(|| DurationError::UnknownUnit {
            input: input.to_owned(),
            unit: unit.to_owned(),
        })?;
    number
        .checked_mul(factor)
        .ok_or_else(|| DurationError::Overflow(input.to_owned()))
}

/// Formats milliseconds in the largest unit that divides them exactly, so
/// `format_duration(parse_duration(x)?)` parses back to the same value.
pub fn format_duration(ms: u64) -> String {
    const NAMES: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    if ms == 0 {
        return "0s".to_owned();
    }
    let (name, factor) = NAMES
        .iter()
        .copied()
        .find(|&(_, factor)| ms.is_multiple_of(factor))
        .unwrap_or(("ms", 1));
    format!("{}{name}", ms / factor)
}

/// A duration that displays in reaction's grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub u64);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reference_examples_parse() {
        assert_eq!(parse_duration("10 secs"), Ok(10_000));
        assert_eq!(parse_duration("30m"), Ok(1_800_000));
        assert_eq!(parse_duration("1day"), Ok(86_400_000));
        assert_eq!(parse_duration("2 days"), Ok(172_800_000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("12h"), Ok(43_200_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("0s"), Ok(0));
    }

    #[test]
    fn every_unit_spelling_is_accepted() {
        for (names, factor) in UNITS {
            for name in *names {
                assert_eq!(
                    parse_duration(&format!("3{name}")),
                    Ok(3 * factor),
                    "{name}"
                );
                assert_eq!(
                    parse_duration(&format!("3 {name}")),
                    Ok(3 * factor),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn malformed_durations_are_rejected_with_the_reason() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("  "), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("h"),
            Err(DurationError::NoNumber(_))
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::NoNumber(_))
        ));
        assert!(matches!(
            parse_duration("1.5h"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("10"),
            Err(DurationError::NoUnit(_))
        ));
        assert!(matches!(
            parse_duration("2w"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("1 H"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("1 s s"),
            Err(DurationError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("18446744073709551d"),
            Err(DurationError::Overflow(_))
        ));
        assert_eq!(parse_duration("18446744073709551615ms"), Ok(u64::MAX));
    }

    #[test]
    fn format_picks_the_largest_exact_unit() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(90_000), "90s");
        assert_eq!(format_duration(3_600_000), "1h");
        assert_eq!(format_duration(1_500), "1500ms");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn format_round_trips(ms in 0u64..u64::MAX / 2) {
            prop_assert_eq!(parse_duration(&format_duration(ms)), Ok(ms));
        }
    }
}
