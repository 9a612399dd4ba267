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

use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};

use crate::Values;
use crate::pattern::{IgnoreReason, Patterns};

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
    #[error("regex #{index} of filter '{filter}' is invalid: {message}")]
    Regex {
        filter: String,
        index: usize,
        message: String,
    },
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
    let mut last = 0;
    for (range, name) in placeholders(text) {
        let (index, pattern) = patterns.get(name).ok_or_else(|| name.to_owned())?;
        let group = format!("rebuff_{}", groups.len());
        regex.push_str(&text[last..range.start]);
        regex.push_str(&format!("(?P<{group}>{})", pattern.regex()));
        groups.push((group, index));
        names.insert(name.to_owned());
        last = range.end;
    }
    regex.push_str(&text[last..]);
    Ok(ExpandedRegex {
        regex,
        groups,
        names: names.into_iter().collect(),
    })
}

#[derive(Debug)]
struct CaptureRegex {
    filter: usize,
    regex: Regex,
    /// The same regex compiled without Unicode classes, used on ASCII lines.
    /// On an ASCII haystack `.`, `\d`, `\w`, `\s` and case folding mean
    /// exactly what their Unicode forms mean, and the much smaller automaton
    /// makes capture extraction several times cheaper.
    ascii: Option<Regex>,
    /// (capture group index, position in the filter's values) per placeholder.
    slots: Vec<(usize, usize)>,
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

fn same_groups(unicode: &Regex, ascii: &Regex, slots: &[(usize, usize)]) -> bool {
    let (u, a) = (unicode.group_info(), ascii.group_info());
    u.all_group_len() == a.all_group_len()
        && slots.iter().all(|&(group, _)| {
            u.to_name(regex_automata::PatternID::ZERO, group)
                == a.to_name(regex_automata::PatternID::ZERO, group)
        })
}

/// Per-caller scratch space, so matching never allocates for a line that
/// matches nothing and never contends on a shared cache.
#[derive(Debug)]
pub struct MatchScratch {
    any: meta::Cache,
    hits: PatternSet,
    caches: Vec<meta::Cache>,
    captures: Vec<Captures>,
    ascii_caches: Vec<Option<meta::Cache>>,
}

fn syntax_config() -> syntax::Config {
    // Large alternations of IP patterns across dozens of filters must not hit
    // the default size limits of a single user regex.
    syntax::Config::new()
}

impl StreamMatcher {
    /// Compiles the filters of one stream against the configuration's patterns.
    pub fn new(patterns: &Patterns, filters: &[FilterSpec]) -> Result<Self, MatcherError> {
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
            let regex = Regex::builder()
                .syntax(syntax_config())
                .configure(Regex::config().nfa_size_limit(Some(64 << 20)))
                .build(&expanded.regex)
                .map_err(|e| MatcherError::Regex {
                    filter: filters[*filter_index].name.clone(),
                    index: i + 1,
                    message: e.to_string(),
                })?;
            let info = &infos[*filter_index];
            let slots: Vec<(usize, usize)> = expanded
                .groups
                .iter()
                .filter_map(|(group, pattern)| {
                    let group_index = regex
                        .group_info()
                        .to_index(regex_automata::PatternID::ZERO, group)?;
                    let slot = info.patterns.iter().position(|p| p == pattern)?;
                    Some((group_index, slot))
                })
                .collect();
            let ascii = Regex::builder()
                .syntax(syntax_config().unicode(false).utf8(false))
                .configure(Regex::config().nfa_size_limit(Some(64 << 20)))
                .build(&expanded.regex)
                .ok()
                .filter(|ascii| same_groups(&regex, ascii, &slots));
            regexes.push(CaptureRegex {
                filter: *filter_index,
                regex,
                ascii,
                slots,
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
                    .nfa_size_limit(Some(256 << 20))
                    .hybrid_cache_capacity(8 << 20),
            )
            .build_many(&sources)
            .map_err(|e| MatcherError::Regex {
                filter: filters.first().map(|f| f.name.clone()).unwrap_or_default(),
                index: 0,
                message: e.to_string(),
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
            ascii_caches: self
                .regexes
                .iter()
                .map(|r| r.ascii.as_ref().map(Regex::create_cache))
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
        if !self.any.is_match_with(&mut scratch.any, &input) {
            return false;
        }
        scratch.hits.clear();
        self.any
            .which_overlapping_matches_with(&mut scratch.any, &input, &mut scratch.hits);
        let mut last_filter = usize::MAX;
        let ascii_line = line.is_ascii();
        for hit in scratch.hits.iter() {
            let index = hit.as_usize();
            let entry = &self.regexes[index];
            // Only the first matching regex of a filter makes its match.
            if entry.filter == last_filter {
                continue;
            }
            let caps = &mut scratch.captures[index];
            match (&entry.ascii, &mut scratch.ascii_caches[index]) {
                (Some(ascii), Some(cache)) if ascii_line => {
                    ascii.search_captures_with(cache, &input, caps)
                }
                _ => entry
                    .regex
                    .search_captures_with(&mut scratch.caches[index], &input, caps),
            }
            if !caps.is_match() {
                continue;
            }
            last_filter = entry.filter;
            out.push(LineMatch {
                filter: entry.filter,
                outcome: self.values(entry, line, caps),
            });
        }
        true
    }

    fn values(&self, entry: &CaptureRegex, line: &str, caps: &Captures) -> Result<Values, Ignored> {
        let info = &self.filters[entry.filter];
        let mut values: Vec<Option<String>> = vec![None; info.patterns.len()];
        for &(group, slot) in &entry.slots {
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

    proptest! {
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
