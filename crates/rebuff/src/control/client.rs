//! The CLI side of the control socket.
//!
//! Owns nothing past one call. Receives the `show`, `flush` and `trigger`
//! arguments from the command line, turns them into a [`Request`], sends it
//! to the daemon and returns the tree it answers, which [`print_tree`] writes
//! as YAML or JSON. Plain blocking std code: one request, one answer, exit.
//!
//! Pattern regexes are passed through as written: the daemon compiles them
//! and reports an invalid one.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::emit::to_yaml;

use super::{Envelope, Limit, PROTOCOL_VERSION, Request, Response, Selection};

/// How long the daemon may stay silent while sending or receiving.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer accepted: far beyond any real state, small enough that a
/// confused peer cannot exhaust memory.
const MAX_ANSWER: u64 = 1 << 30;

/// Why a control command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the daemon at {}: {error} \
         (is it running? use -s/--socket for another socket)",
        path.display()
    )]
    Connect { path: PathBuf, error: io::Error },
    #[error("cannot send the request to {}: {error}", path.display())]
    Send { path: PathBuf, error: io::Error },
    #[error("cannot read the answer from {}: {error}", path.display())]
    Receive { path: PathBuf, error: io::Error },
    #[error("the answer from {} is larger than {MAX_ANSWER} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("invalid answer from {}: {error}", path.display())]
    Decode {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// The daemon understood the question and said no.
    #[error("{0}")]
    Daemon(String),
    #[error("invalid pattern argument {0:?}: expected NAME=VALUE")]
    Pattern(String),
    #[error("invalid pattern argument {0:?}: the pattern name is empty")]
    EmptyPatternName(String),
    #[error("invalid limit {0:?}: expected STREAM or STREAM.FILTER")]
    Limit(String),
    #[error("invalid filter {0:?}: expected STREAM.FILTER")]
    Target(String),
}

/// Sends one request to the daemon listening on `socket` and returns the
/// tree it answers; an error answer becomes [`ClientError::Daemon`].
pub fn request(socket: &Path, request: Request) -> Result<serde_json::Value, ClientError> {
    request_full(socket, request).map(|answer| answer.tree)
}

/// A daemon's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub tree: serde_json::Value,
    /// Entries a `show --max` left out.
    pub left_out: u64,
}

/// [`request`], with how many entries `show --max` left out.
pub fn request_full(socket: &Path, request: Request) -> Result<Answer, ClientError> {
    let path = || socket.to_owned();
    // Connecting to a Unix socket never waits: a missing file or a socket
    // nobody listens on fails at once, which `show` callers rely on.
    let mut stream = UnixStream::connect(socket).map_err(|error| ClientError::Connect {
        path: path(),
        error,
    })?;
    let timeouts = stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
    timeouts.map_err(|error| ClientError::Connect {
        path: path(),
        error,
    })?;

    let envelope = Envelope {
        version: PROTOCOL_VERSION,
        request,
    };
    let mut line = serde_json::to_vec(&envelope).map_err(|error| ClientError::Send {
        path: path(),
        error: error.into(),
    })?;
    line.push(b'\n');
    let sent = stream
        .write_all(&line)
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write));
    if let Err(error) = sent {
        // A daemon refusing a request may close before reading all of it;
        // its explanation, if it got one out, beats a broken pipe.
        let closed = matches!(
            error.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        );
        if closed
            && let Ok(Response::Error(message)) = serde_json::from_slice(&read_answer(&stream))
        {
            return Err(ClientError::Daemon(message));
        }
        return Err(ClientError::Send {
            path: path(),
            error,
        });
    }

    let mut answer = Vec::new();
    match (&stream).take(MAX_ANSWER + 1).read_to_end(&mut answer) {
        Ok(_) => {}
        // The peer reset after writing its answer: what arrived is whole
        // or fails to parse below.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !answer.is_empty() => {}
        Err(error) => {
            return Err(ClientError::Receive {
                path: path(),
                error,
            });
        }
    }
    if answer.len() as u64 > MAX_ANSWER {
        return Err(ClientError::TooLarge { path: path() });
    }
    decode(&answer).map_err(|error| ClientError::Decode {
        path: path(),
        error,
    })?
}

/// An answer's text: `{"ok": tree}` (with `"left_out": n` after a cut
/// `show`) or `{"error": message}`.
fn decode(answer: &[u8]) -> Result<Result<Answer, ClientError>, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_slice(answer)?;
    let left_out = match value.as_object_mut().and_then(|o| o.remove("left_out")) {
        Some(n) => serde_json::from_value(n)?,
        None => 0,
    };
    Ok(match serde_json::from_value(value)? {
        Response::Ok(tree) => Ok(Answer { tree, left_out }),
        Response::Error(message) => Err(ClientError::Daemon(message)),
        // Never on the wire: `serde(skip)`.
        Response::Pieces(_) => Err(ClientError::Daemon("unexpected answer".into())),
    })
}

/// Whatever the daemon wrote before the connection ended, best effort.
fn read_answer(stream: &UnixStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let _ = stream.take(MAX_ANSWER).read_to_end(&mut answer);
    answer
}

/// `NAME=VALUE` arguments to `(name, value)` pairs, split on the first `=`
/// (a regex value may hold more). The value may be empty, the name not.
pub fn parse_patterns(args: &[String]) -> Result<Vec<(String, String)>, ClientError> {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            None => Err(ClientError::Pattern(arg.clone())),
            Some(("", _)) => Err(ClientError::EmptyPatternName(arg.clone())),
            Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
        })
        .collect()
}

/// `STREAM` or `STREAM.FILTER` to a [`Limit`], split on the first `.`.
pub fn parse_limit(text: &str) -> Result<Limit, ClientError> {
    let invalid = || ClientError::Limit(text.to_owned());
    match text.split_once('.') {
        None if text.is_empty() => Err(invalid()),
        None => Ok(Limit {
            stream: text.to_owned(),
            filter: None,
        }),
        Some(("", _) | (_, "")) => Err(invalid()),
        Some((stream, filter)) => Ok(Limit {
            stream: stream.to_owned(),
            filter: Some(filter.to_owned()),
        }),
    }
}

/// `STREAM.FILTER` (the `trigger` target) to `(stream, filter)`; unlike a
/// limit, the filter is required.
pub fn parse_target(text: &str) -> Result<(String, String), ClientError> {
    match parse_limit(text) {
        Ok(Limit {
            stream,
            filter: Some(filter),
        }) => Ok((stream, filter)),
        _ => Err(ClientError::Target(text.to_owned())),
    }
}

/// Output format of `show` and `flush`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowFormat {
    Yaml,
    Json,
}

/// The [`Selection`] that `show` and `flush` arguments describe: `-l
/// STREAM[.FILTER]` and `NAME=REGEX` pairs.
pub fn selection(limit: Option<&str>, patterns: &[String]) -> Result<Selection, ClientError> {
    Ok(Selection {
        limit: limit.map(parse_limit).transpose()?,
        patterns: parse_patterns(patterns)?,
        max: None,
    })
}

/// Writes a `show`/`flush`/`trigger` tree as YAML or pretty JSON. An empty
/// tree prints `{}`, never nothing: reaction-metrics-exporter parses the
/// output and an empty document is not a map to it.
pub fn print_tree(
    tree: &serde_json::Value,
    format: ShowFormat,
    out: &mut impl Write,
) -> io::Result<()> {
    match format {
        // `to_yaml` writes an empty map as `{}` and quotes every key YAML
        // would not read back as a string (`1234`, `null`, `2001:db8::5`).
        ShowFormat::Yaml => out.write_all(to_yaml(tree).as_bytes()),
        ShowFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, tree)?;
            out.write_all(b"\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|&a| a.to_owned()).collect()
    }

    fn printed(tree: &serde_json::Value, format: ShowFormat) -> String {
        let mut out = Vec::new();
        print_tree(tree, format, &mut out).expect("write to a Vec");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn patterns_split_on_the_first_equals_sign() {
        let pairs = parse_patterns(&strings(&["ip=192.0.2.1", "q=a=b", "user="])).expect("valid");
        assert_eq!(
            pairs,
            [("ip", "192.0.2.1"), ("q", "a=b"), ("user", "")]
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(parse_patterns(&[]).expect("valid"), []);
    }

    #[test]
    fn a_pattern_without_equals_or_name_is_an_error_naming_it() {
        let error = parse_patterns(&strings(&["ip=1", "192.0.2.1"])).expect_err("no '='");
        assert_eq!(
            error.to_string(),
            "invalid pattern argument \"192.0.2.1\": expected NAME=VALUE"
        );
        let error = parse_patterns(&strings(&["=192.0.2.1"])).expect_err("empty name");
        assert!(error.to_string().contains("\"=192.0.2.1\""), "{error}");
    }

    #[test]
    fn a_limit_is_a_stream_or_a_stream_and_its_filter() {
        assert_eq!(
            parse_limit("ssh").expect("valid"),
            Limit {
                stream: "ssh".into(),
                filter: None
            }
        );
        assert_eq!(
            parse_limit("ssh.failed.login").expect("valid"),
            Limit {
                stream: "ssh".into(),
                filter: Some("failed.login".into())
            }
        );
        for bad in ["", ".", "ssh.", ".failed"] {
            let error = parse_limit(bad).expect_err(bad);
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn a_trigger_target_needs_both_stream_and_filter() {
        assert_eq!(
            parse_target("ssh.failed").expect("valid"),
            ("ssh".to_owned(), "failed".to_owned())
        );
        for bad in ["ssh", "", "ssh.", ".failed"] {
            assert!(matches!(parse_target(bad), Err(ClientError::Target(_))));
        }
    }

    #[test]
    fn an_empty_tree_prints_as_an_empty_map() {
        assert_eq!(printed(&json!({}), ShowFormat::Yaml), "{}\n");
        assert_eq!(printed(&json!({}), ShowFormat::Json), "{}\n");
    }

    #[test]
    fn match_keys_that_look_like_other_types_print_as_quoted_strings() {
        let tree = json!({"ssh": {"failed": {
            "1234": {"matches": 1},
            "null": {"matches": 1},
            "true": {"matches": 1},
            "~": {"matches": 1},
            "0x1F": {"matches": 1},
            "1e3": {"matches": 1},
            ".inf": {"matches": 1},
            "2001:db8::5": {"matches": 1},
            "1.2.3.4 alice": {"matches": 1},
            "203.0.113.7": {"actions": {"ban": ["2024-05-01 10:00:00"]}},
        }}});
        let expected = "\
ssh:
  failed:
    \"1234\":
      matches: 1
    \"null\":
      matches: 1
    \"true\":
      matches: 1
    \"~\":
      matches: 1
    \"0x1F\":
      matches: 1
    \"1e3\":
      matches: 1
    \".inf\":
      matches: 1
    \"2001:db8::5\":
      matches: 1
    \"1.2.3.4 alice\":
      matches: 1
    \"203.0.113.7\":
      actions:
        ban:
          - \"2024-05-01 10:00:00\"
";
        assert_eq!(printed(&tree, ShowFormat::Yaml), expected);
    }

    #[test]
    fn json_output_is_pretty_and_keeps_the_daemons_order() {
        let tree = json!({"s": {"f": {"b": {"matches": 2}, "a": {"matches": 1}}}});
        let out = printed(&tree, ShowFormat::Json);
        assert!(out.ends_with("}\n"), "{out}");
        assert!(out.find("\"b\"") < out.find("\"a\""), "{out}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).expect("json"),
            tree
        );
    }

    #[test]
    fn a_missing_socket_fails_at_once_naming_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("absent.sock");
        let started = std::time::Instant::now();
        let error = request(&path, Request::Show(Selection::default())).expect_err("no daemon");
        assert!(started.elapsed() < Duration::from_secs(5));
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("-s/--socket"), "{message}");
    }

    #[test]
    fn a_socket_nobody_listens_on_fails_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let error = request(&path, Request::Show(Selection::default())).expect_err("refused");
        assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    }

    #[test]
    fn a_daemon_error_answer_becomes_its_message() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fake.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let daemon = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut line = Vec::new();
            stream.read_to_end(&mut line).expect("read");
            let answer = Response::Error("no stream named \"web\"".into());
            serde_json::to_writer(&mut stream, &answer).expect("write");
            line
        });
        let error = request(
            &path,
            Request::Trigger {
                stream: "web".into(),
                filter: "f".into(),
                patterns: vec![("ip".into(), "192.0.2.1".into())],
            },
        )
        .expect_err("refused by the daemon");
        assert_eq!(error.to_string(), "no stream named \"web\"");
        let line = daemon.join().expect("daemon thread");
        assert_eq!(
            String::from_utf8(line).expect("utf-8"),
            "{\"version\":1,\"command\":\"trigger\",\"stream\":\"web\",\"filter\":\"f\",\
             \"patterns\":[[\"ip\",\"192.0.2.1\"]]}\n"
        );
    }
}
