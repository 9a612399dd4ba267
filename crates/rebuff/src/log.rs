//! The daemon's log: one `LEVEL message` line per event on stdout, and the
//! reaction-compatible event lines reaction-metrics-exporter parses.
//!
//! Owns the global `tracing` subscriber ([`init`]) and the writer thread
//! behind it. Receives `tracing` events from every task; sends finished lines
//! to stdout. The event-line functions ([`match_found`], [`action_started`],
//! [`action_failed`],
//! [`command_ran`], the `stream_*` family, [`signal_received`]) are the only
//! way the rest of the daemon writes those lines, so their text lives in one
//! place.
//!
//! The exporter's framing rules (`reference/exporter-formats.md` §1.1) are
//! the invariants here, because breaking any of them kills the exporter:
//!
//! - every line starts with `DEBUG`, `INFO`, `WARN` or `ERROR`, then one
//!   space, then something that is not only whitespace;
//! - one event is exactly one line: newlines and other control characters
//!   are escaped, never written;
//! - a line reaches the file whole, in one `write(2)`: the writer thread
//!   writes chunks of whole lines, at most [`CHUNK`] bytes, each with one
//!   `write_all` on an unbuffered duplicate of the stdout descriptor;
//! - lines are valid UTF-8 (they are Rust `String`s) and at most
//!   [`MAX_LINE`] bytes plus the newline;
//! - nothing else of ours reaches stdout or stderr unprefixed: a panic is
//!   logged as one `ERROR` line on stderr by the hook [`init`] installs.
//!
//! There are no timestamps: journald adds them, and the exporter requires
//! the level first.

use std::fmt::{self, Display, Write as _};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

use crate::events::{CommandKind, ExitOutcome};

/// The longest line, without its newline. Well under the 4 KiB the exporter
/// can take in one read, and under [`CHUNK`] so that a line is never alone
/// in a chunk because of its size.
pub const MAX_LINE: usize = 4000;

/// The most bytes the writer thread hands to one `write(2)`. 4096 is
/// `PIPE_BUF` on Linux: a write this size to a pipe (journald's stdout
/// stream) is atomic, and it is what the exporter reads at once.
pub const CHUNK: usize = 4096;

/// Lines waiting for the writer thread. When the queue is full, loggers
/// block: losing a `match` or `run` line is worse than slowing down. std's
/// bounded channel allocates every slot up front (32 bytes each), so this is
/// 256 KiB, not the 64k lines a flood could justify; the thread drains the
/// whole queue on every wake-up, so it rarely fills.
const QUEUE_LINES: usize = 8192;

/// The most lines the writer thread takes in one batch before writing them,
/// so that a flood cannot grow its batch without limit.
const MAX_BATCH: usize = 1024;

/// A batch this large means lines arrive faster than they are written.
const FLOOD_LINES: usize = 32;

/// How long the writer lets lines gather during a flood (see [`run_writer`]).
const FLOOD_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// How much of a log line a JSON list of argv or match values may take, so
/// that the suffix after the list (`: exit code: N`, which the exporter
/// needs on `ERROR` command lines) survives the cut at [`MAX_LINE`].
const LIST_BUDGET: usize = 3000;

/// Installs the global subscriber, writing `level` and above to stdout, and
/// a panic hook that logs a panic as one `ERROR` line on stderr.
///
/// Keep the returned guard alive until the end of `main`: dropping it
/// writes every queued line and stops the writer thread. A second call
/// keeps the first subscriber (the new guard then writes nothing).
/// Minimum level of the daemon's log lines (`-l`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

pub fn init(level: LogLevel) -> LogGuard {
    // A duplicate of fd 1 as a `File` writes with no buffer in between, so
    // one `write_all` of a chunk is one `write(2)` (for a regular file or a
    // pipe of at most PIPE_BUF, the kernel writes it whole). std's `Stdout`
    // would also do one write for a buffer that ends in `\n` while its own
    // buffer is empty, but that is an implementation detail; the duplicate
    // shares the open file description, so offset and `O_APPEND` are the
    // same as stdout's.
    let out: Box<dyn Write + Send> = match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(File::from(fd)),
        Err(_) => Box::new(io::stdout()),
    };
    let (layer, guard) = channel_layer(out, QUEUE_LINES);
    let subscriber = tracing_subscriber::registry()
        .with(level_filter(level))
        .with(layer);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        install_panic_hook();
    }
    guard
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    }
}

/// Replaces the default panic message (several lines, no level) with one
/// `ERROR` line. It goes straight to stderr with one write, not through the
/// writer thread: the panicking thread may be the writer thread, and with
/// `panic = "abort"` nothing runs after the hook.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let payload = info.payload_as_str().unwrap_or("(non-string payload)");
        let line = format_line(
            Level::ERROR,
            [
                ("thread", thread.name().unwrap_or("unnamed")),
                ("location", location.as_str()),
            ],
            &format!("panic: {payload}"),
        );
        let _ = io::stderr().lock().write_all(line.as_bytes());
    }));
}

/// Keeps the writer thread alive; dropping it writes everything queued so
/// far and joins the thread.
#[derive(Debug)]
pub struct LogGuard {
    tx: SyncSender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl LogGuard {
    /// Returns once every line logged before the call has been written.
    pub fn flush(&self) {
        let (ack, done) = sync_channel(1);
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Not a disconnect: the global subscriber keeps its sender forever.
        if self.tx.send(Msg::Stop).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
enum Msg {
    /// A formatted line, `\n` included.
    Line(String),
    /// Acknowledge once everything before this message is written.
    Flush(SyncSender<()>),
    /// Write everything before this message, then end the thread.
    Stop,
}

/// The `tracing` layer: formats each event into one line and queues it for
/// the writer thread.
#[derive(Debug)]
pub struct LineLayer {
    tx: SyncSender<Msg>,
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = EventText::default();
        event.record(&mut text);
        let line = format_line(
            *event.metadata().level(),
            text.fields.iter().map(|(k, v)| (*k, v.as_str())),
            &text.message,
        );
        // Fails only once the writer thread is gone (after the guard is
        // dropped): nothing is left to write the line.
        let _ = self.tx.send(Msg::Line(line));
    }
}

/// A layer feeding a writer thread that writes to `out`, and the guard of
/// that thread.
fn channel_layer<W: Write + Send + 'static>(out: W, capacity: usize) -> (LineLayer, LogGuard) {
    let (tx, rx) = sync_channel(capacity);
    let thread = std::thread::Builder::new()
        .name("rebuff-log".into())
        .spawn(move || run_writer(rx, out))
        // Without a thread the receiver is dropped and every line is
        // discarded; there is nowhere to report that.
        .ok();
    (LineLayer { tx: tx.clone() }, LogGuard { tx, thread })
}

/// The writer thread: takes every line available (up to [`MAX_BATCH`]),
/// writes them in chunks of whole lines, then acknowledges flushes.
fn run_writer(rx: Receiver<Msg>, mut out: impl Write) {
    let mut lines: Vec<String> = Vec::new();
    let mut acks: Vec<SyncSender<()>> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut stop = false;
    while !stop {
        let Ok(mut msg) = rx.recv() else { break };
        loop {
            match msg {
                Msg::Line(line) => lines.push(line),
                Msg::Flush(ack) => acks.push(ack),
                Msg::Stop => stop = true,
            }
            if stop || lines.len() >= MAX_BATCH {
                break;
            }
            msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            };
        }
        write_lines(&mut out, &lines, &mut buf);
        let flood = lines.len() >= FLOOD_LINES;
        lines.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if flood && !stop {
            // Under a flood, a writer blocked in `recv` is woken (a futex
            // call by the logging thread) for every few lines; pausing
            // lets a whole batch gather instead, for a millisecond of
            // latency. Quiet logs never pause.
            std::thread::sleep(FLOOD_PAUSE);
        }
    }
}

/// Writes `lines` in chunks from [`chunk_len`], one `write_all` each.
/// A failed write (stdout closed, disk full) loses that chunk only; there
/// is no better place to report it.
fn write_lines(out: &mut impl Write, lines: &[String], buf: &mut Vec<u8>) {
    let mut rest = lines;
    while !rest.is_empty() {
        let n = chunk_len(rest, CHUNK);
        buf.clear();
        for line in &rest[..n] {
            buf.extend_from_slice(line.as_bytes());
        }
        let _ = out.write_all(buf);
        rest = &rest[n..];
    }
    let _ = out.flush();
}

/// How many of the first `lines` go into the next chunk: as many whole
/// lines as fit in `max` bytes, and at least one (a longer line is written
/// alone).
pub fn chunk_len(lines: &[String], max: usize) -> usize {
    let mut total = 0;
    let mut n = 0;
    for line in lines {
        total += line.len();
        if total > max && n > 0 {
            break;
        }
        n += 1;
        if total >= max {
            break;
        }
    }
    n
}

/// The fields and message of one event, as text.
#[derive(Default)]
struct EventText {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            // The message is `format_args!`, whose Debug is its Display.
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.push((field.name(), format!("{value:?}")));
        }
    }
}

/// Formats one log line: the level word, the fields as `key=value`, then
/// the message, separated by single spaces, escaped so it is one line, cut
/// to [`MAX_LINE`] bytes, ending in `\n`.
///
/// `TRACE` is written as `DEBUG`, the lowest level the exporter accepts.
/// Field values are quoted when they are empty or hold whitespace, `"`,
/// `=`, `\` or control characters. The message is not quoted and only its
/// control characters are escaped, so that the JSON inside event lines is
/// written as built.
pub fn format_line<'a>(
    level: Level,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    message: &str,
) -> String {
    let mut line = String::with_capacity(16 + message.len());
    line.push_str(level_word(level));
    let body = line.len();
    for (key, value) in fields {
        line.push(' ');
        push_escaped(&mut line, key);
        line.push('=');
        push_field_value(&mut line, value);
    }
    if !message.is_empty() {
        line.push(' ');
        push_escaped(&mut line, message);
    }
    // The exporter strips a line then splits it at the first space: a bare
    // `INFO` has no space and ends its log reading for good.
    if line[body..].trim().is_empty() {
        line.truncate(body);
        line.push_str(" (empty message)");
    }
    cut_line(&mut line, MAX_LINE);
    line.push('\n');
    line
}

fn level_word(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Shortens `line` to at most `max` bytes, at a char boundary, ending in
/// `…`, when it is longer.
pub fn cut_line(line: &mut String, max: usize) {
    if line.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.truncate(end);
    line.push('…');
}

/// Characters that would break a line or hide in a terminal: C0 and C1
/// controls, DEL, and the Unicode line and paragraph separators.
fn is_breaking(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Appends `c` escaped the way log text escapes it.
fn push_char_escape(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        _ => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// Appends free text, escaping only what would break the line.
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        if is_breaking(c) {
            push_char_escape(out, c);
        } else {
            out.push(c);
        }
    }
}

fn push_field_value(out: &mut String, value: &str) {
    let quote = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '=' | '\\') || is_breaking(c));
    if !quote {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_breaking(c) => push_char_escape(out, c),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `c` as it appears inside a JSON string that the exporter reads.
///
/// Besides JSON's required escapes, `]` is written `\u005d`: the exporter
/// takes the list up to the first `]`, so one inside a value would cut the
/// list short. Controls and line separators are escaped so the line stays
/// one line. Everything written is valid in both JSON and Python string
/// literals (`ast.literal_eval` reads the command lists).
fn push_json_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        ']' => out.push_str("\\u005d"),
        // Every breaking char is in the BMP: four hex digits suffice.
        c if is_breaking(c) => {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// The bytes [`push_json_char`] writes for `c`.
fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' => 2,
        ']' => 6,
        c if is_breaking(c) => 6,
        c => c.len_utf8(),
    }
}

/// Appends `s` as a JSON string whose end is at most at byte `limit` of
/// `out`. When the whole string does not fit, writes as much as does,
/// then `…`, and returns false.
fn push_json_str(out: &mut String, s: &str, limit: usize) -> bool {
    // Room kept for `…"` in case the value has to be cut.
    const CUT_TAIL: usize = '…'.len_utf8() + 1;
    out.push('"');
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let needed = json_char_len(c);
        let is_last = chars.as_str().is_empty();
        // The last char needs room only for the closing quote.
        let tail = if is_last { 1 } else { CUT_TAIL };
        if out.len() + needed + tail > limit {
            out.push('…');
            out.push('"');
            return false;
        }
        push_json_char(out, c);
    }
    out.push('"');
    true
}

/// Appends `items` as a list of JSON strings, `[` and `]` included,
/// separated by `sep`, taking at most about `budget` bytes: values that do
/// not fit are cut (ending in `…`) and the rest left out, so the list is
/// always closed and valid.
fn push_json_list<S: AsRef<str>>(out: &mut String, items: &[S], sep: &str, budget: usize) {
    // The smallest cut item: `"…"`.
    const MIN_ITEM: usize = 2 + '…'.len_utf8();
    let limit = out.len() + budget.max(2 + MIN_ITEM) - 1; // `- 1`: room for `]`
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            if out.len() + sep.len() + MIN_ITEM > limit {
                break;
            }
            out.push_str(sep);
        }
        if !push_json_str(out, item.as_ref(), limit) {
            break;
        }
    }
    out.push(']');
}

/// A list of JSON strings separated by `", "`, as the exporter reads match
/// values and start/stop commands.
fn json_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::new();
    push_json_list(&mut out, items, ", ", LIST_BUDGET);
    out
}

/// Appends `: exit code: N` and, when the outcome has one, ` (detail)`.
/// The exporter needs the digits on every `ERROR` command line (it crashes
/// without them); the detail must come after them.
fn push_exit_suffix(out: &mut String, outcome: &ExitOutcome) {
    let _ = write!(out, ": exit code: {}", outcome.code);
    if let Some(detail) = &outcome.detail {
        let _ = write!(out, " ({detail})");
    }
}

/// `INFO ssh.failedlogin: match ["203.0.113.7", "alice"]`: one per regex
/// match, values in sorted pattern-name order (the caller's job).
pub fn match_found<S: AsRef<str>>(stream: &str, filter: &str, values: &[S]) {
    if !tracing::enabled!(Level::INFO) {
        return;
    }
    let text = format!("{stream}.{filter}: match {}", json_list(values));
    tracing::info!("{text}");
}

/// `INFO ssh.failedlogin.ban: run ["echo" "ban" "203.0.113.7"]`, written by
/// the tracker when it hands the action over, right after the `match` line
/// that caused it: reaction-metrics-exporter labels a `run` line with the
/// values of the latest `match` line of its filter, so the two must be in
/// decision order.
pub fn action_started<S: AsRef<str>>(stream: &str, filter: &str, action: &str, argv: &[S]) {
    if !tracing::enabled!(Level::INFO) {
        return;
    }
    let mut text = format!("{stream}.{filter}.{action}: run ");
    // reaction writes action argv without commas; the exporter only splits
    // it on `" "` and never exports it.
    push_json_list(&mut text, argv, " ", LIST_BUDGET);
    tracing::info!("{text}");
}

/// `ERROR ssh.failedlogin.ban: action failed: exit code: 1` (plus
/// ` (detail)`), when the action ends badly. It carries no argv and no
/// `run [`, so the exporter, which counts `ERROR … run [...]` lines as
/// actions, does not count the action twice; the argv is on its `run` line.
pub fn action_failed(stream: &str, filter: &str, action: &str, outcome: &ExitOutcome) {
    let mut text = format!("{stream}.{filter}.{action}: action failed");
    push_exit_suffix(&mut text, outcome);
    tracing::error!("{text}");
}

/// `INFO start command: run ["iptables", "-w", "-N", "reaction"]` or
/// `ERROR stop command: run ["false"]: exit code: 1` (plus ` (detail)`).
pub fn command_ran<S: AsRef<str>>(kind: CommandKind, argv: &[S], outcome: &ExitOutcome) {
    // With commas: the exporter reads this list with `ast.literal_eval`,
    // which would concatenate strings not separated by commas.
    let mut text = format!("{} command: run {}", kind.name(), json_list(argv));
    if outcome.success() {
        tracing::info!("{text}");
    } else {
        push_exit_suffix(&mut text, outcome);
        tracing::error!("{text}");
    }
}

/// `INFO ssh: start ["tail", "-n0", "-F", "/var/log/auth.log"]`.
pub fn stream_started<S: AsRef<str>>(stream: &str, argv: &[S]) {
    let text = format!("{stream}: start {}", json_list(argv));
    tracing::info!("{text}");
}

/// `ERROR could not execute stream ssh cmd: ["tail", "-F", "/nope"]: No
/// such file or directory (os error 2)`.
pub fn stream_exec_failed<S: AsRef<str>>(stream: &str, argv: &[S], error: &dyn Display) {
    let text = format!(
        "could not execute stream {stream} cmd: {}: {error}",
        json_list(argv)
    );
    tracing::error!("{text}");
}

/// `ERROR stream ssh exited: its command returned exit code 1`; see
/// [`stream_exit_description`] for the usual description.
pub fn stream_exited(stream: &str, description: &str) {
    let text = format!("stream {stream} exited: {description}");
    tracing::error!("{text}");
}

/// Why a stream's command ended, for [`stream_exited`]: `its command
/// returned exit code N` or `its command was killed by signal N`.
pub fn stream_exit_description(outcome: &ExitOutcome) -> String {
    match outcome.signal {
        Some(signal) => format!("its command was killed by signal {signal}"),
        None => format!("its command returned exit code {}", outcome.code),
    }
}

/// `ERROR impossible to read output from stream ssh: <error>`.
pub fn stream_read_failed(stream: &str, error: &dyn Display) {
    let text = format!("impossible to read output from stream {stream}: {error}");
    tracing::error!("{text}");
}

/// `ERROR child process of stream ssh did not terminate`.
pub fn stream_did_not_terminate(stream: &str) {
    let text = format!("child process of stream {stream} did not terminate");
    tracing::error!("{text}");
}

/// `INFO received SIGTERM, closing streams...`; `name` is `SIGTERM` or
/// `SIGINT` (the exporter recognises the line only for `SIGTERM`).
pub fn signal_received(name: &str) {
    let text = format!("received {name}, closing streams...");
    tracing::info!("{text}");
}

/// Test support: every event logged on the current thread while the
/// capture is alive, as lines without their `\n`.
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::mpsc::{Receiver, sync_channel};

    use tracing::subscriber::DefaultGuard;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::{LineLayer, Msg};

    #[derive(Debug)]
    pub(crate) struct Capture {
        rx: Receiver<Msg>,
        _default: DefaultGuard,
    }

    /// Captures DEBUG and above on this thread (and on the tasks of a
    /// current-thread runtime running on it).
    pub(crate) fn start() -> Capture {
        // Generous: tests that log more would block.
        let (tx, rx) = sync_channel(100_000);
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with(LineLayer { tx });
        Capture {
            rx,
            _default: tracing::subscriber::set_default(subscriber),
        }
    }

    impl Capture {
        /// The lines logged since the last call.
        pub(crate) fn lines(&self) -> Vec<String> {
            self.rx
                .try_iter()
                .filter_map(|msg| match msg {
                    Msg::Line(mut line) => {
                        assert_eq!(line.pop(), Some('\n'), "a line ends in one newline");
                        Some(line)
                    }
                    Msg::Flush(_) | Msg::Stop => None,
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn ok() -> ExitOutcome {
        ExitOutcome {
            code: 0,
            signal: None,
            detail: None,
            timed_out: false,
        }
    }

    fn failed(code: i32, detail: Option<&str>) -> ExitOutcome {
        ExitOutcome {
            code,
            signal: None,
            detail: detail.map(str::to_owned),
            timed_out: false,
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn logged(f: impl FnOnce()) -> Vec<String> {
        let capture = capture::start();
        f();
        capture.lines()
    }

    #[test]
    fn a_line_is_the_level_word_fields_then_message() {
        assert_eq!(
            format_line(
                Level::WARN,
                [("source", "ban"), ("stream", "stderr")],
                "oops"
            ),
            "WARN source=ban stream=stderr oops\n"
        );
        assert_eq!(format_line(Level::INFO, [], "hello"), "INFO hello\n");
        assert_eq!(format_line(Level::ERROR, [], "x"), "ERROR x\n");
        assert_eq!(format_line(Level::DEBUG, [], "x"), "DEBUG x\n");
    }

    #[test]
    fn trace_is_written_as_debug_because_the_exporter_rejects_trace() {
        assert_eq!(format_line(Level::TRACE, [], "x"), "DEBUG x\n");
    }

    #[test]
    fn field_values_are_quoted_only_when_they_need_it() {
        let line = format_line(
            Level::INFO,
            [
                ("plain", "1.2.3.4"),
                ("space", "a b"),
                ("quote", "say \"hi\""),
                ("equals", "a=b"),
                ("backslash", r"C:\x"),
                ("empty", ""),
                ("newline", "a\nb"),
                ("unicode", "été"),
            ],
            "m",
        );
        assert_eq!(
            line,
            "INFO plain=1.2.3.4 space=\"a b\" quote=\"say \\\"hi\\\"\" equals=\"a=b\" \
             backslash=\"C:\\\\x\" empty=\"\" newline=\"a\\nb\" unicode=été m\n"
        );
    }

    #[test]
    fn control_characters_in_the_message_are_escaped_so_an_event_is_one_line() {
        assert_eq!(
            format_line(
                Level::INFO,
                [],
                "a\nb\rc\td\u{1b}[31me\u{7f}f\u{85}g\u{2028}h"
            ),
            "INFO a\\nb\\rc\\td\\u{1b}[31me\\u{7f}f\\u{85}g\\u{2028}h\n"
        );
    }

    #[test]
    fn backslashes_and_quotes_in_the_message_are_kept_as_written() {
        assert_eq!(
            format_line(Level::INFO, [], r#"x: match ["a\"b"]"#),
            "INFO x: match [\"a\\\"b\"]\n"
        );
    }

    #[test]
    fn an_empty_or_blank_event_still_has_text_after_the_level() {
        assert_eq!(format_line(Level::INFO, [], ""), "INFO (empty message)\n");
        assert_eq!(
            format_line(Level::WARN, [], "  \u{3000}"),
            "WARN (empty message)\n"
        );
        assert_eq!(format_line(Level::INFO, [("k", "v")], ""), "INFO k=v\n");
    }

    #[test]
    fn long_lines_are_cut_at_a_char_boundary_with_an_ellipsis() {
        let line = format_line(Level::INFO, [], &"é".repeat(3000));
        assert!(line.len() <= MAX_LINE + 1, "{}", line.len());
        assert!(line.ends_with("…\n"));
        let body = line.strip_suffix("…\n").unwrap_or_default();
        assert!(
            body.strip_prefix("INFO ")
                .is_some_and(|s| s.chars().all(|c| c == 'é'))
        );

        let mut exact = "a".repeat(MAX_LINE);
        cut_line(&mut exact, MAX_LINE);
        assert_eq!(
            exact.len(),
            MAX_LINE,
            "a line of exactly the maximum is kept"
        );
        exact.push('b');
        cut_line(&mut exact, MAX_LINE);
        assert!(exact.len() <= MAX_LINE && exact.ends_with('…'));
    }

    #[test]
    fn chunks_hold_whole_lines_up_to_the_chunk_size() {
        let lines = strings(&["aaaa\n", "bbbb\n", "cccc\n"]);
        assert_eq!(chunk_len(&lines, 10), 2);
        assert_eq!(chunk_len(&lines, 9), 1);
        assert_eq!(chunk_len(&lines, 15), 3);
        assert_eq!(chunk_len(&lines, 100), 3);
        assert_eq!(chunk_len(&lines[2..], 4), 1, "a longer line goes alone");
        assert_eq!(chunk_len(&[], 10), 0);
    }

    /// Records each `write` call separately.
    #[derive(Debug, Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Ok(mut writes) = self.0.lock() {
                writes.push(buf.to_vec());
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writer_thread_writes_whole_lines_in_chunks_of_at_most_4096_bytes() {
        let writes = Writes::default();
        let (layer, guard) = channel_layer(writes.clone(), 16);
        let mut expected = String::new();
        for i in 0..2000 {
            let line = if i == 1000 {
                format!("INFO {}\n", "x".repeat(MAX_LINE - 5))
            } else {
                format!("INFO line {i} {}\n", "y".repeat(i % 97))
            };
            expected.push_str(&line);
            // A small queue: the sender blocks when it is full, nothing is lost.
            layer.tx.send(Msg::Line(line)).unwrap_or_default();
        }
        guard.flush();
        let chunks = writes.0.lock().map(|w| w.clone()).unwrap_or_default();
        assert!(!chunks.is_empty());
        for chunk in &chunks {
            assert!(chunk.len() <= CHUNK, "chunk of {} bytes", chunk.len());
            assert_eq!(
                chunk.last(),
                Some(&b'\n'),
                "a chunk ends on a line boundary"
            );
        }
        assert_eq!(
            String::from_utf8(chunks.concat()).unwrap_or_default(),
            expected
        );
        drop(guard);
    }

    #[test]
    fn dropping_the_guard_writes_what_is_queued_and_stops_the_thread() {
        let writes = Writes::default();
        let (layer, guard) = channel_layer(writes.clone(), 64);
        for _ in 0..10 {
            layer
                .tx
                .send(Msg::Line("INFO x\n".into()))
                .unwrap_or_default();
        }
        drop(guard);
        let total: usize = writes
            .0
            .lock()
            .map(|w| w.iter().map(Vec::len).sum())
            .unwrap_or(0);
        assert_eq!(total, 70);
        assert!(
            layer.tx.send(Msg::Line("INFO late\n".into())).is_err(),
            "the thread is gone"
        );
    }

    #[test]
    fn events_become_lines_with_their_fields_first() {
        let lines = logged(|| {
            tracing::warn!(
                source = "ssh.f.ban",
                stream = "stderr",
                "could not {}",
                "ban"
            );
            tracing::debug!(count = 3, name = ?"x", "dbg");
        });
        assert_eq!(
            lines,
            [
                "WARN source=ssh.f.ban stream=stderr could not ban",
                "DEBUG count=3 name=\"\\\"x\\\"\" dbg",
            ]
        );
    }

    #[test]
    fn a_match_line_lists_values_as_json_strings() {
        let lines =
            logged(|| match_found("ssh", "failedlogin", &strings(&["203.0.113.7", "alice"])));
        assert_eq!(
            lines,
            [r#"INFO ssh.failedlogin: match ["203.0.113.7", "alice"]"#]
        );
    }

    #[test]
    fn match_values_are_escaped_json_style_and_brackets_cannot_end_the_list() {
        let values = strings(&["a\"b", r"c\d", "e]f", "g\nh", "été 日本", "\u{1}"]);
        let lines = logged(|| match_found("s", "f", &values));
        assert_eq!(
            lines,
            [r#"INFO s.f: match ["a\"b", "c\\d", "e\u005df", "g\nh", "été 日本", "\u0001"]"#]
        );
        let params = lines[0]
            .split_once("match ")
            .map(|(_, p)| p)
            .unwrap_or_default();
        assert_eq!(
            params.find(']'),
            Some(params.len() - 1),
            "only the list's own ]"
        );
        let parsed: Vec<String> = serde_json::from_str(params).unwrap_or_default();
        assert_eq!(
            parsed, values,
            "the list is valid JSON giving back the values"
        );
    }

    #[test]
    fn a_huge_value_is_cut_but_the_list_stays_valid_json() {
        let values = vec!["]".repeat(2000), "second".to_owned()];
        let lines = logged(|| match_found("s", "f", &values));
        assert!(lines[0].len() < MAX_LINE);
        let params = lines[0]
            .split_once("match ")
            .map(|(_, p)| p)
            .unwrap_or_default();
        let parsed: Vec<String> = serde_json::from_str(params).unwrap_or_default();
        assert_eq!(parsed.len(), 1);
        assert!(parsed[0].ends_with('…') && parsed[0].starts_with("]]]"));
    }

    #[test]
    fn a_started_action_is_an_info_run_line_with_space_separated_argv() {
        let argv = strings(&["echo", "ban", "203.0.113.7"]);
        let lines = logged(|| action_started("ssh", "failedlogin", "ban", &argv));
        assert_eq!(
            lines,
            [r#"INFO ssh.failedlogin.ban: run ["echo" "ban" "203.0.113.7"]"#]
        );
    }

    #[test]
    fn a_failed_action_is_an_error_line_the_exporter_does_not_count_as_a_run() {
        let lines = logged(|| {
            action_failed("ssh", "f", "ban", &failed(1, None));
            action_failed(
                "ssh",
                "f",
                "ban",
                &failed(127, Some("No such file or directory")),
            );
        });
        assert_eq!(
            lines,
            [
                "ERROR ssh.f.ban: action failed: exit code: 1",
                "ERROR ssh.f.ban: action failed: exit code: 127 (No such file or directory)",
            ]
        );
        // The exporter's event regex (reference/exporter-formats.md §1.2a)
        // needs `: match [` or `: run [`.
        assert!(
            lines
                .iter()
                .all(|l| !l.contains(": run [") && !l.contains(": match ["))
        );
    }

    #[test]
    fn command_lines_use_a_comma_separated_list_and_always_an_exit_code_on_error() {
        let lines = logged(|| {
            command_ran(
                CommandKind::Start,
                &["iptables", "-w", "-N", "reaction"],
                &ok(),
            );
            command_ran(CommandKind::Stop, &["false"], &failed(1, None));
            command_ran(
                CommandKind::Start,
                &["sleep", "9"],
                &ExitOutcome {
                    code: 137,
                    signal: Some(9),
                    detail: Some("timed out after 1s".into()),
                    timed_out: true,
                },
            );
        });
        assert_eq!(
            lines,
            [
                r#"INFO start command: run ["iptables", "-w", "-N", "reaction"]"#,
                r#"ERROR stop command: run ["false"]: exit code: 1"#,
                r#"ERROR start command: run ["sleep", "9"]: exit code: 137 (timed out after 1s)"#,
            ]
        );
    }

    #[test]
    fn a_command_with_a_huge_argv_keeps_its_exit_code() {
        let argv = vec!["x".repeat(10_000)];
        let lines = logged(|| command_ran(CommandKind::Stop, &argv, &failed(4, None)));
        assert!(lines[0].ends_with("…\"]: exit code: 4"), "{}", lines[0]);
    }

    #[test]
    fn stream_lines_have_the_exporters_fixed_parts() {
        let argv = ["tail", "-n0", "-F", "/var/log/auth.log"];
        let exited = ExitOutcome {
            code: 1,
            signal: None,
            detail: None,
            timed_out: false,
        };
        let killed = ExitOutcome {
            code: 143,
            signal: Some(15),
            detail: Some("killed by signal 15".into()),
            timed_out: false,
        };
        let error = io::Error::from_raw_os_error(2);
        let lines = logged(|| {
            stream_started("ssh", &argv);
            stream_exec_failed("ssh", &["tail", "-F", "/nope"], &error);
            stream_exited("ssh", &stream_exit_description(&exited));
            stream_exited("ssh", &stream_exit_description(&killed));
            stream_read_failed("ssh", &"stream did not contain valid UTF-8");
            stream_did_not_terminate("ssh");
            signal_received("SIGTERM");
        });
        assert_eq!(
            lines,
            [
                r#"INFO ssh: start ["tail", "-n0", "-F", "/var/log/auth.log"]"#,
                r#"ERROR could not execute stream ssh cmd: ["tail", "-F", "/nope"]: No such file or directory (os error 2)"#,
                "ERROR stream ssh exited: its command returned exit code 1",
                "ERROR stream ssh exited: its command was killed by signal 15",
                "ERROR impossible to read output from stream ssh: stream did not contain valid UTF-8",
                "ERROR child process of stream ssh did not terminate",
                "INFO received SIGTERM, closing streams...",
            ]
        );
    }

    #[test]
    fn event_lines_below_the_level_are_not_logged() {
        let (tx, rx) = sync_channel(16);
        let subscriber = tracing_subscriber::registry()
            .with(level_filter(LogLevel::Warn))
            .with(LineLayer { tx });
        tracing::subscriber::with_default(subscriber, || {
            match_found("s", "f", &["v"]);
            command_ran(CommandKind::Stop, &["false"], &failed(1, None));
        });
        let lines: Vec<String> = rx
            .try_iter()
            .filter_map(|m| match m {
                Msg::Line(l) => Some(l),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines,
            ["ERROR stop command: run [\"false\"]: exit code: 1\n"]
        );
    }
}
