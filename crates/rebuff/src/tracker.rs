//! The tracker: the one owner of decision state.
//!
//! It receives [`MatchBatch`]es from the stream tasks and [`ControlCmd`]s
//! from the control socket. It owns every filter's [`FilterDecider`], the
//! pending triggers of jails (filters with delayed actions), the timers of
//! delayed actions and the [`Store`] handle; it sends [`ActionJob`]s to the
//! [`Executor`].
//!
//! Invariants:
//! - a trigger with delayed actions is committed durably to the store
//!   *before* any of its actions is handed to the executor (group commit:
//!   one commit per drained batch of messages, not one per match);
//! - a timer carries the trigger time it was scheduled for; when it fires
//!   it runs only if that trigger is still pending with that action, so an
//!   address flushed or re-banned (`extend`) is never unbanned by a stale
//!   timer;
//! - `flush` is durable before its actions run, so a restart cannot
//!   resurrect what was flushed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::RandomState;
use rebuff_engine::{Decision, FilterDecider, Time, Trigger, TriggerKind, Values};
use regex::Regex;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Action, Config};
use crate::control::{ControlCmd, Request, Response, Selection};
use crate::exec::{ActionJob, Executor};
use crate::metrics::{Ignored, Metrics, PendingCmd, PendingKey, PendingSnapshot};
use crate::replay::format_time;
use crate::store::{Record, Restored, Store};

/// How many queued messages one round handles before it commits and
/// dispatches: large enough to group commits under a flood, small enough
/// that control requests and timers are not starved.
const MAX_MESSAGES_PER_ROUND: usize = 256;

/// One accepted match, as a stream task found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// Index of the filter in its stream.
    pub filter: usize,
    pub values: Values,
    pub time: Time,
}

/// Matches of one stream, in line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchBatch {
    /// Index of the stream in the configuration.
    pub stream: usize,
    pub matches: Vec<Match>,
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> Time {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Time)
}

/// A trigger of a jail whose delayed actions have not all run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingTrigger {
    /// Unique for the daemon's lifetime: timers name their trigger by it,
    /// so a timer of a flushed trigger never acts on a later one.
    id: u64,
    /// When it triggered, or was last extended.
    time: Time,
    /// Delayed actions still to run.
    pending: Vec<usize>,
    /// Delayed actions with a timer in the heap. An `extend` moves `time`
    /// without adding timers: an early timer re-arms itself at the new due
    /// time, so a flood of duplicates cannot fill the heap.
    armed: Vec<usize>,
}

/// A delayed action due at `at` (or later, if its trigger was extended).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Time,
    /// Breaks ties in scheduling order.
    seq: u64,
    filter: usize,
    values: Values,
    trigger: u64,
    action: usize,
}

/// One filter's state and what it needs to build actions.
#[derive(Debug)]
struct FilterState {
    stream: Arc<str>,
    name: Arc<str>,
    pattern_names: Vec<String>,
    actions: Vec<Action>,
    action_names: Vec<Arc<str>>,
    decider: FilterDecider,
    jail: HashMap<Values, Vec<PendingTrigger>, RandomState>,
    /// Matches are persisted only where they can add up to a trigger.
    persist_matches: bool,
    /// Triggers are persisted only for jails (filters with delayed actions).
    persist_triggers: bool,
    /// Global index of the filter and of its first action, for metrics.
    id: usize,
    first_action: usize,
}

impl FilterState {
    fn is_delayed(&self, action: usize) -> bool {
        self.decider.plan().actions[action].after.is_some()
    }
}

/// Counts the daemon logs at shutdown and metrics read later.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TrackerReport {
    pub matches: u64,
    pub triggers: u64,
    pub actions: u64,
    pub restored_triggers: u64,
    pub dropped_entries: u64,
    pub store_errors: u64,
}

/// What the tracker is built from.
#[derive(Debug)]
pub struct TrackerDeps {
    pub config: Arc<Config>,
    pub store: Store,
    pub executor: Executor,
    /// Per-action timeout.
    pub action_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// The channels the tracker serves.
#[derive(Debug)]
pub struct TrackerInputs {
    pub matches: mpsc::Receiver<MatchBatch>,
    pub control: mpsc::Receiver<ControlCmd>,
    /// Scrapes asking for pending actions.
    pub pending: mpsc::Receiver<PendingCmd>,
    /// Cancelled once the streams were told to stop and had their chance
    /// to end: the tracker then takes what is queued and stops, even if a
    /// stuck stream still holds a sender.
    pub stop: CancellationToken,
}

#[derive(Debug)]
pub struct Tracker {
    config: Arc<Config>,
    store: Store,
    executor: Executor,
    action_timeout: Duration,
    filters: Vec<FilterState>,
    /// Global index of each stream's first filter.
    stream_offsets: Vec<usize>,
    timers: BinaryHeap<Reverse<Timer>>,
    next_seq: u64,
    next_trigger_id: u64,
    /// Actions to hand to the executor after the next commit.
    ready: Vec<ActionJob>,
    /// The uncommitted records include one an action waits for.
    durable_needed: bool,
    report: TrackerReport,
    metrics: Arc<Metrics>,
}

impl Tracker {
    pub fn new(deps: TrackerDeps) -> Self {
        let config = deps.config;
        let mut filters = Vec::new();
        let mut stream_offsets = Vec::new();
        for stream in &config.streams {
            stream_offsets.push(filters.len());
            let stream_name: Arc<str> = stream.name.as_str().into();
            for filter in &stream.filters {
                let plan = filter.plan.clone();
                filters.push(FilterState {
                    stream: stream_name.clone(),
                    name: filter.name.as_str().into(),
                    pattern_names: filter.pattern_names.clone(),
                    actions: filter.actions.clone(),
                    action_names: filter
                        .actions
                        .iter()
                        .map(|a| a.name.as_str().into())
                        .collect(),
                    persist_matches: plan.retry > 1,
                    persist_triggers: plan.longest_delay().is_some(),
                    decider: FilterDecider::new(plan),
                    jail: HashMap::default(),
                    id: filters.len(),
                    first_action: deps.metrics.action_id(filters.len(), 0),
                });
            }
        }
        Tracker {
            config,
            store: deps.store,
            executor: deps.executor,
            action_timeout: deps.action_timeout,
            filters,
            stream_offsets,
            timers: BinaryHeap::new(),
            next_seq: 0,
            next_trigger_id: 0,
            ready: Vec::new(),
            durable_needed: false,
            report: TrackerReport::default(),
            metrics: deps.metrics,
        }
    }

    pub fn report(&self) -> &TrackerReport {
        &self.report
    }

    fn filter_index(&self, stream: &str, filter: &str) -> Option<usize> {
        self.filters
            .iter()
            .position(|f| &*f.stream == stream && &*f.name == filter)
    }

    /// Rebuilds state from the store, as reaction does at start: past
    /// actions of persisted triggers run again (the ban rebuilds the
    /// firewall; an unban whose time passed runs now) except `oneshot` ones,
    /// future ones are scheduled, and entries of filters that no longer
    /// exist are dropped. The store is then compacted to the live state.
    pub fn restore(&mut self, restored: Restored, now: Time) -> anyhow::Result<()> {
        let mut dropped: HashMap<(String, String), u64> = HashMap::new();
        for entry in restored.entries {
            let Some(fid) = self.filter_index(&entry.stream, &entry.filter) else {
                *dropped.entry((entry.stream, entry.filter)).or_default() += 1;
                continue;
            };
            if entry.values.len() != self.filters[fid].pattern_names.len() {
                *dropped.entry((entry.stream, entry.filter)).or_default() += 1;
                continue;
            }
            let fs = &mut self.filters[fid];
            let period = fs.decider.plan().retry_period;
            if fs.persist_matches {
                for &time in &entry.matches {
                    if now.saturating_sub(time) < period {
                        fs.decider.restore_match(entry.values.clone(), time);
                    }
                }
            }
            if !fs.persist_triggers {
                continue;
            }
            for &time in &entry.triggers {
                self.restore_trigger(fid, &entry.values, time, now);
            }
        }
        for ((stream, filter), count) in dropped {
            self.report.dropped_entries += count;
            tracing::warn!(
                stream = %stream,
                filter = %filter,
                entries = count,
                "dropped persisted entries of a filter that is no longer configured (or whose patterns changed)"
            );
        }
        if let Some(path) = &restored.moved_aside {
            tracing::error!(
                path = %path.display(),
                "the state file was written by an unknown format version; it was moved aside and rebuff starts with an empty state"
            );
        }
        if restored.dropped_tail_bytes > 0 {
            tracing::warn!(
                bytes = restored.dropped_tail_bytes,
                "the end of the state file was torn or corrupt and was dropped"
            );
        }
        self.compact()?;
        tracing::info!(
            triggers = self.report.restored_triggers,
            records = restored.records,
            "state restored"
        );
        Ok(())
    }

    fn restore_trigger(&mut self, fid: usize, values: &Values, time: Time, now: Time) {
        let fs = &mut self.filters[fid];
        fs.decider.restore_trigger(values.clone(), time);
        let mut pending = Vec::new();
        for (action, spec) in fs.decider.plan().actions.iter().enumerate() {
            if !fs.decider.plan().action_applies(action, values) {
                continue;
            }
            let at = time.saturating_add(spec.after.unwrap_or(0));
            if spec.after.is_some() && at > now {
                pending.push(action);
            } else if !spec.oneshot {
                let job = job(fs, action, values, self.action_timeout, true);
                self.ready.push(job);
            }
        }
        if pending.is_empty() {
            return;
        }
        self.report.restored_triggers += 1;
        self.add_pending_trigger(fid, values, time, pending);
    }

    /// Jails `values` with a new pending trigger and arms a timer for each
    /// of its delayed actions.
    fn add_pending_trigger(
        &mut self,
        fid: usize,
        values: &Values,
        time: Time,
        pending: Vec<usize>,
    ) {
        self.next_trigger_id += 1;
        let id = self.next_trigger_id;
        for &action in &pending {
            self.arm(fid, values, id, time, action);
        }
        self.filters[fid]
            .jail
            .entry(values.clone())
            .or_default()
            .push(PendingTrigger {
                id,
                time,
                armed: pending.clone(),
                pending,
            });
    }

    fn arm(&mut self, fid: usize, values: &Values, trigger: u64, time: Time, action: usize) {
        let after = self.filters[fid].decider.plan().actions[action]
            .after
            .unwrap_or(0);
        self.next_seq += 1;
        self.timers.push(Reverse(Timer {
            at: time.saturating_add(after),
            seq: self.next_seq,
            filter: fid,
            values: values.clone(),
            trigger,
            action,
        }));
    }

    /// Serves until every stream has ended (the match channel closed), then
    /// runs the pending `onexit` actions and commits the store.
    pub async fn run(mut self, mut inputs: TrackerInputs) -> anyhow::Result<TrackerReport> {
        // Restored actions wait for nothing but the restore's compaction.
        self.dispatch_ready();
        let rotation = self
            .config
            .state_rotation_interval
            .map(Duration::from_millis);
        let mut next_rotation = rotation.map(|every| Instant::now() + every);
        let mut control_open = true;
        loop {
            let next_timer = self.timers.peek().map(|t| t.0.at);
            let timer_deadline = next_timer
                .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_ms())));
            tokio::select! {
                batch = inputs.matches.recv() => {
                    let Some(batch) = batch else { break };
                    self.on_batch(batch);
                    for _ in 1..MAX_MESSAGES_PER_ROUND {
                        match inputs.matches.try_recv() {
                            Ok(batch) => self.on_batch(batch),
                            Err(_) => break,
                        }
                    }
                }
                Some(cmd) = inputs.pending.recv() => {
                    let _ = cmd.respond.send(self.pending_snapshot(cmd.keys));
                }
                cmd = inputs.control.recv(), if control_open => {
                    match cmd {
                        Some(cmd) => self.on_control(cmd),
                        None => control_open = false,
                    }
                }
                () = sleep_until_opt(timer_deadline), if timer_deadline.is_some() => {
                    self.fire_due_timers(now_ms());
                }
                () = inputs.stop.cancelled() => {
                    while let Ok(batch) = inputs.matches.try_recv() {
                        self.on_batch(batch);
                    }
                    self.commit_or_log();
                    self.dispatch_ready();
                    break;
                }
                () = sleep_until_opt(next_rotation), if next_rotation.is_some() => {
                    next_rotation = rotation.map(|every| Instant::now() + every);
                    self.commit_or_log();
                    self.compact_or_log();
                }
            }
            self.commit_or_log();
            if self.store.needs_compaction() {
                self.compact_or_log();
            }
            self.dispatch_ready();
        }
        self.run_onexit().await;
        self.commit_or_log();
        self.compact_or_log();
        Ok(self.report)
    }

    fn on_batch(&mut self, batch: MatchBatch) {
        let Some(&offset) = self.stream_offsets.get(batch.stream) else {
            return;
        };
        for m in batch.matches {
            self.on_match(offset + m.filter, m.values, m.time);
        }
    }

    fn on_match(&mut self, fid: usize, values: Values, time: Time) {
        self.report.matches += 1;
        let fs = &mut self.filters[fid];
        // A jailed value's match is a duplicate: it never counts, so it is
        // not persisted as a match either.
        if fs.persist_matches && !fs.decider.is_jailed(&values, time) {
            self.store.append(&Record::Match {
                stream: &fs.stream,
                filter: &fs.name,
                values: &values,
                time,
            });
        }
        match fs.decider.on_match(values, time) {
            Decision::Trigger(trigger) => self.on_trigger(fid, trigger),
            Decision::DuplicateIgnored => self.metrics.ignored(fid, Ignored::Duplicate),
            Decision::Counted { .. } => {}
        }
    }

    fn on_trigger(&mut self, fid: usize, trigger: Trigger) {
        if trigger.kind != TriggerKind::Extend {
            self.report.triggers += 1;
            self.metrics.trigger(fid);
        }
        let fs = &mut self.filters[fid];
        let mut delayed = Vec::new();
        for scheduled in &trigger.actions {
            if fs.is_delayed(scheduled.action) {
                delayed.push(scheduled.action);
            } else {
                let job = job(
                    fs,
                    scheduled.action,
                    &trigger.values,
                    self.action_timeout,
                    false,
                );
                self.ready.push(job);
            }
        }
        if !fs.persist_triggers || delayed.is_empty() {
            return;
        }
        let extend = trigger.kind == TriggerKind::Extend;
        self.store.append(&Record::Trigger {
            stream: &fs.stream,
            filter: &fs.name,
            values: &trigger.values,
            time: trigger.time,
            replace: extend,
        });
        if !extend {
            // Its first action must not run before this is on disk.
            self.durable_needed = true;
            self.add_pending_trigger(fid, &trigger.values, trigger.time, delayed);
            return;
        }
        // An extension only moves the pending actions later: losing it in a
        // crash means an earlier unban, so it needs no sync of its own.
        let extended = fs.jail.get_mut(&trigger.values).and_then(|triggers| {
            // Under `extend` a value has one pending trigger at most.
            triggers.drain(..triggers.len().saturating_sub(1));
            let pending = triggers.last_mut()?;
            pending.time = trigger.time;
            let unarmed: Vec<usize> = delayed
                .iter()
                .copied()
                .filter(|a| !pending.armed.contains(a))
                .collect();
            pending.armed.extend(&unarmed);
            pending.pending = delayed.clone();
            Some((pending.id, unarmed))
        });
        match extended {
            Some((id, unarmed)) => {
                for action in unarmed {
                    self.arm(fid, &trigger.values, id, trigger.time, action);
                }
            }
            None => self.add_pending_trigger(fid, &trigger.values, trigger.time, delayed),
        }
    }

    fn fire_due_timers(&mut self, now: Time) {
        while self.timers.peek().is_some_and(|t| t.0.at <= now) {
            let Some(Reverse(timer)) = self.timers.pop() else {
                break;
            };
            let fs = &mut self.filters[timer.filter];
            let Some(triggers) = fs.jail.get_mut(&timer.values) else {
                continue;
            };
            let Some(index) = triggers.iter().position(|t| t.id == timer.trigger) else {
                // Flushed, or replaced: a stale timer.
                continue;
            };
            let trigger = &mut triggers[index];
            trigger.armed.retain(|&a| a != timer.action);
            let Some(slot) = trigger.pending.iter().position(|&a| a == timer.action) else {
                continue;
            };
            let after = fs.decider.plan().actions[timer.action].after.unwrap_or(0);
            let due = trigger.time.saturating_add(after);
            if due > now {
                // Extended since this timer was armed.
                trigger.armed.push(timer.action);
                self.next_seq += 1;
                self.timers.push(Reverse(Timer {
                    at: due,
                    seq: self.next_seq,
                    ..timer
                }));
                continue;
            }
            trigger.pending.swap_remove(slot);
            if trigger.pending.is_empty() {
                let time = trigger.time;
                triggers.swap_remove(index);
                if triggers.is_empty() {
                    fs.jail.remove(&timer.values);
                }
                // Not durable on its own: losing it only means the
                // action runs once more after a crash.
                self.store.append(&Record::Done {
                    stream: &fs.stream,
                    filter: &fs.name,
                    values: &timer.values,
                    time,
                });
            }
            let job = job(fs, timer.action, &timer.values, self.action_timeout, false);
            self.ready.push(job);
        }
    }

    /// A store that cannot be written (disk full, I/O error) must not stop
    /// the bans: the error is logged and counted, the records stay buffered
    /// for the next round, and actions run anyway.
    fn commit_or_log(&mut self) {
        if let Err(e) = self.commit() {
            self.report.store_errors += 1;
            self.metrics.store_error();
            tracing::error!(error = %format!("{e:#}"), "state commit failed; actions run without persistence");
        }
    }

    fn compact_or_log(&mut self) {
        if let Err(e) = self.compact() {
            self.report.store_errors += 1;
            self.metrics.store_error();
            tracing::error!(error = %format!("{e:#}"), "state compaction failed");
        }
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        let durable = std::mem::take(&mut self.durable_needed);
        let store = &mut self.store;
        // fdatasync blocks; stream threads keep reading meanwhile, which is
        // what makes the next commit a bigger group.
        let started = std::time::Instant::now();
        match tokio::task::block_in_place(|| store.commit(durable)) {
            // Nothing was buffered: not a commit worth timing.
            Ok(0) => Ok(()),
            Ok(_) => {
                self.metrics
                    .store_committed(started.elapsed(), self.store.size());
                Ok(())
            }
            Err(e) => {
                // The records stay buffered; the next commit must sync them.
                self.durable_needed |= durable;
                Err(e.into())
            }
        }
    }

    fn compact(&mut self) -> anyhow::Result<()> {
        let now = now_ms();
        let filters = &self.filters;
        let live = filters.iter().flat_map(move |fs| {
            let triggers = fs
                .persist_triggers
                .then(|| {
                    fs.jail.iter().flat_map(move |(values, triggers)| {
                        triggers.iter().map(move |t| Record::Trigger {
                            stream: &fs.stream,
                            filter: &fs.name,
                            values,
                            time: t.time,
                            replace: false,
                        })
                    })
                })
                .into_iter()
                .flatten();
            let period = fs.decider.plan().retry_period;
            let matches = fs
                .persist_matches
                .then(|| {
                    fs.decider.window().iter().flat_map(move |(values, times)| {
                        times
                            .iter()
                            .filter(move |&&t| now.saturating_sub(t) < period)
                            .map(move |&time| Record::Match {
                                stream: &fs.stream,
                                filter: &fs.name,
                                values,
                                time,
                            })
                    })
                })
                .into_iter()
                .flatten();
            triggers.chain(matches)
        });
        let store = &mut self.store;
        tokio::task::block_in_place(|| store.compact(live))?;
        self.metrics.store_size(self.store.size());
        Ok(())
    }

    fn dispatch_ready(&mut self) {
        for job in self.ready.drain(..) {
            self.report.actions += 1;
            self.executor.spawn(job);
        }
    }

    /// Runs every pending delayed action marked `onexit`, and waits for
    /// them. The triggers stay in the store: at the next start their past
    /// actions run again and the rest is rescheduled, as in reaction.
    async fn run_onexit(&mut self) {
        let mut jobs = Vec::new();
        for fs in &self.filters {
            for (values, triggers) in &fs.jail {
                for trigger in triggers {
                    for &action in &trigger.pending {
                        if fs.decider.plan().actions[action].onexit {
                            jobs.push(job(fs, action, values, self.action_timeout, false));
                        }
                    }
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        // A ban still queued must not run after its own onexit unban.
        self.executor.wait_idle().await;
        tracing::info!(actions = jobs.len(), "running onexit actions");
        for job in jobs {
            self.report.actions += 1;
            self.executor.spawn(job);
        }
        self.executor.wait_idle().await;
    }

    /// Pending actions now, for a scrape.
    fn pending_snapshot(&self, with_keys: bool) -> PendingSnapshot {
        let mut snapshot = PendingSnapshot {
            per_action: vec![
                0;
                self.filters
                    .last()
                    .map_or(0, |f| f.first_action + f.actions.len())
            ],
            jailed: vec![0; self.filters.len()],
            keys: Vec::new(),
        };
        for fs in &self.filters {
            for (values, triggers) in &fs.jail {
                let mut actions = Vec::new();
                for trigger in triggers {
                    for &action in &trigger.pending {
                        snapshot.per_action[fs.first_action + action] += 1;
                        actions.push(action);
                    }
                }
                if actions.is_empty() {
                    continue;
                }
                snapshot.jailed[fs.id] += 1;
                if with_keys {
                    snapshot.keys.push(PendingKey {
                        filter: fs.id,
                        values: values.clone(),
                        actions,
                    });
                }
            }
        }
        snapshot
    }

    fn on_control(&mut self, cmd: ControlCmd) {
        let response = match cmd.request {
            Request::Show(selection) => self.show(&selection),
            Request::Flush(selection) => self.flush(&selection),
            Request::Trigger {
                stream,
                filter,
                patterns,
            } => self.trigger(&stream, &filter, &patterns),
        };
        let response = match response {
            Ok(tree) => Response::Ok(tree),
            Err(message) => Response::Error(message),
        };
        // A flush or trigger must be durable before the client hears "done"
        // and before its actions run.
        self.commit_or_log();
        self.dispatch_ready();
        let _ = cmd.respond.send(response);
    }

    /// Filters selected by `selection`, with the value slot of each pattern
    /// regex; a filter lacking one of the patterns is not selected.
    fn selected(&self, selection: &Selection) -> Result<Vec<SelectedFilter>, String> {
        let mut regexes = Vec::new();
        for (name, text) in &selection.patterns {
            let regex = rebuff_engine::whole_value_regex(text)
                .map_err(|e| format!("invalid regex for pattern {name}: {e}"))?;
            regexes.push((name.as_str(), regex));
        }
        if let Some(limit) = &selection.limit {
            let stream = self.config.stream(&limit.stream).ok_or_else(|| {
                format!("no stream named {:?} in the configuration", limit.stream)
            })?;
            if let Some(filter) = &limit.filter
                && !stream.filters.iter().any(|f| &f.name == filter)
            {
                return Err(format!(
                    "no filter named {filter:?} in stream {:?}",
                    limit.stream
                ));
            }
        }
        let mut out = Vec::new();
        'filters: for (fid, fs) in self.filters.iter().enumerate() {
            if let Some(limit) = &selection.limit {
                if *fs.stream != *limit.stream {
                    continue;
                }
                if limit.filter.as_deref().is_some_and(|f| f != &*fs.name) {
                    continue;
                }
            }
            let mut slots = Vec::new();
            for (name, regex) in &regexes {
                let Some(slot) = fs.pattern_names.iter().position(|p| p == name) else {
                    continue 'filters;
                };
                slots.push((slot, regex.clone()));
            }
            out.push(SelectedFilter { fid, slots });
        }
        Ok(out)
    }

    /// The selected keys of a filter: every value with counted matches or
    /// pending triggers.
    fn selected_keys(&self, selected: &SelectedFilter, now: Time) -> Vec<Values> {
        let (fid, slots) = (selected.fid, &selected.slots);
        let fs = &self.filters[fid];
        let keep = |values: &Values| slots.iter().all(|(slot, re)| re.is_match(&values[*slot]));
        let mut keys: Vec<Values> = fs
            .decider
            .window()
            .iter()
            .map(|(values, _)| values)
            .filter(|v| fs.decider.window().count(v, now) > 0)
            .chain(fs.jail.keys())
            .filter(|v| keep(v))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    fn entry(&self, fid: usize, values: &Values, now: Time) -> Option<Value> {
        let fs = &self.filters[fid];
        let mut entry = Map::new();
        let matches = fs.decider.window().count(values, now);
        if matches > 0 {
            entry.insert("matches".into(), json!(matches));
        }
        if let Some(triggers) = fs.jail.get(values) {
            let mut actions = Map::new();
            for (action, name) in fs.action_names.iter().enumerate() {
                let mut times: Vec<Time> = triggers
                    .iter()
                    .filter(|t| t.pending.contains(&action))
                    .map(|t| {
                        t.time
                            .saturating_add(fs.decider.plan().actions[action].after.unwrap_or(0))
                    })
                    .collect();
                if times.is_empty() {
                    continue;
                }
                times.sort_unstable();
                let times = times.into_iter().map(|t| Value::String(format_time(t)));
                actions.insert(name.to_string(), Value::Array(times.collect()));
            }
            if !actions.is_empty() {
                entry.insert("actions".into(), Value::Object(actions));
            }
        }
        (!entry.is_empty()).then_some(Value::Object(entry))
    }

    fn insert_entry(
        tree: &mut Map<String, Value>,
        fs: &FilterState,
        values: &Values,
        entry: Value,
    ) {
        let filters = tree
            .entry(fs.stream.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(filters) = filters {
            let keys = filters
                .entry(fs.name.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(keys) = keys {
                keys.insert(values.join(" "), entry);
            }
        }
    }

    fn show(&self, selection: &Selection) -> Result<Value, String> {
        let now = now_ms();
        let mut tree = Map::new();
        for selected in self.selected(selection)? {
            let fid = selected.fid;
            for values in self.selected_keys(&selected, now) {
                if let Some(entry) = self.entry(fid, &values, now) {
                    Self::insert_entry(&mut tree, &self.filters[fid], &values, entry);
                }
            }
        }
        Ok(Value::Object(tree))
    }

    /// Runs the selected pending actions now and forgets the selected
    /// matches; answers with what was flushed.
    fn flush(&mut self, selection: &Selection) -> Result<Value, String> {
        let now = now_ms();
        let mut tree = Map::new();
        for selected in self.selected(selection)? {
            let fid = selected.fid;
            for values in self.selected_keys(&selected, now) {
                if let Some(entry) = self.entry(fid, &values, now) {
                    Self::insert_entry(&mut tree, &self.filters[fid], &values, entry);
                }
                let fs = &mut self.filters[fid];
                fs.decider.forget(&values);
                if let Some(triggers) = fs.jail.remove(&values) {
                    for trigger in triggers {
                        for action in trigger.pending {
                            let job = job(fs, action, &values, self.action_timeout, false);
                            self.ready.push(job);
                        }
                    }
                }
                self.store.append(&Record::Forget {
                    stream: &fs.stream,
                    filter: &fs.name,
                    values: &values,
                });
                self.durable_needed = true;
            }
        }
        Ok(Value::Object(tree))
    }

    fn trigger(
        &mut self,
        stream: &str,
        filter: &str,
        patterns: &[(String, String)],
    ) -> Result<Value, String> {
        let fid = self
            .filter_index(stream, filter)
            .ok_or_else(|| format!("no filter {stream}.{filter} in the configuration"))?;
        let fs = &self.filters[fid];
        let mut values = vec![None; fs.pattern_names.len()];
        for (name, raw) in patterns {
            let slot = fs
                .pattern_names
                .iter()
                .position(|p| p == name)
                .ok_or_else(|| {
                    format!(
                        "filter {stream}.{filter} has no pattern {name:?} (it has: {})",
                        fs.pattern_names.join(", ")
                    )
                })?;
            let (_, pattern) = self
                .config
                .patterns
                .get(name)
                .ok_or_else(|| format!("unknown pattern {name:?}"))?;
            let value = pattern.accept_given(raw).map_err(|e| e.to_string())?;
            if values[slot].replace(value).is_some() {
                return Err(format!("pattern {name:?} given twice"));
            }
        }
        let values: Values = values
            .into_iter()
            .zip(&fs.pattern_names)
            .map(|(v, name)| v.ok_or_else(|| format!("missing a value for pattern {name:?}")))
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice();
        let now = now_ms();
        let decision = self.filters[fid].decider.force_trigger(values.clone(), now);
        if let Decision::Trigger(trigger) = decision {
            self.on_trigger(fid, trigger);
        }
        let mut tree = Map::new();
        if let Some(entry) = self.entry(fid, &values, now) {
            Self::insert_entry(&mut tree, &self.filters[fid], &values, entry);
        }
        Ok(Value::Object(tree))
    }
}

/// A filter `show`/`flush` act on, and the value regexes to apply to its
/// values (by slot).
#[derive(Debug)]
struct SelectedFilter {
    fid: usize,
    slots: Vec<(usize, Regex)>,
}

fn job(
    fs: &FilterState,
    action: usize,
    values: &[String],
    timeout: Duration,
    replayed: bool,
) -> ActionJob {
    ActionJob {
        action_id: fs.first_action + action,
        values: values.into(),
        replayed,
        stream: fs.stream.clone(),
        filter: fs.name.clone(),
        action: fs.action_names[action].clone(),
        argv: fs.actions[action].render(values),
        timeout: fs.actions[action]
            .timeout_ms
            .map_or(timeout, Duration::from_millis),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
patterns:
  ip:
    type: ip
streams:
  ssh:
    cmd: ['true']
    filters:
      failed:
        regex: ['fail <ip>']
        retry: 2
        retryperiod: 10m
        actions:
          ban:
            cmd: ['ban', '<ip>']
          mail:
            cmd: ['mail', '<ip>']
            oneshot: true
          unban:
            cmd: ['unban', '<ip>']
            after: 1h
"#;

    const HOUR: Time = 3_600_000;
    const T0: Time = 1_700_000_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        tracker: Tracker,
    }

    fn fixture(restore: &[Record<'_>], now: Time) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, CONFIG).expect("write config");
        let config = crate::config::load(&config_path).expect("valid config");
        let state = dir.path().join("state");
        {
            let (mut store, _) = Store::open(&state).expect("open store");
            for record in restore {
                store.append(record);
            }
            store.commit(true).expect("commit");
        }
        let (store, restored) = Store::open(&state).expect("reopen store");
        let metrics = Arc::new(Metrics::new(&config));
        let mut tracker = Tracker::new(TrackerDeps {
            config: Arc::new(config),
            store,
            executor: Executor::new(1, metrics.clone()),
            action_timeout: Duration::from_secs(1),
            metrics,
        });
        tracker.restore(restored, now).expect("restore");
        Fixture { _dir: dir, tracker }
    }

    fn values(ip: &str) -> Values {
        vec![ip.to_owned()].into_boxed_slice()
    }

    /// The argv of the actions waiting for dispatch, emptied.
    fn take_ready(tracker: &mut Tracker) -> Vec<String> {
        tracker
            .ready
            .drain(..)
            .map(|job| job.argv.join(" "))
            .collect()
    }

    /// Two matches (the filter's `retry`) at `time`, the immediate actions
    /// they cause dropped.
    fn ban(tracker: &mut Tracker, ip: &Values, time: Time) {
        tracker.on_match(0, ip.clone(), time);
        tracker.on_match(0, ip.clone(), time);
        take_ready(tracker);
    }

    fn trigger_record(ip: &[String], time: Time) -> Record<'_> {
        Record::Trigger {
            stream: "ssh",
            filter: "failed",
            values: ip,
            time,
            replace: false,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn restore_reruns_past_actions_but_oneshot_and_schedules_the_future() {
        let ip = values("192.0.2.1");
        let fx = fixture(&[trigger_record(&ip, T0)], T0 + 60_000);
        let mut tracker = fx.tracker;
        assert_eq!(take_ready(&mut tracker), vec!["ban 192.0.2.1"]);
        assert_eq!(tracker.timers.len(), 1);
        tracker.fire_due_timers(T0 + HOUR - 1);
        assert!(take_ready(&mut tracker).is_empty());
        tracker.fire_due_timers(T0 + HOUR);
        assert_eq!(take_ready(&mut tracker), vec!["unban 192.0.2.1"]);
        assert!(tracker.filters[0].jail.is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unban_that_fell_due_while_stopped_runs_at_restart() {
        let ip = values("192.0.2.2");
        let fx = fixture(&[trigger_record(&ip, T0)], T0 + 2 * HOUR);
        let mut tracker = fx.tracker;
        assert_eq!(
            take_ready(&mut tracker),
            vec!["ban 192.0.2.2", "unban 192.0.2.2"]
        );
        assert!(tracker.timers.is_empty());
        assert!(tracker.filters[0].jail.is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn entries_of_unknown_filters_or_changed_patterns_are_dropped() {
        let ip = values("192.0.2.3");
        let two = vec!["192.0.2.3".to_owned(), "root".to_owned()];
        let fx = fixture(
            &[
                Record::Trigger {
                    stream: "ssh",
                    filter: "gone",
                    values: &ip,
                    time: T0,
                    replace: false,
                },
                trigger_record(&two, T0),
            ],
            T0,
        );
        assert_eq!(fx.tracker.report().dropped_entries, 2);
        assert!(fx.tracker.ready.is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn restored_matches_count_toward_retry() {
        let ip = values("192.0.2.4");
        let fx = fixture(
            &[Record::Match {
                stream: "ssh",
                filter: "failed",
                values: &ip,
                time: T0,
            }],
            T0 + 1000,
        );
        let mut tracker = fx.tracker;
        tracker.on_match(0, ip.clone(), T0 + 2000);
        assert_eq!(
            take_ready(&mut tracker),
            vec!["ban 192.0.2.4", "mail 192.0.2.4"]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_flushed_trigger_timer_never_acts_on_a_later_trigger() {
        let fx = fixture(&[], T0);
        let mut tracker = fx.tracker;
        let ip = values("192.0.2.5");
        ban(&mut tracker, &ip, T0);
        let flushed = tracker.flush(&Selection::default()).expect("flush");
        assert!(flushed["ssh"]["failed"]["192.0.2.5"]["actions"]["unban"].is_array());
        assert_eq!(take_ready(&mut tracker), vec!["unban 192.0.2.5"]);
        // Banned again half an hour later: the first timer (due at T0+1h)
        // must not unban it; the new one (T0+1.5h) does.
        let later = T0 + HOUR / 2;
        ban(&mut tracker, &ip, later);
        tracker.fire_due_timers(T0 + HOUR);
        assert!(take_ready(&mut tracker).is_empty());
        tracker.fire_due_timers(later + HOUR);
        assert_eq!(take_ready(&mut tracker), vec!["unban 192.0.2.5"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn extend_moves_the_unban_later_without_piling_up_timers() {
        let fx = fixture(&[], T0);
        let mut tracker = fx.tracker;
        let ip = values("192.0.2.6");
        ban(&mut tracker, &ip, T0);
        for minute in 1..=1000 {
            tracker.on_match(0, ip.clone(), T0 + minute * 60);
        }
        assert_eq!(tracker.timers.len(), 1);
        let last = T0 + 1000 * 60;
        tracker.fire_due_timers(T0 + HOUR);
        assert!(
            take_ready(&mut tracker).is_empty(),
            "the early timer re-arms"
        );
        assert_eq!(tracker.timers.len(), 1);
        tracker.fire_due_timers(last + HOUR);
        assert_eq!(take_ready(&mut tracker), vec!["unban 192.0.2.6"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn show_selects_by_limit_and_whole_value_regex() {
        let fx = fixture(&[], T0);
        let mut tracker = fx.tracker;
        tracker.on_match(0, values("192.0.2.7"), now_ms());
        tracker.on_match(0, values("192.0.2.70"), now_ms());
        let select = |pattern: &str| Selection {
            limit: None,
            patterns: vec![("ip".to_owned(), pattern.to_owned())],
        };
        let tree = tracker.show(&select("192.0.2.7")).expect("show");
        assert_eq!(
            tree,
            json!({"ssh": {"failed": {"192.0.2.7": {"matches": 1}}}})
        );
        assert_eq!(tracker.show(&select("user")).expect("show"), json!({}));
        assert!(tracker.show(&select("(")).is_err());
    }
}
