//! reaction's log lines -> exporter events.
//!
//! Receives one line (file source) or one journal `MESSAGE` (journal
//! source); returns the [`Event`] reaction-metrics-exporter 1.0.1 would
//! make of it, or why none ([`Unparsed`]). The rules are the exporter's
//! (`reference/exporter-formats.md` §1): the same regexes tried in the same
//! order with the same lazy captures, JSON match values, Python list
//! literals for start/stop commands, Python's `str.strip`. Where the
//! exporter dies (a line without a level in file mode, an `ERROR` command
//! line without its exit code, invalid UTF-8, an empty command list), this
//! parser returns an [`Unparsed`] reason instead: the line is counted and
//! skipped. Nothing here allocates for a line that produces no event, and
//! nothing can panic on any input.

use std::sync::LazyLock;

use regex::Regex;

/// What a line means to the exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// `INFO s.f: match ["v", …]`.
    Match {
        stream: &'a str,
        filter: &'a str,
        values: Vec<String>,
    },
    /// `INFO|ERROR s.f.a: run [...]` (counted the same either way by
    /// the exporter; `ok` is false on ERROR, for rebuff's own counter).
    Action {
        stream: &'a str,
        filter: &'a str,
        action: &'a str,
        ok: bool,
    },
    /// `INFO|ERROR start|stop command: run [...]`.
    Command {
        start: bool,
        /// `str()` of the first element of the argv list.
        program: String,
        ok: bool,
        /// The exit code as Python prints the parsed integer (`0` on INFO).
        code: String,
    },
    Stream {
        stream: &'a str,
        kind: StreamKind,
    },
    /// `INFO received SIGTERM, closing streams...`: nothing is counted.
    Exit,
}

/// The exporter's `type` label of stream events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Start,
    Exit,
    Exec,
    Read,
    Timeout,
}

impl StreamKind {
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Start => "start",
            StreamKind::Exit => "exit",
            StreamKind::Exec => "exec",
            StreamKind::Read => "read",
            StreamKind::Timeout => "timeout",
        }
    }

    pub fn from_name(name: &str) -> Option<StreamKind> {
        Some(match name {
            "start" => StreamKind::Start,
            "exit" => StreamKind::Exit,
            "exec" => StreamKind::Exec,
            "read" => StreamKind::Read,
            "timeout" => StreamKind::Timeout,
            _ => return None,
        })
    }
}

/// Why a line produced no event (`rebuff_exporter_unparsed_lines_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparsed {
    /// Longer than the line bound; cut and skipped.
    TooLong,
    /// Not UTF-8 (the exporter dies on these in file mode).
    InvalidUtf8,
    /// File mode: the first word is not a log level (fatal to the exporter).
    Level,
    /// A level, but no known message shape (the exporter warns).
    Unmatched,
    /// Match values that are not a JSON list of strings.
    Values,
    /// A start/stop command line the exporter cannot read (bad argv list,
    /// `ERROR` without exit code, another word than start/stop).
    Command,
    /// Match values that do not fit the filter's patterns, or a filter
    /// that reaction's configuration does not have.
    Pattern,
}

impl Unparsed {
    pub const ALL: [Unparsed; 7] = [
        Unparsed::TooLong,
        Unparsed::InvalidUtf8,
        Unparsed::Level,
        Unparsed::Unmatched,
        Unparsed::Values,
        Unparsed::Command,
        Unparsed::Pattern,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Unparsed::TooLong => "too_long",
            Unparsed::InvalidUtf8 => "invalid_utf8",
            Unparsed::Level => "level",
            Unparsed::Unmatched => "unmatched",
            Unparsed::Values => "values",
            Unparsed::Command => "command",
            Unparsed::Pattern => "pattern",
        }
    }
}

/// The levels the exporter's file reader accepts as a line's first word.
const LEVELS: [&str; 9] = [
    "EMER", "ALERT", "CRIT", "ERROR", "WARN", "NOTICE", "INFO", "DEBUG", "UNKNOWN",
];

/// Python's `str.isspace`: Unicode white space plus the four ASCII
/// separators U+001C..U+001F, which Rust's `char::is_whitespace` leaves out.
pub fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// Python's `\s` in a str regex.
macro_rules! s {
    () => {
        r"[\s\x1C-\x1F]"
    };
}

struct Regexes {
    event: Regex,
    command: Regex,
    stream_exec: Regex,
    stream_exit: Regex,
    stream_timeout: Regex,
    stream_read: Regex,
    stream_start: Regex,
    reaction_exit: Regex,
}

/// The exporter's regexes, anchored at the start as `re.match` is. Its
/// conditional groups (`(?(sep)…)`) become an optional group around the
/// separator and what it requires: the same language, tried in the same
/// order.
static REGEXES: LazyLock<Regexes> = LazyLock::new(|| {
    let compile = |re: &str| Regex::new(re).expect("the exporter's regexes compile");
    Regexes {
        event: compile(concat!(
            r"^(INFO|ERROR)",
            s!(),
            r"(.+?)\.(.+?)(?:\.(.+?))?:",
            s!(),
            r"(match|run)",
            s!(),
            r"(\[.+?\])"
        )),
        command: compile(concat!(
            r"^(INFO|ERROR)",
            s!(),
            r"(.+?)",
            s!(),
            r"command:",
            s!(),
            r"run",
            s!(),
            r"(\[.+?\])(?::",
            s!(),
            r"exit",
            s!(),
            r"code:",
            s!(),
            r"(\d+))?"
        )),
        stream_exec: compile(r"^ERROR could not execute stream (.+?) cmd:.+"),
        stream_exit: compile(r"^ERROR stream (.+?) exited:.+"),
        stream_timeout: compile(r"^ERROR child process of stream (.+?) did not terminate"),
        stream_read: compile(r"^ERROR impossible to read output from stream (.+?):.+"),
        stream_start: compile(r"^INFO (.+?): start.+"),
        reaction_exit: compile(r"^INFO received SIGTERM, closing streams..."),
    }
});

/// Compiles the regexes now rather than on the first line.
pub fn warm_up() {
    LazyLock::force(&REGEXES);
}

/// A line of reaction's log file, as the exporter's file reader takes it:
/// stripped, then its first word must be a level.
pub fn file_line(bytes: &[u8]) -> Result<Event<'_>, Unparsed> {
    let line = std::str::from_utf8(bytes).map_err(|_| Unparsed::InvalidUtf8)?;
    let line = py_strip(line);
    let Some((level, _)) = line.split_once(' ') else {
        return Err(Unparsed::Level);
    };
    if !LEVELS.contains(&level) {
        return Err(Unparsed::Level);
    }
    message(line)
}

/// A journal `MESSAGE` (or a file line past its level check).
pub fn message(message: &str) -> Result<Event<'_>, Unparsed> {
    let message = py_strip(message);
    // Every shape starts with INFO or ERROR: skip the regexes otherwise.
    if !(message.starts_with("INFO") || message.starts_with("ERROR")) {
        return Err(Unparsed::Unmatched);
    }
    let re = &*REGEXES;
    let event = if message.contains('\n') {
        re.event.captures(message).map(|c| {
            let group = |i| c.get(i).map_or("", |m| m.as_str());
            EventParts {
                stream: group(2),
                filter: group(3),
                action: group(4),
                run: group(5) == "run",
                params: group(6),
            }
        })
    } else {
        event_parts(message)
    };
    if let Some(parts) = event {
        let stream = py_strip(parts.stream);
        let filter = py_strip(parts.filter);
        return if parts.run {
            Ok(Event::Action {
                stream,
                filter,
                action: parts.action,
                ok: message.starts_with("INFO"),
            })
        } else {
            let values =
                serde_json::from_str::<Vec<String>>(parts.params).map_err(|_| Unparsed::Values)?;
            Ok(Event::Match {
                stream,
                filter,
                values,
            })
        };
    }
    // Both need this word; most lines lack it, so skip the regex then.
    if !message.contains("command:") {
        return stream_or_exit(message);
    }
    if let Some(c) = re.command.captures(message) {
        let ok = &c[1] == "INFO";
        let code = if ok {
            "0".to_owned()
        } else {
            let digits = c.get(4).ok_or(Unparsed::Command)?.as_str();
            python_int(digits).ok_or(Unparsed::Command)?
        };
        let start = match &c[2] {
            "start" => true,
            "stop" => false,
            _ => return Err(Unparsed::Command),
        };
        let program = first_of_list(&c[3]).ok_or(Unparsed::Command)?;
        return Ok(Event::Command {
            start,
            program,
            ok,
            code,
        });
    }
    stream_or_exit(message)
}

/// The stream-event and exit shapes, in the exporter's order.
fn stream_or_exit(message: &str) -> Result<Event<'_>, Unparsed> {
    let re = &*REGEXES;
    let stream_event = |regex: &Regex, kind| {
        regex.captures(message).map(|c| Event::Stream {
            stream: c.get(1).map_or("", |m| m.as_str()),
            kind,
        })
    };
    if let Some(event) = stream_event(&re.stream_exec, StreamKind::Exec)
        .or_else(|| stream_event(&re.stream_exit, StreamKind::Exit))
        .or_else(|| stream_event(&re.stream_timeout, StreamKind::Timeout))
        .or_else(|| stream_event(&re.stream_read, StreamKind::Read))
        .or_else(|| stream_event(&re.stream_start, StreamKind::Start))
    {
        return Ok(event);
    }
    if re.reaction_exit.is_match(message) {
        return Ok(Event::Exit);
    }
    Err(Unparsed::Unmatched)
}

/// The groups of the exporter's match/run regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventParts<'a> {
    stream: &'a str,
    filter: &'a str,
    /// Empty without an action.
    action: &'a str,
    run: bool,
    params: &'a str,
}

/// The one Python whitespace character at the start of `s`, if any: its
/// length in bytes.
fn py_space_at(s: &str) -> Option<usize> {
    let c = s.chars().next()?;
    py_space(c).then(|| c.len_utf8())
}

/// The exporter's match/run regex on a line without `\n`, without the
/// regex engine: the same groups the backtracking search finds.
///
/// The regex is `(INFO|ERROR)\s(.+?)\.(.+?)(?:\.(.+?))?:\s(match|run)\s(\[.+?\])`.
/// Call a position where `:\s(match|run)\s\[.+?\]` matches a *tail*. The
/// search tries stream ends (a `.` after at least one character) in
/// order, then filter ends in order, at each the action branch (a `.`,
/// then the first tail at least one character later) before the plain
/// tail. So: the stream ends at the first `.` at index 1 or more; a match
/// exists iff some tail starts at least two bytes after it; the filter ends
/// at the first position from there that is a tail, or a `.` with a tail
/// at least two bytes later. The property test below checks this against
/// the regex.
fn event_parts(message: &str) -> Option<EventParts<'_>> {
    let level = if message.starts_with("INFO") {
        4
    } else if message.starts_with("ERROR") {
        5
    } else {
        return None;
    };
    let space = py_space_at(&message[level..])?;
    let rest = &message[level + space..];
    let bytes = rest.as_bytes();
    // Tails, in order: (start, kind is run, params).
    let mut tails: Vec<(usize, bool, &str)> = Vec::new();
    for at in memchr::memchr_iter(b':', bytes) {
        let after = &rest[at + 1..];
        let Some(w1) = py_space_at(after) else {
            continue;
        };
        let after = &after[w1..];
        let (run, word) = if after.starts_with("match") {
            (false, 5)
        } else if after.starts_with("run") {
            (true, 3)
        } else {
            continue;
        };
        let after = &after[word..];
        let Some(w2) = py_space_at(after) else {
            continue;
        };
        let after = &after[w2..];
        if !after.starts_with('[') {
            continue;
        }
        // `\[.+?\]`: one character, then up to the first `]`.
        let Some(first) = after[1..].chars().next() else {
            continue;
        };
        let from = 1 + first.len_utf8();
        let Some(close) = after[from..].find(']') else {
            continue;
        };
        tails.push((at, run, &after[..from + close + 1]));
    }
    let last_tail = tails.last()?.0;
    let s1 = 1 + memchr::memchr(b'.', &bytes[1..])?;
    if last_tail < s1 + 2 {
        return None;
    }
    let first_tail_from = |from: usize| tails.iter().find(|t| t.0 >= from);
    let mut f1 = s1 + 2;
    loop {
        // The action branch first, then the plain tail, at each f1.
        if bytes.get(f1) == Some(&b'.')
            && let Some(&(a1, run, params)) = first_tail_from(f1 + 2)
        {
            return Some(EventParts {
                stream: &rest[..s1],
                filter: &rest[s1 + 1..f1],
                action: &rest[f1 + 1..a1],
                run,
                params,
            });
        }
        if let Some(&(_, run, params)) = tails.iter().find(|t| t.0 == f1) {
            return Some(EventParts {
                stream: &rest[..s1],
                filter: &rest[s1 + 1..f1],
                action: "",
                run,
                params,
            });
        }
        // On to the next candidate: a `.` or a tail start.
        let next_dot = memchr::memchr(b'.', bytes.get(f1 + 1..)?).map(|i| f1 + 1 + i);
        let next_tail = tails.iter().find(|t| t.0 > f1).map(|t| t.0);
        f1 = match (next_dot, next_tail) {
            (Some(d), Some(t)) => d.min(t),
            (Some(d), None) => d,
            (None, Some(t)) => t,
            (None, None) => return None,
        };
    }
}

/// `str(int(digits))`: leading zeros dropped. Only ASCII digits are read
/// (Python would also read other Unicode decimal digits).
fn python_int(digits: &str) -> Option<String> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    Some(if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// `str(ast.literal_eval(text)[0])` for a list of string, integer,
/// `True`/`False`/`None` literals (adjacent strings concatenate, as in
/// Python). `None` when the text is not such a list or is empty.
pub fn first_of_list(text: &str) -> Option<String> {
    let mut p = Literal {
        rest: text.trim_start_matches([' ', '\t']),
    };
    p.expect('[')?;
    let mut first = None;
    loop {
        p.skip_space();
        if p.eat(']') {
            break;
        }
        let element = p.element()?;
        first.get_or_insert(element);
        p.skip_space();
        if p.eat(',') {
            continue;
        }
        p.expect(']')?;
        break;
    }
    p.skip_space();
    if !p.rest.is_empty() {
        return None;
    }
    first
}

struct Literal<'a> {
    rest: &'a str,
}

impl Literal<'_> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start_matches(py_space);
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// One element, as `str()` prints it.
    fn element(&mut self) -> Option<String> {
        for (word, text) in [("True", "True"), ("False", "False"), ("None", "None")] {
            if let Some(rest) = self.rest.strip_prefix(word)
                && !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_')
            {
                self.rest = rest;
                return Some(text.to_owned());
            }
        }
        if self
            .rest
            .starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+')
        {
            return self.integer();
        }
        let mut out = String::new();
        let mut any = false;
        loop {
            self.skip_space();
            if !self.string(&mut out)? {
                break;
            }
            any = true;
        }
        any.then_some(out)
    }

    fn integer(&mut self) -> Option<String> {
        let negative = self.rest.starts_with('-');
        let body = self.rest.trim_start_matches(['-', '+']);
        let end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '_'))
            .unwrap_or(body.len());
        let literal = &body[..end];
        self.rest = &body[end..];
        // Python refuses `007`, `1__0`, `1_` and `_1`.
        if literal.is_empty()
            || literal.starts_with('_')
            || literal.ends_with('_')
            || literal.contains("__")
            || (literal.len() > 1
                && literal.starts_with('0')
                && literal.bytes().any(|b| b != b'0' && b != b'_'))
        {
            return None;
        }
        let digits: String = literal.chars().filter(|c| *c != '_').collect();
        let digits = python_int(&digits)?;
        Some(if negative && digits != "0" {
            format!("-{digits}")
        } else {
            digits
        })
    }

    /// Appends one string literal if one starts here; `Some(false)` when
    /// none does, `None` on a malformed one (or bytes, f-strings).
    fn string(&mut self, out: &mut String) -> Option<bool> {
        let prefix_len = self
            .rest
            .find(['"', '\''])
            .filter(|&at| at <= 2)
            .unwrap_or(usize::MAX);
        if prefix_len == usize::MAX {
            return Some(false);
        }
        let prefix = &self.rest[..prefix_len];
        let raw = match prefix {
            "" | "u" | "U" => false,
            "r" | "R" => true,
            _ => {
                return if prefix.chars().all(|c| c.is_alphanumeric()) && !prefix.is_empty() {
                    // b'', f'', rb'' …: not a str literal here.
                    None
                } else {
                    Some(false)
                };
            }
        };
        let body = &self.rest[prefix_len..];
        let quote = body.chars().next()?;
        let triple: String = std::iter::repeat_n(quote, 3).collect();
        let (delim, mut rest) = if let Some(r) = body.strip_prefix(triple.as_str()) {
            (triple.as_str(), r)
        } else {
            (&body[..1], &body[1..])
        };
        loop {
            if let Some(r) = rest.strip_prefix(delim) {
                self.rest = r;
                return Some(true);
            }
            let mut chars = rest.chars();
            let c = chars.next()?;
            if c == '\n' && delim.len() == 1 {
                return None;
            }
            if c != '\\' {
                out.push(c);
                rest = chars.as_str();
                continue;
            }
            let escaped = chars.next()?;
            if raw {
                out.push('\\');
                out.push(escaped);
                rest = chars.as_str();
                continue;
            }
            let after = chars.as_str();
            rest = match escaped {
                '\n' => after,
                '\\' | '\'' | '"' => {
                    out.push(escaped);
                    after
                }
                'a' => push(out, '\u{7}', after),
                'b' => push(out, '\u{8}', after),
                'f' => push(out, '\u{c}', after),
                'n' => push(out, '\n', after),
                'r' => push(out, '\r', after),
                't' => push(out, '\t', after),
                'v' => push(out, '\u{b}', after),
                '0'..='7' => {
                    let len = 1 + after
                        .bytes()
                        .take(2)
                        .take_while(|b| (b'0'..=b'7').contains(b))
                        .count();
                    let digits = &rest[1..1 + len];
                    let value = u32::from_str_radix(digits, 8).ok()?;
                    out.push(char::from_u32(value)?);
                    &rest[1 + len..]
                }
                'x' | 'u' | 'U' => {
                    let len = match escaped {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex = after.get(..len)?;
                    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return None;
                    }
                    // Surrogates would not encode as UTF-8 later: refused.
                    out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
                    &after[len..]
                }
                'N' => return None,
                other => {
                    out.push('\\');
                    out.push(other);
                    after
                }
            };
        }
    }
}

fn push<'a>(out: &mut String, c: char, rest: &'a str) -> &'a str {
    out.push(c);
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(line: &str) -> Result<Event<'_>, Unparsed> {
        file_line(line.as_bytes())
    }

    #[test]
    fn a_match_line_gives_its_stream_filter_and_values() {
        assert_eq!(
            m(r#"INFO ssh.failedlogin: match ["203.0.113.7"]"#),
            Ok(Event::Match {
                stream: "ssh",
                filter: "failedlogin",
                values: vec!["203.0.113.7".into()]
            })
        );
        assert_eq!(
            m(r#"INFO ssh.two: match ["1.2.3.4","alice"] trailing"#),
            Ok(Event::Match {
                stream: "ssh",
                filter: "two",
                values: vec!["1.2.3.4".into(), "alice".into()]
            })
        );
    }

    #[test]
    fn action_lines_count_alike_whatever_their_level() {
        let ok = m(r#"INFO ssh.failedlogin.ban: run ["echo" "ban" "203.0.113.7"]"#);
        let failed = m(r#"ERROR ssh.failedlogin.ban: run ["false"]: exit code: 1"#);
        let expected = |ok| Event::Action {
            stream: "ssh",
            filter: "failedlogin",
            action: "ban",
            ok,
        };
        assert_eq!(ok, Ok(expected(true)));
        assert_eq!(failed, Ok(expected(false)));
    }

    #[test]
    fn command_lines_give_program_status_and_code() {
        assert_eq!(
            m(r#"INFO start command: run ["iptables", "-w", "-N", "reaction"]"#),
            Ok(Event::Command {
                start: true,
                program: "iptables".into(),
                ok: true,
                code: "0".into()
            })
        );
        assert_eq!(
            m(r#"ERROR stop command: run ["ip6tables", "-w", "-X", "reaction"]: exit code: 04"#),
            Ok(Event::Command {
                start: false,
                program: "ip6tables".into(),
                ok: false,
                code: "4".into()
            })
        );
        // Without commas Python concatenates the strings.
        assert!(matches!(
            m(r#"INFO start command: run ["iptables" "-N"]"#),
            Ok(Event::Command { program, .. }) if program == "iptables-N"
        ));
    }

    #[test]
    fn lines_that_kill_the_exporter_are_counted_instead() {
        assert_eq!(m(""), Err(Unparsed::Level));
        assert_eq!(m("INFO"), Err(Unparsed::Level));
        assert_eq!(m("ban 1.2.3.4"), Err(Unparsed::Level));
        assert_eq!(m("WARNING something"), Err(Unparsed::Level));
        assert_eq!(file_line(b"INFO \xff"), Err(Unparsed::InvalidUtf8));
        assert_eq!(
            m(r#"ERROR start command: run ["false"]"#),
            Err(Unparsed::Command)
        );
        assert_eq!(m(r#"INFO start command: run [ ]"#), Err(Unparsed::Command));
        assert_eq!(
            m(r#"ERROR start command: run ["sh", "a]b"]: exit code: 1"#),
            Err(Unparsed::Command)
        );
        assert_eq!(m(r#"INFO s.f: match ["a]b"]"#), Err(Unparsed::Values));
        assert_eq!(m(r#"INFO s.f: match [1]"#), Err(Unparsed::Values));
        assert_eq!(m(r#"INFO s.f: match ["\ud800"]"#), Err(Unparsed::Values));
        assert_eq!(
            m("INFO reload command: run [\"x\"]"),
            Err(Unparsed::Command)
        );
    }

    #[test]
    fn stream_events_follow_the_exporters_order() {
        let cases = [
            (
                r#"ERROR could not execute stream ssh cmd: ["tail"]: No such file"#,
                StreamKind::Exec,
            ),
            (
                "ERROR stream ssh exited: its command returned exit code 1",
                StreamKind::Exit,
            ),
            (
                "ERROR child process of stream ssh did not terminate",
                StreamKind::Timeout,
            ),
            (
                "ERROR impossible to read output from stream ssh: bad UTF-8",
                StreamKind::Read,
            ),
            (
                r#"INFO ssh: start ["tail", "-F", "/var/log/auth.log"]"#,
                StreamKind::Start,
            ),
        ];
        for (line, kind) in cases {
            assert_eq!(
                m(line),
                Ok(Event::Stream {
                    stream: "ssh",
                    kind
                }),
                "{line}"
            );
        }
        assert_eq!(m("INFO ssh: start"), Err(Unparsed::Unmatched));
        assert_eq!(
            m("INFO received SIGTERM, closing streams..."),
            Ok(Event::Exit)
        );
        assert_eq!(m("DEBUG ssh.f: match [\"x\"]"), Err(Unparsed::Unmatched));
        assert_eq!(m("WARN anything"), Err(Unparsed::Unmatched));
    }

    #[test]
    fn names_are_cut_at_the_first_dot_and_stripped() {
        assert_eq!(
            m(r#"INFO  s.f.g.h: match ["x"]"#),
            Ok(Event::Match {
                stream: "s",
                filter: "f",
                values: vec!["x".into()]
            })
        );
    }

    #[test]
    fn python_list_literals_read_as_literal_eval_would() {
        assert_eq!(first_of_list(r#"['a\x41', "b"]"#).as_deref(), Some("aA"));
        assert_eq!(first_of_list(r#"[r'a\n']"#).as_deref(), Some("a\\n"));
        assert_eq!(first_of_list("[12, 'x']").as_deref(), Some("12"));
        assert_eq!(first_of_list("[True]").as_deref(), Some("True"));
        assert_eq!(first_of_list("['a',]").as_deref(), Some("a"));
        assert_eq!(first_of_list("[007]"), None);
        assert_eq!(first_of_list("[b'x']"), None);
        assert_eq!(first_of_list("['x' y]"), None);
        assert_eq!(first_of_list("[]"), None);
        assert_eq!(first_of_list(r#"["\u00e9t\351"]"#).as_deref(), Some("été"));
        assert_eq!(first_of_list(r#"["\q"]"#).as_deref(), Some("\\q"));
    }

    /// The regex's groups, for comparison with [`event_parts`].
    fn by_regex(message: &str) -> Option<EventParts<'_>> {
        REGEXES.event.captures(message).map(|c| {
            let group = |i| c.get(i).map_or("", |m| m.as_str());
            EventParts {
                stream: group(2),
                filter: group(3),
                action: group(4),
                run: group(5) == "run",
                params: group(6),
            }
        })
    }

    #[test]
    fn the_event_fast_path_finds_the_regexs_groups() {
        for line in [
            r#"INFO ssh.failedlogin: match ["203.0.113.7"]"#,
            r#"ERROR ssh.f.ban: run ["false"]: exit code: 1"#,
            r#"INFO s.f.g.h: match ["x"]"#,
            r#"INFO .s.f: match ["x"]"#,
            r#"INFO s..f: match ["x"]"#,
            r#"INFO s.f.: match ["x"]"#,
            r#"INFO s.f: match []]"#,
            r#"INFO s.f: match [] trailing"#,
            r#"INFO a: run [x] b.c: match ["y"]"#,
            r#"INFO a.b: run [x]. c: match ["y"]"#,
            "INFO\u{2003}s.f:\u{1c}match\u{a0}[\"é\"]",
            r#"INFO start command: run ["a.b"]"#,
        ] {
            assert_eq!(event_parts(line), by_regex(line), "{line}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_event_fast_path_agrees_with_the_regex(
            line in r#"(INFO|ERROR)[ \u{1c}\u{a0}][a-z.: \[\]"]{0,12}(: (match|run) \[[a-z.:\]\[]{0,6}\]?)?[a-z.: \[\]]{0,12}"#,
        ) {
            proptest::prop_assert_eq!(event_parts(&line), by_regex(&line));
        }

        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = file_line(&bytes);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = message(text);
                let _ = first_of_list(text);
            }
        }

        #[test]
        fn no_shaped_input_panics(
            head in "(INFO|ERROR) (start|stop|[a-z.]{0,6}) ?(command: run |: match |: run )?",
            list in r#"\[[ "'\\a-z0-9,\]\[ux]{0,24}"#,
            tail in "(: exit code: [0-9]{0,3})?",
        ) {
            let line = format!("{head}{list}{tail}");
            let _ = message(&line);
        }
    }
}
