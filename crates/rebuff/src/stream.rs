//! Stream tasks: one child process per stream, its output matched where it
//! is read. A virtual stream has none: the tracker feeds it the lines of
//! virtual actions.
//!
//! A stream's command runs as argv (never a shell) in its own process
//! group, stdin closed, stdout and stderr on one pipe so that its lines
//! arrive in the order it wrote them. Each stream runs on a blocking thread
//! of its own: it reads bounded lines, runs the stream's [`StreamMatcher`]
//! and sends only accepted matches to the tracker, in [`MatchBatch`]es
//! handed on when the batch is full or when the next read could block.
//! The tracker logs each match in reaction's format, in decision order.
//!
//! A reload swaps what a running stream matches with (its [`StreamView`])
//! without touching its child: the stream adopts the new view before its
//! next line, so no line is lost or matched twice.
//!
//! [`StreamMatcher`]: rebuff_engine::StreamMatcher

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rebuff_engine::line_text;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::events::{ExitOutcome, Match, MatchBatch, now_ms};
use crate::lines::LineReader;
use crate::log;
use crate::metrics::{Ignored, Metrics, StreamEvent};

/// Longest line kept; the rest of a longer line is skipped (and counted).
pub const MAX_LINE: usize = 64 * 1024;

/// Matches handed on at once at most: bounds both latency under a flood
/// and the memory a batch holds.
const MAX_BATCH: usize = 256;

/// How long children get between SIGTERM and SIGKILL at shutdown.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The daemon's handle on a running stream, to stop it.
#[derive(Debug, Clone)]
pub struct StreamHandle {
    pub name: Arc<str>,
    /// Process group of the child (its pid); 0 before spawn or after exit.
    pgid: Arc<AtomicU32>,
    stopping: Arc<AtomicBool>,
    view: Arc<ViewSlot>,
}

impl StreamHandle {
    /// What the stream matches with now.
    pub fn view(&self) -> Arc<StreamView> {
        self.view.load()
    }

    /// Makes the stream match with `view` from its next line on.
    pub fn replace_view(&self, view: StreamView) {
        self.view.replace(view);
    }

    /// Asks the child's process group to stop (SIGTERM), or kills it.
    pub fn signal(&self, kill: bool) {
        self.stopping.store(true, Ordering::SeqCst);
        let pgid = self.pgid.load(Ordering::SeqCst);
        if let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
            let signal = if kill { Signal::KILL } else { Signal::TERM };
            // ESRCH only means it is already gone.
            let _ = kill_process_group(pid, signal);
        }
    }
}

/// What a stream matches with: the configuration it is part of, its
/// index there, and the counters of that configuration.
#[derive(Debug)]
pub struct StreamView {
    pub config: Arc<Config>,
    /// Index of the stream in `config`.
    pub index: usize,
    /// The configuration generation (0 at start, one more per reload).
    pub generation: u64,
    pub metrics: Arc<Metrics>,
}

/// The current view of a stream, and whether a reload replaced it since
/// the stream last looked.
#[derive(Debug)]
struct ViewSlot {
    current: Mutex<Arc<StreamView>>,
    replaced: AtomicBool,
}

impl ViewSlot {
    fn load(&self) -> Arc<StreamView> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, view: StreamView) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
        self.replaced.store(true, Ordering::Release);
    }
}

/// What a stream task is given.
#[derive(Debug)]
pub struct StreamDeps {
    pub view: StreamView,
    pub matches: mpsc::Sender<MatchBatch>,
}

/// Starts the stream on a blocking thread; the returned future ends when
/// the stream's output ended and its child was reaped.
pub fn spawn(deps: StreamDeps) -> (StreamHandle, tokio::task::JoinHandle<()>) {
    let name: Arc<str> = deps.view.config.streams[deps.view.index]
        .name
        .as_str()
        .into();
    let handle = StreamHandle {
        name,
        pgid: Arc::new(AtomicU32::new(0)),
        stopping: Arc::new(AtomicBool::new(false)),
        view: Arc::new(ViewSlot {
            current: Mutex::new(Arc::new(deps.view)),
            replaced: AtomicBool::new(false),
        }),
    };
    let task_handle = handle.clone();
    let matches = deps.matches;
    let task = tokio::task::spawn_blocking(move || run(&matches, &task_handle));
    (handle, task)
}

/// The stream task: spawn, read and match until the output ends, reap.
fn run(matches: &mpsc::Sender<MatchBatch>, handle: &StreamHandle) {
    let view = handle.view();
    let stream = &view.config.streams[view.index];
    let (mut child, output) = match spawn_child(&stream.cmd) {
        Ok(spawned) => spawned,
        Err(e) => {
            log::stream_exec_failed(&stream.name, &stream.cmd, &e);
            view.metrics.stream_event(view.index, StreamEvent::Exec);
            return;
        }
    };
    handle.pgid.store(child.id(), Ordering::SeqCst);
    // A stop requested while spawning must still reach the child.
    if handle.stopping.load(Ordering::SeqCst) {
        handle.signal(false);
    }
    log::stream_started(&stream.name, &stream.cmd);
    view.metrics.stream_event(view.index, StreamEvent::Start);
    if let Err(e) = read_and_match(matches, handle, output)
        && !handle.stopping.load(Ordering::SeqCst)
    {
        log::stream_read_failed(&stream.name, &e);
        let view = handle.view();
        view.metrics.stream_event(view.index, StreamEvent::Read);
    }
    let status = child.wait();
    handle.pgid.store(0, Ordering::SeqCst);
    let view = handle.view();
    if handle.stopping.load(Ordering::SeqCst) {
        tracing::debug!(stream = %stream.name, "stream stopped");
        view.metrics.stream_stopped(view.index);
        return;
    }
    view.metrics.stream_event(view.index, StreamEvent::Exit);
    match status {
        Ok(status) => log::stream_exited(&stream.name, &describe_exit(status)),
        Err(e) => log::stream_exited(
            &stream.name,
            &format!("could not wait for its command: {e}"),
        ),
    }
}

fn spawn_child(argv: &[String]) -> io::Result<(Child, io::PipeReader)> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let (reader, writer) = io::pipe()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    let child = command.spawn()?;
    // Our copies of the write end must be closed, or the pipe never ends:
    // they live in `command`, dropped here.
    drop(command);
    Ok((child, reader))
}

fn describe_exit(status: ExitStatus) -> String {
    log::stream_exit_description(&ExitOutcome::from_status(status))
}

/// The first ten of a rare problem are logged each; after that one line per
/// 10,000, so a flood of them says how many without a line each.
fn is_worth_a_line(count: u64) -> bool {
    count <= 10 || count.is_multiple_of(10_000)
}

fn read_and_match(
    matches: &mpsc::Sender<MatchBatch>,
    handle: &StreamHandle,
    output: impl io::Read,
) -> io::Result<()> {
    let mut view = handle.view();
    let mut reader = LineReader::new(output, MAX_LINE);
    let mut scratch = view.config.streams[view.index].matcher.scratch();
    let mut found = Vec::new();
    let mut lossy = String::new();
    let mut batch = Vec::new();
    let mut lines = 0u64;
    while let Some(line) = reader.next_line()? {
        if handle.view.replaced.swap(false, Ordering::Acquire) {
            // What was matched with the old view goes out under it.
            if !batch.is_empty() {
                let full = std::mem::take(&mut batch);
                view.metrics.matches(view.index, &full);
                let sent = matches.blocking_send(MatchBatch {
                    generation: view.generation,
                    stream: view.index,
                    matches: full,
                });
                if sent.is_err() {
                    break;
                }
            }
            view = handle.view();
            scratch = view.config.streams[view.index].matcher.scratch();
        }
        let stream = &view.config.streams[view.index];
        let metrics = &view.metrics;
        let stats = metrics.stream(view.index);
        lines += 1;
        if line.truncated {
            let count = stats.too_long.fetch_add(1, Ordering::Relaxed) + 1;
            if is_worth_a_line(count) {
                tracing::warn!(
                    stream = %stream.name,
                    count,
                    "a line longer than {MAX_LINE} bytes was cut; its end is not matched"
                );
            }
        }
        let (text, invalid) = line_text(line.bytes, &mut lossy);
        if invalid {
            let count = stats.invalid_utf8.fetch_add(1, Ordering::Relaxed) + 1;
            if is_worth_a_line(count) {
                tracing::warn!(
                    stream = %stream.name,
                    count,
                    "a line is not valid UTF-8; invalid bytes were replaced before matching"
                );
            }
        }
        found.clear();
        if stream.matcher.find(text, &mut scratch, &mut found) {
            let time = now_ms();
            for m in found.drain(..) {
                match m.outcome {
                    Ok(values) => {
                        // Its `match` line is the tracker's, written in
                        // decision order with the `run` lines it causes.
                        batch.push(Match {
                            filter: m.filter,
                            values,
                            time,
                        });
                    }
                    Err(ignored) => {
                        metrics.ignored(
                            metrics.filter_id(view.index, m.filter),
                            Ignored::Pattern(ignored.reason),
                        );
                        tracing::trace!(
                            stream = %stream.name,
                            pattern = %ignored.pattern,
                            value = %ignored.value,
                            reason = ignored.reason.name(),
                            "match ignored"
                        );
                    }
                }
            }
        }
        // Published when about to wait for input too, so a quiet stream's
        // count is exact; under a flood, every 1024 lines.
        let idle = !reader.has_buffered_line();
        if idle || lines.is_multiple_of(1024) {
            stats.lines.store(lines, Ordering::Relaxed);
        }
        if !batch.is_empty() && (batch.len() >= MAX_BATCH || idle) {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(16));
            metrics.matches(view.index, &full);
            let sent = matches.blocking_send(MatchBatch {
                generation: view.generation,
                stream: view.index,
                matches: full,
            });
            if sent.is_err() {
                // The tracker is gone: the daemon is stopping.
                break;
            }
        }
    }
    view.metrics
        .stream(view.index)
        .lines
        .store(lines, Ordering::Relaxed);
    if !batch.is_empty() {
        view.metrics.matches(view.index, &batch);
        let _ = matches.blocking_send(MatchBatch {
            generation: view.generation,
            stream: view.index,
            matches: batch,
        });
    }
    Ok(())
}
