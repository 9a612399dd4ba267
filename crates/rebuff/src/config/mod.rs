//! Configuration: source files -> positioned tree -> validated, compiled config.
//!
//! [`load`] reads a file or a directory ([`sources`]), parses every file into
//! a [`tree::Node`] tree ([`yaml`], [`json`], [`jsonnet`]), merges directory
//! files, and hands the tree to [`validate`], which checks every rule of
//! reaction v2's reference and compiles patterns, matchers and action
//! templates. The result is a [`Config`] that is only ever read afterwards;
//! nothing is compiled again at run time. Errors name the file, line, column
//! and key path, say what was found and what is accepted.

pub mod emit;
pub mod json;
pub mod jsonnet;
pub mod sources;
pub mod tree;
pub mod validate;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

use rebuff_engine::{FilterPlan, Patterns, StreamMatcher};

use self::tree::Loc;

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub loc: Option<Loc>,
    /// Dotted key path, e.g. `streams.ssh.filters.failedlogin.retryperiod`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.loc {
            write!(f, "{loc}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration (validation goes on after the
/// first one, so a user fixes them all in one round).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<tree::ParseError> for ConfigErrors {
    fn from(e: tree::ParseError) -> Self {
        ConfigErrors(vec![ConfigError {
            loc: Some(e.loc),
            path: String::new(),
            message: e.message,
        }])
    }
}

/// A validated, compiled configuration.
#[derive(Debug)]
pub struct Config {
    /// The merged configuration as written (for `test-config`).
    pub document: serde_json::Value,
    pub patterns: Patterns,
    pub streams: Vec<Stream>,
    pub start: Vec<Vec<String>>,
    pub stop: Vec<Vec<String>>,
    pub state_directory: PathBuf,
    /// As configured: >0 is a limit, 0 means the number of CPUs, <0 unlimited.
    pub concurrency: i64,
    /// Milliseconds between store compactions; `None` disables them.
    pub state_rotation_interval: Option<u64>,
    /// rebuff's `metrics` section; `None` means no endpoint.
    pub metrics: Option<MetricsConfig>,
    /// Things that are accepted but probably not what the user meant.
    pub warnings: Vec<ConfigError>,
}

/// The `metrics` section, shaped like reaction-metrics-exporter's own
/// configuration (`all`, `for`, `export`) so its users recognise it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub listen: std::net::SocketAddr,
    /// A Prometheus web-config file (TLS, basic auth).
    pub web_config: Option<PathBuf>,
    /// Most series a pattern-labelled family holds; more are dropped and
    /// counted.
    pub max_series: usize,
    /// A cumulative pattern-labelled series not updated for this long is
    /// forgotten at the next scrape.
    pub series_idle_ms: u64,
    /// How each filter's pattern values become labels: index by the
    /// global filter index (streams in order, then their filters), then by
    /// value slot.
    pub labels: Vec<Vec<LabelRule>>,
    pub export: MetricsExport,
}

/// What becomes of one pattern value in a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRule {
    /// The raw value.
    Raw,
    /// No label at all.
    Drop,
    /// A Jinja2 template, with the value bound to the pattern's name; it
    /// compiled at load.
    Template(String),
}

/// Which families are served (`metrics.export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsExport {
    pub matches: FamilySwitch,
    pub actions: FamilySwitch,
    pub pending: FamilySwitch,
    pub commands: bool,
    pub streams: bool,
    /// Process CPU, memory and file descriptors.
    pub internals: bool,
    /// rebuff's own per-pattern counter, `rebuff_pattern_matches_total`.
    pub pattern_matches: FamilySwitch,
}

/// An exporter family switch: off, or on with or without the pattern
/// labels (`extra`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilySwitch {
    Off,
    On { extra: bool },
}

impl FamilySwitch {
    pub fn is_on(self) -> bool {
        self != FamilySwitch::Off
    }

    /// On, with pattern labels.
    pub fn has_patterns(self) -> bool {
        self == FamilySwitch::On { extra: true }
    }
}

/// A stream and its compiled filters.
#[derive(Debug)]
pub struct Stream {
    pub name: String,
    pub cmd: Vec<String>,
    pub matcher: StreamMatcher,
    /// In the matcher's filter order.
    pub filters: Vec<Filter>,
}

/// A filter: its decision plan and its action commands.
#[derive(Debug)]
pub struct Filter {
    pub name: String,
    /// Pattern names in value order.
    pub pattern_names: Vec<String>,
    pub plan: FilterPlan,
    /// Parallel to `plan.actions`.
    pub actions: Vec<Action>,
}

/// An action's command, ready to be filled with a match's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub name: String,
    pub cmd: Vec<ArgTemplate>,
    /// rebuff's `timeout` key: how long the action may run before its
    /// process group is killed; `None` means the default.
    pub timeout_ms: Option<u64>,
}

/// One argv element: literal text with `<pattern>` holes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgTemplate {
    pub parts: Vec<ArgPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgPart {
    Text(String),
    /// Index into the match's values.
    Value(usize),
}

impl ArgTemplate {
    /// The argv element for a match's values (never through a shell).
    pub fn render(&self, values: &[String]) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                ArgPart::Text(text) => out.push_str(text),
                ArgPart::Value(slot) => {
                    out.push_str(values.get(*slot).map(String::as_str).unwrap_or(""))
                }
            }
        }
        out
    }
}

impl Action {
    pub fn render(&self, values: &[String]) -> Vec<String> {
        self.cmd.iter().map(|arg| arg.render(values)).collect()
    }
}

impl Config {
    pub fn stream(&self, name: &str) -> Option<&Stream> {
        self.streams.iter().find(|s| s.name == name)
    }
}

/// Loads, merges, validates and compiles the configuration at `path` (a
/// file or a directory).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let document = sources::read(path)?;
    validate::compile(&document)
}
