//! Patterns: the `<name>` placeholders of filter regexes and action commands.
//!
//! A [`Pattern`] is compiled once from a [`PatternSpec`]. It owns the regex
//! text that replaces `<name>` in filter regexes, and decides what a captured
//! value becomes: IP-typed values are validated, normalised (IPv4-mapped IPv6
//! becomes IPv4, IPv6 is written in canonical form) and grouped by the
//! configured masks; any value can be dropped by the `ignore`,
//! `ignoreregex` and `ignorecidr` lists, with the reason reported.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use crate::country::CountryRule;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use regex::RegexSet;
use regex_automata::meta;
use regex_automata::util::syntax;

/// What kind of value a pattern captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatternKind {
    /// A user regex; values are kept as written.
    Regex,
    /// IPv4 or IPv6.
    Ip,
    Ipv4,
    Ipv6,
}

impl PatternKind {
    pub fn is_ip(self) -> bool {
        self != PatternKind::Regex
    }

    pub fn name(self) -> &'static str {
        match self {
            PatternKind::Regex => "regex",
            PatternKind::Ip => "ip",
            PatternKind::Ipv4 => "ipv4",
            PatternKind::Ipv6 => "ipv6",
        }
    }
}

/// A pattern as configured, before compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternSpec {
    pub name: String,
    pub kind: PatternKind,
    /// Required for [`PatternKind::Regex`]; IP types bring their own regex
    /// and ignore this one (as reaction does).
    pub regex: Option<String>,
    pub ignore: Vec<String>,
    pub ignore_regex: Vec<String>,
    pub ignore_cidr: Vec<IpNet>,
    pub ipv4_mask: Option<u8>,
    pub ipv6_mask: Option<u8>,
}

impl PatternSpec {
    /// A plain regex pattern with no ignore list.
    pub fn regex(name: &str, regex: &str) -> Self {
        PatternSpec {
            name: name.to_owned(),
            kind: PatternKind::Regex,
            regex: Some(regex.to_owned()),
            ignore: Vec::new(),
            ignore_regex: Vec::new(),
            ignore_cidr: Vec::new(),
            ipv4_mask: None,
            ipv6_mask: None,
        }
    }

    /// An IP-typed pattern with no ignore list and no mask.
    pub fn ip(name: &str, kind: PatternKind) -> Self {
        PatternSpec {
            kind,
            regex: None,
            ..PatternSpec::regex(name, "")
        }
    }
}

/// Why a pattern cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a pattern of type regex needs a 'regex'")]
    MissingRegex,
    #[error("invalid regex: {0}")]
    Regex(RegexError),
    #[error("invalid ignoreregex: {0}")]
    IgnoreRegex(RegexError),
    #[error("'{key}' is only allowed on patterns of type {allowed}, not on type {kind}")]
    NotForKind {
        key: &'static str,
        allowed: &'static str,
        kind: &'static str,
    },
    #[error("'{key}' must be between 0 and {max}, found {found}")]
    MaskRange {
        key: &'static str,
        max: u8,
        found: u8,
    },
}

/// A regex that does not compile, told in the text its author wrote.
///
/// The regex crates report errors on the regex they were given, which for a
/// filter is the expansion of its `<name>` placeholders and for a value
/// regex is wrapped in `^(?:…)$`. This error keeps the author's text, the
/// crates' own reason, and the place in that text; [`fmt::Display`] shows
/// the reason, then the line of the regex with a caret under the place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegexError {
    /// The regex as written (placeholders not expanded, no anchoring).
    pub regex: String,
    /// The regex crates' reason, e.g. `unclosed group`.
    pub reason: String,
    /// The bytes of `regex` the reason is about; `None` when it is about
    /// the whole regex (it compiles too large).
    pub span: Option<Range<usize>>,
}

impl RegexError {
    /// The error of `compiled`, a regex built from `regex`, that failed to
    /// build with `error`; `to_source` maps a byte span of `compiled` to
    /// one of `regex`.
    pub(crate) fn from_build(
        regex: &str,
        error: &meta::BuildError,
        to_source: impl Fn(Range<usize>) -> Range<usize>,
    ) -> Self {
        if let Some(syntax) = error.syntax_error() {
            return Self::from_syntax(regex, syntax, to_source);
        }
        // Not about syntax: the regex compiles too large. The source error
        // says by how much; the outer one only says "error building NFA".
        let reason = std::error::Error::source(error)
            .map_or_else(|| error.to_string(), |source| source.to_string());
        RegexError {
            regex: regex.to_owned(),
            reason,
            span: None,
        }
    }

    fn from_syntax(
        regex: &str,
        error: &regex_syntax::Error,
        to_source: impl Fn(Range<usize>) -> Range<usize>,
    ) -> Self {
        let (reason, span) = match error {
            regex_syntax::Error::Parse(e) => (e.kind().to_string(), Some(e.span())),
            regex_syntax::Error::Translate(e) => (e.kind().to_string(), Some(e.span())),
            other => (other.to_string(), None),
        };
        RegexError {
            regex: regex.to_owned(),
            reason,
            span: span.map(|s| to_source(s.start.offset..s.end.offset)),
        }
    }
}

impl fmt::Display for RegexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)?;
        let Some(span) = &self.span else {
            return Ok(());
        };
        let text = self.regex.as_str();
        let floor = |i: usize| {
            (0..=i.min(text.len()))
                .rev()
                .find(|&i| text.is_char_boundary(i))
        };
        let start = floor(span.start).unwrap_or(0);
        // A verbose regex may span lines: show the one the error is on.
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let end = floor(span.end.clamp(start, line_end)).unwrap_or(start);
        // Tabs are kept in the padding so the caret lines up under them.
        let pad: String = text[line_start..start]
            .chars()
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let width = text[start..end].chars().count().max(1);
        write!(
            f,
            "\n    {}\n    {pad}{}",
            &text[line_start..line_end],
            "^".repeat(width)
        )
    }
}

impl std::error::Error for RegexError {}

/// Builds a regex the way the matcher builds every regex it runs;
/// `explain` turns a failure into an error in the author's text.
pub(crate) fn build_regex(
    text: &str,
    explain: impl FnOnce(&meta::BuildError) -> RegexError,
) -> Result<meta::Regex, RegexError> {
    meta::Regex::builder()
        .syntax(syntax::Config::new())
        .configure(meta::Regex::config().nfa_size_limit(Some(64 << 20)))
        .build(text)
        .map_err(|e| explain(&e))
}

/// Checks a regex written without placeholders (a pattern's own regex) with
/// the syntax and limits the matcher compiles it with.
pub fn check_regex(regex: &str) -> Result<(), RegexError> {
    build_regex(regex, |e| RegexError::from_build(regex, e, |span| span)).map(drop)
}

/// Compiles `regex` so that it must match a whole value, as `ignoreregex`
/// and the value selections of `show`/`flush` mean it. An error is told in
/// the regex as written, never in its anchored form.
pub fn whole_value_regex(regex: &str) -> Result<regex::Regex, RegexError> {
    const PREFIX: usize = "^(?:".len();
    check_regex(regex)?;
    let anchored = format!("^(?:{regex})$");
    regex::Regex::new(&anchored).map_err(|e| {
        let to_source = |span: Range<usize>| {
            let inside = |i: usize| i.saturating_sub(PREFIX).min(regex.len());
            inside(span.start)..inside(span.end)
        };
        match regex_syntax::Parser::new().parse(&anchored) {
            Err(syntax) => RegexError::from_syntax(regex, &syntax, to_source),
            Ok(_) => RegexError {
                regex: regex.to_owned(),
                reason: match e {
                    regex::Error::CompiledTooBig(limit) => {
                        format!("the compiled regex exceeds the size limit of {limit} bytes")
                    }
                    other => other.to_string(),
                },
                span: None,
            },
        }
    })
}

/// Why a value given by hand cannot stand for a captured one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pattern}={value:?} {problem}")]
pub struct GivenValueError {
    pub pattern: String,
    pub value: String,
    pub problem: ValueProblem,
}

/// What is wrong with a value given by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueProblem {
    #[error("holds a NUL character, which no command argument can carry")]
    Nul,
    #[error("does not match the pattern's regex '{0}' as a whole")]
    NoMatch(String),
    #[error("is not an address of type {}", .0.name())]
    NotAnIp(PatternKind),
    #[error("is ignored ({0})")]
    Ignored(IgnoreReason),
}

/// Why a captured value was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IgnoreReason {
    /// Listed in `ignore`.
    List,
    /// Matched by one of `ignoreregex`.
    Regex,
    /// Inside one of `ignorecidr`.
    Cidr,
    /// An IP-typed pattern captured text that is not an address of its type.
    NotAnIp,
    /// Dropped by `ignorecountry` or `onlycountry`.
    Country,
}

impl IgnoreReason {
    pub const ALL: [IgnoreReason; 5] = [
        IgnoreReason::List,
        IgnoreReason::Regex,
        IgnoreReason::Cidr,
        IgnoreReason::NotAnIp,
        IgnoreReason::Country,
    ];

    /// Stable name used in summaries and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            IgnoreReason::List => "ignore",
            IgnoreReason::Regex => "ignoreregex",
            IgnoreReason::Cidr => "ignorecidr",
            IgnoreReason::NotAnIp => "not_an_ip",
            IgnoreReason::Country => "country",
        }
    }
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// The built-in regexes only recognise address-shaped text; every captured
// value is then parsed by std, so the regexes may be loose without ever
// letting a non-address through. IPv6 is deliberately loose: an exact IPv6
// grammar as one leftmost-first alternation stops early on compressed forms
// ("2001:db8::" out of "2001:db8::1"), and is a much larger automaton.
const IPV4_REGEX: &str = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}";

fn ipv4_regex() -> String {
    IPV4_REGEX.to_owned()
}

fn ipv6_regex() -> String {
    format!("(?:[0-9a-fA-F]{{0,4}}:){{2,7}}(?:{IPV4_REGEX}|[0-9a-fA-F]{{0,4}})")
}

/// The regex an IP type stands for inside filter regexes.
pub fn builtin_regex(kind: PatternKind) -> Option<String> {
    match kind {
        PatternKind::Regex => None,
        PatternKind::Ipv4 => Some(ipv4_regex()),
        PatternKind::Ipv6 => Some(ipv6_regex()),
        PatternKind::Ip => Some(format!("(?:{}|{})", ipv6_regex(), ipv4_regex())),
    }
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    name: String,
    kind: PatternKind,
    regex: String,
    /// `regex` anchored at both ends: what a whole value must match.
    whole: regex::Regex,
    ignore: HashSet<String>,
    ignore_regex: Option<RegexSet>,
    ignore_cidr: Vec<IpNet>,
    ipv4_mask: Option<u8>,
    ipv6_mask: Option<u8>,
    /// `ignorecountry` / `onlycountry` (IP types only).
    country: Option<CountryRule>,
}

impl Pattern {
    /// Adds an `ignorecountry`/`onlycountry` rule, checked after the CIDR
    /// list on the address as captured (before any mask groups it).
    pub fn with_country_rule(mut self, rule: CountryRule) -> Result<Pattern, PatternError> {
        if !self.kind.is_ip() {
            return Err(PatternError::NotForKind {
                key: if rule.only {
                    "onlycountry"
                } else {
                    "ignorecountry"
                },
                allowed: "ip, ipv4 or ipv6",
                kind: self.kind.name(),
            });
        }
        self.country = Some(rule);
        Ok(self)
    }

    /// The pattern's country rule, if any.
    pub fn country_rule(&self) -> Option<&CountryRule> {
        self.country.as_ref()
    }

    pub fn compile(spec: PatternSpec) -> Result<Pattern, PatternError> {
        let regex = match builtin_regex(spec.kind) {
            Some(builtin) => builtin,
            None => spec.regex.ok_or(PatternError::MissingRegex)?,
        };
        let whole = whole_value_regex(&regex).map_err(PatternError::Regex)?;
        let ignore_regex = if spec.ignore_regex.is_empty() {
            None
        } else {
            // "regex must match the full Match": anchor each one. Each is
            // compiled alone first so an error names the one at fault.
            for r in &spec.ignore_regex {
                whole_value_regex(r).map_err(PatternError::IgnoreRegex)?;
            }
            let anchored = spec.ignore_regex.iter().map(|r| format!("^(?:{r})$"));
            Some(RegexSet::new(anchored).map_err(|e| {
                PatternError::IgnoreRegex(RegexError {
                    regex: spec.ignore_regex.join(" | "),
                    reason: e.to_string(),
                    span: None,
                })
            })?)
        };
        if !spec.kind.is_ip() && !spec.ignore_cidr.is_empty() {
            return Err(PatternError::NotForKind {
                key: "ignorecidr",
                allowed: "ip, ipv4 or ipv6",
                kind: spec.kind.name(),
            });
        }
        check_mask(spec.kind, "ipv4mask", spec.ipv4_mask, 32, PatternKind::Ipv6)?;
        check_mask(
            spec.kind,
            "ipv6mask",
            spec.ipv6_mask,
            128,
            PatternKind::Ipv4,
        )?;
        Ok(Pattern {
            name: spec.name,
            kind: spec.kind,
            regex,
            whole,
            ignore: spec.ignore.into_iter().collect(),
            ignore_regex,
            ignore_cidr: spec.ignore_cidr,
            ipv4_mask: spec.ipv4_mask,
            ipv6_mask: spec.ipv6_mask,
            country: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> PatternKind {
        self.kind
    }

    /// The prefix length IPv4 values are masked to (`ipv4mask`), if any.
    pub fn ipv4_mask(&self) -> Option<u8> {
        self.ipv4_mask
    }

    /// The prefix length IPv6 values are masked to (`ipv6mask`), if any.
    pub fn ipv6_mask(&self) -> Option<u8> {
        self.ipv6_mask
    }

    /// The regex that replaces `<name>` in filter regexes.
    pub fn regex(&self) -> &str {
        &self.regex
    }

    /// Checks a value given by hand (`rebuff trigger`) as if it had been
    /// captured: it must hold no NUL (no command argument can carry one),
    /// match the pattern's regex as a whole, and pass [`Pattern::accept`].
    pub fn accept_given(&self, raw: &str) -> Result<String, GivenValueError> {
        let error = |problem| GivenValueError {
            pattern: self.name.clone(),
            value: raw.to_owned(),
            problem,
        };
        if raw.contains('\0') {
            return Err(error(ValueProblem::Nul));
        }
        if !self.whole.is_match(raw) {
            return Err(error(match self.kind {
                PatternKind::Regex => ValueProblem::NoMatch(self.regex.clone()),
                kind => ValueProblem::NotAnIp(kind),
            }));
        }
        self.accept(raw).map_err(|reason| {
            error(match reason {
                IgnoreReason::NotAnIp => ValueProblem::NotAnIp(self.kind),
                reason => ValueProblem::Ignored(reason),
            })
        })
    }

    /// Turns a captured value into the value actions and windows see, or
    /// says why it is ignored.
    pub fn accept(&self, raw: &str) -> Result<String, IgnoreReason> {
        if !self.kind.is_ip() {
            self.check_ignore_lists(raw, None)?;
            return Ok(raw.to_owned());
        }
        let addr = parse_ip(raw).ok_or(IgnoreReason::NotAnIp)?;
        match (self.kind, addr) {
            (PatternKind::Ipv4, IpAddr::V6(_)) | (PatternKind::Ipv6, IpAddr::V4(_)) => {
                return Err(IgnoreReason::NotAnIp);
            }
            _ => {}
        }
        if self.ignore_cidr.iter().any(|net| net.contains(&addr)) {
            return Err(IgnoreReason::Cidr);
        }
        if let Some(rule) = &self.country
            && !rule.admits(addr)
        {
            return Err(IgnoreReason::Country);
        }
        let value = self.group(addr);
        self.check_ignore_lists(raw, Some(&value))?;
        Ok(value)
    }

    fn check_ignore_lists(&self, raw: &str, value: Option<&str>) -> Result<(), IgnoreReason> {
        // An ignore entry may be written as the log shows the address or in
        // its normalised form; both must work.
        let candidates = std::iter::once(raw).chain(value.filter(|v| *v != raw));
        for candidate in candidates {
            if self.ignore.contains(candidate) {
                return Err(IgnoreReason::List);
            }
            if let Some(set) = &self.ignore_regex
                && set.is_match(candidate)
            {
                return Err(IgnoreReason::Regex);
            }
        }
        Ok(())
    }

    /// The address, or its network when a mask groups addresses. A mask of
    /// the full length groups nothing, so the plain address is kept.
    fn group(&self, addr: IpAddr) -> String {
        match addr {
            IpAddr::V4(v4) => match self.ipv4_mask {
                Some(len) if len < 32 => Ipv4Net::new(v4, len)
                    .map(|net| net.trunc().to_string())
                    .unwrap_or_else(|_| v4.to_string()),
                _ => v4.to_string(),
            },
            IpAddr::V6(v6) => match self.ipv6_mask {
                Some(len) if len < 128 => Ipv6Net::new(v6, len)
                    .map(|net| net.trunc().to_string())
                    .unwrap_or_else(|_| v6.to_string()),
                _ => v6.to_string(),
            },
        }
    }
}

fn check_mask(
    kind: PatternKind,
    key: &'static str,
    mask: Option<u8>,
    max: u8,
    incompatible: PatternKind,
) -> Result<(), PatternError> {
    let Some(found) = mask else { return Ok(()) };
    if kind == PatternKind::Regex || kind == incompatible {
        let allowed = if incompatible == PatternKind::Ipv6 {
            "ip or ipv4"
        } else {
            "ip or ipv6"
        };
        return Err(PatternError::NotForKind {
            key,
            allowed,
            kind: kind.name(),
        });
    }
    if found > max {
        return Err(PatternError::MaskRange { key, max, found });
    }
    Ok(())
}

/// Parses an address, mapping IPv4-mapped IPv6 (`::ffff:1.2.3.4`) to IPv4 so
/// one host is one value whichever way the log wrote it.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
        ),
        v4 => Some(v4),
    }
}

/// The IP version of a value produced by an IP pattern (an address or a
/// masked network).
pub fn value_is_ipv6(value: &str) -> bool {
    value.contains(':')
}

/// All patterns of a configuration, looked up by name.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    list: Vec<Pattern>,
}

impl Patterns {
    pub fn new(list: Vec<Pattern>) -> Self {
        Patterns { list }
    }

    pub fn get(&self, name: &str) -> Option<(usize, &Pattern)> {
        self.list.iter().enumerate().find(|(_, p)| p.name == name)
    }

    pub fn by_index(&self, index: usize) -> &Pattern {
        &self.list[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pattern> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip_pattern(kind: PatternKind) -> Pattern {
        Pattern::compile(PatternSpec::ip("ip", kind)).expect("compiles")
    }

    #[test]
    fn ipv4_mapped_ipv6_becomes_ipv4() {
        let p = ip_pattern(PatternKind::Ip);
        assert_eq!(p.accept("::ffff:192.0.2.7"), Ok("192.0.2.7".into()));
        assert_eq!(p.accept("2001:DB8:0:0::1"), Ok("2001:db8::1".into()));
    }

    #[test]
    fn ip_types_reject_the_other_family_and_garbage() {
        assert_eq!(
            ip_pattern(PatternKind::Ipv4).accept("2001:db8::1"),
            Err(IgnoreReason::NotAnIp)
        );
        assert_eq!(
            ip_pattern(PatternKind::Ipv6).accept("192.0.2.1"),
            Err(IgnoreReason::NotAnIp)
        );
        assert_eq!(
            ip_pattern(PatternKind::Ip).accept("12:34:56"),
            Err(IgnoreReason::NotAnIp)
        );
    }

    #[test]
    fn masks_group_addresses_into_networks() {
        let p = Pattern::compile(PatternSpec {
            ipv4_mask: Some(24),
            ipv6_mask: Some(64),
            ..PatternSpec::ip("ip", PatternKind::Ip)
        })
        .expect("compiles");
        assert_eq!(
            p.accept("2001:db8:2345:3456::1"),
            Ok("2001:db8:2345:3456::/64".into())
        );
        assert_eq!(p.accept("198.51.100.77"), Ok("198.51.100.0/24".into()));
        let full = Pattern::compile(PatternSpec {
            ipv4_mask: Some(32),
            ..PatternSpec::ip("ip", PatternKind::Ip)
        })
        .expect("compiles");
        assert_eq!(full.accept("198.51.100.77"), Ok("198.51.100.77".into()));
    }

    #[test]
    fn ignore_lists_apply_with_their_reason() {
        let p = Pattern::compile(PatternSpec {
            ignore: vec!["192.0.2.1".into()],
            ignore_regex: vec!["10\\..*".into()],
            ignore_cidr: vec![
                "127.0.0.0/8".parse().expect("net"),
                "::1/128".parse().expect("net"),
            ],
            ..PatternSpec::ip("ip", PatternKind::Ip)
        })
        .expect("compiles");
        assert_eq!(p.accept("192.0.2.1"), Err(IgnoreReason::List));
        assert_eq!(p.accept("::ffff:192.0.2.1"), Err(IgnoreReason::List));
        assert_eq!(p.accept("10.1.2.3"), Err(IgnoreReason::Regex));
        assert_eq!(p.accept("127.8.8.8"), Err(IgnoreReason::Cidr));
        assert_eq!(p.accept("::1"), Err(IgnoreReason::Cidr));
        assert_eq!(p.accept("192.0.2.2"), Ok("192.0.2.2".into()));
    }

    #[test]
    fn ignoreregex_must_match_the_whole_value() {
        let p = Pattern::compile(PatternSpec {
            ignore_regex: vec!["Chr.*".into(), "bob".into()],
            ..PatternSpec::regex("name", "[A-Za-z]+")
        })
        .expect("compiles");
        assert_eq!(p.accept("Christine"), Err(IgnoreReason::Regex));
        assert_eq!(p.accept("bob"), Err(IgnoreReason::Regex));
        assert_eq!(p.accept("bobby"), Ok("bobby".into()));
        assert_eq!(p.accept("AChr"), Ok("AChr".into()));
    }

    #[test]
    fn invalid_specs_are_rejected() {
        assert_eq!(
            Pattern::compile(PatternSpec {
                regex: None,
                ..PatternSpec::regex("x", "")
            })
            .err(),
            Some(PatternError::MissingRegex)
        );
        assert!(matches!(
            Pattern::compile(PatternSpec::regex("x", "(")),
            Err(PatternError::Regex(_))
        ));
        assert!(matches!(
            Pattern::compile(PatternSpec {
                ipv6_mask: Some(64),
                ..PatternSpec::ip("ip", PatternKind::Ipv4)
            }),
            Err(PatternError::NotForKind { .. })
        ));
        assert!(matches!(
            Pattern::compile(PatternSpec {
                ipv4_mask: Some(24),
                ..PatternSpec::regex("x", "a")
            }),
            Err(PatternError::NotForKind { .. })
        ));
        assert!(matches!(
            Pattern::compile(PatternSpec {
                ipv4_mask: Some(33),
                ..PatternSpec::ip("ip", PatternKind::Ip)
            }),
            Err(PatternError::MaskRange { .. })
        ));
        assert!(matches!(
            Pattern::compile(PatternSpec {
                ignore_cidr: vec!["10.0.0.0/8".parse().expect("net")],
                ..PatternSpec::regex("x", "a")
            }),
            Err(PatternError::NotForKind { .. })
        ));
    }

    #[test]
    fn a_regex_error_shows_the_reason_and_a_caret_on_the_faulty_line() {
        let e = check_regex("a(b").expect_err("unclosed");
        assert_eq!(e.to_string(), "unclosed group\n    a(b\n     ^");
        // A verbose regex over several lines: only the faulty one is shown,
        // and a tab before the fault is kept so the caret lines up.
        let e = check_regex("(?x)\n  ok\n\tb{3,1}\n  more").expect_err("range");
        assert_eq!(
            e.to_string(),
            "invalid repetition count range, the start must be <= the end\n    \tb{3,1}\n    \t ^^^^^"
        );
        // No span: the reason alone.
        let too_big = RegexError {
            regex: "x".into(),
            reason: "too big".into(),
            span: None,
        };
        assert_eq!(too_big.to_string(), "too big");
    }

    #[test]
    fn a_whole_value_regex_error_does_not_show_the_anchoring() {
        let e = whole_value_regex("192.0.2.(1").expect_err("unclosed");
        assert_eq!(
            e.to_string(),
            "unclosed group\n    192.0.2.(1\n            ^"
        );
        let e = whole_value_regex("a)").expect_err("unopened");
        assert_eq!(e.span, Some(1..2));
        assert!(!e.to_string().contains("(?:"), "{e}");
        let re = whole_value_regex("a|b").expect("valid");
        assert!(re.is_match("b") && !re.is_match("ab"));
    }

    #[test]
    fn a_given_value_must_be_what_the_pattern_could_capture() {
        let user = Pattern::compile(PatternSpec {
            ignore: vec!["nobody".into()],
            ..PatternSpec::regex("user", "\\w+")
        })
        .expect("compiles");
        assert_eq!(user.accept_given("root"), Ok("root".into()));
        let problem = |p: &Pattern, v: &str| p.accept_given(v).expect_err(v).problem;
        assert_eq!(problem(&user, "ro\0ot"), ValueProblem::Nul);
        assert_eq!(
            problem(&user, "root\nx"),
            ValueProblem::NoMatch("\\w+".into())
        );
        assert_eq!(
            problem(&user, "nobody"),
            ValueProblem::Ignored(IgnoreReason::List)
        );
        assert_eq!(
            user.accept_given("root x").expect_err("space").to_string(),
            "user=\"root x\" does not match the pattern's regex '\\w+' as a whole"
        );
        // Even a regex that would take a NUL cannot hand one to a command.
        let any = Pattern::compile(PatternSpec::regex("any", ".+")).expect("compiles");
        assert_eq!(problem(&any, "a\0"), ValueProblem::Nul);

        let ip = ip_pattern(PatternKind::Ipv4);
        assert_eq!(ip.accept_given("192.0.2.1"), Ok("192.0.2.1".into()));
        for bad in ["192.0.2.1\n", "192.0.2.300", "2001:db8::1", " 192.0.2.1"] {
            assert_eq!(
                problem(&ip, bad),
                ValueProblem::NotAnIp(PatternKind::Ipv4),
                "{bad:?}"
            );
        }
        assert_eq!(
            ip_pattern(PatternKind::Ip).accept_given("::ffff:192.0.2.1"),
            Ok("192.0.2.1".into())
        );
    }

    #[test]
    fn builtin_ip_regex_finds_whole_addresses() {
        let re = regex::Regex::new(&format!(
            "from ({}) port",
            builtin_regex(PatternKind::Ip).expect("ip")
        ))
        .expect("compiles");
        for addr in [
            "1.2.3.4",
            "255.255.255.255",
            "2001:db8::1",
            "::1",
            "fe80::1:2:3:4",
            "::ffff:10.0.0.1",
            "2001:db8:85a3:0:0:8a2e:370:7334",
            "2001:db8::",
        ] {
            let line = format!("x from {addr} port 22");
            let caps = re.captures(&line).expect(addr);
            assert_eq!(&caps[1], addr);
        }
    }

    proptest! {
        #[test]
        fn any_ipv4_is_accepted_unchanged(a: u8, b: u8, c: u8, d: u8) {
            let text = format!("{a}.{b}.{c}.{d}");
            prop_assert_eq!(ip_pattern(PatternKind::Ip).accept(&text), Ok(text));
        }

        #[test]
        fn any_ipv6_is_found_by_the_builtin_regex(raw: [u16; 8]) {
            let addr = std::net::Ipv6Addr::from(raw);
            let text = addr.to_string();
            let re = regex::Regex::new(&format!("^(?:{})$", builtin_regex(PatternKind::Ip).expect("ip")))
                .expect("compiles");
            prop_assert!(re.is_match(&text), "{}", text);
        }

        #[test]
        fn compiling_arbitrary_specs_never_panics(
            regex in ".{0,30}",
            ignore_regex in prop::collection::vec(".{0,12}", 0..3),
            v4 in prop::option::of(0u8..=40),
            v6 in prop::option::of(0u8..=140),
            kind in prop::sample::select(vec![PatternKind::Regex, PatternKind::Ip, PatternKind::Ipv4, PatternKind::Ipv6]),
        ) {
            let spec = PatternSpec {
                kind,
                ignore_regex,
                ipv4_mask: v4,
                ipv6_mask: v6,
                ..PatternSpec::regex("p", &regex)
            };
            if let Ok(pattern) = Pattern::compile(spec) {
                let _ = pattern.accept("192.0.2.1");
                let _ = pattern.accept(&regex);
            }
        }

        /// `trigger` refuses nothing a log line could have brought.
        #[test]
        fn any_address_given_by_hand_is_accepted_as_if_captured(raw: [u16; 8], v4: [u8; 4]) {
            let ip = ip_pattern(PatternKind::Ip);
            for text in [std::net::Ipv6Addr::from(raw).to_string(), std::net::Ipv4Addr::from(v4).to_string()] {
                let given = ip.accept_given(&text);
                prop_assert!(given.is_ok(), "{:?}", given);
                prop_assert_eq!(given.ok(), ip.accept(&text).ok());
            }
        }

        #[test]
        fn accept_never_panics(s in ".{0,60}") {
            let _ = ip_pattern(PatternKind::Ip).accept(&s);
        }
    }
}
