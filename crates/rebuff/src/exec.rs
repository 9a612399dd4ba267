//! Running children: actions and `start`/`stop` commands, as argv, never
//! through a shell.
//!
//! Owns the children it spawns and the action concurrency limit. Receives
//! argv lists ([`run_child`], [`run_commands`]) and [`ActionJob`]s (from the
//! tracker, through [`Executor::spawn`]); sends back
//! the [`ExitOutcome`], a [`Finished`] report for every job of a tracked
//! trigger (the tracker retires a trigger only once its actions have
//! finished), the `ERROR` line of a failed action (through [`crate::log`];
//! the `run` line is the tracker's, written in decision order) and the
//! counters in [`ExecStats`].
//!
//! Every child runs in its own process group, so a timeout kills what it
//! started too (`sh -c 'sleep 30 & wait'`). Its stdout and stderr are piped
//! and re-logged line by line with a level and its label: raw child output
//! on our stdout would kill reaction-metrics-exporter.
//!
//! A queued action is small on purpose: its argv and names, a semaphore
//! wait, and a pointer. Everything that costs memory (the child, the pipe
//! buffers, the state of [`run_child`]) is allocated after the permit is
//! acquired, so thousands of queued actions stay cheap.

use std::fmt;
use std::io;
use std::pin::pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Command;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use rebuff_engine::Values;

use crate::config::SetAction;
use crate::events::{CommandKind, ExecStats, ExitOutcome, Finished, TriggerRef};
use crate::firewall::{Firewall, SetRequest};
use crate::log;
use crate::metrics::{ActionDone, Metrics};

/// How long an action or a start/stop command may run before its process
/// group is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest line of child output re-logged; the rest of it is dropped.
const MAX_OUTPUT_LINE: usize = 1024;

/// The most lines of output re-logged per child (stdout and stderr
/// together); after that, one "output truncated" line, and the rest is read
/// and dropped so the child never blocks on a full pipe.
const MAX_OUTPUT_LINES: u32 = 100;

/// How long to keep reading output after the child exited, when something
/// it left behind (a background grandchild) still holds its pipes open.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// Variables for us only: a child must not talk to systemd in our name.
const PRIVATE_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The outcome of a child killed at its timeout.
fn timed_out(timeout: Duration) -> ExitOutcome {
    let signal = Signal::KILL.as_raw();
    ExitOutcome {
        code: 128 + signal,
        signal: Some(signal),
        detail: Some(format!("timed out after {}", DisplayDuration(timeout))),
        timed_out: true,
    }
}

/// `60s`, `1.5s`, `200ms`: short, as a user wrote it in the config.
struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d < Duration::from_secs(1) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}s", d.as_secs_f64())
        }
    }
}

/// Spawns `argv` (`argv[0]` looked up in `PATH`) with stdin null and its
/// output piped, in its own process group, and waits up to `timeout` for
/// it. On timeout, kills the whole group with SIGKILL and reaps the child.
///
/// Each line the child writes is logged, never copied raw: stdout at DEBUG,
/// stderr at WARN, with the fields `source=<label> stream=stdout|stderr`,
/// lines cut at 1 KiB, at most 100 lines, then one "output truncated" line.
/// A spawn error gives code 127 with the error as detail.
///
/// If the returned future is dropped before the end, the child's process
/// group is killed.
pub async fn run_child(argv: &[String], timeout: Duration, label: &str) -> ExitOutcome {
    let Some((program, args)) = argv.split_first() else {
        return ExitOutcome::spawn_failed(&io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in PRIVATE_ENV {
        command.env_remove(name);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return ExitOutcome::spawn_failed(&error),
    };
    let deadline = Instant::now() + timeout;
    // Declared after `child`, so dropped before it: the group is killed
    // while the leader is not yet reaped and its pid still names the group.
    let mut group = GroupKiller::new(child.id());
    let budget = AtomicU32::new(0);
    let mut output = pin!(relay_output(
        child.stdout.take(),
        child.stderr.take(),
        label,
        &budget
    ));
    let mut output_done = false;
    let waited = tokio::time::timeout_at(deadline, async {
        // Output is read while waiting: a child that fills a pipe would
        // otherwise block forever.
        loop {
            tokio::select! {
                status = child.wait() => break status,
                () = &mut output, if !output_done => output_done = true,
            }
        }
    })
    .await;
    match waited {
        Ok(Ok(status)) => {
            // What the leader left behind may go on: like a shell, we only
            // wait for the command itself. Disarmed now that the leader is
            // reaped, since its pid may name nothing of ours any more.
            group.disarm();
            if !output_done {
                // The leader's own output is already in the pipe; only
                // something it left running can hold it open longer.
                let grace = deadline.min(Instant::now() + OUTPUT_GRACE);
                let _ = tokio::time::timeout_at(grace, &mut output).await;
            }
            ExitOutcome::from_status(status)
        }
        Ok(Err(error)) => {
            group.kill();
            let _ = child.wait().await;
            ExitOutcome {
                code: 1,
                signal: None,
                detail: Some(format!("could not wait for the child: {error}")),
                timed_out: false,
            }
        }
        Err(_elapsed) => {
            group.kill();
            // SIGKILL cannot be caught: this returns as soon as the kernel
            // has torn the leader down.
            let _ = child.wait().await;
            timed_out(timeout)
        }
    }
}

/// Kills a child's process group with SIGKILL when told to, or when
/// dropped while still armed.
struct GroupKiller {
    pgid: Option<Pid>,
}

impl GroupKiller {
    fn new(child_id: Option<u32>) -> Self {
        // The child called setpgid(0, 0): its pid is its group's id.
        let pgid = child_id
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw);
        Self { pgid }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (the group is already gone) is the only expected error.
            let _ = kill_process_group(pgid, Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Clone, Copy)]
enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Reads both pipes to their end, logging their lines.
async fn relay_output(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    label: &str,
    budget: &AtomicU32,
) {
    tokio::join!(
        relay_pipe(stdout, OutputStream::Stdout, label, budget),
        relay_pipe(stderr, OutputStream::Stderr, label, budget),
    );
}

async fn relay_pipe(
    pipe: Option<impl AsyncRead + Unpin>,
    stream: OutputStream,
    label: &str,
    budget: &AtomicU32,
) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = vec![0u8; 4096];
    // The current line, at most MAX_OUTPUT_LINE bytes of it.
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &chunk[..n];
        while let Some(newline) = memchr::memchr(b'\n', rest) {
            push_capped(&mut line, &mut cut, &rest[..newline]);
            emit_output_line(&line, cut, stream, label, budget);
            line.clear();
            cut = false;
            rest = &rest[newline + 1..];
        }
        push_capped(&mut line, &mut cut, rest);
    }
    if !line.is_empty() || cut {
        emit_output_line(&line, cut, stream, label, budget);
    }
}

fn push_capped(line: &mut Vec<u8>, cut: &mut bool, bytes: &[u8]) {
    let room = MAX_OUTPUT_LINE.saturating_sub(line.len());
    if bytes.len() > room {
        *cut = true;
    }
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn emit_output_line(line: &[u8], cut: bool, stream: OutputStream, label: &str, budget: &AtomicU32) {
    let seen = budget.fetch_add(1, Ordering::Relaxed);
    if seen > MAX_OUTPUT_LINES {
        return;
    }
    let text = if seen == MAX_OUTPUT_LINES {
        format!("output truncated after {MAX_OUTPUT_LINES} lines")
    } else {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Children write anything; the log must stay valid UTF-8.
        let mut text = String::from_utf8_lossy(line).into_owned();
        if cut {
            text.push('…');
        }
        // Lossy decoding can lengthen it; the cut keeps a final `…`.
        log::cut_line(&mut text, MAX_OUTPUT_LINE);
        text
    };
    let stream_name = stream.name();
    match stream {
        OutputStream::Stdout => {
            tracing::debug!(source = label, stream = stream_name, "{text}");
        }
        OutputStream::Stderr => {
            tracing::warn!(source = label, stream = stream_name, "{text}");
        }
    }
}

/// A start or stop command that failed.
#[derive(Debug, thiserror::Error)]
#[error("{kind} command {argv:?} failed: {outcome}")]
pub struct CommandFailed {
    /// Which list the command belongs to.
    pub kind: CommandKind,
    /// The command.
    pub argv: Vec<String>,
    /// How it ended.
    pub outcome: ExitOutcome,
}

/// Runs the start or stop commands in order, each logged with
/// [`log::command_ran`]. `start` stops at the first failure and returns it
/// (the daemon must not start); `stop` runs them all (each undoes part of
/// the setup) and returns the first failure, if any.
pub async fn run_commands(
    kind: CommandKind,
    commands: &[Vec<String>],
    timeout: Duration,
    metrics: &Metrics,
) -> Result<(), CommandFailed> {
    let mut first_failure = None;
    for argv in commands {
        let outcome = run_child(argv, timeout, kind.label()).await;
        log::command_ran(kind, argv, &outcome);
        metrics.command_done(kind, argv, &outcome);
        if !outcome.success() && first_failure.is_none() {
            first_failure = Some(CommandFailed {
                kind,
                argv: argv.clone(),
                outcome,
            });
            if kind == CommandKind::Start {
                break;
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// One action to run: its names (for the log line) and its argv, with the
/// match values already substituted.
#[derive(Debug, Clone)]
pub struct ActionJob {
    /// The stream's name, shared with every job of the stream.
    pub stream: Arc<str>,
    /// The filter's name.
    pub filter: Arc<str>,
    /// The action's name.
    pub action: Arc<str>,
    /// The command, `<pattern>`s replaced by the match values.
    pub argv: Vec<String>,
    /// How long it may run ([`DEFAULT_TIMEOUT`] unless configured).
    pub timeout: Duration,
    /// Global index of the action, for its counters.
    pub action_id: usize,
    /// The match values, for pattern labels.
    pub values: Values,
    /// Re-run from the store at start rather than caused by a new match.
    pub replayed: bool,
    /// The counters of the configuration the job was made under (a reload
    /// replaces them; `action_id` indexes these).
    pub metrics: Arc<Metrics>,
    /// The trigger this action belongs to, when the tracker waits for it
    /// to finish (jails: the next action of the trigger and the trigger's
    /// retirement from the store wait for this one).
    pub owner: Option<TriggerRef>,
    /// A virtual action: the name of the stream its line (`argv[0]`) is
    /// fed to (by name: a reload may move it). The tracker handles it; the
    /// executor never sees it.
    pub send_to: Option<Arc<str>>,
    /// `type: nftables|ipset`: the set operation, applied by the firewall
    /// writer in a batch instead of a child (`argv` is only logged).
    pub set_action: Option<SetAction>,
    /// A set element added again to push its kernel timeout back (the
    /// trigger was extended): not an action run, so neither logged as one
    /// nor counted.
    pub refresh: bool,
}

impl ActionJob {
    fn label(&self) -> String {
        format!("{}.{}.{}", self.stream, self.filter, self.action)
    }
}

/// Runs actions with a concurrency limit. Cheap to clone: clones share the
/// limit, the counters and the set of running actions.
#[derive(Debug, Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None`: unlimited.
    permits: Option<Semaphore>,
    limit: Option<usize>,
    tracker: TaskTracker,
    stats: ExecStats,
    /// Where [`Finished`] reports go; `None` when nobody waits for them.
    finished: Option<mpsc::UnboundedSender<Finished>>,
    /// Where set operations go (a reload may start one).
    firewall: std::sync::RwLock<Option<Firewall>>,
}

impl Executor {
    /// `concurrency > 0`: at most that many actions at once; `0`: the
    /// number of CPUs; `< 0`: unlimited (reaction's `concurrency` key).
    /// Jobs with an [`owner`](ActionJob::owner) are reported to `finished`
    /// when they end.
    pub fn new(concurrency: i64, finished: Option<mpsc::UnboundedSender<Finished>>) -> Self {
        Self::with_firewall(concurrency, finished, None)
    }

    /// [`Executor::new`], with the writer that applies set operations
    /// (actions of `type: nftables|ipset`).
    pub fn with_firewall(
        concurrency: i64,
        finished: Option<mpsc::UnboundedSender<Finished>>,
        firewall: Option<Firewall>,
    ) -> Self {
        let limit = match concurrency {
            c if c < 0 => None,
            0 => Some(std::thread::available_parallelism().map_or(1, usize::from)),
            c => Some(usize::try_from(c).unwrap_or(usize::MAX)),
        }
        .map(|n| n.min(Semaphore::MAX_PERMITS));
        Self {
            inner: Arc::new(Inner {
                permits: limit.map(Semaphore::new),
                limit,
                tracker: TaskTracker::new(),
                stats: ExecStats::default(),
                finished,
                firewall: std::sync::RwLock::new(firewall),
            }),
        }
    }

    /// Queues an action and returns at once. It runs when a slot is free
    /// (in the order queued: the semaphore is fair), is logged with
    /// [`log::action_failed`] if it fails, counted in the stats, and
    /// reported as [`Finished`] when it has an owner.
    /// Must be called from within a tokio runtime.
    pub fn spawn(&self, job: ActionJob) {
        self.inner.stats.queued.fetch_add(1, Ordering::Relaxed);
        if job.set_action.is_some() {
            self.submit_set_operation(job);
            return;
        }
        // The task is `execute`'s future itself, with no wrapper holding a
        // second copy of the job: about 300 bytes per queued action.
        self.inner
            .tracker
            .spawn(Arc::clone(&self.inner).execute(job));
    }

    /// Hands a set operation to the firewall writer; it is reported like
    /// a child once its batch is applied. No task and no slot of the
    /// concurrency limit: a restore of a million bans is a few batches.
    fn submit_set_operation(&self, job: ActionJob) {
        let started = std::time::Instant::now();
        let firewall = self.firewall();
        let request = match (&job.set_action, &firewall) {
            (Some(action), Some(_)) => {
                let value = job.values.get(action.slot).map_or("", String::as_str);
                SetRequest::for_action(action, value)
            }
            _ => Err("no firewall writer runs".to_owned()),
        };
        match (request, firewall) {
            (Ok(mut request), Some(firewall)) => {
                // Logged already; a queued request need not carry it.
                let mut job = job;
                job.argv = Vec::new();
                if job.refresh {
                    let margin = job.set_action.as_ref().map_or(0, |a| a.kernel_margin_ms);
                    request.refresh_slack_ms = Some(margin / 2);
                }
                let inner = Arc::clone(&self.inner);
                // Counts as a running task for `wait_idle` until it is
                // reported.
                let token = self.inner.tracker.token();
                request.done = Some(Box::new(move |outcome: &ExitOutcome| {
                    inner.set_operation_done(job, outcome, started);
                    drop(token);
                }));
                firewall.submit(request);
            }
            (Err(detail), _) => {
                let outcome = ExitOutcome {
                    code: 1,
                    signal: None,
                    detail: Some(detail),
                    timed_out: false,
                };
                self.inner.set_operation_done(job, &outcome, started);
            }
            (Ok(_), None) => unreachable!("a request is only made with a firewall"),
        }
    }

    /// The firewall writer, if one runs.
    pub fn firewall(&self) -> Option<Firewall> {
        self.inner
            .firewall
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Installs the firewall writer (a reload that adds the first set).
    pub fn set_firewall(&self, firewall: Firewall) {
        *self
            .inner
            .firewall
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(firewall);
    }

    /// Waits until every action queued with [`spawn`](Self::spawn) has
    /// finished, those queued meanwhile included. Meant for shutdown, from
    /// one caller at a time.
    pub async fn wait_idle(&self) {
        let tracker = &self.inner.tracker;
        // `wait` returns only on a closed tracker; closing does not stop
        // new spawns, and reopening lets the executor go on after.
        tracker.close();
        tracker.wait().await;
        tracker.reopen();
    }

    /// The counters.
    pub fn stats(&self) -> &ExecStats {
        &self.inner.stats
    }

    /// The most actions that run at once, `None` when unlimited.
    pub fn limit(&self) -> Option<usize> {
        self.inner.limit
    }
}

impl Inner {
    /// Waits for a slot, runs the job, counts and logs it. The caller has
    /// counted it as queued.
    async fn execute(self: Arc<Self>, job: ActionJob) -> ExitOutcome {
        let stats = &self.stats;
        // `acquire` fails only on a closed semaphore, and this one is never
        // closed: run anyway rather than drop the action.
        let permit = match &self.permits {
            Some(permits) => permits.acquire().await.ok(),
            None => None,
        };
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        stats.running.fetch_add(1, Ordering::Relaxed);
        stats.started.fetch_add(1, Ordering::Relaxed);
        // Boxed: the child's state is allocated only now that it runs, not
        // carried by every queued job.
        let started = std::time::Instant::now();
        let outcome = Box::pin(run_child(&job.argv, job.timeout, &job.label())).await;
        drop(permit);
        stats.running.fetch_sub(1, Ordering::Relaxed);
        self.report(job, &outcome, started.elapsed());
        outcome
    }

    /// A set operation's batch was applied: counted like a child that ran.
    fn set_operation_done(
        &self,
        job: ActionJob,
        outcome: &ExitOutcome,
        started: std::time::Instant,
    ) {
        let stats = &self.stats;
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        stats.started.fetch_add(1, Ordering::Relaxed);
        self.report(job, outcome, started.elapsed());
    }

    /// Counts, logs and reports a finished action.
    fn report(&self, job: ActionJob, outcome: &ExitOutcome, elapsed: Duration) {
        let stats = &self.stats;
        if job.refresh {
            stats.started.fetch_sub(1, Ordering::Relaxed);
            if !outcome.success() {
                tracing::warn!(
                    "{}: could not push back the kernel timeout of {:?}: {outcome}",
                    job.label(),
                    job.values
                );
            }
            return;
        }
        job.metrics.action_done(&ActionDone {
            action_id: job.action_id,
            values: &job.values,
            outcome,
            elapsed,
            replayed: job.replayed,
        });
        if outcome.success() {
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.timed_out {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        if !outcome.success() {
            log::action_failed(&job.stream, &job.filter, &job.action, outcome);
        }
        if let (Some(owner), Some(finished)) = (job.owner, &self.finished) {
            // The tracker is gone only once the daemon stops, when nothing
            // waits for this any more.
            let _ = finished.send(Finished {
                owner,
                values: job.values,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::log::capture;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn sh(script: &str, args: &[&str]) -> Vec<String> {
        let mut v = argv(&["sh", "-c", script, "sh"]);
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    }

    fn job(argv: Vec<String>) -> ActionJob {
        ActionJob {
            stream: "ssh".into(),
            filter: "failedlogin".into(),
            action: "ban".into(),
            argv,
            timeout: Duration::from_secs(30),
            action_id: 0,
            values: Box::new([]),
            replayed: false,
            metrics: Default::default(),
            owner: None,
            send_to: None,
            set_action: None,
            refresh: false,
        }
    }

    fn path_str(path: &Path) -> &str {
        path.to_str().unwrap_or_default()
    }

    /// Polls `condition` in real time until it holds, for children that
    /// run at their own pace; panics after 20 s.
    async fn until(mut condition: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "condition never held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn is_gone(pid: &str) -> bool {
        // Gone, or a zombie waiting for whoever reaps orphans here.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn a_child_that_exits_zero_succeeds() {
        let outcome = run_child(&argv(&["true"]), DEFAULT_TIMEOUT, "t").await;
        assert_eq!(
            outcome,
            ExitOutcome {
                code: 0,
                signal: None,
                detail: None,
                timed_out: false
            }
        );
        assert!(outcome.success());
    }

    #[tokio::test]
    async fn the_exit_code_is_reported_and_output_is_relogged_with_levels() {
        let capture = capture::start();
        let outcome = run_child(
            &sh("echo out; echo err >&2; printf 'no newline'; exit 3", &[]),
            DEFAULT_TIMEOUT,
            "ssh.f.ban",
        )
        .await;
        assert_eq!(outcome.code, 3);
        assert!(!outcome.success());
        assert_eq!(outcome.detail, None);
        let mut lines = capture.lines();
        lines.sort();
        assert_eq!(
            lines,
            [
                "DEBUG source=ssh.f.ban stream=stdout no newline",
                "DEBUG source=ssh.f.ban stream=stdout out",
                "WARN source=ssh.f.ban stream=stderr err",
            ]
        );
    }

    #[tokio::test]
    async fn child_output_is_bounded_in_line_length_and_count() {
        let capture = capture::start();
        let script = "head -c 5000 /dev/zero | tr '\\0' x; echo; i=0; \
                      while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done; \
                      printf '\\377\\n'";
        let outcome = run_child(&sh(script, &[]), DEFAULT_TIMEOUT, "t").await;
        assert!(outcome.success(), "{outcome:?}");
        let lines = capture.lines();
        assert_eq!(lines.len(), 101, "100 lines then the truncation notice");
        let prefix = "DEBUG source=t stream=stdout ";
        let first = lines[0].strip_prefix(prefix).unwrap_or_default();
        assert!(first.len() <= MAX_OUTPUT_LINE && first.ends_with('…'));
        assert_eq!(lines[1], format!("{prefix}line 0"));
        assert_eq!(lines[99], format!("{prefix}line 98"));
        assert_eq!(
            lines[100],
            format!("{prefix}output truncated after 100 lines")
        );
    }

    #[tokio::test]
    async fn invalid_utf8_and_control_characters_in_output_are_made_safe() {
        let capture = capture::start();
        run_child(
            &sh("printf 'a\\377b\\033c\\r\\n'", &[]),
            DEFAULT_TIMEOUT,
            "t",
        )
        .await;
        assert_eq!(
            capture.lines(),
            ["DEBUG source=t stream=stdout a\u{fffd}b\\u{1b}c"]
        );
    }

    #[tokio::test]
    async fn a_missing_program_gives_code_127_with_the_error_as_detail() {
        let outcome = run_child(&argv(&["/nonexistent/rebuff-test"]), DEFAULT_TIMEOUT, "t").await;
        assert_eq!(outcome.code, 127);
        assert_eq!(outcome.detail.as_deref(), Some("No such file or directory"));
        let empty = run_child(&[], DEFAULT_TIMEOUT, "t").await;
        assert_eq!(
            (empty.code, empty.detail.as_deref()),
            (127, Some("empty command"))
        );
    }

    #[tokio::test]
    async fn a_child_killed_by_a_signal_gets_128_plus_the_signal() {
        let outcome = run_child(&sh("kill -TERM $$", &[]), DEFAULT_TIMEOUT, "t").await;
        assert_eq!(outcome.code, 128 + 15);
        assert_eq!(outcome.signal, Some(15));
        assert_eq!(outcome.detail.as_deref(), Some("killed by signal 15"));
        assert!(!outcome.timed_out);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pid_file = dir.path().join("pid");
        let outcome = run_child(
            &sh("sleep 30 & echo $! > \"$1\"; wait", &[path_str(&pid_file)]),
            Duration::from_millis(500),
            "t",
        )
        .await;
        assert_eq!(outcome.code, 137);
        assert_eq!(outcome.signal, Some(9));
        assert!(outcome.timed_out);
        assert_eq!(outcome.detail.as_deref(), Some("timed out after 500ms"));
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        let pid = pid.trim();
        assert!(!pid.is_empty(), "the grandchild had started");
        until(|| is_gone(pid)).await;
    }

    #[tokio::test]
    async fn dropping_a_running_child_kills_its_process_group() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pid_file = dir.path().join("pid");
        let read_pid = || std::fs::read_to_string(&pid_file).unwrap_or_default();
        let script = sh("sleep 30 & echo $! > \"$1\"; wait", &[path_str(&pid_file)]);
        tokio::select! {
            outcome = run_child(&script, DEFAULT_TIMEOUT, "t") => {
                panic!("the child ended by itself: {outcome:?}")
            }
            // `echo` writes the pid and its newline at once.
            () = until(|| read_pid().ends_with('\n')) => {}
        }
        let pid = read_pid();
        until(|| is_gone(pid.trim())).await;
    }

    #[tokio::test]
    async fn output_held_open_by_a_background_grandchild_does_not_delay_the_result() {
        // The grandchild keeps stdout open for 30 s; the leader exits at once.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pid_file = dir.path().join("pid");
        let outcome = run_child(
            &sh("sleep 30 & echo $! > \"$1\"", &[path_str(&pid_file)]),
            Duration::from_secs(20),
            "t",
        )
        .await;
        assert!(outcome.success(), "{outcome:?}");
        // Not ours to wait for, but not left behind by the test either.
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if let Some(pid) = pid.trim().parse().ok().and_then(Pid::from_raw) {
            let _ = kill_process_group(pid, Signal::KILL);
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }

    #[tokio::test]
    async fn start_commands_stop_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let marker = dir.path().join("ran");
        let capture = capture::start();
        let result = run_commands(
            CommandKind::Start,
            &[
                argv(&["true"]),
                argv(&["false"]),
                argv(&["touch", path_str(&marker)]),
            ],
            DEFAULT_TIMEOUT,
            &Metrics::default(),
        )
        .await;
        let failed = result.err();
        assert_eq!(
            failed.as_ref().map(|f| f.argv.clone()),
            Some(argv(&["false"]))
        );
        assert_eq!(failed.map(|f| f.outcome.code), Some(1));
        assert!(
            !marker.exists(),
            "nothing runs after a failed start command"
        );
        assert_eq!(
            capture.lines(),
            [
                r#"INFO start command: run ["true"]"#,
                r#"ERROR start command: run ["false"]: exit code: 1"#,
            ]
        );
    }

    #[tokio::test]
    async fn stop_commands_all_run_and_the_first_failure_is_returned() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let marker = dir.path().join("ran");
        let capture = capture::start();
        let result = run_commands(
            CommandKind::Stop,
            &[
                argv(&["/nonexistent/x"]),
                argv(&["false"]),
                argv(&["touch", path_str(&marker)]),
            ],
            DEFAULT_TIMEOUT,
            &Metrics::default(),
        )
        .await;
        let failed = result.err();
        assert_eq!(
            failed.as_ref().map(ToString::to_string).as_deref(),
            Some(
                r#"stop command ["/nonexistent/x"] failed: exit code 127 (No such file or directory)"#
            )
        );
        assert!(marker.exists(), "every stop command runs");
        assert_eq!(
            capture.lines(),
            [
                r#"ERROR stop command: run ["/nonexistent/x"]: exit code: 127 (No such file or directory)"#,
                r#"ERROR stop command: run ["false"]: exit code: 1"#,
                format!(
                    r#"INFO stop command: run ["touch", "{}"]"#,
                    marker.display()
                )
                .as_str(),
            ]
        );
    }

    #[tokio::test]
    async fn successful_commands_return_ok() {
        let result = run_commands(
            CommandKind::Start,
            &[argv(&["true"])],
            DEFAULT_TIMEOUT,
            &Metrics::default(),
        )
        .await;
        assert!(result.is_ok());
        assert!(
            run_commands(CommandKind::Stop, &[], DEFAULT_TIMEOUT, &Metrics::default())
                .await
                .is_ok()
        );
    }

    #[test]
    fn concurrency_zero_means_the_number_of_cpus_and_negative_means_unlimited() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(Executor::new(0, None).limit(), Some(cpus));
        assert_eq!(Executor::new(3, None).limit(), Some(3));
        assert_eq!(Executor::new(-1, None).limit(), None);
    }

    #[tokio::test]
    async fn the_executor_never_runs_more_actions_than_its_limit() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let events = dir.path().join("events");
        let release = dir.path().join("release");
        let executor = Executor::new(2, None);
        // Each job records its start, waits for the release file, records
        // its end. Appends of a few bytes to one file are atomic.
        let script =
            "echo s >> \"$1\"; while [ ! -e \"$2\" ]; do sleep 0.01; done; echo e >> \"$1\"";
        for _ in 0..6 {
            executor.spawn(job(sh(script, &[path_str(&events), path_str(&release)])));
        }
        assert_eq!(executor.stats().queued.load(Ordering::Relaxed), 6);
        let started = || {
            std::fs::read_to_string(&events)
                .unwrap_or_default()
                .lines()
                .filter(|l| *l == "s")
                .count()
        };
        until(|| started() == 2).await;
        let stats = executor.stats();
        assert_eq!(stats.running.load(Ordering::Relaxed), 2);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 4);
        assert_eq!(stats.started.load(Ordering::Relaxed), 2);
        std::fs::write(&release, "").unwrap_or_else(|e| panic!("{e}"));
        executor.wait_idle().await;

        let log = std::fs::read_to_string(&events).unwrap_or_default();
        let mut running = 0;
        let mut most = 0;
        for event in log.lines() {
            running += if event == "s" { 1 } else { -1 };
            most = most.max(running);
        }
        assert_eq!(log.lines().count(), 12, "{log}");
        assert_eq!((most, running), (2, 0));
        assert_eq!(stats.started.load(Ordering::Relaxed), 6);
        assert_eq!(stats.succeeded.load(Ordering::Relaxed), 6);
        assert_eq!(stats.running.load(Ordering::Relaxed), 0);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn wait_idle_waits_for_every_spawned_action_and_logs_each_failure() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let done = dir.path().join("done");
        let capture = capture::start();
        let (reports, mut finished) = mpsc::unbounded_channel();
        let executor = Executor::new(-1, Some(reports));
        let owner = TriggerRef {
            filter: 3,
            trigger: 7,
            generation: 0,
        };
        let mut slow = job(sh("sleep 0.2; touch \"$1\"", &[path_str(&done)]));
        slow.owner = Some(owner);
        executor.spawn(slow);
        executor.spawn(job(argv(&["false"])));
        executor.wait_idle().await;
        assert!(done.exists());
        // The `run` lines are the tracker's; only the failure is logged here.
        assert_eq!(
            capture.lines(),
            ["ERROR ssh.failedlogin.ban: action failed: exit code: 1"]
        );
        // Only the job with an owner is reported, once it has finished.
        assert_eq!(
            finished.try_recv().ok(),
            Some(Finished {
                owner,
                values: Box::new([])
            })
        );
        assert!(finished.try_recv().is_err());
        let stats = executor.stats();
        assert_eq!(stats.succeeded.load(Ordering::Relaxed), 1);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 1);

        // The executor goes on after being idle.
        executor.spawn(job(argv(&["true"])));
        executor.wait_idle().await;
        assert_eq!(stats.succeeded.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_timeout_is_counted_and_logged() {
        let capture = capture::start();
        let executor = Executor::new(1, None);
        let mut slow = job(argv(&["sleep", "30"]));
        slow.timeout = Duration::from_millis(200);
        executor.spawn(slow);
        executor.wait_idle().await;
        let stats = executor.stats();
        assert_eq!(stats.timed_out.load(Ordering::Relaxed), 1);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
        assert_eq!(
            capture.lines(),
            ["ERROR ssh.failedlogin.ban: action failed: exit code: 137 (timed out after 200ms)"]
        );
    }

    #[test]
    fn durations_are_shown_as_written_in_a_config() {
        assert_eq!(DisplayDuration(Duration::from_secs(60)).to_string(), "60s");
        assert_eq!(
            DisplayDuration(Duration::from_millis(200)).to_string(),
            "200ms"
        );
        assert_eq!(
            DisplayDuration(Duration::from_millis(1500)).to_string(),
            "1.5s"
        );
    }
}
