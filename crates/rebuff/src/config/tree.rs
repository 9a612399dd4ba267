//! A positioned document tree: what every configuration format parses into.
//!
//! YAML, JSON and JSONnet files all become a [`Node`] tree in which every value
//! and every map key remembers the file, line and column it came from. The
//! validation pass (`config::load`) walks this tree once, so its errors can name
//! the exact place and key path whatever the source format. Positions are
//! 1-based for both line and column.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a value or key was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<Path>,
    /// 1-based line; 0 when only the file is known (JSONnet values whose
    /// source position could not be recovered).
    pub line: u32,
    /// 1-based column, counted in characters; 0 when unknown.
    pub col: u32,
}

impl Loc {
    pub fn new(file: Arc<Path>, line: u32, col: u32) -> Self {
        Loc { file, line, col }
    }

    /// A location that knows only its file.
    pub fn file_only(file: Arc<Path>) -> Self {
        Loc {
            file,
            line: 0,
            col: 0,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.col) {
            (0, _) => write!(f, "{}", self.file.display()),
            (line, 0) => write!(f, "{}:{line}", self.file.display()),
            (line, col) => write!(f, "{}:{line}:{col}", self.file.display()),
        }
    }
}

/// A map key and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub loc: Loc,
}

/// One value of the document, with its location.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub loc: Loc,
}

/// The value kinds every format shares. Maps keep their source order; a key
/// written twice in one map is a parse error, never a silent overwrite.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// How the value is called in an error message ("found a list").
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a floating-point number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }
}

/// A file that could not be read or parsed: where, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{loc}: {message}")]
pub struct ParseError {
    pub loc: Loc,
    pub message: String,
}

impl ParseError {
    pub fn new(loc: Loc, message: impl Into<String>) -> Self {
        ParseError {
            loc,
            message: message.into(),
        }
    }

    pub fn in_file(file: &Path, message: impl Into<String>) -> Self {
        ParseError::new(Loc::file_only(Arc::from(file)), message)
    }
}

/// The owned path of a file, shared by every node parsed from it.
pub fn shared_path(path: &Path) -> Arc<Path> {
    Arc::from(PathBuf::from(path).as_path())
}

/// Helpers for the parsers' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Key, Loc, Node, Value};

    /// The entry `name` of a map node; panics with the node otherwise.
    pub(crate) fn entry<'n>(node: &'n Node, name: &str) -> (&'n Key, &'n Node) {
        let Value::Map(entries) = &node.value else {
            panic!("not a map: {node:?}")
        };
        match entries.iter().find(|(k, _)| k.name == name) {
            Some((k, v)) => (k, v),
            None => panic!("no key {name} in {node:?}"),
        }
    }

    /// (line, column) of a location.
    pub(crate) fn at(loc: &Loc) -> (u32, u32) {
        (loc.line, loc.col)
    }
}
