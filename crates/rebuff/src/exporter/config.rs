//! The exporter's configuration file: reaction-metrics-exporter 1.0.1's
//! schema, its defaults, and rebuff's optional additions.
//!
//! Receives a YAML or JSON file (or nothing: the defaults); returns an
//! [`ExporterConfig`] and the validated document with its defaults filled
//! in, which `test-config` prints as the exporter does. Errors name the
//! file, line, column and key path. rebuff's additions are keys the
//! exporter's files do not have (`state_file`, `listen.web_config`,
//! `reaction.timeout`, `reaction.journal_directory`, `metrics.max_series`);
//! they appear in the printed document only when written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value as Json, json};

use crate::config::tree::{Loc, Node, Value};
use crate::log::LogLevel;

/// The exporter's defaults, as `defaults` prints them.
pub fn defaults() -> Json {
    json!({
        "listen": {"address": "127.0.0.1", "port": 8080},
        "loglevel": "INFO",
        "metrics": {
            "all": {},
            "export": {
                "actions": {"extra": true},
                "commands": null,
                "matches": {"extra": true},
                "pending": {"extra": true},
                "streams": null
            },
            "for": {}
        },
        "reaction": {
            "config": "/etc/reaction",
            "hold": 60,
            "logs": {"systemd": "reaction.service"},
            "socket": "/run/reaction/reaction.sock"
        }
    })
}

/// Default bound on the series of each pattern-labelled family.
pub const DEFAULT_MAX_SERIES: usize = 200_000;

/// Default time a `reaction` call may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    /// `journalctl` on this unit, optionally over a journal directory.
    Journal {
        unit: String,
        directory: Option<PathBuf>,
    },
    File(PathBuf),
}

/// What a pattern's value becomes in labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRule {
    Raw,
    Drop,
    Template(String),
}

/// Whether a pattern-labelled family is exported, and with pattern labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub on: bool,
    pub extra: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    pub matches: Switch,
    pub actions: Switch,
    pub pending: Switch,
    pub commands: bool,
    pub streams: bool,
    pub internals: bool,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ExporterConfig {
    pub loglevel: LogLevel,
    /// `address:port`, IPv6 addresses bracketed.
    pub listen: String,
    pub web_config: Option<PathBuf>,
    pub reaction_config: PathBuf,
    pub source: LogSource,
    pub socket: PathBuf,
    /// Seconds of log time after a start command during which actions are
    /// not counted (may be negative, as Python allows).
    pub hold: i64,
    pub timeout: Duration,
    pub all: BTreeMap<String, LabelRule>,
    pub per_filter: BTreeMap<String, BTreeMap<String, BTreeMap<String, LabelRule>>>,
    pub export: Export,
    pub max_series: usize,
    pub state_file: PathBuf,
    /// The validated document with defaults (what `test-config` prints).
    pub document: Json,
}

impl ExporterConfig {
    /// The rules of one filter's patterns: `metrics.all`, overridden by
    /// `metrics.for.STREAM.FILTER`.
    pub fn rules(&self, stream: &str, filter: &str) -> BTreeMap<String, LabelRule> {
        let mut rules = self.all.clone();
        if let Some(local) = self.per_filter.get(stream).and_then(|f| f.get(filter)) {
            rules.extend(local.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        rules
    }
}

/// One configuration error, already located.
pub type Errors = Vec<String>;

struct Walk {
    errors: Errors,
}

fn at(loc: &Loc, path: &str, message: impl std::fmt::Display) -> String {
    format!("{loc}: {path}: {message}")
}

impl Walk {
    fn error(&mut self, loc: &Loc, path: &str, message: impl std::fmt::Display) {
        self.errors.push(at(loc, path, message));
    }

    /// The entries of a map node, or an error.
    fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
    ) -> Option<&'n [(crate::config::tree::Key, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            other => {
                self.error(
                    &node.loc,
                    path,
                    format!("expected a map, found {}", other.kind_name()),
                );
                None
            }
        }
    }

    /// Reports keys outside `accepted`.
    fn keys(
        &mut self,
        entries: &[(crate::config::tree::Key, Node)],
        path: &str,
        accepted: &[&str],
    ) {
        for (key, _) in entries {
            if !accepted.contains(&key.name.as_str()) {
                let full = join(path, &key.name);
                self.error(
                    &key.loc,
                    &full,
                    format!("unknown key; accepted here: {}", accepted.join(", ")),
                );
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            other => {
                self.error(
                    &node.loc,
                    path,
                    format!("expected a string, found {}", other.kind_name()),
                );
                None
            }
        }
    }

    fn int(&mut self, node: &Node, path: &str) -> Option<i64> {
        match &node.value {
            Value::Int(i) => Some(*i),
            // Python's bool is an int.
            Value::Bool(b) => Some(i64::from(*b)),
            other => {
                self.error(
                    &node.loc,
                    path,
                    format!("expected an integer, found {}", other.kind_name()),
                );
                None
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn get<'n>(entries: &'n [(crate::config::tree::Key, Node)], name: &str) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v)
}

/// Reads and validates a configuration file (YAML, or JSON by extension).
pub fn load(path: &Path) -> Result<ExporterConfig, Errors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![format!(
            "{}: cannot read the exporter's configuration: {e}",
            path.display()
        )]
    })?;
    let node = if path.extension().is_some_and(|e| e == "json") {
        crate::config::json::parse_json(path, &text)
    } else {
        crate::config::yaml::parse_yaml(path, &text)
    }
    .map_err(|e| vec![e.to_string()])?;
    // An empty document is the defaults, as for the exporter.
    let node = match node.value {
        Value::Null => Node {
            value: Value::Map(Vec::new()),
            loc: node.loc,
        },
        _ => node,
    };
    validate(&node)
}

/// The configuration without a file.
pub fn from_defaults() -> ExporterConfig {
    let node = Node {
        value: Value::Map(Vec::new()),
        loc: Loc::file_only(crate::config::tree::shared_path(Path::new("(defaults)"))),
    };
    // The defaults are valid, except that /etc/reaction may be missing;
    // that is reported when reaction is first asked about it.
    validate_inner(&node, false).unwrap_or_else(|_| unreachable_defaults())
}

fn unreachable_defaults() -> ExporterConfig {
    // validate_inner without the path check cannot fail on an empty map;
    // this keeps the code panic-free all the same.
    ExporterConfig {
        loglevel: LogLevel::Info,
        listen: "127.0.0.1:8080".into(),
        web_config: None,
        reaction_config: "/etc/reaction".into(),
        source: LogSource::Journal {
            unit: "reaction.service".into(),
            directory: None,
        },
        socket: "/run/reaction/reaction.sock".into(),
        hold: 60,
        timeout: DEFAULT_TIMEOUT,
        all: BTreeMap::new(),
        per_filter: BTreeMap::new(),
        export: Export {
            matches: Switch {
                on: true,
                extra: true,
            },
            actions: Switch {
                on: true,
                extra: true,
            },
            pending: Switch {
                on: true,
                extra: true,
            },
            commands: true,
            streams: true,
            internals: false,
        },
        max_series: DEFAULT_MAX_SERIES,
        state_file: default_state_file(),
        document: defaults(),
    }
}

/// Validates a parsed document.
pub fn validate(node: &Node) -> Result<ExporterConfig, Errors> {
    validate_inner(node, true)
}

/// `$STATE_DIRECTORY/exporter.state` under systemd, else in the working
/// directory (where the exporter keeps its pickles).
fn default_state_file() -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several directories, colon-separated.
        Some(dirs) => {
            let first = dirs
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned();
            Path::new(&first).join("exporter.state")
        }
        None => PathBuf::from("rebuff-exporter.state"),
    }
}

fn validate_inner(node: &Node, check_paths: bool) -> Result<ExporterConfig, Errors> {
    let mut w = Walk { errors: Vec::new() };
    let mut config = unreachable_defaults();
    let mut doc = defaults();
    let Some(root) = w.map(node, "(root)") else {
        return Err(w.errors);
    };
    w.keys(
        root,
        "",
        &["loglevel", "listen", "reaction", "metrics", "state_file"],
    );

    if let Some(n) = get(root, "loglevel")
        && let Some(level) = w.string(n, "loglevel")
    {
        match level.to_uppercase().as_str() {
            "DEBUG" => config.loglevel = LogLevel::Debug,
            "INFO" => config.loglevel = LogLevel::Info,
            "WARNING" => config.loglevel = LogLevel::Warn,
            "ERROR" => config.loglevel = LogLevel::Error,
            _ => w.error(
                &n.loc,
                "loglevel",
                "expected one of DEBUG, INFO, WARNING, ERROR",
            ),
        }
        doc["loglevel"] = Json::String(level);
    }
    if let Some(n) = get(root, "state_file")
        && let Some(path) = w.string(n, "state_file")
    {
        config.state_file = PathBuf::from(&path);
        doc["state_file"] = Json::String(path);
    }

    let mut address = "127.0.0.1".to_owned();
    let mut port = 8080i64;
    if let Some(n) = get(root, "listen")
        && let Some(listen) = w.map(n, "listen")
    {
        w.keys(listen, "listen", &["address", "port", "web_config"]);
        if let Some(n) = get(listen, "address")
            && let Some(a) = w.string(n, "listen.address")
        {
            address = a;
        }
        if let Some(n) = get(listen, "port")
            && let Some(p) = w.int(n, "listen.port")
        {
            if !(0..=65535).contains(&p) {
                w.error(&n.loc, "listen.port", "expected a port number (0 to 65535)");
            }
            port = p;
        }
        if let Some(n) = get(listen, "web_config")
            && let Some(p) = w.string(n, "listen.web_config")
        {
            config.web_config = Some(PathBuf::from(&p));
            doc["listen"]["web_config"] = Json::String(p);
        }
    }
    doc["listen"]["address"] = Json::String(address.clone());
    doc["listen"]["port"] = json!(port);
    config.listen = if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };

    if let Some(n) = get(root, "reaction")
        && let Some(reaction) = w.map(n, "reaction")
    {
        reaction_section(&mut w, reaction, &mut config, &mut doc, check_paths);
    }
    if let Some(n) = get(root, "metrics")
        && let Some(metrics) = w.map(n, "metrics")
    {
        metrics_section(&mut w, metrics, &mut config, &mut doc);
    }
    if w.errors.is_empty() {
        config.document = doc;
        Ok(config)
    } else {
        Err(w.errors)
    }
}

fn reaction_section(
    w: &mut Walk,
    reaction: &[(crate::config::tree::Key, Node)],
    config: &mut ExporterConfig,
    doc: &mut Json,
    check_paths: bool,
) {
    w.keys(
        reaction,
        "reaction",
        &[
            "config",
            "logs",
            "socket",
            "hold",
            "timeout",
            "journal_directory",
        ],
    );
    if let Some(n) = get(reaction, "config")
        && let Some(path) = w.string(n, "reaction.config")
    {
        if check_paths && !Path::new(&path).exists() {
            w.error(
                &n.loc,
                "reaction.config",
                format!("{path} does not exist: give the file or directory you pass to `reaction start -c`"),
            );
        }
        config.reaction_config = PathBuf::from(&path);
        doc["reaction"]["config"] = Json::String(path);
    }
    let mut directory = None;
    if let Some(n) = get(reaction, "journal_directory")
        && let Some(path) = w.string(n, "reaction.journal_directory")
    {
        directory = Some(PathBuf::from(&path));
        doc["reaction"]["journal_directory"] = Json::String(path);
    }
    config.source = LogSource::Journal {
        unit: "reaction.service".into(),
        directory: directory.clone(),
    };
    if let Some(n) = get(reaction, "logs")
        && let Some(logs) = w.map(n, "reaction.logs")
    {
        match logs {
            [] => {}
            [(key, value)] if key.name == "systemd" || key.name == "file" => {
                let path = format!("reaction.logs.{}", key.name);
                let text = match &value.value {
                    Value::Null => Some(if key.name == "systemd" {
                        "reaction.service".to_owned()
                    } else {
                        "/var/log/reaction.log".to_owned()
                    }),
                    _ => w.string(value, &path),
                };
                if let Some(text) = text {
                    doc["reaction"]["logs"] = json!({ key.name.clone(): text.clone() });
                    config.source = if key.name == "systemd" {
                        LogSource::Journal {
                            unit: text,
                            directory,
                        }
                    } else {
                        LogSource::File(PathBuf::from(text))
                    };
                }
            }
            _ => w.error(
                &n.loc,
                "reaction.logs",
                "expected exactly one of `systemd: UNIT` or `file: PATH`",
            ),
        }
    }
    if let Some(n) = get(reaction, "socket")
        && let Some(socket) = w.string(n, "reaction.socket")
    {
        config.socket = PathBuf::from(&socket);
        doc["reaction"]["socket"] = Json::String(socket);
    }
    if let Some(n) = get(reaction, "hold")
        && let Some(hold) = w.int(n, "reaction.hold")
    {
        config.hold = hold;
        doc["reaction"]["hold"] = json!(hold);
    }
    if let Some(n) = get(reaction, "timeout") {
        let seconds = match n.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        };
        match seconds {
            Some(s) if s > 0.0 && s <= 600.0 => {
                config.timeout = Duration::from_secs_f64(s);
                doc["reaction"]["timeout"] = json!(s);
            }
            _ => w.error(
                &n.loc,
                "reaction.timeout",
                "expected seconds, more than 0 and at most 600",
            ),
        }
    }
}

fn metrics_section(
    w: &mut Walk,
    metrics: &[(crate::config::tree::Key, Node)],
    config: &mut ExporterConfig,
    doc: &mut Json,
) {
    w.keys(metrics, "metrics", &["all", "for", "export", "max_series"]);
    if let Some(n) = get(metrics, "max_series")
        && let Some(max) = w.int(n, "metrics.max_series")
    {
        if max < 1 {
            w.error(&n.loc, "metrics.max_series", "expected at least 1");
        }
        config.max_series = max.max(1) as usize;
        doc["metrics"]["max_series"] = json!(max);
    }
    if let Some(n) = get(metrics, "all")
        && let Some(all) = w.map(n, "metrics.all")
    {
        let mut out = Map::new();
        for (key, value) in all {
            let path = format!("metrics.all.{}", key.name);
            if let Some((rule, json)) = label_rule(w, value, &path) {
                config.all.insert(key.name.clone(), rule);
                out.insert(key.name.clone(), json);
            }
        }
        doc["metrics"]["all"] = Json::Object(out);
    }
    if let Some(n) = get(metrics, "for")
        && let Some(streams) = w.map(n, "metrics.for")
    {
        let mut out = Map::new();
        for (stream, filters) in streams {
            let spath = format!("metrics.for.{}", stream.name);
            let Some(filters) = w.map(filters, &spath) else {
                continue;
            };
            let mut fout = Map::new();
            for (filter, patterns) in filters {
                let fpath = format!("{spath}.{}", filter.name);
                let Some(patterns) = w.map(patterns, &fpath) else {
                    continue;
                };
                let mut pout = Map::new();
                for (pattern, value) in patterns {
                    let path = format!("{fpath}.{}", pattern.name);
                    if let Some((rule, json)) = label_rule(w, value, &path) {
                        config
                            .per_filter
                            .entry(stream.name.clone())
                            .or_default()
                            .entry(filter.name.clone())
                            .or_default()
                            .insert(pattern.name.clone(), rule);
                        pout.insert(pattern.name.clone(), json);
                    }
                }
                fout.insert(filter.name.clone(), Json::Object(pout));
            }
            out.insert(stream.name.clone(), Json::Object(fout));
        }
        doc["metrics"]["for"] = Json::Object(out);
    }
    if let Some(n) = get(metrics, "export")
        && let Some(export) = w.map(n, "metrics.export")
    {
        w.keys(
            export,
            "metrics.export",
            &[
                "matches",
                "actions",
                "pending",
                "commands",
                "streams",
                "internals",
            ],
        );
        for (name, slot) in [
            ("matches", &mut config.export.matches),
            ("actions", &mut config.export.actions),
            ("pending", &mut config.export.pending),
        ] {
            let Some(n) = get(export, name) else {
                continue;
            };
            let path = format!("metrics.export.{name}");
            let (switch, json) = match &n.value {
                Value::Null => (
                    Switch {
                        on: true,
                        extra: true,
                    },
                    json!({"extra": true}),
                ),
                Value::Bool(false) => (
                    Switch {
                        on: false,
                        extra: false,
                    },
                    json!(false),
                ),
                // The exporter keeps `true` as is (and then fails on it);
                // it means "on, with labels" here.
                Value::Bool(true) => (
                    Switch {
                        on: true,
                        extra: true,
                    },
                    json!(true),
                ),
                Value::Map(entries) => {
                    w.keys(entries, &path, &["extra"]);
                    let extra = match get(entries, "extra") {
                        None => true,
                        Some(Node {
                            value: Value::Bool(b),
                            ..
                        }) => *b,
                        Some(other) => {
                            w.error(
                                &other.loc,
                                &format!("{path}.extra"),
                                format!(
                                    "expected true or false, found {}",
                                    other.value.kind_name()
                                ),
                            );
                            true
                        }
                    };
                    (Switch { on: true, extra }, json!({ "extra": extra }))
                }
                other => {
                    w.error(
                        &n.loc,
                        &path,
                        format!(
                            "expected nothing, true, false or {{extra: BOOL}}, found {}",
                            other.kind_name()
                        ),
                    );
                    continue;
                }
            };
            *slot = switch;
            doc["metrics"]["export"][name] = json;
        }
        for name in ["commands", "streams", "internals"] {
            let Some(n) = get(export, name) else {
                continue;
            };
            let value = match n.value {
                Value::Null => None,
                Value::Bool(b) => Some(b),
                ref other => {
                    w.error(
                        &n.loc,
                        &format!("metrics.export.{name}"),
                        format!(
                            "expected nothing, true or false, found {}",
                            other.kind_name()
                        ),
                    );
                    continue;
                }
            };
            match name {
                // Present or absent, only `false` turns these off.
                "commands" => config.export.commands = value != Some(false),
                "streams" => config.export.streams = value != Some(false),
                // The exporter turns its internals on for `true` only.
                _ => config.export.internals = value == Some(true),
            }
            doc["metrics"]["export"][name] = value.map_or(Json::Null, Json::Bool);
        }
    }
}

/// A label rule: nothing or `true` (as is), `false` (left out), a template.
fn label_rule(w: &mut Walk, node: &Node, path: &str) -> Option<(LabelRule, Json)> {
    match &node.value {
        Value::Null => Some((LabelRule::Raw, Json::Null)),
        Value::Bool(true) => Some((LabelRule::Raw, Json::Bool(true))),
        Value::Bool(false) => Some((LabelRule::Drop, Json::Bool(false))),
        Value::Str(template) => {
            let pattern = path.rsplit('.').next().unwrap_or("");
            if let Err(e) = crate::metrics::labels::compile_check(pattern, template) {
                // The exporter accepts the file and drops the label at
                // each match; so does rebuff, saying so once here.
                tracing::warn!(
                    key = path,
                    error = %e,
                    "a label template does not compile; that label is left out"
                );
                return Some((LabelRule::Drop, Json::String(template.clone())));
            }
            Some((
                LabelRule::Template(template.clone()),
                Json::String(template.clone()),
            ))
        }
        other => {
            w.error(
                &node.loc,
                path,
                format!(
                    "expected a template string, true, false or nothing, found {}",
                    other.kind_name()
                ),
            );
            None
        }
    }
}

/// `json.dumps(doc, sort_keys=True, indent=4)`.
pub fn to_json(doc: &Json) -> String {
    let sorted = sort(doc);
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    let _ = serde::Serialize::serialize(&sorted, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}

fn sort(doc: &Json) -> Json {
    match doc {
        Json::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Json::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sort(&map[k])))
                    .collect(),
            )
        }
        Json::Array(items) => Json::Array(items.iter().map(sort).collect()),
        other => other.clone(),
    }
}

/// The document as block YAML, keys sorted.
pub fn to_yaml(doc: &Json) -> String {
    let mut out = String::new();
    yaml_value(&sort(doc), 0, &mut out);
    out
}

fn yaml_value(value: &Json, indent: usize, out: &mut String) {
    let Json::Object(map) = value else {
        return;
    };
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&yaml_scalar_text(key));
        out.push(':');
        match value {
            Json::Object(inner) if inner.is_empty() => out.push_str(" {}\n"),
            Json::Object(_) => {
                out.push('\n');
                yaml_value(value, indent + 2, out);
            }
            Json::Null => out.push('\n'),
            Json::String(s) => {
                out.push(' ');
                out.push_str(&yaml_scalar_text(s));
                out.push('\n');
            }
            other => {
                out.push(' ');
                out.push_str(&other.to_string());
                out.push('\n');
            }
        }
    }
}

/// A string as a plain YAML scalar when that reads back as the same
/// string, double-quoted (JSON escapes) otherwise.
fn yaml_scalar_text(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-' | '@'))
        && !s.starts_with(['-', '.', '@'])
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
        );
    if plain {
        s.to_owned()
    } else {
        Json::String(s.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ExporterConfig, Errors> {
        let node =
            crate::config::yaml::parse_yaml(Path::new("exporter.yml"), text).expect("parses");
        validate(&node)
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config = parse("").expect("valid");
        // /etc/reaction need not exist for an empty file to be read: only a
        // written `reaction.config` is checked.
        assert_eq!(config.document, defaults());
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(
            config.source,
            LogSource::Journal {
                unit: "reaction.service".into(),
                directory: None
            }
        );
        assert!(config.export.commands && !config.export.internals);
    }

    #[test]
    fn null_and_false_switches_read_as_the_exporter_reads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "reaction:\n  config: {}\n  logs:\n    file:\nmetrics:\n  export:\n    matches: false\n    actions: {{extra: false}}\n    commands:\n    internals:\n  all:\n    ip: false\n  for:\n    ssh:\n      failed:\n        ip: \"{{{{ ip }}}}\"\n",
            dir.path().display()
        );
        let config = parse(&text).expect("valid");
        assert_eq!(
            config.source,
            LogSource::File("/var/log/reaction.log".into())
        );
        assert!(!config.export.matches.on);
        assert_eq!(
            config.export.actions,
            Switch {
                on: true,
                extra: false
            }
        );
        assert!(config.export.commands);
        assert!(
            !config.export.internals,
            "only `internals: true` turns them on"
        );
        let doc = &config.document;
        assert_eq!(doc["metrics"]["export"]["matches"], json!(false));
        assert_eq!(doc["metrics"]["export"]["internals"], Json::Null);
        assert_eq!(doc["metrics"]["export"]["pending"], json!({"extra": true}));
        assert_eq!(
            doc["reaction"]["logs"],
            json!({"file": "/var/log/reaction.log"})
        );
        assert_eq!(
            config.rules("ssh", "failed").get("ip"),
            Some(&LabelRule::Template("{{ ip }}".into()))
        );
        assert_eq!(
            config.rules("ssh", "other").get("ip"),
            Some(&LabelRule::Drop)
        );
    }

    #[test]
    fn errors_name_the_place_and_the_key_path() {
        let errors = parse(
            "listen:\n  port: eighty\nreaction:\n  logs: {systemd: a, file: b}\n  sockett: x\n",
        )
        .expect_err("invalid");
        let text = errors.join("\n");
        assert!(
            text.contains("exporter.yml:2:9: listen.port: expected an integer"),
            "{text}"
        );
        assert!(
            text.contains("reaction.logs: expected exactly one of"),
            "{text}"
        );
        assert!(
            text.contains("exporter.yml:5:3: reaction.sockett: unknown key"),
            "{text}"
        );
        let errors = parse("reaction:\n  config: /nonexistent/reaction\n").expect_err("invalid");
        assert!(
            errors[0].contains("/nonexistent/reaction does not exist"),
            "{errors:?}"
        );
    }

    #[test]
    fn json_output_is_sorted_with_four_spaces() {
        let text = to_json(&defaults());
        assert!(
            text.starts_with("{\n    \"listen\": {\n        \"address\""),
            "{text}"
        );
        let back: Json = serde_json::from_str(&text).expect("json");
        assert_eq!(back, defaults());
    }

    #[test]
    fn yaml_output_reads_back_as_the_same_data() {
        let text = to_yaml(&defaults());
        let node = crate::config::yaml::parse_yaml(Path::new("x.yml"), &text).expect("yaml");
        let config = validate(&node);
        // /etc/reaction may be missing on the test machine: compare the tree.
        let _ = config;
        assert!(
            text.contains("  export:\n    actions:\n      extra: true\n"),
            "{text}"
        );
        assert!(text.contains("    commands:\n"), "{text}");
        assert!(text.contains("  all: {}\n"), "{text}");
    }
}
