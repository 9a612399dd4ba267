//! [`StreamMatcher`]: every filter of one stream, matched in one pass.
//!
//! All regexes of all filters of a stream are compiled into one multi-pattern
//! regex used only to answer "does anything match, and which regexes?". A
//! line that matches nothing (the vast majority) costs one scan and no
//! allocation. Only the regexes that hit are run again to extract captures,
//! and only the first hitting regex of each filter (in configuration order)
//! produces that filter's match. Values are then passed through their
//! pattern (normalisation, masks, ignore lists) and returned in the filter's
//! pattern order: pattern names sorted, as reaction's tooling expects.

use std::collections::BTreeSet;
use std::ops::Range;

use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};

use crate::Values;
use crate::pattern::{IgnoreReason, Patterns, RegexError, build_regex};

/// A filter of a stream, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    pub name: String,
    pub regexes: Vec<String>,
}

/// Why a stream's filters cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error("filter '{filter}' has no regex")]
    NoRegex { filter: String },
    #[error(
        "regex #{index} of filter '{filter}' uses <{name}>, but no pattern '{name}' is defined"
    )]
    UnknownPattern {
        filter: String,
        index: usize,
        name: String,
    },
    #[error(
        "all regexes of filter '{filter}' must use the same patterns: regex #1 uses {first:?}, regex #{index} uses {other:?}"
    )]
    PatternSetsDiffer {
        filter: String,
        index: usize,
        first: Vec<String>,
        other: Vec<String>,
    },
    #[error("regex #{index} of filter '{filter}' is invalid: {error}")]
    Regex {
        filter: String,
        index: usize,
        error: RegexError,
    },
    #[error("the regexes of this stream's filters are too large together: {message}")]
    TooLarge { message: String },
}

/// A value an ignore rule dropped, and which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The pattern's name.
    pub pattern: String,
    pub value: String,
    pub reason: IgnoreReason,
}

/// One filter's match on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineMatch {
    /// Index of the filter in the order given to [`StreamMatcher::new`].
    pub filter: usize,
    /// The values, in the filter's pattern order, or why the match is dropped.
    pub outcome: Result<Values, Ignored>,
}

/// A regex written with `<name>` placeholders, expanded into plain regex
/// syntax with one uniquely named capture group per placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandedRegex {
    pub regex: String,
    /// (capture group name, pattern index) per placeholder, in order.
    pub groups: Vec<(String, usize)>,
    /// The pattern names used, sorted and deduplicated.
    pub names: Vec<String>,
    /// The regex as written.
    pub source: String,
    /// Where each placeholder went: its span in `regex`, its span in `source`.
    pub placeholder_spans: Vec<(Range<usize>, Range<usize>)>,
}

impl ExpandedRegex {
    /// Maps a byte span of the expanded regex back to the text as written.
    /// A span that starts inside a placeholder's expansion becomes the
    /// whole placeholder: the user wrote `<name>`, not what it stands for.
    pub fn source_span(&self, span: Range<usize>) -> Range<usize> {
        let to_source = |offset: usize, is_end: bool| {
            let mut shift = (0usize, 0usize);
            for (expanded, source) in &self.placeholder_spans {
                let inside = if is_end {
                    offset > expanded.start && offset <= expanded.end
                } else {
                    offset >= expanded.start && offset < expanded.end
                };
                if inside {
                    return Err(source.clone());
                }
                let before = if is_end {
                    offset <= expanded.start
                } else {
                    offset < expanded.start
                };
                if before {
                    break;
                }
                shift = (expanded.end, source.end);
            }
            Ok((offset - shift.0 + shift.1).min(self.source.len()))
        };
        match to_source(span.start, false) {
            Err(placeholder) => placeholder,
            Ok(start) => match to_source(span.end.max(span.start), true) {
                Err(placeholder) => start..placeholder.end,
                Ok(end) => start..end,
            },
        }
    }

    /// Compiles the expanded regex as the matcher does; an error is told in
    /// the text as written.
    pub fn check(&self) -> Result<(), RegexError> {
        build_regex(&self.regex, |e| self.error(e)).map(drop)
    }

    fn error(&self, error: &meta::BuildError) -> RegexError {
        RegexError::from_build(&self.source, error, |span| self.source_span(span))
    }
}

/// Finds the `<word>` placeholders of `text`. Named groups `(?P<x>` and
/// `(?<x>` are regex syntax, not placeholders, and are skipped.
pub fn placeholders(text: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i + 1;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let is_named_group = text[..start].ends_with("(?P") || text[..start].ends_with("(?");
        let escaped = text[..start]
            .bytes()
            .rev()
            .take_while(|&b| b == b'\\')
            .count()
            % 2
            == 1;
        if end > start + 1 && end < bytes.len() && bytes[end] == b'>' && !is_named_group && !escaped
        {
            found.push((start..end + 1, &text[start + 1..end]));
            i = end + 1;
        } else {
            i += 1;
        }
    }
    found
}

/// Replaces each `<name>` by its pattern's regex inside a capture group.
/// Returns the unknown name when a placeholder names no pattern.
pub fn expand(text: &str, patterns: &Patterns) -> Result<ExpandedRegex, String> {
    let mut regex = String::with_capacity(text.len() + 64);
    let mut groups = Vec::new();
    let mut names = BTreeSet::new();
    let mut placeholder_spans = Vec::new();
    let mut last = 0;
    for (range, name) in placeholders(text) {
        let (index, pattern) = patterns.get(name).ok_or_else(|| name.to_owned())?;
        let group = format!("rebuff_{}", groups.len());
        regex.push_str(&text[last..range.start]);
        let start = regex.len();
        regex.push_str(&format!("(?P<{group}>{})", pattern.regex()));
        placeholder_spans.push((start..regex.len(), range.clone()));
        groups.push((group, index));
        names.insert(name.to_owned());
        last = range.end;
    }
    regex.push_str(&text[last..]);
    Ok(ExpandedRegex {
        regex,
        groups,
        names: names.into_iter().collect(),
        source: text.to_owned(),
        placeholder_spans,
    })
}

#[derive(Debug)]
struct CaptureRegex {
    filter: usize,
    regex: Regex,
    /// (capture group index, position in the filter's values) per placeholder.
    slots: Vec<(usize, usize)>,
    /// A cheaper exact way to the same captures, when the regex has the
    /// common shape `… .* LITERAL (<placeholder>) …`.
    tail: Option<TailCapture>,
    /// The cheapest way, for regexes shaped `^(<placeholder>) LITERAL…`.
    head: Option<HeadCapture>,
}

/// Captures for regexes shaped `X .* K (G) Y` (K a literal, `.*` greedy).
///
/// A backtracking capture engine spends most of its time walking the `.*`
/// forward and back. For this shape the answer is known without it: the
/// greedy `.*` ends at the last occurrence of K after which `(G) Y` matches
/// (any later valid occurrence would be a higher-priority path, any path of
/// X ends before the true one, and `.` crosses every character of a line).
/// So: find K from the right with a literal search, test `(G) Y` anchored
/// there with a DFA, and extract captures from that short tail only. The
/// values are exactly those the full regex would capture.
#[derive(Debug)]
struct TailCapture {
    literal: memchr::memmem::FinderRev<'static>,
    literal_len: usize,
    regex: Regex,
    /// Like [`CaptureRegex::slots`], for the tail regex's groups.
    slots: Vec<(usize, usize)>,
    /// With a single placeholder followed by a literal whose first byte the
    /// placeholder can never match, the value ends at that byte's first
    /// occurrence: no capture engine runs at all.
    stop: Option<u8>,
}

/// The value of a regex shaped `^(G)K…` (one placeholder, K a literal whose
/// first byte G can never match): everything before that byte's first
/// occurrence. Any match of the regex has G there, so the set's hit is proof
/// enough and no regex runs again.
#[derive(Debug)]
struct HeadCapture {
    stop: u8,
}

/// Every byte a regex can match, conservatively (any non-ASCII character
/// counts as every non-ASCII byte).
fn bytes_of(hir: &regex_syntax::hir::Hir, set: &mut [bool; 256]) {
    use regex_syntax::hir::{Class, HirKind};
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(literal) => literal.0.iter().for_each(|&b| set[b as usize] = true),
        HirKind::Class(Class::Unicode(class)) => {
            for range in class.ranges() {
                let (start, end) = (u32::from(range.start()), u32::from(range.end()));
                for b in start..=end.min(0x7f) {
                    set[b as usize] = true;
                }
                if end >= 0x80 {
                    set[0x80..].iter_mut().for_each(|b| *b = true);
                }
            }
        }
        HirKind::Class(Class::Bytes(class)) => {
            for range in class.ranges() {
                for b in range.start()..=range.end() {
                    set[b as usize] = true;
                }
            }
        }
        HirKind::Repetition(rep) => bytes_of(&rep.sub, set),
        HirKind::Capture(cap) => bytes_of(&cap.sub, set),
        HirKind::Concat(items) | HirKind::Alternation(items) => {
            items.iter().for_each(|item| bytes_of(item, set))
        }
    }
}

/// The stop byte after the placeholder at `items[group]`, if the next item
/// is a literal whose first byte the placeholder cannot match.
fn stop_byte(items: &[regex_syntax::hir::Hir], group: usize) -> Option<u8> {
    use regex_syntax::hir::HirKind;
    let HirKind::Literal(next) = items.get(group + 1)?.kind() else {
        return None;
    };
    let first = *next.0.first()?;
    let mut set = [false; 256];
    bytes_of(&items[group], &mut set);
    (!set[first as usize]).then_some(first)
}

fn is_placeholder(item: &regex_syntax::hir::Hir) -> bool {
    matches!(item.kind(), regex_syntax::hir::HirKind::Capture(c)
        if c.name.as_deref().is_some_and(|n| n.starts_with("rebuff_")))
}

fn head_capture(expanded: &ExpandedRegex) -> Option<HeadCapture> {
    use regex_syntax::hir::{HirKind, Look};
    if expanded.groups.len() != 1 {
        return None;
    }
    let hir = syntax::parse_with(&expanded.regex, &syntax_config()).ok()?;
    let HirKind::Concat(items) = hir.kind() else {
        return None;
    };
    if !matches!(items.first()?.kind(), HirKind::Look(Look::Start))
        || !is_placeholder(items.get(1)?)
    {
        return None;
    }
    Some(HeadCapture {
        stop: stop_byte(items, 1)?,
    })
}

/// Splits an expanded regex into `… .* K` and the tail `(G) Y`, when it has
/// that shape.
fn tail_capture(expanded: &ExpandedRegex, info: &FilterInfo) -> Option<TailCapture> {
    use regex_syntax::hir::{Dot, Hir, HirKind};
    let hir = syntax::parse_with(&expanded.regex, &syntax_config()).ok()?;
    let HirKind::Concat(items) = hir.kind() else {
        return None;
    };
    let first_group = items.iter().position(is_placeholder)?;
    let HirKind::Literal(literal) = items.get(first_group.checked_sub(1)?)?.kind() else {
        return None;
    };
    let HirKind::Repetition(rep) = items.get(first_group.checked_sub(2)?)?.kind() else {
        return None;
    };
    let any = [Hir::dot(Dot::AnyCharExceptLF), Hir::dot(Dot::AnyChar)];
    if rep.min != 0 || rep.max.is_some() || !rep.greedy || !any.contains(&rep.sub) {
        return None;
    }
    let tail = Hir::concat(items[first_group..].to_vec());
    let regex = Regex::builder()
        .configure(Regex::config().nfa_size_limit(Some(64 << 20)))
        .build_from_hir(&tail)
        .ok()?;
    let slots = group_slots(&regex, expanded, info);
    // Every placeholder must be inside the tail, or its value would be lost.
    if slots.len() != expanded.groups.len() {
        return None;
    }
    let stop = if expanded.groups.len() == 1 {
        stop_byte(items, first_group)
    } else {
        None
    };
    Some(TailCapture {
        literal: memchr::memmem::FinderRev::new(&literal.0).into_owned(),
        literal_len: literal.0.len(),
        regex,
        slots,
        stop,
    })
}

/// Maps a compiled regex's placeholder groups to value positions.
fn group_slots(regex: &Regex, expanded: &ExpandedRegex, info: &FilterInfo) -> Vec<(usize, usize)> {
    expanded
        .groups
        .iter()
        .filter_map(|(group, pattern)| {
            let group_index = regex
                .group_info()
                .to_index(regex_automata::PatternID::ZERO, group)?;
            let slot = info.patterns.iter().position(|p| p == pattern)?;
            Some((group_index, slot))
        })
        .collect()
}

#[derive(Debug)]
struct FilterInfo {
    name: String,
    /// Pattern indexes in value order.
    patterns: Vec<usize>,
}

/// Every filter of one stream, compiled.
#[derive(Debug)]
pub struct StreamMatcher {
    any: Regex,
    regexes: Vec<CaptureRegex>,
    filters: Vec<FilterInfo>,
    patterns: Patterns,
}

/// Per-caller scratch space, so matching never allocates for a line that
/// matches nothing and never contends on a shared cache.
#[derive(Debug)]
pub struct MatchScratch {
    any: meta::Cache,
    hits: PatternSet,
    caches: Vec<meta::Cache>,
    captures: Vec<Captures>,
    tail_caches: Vec<Option<(meta::Cache, Captures)>>,
}

fn syntax_config() -> syntax::Config {
    // Large alternations of IP patterns across dozens of filters must not hit
    // the default size limits of a single user regex.
    syntax::Config::new()
}

impl StreamMatcher {
    /// Compiles the filters of one stream against the configuration's patterns.
    pub fn new(patterns: &Patterns, filters: &[FilterSpec]) -> Result<Self, MatcherError> {
        Self::build(patterns, filters, true)
    }

    /// Like [`StreamMatcher::new`] but always extracts values with the full
    /// capture engine: the reference the fast paths are tested against.
    #[doc(hidden)]
    pub fn new_without_fast_paths(
        patterns: &Patterns,
        filters: &[FilterSpec],
    ) -> Result<Self, MatcherError> {
        Self::build(patterns, filters, false)
    }

    fn build(
        patterns: &Patterns,
        filters: &[FilterSpec],
        fast: bool,
    ) -> Result<Self, MatcherError> {
        let mut expanded_all = Vec::new();
        let mut infos = Vec::new();
        for (filter_index, filter) in filters.iter().enumerate() {
            if filter.regexes.is_empty() {
                return Err(MatcherError::NoRegex {
                    filter: filter.name.clone(),
                });
            }
            let mut first_names: Option<Vec<String>> = None;
            for (i, text) in filter.regexes.iter().enumerate() {
                let expanded =
                    expand(text, patterns).map_err(|name| MatcherError::UnknownPattern {
                        filter: filter.name.clone(),
                        index: i + 1,
                        name,
                    })?;
                match &first_names {
                    None => first_names = Some(expanded.names.clone()),
                    Some(first) if *first != expanded.names => {
                        return Err(MatcherError::PatternSetsDiffer {
                            filter: filter.name.clone(),
                            index: i + 1,
                            first: first.clone(),
                            other: expanded.names,
                        });
                    }
                    Some(_) => {}
                }
                expanded_all.push((filter_index, i, expanded));
            }
            let names = first_names.unwrap_or_default();
            infos.push(FilterInfo {
                name: filter.name.clone(),
                patterns: names
                    .iter()
                    .filter_map(|n| patterns.get(n).map(|(index, _)| index))
                    .collect(),
            });
        }

        let mut regexes = Vec::with_capacity(expanded_all.len());
        for (filter_index, i, expanded) in &expanded_all {
            let regex = build_regex(&expanded.regex, |e| expanded.error(e)).map_err(|error| {
                MatcherError::Regex {
                    filter: filters[*filter_index].name.clone(),
                    index: i + 1,
                    error,
                }
            })?;
            let info = &infos[*filter_index];
            let slots = group_slots(&regex, expanded, info);
            let tail = fast.then(|| tail_capture(expanded, info)).flatten();
            let head = fast.then(|| head_capture(expanded)).flatten();
            regexes.push(CaptureRegex {
                filter: *filter_index,
                regex,
                slots,
                tail,
                head,
            });
        }

        let sources: Vec<&str> = expanded_all
            .iter()
            .map(|(_, _, e)| e.regex.as_str())
            .collect();
        let any = Regex::builder()
            .syntax(syntax_config())
            .configure(
                Regex::config()
                    .match_kind(MatchKind::All)
                    .which_captures(regex_automata::nfa::thompson::WhichCaptures::None)
                    .nfa_size_limit(Some(256 << 20)),
            )
            .build_many(&sources)
            .map_err(|e| MatcherError::TooLarge {
                // Each regex compiled alone, so only the size is left.
                message: std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), |source| source.to_string()),
            })?;

        Ok(StreamMatcher {
            any,
            regexes,
            filters: infos,
            patterns: patterns.clone(),
        })
    }

    /// Scratch space for [`StreamMatcher::find`]; one per matching thread.
    pub fn scratch(&self) -> MatchScratch {
        MatchScratch {
            any: self.any.create_cache(),
            hits: PatternSet::new(self.any.pattern_len()),
            caches: self
                .regexes
                .iter()
                .map(|r| r.regex.create_cache())
                .collect(),
            captures: self
                .regexes
                .iter()
                .map(|r| r.regex.create_captures())
                .collect(),
            tail_caches: self
                .regexes
                .iter()
                .map(|r| {
                    r.tail
                        .as_ref()
                        .map(|t| (t.regex.create_cache(), t.regex.create_captures()))
                })
                .collect(),
        }
    }

    pub fn filter_count(&self) -> usize {
        self.filters.len()
    }

    pub fn filter_name(&self, filter: usize) -> &str {
        &self.filters[filter].name
    }

    /// The pattern names of a filter, in value order.
    pub fn filter_pattern_names(&self, filter: usize) -> Vec<&str> {
        self.filters[filter]
            .patterns
            .iter()
            .map(|&p| self.patterns.by_index(p).name())
            .collect()
    }

    /// The patterns of a filter, in value order.
    pub fn filter_patterns(&self, filter: usize) -> impl Iterator<Item = &crate::Pattern> {
        self.filters[filter]
            .patterns
            .iter()
            .map(|&p| self.patterns.by_index(p))
    }

    /// Appends to `out` one [`LineMatch`] per filter that matches `line`.
    /// Returns whether anything matched.
    pub fn find(&self, line: &str, scratch: &mut MatchScratch, out: &mut Vec<LineMatch>) -> bool {
        let input = Input::new(line);
        // One overlapping scan answers both "anything?" and "which regexes?";
        // a separate is_match first would scan matching lines twice.
        scratch.hits.clear();
        self.any
            .which_overlapping_matches_with(&mut scratch.any, &input, &mut scratch.hits);
        if scratch.hits.is_empty() {
            return false;
        }
        let mut last_filter = usize::MAX;
        for hit in scratch.hits.iter() {
            let index = hit.as_usize();
            let entry = &self.regexes[index];
            // Only the first matching regex of a filter makes its match.
            if entry.filter == last_filter {
                continue;
            }
            if let Some(head) = &entry.head {
                let end = memchr::memchr(head.stop, line.as_bytes()).unwrap_or(line.len());
                last_filter = entry.filter;
                out.push(LineMatch {
                    filter: entry.filter,
                    outcome: self.single_value(entry.filter, &line[..end]),
                });
                continue;
            }
            if let (Some(tail), Some((cache, caps))) =
                (&entry.tail, &mut scratch.tail_caches[index])
                && let Some(start) = tail.start(line, cache)
            {
                last_filter = entry.filter;
                if let Some(stop) = tail.stop {
                    let end = memchr::memchr(stop, &line.as_bytes()[start..])
                        .map_or(line.len(), |i| start + i);
                    out.push(LineMatch {
                        filter: entry.filter,
                        outcome: self.single_value(entry.filter, &line[start..end]),
                    });
                    continue;
                }
                let input = Input::new(line)
                    .range(start..)
                    .anchored(regex_automata::Anchored::Yes);
                tail.regex.search_captures_with(cache, &input, caps);
                last_filter = entry.filter;
                out.push(LineMatch {
                    filter: entry.filter,
                    outcome: self.values(entry.filter, &tail.slots, line, caps),
                });
                continue;
            }
            let caps = &mut scratch.captures[index];
            entry
                .regex
                .search_captures_with(&mut scratch.caches[index], &input, caps);
            if !caps.is_match() {
                continue;
            }
            last_filter = entry.filter;
            out.push(LineMatch {
                filter: entry.filter,
                outcome: self.values(entry.filter, &entry.slots, line, caps),
            });
        }
        true
    }

    /// The outcome for a filter with a single pattern and its raw value.
    fn single_value(&self, filter: usize, raw: &str) -> Result<Values, Ignored> {
        let pattern = self.patterns.by_index(self.filters[filter].patterns[0]);
        match pattern.accept(raw) {
            Ok(value) => Ok(vec![value].into_boxed_slice()),
            Err(reason) => Err(Ignored {
                pattern: pattern.name().to_owned(),
                value: raw.to_owned(),
                reason,
            }),
        }
    }

    fn values(
        &self,
        filter: usize,
        slots: &[(usize, usize)],
        line: &str,
        caps: &Captures,
    ) -> Result<Values, Ignored> {
        let info = &self.filters[filter];
        let mut values: Vec<Option<String>> = vec![None; info.patterns.len()];
        for &(group, slot) in slots {
            // A pattern used twice in one regex keeps its first value.
            if values[slot].is_some() {
                continue;
            }
            let raw = caps.get_group(group).map(|span| &line[span]).unwrap_or("");
            let pattern = self.patterns.by_index(info.patterns[slot]);
            match pattern.accept(raw) {
                Ok(value) => values[slot] = Some(value),
                Err(reason) => {
                    return Err(Ignored {
                        pattern: pattern.name().to_owned(),
                        value: raw.to_owned(),
                        reason,
                    });
                }
            }
        }
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    }
}

impl TailCapture {
    /// Where the tail starts: after the last occurrence of the literal that
    /// is followed by a matching tail. `None` sends the caller to the full
    /// regex.
    fn start(&self, line: &str, cache: &mut meta::Cache) -> Option<usize> {
        let hay = line.as_bytes();
        let mut end = hay.len();
        while let Some(at) = self.literal.rfind(&hay[..end]) {
            let start = at + self.literal_len;
            let input = Input::new(line)
                .range(start..)
                .anchored(regex_automata::Anchored::Yes);
            if self.regex.is_match_with(cache, &input) {
                return Some(start);
            }
            // Occurrences may overlap: the next one may end inside this one.
            end = start - 1;
        }
        None
    }
}

/// The text of a raw line: borrowed when it is valid UTF-8, otherwise a lossy
/// copy in `buf` (so invalid bytes cannot hide an attack from `.*`). The
/// flag says whether the line was invalid.
pub fn line_text<'a>(bytes: &'a [u8], buf: &'a mut String) -> (&'a str, bool) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text, false),
        Err(_) => {
            buf.clear();
            buf.push_str(&String::from_utf8_lossy(bytes));
            (buf.as_str(), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{Pattern, PatternKind, PatternSpec};
    use proptest::prelude::*;

    fn patterns() -> Patterns {
        Patterns::new(vec![
            Pattern::compile(PatternSpec {
                ignore_cidr: vec!["127.0.0.0/8".parse().expect("net")],
                ..PatternSpec::ip("ip", PatternKind::Ip)
            })
            .expect("ip"),
            Pattern::compile(PatternSpec::regex("user", "[a-z]+")).expect("user"),
        ])
    }

    fn filter(name: &str, regexes: &[&str]) -> FilterSpec {
        FilterSpec {
            name: name.into(),
            regexes: regexes.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn find_all(m: &StreamMatcher, line: &str) -> Vec<LineMatch> {
        let mut scratch = m.scratch();
        let mut out = Vec::new();
        m.find(line, &mut scratch, &mut out);
        out
    }

    #[test]
    fn one_line_can_match_several_filters_with_values_in_name_order() {
        let m = StreamMatcher::new(
            &patterns(),
            &[
                filter("failed", &["Failed password for <user> from <ip> port"]),
                filter("any", &["from <ip>"]),
                filter("never", &["^nothing here$"]),
            ],
        )
        .expect("compiles");
        let got = find_all(
            &m,
            "sshd[1]: Failed password for root from 192.0.2.9 port 22",
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].filter, 0);
        assert_eq!(
            got[0].outcome,
            Ok(vec!["192.0.2.9".to_string(), "root".to_string()].into_boxed_slice())
        );
        assert_eq!(got[1].filter, 1);
        assert_eq!(m.filter_pattern_names(0), vec!["ip", "user"]);
    }

    /// The error of compiling `text` alone, shown as users see it.
    fn shown_error(text: &str) -> String {
        match StreamMatcher::new(&patterns(), &[filter("f", &[text])]) {
            Err(MatcherError::Regex { error, .. }) => error.to_string(),
            other => panic!("not a regex error: {other:?}"),
        }
    }

    #[test]
    fn a_regex_error_is_told_in_the_text_as_written() {
        assert_eq!(
            shown_error("from <ip> port (<user>"),
            "unclosed group\n    from <ip> port (<user>\n                   ^"
        );
        assert_eq!(
            shown_error("x <user>|*"),
            "repetition operator missing expression\n    x <user>|*\n             ^"
        );
        // Before any placeholder, offsets are unchanged.
        assert_eq!(
            shown_error("[z-a] <ip>"),
            "invalid character class range, the start must be <= the end\n    [z-a] <ip>\n     ^^^"
        );
    }

    #[test]
    fn a_regex_error_inside_an_expansion_points_at_the_placeholder() {
        let named = Patterns::new(vec![
            Pattern::compile(PatternSpec::regex("user", "(?P<u>[a-z]+)")).expect("user"),
        ]);
        let error = match StreamMatcher::new(&named, &[filter("f", &["<user> <user>"])]) {
            Err(MatcherError::Regex { error, .. }) => error,
            other => panic!("{other:?}"),
        };
        assert_eq!(error.reason, "duplicate capture group name");
        assert_eq!(error.span, Some(7..13));
        assert_eq!(error.regex, "<user> <user>");
    }

    #[test]
    fn expanded_spans_map_back_around_and_onto_placeholders() {
        let e = expand("a <user> b <ip> c", &patterns()).expect("expands");
        let user = e.placeholder_spans[0].0.clone();
        let ip = e.placeholder_spans[1].0.clone();
        assert_eq!(e.source_span(0..1), 0..1);
        assert_eq!(e.source_span(user.start..user.start + 1), 2..8);
        assert_eq!(e.source_span(user.end - 1..user.end), 2..8);
        assert_eq!(e.source_span(user.end..user.end + 3), 8..11);
        assert_eq!(e.source_span(ip.start + 3..ip.end), 11..15);
        assert_eq!(e.source_span(ip.end + 1..ip.end + 2), 16..17);
        // A span reaching into a placeholder ends with it.
        assert_eq!(e.source_span(user.end + 1..ip.start + 2), 9..15);
    }

    #[test]
    fn only_the_first_matching_regex_of_a_filter_counts() {
        let m = StreamMatcher::new(&patterns(), &[filter("f", &["from <ip>", "<ip> port"])])
            .expect("compiles");
        assert_eq!(find_all(&m, "from 192.0.2.1 port 1").len(), 1);
    }

    #[test]
    fn ignored_values_report_pattern_and_reason() {
        let m = StreamMatcher::new(&patterns(), &[filter("f", &["from <ip>"])]).expect("compiles");
        let got = find_all(&m, "from 127.0.0.1");
        assert_eq!(
            got[0].outcome,
            Err(Ignored {
                pattern: "ip".into(),
                value: "127.0.0.1".into(),
                reason: IgnoreReason::Cidr
            })
        );
    }

    #[test]
    fn lines_matching_nothing_produce_nothing() {
        let m = StreamMatcher::new(&patterns(), &[filter("f", &["from <ip>"])]).expect("compiles");
        assert!(find_all(&m, "hello world").is_empty());
    }

    #[test]
    fn unknown_placeholders_and_differing_pattern_sets_are_errors() {
        assert!(matches!(
            StreamMatcher::new(&patterns(), &[filter("f", &["from <ipp>"])]),
            Err(MatcherError::UnknownPattern { ref name, .. }) if name == "ipp"
        ));
        assert!(matches!(
            StreamMatcher::new(&patterns(), &[filter("f", &["from <ip>", "user <user>"])]),
            Err(MatcherError::PatternSetsDiffer { index: 2, .. })
        ));
        assert!(matches!(
            StreamMatcher::new(&patterns(), &[filter("f", &["(<ip>"])]),
            Err(MatcherError::Regex { .. })
        ));
        assert!(matches!(
            StreamMatcher::new(&patterns(), &[filter("f", &[])]),
            Err(MatcherError::NoRegex { .. })
        ));
    }

    #[test]
    fn named_groups_and_non_word_brackets_are_left_to_the_regex() {
        let found = placeholders(r"(?P<x>a)(?<y>b)<[^>]*> <ip> \<user> <a-b>");
        let names: Vec<&str> = found.iter().map(|(_, n)| *n).collect();
        assert_eq!(names, vec!["ip"]);
    }

    #[test]
    fn invalid_utf8_lines_are_matched_lossily() {
        let m = StreamMatcher::new(&patterns(), &[filter("f", &["for .* from <ip>"])])
            .expect("compiles");
        let mut buf = String::new();
        let (text, invalid) = line_text(b"for \xff\xfe from 192.0.2.3", &mut buf);
        assert!(invalid);
        assert_eq!(find_all(&m, text).len(), 1);
    }

    #[test]
    fn common_shapes_take_a_fast_path() {
        let m = StreamMatcher::new(
            &patterns(),
            &[
                filter("tail", &[r"Failed password for .* from <ip> port \d+"]),
                filter("head", &[r#"^<ip> \S+ \S+ \[[^]]+\] "GET /\.env"#]),
                filter("neither", &[r"from <ip>"]),
            ],
        )
        .expect("compiles");
        let tail = m.regexes[0].tail.as_ref().expect("tail path");
        assert_eq!(tail.stop, Some(b' '));
        assert!(m.regexes[1].head.is_some());
        assert!(m.regexes[2].tail.is_none() && m.regexes[2].head.is_none());
    }

    const SHAPES: &[&str] = &[
        r"Failed password for .* from <ip> port \d+",
        r"^<ip> \S+ .*port",
        r".* <ip> port",
        r"from <ip>",
        r"^<ip>:",
        r"for .*from <ip>(?: port \d+)?",
        r"for .* <user> from <ip>",
        r".*from <user>",
        r"^<user>:",
    ];

    fn token() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "from ",
            " from",
            " ",
            "port ",
            " port",
            "22",
            "1.2.3.4",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "127.0.0.1",
            "x",
            "Failed password for ",
            "for ",
            "root",
            ":",
            "[",
            "]",
            "-",
            ".",
            "a b",
            "fromfrom",
            "é",
            "12:34:56",
        ])
    }

    proptest! {
        /// Whatever is wrong with a regex, its error lies in the text as
        /// written and never shows the expansion.
        #[test]
        fn regex_errors_stay_inside_the_text_as_written(
            pieces in prop::collection::vec(
                prop::sample::select(vec![
                    "<ip>", "<user>", "(", ")", "[", "]", "*", "+", "?", "{2,1}", "\\", "a",
                    "é", "\t", "\n", "(?x)", "|", "\\p{Nope}", "(?P<rebuff_0>x)",
                ]),
                0..12,
            ),
        ) {
            let text: String = pieces.concat();
            if let Err(MatcherError::Regex { error, .. }) =
                StreamMatcher::new(&patterns(), &[filter("f", &[&text])])
            {
                prop_assert_eq!(&error.regex, &text);
                if let Some(span) = &error.span {
                    prop_assert!(span.start <= span.end && span.end <= text.len(), "{:?}", span);
                }
                let shown = error.to_string();
                prop_assert!(!shown.contains("0-9a-fA-F"), "{}", shown);
            }
        }

        #[test]
        fn fast_paths_capture_exactly_what_the_full_regex_captures(
            shape in prop::sample::select(SHAPES.to_vec()),
            tokens in prop::collection::vec(token(), 0..24),
        ) {
            let filters = [filter("f", &[shape])];
            let fast = StreamMatcher::new(&patterns(), &filters).expect("compiles");
            let exact = StreamMatcher::new_without_fast_paths(&patterns(), &filters).expect("compiles");
            let line: String = tokens.concat();
            prop_assert_eq!(find_all(&fast, &line), find_all(&exact, &line), "line {:?}", line);
        }

        #[test]
        fn find_never_panics(line in ".{0,200}") {
            let m = StreamMatcher::new(
                &patterns(),
                &[filter("a", &["from <ip>( port)?"]), filter("b", &["<user>@<ip>"])],
            ).expect("compiles");
            let _ = find_all(&m, &line);
        }
    }
}
