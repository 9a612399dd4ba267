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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::MetricsConfig;
use crate::control;
use crate::exec::{self, CommandKind, Executor};
use crate::log;
use crate::metrics::http::{self, Format, RenderFuture};
use crate::metrics::webconfig::WebConfig;
use crate::metrics::{Metrics, PendingCmd, PendingSnapshot, StreamEvent};
use crate::notify;
use crate::store::Store;
use crate::stream::{self, StreamDeps, StreamHandle};
use crate::tracker::{Tracker, TrackerDeps, TrackerInputs, now_ms};

/// Batches of matches in flight between the streams and the tracker; when
/// full, streams wait (backpressure) rather than buffer without bound.
const MATCH_CHANNEL: usize = 256;
/// Control requests waiting for the tracker.
const CONTROL_CHANNEL: usize = 64;
/// Scrapes waiting for the tracker's pending actions.
const SCRAPE_CHANNEL: usize = 8;
/// How long a start waits for a control socket that still answers or a
/// metrics port still bound. The children a daemon had just forked when it
/// was SIGKILLed hold its descriptors until they exec, and on a loaded
/// machine that lasts long enough for a restart to find them. (The store
/// waits for the state lock the same way.)
const HELD_WAIT: Duration = Duration::from_secs(5);
const HELD_POLL: Duration = Duration::from_millis(20);
/// How long a scrape waits for the tracker before it fails with a 500.
const SCRAPE_TRACKER_TIMEOUT: Duration = Duration::from_secs(10);

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
    let listener = bind_control(&options.socket).await?;
    let metrics = Arc::new(Metrics::new(&config));
    // Bound before the start commands run, so a taken port or a bad
    // web-config file stops the daemon before it changes the firewall.
    let endpoint = match &config.metrics {
        Some(section) => Some(bind_endpoint(section).await?),
        None => None,
    };

    if let Err(failed) = exec::run_commands(
        CommandKind::Start,
        &config.start,
        exec::DEFAULT_TIMEOUT,
        &metrics,
    )
    .await
    {
        tracing::error!(error = %failed, "a start command failed; not starting");
        return Ok(Exit::StartFailed);
    }

    let executor = Executor::new(config.concurrency, metrics.clone());
    let mut tracker = Tracker::new(TrackerDeps {
        config: config.clone(),
        store,
        executor: executor.clone(),
        action_timeout: exec::DEFAULT_TIMEOUT,
        metrics: metrics.clone(),
    });
    tracker.restore(restored, now_ms())?;

    let (match_tx, match_rx) = mpsc::channel(MATCH_CHANNEL);
    let (control_tx, control_rx) = mpsc::channel(CONTROL_CHANNEL);
    let (pending_tx, pending_rx) = mpsc::channel(SCRAPE_CHANNEL);
    let tracker_stop = CancellationToken::new();
    let mut tracker_task = tokio::spawn(tracker.run(TrackerInputs {
        matches: match_rx,
        control: control_rx,
        pending: pending_rx,
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
            metrics: metrics.clone(),
        });
        handles.push(handle);
        tasks.push(task);
    }
    // Only the streams hold senders now: the tracker sees the channel close
    // when the last stream ends.
    drop(match_tx);

    let ready = Arc::new(AtomicBool::new(false));
    let metrics_server = endpoint.map(|(listener, web)| {
        tokio::spawn(http::run(
            listener,
            http::Endpoint {
                render: render_fn(metrics.clone(), executor.clone(), pending_tx.clone()),
                ready: ready.clone(),
                web,
            },
            shutdown.clone(),
        ))
    });
    ready.store(true, Ordering::Relaxed);
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
        let lines = metrics.lines();
        tracing::info!(
            lines,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "every stream has ended; stopping"
        );
    }
    ready.store(false, Ordering::Relaxed);
    stop_streams(&handles, tasks, &metrics).await;
    tracker_stop.cancel();
    let result = match ended {
        Some(result) => result,
        None => tracker_task.await,
    };
    let report = result.context("the tracker task failed")??;
    executor.wait_idle().await;
    if let Err(failed) = exec::run_commands(
        CommandKind::Stop,
        &config.stop,
        exec::DEFAULT_TIMEOUT,
        &metrics,
    )
    .await
    {
        tracing::warn!(error = %failed, "a stop command failed");
    }
    shutdown.cancel();
    let _ = server.await;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
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
async fn stop_streams(
    handles: &[StreamHandle],
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics: &Metrics,
) {
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
        metrics.stream_event(handle.index, StreamEvent::Timeout);
        handle.signal(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}

/// Binds the control socket, waiting up to [`HELD_WAIT`] while it answers.
async fn bind_control(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let deadline = tokio::time::Instant::now() + HELD_WAIT;
    loop {
        match control::server::bind(path) {
            Err(control::server::BindError::InUse { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(HELD_POLL).await;
            }
            result => return Ok(result?),
        }
    }
}

fn addr_in_use(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    })
}

/// Binds the metrics endpoint and reads its web-config file.
async fn bind_endpoint(
    section: &MetricsConfig,
) -> anyhow::Result<(tokio::net::TcpListener, Option<WebConfig>)> {
    let web = match &section.web_config {
        Some(path) => Some(WebConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let listen = section.listen.to_string();
    let deadline = tokio::time::Instant::now() + HELD_WAIT;
    let listener = loop {
        match http::bind(&listen).await {
            Err(e) if addr_in_use(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(HELD_POLL).await;
            }
            result => break result?,
        }
    };
    tracing::info!(listen = %section.listen, tls = web.as_ref().is_some_and(|w| w.tls_acceptor().is_some()), "metrics endpoint listening");
    Ok((listener, web))
}

/// A scrape: pending actions from the tracker (or none once it has
/// stopped), then the exposition, written off the async workers because a
/// large one takes milliseconds.
fn render_fn(
    metrics: Arc<Metrics>,
    executor: Executor,
    pending: mpsc::Sender<PendingCmd>,
) -> Arc<dyn Fn(Format) -> RenderFuture + Send + Sync> {
    Arc::new(move |format| {
        let metrics = metrics.clone();
        let executor = executor.clone();
        let pending = pending.clone();
        Box::pin(async move {
            let (respond, answer) = tokio::sync::oneshot::channel();
            let asked = pending
                .send(PendingCmd {
                    keys: metrics.wants_pending_keys(),
                    respond,
                })
                .await;
            let snapshot = match asked {
                Ok(()) => tokio::time::timeout(SCRAPE_TRACKER_TIMEOUT, answer)
                    .await
                    .context("the tracker did not answer in time")?
                    .unwrap_or_default(),
                Err(_) => PendingSnapshot::default(),
            };
            let body = tokio::task::spawn_blocking(move || {
                metrics.render(format, &snapshot, executor.stats())
            })
            .await
            .context("rendering the metrics failed")?;
            Ok(body)
        }) as RenderFuture
    })
}
