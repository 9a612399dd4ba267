//! The seed's rulesets: `[ruleset.NAME]` pre-matches and their
//! `[ruleset.NAME.RULE]` rules, read from an INI file and run on a line.

use std::collections::HashMap;
use std::sync::Arc;

use regex::{CaptureLocations, Regex, RegexSet};

use super::addr::{self, Addr};
use super::ini::{self, Ini};
use super::log::{Level, Logger};

/// A variable of the line's context, by index.
type Var = usize;

/// A piece of a `string.Template`.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    /// `$name` or `${name}`: the variable, and the text kept when unset.
    Var(Var, String),
}

#[derive(Debug)]
struct Rule {
    name: String,
    target: Option<Vec<Piece>>,
    /// The target's source text, for messages.
    target_text: Option<String>,
    pattern: String,
    re: Regex,
    /// Capture group index and variable of every named group.
    groups: Vec<(usize, Var)>,
    defaults: Vec<(Var, Arc<str>)>,
    score: Option<i64>,
    negated: bool,
    enabled: bool,
    last: bool,
    ignore_case: bool,
}

/// A ruleset: a pre-match and its enabled rules.
#[derive(Debug)]
struct Ruleset {
    pre: Rule,
    rules: Vec<Rule>,
    /// The rules that search the line itself, in one set: one scan tells
    /// which of them match (their outcome does not depend on the context).
    line_set: Option<RegexSet>,
    /// Per rule, its index in `line_set`.
    in_set: Vec<Option<usize>>,
}

impl Ruleset {
    fn new(pre: Rule) -> Self {
        Ruleset {
            pre,
            rules: Vec::new(),
            line_set: None,
            in_set: Vec::new(),
        }
    }

    /// Builds [`Ruleset::line_set`] once the rules are known.
    fn build_set(&mut self) {
        let mut patterns = Vec::new();
        self.in_set = self
            .rules
            .iter()
            .map(|rule| {
                rule.target.is_none().then(|| {
                    patterns.push(rule.re.as_str().to_string());
                    patterns.len() - 1
                })
            })
            .collect();
        // Each pattern compiled alone; a set too big for the regex crate's
        // limits only loses the shortcut.
        match RegexSet::new(&patterns) {
            Ok(set) if patterns.len() > 1 => self.line_set = Some(set),
            _ => self.in_set = vec![None; self.rules.len()],
        }
    }
}

/// The value of a variable for the current line.
#[derive(Debug, Clone, Default)]
enum Value {
    #[default]
    Unset,
    /// A span of the line.
    Line(usize, usize),
    Owned(String),
    Shared(Arc<str>),
}

/// Per-line scratch state, reused across lines.
#[derive(Debug)]
pub struct Context {
    values: Vec<Value>,
    set: Vec<Var>,
    locations: Vec<CaptureLocations>,
    target: String,
    /// Which rules of `line_set` match the current line.
    hits: Vec<bool>,
}

/// What a ruleset found on a line (when its pre-match matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub address: Option<Addr>,
    pub score: Option<i64>,
    /// The ruleset is marked `last`: stop the line here.
    pub last: bool,
}

/// What a line produced, in order: log lines and findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Log(Level, String, String),
    Found(Found),
}

/// All enabled rulesets of a file, in file order.
#[derive(Debug)]
pub struct Rules {
    rulesets: Vec<Ruleset>,
    vars: Vec<String>,
    address: Option<Var>,
    /// Accept IPv6 addresses (`--ipset6`).
    ipv6: bool,
}

struct VarTable {
    names: Vec<String>,
    index: HashMap<String, Var>,
}

impl VarTable {
    fn var(&mut self, name: &str) -> Var {
        if let Some(&v) = self.index.get(name) {
            return v;
        }
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), self.names.len() - 1);
        self.names.len() - 1
    }
}

/// `string.Template`'s pattern: `$$`, `$name`, `${name}` (ASCII names).
fn parse_template(
    text: &str,
    vars: &mut VarTable,
    pending: &mut Vec<(usize, String)>,
) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let bytes = text.as_bytes();
    let ident = |s: &[u8]| -> usize {
        if s.first()
            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        {
            s.iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count()
        } else {
            0
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            let next = text[i..].find('$').map_or(text.len(), |n| i + n);
            lit.push_str(&text[i..next]);
            i = next;
            continue;
        }
        let rest = &bytes[i + 1..];
        if rest.first() == Some(&b'$') {
            lit.push('$');
            i += 2;
        } else if let n @ 1.. = ident(rest) {
            let name = &text[i + 1..i + 1 + n];
            push_var(
                &mut pieces,
                &mut lit,
                name,
                &text[i..i + 1 + n],
                vars,
                pending,
            );
            i += 1 + n;
        } else if rest.first() == Some(&b'{')
            && let n @ 1.. = ident(&rest[1..])
            && rest.get(1 + n) == Some(&b'}')
        {
            let name = &text[i + 2..i + 2 + n];
            push_var(
                &mut pieces,
                &mut lit,
                name,
                &text[i..i + 3 + n],
                vars,
                pending,
            );
            i += 3 + n;
        } else {
            lit.push('$');
            i += 1;
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Text(lit));
    }
    pieces
}

fn push_var(
    pieces: &mut Vec<Piece>,
    lit: &mut String,
    name: &str,
    raw: &str,
    vars: &mut VarTable,
    _pending: &mut Vec<(usize, String)>,
) {
    if !lit.is_empty() {
        pieces.push(Piece::Text(std::mem::take(lit)));
    }
    pieces.push(Piece::Var(vars.var(name), raw.to_string()));
}

/// Why a ruleset file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError(pub String);

impl std::fmt::Display for RulesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn get_str(ini: &Ini, section: &str, key: &str) -> Result<Option<(String, usize)>, RulesError> {
    ini.get(section, key)
        .map_err(|e| RulesError(format!("[{section}] {key}: {e}")))
}

fn get_bool(ini: &Ini, section: &str, key: &str, fallback: bool) -> Result<bool, RulesError> {
    match get_str(ini, section, key)? {
        None => Ok(fallback),
        Some((v, line)) => ini::parse_bool(&v).ok_or_else(|| {
            RulesError(format!(
                "line {line}: [{section}] {key}: not a boolean: {v:?}"
            ))
        }),
    }
}

fn parse_rule(
    ini: &Ini,
    section: &str,
    name: &str,
    vars: &mut VarTable,
) -> Result<Rule, RulesError> {
    let target = get_str(ini, section, "target")?.map(|(v, _)| v);
    let (pattern, pattern_line) = get_str(ini, section, "match")?.unwrap_or_default();
    let ignore_case = get_bool(ini, section, "ignore_case", false)?;
    let negated = get_bool(ini, section, "negated", false)?;
    let score = match get_str(ini, section, "score")? {
        None => None,
        Some((v, line)) => Some(ini::parse_int(&v).ok_or_else(|| {
            RulesError(format!(
                "line {line}: [{section}] score: invalid literal for int() with base 10: {v:?}"
            ))
        })?),
    };
    let enabled = get_bool(ini, section, "enabled", true)?;
    let last = get_bool(ini, section, "last", false)?;
    let defaults_text = get_str(ini, section, "defaults")?
        .map(|(v, _)| v)
        .unwrap_or_default();
    // A dict: a later key overwrites an earlier one in place.
    let mut defaults: Vec<(String, Arc<str>)> = Vec::new();
    for line in ini::py_splitlines(&defaults_text) {
        if let Some((k, v)) = line.split_once('=') {
            let k = ini::py_strip(k).to_string();
            let v: Arc<str> = Arc::from(ini::py_strip(v));
            match defaults.iter_mut().find(|(key, _)| *key == k) {
                Some(entry) => entry.1 = v,
                None => defaults.push((k, v)),
            }
        }
    }
    let translated = super::pyre::translate(&pattern, ignore_case).map_err(|e| {
        RulesError(format!(
            "line {pattern_line}: [{section}] match: invalid pattern {pattern:?}: {e}"
        ))
    })?;
    let re = Regex::new(&translated).map_err(|e| {
        RulesError(format!(
            "line {pattern_line}: [{section}] match: invalid pattern {pattern:?}: {e}"
        ))
    })?;
    let groups = re
        .capture_names()
        .enumerate()
        .filter_map(|(i, n)| n.map(|n| (i, vars.var(n))))
        .collect();
    let mut pending = Vec::new();
    let target_pieces = target
        .as_deref()
        .map(|t| parse_template(t, vars, &mut pending));
    Ok(Rule {
        name: name.to_string(),
        target: target_pieces,
        target_text: target,
        pattern,
        re,
        groups,
        defaults: defaults
            .into_iter()
            .map(|(k, v)| (vars.var(&k), v))
            .collect(),
        score,
        negated,
        enabled,
        last,
        ignore_case,
    })
}

impl Rules {
    /// Reads the rulesets of an INI file's text, logging the seed's
    /// validation warnings.
    pub fn from_ini(text: &str, ipv6: bool, log: &Logger) -> Result<Rules, RulesError> {
        let ini = Ini::parse(text).map_err(|e| RulesError(e.to_string()))?;
        let mut vars = VarTable {
            names: Vec::new(),
            index: HashMap::new(),
        };
        let mut all: Vec<(String, Ruleset)> = Vec::new();
        for section in ini.sections() {
            let parts: Vec<&str> = section.split('.').collect();
            let known = |name: &str| all.iter().position(|(n, _)| n == name);
            if parts.len() == 2 && parts[0] == "ruleset" && known(parts[1]).is_none() {
                let pre = parse_rule(&ini, section, parts[1], &mut vars)?;
                all.push((parts[1].to_string(), Ruleset::new(pre)));
            } else if parts.len() == 3
                && parts[0] == "ruleset"
                && let Some(i) = known(parts[1])
            {
                let rule = parse_rule(&ini, section, parts[2], &mut vars)?;
                if rule.enabled {
                    all[i].1.rules.push(rule);
                }
            } else {
                return Err(RulesError(format!("Unrecognized section '{section}'")));
            }
        }
        let mut rulesets: Vec<Ruleset> = all
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.pre.enabled)
            .collect();
        for ruleset in &mut rulesets {
            ruleset.build_set();
        }
        for ruleset in &rulesets {
            ruleset.validate(&vars, log);
        }
        let address = vars.index.get("address").copied();
        let count = vars.names.len();
        let _ = count;
        Ok(Rules {
            rulesets,
            vars: vars.names,
            address,
            ipv6,
        })
    }

    pub fn len(&self) -> usize {
        self.rulesets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rulesets.is_empty()
    }

    /// Fresh scratch state for [`Rules::run`].
    pub fn context(&self) -> Context {
        let mut locations = Vec::new();
        for ruleset in &self.rulesets {
            locations.push(ruleset.pre.re.capture_locations());
            for rule in &ruleset.rules {
                locations.push(rule.re.capture_locations());
            }
        }
        Context {
            values: vec![Value::Unset; self.vars.len()],
            set: Vec::new(),
            hits: vec![
                false;
                self.rulesets
                    .iter()
                    .map(|r| r.rules.len())
                    .max()
                    .unwrap_or(0)
            ],
            locations,
            target: String::new(),
        }
    }

    /// Runs every ruleset on `line` (with its newline) as the seed's main
    /// loop does, calling `found` for each ruleset whose pre-match matched.
    pub fn run(&self, line: &str, cx: &mut Context, log: &Logger, out: &mut Vec<Event>) {
        let mut loc = 0;
        for ruleset in &self.rulesets {
            let first_loc = loc;
            loc += 1 + ruleset.rules.len();
            let result = self.run_ruleset(ruleset, line, cx, first_loc, log, out);
            if let Some(result) = result {
                out.push(Event::Found(result));
                if result.last {
                    break;
                }
            }
        }
    }

    fn run_ruleset(
        &self,
        ruleset: &Ruleset,
        line: &str,
        cx: &mut Context,
        first_loc: usize,
        log: &Logger,
        out: &mut Vec<Event>,
    ) -> Option<Found> {
        for &v in &cx.set {
            cx.values[v] = Value::Unset;
        }
        cx.set.clear();
        if !self.run_rule(&ruleset.pre, line, cx, first_loc, None) {
            return None;
        }
        let mut score = ruleset.pre.score;
        if let Some(set) = &ruleset.line_set {
            cx.hits.iter_mut().for_each(|h| *h = false);
            set.matches_read_at(&mut cx.hits[..set.len()], line, 0);
        }
        for (i, rule) in ruleset.rules.iter().enumerate() {
            let known = ruleset.in_set.get(i).copied().flatten().map(|k| cx.hits[k]);
            if self.run_rule(rule, line, cx, first_loc + 1 + i, known) {
                score = match (score, rule.score) {
                    (None, s) => s,
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    (Some(a), None) => Some(a),
                };
                if rule.last {
                    break;
                }
            }
        }
        let last = ruleset.pre.last;
        let Some(score) = score else {
            return Some(Found {
                address: None,
                score: None,
                last,
            });
        };
        let text = self.address.and_then(|v| value_str(&cx.values[v], line));
        let address = match text {
            None => {
                if log.enabled(Level::Warning) {
                    out.push(Event::Log(
                        Level::Warning,
                        format!("Ruleset.{}", ruleset.pre.name),
                        "Cannot parse 'address' group for match: KeyError('address')".into(),
                    ));
                }
                None
            }
            Some(text) => {
                let parsed = addr::parse_v4(text).map(Addr::V4).or_else(|| {
                    self.ipv6
                        .then(|| addr::parse_v6(text).map(Addr::V6))
                        .flatten()
                });
                if parsed.is_none() && log.enabled(Level::Warning) {
                    out.push(Event::Log(
                        Level::Warning,
                        format!("Ruleset.{}", ruleset.pre.name),
                        format!(
                            "Cannot parse 'address' group for match: AddressValueError({text:?})"
                        ),
                    ));
                }
                parsed
            }
        };
        Some(Found {
            address,
            score: Some(score),
            last,
        })
    }

    /// `Match.match`: the target, the defaults, the search, the captures.
    /// `known`: whether the line matches, when the ruleset's set told.
    fn run_rule(
        &self,
        rule: &Rule,
        line: &str,
        cx: &mut Context,
        loc: usize,
        known: Option<bool>,
    ) -> bool {
        let on_line = rule.target.is_none();
        if let Some(pieces) = &rule.target {
            let mut target = std::mem::take(&mut cx.target);
            target.clear();
            for piece in pieces {
                match piece {
                    Piece::Text(t) => target.push_str(t),
                    Piece::Var(v, raw) => match value_str(&cx.values[*v], line) {
                        Some(s) => target.push_str(s),
                        None => target.push_str(raw),
                    },
                }
            }
            cx.target = target;
        }
        for (v, value) in &rule.defaults {
            if matches!(cx.values[*v], Value::Unset) {
                cx.set.push(*v);
            }
            cx.values[*v] = Value::Shared(value.clone());
        }
        let text: &str = if on_line { line } else { &cx.target };
        let locations = &mut cx.locations[loc];
        let matched = if known == Some(false) {
            false
        } else if rule.groups.is_empty() {
            known.unwrap_or_else(|| rule.re.is_match(text))
        } else {
            (known == Some(true) || rule.re.is_match(text))
                && rule.re.captures_read(locations, text).is_some()
        };
        if matched {
            for &(group, v) in &rule.groups {
                if let Some((s, e)) = cx.locations[loc].get(group) {
                    if matches!(cx.values[v], Value::Unset) {
                        cx.set.push(v);
                    }
                    cx.values[v] = if on_line {
                        Value::Line(s, e)
                    } else {
                        Value::Owned(cx.target[s..e].to_string())
                    };
                }
            }
            !rule.negated
        } else {
            rule.negated
        }
    }
}

fn value_str<'a>(value: &'a Value, line: &'a str) -> Option<&'a str> {
    match value {
        Value::Unset => None,
        Value::Line(s, e) => Some(&line[*s..*e]),
        Value::Owned(s) => Some(s),
        Value::Shared(s) => Some(s),
    }
}

impl Rule {
    fn group_names<'a>(&'a self, vars: &'a [String]) -> impl Iterator<Item = &'a str> + 'a {
        self.groups
            .iter()
            .map(|(_, v)| vars[*v].as_str())
            .chain(self.defaults.iter().map(|(v, _)| vars[*v].as_str()))
    }

    fn describe(&self) -> String {
        let flags = format!(
            "{}{}{}",
            if self.enabled { "" } else { "X" },
            if self.ignore_case { "I" } else { "" },
            if self.last { "." } else { "" }
        );
        format!(
            "{}: {} {}~ '{}' -> {}{}",
            self.name,
            self.target_text.as_deref().unwrap_or("line"),
            if self.negated { "!" } else { "=" },
            self.pattern,
            self.score.map_or("None".to_string(), |s| s.to_string()),
            if flags.is_empty() {
                String::new()
            } else {
                format!(" [{flags}]")
            },
        )
    }
}

impl Ruleset {
    /// The seed's `Ruleset.validate` warnings.
    fn validate(&self, vars: &VarTable, log: &Logger) {
        let who = format!("Ruleset.{}", self.pre.name);
        log.log(Level::Debug, &who, &self.pre.describe());
        for rule in &self.rules {
            log.log(Level::Debug, &who, &format!("-> {}", rule.describe()));
        }
        let all = || std::iter::once(&self.pre).chain(self.rules.iter());
        if let Some(target) = &self.pre.target_text {
            log.log(
                Level::Warning,
                &who,
                &format!("Initial match on '{target}'"),
            );
        } else if !all().any(|r| r.score.is_some()) {
            log.log(Level::Warning, &who, "No match assigns a score");
        } else if !all().any(|r| r.group_names(&vars.names).any(|n| n == "address")) {
            log.log(Level::Warning, &who, "No match provides an 'address' group");
        } else if self.pre.negated && self.pre.group_names(&vars.names).next().is_some() {
            log.log(Level::Warning, &who, "Needless groups in negated match");
        }
    }
}
