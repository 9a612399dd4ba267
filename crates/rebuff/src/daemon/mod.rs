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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::MetricsConfig;
use crate::control;
use crate::events::{CommandKind, MatchBatch, now_ms};
use crate::exec::{self, Executor};
use crate::firewall::Firewall;
use crate::log;
use crate::metrics::http::{self, Format, RenderFuture};
use crate::metrics::webconfig::WebConfig;
use crate::metrics::{Metrics, PendingCmd, PendingSnapshot, StreamEvent};
use crate::notify;
use crate::store::Store;
use crate::stream::{self, StreamDeps, StreamHandle, StreamView};
use crate::tracker::{ReloadCmd, Tracker, TrackerDeps, TrackerInputs};

/// Batches of matches in flight between the streams and the tracker; when
/// full, streams wait (backpressure) rather than buffer without bound.
/// Small: the tracker, which also writes the `match` lines, is the slower
/// side under a flood, so a deep queue only holds memory (256 batches held
/// 7 MiB more at the heavy benchmark's peak, for no speed).
const MATCH_CHANNEL: usize = 32;
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
    /// The configuration path, re-read on reload.
    pub config_path: PathBuf,
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
    // Before any state is written: a socket we cannot create stops us here.
    // One still answered on may belong to a daemon killed a moment ago whose
    // children have not exec'd yet: the bind below waits for it.
    match control::server::check(&options.socket) {
        Ok(()) | Err(control::server::BindError::InUse { .. }) => {}
        Err(e) => return Err(e.into()),
    }
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

    // The sets exist before anything runs that could fill them: the start
    // commands may refer to them, and restored bans go into them.
    let firewall = match Firewall::start(config.firewall.clone()).await {
        Ok(firewall) => firewall,
        Err(error) => {
            tracing::error!("{error}; not starting");
            return Ok(Exit::StartFailed);
        }
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

    let (finished_tx, finished_rx) = mpsc::unbounded_channel();
    let executor = Executor::with_firewall(config.concurrency, Some(finished_tx), firewall);
    let (reload_request_tx, mut reload_request_rx) = mpsc::channel(1);
    let (tracker_reload_tx, tracker_reload_rx) = mpsc::channel(1);
    let mut tracker = Tracker::new(TrackerDeps {
        config: config.clone(),
        store,
        executor: executor.clone(),
        action_timeout: exec::DEFAULT_TIMEOUT,
        metrics: metrics.clone(),
        reload_requests: Some(reload_request_tx),
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
        finished: finished_rx,
        reload: tracker_reload_rx,
    }));

    let shutdown = CancellationToken::new();
    let server = tokio::spawn(control::server::run(
        listener,
        options.socket.clone(),
        control_tx,
        shutdown.clone(),
    ));

    let mut streams = Vec::new();
    for (index, stream) in config.streams.iter().enumerate() {
        // A virtual stream has no child: the tracker feeds it, and it is
        // up as long as the daemon is.
        if stream.is_virtual {
            metrics.stream_running(index);
            continue;
        }
        streams.push(stream::spawn(StreamDeps {
            view: StreamView {
                config: config.clone(),
                index,
                generation: 0,
                metrics: metrics.clone(),
            },
            matches: match_tx.clone(),
        }));
    }
    let current_metrics = Arc::new(Mutex::new(metrics.clone()));
    let mut reloader = Reloader {
        path: options.config_path.clone(),
        config: config.clone(),
        generation: 0,
        tracker: tracker_reload_tx,
        matches: match_tx.downgrade(),
        metrics: current_metrics.clone(),
        executor: executor.clone(),
    };
    // Only the streams hold senders now: the tracker sees the channel close
    // when the last stream ends.
    drop(match_tx);

    let ready = Arc::new(AtomicBool::new(false));
    let metrics_server = endpoint.map(|(listener, web)| {
        tokio::spawn(http::run(
            listener,
            http::Endpoint {
                render: render_fn(
                    current_metrics.clone(),
                    executor.clone(),
                    pending_tx.clone(),
                ),
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
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let ended = loop {
        tokio::select! {
            _ = sigterm.recv() => {
                log::signal_received("SIGTERM");
                break None;
            }
            _ = sigint.recv() => {
                log::signal_received("SIGINT");
                break None;
            }
            _ = sighup.recv() => {
                tracing::info!("received SIGHUP, reloading the configuration");
                let _ = reloader.reload(&mut streams).await;
            }
            Some(respond) = reload_request_rx.recv() => {
                let response = match reloader.reload(&mut streams).await {
                    Ok(summary) => control::Response::Ok(serde_json::Value::String(summary)),
                    Err(errors) => control::Response::Error(errors),
                };
                let _ = respond.send(response);
            }
            result = &mut tracker_task => break Some(result),
        }
    };
    drop(reloader);
    let (handles, tasks): (Vec<StreamHandle>, Vec<_>) = streams.into_iter().unzip();
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
    stop_streams(&handles, tasks).await;
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
    if let Some(firewall) = executor.firewall() {
        firewall.stop().await;
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
        let view = handle.view();
        view.metrics.stream_event(view.index, StreamEvent::Timeout);
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
    current: Arc<Mutex<Arc<Metrics>>>,
    executor: Executor,
    pending: mpsc::Sender<PendingCmd>,
) -> Arc<dyn Fn(Format) -> RenderFuture + Send + Sync> {
    Arc::new(move |format| {
        let metrics = current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
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
            // The snapshot's indices are those of the tracker's counters,
            // which a reload may have replaced meanwhile.
            let metrics = snapshot.metrics.clone().unwrap_or(metrics);
            let firewall = executor.firewall().map(|f| Arc::clone(f.stats()));
            let mut snapshot = snapshot;
            let body = tokio::task::spawn_blocking(move || {
                // Counted here, off the tracker: the socket tables are the
                // kernel's, not state the tracker owns.
                if let Some(geoip) = metrics.tcp_connections()
                    && let Some(tcp) = &geoip.tcp
                {
                    snapshot.tcp = Some(crate::geo::tcp::collect(&geoip.geo, tcp));
                }
                metrics.render_all(format, &snapshot, executor.stats(), firewall.as_deref())
            })
            .await
            .context("rendering the metrics failed")?;
            Ok(body)
        }) as RenderFuture
    })
}

/// A running stream: its handle and the task that ends with it.
type RunningStream = (StreamHandle, tokio::task::JoinHandle<()>);

/// What a reload needs: where the configuration comes from, the one in
/// force, and the parts it swaps.
struct Reloader {
    path: PathBuf,
    config: Arc<Config>,
    generation: u64,
    tracker: mpsc::Sender<ReloadCmd>,
    /// For streams started by a reload; weak, so the tracker still sees the
    /// channel close when the last stream ends.
    matches: mpsc::WeakSender<MatchBatch>,
    /// The counters scrapes render (a reload replaces them).
    metrics: Arc<Mutex<Arc<Metrics>>>,
    /// Holds the firewall writer, which a reload sets up for new sets.
    executor: Executor,
}

impl Reloader {
    /// Re-reads the configuration and applies it: an invalid one changes
    /// nothing (its errors are logged and returned); a valid one goes to
    /// the tracker (state kept), then to the streams: an unchanged stream
    /// keeps its child and adopts the new filters at its next line, one
    /// whose `cmd` changed is restarted, removed ones are stopped, new ones
    /// started. `start`/`stop` commands do not run. Returns the line it
    /// logs.
    async fn reload(&mut self, streams: &mut Vec<RunningStream>) -> Result<String, String> {
        notify::reloading();
        let result = self.apply(streams).await;
        notify::ready();
        result
    }

    async fn apply(&mut self, streams: &mut Vec<RunningStream>) -> Result<String, String> {
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::config::load(&path))
            .await
            .map_err(|e| format!("the configuration loader failed: {e}"))?;
        let config = match loaded {
            Ok(config) => Arc::new(config),
            Err(errors) => {
                for error in &errors.0 {
                    tracing::error!("{error}");
                }
                let text: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                tracing::error!(
                    path = %self.path.display(),
                    errors = errors.0.len(),
                    "the new configuration is invalid; the running one stays"
                );
                return Err(text.join("\n"));
            }
        };
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        self.warn_about_restart_only_settings(&config);
        // New sets exist before any action of the new configuration runs;
        // a set that cannot be set up keeps the running configuration.
        match self.executor.firewall() {
            Some(firewall) => firewall.reconfigure(config.firewall.clone()).await,
            None => Firewall::start(config.firewall.clone())
                .await
                .map(|started| started.map_or((), |f| self.executor.set_firewall(f))),
        }
        .map_err(|error| {
            tracing::error!("{error}; the running configuration stays");
            error.to_string()
        })?;
        let metrics = Arc::new(Metrics::new(&config));
        let Some(matches) = self.matches.upgrade() else {
            return Err("the daemon is stopping".into());
        };
        self.generation += 1;
        let (respond, answer) = tokio::sync::oneshot::channel();
        let sent = self
            .tracker
            .send(ReloadCmd {
                config: config.clone(),
                metrics: metrics.clone(),
                generation: self.generation,
                respond,
            })
            .await;
        let summary = match sent {
            Ok(()) => answer
                .await
                .map_err(|_| "the daemon is stopping".to_owned())?,
            Err(_) => return Err("the daemon is stopping".into()),
        };

        let mut old: Vec<Option<RunningStream>> =
            std::mem::take(streams).into_iter().map(Some).collect();
        let (mut restarted, mut added, mut stopping) = (Vec::new(), Vec::new(), Vec::new());
        for (index, stream) in config.streams.iter().enumerate() {
            let view = StreamView {
                config: config.clone(),
                index,
                generation: self.generation,
                metrics: metrics.clone(),
            };
            let previous = old.iter_mut().find(|slot| {
                slot.as_ref()
                    .is_some_and(|(handle, _)| *handle.name == *stream.name)
            });
            let previous = previous.and_then(Option::take);
            if stream.is_virtual {
                // No child to keep or start; one that ran a command before
                // is stopped.
                metrics.stream_running(index);
                if let Some(running) = previous {
                    restarted.push(stream.name.clone());
                    stopping.push(running);
                }
                continue;
            }
            match previous {
                Some((handle, task))
                    if handle.view().config.streams[handle.view().index].cmd == stream.cmd
                        && !task.is_finished() =>
                {
                    metrics.stream_running(index);
                    handle.replace_view(view);
                    streams.push((handle, task));
                    continue;
                }
                Some(running) => {
                    restarted.push(stream.name.clone());
                    stopping.push(running);
                }
                None => added.push(stream.name.clone()),
            }
            streams.push(stream::spawn(StreamDeps {
                view,
                matches: matches.clone(),
            }));
        }
        let removed: Vec<String> = old
            .into_iter()
            .flatten()
            .map(|running| {
                let name = running.0.name.to_string();
                stopping.push(running);
                name
            })
            .collect();
        if !stopping.is_empty() {
            let (handles, tasks): (Vec<StreamHandle>, Vec<_>) = stopping.into_iter().unzip();
            stop_streams(&handles, tasks).await;
        }
        *self.metrics.lock().unwrap_or_else(PoisonError::into_inner) = metrics;
        self.config = config;
        let line = format!(
            "configuration reloaded: filters added {:?}, removed {:?}, changed {:?}, reset {:?}; streams added {:?}, restarted {:?}, removed {:?}; pending actions dropped {}, onexit run {}",
            summary.added,
            summary.removed,
            summary.changed,
            summary.reset,
            added,
            restarted,
            removed,
            summary.dropped_actions,
            summary.onexit_actions,
        );
        tracing::info!("{line}");
        Ok(line)
    }

    /// Settings read once at start: a reload says it does not apply them.
    fn warn_about_restart_only_settings(&self, new: &Config) {
        let old = &self.config;
        let mut ignored = Vec::new();
        if old.state_directory != new.state_directory {
            ignored.push("state_directory");
        }
        if old.concurrency != new.concurrency {
            ignored.push("concurrency");
        }
        let endpoint = |c: &Config| {
            c.metrics
                .as_ref()
                .map(|m| (m.listen.to_string(), m.web_config.clone()))
        };
        if endpoint(old) != endpoint(new) {
            ignored.push("metrics.listen/metrics.web_config");
        }
        if old.start != new.start || old.stop != new.stop {
            ignored.push("start/stop (not run again)");
        }
        if !ignored.is_empty() {
            tracing::warn!(
                settings = %ignored.join(", "),
                "these settings changed and take effect at the next restart"
            );
        }
    }
}
