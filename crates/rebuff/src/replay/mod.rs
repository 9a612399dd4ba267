//! `rebuff replay`: the whole decision pipeline over old logs, in log time.
//!
//! Each line of each file (plain or gzip'ed, or stdin) gets its timestamp
//! from the line itself ([`timestamp`]); a line without one takes the
//! previous line's time. The line goes to every stream's [`StreamMatcher`]
//! (or one stream's, with `--stream`), and each accepted match to its
//! filter's [`FilterDecider`], exactly as in the daemon, but no action runs:
//! triggers and the actions they would run are printed as they happen, and a
//! summary follows. JSON output is streamed (one object, triggers first,
//! summary last) so memory does not grow with the number of triggers.

pub mod timestamp;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

use anyhow::{Context, bail};
use foldhash::fast::RandomState;
use rebuff_engine::{
    Decision, DuplicatePolicy, FilterDecider, FilterPlan, IgnoreReason, LineMatch, MatchScratch,
    StreamMatcher, Trigger, TriggerKind, Values, line_text,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{Config, Stream};
use crate::events::format_time;
use crate::lines::{LineReader, open_input};
use crate::progress::Progress;

use self::timestamp::TimestampParser;

/// Lines longer than this are cut and counted (reaction's streams are line
/// oriented; a 10 GB "line" must not be buffered).
pub const MAX_LINE: usize = 64 * 1024;

/// Distinct offending values tracked for the top-offenders table; more are
/// counted as untracked rather than growing memory without bound.
const MAX_TRACKED_OFFENDERS: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub format: OutputFormat,
    /// Only this stream's filters see the lines.
    pub stream: Option<String>,
    /// Files to read; `-` is stdin.
    pub files: Vec<PathBuf>,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

#[derive(Debug, Default, Clone)]
struct FilterStats {
    matches: u64,
    ignored: [u64; IgnoreReason::ALL.len()],
    triggers: u64,
    extended: u64,
    reruns: u64,
    duplicates_ignored: u64,
    /// Actions that would run, parallel to the filter's actions: a new
    /// trigger or a rerun counts each of its actions, an extension only the
    /// delayed actions that had already run (see [`already_ran`]).
    actions: Vec<u64>,
    /// `duplicate: extend` with delayed actions of different delays.
    extend_may_repeat: bool,
}

#[derive(Debug, Default)]
struct Offender {
    matches: u64,
    triggers: u64,
}

#[derive(Debug, Default)]
struct Totals {
    files: u64,
    lines: u64,
    bytes: u64,
    invalid_utf8: u64,
    oversized: u64,
    no_timestamp: u64,
    first_time: Option<u64>,
    last_time: Option<u64>,
}

struct StreamRun<'c> {
    stream: &'c Stream,
    /// Per filter, the value slot whose country a trigger reports (its
    /// first ip-typed value), when `geoip` is configured.
    country_slots: Vec<Option<usize>>,
    scratch: MatchScratch,
    deciders: Vec<FilterDecider>,
    stats: Vec<FilterStats>,
}

/// Runs a replay, writing triggers and the summary to `out`.
pub fn run(config: &Config, options: &ReplayOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    let streams: Vec<&Stream> = match &options.stream {
        Some(name) => match config.stream(name) {
            Some(stream) => vec![stream],
            None => {
                let known: Vec<&str> = config.streams.iter().map(|s| s.name.as_str()).collect();
                bail!("no stream named '{name}' (streams: {})", known.join(", "));
            }
        },
        None => config.streams.iter().filter(|s| !s.is_virtual).collect(),
    };
    // Virtual streams read no line: they are fed by virtual actions, and
    // come after the streams that read lines.
    let line_runs = streams.len();
    let fed: Vec<&Stream> = config
        .streams
        .iter()
        .filter(|s| s.is_virtual && !streams.iter().any(|t| t.name == s.name))
        .collect();
    let mut streams = streams;
    streams.extend(fed);
    let run_of_stream = config
        .streams
        .iter()
        .map(|s| streams.iter().position(|t| t.name == s.name))
        .collect();
    let mut replay = Replay {
        line_runs,
        run_of_stream,
        virtual_lines: BinaryHeap::new(),
        next_virtual: 0,
        extended: HashMap::default(),
        runs: streams
            .into_iter()
            .map(|stream| StreamRun {
                scratch: stream.matcher.scratch(),
                country_slots: stream
                    .filters
                    .iter()
                    .map(|f| {
                        config
                            .geoip
                            .as_ref()
                            .and_then(|_| crate::geo::country_slot(&config.patterns, f))
                    })
                    .collect(),
                deciders: stream
                    .filters
                    .iter()
                    .map(|f| FilterDecider::new(f.plan.clone()))
                    .collect(),
                stats: stream
                    .filters
                    .iter()
                    .map(|f| FilterStats {
                        actions: vec![0; f.actions.len()],
                        extend_may_repeat: extend_may_repeat(&f.plan),
                        ..FilterStats::default()
                    })
                    .collect(),
                stream,
            })
            .collect(),
        totals: Totals::default(),
        offenders: HashMap::default(),
        untracked_offenders: 0,
        geo: config.geoip.as_ref().map(|g| g.geo.clone()),
        countries: BTreeMap::new(),
        format: options.format,
        first_trigger: true,
        key: String::new(),
    };
    if options.format == OutputFormat::Json {
        out.write_all(b"{\"triggers\": [")?;
    }
    for file in &options.files {
        replay
            .file(file, options.progress, out)
            .with_context(|| format!("reading {}", file.display()))?;
    }
    replay.feed_virtual(u64::MAX, out)?;
    match options.format {
        OutputFormat::Json => {
            out.write_all(b"\n], \"summary\": ")?;
            serde_json::to_writer(&mut *out, &replay.summary_json())?;
            out.write_all(b"}\n")?;
        }
        OutputFormat::Text => replay.write_text_summary(out)?,
    }
    out.flush()?;
    Ok(())
}

/// A line a virtual action sends, at the log time it is sent.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct VirtualLine {
    at: u64,
    /// Breaks ties in the order sent.
    seq: u64,
    run: usize,
    line: String,
    /// For a delayed action: its trigger (run, filter, values), the time
    /// it was scheduled from and its delay, so an extension moves it.
    delayed: Option<(Extended, u64, u64)>,
}

/// A trigger by run, filter and values.
type Extended = (usize, usize, Values);

struct Replay<'c> {
    /// The streams that read lines, then the virtual ones.
    runs: Vec<StreamRun<'c>>,
    /// How many of `runs` read lines.
    line_runs: usize,
    /// The run of each configured stream, if it has one.
    run_of_stream: Vec<Option<usize>>,
    /// Lines of virtual actions not fed yet, earliest first.
    virtual_lines: BinaryHeap<Reverse<VirtualLine>>,
    next_virtual: u64,
    /// The latest extension of triggers with delayed virtual actions: as
    /// in the daemon, those are sent at the extended time plus `after`.
    extended: HashMap<Extended, u64, RandomState>,
    totals: Totals,
    /// Keyed by "stream.filter\0values".
    offenders: HashMap<String, Offender, RandomState>,
    untracked_offenders: u64,
    /// The `geoip` database, when configured.
    geo: Option<crate::geo::Geo>,
    /// Triggers by country (`unknown` for none); at most 26 * 26 + 1 keys.
    countries: BTreeMap<String, u64>,
    format: OutputFormat,
    first_trigger: bool,
    /// Reused buffer for offender keys.
    key: String,
}

impl<'c> Replay<'c> {
    fn file(&mut self, path: &Path, progress: bool, out: &mut dyn Write) -> anyhow::Result<()> {
        let input = open_input(path)?;
        self.totals.files += 1;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let reference = input.mtime_ms.unwrap_or(now_ms);
        let mut progress = Progress::new(
            progress && std::io::stderr().is_terminal(),
            input.total_bytes,
        );
        let raw_read = input.raw_bytes_read.clone();
        let mut source = LineSource {
            reader: LineReader::new(input.reader, MAX_LINE),
            stamps: TimestampParser::new(reference),
            time: reference.max(0) as u64,
            lines: 0,
        };
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
        let result = if workers > 1 {
            self.file_parallel(&mut source, workers, &mut progress, &raw_read, out)
        } else {
            self.file_inline(&mut source, &mut progress, &raw_read, out)
        };
        progress.finish();
        self.totals.lines += source.lines;
        self.totals.bytes += source.reader.bytes_read();
        result
    }

    /// One thread: read a batch, match it, apply it.
    fn file_inline(
        &mut self,
        source: &mut LineSource<impl std::io::Read>,
        progress: &mut Progress,
        raw_read: &AtomicU64,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let mut batch = Batch::default();
        let mut worker = Worker::default();
        let streams: Vec<&'c Stream> = self.line_streams();
        let matchers: Vec<&StreamMatcher> = streams.iter().map(|s| &s.matcher).collect();
        loop {
            let more = source.fill(&mut batch, &mut self.totals)?;
            let mut scratches: Vec<&mut MatchScratch> = self.runs[..self.line_runs]
                .iter_mut()
                .map(|r| &mut r.scratch)
                .collect();
            worker.run(&matchers, &mut scratches, &mut batch);
            self.apply(&mut batch, out)?;
            progress.update(raw_read.load(Ordering::Relaxed), source.lines);
            if !more {
                return Ok(());
            }
        }
    }

    /// Matching is stateless per line, so batches of lines are matched on
    /// worker threads while this thread reads, parses timestamps and applies
    /// the results in file order (decisions stay strictly sequential).
    fn file_parallel(
        &mut self,
        source: &mut LineSource<impl std::io::Read>,
        workers: usize,
        progress: &mut Progress,
        raw_read: &AtomicU64,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let streams: Vec<&'c Stream> = self.line_streams();
        let matchers: Vec<&StreamMatcher> = streams.iter().map(|s| &s.matcher).collect();
        let max_in_flight = workers * 2;
        let (work_tx, work_rx) = mpsc::sync_channel::<Batch>(max_in_flight);
        let work_rx = Mutex::new(work_rx);
        let (done_tx, done_rx) = mpsc::channel::<Batch>();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let (work_rx, done_tx, matchers) = (&work_rx, done_tx.clone(), &matchers);
                scope.spawn(move || {
                    let mut scratches: Vec<MatchScratch> =
                        matchers.iter().map(|m| m.scratch()).collect();
                    let mut scratch_refs: Vec<&mut MatchScratch> = scratches.iter_mut().collect();
                    let mut worker = Worker::default();
                    loop {
                        let next = match work_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(mut batch) = next else { return };
                        worker.run(matchers, &mut scratch_refs, &mut batch);
                        if done_tx.send(batch).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(done_tx);

            let mut pool: Vec<Batch> = Vec::new();
            let mut waiting: BTreeMap<u64, Batch> = BTreeMap::new();
            let (mut sent, mut applied) = (0u64, 0u64);
            let mut more = true;
            while more || applied < sent {
                if more && sent - applied < max_in_flight as u64 {
                    let mut batch = pool.pop().unwrap_or_default();
                    more = source.fill(&mut batch, &mut self.totals)?;
                    batch.seq = sent;
                    sent += 1;
                    if work_tx.send(batch).is_err() {
                        bail!("a matching thread stopped");
                    }
                    // Keep reading while workers are busy; apply what is ready.
                    while let Ok(done) = done_rx.try_recv() {
                        waiting.insert(done.seq, done);
                    }
                } else {
                    let Ok(done) = done_rx.recv() else {
                        bail!("a matching thread stopped");
                    };
                    waiting.insert(done.seq, done);
                }
                while let Some(mut batch) = waiting.remove(&applied) {
                    self.apply(&mut batch, out)?;
                    applied += 1;
                    pool.push(batch);
                }
                progress.update(raw_read.load(Ordering::Relaxed), source.lines);
            }
            drop(work_tx);
            Ok(())
        })
    }

    fn line_streams(&self) -> Vec<&'c Stream> {
        self.runs[..self.line_runs]
            .iter()
            .map(|r| r.stream)
            .collect()
    }

    /// Applies a matched batch's matches in line order, each line after the
    /// virtual lines sent up to its time.
    fn apply(&mut self, batch: &mut Batch, out: &mut dyn Write) -> anyhow::Result<()> {
        self.totals.invalid_utf8 += batch.invalid_utf8;
        let times = std::mem::take(&mut batch.times);
        let mut last_line = None;
        for (line, run, m) in batch.matches.drain(..) {
            let time = times[line as usize];
            if last_line != Some(line) {
                last_line = Some(line);
                self.feed_virtual(time, out)?;
            }
            self.on_match(run as usize, m, time, out)?;
        }
        batch.times = times;
        Ok(())
    }

    /// Feeds the virtual lines sent up to `until` to their streams, in
    /// time order (lines they cause in turn included).
    fn feed_virtual(&mut self, until: u64, out: &mut dyn Write) -> anyhow::Result<()> {
        let mut found = Vec::new();
        while self
            .virtual_lines
            .peek()
            .is_some_and(|Reverse(v)| v.at <= until)
        {
            let Some(Reverse(mut sent)) = self.virtual_lines.pop() else {
                break;
            };
            if let Some((key, from, after)) = &mut sent.delayed
                && let Some(&latest) = self.extended.get(key)
                && latest > *from
            {
                // Extended since: sent later.
                *from = latest;
                sent.at = latest.saturating_add(*after);
                self.virtual_lines.push(Reverse(sent));
                continue;
            }
            let run = &mut self.runs[sent.run];
            found.clear();
            if run
                .stream
                .matcher
                .find(&sent.line, &mut run.scratch, &mut found)
            {
                for m in found.drain(..) {
                    self.on_match(sent.run, m, sent.at, out)?;
                }
            }
        }
        Ok(())
    }

    fn on_match(
        &mut self,
        run_index: usize,
        m: LineMatch,
        time: u64,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let run = &mut self.runs[run_index];
        let stats = &mut run.stats[m.filter];
        let values = match m.outcome {
            Ok(values) => values,
            Err(ignored) => {
                let reason = IgnoreReason::ALL
                    .iter()
                    .position(|r| *r == ignored.reason)
                    .unwrap_or(0);
                stats.ignored[reason] += 1;
                return Ok(());
            }
        };
        stats.matches += 1;
        let stream = run.stream;
        self.key.clear();
        self.key.push_str(&stream.name);
        self.key.push('.');
        self.key.push_str(&stream.filters[m.filter].name);
        self.key.push('\0');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.key.push(' ');
            }
            self.key.push_str(value);
        }
        bump(
            &mut self.offenders,
            &mut self.untracked_offenders,
            &self.key,
            false,
        );

        let run = &mut self.runs[run_index];
        let stats = &mut run.stats[m.filter];
        let decider = &mut run.deciders[m.filter];
        // Under `extend` a duplicate moves the delayed actions that are still
        // pending; one that already ran (a shorter `after`) is scheduled, and
        // would run, again. Only filters with delayed actions of different
        // delays can have such an action.
        let jailed_until = if stats.extend_may_repeat {
            decider.jailed_until(&values)
        } else {
            None
        };
        let trigger = match decider.on_match(values, time) {
            Decision::Counted { .. } => return Ok(()),
            Decision::DuplicateIgnored => {
                stats.duplicates_ignored += 1;
                return Ok(());
            }
            Decision::Trigger(trigger) => trigger,
        };
        match trigger.kind {
            TriggerKind::New => stats.triggers += 1,
            TriggerKind::Rerun => stats.reruns += 1,
            TriggerKind::Extend => stats.extended += 1,
        }
        let plan = run.deciders[m.filter].plan();
        for scheduled in &trigger.actions {
            if trigger.kind == TriggerKind::Extend
                && !already_ran(plan, scheduled.action, jailed_until, trigger.time)
            {
                // Still pending: the extension only moves it.
                continue;
            }
            stats.actions[scheduled.action] += 1;
        }
        // An extension only pushes pending actions back: it is counted, not
        // printed (a persistent attacker would otherwise print one record per
        // line).
        if trigger.kind == TriggerKind::Extend {
            let filter = &self.runs[run_index].stream.filters[m.filter];
            if filter
                .plan
                .actions
                .iter()
                .zip(&filter.actions)
                .any(|(spec, action)| spec.after.is_some() && action.send_to.is_some())
            {
                self.extended
                    .insert((run_index, m.filter, trigger.values.clone()), trigger.time);
            }
            return Ok(());
        }
        bump(
            &mut self.offenders,
            &mut self.untracked_offenders,
            &self.key,
            true,
        );
        let filter = &self.runs[run_index].stream.filters[m.filter];
        for scheduled in &trigger.actions {
            let action = &filter.actions[scheduled.action];
            let Some(run) = action.send_to.and_then(|to| self.run_of_stream[to]) else {
                continue;
            };
            let after = filter.plan.actions[scheduled.action].after;
            self.next_virtual += 1;
            self.virtual_lines.push(Reverse(VirtualLine {
                at: scheduled.at,
                seq: self.next_virtual,
                run,
                line: action.render(&trigger.values).concat(),
                delayed: after.map(|after| {
                    let key = (run_index, m.filter, trigger.values.clone());
                    (key, trigger.time, after)
                }),
            }));
        }
        self.write_trigger(run_index, m.filter, &trigger, out)
    }

    fn write_trigger(
        &mut self,
        run_index: usize,
        filter_index: usize,
        trigger: &Trigger,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let stream = self.runs[run_index].stream;
        let filter = &stream.filters[filter_index];
        // The country of the trigger's address: `Some("")` when unknown,
        // `None` when there is no database or no address.
        let country = match (&self.geo, self.runs[run_index].country_slots[filter_index]) {
            (Some(geo), Some(slot)) => {
                let code = trigger
                    .values
                    .get(slot)
                    .map(|v| crate::geo::country_text(geo, v))
                    .unwrap_or_default();
                let key = if code.is_empty() {
                    crate::geo::tcp::UNKNOWN
                } else {
                    code.as_str()
                };
                *self.countries.entry(key.to_owned()).or_default() += 1;
                Some(code)
            }
            _ => None,
        };
        match self.format {
            OutputFormat::Json => {
                let record = TriggerRecord {
                    time: format_time(trigger.time),
                    stream: &stream.name,
                    filter: &filter.name,
                    kind: kind_name(trigger.kind),
                    country: country.as_deref(),
                    values: filter
                        .pattern_names
                        .iter()
                        .map(String::as_str)
                        .zip(trigger.values.iter().map(String::as_str))
                        .collect(),
                    actions: trigger
                        .actions
                        .iter()
                        .map(|s| {
                            let action = &filter.actions[s.action];
                            ActionRecord {
                                action: &action.name,
                                at: format_time(s.at),
                                cmd: action.render(&trigger.values),
                            }
                        })
                        .collect(),
                };
                out.write_all(if self.first_trigger { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *out, &record)?;
            }
            OutputFormat::Text => {
                write!(
                    out,
                    "{} {}.{} {} {}",
                    format_time(trigger.time),
                    stream.name,
                    filter.name,
                    trigger.values.join(" "),
                    kind_name(trigger.kind)
                )?;
                if let Some(country) = &country {
                    write!(out, " [{}]", if country.is_empty() { "-" } else { country })?;
                }
                let mut sep = " ->";
                for s in &trigger.actions {
                    let action = &filter.actions[s.action];
                    if s.at == trigger.time {
                        write!(out, "{sep} {} now", action.name)?;
                    } else {
                        write!(out, "{sep} {} at {}", action.name, format_time(s.at))?;
                    }
                    sep = ",";
                }
                if trigger.actions.is_empty() {
                    write!(out, " -> no action")?;
                }
                writeln!(out)?;
            }
        }
        self.first_trigger = false;
        Ok(())
    }

    fn filter_rows(&self) -> Vec<(String, &FilterStats, &crate::config::Filter)> {
        let mut rows = Vec::new();
        for run in &self.runs {
            for (stats, filter) in run.stats.iter().zip(&run.stream.filters) {
                rows.push((
                    format!("{}.{}", run.stream.name, filter.name),
                    stats,
                    filter,
                ));
            }
        }
        rows
    }

    fn top_offenders(&self, limit: usize) -> Vec<(&str, &str, &Offender)> {
        let mut all: Vec<(&str, &str, &Offender)> = self
            .offenders
            .iter()
            .filter(|(_, o)| o.triggers > 0)
            .map(|(k, o)| {
                let (filter, values) = k.split_once('\0').unwrap_or((k.as_str(), ""));
                (filter, values, o)
            })
            .collect();
        all.sort_by(|a, b| {
            (b.2.triggers, b.2.matches)
                .cmp(&(a.2.triggers, a.2.matches))
                .then_with(|| (a.0, a.1).cmp(&(b.0, b.1)))
        });
        all.truncate(limit);
        all
    }

    fn summary_json(&self) -> Value {
        let rows = self.filter_rows();
        let mut filters = serde_json::Map::new();
        let mut ignored_by_reason: BTreeMap<&str, u64> = BTreeMap::new();
        let (
            mut matches,
            mut ignored,
            mut triggers,
            mut extended,
            mut reruns,
            mut dups,
            mut actions,
        ) = (0, 0, 0, 0, 0, 0, 0);
        for (name, stats, filter) in &rows {
            let ignored_here: u64 = stats.ignored.iter().sum();
            let mut reasons = serde_json::Map::new();
            for (reason, count) in IgnoreReason::ALL.iter().zip(stats.ignored) {
                if count > 0 {
                    reasons.insert(reason.name().to_owned(), count.into());
                    *ignored_by_reason.entry(reason.name()).or_default() += count;
                }
            }
            let action_counts: serde_json::Map<String, Value> = filter
                .actions
                .iter()
                .zip(&stats.actions)
                .map(|(a, n)| (a.name.clone(), (*n).into()))
                .collect();
            let actions_here: u64 = stats.actions.iter().sum();
            filters.insert(
                name.clone(),
                json!({
                    "matches": stats.matches,
                    "ignored": ignored_here,
                    "ignored_by_reason": reasons,
                    "triggers": stats.triggers + stats.reruns,
                    "extended": stats.extended,
                    "reruns": stats.reruns,
                    "duplicates_ignored": stats.duplicates_ignored,
                    "actions": action_counts,
                }),
            );
            matches += stats.matches;
            ignored += ignored_here;
            triggers += stats.triggers + stats.reruns;
            extended += stats.extended;
            reruns += stats.reruns;
            dups += stats.duplicates_ignored;
            actions += actions_here;
        }
        let top: Vec<Value> = self
            .top_offenders(20)
            .into_iter()
            .map(|(name, key, o)| {
                json!({"name": name, "key": key, "triggers": o.triggers, "matches": o.matches})
            })
            .collect();
        let t = &self.totals;
        json!({
            "files": t.files,
            "lines": t.lines,
            "bytes": t.bytes,
            "lines_without_timestamp": t.no_timestamp,
            "invalid_utf8_lines": t.invalid_utf8,
            "oversized_lines": t.oversized,
            "first_time": t.first_time.map(format_time),
            "last_time": t.last_time.map(format_time),
            "matches": matches,
            "ignored": ignored,
            "ignored_by_reason": ignored_by_reason,
            "triggers": triggers,
            "extended": extended,
            "reruns": reruns,
            "duplicates_ignored": dups,
            "actions": actions,
            "filters": filters,
            "top_offenders": top,
            "untracked_offenders": self.untracked_offenders,
            "top_countries": self.geo.as_ref().map(|_| {
                self.top_countries(20)
                    .into_iter()
                    .map(|(country, triggers)| json!({"country": country, "triggers": triggers}))
                    .collect::<Vec<_>>()
            }),
        })
    }

    fn write_text_summary(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        let s = self.summary_json();
        let n = |key: &str| s[key].as_u64().unwrap_or(0);
        writeln!(out)?;
        writeln!(out, "== summary")?;
        writeln!(
            out,
            "files {}  lines {}  bytes {}",
            n("files"),
            n("lines"),
            n("bytes")
        )?;
        if let (Some(first), Some(last)) = (s["first_time"].as_str(), s["last_time"].as_str()) {
            writeln!(out, "log time {first} .. {last}")?;
        }
        writeln!(
            out,
            "lines without timestamp {} (took the previous line's time)  invalid UTF-8 {}  over {} bytes {}",
            n("lines_without_timestamp"),
            n("invalid_utf8_lines"),
            MAX_LINE,
            n("oversized_lines")
        )?;
        write!(out, "matches {}  ignored {}", n("matches"), n("ignored"))?;
        if let Some(reasons) = s["ignored_by_reason"].as_object()
            && !reasons.is_empty()
        {
            let parts: Vec<String> = reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
            write!(out, " ({})", parts.join(", "))?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "triggers {}  extended {}  reruns {}  duplicates ignored {}  actions that would run {}",
            n("triggers"),
            n("extended"),
            n("reruns"),
            n("duplicates_ignored"),
            n("actions")
        )?;

        let rows = self.filter_rows();
        let width = rows
            .iter()
            .map(|(name, _, _)| name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        writeln!(out)?;
        writeln!(
            out,
            "{:<width$} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "filter", "matches", "ignored", "triggers", "extended", "actions"
        )?;
        for (name, stats, _) in &rows {
            writeln!(
                out,
                "{:<width$} {:>10} {:>9} {:>9} {:>9} {:>9}",
                name,
                stats.matches,
                stats.ignored.iter().sum::<u64>(),
                stats.triggers + stats.reruns,
                stats.extended,
                stats.actions.iter().sum::<u64>()
            )?;
        }

        let top = self.top_offenders(10);
        if !top.is_empty() {
            let vwidth = top
                .iter()
                .map(|(_, v, _)| v.len())
                .max()
                .unwrap_or(5)
                .max(5);
            let fwidth = top
                .iter()
                .map(|(f, _, _)| f.len())
                .max()
                .unwrap_or(6)
                .max(6);
            writeln!(out)?;
            writeln!(out, "top offenders")?;
            writeln!(
                out,
                "{:<vwidth$} {:<fwidth$} {:>9} {:>10}",
                "value", "filter", "triggers", "matches"
            )?;
            for (filter, values, o) in top {
                writeln!(
                    out,
                    "{:<vwidth$} {:<fwidth$} {:>9} {:>10}",
                    values, filter, o.triggers, o.matches
                )?;
            }
        }
        if self.untracked_offenders > 0 {
            writeln!(
                out,
                "({} matches of values beyond the first {MAX_TRACKED_OFFENDERS} are not in the table)",
                self.untracked_offenders
            )?;
        }
        let countries = self.top_countries(10);
        if !countries.is_empty() {
            writeln!(out)?;
            writeln!(out, "{:<8} {:>9}", "country", "triggers")?;
            for (country, triggers) in countries {
                writeln!(out, "{country:<8} {triggers:>9}")?;
            }
        }
        Ok(())
    }

    /// Countries by triggers, most first (ties by code).
    fn top_countries(&self, limit: usize) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self
            .countries
            .iter()
            .map(|(c, n)| (c.as_str(), *n))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        all.truncate(limit);
        all
    }
}

/// One trigger in `--format json` output.
#[derive(Serialize)]
struct TriggerRecord<'a> {
    time: String,
    stream: &'a str,
    filter: &'a str,
    kind: &'static str,
    /// The ISO code of the address's country, empty when unknown; absent
    /// without `geoip` or without an ip value.
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<&'a str>,
    values: BTreeMap<&'a str, &'a str>,
    actions: Vec<ActionRecord<'a>>,
}

#[derive(Serialize)]
struct ActionRecord<'a> {
    action: &'a str,
    at: String,
    cmd: Vec<String>,
}

/// Lines per batch handed to a matching thread.
const BATCH_LINES: usize = 4096;
/// Matching threads used at most (replay is usually one file on a small box).
const MAX_WORKERS: usize = 4;

/// A run of consecutive lines, then the matches found in them.
#[derive(Debug, Default)]
struct Batch {
    seq: u64,
    text: Vec<u8>,
    /// End offset of each line in `text`.
    ends: Vec<usize>,
    /// Log time of each line.
    times: Vec<u64>,
    /// (line index, stream run index, match), in line order.
    matches: Vec<(u32, u16, LineMatch)>,
    invalid_utf8: u64,
}

/// Reads lines and gives each its log time.
struct LineSource<R: std::io::Read> {
    reader: LineReader<R>,
    stamps: TimestampParser,
    /// Time of the last line with a timestamp (or the file's reference).
    time: u64,
    lines: u64,
}

impl<R: std::io::Read> LineSource<R> {
    /// Refills `batch` with up to [`BATCH_LINES`] lines; false at the end.
    fn fill(&mut self, batch: &mut Batch, totals: &mut Totals) -> anyhow::Result<bool> {
        batch.text.clear();
        batch.ends.clear();
        batch.times.clear();
        batch.matches.clear();
        batch.invalid_utf8 = 0;
        while batch.ends.len() < BATCH_LINES {
            let Some(line) = self.reader.next_line()? else {
                return Ok(false);
            };
            self.lines += 1;
            if line.truncated {
                totals.oversized += 1;
            }
            match self.stamps.parse(line.bytes) {
                Some(ms) => self.time = ms.max(0) as u64,
                None => totals.no_timestamp += 1,
            }
            totals.first_time.get_or_insert(self.time);
            totals.last_time = Some(self.time);
            batch.text.extend_from_slice(line.bytes);
            batch.ends.push(batch.text.len());
            batch.times.push(self.time);
        }
        Ok(true)
    }
}

/// Matches batches; owns its reusable buffers.
#[derive(Default)]
struct Worker {
    found: Vec<LineMatch>,
    lossy: String,
}

impl Worker {
    fn run(
        &mut self,
        matchers: &[&StreamMatcher],
        scratches: &mut [&mut MatchScratch],
        batch: &mut Batch,
    ) {
        let Batch {
            text,
            ends,
            matches,
            invalid_utf8,
            ..
        } = batch;
        let mut start = 0;
        for (index, &end) in ends.iter().enumerate() {
            let (line, invalid) = line_text(&text[start..end], &mut self.lossy);
            if invalid {
                *invalid_utf8 += 1;
            }
            for (run, matcher) in matchers.iter().enumerate() {
                self.found.clear();
                if matcher.find(line, &mut *scratches[run], &mut self.found) {
                    for m in self.found.drain(..) {
                        matches.push((index as u32, run as u16, m));
                    }
                }
            }
            start = end;
        }
    }
}

fn bump(
    map: &mut HashMap<String, Offender, RandomState>,
    untracked: &mut u64,
    key: &str,
    trigger: bool,
) {
    if !map.contains_key(key) {
        if map.len() >= MAX_TRACKED_OFFENDERS {
            *untracked += 1;
            return;
        }
        map.insert(key.to_owned(), Offender::default());
    }
    let Some(entry) = map.get_mut(key) else {
        return;
    };
    if trigger {
        entry.triggers += 1;
    } else {
        entry.matches += 1;
    }
}

/// Whether an extension of a filter under `plan` can reschedule a delayed
/// action that already ran: only when its delayed actions differ in delay.
fn extend_may_repeat(plan: &FilterPlan) -> bool {
    let mut delays = plan.actions.iter().filter_map(|a| a.after);
    let first = delays.next();
    plan.duplicate == DuplicatePolicy::Extend && delays.any(|d| Some(d) != first)
}

/// Whether delayed `action` of a trigger jailed until `jailed_until` (its
/// time plus the longest delay) was due, and so ran, by `now`: an extension
/// at `now` then schedules it once more. Without a jail (the filter has one
/// delay, so every delayed action is still pending) it did not run.
fn already_ran(plan: &FilterPlan, action: usize, jailed_until: Option<u64>, now: u64) -> bool {
    let (Some(until), Some(longest), Some(after)) = (
        jailed_until,
        plan.longest_delay(),
        plan.actions.get(action).and_then(|a| a.after),
    ) else {
        return false;
    };
    until.saturating_sub(longest).saturating_add(after) <= now
}

fn kind_name(kind: TriggerKind) -> &'static str {
    match kind {
        TriggerKind::New => "new",
        TriggerKind::Extend => "extend",
        TriggerKind::Rerun => "rerun",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339_utc() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_717_243_200_123), "2024-06-01T12:00:00.123Z");
    }
}
