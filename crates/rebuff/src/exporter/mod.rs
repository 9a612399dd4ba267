//! `rebuff exporter`: reaction-metrics-exporter 1.0.1, built in, for hosts
//! that keep an upstream reaction.
//!
//! Reads reaction's log (a file, or a unit's journal), turns its lines into
//! the exporter's events, and serves the exporter's families on
//! `listen.address:port/metrics` with the same names, labels and values,
//! plus rebuff's own counters of what it could not read. It asks
//! `reaction` (from `PATH`) for its configuration (`test-config`, at start
//! and after each start command), its version (`-V`) and its pending
//! actions (`show`), each call under a timeout.
//!
//! # Layout
//! - [`config`]: the exporter's configuration file, defaults, validation.
//! - [`parse`]: log lines -> events, with the exporter's regexes.
//! - [`reaction`]: the `reaction` calls and their answers.
//! - [`collect`]: the counts, `hold`, the last match, the exposition.
//! - [`source`]: the file follower and the journal reader.
//! - [`state`]: the 15-minute window kept across restarts.
//!
//! Threads: one source thread feeds [`Shared::line`]; the tokio runtime
//! serves HTTP (the endpoint of [`crate::metrics::http`]), runs the
//! `reaction` calls and saves the state every 10 s, after each scrape and
//! at SIGTERM/SIGINT.

pub mod collect;
pub mod config;
pub mod parse;
pub mod reaction;
pub mod source;
pub mod state;

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use self::collect::{After, Collector, Position, Scrape};
use self::config::{ExporterConfig, LogSource};
use self::parse::{Event, Unparsed};
use self::reaction::{Calls, Pending};
use crate::metrics::http::{self, Endpoint, Format};

/// The exporter's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Read reaction's log, count, serve /metrics.
    Start,
    /// Print the default configuration and exit.
    Defaults,
    /// Validate the configuration, print it with defaults and exit.
    TestConfig,
    /// Print the exporter's version (the one served) and exit.
    Version,
}

/// Output format of `defaults` and `test-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpFormat {
    Yaml,
    Json,
}

/// The least time between two re-reads of reaction's configuration, as
/// the exporter's cooldown.
const RELOAD_COOLDOWN: Duration = Duration::from_secs(10);

/// How often the state is saved while running.
const SAVE_EVERY: Duration = Duration::from_secs(10);

/// What the threads share.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<ExporterConfig>,
    collector: Mutex<Collector>,
    pub calls: Calls,
    runtime: tokio::runtime::Handle,
    pub shutdown: CancellationToken,
    last_reload: Mutex<Option<Instant>>,
    /// The last `show` answer and when it came.
    last_show: Mutex<Option<(Instant, Vec<Pending>)>>,
    /// The last `-V` answer and when it came.
    version: Mutex<Option<(Instant, String)>>,
    /// The running journalctl, to stop it at shutdown.
    child: AtomicU32,
    dirty: AtomicBool,
    /// What the position belongs to (see `state.rs`).
    source_name: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Collector> {
        self.collector.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the source has read up to.
    pub fn position(&self) -> Position {
        self.lock().position.clone()
    }

    fn set_child(&self, pid: Option<u32>) {
        self.child.store(pid.unwrap_or(0), Ordering::Relaxed);
    }

    /// One line: parsed by `parse` (outside the lock), counted, and the
    /// position moved past it.
    pub fn line<'a>(
        &self,
        parse: impl FnOnce() -> Result<Event<'a>, Unparsed>,
        time: i64,
        position: Position,
    ) {
        let event = parse();
        let after = {
            let mut c = self.lock();
            let after = c.event(event, time);
            if position != Position::None {
                c.position = position;
            }
            after
        };
        self.dirty.store(true, Ordering::Relaxed);
        if after == After::ReloadPatterns {
            self.reload_patterns();
        }
    }

    /// A line that could not even be parsed.
    pub fn unparsed(&self, why: Unparsed, time: i64, position: Position) {
        let mut c = self.lock();
        c.unparsed(why, time);
        if position != Position::None {
            c.position = position;
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Re-reads reaction's configuration after a start command (at most
    /// once per cooldown), before the next line is read.
    fn reload_patterns(&self) {
        // reaction restarted: it may be another version now.
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = None;
        {
            let mut last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < RELOAD_COOLDOWN) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.runtime.block_on(test_config(self)) {
            Ok(patterns) => {
                self.lock().set_patterns(&patterns);
                tracing::info!(
                    filters = patterns.len(),
                    "reaction restarted: its configuration was read again"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read reaction's configuration again; keeping the previous one")
            }
        }
    }

    fn save(&self) {
        let bytes = state::snapshot(&self.lock(), &self.source_name);
        self.dirty.store(false, Ordering::Relaxed);
        if let Err(e) = state::write(&self.config.state_file, &bytes) {
            tracing::warn!(
                file = %self.config.state_file.display(),
                error = %e,
                "cannot save the exporter's state (state_file)"
            );
        }
    }
}

async fn test_config(shared: &Shared) -> anyhow::Result<reaction::Patterns> {
    let out = reaction::call(
        &shared.calls,
        2,
        &[
            OsStr::new("test-config"),
            OsStr::new("-c"),
            shared.config.reaction_config.as_os_str(),
        ],
        shared.config.timeout.max(Duration::from_secs(10)),
    )
    .await?;
    reaction::parse_patterns(&out).map_err(|e| anyhow::anyhow!(e))
}

/// Runs `rebuff exporter`.
pub fn run(
    config_path: Option<PathBuf>,
    format: Option<DumpFormat>,
    mode: Mode,
    out: &mut dyn Write,
) -> anyhow::Result<std::process::ExitCode> {
    match mode {
        Mode::Version => {
            writeln!(out, "{}", collect::EXPORTER_VERSION)?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Mode::Defaults => {
            let doc = config::defaults();
            match format.unwrap_or(DumpFormat::Yaml) {
                DumpFormat::Yaml => write!(out, "{}", config::to_yaml(&doc))?,
                DumpFormat::Json => writeln!(out, "{}", config::to_json(&doc))?,
            }
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Mode::TestConfig | Mode::Start => {}
    }
    let config = match &config_path {
        Some(path) => match config::load(path) {
            Ok(config) => config,
            Err(errors) => {
                for error in &errors {
                    eprintln!("ERROR {error}");
                }
                anyhow::bail!(
                    "invalid exporter configuration {}: {} error{}",
                    path.display(),
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                );
            }
        },
        None => {
            eprintln!("WARN running without a configuration file (-c) uses the defaults");
            config::from_defaults()
        }
    };
    if mode == Mode::TestConfig {
        match format.unwrap_or(DumpFormat::Json) {
            DumpFormat::Yaml => write!(out, "{}", config::to_yaml(&config.document))?,
            DumpFormat::Json => writeln!(out, "{}", config::to_json(&config.document))?,
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let _log = crate::log::init(config.loglevel);
    start(config)?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn start(config: ExporterConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let config = Arc::new(config);
    parse::warm_up();
    let source_name = match &config.source {
        LogSource::File(path) => format!("file:{}", path.display()),
        LogSource::Journal { unit, directory } => match directory {
            Some(d) => format!("journal:{unit}@{}", d.display()),
            None => format!("journal:{unit}"),
        },
    };
    let calls = Calls::default();
    let probe = Shared {
        config: config.clone(),
        collector: Mutex::new(Collector::new(config.clone(), &Default::default())),
        calls,
        runtime: runtime.handle().clone(),
        shutdown: CancellationToken::new(),
        last_reload: Mutex::new(None),
        last_show: Mutex::new(None),
        version: Mutex::new(None),
        child: AtomicU32::new(0),
        dirty: AtomicBool::new(false),
        source_name,
    };
    if !config.reaction_config.exists() {
        anyhow::bail!(
            "reaction's configuration {} does not exist: set reaction.config to the file or directory reaction runs with",
            config.reaction_config.display()
        );
    }
    let patterns = runtime.block_on(test_config(&probe)).with_context(|| {
        format!(
            "cannot read reaction's configuration with `reaction test-config -c {}` (is reaction on PATH, and reaction.config right?)",
            config.reaction_config.display()
        )
    })?;
    probe.lock().set_patterns(&patterns);
    check_socket(&config);
    let restored = state::restore(
        &mut probe.lock(),
        &config.state_file,
        &probe.source_name,
        collect::now_ms(),
    );
    match restored {
        state::Restored::Nothing => {}
        state::Restored::Resumed { counts } => tracing::info!(
            file = %config.state_file.display(),
            counts,
            "resuming from the saved state"
        ),
        state::Restored::Expired => tracing::info!(
            file = %config.state_file.display(),
            "the saved state is older than 15 minutes: starting at the end of the log"
        ),
    }
    let shared = Arc::new(probe);
    runtime.block_on(serve(shared))
}

/// Says, once, what is wrong with the socket when something is.
fn check_socket(config: &ExporterConfig) {
    let socket = &config.socket;
    if !socket.exists() {
        tracing::warn!(
            socket = %socket.display(),
            "reaction's socket does not exist (is reaction running? is reaction.socket right?); pending actions and status need it"
        );
    } else if rustix::fs::access(socket, rustix::fs::Access::WRITE_OK).is_err() {
        tracing::warn!(
            socket = %socket.display(),
            "this user cannot connect to reaction's socket: give it the socket's group, and run reaction with UMask=0002 (and Group=) so the socket is group-writable"
        );
    }
}

async fn serve(shared: Arc<Shared>) -> anyhow::Result<()> {
    let web = match &shared.config.web_config {
        Some(path) => Some(
            crate::metrics::webconfig::WebConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => None,
    };
    let listener = http::bind(&shared.config.listen)
        .await
        .context("check listen.address and listen.port")?;
    tracing::info!(listen = %shared.config.listen, "serving the exporter's metrics on /metrics");
    let ready = Arc::new(AtomicBool::new(true));
    let render_shared = shared.clone();
    let endpoint = Endpoint {
        render: Arc::new(move |format| {
            let shared = render_shared.clone();
            Box::pin(async move { Ok(scrape(shared, format).await) })
        }),
        ready,
        web,
    };
    let server = tokio::spawn(http::run(listener, endpoint, shared.shutdown.clone()));

    let source_shared = shared.clone();
    std::thread::Builder::new()
        .name("exporter-source".into())
        .spawn(move || match source_shared.config.source.clone() {
            LogSource::File(path) => source::follow_file(&source_shared, &path),
            LogSource::Journal { unit, directory } => {
                source::follow_journal(&source_shared, &unit, directory)
            }
        })
        .context("cannot start the log reader")?;

    let saver = shared.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SAVE_EVERY);
        loop {
            every.tick().await;
            if saver.dirty.load(Ordering::Relaxed) {
                let s = saver.clone();
                let _ = tokio::task::spawn_blocking(move || s.save()).await;
            }
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, saving the state"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, saving the state"),
    }
    shared.shutdown.cancel();
    let pid = shared.child.load(Ordering::Relaxed);
    if pid != 0
        && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let s = shared.clone();
    let _ = tokio::task::spawn_blocking(move || s.save()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(())
}

/// How long a `reaction -V` answer is reused; a start command in the log
/// (reaction restarted, perhaps upgraded) forgets it at once.
const VERSION_TTL: Duration = Duration::from_secs(60);

/// The version label: cached, or from `reaction -V`.
async fn version(shared: &Shared) -> String {
    if let Some((when, version)) = &*shared.version.lock().unwrap_or_else(|e| e.into_inner())
        && when.elapsed() < VERSION_TTL
    {
        return version.clone();
    }
    let args = [OsStr::new("-V")];
    match reaction::call(&shared.calls, 0, &args, shared.config.timeout).await {
        Ok(out) => {
            let version = reaction::version_label(&out);
            *shared.version.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((Instant::now(), version.clone()));
            version
        }
        Err(e) => {
            tracing::warn!(error = %e, "exported N/A for reaction's version");
            "N/A".to_owned()
        }
    }
}

/// One scrape: ask reaction (in parallel, under the timeout) while the
/// "since the previous scrape" families are rendered and emptied, then
/// write the whole exposition.
async fn scrape(shared: Arc<Shared>, format: Format) -> Vec<u8> {
    let timeout = shared.config.timeout;
    let asked = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let socket = shared.config.socket.clone();
            let show_args = [
                OsStr::new("show"),
                OsStr::new("--socket"),
                socket.as_os_str(),
            ];
            tokio::join!(
                version(&shared),
                reaction::call(&shared.calls, 1, &show_args, timeout),
            )
        })
    };
    // The delta families are gauges, written alike in both formats.
    let deltas = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = shared.lock();
            let series = c.matches.len() + c.actions.len();
            let mut e =
                crate::metrics::encode::Encoder::new(Format::Prometheus, 4096 + series * 96);
            c.render_deltas(&mut e);
            c.last_export = collect::now_ms();
            e.finish()
        })
    };
    let deltas = String::from_utf8(deltas.await.unwrap_or_default()).unwrap_or_default();
    let (version, show) = match asked.await {
        Ok(answers) => answers,
        Err(_) => (
            "N/A".to_owned(),
            Err(reaction::CallError::Timeout {
                args: "show".into(),
                timeout,
            }),
        ),
    };
    let up = show.is_ok();
    let mut pending = Vec::new();
    let mut show_age = None;
    let mut skipped = 0;
    if shared.config.export.pending.on {
        let mut last = shared.last_show.lock().unwrap_or_else(|e| e.into_inner());
        match show {
            Ok(out) => match reaction::parse_show(&out) {
                Ok((answer, bad)) => {
                    skipped += bad;
                    pending = answer.clone();
                    *last = Some((Instant::now(), answer));
                    show_age = Some(0.0);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read `reaction show`"),
            },
            // reaction did not answer in time: the last answer, with its age.
            Err(e @ reaction::CallError::Timeout { .. }) => {
                tracing::warn!(error = %e, "serving the previous `reaction show` answer");
                if let Some((when, answer)) = &*last {
                    pending = answer.clone();
                    show_age = Some(when.elapsed().as_secs_f64());
                }
            }
            // reaction answered that it is down: nothing is pending.
            Err(e) => tracing::warn!(error = %e, "cannot communicate with reaction"),
        }
    }
    let (body, bytes) = {
        let mut c = shared.lock();
        let (series, bad) = c.pending_series(&pending);
        c.pending_skipped += skipped + bad;
        let mut calls = [[0; 3]; 3];
        for (c, row) in calls.iter_mut().enumerate() {
            for (r, n) in row.iter_mut().enumerate() {
                *n = shared.calls.get(c, r);
            }
        }
        let scrape = Scrape {
            version,
            up,
            pending: series,
            show_age,
            calls,
        };
        let mut e = crate::metrics::encode::Encoder::new(format, deltas.len() + 16 * 1024);
        collect::render_head(&mut e, &scrape);
        e.raw(&deltas);
        drop(deltas);
        c.render_pending(&mut e, &scrape);
        c.render_own(&mut e, &scrape);
        if shared.config.export.internals {
            collect::render_process(&mut e);
        }
        (e.finish(), state::snapshot(&c, &shared.source_name))
    };
    let path = shared.config.state_file.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = state::write(&path, &bytes) {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the exporter's state (state_file)");
        }
    })
    .await;
    body
}
