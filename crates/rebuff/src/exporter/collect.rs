//! The exporter's counts: events in, exposition out.
//!
//! [`Collector`] owns everything a scrape serves: the "since the previous
//! scrape" tables of matches, actions, commands and stream events, the last
//! match of each filter (which labels the next action, as the exporter
//! guesses), the `hold` window, the position reached in the log, and
//! rebuff's own counters. Sources hand it lines ([`Collector::event`],
//! through `Shared::line`); a scrape renders and empties it
//! ([`Collector::render_deltas`], [`render`]); the state file saves and
//! restores it (`state.rs`). One mutex guards it; a line holds it for a
//! table update, a scrape for the render of the emptied families.

use std::collections::HashMap;

/// Maps keyed by names, hashed fast (the keys come from reaction's
/// configuration, not from attackers).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use minijinja::Environment;

use super::config::{ExporterConfig, LabelRule};
use super::parse::{Event, StreamKind, Unparsed};
use super::reaction::{Patterns, Pending, filter_key};
use crate::metrics::encode::{Encoder, Kind};
use crate::metrics::http::Format;

/// The exporter's version, which `reaction_exporter_build_info` reports:
/// rebuff serves the families of that version.
pub const EXPORTER_VERSION: &str = "1.0.1";

/// Distinct start/stop command or stream event series kept between
/// scrapes; more are dropped and counted.
const MAX_SMALL_SERIES: usize = 10_000;

/// Where the source has read up to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    None,
    File { dev: u64, ino: u64, offset: u64 },
    Journal { cursor: String },
}

/// A bounded table of series in insertion order; each series is its label
/// values (a layout fixed by the family) and a count. A series' values are
/// kept as one allocation (length-prefixed), so a table of 100,000
/// addresses stays near 10 MB.
#[derive(Debug, Default)]
pub struct Table {
    hasher: foldhash::fast::FixedState,
    index: HashTable<u32>,
    pub entries: Vec<(Box<[u8]>, u64)>,
    pub dropped: u64,
    scratch: Vec<u8>,
}

/// The values of a series key, in order.
pub fn key_parts(key: &[u8]) -> Vec<&str> {
    let mut out = Vec::with_capacity(6);
    let mut rest = key;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let Some(part) = tail.get(..len) else {
            break;
        };
        out.push(std::str::from_utf8(part).unwrap_or(""));
        rest = &tail[len..];
    }
    out
}

impl Table {
    /// Adds `n` to the series `parts`, creating it while under `max`.
    pub fn add(&mut self, parts: &[&str], n: u64, max: usize) {
        self.scratch.clear();
        for part in parts {
            self.scratch
                .extend_from_slice(&(part.len() as u32).to_le_bytes());
            self.scratch.extend_from_slice(part.as_bytes());
        }
        let key = &self.scratch[..];
        let hash = self.hasher.hash_one(key);
        let entries = &self.entries;
        if let Some(&at) = self.index.find(hash, |&i| &*entries[i as usize].0 == key) {
            self.entries[at as usize].1 += n;
            return;
        }
        if self.entries.len() >= max {
            self.dropped += n;
            return;
        }
        let at = self.entries.len() as u32;
        self.entries.push((Box::from(key), n));
        let (hasher, entries) = (&self.hasher, &self.entries);
        self.index
            .insert_unique(hash, at, |&i| hasher.hash_one(&*entries[i as usize].0));
    }

    pub fn take(&mut self) -> Vec<(Box<[u8]>, u64)> {
        self.index = HashTable::new();
        std::mem::take(&mut self.entries)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How one filter's values become labels, built from `test-config` and the
/// label rules.
#[derive(Debug)]
struct FilterRules {
    /// Sorted pattern names.
    names: Arc<[String]>,
    /// The names whose label is kept (not dropped).
    kept: Arc<[String]>,
    /// Every rule is `Raw`: the values are the labels.
    raw: bool,
    /// Per name: its rule, with the template's name in the environment.
    rules: Vec<Rule>,
}

#[derive(Debug)]
enum Rule {
    Raw,
    Drop,
    Template(String),
}

/// What a line asks of the caller once the lock is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// A start command: re-read reaction's configuration.
    ReloadPatterns,
}

/// The last match of a filter: its kept label names and values.
#[derive(Debug, Clone)]
pub struct LastMatch {
    pub names: Arc<[String]>,
    pub values: Vec<String>,
}

/// Everything counted; see the module docs.
#[derive(Debug)]
pub struct Collector {
    config: Arc<ExporterConfig>,
    env: Environment<'static>,
    filters: Map<String, FilterRules>,
    key: String,
    /// `[stream, filter, name1, value1, …]`.
    pub matches: Table,
    /// `[stream, filter, action, name1, value1, …]`.
    pub actions: Table,
    /// `(state, command, status, code)` with counts.
    pub commands: Vec<([String; 4], u64)>,
    pub streams: Vec<((String, StreamKind), u64)>,
    /// By `"stream\0filter"`.
    pub last_match: Map<String, LastMatch>,
    /// Milliseconds since the epoch, in the log's time.
    pub last_log: i64,
    pub wait_until: i64,
    pub last_export: i64,
    pub position: Position,
    /// rebuff's own counters (cumulative).
    pub lines: u64,
    pub unparsed: [u64; 7],
    pub held: u64,
    pub small_dropped: u64,
    pub template_errors: u64,
    pub pending_skipped: u64,
    /// rebuff's cumulative counters of what the log says, under the
    /// daemon's family names so that the dashboards' panels built on them
    /// work here too: matches `[stream, filter]`, actions `[stream,
    /// filter, action, result]`, stream events `[stream, type]`, start and
    /// stop commands by kind and result.
    pub native_matches: Table,
    pub native: Table,
    pub native_streams: Table,
    pub native_commands: [[u64; 2]; 2],
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Collector {
    pub fn new(config: Arc<ExporterConfig>, patterns: &Patterns) -> Self {
        let now = now_ms();
        let mut collector = Collector {
            config,
            env: crate::metrics::labels::environment(),
            filters: Map::default(),
            key: String::new(),
            matches: Table::default(),
            actions: Table::default(),
            commands: Vec::new(),
            streams: Vec::new(),
            last_match: Map::default(),
            last_log: now,
            wait_until: now,
            last_export: now,
            position: Position::None,
            lines: 0,
            unparsed: [0; 7],
            held: 0,
            small_dropped: 0,
            template_errors: 0,
            pending_skipped: 0,
            native_matches: Table::default(),
            native: Table::default(),
            native_streams: Table::default(),
            native_commands: [[0; 2]; 2],
        };
        collector.set_patterns(patterns);
        collector
    }

    /// Installs reaction's filters (at start, and after a start command).
    pub fn set_patterns(&mut self, patterns: &Patterns) {
        let mut env = crate::metrics::labels::environment();
        let mut filters = Map::default();
        for (key, names) in patterns {
            let (stream, filter) = key.split_once('\0').unwrap_or((key, ""));
            let rules = self.config.rules(stream, filter);
            let rules = names
                .iter()
                .enumerate()
                .map(|(slot, name)| match rules.get(name) {
                    None | Some(LabelRule::Raw) => Rule::Raw,
                    Some(LabelRule::Drop) => Rule::Drop,
                    Some(LabelRule::Template(source)) => {
                        let id = format!("{key}\0{slot}");
                        match env.add_template_owned(id.clone(), source.clone()) {
                            Ok(()) => Rule::Template(id),
                            Err(_) => Rule::Drop,
                        }
                    }
                })
                .collect::<Vec<Rule>>();
            let kept: Vec<String> = names
                .iter()
                .zip(&rules)
                .filter(|(_, r)| !matches!(r, Rule::Drop))
                .map(|(n, _)| n.clone())
                .collect();
            filters.insert(
                key.clone(),
                FilterRules {
                    names: names.clone(),
                    kept: kept.into(),
                    raw: rules.iter().all(|r| matches!(r, Rule::Raw)),
                    rules,
                },
            );
        }
        self.env = env;
        self.filters = filters;
    }

    /// Counts an unparsed line (too long, or unreadable before parsing).
    pub fn unparsed(&mut self, why: Unparsed, time: i64) {
        self.lines += 1;
        self.last_log = time;
        self.unparsed[why as usize] += 1;
    }

    /// One parsed line (or its parse error), read at `time` (ms).
    pub fn event(&mut self, event: Result<Event<'_>, Unparsed>, time: i64) -> After {
        self.lines += 1;
        self.last_log = time;
        let event = match event {
            Ok(event) => event,
            Err(why) => {
                self.unparsed[why as usize] += 1;
                return After::Nothing;
            }
        };
        let export = self.config.export;
        match event {
            Event::Exit => After::Nothing,
            Event::Action {
                stream,
                filter,
                action,
                ok,
            } => {
                let result = if ok { "ok" } else { "failed" };
                self.native
                    .add(&[stream, filter, action, result], 1, MAX_SMALL_SERIES);
                if time < self.wait_until {
                    self.held += 1;
                    return After::Nothing;
                }
                if export.actions.on {
                    self.count_action(stream, filter, action);
                }
                After::Nothing
            }
            Event::Match {
                stream,
                filter,
                values,
            } => {
                if export.matches.on {
                    self.count_match(stream, filter, values);
                }
                After::Nothing
            }
            Event::Command {
                start,
                program,
                ok,
                code,
            } => {
                if start {
                    self.wait_until = time.saturating_add(self.config.hold.saturating_mul(1000));
                }
                self.native_commands[usize::from(!start)][usize::from(!ok)] += 1;
                if export.commands {
                    let key = [
                        if start { "start" } else { "stop" }.to_owned(),
                        program,
                        if ok { "True" } else { "False" }.to_owned(),
                        code,
                    ];
                    let len = self.commands.len();
                    match self.commands.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, n)) => *n += 1,
                        None if len < MAX_SMALL_SERIES => {
                            self.commands.push((key, 1));
                        }
                        None => self.small_dropped += 1,
                    }
                }
                if start {
                    After::ReloadPatterns
                } else {
                    After::Nothing
                }
            }
            Event::Stream { stream, kind } => {
                self.native_streams
                    .add(&[stream, kind.name()], 1, MAX_SMALL_SERIES);
                if export.streams {
                    let len = self.streams.len();
                    match self
                        .streams
                        .iter_mut()
                        .find(|((s, k), _)| s == stream && *k == kind)
                    {
                        Some((_, n)) => *n += 1,
                        None if len < MAX_SMALL_SERIES => {
                            self.streams.push(((stream.to_owned(), kind), 1));
                        }
                        None => self.small_dropped += 1,
                    }
                }
                After::Nothing
            }
        }
    }

    /// The kept (name, value) labels of a filter's values, rendered; `None`
    /// when the values do not fit the filter (or it is unknown).
    fn labels(&mut self, stream: &str, filter: &str, values: Vec<String>) -> Option<LastMatch> {
        filter_key(&mut self.key, stream, filter);
        let rules = self.filters.get(&self.key)?;
        if rules.names.len() != values.len() {
            return None;
        }
        if rules.raw {
            return Some(LastMatch {
                names: rules.names.clone(),
                values,
            });
        }
        let mut names = Vec::with_capacity(values.len());
        let mut out = Vec::with_capacity(values.len());
        let mut failed = false;
        for ((name, rule), value) in rules.names.iter().zip(&rules.rules).zip(values) {
            let rendered = match rule {
                Rule::Raw => value,
                Rule::Drop => continue,
                Rule::Template(id) => {
                    let result = self.env.get_template(id).and_then(|t| {
                        t.render(std::collections::BTreeMap::from([(name.clone(), value)]))
                    });
                    match result {
                        Ok(text) => text,
                        Err(e) => {
                            self.template_errors += 1;
                            failed = true;
                            if self.template_errors <= 10 {
                                tracing::warn!(pattern = %name, error = %e, "a label template failed; the label is left out");
                            }
                            continue;
                        }
                    }
                }
            };
            names.push(name.clone());
            out.push(rendered);
        }
        Some(LastMatch {
            names: if failed {
                names.into()
            } else {
                rules.kept.clone()
            },
            values: out,
        })
    }

    fn count_match(&mut self, stream: &str, filter: &str, values: Vec<String>) {
        let Some(labels) = self.labels(stream, filter, values) else {
            self.unparsed[Unparsed::Pattern as usize] += 1;
            return;
        };
        self.native_matches
            .add(&[stream, filter], 1, MAX_SMALL_SERIES);
        let max = self.config.max_series;
        {
            let mut parts: Vec<&str> = Vec::with_capacity(2 + 2 * labels.names.len());
            parts.push(stream);
            parts.push(filter);
            if self.config.export.matches.extra {
                for (name, value) in labels.names.iter().zip(&labels.values) {
                    parts.push(name);
                    parts.push(value);
                }
            }
            self.matches.add(&parts, 1, max);
        }
        filter_key(&mut self.key, stream, filter);
        match self.last_match.get_mut(self.key.as_str()) {
            Some(last) => *last = labels,
            None => {
                self.last_match.insert(self.key.clone(), labels);
            }
        }
    }

    fn count_action(&mut self, stream: &str, filter: &str, action: &str) {
        let max = self.config.max_series;
        let mut parts: Vec<&str> = vec![stream, filter, action];
        filter_key(&mut self.key, stream, filter);
        if self.config.export.actions.extra
            && let Some(last) = self.last_match.get(self.key.as_str())
        {
            for (name, value) in last.names.iter().zip(&last.values) {
                parts.push(name);
                parts.push(value);
            }
        }
        self.actions.add(&parts, 1, max);
    }

    /// The pending series of a `show` answer: `[stream, filter, action,
    /// name1, value1, …]` and counts; entries that do not fit a filter are
    /// counted in the second value.
    pub fn pending_series(&mut self, pending: &[Pending]) -> (Vec<(Vec<String>, u64)>, u64) {
        let mut out = Vec::with_capacity(pending.len());
        let mut skipped = 0;
        let extra = self.config.export.pending.extra;
        for p in pending {
            let Some(labels) = self.labels(&p.stream, &p.filter, p.values.clone()) else {
                skipped += 1;
                continue;
            };
            let mut parts = vec![p.stream.clone(), p.filter.clone(), p.action.clone()];
            if extra {
                for (name, value) in labels.names.iter().zip(labels.values) {
                    parts.push(name.clone());
                    parts.push(value);
                }
            }
            out.push((parts, p.count));
        }
        (out, skipped)
    }

    /// Writes the exporter's families and empties the "since the previous
    /// scrape" ones.
    pub fn render_exporter(&mut self, e: &mut Encoder, scrape: &Scrape) {
        render_head(e, scrape);
        self.render_deltas(e);
        self.render_pending(e, scrape);
    }

    /// The "since the previous scrape" families, emptied.
    pub fn render_deltas(&mut self, e: &mut Encoder) {
        let commands = std::mem::take(&mut self.commands);
        if !commands.is_empty() {
            e.family(
                "reaction_commands_count",
                Kind::Gauge,
                "Number of commands launched by reaction, labelled with moment, success status and exit code.",
            );
            for ([state, command, status, code], n) in &commands {
                sample(
                    e,
                    "reaction_commands_count",
                    &[
                        ("state", state.as_str()),
                        ("command", command.as_str()),
                        ("status", status.as_str()),
                        ("code", code.as_str()),
                    ],
                    *n,
                );
            }
        }
        let streams = std::mem::take(&mut self.streams);
        if !streams.is_empty() {
            e.family(
                "reaction_stream_event_count",
                Kind::Gauge,
                "Number of stream events, labelled by stream name and type of event.",
            );
            for ((stream, kind), n) in &streams {
                sample(
                    e,
                    "reaction_stream_event_count",
                    &[("stream", stream.as_str()), ("type", kind.name())],
                    *n,
                );
            }
        }
        let matches = self.matches.take();
        if !matches.is_empty() {
            e.family(
                "reaction_match_count",
                Kind::Gauge,
                "Number of matches, labelled by stream and filter names, with pattern=match extra labels.",
            );
            series_all(
                e,
                "reaction_match_count",
                &["stream", "filter"],
                matches.iter().map(|(key, n)| (key_parts(key), *n)),
            );
        }
        let actions = self.actions.take();
        if !actions.is_empty() {
            e.family(
                "reaction_action_count",
                Kind::Gauge,
                "Number of actions, labelled by stream, filter and action names, with pattern=match extra labels.",
            );
            series_all(
                e,
                "reaction_action_count",
                &["stream", "filter", "action"],
                actions.iter().map(|(key, n)| (key_parts(key), *n)),
            );
        }
        self.last_match.clear();
    }

    /// `reaction_pending_count`, from the scrape's `show` answer.
    pub fn render_pending(&self, e: &mut Encoder, scrape: &Scrape) {
        if self.config.export.pending.on {
            e.family(
                "reaction_pending_count",
                Kind::Gauge,
                "Number of pending actions, labelled by stream, filter and action names, with pattern=match extra labels.",
            );
            series_all(
                e,
                "reaction_pending_count",
                &["stream", "filter", "action"],
                scrape
                    .pending
                    .iter()
                    .map(|(parts, n)| (parts.iter().map(String::as_str).collect(), *n)),
            );
        }
    }

    /// Writes rebuff's own families (cumulative counters and gauges).
    pub fn render_own(&self, e: &mut Encoder, scrape: &Scrape) {
        e.family(
            "rebuff_build_info",
            Kind::Info,
            "rebuff's version (serving as reaction-metrics-exporter).",
        );
        e.sample(
            "rebuff_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        e.family(
            "rebuff_matches_total",
            Kind::Counter,
            "Match lines of reaction's log per filter (those that fit the filter's patterns).",
        );
        for (key, n) in &self.native_matches.entries {
            let p = key_parts(key);
            if let [stream, filter] = p[..] {
                e.sample(
                    "rebuff_matches_total",
                    &[("stream", stream), ("filter", filter)],
                    *n,
                );
            }
        }
        e.family(
            "rebuff_actions_total",
            Kind::Counter,
            "Action lines of reaction's log (`run`), by result: ok (INFO) or failed (ERROR).",
        );
        for (key, n) in &self.native.entries {
            let p = key_parts(key);
            if let [stream, filter, action, result] = p[..] {
                let labels = [
                    ("stream", stream),
                    ("filter", filter),
                    ("action", action),
                    ("result", result),
                ];
                e.sample("rebuff_actions_total", &labels, *n);
            }
        }
        e.family(
            "rebuff_stream_events_total",
            Kind::Counter,
            "Stream starts, exits, exec and read failures, stop timeouts, from reaction's log.",
        );
        for (key, n) in &self.native_streams.entries {
            let p = key_parts(key);
            if let [stream, kind] = p[..] {
                e.sample(
                    "rebuff_stream_events_total",
                    &[("stream", stream), ("type", kind)],
                    *n,
                );
            }
        }
        e.family(
            "rebuff_commands_total",
            Kind::Counter,
            "Start and stop commands of reaction's log, by result.",
        );
        for (k, kind) in ["start", "stop"].iter().enumerate() {
            for (r, result) in ["ok", "failed"].iter().enumerate() {
                e.sample(
                    "rebuff_commands_total",
                    &[("kind", kind), ("result", result)],
                    self.native_commands[k][r],
                );
            }
        }
        e.family(
            "rebuff_exporter_lines_total",
            Kind::Counter,
            "Lines (or journal entries) read from reaction's log.",
        );
        e.sample("rebuff_exporter_lines_total", &[], self.lines);
        e.family(
            "rebuff_exporter_unparsed_lines_total",
            Kind::Counter,
            "Lines skipped, by reason (too_long, invalid_utf8, level, unmatched, values, command, pattern).",
        );
        for why in Unparsed::ALL {
            e.sample(
                "rebuff_exporter_unparsed_lines_total",
                &[("reason", why.name())],
                self.unparsed[why as usize],
            );
        }
        e.family(
            "rebuff_exporter_held_actions_total",
            Kind::Counter,
            "Action lines not counted because they came within `hold` seconds of a start command.",
        );
        e.sample("rebuff_exporter_held_actions_total", &[], self.held);
        e.family(
            "rebuff_exporter_series_dropped_total",
            Kind::Counter,
            "Counts left out because their family held metrics.max_series series.",
        );
        e.sample(
            "rebuff_exporter_series_dropped_total",
            &[("family", "reaction_match_count")],
            self.matches.dropped,
        );
        e.sample(
            "rebuff_exporter_series_dropped_total",
            &[("family", "reaction_action_count")],
            self.actions.dropped,
        );
        e.sample(
            "rebuff_exporter_series_dropped_total",
            &[("family", "other")],
            self.small_dropped
                + self.native.dropped
                + self.native_matches.dropped
                + self.native_streams.dropped,
        );
        e.family(
            "rebuff_exporter_label_template_errors_total",
            Kind::Counter,
            "Label templates that failed to render; the label was left out.",
        );
        e.sample(
            "rebuff_exporter_label_template_errors_total",
            &[],
            self.template_errors,
        );
        e.family(
            "rebuff_exporter_pending_skipped_total",
            Kind::Counter,
            "Entries of `reaction show` that fit no filter of reaction's configuration.",
        );
        e.sample(
            "rebuff_exporter_pending_skipped_total",
            &[],
            self.pending_skipped,
        );
        e.family(
            "rebuff_exporter_reaction_calls_total",
            Kind::Counter,
            "Calls of the `reaction` program, by command and result (ok, failed, timeout).",
        );
        for (c, command) in super::reaction::COMMANDS.iter().enumerate() {
            for (r, result) in super::reaction::RESULTS.iter().enumerate() {
                e.sample(
                    "rebuff_exporter_reaction_calls_total",
                    &[("command", command), ("result", result)],
                    scrape.calls[c][r],
                );
            }
        }
        if let Some(age) = scrape.show_age {
            e.family(
                "rebuff_exporter_show_age_seconds",
                Kind::Gauge,
                "Age of the `reaction show` answer the pending family comes from (older than 0 when the last call failed or timed out).",
            );
            e.sample_float("rebuff_exporter_show_age_seconds", &[], age);
        }
    }
}

/// `reaction_exporter_build_info` and `reaction_status_info`.
pub fn render_head(e: &mut Encoder, scrape: &Scrape) {
    e.family(
        "reaction_exporter_build_info",
        Kind::Gauge,
        "A metric with a constant '1' value labelled by version of reaction_metrics_exporter.",
    );
    sample(
        e,
        "reaction_exporter_build_info",
        &[("version", EXPORTER_VERSION)],
        1,
    );
    e.family(
        "reaction_status_info",
        Kind::Gauge,
        "A metric with a constant '1' value labelled by version of reaction and its status.",
    );
    sample(
        e,
        "reaction_status_info",
        &[
            ("version", scrape.version.as_str()),
            ("status", if scrape.up { "1" } else { "0" }),
        ],
        1,
    );
}

/// What a scrape learnt from reaction before rendering.
#[derive(Debug, Default)]
pub struct Scrape {
    pub version: String,
    pub up: bool,
    pub pending: Vec<(Vec<String>, u64)>,
    pub show_age: Option<f64>,
    /// `reaction` calls so far, by command and result.
    pub calls: [[u64; 3]; 3],
}

/// A count as prometheus-client 0.22 prints a float (`floatToGoString`):
/// `3.0`, and Go's exponent form from 10^6 on (`1.234567e+06`).
pub fn go_float(n: u64) -> String {
    if n < 1_000_000 {
        let mut out = String::with_capacity(10);
        out.push_str(itoa::Buffer::new().format(n));
        out.push_str(".0");
        return out;
    }
    let value = n as f64;
    // Python's repr: shortest round-trip, `.0` on whole numbers below
    // 1e16, exponent form from there.
    let repr = if value < 1e16 {
        format!("{value:.1}")
    } else {
        let text = format!("{value:e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let exponent: i32 = exponent.parse().unwrap_or(0);
        format!("{mantissa}e+{exponent:02}")
    };
    let Some(dot) = repr.find('.') else {
        return repr;
    };
    if value > 0.0 && dot > 6 && !repr.contains('e') {
        let digits = format!("{}{}", &repr[1..dot], &repr[dot + 1..]);
        let mantissa = format!("{}.{}", &repr[..1], digits);
        let mantissa = mantissa.trim_end_matches(['0', '.']);
        return format!("{mantissa}e+0{}", dot - 1);
    }
    repr
}

/// A label name as prometheus-client writes it: bare when it fits the
/// legacy character set, quoted otherwise.
fn label_name(name: &str) -> std::borrow::Cow<'_, str> {
    let legacy = name
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
        && !name.is_empty()
        && !name.starts_with("__");
    if legacy {
        std::borrow::Cow::Borrowed(name)
    } else {
        let escaped = name
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('"', "\\\"");
        std::borrow::Cow::Owned(format!("\"{escaped}\""))
    }
}

/// One sample: labels as a dict (a later name replaces an earlier one),
/// written sorted by name, value as a Python float.
fn sample(e: &mut Encoder, family: &str, labels: &[(&str, &str)], n: u64) {
    let mut buf = Vec::with_capacity(labels.len());
    buf.extend_from_slice(labels);
    sample_in(e, family, &mut buf, n);
}

/// [`sample`] on a reusable vector (emptied here).
fn sample_in<'a>(e: &mut Encoder, family: &str, labels: &mut Vec<(&'a str, &'a str)>, n: u64) {
    // A later duplicate name wins, as in a Python dict built from pairs.
    let mut i = 0;
    while i < labels.len() {
        if let Some(later) = labels[i + 1..].iter().position(|l| l.0 == labels[i].0) {
            labels[i].1 = labels[i + 1 + later].1;
            labels.remove(i + 1 + later);
        } else {
            i += 1;
        }
    }
    labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut digits = itoa::Buffer::new();
    let float;
    let value = if n < 1_000_000 {
        let text = digits.format(n);
        float = [text, ".0"].concat();
        float.as_str()
    } else {
        float = go_float(n);
        float.as_str()
    };
    if labels
        .iter()
        .all(|(k, _)| matches!(label_name(k), std::borrow::Cow::Borrowed(_)))
    {
        e.sample_text(family, labels, value);
    } else {
        let names: Vec<std::borrow::Cow<'_, str>> =
            labels.iter().map(|(k, _)| label_name(k)).collect();
        let quoted: Vec<(&str, &str)> = names
            .iter()
            .zip(labels.iter())
            .map(|(k, (_, v))| (&**k, *v))
            .collect();
        e.sample_text(family, &quoted, value);
    }
    labels.clear();
}

/// A family's series: `fixed` label names for the first values of each,
/// then name/value pairs.
fn series_all<'a>(
    e: &mut Encoder,
    family: &str,
    fixed: &[&'static str],
    all: impl Iterator<Item = (Vec<&'a str>, u64)>,
) {
    let mut labels: Vec<(&'a str, &'a str)> = Vec::with_capacity(8);
    for (parts, n) in all {
        for (name, value) in fixed.iter().zip(&parts) {
            labels.push((name, value));
        }
        for pair in parts.get(fixed.len()..).unwrap_or(&[]).chunks_exact(2) {
            labels.push((pair[0], pair[1]));
        }
        sample_in(e, family, &mut labels, n);
    }
}

/// The whole exposition of one scrape.
pub fn render(collector: &mut Collector, format: Format, scrape: &Scrape) -> Vec<u8> {
    let series = collector.matches.len() + collector.actions.len() + scrape.pending.len();
    let mut e = Encoder::new(format, 16 * 1024 + series * 96);
    collector.render_exporter(&mut e, scrape);
    collector.render_own(&mut e, scrape);
    if collector.config.export.internals {
        render_process(&mut e);
    }
    e.finish()
}

/// The process families prometheus-client adds with `internals: true`
/// (rebuff has no Python runtime to describe, so no `python_*` ones).
pub fn render_process(e: &mut Encoder) {
    let p = crate::metrics::process::read();
    let gauges: [(&str, &str, f64); 4] = [
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_bytes as f64,
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_bytes as f64,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds as f64,
        ),
    ];
    for (name, help, value) in gauges {
        e.family(name, Kind::Gauge, help);
        e.sample_float(name, &[], value);
    }
    e.family(
        "process_cpu_seconds_total",
        Kind::Counter,
        "Total user and system CPU time spent in seconds.",
    );
    e.sample_float("process_cpu_seconds_total", &[], p.cpu_seconds);
    if let Some(max) = p.max_fds {
        e.family(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
        );
        e.sample_float("process_max_fds", &[], max as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::config::{self, LabelRule};
    use super::super::parse;

    fn collector(edit: impl FnOnce(&mut ExporterConfig)) -> Collector {
        let mut config = config::from_defaults();
        edit(&mut config);
        let mut patterns = Patterns::new();
        patterns.insert(
            "ssh\0two".into(),
            vec!["ip".to_owned(), "user".to_owned()].into(),
        );
        patterns.insert("ssh\0f".into(), vec!["ip".to_owned()].into());
        Collector::new(Arc::new(config), &patterns)
    }

    fn feed(c: &mut Collector, lines: &[&str], time: i64) {
        for line in lines {
            c.event(parse::file_line(line.as_bytes()), time);
        }
    }

    fn exposition(c: &mut Collector) -> String {
        let scrape = Scrape {
            version: "2.2.0".into(),
            up: true,
            ..Scrape::default()
        };
        String::from_utf8(render(c, Format::Prometheus, &scrape)).expect("utf-8")
    }

    #[test]
    fn actions_within_hold_of_a_start_command_are_not_counted() {
        let mut c = collector(|_| {});
        feed(&mut c, &[r#"INFO start command: run ["true"]"#], 1_000);
        feed(&mut c, &[r#"INFO ssh.f.ban: run ["x"]"#], 60_999);
        feed(&mut c, &[r#"INFO ssh.f.ban: run ["x"]"#], 61_000);
        let text = exposition(&mut c);
        assert!(
            text.contains(
                "reaction_action_count{action=\"ban\",filter=\"f\",stream=\"ssh\"} 1.0\n"
            ),
            "{text}"
        );
        assert_eq!(c.held, 1);
        // rebuff's own counter has every action line, held or not.
        assert!(
            text.contains(
                "rebuff_actions_total{stream=\"ssh\",filter=\"f\",action=\"ban\",result=\"ok\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("rebuff_commands_total{kind=\"start\",result=\"ok\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn a_dropped_pattern_leaves_out_its_own_label_and_templates_render() {
        let mut c = collector(|config| {
            config.all.insert("ip".into(), LabelRule::Drop);
            config.all.insert(
                "user".into(),
                LabelRule::Template("{{ user | upper }}".into()),
            );
        });
        feed(
            &mut c,
            &[
                r#"INFO ssh.two: match ["1.2.3.4", "alice"]"#,
                r#"INFO ssh.two.notify: run ["x"]"#,
            ],
            now_ms() + 1000,
        );
        let text = exposition(&mut c);
        assert!(
            text.contains(
                "reaction_match_count{filter=\"two\",stream=\"ssh\",user=\"ALICE\"} 1.0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("reaction_action_count{action=\"notify\",filter=\"two\",stream=\"ssh\",user=\"ALICE\"} 1.0\n"),
            "{text}"
        );
    }

    #[test]
    fn without_match_export_actions_have_no_pattern_labels_as_in_the_exporter() {
        let mut c = collector(|config| config.export.matches.on = false);
        feed(
            &mut c,
            &[
                r#"INFO ssh.f: match ["1.2.3.4"]"#,
                r#"INFO ssh.f.ban: run ["x"]"#,
            ],
            now_ms() + 1000,
        );
        let text = exposition(&mut c);
        assert!(!text.contains("reaction_match_count{"), "{text}");
        assert!(
            text.contains(
                "reaction_action_count{action=\"ban\",filter=\"f\",stream=\"ssh\"} 1.0\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn internals_add_the_process_families_only_when_asked() {
        let mut c = collector(|_| {});
        assert!(!exposition(&mut c).contains("process_resident_memory_bytes"));
        let mut c = collector(|config| config.export.internals = true);
        assert!(exposition(&mut c).contains("process_resident_memory_bytes "));
    }

    #[test]
    fn counts_print_as_prometheus_client_prints_floats() {
        assert_eq!(go_float(0), "0.0");
        assert_eq!(go_float(3), "3.0");
        assert_eq!(go_float(999_999), "999999.0");
        assert_eq!(go_float(1_000_000), "1e+06");
        assert_eq!(go_float(1_234_567), "1.234567e+06");
        assert_eq!(go_float(12_345_678), "1.2345678e+07");
        assert_eq!(go_float(10_000_000_000_000_000), "1e+16");
    }

    #[test]
    fn label_names_outside_the_legacy_set_are_quoted() {
        assert_eq!(label_name("ip"), "ip");
        assert_eq!(label_name("adresse_ïp"), "\"adresse_ïp\"");
        assert_eq!(label_name("__x"), "\"__x\"");
        assert_eq!(label_name("1x"), "\"1x\"");
    }

    #[test]
    fn a_table_keeps_insertion_order_and_its_bound() {
        let mut t = Table::default();
        t.add(&["s", "f", "ip", "b"], 1, 2);
        t.add(&["s", "f", "ip", "a"], 1, 2);
        t.add(&["s", "f", "ip", "b"], 2, 2);
        t.add(&["s", "f", "ip", "c"], 5, 2);
        assert_eq!(t.dropped, 5);
        let taken = t.take();
        let seen: Vec<(&str, u64)> = taken.iter().map(|(k, n)| (key_parts(k)[3], *n)).collect();
        assert_eq!(seen, vec![("b", 3), ("a", 1)]);
        assert!(t.is_empty());
        t.add(&["s", "f", "ip", "b"], 1, 2);
        assert_eq!(t.len(), 1);
    }
}
