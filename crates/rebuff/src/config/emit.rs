//! YAML output for `test-config` (and later `show`).
//!
//! Block-style YAML from a JSON value. Every string is written double-quoted
//! with JSON escapes, which YAML's double-quoted style accepts unchanged, so
//! regexes full of backslashes, `<name>` placeholders, colons or leading
//! dashes always read back as the same string; keys stay plain when they are
//! simple words, as a human would write them.

use std::fmt::Write;

use serde_json::Value;

/// Renders `value` as a YAML document ending with a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            write_scalar(&mut out, scalar);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

fn is_block(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    }
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, level: usize) {
    for (key, value) in map {
        indent(out, level);
        write_key(out, key);
        out.push(':');
        write_value_after_key(out, value, level);
    }
}

fn write_value_after_key(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, level + 1);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, level + 1);
        }
        scalar => {
            out.push(' ');
            write_scalar(out, scalar);
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], level: usize) {
    for item in items {
        indent(out, level);
        out.push('-');
        if is_block(item) {
            // Nested blocks start on their own line: simple and unambiguous.
            out.push('\n');
            match item {
                Value::Object(map) => write_map(out, map, level + 1),
                Value::Array(inner) => write_seq(out, inner, level + 1),
                _ => {}
            }
        } else {
            out.push(' ');
            write_scalar(out, item);
            out.push('\n');
        }
    }
}

fn write_scalar(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_quoted(out, s),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

fn write_quoted(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

const RESERVED: &[&str] = &[
    "true", "false", "null", "yes", "no", "on", "off", "y", "n", "~",
];

fn write_key(out: &mut String, key: &str) {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !RESERVED.contains(&key.to_ascii_lowercase().as_str());
    if plain {
        out.push_str(key);
    } else {
        write_quoted(out, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_maps_and_lists_render_as_block_yaml() {
        let doc = json!({
            "streams": {"ssh": {"cmd": ["journalctl", "-f"], "filters": {}}},
            "start": [["a", "b"]],
            "concurrency": -1,
            "state_rotation_interval": null,
        });
        let yaml = to_yaml(&doc);
        assert_eq!(
            yaml,
            "streams:\n  ssh:\n    cmd:\n      - \"journalctl\"\n      - \"-f\"\n    filters: {}\n\
             start:\n  -\n    - \"a\"\n    - \"b\"\nconcurrency: -1\nstate_rotation_interval: null\n"
        );
    }

    #[test]
    fn awkward_strings_and_keys_are_quoted() {
        let doc = json!({"on": r"^<ip> .*\d+: x", "1a": "line\nbreak"});
        let yaml = to_yaml(&doc);
        assert!(yaml.contains(r#""on": "^<ip> .*\\d+: x""#), "{yaml}");
        assert!(yaml.contains(r#""1a": "line\nbreak""#), "{yaml}");
    }

    #[test]
    fn output_parses_back_to_the_same_document() {
        let doc = json!({
            "patterns": {"ip": {"type": "ip", "ignorecidr": ["127.0.0.0/8"]}},
            "streams": {"s": {"cmd": ["tail", "-F"], "filters": {"f": {
                "regex": [r#"^<ip> - - \[.*\] "GET /\.env"#, "'single' \u{e9}\t"],
                "retry": 3, "retryperiod": "1h"}}}},
            "empty": [], "yes": true, "x": 1.5,
        });
        let yaml = to_yaml(&doc);
        let node =
            crate::config::yaml::parse_yaml(std::path::Path::new("t.yml"), &yaml).expect("parses");
        assert_eq!(crate::config::validate::to_json(&node), doc);
    }
}
