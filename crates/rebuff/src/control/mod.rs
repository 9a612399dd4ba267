//! The control socket: `show`, `flush`, `trigger` and `reload` between the
//! CLI and the daemon.
//!
//! The wire format is one JSON [`Request`] line from the client, then one
//! JSON [`Response`] document from the daemon, then the daemon closes the
//! connection. [`server`] accepts connections and hands each request to the
//! tracker as a [`ControlCmd`]; [`client`] is what the CLI commands use.

pub mod client;
pub mod server;
pub mod show;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Protocol version both sides check, so a client of another release gets
/// a clear error instead of a misread answer.
pub const PROTOCOL_VERSION: u32 = 1;

/// `STREAM` or `STREAM.FILTER` (`-l/--limit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub stream: String,
    pub filter: Option<String>,
}

/// Which entries `show` and `flush` act on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    pub limit: Option<Limit>,
    /// `(pattern name, regex)` pairs; the regex must match the whole value.
    pub patterns: Vec<(String, String)>,
    /// `show` only: at most this many entries (`--max`); the answer says
    /// how many it left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Show(Selection),
    Flush(Selection),
    Trigger {
        stream: String,
        filter: String,
        /// `(pattern name, value)` pairs, one per pattern of the filter.
        patterns: Vec<(String, String)>,
    },
    /// Re-read the configuration the daemon was started with.
    Reload,
}

/// A request with its protocol version, as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// The daemon's answer: the `show` tree
/// (`stream -> filter -> "values joined by a space" -> {matches, actions}`)
/// or an error message. A `show` answer may also carry `"left_out": n`
/// beside `"ok"`: the entries `max` cut.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
    /// The JSON text of a whole answer, in pieces, as the tracker renders
    /// it off its loop (a `show`): between the tracker and the socket only,
    /// never encoded as such.
    #[serde(skip)]
    Pieces(mpsc::Receiver<Vec<u8>>),
}

/// Answers compare by content; a stream of pieces equals nothing.
impl PartialEq for Response {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Response::Ok(a), Response::Ok(b)) => a == b,
            (Response::Error(a), Response::Error(b)) => a == b,
            _ => false,
        }
    }
}

/// A request on its way to the tracker, with where the answer goes.
#[derive(Debug)]
pub struct ControlCmd {
    pub request: Request,
    pub respond: oneshot::Sender<Response>,
}
