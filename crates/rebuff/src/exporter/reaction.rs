//! The `reaction` program the exporter asks: `-V`, `test-config`, `show`.
//!
//! Receives the calls the collector and the scrape make; sends back their
//! parsed answers: the pattern names of every filter (from
//! `test-config`), the version label (from `-V`), the pending actions
//! (from `show`). Every call runs `reaction` from `PATH` as an argv (no
//! shell), under a timeout after which the child is killed; failures and
//! timeouts are counted by command in [`Calls`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::tree::{Node, Value};

/// The calls, for `rebuff_exporter_reaction_calls_total{command,result}`.
pub const COMMANDS: [&str; 3] = ["version", "show", "test-config"];
pub const RESULTS: [&str; 3] = ["ok", "failed", "timeout"];

/// Counts of calls by command and result.
#[derive(Debug, Default)]
pub struct Calls {
    counts: [[AtomicU64; 3]; 3],
}

impl Calls {
    fn count(&self, command: usize, result: usize) {
        self.counts[command][result].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, command: usize, result: usize) -> u64 {
        self.counts[command][result].load(Ordering::Relaxed)
    }
}

/// Why a call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot run `reaction` (is it on PATH?): {0}")]
    Spawn(std::io::Error),
    #[error("`reaction {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("`reaction {args}` did not answer within {timeout:?}; it was killed")]
    Timeout { args: String, timeout: Duration },
}

/// Runs `reaction ARGS…`; its stdout when it exits 0.
pub async fn call(
    calls: &Calls,
    command: usize,
    args: &[&std::ffi::OsStr],
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let shown = || {
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let child = tokio::process::Command::new("reaction")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            calls.count(command, 1);
            return Err(CallError::Spawn(e));
        }
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            calls.count(command, 2);
            Err(CallError::Timeout {
                args: shown(),
                timeout,
            })
        }
        Ok(Err(e)) => {
            calls.count(command, 1);
            Err(CallError::Spawn(e))
        }
        Ok(Ok(output)) if output.status.success() => {
            calls.count(command, 0);
            Ok(output.stdout)
        }
        Ok(Ok(output)) => {
            calls.count(command, 1);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr: String = stderr.trim().chars().take(500).collect();
            Err(CallError::Failed {
                args: shown(),
                status: output.status.to_string(),
                stderr,
            })
        }
    }
}

/// The `reaction -V` label: the second space-separated word, stripped;
/// the whole output when there is no second word (as the exporter does).
pub fn version_label(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    match text.split(' ').nth(1) {
        Some(word) => crate::exporter::parse::py_strip(word).to_owned(),
        None => text.into_owned(),
    }
}

/// Pattern names of every filter: `"stream\0filter"` -> sorted, distinct
/// `<name>`s of its regexes.
pub type Patterns = HashMap<String, Arc<[String]>>;

/// The key of a filter in [`Patterns`].
pub fn filter_key(buf: &mut String, stream: &str, filter: &str) {
    buf.clear();
    buf.push_str(stream);
    buf.push('\0');
    buf.push_str(filter);
}

/// Parses the YAML `test-config` printed.
pub fn parse_patterns(stdout: &[u8]) -> Result<Patterns, String> {
    let tree = parse_document(stdout, "reaction test-config")?;
    let mut patterns = Patterns::new();
    let Some(streams) = map_get(&tree, "streams").and_then(as_map) else {
        return Ok(patterns);
    };
    let placeholder = regex::Regex::new(r"<(\w+)>").map_err(|e| e.to_string())?;
    let mut key = String::new();
    for (stream, node) in streams {
        let Some(filters) = map_get(node, "filters").and_then(as_map) else {
            continue;
        };
        for (filter, node) in filters {
            let mut names: Vec<String> = Vec::new();
            // A plain string instead of a list yields no pattern, as for
            // the exporter (which iterates its characters).
            if let Some(Node {
                value: Value::Seq(regexes),
                ..
            }) = map_get(node, "regex")
            {
                for regex in regexes {
                    if let Value::Str(text) = &regex.value {
                        names.extend(placeholder.captures_iter(text).map(|c| c[1].to_owned()));
                    }
                }
            } else if map_get(node, "regex").is_none() {
                // No regex key at all: the exporter cannot find the filter.
                continue;
            }
            names.sort();
            names.dedup();
            filter_key(&mut key, &stream.name, &filter.name);
            patterns.insert(key.clone(), names.into());
        }
    }
    Ok(patterns)
}

/// One pending action of `show`: labels and the number of pending action
/// names of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub stream: String,
    pub filter: String,
    pub action: String,
    /// The key's values, split on spaces.
    pub values: Vec<String>,
    pub count: u64,
}

/// Parses `show`'s YAML: `stream -> filter -> key -> {actions: {name: …}}`.
/// Entries of another shape are skipped; their number is returned too.
pub fn parse_show(stdout: &[u8]) -> Result<(Vec<Pending>, u64), String> {
    let tree = parse_document(stdout, "reaction show")?;
    let mut out = Vec::new();
    let mut skipped = 0;
    let Some(streams) = as_map(&tree) else {
        return Err("`reaction show` did not print a mapping".into());
    };
    for (stream, filters) in streams {
        let Some(filters) = as_map(filters) else {
            skipped += 1;
            continue;
        };
        for (filter, keys) in filters {
            let Some(keys) = as_map(keys) else {
                skipped += 1;
                continue;
            };
            for (key, entry) in keys {
                let Some(entry) = as_map(entry) else {
                    skipped += 1;
                    continue;
                };
                let Some((_, actions)) = entry.iter().find(|(k, _)| k.name == "actions") else {
                    continue;
                };
                let Some(actions) = as_map(actions) else {
                    skipped += 1;
                    continue;
                };
                let values: Vec<String> = key.name.split(' ').map(str::to_owned).collect();
                for (action, _) in actions {
                    out.push(Pending {
                        stream: stream.name.clone(),
                        filter: filter.name.clone(),
                        action: action.name.clone(),
                        values: values.clone(),
                        count: actions.len() as u64,
                    });
                }
            }
        }
    }
    Ok((out, skipped))
}

type Entries = [(crate::config::tree::Key, Node)];

fn as_map(node: &Node) -> Option<&Entries> {
    match &node.value {
        Value::Map(entries) => Some(entries),
        _ => None,
    }
}

fn map_get<'n>(node: &'n Node, name: &str) -> Option<&'n Node> {
    as_map(node)?
        .iter()
        .find(|(k, _)| k.name == name)
        .map(|(_, v)| v)
}

fn parse_document(stdout: &[u8], what: &str) -> Result<Node, String> {
    let text =
        std::str::from_utf8(stdout).map_err(|_| format!("`{what}` printed invalid UTF-8"))?;
    let mut budget = crate::config::Budget::with_tree_limit(crate::config::MAX_TREE_BYTES);
    crate::config::yaml::parse_yaml_within(Path::new(what), text, &mut budget)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_the_sorted_distinct_placeholders_of_each_filter() {
        let yaml = br#"
patterns:
  ip: {regex: '[0-9.]+'}
streams:
  ssh:
    cmd: [tail]
    filters:
      two:
        regex:
          - 'user <user> from <ip>'
          - 'from <ip> again'
      flat:
        regex: 'from <ip>'
"#;
        let patterns = parse_patterns(yaml).expect("parses");
        assert_eq!(
            &*patterns["ssh\0two"],
            &["ip".to_owned(), "user".to_owned()]
        );
        assert!(patterns["ssh\0flat"].is_empty());
    }

    #[test]
    fn show_gives_one_pending_series_per_action_name_with_the_name_count() {
        let yaml = br#"
ssh:
  failedlogin:
    203.0.113.7:
      matches: 1
      actions:
        unban: ["2026-01-01 12:00:00"]
        notify: ["2026-01-01 12:00:00", "x"]
    2001:db8::5:
      matches: 2
    "1234":
      actions: [not, a, map]
"#;
        let (pending, skipped) = parse_show(yaml).expect("parses");
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].action, "unban");
        assert_eq!(pending[0].count, 2);
        assert_eq!(pending[0].values, vec!["203.0.113.7".to_owned()]);
        assert_eq!(skipped, 1);
        assert_eq!(parse_show(b"{}").expect("empty").0, vec![]);
    }

    #[test]
    fn the_version_label_is_the_second_word_or_everything() {
        assert_eq!(version_label(b"reaction 2.2.0\n"), "2.2.0");
        assert_eq!(version_label(b"0.0.0-fake\n"), "0.0.0-fake\n");
    }
}
