//! Metrics: every counter of the daemon, and their exposition.
//!
//! [`Metrics`] is built once from the configuration; every family is
//! registered there, with one cell per stream, filter or action laid out by
//! index, so counting on a hot path is one relaxed atomic add and never a
//! lookup. Streams count lines and matches, the tracker triggers and store
//! commits, the executor action results and durations. Counting happens
//! whether or not an endpoint is configured (it is that cheap); the
//! pattern-labelled tables exist only when the `metrics` section asks for
//! them.
//!
//! Two sets of families are served: rebuff's own (`rebuff_*`, true
//! counters), and reaction-metrics-exporter's (`reaction_*`, with its
//! names, labels and "since the previous scrape" semantics, so its
//! dashboards and alerts keep working). [`Metrics::render`] writes both;
//! what only the tracker knows (pending actions) comes in a
//! [`PendingSnapshot`] it answers to a [`PendingCmd`].
//!
//! # Layout
//! - [`labels`]: pattern values to label values (raw, dropped, templates).
//! - [`series`]: bounded tables of pattern-labelled series.
//! - [`encode`]: Prometheus text and OpenMetrics writers.
//! - [`process`]: the process's own CPU, memory and descriptors.
//! - [`http`]: the HTTP endpoint; [`webconfig`]: its TLS and basic auth.

pub mod encode;
pub mod firewall;
pub mod http;
pub mod labels;
pub mod process;
pub mod series;
pub mod webconfig;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rebuff_engine::{IgnoreReason, Values};
use tokio::sync::oneshot;

use self::encode::{Encoder, Kind};
use self::http::Format;
use self::labels::LabelRules;
use self::series::{Series, SeriesTable};
use crate::config::{Config, MetricsConfig};
use crate::events::{CommandKind, ExecStats, ExitOutcome, Match};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Seconds buckets of action durations: from a quick `nft` call to an
/// action near its default one-minute timeout.
const ACTION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Seconds buckets of store commits: a buffered write to an fdatasync on a
/// slow disk.
const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// What happened to a stream, as the exporter's `type` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent {
    Start,
    Exit,
    Exec,
    Read,
    Timeout,
}

impl StreamEvent {
    const ALL: [StreamEvent; 5] = [
        StreamEvent::Start,
        StreamEvent::Exit,
        StreamEvent::Exec,
        StreamEvent::Read,
        StreamEvent::Timeout,
    ];

    fn name(self) -> &'static str {
        match self {
            StreamEvent::Start => "start",
            StreamEvent::Exit => "exit",
            StreamEvent::Exec => "exec",
            StreamEvent::Read => "read",
            StreamEvent::Timeout => "timeout",
        }
    }
}

/// Why a match did not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    Pattern(IgnoreReason),
    /// A duplicate under `duplicate: ignore`.
    Duplicate,
}

const IGNORED_REASONS: [&str; 6] = [
    "ignore",
    "ignoreregex",
    "ignorecidr",
    "not_an_ip",
    "duplicate",
    "country",
];

impl Ignored {
    fn slot(self) -> usize {
        match self {
            Ignored::Pattern(IgnoreReason::List) => 0,
            Ignored::Pattern(IgnoreReason::Regex) => 1,
            Ignored::Pattern(IgnoreReason::Cidr) => 2,
            Ignored::Pattern(IgnoreReason::NotAnIp) => 3,
            Ignored::Duplicate => 4,
            Ignored::Pattern(IgnoreReason::Country) => 5,
        }
    }
}

/// How an action ended, for `rebuff_actions_total{result}`.
const ACTION_RESULTS: [&str; 3] = ["ok", "failed", "timeout"];

/// A histogram of seconds with fixed buckets.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; one more for +Inf.
    counts: Box<[AtomicU64]>,
    /// The `le` label of each bucket.
    les: Box<[String]>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            les: bounds
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .map(|b| {
                    let mut le = String::new();
                    encode::push_float(&mut le, b);
                    le
                })
                .collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self.bounds.partition_point(|&b| b < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn encode(&self, e: &mut Encoder, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (count, le) in self.counts.iter().zip(&self.les) {
            cumulative += count.load(Ordering::Relaxed);
            e.sample_with(
                &bucket,
                labels,
                [("le", le.as_str())].into_iter(),
                cumulative,
            );
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        e.sample_float(&format!("{name}_sum"), labels, sum);
        e.sample(&format!("{name}_count"), labels, cumulative);
    }
}

/// A stream's counters.
#[derive(Debug, Default)]
pub struct StreamCounters {
    pub lines: AtomicU64,
    pub too_long: AtomicU64,
    pub invalid_utf8: AtomicU64,
    up: AtomicU64,
    events: [AtomicU64; 5],
    /// The same events since the previous scrape (the exporter's family).
    events_delta: [AtomicU64; 5],
}

#[derive(Debug, Default)]
struct FilterCounters {
    matches: AtomicU64,
    ignored: [AtomicU64; IGNORED_REASONS.len()],
    triggers: AtomicU64,
}

#[derive(Debug)]
struct ActionCounters {
    results: [AtomicU64; 3],
    duration: Histogram,
}

#[derive(Debug)]
struct FilterInfo {
    stream: usize,
    name: String,
    pattern_names: Vec<String>,
}

#[derive(Debug)]
struct ActionInfo {
    filter: usize,
    name: String,
}

/// One start/stop command run, for `reaction_commands_count`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CommandRun {
    kind: CommandKind,
    program: String,
    ok: bool,
    code: i32,
}

/// The pattern-labelled families, when the `metrics` section exists.
#[derive(Debug)]
struct Labelled {
    config: MetricsConfig,
    rules: LabelRules,
    /// `reaction_match_count`: by global filter index; emptied by scrapes.
    matches: SeriesTable,
    /// `reaction_action_count`: by global action index; emptied by scrapes.
    actions: SeriesTable,
    /// `rebuff_pattern_matches_total`: by global filter index; cumulative.
    pattern_matches: SeriesTable,
    /// `reaction_pending_count` series left out by the bound.
    pending_dropped: AtomicU64,
    pending_series: AtomicU64,
}

/// Every counter of the daemon. Shared (`Arc`) by all its tasks.
#[derive(Debug)]
pub struct Metrics {
    stream_names: Vec<String>,
    /// Global index of each stream's first filter.
    first_filter: Vec<usize>,
    filter_info: Vec<FilterInfo>,
    /// Global index of each filter's first action.
    first_action: Vec<usize>,
    action_info: Vec<ActionInfo>,
    streams: Box<[StreamCounters]>,
    filters: Box<[FilterCounters]>,
    actions: Box<[ActionCounters]>,
    /// [start, stop] x [ok, failed].
    commands: [[AtomicU64; 2]; 2],
    commands_delta: Mutex<Vec<(CommandRun, u64)>>,
    store_size: AtomicU64,
    store_errors: AtomicU64,
    store_dropped_records: AtomicU64,
    store_commit: Histogram,
    labelled: Option<Labelled>,
    started: Instant,
    /// `geoip.label`: a `country` label on the per-address families and
    /// on `rebuff_triggers_total`.
    country: Option<CountryLabels>,
    /// The `geoip` section, when `rebuff_tcp_connections` is served (both
    /// `geoip` with `tcp_connections` and `metrics` are configured).
    tcp: Option<crate::config::GeoipConfig>,
}

/// The label of a series whose address has no country.
pub const UNKNOWN_COUNTRY: &str = "unknown";

/// What the `country` label needs: the lookup, and per global filter
/// index the value slot whose country it shows (the first ip value;
/// `None` for a filter without one, or capturing a pattern named
/// `country`, whose label it would clash with).
#[derive(Debug)]
struct CountryLabels {
    lookup: std::sync::Arc<dyn rebuff_engine::CountryLookup>,
    slots: Vec<Option<usize>>,
    /// Triggers by (global filter index, country label); at most
    /// 26 * 26 + 1 countries per filter.
    triggers: Mutex<std::collections::BTreeMap<(usize, String), u64>>,
}

/// The last label of `series` when the filter has a country label (it is
/// always appended last), and the pattern labels before it.
fn split_country(series: &Series, has_country: bool) -> (&[Option<Box<str>>], Option<&str>) {
    match series.labels.split_last() {
        Some((country, rest)) if has_country => (rest, country.as_deref()),
        _ => (&series.labels, None),
    }
}

/// Label values of one count in slot order, with the country last.
fn with_country<'a>(
    extra: bool,
    raw: bool,
    values: &'a [String],
    rendered: &'a [Option<String>],
    country: &'a str,
) -> Vec<Option<&'a str>> {
    let mut labels: Vec<Option<&str>> = if !extra {
        Vec::new()
    } else if raw {
        values.iter().map(|v| Some(v.as_str())).collect()
    } else {
        rendered.iter().map(|l| l.as_deref()).collect()
    };
    labels.push(Some(country));
    labels
}

/// What the tracker knows that metrics serve: pending actions now.
#[derive(Debug, Default)]
pub struct PendingSnapshot {
    /// Pending runs by global action index.
    pub per_action: Vec<u64>,
    /// Values with pending actions, by global filter index.
    pub jailed: Vec<u64>,
    /// Every jailed key with its pending action indexes (within its
    /// filter), when the exporter's pending family has pattern labels.
    pub keys: Vec<PendingKey>,
    /// The counters these indices refer to (a reload replaces them).
    pub metrics: Option<std::sync::Arc<Metrics>>,
    /// `rebuff_tcp_connections`, filled by the scrape (not the tracker)
    /// when `geoip` and `metrics` are both configured.
    pub tcp: Option<crate::events::TcpSnapshot>,
}

#[derive(Debug)]
pub struct PendingKey {
    pub filter: usize,
    pub values: Values,
    pub actions: Vec<usize>,
}

/// A scrape asking the tracker for a [`PendingSnapshot`].
#[derive(Debug)]
pub struct PendingCmd {
    /// List every key (for the pattern-labelled pending family).
    pub keys: bool,
    pub respond: oneshot::Sender<PendingSnapshot>,
}

impl Default for Metrics {
    /// Counters of a configuration without streams (for tests of parts
    /// that count something).
    fn default() -> Self {
        Metrics::build(&[], None)
    }
}

impl Metrics {
    pub fn new(config: &Config) -> Self {
        let mut metrics = Metrics::build(&config.streams, config.metrics.as_ref());
        if let Some(geoip) = config.geoip.as_ref().filter(|g| g.label) {
            let slots = config
                .streams
                .iter()
                .flat_map(|s| &s.filters)
                .map(|f| {
                    if f.pattern_names.iter().any(|n| n == "country") {
                        return None;
                    }
                    f.pattern_names.iter().position(|name| {
                        config
                            .patterns
                            .get(name)
                            .is_some_and(|(_, p)| p.kind().is_ip())
                    })
                })
                .collect();
            metrics.country = Some(CountryLabels {
                lookup: std::sync::Arc::new(geoip.geo.clone()),
                slots,
                triggers: Mutex::new(std::collections::BTreeMap::new()),
            });
        }
        if config.metrics.is_some() {
            metrics.tcp = config.geoip.clone().filter(|g| g.tcp.is_some());
        }
        metrics
    }

    /// The `geoip` section a scrape counts `rebuff_tcp_connections` with,
    /// when the gauge is served.
    pub fn tcp_connections(&self) -> Option<&crate::config::GeoipConfig> {
        self.tcp.as_ref()
    }

    /// The `country` label of a count of filter `fid` with `values`:
    /// `None` when the filter has none.
    fn country_label(&self, fid: usize, values: &[String]) -> Option<String> {
        let labels = self.country.as_ref()?;
        let slot = (*labels.slots.get(fid)?)?;
        let code = values
            .get(slot)
            .and_then(|v| labels.lookup.country_of_value(v));
        Some(code.map_or_else(|| UNKNOWN_COUNTRY.to_owned(), |c| c.to_string()))
    }

    /// A trigger of filter `fid` on `values` (the country label needs them).
    pub fn trigger_values(&self, filter_id: usize, values: &[String]) {
        self.trigger(filter_id);
        if let Some(labels) = &self.country
            && let Some(country) = self.country_label(filter_id, values)
        {
            *labels
                .triggers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((filter_id, country))
                .or_default() += 1;
        }
    }

    fn build(streams: &[crate::config::Stream], metrics: Option<&MetricsConfig>) -> Self {
        let mut first_filter = Vec::new();
        let mut filter_info = Vec::new();
        let mut first_action = Vec::new();
        let mut action_info = Vec::new();
        for (s, stream) in streams.iter().enumerate() {
            first_filter.push(filter_info.len());
            for filter in &stream.filters {
                first_action.push(action_info.len());
                for action in &filter.actions {
                    action_info.push(ActionInfo {
                        filter: filter_info.len(),
                        name: action.name.clone(),
                    });
                }
                filter_info.push(FilterInfo {
                    stream: s,
                    name: filter.name.clone(),
                    pattern_names: filter.pattern_names.clone(),
                });
            }
        }
        let labelled = metrics.map(|m| {
            let names: Vec<Vec<String>> = filter_info
                .iter()
                .map(|f| f.pattern_names.clone())
                .collect();
            Labelled {
                rules: LabelRules::new(m, &names),
                matches: SeriesTable::new(m.max_series),
                actions: SeriesTable::new(m.max_series),
                pattern_matches: SeriesTable::new(m.max_series),
                pending_dropped: AtomicU64::new(0),
                pending_series: AtomicU64::new(0),
                config: m.clone(),
            }
        });
        Metrics {
            stream_names: streams.iter().map(|s| s.name.clone()).collect(),
            streams: streams.iter().map(|_| StreamCounters::default()).collect(),
            filters: filter_info
                .iter()
                .map(|_| FilterCounters::default())
                .collect(),
            actions: action_info
                .iter()
                .map(|_| ActionCounters {
                    results: Default::default(),
                    duration: Histogram::new(ACTION_BUCKETS),
                })
                .collect(),
            first_filter,
            filter_info,
            first_action,
            action_info,
            commands: Default::default(),
            commands_delta: Mutex::new(Vec::new()),
            store_size: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            store_dropped_records: AtomicU64::new(0),
            store_commit: Histogram::new(COMMIT_BUCKETS),
            labelled,
            started: Instant::now(),
            country: None,
            tcp: None,
        }
    }

    fn now_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Global index of a stream's filter.
    pub fn filter_id(&self, stream: usize, filter: usize) -> usize {
        self.first_filter.get(stream).copied().unwrap_or(0) + filter
    }

    /// Global index of a filter's action.
    pub fn action_id(&self, filter_id: usize, action: usize) -> usize {
        self.first_action.get(filter_id).copied().unwrap_or(0) + action
    }

    /// The counters a stream task updates itself.
    pub fn stream(&self, stream: usize) -> &StreamCounters {
        &self.streams[stream]
    }

    /// Lines read by every stream.
    pub fn lines(&self) -> u64 {
        self.streams
            .iter()
            .map(|s| s.lines.load(Ordering::Relaxed))
            .sum()
    }

    pub fn stream_event(&self, stream: usize, event: StreamEvent) {
        let Some(counters) = self.streams.get(stream) else {
            return;
        };
        let slot = event as usize;
        counters.events[slot].fetch_add(1, Ordering::Relaxed);
        counters.events_delta[slot].fetch_add(1, Ordering::Relaxed);
        let up = u64::from(event == StreamEvent::Start);
        counters.up.store(up, Ordering::Relaxed);
    }

    /// A stream kept running across a reload is up in the new counters,
    /// without a second start event.
    pub fn stream_running(&self, stream: usize) {
        if let Some(counters) = self.streams.get(stream) {
            counters.up.store(1, Ordering::Relaxed);
        }
    }

    /// A stream that rebuff stopped is no longer up, without an event.
    pub fn stream_stopped(&self, stream: usize) {
        if let Some(counters) = self.streams.get(stream) {
            counters.up.store(0, Ordering::Relaxed);
        }
    }

    pub fn ignored(&self, filter_id: usize, why: Ignored) {
        if let Some(f) = self.filters.get(filter_id) {
            f.ignored[why.slot()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A batch of accepted matches of one stream (before it goes to the
    /// tracker): counted per filter, and in the pattern-labelled families.
    pub fn matches(&self, stream: usize, batch: &[Match]) {
        let first = self.first_filter.get(stream).copied().unwrap_or(0);
        for m in batch {
            if let Some(f) = self.filters.get(first + m.filter) {
                f.matches.fetch_add(1, Ordering::Relaxed);
            }
        }
        let Some(labelled) = &self.labelled else {
            return;
        };
        let export = labelled.config.export;
        if !export.matches.is_on() && !export.pattern_matches.is_on() {
            return;
        }
        let now = self.now_secs();
        let mut rendered = Vec::new();
        let mut exporter = export.matches.is_on().then(|| labelled.matches.lock());
        let mut native = export
            .pattern_matches
            .is_on()
            .then(|| labelled.pattern_matches.lock());
        for m in batch {
            let fid = first + m.filter;
            let owner = fid as u32;
            let raw = labelled.rules.is_raw(fid);
            if !raw {
                labelled.rules.render(fid, &m.values, &mut rendered);
            }
            let country = self.country_label(fid, &m.values);
            let add = |table: &mut series::Locked<'_>, extra: bool| {
                if let Some(country) = &country {
                    let labels = with_country(extra, raw, &m.values, &rendered, country);
                    table.add(owner, labels.iter().copied(), 1, now);
                } else if !extra {
                    table.add(owner, series::no_labels(), 1, now);
                } else if raw {
                    table.add(owner, series::raw(&m.values), 1, now);
                } else {
                    table.add(owner, series::rendered(&rendered), 1, now);
                }
            };
            if let Some(table) = exporter.as_mut() {
                add(table, export.matches.has_patterns());
            }
            if let Some(table) = native.as_mut() {
                add(table, export.pattern_matches.has_patterns());
            }
        }
    }

    pub fn trigger(&self, filter_id: usize) {
        if let Some(f) = self.filters.get(filter_id) {
            f.triggers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An action ended. `replayed` actions (re-run from the store at start)
    /// are left out of the exporter's family, as its `hold` would.
    pub fn action_done(&self, done: &ActionDone<'_>) {
        let Some(counters) = self.actions.get(done.action_id) else {
            return;
        };
        let result = if done.outcome.timed_out {
            2
        } else if done.outcome.success() {
            0
        } else {
            1
        };
        counters.results[result].fetch_add(1, Ordering::Relaxed);
        counters.duration.observe(done.elapsed);
        let Some(labelled) = &self.labelled else {
            return;
        };
        let family = labelled.config.export.actions;
        if done.replayed || !family.is_on() {
            return;
        }
        let owner = done.action_id as u32;
        let fid = self.action_info[done.action_id].filter;
        let now = self.now_secs();
        if let Some(country) = self.country_label(fid, done.values) {
            let raw = labelled.rules.is_raw(fid);
            let mut rendered = Vec::new();
            if family.has_patterns() && !raw {
                labelled.rules.render(fid, done.values, &mut rendered);
            }
            let labels = with_country(family.has_patterns(), raw, done.values, &rendered, &country);
            labelled
                .actions
                .lock()
                .add(owner, labels.iter().copied(), 1, now);
        } else if !family.has_patterns() {
            labelled
                .actions
                .lock()
                .add(owner, series::no_labels(), 1, now);
        } else if labelled.rules.is_raw(fid) {
            labelled
                .actions
                .lock()
                .add(owner, series::raw(done.values), 1, now);
        } else {
            let mut rendered = Vec::new();
            labelled.rules.render(fid, done.values, &mut rendered);
            labelled
                .actions
                .lock()
                .add(owner, series::rendered(&rendered), 1, now);
        }
    }

    pub fn command_done(&self, kind: CommandKind, argv: &[String], outcome: &ExitOutcome) {
        let k = usize::from(kind == CommandKind::Stop);
        let ok = outcome.success();
        self.commands[k][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        let run = CommandRun {
            kind,
            program: argv.first().cloned().unwrap_or_default(),
            ok,
            code: if ok { 0 } else { outcome.code },
        };
        let mut delta = self
            .commands_delta
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match delta.iter_mut().find(|(r, _)| *r == run) {
            Some((_, n)) => *n += 1,
            None => delta.push((run, 1)),
        }
    }

    pub fn store_committed(&self, elapsed: Duration, size: u64) {
        self.store_commit.observe(elapsed);
        self.store_size.store(size, Ordering::Relaxed);
    }

    pub fn store_size(&self, size: u64) {
        self.store_size.store(size, Ordering::Relaxed);
    }

    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the store has dropped so far (its own running total).
    pub fn store_dropped_records(&self, total: u64) {
        self.store_dropped_records.store(total, Ordering::Relaxed);
    }

    /// Whether scrapes need every jailed key from the tracker.
    pub fn wants_pending_keys(&self) -> bool {
        self.labelled
            .as_ref()
            .is_some_and(|l| l.config.export.pending.is_on())
    }

    /// Writes the whole exposition. Resets the exporter's "since the
    /// previous scrape" families.
    pub fn render(&self, format: Format, pending: &PendingSnapshot, exec: &ExecStats) -> Vec<u8> {
        self.render_all(format, pending, exec, None)
    }

    /// [`Metrics::render`], with the firewall writer's families when one
    /// runs.
    pub fn render_all(
        &self,
        format: Format,
        pending: &PendingSnapshot,
        exec: &ExecStats,
        firewall: Option<&crate::events::FirewallStats>,
    ) -> Vec<u8> {
        // About 100 bytes per series of the per-address families.
        let series = self.labelled.as_ref().map_or(0, |l| {
            l.matches.len() + l.actions.len() + l.pattern_matches.len() + pending.keys.len()
        });
        let mut e = Encoder::new(format, 64 * 1024 + series * 100);
        self.render_native(&mut e, pending, exec);
        if let Some(firewall) = firewall {
            self::firewall::render(&mut e, firewall);
        }
        if let Some(labelled) = &self.labelled {
            self.render_exporter(&mut e, labelled, pending);
            if labelled.config.export.internals {
                render_process(&mut e);
            }
        }
        e.finish()
    }

    fn filter_labels(&self, fid: usize) -> [(&str, &str); 2] {
        let info = &self.filter_info[fid];
        [
            ("stream", self.stream_names[info.stream].as_str()),
            ("filter", info.name.as_str()),
        ]
    }

    fn action_labels(&self, aid: usize) -> [(&str, &str); 3] {
        let info = &self.action_info[aid];
        let [stream, filter] = self.filter_labels(info.filter);
        [stream, filter, ("action", info.name.as_str())]
    }

    /// `rebuff_tcp_connections` and how its counting went.
    fn render_tcp(e: &mut Encoder, tcp: &crate::events::TcpSnapshot) {
        e.family(
            "rebuff_tcp_connections",
            Kind::Gauge,
            "Established TCP connections by the remote address's country (unknown: none), at scrape time.",
        );
        for (country, state, n) in &tcp.rows {
            if tcp.state_label {
                e.sample(
                    "rebuff_tcp_connections",
                    &[("country", country), ("state", state)],
                    *n,
                );
            } else {
                e.sample("rebuff_tcp_connections", &[("country", country)], *n);
            }
        }
        e.family(
            "rebuff_tcp_connections_scanned",
            Kind::Gauge,
            "Sockets looked at by the last scrape's count of TCP connections.",
        );
        e.sample("rebuff_tcp_connections_scanned", &[], tcp.scanned);
        e.family(
            "rebuff_tcp_connections_truncated",
            Kind::Gauge,
            "1 when the last count stopped at geoip.tcp_connections.max_sockets.",
        );
        e.sample(
            "rebuff_tcp_connections_truncated",
            &[],
            u64::from(tcp.truncated),
        );
        e.family(
            "rebuff_tcp_connections_failed",
            Kind::Gauge,
            "1 when the last count could not read the kernel's socket tables or the host's addresses.",
        );
        e.sample("rebuff_tcp_connections_failed", &[], u64::from(tcp.failed));
    }

    fn render_native(&self, e: &mut Encoder, pending: &PendingSnapshot, exec: &ExecStats) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        if let Some(tcp) = &pending.tcp {
            Self::render_tcp(e, tcp);
        }
        e.family("rebuff_build_info", Kind::Info, "rebuff's version.");
        e.sample("rebuff_build_info", &[("version", VERSION)], 1);

        e.family(
            "rebuff_lines_total",
            Kind::Counter,
            "Lines read per stream.",
        );
        for (name, s) in self.stream_names.iter().zip(&*self.streams) {
            e.sample("rebuff_lines_total", &[("stream", name)], load(&s.lines));
        }
        e.family(
            "rebuff_bad_lines_total",
            Kind::Counter,
            "Lines cut because too long, or with invalid UTF-8 (replaced before matching).",
        );
        for (name, s) in self.stream_names.iter().zip(&*self.streams) {
            let n = load(&s.too_long);
            e.sample(
                "rebuff_bad_lines_total",
                &[("stream", name), ("reason", "too_long")],
                n,
            );
            let n = load(&s.invalid_utf8);
            e.sample(
                "rebuff_bad_lines_total",
                &[("stream", name), ("reason", "invalid_utf8")],
                n,
            );
        }
        e.family(
            "rebuff_matches_total",
            Kind::Counter,
            "Accepted regex matches per filter.",
        );
        for (fid, f) in self.filters.iter().enumerate() {
            e.sample(
                "rebuff_matches_total",
                &self.filter_labels(fid),
                load(&f.matches),
            );
        }
        e.family(
            "rebuff_ignored_total",
            Kind::Counter,
            "Matches that did not count, by reason (ignore lists, ignoreregex, ignorecidr, not an address, duplicates).",
        );
        for (fid, f) in self.filters.iter().enumerate() {
            let [stream, filter] = self.filter_labels(fid);
            for (reason, count) in IGNORED_REASONS.iter().zip(&f.ignored) {
                let n = load(count);
                if n > 0 {
                    e.sample(
                        "rebuff_ignored_total",
                        &[stream, filter, ("reason", reason)],
                        n,
                    );
                }
            }
        }
        e.family(
            "rebuff_triggers_total",
            Kind::Counter,
            "Filters triggering on a value (retry reached).",
        );
        let by_country = self
            .country
            .as_ref()
            .map(|c| c.triggers.lock().unwrap_or_else(|e| e.into_inner()).clone());
        for (fid, f) in self.filters.iter().enumerate() {
            let has_country = self
                .country
                .as_ref()
                .is_some_and(|c| c.slots.get(fid).copied().flatten().is_some());
            if let (true, Some(counts)) = (has_country, &by_country) {
                // One series per country instead of the filter's total.
                let [stream, filter] = self.filter_labels(fid);
                for ((_, country), n) in
                    counts.range((fid, String::new())..(fid + 1, String::new()))
                {
                    e.sample(
                        "rebuff_triggers_total",
                        &[stream, filter, ("country", country)],
                        *n,
                    );
                }
                continue;
            }
            e.sample(
                "rebuff_triggers_total",
                &self.filter_labels(fid),
                load(&f.triggers),
            );
        }
        e.family(
            "rebuff_actions_total",
            Kind::Counter,
            "Actions run, by result (ok, failed, timeout).",
        );
        for (aid, a) in self.actions.iter().enumerate() {
            let [stream, filter, action] = self.action_labels(aid);
            for (result, count) in ACTION_RESULTS.iter().zip(&a.results) {
                e.sample(
                    "rebuff_actions_total",
                    &[stream, filter, action, ("result", result)],
                    load(count),
                );
            }
        }
        e.family(
            "rebuff_action_duration_seconds",
            Kind::Histogram,
            "How long actions ran.",
        );
        for (aid, a) in self.actions.iter().enumerate() {
            a.duration.encode(
                e,
                "rebuff_action_duration_seconds",
                &self.action_labels(aid),
            );
        }
        e.family(
            "rebuff_pending_actions",
            Kind::Gauge,
            "Delayed actions waiting to run.",
        );
        for aid in 0..self.actions.len() {
            let n = pending.per_action.get(aid).copied().unwrap_or(0);
            e.sample("rebuff_pending_actions", &self.action_labels(aid), n);
        }
        e.family(
            "rebuff_jailed",
            Kind::Gauge,
            "Values (addresses) with pending actions, per filter.",
        );
        for fid in 0..self.filters.len() {
            let n = pending.jailed.get(fid).copied().unwrap_or(0);
            e.sample("rebuff_jailed", &self.filter_labels(fid), n);
        }
        e.family(
            "rebuff_actions_queued",
            Kind::Gauge,
            "Actions waiting for a free slot (concurrency).",
        );
        e.sample("rebuff_actions_queued", &[], load(&exec.queued));
        e.family(
            "rebuff_actions_running",
            Kind::Gauge,
            "Actions running now.",
        );
        e.sample("rebuff_actions_running", &[], load(&exec.running));

        e.family(
            "rebuff_stream_events_total",
            Kind::Counter,
            "Stream starts, exits, exec and read failures, stop timeouts.",
        );
        for (name, s) in self.stream_names.iter().zip(&*self.streams) {
            for event in StreamEvent::ALL {
                let n = load(&s.events[event as usize]);
                e.sample(
                    "rebuff_stream_events_total",
                    &[("stream", name), ("type", event.name())],
                    n,
                );
            }
        }
        e.family(
            "rebuff_stream_up",
            Kind::Gauge,
            "1 while a stream's command runs.",
        );
        for (name, s) in self.stream_names.iter().zip(&*self.streams) {
            e.sample("rebuff_stream_up", &[("stream", name)], load(&s.up));
        }
        e.family(
            "rebuff_commands_total",
            Kind::Counter,
            "Start and stop commands run, by result.",
        );
        for (k, kind) in ["start", "stop"].iter().enumerate() {
            for (r, result) in ["ok", "failed"].iter().enumerate() {
                let n = load(&self.commands[k][r]);
                e.sample(
                    "rebuff_commands_total",
                    &[("kind", kind), ("result", result)],
                    n,
                );
            }
        }
        e.family(
            "rebuff_store_size_bytes",
            Kind::Gauge,
            "Size of the state file.",
        );
        e.sample("rebuff_store_size_bytes", &[], load(&self.store_size));
        e.family(
            "rebuff_store_commit_duration_seconds",
            Kind::Histogram,
            "How long store commits took (write, and fdatasync when needed).",
        );
        self.store_commit
            .encode(e, "rebuff_store_commit_duration_seconds", &[]);
        e.family(
            "rebuff_store_errors_total",
            Kind::Counter,
            "Store commits or compactions that failed.",
        );
        e.sample("rebuff_store_errors_total", &[], load(&self.store_errors));
        e.family(
            "rebuff_store_dropped_records_total",
            Kind::Counter,
            "Records dropped unwritten while the store could not write (the next compaction writes the state from memory).",
        );
        e.sample(
            "rebuff_store_dropped_records_total",
            &[],
            load(&self.store_dropped_records),
        );

        let Some(labelled) = &self.labelled else {
            return;
        };
        e.family(
            "rebuff_label_template_errors_total",
            Kind::Counter,
            "Label templates that failed to render; the label was left out.",
        );
        for (fid, info) in self.filter_info.iter().enumerate() {
            let [stream, filter] = self.filter_labels(fid);
            for (slot, pattern) in info.pattern_names.iter().enumerate() {
                if labelled.rules.is_template(fid, slot) {
                    let n = labelled.rules.errors(fid, slot);
                    e.sample(
                        "rebuff_label_template_errors_total",
                        &[stream, filter, ("pattern", pattern)],
                        n,
                    );
                }
            }
        }
        if labelled.config.export.pattern_matches.is_on() {
            e.family(
                "rebuff_pattern_matches_total",
                Kind::Counter,
                "Accepted matches per filter and pattern values (idle series expire).",
            );
            let idle_secs = labelled.config.series_idle_ms / 1000;
            let idle_before = self.now_secs().saturating_sub(idle_secs);
            let mut prefixes = Prefixes::new("rebuff_pattern_matches_total");
            labelled.pattern_matches.visit(idle_before, |series| {
                let fid = series.owner as usize;
                let prefix = prefixes.get(fid, || self.filter_labels(fid).to_vec());
                e.sample_prefixed(prefix, self.pattern_labels(fid, series), series.value);
            });
        }
    }

    /// One label per kept pattern value of a series of filter `fid`.
    fn pattern_labels<'a>(
        &'a self,
        fid: usize,
        series: &'a Series,
    ) -> impl Iterator<Item = (&'a str, &'a str)> {
        let names = &self.filter_info[fid].pattern_names;
        let has_country = self
            .country
            .as_ref()
            .is_some_and(|c| c.slots.get(fid).copied().flatten().is_some());
        let (values, country) = split_country(series, has_country);
        names
            .iter()
            .zip(values)
            .filter_map(|(name, value)| Some((name.as_str(), value.as_deref()?)))
            .chain(country.map(|c| ("country", c)))
    }

    fn render_exporter(&self, e: &mut Encoder, labelled: &Labelled, pending: &PendingSnapshot) {
        let export = labelled.config.export;
        e.family(
            "reaction_exporter_build_info",
            Kind::Info,
            "Version of the exporter (rebuff's, built in).",
        );
        e.sample("reaction_exporter_build_info", &[("version", VERSION)], 1);
        e.family(
            "reaction_status_info",
            Kind::Info,
            "Version and status of the daemon (status \"1\": up).",
        );
        e.sample(
            "reaction_status_info",
            &[("version", VERSION), ("status", "1")],
            1,
        );

        if export.matches.is_on() {
            e.family(
                "reaction_match_count",
                Kind::Gauge,
                "Matches since the previous scrape (reaction-metrics-exporter).",
            );
            let mut prefixes = Prefixes::new("reaction_match_count");
            for series in labelled.matches.take() {
                let fid = series.owner as usize;
                let prefix = prefixes.get(fid, || self.filter_labels(fid).to_vec());
                e.sample_prefixed(prefix, self.pattern_labels(fid, &series), series.value);
            }
        }
        if export.actions.is_on() {
            e.family(
                "reaction_action_count",
                Kind::Gauge,
                "Actions run since the previous scrape (reaction-metrics-exporter).",
            );
            let mut prefixes = Prefixes::new("reaction_action_count");
            for series in labelled.actions.take() {
                let aid = series.owner as usize;
                let fid = self.action_info[aid].filter;
                let prefix = prefixes.get(aid, || self.action_labels(aid).to_vec());
                e.sample_prefixed(prefix, self.pattern_labels(fid, &series), series.value);
            }
        }
        if export.pending.is_on() {
            e.family("reaction_pending_count", Kind::Gauge, "Pending actions of each value, repeated on each of its actions (reaction-metrics-exporter).");
            let table = SeriesTable::new(labelled.config.max_series);
            {
                let mut locked = table.lock();
                let now = self.now_secs();
                let mut rendered = Vec::new();
                for key in &pending.keys {
                    let mut names: Vec<usize> = key.actions.clone();
                    names.sort_unstable();
                    names.dedup();
                    let count = names.len() as u64;
                    if export.pending.has_patterns() && !labelled.rules.is_raw(key.filter) {
                        labelled
                            .rules
                            .render(key.filter, &key.values, &mut rendered);
                    }
                    let country = self.country_label(key.filter, &key.values);
                    for action in names {
                        let owner = self.action_id(key.filter, action) as u32;
                        if let Some(country) = &country {
                            let extra = export.pending.has_patterns();
                            let raw = labelled.rules.is_raw(key.filter);
                            let labels = with_country(extra, raw, &key.values, &rendered, country);
                            locked.add(owner, labels.iter().copied(), count, now);
                        } else if !export.pending.has_patterns() {
                            locked.add(owner, series::no_labels(), count, now);
                        } else if labelled.rules.is_raw(key.filter) {
                            locked.add(owner, series::raw(&key.values), count, now);
                        } else {
                            locked.add(owner, series::rendered(&rendered), count, now);
                        }
                    }
                }
            }
            labelled
                .pending_dropped
                .fetch_add(table.dropped(), Ordering::Relaxed);
            let series = table.take();
            labelled
                .pending_series
                .store(series.len() as u64, Ordering::Relaxed);
            let mut prefixes = Prefixes::new("reaction_pending_count");
            for series in series {
                let aid = series.owner as usize;
                let fid = self.action_info[aid].filter;
                let prefix = prefixes.get(aid, || self.action_labels(aid).to_vec());
                e.sample_prefixed(prefix, self.pattern_labels(fid, &series), series.value);
            }
        }
        if export.commands {
            e.family("reaction_commands_count", Kind::Gauge, "Start and stop commands run since the previous scrape (reaction-metrics-exporter).");
            let runs = std::mem::take(
                &mut *self
                    .commands_delta
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            for (run, n) in runs {
                let code = run.code.to_string();
                let labels = [
                    ("state", run.kind.name()),
                    ("command", run.program.as_str()),
                    ("status", if run.ok { "True" } else { "False" }),
                    ("code", code.as_str()),
                ];
                e.sample("reaction_commands_count", &labels, n);
            }
        }
        if export.streams {
            e.family(
                "reaction_stream_event_count",
                Kind::Gauge,
                "Stream events since the previous scrape (reaction-metrics-exporter).",
            );
            for (name, s) in self.stream_names.iter().zip(&*self.streams) {
                for event in StreamEvent::ALL {
                    let n = s.events_delta[event as usize].swap(0, Ordering::Relaxed);
                    if n > 0 {
                        e.sample(
                            "reaction_stream_event_count",
                            &[("stream", name), ("type", event.name())],
                            n,
                        );
                    }
                }
            }
        }

        e.family(
            "rebuff_metric_series",
            Kind::Gauge,
            "Series held by each pattern-labelled family.",
        );
        let families = [
            ("reaction_match_count", labelled.matches.dropped(), None),
            ("reaction_action_count", labelled.actions.dropped(), None),
            (
                "reaction_pending_count",
                labelled.pending_dropped.load(Ordering::Relaxed),
                Some(labelled.pending_series.load(Ordering::Relaxed)),
            ),
            (
                "rebuff_pattern_matches_total",
                labelled.pattern_matches.dropped(),
                Some(labelled.pattern_matches.len() as u64),
            ),
        ];
        for (family, _, held) in &families {
            if let Some(held) = held {
                e.sample("rebuff_metric_series", &[("family", family)], *held);
            }
        }
        e.family(
            "rebuff_metric_series_dropped_total",
            Kind::Counter,
            "Counts left out because their family held max_series series.",
        );
        for (family, dropped, _) in &families {
            e.sample(
                "rebuff_metric_series_dropped_total",
                &[("family", family)],
                *dropped,
            );
        }
    }
}

/// The start of each owner's samples in one family, written once per
/// scrape rather than once per series.
struct Prefixes {
    family: &'static str,
    by_owner: Vec<Option<String>>,
}

impl Prefixes {
    fn new(family: &'static str) -> Self {
        Prefixes {
            family,
            by_owner: Vec::new(),
        }
    }

    fn get<'a>(&mut self, owner: usize, fixed: impl FnOnce() -> Vec<(&'a str, &'a str)>) -> &str {
        if self.by_owner.len() <= owner {
            self.by_owner.resize(owner + 1, None);
        }
        self.by_owner[owner].get_or_insert_with(|| Encoder::prefix(self.family, &fixed()))
    }
}

/// One finished action, for [`Metrics::action_done`].
#[derive(Debug)]
pub struct ActionDone<'a> {
    pub action_id: usize,
    pub values: &'a [String],
    pub outcome: &'a ExitOutcome,
    pub elapsed: Duration,
    pub replayed: bool,
}

fn render_process(e: &mut Encoder) {
    let p = process::read();
    e.family(
        "process_cpu_seconds_total",
        Kind::Counter,
        "User and system CPU time spent.",
    );
    e.sample_float("process_cpu_seconds_total", &[], p.cpu_seconds);
    e.family(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size.",
    );
    e.sample("process_resident_memory_bytes", &[], p.resident_bytes);
    e.family(
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory size.",
    );
    e.sample("process_virtual_memory_bytes", &[], p.virtual_bytes);
    e.family("process_open_fds", Kind::Gauge, "Open file descriptors.");
    e.sample("process_open_fds", &[], p.open_fds);
    if let Some(max) = p.max_fds {
        e.family(
            "process_max_fds",
            Kind::Gauge,
            "Most file descriptors the process may open.",
        );
        e.sample("process_max_fds", &[], max);
    }
    e.family(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time since the Unix epoch.",
    );
    e.sample_float("process_start_time_seconds", &[], p.start_time_seconds);
    e.family("process_threads", Kind::Gauge, "Threads of the process.");
    e.sample("process_threads", &[], p.threads);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{validate, yaml};

    const CONFIG: &str = r#"
patterns:
  ip: {type: ip}
  user: {regex: '.+'}
streams:
  ssh:
    cmd: ['true']
    filters:
      failed:
        regex: ['fail <user> from <ip>$']
        actions:
          ban: {cmd: ['true']}
          unban: {cmd: ['true'], after: 1h}
"#;

    fn metrics(section: &str) -> Metrics {
        let text = format!("{CONFIG}{section}");
        let node = yaml::parse_yaml(Path::new("c.yml"), &text).expect("yaml");
        let config = validate::compile(&node).expect("valid");
        Metrics::new(&config)
    }

    /// Values in the filter's value order: pattern names sorted, as the
    /// exporter zips them (ip, then user).
    fn matched(user: &str, ip: &str) -> Match {
        Match {
            filter: 0,
            values: vec![ip.to_owned(), user.to_owned()].into_boxed_slice(),
            time: 0,
        }
    }

    fn scrape(m: &Metrics) -> String {
        let body = m.render(
            Format::Prometheus,
            &PendingSnapshot::default(),
            &ExecStats::default(),
        );
        String::from_utf8(body).expect("utf-8")
    }

    fn samples<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
            .collect()
    }

    #[test]
    fn exporter_families_count_since_the_previous_scrape_and_native_counters_keep_going() {
        let m = metrics("metrics:\n  export: {pattern_matches: true}\n");
        m.matches(
            0,
            &[
                matched("root", "203.0.113.7"),
                matched("root", "203.0.113.7"),
            ],
        );
        let first = scrape(&m);
        assert_eq!(
            samples(&first, "reaction_match_count"),
            [
                r#"reaction_match_count{stream="ssh",filter="failed",ip="203.0.113.7",user="root"} 2"#
            ]
        );
        assert_eq!(
            samples(&first, "rebuff_matches_total"),
            [r#"rebuff_matches_total{stream="ssh",filter="failed"} 2"#]
        );
        m.matches(0, &[matched("root", "203.0.113.7")]);
        let second = scrape(&m);
        assert_eq!(
            samples(&second, "reaction_match_count"),
            [
                r#"reaction_match_count{stream="ssh",filter="failed",ip="203.0.113.7",user="root"} 1"#
            ]
        );
        assert_eq!(
            samples(&second, "rebuff_pattern_matches_total"),
            [
                r#"rebuff_pattern_matches_total{stream="ssh",filter="failed",ip="203.0.113.7",user="root"} 3"#
            ]
        );
        assert!(samples(&scrape(&m), "reaction_match_count").is_empty());
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let m = metrics("metrics:\n");
        m.matches(0, &[matched("a\"b\\c\nd é", "::1")]);
        let text = scrape(&m);
        assert_eq!(
            samples(&text, "reaction_match_count"),
            [
                r#"reaction_match_count{stream="ssh",filter="failed",ip="::1",user="a\"b\\c\nd é"} 1"#
            ]
        );
    }

    #[test]
    fn dropped_and_templated_labels_follow_the_rules() {
        let m = metrics(
            "metrics:\n  all: {ip: false}\n  for: {ssh: {failed: {user: \"{{ user[:2] }}\"}}}\n",
        );
        m.matches(
            0,
            &[
                matched("root", "203.0.113.7"),
                matched("roger", "203.0.113.8"),
            ],
        );
        let text = scrape(&m);
        assert_eq!(
            samples(&text, "reaction_match_count"),
            [r#"reaction_match_count{stream="ssh",filter="failed",user="ro"} 2"#]
        );
    }

    #[test]
    fn a_template_failing_at_render_time_is_counted_and_the_match_still_counts() {
        let m = metrics("metrics:\n  all: {user: \"{{ 1 // 0 }}\"}\n");
        m.matches(0, &[matched("root", "203.0.113.7")]);
        let text = scrape(&m);
        assert_eq!(
            samples(&text, "reaction_match_count"),
            [r#"reaction_match_count{stream="ssh",filter="failed",ip="203.0.113.7"} 1"#]
        );
        assert_eq!(
            samples(&text, "rebuff_label_template_errors_total"),
            [
                r#"rebuff_label_template_errors_total{stream="ssh",filter="failed",pattern="user"} 1"#
            ]
        );
    }

    #[test]
    fn series_beyond_max_series_are_dropped_and_counted() {
        let m = metrics("metrics:\n  max_series: 2\n");
        let batch: Vec<Match> = (1..=5)
            .map(|i| matched("u", &format!("10.0.0.{i}")))
            .collect();
        m.matches(0, &batch);
        let text = scrape(&m);
        assert_eq!(samples(&text, "reaction_match_count").len(), 2);
        assert!(
            text.contains(r#"rebuff_metric_series_dropped_total{family="reaction_match_count"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rebuff_matches_total{stream="ssh",filter="failed"} 5"#),
            "native counts lose nothing"
        );
    }

    #[test]
    fn actions_are_labelled_with_their_own_values_and_replays_are_left_out() {
        let m = metrics("metrics:\n");
        let outcome = ExitOutcome {
            code: 0,
            signal: None,
            detail: None,
            timed_out: false,
        };
        let values = ["203.0.113.7".to_owned(), "root".to_owned()];
        for replayed in [false, true] {
            m.action_done(&ActionDone {
                action_id: 0,
                values: &values,
                outcome: &outcome,
                elapsed: Duration::from_millis(30),
                replayed,
            });
        }
        let text = scrape(&m);
        assert_eq!(
            samples(&text, "reaction_action_count"),
            [
                r#"reaction_action_count{stream="ssh",filter="failed",action="ban",ip="203.0.113.7",user="root"} 1"#
            ]
        );
        assert!(text.contains(
            r#"rebuff_actions_total{stream="ssh",filter="failed",action="ban",result="ok"} 2"#
        ));
        assert!(text.contains(
            r#"rebuff_action_duration_seconds_bucket{stream="ssh",filter="failed",action="ban",le="0.025"} 0"#
        ));
        assert!(text.contains(
            r#"rebuff_action_duration_seconds_bucket{stream="ssh",filter="failed",action="ban",le="0.05"} 2"#
        ));
        assert!(text.contains(
            r#"rebuff_action_duration_seconds_count{stream="ssh",filter="failed",action="ban"} 2"#
        ));
    }

    #[test]
    fn pending_counts_repeat_the_number_of_pending_action_names_on_each_action() {
        let m = metrics("metrics:\n");
        let pending = PendingSnapshot {
            per_action: vec![0, 1],
            jailed: vec![1],
            keys: vec![PendingKey {
                filter: 0,
                values: vec!["203.0.113.7".to_owned(), "root".to_owned()].into_boxed_slice(),
                actions: vec![1],
            }],
            metrics: None,
            tcp: None,
        };
        let body = m.render(Format::Prometheus, &pending, &ExecStats::default());
        let text = String::from_utf8(body).expect("utf-8");
        assert_eq!(
            samples(&text, "reaction_pending_count"),
            [
                r#"reaction_pending_count{stream="ssh",filter="failed",action="unban",ip="203.0.113.7",user="root"} 1"#
            ]
        );
        assert!(
            text.contains(
                r#"rebuff_pending_actions{stream="ssh",filter="failed",action="unban"} 1"#
            )
        );
        assert!(text.contains(r#"rebuff_jailed{stream="ssh",filter="failed"} 1"#));
    }

    #[test]
    fn commands_and_stream_events_are_counted_both_ways() {
        let m = metrics("metrics:\n");
        let failed = ExitOutcome {
            code: 4,
            signal: None,
            detail: None,
            timed_out: false,
        };
        m.command_done(
            CommandKind::Stop,
            &["ip6tables".to_owned(), "-X".to_owned()],
            &failed,
        );
        m.stream_event(0, StreamEvent::Start);
        m.stream_event(0, StreamEvent::Exit);
        let text = scrape(&m);
        assert_eq!(
            samples(&text, "reaction_commands_count"),
            [
                r#"reaction_commands_count{state="stop",command="ip6tables",status="False",code="4"} 1"#
            ]
        );
        assert!(text.contains(r#"rebuff_commands_total{kind="stop",result="failed"} 1"#));
        assert_eq!(
            samples(&text, "reaction_stream_event_count"),
            [
                r#"reaction_stream_event_count{stream="ssh",type="start"} 1"#,
                r#"reaction_stream_event_count{stream="ssh",type="exit"} 1"#,
            ]
        );
        assert!(text.contains(r#"rebuff_stream_up{stream="ssh"} 0"#));
        let again = scrape(&m);
        assert!(samples(&again, "reaction_commands_count").is_empty());
        assert!(again.contains(r#"rebuff_stream_events_total{stream="ssh",type="exit"} 1"#));
    }

    #[test]
    fn without_a_metrics_section_only_native_families_are_written() {
        let m = metrics("");
        m.matches(0, &[matched("root", "203.0.113.7")]);
        let text = scrape(&m);
        assert!(text.contains("rebuff_matches_total"));
        assert!(!text.contains("reaction_"));
        assert!(!text.contains("process_"));
    }

    #[test]
    fn every_family_is_written_once_with_help_and_type() {
        let m = metrics("metrics:\n  export: {pattern_matches: true}\n");
        let text = scrape(&m);
        let mut seen = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).expect("name");
            assert!(seen.insert(name.to_owned()), "{name} twice");
        }
        assert!(seen.len() > 25, "{seen:?}");
    }
}
