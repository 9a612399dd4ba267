//! Finding, parsing and merging configuration files.
//!
//! `-c` names one file or a directory. In a directory, files are read in
//! byte-wise name order; names starting with `.` or `_` are skipped (they are
//! typically JSONnet libraries imported by the others), so are names without
//! a supported extension and subdirectories. The files' top-level maps are
//! merged:
//!
//! * `patterns` and `plugins` entries are pooled; a name defined in two files
//!   is an error naming both places.
//! * `streams` are pooled too, but a stream may be spread over several files,
//!   as reaction allows: one file gives its `cmd` and some filters, another
//!   adds more filters. Its filters are merged in file order; a filter name
//!   given in two files is an error naming both (reaction does not merge one
//!   filter across files either). Any other key of the stream (`cmd`, `type`,
//!   `options`) may appear in several files only with the same value: two
//!   different `cmd`s would leave the stream's command to the file order, a
//!   silent choice the user cannot see, so it is an error naming both places.
//!   Repeating the same `cmd` is harmless and lets each file be read alone.
//! * `start` and `stop` lists are concatenated in file order.
//! * `definitions` (reaction's place for YAML anchors) is dropped from every
//!   file, so each file may have its own.
//! * Any other key set in two files is an error.

use std::path::{Path, PathBuf};

use super::tree::{Key, Loc, Node, ParseError, Value, shared_path};
use super::validate::{DEFINITIONS, MAX_REPORTED, close};
use super::{Budget, ConfigError, ConfigErrors, json, jsonnet, yaml};

/// The configuration formats, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Jsonnet,
}

pub const EXTENSIONS: &str = ".yml, .yaml, .json or .jsonnet";

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "yml" | "yaml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            "jsonnet" => Some(Format::Jsonnet),
            _ => None,
        }
    }
}

/// Reads `path` (a file or a directory) into one merged tree, within
/// `budget`.
pub fn read(path: &Path, budget: &mut Budget) -> Result<Node, ConfigErrors> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ParseError::in_file(path, format!("cannot read the configuration: {e}")))?;
    if meta.is_dir() {
        return read_dir(path, budget);
    }
    let format = Format::from_path(path).ok_or_else(|| {
        ParseError::in_file(
            path,
            format!("unsupported configuration file extension; expected {EXTENSIONS}"),
        )
    })?;
    let root = path.parent().unwrap_or(Path::new("."));
    let root = if root.as_os_str().is_empty() {
        Path::new(".")
    } else {
        root
    };
    Ok(parse_file(path, format, root, budget)?)
}

/// The files a directory configuration is made of, in load order.
pub fn directory_files(dir: &Path) -> Result<Vec<(PathBuf, Format)>, ParseError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ParseError::in_file(dir, format!("cannot list the directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| ParseError::in_file(dir, format!("cannot list the directory: {e}")))?;
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            continue;
        };
        if name_str.starts_with('.') || name_str.starts_with('_') {
            continue;
        }
        let path = entry.path();
        let Some(format) = Format::from_path(&path) else {
            continue;
        };
        // Follows symlinks: a linked file is part of the configuration, a
        // linked directory is not (no recursion).
        if !std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            continue;
        }
        files.push((path, format));
    }
    files.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    Ok(files)
}

fn read_dir(dir: &Path, budget: &mut Budget) -> Result<Node, ConfigErrors> {
    let files = directory_files(dir)?;
    if files.is_empty() {
        return Err(ParseError::in_file(
            dir,
            format!("the directory holds no configuration file (names ending in {EXTENSIONS}, not starting with '.' or '_')"),
        )
        .into());
    }
    let mut merger = Merger::default();
    let mut errors = Vec::new();
    for (path, format) in &files {
        match parse_file(path, *format, dir, budget) {
            Ok(node) => merger.add(node, &mut errors),
            Err(e) => errors.push(ConfigErrors::from(e).0.remove(0)),
        }
    }
    if !errors.is_empty() {
        let dropped = errors.len().saturating_sub(MAX_REPORTED);
        errors.truncate(MAX_REPORTED);
        close(&mut errors, dropped, "errors");
        return Err(ConfigErrors(errors));
    }
    let first = Loc::file_only(shared_path(&files[0].0));
    Ok(merger.finish(first))
}

fn parse_file(
    path: &Path,
    format: Format,
    root: &Path,
    budget: &mut Budget,
) -> Result<Node, ParseError> {
    if format == Format::Jsonnet {
        return jsonnet::eval_jsonnet(path, root, budget);
    }
    let bytes = budget.read(path)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        ParseError::in_file(
            path,
            format!(
                "the file is not valid UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    match format {
        Format::Yaml => yaml::parse_yaml_within(path, &text, budget),
        Format::Json => json::parse_json_within(path, &text, budget),
        Format::Jsonnet => unreachable!("handled above"),
    }
}

/// Keys whose entries are pooled across files, a name in one file only.
const POOLED: [&str; 2] = ["patterns", "plugins"];
/// Keys whose lists are concatenated across files.
const CONCATENATED: [&str; 2] = ["start", "stop"];

#[derive(Default)]
struct Merger {
    /// Top-level keys in first-seen order, with the merged value.
    entries: Vec<(Key, Node)>,
}

impl Merger {
    fn add(&mut self, file: Node, errors: &mut Vec<ConfigError>) {
        let Value::Map(entries) = file.value else {
            errors.push(ConfigError {
                loc: Some(file.loc),
                path: String::new(),
                message: format!(
                    "the top level of a configuration file must be a map, found {}",
                    file.value.kind_name()
                ),
            });
            return;
        };
        for (key, node) in entries {
            if key.name == DEFINITIONS {
                continue;
            }
            let existing = self.entries.iter_mut().find(|(k, _)| k.name == key.name);
            let Some((existing_key, existing_node)) = existing else {
                self.entries.push((key, node));
                continue;
            };
            let name = key.name.as_str();
            if name == "streams" {
                merge_streams(existing_node, node, errors);
            } else if POOLED.contains(&name) {
                merge_pooled(name, existing_node, node, errors);
            } else if CONCATENATED.contains(&name) {
                match (&mut existing_node.value, node.value) {
                    (Value::Seq(items), Value::Seq(more)) => items.extend(more),
                    // Shape errors are reported by validation on the first
                    // value; a wrong second value is reported here.
                    (_, other) => errors.push(ConfigError {
                        loc: Some(node.loc),
                        path: name.to_owned(),
                        message: format!(
                            "expected a list of commands, found {}",
                            other.kind_name()
                        ),
                    }),
                }
            } else {
                errors.push(ConfigError {
                    loc: Some(key.loc.clone()),
                    path: name.to_owned(),
                    message: format!(
                        "'{name}' is set in two files: here and at {}; set it in one file only",
                        existing_key.loc
                    ),
                });
            }
        }
    }

    fn finish(self, loc: Loc) -> Node {
        Node {
            value: Value::Map(self.entries),
            loc,
        }
    }
}

fn merge_pooled(section: &str, into: &mut Node, node: Node, errors: &mut Vec<ConfigError>) {
    if !both_maps(section, into, &node, errors) {
        return;
    }
    let (Value::Map(items), Value::Map(more)) = (&mut into.value, node.value) else {
        return;
    };
    for (key, value) in more {
        if let Some((first, _)) = items.iter().find(|(k, _)| k.name == key.name) {
            errors.push(ConfigError {
                loc: Some(key.loc.clone()),
                path: format!("{section}.{}", key.name),
                message: format!(
                    "'{}' is already defined in {section} at {}; a name may be defined in one file only",
                    key.name, first.loc
                ),
            });
            continue;
        }
        items.push((key, value));
    }
}

/// Pools the streams of one more file into `into`, merging a stream that
/// is already defined (see the module documentation).
fn merge_streams(into: &mut Node, node: Node, errors: &mut Vec<ConfigError>) {
    if !both_maps("streams", into, &node, errors) {
        return;
    }
    let (Value::Map(streams), Value::Map(more)) = (&mut into.value, node.value) else {
        return;
    };
    for (key, stream) in more {
        let Some((first_key, existing)) = streams.iter_mut().find(|(k, _)| k.name == key.name)
        else {
            streams.push((key, stream));
            continue;
        };
        let path = format!("streams.{}", key.name);
        let (Value::Map(fields), Value::Map(more_fields)) = (&mut existing.value, stream.value)
        else {
            errors.push(ConfigError {
                loc: Some(key.loc.clone()),
                path,
                message: format!(
                    "'{}' is also defined at {}, and a stream defined in several files must be a map in each",
                    key.name, first_key.loc
                ),
            });
            continue;
        };
        for (field_key, value) in more_fields {
            let field_path = format!("{path}.{}", field_key.name);
            let Some((first_field, existing_value)) =
                fields.iter_mut().find(|(k, _)| k.name == field_key.name)
            else {
                fields.push((field_key, value));
                continue;
            };
            if field_key.name == "filters" {
                merge_filters(&field_path, existing_value, value, errors);
            } else if !same_value(existing_value, &value) {
                errors.push(ConfigError {
                    loc: Some(field_key.loc.clone()),
                    path: field_path,
                    message: format!(
                        "'{}' of stream '{}' is set differently here and at {}; \
                         a stream spread over several files takes its '{}' from one file \
                         (or the same value in each)",
                        field_key.name, key.name, first_field.loc, field_key.name
                    ),
                });
            }
        }
    }
}

/// Adds the filters of one more file to a stream's `filters`.
fn merge_filters(path: &str, into: &mut Node, node: Node, errors: &mut Vec<ConfigError>) {
    let (Value::Map(filters), Value::Map(more)) = (&mut into.value, node.value) else {
        if !matches!(into.value, Value::Map(_)) {
            // Validation reports the first value's shape.
            return;
        }
        errors.push(ConfigError {
            loc: Some(node.loc),
            path: path.to_owned(),
            message: "expected a map of filter names to filters".to_owned(),
        });
        return;
    };
    for (key, filter) in more {
        if let Some((first, _)) = filters.iter().find(|(k, _)| k.name == key.name) {
            errors.push(ConfigError {
                loc: Some(key.loc.clone()),
                path: format!("{path}.{}", key.name),
                message: format!(
                    "filter '{}' is already defined at {}; a stream's filters may be spread \
                     over several files, but each filter is defined in one file only",
                    key.name, first.loc
                ),
            });
            continue;
        }
        filters.push((key, filter));
    }
}

/// Whether a section and its value from one more file are both maps, as
/// merging needs. Validation reports a first value that is not; a later one
/// is reported here, or it would be dropped without a word.
fn both_maps(section: &str, into: &Node, node: &Node, errors: &mut Vec<ConfigError>) -> bool {
    match (&into.value, &node.value) {
        (Value::Map(_), Value::Map(_)) => true,
        (Value::Map(_), other) => {
            errors.push(ConfigError {
                loc: Some(node.loc.clone()),
                path: section.to_owned(),
                message: format!(
                    "expected a map of names to definitions, found {}",
                    other.kind_name()
                ),
            });
            false
        }
        _ => false,
    }
}

/// Whether two values are the same, wherever they were written.
fn same_value(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Seq(x), Value::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter().all(|(ka, a)| {
                    y.iter()
                        .any(|(kb, b)| ka.name == kb.name && same_value(a, b))
                })
        }
        (x, y) => x == y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write");
    }

    #[test]
    fn directory_files_skip_hidden_underscored_unknown_and_subdirectories() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "b.yml",
            "a.json",
            ".hidden.yml",
            "_off.yml",
            "notes.txt",
            "c.jsonnet",
        ] {
            write(dir.path(), name, "{}");
        }
        std::fs::create_dir(dir.path().join("sub.yml")).expect("mkdir");
        let names: Vec<String> = directory_files(dir.path())
            .expect("list")
            .iter()
            .map(|(p, _)| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.json", "b.yml", "c.jsonnet"]);
    }

    /// The entry `name` of a map node.
    fn get<'n>(node: &'n Node, name: &str) -> &'n Node {
        crate::config::tree::testing::entry(node, name).1
    }

    fn names(node: &Node) -> Vec<&str> {
        let Value::Map(entries) = &node.value else {
            panic!("not a map: {node:?}")
        };
        entries.iter().map(|(k, _)| k.name.as_str()).collect()
    }

    #[test]
    fn a_stream_split_across_files_merges_its_filters_in_file_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "a.yml",
            "streams:\n  ssh:\n    cmd: [a]\n    filters:\n      f1: {regex: [x]}\n",
        );
        write(
            dir.path(),
            "b.json",
            r#"{"streams": {"ssh": {"filters": {"f3": {}, "f2": {}}}, "web": {}}}"#,
        );
        write(
            dir.path(),
            "c.yml",
            "streams:\n  ssh:\n    cmd: [a]\n    filters:\n      f0: {}\n",
        );
        let root = read(dir.path(), &mut Budget::new()).expect("merges");
        let streams = get(&root, "streams");
        assert_eq!(names(streams), ["ssh", "web"]);
        let ssh = get(streams, "ssh");
        assert_eq!(names(ssh), ["cmd", "filters"]);
        assert_eq!(names(get(ssh, "filters")), ["f1", "f3", "f2", "f0"]);
        // Merged filters keep the file they were written in.
        let (key, _) = crate::config::tree::testing::entry(get(ssh, "filters"), "f0");
        assert!(key.loc.to_string().ends_with("c.yml:5:7"), "{}", key.loc);
    }

    #[test]
    fn the_same_filter_in_two_files_is_an_error_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "a.yml",
            "streams:\n  ssh:\n    cmd: [a]\n    filters:\n      f: {}\n",
        );
        write(
            dir.path(),
            "b.yml",
            "streams:\n  ssh:\n    filters:\n      g: {}\n      f: {}\n",
        );
        let err = read(dir.path(), &mut Budget::new())
            .expect_err("duplicate")
            .to_string();
        assert!(err.contains("b.yml:5:7"), "{err}");
        assert!(err.contains("a.yml:5:7"), "{err}");
        assert!(err.contains("streams.ssh.filters.f"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn a_stream_cmd_in_two_files_must_be_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "a.yml",
            "streams:\n  ssh:\n    cmd: [tail, -F, x]\n    filters: {f: {}}\n",
        );
        write(
            dir.path(),
            "b.json",
            r#"{"streams": {"ssh": {"cmd": ["tail", "-F", "x"], "filters": {"g": {}}}}}"#,
        );
        read(dir.path(), &mut Budget::new()).expect("the same cmd twice is fine");
        write(
            dir.path(),
            "c.yml",
            "streams:\n  ssh:\n    cmd: [tail, -F, y]\n",
        );
        let err = read(dir.path(), &mut Budget::new())
            .expect_err("different cmd")
            .to_string();
        assert!(err.contains("c.yml:3:5"), "{err}");
        assert!(err.contains("a.yml:3:5"), "{err}");
        assert!(err.contains("streams.ssh.cmd"), "{err}");
        assert!(err.contains("set differently"), "{err}");
    }

    #[test]
    fn a_section_that_is_not_a_map_in_a_later_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yml", "streams:\n  s: {cmd: [a]}\n");
        write(dir.path(), "b.yml", "streams: [s]\npatterns: {}\n");
        write(dir.path(), "c.yml", "patterns: 3\n");
        let err = read(dir.path(), &mut Budget::new())
            .expect_err("lists")
            .to_string();
        assert!(err.contains("b.yml:1:10: streams: expected a map"), "{err}");
        assert!(
            err.contains("c.yml:1:11: patterns: expected a map"),
            "{err}"
        );
    }

    #[test]
    fn definitions_may_be_in_every_file_and_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "a.yml",
            "definitions:\n  - &cat [cat]\nstreams:\n  s: {cmd: *cat}\n",
        );
        write(dir.path(), "b.yml", "definitions: {x: 1}\nconcurrency: 1\n");
        let root = read(dir.path(), &mut Budget::new()).expect("merges");
        assert_eq!(names(&root), ["streams", "concurrency"]);
    }

    #[test]
    fn a_pattern_defined_in_two_files_is_an_error_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yml", "patterns:\n  ip:\n    type: ip\n");
        write(dir.path(), "b.yml", "patterns:\n  ip:\n    type: ip\n");
        let err = read(dir.path(), &mut Budget::new())
            .expect_err("duplicate")
            .to_string();
        assert!(err.contains("b.yml:2:3"), "{err}");
        assert!(err.contains("a.yml:2:3"), "{err}");
        assert!(err.contains("patterns.ip"), "{err}");
    }

    #[test]
    fn start_lists_concatenate_and_scalars_may_not_repeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yml", "start: [[a]]\nconcurrency: 1\n");
        write(dir.path(), "b.yml", "start: [[b]]\n");
        let node = read(dir.path(), &mut Budget::new()).expect("merges");
        let Value::Map(entries) = node.value else {
            panic!("map")
        };
        let Value::Seq(start) = &entries[0].1.value else {
            panic!("seq")
        };
        assert_eq!(start.len(), 2);
        write(dir.path(), "c.yml", "concurrency: 2\n");
        let err = read(dir.path(), &mut Budget::new())
            .expect_err("repeat")
            .to_string();
        assert!(
            err.contains("c.yml:1:1") && err.contains("a.yml:2:1"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_extension_for_a_single_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "reaction.conf", "{}");
        let err = read(&dir.path().join("reaction.conf"), &mut Budget::new())
            .expect_err("ext")
            .to_string();
        assert!(err.contains(".jsonnet"), "{err}");
    }

    #[test]
    fn errors_across_many_files_are_cut_short_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..250 {
            write(dir.path(), &format!("c{i:03}.yml"), "concurrency: 1\n");
        }
        let errors = read(dir.path(), &mut Budget::new()).expect_err("repeats").0;
        assert_eq!(errors.len(), MAX_REPORTED + 1);
        assert!(
            errors[0].to_string().contains("c001.yml:1:1"),
            "{}",
            errors[0]
        );
        assert_eq!(
            errors[MAX_REPORTED].to_string(),
            "... and 49 more errors, not shown"
        );
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read(dir.path(), &mut Budget::new()).is_err());
    }
}
