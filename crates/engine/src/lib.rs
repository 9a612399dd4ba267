//! rebuff-engine: the synchronous heart of rebuff.
//!
//! It turns log lines into decisions: which filter matched, with which
//! pattern values, whether that match triggers the filter, and which actions
//! are due when. It does no I/O, reads no clock (time is an argument, in
//! milliseconds since the Unix epoch) and logs nothing, so the daemon and the
//! offline `replay` share the exact same decisions, and every part can be
//! tested and fuzzed in isolation.
//!
//! # Layout
//!
//! - [`duration`]: reaction's duration grammar (`10 secs`, `30m`, `1day`).
//! - [`pattern`]: `<name>` patterns: regexes, ip/ipv4/ipv6 types, ignore
//!   lists, CIDR ignores, masks, value normalisation.
//! - [`country`]: ISO 3166-1 alpha-2 codes, `ignorecountry`/`onlycountry`
//!   rules and the [`CountryLookup`] they ask (answered from memory by the
//!   binary's GeoIP database; no I/O here).
//! - [`matcher`]: [`StreamMatcher`], every filter of a stream in one pass.
//! - [`key`]: [`Key`], compact match values (addresses as bytes), and
//!   [`KeyMap`], a slab-backed map from them.
//! - [`window`]: retry windows (`retry` matches within `retryperiod`).
//! - [`decide`]: [`FilterDecider`], retry window plus duplicate policy,
//!   turning matches into triggers and action schedules.
//! - [`score`]: [`ScoreBoard`], weighted per-value scores with a threshold,
//!   a floor, an idle timeout and a bound on tracked values.

pub mod country;
pub mod decide;
pub mod duration;
pub mod key;
pub mod matcher;
pub mod pattern;
pub mod score;
pub mod window;

pub use country::{Country, CountryLookup, CountryRule};
pub use decide::{
    ActionSpec, Decision, DuplicatePolicy, FilterDecider, FilterPlan, IpOnly, ScheduledAction,
    ScoreDecision, Trigger, TriggerKind,
};
pub use duration::{DurationError, format_duration, parse_duration};
pub use key::{Key, KeyMap};
pub use matcher::{
    FilterSpec, Ignored, LineMatch, MatchScratch, MatcherError, StreamMatcher, line_text,
};
pub use pattern::{
    GivenValueError, IgnoreReason, Pattern, PatternError, PatternKind, PatternSpec, Patterns,
    RegexError, ValueProblem, check_regex, whole_value_regex,
};
pub use score::{Crossing, ScoreBoard, ScorePlan, ScoreUpdate};
pub use window::RetryWindow;

/// Milliseconds since the Unix epoch: the engine's only notion of time.
pub type Time = u64;

/// The values of a match, one per pattern of the filter, in the filter's
/// pattern order (sorted by pattern name, as reaction and its tooling expect).
pub type Values = Box<[String]>;
