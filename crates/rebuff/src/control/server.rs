//! Accepts control connections and forwards requests to the tracker.
//!
//! Owns the control socket file (created by [`bind`], removed when [`run`]
//! returns) and one task per connection. Receives one JSON [`Envelope`] line
//! per connection; sends the request on to the tracker as a [`ControlCmd`]
//! and writes the tracker's [`Response`] back, or a [`Response::Error`] when
//! the line is not a valid request.
//!
//! Nothing a client does reaches further than its own connection: reading
//! and writing are bounded in size and time, a bad request is answered and
//! dropped here without involving the tracker, and the number of connections
//! served at once is capped. A real client sends its request as soon as it
//! has connected, so a connection still waiting for its request is idle,
//! and idle connections must not keep others out: one that sends nothing
//! gets a short first-byte timeout, and at the cap a new connection sheds
//! the oldest connection that has not sent its whole request yet. Only
//! when every connection at the cap has a request in progress does the
//! accept loop stop accepting until one finishes, so further clients wait in
//! the kernel's listen backlog (their connect succeeds, their answer comes
//! later) rather than getting an error: that is a burst of legitimate
//! `show` calls, which are better served late than refused.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{ControlCmd, Envelope, PROTOCOL_VERSION, Request, Response};

/// What a user who cannot write the default socket directory can do.
const WRITABLE_HINT: &str =
    "run as a user who may write there, or choose another socket with -s PATH";

/// Why the control socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot create the socket directory {}: {error}; {WRITABLE_HINT}", path.display())]
    CreateDir { path: PathBuf, error: io::Error },
    #[error("cannot create the socket in {}: {error}; {WRITABLE_HINT}", path.display())]
    NotWritable { path: PathBuf, error: io::Error },
    #[error("another rebuff is already listening on {}", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot inspect {}: {error}", path.display())]
    Inspect { path: PathBuf, error: io::Error },
    #[error("cannot remove the stale socket {}: {error}", path.display())]
    RemoveStale { path: PathBuf, error: io::Error },
    #[error("cannot listen on {}: {error}", path.display())]
    Bind { path: PathBuf, error: io::Error },
}

/// Mode of the control socket: only its owner and group may send commands.
pub const SOCKET_MODE: u32 = 0o660;

/// Checks that [`bind`] can create the control socket at `path`, so that
/// `rebuff start` fails before it writes any state or runs any command.
///
/// Creates the parent directory (mode 0o755) when missing, checks that this
/// process may create a file in it, and refuses a `path` where another
/// daemon answers or that is not a socket. A stale socket is left for
/// [`bind`] to replace.
pub fn check(path: &Path) -> Result<(), BindError> {
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent,
        None => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|error| BindError::CreateDir {
            path: parent.to_owned(),
            error,
        })?;
    // With the effective ids, as the bind will run.
    rustix::fs::accessat(
        rustix::fs::CWD,
        parent,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        rustix::fs::AtFlags::EACCESS,
    )
    .map_err(|error| BindError::NotWritable {
        path: parent.to_owned(),
        error: error.into(),
    })?;
    match socket_at(path)? {
        Existing::Live => Err(BindError::InUse {
            path: path.to_owned(),
        }),
        Existing::Stale | Existing::Nothing => Ok(()),
    }
}

/// What is at the socket path.
enum Existing {
    Nothing,
    /// A socket nobody answers on: it outlived its daemon.
    Stale,
    /// A socket a daemon answers on.
    Live,
}

fn socket_at(path: &Path) -> Result<Existing, BindError> {
    match std::fs::symlink_metadata(path) {
        // A connect to a Unix socket does not wait on the network, so this
        // is quick; refused means nobody listens.
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                Ok(Existing::Live)
            } else {
                Ok(Existing::Stale)
            }
        }
        Ok(_) => Err(BindError::NotASocket {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Existing::Nothing),
        Err(error) => Err(BindError::Inspect {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Creates the control socket at `path` and listens on it.
///
/// Does every [`check`], replaces a stale socket file left by a daemon that
/// died (but never a file of another kind), and creates the socket with
/// [`SOCKET_MODE`] from the start: there is no moment when it exists with
/// a wider mode, and no chmod by path that a swapped file could redirect.
///
/// Must be called inside a tokio runtime, before other threads create
/// files: the process umask is narrowed for the duration of the bind.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    check(path)?;
    if let Existing::Stale = socket_at(path)? {
        std::fs::remove_file(path).map_err(|error| BindError::RemoveStale {
            path: path.to_owned(),
            error,
        })?;
    }
    // Linux gives a new socket file 0o777 less the umask (BSDs ignore the
    // mode of sockets altogether and check the directory). A stricter umask
    // for one call can only make a concurrent file creation more private.
    let umask = rustix::fs::Mode::from_raw_mode(0o777 & !SOCKET_MODE);
    let previous = rustix::process::umask(umask);
    let bound = UnixListener::bind(path);
    rustix::process::umask(previous);
    let listener = bound.map_err(|error| match error.kind() {
        io::ErrorKind::PermissionDenied => BindError::NotWritable {
            path: path.parent().unwrap_or(Path::new(".")).to_owned(),
            error,
        },
        _ => BindError::Bind {
            path: path.to_owned(),
            error,
        },
    })?;
    Ok(listener)
}

/// Serves control connections on `listener` until `shutdown` is cancelled,
/// then stops accepting, removes the socket file at `path`, and gives the
/// connections in flight a short grace period before dropping them.
pub async fn run(
    listener: UnixListener,
    path: PathBuf,
    tracker: mpsc::Sender<ControlCmd>,
    shutdown: CancellationToken,
) {
    Server {
        listener,
        path,
        tracker,
        shutdown,
        limits: ServerLimits::default(),
    }
    .run()
    .await;
}

/// The bounds that keep one client from affecting anyone else.
#[derive(Debug, Clone, Copy)]
struct ServerLimits {
    /// Time a client has to send the first byte of its request.
    first_byte_timeout: Duration,
    /// Time a client has to send its whole request line.
    read_timeout: Duration,
    /// Time a client has to take the whole answer.
    write_timeout: Duration,
    /// Largest request line, newline excluded.
    max_request: usize,
    /// Connections served at once.
    max_connections: usize,
    /// How long connections in flight may finish after shutdown.
    shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            first_byte_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            max_request: 64 * 1024,
            max_connections: 64,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Everything the accept loop needs.
#[derive(Debug)]
struct Server {
    listener: UnixListener,
    path: PathBuf,
    tracker: mpsc::Sender<ControlCmd>,
    shutdown: CancellationToken,
    limits: ServerLimits,
}

impl Server {
    async fn run(self) {
        let Server {
            listener,
            path,
            tracker,
            shutdown,
            limits,
        } = self;
        tracing::debug!(path = %path.display(), "control socket listening");
        // The set both caps concurrency (its length) and lets shutdown wait
        // for, then abort, the connections still in flight.
        let mut connections = JoinSet::new();
        // Connections that have not sent their whole request, oldest first.
        let mut unread: VecDeque<Arc<Reading>> = VecDeque::new();
        // A connection accepted beyond the cap, waiting for a slot.
        let mut parked: Option<UnixStream> = None;
        let became_idle = Arc::new(Notify::new());
        loop {
            while let Some(done) = connections.try_join_next() {
                log_panic(done);
            }
            unread.retain(|c| c.is_unread());
            let full = connections.len() >= limits.max_connections;
            if let Some(stream) = parked.take() {
                if !full {
                    serve_in(
                        &mut connections,
                        &mut unread,
                        stream,
                        &tracker,
                        limits,
                        &became_idle,
                    );
                    continue;
                }
                parked = Some(stream);
                // Someone waits for a slot: make room if a connection sits
                // idle, then wait for a slot (the shed one ends at once).
                let shed = shed_oldest(&mut unread);
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    Some(done) = connections.join_next() => log_panic(done),
                    () = became_idle.notified(), if !shed => {}
                }
                continue;
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    // At the cap, one more is accepted to learn that
                    // someone waits; further clients wait in the backlog.
                    Ok((stream, _)) if full => parked = Some(stream),
                    Ok((stream, _)) => {
                        serve_in(&mut connections, &mut unread, stream, &tracker, limits, &became_idle);
                    }
                    Err(e) => {
                        // Usually out of file descriptors: pause rather than
                        // spin, since accepting again would fail the same way.
                        tracing::warn!(error = %e, "control accept failed");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                },
            }
        }
        drop(listener);
        remove_socket(&path);
        let drained = tokio::time::timeout(limits.shutdown_grace, async {
            while let Some(done) = connections.join_next().await {
                log_panic(done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::debug!(
                connections = connections.len(),
                "control connections dropped at shutdown"
            );
        }
        tracing::debug!(path = %path.display(), "control socket closed");
    }
}

/// Starts serving `stream`, and lists it as not having sent its request.
fn serve_in(
    connections: &mut JoinSet<()>,
    unread: &mut VecDeque<Arc<Reading>>,
    stream: UnixStream,
    tracker: &mpsc::Sender<ControlCmd>,
    limits: ServerLimits,
    became_idle: &Arc<Notify>,
) {
    let reading = Arc::new(Reading {
        state: AtomicU8::new(Reading::NEW),
        shed: CancellationToken::new(),
        became_idle: became_idle.clone(),
    });
    unread.push_back(reading.clone());
    connections.spawn(serve(stream, tracker.clone(), limits, reading));
}

/// Where a connection is with its request, shared with the accept loop,
/// which may shed it while it waits for the client.
#[derive(Debug)]
struct Reading {
    state: AtomicU8,
    /// Cancelled by the accept loop to shed the connection.
    shed: CancellationToken,
    /// Told when a connection starts waiting for its client.
    became_idle: Arc<Notify>,
}

impl Reading {
    /// Accepted, not read from yet: a real client's request may be there.
    const NEW: u8 = 0;
    /// Found the client had not sent its whole request: may be shed.
    const WAITING: u8 = 1;
    /// The request is read (or refused).
    const DONE: u8 = 2;

    fn is_unread(&self) -> bool {
        self.state.load(Ordering::Acquire) != Reading::DONE && !self.shed.is_cancelled()
    }

    fn may_shed(&self) -> bool {
        self.state.load(Ordering::Acquire) == Reading::WAITING && !self.shed.is_cancelled()
    }

    fn waiting(&self) {
        if self.state.swap(Reading::WAITING, Ordering::AcqRel) == Reading::NEW {
            self.became_idle.notify_one();
        }
    }

    fn done(&self) {
        self.state.store(Reading::DONE, Ordering::Release);
    }
}

/// Sheds the oldest connection waiting for the rest of its request, if
/// any; whether one was shed.
fn shed_oldest(unread: &mut VecDeque<Arc<Reading>>) -> bool {
    let Some(index) = unread.iter().position(|c| c.may_shed()) else {
        return false;
    };
    if let Some(oldest) = unread.remove(index) {
        oldest.shed.cancel();
        tracing::debug!("idle control connection shed to make room");
    }
    true
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::warn!(error = %e, "control connection task panicked");
    }
}

/// Removes the socket file, but only if it still is a socket: `bind`
/// refused to start over a live daemon, so a socket there is ours.
fn remove_socket(path: &Path) {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket());
    if is_socket && let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the control socket");
    }
}

/// Why a connection's request was not passed on.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("no request received within {0:?}")]
    Timeout(Duration),
    #[error("too many connections: this one sent no request and was closed to make room")]
    Shed,
    #[error("request larger than {0} bytes")]
    TooLarge(usize),
    #[error("cannot read the request: {0}")]
    Read(io::Error),
    #[error("invalid request: {0}")]
    Json(serde_json::Error),
    #[error("invalid request: no protocol version")]
    NoVersion,
    #[error(
        "unsupported protocol version {0} (this daemon speaks version {PROTOCOL_VERSION}); \
         use the client of the same release"
    )]
    Version(serde_json::Value),
}

/// One connection, start to end: read, dispatch, answer, close.
async fn serve(
    mut stream: UnixStream,
    tracker: mpsc::Sender<ControlCmd>,
    limits: ServerLimits,
    reading: Arc<Reading>,
) {
    let read = tokio::select! {
        read = read_request(&mut stream, limits, &reading) => Some(read),
        () = reading.shed.cancelled() => None,
    };
    reading.done();
    let request = match read {
        // Shed: a word of why, if it fits in the socket buffer at once.
        None => {
            let answer = Response::Error(Rejection::Shed.to_string());
            if let Ok(answer) = serde_json::to_vec(&answer) {
                let _ = stream.try_write(&answer);
            }
            return;
        }
        Some(Err(ReadOutcome::Closed)) => {
            tracing::debug!("control client closed without a request");
            return;
        }
        Some(Err(ReadOutcome::Rejected(rejection))) => Err(rejection),
        Some(Ok(line)) => parse(&line, limits.max_request),
    };
    let response = match request {
        Ok(request) => dispatch(&tracker, request).await,
        Err(rejection) => {
            tracing::warn!(error = %rejection, "control request rejected");
            Response::Error(rejection.to_string())
        }
    };
    if let Response::Pieces(pieces) = response {
        write_pieces(stream, pieces, limits).await;
        return;
    }
    let answer = match serde_json::to_vec(&response) {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a control answer");
            return;
        }
    };
    let written = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        // The client stopped listening: its loss, nobody else's.
        Ok(Err(e)) => tracing::debug!(error = %e, "cannot write the control answer"),
        Err(_) => tracing::debug!("control client did not take its answer in time"),
    }
}

/// Writes an answer that comes in pieces, each within the write timeout;
/// a client that stops reading drops the rest (and so stops its rendering).
async fn write_pieces(
    mut stream: UnixStream,
    mut pieces: mpsc::Receiver<Vec<u8>>,
    limits: ServerLimits,
) {
    while let Some(piece) = pieces.recv().await {
        let written = tokio::time::timeout(limits.write_timeout, stream.write_all(&piece)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot write the control answer");
                return;
            }
            Err(_) => {
                tracing::debug!("control client did not take its answer in time");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(limits.write_timeout, stream.shutdown()).await;
}

/// Why no request line came.
enum ReadOutcome {
    /// The client closed without sending anything.
    Closed,
    Rejected(Rejection),
}

/// Reads up to the first newline or the end of input, whichever comes
/// first, but never keeps more than `max + 1` bytes, so an oversized line is
/// detected without buffering it. The first byte must come within the
/// first-byte timeout, the whole line within the read timeout. Marks
/// `reading` as waiting whenever the client has not sent enough yet.
async fn read_request(
    stream: &mut UnixStream,
    limits: ServerLimits,
    reading: &Reading,
) -> Result<Vec<u8>, ReadOutcome> {
    let started = tokio::time::Instant::now();
    let max = limits.max_request;
    let mut line = Vec::new();
    let mut chunk = vec![0; 4096];
    loop {
        match stream.try_read(&mut chunk) {
            Ok(0) if line.is_empty() => return Err(ReadOutcome::Closed),
            Ok(0) => return Ok(line),
            Ok(n) => {
                let got = &chunk[..n];
                let (end, complete) = match memchr::memchr(b'\n', got) {
                    Some(pos) => (pos + 1, true),
                    None => (n, false),
                };
                line.extend_from_slice(&got[..end]);
                if complete || line.len() > max {
                    line.truncate(max.saturating_add(1));
                    return Ok(line);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                reading.waiting();
                let (timeout, deadline) = if line.is_empty() {
                    let first = limits.first_byte_timeout.min(limits.read_timeout);
                    (first, started + first)
                } else {
                    (limits.read_timeout, started + limits.read_timeout)
                };
                match tokio::time::timeout_at(deadline, stream.readable()).await {
                    Err(_) => return Err(ReadOutcome::Rejected(Rejection::Timeout(timeout))),
                    Ok(Err(e)) => return Err(ReadOutcome::Rejected(Rejection::Read(e))),
                    Ok(Ok(())) => {}
                }
            }
            Err(e) => return Err(ReadOutcome::Rejected(Rejection::Read(e))),
        }
    }
}

fn parse(line: &[u8], max: usize) -> Result<Request, Rejection> {
    let line = match line.strip_suffix(b"\n") {
        Some(line) => line,
        None if line.len() > max => return Err(Rejection::TooLarge(max)),
        None => line,
    };
    let value: serde_json::Value = serde_json::from_slice(line).map_err(Rejection::Json)?;
    // The version is checked before the shape, so a client of another
    // release hears about the version rather than about a field it sent.
    match value.get("version") {
        None => return Err(Rejection::NoVersion),
        Some(version) if version.as_u64() != Some(u64::from(PROTOCOL_VERSION)) => {
            return Err(Rejection::Version(version.clone()));
        }
        Some(_) => {}
    }
    let envelope: Envelope = serde_json::from_value(value).map_err(Rejection::Json)?;
    Ok(envelope.request)
}

/// Hands the request to the tracker and waits for its answer. Only this
/// connection's task waits; the tracker answers when it gets to it.
async fn dispatch(tracker: &mpsc::Sender<ControlCmd>, request: Request) -> Response {
    let shutting_down = || Response::Error("daemon is shutting down".to_owned());
    let (respond, answer) = oneshot::channel();
    if tracker.send(ControlCmd { request, respond }).await.is_err() {
        tracing::debug!("control request arrived after the tracker stopped");
        return shutting_down();
    }
    answer.await.unwrap_or_else(|_| shutting_down())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::client;
    use crate::control::{Limit, Selection};
    use serde_json::json;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncReadExt;

    /// A server on a temp socket with a tracker that echoes each request.
    struct Harness {
        _dir: tempfile::TempDir,
        path: PathBuf,
        shutdown: CancellationToken,
        server: tokio::task::JoinHandle<()>,
    }

    impl Harness {
        fn start(limits: ServerLimits) -> Harness {
            let (tracker, commands) = mpsc::channel(16);
            tokio::spawn(echo_tracker(commands));
            Harness::with_tracker(limits, tracker)
        }

        fn with_tracker(limits: ServerLimits, tracker: mpsc::Sender<ControlCmd>) -> Harness {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("rebuff.sock");
            let listener = bind(&path).expect("bind");
            let shutdown = CancellationToken::new();
            let server = tokio::spawn(
                Server {
                    listener,
                    path: path.clone(),
                    tracker,
                    shutdown: shutdown.clone(),
                    limits,
                }
                .run(),
            );
            Harness {
                _dir: dir,
                path,
                shutdown,
                server,
            }
        }

        /// A `show` through the real client, off the runtime's threads.
        async fn show(&self) -> Result<serde_json::Value, client::ClientError> {
            let path = self.path.clone();
            let request = Request::Show(Selection {
                limit: Some(Limit {
                    stream: "ssh".into(),
                    filter: None,
                }),
                patterns: vec![("ip".into(), "192\\.0\\.2\\..*".into())],
                max: None,
            });
            tokio::task::spawn_blocking(move || client::request(&path, request))
                .await
                .expect("client thread")
        }

        /// Sends raw bytes (then closes the write half when `close`), and
        /// returns whatever comes back before the end or an error.
        async fn raw(&self, bytes: Vec<u8>, close: bool) -> Vec<u8> {
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || {
                let mut stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
                // The server may stop reading early and close; that is the
                // behaviour under test, so a failed write is expected.
                let _ = stream.write_all(&bytes);
                if close {
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                }
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                answer
            })
            .await
            .expect("client thread")
        }

        async fn stop(self) -> PathBuf {
            self.shutdown.cancel();
            self.server.await.expect("server task");
            self.path.clone()
        }
    }

    async fn echo_tracker(mut commands: mpsc::Receiver<ControlCmd>) {
        while let Some(cmd) = commands.recv().await {
            let echoed = serde_json::to_value(&cmd.request).expect("request to json");
            let _ = cmd.respond.send(Response::Ok(json!({ "echo": echoed })));
        }
    }

    fn error_message(answer: &[u8]) -> String {
        match serde_json::from_slice::<Response>(answer) {
            Ok(Response::Error(message)) => message,
            other => panic!("expected an error answer, got {other:?}"),
        }
    }

    fn test_limits() -> ServerLimits {
        ServerLimits {
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_millis(100),
            ..ServerLimits::default()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_reaches_the_tracker_and_its_answer_reaches_the_client() {
        let harness = Harness::start(test_limits());
        let tree = harness.show().await.expect("show");
        assert_eq!(
            tree,
            json!({"echo": {
                "command": "show",
                "limit": {"stream": "ssh", "filter": null},
                "patterns": [["ip", "192\\.0\\.2\\..*"]],
            }})
        );
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bad_requests_get_an_error_and_the_next_request_still_works() {
        let harness = Harness::start(test_limits());

        let answer = harness.raw(b"garbage\n".to_vec(), true).await;
        assert!(error_message(&answer).starts_with("invalid request"));

        let wrong = br#"{"version":999,"command":"show","limit":null,"patterns":[]}"#;
        let answer = harness.raw([&wrong[..], b"\n"].concat(), true).await;
        let message = error_message(&answer);
        assert!(message.contains("protocol version 999"), "{message}");

        let answer = harness.raw(br#"{"command":"show"}"#.to_vec(), true).await;
        assert_eq!(
            error_message(&answer),
            "invalid request: no protocol version"
        );

        let unknown = br#"{"version":1,"command":"explode"}"#;
        let answer = harness.raw(unknown.to_vec(), true).await;
        assert!(error_message(&answer).starts_with("invalid request"));

        // Never closed: the server must stop reading on its own.
        let answer = harness.raw(vec![b'x'; 1024 * 1024], false).await;
        assert_eq!(error_message(&answer), "request larger than 65536 bytes");

        // Half a request, then the client goes away entirely.
        harness.raw(br#"{"version":1,"comm"#.to_vec(), true).await;
        {
            let mut stream = UnixStream::connect(&harness.path).await.expect("connect");
            stream.write_all(b"{\"version\":").await.expect("write");
        }
        // Connects and leaves without a word.
        drop(UnixStream::connect(&harness.path).await.expect("connect"));

        assert!(harness.show().await.is_ok());
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_without_a_final_newline_is_read_to_its_end() {
        let harness = Harness::start(test_limits());
        let request = br#"{"version":1,"command":"flush","limit":null,"patterns":[]}"#;
        let answer = harness.raw(request.to_vec(), true).await;
        let response: Response = serde_json::from_slice(&answer).expect("a response");
        assert_eq!(
            response,
            Response::Ok(json!({"echo": {"command": "flush", "limit": null, "patterns": []}}))
        );
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_never_sends_does_not_delay_another() {
        // A read timeout far beyond the test's own deadline: the second
        // client must not be waiting for the first one to time out.
        let harness = Harness::start(test_limits());
        let _silent = UnixStream::connect(&harness.path).await.expect("connect");
        let tree = tokio::time::timeout(Duration::from_secs(10), harness.show())
            .await
            .expect("not blocked by the silent client");
        assert!(tree.is_ok());
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_never_sends_gets_a_timeout_error() {
        let harness = Harness::start(ServerLimits {
            read_timeout: Duration::from_millis(50),
            ..test_limits()
        });
        let mut silent = UnixStream::connect(&harness.path).await.expect("connect");
        let mut answer = Vec::new();
        silent.read_to_end(&mut answer).await.expect("read");
        assert!(error_message(&answer).starts_with("no request received within"));
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn beyond_the_connection_cap_clients_wait_their_turn() {
        let harness = Harness::start(ServerLimits {
            max_connections: 1,
            read_timeout: Duration::from_millis(50),
            ..test_limits()
        });
        // Holds the only slot until its read times out.
        let _silent = UnixStream::connect(&harness.path).await.expect("connect");
        assert!(harness.show().await.is_ok());
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn two_hundred_idle_connections_do_not_keep_a_show_waiting() {
        // Timeouts far beyond the test's deadline: only shedding can make
        // room, as the idle clients would otherwise hold every slot for
        // minutes, round after round.
        let harness = Harness::start(ServerLimits {
            first_byte_timeout: Duration::from_secs(60),
            ..test_limits()
        });
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(UnixStream::connect(&harness.path).await.expect("connect"));
        }
        let tree = tokio::time::timeout(Duration::from_secs(30), harness.show())
            .await
            .expect("show answered despite 200 idle connections");
        assert!(tree.is_ok(), "{tree:?}");
        // The oldest idle ones were shed, and told why.
        let mut answer = Vec::new();
        idle[0].read_to_end(&mut answer).await.expect("read");
        assert!(
            error_message(&answer).starts_with("too many connections"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_sent_half_a_request_is_shed_too() {
        let harness = Harness::start(ServerLimits {
            max_connections: 1,
            first_byte_timeout: Duration::from_secs(60),
            ..test_limits()
        });
        let mut half = UnixStream::connect(&harness.path).await.expect("connect");
        half.write_all(b"{\"version\":").await.expect("write");
        let tree = tokio::time::timeout(Duration::from_secs(30), harness.show())
            .await
            .expect("show answered");
        assert!(tree.is_ok(), "{tree:?}");
        let mut answer = Vec::new();
        half.read_to_end(&mut answer).await.expect("read");
        assert!(error_message(&answer).starts_with("too many connections"));
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn at_the_cap_a_request_in_progress_is_never_shed() {
        // The only slot is busy with a request the tracker has not answered
        // yet: a second client waits for it instead of shedding it.
        let (tracker, mut commands) = mpsc::channel::<ControlCmd>(16);
        let harness = Harness::with_tracker(
            ServerLimits {
                max_connections: 1,
                ..test_limits()
            },
            tracker,
        );
        let first = tokio::spawn({
            let path = harness.path.clone();
            async move {
                let mut stream = UnixStream::connect(&path).await.expect("connect");
                let request = br#"{"version":1,"command":"flush","limit":null,"patterns":[]}"#;
                stream.write_all(request).await.expect("write");
                stream.write_all(b"\n").await.expect("write");
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await.expect("read");
                answer
            }
        });
        let held = commands.recv().await.expect("the first request");
        let second = tokio::spawn({
            let path = harness.path.clone();
            async move {
                let mut stream = UnixStream::connect(&path).await.expect("connect");
                let request = br#"{"version":1,"command":"show","limit":null,"patterns":[]}"#;
                stream.write_all(request).await.expect("write");
                stream.shutdown().await.expect("shutdown");
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await.expect("read");
                answer
            }
        });
        let _ = held.respond.send(Response::Ok(json!("first")));
        let answer = first.await.expect("first client");
        assert_eq!(
            serde_json::from_slice::<Response>(&answer).expect("answer"),
            Response::Ok(json!("first"))
        );
        let next = commands.recv().await.expect("the second request");
        assert!(matches!(next.request, Request::Show(_)));
        let _ = next.respond.send(Response::Ok(json!("second")));
        let answer = second.await.expect("second client");
        assert_eq!(
            serde_json::from_slice::<Response>(&answer).expect("answer"),
            Response::Ok(json!("second"))
        );
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_first_byte_has_its_own_shorter_timeout() {
        let harness = Harness::start(ServerLimits {
            first_byte_timeout: Duration::from_millis(50),
            ..test_limits()
        });
        let mut silent = UnixStream::connect(&harness.path).await.expect("connect");
        let mut answer = Vec::new();
        silent.read_to_end(&mut answer).await.expect("read");
        assert_eq!(error_message(&answer), "no request received within 50ms");
        // A request whose first byte came in time may take longer.
        let mut slow = UnixStream::connect(&harness.path).await.expect("connect");
        slow.write_all(b"{\"version\":1,").await.expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        slow.write_all(br#""command":"flush","limit":null,"patterns":[]}"#)
            .await
            .expect("write");
        slow.shutdown().await.expect("shutdown");
        let mut answer = Vec::new();
        slow.read_to_end(&mut answer).await.expect("read");
        assert!(
            matches!(serde_json::from_slice(&answer), Ok(Response::Ok(_))),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_after_the_tracker_stopped_is_told_the_daemon_is_shutting_down() {
        let (tracker, commands) = mpsc::channel(1);
        drop(commands);
        let harness = Harness::with_tracker(test_limits(), tracker);
        match harness.show().await {
            Err(client::ClientError::Daemon(message)) => {
                assert_eq!(message, "daemon is shutting down");
            }
            other => panic!("expected the daemon's error, got {other:?}"),
        }
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_socket_is_private_to_its_group_and_removed_on_shutdown() {
        let harness = Harness::start(test_limits());
        let mode = std::fs::metadata(&harness.path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);
        let path = harness.stop().await;
        assert!(!path.exists());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_socket_is_created_with_its_mode_not_changed_after() {
        use rustix::fs::inotify;
        let dir = tempfile::tempdir().expect("temp dir");
        let watch = inotify::init(inotify::CreateFlags::NONBLOCK).expect("inotify");
        inotify::add_watch(
            &watch,
            dir.path(),
            inotify::WatchFlags::CREATE | inotify::WatchFlags::ATTRIB,
        )
        .expect("watch");
        let path = dir.path().join("rebuff.sock");
        let _listener = bind(&path).expect("bind");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        let mut buffer = [std::mem::MaybeUninit::uninit(); 4096];
        let mut events = inotify::Reader::new(&watch, &mut buffer);
        let mut seen = Vec::new();
        while let Ok(event) = events.next() {
            seen.push(event.events());
        }
        // Created once; no chmod (an attribute change) after the bind.
        assert_eq!(seen, vec![inotify::ReadFlags::CREATE], "{seen:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn check_refuses_a_directory_that_cannot_be_created_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "").expect("write");
        let error = check(&file.join("rebuff.sock")).expect_err("not a directory");
        assert!(matches!(error, BindError::CreateDir { .. }), "{error}");
        assert!(error.to_string().contains("-s PATH"), "{error}");
        // /proc refuses new entries even to root.
        let error = check(Path::new("/proc/rebuff/rebuff.sock")).expect_err("in /proc");
        assert!(error.to_string().contains("-s PATH"), "{error}");
        // A directory without write permission: root may write anyway.
        if rustix::process::geteuid().is_root() {
            println!("skipped: the read-only directory case (root writes anywhere)");
            return;
        }
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).expect("mkdir");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        let error = check(&locked.join("rebuff.sock")).expect_err("read-only");
        assert!(matches!(error, BindError::NotWritable { .. }), "{error}");
        assert!(error.to_string().contains("-s PATH"), "{error}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bind_refuses_a_path_where_a_daemon_listens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rebuff.sock");
        let _live = bind(&path).expect("first bind");
        let error = bind(&path).expect_err("second bind");
        assert!(matches!(error, BindError::InUse { .. }));
        assert_eq!(
            error.to_string(),
            format!("another rebuff is already listening on {}", path.display())
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bind_replaces_a_stale_socket_but_not_another_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rebuff.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
        assert!(path.exists());
        let listener = bind(&path).expect("replaces the stale socket");
        let _client = UnixStream::connect(&path).await.expect("connect");
        assert!(listener.accept().await.is_ok());

        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "keep me").expect("write");
        assert!(matches!(bind(&file), Err(BindError::NotASocket { .. })));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bind_creates_the_missing_socket_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("run/rebuff/rebuff.sock");
        let _listener = bind(&path).expect("bind");
        let parent = std::fs::metadata(dir.path().join("run/rebuff")).expect("directory");
        assert!(parent.is_dir());
        // The umask may remove bits, never add them.
        assert_eq!(parent.permissions().mode() & 0o777 & !0o755, 0);
    }
}
