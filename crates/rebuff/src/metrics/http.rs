//! The HTTP endpoint Prometheus scrapes.
//!
//! Owns the TCP listener (from [`bind`]) and one task per connection.
//! Receives HTTP/1 requests, optionally over TLS and behind basic auth (both
//! from the web-config file, see [`webconfig`]); sends back the exposition
//! that [`Endpoint::render`] produces, in the text format the scraper asked
//! for, gzip'ed when it accepts that. Also answers `/-/healthy`, `/-/ready`
//! and a landing page at `/`.
//!
//! Nothing a client does reaches further than its own connection: headers
//! must arrive within 10 s, the TLS handshake too, a connection lives at
//! most 60 s, request bodies are never read, and at most 64 connections are
//! served at once. Unlike the control socket, a connection over the cap is
//! closed at once rather than left waiting in the backlog: a scraper
//! retries at its next interval, and a stalled backlog would only make every
//! scrape late. Renders, the only costly work, run four at a time, so a
//! flood of scrapes queues rather than multiplying the work.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::webconfig;

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// Picks the format from an Accept header: OpenMetrics when the client
    /// lists `application/openmetrics-text` (version 0.0.1 or 1.0.0, or no
    /// version, with q > 0) with a q at least as high as `text/plain`'s;
    /// Prometheus text 0.0.4 otherwise (also when there is no Accept header).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let mut openmetrics = 0.0f32;
        let mut text = 0.0f32;
        for item in list_items(accept) {
            let version = item.param("version");
            if item
                .value
                .eq_ignore_ascii_case("application/openmetrics-text")
                && matches!(version, None | Some("0.0.1" | "1.0.0"))
            {
                openmetrics = openmetrics.max(item.q());
            } else if item.value.eq_ignore_ascii_case("text/plain")
                && matches!(version, None | Some("0.0.4"))
            {
                text = text.max(item.q());
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The Content-Type header value: `text/plain; version=0.0.4;
    /// charset=utf-8` or `application/openmetrics-text; version=1.0.0;
    /// charset=utf-8`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// One element of a comma-separated header list: `value;param=x;q=0.5`.
#[derive(Debug)]
struct ListItem<'a> {
    value: &'a str,
    params: &'a str,
}

impl<'a> ListItem<'a> {
    /// The parameter `name` (case-insensitive), unquoted.
    fn param(&self, name: &str) -> Option<&'a str> {
        self.params.split(';').find_map(|param| {
            let (key, value) = param.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().trim_matches('"'))
        })
    }

    /// The weight: 1 when absent, 0 (not acceptable) when malformed or
    /// outside [0, 1].
    fn q(&self) -> f32 {
        match self.param("q") {
            None => 1.0,
            Some(q) => q
                .parse::<f32>()
                .ok()
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(0.0),
        }
    }
}

fn list_items(header: &str) -> impl Iterator<Item = ListItem<'_>> {
    header.split(',').filter_map(|item| {
        let (value, params) = item.split_once(';').unwrap_or((item, ""));
        let value = value.trim();
        (!value.is_empty()).then_some(ListItem { value, params })
    })
}

/// Whether an Accept-Encoding header accepts gzip: an explicit `gzip` (or
/// `x-gzip`) entry decides by its q, else `*` does; `q=0` refuses.
fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let mut gzip: Option<f32> = None;
    let mut any: Option<f32> = None;
    for item in list_items(accept_encoding.unwrap_or("")) {
        let slot = if item.value.eq_ignore_ascii_case("gzip")
            || item.value.eq_ignore_ascii_case("x-gzip")
        {
            &mut gzip
        } else if item.value == "*" {
            &mut any
        } else {
            continue;
        };
        *slot = Some(slot.unwrap_or(0.0).max(item.q()));
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

pub type RenderFuture = Pin<Box<dyn Future<Output = anyhow::Result<Vec<u8>>> + Send>>;

/// What the endpoint serves.
pub struct Endpoint {
    /// Renders the exposition body for one scrape (uncompressed).
    pub render: Arc<dyn Fn(Format) -> RenderFuture + Send + Sync>,
    /// True once the daemon has restored its state and started its streams.
    pub ready: Arc<AtomicBool>,
    /// TLS and basic auth, from `metrics.web_config`; None = plain HTTP, no auth.
    pub web: Option<webconfig::WebConfig>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .field("web", &self.web)
            .finish_non_exhaustive()
    }
}

/// Binds the listen address (`127.0.0.1:9411`, `[::1]:9411`,
/// `0.0.0.0:9411`); the error names the address.
pub async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for metrics on {listen}"))
}

/// Serves until `shutdown` is cancelled; then stops accepting, and gives
/// in-flight requests at most 1 s.
pub async fn run(listener: TcpListener, endpoint: Endpoint, shutdown: CancellationToken) {
    Server {
        listener,
        endpoint,
        shutdown,
        limits: Limits::default(),
    }
    .run()
    .await;
}

/// The bounds that keep one client from affecting anyone else.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections served at once; more are closed on arrival.
    max_connections: usize,
    /// Time a client has to send a request's headers, counted from the
    /// moment the server waits for them (so it also closes idle keep-alive
    /// connections).
    header_read_timeout: Duration,
    /// Time a client has to complete the TLS handshake.
    tls_handshake_timeout: Duration,
    /// Longest life of a connection, whatever it does.
    connection_lifetime: Duration,
    /// Largest buffered request head (request line and headers).
    max_buf_size: usize,
    /// Renders run at once; further scrapes wait their turn.
    max_concurrent_renders: usize,
    /// How long requests in flight may finish after shutdown.
    shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(60),
            max_buf_size: 16 * 1024,
            max_concurrent_renders: 4,
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// Everything the accept loop needs.
#[derive(Debug)]
struct Server {
    listener: TcpListener,
    endpoint: Endpoint,
    shutdown: CancellationToken,
    limits: Limits,
}

/// What every connection's requests share.
struct Shared {
    endpoint: Endpoint,
    renders: Semaphore,
}

/// Everything one connection task needs.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    http: http1::Builder,
    shared: Arc<Shared>,
    limits: Limits,
    shutdown: CancellationToken,
}

impl Server {
    async fn run(self) {
        let Server {
            listener,
            endpoint,
            shutdown,
            limits,
        } = self;
        let tls = endpoint
            .web
            .as_ref()
            .and_then(webconfig::WebConfig::tls_acceptor);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_buf_size)
            .keep_alive(true);
        let shared = Arc::new(Shared {
            endpoint,
            renders: Semaphore::new(limits.max_concurrent_renders),
        });
        if let Ok(addr) = listener.local_addr() {
            tracing::debug!(%addr, tls = tls.is_some(), "metrics endpoint listening");
        }
        // The set both counts the connections (its length) and lets
        // shutdown wait for, then abort, those still in flight.
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            while let Some(done) = connections.try_join_next() {
                log_panic(done);
            }
            match accepted {
                Ok((stream, peer)) if connections.len() >= limits.max_connections => {
                    tracing::debug!(
                        %peer,
                        limit = limits.max_connections,
                        "metrics connection refused: too many connections"
                    );
                    drop(stream);
                }
                Ok((stream, peer)) => {
                    connections.spawn(
                        Connection {
                            stream,
                            peer,
                            tls: tls.clone(),
                            http: http.clone(),
                            shared: shared.clone(),
                            limits,
                            shutdown: shutdown.clone(),
                        }
                        .serve(),
                    );
                }
                Err(e) => {
                    // Usually out of file descriptors: pause rather than
                    // spin, since accepting again would fail the same way.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        drop(listener);
        // Each connection saw the same cancellation and is closing: idle
        // ones at once, busy ones after their response.
        let drained = tokio::time::timeout(limits.shutdown_grace, async {
            while let Some(done) = connections.join_next().await {
                log_panic(done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::debug!(
                connections = connections.len(),
                "metrics connections dropped at shutdown"
            );
        }
        connections.shutdown().await;
        tracing::debug!("metrics endpoint closed");
    }
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::warn!(error = %e, "metrics connection task panicked");
    }
}

/// Why a connection ended early; all of these are the client's business
/// and logged at DEBUG.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("TLS handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("connection closed after its lifetime of {0:?}")]
    Lifetime(Duration),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl Connection {
    async fn serve(self) {
        let peer = self.peer;
        let lifetime = self.limits.connection_lifetime;
        let result = match tokio::time::timeout(lifetime, self.serve_inner()).await {
            Ok(result) => result,
            Err(_) => Err(ConnectionError::Lifetime(lifetime)),
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "metrics connection ended");
        }
    }

    async fn serve_inner(self) -> Result<(), ConnectionError> {
        let Connection {
            stream,
            peer: _,
            tls,
            http,
            shared,
            limits,
            shutdown,
        } = self;
        // Responses are written whole; small ones should leave at once.
        let _ = stream.set_nodelay(true);
        match tls {
            None => drive(TokioIo::new(stream), &http, shared, &shutdown).await,
            Some(acceptor) => {
                let timeout = limits.tls_handshake_timeout;
                let stream = tokio::select! {
                    accepted = tokio::time::timeout(timeout, acceptor.accept(stream)) => match accepted {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return Err(ConnectionError::Handshake(e)),
                        Err(_) => return Err(ConnectionError::HandshakeTimeout(timeout)),
                    },
                    () = shutdown.cancelled() => return Ok(()),
                };
                drive(TokioIo::new(stream), &http, shared, &shutdown).await
            }
        }
    }
}

/// Runs HTTP/1 on one connection until the client leaves, or until
/// shutdown, after which the request in flight (if any) is finished.
async fn drive<I>(
    io: I,
    http: &http1::Builder,
    shared: Arc<Shared>,
    shutdown: &CancellationToken,
) -> Result<(), ConnectionError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, request).await) }
    });
    let mut connection = pin!(http.serve_connection(io, service));
    tokio::select! {
        result = connection.as_mut() => Ok(result?),
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            Ok(connection.await?)
        }
    }
}

type Reply = Response<Full<Bytes>>;

/// The pages, known before the method is checked.
#[derive(Debug, Clone, Copy)]
enum Page {
    Metrics,
    Healthy,
    Ready,
    Landing,
}

async fn respond(shared: &Shared, request: Request<Incoming>) -> Reply {
    let mut reply = route(shared, &request).await;
    if let Some(web) = &shared.endpoint.web {
        for (name, value) in web.headers() {
            reply.headers_mut().insert(name.clone(), value.clone());
        }
    }
    reply
}

async fn route(shared: &Shared, request: &Request<Incoming>) -> Reply {
    // Every page sits behind basic auth when it is configured, as with
    // exporter-toolkit: even health checks must not tell strangers anything.
    if let Some(web) = &shared.endpoint.web {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !web.authorize(authorization).await {
            let mut reply = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            reply.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"rebuff\""),
            );
            return reply;
        }
    }
    let page = match request.uri().path() {
        "/metrics" => Page::Metrics,
        "/-/healthy" => Page::Healthy,
        "/-/ready" => Page::Ready,
        "/" => Page::Landing,
        _ => return text(StatusCode::NOT_FOUND, "Not found\n"),
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed\n");
        reply
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return reply;
    }
    match page {
        Page::Metrics => metrics(shared, request.headers()).await,
        Page::Healthy => text(StatusCode::OK, "OK\n"),
        Page::Ready if shared.endpoint.ready.load(Ordering::Acquire) => {
            text(StatusCode::OK, "Ready\n")
        }
        Page::Ready => text(StatusCode::SERVICE_UNAVAILABLE, "Not ready\n"),
        Page::Landing => {
            let mut reply = Response::new(Full::new(Bytes::from_static(LANDING.as_bytes())));
            reply.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            reply
        }
    }
}

/// Links are relative so that the page also works behind a reverse proxy
/// that serves it under a path prefix.
const LANDING: &str = concat!(
    "<!DOCTYPE html>\n",
    "<html lang=\"en\">\n",
    "<head><meta charset=\"utf-8\"><title>rebuff</title></head>\n",
    "<body>\n",
    "<h1>rebuff</h1>\n",
    "<p>A log-watching ban daemon, version ",
    env!("CARGO_PKG_VERSION"),
    ".</p>\n",
    "<ul>\n",
    "<li><a href=\"metrics\">/metrics</a>: the metrics</li>\n",
    "<li><a href=\"-/healthy\">/-/healthy</a>: whether the process answers</li>\n",
    "<li><a href=\"-/ready\">/-/ready</a>: whether the daemon has started</li>\n",
    "</ul>\n",
    "</body>\n",
    "</html>\n",
);

async fn metrics(shared: &Shared, headers: &HeaderMap) -> Reply {
    let format = Format::negotiate(joined(headers, &header::ACCEPT).as_deref());
    let gzip = accepts_gzip(joined(headers, &header::ACCEPT_ENCODING).as_deref());
    let rendered = {
        // Waiting here is bounded by the connection's lifetime.
        let Ok(_permit) = shared.renders.acquire().await else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "Shutting down\n");
        };
        (shared.endpoint.render)(format).await
    };
    let body = match rendered {
        Ok(body) => body,
        Err(e) => {
            let error = one_line(&format!("{e:#}"));
            tracing::warn!(%error, "cannot render the metrics");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot render the metrics: {error}\n"),
            );
        }
    };
    let body = if gzip {
        // Bodies reach megabytes; compressing them is blocking work.
        match tokio::task::spawn_blocking(move || compress(&body)).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => return compression_failed(&e),
            Err(e) => return compression_failed(&e),
        }
    } else {
        body
    };
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    let headers = reply.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    reply
}

fn compress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    // Exposition text compresses about tenfold at the fastest level; the
    // slower levels gain little for much more CPU.
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

fn compression_failed(error: &dyn fmt::Display) -> Reply {
    tracing::warn!(%error, "cannot compress the metrics");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!(
            "cannot compress the metrics: {}\n",
            one_line(&error.to_string())
        ),
    )
}

/// All values of a header as one comma-separated list (a list header may
/// be split over several lines). `None` when absent or not text.
fn joined(headers: &HeaderMap, name: &header::HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn text(status: StatusCode, body: &str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_owned())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::webconfig::tests::{basic, fixture};
    use std::io::Read as _;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio_rustls::rustls;

    /// Far beyond any test's own deadline, so a test that passes did not
    /// wait for a timeout unless it set a short one itself.
    const PATIENCE: Duration = Duration::from_secs(10);

    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
        application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    fn test_limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(60),
            connection_lifetime: Duration::from_secs(120),
            shutdown_grace: Duration::from_millis(200),
            ..Limits::default()
        }
    }

    /// A server on 127.0.0.1 whose render echoes the format, or fails when
    /// `fail` is set.
    struct Harness {
        addr: SocketAddr,
        ready: Arc<AtomicBool>,
        fail: Arc<AtomicBool>,
        shutdown: CancellationToken,
        server: tokio::task::JoinHandle<()>,
    }

    fn body_for(format: Format) -> Vec<u8> {
        let mut body = format!("# format {format:?}\n");
        for i in 0..200 {
            body.push_str(&format!("rebuff_matches_total{{ip=\"192.0.2.{i}\"}} {i}\n"));
        }
        body.into_bytes()
    }

    impl Harness {
        async fn start(limits: Limits, web: Option<webconfig::WebConfig>) -> Harness {
            let fail = Arc::new(AtomicBool::new(false));
            let failing = fail.clone();
            let render = Arc::new(move |format: Format| -> RenderFuture {
                let fail = failing.load(Ordering::SeqCst);
                Box::pin(async move {
                    if fail {
                        Err(anyhow::anyhow!("store unavailable\nsecond line"))
                            .context("reading the tracker")
                    } else {
                        Ok(body_for(format))
                    }
                })
            });
            Harness::with_render(limits, web, render, fail).await
        }

        async fn with_render(
            limits: Limits,
            web: Option<webconfig::WebConfig>,
            render: Arc<dyn Fn(Format) -> RenderFuture + Send + Sync>,
            fail: Arc<AtomicBool>,
        ) -> Harness {
            let listener = bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let ready = Arc::new(AtomicBool::new(false));
            let shutdown = CancellationToken::new();
            let server = tokio::spawn(
                Server {
                    listener,
                    endpoint: Endpoint {
                        render,
                        ready: ready.clone(),
                        web,
                    },
                    shutdown: shutdown.clone(),
                    limits,
                }
                .run(),
            );
            Harness {
                addr,
                ready,
                fail,
                shutdown,
                server,
            }
        }

        async fn connect(&self) -> TcpStream {
            TcpStream::connect(self.addr).await.expect("connect")
        }

        /// One request on a fresh connection.
        async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
            let mut stream = self.connect().await;
            exchange(&mut stream, "GET", path, headers).await
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(PATIENCE, self.server)
                .await
                .expect("the server stops within the grace period")
                .expect("server task");
        }
    }

    /// A response as the test client read it.
    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn text(&self) -> &str {
            std::str::from_utf8(&self.body).expect("UTF-8 body")
        }
    }

    /// Sends one request and reads its response, within [`PATIENCE`].
    async fn exchange<S>(
        stream: &mut S,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        try_exchange(stream, method, path, headers)
            .await
            .expect("a response")
    }

    async fn try_exchange<S>(
        stream: &mut S,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Reply>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        tokio::time::timeout(PATIENCE, async {
            stream.write_all(request.as_bytes()).await?;
            read_reply(stream, method == "HEAD").await
        })
        .await
        .expect("answered in time")
    }

    /// Reads one response framed by Content-Length.
    async fn read_reply<S: AsyncRead + Unpin>(
        stream: &mut S,
        head_only: bool,
    ) -> std::io::Result<Reply> {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&buf[..head_end])
            .expect("text head")
            .to_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').expect("header line");
                (name.trim().to_owned(), value.trim().to_owned())
            })
            .collect();
        let mut body = buf[head_end + 4..].to_vec();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("content length"))
            .expect("a Content-Length");
        if !head_only {
            while body.len() < length {
                let mut chunk = [0u8; 65536];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(body.len(), length, "nothing after the body");
        }
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// True once the server has closed the connection (end of file or
    /// reset), polled until [`PATIENCE`] runs out.
    async fn closed_by_server(stream: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => rest.is_empty(),
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Err(_) => false,
        }
    }

    fn gunzip(body: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut plain)
            .expect("valid gzip");
        plain
    }

    fn web_config(text: &str) -> webconfig::WebConfig {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("web.yml");
        std::fs::write(&path, text).expect("write");
        webconfig::WebConfig::load(&path).expect("valid web config")
    }

    fn tls_web_config(extra: &str) -> webconfig::WebConfig {
        web_config(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n{extra}",
            fixture("server.crt").display(),
            fixture("server.key").display()
        ))
    }

    /// A TLS client that trusts the test CA, optionally presenting the
    /// test client certificate.
    fn tls_connector(client_cert: bool) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(fixture("ca.crt")).expect("ca.crt") {
            roots.add(cert.expect("CA certificate")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = if client_cert {
            let chain = CertificateDer::pem_file_iter(fixture("client.crt"))
                .expect("client.crt")
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key = PrivateKeyDer::from_pem_file(fixture("client.key")).expect("client.key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        } else {
            builder.with_no_client_auth()
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    async fn tls_connect(
        harness: &Harness,
        client_cert: bool,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
        tls_connector(client_cert)
            .connect(name, harness.connect().await)
            .await
    }

    #[test]
    fn openmetrics_is_chosen_only_when_the_client_prefers_it() {
        assert_eq!(
            Format::negotiate(Some(PROMETHEUS_ACCEPT)),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("")), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; version=0.0.1")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        // Equal weights: OpenMetrics wins.
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.5,application/openmetrics-text;q=0.5")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some(
                "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5"
            )),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=1.0.0;q=0")),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=2.0.0")),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=banana")),
            Format::Prometheus
        );
        // Prometheus 3 adds an escaping parameter.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                 text/plain;version=0.0.4;q=0.3"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::Prometheus.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            Format::OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }

    #[test]
    fn gzip_is_accepted_when_listed_or_wildcarded_and_not_refused() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=1.0, *;q=0.5")));
        assert!(accepts_gzip(Some("GZIP")));
        assert!(accepts_gzip(Some("x-gzip")));
        assert!(accepts_gzip(Some("*")));
        assert!(accepts_gzip(Some("*;q=0, gzip")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("gzip; q=0.000")));
        assert!(!accepts_gzip(Some("*, gzip;q=0")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(Some("br, deflate")));
        assert!(!accepts_gzip(Some("")));
        assert!(!accepts_gzip(None));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_scrape_gets_the_rendered_body_in_the_negotiated_format() {
        let harness = Harness::start(test_limits(), None).await;
        let reply = harness.get("/metrics", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert_eq!(reply.body, body_for(Format::Prometheus));

        let reply = harness
            .get("/metrics", &[("Accept", PROMETHEUS_ACCEPT)])
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert_eq!(reply.body, body_for(Format::OpenMetrics));

        // Several requests on one kept-alive connection.
        let mut stream = harness.connect().await;
        for _ in 0..3 {
            let reply = exchange(&mut stream, "GET", "/metrics", &[]).await;
            assert_eq!(reply.status, 200);
        }
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn gzip_is_used_only_when_the_client_accepts_it() {
        let harness = Harness::start(test_limits(), None).await;
        let plain = harness.get("/metrics", &[]).await;
        assert_eq!(plain.header("content-encoding"), None);
        assert_eq!(plain.header("vary"), Some("Accept-Encoding"));

        let zipped = harness
            .get("/metrics", &[("Accept-Encoding", "gzip, deflate")])
            .await;
        assert_eq!(zipped.status, 200);
        assert_eq!(zipped.header("content-encoding"), Some("gzip"));
        assert_eq!(zipped.header("vary"), Some("Accept-Encoding"));
        assert!(zipped.body.len() < plain.body.len());
        assert_eq!(gunzip(&zipped.body), plain.body);

        let refused = harness
            .get("/metrics", &[("Accept-Encoding", "gzip;q=0, identity")])
            .await;
        assert_eq!(refused.header("content-encoding"), None);
        assert_eq!(refused.body, plain.body);
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn head_gets_the_headers_without_the_body() {
        let harness = Harness::start(test_limits(), None).await;
        let mut stream = harness.connect().await;
        let reply = exchange(&mut stream, "HEAD", "/metrics", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-length"),
            Some(body_for(Format::Prometheus).len().to_string().as_str())
        );
        assert!(reply.body.is_empty());
        // The connection is still in step: the next answer is read whole.
        let reply = exchange(&mut stream, "GET", "/-/healthy", &[]).await;
        assert_eq!(reply.text(), "OK\n");
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unknown_paths_get_404_and_other_methods_get_405() {
        let harness = Harness::start(test_limits(), None).await;
        let reply = harness.get("/metricz", &[]).await;
        assert_eq!(reply.status, 404);
        let mut stream = harness.connect().await;
        let reply = exchange(&mut stream, "POST", "/metrics", &[("Content-Length", "0")]).await;
        assert_eq!(reply.status, 405);
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
        let mut stream = harness.connect().await;
        let reply = exchange(&mut stream, "DELETE", "/-/ready", &[]).await;
        assert_eq!(reply.status, 405);
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_body_is_never_read_and_does_not_break_the_answer() {
        let harness = Harness::start(test_limits(), None).await;
        let mut stream = harness.connect().await;
        // Announces a megabyte and sends none of it.
        let reply = exchange(
            &mut stream,
            "GET",
            "/metrics",
            &[("Content-Length", "1048576")],
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, body_for(Format::Prometheus));
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn oversized_request_headers_are_refused() {
        let harness = Harness::start(test_limits(), None).await;
        let mut stream = harness.connect().await;
        let big = "x".repeat(20 * 1024);
        match try_exchange(&mut stream, "GET", "/metrics", &[("X-Padding", &big)]).await {
            Ok(reply) => assert_eq!(reply.status, 431),
            // Closed before or while the head was being sent.
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                ),
                "{e}"
            ),
        }
        assert_eq!(harness.get("/metrics", &[]).await.status, 200);
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_large_exposition_is_served_whole() {
        let large: Vec<u8> = (0..100_000)
            .flat_map(|i| {
                format!(
                    "rebuff_matches_total{{ip=\"10.0.{}.{}\"}} 1\n",
                    i / 256,
                    i % 256
                )
                .into_bytes()
            })
            .collect();
        let expected = large.clone();
        let render = Arc::new(move |_: Format| -> RenderFuture {
            let body = large.clone();
            Box::pin(async move { Ok(body) })
        });
        let harness = Harness::with_render(
            test_limits(),
            None,
            render,
            Arc::new(AtomicBool::new(false)),
        )
        .await;
        let reply = harness.get("/metrics", &[]).await;
        assert_eq!(reply.status, 200);
        assert!(reply.body == expected, "the body arrived changed");
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn health_is_always_ok_and_ready_answers_503_until_the_daemon_is_ready() {
        let harness = Harness::start(test_limits(), None).await;
        let reply = harness.get("/-/healthy", &[]).await;
        assert_eq!((reply.status, reply.text()), (200, "OK\n"));
        let reply = harness.get("/-/ready", &[]).await;
        assert_eq!((reply.status, reply.text()), (503, "Not ready\n"));
        harness.ready.store(true, Ordering::SeqCst);
        let reply = harness.get("/-/ready", &[]).await;
        assert_eq!((reply.status, reply.text()), (200, "Ready\n"));
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_landing_page_links_the_endpoints_and_shows_the_version() {
        let harness = Harness::start(test_limits(), None).await;
        let reply = harness.get("/", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let page = reply.text();
        assert!(page.contains("<title>rebuff</title>"), "{page}");
        for link in ["href=\"metrics\"", "href=\"-/healthy\"", "href=\"-/ready\""] {
            assert!(page.contains(link), "{link} in {page}");
        }
        assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_render_error_becomes_a_500_naming_it_on_one_line() {
        let harness = Harness::start(test_limits(), None).await;
        harness.fail.store(true, Ordering::SeqCst);
        let reply = harness
            .get("/metrics", &[("Accept-Encoding", "gzip")])
            .await;
        assert_eq!(reply.status, 500);
        assert_eq!(reply.header("content-encoding"), None);
        assert_eq!(
            reply.text(),
            "cannot render the metrics: reading the tracker: store unavailable second line\n"
        );
        harness.fail.store(false, Ordering::SeqCst);
        assert_eq!(harness.get("/metrics", &[]).await.status, 200);
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_sends_nothing_does_not_block_another_scrape() {
        let harness = Harness::start(test_limits(), None).await;
        let _silent = harness.connect().await;
        let mut half = harness.connect().await;
        half.write_all(b"GET /metrics HTTP/1.1\r\nHost: lo")
            .await
            .expect("write");
        let reply = harness.get("/metrics", &[]).await;
        assert_eq!(reply.status, 200);
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_client_is_closed_after_the_header_timeout() {
        let harness = Harness::start(
            Limits {
                header_read_timeout: Duration::from_millis(100),
                ..test_limits()
            },
            None,
        )
        .await;
        let mut silent = harness.connect().await;
        assert!(closed_by_server(&mut silent).await);
        // An idle kept-alive connection gets the same timeout.
        let mut idle = harness.connect().await;
        exchange(&mut idle, "GET", "/-/healthy", &[]).await;
        assert!(closed_by_server(&mut idle).await);
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_is_closed_at_the_end_of_its_lifetime() {
        let harness = Harness::start(
            Limits {
                connection_lifetime: Duration::from_millis(100),
                ..test_limits()
            },
            None,
        )
        .await;
        let mut stream = harness.connect().await;
        // Keeps the connection busy: headers trickle in and never end.
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .expect("write");
        assert!(closed_by_server(&mut stream).await);
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn beyond_the_connection_cap_new_connections_are_closed_and_existing_ones_served() {
        let harness = Harness::start(
            Limits {
                max_connections: 2,
                ..test_limits()
            },
            None,
        )
        .await;
        let mut first = harness.connect().await;
        assert_eq!(
            exchange(&mut first, "GET", "/metrics", &[]).await.status,
            200
        );
        let mut second = harness.connect().await;
        let mut extra = harness.connect().await;
        assert!(closed_by_server(&mut extra).await);
        assert_eq!(
            exchange(&mut first, "GET", "/metrics", &[]).await.status,
            200
        );
        assert_eq!(
            exchange(&mut second, "GET", "/metrics", &[]).await.status,
            200
        );
        // Once a connection ends, its slot is free again.
        drop(first);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut next = harness.connect().await;
            if let Ok(reply) = try_exchange(&mut next, "GET", "/-/healthy", &[]).await {
                assert_eq!(reply.status, 200);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot never came back"
            );
            tokio::task::yield_now().await;
        }
        harness.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renders_run_at_most_the_configured_number_at_once() {
        let active = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let render = {
            let (active, most, gate, finished) =
                (active.clone(), most.clone(), gate.clone(), finished.clone());
            Arc::new(move |format: Format| -> RenderFuture {
                let (active, most, gate, finished) =
                    (active.clone(), most.clone(), gate.clone(), finished.clone());
                Box::pin(async move {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    gate.acquire().await.expect("gate open").forget();
                    active.fetch_sub(1, Ordering::SeqCst);
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok(body_for(format))
                })
            })
        };
        let harness = Harness::with_render(
            Limits {
                max_concurrent_renders: 2,
                ..test_limits()
            },
            None,
            render,
            Arc::new(AtomicBool::new(false)),
        )
        .await;
        let harness = Arc::new(harness);
        let mut scrapes = JoinSet::new();
        for _ in 0..5 {
            let harness = harness.clone();
            scrapes.spawn(async move { harness.get("/metrics", &[]).await.status });
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while active.load(Ordering::SeqCst) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "renders never started"
            );
            tokio::task::yield_now().await;
        }
        // Other requests still get through while the renders are stuck, and
        // the accept loop has by then taken all five scrapes.
        assert_eq!(harness.get("/-/healthy", &[]).await.status, 200);
        for released in 1..=5 {
            gate.add_permits(1);
            while finished.load(Ordering::SeqCst) < released {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "renders never finished"
                );
                tokio::task::yield_now().await;
            }
        }
        while let Some(status) = scrapes.join_next().await {
            assert_eq!(status.expect("scrape task"), 200);
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        Arc::into_inner(harness).expect("sole owner").stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_stops_accepting_and_closes_idle_connections() {
        let harness = Harness::start(test_limits(), None).await;
        let addr = harness.addr;
        let mut idle = harness.connect().await;
        exchange(&mut idle, "GET", "/-/healthy", &[]).await;
        let mut silent = harness.connect().await;
        harness.stop().await;
        assert!(closed_by_server(&mut idle).await);
        assert!(closed_by_server(&mut silent).await);
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn basic_auth_guards_every_page() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let web = web_config(&format!("basic_auth_users:\n  alice: {hash}\n"));
        let harness = Harness::start(test_limits(), Some(web)).await;
        let right = basic("alice", "s3cret");
        let reply = harness.get("/metrics", &[("Authorization", &right)]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, body_for(Format::Prometheus));
        for path in ["/metrics", "/-/healthy", "/-/ready", "/", "/nothing"] {
            let reply = harness.get(path, &[]).await;
            assert_eq!(reply.status, 401, "{path}");
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Basic realm=\"rebuff\""),
                "{path}"
            );
        }
        let wrong = basic("alice", "guess");
        let reply = harness.get("/metrics", &[("Authorization", &wrong)]).await;
        assert_eq!(reply.status, 401);
        let reply = harness
            .get("/-/healthy", &[("Authorization", &right)])
            .await;
        assert_eq!(reply.status, 200);
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn extra_headers_from_the_web_config_are_sent_on_every_answer() {
        let web = web_config("http_server_config:\n  headers:\n    X-Frame-Options: deny\n");
        let harness = Harness::start(test_limits(), Some(web)).await;
        for path in ["/metrics", "/nothing"] {
            let reply = harness.get(path, &[]).await;
            assert_eq!(reply.header("x-frame-options"), Some("deny"), "{path}");
        }
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_tls_scrape_is_served_with_the_configured_certificate() {
        let harness = Harness::start(test_limits(), Some(tls_web_config(""))).await;
        let mut stream = tls_connect(&harness, false).await.expect("TLS handshake");
        assert_eq!(
            stream.get_ref().1.alpn_protocol(),
            None,
            "the client offered no ALPN"
        );
        let reply = exchange(
            &mut stream,
            "GET",
            "/metrics",
            &[("Accept-Encoding", "gzip")],
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(gunzip(&reply.body), body_for(Format::Prometheus));
        // Plain HTTP on the TLS port gets no answer.
        let mut plain = harness.connect().await;
        assert!(
            try_exchange(&mut plain, "GET", "/metrics", &[])
                .await
                .is_err()
        );
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_tls_handshake_that_never_starts_is_timed_out() {
        let harness = Harness::start(
            Limits {
                tls_handshake_timeout: Duration::from_millis(100),
                ..test_limits()
            },
            Some(tls_web_config("")),
        )
        .await;
        let mut silent = harness.connect().await;
        assert!(closed_by_server(&mut silent).await);
        let mut stream = tls_connect(&harness, false).await.expect("TLS handshake");
        assert_eq!(
            exchange(&mut stream, "GET", "/-/healthy", &[]).await.status,
            200
        );
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn client_certificates_are_required_when_configured() {
        let web = tls_web_config(&format!(
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            fixture("ca.crt").display()
        ));
        let harness = Harness::start(test_limits(), Some(web)).await;
        let mut stream = tls_connect(&harness, true).await.expect("TLS handshake");
        assert_eq!(
            exchange(&mut stream, "GET", "/metrics", &[]).await.status,
            200
        );
        // Without a certificate: refused during the handshake (TLS 1.3
        // reports it on the first read).
        let refused = match tls_connect(&harness, false).await {
            Err(_) => true,
            Ok(mut stream) => try_exchange(&mut stream, "GET", "/metrics", &[])
                .await
                .is_err(),
        };
        assert!(refused);
        harness.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bind_names_the_address_it_cannot_use() {
        let error = bind("not an address").await.expect_err("bad address");
        assert!(
            format!("{error:#}").starts_with("cannot listen for metrics on not an address: "),
            "{error:#}"
        );
        let taken = bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("address").to_string();
        let error = bind(&addr).await.expect_err("address in use");
        assert!(
            format!("{error:#}").starts_with(&format!("cannot listen for metrics on {addr}: ")),
            "{error:#}"
        );
    }
}
