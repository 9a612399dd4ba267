//! `rebuff start`: wires the daemon's tasks together and runs it to the end.
//!
//! Order of start, as in reaction: open the store (refusing a state
//! directory another daemon holds), bind the control socket, run the
//! `start` commands (a failure ends here, non-zero), restore persisted
//! jails (their past actions run again, future ones are scheduled), then
//! start the tracker, the control server and every stream, and tell
//! systemd we are ready.
//!
//! Order of stop, on SIGTERM/SIGINT or when every stream has ended:
//! streams are stopped (SIGTERM to each child's process group, SIGKILL
//! after a grace period), the tracker drains what they sent, runs pending
//! `onexit` actions and commits the store, running actions finish, then the
//! `stop` commands run and the control socket is removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control;
use crate::exec::{self, CommandKind, Executor};
use crate::log;
use crate::notify;
use crate::store::Store;
use crate::stream::{self, StreamDeps, StreamHandle};
use crate::tracker::{Tracker, TrackerDeps, TrackerInputs, now_ms};

/// Batches of matches in flight between the streams and the tracker; when
/// full, streams wait (backpressure) rather than buffer without bound.
const MATCH_CHANNEL: usize = 256;
/// Control requests waiting for the tracker.
const CONTROL_CHANNEL: usize = 64;

/// What `rebuff start` was asked.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub socket: PathBuf,
}

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by a signal or because every stream ended.
    Clean,
    /// A `start` command failed.
    StartFailed,
}

/// Runs the daemon on its own runtime until it stops.
pub fn run(config: Config, options: StartOptions) -> anyhow::Result<Exit> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rebuff")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let exit = runtime.block_on(run_async(Arc::new(config), options));
    // A stream thread stuck on a pipe a stray grandchild keeps open must
    // not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    exit
}

async fn run_async(config: Arc<Config>, options: StartOptions) -> anyhow::Result<Exit> {
    let started = std::time::Instant::now();
    let (store, restored) = Store::open(&config.state_directory).with_context(|| {
        format!(
            "cannot open the state in {}",
            config.state_directory.display()
        )
    })?;
    let listener = control::server::bind(&options.socket)?;

    if let Err(failed) =
        exec::run_commands(CommandKind::Start, &config.start, exec::DEFAULT_TIMEOUT).await
    {
        tracing::error!(error = %failed, "a start command failed; not starting");
        return Ok(Exit::StartFailed);
    }

    let executor = Executor::new(config.concurrency);
    let mut tracker = Tracker::new(TrackerDeps {
        config: config.clone(),
        store,
        executor: executor.clone(),
        action_timeout: exec::DEFAULT_TIMEOUT,
    });
    tracker.restore(restored, now_ms())?;

    let (match_tx, match_rx) = mpsc::channel(MATCH_CHANNEL);
    let (control_tx, control_rx) = mpsc::channel(CONTROL_CHANNEL);
    let tracker_stop = CancellationToken::new();
    let mut tracker_task = tokio::spawn(tracker.run(TrackerInputs {
        matches: match_rx,
        control: control_rx,
        stop: tracker_stop.clone(),
    }));

    let shutdown = CancellationToken::new();
    let server = tokio::spawn(control::server::run(
        listener,
        options.socket.clone(),
        control_tx,
        shutdown.clone(),
    ));

    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    for index in 0..config.streams.len() {
        let (handle, task) = stream::spawn(StreamDeps {
            config: config.clone(),
            index,
            matches: match_tx.clone(),
        });
        handles.push(handle);
        tasks.push(task);
    }
    // Only the streams hold senders now: the tracker sees the channel close
    // when the last stream ends.
    drop(match_tx);

    notify::ready();
    let watchdog = tokio::spawn(notify::watchdog(shutdown.clone()));

    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let ended = tokio::select! {
        _ = sigterm.recv() => {
            log::signal_received("SIGTERM");
            None
        }
        _ = sigint.recv() => {
            log::signal_received("SIGINT");
            None
        }
        result = &mut tracker_task => Some(result),
    };
    notify::stopping();
    if ended.is_none() {
        tracing::info!(streams = handles.len(), "stopping streams");
    } else {
        let lines: u64 = handles
            .iter()
            .map(|h| h.stats.lines.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        tracing::info!(
            lines,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "every stream has ended; stopping"
        );
    }
    stop_streams(&handles, tasks).await;
    tracker_stop.cancel();
    let result = match ended {
        Some(result) => result,
        None => tracker_task.await,
    };
    let report = result.context("the tracker task failed")??;
    executor.wait_idle().await;
    if let Err(failed) =
        exec::run_commands(CommandKind::Stop, &config.stop, exec::DEFAULT_TIMEOUT).await
    {
        tracing::warn!(error = %failed, "a stop command failed");
    }
    shutdown.cancel();
    let _ = server.await;
    let _ = watchdog.await;
    tracing::info!(
        matches = report.matches,
        triggers = report.triggers,
        actions = report.actions,
        "stopped"
    );
    Ok(Exit::Clean)
}

/// SIGTERM to every stream's process group, SIGKILL to those still alive
/// after [`stream::STOP_GRACE`], and a bounded wait for their threads.
async fn stop_streams(handles: &[StreamHandle], tasks: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        handle.signal(false);
    }
    let mut pending: Vec<_> = handles.iter().zip(tasks).collect();
    let deadline = tokio::time::Instant::now() + stream::STOP_GRACE;
    let mut still_running = Vec::new();
    for (handle, mut task) in pending.drain(..) {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(_) => {}
            Err(_) => still_running.push((handle, task)),
        }
    }
    for (handle, task) in still_running {
        log::stream_did_not_terminate(&handle.name);
        handle.signal(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}
