//! Kernel sets written by rebuff itself: reaction's `nftables` and
//! `ipset` action types, built in.
//!
//! # Layout
//! - [`element`]: an address or prefix, compact;
//! - [`nft`]: `nft -f` scripts and `nft -j` listings;
//! - [`ipset`]: `ipset restore` lines, listings and iptables rules;
//! - this file: [`Firewall`], the one writer every set operation goes
//!   through.
//!
//! The writer gathers requests for a few milliseconds (or up to
//! [`MAX_BATCH`]) and applies them with one program run per backend:
//! `nft -f -` or `ipset restore -exist`, whose operations are written to
//! be idempotent (see the backend modules), so a retried batch does no
//! harm. A failed batch is retried once after the sets and rules are
//! created again (someone may have flushed the ruleset), then split in
//! halves until the failing elements are found, within a bound on program
//! runs. Each request learns its own result through its completion.
//!
//! The writer remembers what it put in each set and until when; a
//! periodic reconcile compares that with the kernel's listing and repairs
//! both ways: an element missing from the kernel is added back with its
//! remaining time, and an element with a timeout that rebuff does not hold
//! is deleted (elements without a timeout are permanent bans of filters
//! with no unban, which rebuff does not remember across restarts, so they
//! are left alone).

pub mod element;
pub mod ipset;
pub mod nft;

use std::collections::HashMap;
use std::io;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{FirewallConfig, SetAction, SetBackend, SetOp};
use crate::events::{
    BATCH_SECONDS_BUCKETS, BATCH_SIZE_BUCKETS, ExitOutcome, FirewallStats, now_ms,
};

pub use element::Element;

/// The most element operations in one program run.
pub const MAX_BATCH: usize = 20_000;

/// The most elements in one nft command.
const NFT_GROUP: usize = 5_000;

/// How long the writer waits for more requests after the first one of a
/// batch: a burst of bans becomes one program run.
const LINGER: Duration = Duration::from_millis(5);

/// The least time between the starts of two batches under a flood (the
/// previous batch held [`FLOOD_BATCH`] operations or more). Each `nft` run
/// costs milliseconds of CPU whatever its size, so the writer then gathers
/// for longer rather than run back to back; a ban that comes alone still
/// goes in after [`LINGER`].
const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(40);
const FLOOD_BATCH: usize = 16;

/// How long one `nft` or `ipset` run may take.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(60);

/// The most program runs spent splitting one failed batch: enough to find
/// a few failing elements among [`MAX_BATCH`], not a run per element when
/// the program itself is broken.
const MAX_SPLIT_RUNS: u32 = 64;

/// The most bytes of a program's stderr kept for the error message.
const MAX_ERROR: usize = 2048;

/// Called with the result of a request.
pub type Completion = Box<dyn FnOnce(&ExitOutcome) + Send + Sync>;

/// One element operation.
pub struct SetRequest {
    pub backend: SetBackend,
    /// The kernel set.
    pub set: Arc<str>,
    pub element: Element,
    pub op: SetOp,
    /// For an add: the element's timeout in the kernel, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// For an add: how long rebuff holds the element, when longer than
    /// its kernel timeout (ipset's cap): reconcile adds it again until
    /// then.
    pub hold_ms: Option<u64>,
    /// A re-add that pushes back the kernel timeout of an extended ban:
    /// skipped while the element's expiry is no more than this many
    /// milliseconds short of the new one.
    pub refresh_slack_ms: Option<u64>,
    pub done: Option<Completion>,
}

impl std::fmt::Debug for SetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetRequest")
            .field("backend", &self.backend)
            .field("set", &self.set)
            .field("element", &self.element)
            .field("op", &self.op)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl SetRequest {
    /// The request an action makes for a match value, or why it makes
    /// none (the value is not an address, or the set has no kernel set of
    /// its family).
    pub fn for_action(action: &SetAction, value: &str) -> Result<SetRequest, String> {
        let element = Element::parse(value)
            .ok_or_else(|| format!("{value:?} is not an address or prefix"))?;
        let set = if element.is_v6() {
            action.v6.clone()
        } else {
            action.v4.clone()
        };
        let set = set.ok_or_else(|| {
            format!(
                "the set takes no IPv{} address ({value})",
                if element.is_v6() { 6 } else { 4 }
            )
        })?;
        Ok(SetRequest {
            backend: action.backend,
            set,
            element,
            op: action.op,
            timeout_ms: match action.op {
                SetOp::Add => action.kernel_timeout_ms,
                SetOp::Delete => None,
            },
            hold_ms: match action.op {
                SetOp::Add => action.hold_ms,
                SetOp::Delete => None,
            },
            refresh_slack_ms: None,
            done: None,
        })
    }
}

/// A problem setting up the sets: the daemon does not start with it.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("{program} could not run: {detail}")]
    Program { program: String, detail: String },
    #[error(
        "the existing {backend} set {set} does not fit: {why}; delete it (or name another set in the actions' options.set) and start again"
    )]
    Incompatible {
        backend: &'static str,
        set: String,
        why: String,
    },
    #[error("setting up the {backend} sets failed: {detail}")]
    Setup {
        backend: &'static str,
        detail: String,
    },
}

/// What a reconcile repaired.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Repairs {
    pub readded: u64,
    pub removed: u64,
    /// Sets that could not be read.
    pub errors: u64,
}

enum Control {
    Reconcile(oneshot::Sender<Repairs>),
    Reconfigure(
        Arc<FirewallConfig>,
        oneshot::Sender<Result<(), FirewallError>>,
    ),
    /// Apply what is queued, then end.
    Stop,
}

/// The handle of the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Firewall {
    requests: mpsc::UnboundedSender<SetRequest>,
    control: mpsc::Sender<Control>,
    stats: Arc<FirewallStats>,
    task: Arc<std::sync::Mutex<Option<JoinHandle<Writer>>>>,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall").finish_non_exhaustive()
    }
}

impl Firewall {
    /// Creates the sets and rules of `config` (checking that existing sets
    /// fit) and starts the writer. `None` when no action uses a set.
    pub async fn start(config: FirewallConfig) -> Result<Option<Firewall>, FirewallError> {
        if config.sets.is_empty() {
            return Ok(None);
        }
        let config = Arc::new(config);
        setup(&config).await?;
        let stats = Arc::new(FirewallStats::default());
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::channel(4);
        let writer = Writer {
            config,
            members: HashMap::default(),
            stats: Arc::clone(&stats),
        };
        let task = tokio::spawn(writer.run(requests_rx, control_rx));
        Ok(Some(Firewall {
            requests,
            control,
            stats,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        }))
    }

    /// Queues a request; its completion runs once its batch is applied.
    pub fn submit(&self, request: SetRequest) {
        if let Err(mpsc::error::SendError(request)) = self.requests.send(request)
            && let Some(done) = request.done
        {
            done(&failure("the firewall writer has stopped".to_owned()));
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Arc<FirewallStats> {
        &self.stats
    }

    /// Compares the kernel sets with what rebuff holds now and repairs
    /// them.
    pub async fn reconcile(&self) -> Repairs {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Reconcile(tx)).await.is_err() {
            return Repairs::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Sets up the sets of a reloaded configuration (elements already in
    /// kernel sets of the same name stay, and so does what rebuff knows of
    /// them).
    pub async fn reconfigure(&self, config: FirewallConfig) -> Result<(), FirewallError> {
        let (tx, rx) = oneshot::channel();
        let message = Control::Reconfigure(Arc::new(config), tx);
        if self.control.send(message).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Applies every queued request, stops the writer, and removes the
    /// sets and rules if the configuration says so. Call once, after the
    /// last request was submitted.
    pub async fn stop(&self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        let Some(task) = task else { return };
        let _ = self.control.send(Control::Stop).await;
        match tokio::time::timeout(PROGRAM_TIMEOUT, task).await {
            Ok(Ok(writer)) if writer.config.remove_on_stop => {
                if let Err(error) = teardown(&writer.config).await {
                    tracing::warn!("could not remove the firewall sets: {error}");
                }
            }
            Ok(_) => {}
            Err(_) => tracing::warn!("the firewall writer did not finish its queue in time"),
        }
    }
}

fn failure(detail: String) -> ExitOutcome {
    ExitOutcome {
        code: 1,
        signal: None,
        detail: Some(detail),
        timed_out: false,
    }
}

/// Until when rebuff holds an element in a set, in seconds since the
/// epoch (4 bytes beside an 18-byte element); `u32::MAX` is no end.
type Expiry = u32;

/// The expiry `ms` milliseconds after `now`, rounded up to a second.
fn expiry_after(now: u64, ms: u64) -> Expiry {
    let seconds = now.saturating_add(ms).div_ceil(1000);
    Expiry::try_from(seconds).unwrap_or(Expiry::MAX - 1)
}

struct Writer {
    config: Arc<FirewallConfig>,
    /// What rebuff put in each kernel set (by backend and name), until
    /// when.
    members: HashMap<(SetBackend, Arc<str>), HashMap<Element, Expiry, RandomState>>,
    stats: Arc<FirewallStats>,
}

fn backend_index(backend: SetBackend) -> usize {
    match backend {
        SetBackend::Nftables => 0,
        SetBackend::Ipset => 1,
    }
}

/// ipset's longest element timeout.
const IPSET_MAX_TIMEOUT_MS: u64 = crate::config::validate::IPSET_MAX_TIMEOUT_S * 1000;

/// Whole seconds, at least one, for a kernel timeout.
fn timeout_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

impl Writer {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<SetRequest>,
        mut control: mpsc::Receiver<Control>,
    ) -> Writer {
        let mut reconcile = self.config.reconcile_ms.map(|ms| {
            let period = Duration::from_millis(ms);
            tokio::time::interval_at(tokio::time::Instant::now() + period, period)
        });
        let mut control_open = true;
        // When the previous batch started, and how big it was.
        let mut last_batch: Option<(tokio::time::Instant, usize)> = None;
        loop {
            tokio::select! {
                biased;
                message = control.recv(), if control_open => match message {
                    Some(Control::Reconcile(respond)) => {
                        let repairs = self.reconcile().await;
                        let _ = respond.send(repairs);
                    }
                    Some(Control::Reconfigure(config, respond)) => {
                        let result = setup(&config).await;
                        if result.is_ok() {
                            self.config = config;
                        }
                        let _ = respond.send(result);
                    }
                    Some(Control::Stop) => {
                        let mut batch = Vec::new();
                        while let Ok(request) = requests.try_recv() {
                            batch.push(request);
                            if batch.len() == MAX_BATCH {
                                self.apply(std::mem::take(&mut batch), Instant::now()).await;
                            }
                        }
                        if !batch.is_empty() {
                            self.apply(batch, Instant::now()).await;
                        }
                        break;
                    }
                    None => control_open = false,
                },
                first = requests.recv() => {
                    let Some(first) = first else { break };
                    let started = Instant::now();
                    let mut batch = vec![first];
                    let now = tokio::time::Instant::now();
                    let until = match last_batch {
                        Some((last, size)) if size >= FLOOD_BATCH => {
                            (last + MIN_BATCH_INTERVAL).max(now + LINGER)
                        }
                        _ => now + LINGER,
                    };
                    gather(&mut requests, &mut batch, until).await;
                    last_batch = Some((tokio::time::Instant::now(), batch.len()));
                    self.skip_needless_refreshes(&mut batch);
                    if !batch.is_empty() {
                        self.apply(batch, started).await;
                    }
                }
                _ = tick(&mut reconcile) => {
                    self.reconcile().await;
                }
            }
        }
        self
    }

    /// Completes, without a program run, the refreshes of elements whose
    /// kernel expiry is still close enough to the one asked for.
    fn skip_needless_refreshes(&self, batch: &mut Vec<SetRequest>) {
        if batch.iter().all(|r| r.refresh_slack_ms.is_none()) {
            return;
        }
        let now = now_ms();
        let ok = ExitOutcome {
            code: 0,
            signal: None,
            detail: None,
            timed_out: false,
        };
        batch.retain_mut(|request| {
            let Some(slack) = request.refresh_slack_ms else {
                return true;
            };
            let wanted = request.hold_ms.or(request.timeout_ms).unwrap_or(0);
            let current = self
                .members
                .get(&(request.backend, Arc::clone(&request.set)))
                .and_then(|m| m.get(&request.element))
                .map_or(0, |until| u64::from(*until) * 1000);
            if current.saturating_add(slack) >= now.saturating_add(wanted) {
                if let Some(done) = request.done.take() {
                    done(&ok);
                }
                return false;
            }
            true
        });
    }

    /// Applies a batch: one program run per backend, then each request's
    /// completion.
    async fn apply(&mut self, batch: Vec<SetRequest>, started: Instant) -> Vec<Option<String>> {
        let mut failures: Vec<Option<String>> = vec![None; batch.len()];
        for backend in [SetBackend::Nftables, SetBackend::Ipset] {
            let indices: Vec<usize> = (0..batch.len())
                .filter(|&i| batch[i].backend == backend)
                .collect();
            if indices.is_empty() {
                continue;
            }
            let ops: Vec<&SetRequest> = indices.iter().map(|&i| &batch[i]).collect();
            let results = self.run_batch(backend, &ops).await;
            tracing::debug!(
                backend = backend.name(),
                operations = ops.len(),
                failed = results.iter().filter(|r| r.is_some()).count(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "set operations applied"
            );
            let stats = &self.stats.backends[backend_index(backend)];
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats
                .batch_sizes
                .observe(&BATCH_SIZE_BUCKETS, ops.len() as f64);
            stats
                .batch_seconds
                .observe(&BATCH_SECONDS_BUCKETS, started.elapsed().as_secs_f64());
            let now = now_ms();
            for (&i, result) in indices.iter().zip(results) {
                let request = &batch[i];
                if result.is_some() {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    failures[i] = result;
                    continue;
                }
                stats.applied.fetch_add(1, Ordering::Relaxed);
                let members = self
                    .members
                    .entry((backend, Arc::clone(&request.set)))
                    .or_default();
                match request.op {
                    SetOp::Add => {
                        let until = request
                            .hold_ms
                            .or(request.timeout_ms)
                            .map_or(Expiry::MAX, |ms| expiry_after(now, ms));
                        members.insert(request.element, until);
                    }
                    SetOp::Delete => {
                        members.remove(&request.element);
                    }
                }
            }
        }
        self.publish_sizes();
        // Completions last: what they report is already in the members.
        for (request, failure) in batch.into_iter().zip(&failures) {
            if let Some(done) = request.done {
                let outcome = match failure {
                    None => ExitOutcome {
                        code: 0,
                        signal: None,
                        detail: None,
                        timed_out: false,
                    },
                    Some(detail) => self::failure(detail.clone()),
                };
                done(&outcome);
            }
        }
        failures
    }

    fn publish_sizes(&self) {
        let mut sizes: Vec<(&'static str, Arc<str>, u64)> = self
            .members
            .iter()
            .map(|((backend, set), members)| {
                (backend.name(), Arc::clone(set), members.len() as u64)
            })
            .collect();
        sizes.sort();
        if let Ok(mut shared) = self.stats.set_sizes.lock() {
            *shared = sizes;
        }
    }

    /// Runs `ops` as one batch; on failure, sets things up again and
    /// retries once, then splits the batch to find the failing elements.
    /// The result of each op: `None` when applied, or why not.
    async fn run_batch(&self, backend: SetBackend, ops: &[&SetRequest]) -> Vec<Option<String>> {
        let mut results = vec![None; ops.len()];
        let stats = &self.stats.backends[backend_index(backend)];
        match self.run_ops(backend, ops).await {
            Ok(()) => return results,
            Err(RunError::Spawn(detail)) => {
                results.fill(Some(detail));
                return results;
            }
            Err(RunError::Failed(_)) => {}
        }
        // The sets or rules may be gone (a flushed ruleset): create them
        // again, then retry the whole batch once.
        stats.retries.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = setup(&self.config).await {
            tracing::warn!("could not set the firewall sets up again: {error}");
        }
        let mut last = match self.run_ops(backend, ops).await {
            Ok(()) => return results,
            Err(RunError::Spawn(detail)) => {
                results.fill(Some(detail));
                return results;
            }
            Err(RunError::Failed(detail)) => detail,
        };
        tracing::warn!(
            "a {} batch of {} operations failed twice, looking for the failing ones: {last}",
            backend.name(),
            ops.len()
        );
        let mut stack = Vec::new();
        if ops.len() > 1 {
            let middle = ops.len() / 2;
            stack.push((middle, ops.len()));
            stack.push((0, middle));
        } else {
            results[0] = Some(last.clone());
        }
        let mut runs = 0;
        while let Some((from, to)) = stack.pop() {
            if runs >= MAX_SPLIT_RUNS {
                results[from..to].fill(Some(last.clone()));
                continue;
            }
            runs += 1;
            stats.retries.fetch_add(1, Ordering::Relaxed);
            match self.run_ops(backend, &ops[from..to]).await {
                Ok(()) => {}
                Err(RunError::Spawn(detail) | RunError::Failed(detail)) => {
                    if to - from == 1 {
                        results[from] = Some(detail.clone());
                    } else {
                        let middle = from + (to - from) / 2;
                        stack.push((middle, to));
                        stack.push((from, middle));
                    }
                    last = detail;
                }
            }
        }
        results
    }

    /// One program run applying `ops`.
    async fn run_ops(&self, backend: SetBackend, ops: &[&SetRequest]) -> Result<(), RunError> {
        let mut script = String::with_capacity(ops.len() * 64);
        match backend {
            SetBackend::Nftables => {
                let table = &self.config.table;
                // Runs of the same operation on the same set (and timeout)
                // become one command; their order is kept.
                let mut group: Vec<Element> = Vec::new();
                for (i, op) in ops.iter().enumerate() {
                    group.push(op.element);
                    let timeout = op.timeout_ms.map(timeout_seconds);
                    let same_as_next = ops.get(i + 1).is_some_and(|next| {
                        next.op == op.op
                            && next.set == op.set
                            && next.timeout_ms.map(timeout_seconds) == timeout
                    });
                    if same_as_next && group.len() < NFT_GROUP {
                        continue;
                    }
                    match op.op {
                        SetOp::Add => nft::add(&mut script, table, &op.set, &group, timeout),
                        SetOp::Delete => nft::delete(&mut script, table, &op.set, &group),
                    }
                    group.clear();
                }
                run_program("nft", &["-f", "-"], Some(script)).await?;
            }
            SetBackend::Ipset => {
                for op in ops {
                    match op.op {
                        SetOp::Add => ipset::add(
                            &mut script,
                            &op.set,
                            op.element,
                            op.timeout_ms.map(timeout_seconds),
                        ),
                        SetOp::Delete => ipset::delete(&mut script, &op.set, op.element),
                    }
                }
                run_program("ipset", &["restore", "-exist"], Some(script)).await?;
            }
        }
        Ok(())
    }

    /// Compares every kernel set with what rebuff holds and repairs the
    /// difference.
    async fn reconcile(&mut self) -> Repairs {
        let mut repairs = Repairs::default();
        let sets: Vec<(SetBackend, Arc<str>)> = self
            .config
            .sets
            .iter()
            .flat_map(|s| {
                [s.v4.as_ref(), s.v6.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(move |k| (s.backend, Arc::from(k.name.as_str())))
            })
            .collect();
        let all_stats = Arc::clone(&self.stats);
        for (backend, set) in sets {
            let stats = &all_stats.backends[backend_index(backend)];
            stats.reconciles.fetch_add(1, Ordering::Relaxed);
            let listing = match list(&self.config, backend, &set).await {
                Ok(listing) => Ok(listing),
                Err(_) => {
                    // Gone (a flushed ruleset, a destroyed set): set up
                    // again, then every element is missing.
                    if let Err(error) = setup(&self.config).await {
                        tracing::warn!("could not set the firewall sets up again: {error}");
                    }
                    list(&self.config, backend, &set).await
                }
            };
            let kernel = match listing {
                Ok(kernel) => kernel,
                Err(error) => {
                    stats.reconcile_errors.fetch_add(1, Ordering::Relaxed);
                    repairs.errors += 1;
                    tracing::warn!("could not read the {} set {set}: {error}", backend.name());
                    continue;
                }
            };
            let now = now_ms();
            let kernel: HashMap<Element, Option<u64>, RandomState> = kernel.into_iter().collect();
            let members = self.members.entry((backend, Arc::clone(&set))).or_default();
            // An element past its time has left the kernel by itself.
            let now_s = Expiry::try_from(now / 1000).unwrap_or(Expiry::MAX - 1);
            members.retain(|_, until| *until > now_s);
            let mut requests = Vec::new();
            for (element, until) in members.iter() {
                if !kernel.contains_key(element) {
                    let remaining = (*until != Expiry::MAX)
                        .then(|| (u64::from(*until) * 1000).saturating_sub(now));
                    let cap = match backend {
                        SetBackend::Ipset => Some(IPSET_MAX_TIMEOUT_MS),
                        SetBackend::Nftables => None,
                    };
                    requests.push(SetRequest {
                        backend,
                        set: Arc::clone(&set),
                        element: *element,
                        op: SetOp::Add,
                        timeout_ms: match (remaining, cap) {
                            (Some(r), Some(cap)) => Some(r.min(cap)),
                            (remaining, _) => remaining,
                        },
                        hold_ms: remaining,
                        refresh_slack_ms: None,
                        done: None,
                    });
                }
            }
            let missing = requests.len();
            for (element, timeout) in &kernel {
                if timeout.is_some() && !members.contains_key(element) {
                    requests.push(SetRequest {
                        backend,
                        set: Arc::clone(&set),
                        element: *element,
                        op: SetOp::Delete,
                        timeout_ms: None,
                        hold_ms: None,
                        refresh_slack_ms: None,
                        done: None,
                    });
                }
            }
            if requests.is_empty() {
                continue;
            }
            tracing::info!(
                "reconcile of {} set {set}: {missing} missing from the kernel, {} stale",
                backend.name(),
                requests.len() - missing
            );
            let mut requests = requests.into_iter();
            loop {
                let chunk: Vec<SetRequest> = requests.by_ref().take(MAX_BATCH).collect();
                if chunk.is_empty() {
                    break;
                }
                let ops: Vec<SetOp> = chunk.iter().map(|r| r.op).collect();
                let failures = self.apply(chunk, Instant::now()).await;
                for (op, failure) in ops.into_iter().zip(failures) {
                    match (op, failure) {
                        (_, Some(_)) => {}
                        (SetOp::Add, None) => {
                            repairs.readded += 1;
                            stats.readded.fetch_add(1, Ordering::Relaxed);
                        }
                        (SetOp::Delete, None) => {
                            repairs.removed += 1;
                            stats.removed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        repairs
    }
}

/// Why a program run failed: it could not start, or it said no.
enum RunError {
    Spawn(String),
    Failed(String),
}

impl From<RunError> for String {
    fn from(error: RunError) -> String {
        match error {
            RunError::Spawn(detail) | RunError::Failed(detail) => detail,
        }
    }
}

/// Runs `program args`, feeding it `input`, and returns its stdout.
async fn run_program(
    program: &str,
    args: &[&str],
    input: Option<String>,
) -> Result<String, RunError> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|error| {
        let hint = if error.kind() == io::ErrorKind::NotFound {
            match program {
                "nft" => " (install the nftables package)",
                "ipset" => " (install the ipset package)",
                _ => " (install the iptables package)",
            }
        } else {
            ""
        };
        RunError::Spawn(format!("{program} could not run: {error}{hint}"))
    })?;
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let write = async move {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            // A program that exits early closes its end: its exit status
            // and stderr tell why.
            let _ = stdin.write_all(input.as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
    };
    let read_out = async {
        let mut out = Vec::new();
        if let Some(pipe) = &mut stdout {
            let _ = pipe.read_to_end(&mut out).await;
        }
        out
    };
    let read_err = async {
        let mut err = Vec::new();
        if let Some(pipe) = &mut stderr {
            let _ = pipe.take(MAX_ERROR as u64).read_to_end(&mut err).await;
        }
        err
    };
    let run = async {
        let ((), out, err) = tokio::join!(write, read_out, read_err);
        let status = child.wait().await;
        (status, out, err)
    };
    let (status, out, err) = tokio::time::timeout(PROGRAM_TIMEOUT, run)
        .await
        .map_err(|_| RunError::Failed(format!("{program} timed out")))?;
    let status = status.map_err(|e| RunError::Failed(format!("{program}: {e}")))?;
    if status.success() {
        return Ok(String::from_utf8_lossy(&out).into_owned());
    }
    let text = String::from_utf8_lossy(&err);
    let text = text.trim();
    let hint = if text.contains("Operation not permitted") {
        " (changing the firewall needs root, or CAP_NET_ADMIN)"
    } else {
        ""
    };
    Err(RunError::Failed(if text.is_empty() {
        format!("{program} failed: {status}")
    } else {
        format!("{program} failed: {}{hint}", text.replace('\n', " | "))
    }))
}

/// The elements of a kernel set, with their remaining timeouts.
async fn list(
    config: &FirewallConfig,
    backend: SetBackend,
    set: &str,
) -> Result<Vec<(Element, Option<u64>)>, String> {
    match backend {
        SetBackend::Nftables => {
            let out = run_program(
                "nft",
                &["-j", "list", "set", "inet", &config.table, set],
                None,
            )
            .await?;
            Ok(nft::parse_listing(&out)?.elements)
        }
        SetBackend::Ipset => {
            let out = run_program("ipset", &["list", set, "-o", "save"], None).await?;
            Ok(ipset::parse_listing(&out).elements)
        }
    }
}

/// Creates the sets and rules of `config`, after checking that sets that
/// exist already fit.
async fn setup(config: &FirewallConfig) -> Result<(), FirewallError> {
    let program_error = |program: &str, detail: String| FirewallError::Program {
        program: program.to_owned(),
        detail,
    };
    if nft::used(config) {
        for set in config
            .sets
            .iter()
            .filter(|s| s.backend == SetBackend::Nftables)
        {
            for (kernel, v6) in [(set.v4.as_ref(), false), (set.v6.as_ref(), true)] {
                let Some(kernel) = kernel else { continue };
                let args = [
                    "-j",
                    "-t",
                    "list",
                    "set",
                    "inet",
                    &config.table,
                    &kernel.name,
                ];
                match run_program("nft", &args, None).await {
                    Ok(out) => {
                        let listing =
                            nft::parse_listing(&out).map_err(|d| program_error("nft", d))?;
                        if let Some(why) = nft::incompatible(&listing, kernel, v6) {
                            return Err(FirewallError::Incompatible {
                                backend: "nftables",
                                set: format!("inet {} {}", config.table, kernel.name),
                                why,
                            });
                        }
                    }
                    Err(RunError::Spawn(detail)) => return Err(program_error("nft", detail)),
                    // Absent: created below.
                    Err(RunError::Failed(_)) => {}
                }
            }
        }
        run_program("nft", &["-f", "-"], Some(nft::setup_script(config)))
            .await
            .map_err(|e| FirewallError::Setup {
                backend: "nftables",
                detail: e.into(),
            })?;
    }
    for (set, kernel, v6) in ipset::sets(config) {
        match run_program(
            "ipset",
            &["list", &kernel.name, "-o", "save", "-terse"],
            None,
        )
        .await
        {
            Ok(out) => {
                let listing = ipset::parse_listing(&out);
                if let Some(why) = ipset::incompatible(&listing, kernel, v6) {
                    return Err(FirewallError::Incompatible {
                        backend: "ipset",
                        set: kernel.name.clone(),
                        why,
                    });
                }
            }
            Err(RunError::Spawn(detail)) => return Err(program_error("ipset", detail)),
            Err(RunError::Failed(_)) => {
                run_program(
                    "ipset",
                    &["restore", "-exist"],
                    Some(ipset::create_line(set, kernel, v6)),
                )
                .await
                .map_err(|e| FirewallError::Setup {
                    backend: "ipset",
                    detail: e.into(),
                })?;
            }
        }
        let program = ipset::iptables(v6);
        for chain in &set.chains {
            let check = ipset::rule_args("-C", chain, kernel, &set.target);
            let check: Vec<&str> = check.iter().map(String::as_str).collect();
            if run_program(program, &check, None).await.is_ok() {
                continue;
            }
            let insert = ipset::rule_args("-I", chain, kernel, &set.target);
            let insert: Vec<&str> = insert.iter().map(String::as_str).collect();
            run_program(program, &insert, None)
                .await
                .map_err(|e| FirewallError::Setup {
                    backend: "ipset",
                    detail: e.into(),
                })?;
        }
    }
    Ok(())
}

/// Removes the sets and rules of `config`.
async fn teardown(config: &FirewallConfig) -> Result<(), String> {
    if nft::used(config) {
        run_program("nft", &["-f", "-"], Some(nft::teardown_script(config))).await?;
    }
    for (set, kernel, v6) in ipset::sets(config) {
        let program = ipset::iptables(v6);
        for chain in &set.chains {
            let delete = ipset::rule_args("-D", chain, kernel, &set.target);
            let delete: Vec<&str> = delete.iter().map(String::as_str).collect();
            // At most a few copies (added by hand): stop when none is left.
            for _ in 0..16 {
                if run_program(program, &delete, None).await.is_err() {
                    break;
                }
            }
        }
        run_program("ipset", &["destroy", &kernel.name], None).await?;
    }
    Ok(())
}

/// Waits for the next reconcile, or forever when there is none.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Takes what is queued, then waits until `deadline` for more, up to
/// [`MAX_BATCH`].
async fn gather(
    requests: &mut mpsc::UnboundedReceiver<SetRequest>,
    batch: &mut Vec<SetRequest>,
    deadline: tokio::time::Instant,
) {
    while batch.len() < MAX_BATCH {
        let room = MAX_BATCH - batch.len();
        match tokio::time::timeout_at(deadline, requests.recv_many(batch, room)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
