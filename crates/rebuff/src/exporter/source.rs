//! Where reaction's lines come from: a log file followed across rotation,
//! or the journal of a unit through `journalctl`.
//!
//! Each source runs on its own thread and hands every line, with its time
//! and the position just after it, to [`Shared::line`]. The file follower
//! starts at the end of the file (or where the state file says it stopped,
//! within the window), reads what is appended, follows a rename (finishing
//! the old file first) and a truncation, and holds a partial last line
//! until its newline arrives. The journal source runs `journalctl -o json
//! --follow` on `_SYSTEMD_UNIT=UNIT` at priority info or more urgent (what
//! the exporter reads), resumes after the stored cursor, restarts
//! `journalctl` when it exits, and turns its permission complaints into an
//! error that says what to fix.

use std::fs::File;
use std::io::{BufRead as _, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Shared;
use super::collect::{Position, now_ms};
use super::parse::{self, Unparsed};

/// The longest line kept; longer ones are counted and skipped (reaction's
/// lines stay far below; the exporter reads 4 KiB at a time).
pub const MAX_LINE: usize = 64 * 1024;

/// How often the file is polled for new data when idle.
const POLL: Duration = Duration::from_millis(40);

const CHUNK: usize = 256 * 1024;

/// An open log file and what has been read of it.
struct Followed {
    file: File,
    dev: u64,
    ino: u64,
    offset: u64,
}

fn open(path: &Path) -> std::io::Result<Followed> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    Ok(Followed {
        dev: meta.dev(),
        ino: meta.ino(),
        offset: 0,
        file,
    })
}

/// Follows `path` until shutdown.
pub fn follow_file(shared: &Shared, path: &Path) {
    let resume = match shared.position() {
        Position::File { dev, ino, offset } => Some((dev, ino, offset)),
        _ => None,
    };
    let mut warned = false;
    let mut current = loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        match open(path) {
            Ok(mut f) => {
                let len = f.file.metadata().map_or(0, |m| m.len());
                f.offset = match resume {
                    // Same file: on from where the last run stopped.
                    Some((dev, ino, offset)) if dev == f.dev && ino == f.ino && offset <= len => {
                        offset
                    }
                    // Rotated while we were down: the new file is all new.
                    Some((dev, ino, _)) if dev != f.dev || ino != f.ino => 0,
                    // Truncated while down, or a fresh start: from here on.
                    Some(_) => 0,
                    None => len,
                };
                if resume.is_some() {
                    tracing::info!(file = %path.display(), offset = f.offset, "resuming the log where the last run stopped");
                }
                break f;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        file = %path.display(),
                        error = %e,
                        "cannot open reaction's log file (reaction.logs.file); waiting for it"
                    );
                    warned = true;
                }
                std::thread::sleep(POLL * 5);
            }
        }
    };
    if let Err(e) = current.file.seek(SeekFrom::Start(current.offset)) {
        tracing::error!(file = %path.display(), error = %e, "cannot seek in reaction's log file");
    }
    let mut reader = Splitter::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        match current.file.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                let time = now_ms();
                let start = current.offset;
                current.offset += n as u64;
                let (dev, ino) = (current.dev, current.ino);
                reader.feed(&buf[..n], start, |line, end| {
                    let position = Position::File {
                        dev,
                        ino,
                        offset: end,
                    };
                    match line {
                        Ok(bytes) => shared.line(|| parse::file_line(bytes), time, position),
                        Err(why) => shared.unparsed(why, time, position),
                    }
                });
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read reaction's log file");
            }
        }
        // At the end of the file: rotated, truncated, or just idle?
        match std::fs::metadata(path) {
            Ok(meta) if meta.dev() != current.dev || meta.ino() != current.ino => {
                match open(path) {
                    Ok(next) => {
                        tracing::info!(file = %path.display(), "reaction's log file was rotated; following the new one");
                        // A partial line at the end of the old file is a line.
                        reader.flush(|line, _| {
                            if let Ok(bytes) = line {
                                shared.line(|| parse::file_line(bytes), now_ms(), Position::None);
                            }
                        });
                        current = next;
                        reader = Splitter::default();
                        continue;
                    }
                    Err(_) => std::thread::sleep(POLL),
                }
            }
            Ok(meta) if meta.len() < current.offset => {
                tracing::info!(file = %path.display(), "reaction's log file was truncated; reading it from its start");
                current.offset = 0;
                reader = Splitter::default();
                if let Err(e) = current.file.seek(SeekFrom::Start(0)) {
                    tracing::warn!(error = %e, "cannot seek in reaction's log file");
                }
            }
            _ => std::thread::sleep(POLL),
        }
    }
}

/// Cuts a byte stream into lines of at most [`MAX_LINE`] bytes, keeping a
/// partial last line for the next feed. Lines longer than the bound are
/// reported once as [`Unparsed::TooLong`] and skipped to their newline.
#[derive(Debug, Default)]
pub struct Splitter {
    partial: Vec<u8>,
    skipping: bool,
}

impl Splitter {
    /// Calls `each(line, end)` for every complete line of `data`, `end`
    /// being the stream offset just after its newline; `start` is the
    /// offset of `data[0]`.
    pub fn feed(
        &mut self,
        data: &[u8],
        start: u64,
        mut each: impl FnMut(Result<&[u8], Unparsed>, u64),
    ) {
        let mut at = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            let end = start + nl as u64 + 1;
            let piece = &data[at..nl];
            at = nl + 1;
            if self.skipping {
                self.skipping = false;
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                if piece.len() > MAX_LINE {
                    each(Err(Unparsed::TooLong), end);
                } else {
                    each(Ok(piece), end);
                }
            } else {
                self.partial.extend_from_slice(piece);
                let line = std::mem::take(&mut self.partial);
                if line.len() > MAX_LINE {
                    each(Err(Unparsed::TooLong), end);
                } else {
                    each(Ok(&line), end);
                }
                self.partial = line;
                self.partial.clear();
            }
        }
        let rest = &data[at..];
        if self.skipping || rest.is_empty() {
            return;
        }
        if self.partial.len() + rest.len() > MAX_LINE {
            self.partial.clear();
            self.skipping = true;
            each(Err(Unparsed::TooLong), start + data.len() as u64);
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    /// Hands over a partial last line, if any.
    pub fn flush(&mut self, mut each: impl FnMut(Result<&[u8], Unparsed>, u64)) {
        if !self.partial.is_empty() && !self.skipping {
            let line = std::mem::take(&mut self.partial);
            each(Ok(&line), 0);
        }
        self.skipping = false;
    }
}

/// One `journalctl -o json` entry (the fields used).
#[derive(Debug, serde::Deserialize)]
struct Entry {
    #[serde(rename = "MESSAGE")]
    message: Option<serde_json::Value>,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime: Option<String>,
    #[serde(rename = "__CURSOR")]
    cursor: Option<String>,
}

/// The `journalctl` arguments: the unit's entries at info or more urgent,
/// after `cursor` or from now on.
pub fn journal_args(unit: &str, directory: Option<&Path>, cursor: Option<&str>) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(dir) = directory {
        args.push(format!("--directory={}", dir.display()));
    }
    args.extend(
        [
            "--output=json",
            "--all",
            "--follow",
            "--no-pager",
            "--priority=0..6",
        ]
        .map(String::from),
    );
    match cursor {
        Some(cursor) => {
            args.push(format!("--after-cursor={cursor}"));
            args.push("--lines=all".into());
        }
        None => args.push("--lines=0".into()),
    }
    args.push(format!("_SYSTEMD_UNIT={unit}"));
    args
}

/// What to tell the user when `journalctl` says it cannot see the logs.
pub fn permission_hint(unit: &str) -> String {
    format!(
        "cannot read the journal of {unit}: the exporter's user needs to be in the \
         `systemd-journal` group (usermod -aG systemd-journal USER, or \
         SupplementaryGroups=systemd-journal in its unit), or `adm` on some systems"
    )
}

/// Follows the journal of `unit` until shutdown.
pub fn follow_journal(shared: &Shared, unit: &str, directory: Option<PathBuf>) {
    let mut cursor = match shared.position() {
        Position::Journal { cursor } => Some(cursor),
        _ => None,
    };
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let args = journal_args(unit, directory.as_deref(), cursor.as_deref());
        let child = std::process::Command::new("journalctl")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(error = %e, "cannot run journalctl (is systemd's journalctl installed and on PATH?); retrying in 10 s");
                sleep_unless_shutdown(shared, Duration::from_secs(10));
                continue;
            }
        };
        shared.set_child(Some(child.id()));
        if let Some(stderr) = child.stderr.take() {
            let unit = unit.to_owned();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("insufficient permissions")
                        || line.contains("not seeing messages from other users")
                    {
                        tracing::error!("{}", permission_hint(&unit));
                    } else if !line.trim().is_empty() {
                        tracing::warn!(message = %line.chars().take(300).collect::<String>(), "journalctl");
                    }
                }
            });
        }
        if let Some(stdout) = child.stdout.take() {
            let mut lines = crate::lines::LineReader::new(stdout, MAX_LINE * 8);
            loop {
                let line = match lines.next_line() {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read journalctl's output");
                        break;
                    }
                };
                let now = now_ms();
                if line.truncated {
                    shared.unparsed(Unparsed::TooLong, now, shared.position());
                    continue;
                }
                let entry: Entry = match serde_json::from_slice(line.bytes) {
                    Ok(entry) => entry,
                    Err(_) => {
                        shared.unparsed(Unparsed::Unmatched, now, shared.position());
                        continue;
                    }
                };
                let time = entry
                    .realtime
                    .as_deref()
                    .and_then(|t| t.parse::<i64>().ok())
                    .map_or(now, |us| us / 1000);
                let position = match &entry.cursor {
                    Some(c) => {
                        cursor = Some(c.clone());
                        Position::Journal { cursor: c.clone() }
                    }
                    None => shared.position(),
                };
                match message_bytes(entry.message) {
                    Some(bytes) => match std::str::from_utf8(&bytes) {
                        Ok(text) => shared.line(|| parse::message(text), time, position),
                        Err(_) => shared.unparsed(Unparsed::InvalidUtf8, time, position),
                    },
                    None => shared.unparsed(Unparsed::TooLong, time, position),
                }
            }
        }
        let status = child.wait();
        shared.set_child(None);
        if shared.shutdown.is_cancelled() {
            return;
        }
        tracing::error!(status = ?status.ok(), "journalctl stopped; running it again in 5 s");
        sleep_unless_shutdown(shared, Duration::from_secs(5));
    }
}

/// A journal field's bytes: a string, or an array of bytes (non-UTF-8 or
/// binary data); `None` when journalctl left it out (too large).
fn message_bytes(value: Option<serde_json::Value>) -> Option<Vec<u8>> {
    match value? {
        serde_json::Value::String(s) => Some(s.into_bytes()),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect(),
        _ => None,
    }
}

fn sleep_unless_shutdown(shared: &Shared, total: Duration) {
    let step = Duration::from_millis(100);
    let mut left = total;
    while !left.is_zero() && !shared.shutdown.is_cancelled() {
        std::thread::sleep(step.min(left));
        left = left.saturating_sub(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(Result<Vec<u8>, Unparsed>, u64)> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        let mut offset = 0;
        for chunk in chunks {
            s.feed(chunk, offset, |line, end| {
                out.push((line.map(<[u8]>::to_vec), end))
            });
            offset += chunk.len() as u64;
        }
        out
    }

    #[test]
    fn a_line_split_across_reads_is_one_line_with_its_end_offset() {
        let out = split(&[b"INFO a\nINFO m", b"atch\n", b"tail"]);
        assert_eq!(
            out,
            vec![
                (Ok(b"INFO a".to_vec()), 7),
                (Ok(b"INFO match".to_vec()), 18),
            ]
        );
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_skipped() {
        let long = vec![b'x'; MAX_LINE + 10];
        let mut data = long.clone();
        data.extend_from_slice(b"\nINFO ok\n");
        let out = split(&[&long[..MAX_LINE / 2], &data[MAX_LINE / 2..]]);
        assert_eq!(
            out.len(),
            2,
            "{:?}",
            out.iter().map(|(l, e)| (l.is_ok(), *e)).collect::<Vec<_>>()
        );
        assert_eq!(out[0].0, Err(Unparsed::TooLong));
        assert_eq!(out[1].0, Ok(b"INFO ok".to_vec()));
    }

    #[test]
    fn journal_arguments_resume_after_the_cursor_or_start_at_the_end() {
        let fresh = journal_args("reaction.service", None, None);
        assert!(fresh.contains(&"--lines=0".to_owned()));
        assert!(fresh.contains(&"_SYSTEMD_UNIT=reaction.service".to_owned()));
        let resumed = journal_args("r.service", Some(Path::new("/j")), Some("s=1"));
        assert!(resumed.contains(&"--after-cursor=s=1".to_owned()));
        assert!(resumed.contains(&"--directory=/j".to_owned()));
    }

    #[test]
    fn journal_messages_may_be_byte_arrays() {
        assert_eq!(
            message_bytes(Some(serde_json::json!([73, 78, 255]))),
            Some(vec![73, 78, 255])
        );
        assert_eq!(message_bytes(Some(serde_json::Value::Null)), None);
    }
}
