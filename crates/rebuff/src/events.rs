//! The shared vocabulary of the daemon: what the runtime (streams,
//! tracker, executor), metrics and the log say to each other. It depends on
//! nothing but the engine and std, so every layer can use it and arrows only
//! point down: the CLI, then the runtime, then metrics/log/store, then this
//! and the engine.

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::sync::atomic::AtomicU64;

use rebuff_engine::{Time, Values};

/// The code of a child that could not be started, as shells report a
/// command that was not found.
const SPAWN_FAILED: i32 = 127;

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> Time {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Time)
}

/// RFC 3339 UTC with milliseconds when they are not zero.
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    if millis == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

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
    /// The configuration generation the stream matched with.
    pub generation: u64,
    /// Index of the stream in that configuration.
    pub stream: usize,
    pub matches: Vec<Match>,
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitOutcome {
    /// The exit code, always `>= 0` because the exporter needs digits:
    /// 127 when the child could not be spawned, `128 + signal` when a
    /// signal killed it (137 after a timeout).
    pub code: i32,
    /// The signal that killed the child, if one did.
    pub signal: Option<i32>,
    /// What went wrong beyond the code: a spawn error, a signal, a timeout.
    pub detail: Option<String>,
    /// The child ran out of time and its process group was killed.
    pub timed_out: bool,
}

impl ExitOutcome {
    /// Exit code 0, in time.
    pub fn success(&self) -> bool {
        self.code == 0 && !self.timed_out
    }

    /// The outcome of a child that ended by itself.
    pub fn from_status(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt as _;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self {
                code: code.max(0),
                signal: None,
                detail: None,
                timed_out: false,
            },
            (None, Some(signal)) => Self {
                code: 128 + signal,
                signal: Some(signal),
                detail: Some(format!("killed by signal {signal}")),
                timed_out: false,
            },
            // Neither exited nor signalled: a stopped child, which `wait`
            // does not report. Keep the code non-negative all the same.
            (None, None) => Self {
                code: 1,
                signal: None,
                detail: Some(format!("ended with status {status}")),
                timed_out: false,
            },
        }
    }

    /// The outcome of a child that could not be spawned: 127, with the
    /// error as detail (without std's ` (os error N)` suffix, which would
    /// nest parentheses in the log line).
    pub fn spawn_failed(error: &io::Error) -> Self {
        let mut detail = error.to_string();
        if let Some(errno) = error.raw_os_error()
            && let Some(stripped) = detail.strip_suffix(&format!(" (os error {errno})"))
        {
            detail = stripped.to_owned();
        }
        Self {
            code: SPAWN_FAILED,
            signal: None,
            detail: Some(detail),
            timed_out: false,
        }
    }
}

impl fmt::Display for ExitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit code {}", self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

/// Which list of top-level commands runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// `start`: before the streams; a failure aborts the daemon.
    Start,
    /// `stop`: at shutdown, after the `onexit` actions.
    Stop,
}

impl CommandKind {
    /// `start` or `stop`, as the exporter expects in the log line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
        }
    }

    /// `start command` or `stop command`: the source of its output lines.
    pub fn label(self) -> &'static str {
        match self {
            Self::Start => "start command",
            Self::Stop => "stop command",
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A trigger of a filter, as the tracker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerRef {
    /// Global index of the filter.
    pub filter: usize,
    /// The trigger's id, unique for the daemon's lifetime.
    pub trigger: u64,
    /// The configuration generation `filter` is an index of.
    pub generation: u64,
}

/// An action of a tracked trigger has finished: it exited, failed to
/// start, or was killed at its timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub owner: TriggerRef,
    pub values: Values,
}

/// Action counters, read by metrics and `show`.
#[derive(Debug, Default)]
pub struct ExecStats {
    /// Actions whose child was started (or failed to spawn).
    pub started: AtomicU64,
    /// Actions that exited 0 in time.
    pub succeeded: AtomicU64,
    /// Actions that did not (timeouts included).
    pub failed: AtomicU64,
    /// Actions killed at their timeout (also counted in `failed`).
    pub timed_out: AtomicU64,
    /// Actions running now.
    pub running: AtomicU64,
    /// Actions waiting for a free slot now.
    pub queued: AtomicU64,
}

/// Counters of the firewall writer, read by metrics. Index 0 is
/// nftables, 1 is ipset.
#[derive(Debug, Default)]
pub struct FirewallStats {
    pub backends: [BackendStats; 2],
    /// Elements rebuff holds in each kernel set: (backend, set, count),
    /// replaced after every batch.
    pub set_sizes: std::sync::Mutex<Vec<(&'static str, std::sync::Arc<str>, u64)>>,
}

/// One backend's counters.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Batches applied (each one `nft -f` or `ipset restore`, retries and
    /// splits not counted).
    pub batches: AtomicU64,
    /// Element operations applied successfully.
    pub applied: AtomicU64,
    /// Element operations that failed after retries.
    pub failed: AtomicU64,
    /// Program runs beyond one per batch: retries after a repair, and the
    /// halves of a failed batch run to find the failing element.
    pub retries: AtomicU64,
    /// Elements a reconcile added back (missing from the kernel).
    pub readded: AtomicU64,
    /// Elements a reconcile deleted (in the kernel, not in rebuff's state).
    pub removed: AtomicU64,
    /// Reconciles run, and those that could not read a set.
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    /// Batch sizes, as a histogram over [`BATCH_SIZE_BUCKETS`].
    pub batch_sizes: Buckets<6>,
    /// Seconds a batch took from its first request to its result, over
    /// [`BATCH_SECONDS_BUCKETS`].
    pub batch_seconds: Buckets<8>,
}

/// Upper bounds of the batch size histogram.
pub const BATCH_SIZE_BUCKETS: [f64; 6] = [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0];
/// Upper bounds of the batch latency histogram, in seconds.
pub const BATCH_SECONDS_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// A fixed-bucket histogram of atomics (cumulative counts are computed
/// when rendered).
#[derive(Debug)]
pub struct Buckets<const N: usize> {
    /// Observations per bucket; the last slot is above every bound.
    pub counts: [AtomicU64; N],
    pub above: AtomicU64,
    /// Sum of observations, in millionths.
    pub sum_micros: AtomicU64,
}

impl<const N: usize> Default for Buckets<N> {
    fn default() -> Self {
        Buckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            above: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Buckets<N> {
    pub fn observe(&self, bounds: &[f64; N], value: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        match bounds.iter().position(|&b| value <= b) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.above.fetch_add(1, Relaxed),
        };
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Relaxed);
    }
}

/// Established TCP connections by remote country, counted at scrape time
/// (`geo::tcp`) and rendered by the metrics module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpSnapshot {
    /// (country code or `unknown`, state name or empty, connections),
    /// sorted.
    pub rows: Vec<(String, &'static str, u64)>,
    /// Whether rows carry a `state` label.
    pub state_label: bool,
    /// Sockets looked at.
    pub scanned: u64,
    /// Counting stopped at the bound on sockets per scrape.
    pub truncated: bool,
    /// The socket tables (or the host's addresses) could not be read.
    pub failed: bool,
}
