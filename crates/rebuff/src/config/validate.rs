//! Validation and compilation of a merged configuration tree.
//!
//! One walk over the [`Node`] tree checks every key against reaction v2's
//! reference, collects every problem with its location and key path (the
//! walk continues after an error so all of them are reported at once), and
//! compiles what is valid: patterns, one [`StreamMatcher`] per stream, filter
//! plans and action argv templates.
//!
//! Where the reference only says an option "makes sense" in some context,
//! using it elsewhere is an error here: a key that silently does nothing is
//! a mistake a user cannot see.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rebuff_engine::matcher::{expand, placeholders};
use rebuff_engine::{
    ActionSpec, DuplicatePolicy, FilterPlan, FilterSpec, IpOnly, Pattern, PatternError,
    PatternKind, PatternSpec, Patterns, StreamMatcher, check_regex, parse_duration,
    whole_value_regex,
};

use super::tree::{Key, Loc, Node, Value};
use super::{
    Action, ArgPart, ArgTemplate, Config, ConfigError, ConfigErrors, Filter, SetBackend, Stream,
};

const TOP_KEYS: &[&str] = &[
    "patterns",
    "streams",
    "start",
    "stop",
    "state_directory",
    "concurrency",
    "state_rotation_interval",
    "plugins",
    "metrics",
    "firewall",
    "geoip",
    DEFINITIONS,
];
/// reaction's example configuration keeps its YAML anchors under this key
/// ("definitions are not read by reaction"): accepted with any value,
/// ignored, and left out of the printed configuration.
pub const DEFINITIONS: &str = "definitions";
const PATTERN_KEYS: &[&str] = &[
    "regex",
    "ignore",
    "ignoreregex",
    "type",
    "ignorecidr",
    "ipv4mask",
    "ipv6mask",
    "ignorecountry",
    "onlycountry",
];
const STREAM_KEYS: &[&str] = &["cmd", "filters", "type", "options"];
const FILTER_KEYS: &[&str] = &[
    "regex",
    "retry",
    "retryperiod",
    "duplicate",
    "duplicates",
    "actions",
    "type",
    "options",
];
const ACTION_KEYS: &[&str] = &[
    "cmd", "after", "onexit", "oneshot", "ipv4only", "ipv6only", "timeout", "type", "options",
];
const PLUGIN_KEYS: &[&str] = &["path", "check_root", "systemd", "systemd_options"];
/// reaction's plugins whose types rebuff builds in.
const BUILT_IN_PLUGINS: &[&str] = &["nftables", "ipset", "virtual"];
const VIRTUAL_OPTION_KEYS: &[&str] = &["send", "to"];
/// Actions of one filter: the daemon keeps a trigger's actions as bits of
/// one word (a jailed address is counted in bytes at a million of them).
pub const MAX_ACTIONS: usize = 64;

/// Default and minimum of `state_rotation_interval`, as in reaction.
const ROTATION_DEFAULT_MS: u64 = 24 * 3_600_000;
const ROTATION_MIN_MS: u64 = 30 * 60_000;

/// Validates and compiles a merged configuration tree.
pub fn compile(root: &Node) -> Result<Config, ConfigErrors> {
    let mut check = Checker {
        regex_deadline: Some(Instant::now() + REGEX_TIME),
        ..Checker::default()
    };
    let mut config = check.config(root);
    if !check.errors.is_empty() {
        close(&mut check.errors, check.dropped_errors, "errors");
        return Err(ConfigErrors(check.errors));
    }
    if let Some(config) = &mut config {
        close(&mut config.warnings, check.dropped_warnings, "warnings");
    }
    config.ok_or_else(|| {
        ConfigErrors(vec![ConfigError {
            loc: Some(root.loc.clone()),
            path: String::new(),
            message: "invalid configuration".into(),
        }])
    })
}

/// The configuration as `test-config` prints it: the tree without the
/// ignored top-level `definitions`.
fn document(root: &Node) -> serde_json::Value {
    let mut document = to_json(root);
    if let serde_json::Value::Object(entries) = &mut document {
        entries.shift_remove(DEFINITIONS);
    }
    document
}

/// Converts a tree to JSON, keeping key order (for `test-config`).
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (k.name.clone(), to_json(v)))
                .collect(),
        ),
    }
}

mod firewall;
mod geoip;
mod metrics;

pub use firewall::IPSET_MAX_TIMEOUT_S;
pub use metrics::DEFAULT_LISTEN;

type Entries = [(Key, Node)];

/// What an action needs to know about its filter.
struct FilterContext<'a> {
    /// The filter's pattern names in value order; `None` when its regexes
    /// are invalid (already reported), so actions are not blamed for it.
    names: Option<&'a [String]>,
    /// Which value is the IP that ipv4only/ipv6only look at.
    ip_slot: Option<usize>,
    patterns: &'a Patterns,
}

#[derive(Default)]
struct Checker {
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    /// Pattern names that are defined but invalid: their errors are already
    /// reported, so filters using them are skipped rather than blamed.
    broken_patterns: BTreeSet<String>,
    /// The `patterns` section is not a map (reported): which names it
    /// defines is unknown, so no placeholder is blamed for naming none.
    patterns_unreadable: bool,
    /// Problems found beyond `MAX_REPORTED`.
    dropped_errors: usize,
    dropped_warnings: usize,
    /// When compiling regexes must stop (see `regex_time`).
    regex_deadline: Option<Instant>,
    regexes_compiled: usize,
    out_of_regex_time: bool,
    /// Every stream name in configuration order, and whether it is
    /// virtual (read before the streams are checked, so an action can name
    /// any of them).
    stream_kinds: Vec<(String, bool)>,
    /// The stream being checked.
    current_stream: String,
    /// Which stream sends lines to which virtual stream, with where it
    /// says so, for the cycle check.
    virtual_edges: Vec<VirtualEdge>,
    /// The sets `type: nftables|ipset` actions name, in first-use order.
    firewall_sets: Vec<firewall::SetDraft>,
    /// The `geoip` section, read before the patterns that use it.
    geoip: Option<super::GeoipConfig>,
}

/// A virtual action of stream `from` sends its lines to stream `to`.
struct VirtualEdge {
    from: usize,
    to: usize,
    loc: Loc,
    path: String,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn get<'a>(entries: &'a Entries, name: &str) -> Option<&'a Node> {
    entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v)
}

fn key_loc<'a>(entries: &'a Entries, name: &str) -> Option<&'a Loc> {
    entries
        .iter()
        .find(|(k, _)| k.name == name)
        .map(|(k, _)| &k.loc)
}

/// The error for a key not in `known`: what is accepted, and the closest
/// known key when it is likely a typo.
pub fn unknown_key_message(name: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(k, name), *k))
        .min()
        .filter(|&(distance, k)| distance <= 2.max(k.len() / 4));
    let hint = match closest {
        Some((_, k)) => format!("; did you mean '{k}'?"),
        None => String::new(),
    };
    format!(
        "unknown key '{name}'{hint} (accepted here: {})",
        known.join(", ")
    )
}

/// Warnings for `\<` written right before a `<name>` placeholder, or `\>`
/// right after one. In Go's regexps (reaction 1) these escaped a literal
/// angle bracket; in Rust's (reaction 2 and rebuff) they assert the start
/// or end of a word. `\<<ip>\>` then never matches `<203.0.113.7>` and
/// requires a word character where a value like `::1` has none.
fn legacy_word_escapes(text: &str) -> Vec<String> {
    let odd_backslashes =
        |before: &str| before.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1;
    let mut warnings = Vec::new();
    for (range, name) in placeholders(text) {
        let before = &text[..range.start];
        if let Some(head) = before.strip_suffix('<')
            && odd_backslashes(head)
        {
            warnings.push(format!(
                "`\\<` before <{name}> is a start-of-word assertion here, not a literal '<' \
                 as in reaction 1's Go regexps: the regex cannot match a '<' written before \
                 the value; write `<<{name}>` for a literal '<', or `\\b` for a word boundary"
            ));
        }
        let after = &text[range.end..];
        if after.starts_with("\\>") {
            warnings.push(format!(
                "`\\>` after <{name}> is an end-of-word assertion here, not a literal '>' \
                 as in reaction 1's Go regexps: the regex cannot match a '>' written after \
                 the value; write `<{name}>>` for a literal '>', or `\\b` for a word boundary"
            ));
        }
    }
    warnings
}

/// Why `regex` (already known to compile) can never match a line, when that
/// is cheap to see: an empty character class that something requires, or a
/// `^`/`$` (start/end of the line) with required text before/after it.
fn never_matches(regex: &str) -> Option<String> {
    use regex_syntax::hir::{Hir, HirKind, Look};

    fn reason(hir: &Hir) -> Option<&'static str> {
        match hir.kind() {
            HirKind::Empty | HirKind::Literal(_) | HirKind::Look(_) => None,
            HirKind::Class(_) => hir
                .properties()
                .minimum_len()
                .is_none()
                .then_some("it requires a character from an empty class"),
            HirKind::Repetition(rep) if rep.min == 0 => None,
            HirKind::Repetition(rep) => reason(&rep.sub),
            HirKind::Capture(cap) => reason(&cap.sub),
            HirKind::Alternation(alternatives) => {
                let reasons: Vec<_> = alternatives.iter().map(reason).collect();
                if reasons.iter().all(Option::is_some) {
                    reasons.into_iter().flatten().next()
                } else {
                    None
                }
            }
            HirKind::Concat(items) => {
                if let Some(found) = items.iter().find_map(reason) {
                    return Some(found);
                }
                let consumes = |h: &Hir| h.properties().minimum_len().is_some_and(|n| n > 0);
                for (i, item) in items.iter().enumerate() {
                    match item.kind() {
                        HirKind::Look(Look::Start) if items[..i].iter().any(consumes) => {
                            return Some(
                                "`^` (the start of the line) comes after text the regex requires",
                            );
                        }
                        HirKind::Look(Look::End) if items[i + 1..].iter().any(consumes) => {
                            return Some(
                                "`$` (the end of the line) comes before text the regex requires",
                            );
                        }
                        _ => {}
                    }
                }
                None
            }
        }
    }

    let hir = regex_syntax::Parser::new().parse(regex).ok()?;
    reason(&hir).map(|why| format!("this regex can never match: {why}"))
}

fn is_word(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Most time the regexes of one configuration may take to compile, all
/// checks included. Real configurations take milliseconds; the limit stops
/// a file that copies a large regex into thousands of filters. The stream
/// matchers built afterwards compile the same regexes once more.
const REGEX_TIME: Duration = Duration::from_secs(5);

/// Most errors, and most warnings, reported for one configuration: enough
/// to fix a real one in a round or two, and a file of a million bad keys
/// still answers at once.
pub(crate) const MAX_REPORTED: usize = 200;

/// Keeps a problem unless `MAX_REPORTED` are already kept; counts it.
fn report(list: &mut Vec<ConfigError>, dropped: &mut usize, problem: ConfigError) {
    if list.len() < MAX_REPORTED {
        list.push(problem);
    } else {
        *dropped += 1;
    }
}

/// Closes a list of problems with how many were left out.
pub(crate) fn close(list: &mut Vec<ConfigError>, dropped: usize, what: &str) {
    if dropped > 0 {
        list.push(ConfigError {
            loc: None,
            path: String::new(),
            message: format!("... and {dropped} more {what}, not shown"),
        });
    }
}

impl Checker {
    fn error(&mut self, loc: &Loc, path: &str, message: impl Into<String>) {
        let problem = ConfigError {
            loc: Some(loc.clone()),
            path: path.to_owned(),
            message: message.into(),
        };
        report(&mut self.errors, &mut self.dropped_errors, problem);
    }

    /// Whether one more regex may be compiled; once the time is up, says so
    /// (once) at `loc` and refuses every later regex.
    fn regex_time(&mut self, loc: &Loc, path: &str) -> bool {
        if self.out_of_regex_time {
            return false;
        }
        if self
            .regex_deadline
            .is_some_and(|deadline| Instant::now() > deadline)
        {
            self.out_of_regex_time = true;
            let done = self.regexes_compiled;
            self.error(
                loc,
                path,
                format!(
                    "compiling the configuration's regexes took more than {} s ({done} regexes \
                     compiled before this one): are regexes or filters copied many times by \
                     aliases, or are they very large?",
                    REGEX_TIME.as_secs()
                ),
            );
            return false;
        }
        self.regexes_compiled += 1;
        true
    }

    /// Errors found so far, reported or not.
    fn error_count(&self) -> usize {
        self.errors.len() + self.dropped_errors
    }

    fn warn(&mut self, loc: &Loc, path: &str, message: impl Into<String>) {
        let problem = ConfigError {
            loc: Some(loc.clone()),
            path: path.to_owned(),
            message: message.into(),
        };
        report(&mut self.warnings, &mut self.dropped_warnings, problem);
    }

    fn map<'a>(&mut self, node: &'a Node, path: &str, what: &str) -> Option<&'a Entries> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            other => {
                self.error(
                    &node.loc,
                    path,
                    format!("expected {what}, found {}", other.kind_name()),
                );
                None
            }
        }
    }

    /// Reports keys not in `known`, suggesting the closest known one.
    fn known_keys(&mut self, entries: &Entries, path: &str, known: &[&str]) {
        for (key, _) in entries {
            if !known.contains(&key.name.as_str()) {
                if self.errors.len() >= MAX_REPORTED {
                    // Not shown: spare the message and its suggestion.
                    self.dropped_errors += 1;
                    continue;
                }
                self.error(
                    &key.loc,
                    &join(path, &key.name),
                    unknown_key_message(&key.name, known),
                );
            }
        }
    }

    /// Extracts a scalar of the expected kind, or reports what was found.
    fn scalar<T>(
        &mut self,
        node: &Node,
        path: &str,
        expected: &str,
        extract: impl FnOnce(&Value) -> Option<T>,
    ) -> Option<T> {
        let value = extract(&node.value);
        if value.is_none() {
            self.error(
                &node.loc,
                path,
                format!("expected {expected}, found {}", node.value.kind_name()),
            );
        }
        value
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        self.scalar(node, path, "a string", |v| match v {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        })
    }

    fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        self.scalar(node, path, "true or false", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }

    fn int(&mut self, node: &Node, path: &str) -> Option<i64> {
        self.scalar(node, path, "a whole number", |v| match v {
            Value::Int(i) => Some(*i),
            _ => None,
        })
    }

    fn seq<'a>(&mut self, node: &'a Node, path: &str, what: &str) -> Option<&'a [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            other => {
                self.error(
                    &node.loc,
                    path,
                    format!("expected {what}, found {}", other.kind_name()),
                );
                None
            }
        }
    }

    /// A list of strings, with each element's node.
    fn strings<'a>(&mut self, node: &'a Node, path: &str) -> Option<Vec<(String, &'a Node)>> {
        let items = self.seq(node, path, "a list of strings")?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(item, &format!("{path}[{i}]")) {
                Some(s) => out.push((s, item)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A command: a non-empty argv list whose program is not empty.
    fn command(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let argv = self.strings(node, path)?;
        match argv.first() {
            None => {
                self.error(
                    &node.loc,
                    path,
                    "a command needs at least the program to run, e.g. ['iptables', '-w', ...]",
                );
                None
            }
            Some((program, item)) if program.is_empty() => {
                self.error(
                    &item.loc,
                    &format!("{path}[0]"),
                    "the program name is empty",
                );
                None
            }
            Some(_) => Some(argv.into_iter().map(|(s, _)| s).collect()),
        }
    }

    fn commands(&mut self, node: &Node, path: &str) -> Vec<Vec<String>> {
        let Some(items) = self.seq(node, path, "a list of commands (each a list of strings)")
        else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.command(item, &format!("{path}[{i}]")))
            .collect()
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<u64> {
        if let Value::Int(n) = node.value {
            self.error(
                &node.loc,
                path,
                format!("a duration needs a unit: found the bare number {n}; write e.g. '{n}s', '{n}m' or '{n}h'"),
            );
            return None;
        }
        let text = self.string(node, path)?;
        match parse_duration(&text) {
            Ok(ms) => Some(ms),
            Err(e) => {
                self.error(&node.loc, path, e.to_string());
                None
            }
        }
    }

    fn config(&mut self, root: &Node) -> Option<Config> {
        let entries = self.map(root, "", "a map at the top level")?;
        self.known_keys(entries, "", TOP_KEYS);

        self.geoip = get(entries, "geoip").and_then(|n| self.geoip(n));
        let patterns = self.patterns(entries, root);
        if let Some(node) = get(entries, "plugins") {
            self.plugins(node);
        }
        let mut streams = self.streams(entries, root, &patterns);
        let start = get(entries, "start").map_or_else(Vec::new, |n| self.commands(n, "start"));
        let stop = get(entries, "stop").map_or_else(Vec::new, |n| self.commands(n, "stop"));
        let state_directory = get(entries, "state_directory")
            .and_then(|n| self.string(n, "state_directory"))
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        let concurrency = get(entries, "concurrency")
            .and_then(|n| self.int(n, "concurrency"))
            .unwrap_or(0);
        let state_rotation_interval = self.rotation(entries);
        let metrics = get(entries, "metrics").and_then(|n| self.metrics(n, &streams));
        let firewall = self.firewall(get(entries, "firewall"), &mut streams);

        Some(Config {
            // Only a valid configuration is ever printed.
            document: if self.errors.is_empty() {
                document(root)
            } else {
                serde_json::Value::Null
            },
            patterns,
            streams,
            start,
            stop,
            state_directory,
            concurrency,
            state_rotation_interval,
            metrics,
            firewall,
            geoip: self.geoip.take(),
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    fn rotation(&mut self, entries: &Entries) -> Option<u64> {
        const PATH: &str = "state_rotation_interval";
        let Some(node) = get(entries, PATH) else {
            return Some(ROTATION_DEFAULT_MS);
        };
        if node.value == Value::Null {
            return None;
        }
        let ms = self.duration(node, PATH)?;
        if ms < ROTATION_MIN_MS {
            self.error(
                &node.loc,
                PATH,
                "the minimum is 30m (use null to disable rotation)",
            );
            return None;
        }
        Some(ms)
    }

    fn patterns(&mut self, entries: &Entries, root: &Node) -> Patterns {
        let Some(node) = get(entries, "patterns") else {
            return Patterns::default();
        };
        let Some(defs) = self.map(node, "patterns", "a map of pattern names to patterns") else {
            self.patterns_unreadable = true;
            return Patterns::default();
        };
        let _ = root;
        let mut compiled = Vec::new();
        for (key, def) in defs {
            let path = join("patterns", &key.name);
            if !is_word(&key.name) {
                self.error(
                    &key.loc,
                    &path,
                    "a pattern name may only hold letters, digits and '_' (it is written <name> in regexes)",
                );
                continue;
            }
            match self.pattern(key, def, &path) {
                Some(pattern) => compiled.push(pattern),
                None => {
                    self.broken_patterns.insert(key.name.clone());
                }
            }
        }
        Patterns::new(compiled)
    }

    /// `key` is the pattern's name as written: errors about a key missing
    /// from the pattern point at it.
    fn pattern(&mut self, key: &Key, def: &Node, path: &str) -> Option<Pattern> {
        let name = key.name.as_str();
        let entries = self.map(def, path, "a pattern (a map with 'regex' or 'type')")?;
        self.known_keys(entries, path, PATTERN_KEYS);
        let errors_before = self.error_count();

        // `None` when the type is invalid (reported): then nothing that
        // depends on the type is checked, so one mistake is one error.
        let kind = match get(entries, "type") {
            None => Some(PatternKind::Regex),
            Some(node) => match self.string(node, &join(path, "type")).as_deref() {
                Some("regex") => Some(PatternKind::Regex),
                Some("ip") => Some(PatternKind::Ip),
                Some("ipv4") => Some(PatternKind::Ipv4),
                Some("ipv6") => Some(PatternKind::Ipv6),
                Some(other) => {
                    self.error(
                        &node.loc,
                        &join(path, "type"),
                        format!("unknown pattern type '{other}' (accepted: regex, ip, ipv4, ipv6)"),
                    );
                    None
                }
                None => None,
            },
        };
        let kind = kind?;
        let regex = get(entries, "regex").and_then(|n| self.string(n, &join(path, "regex")));
        if kind.is_ip()
            && let (Some(_), Some(loc)) = (&regex, key_loc(entries, "regex"))
        {
            self.warn(
                loc,
                &join(path, "regex"),
                format!("ignored: type {} brings its own regex", kind.name()),
            );
        }
        if kind == PatternKind::Regex && regex.is_none() && get(entries, "regex").is_none() {
            self.error(
                &key.loc,
                path,
                "a pattern needs a 'regex', or a 'type' among ip, ipv4, ipv6",
            );
        }
        if let (Some(re), Some(node)) = (&regex, get(entries, "regex"))
            && kind == PatternKind::Regex
            && self.regex_time(&node.loc, &join(path, "regex"))
        {
            match check_regex(re) {
                Err(e) => self.error(
                    &node.loc,
                    &join(path, "regex"),
                    format!("invalid regex: {e}"),
                ),
                Ok(_) => {
                    if let Some(warning) = never_matches(re) {
                        self.warn(&node.loc, &join(path, "regex"), warning);
                    }
                }
            }
        }

        let ignore = self.string_list(entries, path, "ignore");
        let ignore_regex = self.string_list(entries, path, "ignoreregex");
        if let Some(node) = get(entries, "ignoreregex")
            && let Value::Seq(items) = &node.value
        {
            for (i, (re, item)) in ignore_regex.iter().zip(items).enumerate() {
                if !self.regex_time(&item.loc, &format!("{path}.ignoreregex[{i}]")) {
                    continue;
                }
                if let Err(e) = whole_value_regex(re) {
                    self.error(
                        &item.loc,
                        &format!("{path}.ignoreregex[{i}]"),
                        format!("invalid regex: {e}"),
                    );
                }
            }
        }
        let ignore_cidr = self.cidrs(entries, path, kind);
        let ipv4_mask = self.mask(entries, path, "ipv4mask", 32, kind, PatternKind::Ipv6);
        let ipv6_mask = self.mask(entries, path, "ipv6mask", 128, kind, PatternKind::Ipv4);

        if self.error_count() > errors_before || self.out_of_regex_time {
            return None;
        }
        let spec = PatternSpec {
            name: name.to_owned(),
            kind,
            regex,
            ignore,
            ignore_regex,
            ignore_cidr,
            ipv4_mask,
            ipv6_mask,
        };
        match Pattern::compile(spec) {
            Ok(pattern) => self.pattern_countries(entries, path, kind, pattern),
            Err(e) => {
                let at = match &e {
                    PatternError::MissingRegex => None,
                    PatternError::Regex(_) => Some("regex"),
                    PatternError::IgnoreRegex(_) => Some("ignoreregex"),
                    PatternError::NotForKind { key, .. } | PatternError::MaskRange { key, .. } => {
                        Some(*key)
                    }
                };
                let loc = at
                    .and_then(|k| key_loc(entries, k))
                    .unwrap_or(&key.loc)
                    .clone();
                let path = at.map_or_else(|| path.to_owned(), |k| join(path, k));
                self.error(&loc, &path, e.to_string());
                None
            }
        }
    }

    fn string_list(&mut self, entries: &Entries, path: &str, key: &str) -> Vec<String> {
        get(entries, key)
            .and_then(|n| self.strings(n, &join(path, key)))
            .map(|items| items.into_iter().map(|(s, _)| s).collect())
            .unwrap_or_default()
    }

    fn cidrs(&mut self, entries: &Entries, path: &str, kind: PatternKind) -> Vec<IpNet> {
        let Some(node) = get(entries, "ignorecidr") else {
            return Vec::new();
        };
        let key_path = join(path, "ignorecidr");
        if !kind.is_ip() {
            let loc = key_loc(entries, "ignorecidr").unwrap_or(&node.loc).clone();
            self.error(
                &loc,
                &key_path,
                "ignorecidr is only allowed on patterns of type ip, ipv4 or ipv6",
            );
            return Vec::new();
        }
        let Some(items) = self.strings(node, &key_path) else {
            return Vec::new();
        };
        let mut nets = Vec::new();
        for (i, (text, item)) in items.into_iter().enumerate() {
            // A bare address is accepted as a single-host network.
            let parsed = text
                .parse::<IpNet>()
                .ok()
                .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
            match parsed {
                Some(net) => nets.push(net),
                None => self.error(
                    &item.loc,
                    &format!("{key_path}[{i}]"),
                    format!("'{text}' is not a network in CIDR notation (e.g. 192.168.1.0/24, 2001:db8::/64)"),
                ),
            }
        }
        nets
    }

    fn mask(
        &mut self,
        entries: &Entries,
        path: &str,
        key: &str,
        max: i64,
        kind: PatternKind,
        incompatible: PatternKind,
    ) -> Option<u8> {
        let node = get(entries, key)?;
        let key_path = join(path, key);
        let value = self.int(node, &key_path)?;
        if kind == PatternKind::Regex || kind == incompatible {
            let allowed = if incompatible == PatternKind::Ipv6 {
                "ip or ipv4"
            } else {
                "ip or ipv6"
            };
            let loc = key_loc(entries, key).unwrap_or(&node.loc).clone();
            self.error(
                &loc,
                &key_path,
                format!(
                    "{key} is only allowed on patterns of type {allowed}, not on type {}",
                    kind.name()
                ),
            );
            return None;
        }
        if !(0..=max).contains(&value) {
            self.error(
                &node.loc,
                &key_path,
                format!("{key} must be between 0 and {max}, found {value}"),
            );
            return None;
        }
        u8::try_from(value).ok()
    }

    /// The `plugins` section. reaction's plugins that rebuff builds in are
    /// accepted, their settings ignored (one warning for the section);
    /// any other plugin is an error: rebuff runs no plugin binary.
    fn plugins(&mut self, node: &Node) {
        let Some(defs) = self.map(node, "plugins", "a map of plugin names to plugins") else {
            return;
        };
        let mut built_in = Vec::new();
        for (key, def) in defs {
            let path = join("plugins", &key.name);
            if !BUILT_IN_PLUGINS.contains(&key.name.as_str()) {
                self.error(
                    &key.loc,
                    &path,
                    format!(
                        "plugin '{}' is not built into rebuff, and rebuff does not run reaction plugins (built in: {})",
                        key.name,
                        BUILT_IN_PLUGINS.join(", ")
                    ),
                );
                continue;
            }
            let Some(entries) = self.map(def, &path, "a plugin (a map with 'path')") else {
                continue;
            };
            self.known_keys(entries, &path, PLUGIN_KEYS);
            if let Some(n) = get(entries, "path") {
                self.string(n, &join(&path, "path"));
            }
            for flag in ["check_root", "systemd"] {
                if let Some(n) = get(entries, flag) {
                    self.bool(n, &join(&path, flag));
                }
            }
            if let Some(n) = get(entries, "systemd_options") {
                let opt_path = join(&path, "systemd_options");
                if let Some(options) =
                    self.map(n, &opt_path, "a map of option names to lists of strings")
                {
                    for (k, v) in options {
                        self.strings(v, &join(&opt_path, &k.name));
                    }
                }
            }
            built_in.push(key.name.as_str());
        }
        if let (Some((first, _)), false) = (defs.first(), built_in.is_empty()) {
            self.warn(
                &first.loc,
                "plugins",
                format!(
                    "ignored: {} {} built into rebuff, so no plugin binary runs and its path, check_root, systemd and systemd_options do not apply",
                    built_in.join(", "),
                    if built_in.len() == 1 { "is" } else { "are" }
                ),
            );
        }
    }

    /// The `type` of a stream or an action: `cmd` when it has none, or one
    /// of `built_in`. A type listed in `not_yet` is one of reaction's
    /// plugin types rebuff will build in; any other would need a plugin.
    /// `options` are only for a type other than `cmd`. `None`: an error
    /// was reported.
    fn plugin_type(
        &mut self,
        entries: &Entries,
        path: &str,
        what: &str,
        built_in: &[&'static str],
        not_yet: &[&str],
    ) -> Option<&'static str> {
        let accepted = || {
            std::iter::once("cmd")
                .chain(built_in.iter().copied())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(node) = get(entries, "type") {
            let type_path = join(path, "type");
            let name = self.string(node, &type_path)?;
            if name != "cmd" {
                if let Some(found) = built_in.iter().find(|t| **t == name) {
                    return Some(found);
                } else {
                    let why = if not_yet.contains(&name.as_str()) {
                        format!("{what} type '{name}' is not built into rebuff yet")
                    } else {
                        format!(
                            "{what} type '{name}' would come from a reaction plugin, and rebuff does not run reaction plugins"
                        )
                    };
                    self.error(
                        &node.loc,
                        &type_path,
                        format!("{why} (accepted: {})", accepted()),
                    );
                    return None;
                }
            }
        }
        if let Some(loc) = key_loc(entries, "options") {
            let message = if get(entries, "type").is_none() {
                format!(
                    "options are only for {what} types other than cmd, and this {what} has no 'type'"
                )
            } else {
                format!("options are only for {what} types other than cmd, not for type 'cmd'")
            };
            self.error(loc, &join(path, "options"), message);
            return None;
        }
        Some("cmd")
    }

    fn streams(&mut self, entries: &Entries, root: &Node, patterns: &Patterns) -> Vec<Stream> {
        let Some(node) = get(entries, "streams") else {
            self.error(&root.loc, "streams", "at least one stream is required");
            return Vec::new();
        };
        let Some(defs) = self.map(node, "streams", "a map of stream names to streams") else {
            return Vec::new();
        };
        if defs.is_empty() {
            self.error(&node.loc, "streams", "at least one stream is required");
        }
        self.stream_kinds = defs
            .iter()
            .map(|(key, def)| {
                let is_virtual = matches!(&def.value, Value::Map(entries)
                    if get(entries, "type").is_some_and(|t| t.value == Value::Str("virtual".into())));
                (key.name.clone(), is_virtual)
            })
            .collect();
        if !defs.is_empty() && self.stream_kinds.iter().all(|(_, is_virtual)| *is_virtual) {
            self.error(
                &node.loc,
                "streams",
                "every stream is virtual, so none reads a line: at least one stream needs a 'cmd' (virtual streams are fed only by virtual actions of other streams)",
            );
        }
        let mut streams = Vec::new();
        for (key, def) in defs {
            let path = join("streams", &key.name);
            if key.name.is_empty() || key.name.contains('.') {
                self.error(
                    &key.loc,
                    &path,
                    "a stream name must be non-empty and contain no '.' (the CLI writes STREAM.FILTER)",
                );
                continue;
            }
            if let Some(stream) = self.stream(key, def, &path, patterns) {
                streams.push(stream);
            }
        }
        for (index, (key, _)) in defs.iter().enumerate() {
            let is_virtual = self.stream_kinds.get(index).is_some_and(|(_, v)| *v);
            if is_virtual && !self.virtual_edges.iter().any(|e| e.to == index) {
                self.warn(
                    &key.loc,
                    &join("streams", &key.name),
                    "no virtual action sends to this virtual stream: its filters never see a line",
                );
            }
        }
        self.virtual_cycles();
        streams
    }

    /// Reports each cycle of virtual streams (a stream whose virtual
    /// action sends, maybe through others, back to itself): a line sent
    /// around it could come back for ever.
    fn virtual_cycles(&mut self) {
        let edges = std::mem::take(&mut self.virtual_edges);
        let count = self.stream_kinds.len();
        // 0: not seen, 1: on the current path, 2: done.
        let mut state = vec![0u8; count];
        for start in 0..count {
            if state[start] != 0 {
                continue;
            }
            // The path, as (stream, index of its next edge to try).
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            state[start] = 1;
            while let Some(&mut (node, ref mut next)) = path.last_mut() {
                let Some(offset) = edges[*next..].iter().position(|e| e.from == node) else {
                    state[node] = 2;
                    path.pop();
                    continue;
                };
                let edge = &edges[*next + offset];
                *next += offset + 1;
                match state[edge.to] {
                    0 => {
                        state[edge.to] = 1;
                        path.push((edge.to, 0));
                    }
                    1 => {
                        let from = path.iter().position(|&(n, _)| n == edge.to).unwrap_or(0);
                        let mut names: Vec<&str> = path[from..]
                            .iter()
                            .map(|&(n, _)| self.stream_kinds[n].0.as_str())
                            .collect();
                        names.push(self.stream_kinds[edge.to].0.as_str());
                        let message = format!(
                            "virtual streams form a cycle: {} (a line sent around it would never stop)",
                            names.join(" -> ")
                        );
                        let (loc, at) = (edge.loc.clone(), edge.path.clone());
                        self.error(&loc, &at, message);
                    }
                    _ => {}
                }
            }
        }
    }

    fn stream(&mut self, key: &Key, def: &Node, path: &str, patterns: &Patterns) -> Option<Stream> {
        let name = key.name.as_str();
        let entries = self.map(def, path, "a stream (a map with 'cmd' and 'filters')")?;
        self.known_keys(entries, path, STREAM_KEYS);
        let errors_before = self.error_count();
        self.current_stream = name.to_owned();
        let kind = self.plugin_type(entries, path, "stream", &["virtual"], &[]);
        let is_virtual = kind == Some("virtual");
        let cmd = match (get(entries, "cmd"), kind) {
            (Some(_), Some("virtual")) => {
                let loc = key_loc(entries, "cmd").unwrap_or(&def.loc).clone();
                self.error(
                    &loc,
                    &join(path, "cmd"),
                    "a virtual stream runs no command: its lines are what virtual actions send it; remove 'cmd'",
                );
                None
            }
            (None, Some("virtual")) => Some(Vec::new()),
            (Some(n), _) => self.command(n, &join(path, "cmd")),
            (None, _) => {
                self.error(&key.loc, path, "a stream needs a 'cmd'");
                None
            }
        };
        if is_virtual
            && let Some(node) = get(entries, "options")
            && !matches!(&node.value, Value::Map(entries) if entries.is_empty())
        {
            self.error(
                &node.loc,
                &join(path, "options"),
                "a virtual stream takes no options",
            );
        }
        let mut filters = Vec::new();
        let mut specs = Vec::new();
        match get(entries, "filters") {
            None => self.error(
                &key.loc,
                path,
                "a stream needs at least one filter in 'filters'",
            ),
            Some(node) => {
                let filters_path = join(path, "filters");
                if let Some(defs) =
                    self.map(node, &filters_path, "a map of filter names to filters")
                {
                    if defs.is_empty() {
                        self.error(
                            &node.loc,
                            &filters_path,
                            "a stream needs at least one filter",
                        );
                    }
                    for (fkey, fdef) in defs {
                        let fpath = join(&filters_path, &fkey.name);
                        if fkey.name.is_empty() || fkey.name.contains('.') {
                            self.error(
                                &fkey.loc,
                                &fpath,
                                "a filter name must be non-empty and contain no '.' (the CLI writes STREAM.FILTER)",
                            );
                            continue;
                        }
                        if let Some((spec, filter)) = self.filter(fkey, fdef, &fpath, patterns) {
                            specs.push(spec);
                            filters.push(filter);
                        }
                    }
                }
            }
        }
        if self.error_count() > errors_before || self.out_of_regex_time {
            return None;
        }
        match StreamMatcher::new(patterns, &specs) {
            Ok(matcher) => Some(Stream {
                name: name.to_owned(),
                cmd: cmd?,
                is_virtual,
                matcher,
                filters,
            }),
            Err(e) => {
                self.error(&key.loc, path, e.to_string());
                None
            }
        }
    }

    fn filter(
        &mut self,
        key: &Key,
        def: &Node,
        path: &str,
        patterns: &Patterns,
    ) -> Option<(FilterSpec, Filter)> {
        let name = key.name.as_str();
        let entries = self.map(def, path, "a filter (a map with 'regex' and 'actions')")?;
        self.known_keys(entries, path, FILTER_KEYS);
        let errors_before = self.error_count();

        if let Some(node) = get(entries, "type") {
            let type_path = join(path, "type");
            match self.string(node, &type_path).as_deref() {
                Some("regex") | None => {}
                Some("struct") => self.error(
                    &node.loc,
                    &type_path,
                    "filter type 'struct' (reaction 2.4) is not supported by rebuff yet (accepted: regex)",
                ),
                Some(other) => self.error(
                    &node.loc,
                    &type_path,
                    format!("unknown filter type '{other}' (accepted: regex)"),
                ),
            }
        }
        if let (Some(loc), None) = (key_loc(entries, "options"), get(entries, "type")) {
            self.error(
                loc,
                &join(path, "options"),
                "options are only for filters of type struct",
            );
        }

        let names = self.filter_regexes(entries, key, path, patterns);

        let retry = get(entries, "retry").and_then(|n| self.int(n, &join(path, "retry")));
        let period =
            get(entries, "retryperiod").and_then(|n| self.duration(n, &join(path, "retryperiod")));
        match (key_loc(entries, "retry"), key_loc(entries, "retryperiod")) {
            (Some(loc), None) => self.error(
                loc,
                &join(path, "retry"),
                "retry must come with retryperiod (how long a match counts)",
            ),
            (None, Some(loc)) => self.error(
                loc,
                &join(path, "retryperiod"),
                "retryperiod must come with retry (how many matches trigger)",
            ),
            _ => {}
        }
        if let (Some(r), Some(node)) = (retry, get(entries, "retry"))
            && r <= 1
        {
            self.error(
                &node.loc,
                &join(path, "retry"),
                format!("retry must be greater than 1, found {r} (leave retry and retryperiod out to trigger on every match)"),
            );
        }
        if let (Some(0), Some(node)) = (period, get(entries, "retryperiod")) {
            self.error(
                &node.loc,
                &join(path, "retryperiod"),
                "retryperiod must be longer than 0, or no match would ever count",
            );
        }

        let duplicate = self.duplicate(entries, path);

        let ip_slot = names.as_ref().and_then(|names| {
            names
                .iter()
                .position(|n| patterns.get(n).is_some_and(|(_, p)| p.kind().is_ip()))
        });
        let mut action_specs = Vec::new();
        let mut actions = Vec::new();
        let mut action_locs = Vec::new();
        if let Some(node) = get(entries, "actions") {
            let apath = join(path, "actions");
            if let Some(defs) = self.map(node, &apath, "a map of action names to actions") {
                if defs.len() > MAX_ACTIONS {
                    self.error(
                        &node.loc,
                        &apath,
                        format!(
                            "a filter has at most {MAX_ACTIONS} actions, found {}",
                            defs.len()
                        ),
                    );
                }
                for (akey, adef) in defs {
                    let action_path = join(&apath, &akey.name);
                    let context = FilterContext {
                        names: names.as_deref(),
                        ip_slot,
                        patterns,
                    };
                    if let Some((spec, action)) = self.action(akey, adef, &action_path, &context) {
                        action_specs.push(spec);
                        actions.push(action);
                        action_locs.push((akey.loc.clone(), action_path));
                    }
                }
            }
        }

        // Without valid regexes (`names` is None) the filter cannot be
        // compiled; its error, or its broken pattern's, is already reported.
        if self.error_count() > errors_before || names.is_none() {
            return None;
        }
        self.kernel_timeouts(&mut actions, &action_specs, &action_locs);
        let regexes = self
            .strings(get(entries, "regex")?, &join(path, "regex"))?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        let plan = FilterPlan {
            retry: retry.and_then(|r| u32::try_from(r).ok()).unwrap_or(1),
            retry_period: period.unwrap_or(0),
            duplicate,
            actions: action_specs,
            ip_slot,
        };
        Some((
            FilterSpec {
                name: name.to_owned(),
                regexes,
            },
            Filter {
                name: name.to_owned(),
                pattern_names: names.unwrap_or_default(),
                plan,
                actions,
            },
        ))
    }

    /// Checks a filter's regexes; returns the sorted pattern names they use.
    fn filter_regexes(
        &mut self,
        entries: &Entries,
        filter: &Key,
        path: &str,
        patterns: &Patterns,
    ) -> Option<Vec<String>> {
        let rpath = join(path, "regex");
        let Some(node) = get(entries, "regex") else {
            self.error(&filter.loc, path, "a filter needs a 'regex' list");
            return None;
        };
        let items = self.strings(node, &rpath)?;
        if items.is_empty() {
            self.error(&node.loc, &rpath, "a filter needs at least one regex");
            return None;
        }
        let mut first: Option<(Vec<String>, usize)> = None;
        let mut ok = true;
        for (i, (text, item)) in items.iter().enumerate() {
            let item_path = format!("{rpath}[{i}]");
            if placeholders(text)
                .iter()
                .any(|(_, name)| self.broken_patterns.contains(*name))
            {
                ok = false;
                continue;
            }
            let unknown: Vec<&str> = placeholders(text)
                .into_iter()
                .map(|(_, name)| name)
                .filter(|name| patterns.get(name).is_none())
                .collect();
            let broken = &self.broken_patterns;
            let defined_or_broken = |n: &&str| !broken.contains(*n);
            let unknown: Vec<&str> = unknown.into_iter().filter(defined_or_broken).collect();
            if !unknown.is_empty() && self.patterns_unreadable {
                ok = false;
                continue;
            }
            if !unknown.is_empty() {
                let defined: BTreeSet<&str> = patterns
                    .iter()
                    .map(|p| p.name())
                    .chain(self.broken_patterns.iter().map(String::as_str))
                    .collect();
                let defined: Vec<&str> = defined.into_iter().collect();
                self.error(
                    &item.loc,
                    &item_path,
                    format!(
                        "<{}> names no pattern (defined patterns: {})",
                        unknown.join(">, <"),
                        if defined.is_empty() {
                            "none".to_owned()
                        } else {
                            defined.join(", ")
                        }
                    ),
                );
                ok = false;
                continue;
            }
            let expanded = match expand(text, patterns) {
                Ok(e) => e,
                Err(name) => {
                    self.error(&item.loc, &item_path, format!("<{name}> names no pattern"));
                    ok = false;
                    continue;
                }
            };
            if !self.regex_time(&item.loc, &item_path) {
                ok = false;
                continue;
            }
            if let Err(e) = expanded.check() {
                self.error(&item.loc, &item_path, format!("invalid regex: {e}"));
                ok = false;
                continue;
            }
            for warning in legacy_word_escapes(text)
                .into_iter()
                .chain(never_matches(&expanded.regex))
            {
                self.warn(&item.loc, &item_path, warning);
            }
            match &first {
                None => first = Some((expanded.names, i)),
                Some((names, j)) if *names != expanded.names => {
                    let show = |n: &[String]| {
                        if n.is_empty() {
                            "no pattern".to_owned()
                        } else {
                            format!("<{}>", n.join(">, <"))
                        }
                    };
                    self.error(
                        &item.loc,
                        &item_path,
                        format!(
                            "all regexes of a filter must use the same patterns: this one uses {}, regex[{j}] uses {}",
                            show(&expanded.names),
                            show(names)
                        ),
                    );
                    ok = false;
                }
                Some(_) => {}
            }
        }
        if ok {
            first.map(|(names, _)| names)
        } else {
            None
        }
    }

    fn duplicate(&mut self, entries: &Entries, path: &str) -> DuplicatePolicy {
        let (key, node) = match (get(entries, "duplicate"), get(entries, "duplicates")) {
            (None, None) => return DuplicatePolicy::default(),
            (Some(n), None) => ("duplicate", n),
            (None, Some(n)) => ("duplicates", n),
            (Some(_), Some(n)) => {
                let loc = key_loc(entries, "duplicates").unwrap_or(&n.loc).clone();
                self.error(
                    &loc,
                    &join(path, "duplicates"),
                    "'duplicate' and its alias 'duplicates' are both set; keep one",
                );
                return DuplicatePolicy::default();
            }
        };
        let key_path = join(path, key);
        match self.string(node, &key_path).as_deref() {
            Some("extend") => DuplicatePolicy::Extend,
            Some("rerun") => DuplicatePolicy::Rerun,
            Some("ignore") => DuplicatePolicy::Ignore,
            Some(other) => {
                self.error(
                    &node.loc,
                    &key_path,
                    format!("unknown duplicate policy '{other}' (accepted: extend, rerun, ignore)"),
                );
                DuplicatePolicy::default()
            }
            None => DuplicatePolicy::default(),
        }
    }

    fn action(
        &mut self,
        key: &Key,
        def: &Node,
        path: &str,
        filter: &FilterContext<'_>,
    ) -> Option<(ActionSpec, Action)> {
        let name = key.name.as_str();
        let regexes_valid = filter.names.is_some();
        let (ip_slot, patterns) = (filter.ip_slot, filter.patterns);
        let entries = self.map(def, path, "an action (a map with 'cmd')")?;
        self.known_keys(entries, path, ACTION_KEYS);
        let errors_before = self.error_count();
        let kind = self.plugin_type(
            entries,
            path,
            "action",
            &["virtual", "nftables", "ipset"],
            &[],
        );
        let mut set_action = None;

        let (cmd, send_to) = match (kind, get(entries, "cmd")) {
            (Some(backend @ ("nftables" | "ipset")), _) => {
                let backend = if backend == "nftables" {
                    SetBackend::Nftables
                } else {
                    SetBackend::Ipset
                };
                match self.set_action(backend, key, entries, path, filter) {
                    Some((cmd, action)) => {
                        set_action = Some(action);
                        (Some(cmd), None)
                    }
                    None => (None, None),
                }
            }
            (Some("virtual"), cmd) => {
                if cmd.is_some() {
                    let loc = key_loc(entries, "cmd").unwrap_or(&def.loc).clone();
                    self.error(
                        &loc,
                        &join(path, "cmd"),
                        "a virtual action runs no command: it sends options.send to the stream options.to; remove 'cmd'",
                    );
                }
                if let Some(loc) = key_loc(entries, "timeout") {
                    self.error(
                        loc,
                        &join(path, "timeout"),
                        "timeout is for commands, and a virtual action runs none",
                    );
                }
                match self.virtual_options(key, entries, path, filter) {
                    Some((send, to)) => (Some(vec![send]), Some(to)),
                    None => (None, None),
                }
            }
            (_, Some(node)) => (
                self.action_cmd(node, &join(path, "cmd"), filter.names, patterns),
                None,
            ),
            (Some(_), None) => {
                self.error(&key.loc, path, "an action needs a 'cmd'");
                (None, None)
            }
            (None, None) => (None, None),
        };
        let after = get(entries, "after").and_then(|n| self.duration(n, &join(path, "after")));
        let timeout = get(entries, "timeout").and_then(|n| {
            let timeout = self.duration(n, &join(path, "timeout"))?;
            if timeout == 0 {
                self.error(
                    &n.loc,
                    &join(path, "timeout"),
                    "timeout must be more than 0 (leave it out for the default, 1 minute)",
                );
                return None;
            }
            Some(timeout)
        });
        let flag = |this: &mut Self, key: &str| {
            get(entries, key)
                .and_then(|n| this.bool(n, &join(path, key)))
                .unwrap_or(false)
        };
        let onexit = flag(self, "onexit");
        let oneshot = flag(self, "oneshot");
        let v4 = flag(self, "ipv4only");
        let v6 = flag(self, "ipv6only");

        if onexit && get(entries, "after").is_none() {
            let loc = key_loc(entries, "onexit").unwrap_or(&def.loc).clone();
            self.error(
                &loc,
                &join(path, "onexit"),
                "onexit only applies to delayed actions: set 'after' too, or remove onexit",
            );
        }
        if v4 && v6 {
            let loc = key_loc(entries, "ipv6only").unwrap_or(&def.loc).clone();
            self.error(
                &loc,
                &join(path, "ipv6only"),
                "ipv4only and ipv6only exclude each other; an action with both would never run",
            );
        }
        for (set, flag) in [(v4, "ipv4only"), (v6, "ipv6only")] {
            if set && ip_slot.is_none() && regexes_valid {
                let loc = key_loc(entries, flag).unwrap_or(&def.loc).clone();
                self.error(
                    &loc,
                    &join(path, flag),
                    format!(
                        "{flag} needs a pattern of type ip, ipv4 or ipv6 in the filter's regexes"
                    ),
                );
            }
        }
        if self.error_count() > errors_before {
            return None;
        }
        let ip_only = match (v4, v6) {
            (true, _) => Some(IpOnly::V4),
            (_, true) => Some(IpOnly::V6),
            _ => None,
        };
        Some((
            ActionSpec {
                name: name.to_owned(),
                after,
                onexit,
                oneshot,
                ip_only,
            },
            Action {
                name: name.to_owned(),
                cmd: cmd?,
                send_to,
                timeout_ms: timeout,
                set_action,
            },
        ))
    }

    /// Compiles an action's argv. `<name>` of a pattern the filter captures
    /// becomes a hole; `<name>` of a pattern the filter does not capture is
    /// an error (it could never be filled); other `<...>` text is literal.
    /// `filter_patterns` is `None` when the filter's regexes are invalid:
    /// what they capture is unknown, so nothing is blamed on the action.
    fn action_cmd(
        &mut self,
        node: &Node,
        path: &str,
        filter_patterns: Option<&[String]>,
        patterns: &Patterns,
    ) -> Option<Vec<ArgTemplate>> {
        let argv = self.command(node, path)?;
        let Value::Seq(items) = &node.value else {
            return None;
        };
        let mut out = Vec::with_capacity(argv.len());
        let mut ok = true;
        for (i, (arg, item)) in argv.iter().zip(items).enumerate() {
            match self.template(
                arg,
                &item.loc,
                &format!("{path}[{i}]"),
                filter_patterns,
                patterns,
            ) {
                Some(template) => out.push(template),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Compiles one argv element, or a virtual action's line: `<name>` of
    /// a pattern the filter captures becomes a hole; `<name>` of a pattern
    /// the filter does not capture is an error (it could never be filled);
    /// other `<...>` text is literal. `filter_patterns` is `None` when the
    /// filter's regexes are invalid: then nothing is blamed on the text.
    fn template(
        &mut self,
        text: &str,
        loc: &Loc,
        path: &str,
        filter_patterns: Option<&[String]>,
        patterns: &Patterns,
    ) -> Option<ArgTemplate> {
        let regexes_valid = filter_patterns.is_some();
        let filter_patterns = filter_patterns.unwrap_or(&[]);
        let mut parts = Vec::new();
        let mut last = 0;
        let mut ok = true;
        for (range, word) in placeholders(text) {
            if let Some(slot) = filter_patterns.iter().position(|p| p == word) {
                if range.start > last {
                    parts.push(ArgPart::Text(text[last..range.start].to_owned()));
                }
                parts.push(ArgPart::Value(slot));
                last = range.end;
            } else if word == "country" && patterns.get(word).is_none() {
                // `<country>`: the country of the filter's first ip value.
                let Some(part) = self.country_part(loc, path, filter_patterns, patterns) else {
                    ok &= !regexes_valid || self.geoip.is_none();
                    continue;
                };
                if range.start > last {
                    parts.push(ArgPart::Text(text[last..range.start].to_owned()));
                }
                parts.push(part);
                last = range.end;
            } else if regexes_valid && patterns.get(word).is_some() {
                let captured: BTreeSet<&str> = filter_patterns.iter().map(String::as_str).collect();
                self.error(
                    loc,
                    path,
                    format!(
                        "<{word}> is not captured by this filter's regexes (they capture: {})",
                        if captured.is_empty() {
                            "nothing".to_owned()
                        } else {
                            captured
                                .into_iter()
                                .map(|n| format!("<{n}>"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                );
                ok = false;
            }
        }
        if last < text.len() || parts.is_empty() {
            parts.push(ArgPart::Text(text[last..].to_owned()));
        }
        ok.then_some(ArgTemplate { parts })
    }

    /// A virtual action's `options`: the line it sends (a template like an
    /// argv element) and the index of the virtual stream it goes to.
    fn virtual_options(
        &mut self,
        key: &Key,
        entries: &Entries,
        path: &str,
        filter: &FilterContext<'_>,
    ) -> Option<(ArgTemplate, usize)> {
        let opath = join(path, "options");
        let Some(node) = get(entries, "options") else {
            self.error(
                &key.loc,
                path,
                "a virtual action needs options: {send: '<line, with <patterns>>', to: '<virtual stream>'}",
            );
            return None;
        };
        let options = self.map(
            node,
            &opath,
            "a map with 'send' (the line) and 'to' (a virtual stream)",
        )?;
        self.known_keys(options, &opath, VIRTUAL_OPTION_KEYS);
        let send = match get(options, "send") {
            Some(n) => {
                let spath = join(&opath, "send");
                let text = self.string(n, &spath);
                text.and_then(|text| {
                    self.template(&text, &n.loc, &spath, filter.names, filter.patterns)
                })
            }
            None => {
                self.error(
                    &node.loc,
                    &opath,
                    "a virtual action needs 'send': the line to send, with <patterns>",
                );
                None
            }
        };
        let to = match get(options, "to") {
            Some(n) => {
                let tpath = join(&opath, "to");
                let name = self.string(n, &tpath);
                name.and_then(|name| self.virtual_target(&name, &n.loc, &tpath))
            }
            None => {
                self.error(
                    &node.loc,
                    &opath,
                    "a virtual action needs 'to': the virtual stream its line goes to",
                );
                None
            }
        };
        Some((send?, to?))
    }

    /// The index of the virtual stream `name`, recorded as a destination of
    /// the current stream.
    fn virtual_target(&mut self, name: &str, loc: &Loc, path: &str) -> Option<usize> {
        let virtual_streams: Vec<&str> = self
            .stream_kinds
            .iter()
            .filter(|(_, v)| *v)
            .map(|(n, _)| n.as_str())
            .collect();
        let listed = if virtual_streams.is_empty() {
            "none".to_owned()
        } else {
            virtual_streams.join(", ")
        };
        let found = self.stream_kinds.iter().position(|(n, _)| n == name);
        let message = match found {
            None => format!("'{name}' names no stream (virtual streams: {listed})"),
            Some(to) if !self.stream_kinds[to].1 => format!(
                "stream '{name}' is not of type virtual: a virtual action only sends to a virtual stream (virtual streams: {listed})"
            ),
            Some(to) => {
                if let Some(from) = self
                    .stream_kinds
                    .iter()
                    .position(|(n, _)| *n == self.current_stream)
                {
                    self.virtual_edges.push(VirtualEdge {
                        from,
                        to,
                        loc: loc.clone(),
                        path: path.to_owned(),
                    });
                }
                return Some(to);
            }
        };
        self.error(loc, path, message);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{json, yaml};
    use proptest::prelude::*;
    use std::path::Path;

    const VALID: &str = include_str!("../../tests/fixtures/valid/example.yml");

    fn load_yaml(text: &str) -> Result<Config, ConfigErrors> {
        let node = yaml::parse_yaml(Path::new("c.yml"), text)?;
        compile(&node)
    }

    #[test]
    fn the_valid_fixture_compiles() {
        let config = load_yaml(VALID).expect("valid");
        assert!(!config.streams.is_empty());
    }

    /// A one-filter configuration around `regex` (YAML single-quoted).
    fn with_regex(patterns: &str, regex: &str) -> String {
        format!(
            "patterns:\n  ip:\n    type: ip\n{patterns}streams:\n  s:\n    cmd: [cat]\n    filters:\n      f:\n        regex: ['{regex}']\n"
        )
    }

    #[test]
    fn a_filter_has_at_most_64_actions() {
        let actions = |n: usize| {
            let mut text = with_regex("", "from <ip>");
            text.push_str("        actions:\n");
            for i in 0..n {
                text.push_str(&format!("          a{i}:\n            cmd: [echo]\n"));
            }
            text
        };
        assert!(load_yaml(&actions(64)).is_ok());
        let err = load_yaml(&actions(65)).expect_err("too many").to_string();
        assert!(
            err.contains("c.yml:11:11: streams.s.filters.f.actions: a filter has at most 64 actions, found 65"),
            "{err}"
        );
    }

    fn warnings(text: &str) -> Vec<String> {
        let config = load_yaml(text).expect("valid");
        config.warnings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn top_level_definitions_are_accepted_and_left_out_of_the_document() {
        let text = format!(
            "definitions:\n  - &tail ['tail', '-F']\n  - {{any: [thing]}}\n{}",
            with_regex("", "from <ip>")
        );
        let config = load_yaml(&text).expect("valid");
        assert!(config.document.get("definitions").is_none());
        assert!(config.document.get("streams").is_some());
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let err = load_yaml(&format!("definition: 1\n{}", with_regex("", "<ip>")))
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("c.yml:1:1"), "{err}");
        assert!(err.contains("did you mean 'definitions'"), "{err}");
    }

    #[test]
    fn go_style_angle_escapes_around_a_placeholder_warn() {
        let found = warnings(&with_regex("", r"from \<<ip>\> port"));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("c.yml:9:17"), "{found:?}");
        assert!(
            found[0].contains("streams.s.filters.f.regex[0]"),
            "{found:?}"
        );
        assert!(found[0].contains("start-of-word"), "{found:?}");
        assert!(found[0].contains("`<<ip>`"), "{found:?}");
        assert!(found[1].contains("end-of-word"), "{found:?}");
        // Why: Rust's regex reads `\<` as an assertion, so the written '<'
        // of a line can never be matched.
        let re = regex::Regex::new(r"from \<[0-9.]+\>").expect("compiles");
        assert!(!re.is_match("from <203.0.113.7>"));
        assert!(re.is_match("from 203.0.113.7"));
        // An escaped backslash before '<', a literal '<', and `\<` not next
        // to a placeholder are not the legacy escape.
        for regex in [r"a\\<<ip>", "<<ip>>", r"\<word\> <ip>"] {
            assert!(warnings(&with_regex("", regex)).is_empty(), "{regex}");
        }
    }

    #[test]
    fn regexes_that_can_never_match_warn() {
        for (regex, why) in [
            (r"<ip>$ port", "`$`"),
            (r"x^<ip>", "`^`"),
            (r"<ip>[^\s\S]", "empty class"),
            (r"(<ip>$ a|^b <ip>$ c)", "`$`"),
        ] {
            let found = warnings(&with_regex("", regex));
            assert_eq!(found.len(), 1, "{regex}: {found:?}");
            assert!(found[0].contains("can never match"), "{found:?}");
            assert!(found[0].contains(why), "{regex}: {found:?}");
        }
        for regex in [
            r"^from <ip>$",
            r"(^|x)<ip>",
            r"<ip>($|,)",
            r"<ip>(?m:$\n)?",
            r"<ip> [^\s\S]*",
        ] {
            assert!(warnings(&with_regex("", regex)).is_empty(), "{regex}");
        }
        let found = warnings(&with_regex("  user:\n    regex: 'a$b'\n", "<ip>"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("patterns.user.regex"), "{found:?}");
    }

    #[test]
    fn regexes_stop_compiling_once_their_time_is_up() {
        let text = format!(
            "{}      g:\n        regex: ['by <ip>']\n",
            with_regex("  user:\n    regex: '\\w+'\n", "from <ip>")
        );
        let root = yaml::parse_yaml(Path::new("c.yml"), &text).expect("yaml");
        let past = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        let mut check = Checker {
            regex_deadline: Some(past),
            ..Checker::default()
        };
        check.config(&root);
        let errors: Vec<String> = check.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("c.yml:5:12: patterns.user.regex"),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("took more than 5 s (0 regexes"),
            "{errors:?}"
        );
        // With time left, the same configuration is valid.
        compile(&root).expect("valid");
    }

    #[test]
    fn a_flood_of_errors_is_cut_short_and_counted() {
        let keys: String = (0..500).map(|i| format!("k{i}: 1\n")).collect();
        let errors = load_yaml(&format!("{keys}{}", with_regex("", "<ip>")))
            .expect_err("unknown keys")
            .0;
        assert_eq!(errors.len(), MAX_REPORTED + 1);
        assert!(errors[0].to_string().contains("c.yml:1:1: k0: unknown key"));
        let last = errors[MAX_REPORTED].to_string();
        assert_eq!(last, "... and 300 more errors, not shown");
    }

    /// A recidive setup: `tell` is the virtual action of stream ssh (its
    /// body at 12 spaces), `recidive_body` the virtual stream's (4 spaces).
    fn recidive(tell: &str, recidive_body: &str) -> String {
        format!(
            "patterns:\n  ip:\n    type: ip\n  user:\n    regex: '\\w+'\nstreams:\n  ssh:\n    cmd: [cat]\n    filters:\n      f:\n        regex: ['from <ip>']\n        actions:\n          tell:\n{tell}  recidive:\n{recidive_body}"
        )
    }

    const TELL: &str =
        "            type: virtual\n            options: {send: 'ban <ip>', to: recidive}\n";
    const RECIDIVE: &str = "    type: virtual\n    filters:\n      r:\n        regex: ['^ban <ip>$']\n        actions:\n          long:\n            cmd: [longban, '<ip>']\n";

    fn rejected(text: &str) -> String {
        load_yaml(text).expect_err("invalid").to_string()
    }

    /// A jail banning through a set: `ban` and `unban` are the action
    /// bodies (12 spaces), `pattern` the ip pattern's body (4 spaces).
    fn set_jail(pattern: &str, ban: &str, unban: &str) -> String {
        format!(
            "patterns:\n  ip:\n{pattern}  user:\n    regex: '\\w+'\nstreams:\n  ssh:\n    cmd: [cat]\n    filters:\n      f:\n        regex: ['<user> from <ip>']\n        actions:\n          ban:\n{ban}          unban:\n{unban}"
        )
    }

    const IP_PATTERN: &str = "    type: ip\n";
    const NFT_BAN: &str =
        "            type: nftables\n            options: {set: bans, action: add}\n";
    const NFT_UNBAN: &str = "            type: nftables\n            options: {set: bans, action: delete}\n            after: 1h\n";

    #[test]
    fn nftables_actions_share_a_set_per_family_with_the_unban_as_timeout() {
        use crate::config::{SetBackend, SetOp};
        let config = load_yaml(&set_jail(IP_PATTERN, NFT_BAN, NFT_UNBAN)).expect("valid");
        let sets = &config.firewall.sets;
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].backend, SetBackend::Nftables);
        let v4 = sets[0].v4.as_ref().expect("v4");
        let v6 = sets[0].v6.as_ref().expect("v6");
        assert_eq!((v4.name.as_str(), v4.interval), ("bansv4", false));
        assert_eq!((v6.name.as_str(), v6.interval), ("bansv6", false));
        assert_eq!(config.firewall.table, "reaction");
        let filter = &config.streams[0].filters[0];
        let actions = &filter.actions;
        let ban = actions[0].set_action.as_ref().expect("a set action");
        assert_eq!(ban.op, SetOp::Add);
        assert_eq!(
            filter.pattern_names[ban.slot], "ip",
            "the ip pattern by default"
        );
        // The unban's hour and a tenth of it.
        assert_eq!(ban.kernel_timeout_ms, Some(3_960_000));
        assert_eq!(ban.kernel_margin_ms, 360_000);
        assert_eq!(ban.v4.as_deref(), Some("bansv4"));
        let unban = actions[1].set_action.as_ref().expect("a set action");
        assert_eq!((unban.op, unban.kernel_timeout_ms), (SetOp::Delete, None));
        let mut values = vec![String::new(); 2];
        values[ban.slot] = "192.0.2.1".into();
        assert_eq!(
            actions[0].render(&values),
            ["nftables", "add", "bans", "192.0.2.1"]
        );
    }

    #[test]
    fn a_masked_pattern_makes_an_interval_set_and_ipset_caps_timeouts() {
        let masked = "    type: ip\n    ipv4mask: 24\n";
        let config = load_yaml(&set_jail(masked, NFT_BAN, NFT_UNBAN)).expect("valid");
        let set = &config.firewall.sets[0];
        assert!(set.v4.as_ref().expect("v4").interval);
        assert!(!set.v6.as_ref().expect("v6").interval);

        let ban = "            type: ipset\n            options: {set: bans, action: add, chains: [INPUT]}\n";
        let unban = "            type: ipset\n            options: {set: bans, action: del}\n            after: 30d\n";
        let config = load_yaml(&set_jail(IP_PATTERN, ban, unban)).expect("valid");
        let set = &config.firewall.sets[0];
        assert_eq!(set.chains, ["INPUT"]);
        assert_eq!(set.target, "DROP");
        let action = config.streams[0].filters[0].actions[0]
            .set_action
            .as_ref()
            .expect("a set action");
        assert_eq!(action.kernel_timeout_ms, Some(2_147_483_000));
        assert_eq!(action.hold_ms, Some(30 * 86_400_000 + 600_000));
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.to_string().contains("capped")),
            "{:?}",
            config.warnings
        );
        // One family keeps the set's own name.
        let v4 = "    type: ipv4\n";
        let config = load_yaml(&set_jail(v4, ban, unban)).expect("valid");
        let set = &config.firewall.sets[0];
        assert_eq!(set.v4.as_ref().map(|k| k.name.as_str()), Some("bans"));
        assert!(set.v6.is_none());
    }

    #[test]
    fn set_actions_are_checked() {
        for (ban, expected) in [
            (
                "            type: nftables\n",
                "c.yml:13:11: streams.ssh.filters.f.actions.ban: a nftables action needs options",
            ),
            (
                "            type: nftables\n            options: {action: add}\n",
                "actions.ban.options: a nftables action needs 'set'",
            ),
            (
                "            type: nftables\n            options: {set: 'b;flush ruleset'}\n",
                "options.set: set name \"b;flush ruleset\" is not accepted",
            ),
            (
                "            type: ipset\n            options: {set: a_very_long_ipset_name_of_40_chars}\n",
                "is too long: ipset sets take at most 29 characters",
            ),
            (
                "            type: nftables\n            options: {set: bans, pattern: user}\n",
                "options.pattern: pattern 'user' is not of type ip, ipv4 or ipv6",
            ),
            (
                "            type: nftables\n            options: {set: bans, pattern: host}\n",
                "the filter's regexes capture no pattern 'host' (they capture: ",
            ),
            (
                "            type: nftables\n            cmd: [nft]\n            options: {set: bans}\n",
                "actions.ban.cmd: a nftables action runs no command",
            ),
            (
                "            type: ipset\n            options: {set: bans, action: delete}\n",
                "unknown set action 'delete' (accepted: add, del)",
            ),
            (
                "            type: ipset\n            options: {set: bans, target: DROP, version: 5}\n",
                "options.version: unknown ip version (accepted: 4, 6, 46)",
            ),
            (
                "            type: ipset\n            options: {set: bans, target: REJECT}\n",
                "set 'bans' gets \"DROP\" here but \"REJECT\" at streams.ssh.filters.f.actions.ban.options.target",
            ),
            (
                "            type: ipset\n            options: {set: bans, version: 4}\n",
                "set 'bans' is for IP version 4 only, but an action feeds it addresses of the other version",
            ),
        ] {
            let unban = if expected.contains("gets") {
                "            type: ipset\n            options: {set: bans, action: del, target: DROP}\n            after: 1h\n"
            } else {
                "            cmd: [unban, '<ip>']\n            after: 1h\n"
            };
            let err = rejected(&set_jail(IP_PATTERN, ban, unban));
            assert!(err.contains(expected), "{expected}\nnot in:\n{err}");
        }
        // No ip pattern in the filter, and none named.
        let text =
            set_jail(IP_PATTERN, NFT_BAN, NFT_UNBAN).replace("<user> from <ip>", "<user> failed");
        let err = rejected(&text);
        assert!(err.contains("a set action needs an address"), "{err}");
    }

    #[test]
    fn the_firewall_section_is_checked() {
        let base = set_jail(IP_PATTERN, NFT_BAN, NFT_UNBAN);
        let config = load_yaml(&format!(
            "firewall:\n  reconcile: 1m\n  remove_on_stop: true\n  table: rebuff\n{base}"
        ))
        .expect("valid");
        assert_eq!(config.firewall.reconcile_ms, Some(60_000));
        assert!(config.firewall.remove_on_stop);
        assert_eq!(config.firewall.table, "rebuff");
        let config = load_yaml(&format!("firewall:\n  reconcile: null\n{base}")).expect("valid");
        assert_eq!(config.firewall.reconcile_ms, None);
        for (section, expected) in [
            (
                "firewall:\n  reconcile: 0s\n",
                "firewall.reconcile: reconcile must be longer than 0",
            ),
            (
                "firewall:\n  table: 'a b'\n",
                "firewall.table: table name \"a b\" is not accepted",
            ),
            ("firewall:\n  tabel: x\n", "firewall.tabel: unknown key"),
        ] {
            let err = rejected(&format!("{section}{base}"));
            assert!(err.contains(expected), "{expected}\nnot in:\n{err}");
        }
    }

    #[test]
    fn a_virtual_action_sends_a_template_to_a_virtual_stream() {
        let config = load_yaml(&recidive(TELL, RECIDIVE)).expect("valid");
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let (ssh, recidive) = (&config.streams[0], &config.streams[1]);
        assert!(!ssh.is_virtual && recidive.is_virtual);
        assert!(recidive.cmd.is_empty());
        let tell = &ssh.filters[0].actions[0];
        assert_eq!(tell.send_to, Some(1));
        assert_eq!(tell.render(&["192.0.2.1".to_owned()]), ["ban 192.0.2.1"]);
        assert_eq!(config.document["streams"]["recidive"]["type"], "virtual");
    }

    #[test]
    fn virtual_action_options_are_checked() {
        for (tell, expected) in [
            (
                "            type: virtual\n            options: {send: 'ban <ip>', to: nowhere}\n",
                "c.yml:15:45: streams.ssh.filters.f.actions.tell.options.to: 'nowhere' names no stream (virtual streams: recidive)",
            ),
            (
                "            type: virtual\n            options: {send: 'ban <ip>', to: ssh}\n",
                "streams.ssh.filters.f.actions.tell.options.to: stream 'ssh' is not of type virtual",
            ),
            (
                "            type: virtual\n            options: {send: 'ban <user>', to: recidive}\n",
                "c.yml:15:29: streams.ssh.filters.f.actions.tell.options.send: <user> is not captured",
            ),
            (
                "            type: virtual\n            options: {to: recidive}\n",
                "streams.ssh.filters.f.actions.tell.options: a virtual action needs 'send'",
            ),
            (
                "            type: virtual\n",
                "c.yml:13:11: streams.ssh.filters.f.actions.tell: a virtual action needs options",
            ),
            (
                "            type: virtual\n            cmd: [x]\n            options: {send: 'ban <ip>', to: recidive}\n",
                "c.yml:15:13: streams.ssh.filters.f.actions.tell.cmd: a virtual action runs no command",
            ),
            (
                "            type: virtual\n            options: {send: 'ban <ip>', to: recidive, too: 1}\n",
                "options.too: unknown key 'too'",
            ),
            (
                "            type: nftables\n            options: {set: bans, action: remove}\n",
                "c.yml:15:42: streams.ssh.filters.f.actions.tell.options.action: unknown set action 'remove' (accepted: add, delete)",
            ),
            (
                "            type: cluster_send\n            options: {}\n",
                "would come from a reaction plugin",
            ),
        ] {
            let err = rejected(&recidive(tell, RECIDIVE));
            assert!(err.contains(expected), "{expected}\nnot in:\n{err}");
        }
    }

    #[test]
    fn a_virtual_stream_has_no_cmd_and_no_options() {
        let err = rejected(&recidive(TELL, &format!("    cmd: [cat]\n{RECIDIVE}")));
        assert!(
            err.contains("c.yml:17:5: streams.recidive.cmd: a virtual stream runs no command"),
            "{err}"
        );
        let err = rejected(&recidive(
            TELL,
            &format!("    options: {{a: 1}}\n{RECIDIVE}"),
        ));
        assert!(
            err.contains("streams.recidive.options: a virtual stream takes no options"),
            "{err}"
        );
        load_yaml(&recidive(TELL, &format!("    options: {{}}\n{RECIDIVE}"))).expect("valid");
    }

    #[test]
    fn a_virtual_stream_nothing_sends_to_warns() {
        let plain = "            cmd: [tell, '<ip>']\n";
        let found = warnings(&recidive(plain, RECIDIVE));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains(
                "c.yml:15:3: streams.recidive: no virtual action sends to this virtual stream"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn a_configuration_of_virtual_streams_only_is_rejected() {
        let only_virtual = "patterns:\n  ip:\n    type: ip\nstreams:\n  recidive:\n    type: virtual\n    filters:\n      r:\n        regex: ['^ban <ip>$']\n        actions:\n          long:\n            cmd: [longban, '<ip>']\n";
        let err = rejected(only_virtual);
        assert!(
            err.contains("c.yml:5:3: streams: every stream is virtual, so none reads a line"),
            "{err}"
        );
    }

    #[test]
    fn a_cycle_of_virtual_streams_is_rejected() {
        // recidive sends to itself.
        let to_itself = RECIDIVE.replace(
            "          long:\n            cmd: [longban, '<ip>']\n",
            "          again:\n            type: virtual\n            options: {send: 'ban <ip>', to: recidive}\n",
        );
        let err = rejected(&recidive(TELL, &to_itself));
        assert!(
            err.contains("streams.recidive.filters.r.actions.again.options.to: virtual streams form a cycle: recidive -> recidive"),
            "{err}"
        );
        // recidive -> other -> recidive, reached from ssh.
        let through_other = format!(
            "{}  other:\n    type: virtual\n    filters:\n      o:\n        regex: ['^again <ip>$']\n        actions:\n          back:\n            type: virtual\n            options: {{send: 'ban <ip>', to: recidive}}\n",
            RECIDIVE.replace(
                "          long:\n            cmd: [longban, '<ip>']\n",
                "          on:\n            type: virtual\n            options: {send: 'again <ip>', to: other}\n",
            )
        );
        let err = rejected(&recidive(TELL, &through_other));
        assert!(
            err.contains("virtual streams form a cycle: recidive -> other -> recidive"),
            "{err}"
        );
        assert_eq!(err.matches("form a cycle").count(), 1, "{err}");
        // A chain without a cycle is fine.
        let chain = through_other.replace(
            "            options: {send: 'ban <ip>', to: recidive}\n",
            "            cmd: [longban, '<ip>']\n",
        );
        let chain = chain.replacen(
            "          back:\n            type: virtual\n",
            "          back:\n",
            1,
        );
        load_yaml(&recidive(TELL, &chain)).expect("valid");
    }

    #[test]
    fn built_in_plugins_are_accepted_with_one_warning_and_others_refused() {
        let text = format!(
            "plugins:\n  virtual:\n    path: /usr/lib/reaction/reaction-plugin-virtual\n    systemd: true\n  nftables:\n    path: /x\n    check_root: false\n    systemd_options: {{a: [b]}}\n{}",
            recidive(TELL, RECIDIVE)
        );
        let found = warnings(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "c.yml:2:3: plugins: ignored: virtual, nftables are built into rebuff"
            ),
            "{found:?}"
        );
        let err = rejected(&format!(
            "plugins:\n  cluster:\n    path: /x\n{}",
            recidive(TELL, RECIDIVE)
        ));
        assert!(
            err.contains("c.yml:2:3: plugins.cluster: plugin 'cluster' is not built into rebuff, and rebuff does not run reaction plugins (built in: nftables, ipset, virtual)"),
            "{err}"
        );
        let err = rejected(&format!(
            "plugins:\n  ipset:\n    pth: /x\n{}",
            recidive(TELL, RECIDIVE)
        ));
        assert!(
            err.contains("plugins.ipset.pth: unknown key 'pth'"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_yaml_never_panics(text in ".{0,300}") {
            let _ = load_yaml(&text);
        }

        #[test]
        fn arbitrary_json_never_panics(text in "[\\[\\]{}\":,0-9a-z<> \\n.-]{0,200}") {
            if let Ok(node) = json::parse_json(Path::new("c.json"), &text) {
                let _ = compile(&node);
            }
        }

        /// Cutting or replacing any span of a real configuration gives a
        /// config or errors, never a panic, and every error has a location.
        #[test]
        fn mutated_real_configs_give_located_errors(
            start in 0usize..VALID.len(),
            len in 0usize..40,
            replacement in "[ -~\\n]{0,8}",
        ) {
            let start = (0..=start).rev().find(|&i| VALID.is_char_boundary(i)).unwrap_or(0);
            let end = (start + len).min(VALID.len());
            let end = (end..=VALID.len()).find(|&i| VALID.is_char_boundary(i)).unwrap_or(VALID.len());
            let text = format!("{}{}{}", &VALID[..start], replacement, &VALID[end..]);
            if let Err(errors) = load_yaml(&text) {
                prop_assert!(!errors.0.is_empty());
                for error in &errors.0 {
                    prop_assert!(error.loc.is_some(), "{}", error);
                }
            }
        }
    }
}
