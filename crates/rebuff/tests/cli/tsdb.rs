//! Throwaway time-series databases for tests: a real Prometheus or
//! VictoriaMetrics on a free loopback port, keeping its data in a temp dir
//! and scraping the targets it is given, plus [`StaticExposition`], a tiny
//! HTTP server that hands them a canned exposition to scrape.
//!
//! The servers are the system's binaries (`prometheus`, `victoria-metrics`,
//! found on `PATH`). When one is missing, `start` prints "skipped: …" and
//! returns `None`, and the calling test returns early; when one is present
//! but does not come up, `start` panics with its log.
//!
//! The HTTP API is spoken with a blocking HTTP/1.0 client on
//! `std::net::TcpStream`: an HTTP/1.0 request makes both servers answer
//! with a plain, unchunked body ended by closing the connection.
//!
//! Nothing sleeps to let time pass: readiness and data are polled with a
//! deadline. Dropping a server SIGKILLs it; its temp dir goes with it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long a server may take to become ready on a loaded CI machine.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// How long one HTTP exchange with a server may take.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A Prometheus server scraping the given targets into a temp dir.
#[derive(Debug)]
pub struct Prometheus {
    server: Server,
}

impl Prometheus {
    /// Starts Prometheus on `127.0.0.1:<free port>`, scraping `targets`
    /// (`host:port`, path `/metrics`) every `interval` (e.g. `"1s"`) under
    /// the job name `reaction`. `None`, after printing "skipped: …", when
    /// the binary is missing.
    pub fn start(targets: &[String], interval: &str) -> Option<Prometheus> {
        Prometheus::start_with(&scrape_entry(targets, interval))
    }

    /// Starts Prometheus with one `scrape_configs` entry whose body
    /// (`job_name: …`, `scrape_interval: …`, `scheme: …`, `basic_auth: …`,
    /// `tls_config: …`, `static_configs: …`) is `scrape_yaml`, unindented.
    ///
    /// The evaluation interval is 1s, so subqueries without an explicit
    /// resolution (`x[5m:]`) step every second.
    pub fn start_with(scrape_yaml: &str) -> Option<Prometheus> {
        let binary = find_binary("prometheus")?;
        let config = format!(
            "global:\n  evaluation_interval: 1s\nscrape_configs:\n{}",
            list_item(scrape_yaml)
        );
        let server = Server::start(Flavour::Prometheus, &binary, &config, |dir, addr| {
            vec![
                format!("--config.file={}", dir.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                "--storage.tsdb.retention.time=1d".to_owned(),
                format!("--web.listen-address={addr}"),
            ]
        });
        Some(Prometheus { server })
    }

    /// `host:port` of the HTTP API.
    pub fn addr(&self) -> &str {
        &self.server.addr
    }

    /// An instant query at the current time: the response's `data`
    /// (`{"resultType": …, "result": …}`), or the server's error message.
    pub fn query(&self, promql: &str) -> Result<Value, String> {
        self.server.query(promql)
    }

    /// A range query over `[start, end]` (Unix seconds) every `step`
    /// (`"15s"`): the response's `data`, or the server's error message.
    pub fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: &str,
    ) -> Result<Value, String> {
        self.server.query_range(promql, start, end, step)
    }

    /// The values of `label` on the series `selector` matches, as Grafana's
    /// `label_values(selector, label)` lists them.
    pub fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String> {
        self.server.label_values(selector, label)
    }

    /// Polls until `promql` returns at least one sample; returns the
    /// response's `data`. Panics, with the server's log, after `timeout`.
    pub fn wait_for(&self, promql: &str, timeout: Duration) -> Value {
        self.server.wait_for(promql, timeout)
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// A single-node VictoriaMetrics scraping the given targets into a temp dir.
#[derive(Debug)]
pub struct VictoriaMetrics {
    server: Server,
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics on `127.0.0.1:<free port>`, scraping `targets`
    /// every `interval` under the job name `reaction`. `None`, after
    /// printing "skipped: …", when the binary is missing.
    pub fn start(targets: &[String], interval: &str) -> Option<VictoriaMetrics> {
        VictoriaMetrics::start_with(&scrape_entry(targets, interval))
    }

    /// Starts VictoriaMetrics with one `scrape_configs` entry whose body is
    /// `scrape_yaml`, as for [`Prometheus::start_with`].
    ///
    /// `-search.latencyOffset=0s` makes a sample queryable as soon as it is
    /// stored (the default hides the last 30 s), and the response cache is
    /// off so repeated queries see new samples.
    pub fn start_with(scrape_yaml: &str) -> Option<VictoriaMetrics> {
        let binary = find_binary("victoria-metrics")?;
        let config = format!("scrape_configs:\n{}", list_item(scrape_yaml));
        let server = Server::start(Flavour::VictoriaMetrics, &binary, &config, |dir, addr| {
            vec![
                format!(
                    "-promscrape.config={}",
                    dir.join("prometheus.yml").display()
                ),
                format!("-storageDataPath={}", dir.join("data").display()),
                "-retentionPeriod=1d".to_owned(),
                format!("-httpListenAddr={addr}"),
                "-search.latencyOffset=0s".to_owned(),
                "-search.disableCache".to_owned(),
            ]
        });
        Some(VictoriaMetrics { server })
    }

    /// `host:port` of the HTTP API.
    pub fn addr(&self) -> &str {
        &self.server.addr
    }

    /// An instant query at the current time: the response's `data`, or
    /// the server's error message.
    pub fn query(&self, promql: &str) -> Result<Value, String> {
        self.server.query(promql)
    }

    /// A range query over `[start, end]` (Unix seconds) every `step`.
    pub fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: &str,
    ) -> Result<Value, String> {
        self.server.query_range(promql, start, end, step)
    }

    /// The values of `label` on the series `selector` matches.
    pub fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String> {
        self.server.label_values(selector, label)
    }

    /// Polls until `promql` returns at least one sample; returns the
    /// response's `data`. Panics, with the server's log, after `timeout`.
    pub fn wait_for(&self, promql: &str, timeout: Duration) -> Value {
        self.server.wait_for(promql, timeout)
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// Whether a query's `data` holds at least one sample: a non-empty vector
/// or matrix, or any scalar or string.
pub fn has_samples(data: &Value) -> bool {
    match data.get("result") {
        Some(Value::Array(result)) => match data.get("resultType").and_then(Value::as_str) {
            Some("vector" | "matrix") => !result.is_empty(),
            _ => true,
        },
        _ => false,
    }
}

/// Seconds since the Unix epoch, as the query API takes them.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// The job-`reaction` scrape entry `start` uses.
fn scrape_entry(targets: &[String], interval: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "job_name: reaction\nscrape_interval: {interval}\nscrape_timeout: {interval}\n\
         static_configs:\n  - targets: [{}]\n",
        targets.join(", ")
    )
}

/// Turns a mapping's text into the first item of a YAML list at indent 2.
fn list_item(body: &str) -> String {
    let mut out = String::new();
    for (i, line) in body.lines().enumerate() {
        out.push_str(if i == 0 { "  - " } else { "    " });
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `name` on `PATH`, or `None` after printing why the test is skipped.
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        eprintln!(
            "skipped: `{name}` is not installed (apt-get install prometheus victoria-metrics)"
        );
    }
    found
}

#[derive(Debug, Clone, Copy)]
enum Flavour {
    Prometheus,
    VictoriaMetrics,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::Prometheus => "prometheus",
            Flavour::VictoriaMetrics => "victoria-metrics",
        }
    }

    fn ready_path(self) -> &'static str {
        match self {
            Flavour::Prometheus => "/-/ready",
            Flavour::VictoriaMetrics => "/health",
        }
    }
}

/// The process, its temp dir and its address; the part both servers share.
#[derive(Debug)]
struct Server {
    flavour: Flavour,
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
}

impl Server {
    /// Writes `config` as `prometheus.yml` in a fresh temp dir and runs
    /// `binary` with `args(dir, addr)` until it answers its readiness path.
    /// A port taken between choosing and binding it is retried with another.
    fn start(
        flavour: Flavour,
        binary: &Path,
        config: &str,
        args: impl Fn(&Path, &str) -> Vec<String>,
    ) -> Server {
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("prometheus.yml"), config)
                .expect("write the scrape config");
            let log = std::fs::File::create(dir.path().join("server.log")).expect("create log");
            let addr = format!("127.0.0.1:{}", free_port());
            let child = Command::new(binary)
                .args(args(dir.path(), &addr))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
            let mut server = Server {
                flavour,
                child,
                dir,
                addr,
            };
            match server.wait_ready() {
                Ok(()) => return server,
                // Dropping the server kills the child and removes its dir.
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!(
                    "{} did not become ready: {log}\nconfig:\n{config}",
                    flavour.name()
                ),
            }
        }
        panic!("{} found no free port in 3 attempts", flavour.name());
    }

    /// Polls the readiness path; `Err(log)` when the child exits or the
    /// deadline passes.
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited ({status}):\n{}", self.log()));
            }
            if let Ok((200, _)) = http_get(&self.addr, self.flavour.ready_path()) {
                return Ok(());
            }
            if start.elapsed() > STARTUP_DEADLINE {
                return Err(format!(
                    "not ready after {STARTUP_DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// GETs an API path; the `data` of a `success` answer, or the error.
    fn api(&self, target: &str) -> Result<Value, String> {
        let (status, body) = http_get(&self.addr, target)?;
        let json: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if json.get("status").and_then(Value::as_str) == Some("success") {
            Ok(json.get("data").cloned().unwrap_or(Value::Null))
        } else {
            let error = json
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| body.clone(), str::to_owned);
            Err(format!("HTTP {status}: {error}"))
        }
    }

    fn query(&self, promql: &str) -> Result<Value, String> {
        self.api(&format!(
            "/api/v1/query?query={}&time={:.3}",
            url_encode(promql),
            unix_now()
        ))
    }

    fn query_range(&self, promql: &str, start: f64, end: f64, step: &str) -> Result<Value, String> {
        self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={}",
            url_encode(promql),
            url_encode(step)
        ))
    }

    fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String> {
        let data = self.api(&format!(
            "/api/v1/label/{}/values?match[]={}",
            url_encode(label),
            url_encode(selector)
        ))?;
        let values = data
            .as_array()
            .ok_or_else(|| format!("label values are not a list: {data}"))?;
        Ok(values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    fn wait_for(&self, promql: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let last = self.query(promql);
            if let Ok(data) = &last
                && has_samples(data)
            {
                return data.clone();
            }
            assert!(
                start.elapsed() < timeout,
                "{} returned nothing for `{promql}` within {timeout:?} (last answer: {last:?})\n{}",
                self.flavour.name(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One HTTP/1.0 GET: the status code and the body. HTTP/1.0 keeps the
/// answer unchunked and ends it with the connection.
pub fn http_get(addr: &str, target: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("set timeouts: {e}"))?;
    write!(
        stream,
        "GET {target} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in the answer: {text}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in the answer: {head}"))?;
    Ok((status, body.to_owned()))
}

/// The body [`StaticExposition`] serves for its `n`-th request (from 1).
type Body = Box<dyn Fn(u64) -> String + Send>;

/// A tiny HTTP/1.1 server on `127.0.0.1:<free port>` that answers every GET
/// with an exposition (`Content-Type: text/plain; version=0.0.4`), one
/// request per connection. Stops on drop.
#[derive(Debug)]
pub struct StaticExposition {
    addr: String,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StaticExposition {
    /// Serves `text` to every request.
    pub fn start(text: impl Into<String>) -> StaticExposition {
        let text = text.into();
        StaticExposition::from_fn(move |_| text.clone())
    }

    /// Serves `body(n)` to the `n`-th request (from 1), so counters can
    /// grow from one scrape to the next.
    pub fn from_fn(body: impl Fn(u64) -> String + Send + 'static) -> StaticExposition {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the exposition server");
        let addr = listener.local_addr().expect("local address").to_string();
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let body: Body = Box::new(body);
        let thread = {
            let (served, stop) = (Arc::clone(&served), Arc::clone(&stop));
            std::thread::spawn(move || serve(&listener, &body, &served, &stop))
        };
        StaticExposition {
            addr,
            served,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:port`, as a scrape target.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// How many requests have been answered.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for StaticExposition {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The accept loop: connections are answered one at a time, which keeps the
/// request numbering simple; a scrape is a few kilobytes.
fn serve(listener: &TcpListener, body: &Body, served: &AtomicU64, stop: &AtomicBool) {
    for connection in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut connection) = connection else {
            continue;
        };
        let _ = connection.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = connection.set_write_timeout(Some(Duration::from_secs(2)));
        let Some(request) = read_head(&mut connection) else {
            continue;
        };
        let answer = if request.starts_with("GET ") {
            let n = served.fetch_add(1, Ordering::SeqCst) + 1;
            let text = body(n);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )
        } else {
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_owned()
        };
        let _ = connection.write_all(answer.as_bytes());
    }
}

/// Reads a request's head (up to the blank line); `None` when the peer
/// sends nothing usable in time.
fn read_head(connection: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = connection.read(&mut chunk).ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn a_static_exposition_answers_every_get_with_its_text() {
    let text = "# TYPE rebuff_store_errors_total counter\nrebuff_store_errors_total 0\n";
    let server = StaticExposition::start(text);
    for _ in 0..2 {
        let (status, body) = http_get(&server.addr(), "/metrics").expect("the server answers");
        assert_eq!(status, 200);
        assert_eq!(body, text);
    }
    assert_eq!(server.served(), 2);
}
