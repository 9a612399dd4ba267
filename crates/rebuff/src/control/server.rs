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
//! served at once is capped. When the cap is reached the accept loop stops
//! accepting until a connection finishes, so further clients wait in the
//! kernel's listen backlog (their connect succeeds, their answer comes
//! later) rather than getting an error: the usual cause is a burst of
//! legitimate `show` calls, which are better served late than refused.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{ControlCmd, Envelope, PROTOCOL_VERSION, Request, Response};

/// Why the control socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot create the socket directory {}: {error}", path.display())]
    CreateDir { path: PathBuf, error: io::Error },
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
    #[error("cannot set the permissions of {}: {error}", path.display())]
    Permissions { path: PathBuf, error: io::Error },
}

/// Creates the control socket at `path` and listens on it.
///
/// Creates the parent directory (mode 0o755) when missing, refuses to start
/// when another daemon answers on `path`, replaces a stale socket file left
/// by a daemon that died (but never a file of another kind), and gives the
/// socket mode 0o660 so that only its owner and group may send commands.
///
/// Must be called inside a tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|error| BindError::CreateDir {
                path: parent.to_owned(),
                error,
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A daemon that answers owns the path. Anything else (refused:
            // nobody listens) means the file outlived its daemon. A connect
            // to a Unix socket does not wait on the network, so this is quick.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|error| BindError::RemoveStale {
                path: path.to_owned(),
                error,
            })?;
        }
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(BindError::Inspect {
                path: path.to_owned(),
                error,
            });
        }
    }
    let listener = UnixListener::bind(path).map_err(|error| BindError::Bind {
        path: path.to_owned(),
        error,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|error| {
        BindError::Permissions {
            path: path.to_owned(),
            error,
        }
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
        loop {
            while let Some(done) = connections.try_join_next() {
                log_panic(done);
            }
            if connections.len() >= limits.max_connections {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    Some(done) = connections.join_next() => log_panic(done),
                }
                continue;
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(serve(stream, tracker.clone(), limits));
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
async fn serve(mut stream: UnixStream, tracker: mpsc::Sender<ControlCmd>, limits: ServerLimits) {
    let request = match tokio::time::timeout(
        limits.read_timeout,
        read_line(&mut stream, limits.max_request),
    )
    .await
    {
        Err(_) => Err(Rejection::Timeout(limits.read_timeout)),
        Ok(Err(e)) => Err(Rejection::Read(e)),
        Ok(Ok(None)) => {
            tracing::debug!("control client closed without a request");
            return;
        }
        Ok(Ok(Some(line))) => parse(&line, limits.max_request),
    };
    let response = match request {
        Ok(request) => dispatch(&tracker, request).await,
        Err(rejection) => {
            tracing::warn!(error = %rejection, "control request rejected");
            Response::Error(rejection.to_string())
        }
    };
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

/// Reads up to the first newline or the end of input, whichever comes
/// first, but never more than `max + 1` bytes, so an oversized line is
/// detected without buffering it. `None` when the client sent nothing.
async fn read_line(stream: &mut UnixStream, max: usize) -> io::Result<Option<Vec<u8>>> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut reader = BufReader::new(stream.take(limit));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    if line.is_empty() {
        return Ok(None);
    }
    Ok(Some(line))
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
