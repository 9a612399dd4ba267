//! Finding, parsing and merging configuration files.
//!
//! `-c` names one file or a directory. In a directory, files are read in
//! byte-wise name order; names starting with `.` or `_` are skipped (they are
//! typically JSONnet libraries imported by the others), so are names without
//! a supported extension and subdirectories. The files' top-level maps are
//! merged: `patterns`, `streams` and `plugins` entries are pooled, a name
//! defined twice is an error naming both places; `start` and `stop` lists are
//! concatenated in file order; any other key set in two files is an error.

use std::path::{Path, PathBuf};

use super::tree::{Key, Loc, Node, ParseError, Value, shared_path};
use super::{ConfigError, ConfigErrors, json, jsonnet, yaml};

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

/// Reads `path` (a file or a directory) into one merged tree.
pub fn read(path: &Path) -> Result<Node, ConfigErrors> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ParseError::in_file(path, format!("cannot read the configuration: {e}")))?;
    if meta.is_dir() {
        return read_dir(path);
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
    Ok(parse_file(path, format, root)?)
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

fn read_dir(dir: &Path) -> Result<Node, ConfigErrors> {
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
        match parse_file(path, *format, dir) {
            Ok(node) => merger.add(node, &mut errors),
            Err(e) => errors.push(ConfigErrors::from(e).0.remove(0)),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let first = Loc::file_only(shared_path(&files[0].0));
    Ok(merger.finish(first))
}

fn parse_file(path: &Path, format: Format, root: &Path) -> Result<Node, ParseError> {
    if format == Format::Jsonnet {
        return jsonnet::eval_jsonnet(path, root);
    }
    let bytes = std::fs::read(path)
        .map_err(|e| ParseError::in_file(path, format!("cannot read the file: {e}")))?;
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
        Format::Yaml => yaml::parse_yaml(path, &text),
        Format::Json => json::parse_json(path, &text),
        Format::Jsonnet => unreachable!("handled above"),
    }
}

/// Keys whose entries are pooled across files.
const POOLED: [&str; 3] = ["patterns", "streams", "plugins"];
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
            let existing = self.entries.iter_mut().find(|(k, _)| k.name == key.name);
            let Some((existing_key, existing_node)) = existing else {
                self.entries.push((key, node));
                continue;
            };
            let name = key.name.as_str();
            if POOLED.contains(&name) {
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
    let (Value::Map(items), Value::Map(more)) = (&mut into.value, node.value) else {
        // Validation reports a non-map section; nothing sensible to merge.
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

    #[test]
    fn a_stream_defined_in_two_files_is_an_error_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yml", "streams:\n  ssh:\n    cmd: [a]\n");
        write(dir.path(), "b.yml", "streams:\n  ssh:\n    cmd: [b]\n");
        let err = read(dir.path()).expect_err("duplicate").to_string();
        assert!(err.contains("b.yml:2:3"), "{err}");
        assert!(err.contains("a.yml:2:3"), "{err}");
        assert!(err.contains("streams.ssh"), "{err}");
    }

    #[test]
    fn start_lists_concatenate_and_scalars_may_not_repeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yml", "start: [[a]]\nconcurrency: 1\n");
        write(dir.path(), "b.yml", "start: [[b]]\n");
        let node = read(dir.path()).expect("merges");
        let Value::Map(entries) = node.value else {
            panic!("map")
        };
        let Value::Seq(start) = &entries[0].1.value else {
            panic!("seq")
        };
        assert_eq!(start.len(), 2);
        write(dir.path(), "c.yml", "concurrency: 2\n");
        let err = read(dir.path()).expect_err("repeat").to_string();
        assert!(
            err.contains("c.yml:1:1") && err.contains("a.yml:2:1"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_extension_for_a_single_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "reaction.conf", "{}");
        let err = read(&dir.path().join("reaction.conf"))
            .expect_err("ext")
            .to_string();
        assert!(err.contains(".jsonnet"), "{err}");
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read(dir.path()).is_err());
    }
}
