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
//! - the actions of one trigger run in their scheduled order: a delayed
//!   action is handed over only once every earlier action of its trigger
//!   has finished (the executor reports [`Finished`]), at restore too, so
//!   an overdue unban never overtakes the ban re-applied before it; and a
//!   new trigger of a value waits for what an older trigger of that value
//!   still has in flight or waiting (a ban never overtakes the unban owed
//!   to the address's previous jailing);
//! - actions run at least once: a trigger leaves the store (its `Done`
//!   record) only after its last action has *finished*; a crash before
//!   that runs its actions again at restart;
//! - a timer carries the trigger time it was scheduled for; when it fires
//!   it runs only if that trigger is still pending with that action, so an
//!   address flushed or re-banned (`extend`) is never unbanned by a stale
//!   timer;
//! - `flush` is durable at once as an intent: the flushed entry is
//!   forgotten, and its pending actions are stored as due now, so they
//!   still run after a crash, until they have finished;
//! - each `match` line and the `run` lines of the actions it causes are
//!   logged here, in decision order, so reaction-metrics-exporter (which
//!   labels a `run` line with its filter's latest `match`) is never misled.
//! - a virtual action never reaches the executor: when it is dispatched,
//!   its line goes through its virtual stream's matcher here and each match
//!   to that stream's filters, and it finishes at once; the triggers those
//!   matches make are committed before their own actions are handed over
//!   (dispatch goes round by round, with a commit between rounds).
//!
//! Memory: a jail may hold a million addresses, so per-value state is
//! compact. Values are kept as [`Key`]s (an address as bytes, inline) in
//! slab-backed [`KeyMap`]s; a trigger's action lists are bitsets
//! (`ActionSet`) and a value's triggers sit inline when there is one;
//! timers name their value by jail slot, not by a copy of it. Text is made
//! only where it is needed: for an action's argv and log lines, and for
//! store records. `show` copies a compact snapshot and renders it off the
//! tracker ([`show::render`]); `flush` goes a chunk of entries per round.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rebuff_engine::{
    Decision, FilterDecider, FilterPlan, Key, KeyMap, Time, Trigger, TriggerKind, Values,
};
use regex::Regex;
use serde_json::{Map, Value, json};
use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::validate::MAX_ACTIONS;
use crate::config::{Action, Config, SetOp};
use crate::control::{ControlCmd, Request, Response, Selection, show};
use crate::events::{ExitOutcome, Finished, Match, MatchBatch, TriggerRef, format_time, now_ms};
use crate::exec::{ActionJob, Executor};
use crate::log;
use crate::metrics::{ActionDone, Ignored, Metrics, PendingCmd, PendingKey, PendingSnapshot};
use crate::store::{Record, Restored, Store};

/// How many queued messages one round handles before it commits and
/// dispatches: large enough to group commits under a flood, small enough
/// that control requests and timers are not starved.
const MAX_MESSAGES_PER_ROUND: usize = 256;

/// How often an idle tracker retries a store that could not write.
const STORE_RETRY_TICK: Duration = Duration::from_secs(1);

/// A trigger of a jail whose actions have not all finished.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingTrigger {
    /// Unique for the daemon's lifetime: timers and [`Finished`] reports
    /// name their trigger by it, so a timer of a flushed trigger never acts
    /// on a later one.
    id: u64,
    /// When it triggered, or was last extended; for a flushed trigger, a
    /// time far enough back that every delayed action is due.
    time: Time,
    /// Delayed actions not yet handed to the executor.
    pending: ActionSet,
    /// Delayed actions with a timer in the heap. An `extend` moves `time`
    /// without adding timers: an early timer re-arms itself at the new due
    /// time, so a flood of duplicates cannot fill the heap.
    armed: ActionSet,
    /// Due actions (also in `pending`) waiting for `in_flight` to drop to
    /// zero: one is handed over at a time, in due order (ties in
    /// configuration order, see [`next_held`]).
    held: ActionSet,
    /// Actions of this trigger handed to the executor and not finished.
    in_flight: u32,
    /// Immediate actions waiting for an older trigger of the same value to
    /// finish what it has in flight (a ban waits for the unban still
    /// running from the previous jailing of that address), in
    /// configuration order.
    blocked: ActionSet,
    /// Restored at start: its actions due by then ([`Tracker::restored_at`])
    /// are replays, which the exporter's families leave out.
    restored: bool,
    /// When its kernel set elements last got their full timeout (its
    /// trigger, or the last `extend` that refreshed them).
    kernel_refreshed: Time,
}

impl PendingTrigger {
    fn new(id: u64, time: Time) -> Self {
        PendingTrigger {
            id,
            time,
            pending: ActionSet::default(),
            armed: ActionSet::default(),
            held: ActionSet::default(),
            in_flight: 0,
            blocked: ActionSet::default(),
            restored: false,
            kernel_refreshed: time,
        }
    }
}

/// A set of action indices of one filter, a bit each (configurations have
/// at most [`MAX_ACTIONS`] actions per filter). Iterates in configuration
/// order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ActionSet(u64);

impl ActionSet {
    /// The bit of `action`; none beyond [`MAX_ACTIONS`], which the
    /// configuration refuses.
    fn bit(action: usize) -> u64 {
        u32::try_from(action)
            .ok()
            .and_then(|a| 1u64.checked_shl(a))
            .unwrap_or(0)
    }

    fn contains(self, action: usize) -> bool {
        self.0 & Self::bit(action) != 0
    }

    fn insert(&mut self, action: usize) {
        self.0 |= Self::bit(action);
    }

    fn remove(&mut self, action: usize) {
        self.0 &= !Self::bit(action);
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    fn clear(&mut self) {
        self.0 = 0;
    }

    fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_ACTIONS).filter(move |&a| self.contains(a))
    }

    fn to_vec(self) -> Vec<usize> {
        self.iter().collect()
    }
}

impl FromIterator<usize> for ActionSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut set = ActionSet::default();
        for action in iter {
            set.insert(action);
        }
        set
    }
}

/// The triggers of one value, in trigger order; nearly always one, kept
/// inline.
type Triggers = SmallVec<[PendingTrigger; 1]>;

/// Triggers by value. Timers name an entry of a jail by its slot, so a
/// jail's map is never `retain`ed (which may move entries).
type TriggerMap = KeyMap<Triggers>;

/// A delayed action due at `at` (or later, if its trigger was extended).
/// It names its trigger's entry in its filter's jail by slot, and the
/// trigger by id: a slot freed and reused by another value holds no
/// trigger of that id, so the timer is then stale, as it should be.
/// Timers due at the same time fire in trigger order (then by action).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Time,
    trigger: u64,
    filter: u32,
    slot: u32,
    action: u32,
}

/// One filter's state and what it needs to build actions.
#[derive(Debug)]
struct FilterState {
    stream: Arc<str>,
    name: Arc<str>,
    pattern_names: Vec<String>,
    actions: Vec<Action>,
    action_names: Vec<Arc<str>>,
    /// For each virtual action, the name of the stream it sends to.
    send_to: Vec<Option<Arc<str>>>,
    decider: FilterDecider,
    /// Triggers with delayed actions not yet handed over.
    jail: TriggerMap,
    /// Triggers whose every action has been handed over (or released by a
    /// flush) and that wait for them to finish before leaving the store.
    retiring: TriggerMap,
    /// Matches are persisted only where they can add up to a trigger.
    persist_matches: bool,
    /// Triggers are persisted only for jails (filters with delayed actions).
    persist_triggers: bool,
    /// The counters of the configuration this state belongs to.
    metrics: Arc<Metrics>,
    /// Global index of the filter and of its first action, for metrics.
    id: usize,
    first_action: usize,
}

impl FilterState {
    fn is_delayed(&self, action: usize) -> bool {
        self.decider.plan().actions[action].after.is_some()
    }

    /// How far an `extend` may move the unban before the elements its ban
    /// put in kernel sets need a fresh timeout (half the smallest margin),
    /// or `None` when the ban puts none there with a timeout.
    fn kernel_refresh_every(&self) -> Option<u64> {
        self.actions
            .iter()
            .enumerate()
            .filter(|(action, _)| !self.is_delayed(*action))
            .filter_map(|(_, a)| a.set_action.as_ref())
            .filter(|s| s.op == SetOp::Add && s.kernel_timeout_ms.is_some())
            .map(|s| s.kernel_margin_ms / 2)
            .min()
    }
}

/// How many earlier configuration generations still translate; a stream
/// adopts a new configuration at its next line, so one is nearly always
/// enough.
const KEPT_GENERATIONS: usize = 16;

/// An earlier configuration generation's filter ids.
#[derive(Debug)]
struct Generation {
    id: u64,
    /// Global index of each stream's first filter, in that generation.
    stream_offsets: Vec<usize>,
    /// That generation's filter id -> the current one (`None`: removed).
    to_current: Vec<Option<usize>>,
}

/// What a reload changed, for its log line and the client.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Kept filters whose settings changed (state kept).
    pub changed: Vec<String>,
    /// Filters whose patterns changed: their state starts empty.
    pub reset: Vec<String>,
    /// Pending actions dropped with their filter or action.
    pub dropped_actions: u64,
    /// `onexit` actions of removed filters, run now.
    pub onexit_actions: u64,
}

/// The filter states of `config`, empty, in configuration order, and the
/// global index of each stream's first filter.
fn build_filters(config: &Config, metrics: &Arc<Metrics>) -> (Vec<FilterState>, Vec<usize>) {
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
                send_to: filter
                    .actions
                    .iter()
                    .map(|a| {
                        let to = config.streams.get(a.send_to?)?;
                        Some(to.name.as_str().into())
                    })
                    .collect(),
                persist_matches: plan.retry > 1,
                persist_triggers: plan.longest_delay().is_some(),
                decider: FilterDecider::new(plan),
                jail: KeyMap::default(),
                retiring: KeyMap::default(),
                id: filters.len(),
                first_action: metrics.action_id(filters.len(), 0),
                metrics: metrics.clone(),
            });
        }
    }
    (filters, stream_offsets)
}

/// Moves the state of a kept filter into its new form: the retry window
/// (under the new `retryperiod`), the triggers with their actions matched
/// by name, and the duplicate jail. Returns the pending actions dropped
/// because their action is gone.
fn migrate(old: FilterState, new: &mut FilterState, now: Time) -> u64 {
    let period = new.decider.plan().retry_period;
    if new.persist_matches || new.decider.plan().retry > 1 {
        for (values, times) in old.decider.window().iter() {
            for &time in times {
                if now.saturating_sub(time) < period {
                    new.decider.restore_match(values, time);
                }
            }
        }
    }
    let renumber: Vec<Option<usize>> = old
        .action_names
        .iter()
        .map(|name| new.action_names.iter().position(|n| n == name))
        .collect();
    let mut dropped = 0;
    let mut remap = |set: &mut ActionSet, count: bool| {
        let before = set.len();
        *set = set
            .iter()
            .filter_map(|a| renumber.get(a).copied().flatten())
            .collect();
        if count {
            dropped += (before - set.len()) as u64;
        }
    };
    for (map, new_map, jailed) in [
        (old.jail, &mut new.jail, true),
        (old.retiring, &mut new.retiring, false),
    ] {
        for (values, mut triggers) in map {
            for trigger in &mut triggers {
                remap(&mut trigger.pending, true);
                remap(&mut trigger.held, false);
                remap(&mut trigger.blocked, false);
                // An action that is no longer delayed is due now.
                for action in trigger.pending.to_vec() {
                    if new.decider.plan().actions[action].after.is_none() {
                        trigger.held.insert(action);
                    }
                }
                if jailed {
                    new.decider.restore_trigger(&values, trigger.time);
                }
            }
            new_map.insert(values, triggers);
        }
    }
    dropped
}

/// `first`, then what is already queued, up to a round's worth of messages.
fn round<T>(first: T, queued: impl FnMut() -> Option<T>) -> impl Iterator<Item = T> {
    std::iter::once(first).chain(std::iter::from_fn(queued).take(MAX_MESSAGES_PER_ROUND - 1))
}

/// Whether a trigger of `values` older than `id` still has actions in
/// flight or waiting: a newer trigger's actions must not overtake them.
fn older_busy(fs: &FilterState, values: &Key, id: u64) -> bool {
    [&fs.jail, &fs.retiring]
        .into_iter()
        .filter_map(|map| map.get(values))
        .flatten()
        .any(|t| t.id < id && (t.in_flight > 0 || !t.held.is_empty() || !t.blocked.is_empty()))
}

/// When `action` of `trigger` is due.
fn due(plan: &FilterPlan, trigger: &PendingTrigger, action: usize) -> Time {
    let after = plan.actions[action].after.unwrap_or(0);
    trigger.time.saturating_add(after)
}

/// The held action of `trigger` to hand over next: the first due (ties in
/// configuration order).
fn next_held(plan: &FilterPlan, trigger: &PendingTrigger) -> Option<usize> {
    trigger
        .held
        .iter()
        .min_by_key(|&a| (due(plan, trigger, a), a))
}

/// Counts the daemon logs at shutdown and metrics read later.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TrackerReport {
    pub matches: u64,
    pub triggers: u64,
    pub actions: u64,
    /// Persisted triggers brought back at start (with actions to run or
    /// still to come).
    pub restored_triggers: u64,
    /// Past actions of restored triggers run again at start.
    pub rerun_actions: u64,
    /// Delayed actions that fell due while rebuff was down, run at start
    /// after the earlier actions of their trigger.
    pub overdue_actions: u64,
    /// Delayed actions of restored triggers scheduled for later.
    pub scheduled_actions: u64,
    /// Matches brought back into retry windows.
    pub restored_matches: u64,
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
    /// Where `reload` requests from the control socket go (the daemon
    /// re-reads the configuration and restarts streams); `None`: refused.
    pub reload_requests: Option<mpsc::Sender<oneshot::Sender<Response>>>,
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
    /// The executor's reports of finished actions of tracked triggers.
    pub finished: mpsc::UnboundedReceiver<Finished>,
    /// New configurations to apply.
    pub reload: mpsc::Receiver<ReloadCmd>,
}

/// A validated configuration to switch to, with its counters.
#[derive(Debug)]
pub struct ReloadCmd {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub generation: u64,
    pub respond: oneshot::Sender<ReloadSummary>,
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
    /// The configuration generation (0 at start, one more per reload).
    generation: u64,
    /// Filter ids of earlier generations, for match batches and finished
    /// reports sent before a reload reached their sender.
    older: Vec<Generation>,
    timers: BinaryHeap<Reverse<Timer>>,
    /// When the state was restored (see [`PendingTrigger::restored`]).
    restored_at: Time,
    next_trigger_id: u64,
    /// Actions to hand to the executor after the next commit.
    ready: Vec<ActionJob>,
    /// The uncommitted records include one an action waits for.
    durable_needed: bool,
    report: TrackerReport,
    metrics: Arc<Metrics>,
    reload_requests: Option<mpsc::Sender<oneshot::Sender<Response>>>,
    /// Flushes under way, oldest first, with where their answer goes.
    flushing: std::collections::VecDeque<(FlushJob, oneshot::Sender<Response>)>,
    /// Shows being copied, oldest first, with where their answer goes.
    showing: std::collections::VecDeque<(Collect, oneshot::Sender<Response>)>,
}

impl Tracker {
    pub fn new(deps: TrackerDeps) -> Self {
        let config = deps.config;
        let (filters, stream_offsets) = build_filters(&config, &deps.metrics);
        Tracker {
            config,
            store: deps.store,
            executor: deps.executor,
            action_timeout: deps.action_timeout,
            filters,
            stream_offsets,
            generation: 0,
            older: Vec::new(),
            timers: BinaryHeap::new(),
            restored_at: 0,
            next_trigger_id: 0,
            ready: Vec::new(),
            durable_needed: false,
            report: TrackerReport::default(),
            metrics: deps.metrics,
            reload_requests: deps.reload_requests,
            flushing: std::collections::VecDeque::new(),
            showing: std::collections::VecDeque::new(),
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
    /// firewall) except `oneshot` ones, delayed actions that fell due while
    /// rebuff was down run after them, future ones are scheduled, and
    /// entries of filters that no longer exist are dropped. The store is
    /// then compacted to the live state; a disk that cannot take it (full,
    /// read-only) is logged and counted, and the daemon starts on the state
    /// in memory.
    pub fn restore(&mut self, restored: Restored, now: Time) -> anyhow::Result<()> {
        let mut dropped: HashMap<(Arc<str>, Arc<str>), u64> = HashMap::new();
        // Room for every entry with triggers at once, not a rehash at
        // every doubling of a million.
        let mut counts = vec![0usize; self.filters.len()];
        let mut last: Option<(&str, &str, Option<usize>)> = None;
        for entry in &restored.entries {
            let fid = match last {
                Some((stream, filter, fid))
                    if stream == &*entry.stream && filter == &*entry.filter =>
                {
                    fid
                }
                _ => self.filter_index(&entry.stream, &entry.filter),
            };
            last = Some((&entry.stream, &entry.filter, fid));
            if let Some(fid) = fid
                && !entry.triggers.is_empty()
            {
                counts[fid] += 1;
            }
        }
        for (fs, &count) in self.filters.iter_mut().zip(&counts) {
            if fs.persist_triggers && count > 0 {
                fs.jail.reserve(count);
                fs.decider.reserve_jail(count);
            }
        }
        self.timers.reserve(counts.iter().sum());
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
            let key = entry.values;
            let period = fs.decider.plan().retry_period;
            if fs.persist_matches {
                for &time in &entry.matches {
                    if now.saturating_sub(time) < period {
                        fs.decider.restore_match(&key, time);
                        self.report.restored_matches += 1;
                    }
                }
            }
            if !fs.persist_triggers {
                continue;
            }
            // Only `ipv4only`/`ipv6only` look at the values' text.
            let values = if fs
                .decider
                .plan()
                .actions
                .iter()
                .any(|a| a.ip_only.is_some())
            {
                key.to_values()
            } else {
                Values::default()
            };
            for &time in &entry.triggers {
                self.restore_trigger(fid, &key, &values, time, now);
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
        self.compact_or_log();
        let report = &self.report;
        tracing::info!(
            triggers = report.restored_triggers,
            rerun = report.rerun_actions,
            overdue = report.overdue_actions,
            scheduled = report.scheduled_actions,
            matches = report.restored_matches,
            dropped = report.dropped_entries,
            records = restored.records,
            "state restored"
        );
        Ok(())
    }

    fn restore_trigger(&mut self, fid: usize, key: &Key, values: &[String], time: Time, now: Time) {
        let fs = &mut self.filters[fid];
        fs.decider.restore_trigger(key, time);
        self.next_trigger_id += 1;
        let mut trigger = PendingTrigger::new(self.next_trigger_id, time);
        trigger.restored = true;
        self.restored_at = now;
        let mut rerun = Vec::new();
        for (action, spec) in fs.decider.plan().actions.iter().enumerate() {
            if !fs.decider.plan().action_applies(action, values) {
                continue;
            }
            let at = time.saturating_add(spec.after.unwrap_or(0));
            if spec.after.is_some() && at > now {
                trigger.pending.insert(action);
            } else if spec.oneshot || (spec.after.is_none() && fs.actions[action].send_to.is_some())
            {
                // Never run again at start, as in reaction. Nor is the line
                // of a virtual action sent again: what it did (a match, a
                // trigger) is restored with its own stream's state.
            } else if spec.after.is_some() {
                trigger.pending.insert(action);
                trigger.held.insert(action);
                self.report.overdue_actions += 1;
            } else {
                rerun.push(action);
            }
        }
        if trigger.pending.is_empty() && rerun.is_empty() {
            return;
        }
        self.report.restored_triggers += 1;
        self.report.rerun_actions += rerun.len() as u64;
        self.report.scheduled_actions += (trigger.pending.len() - trigger.held.len()) as u64;
        // Several triggers of one value (flushed, then jailed again): each
        // waits for what the older one still has to run.
        let blocked = older_busy(fs, key, trigger.id);
        if blocked {
            trigger.blocked = rerun.iter().copied().collect();
        }
        let id = trigger.id;
        let scheduled: Vec<usize> = trigger
            .pending
            .iter()
            .filter(|&a| !trigger.held.contains(a))
            .collect();
        for &action in &scheduled {
            trigger.armed.insert(action);
        }
        let (slot, list) = fs.jail.get_or_insert_with(key, Triggers::new);
        list.push(trigger);
        for action in scheduled {
            self.arm(fid, slot, id, time, action);
        }
        if !blocked {
            self.hand_over(fid, key, id, &rerun, true);
        }
        self.settle(fid, key, id);
    }

    /// Jails `values` with a new pending trigger whose immediate actions
    /// (`in_flight` of them) were just handed over, and arms a timer for
    /// each of its delayed actions. Returns its id.
    fn add_pending_trigger(
        &mut self,
        fid: usize,
        values: &Key,
        time: Time,
        pending: Vec<usize>,
    ) -> u64 {
        self.next_trigger_id += 1;
        let id = self.next_trigger_id;
        let mut trigger = PendingTrigger::new(id, time);
        trigger.pending = pending.iter().copied().collect();
        trigger.armed = trigger.pending;
        let (slot, list) = self.filters[fid]
            .jail
            .get_or_insert_with(values, Triggers::new);
        list.push(trigger);
        for action in pending {
            self.arm(fid, slot, id, time, action);
        }
        id
    }

    /// Arms a timer for delayed `action` of trigger `trigger`, whose value
    /// is in `slot` of filter `fid`'s jail.
    fn arm(&mut self, fid: usize, slot: u32, trigger: u64, time: Time, action: usize) {
        let after = self.filters[fid].decider.plan().actions[action]
            .after
            .unwrap_or(0);
        self.timers.push(Reverse(Timer {
            at: time.saturating_add(after),
            trigger,
            filter: fid as u32,
            slot,
            action: action as u32,
        }));
    }

    /// Moves a trigger on after a change: hands over its next held action
    /// once nothing of it is in flight, sends it to `retiring` once nothing
    /// is left to hand over, and retires it (a `Done` record) once
    /// everything has finished.
    fn settle(&mut self, fid: usize, values: &Key, id: u64) {
        let (timeout, generation) = (self.action_timeout, self.generation);
        let restored_at = self.restored_at;
        let fs = &mut self.filters[fid];
        let in_jail = fs
            .jail
            .get(values)
            .is_some_and(|list| list.iter().any(|t| t.id == id));
        let map = if in_jail {
            &mut fs.jail
        } else {
            &mut fs.retiring
        };
        let Some(list) = map.get_mut(values) else {
            return;
        };
        let Some(index) = list.iter().position(|t| t.id == id) else {
            return;
        };
        let trigger = &mut list[index];
        let mut next = None;
        if trigger.in_flight == 0
            && trigger.blocked.is_empty()
            && let Some(action) = next_held(fs.decider.plan(), trigger)
        {
            trigger.held.remove(action);
            trigger.pending.remove(action);
            trigger.armed.remove(action);
            trigger.in_flight += 1;
            let after = fs.decider.plan().actions[action].after.unwrap_or(0);
            let replayed = trigger.restored && trigger.time.saturating_add(after) <= restored_at;
            next = Some((action, replayed));
        }
        let handed_over = trigger.pending.is_empty() && trigger.blocked.is_empty();
        let finished = trigger.in_flight == 0 && handed_over;
        if finished || (in_jail && handed_over) {
            let trigger = list.remove(index);
            if list.is_empty() {
                map.remove(values);
            }
            if finished {
                self.store.append(&Record::Done {
                    stream: &fs.stream,
                    filter: &fs.name,
                    values: values.into(),
                    time: trigger.time,
                });
            } else {
                fs.retiring
                    .get_or_insert_with(values, Triggers::new)
                    .1
                    .push(trigger);
            }
        }
        if let Some((action, replayed)) = next {
            let owner = TriggerRef {
                filter: fid,
                trigger: id,
                generation,
            };
            let job = job(
                fs,
                action,
                &values.to_values(),
                timeout,
                replayed,
                Some(owner),
            );
            schedule(&mut self.ready, job);
        }
    }

    /// An action of a tracked trigger has finished.
    fn on_finished(&mut self, finished: Finished) {
        let Finished { owner, values } = finished;
        let values = Key::from_values(&values);
        let Some(fid) = self.current_filter(owner.generation, owner.filter) else {
            return;
        };
        let Some(fs) = self.filters.get_mut(fid) else {
            return;
        };
        let trigger = [&mut fs.jail, &mut fs.retiring]
            .into_iter()
            .filter_map(|map| map.get_mut(&values))
            .flat_map(|list| list.iter_mut())
            .find(|t| t.id == owner.trigger);
        // Gone: dropped by an `extend` that replaced older triggers.
        let Some(trigger) = trigger else {
            return;
        };
        trigger.in_flight = trigger.in_flight.saturating_sub(1);
        self.settle(fid, &values, owner.trigger);
        self.unblock(fid, &values);
    }

    /// Hands over the blocked immediate actions of the triggers of `values`
    /// whose older triggers have nothing in flight or waiting any more.
    fn unblock(&mut self, fid: usize, values: &Key) {
        let fs = &self.filters[fid];
        let Some(list) = fs.jail.get(values) else {
            return;
        };
        let ready: Vec<u64> = list
            .iter()
            .filter(|t| !t.blocked.is_empty() && !older_busy(fs, values, t.id))
            .map(|t| t.id)
            .collect();
        for id in ready {
            let fs = &mut self.filters[fid];
            let Some(trigger) = fs
                .jail
                .get_mut(values)
                .and_then(|list| list.iter_mut().find(|t| t.id == id))
            else {
                continue;
            };
            let actions = std::mem::take(&mut trigger.blocked).to_vec();
            let replayed = trigger.restored;
            self.hand_over(fid, values, id, &actions, replayed);
            self.settle(fid, values, id);
        }
    }

    /// Serves until every stream has ended (the match channel closed), then
    /// lets the actions handed over finish, runs the pending `onexit`
    /// actions and commits the store.
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
            // A store that failed to write is retried even when nothing
            // else happens (its own backoff decides when it really tries).
            let store_retry = self
                .store
                .has_backlog()
                .then(|| Instant::now() + STORE_RETRY_TICK);
            let next_timer = self.timers.peek().map(|t| t.0.at);
            let timer_deadline = next_timer
                .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_ms())));
            tokio::select! {
                batch = inputs.matches.recv() => {
                    let Some(batch) = batch else { break };
                    for batch in round(batch, || inputs.matches.try_recv().ok()) {
                        self.on_batch(batch);
                    }
                }
                Some(finished) = inputs.finished.recv() => {
                    for finished in round(finished, || inputs.finished.try_recv().ok()) {
                        self.on_finished(finished);
                    }
                }
                Some(cmd) = inputs.reload.recv() => {
                    let summary = self.reload(cmd.config, cmd.metrics, cmd.generation, now_ms());
                    let _ = cmd.respond.send(summary);
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
                () = std::future::ready(()), if !self.flushing.is_empty() || !self.showing.is_empty() => {
                    self.show_step(now_ms());
                    self.flush_step(now_ms());
                }
                () = inputs.stop.cancelled() => {
                    while let Ok(batch) = inputs.matches.try_recv() {
                        self.on_batch(batch);
                    }
                    self.commit_or_log();
                    self.dispatch_ready();
                    break;
                }
                () = sleep_until_opt(store_retry), if store_retry.is_some() => {
                    // The loop's tail retries the commit and the compaction.
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
        // Shows and flushes accepted are finished and answered.
        while !self.flushing.is_empty() || !self.showing.is_empty() {
            self.show_step(now_ms());
            self.flush_step(now_ms());
        }
        self.finish_handed_over(&mut inputs.finished).await;
        self.run_onexit().await;
        self.commit_or_log();
        self.compact_or_log();
        Ok(self.report)
    }

    /// At shutdown: waits for the actions handed over, retiring the
    /// triggers they finish and handing over the due actions that waited
    /// for them, until nothing is left running.
    async fn finish_handed_over(&mut self, finished: &mut mpsc::UnboundedReceiver<Finished>) {
        loop {
            self.executor.wait_idle().await;
            while let Ok(report) = finished.try_recv() {
                self.on_finished(report);
            }
            self.commit_or_log();
            if self.ready.is_empty() {
                return;
            }
            self.dispatch_ready();
        }
    }

    fn on_batch(&mut self, batch: MatchBatch) {
        if batch.generation == self.generation {
            let Some(&offset) = self.stream_offsets.get(batch.stream) else {
                return;
            };
            for m in batch.matches {
                self.on_match(offset + m.filter, m.values, m.time);
            }
            return;
        }
        // Matched just before a reload reached the stream.
        let Some(older) = self.older.iter().find(|g| g.id == batch.generation) else {
            tracing::warn!(
                matches = batch.matches.len(),
                "dropped matches of a configuration reloaded too many times since"
            );
            return;
        };
        let Some(&offset) = older.stream_offsets.get(batch.stream) else {
            return;
        };
        let fids: Vec<Option<usize>> = batch
            .matches
            .iter()
            .map(|m| older.to_current.get(offset + m.filter).copied().flatten())
            .collect();
        for (m, fid) in batch.matches.into_iter().zip(fids) {
            if let Some(fid) = fid {
                self.on_match(fid, m.values, m.time);
            }
        }
    }

    /// The current id of filter `fid` of configuration `generation`.
    fn current_filter(&self, generation: u64, fid: usize) -> Option<usize> {
        if generation == self.generation {
            return Some(fid);
        }
        let older = self.older.iter().find(|g| g.id == generation)?;
        older.to_current.get(fid).copied().flatten()
    }

    /// Applies a new configuration without losing state: filters that
    /// still exist with the same patterns keep their retry windows and
    /// triggers (pending actions keep their trigger time, and are matched
    /// to the new actions by name), new filters start empty, and removed
    /// ones (or ones whose patterns changed) are forgotten as across a
    /// restart: their pending `onexit` actions run now, the others are
    /// dropped. `start`/`stop` commands are not run.
    pub fn reload(
        &mut self,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        generation: u64,
        now: Time,
    ) -> ReloadSummary {
        let (mut filters, stream_offsets) = build_filters(&config, &metrics);
        let mut summary = ReloadSummary::default();
        let mut to_current = vec![None; self.filters.len()];
        let old_filters = std::mem::take(&mut self.filters);
        let mut old_by_name: HashMap<(Arc<str>, Arc<str>), (usize, FilterState)> = old_filters
            .into_iter()
            .enumerate()
            .map(|(fid, fs)| ((fs.stream.clone(), fs.name.clone()), (fid, fs)))
            .collect();
        for (fid, new) in filters.iter_mut().enumerate() {
            let name = format!("{}.{}", new.stream, new.name);
            let Some((old_fid, old)) = old_by_name.remove(&(new.stream.clone(), new.name.clone()))
            else {
                summary.added.push(name);
                continue;
            };
            if old.pattern_names != new.pattern_names {
                summary.reset.push(name);
                self.retire_filter(old, &mut summary);
                continue;
            }
            if old.decider.plan() != new.decider.plan() || old.actions != new.actions {
                summary.changed.push(name);
            }
            to_current[old_fid] = Some(fid);
            summary.dropped_actions += migrate(old, new, now);
        }
        let mut removed: Vec<_> = old_by_name.into_values().collect();
        removed.sort_by_key(|(fid, _)| *fid);
        for (_, old) in removed {
            summary.removed.push(format!("{}.{}", old.stream, old.name));
            self.retire_filter(old, &mut summary);
        }
        self.filters = filters;
        // Earlier generations now translate to this one.
        for older in &mut self.older {
            for slot in &mut older.to_current {
                *slot = slot.and_then(|fid| to_current.get(fid).copied().flatten());
            }
        }
        self.older.push(Generation {
            id: self.generation,
            stream_offsets: std::mem::replace(&mut self.stream_offsets, stream_offsets),
            to_current,
        });
        if self.older.len() > KEPT_GENERATIONS {
            self.older.remove(0);
        }
        self.generation = generation;
        self.config = config;
        self.metrics = metrics;
        self.rearm_timers();
        // Migrated triggers may have lost their last pending action, or
        // gained one that is due now.
        let mut triggers = Vec::new();
        for (fid, fs) in self.filters.iter().enumerate() {
            for (values, list) in fs.jail.iter().chain(fs.retiring.iter()) {
                triggers.extend(list.iter().map(|t| (fid, values.clone(), t.id)));
            }
        }
        for (fid, values, id) in triggers {
            self.settle(fid, &values, id);
        }
        // Removed filters' entries are forgotten before anything runs.
        self.durable_needed = true;
        summary
    }

    /// A filter leaves the configuration: its pending `onexit` actions run
    /// now, the rest is dropped, and its entries are forgotten in the
    /// store. Actions still running finish on their own.
    fn retire_filter(&mut self, fs: FilterState, summary: &mut ReloadSummary) {
        let mut keys: Vec<&Key> = fs.jail.keys().chain(fs.retiring.keys()).collect();
        keys.extend(fs.decider.window().iter().map(|(values, _)| values));
        keys.sort_by(|a, b| a.cmp_text(b));
        keys.dedup();
        for values in keys {
            self.store.append(&Record::Forget {
                stream: &fs.stream,
                filter: &fs.name,
                values: values.into(),
            });
        }
        for (values, triggers) in fs.jail.iter() {
            for trigger in triggers {
                for action in trigger.pending.iter() {
                    if fs.decider.plan().actions[action].onexit {
                        summary.onexit_actions += 1;
                        let values = values.to_values();
                        let job = job(&fs, action, &values, self.action_timeout, false, None);
                        schedule(&mut self.ready, job);
                    } else {
                        summary.dropped_actions += 1;
                    }
                }
            }
        }
    }

    /// Rebuilds the timer heap from the jailed triggers (after a reload,
    /// filter and action indices have moved).
    fn rearm_timers(&mut self) {
        self.timers.clear();
        let mut arms = Vec::new();
        for (fid, fs) in self.filters.iter_mut().enumerate() {
            for slot in 0..fs.jail.slot_end() {
                let Some((_, triggers)) = fs.jail.at_mut(slot) else {
                    continue;
                };
                for trigger in triggers {
                    trigger.armed = trigger
                        .pending
                        .iter()
                        .filter(|&a| !trigger.held.contains(a))
                        .collect();
                    for action in trigger.armed.iter() {
                        arms.push((fid, slot, trigger.id, trigger.time, action));
                    }
                }
            }
        }
        for (fid, slot, id, time, action) in arms {
            self.arm(fid, slot, id, time, action);
        }
    }

    fn on_match(&mut self, fid: usize, values: Values, time: Time) {
        self.report.matches += 1;
        let fs = &mut self.filters[fid];
        log::match_found(&fs.stream, &fs.name, &values);
        let key = Key::from_values(&values);
        // A jailed value's match is a duplicate: it never counts, so it is
        // not persisted as a match either.
        if fs.persist_matches && !fs.decider.is_jailed_key(&key, time) {
            self.store.append(&Record::Match {
                stream: &fs.stream,
                filter: &fs.name,
                values: (&key).into(),
                time,
            });
        }
        match fs.decider.on_match_key(&key, values, time) {
            Decision::Trigger(trigger) => self.on_trigger(fid, &key, trigger),
            Decision::DuplicateIgnored => self.metrics.ignored(fid, Ignored::Duplicate),
            Decision::Counted { .. } => {}
        }
    }

    fn on_trigger(&mut self, fid: usize, key: &Key, trigger: Trigger) {
        if trigger.kind != TriggerKind::Extend {
            self.report.triggers += 1;
            self.metrics.trigger_values(fid, &trigger.values);
        }
        let fs = &self.filters[fid];
        let (delayed, immediate): (Vec<usize>, Vec<usize>) = trigger
            .actions
            .iter()
            .map(|scheduled| scheduled.action)
            .partition(|&action| fs.is_delayed(action));
        let jailed = fs.persist_triggers && !delayed.is_empty();
        if !jailed {
            for action in immediate {
                let job = job(
                    fs,
                    action,
                    &trigger.values,
                    self.action_timeout,
                    false,
                    None,
                );
                schedule(&mut self.ready, job);
            }
            return;
        }
        let extend = trigger.kind == TriggerKind::Extend;
        self.store.append(&Record::Trigger {
            stream: &fs.stream,
            filter: &fs.name,
            values: key.into(),
            time: trigger.time,
            replace: extend,
        });
        if !extend {
            // Its first action must not run before this is on disk.
            self.durable_needed = true;
            let id = self.add_pending_trigger(fid, key, trigger.time, delayed);
            let fs = &mut self.filters[fid];
            if older_busy(fs, key, id) {
                if let Some(new) = fs
                    .jail
                    .get_mut(key)
                    .and_then(|list| list.iter_mut().find(|t| t.id == id))
                {
                    new.blocked = immediate.into_iter().collect();
                }
                return;
            }
            self.hand_over_values(fid, key, &trigger.values, id, &immediate, false);
            return;
        }
        // An extension only moves the pending actions later: losing it in a
        // crash means an earlier unban, so it needs no sync of its own.
        let fs = &mut self.filters[fid];
        let refresh_every = fs.kernel_refresh_every();
        let mut refresh = false;
        let slot = fs.jail.slot(key);
        let extended = slot
            .and_then(|slot| fs.jail.at_mut(slot))
            .and_then(|(_, triggers)| {
                // Under `extend` a value has one pending trigger at most.
                triggers.drain(..triggers.len().saturating_sub(1));
                let pending = triggers.last_mut()?;
                pending.time = trigger.time;
                if refresh_every.is_some_and(|every| {
                    trigger.time.saturating_sub(pending.kernel_refreshed) > every
                }) {
                    refresh = true;
                    pending.kernel_refreshed = trigger.time;
                }
                // Held actions wait again, for their new due time.
                pending.held.clear();
                let unarmed: Vec<usize> = delayed
                    .iter()
                    .copied()
                    .filter(|&a| !pending.armed.contains(a))
                    .collect();
                for &action in &unarmed {
                    pending.armed.insert(action);
                }
                pending.pending = delayed.iter().copied().collect();
                Some((pending.id, unarmed))
            });
        let (id, unarmed) = match extended {
            Some(extended) => extended,
            None => {
                let id = self.add_pending_trigger(fid, key, trigger.time, delayed);
                (id, Vec::new())
            }
        };
        if let Some(slot) = slot {
            for action in unarmed {
                self.arm(fid, slot, id, trigger.time, action);
            }
        }
        self.hand_over_values(fid, key, &trigger.values, id, &immediate, false);
        if refresh {
            self.refresh_kernel_timeouts(fid, &trigger.values);
        }
    }

    /// Under `extend` the ban does not run again, but what it put in a
    /// kernel set with a timeout would leave the set at the old time, before
    /// the moved unban: it is added again with its full timeout, quietly
    /// (no `run` line, not counted as an action).
    fn refresh_kernel_timeouts(&mut self, fid: usize, values: &[String]) {
        let fs = &self.filters[fid];
        for (action, spec) in fs.actions.iter().enumerate() {
            let refreshes = spec
                .set_action
                .as_ref()
                .is_some_and(|s| s.op == SetOp::Add && s.kernel_timeout_ms.is_some());
            if refreshes
                && !fs.is_delayed(action)
                && fs.decider.plan().action_applies(action, values)
            {
                let mut job = job(fs, action, values, self.action_timeout, false, None);
                job.refresh = true;
                self.ready.push(job);
            }
        }
    }

    /// Hands over immediate actions of a trigger, which its delayed actions
    /// then wait for.
    fn hand_over(&mut self, fid: usize, key: &Key, id: u64, actions: &[usize], replayed: bool) {
        if actions.is_empty() {
            return;
        }
        self.hand_over_values(fid, key, &key.to_values(), id, actions, replayed);
    }

    /// [`Tracker::hand_over`] with the values of `key` at hand.
    fn hand_over_values(
        &mut self,
        fid: usize,
        key: &Key,
        values: &[String],
        id: u64,
        actions: &[usize],
        replayed: bool,
    ) {
        if actions.is_empty() {
            return;
        }
        let owner = TriggerRef {
            filter: fid,
            trigger: id,
            generation: self.generation,
        };
        let fs = &mut self.filters[fid];
        for &action in actions {
            let job = job(
                fs,
                action,
                values,
                self.action_timeout,
                replayed,
                Some(owner),
            );
            schedule(&mut self.ready, job);
        }
        if let Some(trigger) = fs
            .jail
            .get_mut(key)
            .and_then(|list| list.iter_mut().find(|t| t.id == id))
        {
            trigger.in_flight += actions.len() as u32;
        }
    }

    fn fire_due_timers(&mut self, now: Time) {
        while self.timers.peek().is_some_and(|t| t.0.at <= now) {
            let Some(Reverse(timer)) = self.timers.pop() else {
                break;
            };
            let (fid, action) = (timer.filter as usize, timer.action as usize);
            let fs = &mut self.filters[fid];
            let plan = fs.decider.plan();
            let Some((key, triggers)) = fs.jail.at_mut(timer.slot) else {
                continue;
            };
            let Some(trigger) = triggers.iter_mut().find(|t| t.id == timer.trigger) else {
                // Flushed, or replaced: a stale timer.
                continue;
            };
            trigger.armed.remove(action);
            if !trigger.pending.contains(action) {
                continue;
            }
            let due = due(plan, trigger, action);
            if due > now {
                // Extended since this timer was armed.
                trigger.armed.insert(action);
                self.timers.push(Reverse(Timer { at: due, ..timer }));
                continue;
            }
            trigger.held.insert(action);
            let key = key.clone();
            self.settle(fid, &key, timer.trigger);
        }
    }

    /// A store that cannot be written (disk full or read-only, I/O error)
    /// must not stop the bans: the error is logged and counted, the store
    /// keeps what it could not write and retries later, the state in memory
    /// is untouched, and actions run anyway.
    fn commit_or_log(&mut self) {
        let committed = self.commit();
        self.metrics
            .store_dropped_records(self.store.dropped_records());
        if let Err(e) = committed {
            self.report.store_errors += 1;
            self.metrics.store_error();
            tracing::error!(error = %format!("{e:#}"), "state commit failed; actions run on, the state is kept in memory and written later");
        }
    }

    fn compact_or_log(&mut self) {
        if let Err(e) = self.compact() {
            self.report.store_errors += 1;
            self.metrics.store_error();
            tracing::error!(error = %format!("{e:#}"), "state compaction failed; actions run on, the state is kept in memory and written later");
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
            let triggers =
                fs.persist_triggers
                    .then(|| {
                        fs.jail.iter().chain(fs.retiring.iter()).flat_map(
                            move |(values, triggers)| {
                                triggers.iter().map(move |t| Record::Trigger {
                                    stream: &fs.stream,
                                    filter: &fs.name,
                                    values: values.into(),
                                    time: t.time,
                                    replace: false,
                                })
                            },
                        )
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
                                values: values.into(),
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
        self.dispatch_ready_at(now_ms());
    }

    /// Hands the ready actions to the executor, except virtual ones: their
    /// line is fed here to their stream's filters, at `now`, and they
    /// finish at once. A fed line can make triggers whose actions must not
    /// run before they are committed, so the jobs it makes are handled in
    /// a next round, after a commit; an acyclic configuration (checked at
    /// load) ends the rounds.
    fn dispatch_ready_at(&mut self, now: Time) {
        while !self.ready.is_empty() {
            let mut fed = false;
            for job in std::mem::take(&mut self.ready) {
                if !job.refresh {
                    self.report.actions += 1;
                }
                let Some(to) = &job.send_to else {
                    self.executor.spawn(job);
                    continue;
                };
                fed = true;
                self.feed_virtual(&job, to, now);
                job.metrics.action_done(&ActionDone {
                    action_id: job.action_id,
                    values: &job.values,
                    outcome: &ExitOutcome {
                        code: 0,
                        signal: None,
                        detail: None,
                        timed_out: false,
                    },
                    elapsed: Duration::ZERO,
                    replayed: job.replayed,
                });
                if let Some(owner) = job.owner {
                    self.on_finished(Finished {
                        owner,
                        values: job.values,
                    });
                }
            }
            if fed {
                self.commit_or_log();
            }
        }
    }

    /// Feeds a virtual action's line to virtual stream `to`'s filters, as
    /// a stream thread would with a line it read. A job made before a
    /// reload whose stream is gone, or no longer virtual, sends nothing.
    fn feed_virtual(&mut self, job: &ActionJob, to: &str, now: Time) {
        let config = self.config.clone();
        let Some((to, stream)) = config
            .streams
            .iter()
            .enumerate()
            .find(|(_, s)| *s.name == *to && s.is_virtual)
        else {
            tracing::warn!(
                stream = %to,
                action = %format!("{}.{}.{}", job.stream, job.filter, job.action),
                "a virtual action's stream is no longer configured as virtual; its line is dropped"
            );
            return;
        };
        let (Some(line), Some(&offset)) = (job.argv.first(), self.stream_offsets.get(to)) else {
            return;
        };
        let mut found = Vec::new();
        let mut scratch = stream.matcher.scratch();
        if !stream.matcher.find(line, &mut scratch, &mut found) {
            return;
        }
        let mut accepted = Vec::with_capacity(found.len());
        for m in found {
            match m.outcome {
                Ok(values) => accepted.push(Match {
                    filter: m.filter,
                    values,
                    time: now,
                }),
                Err(ignored) => self.metrics.ignored(
                    self.metrics.filter_id(to, m.filter),
                    Ignored::Pattern(ignored.reason),
                ),
            }
        }
        self.metrics.matches(to, &accepted);
        for m in accepted {
            self.on_match(offset + m.filter, m.values, m.time);
        }
    }

    /// Runs every pending delayed action marked `onexit`, and waits for
    /// them. The triggers stay in the store: at the next start their past
    /// actions run again and the rest is rescheduled, as in reaction.
    async fn run_onexit(&mut self) {
        let mut jobs = Vec::new();
        for fs in &self.filters {
            for (values, triggers) in fs.jail.iter() {
                for trigger in triggers {
                    for action in trigger.pending.iter() {
                        if fs.decider.plan().actions[action].onexit {
                            // No owner: the trigger stays in the store, and
                            // the next start runs what is due then.
                            let values = values.to_values();
                            let job = job(fs, action, &values, self.action_timeout, false, None);
                            jobs.push(job);
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
        // Virtual ones are fed now, and what their lines trigger runs too.
        for job in jobs {
            schedule(&mut self.ready, job);
        }
        self.dispatch_ready();
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
            metrics: Some(self.metrics.clone()),
            tcp: None,
        };
        for fs in &self.filters {
            for (values, triggers) in fs.jail.iter() {
                let mut actions = Vec::new();
                for trigger in triggers {
                    for action in trigger.pending.iter() {
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
                        values: values.to_values(),
                        actions,
                    });
                }
            }
        }
        snapshot
    }

    fn on_control(&mut self, cmd: ControlCmd) {
        let response = match cmd.request {
            Request::Reload => {
                self.forward_reload(cmd.respond);
                return;
            }
            Request::Show(selection) => match self.collect_job(&selection) {
                Ok(job) => {
                    // Copied a chunk per round, then rendered off the
                    // tracker and sent as it comes.
                    self.showing.push_back((job, cmd.respond));
                    return;
                }
                Err(message) => Err(message),
            },
            Request::Flush(selection) => match self.flush_job(&selection) {
                Ok(job) => {
                    // Flushed a chunk per round, then answered.
                    self.flushing.push_back((job, cmd.respond));
                    return;
                }
                Err(message) => Err(message),
            },
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

    /// The daemon reloads (it owns the streams) and answers the client.
    fn forward_reload(&self, respond: oneshot::Sender<Response>) {
        let refused = match &self.reload_requests {
            Some(requests) => requests.try_send(respond).err().map(|e| match e {
                mpsc::error::TrySendError::Full(respond)
                | mpsc::error::TrySendError::Closed(respond) => respond,
            }),
            None => Some(respond),
        };
        if let Some(respond) = refused {
            let _ = respond.send(Response::Error(
                "a reload is already under way, or the daemon is stopping".into(),
            ));
        }
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

    fn entry(&self, fid: usize, values: &Key, now: Time) -> Option<Value> {
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
                    .filter(|t| t.pending.contains(action))
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

    fn insert_entry(tree: &mut Map<String, Value>, fs: &FilterState, values: &Key, entry: Value) {
        let filters = tree
            .entry(fs.stream.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(filters) = filters {
            let keys = filters
                .entry(fs.name.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(keys) = keys {
                keys.insert(values.to_string(), entry);
            }
        }
    }

    /// A copy of what `show` (or `flush`) selects, to fill a chunk per
    /// round ([`Tracker::collect_some`]): every value with counted matches
    /// or pending triggers of the selected filters, compact, unsorted and
    /// not yet matched against the value regexes (both are done off the
    /// tracker, by [`show::render`]).
    fn collect_job(&self, selection: &Selection) -> Result<Collect, String> {
        let mut filters = Vec::new();
        let mut fids = Vec::new();
        for SelectedFilter { fid, slots } in self.selected(selection)? {
            fids.push(fid);
            let fs = &self.filters[fid];
            let plan = fs.decider.plan();
            filters.push(show::FilterRows {
                stream: fs.stream.clone(),
                filter: fs.name.clone(),
                actions: fs
                    .action_names
                    .iter()
                    .zip(&plan.actions)
                    .map(|(name, spec)| (name.clone(), spec.after.unwrap_or(0)))
                    .collect(),
                slots,
                sets: kernel_sets(fs, &self.config),
                country: crate::geo::show_lookup(&self.config, &fs.pattern_names),
                rows: Vec::new(),
            });
        }
        Ok(Collect {
            generation: self.generation,
            snapshot: show::Snapshot {
                filters,
                max: selection.max,
            },
            fids,
            filter: 0,
            window: false,
            slot: 0,
        })
    }

    /// Copies up to `budget` more entries into `job`: first each filter's
    /// jail, then its retry window. Returns whether it is done. Entries
    /// change between rounds: one added meanwhile may be missed or met
    /// twice (the render shows it once).
    fn collect_some(&self, job: &mut Collect, mut budget: usize, now: Time) -> bool {
        while budget > 0 {
            let Some(rows) = job.snapshot.filters.get_mut(job.filter) else {
                return true;
            };
            // A reload since: the filter's id now, if it is still there.
            let fs = self
                .current_filter(job.generation, job.fids[job.filter])
                .and_then(|fid| self.filters.get(fid));
            let Some(fs) = fs else {
                (job.filter, job.window, job.slot) = (job.filter + 1, false, 0);
                continue;
            };
            let window = fs.decider.window();
            if !job.window {
                if job.slot >= fs.jail.slot_end() {
                    (job.window, job.slot) = (true, 0);
                    continue;
                }
                if let Some((key, triggers)) = fs.jail.at(job.slot) {
                    let matches = if window.is_empty() {
                        0
                    } else {
                        window.count(key, now)
                    };
                    rows.rows.push(show::Row {
                        key: key.clone(),
                        matches: u32::try_from(matches).unwrap_or(u32::MAX),
                        triggers: triggers
                            .iter()
                            .map(|t| show::Pending {
                                time: t.time,
                                actions: t.pending.0,
                            })
                            .collect(),
                    });
                }
            } else {
                if job.slot >= window.slot_end() {
                    (job.filter, job.window, job.slot) = (job.filter + 1, false, 0);
                    continue;
                }
                if let Some((key, matches)) = window.at(job.slot, now)
                    && !fs.jail.contains_key(key)
                {
                    rows.rows.push(show::Row {
                        key: key.clone(),
                        matches: u32::try_from(matches).unwrap_or(u32::MAX),
                        triggers: SmallVec::new(),
                    });
                }
            }
            job.slot += 1;
            budget -= 1;
        }
        job.filter >= job.snapshot.filters.len()
    }

    /// One round's chunk of the oldest `show` under way; once its copy is
    /// whole, it is rendered off the tracker and sent as it comes.
    fn show_step(&mut self, now: Time) {
        let Some((mut job, respond)) = self.showing.pop_front() else {
            return;
        };
        if !self.collect_some(&mut job, COLLECT_CHUNK, now) {
            self.showing.push_front((job, respond));
            return;
        }
        let (pieces, answer) = mpsc::channel(4);
        let snapshot = job.snapshot;
        tokio::task::spawn_blocking(move || {
            show::render(snapshot, |piece| pieces.blocking_send(piece).is_ok())
        });
        let _ = respond.send(Response::Pieces(answer));
    }

    /// The whole copy of a selection at once (tests).
    #[cfg(test)]
    fn show_snapshot(&self, selection: &Selection) -> Result<show::Snapshot, String> {
        let mut job = self.collect_job(selection)?;
        while !self.collect_some(&mut job, COLLECT_CHUNK, now_ms()) {}
        Ok(job.snapshot)
    }

    /// `show`'s answer as a tree, rendered here (tests).
    #[cfg(test)]
    fn show(&self, selection: &Selection) -> Result<Value, String> {
        let mut text = Vec::new();
        show::render(self.show_snapshot(selection)?, |piece| {
            text.extend_from_slice(&piece);
            true
        });
        let mut answer: Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
        Ok(answer["ok"].take())
    }

    /// Runs the selected pending actions now and forgets the selected
    /// matches; answers with what was flushed.
    /// A flush as a job: the selected entries as they are now, to flush
    /// chunk by chunk and answer with.
    fn flush_job(&self, selection: &Selection) -> Result<FlushJob, String> {
        let mut collect = self.collect_job(selection)?;
        collect.snapshot.max = None;
        Ok(FlushJob {
            collect,
            collected: false,
            filter: 0,
            row: 0,
        })
    }

    /// Flushes up to `budget` more entries of `job`; returns whether it is
    /// done. An entry is flushed as it is when its turn comes.
    fn flush_some(&mut self, job: &mut FlushJob, mut budget: usize, now: Time) -> bool {
        while budget > 0 {
            let Some(rows) = job.collect.snapshot.filters.get(job.filter) else {
                return true;
            };
            let Some(row) = rows.rows.get(job.row) else {
                job.filter += 1;
                job.row = 0;
                continue;
            };
            job.row += 1;
            budget -= 1;
            // What `show` lists: counted matches, or triggers kept.
            let selected = (row.matches > 0 || !row.triggers.is_empty())
                && rows.slots.iter().all(|(slot, re)| {
                    row.key
                        .with_text(*slot, |text| re.is_match(text))
                        .unwrap_or(false)
                });
            // A reload since: the filter's id now, if it is still there.
            let fid = self.current_filter(job.collect.generation, job.collect.fids[job.filter]);
            if let (true, Some(fid)) = (selected, fid) {
                let key = row.key.clone();
                self.flush_value(fid, &key, now);
            }
        }
        job.filter >= job.collect.snapshot.filters.len()
    }

    /// One round's chunk of the oldest flush under way; once it is done
    /// (and committed), its answer is rendered off the tracker.
    fn flush_step(&mut self, now: Time) {
        let Some((mut job, respond)) = self.flushing.pop_front() else {
            return;
        };
        if !job.collected {
            // First the copy of what it selects (its answer), then the flush.
            job.collected = self.collect_some(&mut job.collect, COLLECT_CHUNK, now);
            self.flushing.push_front((job, respond));
            return;
        }
        if !self.flush_some(&mut job, FLUSH_CHUNK, now) {
            self.flushing.push_front((job, respond));
            return;
        }
        // Durable before the client hears "done" and before actions run.
        self.commit_or_log();
        self.dispatch_ready();
        let (pieces, answer) = mpsc::channel(4);
        let snapshot = job.collect.snapshot;
        tokio::task::spawn_blocking(move || {
            show::render(snapshot, |piece| pieces.blocking_send(piece).is_ok())
        });
        let _ = respond.send(Response::Pieces(answer));
    }

    /// Runs the selected pending actions now and forgets the selected
    /// matches, all at once; answers with what was flushed (tests).
    #[cfg(test)]
    fn flush(&mut self, selection: &Selection) -> Result<Value, String> {
        let mut job = self.flush_job(selection)?;
        while !self.collect_some(&mut job.collect, COLLECT_CHUNK, now_ms()) {}
        while !self.flush_some(&mut job, FLUSH_CHUNK, now_ms()) {}
        let mut text = Vec::new();
        show::render(job.collect.snapshot, |piece| {
            text.extend_from_slice(&piece);
            true
        });
        let mut answer: Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
        Ok(answer["ok"].take())
    }

    /// Forgets the matches and triggers of `values` and releases every
    /// pending action of its triggers, due now. The store gets the intent
    /// at once: the entry is forgotten, and each unfinished trigger is
    /// stored again as old enough for all its actions to be due, so a
    /// crash before they finish runs them at restart (after the trigger's
    /// earlier actions, as any overdue action), and they leave the store
    /// only once they have finished.
    fn flush_value(&mut self, fid: usize, values: &Key, now: Time) {
        let fs = &mut self.filters[fid];
        fs.decider.forget(values);
        self.store.append(&Record::Forget {
            stream: &fs.stream,
            filter: &fs.name,
            values: values.into(),
        });
        self.durable_needed = true;
        let all_due = now.saturating_sub(fs.decider.plan().longest_delay().unwrap_or(0));
        let mut released = Vec::new();
        for mut trigger in fs.jail.remove(values).unwrap_or_default() {
            trigger.time = all_due;
            trigger.restored = false;
            trigger.armed.clear();
            trigger.held = trigger.pending;
            released.push(trigger.id);
            fs.retiring
                .get_or_insert_with(values, Triggers::new)
                .1
                .push(trigger);
        }
        for trigger in fs.retiring.get(values).into_iter().flatten() {
            self.store.append(&Record::Trigger {
                stream: &fs.stream,
                filter: &fs.name,
                values: values.into(),
                time: trigger.time,
                replace: false,
            });
        }
        for id in released {
            self.settle(fid, values, id);
        }
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
        let key = Key::from_values(&values);
        let decision = self.filters[fid].decider.force_trigger(values, now);
        if let Decision::Trigger(trigger) = decision {
            self.on_trigger(fid, &key, trigger);
        }
        let mut tree = Map::new();
        if let Some(entry) = self.entry(fid, &key, now) {
            Self::insert_entry(&mut tree, &self.filters[fid], &key, entry);
        }
        Ok(Value::Object(tree))
    }
}

/// Entries a flush handles per tracker round.
const FLUSH_CHUNK: usize = 4096;

/// A flush under way, a chunk per tracker round: a flush of a million
/// entries never stops matching and timers for long.
#[derive(Debug)]
struct FlushJob {
    /// The selected entries as they were: what is flushed, and the answer.
    collect: Collect,
    /// Whether `collect` is whole.
    collected: bool,
    /// Where the next chunk starts.
    filter: usize,
    row: usize,
}

/// Entries a `show` or `flush` copies per tracker round.
const COLLECT_CHUNK: usize = 16_384;

/// What a `show` or `flush` selects, copied a chunk per tracker round.
#[derive(Debug)]
struct Collect {
    /// The configuration generation `fids` belong to.
    generation: u64,
    snapshot: show::Snapshot,
    /// The filter id of each of the snapshot's filters.
    fids: Vec<usize>,
    /// Where the next chunk starts: a filter, its jail or its window, a
    /// slot.
    filter: usize,
    window: bool,
    slot: u32,
}

/// A filter `show`/`flush` act on, and the value regexes to apply to its
/// values (by slot).
#[derive(Debug)]
struct SelectedFilter {
    fid: usize,
    slots: Vec<(usize, Regex)>,
}

/// Logs the `run` line of `job` (in decision order, right after the
/// `match` line that caused it) and queues it for the next dispatch.
fn schedule(ready: &mut Vec<ActionJob>, job: ActionJob) {
    log::action_started(&job.stream, &job.filter, &job.action, &job.argv);
    ready.push(job);
}

fn job(
    fs: &FilterState,
    action: usize,
    values: &[String],
    timeout: Duration,
    replayed: bool,
    owner: Option<TriggerRef>,
) -> ActionJob {
    ActionJob {
        metrics: fs.metrics.clone(),
        owner,
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
        send_to: fs.send_to[action].clone(),
        set_action: fs.actions[action].set_action.clone(),
        refresh: false,
    }
}

/// The kernel sets the immediate adds of a filter put addresses in, for
/// `show`.
fn kernel_sets(fs: &FilterState, config: &Config) -> Vec<show::KernelSets> {
    let label = |backend: crate::config::SetBackend, name: &Arc<str>| -> Arc<str> {
        match backend {
            crate::config::SetBackend::Nftables => {
                format!("nftables inet {} {name}", config.firewall.table).into()
            }
            crate::config::SetBackend::Ipset => format!("ipset {name}").into(),
        }
    };
    fs.actions
        .iter()
        .enumerate()
        .filter(|(action, _)| !fs.is_delayed(*action))
        .filter_map(|(_, a)| a.set_action.as_ref())
        .filter(|s| s.op == SetOp::Add)
        .map(|s| show::KernelSets {
            slot: s.slot,
            v4: s.v4.as_ref().map(|n| label(s.backend, n)),
            v6: s.v6.as_ref().map(|n| label(s.backend, n)),
        })
        .collect()
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
        dir: tempfile::TempDir,
        tracker: Tracker,
    }

    fn fixture(restore: &[Record<'_>], now: Time) -> Fixture {
        fixture_with(CONFIG, restore, now)
    }

    fn fixture_with(config: &str, restore: &[Record<'_>], now: Time) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        {
            let (mut store, _) = Store::open(&dir.path().join("state")).expect("open store");
            for record in restore {
                store.append(record);
            }
            store.commit(true).expect("commit");
        }
        start(dir, now)
    }

    /// A tracker on the state and config in `dir`, restored at `now`.
    fn start(dir: tempfile::TempDir, now: Time) -> Fixture {
        let config = crate::config::load(&dir.path().join("config.yml")).expect("valid config");
        let (store, restored) = Store::open(&dir.path().join("state")).expect("reopen store");
        let metrics = Arc::new(Metrics::new(&config));
        let mut tracker = Tracker::new(TrackerDeps {
            config: Arc::new(config),
            store,
            executor: Executor::new(1, None),
            action_timeout: Duration::from_secs(1),
            metrics,
            reload_requests: None,
        });
        tracker.restore(restored, now).expect("restore");
        Fixture { dir, tracker }
    }

    /// What a crash leaves: what was committed, read by a new tracker at
    /// `now` (actions handed over and not reported finished never were).
    fn crash_and_restart(fx: Fixture, now: Time) -> Fixture {
        let Fixture { dir, mut tracker } = fx;
        tracker.commit().expect("commit");
        drop(tracker);
        start(dir, now)
    }

    fn values(ip: &str) -> Values {
        vec![ip.to_owned()].into_boxed_slice()
    }

    /// The argv of the actions waiting for dispatch, emptied; they are
    /// then reported finished, which may hand over more.
    fn take_ready(tracker: &mut Tracker) -> Vec<String> {
        let jobs: Vec<ActionJob> = tracker.ready.drain(..).collect();
        for job in &jobs {
            if let Some(owner) = job.owner {
                tracker.on_finished(Finished {
                    owner,
                    values: job.values.clone(),
                });
            }
        }
        jobs.iter().map(|job| job.argv.join(" ")).collect()
    }

    /// The actions waiting for dispatch, emptied, still running.
    fn take_running(tracker: &mut Tracker) -> Vec<ActionJob> {
        tracker.ready.drain(..).collect()
    }

    fn finish(tracker: &mut Tracker, jobs: Vec<ActionJob>) {
        for job in jobs {
            if let Some(owner) = job.owner {
                tracker.on_finished(Finished {
                    owner,
                    values: job.values,
                });
            }
        }
    }

    fn argvs(jobs: &[ActionJob]) -> Vec<String> {
        jobs.iter().map(|job| job.argv.join(" ")).collect()
    }

    /// Every trigger the tracker still keeps, jailed or retiring.
    fn kept(tracker: &Tracker) -> usize {
        let fs = &tracker.filters[0];
        fs.jail
            .iter()
            .chain(fs.retiring.iter())
            .map(|(_, list)| list.len())
            .sum()
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
            values: ip.into(),
            time,
            replace: false,
        }
    }

    const RECIDIVE: &str = r#"
patterns:
  ip:
    type: ip
streams:
  ssh:
    cmd: ['true']
    filters:
      failed:
        regex: ['fail <ip>']
        actions:
          tell:
            type: virtual
            options: {send: 'ban <ip>', to: recidive}
  recidive:
    type: virtual
    filters:
      again:
        regex: ['^ban <ip>$']
        retry: 2
        retryperiod: 1d
        actions:
          long:
            cmd: ['true']
          unlong:
            cmd: ['true']
            after: 1d
"#;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_virtual_line_is_matched_and_its_trigger_committed_before_its_actions_run() {
        let now = now_ms();
        let mut fx = fixture_with(RECIDIVE, &[], now);
        let ip = values("192.0.2.30");
        let tracker = &mut fx.tracker;
        tracker.on_match(0, ip.clone(), now);
        assert_eq!(argvs(&tracker.ready), ["ban 192.0.2.30"]);
        tracker.dispatch_ready_at(now);
        // Counted in the virtual stream's window, nothing more yet.
        assert!(tracker.ready.is_empty());
        assert_eq!(tracker.filters[1].decider.window().iter().count(), 1);
        assert!(tracker.filters[1].jail.is_empty());
        tracker.on_match(0, ip.clone(), now);
        tracker.dispatch_ready_at(now);
        assert!(tracker.ready.is_empty());
        // The recidive trigger is jailed, its ban handed over after a
        // commit (nothing is left buffered) and it waits for the ban.
        let jailed = &tracker.filters[1]
            .jail
            .get(&Key::from_values(&ip))
            .expect("jailed");
        assert_eq!(jailed.len(), 1);
        assert_eq!(jailed[0].pending.to_vec(), vec![1]);
        assert!(!tracker.durable_needed);
        assert_eq!(tracker.report.triggers, 3);
        assert_eq!(tracker.report.actions, 3);
        // A crash now: the trigger is back, its ban runs again, and no
        // virtual line is sent again at start.
        tracker.executor.wait_idle().await;
        let mut fx = crash_and_restart(fx, now + 1);
        assert_eq!(fx.tracker.report.restored_triggers, 1);
        assert_eq!(take_ready(&mut fx.tracker), vec!["true"]);
        assert_eq!(fx.tracker.filters[0].decider.window().iter().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_virtual_line_made_before_a_reload_goes_to_its_stream_by_name() {
        let now = now_ms();
        let mut fx = fixture_with(RECIDIVE, &[], now);
        let ip = values("192.0.2.31");
        fx.tracker.on_match(0, ip.clone(), now);
        assert_eq!(argvs(&fx.tracker.ready), ["ban 192.0.2.31"]);
        // A virtual stream that would take the line too now comes first.
        let other = "  other:\n    type: virtual\n    filters:\n      seen:\n        regex: ['^ban <ip>$']\n        actions:\n          note:\n            cmd: ['true']\n";
        let text = RECIDIVE.replace("  recidive:\n", &format!("{other}  recidive:\n"));
        let path = fx.dir.path().join("reloaded.yml");
        std::fs::write(&path, text).expect("write config");
        let config = Arc::new(crate::config::load(&path).expect("valid"));
        assert_eq!(config.streams[1].name, "other");
        let metrics = Arc::new(Metrics::new(&config));
        let tracker = &mut fx.tracker;
        tracker.reload(config, metrics, 1, now);
        tracker.dispatch_ready_at(now);
        let recidive = tracker.filter_index("recidive", "again").expect("recidive");
        let other = tracker.filter_index("other", "seen").expect("other");
        assert_eq!(tracker.filters[recidive].decider.window().iter().count(), 1);
        assert_eq!(tracker.report.triggers, 1, "only ssh triggered");
        assert!(tracker.filters[other].decider.window().iter().count() == 0);
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
        assert_eq!(kept(&tracker), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_overdue_unban_runs_at_restart_only_after_the_reapplied_ban() {
        let ip = values("192.0.2.2");
        let fx = fixture(&[trigger_record(&ip, T0)], T0 + 2 * HOUR);
        let mut tracker = fx.tracker;
        let ban = take_running(&mut tracker);
        assert_eq!(argvs(&ban), vec!["ban 192.0.2.2"]);
        assert!(tracker.timers.is_empty());
        assert_eq!(tracker.report().overdue_actions, 1);
        assert_eq!(tracker.report().rerun_actions, 1);
        // Nothing else is handed over while the ban runs.
        tracker.fire_due_timers(T0 + 3 * HOUR);
        assert!(tracker.ready.is_empty());
        finish(&mut tracker, ban);
        let unban = take_running(&mut tracker);
        assert_eq!(argvs(&unban), vec!["unban 192.0.2.2"]);
        assert!(unban[0].replayed);
        assert_eq!(kept(&tracker), 1, "kept until the unban has finished");
        finish(&mut tracker, unban);
        assert_eq!(kept(&tracker), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_due_unban_waits_for_its_own_slow_ban_not_for_others() {
        let fx = fixture(&[], T0);
        let mut tracker = fx.tracker;
        let (slow, quick) = (values("192.0.2.20"), values("192.0.2.21"));
        for ip in [&slow, &quick] {
            tracker.on_match(0, ip.clone(), T0);
            tracker.on_match(0, ip.clone(), T0);
        }
        let jobs = take_running(&mut tracker);
        let (slow_jobs, quick_jobs): (Vec<_>, Vec<_>) =
            jobs.into_iter().partition(|job| job.values == slow);
        finish(&mut tracker, quick_jobs);
        tracker.fire_due_timers(T0 + HOUR);
        assert_eq!(argvs(&take_running(&mut tracker)), vec!["unban 192.0.2.21"]);
        finish(&mut tracker, slow_jobs);
        assert_eq!(argvs(&take_running(&mut tracker)), vec!["unban 192.0.2.20"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_handed_over_unban_lost_in_a_crash_runs_after_restart() {
        let ip = values("192.0.2.22");
        let fx = fixture(&[], T0);
        let mut tracker = fx.tracker;
        ban(&mut tracker, &ip, T0);
        tracker.fire_due_timers(T0 + HOUR);
        // Handed over, never finished: the daemon dies here.
        assert_eq!(argvs(&take_running(&mut tracker)), vec!["unban 192.0.2.22"]);
        let fx = crash_and_restart(Fixture { tracker, ..fx }, T0 + HOUR + 1);
        let mut tracker = fx.tracker;
        assert_eq!(take_ready(&mut tracker), vec!["ban 192.0.2.22"]);
        assert_eq!(take_ready(&mut tracker), vec!["unban 192.0.2.22"]);
        assert_eq!(kept(&tracker), 0);
        // Once finished, it is gone for good.
        let fx = crash_and_restart(Fixture { tracker, ..fx }, T0 + 2 * HOUR);
        assert!(fx.tracker.ready.is_empty());
        assert_eq!(fx.tracker.report().restored_triggers, 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_flush_is_an_intent_that_survives_a_crash_until_its_actions_finish() {
        let ip = values("192.0.2.23");
        // Flush works in wall-clock time.
        let t0 = now_ms();
        let fx = fixture(&[], t0);
        let mut tracker = fx.tracker;
        tracker.on_match(0, ip.clone(), t0);
        tracker.on_match(0, ip.clone(), t0);
        // The ban is still running when the flush comes: the unban waits.
        let ban = take_running(&mut tracker);
        tracker.flush(&Selection::default()).expect("flush");
        assert!(tracker.ready.is_empty());
        assert!(tracker.show(&Selection::default()).expect("show") == json!({}));
        let fx = crash_and_restart(Fixture { tracker, ..fx }, now_ms());
        let mut tracker = fx.tracker;
        drop(ban);
        assert_eq!(take_ready(&mut tracker), vec!["ban 192.0.2.23"]);
        assert_eq!(take_ready(&mut tracker), vec!["unban 192.0.2.23"]);
        assert!(tracker.timers.is_empty());
        // The flushed entry itself never comes back.
        let fx = crash_and_restart(Fixture { tracker, ..fx }, now_ms());
        assert!(fx.tracker.ready.is_empty());
        assert_eq!(
            fx.tracker.show(&Selection::default()).expect("show"),
            json!({})
        );
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
                    values: (&ip).into(),
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
                values: (&ip).into(),
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
    async fn an_unban_held_behind_its_ban_and_then_extended_waits_for_the_new_time() {
        // Jailed for 2h (`report`), so a match after the unban fell due
        // (1h) still extends.
        let config = CONFIG.replace(
            "          unban:\n",
            "          report:\n            cmd: ['report', '<ip>']\n            after: 2h\n          unban:\n",
        );
        let fx = fixture_with(&config, &[], T0);
        let mut tracker = fx.tracker;
        let ip = values("192.0.2.24");
        tracker.on_match(0, ip.clone(), T0);
        tracker.on_match(0, ip.clone(), T0);
        let ban = take_running(&mut tracker);
        tracker.fire_due_timers(T0 + HOUR);
        assert!(tracker.ready.is_empty(), "held behind the ban");
        let later = T0 + HOUR + 1000;
        tracker.on_match(0, ip.clone(), later);
        finish(&mut tracker, ban);
        assert!(tracker.ready.is_empty(), "extended: not due any more");
        tracker.fire_due_timers(later + HOUR);
        assert_eq!(take_ready(&mut tracker), vec!["unban 192.0.2.24"]);
        tracker.fire_due_timers(later + 2 * HOUR);
        assert_eq!(take_ready(&mut tracker), vec!["report 192.0.2.24"]);
        assert_eq!(kept(&tracker), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reload_keeps_triggers_renumbers_actions_and_retires_orphans() {
        let fx = fixture(&[], T0);
        let mut tracker = fx.tracker;
        let ip = values("192.0.2.25");
        ban(&mut tracker, &ip, T0);
        // Actions reordered, `mail` gone, a new delayed one.
        let text = CONFIG
            .replace(
                "          mail:\n            cmd: ['mail', '<ip>']\n            oneshot: true\n",
                "",
            )
            .replace(
                "          ban:\n",
                "          note:\n            cmd: ['note', '<ip>']\n            after: 2h\n          ban:\n",
            );
        let path = fx.dir.path().join("config.yml");
        std::fs::write(&path, text).expect("write config");
        let config = Arc::new(crate::config::load(&path).expect("valid config"));
        let metrics = Arc::new(Metrics::new(&config));
        let summary = tracker.reload(config, metrics, 1, T0 + 1);
        assert_eq!(summary.changed, vec!["ssh.failed"]);
        assert_eq!(summary.dropped_actions, 0);
        // The pending unban kept its time under its new index.
        tracker.fire_due_timers(T0 + HOUR);
        assert_eq!(take_ready(&mut tracker), vec!["unban 192.0.2.25"]);
        assert_eq!(kept(&tracker), 0);
        // A batch matched under generation 0 still lands on the filter.
        tracker.on_batch(MatchBatch {
            generation: 0,
            stream: 0,
            matches: vec![
                crate::events::Match {
                    filter: 0,
                    values: values("192.0.2.26"),
                    time: T0 + 2,
                };
                2
            ],
        });
        assert_eq!(take_ready(&mut tracker), vec!["ban 192.0.2.26"]);
        // Now `note` (2h) and `unban` (1h) are both pending, in due order.
        tracker.fire_due_timers(T0 + 3 * HOUR);
        assert_eq!(take_ready(&mut tracker), vec!["unban 192.0.2.26"]);
        assert_eq!(take_ready(&mut tracker), vec!["note 192.0.2.26"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_ban_of_an_address_waits_for_the_unban_still_owed_to_its_last_jailing() {
        let t0 = now_ms();
        let fx = fixture(&[], t0);
        let mut tracker = fx.tracker;
        let ip = values("192.0.2.27");
        tracker.on_match(0, ip.clone(), t0);
        tracker.on_match(0, ip.clone(), t0);
        let first_ban = take_running(&mut tracker);
        assert_eq!(argvs(&first_ban), vec!["ban 192.0.2.27", "mail 192.0.2.27"]);
        // Flushed while its ban still runs: the unban waits for the ban.
        tracker.flush(&Selection::default()).expect("flush");
        assert!(tracker.ready.is_empty());
        // Jailed again meanwhile: the new ban must not run before that
        // unban, or the unban would lift it.
        tracker.on_match(0, ip.clone(), t0 + 1);
        tracker.on_match(0, ip.clone(), t0 + 1);
        assert!(tracker.ready.is_empty(), "the new ban waits");
        finish(&mut tracker, first_ban);
        let unban = take_running(&mut tracker);
        assert_eq!(argvs(&unban), vec!["unban 192.0.2.27"]);
        finish(&mut tracker, unban);
        assert_eq!(
            take_ready(&mut tracker),
            vec!["ban 192.0.2.27", "mail 192.0.2.27"]
        );
        // The new jailing keeps its own pending unban.
        assert!(tracker.show(&Selection::default()).expect("show")["ssh"]["failed"]["192.0.2.27"]["actions"]["unban"].is_array());
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
            max: None,
        };
        let tree = tracker.show(&select("192.0.2.7")).expect("show");
        assert_eq!(
            tree,
            json!({"ssh": {"failed": {"192.0.2.7": {"matches": 1}}}})
        );
        assert_eq!(tracker.show(&select("user")).expect("show"), json!({}));
        assert!(tracker.show(&select("(")).is_err());
    }

    /// A `show` through the control path: the pieces put together.
    async fn show_answer(tracker: &mut Tracker, selection: Selection) -> String {
        let (respond, answer) = oneshot::channel();
        tracker.on_control(ControlCmd {
            request: Request::Show(selection),
            respond,
        });
        // The copy goes a chunk per round.
        while !tracker.showing.is_empty() {
            tracker.show_step(now_ms());
        }
        let Ok(Response::Pieces(mut pieces)) = answer.await else {
            panic!("a show answers in pieces");
        };
        let mut text = Vec::new();
        while let Some(piece) = pieces.recv().await {
            text.extend_from_slice(&piece);
        }
        String::from_utf8(text).expect("utf-8")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn show_in_pieces_is_the_tree_flush_answers_and_max_cuts_it() {
        let fx = fixture(&[], T0);
        let mut tracker = fx.tracker;
        let now = now_ms();
        for ip in ["192.0.2.9", "192.0.2.10", "2001:db8::7"] {
            ban(&mut tracker, &values(ip), now);
        }
        tracker.on_match(0, values("198.51.100.1"), now);
        let text = show_answer(&mut tracker, Selection::default()).await;
        let unban = format_time(now + HOUR);
        let tree = json!({"ssh": {"failed": {
            "192.0.2.10": {"actions": {"unban": [unban]}},
            "192.0.2.9": {"actions": {"unban": [unban]}},
            "198.51.100.1": {"matches": 1},
            "2001:db8::7": {"actions": {"unban": [unban]}},
        }}});
        // Byte for byte what the whole tree serialized is.
        assert_eq!(text, json!({ "ok": tree }).to_string());
        let cut = show_answer(
            &mut tracker,
            Selection {
                max: Some(1),
                ..Selection::default()
            },
        )
        .await;
        assert_eq!(
            cut,
            json!({"ok": {"ssh": {"failed": {"192.0.2.10": {"actions": {"unban": [unban]}}}}},
                   "left_out": 3})
            .to_string()
        );
        // A flush answers the same tree, whole, and leaves nothing.
        assert_eq!(tracker.flush(&Selection::default()).expect("flush"), tree);
        assert_eq!(
            show_answer(&mut tracker, Selection::default()).await,
            r#"{"ok":{}}"#
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_show_copied_over_rounds_lists_a_value_met_twice_once() {
        let fx = fixture(&[], T0);
        let mut tracker = fx.tracker;
        let now = now_ms();
        let ip = |i: usize| std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).to_string();
        let count = COLLECT_CHUNK + 10;
        for i in 0..count {
            ban(&mut tracker, &values(&ip(i)), now);
        }
        let (respond, answer) = oneshot::channel();
        tracker.on_control(ControlCmd {
            request: Request::Show(Selection::default()),
            respond,
        });
        tracker.show_step(now);
        assert_eq!(tracker.showing.len(), 1, "one chunk copied, not all");
        // An address already copied is flushed and banned again: its entry
        // moves to a slot not copied yet.
        tracker.flush_value(0, &Key::from_value(&ip(1)), now);
        take_ready(&mut tracker);
        ban(&mut tracker, &values("192.0.2.200"), now);
        ban(&mut tracker, &values(&ip(1)), now);
        while !tracker.showing.is_empty() {
            tracker.show_step(now);
        }
        let Ok(Response::Pieces(mut pieces)) = answer.await else {
            panic!("a show answers in pieces");
        };
        let mut text = Vec::new();
        while let Some(piece) = pieces.recv().await {
            text.extend_from_slice(&piece);
        }
        let text = String::from_utf8(text).expect("utf-8");
        assert_eq!(text.matches(&format!("\"{}\"", ip(1))).count(), 1);
        let tree: Value = serde_json::from_str(&text).expect("JSON");
        let shown = tree["ok"]["ssh"]["failed"].as_object().expect("entries");
        assert!((0..count).all(|i| shown.contains_key(&ip(i))));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_large_flush_goes_a_chunk_per_round_and_answers_once_done() {
        let fx = fixture(&[], T0);
        let mut tracker = fx.tracker;
        let now = now_ms();
        let count = FLUSH_CHUNK + 100;
        for i in 0..count {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).to_string();
            ban(&mut tracker, &values(&ip), now);
        }
        let (respond, mut answer) = oneshot::channel();
        tracker.on_control(ControlCmd {
            request: Request::Flush(Selection::default()),
            respond,
        });
        // The copy of what it selects first: nothing flushed yet.
        tracker.flush_step(now);
        assert_eq!(tracker.filters[0].jail.len(), count);
        tracker.flush_step(now);
        // One chunk done: the rest is still jailed, and no answer yet.
        assert!(answer.try_recv().is_err());
        assert_eq!(tracker.filters[0].jail.len(), count - FLUSH_CHUNK);
        tracker.flush_step(now);
        assert!(tracker.flushing.is_empty());
        assert_eq!(tracker.filters[0].jail.len(), 0);
        let Ok(Response::Pieces(mut pieces)) = answer.await else {
            panic!("a flush answers in pieces");
        };
        let mut text = Vec::new();
        while let Some(piece) = pieces.recv().await {
            text.extend_from_slice(&piece);
        }
        let tree: Value = serde_json::from_slice(&text).expect("JSON");
        let flushed = tree["ok"]["ssh"]["failed"].as_object().expect("entries");
        assert_eq!(flushed.len(), count);
        assert_eq!(
            flushed["10.0.0.1"],
            json!({"actions": {"unban": [format_time(now + HOUR)]}})
        );
        // Every unban was released and handed over.
        assert_eq!(tracker.report.actions, count as u64);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_that_cannot_compact_at_restore_is_logged_and_the_state_kept() {
        let ip = values("192.0.2.8");
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, CONFIG).expect("write config");
        let config = crate::config::load(&config_path).expect("valid config");
        let state = dir.path().join("state");
        {
            let (mut store, _) = Store::open(&state).expect("open store");
            store.append(&trigger_record(&ip, T0));
            store.commit(true).expect("commit");
        }
        let (store, restored) = Store::open(&state).expect("reopen store");
        // The compaction's temporary file cannot be made.
        std::fs::create_dir(state.join("rebuff.db.tmp")).expect("mkdir");
        let metrics = Arc::new(Metrics::new(&config));
        let mut tracker = Tracker::new(TrackerDeps {
            config: Arc::new(config),
            store,
            executor: Executor::new(1, None),
            action_timeout: Duration::from_secs(1),
            metrics,
            reload_requests: None,
        });
        tracker.restore(restored, T0 + 60_000).expect("restore");
        assert_eq!(tracker.report().store_errors, 1);
        assert_eq!(take_ready(&mut tracker), vec!["ban 192.0.2.8"]);
        assert_eq!(tracker.timers.len(), 1);
    }
}
