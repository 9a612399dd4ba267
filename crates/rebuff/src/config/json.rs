//! JSON configuration files: source text -> positioned [`Node`] tree.
//!
//! [`parse_json`] is a small strict RFC 8259 reader, written by hand because
//! the usual JSON libraries forget where each value was written, and every
//! configuration error must be able to point at its line and column. It
//! returns one [`Node`] whose values and keys all carry their position, or a
//! [`ParseError`] saying what was expected and what was found there.
//!
//! Strict means: no comments, no trailing commas, no single quotes, no
//! duplicate keys, nothing after the top-level value. The only leniency is a
//! leading UTF-8 byte order mark, which some editors write and is skipped.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::tree::{Key, Loc, Node, ParseError, Value, shared_path};
use super::{Budget, NODE_COST};

/// Deepest nesting of arrays and objects accepted. The reader itself does
/// not recurse, but the walks and drops of the tree later on do.
const MAX_DEPTH: usize = 512;

/// Parses one JSON document into a positioned tree, within a fresh
/// [`Budget`].
pub fn parse_json(path: &Path, text: &str) -> Result<Node, ParseError> {
    parse_json_within(path, text, &mut Budget::new())
}

/// Parses one JSON document, counting its values and keys against `budget`.
pub fn parse_json_within(path: &Path, text: &str, budget: &mut Budget) -> Result<Node, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader {
        budget,
        file: shared_path(path),
        text,
        bytes: text.as_bytes(),
        pos: 0,
        line: 1,
        col: 1,
    };
    reader.skip_ws();
    let node = reader.value()?;
    reader.skip_ws();
    if reader.pos < reader.bytes.len() {
        return Err(reader.error(format!(
            "expected the end of the file after the top-level value, found {}",
            reader.found()
        )));
    }
    Ok(node)
}

/// The key path (`streams.ssh.filters`, `start[1]`) of `name` in the
/// object whose parents are `open`, outermost first.
fn key_path(open: &[Open], name: &str) -> String {
    let mut path = String::new();
    for container in open {
        match container {
            Open::Array { items, .. } => path.push_str(&format!("[{}]", items.len())),
            Open::Object { key, .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key.name);
            }
        }
    }
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
    path
}

/// An array or object whose closing bracket has not been read yet.
enum Open {
    Array {
        loc: Loc,
        items: Vec<Node>,
    },
    Object {
        loc: Loc,
        entries: Vec<(Key, Node)>,
        /// Line of each key so far, to report duplicates.
        seen: HashMap<String, u32>,
        /// The key whose value is being read.
        key: Key,
    },
}

struct Reader<'t, 'b> {
    budget: &'b mut Budget,
    file: Arc<Path>,
    text: &'t str,
    bytes: &'t [u8],
    /// Byte offset of the next unread byte.
    pos: usize,
    /// Line and character column of `pos`, kept up to date as bytes are
    /// consumed so that asking for a position never rescans the line.
    line: u32,
    col: u32,
}

impl Reader<'_, '_> {
    /// Counts `bytes` more of the tree against the budget.
    fn spend(&mut self, bytes: usize) -> Result<(), ParseError> {
        match self.budget.spend(bytes, false) {
            Ok(()) => Ok(()),
            Err(message) => Err(self.error(message)),
        }
    }

    fn loc(&self) -> Loc {
        Loc::new(self.file.clone(), self.line, self.col)
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError::new(self.loc(), message)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Consumes `n` bytes, which must end on a character boundary.
    fn advance(&mut self, n: usize) {
        let end = (self.pos + n).min(self.bytes.len());
        for &b in &self.bytes[self.pos..end] {
            if b == b'\n' {
                self.line = self.line.saturating_add(1);
                self.col = 1;
            } else if b & 0xC0 != 0x80 {
                // Continuation bytes do not start a character.
                self.col = self.col.saturating_add(1);
            }
        }
        self.pos = end;
    }

    /// How the input at the current position reads in an error message.
    fn found(&self) -> String {
        match self
            .text
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
        {
            None => "the end of the file".to_owned(),
            Some('\n') => "a line break".to_owned(),
            Some(c) => format!("{c:?}"),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.advance(1);
        }
    }

    /// Reads one value. Arrays and objects are kept on an explicit stack
    /// instead of the native one, so the depth limit, not the thread's stack
    /// size, decides how deep a document may go.
    fn value(&mut self) -> Result<Node, ParseError> {
        let mut open: Vec<Open> = Vec::new();
        'value: loop {
            let loc = self.loc();
            self.spend(NODE_COST)?;
            let mut node = match self.peek() {
                Some(b'{') => {
                    self.depth_check(open.len() + 1)?;
                    self.advance(1);
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.advance(1);
                        Node {
                            value: Value::Map(Vec::new()),
                            loc,
                        }
                    } else {
                        let mut seen = HashMap::new();
                        let key = self.member_key(&mut seen, &open, "a string key or '}'")?;
                        open.push(Open::Object {
                            loc,
                            entries: Vec::new(),
                            seen,
                            key,
                        });
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    self.depth_check(open.len() + 1)?;
                    self.advance(1);
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.advance(1);
                        Node {
                            value: Value::Seq(Vec::new()),
                            loc,
                        }
                    } else {
                        open.push(Open::Array {
                            loc,
                            items: Vec::new(),
                        });
                        continue 'value;
                    }
                }
                Some(b'"') => {
                    let text = self.string()?;
                    self.spend(text.len())?;
                    Node {
                        value: Value::Str(text),
                        loc,
                    }
                }
                Some(b'-' | b'0'..=b'9') => Node {
                    value: self.number()?,
                    loc,
                },
                Some(b't') => Node {
                    value: self.literal("true", Value::Bool(true))?,
                    loc,
                },
                Some(b'f') => Node {
                    value: self.literal("false", Value::Bool(false))?,
                    loc,
                },
                Some(b'n') => Node {
                    value: self.literal("null", Value::Null)?,
                    loc,
                },
                Some(b'/') => {
                    return Err(
                        self.error("expected a JSON value, found '/' (JSON has no comments)")
                    );
                }
                _ => {
                    return Err(
                        self.error(format!("expected a JSON value, found {}", self.found()))
                    );
                }
            };
            // Hand the finished value to its container, closing every
            // container that ends right after it.
            loop {
                self.skip_ws();
                let Some(container) = open.pop() else {
                    return Ok(node);
                };
                node = match container {
                    Open::Array { loc, mut items } => {
                        items.push(node);
                        match self.peek() {
                            Some(b',') => {
                                self.advance(1);
                                self.skip_ws();
                                open.push(Open::Array { loc, items });
                                continue 'value;
                            }
                            Some(b']') => {
                                self.advance(1);
                                Node {
                                    value: Value::Seq(items),
                                    loc,
                                }
                            }
                            _ => {
                                return Err(self.error(format!(
                                    "expected ',' or ']' after an array element, found {}",
                                    self.found()
                                )));
                            }
                        }
                    }
                    Open::Object {
                        loc,
                        mut entries,
                        mut seen,
                        key,
                    } => {
                        entries.push((key, node));
                        match self.peek() {
                            Some(b',') => {
                                self.advance(1);
                                self.skip_ws();
                                let key =
                                    self.member_key(&mut seen, &open, "a string key after ','")?;
                                open.push(Open::Object {
                                    loc,
                                    entries,
                                    seen,
                                    key,
                                });
                                continue 'value;
                            }
                            Some(b'}') => {
                                self.advance(1);
                                Node {
                                    value: Value::Map(entries),
                                    loc,
                                }
                            }
                            _ => {
                                return Err(self.error(format!(
                                    "expected ',' or '}}' after an object member, found {}",
                                    self.found()
                                )));
                            }
                        }
                    }
                };
            }
        }
    }

    /// Reads `"key" :` and the whitespace after it, rejecting a key already
    /// present in the object (whose parents are `parents`, outermost first).
    fn member_key(
        &mut self,
        seen: &mut HashMap<String, u32>,
        parents: &[Open],
        expected: &str,
    ) -> Result<Key, ParseError> {
        if self.peek() != Some(b'"') {
            return Err(self.error(format!("expected {expected}, found {}", self.found())));
        }
        let loc = self.loc();
        let name = self.string()?;
        self.spend(NODE_COST.saturating_add(name.len()))?;
        if let Some(first) = seen.insert(name.clone(), loc.line) {
            return Err(ParseError::new(
                loc.clone(),
                format!(
                    "{}: the key {name:?} is written twice in this object (lines {first} and {})",
                    key_path(parents, &name),
                    loc.line
                ),
            ));
        }
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.error(format!(
                "expected ':' after an object key, found {}",
                self.found()
            )));
        }
        self.advance(1);
        self.skip_ws();
        Ok(Key { name, loc })
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, ParseError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.advance(word.len());
            return Ok(value);
        }
        let written: String = self.text[self.pos..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .take(20)
            .collect();
        Err(self.error(format!(
            "expected a JSON value, found '{written}' (did you mean '{word}'?)"
        )))
    }

    fn depth_check(&self, depth: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!(
                "arrays and objects are nested more than {MAX_DEPTH} levels deep"
            )));
        }
        Ok(())
    }

    /// Reads a string literal; the current byte is its opening quote.
    fn string(&mut self) -> Result<String, ParseError> {
        let start_line = self.line;
        self.advance(1);
        let mut out = String::new();
        loop {
            let run = self.bytes[self.pos..]
                .iter()
                .take_while(|&&b| b != b'"' && b != b'\\' && b >= 0x20)
                .count();
            // The run stops only at ASCII bytes, so it ends on a char boundary.
            out.push_str(&self.text[self.pos..self.pos + run]);
            self.advance(run);
            match self.peek() {
                Some(b'"') => {
                    self.advance(1);
                    return Ok(out);
                }
                Some(b'\\') => out.push(self.escape()?),
                Some(b'\n') => {
                    return Err(self.error(
                        "expected '\"' to close the string, found a line break \
                         (write it as \\n)",
                    ));
                }
                Some(b) if b < 0x20 => {
                    return Err(self.error(format!(
                        "found the control character U+{b:04X} inside a string; \
                         it must be written as an escape"
                    )));
                }
                _ => {
                    return Err(self.error(format!(
                        "expected '\"' to close the string opened on line {start_line}, \
                         found the end of the file"
                    )));
                }
            }
        }
    }

    /// Reads one escape sequence; the current byte is its backslash.
    fn escape(&mut self) -> Result<char, ParseError> {
        let at = self.loc();
        self.advance(1);
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.advance(1);
                return self.unicode_escape(at);
            }
            _ => {
                return Err(ParseError::new(
                    at,
                    format!(
                        "expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX, found \\ followed by {}",
                        self.found()
                    ),
                ));
            }
        };
        self.advance(1);
        Ok(c)
    }

    /// Reads the digits of a `\u` escape, and its low half when it is the
    /// high half of a surrogate pair.
    fn unicode_escape(&mut self, at: Loc) -> Result<char, ParseError> {
        let high = self.hex4()?;
        let code = match high {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(ParseError::new(
                        at,
                        format!(
                            "\\u{high:04X} is the first half of a surrogate pair and must be \
                             followed by a \\u escape for the second half"
                        ),
                    ));
                }
                self.advance(2);
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(ParseError::new(
                        at,
                        format!(
                            "\\u{high:04X} is the first half of a surrogate pair, but \\u{low:04X} \
                             is not a second half (expected \\uDC00 to \\uDFFF)"
                        ),
                    ));
                }
                0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(low) - 0xDC00)
            }
            0xDC00..=0xDFFF => {
                return Err(ParseError::new(
                    at,
                    format!(
                        "\\u{high:04X} is the second half of a surrogate pair with no first half"
                    ),
                ));
            }
            _ => u32::from(high),
        };
        char::from_u32(code).ok_or_else(|| {
            ParseError::new(at, format!("\\u escape of invalid code point {code:X}"))
        })
    }

    fn hex4(&mut self) -> Result<u16, ParseError> {
        let mut value: u16 = 0;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or_else(|| {
                    self.error(format!(
                        "expected 4 hexadecimal digits after \\u, found {}",
                        self.found()
                    ))
                })?;
            // Four digits of at most 15 fit in 16 bits.
            value = (value << 4) | u16::try_from(digit).unwrap_or(0);
            self.advance(1);
        }
        Ok(value)
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let start_loc = self.loc();
        if self.peek() == Some(b'-') {
            self.advance(1);
        }
        match self.peek() {
            Some(b'0') => {
                self.advance(1);
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(ParseError::new(
                        start_loc,
                        "numbers cannot have leading zeros",
                    ));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => {
                return Err(self.error(format!(
                    "expected a digit after '-', found {}",
                    self.found()
                )));
            }
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            integral = false;
            self.advance(1);
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error(format!(
                    "expected a digit after the decimal point, found {}",
                    self.found()
                )));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            integral = false;
            self.advance(1);
            if let Some(b'+' | b'-') = self.peek() {
                self.advance(1);
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error(format!(
                    "expected a digit in the exponent, found {}",
                    self.found()
                )));
            }
            self.digits();
        }
        let literal = &self.text[start..self.pos];
        if integral && let Ok(i) = literal.parse::<i64>() {
            return Ok(Value::Int(i));
        }
        match literal.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => Err(ParseError::new(
                start_loc,
                format!("the number {literal} is too large"),
            )),
        }
    }

    fn digits(&mut self) {
        let n = self.bytes[self.pos..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        self.advance(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tree::testing::{at, entry};

    fn parse(text: &str) -> Result<Node, ParseError> {
        parse_json(Path::new("conf.json"), text)
    }

    fn ok(text: &str) -> Node {
        match parse(text) {
            Ok(node) => node,
            Err(err) => panic!("unexpected error: {err}"),
        }
    }

    fn err(text: &str) -> ParseError {
        match parse(text) {
            Ok(node) => panic!("expected an error, got {node:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn nested_keys_and_values_carry_their_line_and_column() {
        let root =
            ok("{\n  \"streams\": {\n    \"é\": [1, \"two\"],\n    \"x\": {\"y\": null}\n  }\n}\n");
        assert_eq!(at(&root.loc), (1, 1));
        let (k, streams) = entry(&root, "streams");
        assert_eq!(at(&k.loc), (2, 3));
        assert_eq!(at(&streams.loc), (2, 14));
        let (k, list) = entry(streams, "é");
        assert_eq!(at(&k.loc), (3, 5));
        // Columns count characters: "é" is two bytes but one column.
        assert_eq!(at(&list.loc), (3, 10));
        let Value::Seq(items) = &list.value else {
            panic!("not a list")
        };
        assert_eq!(at(&items[1].loc), (3, 14));
        let (k, y) = entry(entry(streams, "x").1, "y");
        assert_eq!(at(&k.loc), (4, 11));
        assert_eq!(at(&y.loc), (4, 16));
        assert_eq!(y.value, Value::Null);
        assert_eq!(&*k.loc.file, Path::new("conf.json"));
    }

    #[test]
    fn scalars_become_the_matching_values() {
        let root = ok(
            r#"[true, false, null, 0, -12, 9223372036854775807, 9223372036854775808,
            1.5, -0.25e2, 1E3, "s"]"#,
        );
        let Value::Seq(items) = root.value else {
            panic!("not a list")
        };
        let values: Vec<Value> = items.into_iter().map(|n| n.value).collect();
        assert_eq!(
            values,
            [
                Value::Bool(true),
                Value::Bool(false),
                Value::Null,
                Value::Int(0),
                Value::Int(-12),
                Value::Int(i64::MAX),
                Value::Float(9_223_372_036_854_775_808.0),
                Value::Float(1.5),
                Value::Float(-25.0),
                Value::Float(1000.0),
                Value::Str("s".into()),
            ]
        );
    }

    #[test]
    fn string_escapes_decode_including_surrogate_pairs() {
        let root = ok(r#""a\"b\\c\/d\b\f\n\r\t\u00e9\uD83D\uDE00""#);
        assert_eq!(
            root.value,
            Value::Str("a\"b\\c/d\u{8}\u{c}\n\r\té\u{1F600}".into())
        );
    }

    #[test]
    fn a_bad_escape_is_an_error_at_the_backslash() {
        let e = err("{\"a\": \"x\\qy\"}");
        assert_eq!(at(&e.loc), (1, 9));
        assert!(
            e.message.contains("found \\ followed by 'q'"),
            "{}",
            e.message
        );
        let e = err("\"\\u12G4\"");
        assert!(e.message.contains("4 hexadecimal digits"), "{}", e.message);
    }

    #[test]
    fn a_lone_surrogate_is_an_error() {
        let e = err(r#""\uD83D""#);
        assert_eq!(at(&e.loc), (1, 2));
        assert!(e.message.contains("first half"), "{}", e.message);
        let e = err(r#""\uD83D\u0041""#);
        assert!(e.message.contains("not a second half"), "{}", e.message);
        let e = err(r#""\uDE00""#);
        assert!(e.message.contains("no first half"), "{}", e.message);
    }

    #[test]
    fn raw_control_characters_in_strings_are_errors() {
        let e = err("\"a\nb\"");
        assert!(e.message.contains("line break"), "{}", e.message);
        let e = err("\"a\tb\"");
        assert!(e.message.contains("U+0009"), "{}", e.message);
        let e = err("\n\"abc");
        assert_eq!(at(&e.loc), (2, 5));
        assert!(e.message.contains("opened on line 2"), "{}", e.message);
    }

    #[test]
    fn a_key_written_twice_is_an_error_naming_both_lines() {
        let e = err("{\n  \"a\": 1,\n  \"b\": 2,\n  \"a\": 3\n}");
        assert_eq!(at(&e.loc), (4, 3));
        assert!(e.message.contains("\"a\""), "{}", e.message);
        assert!(e.message.contains("lines 2 and 4"), "{}", e.message);
    }

    #[test]
    fn a_key_written_twice_is_named_by_its_key_path() {
        let e = err(
            "{\"streams\": {\"s\": {\"filters\": {\"f\": {\n  \"retry\": 1,\n  \"retry\": 2}}}}}",
        );
        assert_eq!(at(&e.loc), (3, 3), "the second key, not its value");
        assert!(
            e.message
                .starts_with("streams.s.filters.f.retry: the key \"retry\" is written twice"),
            "{}",
            e.message
        );
        let e = err("{\"start\": [[\"a\"], {\"x\": 1, \"x\": 2}]}");
        assert!(e.message.starts_with("start[1].x: "), "{}", e.message);
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        let e = err("{\"a\": 1}\n  x");
        assert_eq!(at(&e.loc), (2, 3));
        assert!(e.message.contains("found 'x'"), "{}", e.message);
        let e = err("{} {}");
        assert!(e.message.contains("end of the file"), "{}", e.message);
    }

    #[test]
    fn syntax_errors_say_what_was_expected_and_found() {
        let cases = [
            (
                "{\"a\": 1 x}",
                "expected ',' or '}' after an object member, found 'x'",
            ),
            (
                "[1 2]",
                "expected ',' or ']' after an array element, found '2'",
            ),
            ("{\"a\" 1}", "expected ':' after an object key, found '1'"),
            ("{a: 1}", "expected a string key or '}', found 'a'"),
            ("{\"a\": 1,}", "expected a string key after ',', found '}'"),
            ("[1,]", "expected a JSON value, found ']'"),
            ("", "expected a JSON value, found the end of the file"),
            ("tru", "found 'tru' (did you mean 'true'?)"),
            ("// c\n{}", "JSON has no comments"),
            ("01", "leading zeros"),
            ("-x", "expected a digit after '-', found 'x'"),
            (
                "1.e5",
                "expected a digit after the decimal point, found 'e'",
            ),
            (
                "1e+",
                "expected a digit in the exponent, found the end of the file",
            ),
            ("1e400", "too large"),
            (
                "[1",
                "expected ',' or ']' after an array element, found the end of the file",
            ),
        ];
        for (text, message) in cases {
            let e = err(text);
            assert!(e.message.contains(message), "{text:?}: {}", e.message);
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_an_error_not_a_crash() {
        let fine = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&fine).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let e = err(&deep);
        assert_eq!(at(&e.loc), (1, 513));
        assert!(e.message.contains("nested more than 512"), "{}", e.message);
        let e = err(&"{\"a\":".repeat(100_000));
        assert!(e.message.contains("nested"), "{}", e.message);
    }

    #[test]
    fn values_and_keys_count_against_the_budget() {
        let text = format!("[{}0]", "0,".repeat(20_000));
        let mut budget = Budget::with_tree_limit(1 << 20);
        let e = match parse_json_within(Path::new("t.json"), &text, &mut budget) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        };
        assert!(e.message.contains("too large"), "{}", e.message);
        assert_eq!(e.loc.line, 1);
        let mut budget = Budget::with_tree_limit(1 << 20);
        let keys: Vec<String> = (0..4_000).map(|i| format!("\"{i:0>200}\": 0")).collect();
        let text = format!("{{{}}}", keys.join(","));
        assert!(parse_json_within(Path::new("t.json"), &text, &mut budget).is_err());
        assert!(ok(&format!("[{}0]", "0,".repeat(20_000))).value != Value::Null);
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        let root = ok("\u{feff}{\"a\": 1}");
        assert_eq!(at(&root.loc), (1, 1));
        assert_eq!(at(&entry(&root, "a").0.loc), (1, 2));
    }

    #[test]
    fn a_realistic_reaction_config_parses() {
        let text = r#"{
  "patterns": {
    "ip": {
      "regex": "(?:(?:[0-9]{1,3}\\.){3}[0-9]{1,3})|(?:[0-9a-fA-F:]{2,90})",
      "ignore": ["127.0.0.1", "::1"]
    }
  },
  "start": [["ip46tables", "-w", "-N", "reaction"]],
  "streams": {
    "ssh": {
      "cmd": ["journalctl", "-fn0", "-u", "sshd.service"],
      "filters": {
        "failedlogin": {
          "regex": ["authentication failure;.*rhost=<ip>"],
          "retry": 3,
          "retryperiod": "6h",
          "actions": {
            "ban": {"cmd": ["ip46tables", "-w", "-A", "reaction", "-s", "<ip>", "-j", "DROP"]},
            "unban": {
              "cmd": ["ip46tables", "-w", "-D", "reaction", "-s", "<ip>", "-j", "DROP"],
              "after": "48h",
              "onexit": false
            }
          }
        }
      }
    }
  }
}
"#;
        let root = ok(text);
        let (_, ip) = entry(entry(&root, "patterns").1, "ip");
        assert_eq!(
            entry(ip, "regex").1.value,
            Value::Str("(?:(?:[0-9]{1,3}\\.){3}[0-9]{1,3})|(?:[0-9a-fA-F:]{2,90})".into())
        );
        let (_, ssh) = entry(entry(&root, "streams").1, "ssh");
        let (_, filter) = entry(entry(ssh, "filters").1, "failedlogin");
        assert_eq!(entry(filter, "retry").1.value, Value::Int(3));
        let (_, unban) = entry(entry(filter, "actions").1, "unban");
        let (after_key, after) = entry(unban, "after");
        assert_eq!(at(&after_key.loc), (21, 15));
        assert_eq!(after.value, Value::Str("48h".into()));
        assert_eq!(entry(unban, "onexit").1.value, Value::Bool(false));
    }
}
