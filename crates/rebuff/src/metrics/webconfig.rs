//! The Prometheus web-config file: TLS and basic auth for the metrics endpoint.
//!
//! Owns the file's format, which is the one of Prometheus's exporter-toolkit
//! (`--web.config.file`), so a file written for node_exporter works here:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt            # PEM chain, relative to this file
//!   key_file: server.key             # PEM key: PKCS#8, PKCS#1 or SEC1
//!   client_auth_type: NoClientCert   # or VerifyClientCertIfGiven, RequireAndVerifyClientCert
//!   client_ca_file: ca.crt           # required when client certificates are verified
//!   min_version: TLS12               # TLS12 | TLS13
//!   max_version: TLS13
//! basic_auth_users:
//!   alice: $2y$10$...                # bcrypt hash
//! http_server_config:
//!   headers: {X-Frame-Options: deny}
//! ```
//!
//! [`WebConfig::load`] reads, validates and compiles the file once: the
//! certificates and key are loaded into a rustls configuration, every hash is
//! checked to be a bcrypt hash and every header name and value is checked,
//! so a bad file fails at start and nothing is parsed per request. Receives
//! the `Authorization` header of each request ([`WebConfig::authorize`]);
//! sends nothing.
//!
//! bcrypt is slow on purpose (tens of milliseconds), so verifications run on
//! the blocking pool, at most four at a time, and the credentials that
//! verified are remembered (in memory only, the last 64 pairs, as
//! exporter-toolkit does) so that a scraper pays for bcrypt once rather than
//! on every scrape.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use hyper::header::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, SupportedProtocolVersion};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::tree::{Key, Loc, Node, ParseError, Value};
use crate::config::validate::unknown_key_message;
use crate::config::{ConfigError, ConfigErrors, yaml};

/// bcrypt verifications run at once; more wait. Each takes a core for tens
/// of milliseconds, so a flood of wrong passwords must not take them all.
const MAX_CONCURRENT_VERIFICATIONS: usize = 4;

/// Successful (user, password) pairs remembered.
const AUTH_CACHE_SIZE: usize = 64;

/// The headers `http_server_config.headers` may set, and the values each
/// accepts (`None`: any value). The same list as exporter-toolkit's.
const EXTRA_HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

/// Why a web-config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read the web config file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// Every problem found, each with its place and key path.
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// A loaded web-config file: the TLS settings and the basic-auth users.
///
/// Cheap to clone: clones share the compiled TLS configuration and the
/// cache of verified credentials.
#[derive(Clone)]
pub struct WebConfig {
    inner: Arc<Inner>,
}

struct Inner {
    tls: Option<TlsAcceptor>,
    /// (user, bcrypt hash), in file order.
    users: Vec<(String, String)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    verified: Mutex<VecDeque<(String, Vec<u8>)>>,
    verifying: Semaphore,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes and cached credentials stay out of logs.
        let users: Vec<&str> = self.inner.users.iter().map(|(u, _)| u.as_str()).collect();
        f.debug_struct("WebConfig")
            .field("tls", &self.inner.tls.is_some())
            .field("users", &users)
            .field("headers", &self.inner.headers)
            .finish_non_exhaustive()
    }
}

impl WebConfig {
    /// Reads and validates the file. Errors name the file, line:col and the
    /// key path, and say what is accepted.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| WebConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let root = yaml::parse_yaml(path, &text)?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut loader = Loader {
            base,
            errors: Vec::new(),
        };
        let compiled = loader.root(&root);
        // In file order, whichever pass found them.
        loader
            .errors
            .sort_by_key(|e| e.loc.as_ref().map(|loc| (loc.line, loc.col)));
        match compiled {
            Some(inner) if loader.errors.is_empty() => Ok(WebConfig {
                inner: Arc::new(inner),
            }),
            _ => Err(WebConfigError::Invalid(ConfigErrors(loader.errors))),
        }
    }

    /// The acceptor for TLS connections; `None` when the file has no
    /// `tls_server_config` (plain HTTP).
    pub fn tls_acceptor(&self) -> Option<TlsAcceptor> {
        self.inner.tls.clone()
    }

    /// The headers added to every response (`http_server_config.headers`).
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.inner.headers
    }

    /// Checks an `Authorization` header value. Ok when no users are configured.
    pub async fn authorize(&self, header: Option<&str>) -> bool {
        let inner = &self.inner;
        let Some((_, first_hash)) = inner.users.first() else {
            return true;
        };
        let Some((user, password)) = header.and_then(parse_basic) else {
            return false;
        };
        if inner.is_cached(&user, &password) {
            return true;
        }
        // Every user is compared, so the time taken does not tell how far
        // into the list a name matched.
        let mut stored = None;
        for (name, hash) in &inner.users {
            if constant_time_eq(name.as_bytes(), user.as_bytes()) {
                stored = Some(hash);
            }
        }
        // An unknown user still pays for one bcrypt verification, so that
        // timing does not reveal which user names exist.
        let known = stored.is_some();
        let hash = stored.unwrap_or(first_hash).clone();
        let Ok(_permit) = inner.verifying.acquire().await else {
            return false;
        };
        let checked = password.clone();
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(&checked, &hash))
            .await
            .is_ok_and(|result| result.unwrap_or(false));
        let accepted = verified && known;
        if accepted {
            inner.remember(user, password);
        }
        accepted
    }
}

impl Inner {
    fn is_cached(&self, user: &str, password: &[u8]) -> bool {
        let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        let mut hit = false;
        for (u, p) in verified.iter() {
            // Non-short-circuiting `&`: both comparisons always run.
            hit |= constant_time_eq(u.as_bytes(), user.as_bytes()) & constant_time_eq(p, password);
        }
        hit
    }

    fn remember(&self, user: String, password: Vec<u8>) {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.iter().any(|(u, p)| *u == user && *p == password) {
            return;
        }
        if verified.len() >= AUTH_CACHE_SIZE {
            verified.pop_front();
        }
        verified.push_back((user, password));
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// `Basic base64(user:password)` -> (user, password). The scheme is
/// case-insensitive; the user must be UTF-8 (it is compared with the file's
/// names), the password may be any bytes.
fn parse_basic(header: &str) -> Option<(String, Vec<u8>)> {
    let (scheme, credentials) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = decode_base64(credentials.trim())?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// Standard base64 (RFC 4648 section 4), padding optional.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let digits = text
        .strip_suffix("==")
        .or_else(|| text.strip_suffix('='))
        .unwrap_or(text);
    if digits.len() % 4 == 1 || (digits.len() != text.len() && !text.len().is_multiple_of(4)) {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in digits.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Which client certificates the TLS server asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    None,
    VerifyIfGiven,
    RequireAndVerify,
}

/// The TLS versions the file may name, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "TLS12",
            TlsVersion::Tls13 => "TLS13",
        })
    }
}

const CLIENT_AUTH_TYPES: &str = "NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert";

type Entries = [(Key, Node)];

/// Walks the tree once, collecting every problem rather than stopping at
/// the first, so a user fixes the file in one round.
struct Loader<'a> {
    /// Directory relative file names are resolved against.
    base: &'a Path,
    errors: Vec<ConfigError>,
}

impl Loader<'_> {
    fn error(&mut self, loc: &Loc, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            loc: Some(loc.clone()),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn root(&mut self, root: &Node) -> Option<Inner> {
        let entries = self.map(root, "", "a map of web settings")?;
        self.known_keys(
            entries,
            "",
            &[
                "tls_server_config",
                "basic_auth_users",
                "http_server_config",
            ],
        );
        let mut tls = None;
        let mut users = Vec::new();
        let mut headers = Vec::new();
        for (key, node) in entries {
            match key.name.as_str() {
                "tls_server_config" => tls = self.tls(node, &key.name),
                "basic_auth_users" => users = self.users(node, &key.name),
                "http_server_config" => headers = self.http(node, &key.name),
                _ => {}
            }
        }
        Some(Inner {
            tls,
            users,
            headers,
            verified: Mutex::new(VecDeque::new()),
            verifying: Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
        })
    }

    fn tls(&mut self, node: &Node, path: &str) -> Option<TlsAcceptor> {
        let entries = self.map(node, path, "a map with cert_file and key_file")?;
        self.known_keys(
            entries,
            path,
            &[
                "cert_file",
                "key_file",
                "client_auth_type",
                "client_ca_file",
                "min_version",
                "max_version",
            ],
        );
        let mut certs = None;
        let mut key = None;
        let mut client_auth = (ClientAuth::None, None);
        let mut client_ca = None;
        let mut min_version = TlsVersion::Tls12;
        let mut max_version = TlsVersion::Tls13;
        let mut min_node = None;
        for (k, v) in entries {
            let here = format!("{path}.{}", k.name);
            match k.name.as_str() {
                "cert_file" => certs = self.certificates(v, &here).map(|c| (c, v)),
                "key_file" => key = self.private_key(v, &here),
                "client_auth_type" => {
                    let auth = self.client_auth(v, &here).unwrap_or(ClientAuth::None);
                    client_auth = (auth, Some(v));
                }
                "client_ca_file" => client_ca = self.client_roots(v, &here).map(|r| (r, v)),
                "min_version" => {
                    min_version = self.tls_version(v, &here).unwrap_or(min_version);
                    min_node = Some(v);
                }
                "max_version" => max_version = self.tls_version(v, &here).unwrap_or(max_version),
                _ => {}
            }
        }
        for required in ["cert_file", "key_file"] {
            if !entries.iter().any(|(k, _)| k.name == required) {
                self.error(
                    &node.loc,
                    path,
                    format!("missing {required}: TLS needs both cert_file and key_file"),
                );
            }
        }
        if min_version > max_version {
            self.error(
                &min_node.unwrap_or(node).loc,
                &format!("{path}.min_version"),
                format!("min_version {min_version} is above max_version {max_version}"),
            );
        }
        let roots = match (client_auth, client_ca) {
            ((ClientAuth::None, _), None) => None,
            ((ClientAuth::None, _), Some((_, ca_node))) => {
                self.error(
                    &ca_node.loc,
                    &format!("{path}.client_ca_file"),
                    "client_ca_file is set but client_auth_type is NoClientCert; \
                     set client_auth_type to VerifyClientCertIfGiven or RequireAndVerifyClientCert",
                );
                None
            }
            ((_, auth_node), None) => {
                // Also reached when client_ca_file was given but unusable,
                // which is reported already.
                if !entries.iter().any(|(k, _)| k.name == "client_ca_file") {
                    self.error(
                        &auth_node.unwrap_or(node).loc,
                        &format!("{path}.client_auth_type"),
                        "verifying client certificates needs client_ca_file",
                    );
                }
                return None;
            }
            (_, Some((roots, _))) => Some(roots),
        };
        let versions: Vec<&'static SupportedProtocolVersion> =
            [TlsVersion::Tls12, TlsVersion::Tls13]
                .into_iter()
                .filter(|v| (min_version..=max_version).contains(v))
                .map(TlsVersion::rustls)
                .collect();
        let ((chain, cert_node), key) = (certs?, key?);
        if versions.is_empty() {
            return None;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
        {
            Ok(builder) => builder,
            Err(e) => {
                self.error(&node.loc, path, format!("unusable TLS versions: {e}"));
                return None;
            }
        };
        let builder = match roots {
            None => builder.with_no_client_auth(),
            Some(roots) => match client_verifier(roots, provider, client_auth.0) {
                Ok(verifier) => builder.with_client_cert_verifier(verifier),
                Err(e) => {
                    self.error(
                        &node.loc,
                        &format!("{path}.client_ca_file"),
                        format!("unusable client CA: {e}"),
                    );
                    return None;
                }
            },
        };
        let mut config = match builder.with_single_cert(chain, key) {
            Ok(config) => config,
            Err(e) => {
                self.error(
                    &cert_node.loc,
                    &format!("{path}.cert_file"),
                    format!("cannot use the certificate with key_file: {e}"),
                );
                return None;
            }
        };
        // HTTP/1 only: a client offering h2 and http/1.1 gets http/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(TlsAcceptor::from(Arc::new(config)))
    }

    fn file(&mut self, node: &Node, path: &str) -> Option<(PathBuf, Vec<u8>)> {
        let name = self.string(node, path, "a file name")?;
        let file = self.base.join(name);
        match std::fs::read(&file) {
            Ok(bytes) => Some((file, bytes)),
            Err(e) => {
                self.error(
                    &node.loc,
                    path,
                    format!("cannot read {}: {e}", file.display()),
                );
                None
            }
        }
    }

    fn certificates(&mut self, node: &Node, path: &str) -> Option<Vec<CertificateDer<'static>>> {
        let (file, bytes) = self.file(node, path)?;
        match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => Some(certs),
            Ok(_) => {
                self.error(
                    &node.loc,
                    path,
                    format!(
                        "no certificate in {} (expected PEM 'BEGIN CERTIFICATE' blocks)",
                        file.display()
                    ),
                );
                None
            }
            Err(e) => {
                self.error(
                    &node.loc,
                    path,
                    format!("invalid PEM in {}: {e}", file.display()),
                );
                None
            }
        }
    }

    fn private_key(&mut self, node: &Node, path: &str) -> Option<PrivateKeyDer<'static>> {
        let (file, bytes) = self.file(node, path)?;
        match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(key) => Some(key),
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                self.error(
                    &node.loc,
                    path,
                    format!(
                        "no private key in {} (expected a PEM 'PRIVATE KEY', \
                         'RSA PRIVATE KEY' or 'EC PRIVATE KEY' block)",
                        file.display()
                    ),
                );
                None
            }
            Err(e) => {
                self.error(
                    &node.loc,
                    path,
                    format!("invalid PEM in {}: {e}", file.display()),
                );
                None
            }
        }
    }

    fn client_roots(&mut self, node: &Node, path: &str) -> Option<RootCertStore> {
        let certs = self.certificates(node, path)?;
        let mut roots = RootCertStore::empty();
        for cert in certs {
            if let Err(e) = roots.add(cert) {
                self.error(&node.loc, path, format!("unusable CA certificate: {e}"));
                return None;
            }
        }
        Some(roots)
    }

    fn client_auth(&mut self, node: &Node, path: &str) -> Option<ClientAuth> {
        let name = self.string(node, path, "a client auth type")?;
        match name {
            "NoClientCert" => Some(ClientAuth::None),
            "VerifyClientCertIfGiven" => Some(ClientAuth::VerifyIfGiven),
            "RequireAndVerifyClientCert" => Some(ClientAuth::RequireAndVerify),
            other => {
                let why = match other {
                    "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => {
                        " is not supported: a client certificate is only useful verified"
                    }
                    _ => " is not a client auth type",
                };
                self.error(
                    &node.loc,
                    path,
                    format!("'{other}'{why} (accepted: {CLIENT_AUTH_TYPES})"),
                );
                None
            }
        }
    }

    fn tls_version(&mut self, node: &Node, path: &str) -> Option<TlsVersion> {
        let name = self.string(node, path, "a TLS version")?;
        match name {
            "TLS12" => Some(TlsVersion::Tls12),
            "TLS13" => Some(TlsVersion::Tls13),
            "TLS10" | "TLS11" => {
                self.error(
                    &node.loc,
                    path,
                    format!("{name} is not supported (accepted: TLS12, TLS13)"),
                );
                None
            }
            other => {
                self.error(
                    &node.loc,
                    path,
                    format!("'{other}' is not a TLS version (accepted: TLS12, TLS13)"),
                );
                None
            }
        }
    }

    fn users(&mut self, node: &Node, path: &str) -> Vec<(String, String)> {
        if node.value == Value::Null {
            return Vec::new();
        }
        let Some(entries) = self.map(node, path, "a map of user names to bcrypt hashes") else {
            return Vec::new();
        };
        let mut users = Vec::new();
        for (key, value) in entries {
            let here = format!("{path}.{}", key.name);
            if key.name.contains(':') {
                self.error(
                    &key.loc,
                    &here,
                    "a user name cannot contain ':' (basic auth separates the user and the password with it)",
                );
                continue;
            }
            let Some(hash) = self.string(value, &here, "a bcrypt hash") else {
                continue;
            };
            if hash.parse::<bcrypt::HashParts>().is_err() {
                self.error(
                    &value.loc,
                    &here,
                    "not a bcrypt hash (expected '$2y$', '$2b$' or '$2a$', a cost and 53 characters, \
                     as printed by `htpasswd -nBC 10 USER`)",
                );
                continue;
            }
            users.push((key.name.clone(), hash.to_owned()));
        }
        users
    }

    fn http(&mut self, node: &Node, path: &str) -> Vec<(HeaderName, HeaderValue)> {
        if node.value == Value::Null {
            return Vec::new();
        }
        let Some(entries) = self.map(node, path, "a map") else {
            return Vec::new();
        };
        // `http2` is accepted for compatibility; this server speaks HTTP/1
        // only, whatever it says.
        self.known_keys(entries, path, &["headers", "http2"]);
        let mut headers = Vec::new();
        for (key, value) in entries {
            let here = format!("{path}.{}", key.name);
            match key.name.as_str() {
                "headers" => headers = self.headers(value, &here),
                "http2" if !matches!(value.value, Value::Bool(_)) => {
                    self.error(
                        &value.loc,
                        &here,
                        format!("expected true or false, found {}", value.value.kind_name()),
                    );
                }
                _ => {}
            }
        }
        headers
    }

    fn headers(&mut self, node: &Node, path: &str) -> Vec<(HeaderName, HeaderValue)> {
        if node.value == Value::Null {
            return Vec::new();
        }
        let Some(entries) = self.map(node, path, "a map of header names to values") else {
            return Vec::new();
        };
        let accepted: Vec<&str> = EXTRA_HEADERS.iter().map(|(name, _)| *name).collect();
        let mut headers = Vec::new();
        for (key, value) in entries {
            let here = format!("{path}.{}", key.name);
            let Some((_, values)) = EXTRA_HEADERS.iter().find(|(name, _)| *name == key.name) else {
                self.error(
                    &key.loc,
                    &here,
                    format!(
                        "header '{}' cannot be set (accepted: {})",
                        key.name,
                        accepted.join(", ")
                    ),
                );
                continue;
            };
            let Some(text) = self.string(value, &here, "a header value") else {
                continue;
            };
            if let Some(values) = values
                && !values.contains(&text)
            {
                self.error(
                    &value.loc,
                    &here,
                    format!(
                        "'{text}' is not accepted here (accepted: {})",
                        values.join(", ")
                    ),
                );
                continue;
            }
            match (
                HeaderName::try_from(key.name.as_str()),
                HeaderValue::try_from(text),
            ) {
                (Ok(name), Ok(value)) => headers.push((name, value)),
                _ => self.error(&value.loc, &here, "not a valid HTTP header value"),
            }
        }
        headers
    }

    fn map<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n Entries> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            other => {
                self.error(
                    &node.loc,
                    path,
                    format!("expected {what}, found {}", other.kind_name()),
                );
                None
            }
        }
    }

    fn string<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::Str(s) if !s.is_empty() => Some(s),
            Value::Str(_) => {
                self.error(
                    &node.loc,
                    path,
                    format!("expected {what}, found an empty string"),
                );
                None
            }
            other => {
                self.error(
                    &node.loc,
                    path,
                    format!("expected {what}, found {}", other.kind_name()),
                );
                None
            }
        }
    }

    /// Reports keys not in `known`, suggesting the closest known one.
    fn known_keys(&mut self, entries: &Entries, path: &str, known: &[&str]) {
        for (key, _) in entries {
            if known.contains(&key.name.as_str()) {
                continue;
            }
            let here = if path.is_empty() {
                key.name.clone()
            } else {
                format!("{path}.{}", key.name)
            };
            self.error(&key.loc, &here, unknown_key_message(&key.name, known));
        }
    }
}

fn client_verifier(
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
    auth: ClientAuth,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, rustls::server::VerifierBuilderError>
{
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    match auth {
        ClientAuth::VerifyIfGiven => builder.allow_unauthenticated().build(),
        ClientAuth::None | ClientAuth::RequireAndVerify => builder.build(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The test certificates: a CA, a server certificate for localhost and
    /// 127.0.0.1 and a client certificate, both signed by the CA.
    pub(crate) fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name)
    }

    /// Writes `text` as `web.yml` in a fresh directory and loads it.
    fn load(text: &str) -> (tempfile::TempDir, Result<WebConfig, WebConfigError>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("web.yml");
        std::fs::write(&path, text).expect("write web.yml");
        let loaded = WebConfig::load(&path);
        (dir, loaded)
    }

    fn error_of(text: &str) -> (String, String) {
        let (dir, loaded) = load(text);
        let file = dir.path().join("web.yml").display().to_string();
        match loaded {
            Ok(config) => panic!("expected an error, loaded {config:?}"),
            Err(e) => (file, e.to_string()),
        }
    }

    /// An `Authorization` header value for `user:password`.
    pub(crate) fn basic(user: &str, password: &str) -> String {
        let mut encoded = String::new();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let raw = format!("{user}:{password}").into_bytes();
        for chunk in raw.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    encoded.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    encoded.push('=');
                }
            }
        }
        format!("Basic {encoded}")
    }

    #[test]
    fn a_valid_file_loads_tls_users_and_headers_with_paths_relative_to_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
        for name in ["server.crt", "server.key", "ca.crt"] {
            std::fs::copy(fixture(name), dir.path().join("certs").join(name)).expect("copy");
        }
        let hash = bcrypt::hash("secret", 4).expect("hash");
        let path = dir.path().join("web.yml");
        std::fs::write(
            &path,
            format!(
                "tls_server_config:\n  cert_file: certs/server.crt\n  key_file: certs/server.key\n  \
                 client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: certs/ca.crt\n  \
                 min_version: TLS12\n  max_version: TLS13\n\
                 basic_auth_users:\n  alice: {hash}\n  bob: {hash}\n\
                 http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    \
                 Content-Security-Policy: \"default-src 'self'\"\n"
            ),
        )
        .expect("write");
        let config = WebConfig::load(&path).expect("valid file");
        assert!(config.tls_acceptor().is_some());
        let debug = format!("{config:?}");
        assert!(debug.contains(r#"users: ["alice", "bob"]"#), "{debug}");
        assert!(!debug.contains(&hash), "hashes stay out of Debug: {debug}");
        let headers: Vec<(&str, &str)> = config
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().expect("text")))
            .collect();
        assert_eq!(
            headers,
            [
                ("x-frame-options", "deny"),
                ("content-security-policy", "default-src 'self'")
            ]
        );
    }

    #[test]
    fn an_empty_file_means_plain_http_without_auth() {
        let (_dir, loaded) = load("# nothing yet\n");
        let config = loaded.expect("empty file");
        assert!(config.tls_acceptor().is_none());
        assert!(config.headers().is_empty());
    }

    #[test]
    fn an_unknown_key_is_reported_with_its_place_path_and_a_suggestion() {
        let crt = fixture("server.crt");
        let key = fixture("server.key");
        let (file, error) = error_of(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  min_verison: TLS12\nbasic_auth_user: {{}}\n",
            crt.display(),
            key.display()
        ));
        assert_eq!(
            error,
            format!(
                "{file}:4:3: tls_server_config.min_verison: unknown key 'min_verison'; did you mean \
                 'min_version'? (accepted here: cert_file, key_file, client_auth_type, client_ca_file, \
                 min_version, max_version)\n\
                 {file}:5:1: basic_auth_user: unknown key 'basic_auth_user'; did you mean 'basic_auth_users'? \
                 (accepted here: tls_server_config, basic_auth_users, http_server_config)"
            )
        );
    }

    #[test]
    fn tls_without_a_key_file_is_refused() {
        let (file, error) = error_of(&format!(
            "tls_server_config:\n  cert_file: {}\n",
            fixture("server.crt").display()
        ));
        assert_eq!(
            error,
            format!(
                "{file}:2:3: tls_server_config: missing key_file: TLS needs both cert_file and key_file"
            )
        );
    }

    #[test]
    fn an_unknown_client_auth_type_is_refused_naming_the_accepted_ones() {
        let (file, error) = error_of(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAnyClientCert\n",
            fixture("server.crt").display(),
            fixture("server.key").display()
        ));
        assert_eq!(
            error,
            format!(
                "{file}:4:21: tls_server_config.client_auth_type: 'RequireAnyClientCert' is not supported: \
                 a client certificate is only useful verified (accepted: NoClientCert, \
                 VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
            )
        );
        let (_, error) = error_of(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: Maybe\n",
            fixture("server.crt").display(),
            fixture("server.key").display()
        ));
        assert!(
            error.ends_with("'Maybe' is not a client auth type (accepted: NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"),
            "{error}"
        );
    }

    #[test]
    fn client_certificates_and_the_client_ca_go_together() {
        let tls = format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            fixture("server.crt").display(),
            fixture("server.key").display()
        );
        let (file, error) = error_of(&format!(
            "{tls}  client_auth_type: RequireAndVerifyClientCert\n"
        ));
        assert_eq!(
            error,
            format!(
                "{file}:4:21: tls_server_config.client_auth_type: verifying client certificates needs client_ca_file"
            )
        );
        let (file, error) = error_of(&format!(
            "{tls}  client_ca_file: {}\n",
            fixture("ca.crt").display()
        ));
        assert!(
            error.starts_with(&format!(
                "{file}:4:19: tls_server_config.client_ca_file: client_ca_file is set but client_auth_type is NoClientCert"
            )),
            "{error}"
        );
    }

    #[test]
    fn tls_versions_are_checked() {
        let tls = format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            fixture("server.crt").display(),
            fixture("server.key").display()
        );
        let (file, error) = error_of(&format!("{tls}  min_version: TLS10\n"));
        assert_eq!(
            error,
            format!(
                "{file}:4:16: tls_server_config.min_version: TLS10 is not supported (accepted: TLS12, TLS13)"
            )
        );
        let (file, error) = error_of(&format!(
            "{tls}  min_version: TLS13\n  max_version: TLS12\n"
        ));
        assert_eq!(
            error,
            format!(
                "{file}:4:16: tls_server_config.min_version: min_version TLS13 is above max_version TLS12"
            )
        );
        let (_dir, loaded) = load(&format!("{tls}  min_version: TLS13\n"));
        assert!(loaded.expect("TLS 1.3 only").tls_acceptor().is_some());
    }

    #[test]
    fn keys_in_pkcs8_and_sec1_form_both_load() {
        for key in ["server.key", "server-sec1.key"] {
            let (_dir, loaded) = load(&format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                fixture("server.crt").display(),
                fixture(key).display()
            ));
            assert!(loaded.is_ok(), "{key}: {loaded:?}");
        }
    }

    #[test]
    fn unusable_certificate_files_are_refused_naming_them() {
        let missing = fixture("missing.crt");
        let (file, error) = error_of(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            missing.display(),
            fixture("server.key").display()
        ));
        assert!(
            error.starts_with(&format!(
                "{file}:2:14: tls_server_config.cert_file: cannot read {}: ",
                missing.display()
            )),
            "{error}"
        );
        // A key where the certificate should be, and the reverse.
        let (_, error) = error_of(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            fixture("server.key").display(),
            fixture("server.crt").display()
        ));
        assert!(
            error.contains("tls_server_config.cert_file: no certificate in"),
            "{error}"
        );
        assert!(
            error.contains("tls_server_config.key_file: no private key in"),
            "{error}"
        );
        // A key that belongs to another certificate.
        let (_, error) = error_of(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            fixture("server.crt").display(),
            fixture("client.key").display()
        ));
        assert!(
            error.contains("tls_server_config.cert_file: cannot use the certificate with key_file"),
            "{error}"
        );
    }

    #[test]
    fn users_need_bcrypt_hashes_and_headers_must_be_allowed() {
        let (file, error) = error_of(
            "basic_auth_users:\n  alice: hunter2\n  'b:ob': $2y$04$abcdefghijklmnopqrstuu\n\
             http_server_config:\n  headers:\n    Server: rebuff\n    X-Frame-Options: allow\n",
        );
        let lines: Vec<&str> = error.lines().collect();
        assert_eq!(lines.len(), 4, "{error}");
        assert!(
            lines[0].starts_with(&format!(
                "{file}:2:10: basic_auth_users.alice: not a bcrypt hash"
            )),
            "{error}"
        );
        assert!(
            lines[1].starts_with(&format!(
                "{file}:3:3: basic_auth_users.b:ob: a user name cannot contain ':'"
            )),
            "{error}"
        );
        assert_eq!(
            lines[2],
            format!(
                "{file}:6:5: http_server_config.headers.Server: header 'Server' cannot be set \
                 (accepted: Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, \
                 X-XSS-Protection, Content-Security-Policy)"
            )
        );
        assert_eq!(
            lines[3],
            format!(
                "{file}:7:22: http_server_config.headers.X-Frame-Options: 'allow' is not accepted \
                 here (accepted: deny, sameorigin)"
            )
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nope.yml");
        let error = WebConfig::load(&path).expect_err("missing file");
        assert!(
            error.to_string().starts_with(&format!(
                "cannot read the web config file {}: ",
                path.display()
            )),
            "{error}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn basic_auth_accepts_the_right_password_only() {
        let hash = bcrypt::hash("s3cret: with colon", 4).expect("hash");
        let (_dir, loaded) = load(&format!(
            "basic_auth_users:\n  alice: {hash}\n  bob: {hash}\n"
        ));
        let config = loaded.expect("valid");
        let right = basic("alice", "s3cret: with colon");
        assert!(config.authorize(Some(&right)).await);
        // Now from the cache; the same answer.
        assert!(config.authorize(Some(&right)).await);
        assert!(
            config
                .authorize(Some(&basic("bob", "s3cret: with colon")))
                .await
        );
        assert!(!config.authorize(Some(&basic("alice", "s3cret"))).await);
        assert!(
            !config
                .authorize(Some(&basic("carol", "s3cret: with colon")))
                .await
        );
        assert!(!config.authorize(Some(&basic("alice", ""))).await);
        assert!(!config.authorize(None).await);
        assert!(!config.authorize(Some("Bearer abc")).await);
        assert!(!config.authorize(Some("Basic !!!")).await);
        let lowercase = right.replacen("Basic", "basic", 1);
        assert!(config.authorize(Some(&lowercase)).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_users_every_request_is_authorized() {
        let (_dir, loaded) = load("http_server_config:\n  headers: {X-Frame-Options: deny}\n");
        let config = loaded.expect("valid");
        assert!(config.authorize(None).await);
        assert!(config.authorize(Some("Basic garbage")).await);
    }

    #[test]
    fn the_verified_credentials_cache_stays_bounded() {
        let (_dir, loaded) = load("");
        let config = loaded.expect("valid");
        for i in 0..(AUTH_CACHE_SIZE + 10) {
            config.inner.remember(format!("user{i}"), b"pw".to_vec());
        }
        assert!(!config.inner.is_cached("user0", b"pw"));
        assert!(
            config
                .inner
                .is_cached(&format!("user{}", AUTH_CACHE_SIZE + 9), b"pw")
        );
        let cached = config.inner.verified.lock().expect("lock").len();
        assert_eq!(cached, AUTH_CACHE_SIZE);
    }

    #[test]
    fn base64_decodes_padded_and_unpadded_text_and_refuses_garbage() {
        assert_eq!(
            decode_base64("YWxpY2U6cHc=").as_deref(),
            Some(&b"alice:pw"[..])
        );
        assert_eq!(
            decode_base64("YWxpY2U6cHc").as_deref(),
            Some(&b"alice:pw"[..])
        );
        assert_eq!(decode_base64("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64("YWJj").as_deref(), Some(&b"abc"[..]));
        assert_eq!(
            decode_base64("+/+/").as_deref(),
            Some(&[0xfb, 0xff, 0xbf][..])
        );
        assert_eq!(decode_base64("Y"), None);
        assert_eq!(decode_base64("YQ="), None);
        assert_eq!(decode_base64("YW-j"), None);
        assert_eq!(decode_base64("Y Q=="), None);
    }

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        assert_eq!(
            parse_basic(&basic("alice", "a:b")),
            Some(("alice".to_owned(), b"a:b".to_vec()))
        );
        assert_eq!(parse_basic("Basic YWxpY2U="), None, "no colon");
        assert_eq!(parse_basic("Digest YWxpY2U6cHc="), None);
    }
}
