//! YAML configuration files: source text -> positioned [`Node`] tree.
//!
//! [`parse_yaml`] owns everything YAML-specific so the rest of the
//! configuration code never sees it: the single-document rule, anchors and
//! aliases (expanded into copies, counted in bytes against the load's
//! [`Budget`] so "billion laughs" documents and huge aliased strings stop
//! before they are built), `<<` merge keys, tags, and the YAML 1.2 core-schema resolution
//! of plain scalars. It returns one [`Node`] whose values and keys all carry the
//! line and column they were written at, or a [`ParseError`] pointing at the
//! offending spot.
//!
//! Events come from `saphyr-parser`; the tree is built with an explicit frame
//! stack rather than recursion, and nesting is capped, so hostile input can
//! neither overflow the native stack here nor in the code that later walks or
//! drops the tree.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Span, Tag};

use super::tree::{Key, Loc, Node, ParseError, Value, shared_path};
use super::{Budget, NODE_COST};

/// Deepest nesting of lists and maps accepted. Real configurations stay under
/// ten; the cap exists so every later recursive walk of the tree is safe.
const MAX_DEPTH: usize = 512;

/// Parses one YAML document into a positioned tree, within a fresh
/// [`Budget`].
///
/// An empty file, a file holding only comments, or a document with no content
/// (`---` alone) is an empty map, so that "nothing configured yet" reads as an
/// empty configuration rather than as a type error.
pub fn parse_yaml(path: &Path, text: &str) -> Result<Node, ParseError> {
    parse_yaml_within(path, text, &mut Budget::new())
}

/// Parses one YAML document, counting every value, key and alias copy
/// against `budget` before it is built: a few kilobytes of nested aliases
/// can otherwise describe gigabytes.
pub fn parse_yaml_within(path: &Path, text: &str, budget: &mut Budget) -> Result<Node, ParseError> {
    let mut builder = Builder {
        file: shared_path(path),
        text,
        stack: Vec::new(),
        anchors: HashMap::new(),
        budget,
        root: None,
        documents: 0,
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|err| {
            ParseError::new(
                builder.loc(err.marker()),
                format!("invalid YAML: {}", err.info()),
            )
        })?;
        if !builder.event(event, span)? {
            break;
        }
    }
    let file = builder.file.clone();
    Ok(match builder.root {
        Some(root) if !root.is_empty_plain => root.node,
        _ => Node {
            value: Value::Map(Vec::new()),
            loc: Loc::file_only(file),
        },
    })
}

/// A finished node plus what its parent needs to know about how it was
/// written.
struct Built {
    node: Node,
    /// Counted bytes of this subtree, alias copies included.
    size: usize,
    /// The source text when the node is a scalar, so it can serve as a map
    /// key exactly as written (`0x10:` is the key "0x10", not "16").
    key_text: Option<String>,
    /// A plain, untagged `<<`: the YAML merge key.
    is_merge_key: bool,
    /// A plain, untagged, empty scalar: what a document with no content holds.
    is_empty_plain: bool,
}

/// An anchored node kept for its aliases.
struct Anchored {
    node: Node,
    size: usize,
    key_text: Option<String>,
}

enum Frame {
    Seq {
        loc: Loc,
        anchor: usize,
        items: Vec<Node>,
        size: usize,
    },
    Map {
        loc: Loc,
        anchor: usize,
        entries: Vec<Entry>,
        /// Line of each explicit key already seen, to report duplicates.
        seen: HashMap<String, u32>,
        pending: Option<PendingKey>,
        size: usize,
    },
}

struct PendingKey {
    key: Key,
    is_merge: bool,
}

enum Entry {
    Explicit(Key, Node),
    /// The entries a `<<` key brings in, earliest source first; explicit keys
    /// of the map win over them when the map is finished.
    Merge(Vec<(Key, Node)>),
}

struct Builder<'t, 'b> {
    file: Arc<Path>,
    text: &'t str,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    budget: &'b mut Budget,
    root: Option<Built>,
    documents: usize,
}

impl Builder<'_, '_> {
    fn loc(&self, marker: &Marker) -> Loc {
        Loc::new(
            self.file.clone(),
            u32::try_from(marker.line()).unwrap_or(u32::MAX),
            u32::try_from(marker.col().saturating_add(1)).unwrap_or(u32::MAX),
        )
    }

    fn error(&self, marker: &Marker, message: impl Into<String>) -> ParseError {
        ParseError::new(self.loc(marker), message)
    }

    /// Counts `bytes` more of the tree against the budget (`copied` when
    /// an alias or an anchor makes them), before they are built.
    fn spend(&mut self, bytes: usize, copied: bool, at: &Marker) -> Result<(), ParseError> {
        match self.budget.spend(bytes, copied) {
            Ok(()) => Ok(()),
            Err(message) => Err(self.error(at, message)),
        }
    }

    /// Handles one event; returns false once the stream has ended.
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<bool, ParseError> {
        let at = span.start;
        match event {
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => return Ok(false),
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(self.error(
                        &at,
                        "a configuration file must hold exactly one YAML document, \
                         but a second document starts here",
                    ));
                }
            }
            Event::Alias(id) => {
                // The parser rejects undefined anchors, so a missing entry is
                // an anchor whose node is still open: an alias inside itself.
                let Some(size) = self.anchors.get(&id).map(|a| a.size) else {
                    let name = self.alias_name(&at);
                    return Err(self.error(
                        &at,
                        format!("alias *{name} refers to a node that contains it"),
                    ));
                };
                self.spend(size, true, &at)?;
                let Some(anchored) = self.anchors.get(&id) else {
                    return Err(self.error(&at, "alias refers to an unknown anchor"));
                };
                let mut node = anchored.node.clone();
                let key_text = anchored.key_text.clone();
                // The copy is used here, so an error about its type should
                // point here; its inner keys and values keep the positions
                // they were written at under the anchor.
                node.loc = self.loc(&at);
                self.finish(Built {
                    node,
                    size,
                    key_text,
                    is_merge_key: false,
                    is_empty_plain: false,
                })?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let size = NODE_COST.saturating_add(text.len());
                self.spend(size, false, &at)?;
                let value = scalar_value(&text, style, tag.as_deref())
                    .map_err(|message| self.error(&at, message))?;
                let plain_untagged = style == ScalarStyle::Plain && tag.is_none();
                let built = Built {
                    node: Node {
                        value,
                        loc: self.loc(&at),
                    },
                    size,
                    is_merge_key: plain_untagged && text == "<<",
                    is_empty_plain: plain_untagged && text.is_empty() && anchor == 0,
                    key_text: Some(text.into_owned()),
                };
                self.remember(anchor, &built, &at)?;
                self.finish(built)?;
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_collection_tag(tag.as_deref(), "seq", "a list", &at)?;
                self.open(
                    Frame::Seq {
                        loc: self.loc(&at),
                        anchor,
                        items: Vec::new(),
                        size: NODE_COST,
                    },
                    &at,
                )?;
            }
            Event::MappingStart(anchor, tag) => {
                self.check_collection_tag(tag.as_deref(), "map", "a map", &at)?;
                self.open(
                    Frame::Map {
                        loc: self.loc(&at),
                        anchor,
                        entries: Vec::new(),
                        seen: HashMap::new(),
                        pending: None,
                        size: NODE_COST,
                    },
                    &at,
                )?;
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    loc,
                    anchor,
                    items,
                    size,
                }) => {
                    let built = Built {
                        node: Node {
                            value: Value::Seq(items),
                            loc,
                        },
                        size,
                        key_text: None,
                        is_merge_key: false,
                        is_empty_plain: false,
                    };
                    self.remember(anchor, &built, &at)?;
                    self.finish(built)?;
                }
                _ => return Err(self.error(&at, "unbalanced end of a YAML list")),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map {
                    loc,
                    anchor,
                    entries,
                    size,
                    ..
                }) => {
                    let built = Built {
                        node: Node {
                            value: Value::Map(flatten_merges(entries)),
                            loc,
                        },
                        size,
                        key_text: None,
                        is_merge_key: false,
                        is_empty_plain: false,
                    };
                    self.remember(anchor, &built, &at)?;
                    self.finish(built)?;
                }
                _ => return Err(self.error(&at, "unbalanced end of a YAML map")),
            },
        }
        Ok(true)
    }

    fn open(&mut self, frame: Frame, at: &Marker) -> Result<(), ParseError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(
                at,
                format!("lists and maps are nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        self.spend(NODE_COST, false, at)?;
        self.stack.push(frame);
        Ok(())
    }

    /// Rejects a core-schema tag that contradicts the collection it is on
    /// (`!!map [1]`); application tags are ignored.
    fn check_collection_tag(
        &self,
        tag: Option<&Tag>,
        expected: &str,
        kind: &str,
        at: &Marker,
    ) -> Result<(), ParseError> {
        match tag {
            Some(tag) if tag.is_yaml_core_schema() && tag.suffix != expected => Err(self.error(
                at,
                format!("the tag !!{} cannot be applied to {kind}", tag.suffix),
            )),
            _ => Ok(()),
        }
    }

    fn remember(&mut self, anchor: usize, built: &Built, at: &Marker) -> Result<(), ParseError> {
        if anchor == 0 {
            return Ok(());
        }
        // Keeping the copy costs as much as making one, so it is budgeted
        // too; this also bounds the work of anchors nested in anchors.
        self.spend(built.size, true, at)?;
        self.anchors.insert(
            anchor,
            Anchored {
                node: built.node.clone(),
                size: built.size,
                key_text: built.key_text.clone(),
            },
        );
        Ok(())
    }

    /// Hands a finished node to its parent (or makes it the document).
    fn finish(&mut self, built: Built) -> Result<(), ParseError> {
        let Some((frame, parents)) = self.stack.split_last_mut() else {
            self.root = Some(built);
            return Ok(());
        };
        match frame {
            Frame::Seq { items, size, .. } => {
                *size = size.saturating_add(built.size);
                items.push(built.node);
            }
            Frame::Map {
                entries,
                seen,
                pending,
                size,
                ..
            } => {
                *size = size.saturating_add(built.size);
                match pending.take() {
                    None => {
                        let Some(name) = built.key_text else {
                            return Err(ParseError::new(
                                built.node.loc,
                                format!(
                                    "a map key must be a scalar, found {}",
                                    built.node.value.kind_name()
                                ),
                            ));
                        };
                        let line = built.node.loc.line;
                        if let Some(first) = seen.insert(name.clone(), line) {
                            let path = key_path(parents, &name);
                            return Err(ParseError::new(
                                built.node.loc,
                                format!(
                                    "{path}: the key {name:?} is written twice in this map \
                                     (lines {first} and {line})"
                                ),
                            ));
                        }
                        *pending = Some(PendingKey {
                            key: Key {
                                name,
                                loc: built.node.loc,
                            },
                            is_merge: built.is_merge_key,
                        });
                    }
                    Some(PendingKey {
                        key,
                        is_merge: false,
                    }) => entries.push(Entry::Explicit(key, built.node)),
                    Some(PendingKey { is_merge: true, .. }) => {
                        entries.push(Entry::Merge(merge_sources(built.node)?));
                    }
                }
            }
        }
        Ok(())
    }

    /// The anchor name an alias at `at` is written with, for error messages.
    fn alias_name(&self, at: &Marker) -> String {
        let line = self.text.lines().nth(at.line().saturating_sub(1));
        line.map(|line| {
            line.chars()
                .skip(at.col())
                .skip_while(|&c| c == '*')
                .take_while(|&c| !c.is_whitespace() && !",[]{}".contains(c))
                .collect()
        })
        .unwrap_or_default()
    }
}

/// The key path (`streams.ssh.filters`, `start[1]`) of `name` in the map
/// whose parents are `frames`, outermost first.
fn key_path(frames: &[Frame], name: &str) -> String {
    let mut path = String::new();
    for frame in frames {
        match frame {
            Frame::Seq { items, .. } => path.push_str(&format!("[{}]", items.len())),
            Frame::Map {
                pending: Some(PendingKey { key, .. }),
                ..
            } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key.name);
            }
            // A map key being built is itself a map or list: not a path.
            Frame::Map { pending: None, .. } => {}
        }
    }
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
    path
}

/// The entries a `<<` value contributes: a map, or a list of maps of which
/// the earlier ones win.
fn merge_sources(value: Node) -> Result<Vec<(Key, Node)>, ParseError> {
    match value.value {
        Value::Map(entries) => Ok(entries),
        Value::Seq(items) => {
            let mut merged: Vec<(Key, Node)> = Vec::new();
            let mut names = HashSet::new();
            for item in items {
                let Value::Map(entries) = item.value else {
                    return Err(ParseError::new(
                        item.loc,
                        format!(
                            "a merge key `<<` takes a map or a list of maps, \
                             but this list holds {}",
                            item.value.kind_name()
                        ),
                    ));
                };
                for (key, node) in entries {
                    if names.insert(key.name.clone()) {
                        merged.push((key, node));
                    }
                }
            }
            Ok(merged)
        }
        other => Err(ParseError::new(
            value.loc,
            format!(
                "a merge key `<<` takes a map or a list of maps, found {}",
                other.kind_name()
            ),
        )),
    }
}

/// Resolves the merge entries of a finished map: merged keys appear where the
/// `<<` was written, unless the map also writes them explicitly.
fn flatten_merges(entries: Vec<Entry>) -> Vec<(Key, Node)> {
    if !entries.iter().any(|e| matches!(e, Entry::Merge(_))) {
        return entries
            .into_iter()
            .filter_map(|e| match e {
                Entry::Explicit(key, node) => Some((key, node)),
                Entry::Merge(_) => None,
            })
            .collect();
    }
    let explicit: HashSet<String> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Explicit(key, _) => Some(key.name.clone()),
            Entry::Merge(_) => None,
        })
        .collect();
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        match entry {
            Entry::Explicit(key, node) => out.push((key, node)),
            Entry::Merge(merged) => out.extend(
                merged
                    .into_iter()
                    .filter(|(key, _)| !explicit.contains(&key.name)),
            ),
        }
    }
    out
}

/// The value of a scalar, given how it was written.
fn scalar_value(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    match tag {
        Some(tag) if tag.is_yaml_core_schema() => {
            let resolved = resolve_plain(text);
            let mismatch = |kind: &str| {
                format!(
                    "{text:?} is not {kind}, as its tag !!{} requires",
                    tag.suffix
                )
            };
            match tag.suffix.as_str() {
                "null" => match resolved {
                    Value::Null => Ok(Value::Null),
                    _ => Err(mismatch("null")),
                },
                "bool" => match resolved {
                    Value::Bool(b) => Ok(Value::Bool(b)),
                    _ => Err(mismatch("a boolean")),
                },
                "int" => match resolved {
                    Value::Int(i) => Ok(Value::Int(i)),
                    _ => Err(mismatch("an integer")),
                },
                "float" => match resolved {
                    Value::Float(f) => Ok(Value::Float(f)),
                    Value::Int(i) => Ok(Value::Float(i as f64)),
                    _ => Err(mismatch("a number")),
                },
                "seq" | "map" => Err(format!(
                    "the tag !!{} cannot be applied to a scalar",
                    tag.suffix
                )),
                // !!str, and types this configuration has no use for
                // (!!binary, !!timestamp...), keep their text.
                _ => Ok(Value::Str(text.to_owned())),
            }
        }
        // `! text` is the non-specific tag: "a string, do not resolve".
        Some(tag) if tag.handle.is_empty() && tag.suffix == "!" => Ok(Value::Str(text.to_owned())),
        _ if style == ScalarStyle::Plain => Ok(resolve_plain(text)),
        _ => Ok(Value::Str(text.to_owned())),
    }
}

/// YAML 1.2 core-schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(digits) = text.strip_prefix("0x") {
        return radix_int(text, digits, 16);
    }
    if let Some(digits) = text.strip_prefix("0o") {
        return radix_int(text, digits, 8);
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !unsigned.is_empty()
        && unsigned.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return Value::Int(i);
    }
    if is_core_float(unsigned)
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(text.to_owned())
}

/// `0x`/`0o` integers; anything that does not fit stays the text it was.
fn radix_int(text: &str, digits: &str, radix: u32) -> Value {
    let valid = !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix));
    match i64::from_str_radix(digits, radix) {
        Ok(i) if valid => Value::Int(i),
        _ => Value::Str(text.to_owned()),
    }
}

/// The core-schema float shape, sign already removed:
/// `( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`.
/// Checked by hand because Rust's float parser also accepts "inf", "NaN"...
fn is_core_float(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = digits(0);
    let int_digits = i;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        frac_digits = digits(i + 1);
        i += 1 + frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let exp = digits(i);
        if exp == 0 {
            return false;
        }
        i += exp;
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tree::testing::at;

    fn parse(text: &str) -> Result<Node, ParseError> {
        parse_yaml(Path::new("test.yaml"), text)
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

    fn get<'n>(node: &'n Node, key: &str) -> &'n Node {
        let Value::Map(entries) = &node.value else {
            panic!("not a map: {node:?}")
        };
        match entries.iter().find(|(k, _)| k.name == key) {
            Some((_, v)) => v,
            None => panic!("no key {key} in {node:?}"),
        }
    }

    fn key<'n>(node: &'n Node, name: &str) -> &'n Key {
        let Value::Map(entries) = &node.value else {
            panic!("not a map: {node:?}")
        };
        match entries.iter().find(|(k, _)| k.name == name) {
            Some((k, _)) => k,
            None => panic!("no key {name} in {node:?}"),
        }
    }

    fn keys(node: &Node) -> Vec<&str> {
        let Value::Map(entries) = &node.value else {
            panic!("not a map: {node:?}")
        };
        entries.iter().map(|(k, _)| k.name.as_str()).collect()
    }

    #[test]
    fn nested_keys_and_values_carry_their_line_and_column() {
        let root = ok("streams:\n  ssh:\n    cmd: ['journalctl', '-f']\n    é: \"x\"\n");
        let streams = get(&root, "streams");
        let ssh = get(streams, "ssh");
        assert_eq!(at(&key(&root, "streams").loc), (1, 1));
        assert_eq!(at(&key(streams, "ssh").loc), (2, 3));
        assert_eq!(at(&key(ssh, "cmd").loc), (3, 5));
        let cmd = get(ssh, "cmd");
        assert_eq!(at(&cmd.loc), (3, 10));
        let Value::Seq(items) = &cmd.value else {
            panic!("not a list")
        };
        assert_eq!(at(&items[1].loc), (3, 25));
        // Columns count characters, not bytes.
        assert_eq!(at(&get(ssh, "é").loc), (4, 8));
        assert_eq!(&*root.loc.file, Path::new("test.yaml"));
    }

    #[test]
    fn plain_scalars_resolve_like_the_yaml_core_schema() {
        let root = ok(
            "a: null\nb: ~\nc:\nd: True\ne: FALSE\nf: -42\ng: 0x1F\nh: 0o17\n\
             i: 1.5e3\nj: .inf\nk: -.Inf\nl: .nan\nm: yes\nn: 99999999999999999999\n\
             o: 0x\np: +7\nq: .5\nr: 1.\ns: inf\nt: 1_000\n",
        );
        assert_eq!(get(&root, "a").value, Value::Null);
        assert_eq!(get(&root, "b").value, Value::Null);
        assert_eq!(get(&root, "c").value, Value::Null);
        assert_eq!(get(&root, "d").value, Value::Bool(true));
        assert_eq!(get(&root, "e").value, Value::Bool(false));
        assert_eq!(get(&root, "f").value, Value::Int(-42));
        assert_eq!(get(&root, "g").value, Value::Int(31));
        assert_eq!(get(&root, "h").value, Value::Int(15));
        assert_eq!(get(&root, "i").value, Value::Float(1500.0));
        assert_eq!(get(&root, "j").value, Value::Float(f64::INFINITY));
        assert_eq!(get(&root, "k").value, Value::Float(f64::NEG_INFINITY));
        assert!(matches!(get(&root, "l").value, Value::Float(f) if f.is_nan()));
        assert_eq!(get(&root, "m").value, Value::Str("yes".into()));
        assert_eq!(get(&root, "n").value, Value::Float(1e20));
        assert_eq!(get(&root, "o").value, Value::Str("0x".into()));
        assert_eq!(get(&root, "p").value, Value::Int(7));
        assert_eq!(get(&root, "q").value, Value::Float(0.5));
        assert_eq!(get(&root, "r").value, Value::Float(1.0));
        assert_eq!(get(&root, "s").value, Value::Str("inf".into()));
        assert_eq!(get(&root, "t").value, Value::Str("1_000".into()));
    }

    #[test]
    fn quoted_and_block_scalars_are_always_strings() {
        let root = ok("a: '12'\nb: \"true\"\nc: |\n  null\nd: >-\n  3\n");
        assert_eq!(get(&root, "a").value, Value::Str("12".into()));
        assert_eq!(get(&root, "b").value, Value::Str("true".into()));
        assert_eq!(get(&root, "c").value, Value::Str("null\n".into()));
        assert_eq!(get(&root, "d").value, Value::Str("3".into()));
    }

    #[test]
    fn core_tags_override_resolution_and_other_tags_are_ignored() {
        let root = ok(
            "a: !!str 123\nb: !!float 2\nc: !!int \"7\"\nd: ! true\ne: !custom 5\n\
             f: !!binary aGk=\n",
        );
        assert_eq!(get(&root, "a").value, Value::Str("123".into()));
        assert_eq!(get(&root, "b").value, Value::Float(2.0));
        assert_eq!(get(&root, "c").value, Value::Int(7));
        assert_eq!(get(&root, "d").value, Value::Str("true".into()));
        assert_eq!(get(&root, "e").value, Value::Int(5));
        assert_eq!(get(&root, "f").value, Value::Str("aGk=".into()));
    }

    #[test]
    fn a_tag_contradicting_its_value_is_an_error() {
        let e = err("a: !!int abc\n");
        assert_eq!(at(&e.loc), (1, 4));
        assert!(e.message.contains("!!int"), "{}", e.message);
        let e = err("a: !!map [1]\n");
        assert!(e.message.contains("!!map"), "{}", e.message);
    }

    #[test]
    fn map_keys_are_stringified_as_written() {
        let root = ok("1: a\n0x10: b\nnull: c\ntrue: d\n'q': e\n");
        assert_eq!(keys(&root), ["1", "0x10", "null", "true", "q"]);
    }

    #[test]
    fn empty_or_comment_only_files_are_an_empty_map() {
        for text in ["", "# only a comment\n\n", "---\n", "--- # nothing\n...\n"] {
            assert_eq!(ok(text).value, Value::Map(vec![]), "{text:?}");
        }
        assert_eq!(ok("null\n").value, Value::Null);
    }

    #[test]
    fn a_second_document_is_an_error_at_its_start() {
        let e = err("a: 1\n---\nb: 2\n");
        assert_eq!(at(&e.loc), (2, 1));
        assert!(
            e.message.contains("exactly one YAML document"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_key_written_twice_is_an_error_naming_both_lines() {
        let e = err("a: 1\nb:\n  c: 1\n  c: 2\n");
        assert_eq!(at(&e.loc), (4, 3));
        assert!(e.message.contains("\"c\""), "{}", e.message);
        assert!(e.message.contains("lines 3 and 4"), "{}", e.message);
    }

    #[test]
    fn a_key_written_twice_is_named_by_its_key_path() {
        let e = err("streams:\n  s:\n    filters:\n      f:\n        retry: 1\n        retry: 2\n");
        assert_eq!(at(&e.loc), (6, 9), "the second key, not its value");
        assert!(
            e.message
                .starts_with("streams.s.filters.f.retry: the key \"retry\" is written twice"),
            "{}",
            e.message
        );
        let e = err("start:\n  - [a]\n  - {x: 1, x: 2}\n");
        assert!(e.message.starts_with("start[1].x: "), "{}", e.message);
        let e = err("a: 1\na: 2\n");
        assert!(e.message.starts_with("a: the key"), "{}", e.message);
    }

    #[test]
    fn a_non_scalar_key_is_an_error_at_its_position() {
        let e = err("a: 1\n? [x, y]\n: 2\n");
        assert_eq!(at(&e.loc), (2, 3));
        assert!(e.message.contains("found a list"), "{}", e.message);
    }

    #[test]
    fn scan_errors_carry_their_position() {
        let e = err("a: b: c\n");
        assert_eq!(at(&e.loc), (1, 5));
        assert!(e.message.starts_with("invalid YAML"), "{}", e.message);
        let e = err("a: \"x\\q\"\n");
        assert_eq!(e.loc.line, 1);
        let e = err("a: *nowhere\n");
        assert_eq!(at(&e.loc), (1, 4));
    }

    #[test]
    fn aliases_expand_to_copies_of_their_anchor() {
        let root =
            ok("base: &b\n  x: 1\n  y: [2, 3]\ncopy: *b\nname: &n hello\nagain: *n\n*n : k\n");
        let copy = get(&root, "copy");
        assert_eq!(copy.value, get(&root, "base").value);
        // The copy is placed where the alias is; its insides where written.
        assert_eq!(at(&copy.loc), (4, 7));
        assert_eq!(at(&key(copy, "x").loc), (2, 3));
        assert_eq!(get(&root, "again").value, Value::Str("hello".into()));
        assert_eq!(get(&root, "hello").value, Value::Str("k".into()));
    }

    #[test]
    fn an_alias_inside_its_own_anchor_is_an_error() {
        let e = err("a: &x [1, *x]\n");
        assert_eq!(at(&e.loc), (1, 11));
        assert!(e.message.contains("*x"), "{}", e.message);
    }

    #[test]
    fn billion_laughs_is_stopped_by_the_expansion_budget() {
        let mut text = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"
            ));
        }
        let e = err(&text);
        assert!(e.message.contains("more than 128 MiB"), "{}", e.message);
        assert!(e.message.contains("aliases"), "{}", e.message);
    }

    #[test]
    fn a_long_string_aliased_many_times_is_stopped_by_its_bytes() {
        // Few values, many bytes: 100 x 100 copies of 64 KiB.
        let text = format!(
            "a: &a \"{}\"\nb: &b [{}]\nc: [{}]\n",
            "x".repeat(64 << 10),
            vec!["*a"; 100].join(", "),
            vec!["*b"; 100].join(", ")
        );
        let mut budget = Budget::with_tree_limit(16 << 20);
        let e = match parse_yaml_within(Path::new("test.yaml"), &text, &mut budget) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        };
        assert!(e.message.contains("more than 16 MiB"), "{}", e.message);
        assert!(e.message.contains("aliases are expanded"), "{}", e.message);
        assert_eq!(e.loc.line, 3, "{e}");
        // The same text without aliases fits.
        let plain = format!("a: \"{}\"\n", "x".repeat(64 << 10));
        let mut budget = Budget::with_tree_limit(16 << 20);
        assert!(parse_yaml_within(Path::new("test.yaml"), &plain, &mut budget).is_ok());
    }

    #[test]
    fn a_large_document_without_aliases_is_too_large_not_an_alias_bomb() {
        let text: String = (0..20_000).map(|i| format!("key{i}: value\n")).collect();
        let mut budget = Budget::with_tree_limit(1 << 20);
        let e = match parse_yaml_within(Path::new("test.yaml"), &text, &mut budget) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        };
        assert!(e.message.contains("too large"), "{}", e.message);
        assert!(!e.message.contains("alias"), "{}", e.message);
    }

    #[test]
    fn merge_keys_merge_anchors_with_explicit_keys_winning() {
        let root = ok(
            "defaults: &d\n  retry: 3\n  after: 1m\nother: &o\n  after: 2h\n  extra: yes\n\
             one:\n  <<: *d\n  retry: 5\ntwo:\n  name: t\n  <<: [*o, *d]\n",
        );
        let one = get(&root, "one");
        assert_eq!(keys(one), ["after", "retry"]);
        assert_eq!(get(one, "retry").value, Value::Int(5));
        assert_eq!(get(one, "after").value, Value::Str("1m".into()));
        // Merged entries keep the position they were written at.
        assert_eq!(at(&key(one, "after").loc), (3, 3));
        let two = get(&root, "two");
        assert_eq!(keys(two), ["name", "after", "extra", "retry"]);
        assert_eq!(get(two, "after").value, Value::Str("2h".into()));
    }

    #[test]
    fn a_merge_key_with_a_scalar_value_is_an_error() {
        let e = err("a:\n  <<: 3\n");
        assert_eq!(at(&e.loc), (2, 7));
        assert!(e.message.contains("merge key"), "{}", e.message);
        let e = err("a:\n  <<: [{x: 1}, 2]\n");
        assert_eq!(at(&e.loc), (2, 16));
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_an_error() {
        // Flow collections hit the scanner's own, lower, limit first.
        let text = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let e = err(&text);
        assert!(e.message.contains("recursion limit"), "{}", e.message);
        let mut block = String::new();
        for depth in 0..=MAX_DEPTH {
            block.push_str(&" ".repeat(depth));
            block.push_str("k:\n");
        }
        let e = err(&block);
        assert!(e.message.contains("nested"), "{}", e.message);
    }

    #[test]
    fn a_realistic_reaction_config_parses() {
        let text = r#"# reaction-style configuration
patterns:
  ip:
    regex: '(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3})|(?:[0-9a-fA-F:]{2,90})'
    ignore:
      - 127.0.0.1
      - ::1

start:
  - [ 'ip46tables', '-w', '-N', 'reaction' ]

defaults: &defaults
  retryperiod: 6h

streams:
  ssh:
    cmd: [ 'journalctl', '-fn0', '-u', 'sshd.service' ]
    filters:
      failedlogin:
        <<: *defaults
        regex:
          - 'authentication failure;.*rhost=<ip>'
          - 'Connection (reset|closed) by (authenticating|invalid) user .* <ip>'
        retry: 3
        actions:
          ban:
            cmd: [ 'ip46tables', '-w', '-A', 'reaction', '-s', '<ip>', '-j', 'DROP' ]
          unban:
            cmd: [ 'ip46tables', '-w', '-D', 'reaction', '-s', '<ip>', '-j', 'DROP' ]
            after: 48h
            onexit: false
"#;
        let root = ok(text);
        let ignore = get(get(get(&root, "patterns"), "ip"), "ignore");
        assert_eq!(
            ignore.value,
            Value::Seq(vec![
                Node {
                    value: Value::Str("127.0.0.1".into()),
                    loc: Loc::new(shared_path(Path::new("test.yaml")), 6, 9),
                },
                Node {
                    value: Value::Str("::1".into()),
                    loc: Loc::new(shared_path(Path::new("test.yaml")), 7, 9),
                },
            ])
        );
        let filter = get(
            get(get(get(&root, "streams"), "ssh"), "filters"),
            "failedlogin",
        );
        assert_eq!(get(filter, "retry").value, Value::Int(3));
        assert_eq!(get(filter, "retryperiod").value, Value::Str("6h".into()));
        let unban = get(get(filter, "actions"), "unban");
        assert_eq!(get(unban, "onexit").value, Value::Bool(false));
        assert_eq!(at(&key(unban, "after").loc), (30, 13));
    }
}
