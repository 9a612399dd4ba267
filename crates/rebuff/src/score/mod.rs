//! `rebuff score`: a drop-in for the seed score daemon
//! (`ipset-score-daemon.py`): the same flags, INI rulesets, scoring, ipset
//! calls and batching, flushes at start, every interval, at end of input
//! and on SIGINT; plus IPv6 (`--ipset6`) and clear errors.
//!
//! - [`args`]: the seed's command line, as argparse parses it.
//! - [`ini`]: configparser's INI dialect and interpolation.
//! - [`pyre`]: Python regexes translated for the `regex` crate.
//! - [`rules`]: rulesets, rules, templates, the per-line evaluation.
//! - [`counter`]: scores, floor, expiry, size limit, pending updates.
//! - [`pyset`]: CPython's set order, so batches list addresses as the seed's.
//! - [`ipset`]: the startup check and batched add/del calls.
//! - [`input`]: stdin or a FIFO, line by line.
//! - [`addr`]: strict address parsing and "globally reachable".
//! - [`log`]: the seed's stderr log lines.
//!
//! Lines are matched on the reading thread on one or two cores, else on
//! worker threads in batches applied in input order (`REBUFF_SCORE_WORKERS`
//! sets their number; 0 matches on the reading thread).

pub mod addr;
pub mod args;
pub mod counter;
pub mod ini;
pub mod input;
pub mod ipset;
pub mod log;
pub mod pyre;
pub mod pyset;
pub mod rules;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use self::counter::{Added, ScoreCounter};
use self::ipset::{Ipset, IpsetOptions};
use self::log::{Level, Logger};
use self::rules::Rules;

/// The state the reader and the flusher share.
#[derive(Debug)]
struct Shared {
    counter: Mutex<ScoreCounter>,
    ipset: Mutex<Ipset>,
    threshold: i64,
    start: Instant,
    log: Logger,
    lines: AtomicU64,
    /// Set to stop the flusher; the condvar wakes it.
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The seed's `Worker._update`.
    fn flush(&self) {
        let mut ipset = self.ipset.lock().unwrap_or_else(|e| e.into_inner());
        let updates = {
            let mut counter = self.counter.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = counter.maintain(self.now());
            if self.log.enabled(Level::Debug) {
                for (addr, score) in dropped {
                    self.log.log(
                        Level::Debug,
                        "ScoreCounter",
                        &format!("Removing {addr} with score {score}"),
                    );
                }
            }
            counter.take_updates()
        };
        for (addr, score) in &updates {
            self.log.log(
                Level::Info,
                "ScoreCounter",
                &format!("Score for {addr} now {score}"),
            );
        }
        if !updates.is_empty() {
            self.log.log(
                Level::Info,
                "ScoreCounter",
                &format!("Flushing {} updates", updates.len()),
            );
        }
        for (addr, score) in updates {
            if score <= self.threshold {
                ipset.remove(addr);
            } else {
                ipset.update(addr);
            }
        }
        ipset.apply();
    }
}

/// The flusher thread: every interval, then once more when stopped.
#[derive(Debug)]
struct Flusher {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Flusher {
    fn start(shared: Arc<Shared>, interval: f64) -> Arc<Flusher> {
        // The seed's first flush, done before any line is read.
        shared.flush();
        let interval = if interval > 0.0 { interval } else { 0.0 };
        let every = Duration::try_from_secs_f64(interval).ok();
        let worker = shared.clone();
        let thread = std::thread::spawn(move || {
            loop {
                let stop = worker.stop.lock().unwrap_or_else(|e| e.into_inner());
                let stop = match every {
                    Some(d) => {
                        worker
                            .wake
                            .wait_timeout_while(stop, d, |s| !*s)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => worker
                        .wake
                        .wait_while(stop, |s| !*s)
                        .unwrap_or_else(|e| e.into_inner()),
                };
                let stopping = *stop;
                drop(stop);
                worker.flush();
                if stopping {
                    return;
                }
            }
        });
        Arc::new(Flusher {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread after its final flush (once; later calls wait for
    /// nothing).
    fn stop(&self) {
        // The lock is held across the join: a second caller (end of input
        // and SIGINT at once) returns only after the final flush is done.
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(thread) = thread.take() {
            let _ = thread.join();
        }
    }
}

/// Lines, as read together (never waiting for more input to fill a batch).
#[derive(Debug, Default)]
struct Batch {
    text: String,
    /// End of each line in `text`.
    ends: Vec<usize>,
}

/// At most this many lines per batch.
const BATCH_LINES: usize = 4096;

/// Reads lines on one thread, matches batches of them on worker threads,
/// and applies their findings to the counter on this thread in input
/// order: the same scores, the same calls as one line at a time, on every
/// core. A batch is what is already read, so a FIFO's lines are never held
/// back. The read error, if any.
fn pipeline(
    mut reader: input::LineReader,
    rules: Arc<Rules>,
    shared: &Arc<Shared>,
) -> Option<String> {
    let log = shared.log;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = std::env::var("REBUFF_SCORE_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(if cores > 2 { (cores - 1).min(4) } else { 0 });
    if workers == 0 {
        return inline(reader, &rules, shared);
    }
    let mut to_workers = Vec::new();
    let mut from_workers = Vec::new();
    for _ in 0..workers {
        let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel::<Batch>(2);
        let (event_tx, event_rx) = std::sync::mpsc::sync_channel::<(usize, Vec<rules::Event>)>(2);
        let rules = rules.clone();
        std::thread::spawn(move || {
            let mut cx = rules.context();
            let debug = log.enabled(Level::Debug);
            for batch in batch_rx {
                let mut events = Vec::new();
                let mut start = 0;
                for &end in &batch.ends {
                    let line = &batch.text[start..end];
                    start = end;
                    if debug {
                        events.push(rules::Event::Log(
                            Level::Debug,
                            "main.input".into(),
                            line.trim_end_matches(ini::py_space).to_string(),
                        ));
                    }
                    rules.run(line, &mut cx, &log, &mut events);
                }
                if event_tx.send((batch.ends.len(), events)).is_err() {
                    return;
                }
            }
        });
        to_workers.push(batch_tx);
        from_workers.push(event_rx);
    }
    let reader_thread = std::thread::spawn(move || -> Option<String> {
        let mut next = 0;
        loop {
            let mut batch = Batch::default();
            loop {
                let line = match reader.next_line() {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) => return Some(e.to_string()),
                };
                match std::str::from_utf8(line) {
                    Ok(text) => batch.text.push_str(text),
                    Err(_) => batch.text.push_str(&String::from_utf8_lossy(line)),
                }
                batch.ends.push(batch.text.len());
                if batch.ends.len() >= BATCH_LINES || !reader.has_buffered_line() {
                    break;
                }
            }
            if batch.ends.is_empty() {
                return None;
            }
            if to_workers[next % to_workers.len()].send(batch).is_err() {
                return None;
            }
            next += 1;
        }
    });
    let mut next = 0;
    // Results in the order the batches went out; a worker that is done
    // (its channel closed) means every later one is done too.
    while let Ok((lines, events)) = from_workers[next % from_workers.len()].recv() {
        next += 1;
        apply(shared, lines, events);
    }
    reader_thread.join().unwrap_or(None)
}

/// One line at a time on this thread (one or two cores: handing batches
/// between threads costs more than it saves there).
fn inline(mut reader: input::LineReader, rules: &Rules, shared: &Arc<Shared>) -> Option<String> {
    let log = shared.log;
    let debug = log.enabled(Level::Debug);
    let mut cx = rules.context();
    let mut events = Vec::new();
    loop {
        let line = match reader.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => return None,
            Err(e) => return Some(e.to_string()),
        };
        let line = match std::str::from_utf8(line) {
            Ok(line) => std::borrow::Cow::Borrowed(line),
            Err(_) => String::from_utf8_lossy(line),
        };
        if debug {
            log.log(
                Level::Debug,
                "main.input",
                line.trim_end_matches(ini::py_space),
            );
        }
        events.clear();
        rules.run(&line, &mut cx, &log, &mut events);
        apply(shared, 1, events.drain(..));
    }
}

/// Applies the findings of `lines` lines to the counter, in order.
fn apply(shared: &Shared, lines: usize, events: impl IntoIterator<Item = rules::Event>) {
    let log = shared.log;
    let debug = log.enabled(Level::Debug);
    shared.lines.fetch_add(lines as u64, Ordering::Relaxed);
    for event in events {
        let found = match event {
            rules::Event::Log(level, who, message) => {
                log.log(level, &who, &message);
                continue;
            }
            rules::Event::Found(found) => found,
        };
        let (Some(addr), Some(score)) = (found.address, found.score) else {
            continue;
        };
        let now = shared.now();
        let added = shared
            .counter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(addr, score, now);
        match added {
            Added::Ignored => log.log(
                Level::Info,
                "ScoreCounter",
                &format!("Ignoring local address {addr}"),
            ),
            Added::Scored { score, dirty: true } if debug => log.log(
                Level::Debug,
                "ScoreCounter",
                &format!("Score for {addr} set to {score}"),
            ),
            Added::Scored { .. } => {}
        }
    }
}

/// Runs `rebuff score ARGS…`; the process exit code.
pub fn main(argv: &[String]) -> u8 {
    let args = match args::parse(argv) {
        Ok(args::Parsed::Run(args)) => args,
        Ok(args::Parsed::Help(text)) => {
            print!("{text}");
            return 0;
        }
        Err(message) => {
            eprintln!("{}\nrebuff score: error: {message}", args::usage());
            return 2;
        }
    };
    let log = Logger {
        level: args.log_level,
        time: args.log_time,
    };
    match run(&args, log) {
        Ok(()) => 0,
        Err(message) => {
            log.log(Level::Error, "main", &message);
            1
        }
    }
}

/// Waits for SIGINT on a thread of its own; `on_interrupt` runs there.
fn watch_sigint(on_interrupt: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        runtime.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::interrupt()) {
                Ok(mut interrupt) => {
                    let _ = ready_tx.send(Ok(()));
                    interrupt.recv().await;
                    on_interrupt();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        });
    });
    ready_rx
        .recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("Cannot watch SIGINT: {e}"))
}

fn run(args: &args::Args, log: Logger) -> Result<(), String> {
    // The seed's order: the input, the ruleset, the counter, the set check.
    let reader = input::open(&args.input, args.input_create)?;
    let text = std::fs::read(&args.ruleset)
        .map_err(|e| format!("Cannot parse config '{}': {e}", args.ruleset.display()))
        .and_then(|bytes| {
            String::from_utf8(bytes).map_err(|e| {
                format!(
                    "Cannot parse config '{}': not UTF-8 ({e})",
                    args.ruleset.display()
                )
            })
        })?;
    let rules = Rules::from_ini(&text, args.ipset6.is_some(), &log)
        .map_err(|e| format!("Cannot parse config '{}': {e}", args.ruleset.display()))?;
    let counter = ScoreCounter::new(
        args.score_timeout,
        args.score_min.min(args.score_threshold),
        args.score_limit,
        args.exclude_local,
    );
    let mut ipset = Ipset::new(
        IpsetOptions {
            exe: args.ipset_exe.clone(),
            name: args.ipset.clone(),
            name6: args.ipset6.clone(),
            maxelem: args.ipset_create_maxelem,
            timeout: args.ipset_create_timeout,
            create: args.ipset_create,
            dry_run: args.dry_run,
        },
        log,
    );
    ipset.check()?;
    if !args.systemd {
        log.log(Level::Info, "main", "Starting up");
    } else if std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
        && sd_notify::notify(&[sd_notify::NotifyState::Ready]).is_ok()
    {
        log.log(Level::Info, "main", "Starting up, systemd READY");
    } else {
        log.log(Level::Warning, "main", "Starting up, systemd notify failed");
    }
    let shared = Arc::new(Shared {
        counter: Mutex::new(counter),
        ipset: Mutex::new(ipset),
        threshold: args.score_threshold,
        start: Instant::now(),
        log,
        lines: AtomicU64::new(0),
        stop: Mutex::new(false),
        wake: Condvar::new(),
    });
    let flusher = Flusher::start(shared.clone(), args.update_interval);
    {
        let flusher = flusher.clone();
        let shared = shared.clone();
        watch_sigint(move || {
            flusher.stop();
            let lines = shared.lines.load(Ordering::Relaxed);
            shared.log.log(
                Level::Info,
                "main",
                &format!("Interrupt after {lines} lines"),
            );
            std::process::exit(0);
        })?;
    }
    let read_error = pipeline(reader, Arc::new(rules), &shared);
    if let Some(e) = read_error {
        flusher.stop();
        return Err(format!("Cannot read '{}': {e}", args.input));
    }
    flusher.stop();
    let lines = shared.lines.load(Ordering::Relaxed);
    log.log(
        Level::Info,
        "main",
        &format!("Shutdown after {lines} lines"),
    );
    Ok(())
}
