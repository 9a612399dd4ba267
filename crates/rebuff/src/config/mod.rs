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
    /// Things that are accepted but probably not what the user meant.
    pub warnings: Vec<ConfigError>,
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
