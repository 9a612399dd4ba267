//! The exporter's state file: unexported counts and the log position,
//! kept across restarts for 15 minutes (the exporter's window).
//!
//! Receives a snapshot of the [`Collector`] (taken under its lock, so the
//! counts and the position always agree); writes it as one JSON document,
//! atomically (temporary file, fsync, rename). At start, [`restore`] puts
//! back the position when the last line read is less than 15 minutes old,
//! and the counts when the last scrape is, as the exporter does with its
//! pickles. A missing, unreadable or foreign file is a fresh start (said
//! once in the log), never a failure.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::collect::{Collector, LastMatch, Position};
use super::parse::StreamKind;

/// The exporter's window: older state is not recalled.
pub const WINDOW_MS: i64 = 15 * 60 * 1000;

const FORMAT: &str = "rebuff-exporter-state";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    format: String,
    version: u32,
    /// What the position belongs to (a file path or a unit), so that a
    /// changed configuration does not resume at a foreign offset.
    source: String,
    last_log: i64,
    wait_until: i64,
    last_export: i64,
    position: Position,
    matches: Vec<(Vec<String>, u64)>,
    actions: Vec<(Vec<String>, u64)>,
    commands: Vec<([String; 4], u64)>,
    streams: Vec<(String, String, u64)>,
    last_match: Vec<(String, Vec<String>, Vec<String>)>,
}

/// The collector's state as the bytes of the file.
pub fn snapshot(c: &Collector, source: &str) -> Vec<u8> {
    let table = |entries: &[(Box<[u8]>, u64)]| {
        entries
            .iter()
            .map(|(k, n)| {
                let parts = super::collect::key_parts(k);
                (parts.into_iter().map(str::to_owned).collect(), *n)
            })
            .collect()
    };
    let saved = Saved {
        format: FORMAT.into(),
        version: VERSION,
        source: source.to_owned(),
        last_log: c.last_log,
        wait_until: c.wait_until,
        last_export: c.last_export,
        position: c.position.clone(),
        matches: table(&c.matches.entries),
        actions: table(&c.actions.entries),
        commands: c.commands.clone(),
        streams: c
            .streams
            .iter()
            .map(|((s, k), n)| (s.clone(), k.name().to_owned(), *n))
            .collect(),
        last_match: c
            .last_match
            .iter()
            .map(|(k, m)| (k.clone(), m.names.to_vec(), m.values.clone()))
            .collect(),
    };
    serde_json::to_vec(&saved).unwrap_or_default()
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// What [`restore`] put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    Nothing,
    /// The position (to resume from) and whether the counts came back.
    Resumed {
        counts: bool,
    },
    /// Too old: only what the exporter keeps regardless (stream events).
    Expired,
}

/// Loads `path` into `c` (see the module docs). `now` in ms.
pub fn restore(c: &mut Collector, path: &Path, source: &str, now: i64) -> Restored {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Restored::Nothing,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the exporter's state; starting afresh");
            return Restored::Nothing;
        }
    };
    let saved: Saved = match serde_json::from_slice(&bytes) {
        Ok(saved) => saved,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the exporter's state file is not readable; starting afresh");
            return Restored::Nothing;
        }
    };
    if saved.format != FORMAT || saved.version != VERSION {
        tracing::warn!(file = %path.display(), "the exporter's state file has another format; starting afresh");
        return Restored::Nothing;
    }
    let recall = |t: i64| now - WINDOW_MS < t;
    c.wait_until = saved.wait_until;
    c.last_export = saved.last_export;
    for (stream, kind, n) in saved.streams {
        if let Some(kind) = StreamKind::from_name(&kind) {
            c.streams.push(((stream, kind), n));
        }
    }
    for (key, names, values) in saved.last_match {
        c.last_match.insert(
            key,
            LastMatch {
                names: names.into(),
                values,
            },
        );
    }
    let counts = recall(saved.last_export);
    if counts {
        let max = usize::MAX;
        for (parts, n) in &saved.matches {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            c.matches.add(&parts, *n, max);
        }
        for (parts, n) in &saved.actions {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            c.actions.add(&parts, *n, max);
        }
        c.commands = saved.commands;
    }
    if recall(saved.last_log) && saved.source == source {
        c.last_log = saved.last_log;
        c.position = saved.position;
        Restored::Resumed { counts }
    } else {
        Restored::Expired
    }
}
