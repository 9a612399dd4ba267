//! `test-config`, `test-regex` and `-V`, as users and
//! reaction-metrics-exporter call them.

use super::{fixture, rebuff, stderr, stdout, write_config};

const VALID: [&str; 4] = [
    "valid/example.yml",
    "valid/example.jsonnet",
    "valid/simple.json",
    "valid/dir",
];

#[test]
fn real_world_configurations_pass_test_config_unchanged_in_every_format() {
    for name in VALID {
        let output = rebuff()
            .args(["test-config", "-c"])
            .arg(fixture(name))
            .output()
            .expect("runs");
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        assert!(!output.stdout.is_empty(), "{name} printed nothing");
    }
}

/// Parses `test-config` output with the same YAML reader rebuff uses for
/// configurations, as the exporter would with its own.
fn printed_config(name: &str, format: &str) -> serde_json::Value {
    let output = rebuff()
        .args(["test-config", "-f", format, "-c"])
        .arg(fixture(name))
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    if format == "json" {
        return serde_json::from_str(&text).expect("test-config -f json prints JSON");
    }
    let node = rebuff::config::yaml::parse_yaml(std::path::Path::new("out.yml"), &text)
        .expect("test-config prints YAML");
    rebuff::config::validate::to_json(&node)
}

#[test]
fn test_config_keeps_pattern_placeholders_in_filter_regexes() {
    for name in VALID {
        let doc = printed_config(name, "yaml");
        let streams = doc["streams"].as_object().expect("streams map");
        let mut placeholders = 0;
        for stream in streams.values() {
            for filter in stream["filters"].as_object().expect("filters map").values() {
                for regex in filter["regex"].as_array().expect("regex list") {
                    placeholders += regex.as_str().expect("string").matches('<').count();
                }
            }
        }
        assert!(
            placeholders > 0,
            "{name}: no <pattern> left in the printed regexes"
        );
    }
}

#[test]
fn test_config_yaml_and_json_print_the_same_merged_document() {
    for name in VALID {
        assert_eq!(
            printed_config(name, "yaml"),
            printed_config(name, "json"),
            "{name}"
        );
    }
}

#[test]
fn a_directory_config_merges_files_and_skips_hidden_underscored_and_foreign_ones() {
    let doc = printed_config("valid/dir", "json");
    let streams: Vec<&String> = doc["streams"].as_object().expect("map").keys().collect();
    assert!(streams.len() >= 2, "{streams:?}");
    // start commands from several files are concatenated in file order.
    assert!(doc["start"].as_array().is_some_and(|s| !s.is_empty()));
}

#[test]
fn test_regex_prints_the_values_of_a_matching_line() {
    let output = rebuff()
        .args(["test-regex", "-c"])
        .arg(fixture("valid/example.yml"))
        .args([
            "Failed password for .* from <ip> port",
            "sshd[1]: Failed password for root from ::ffff:192.0.2.4 port 22",
        ])
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "match ip=192.0.2.4\n");
}

#[test]
fn test_regex_exits_non_zero_when_the_line_does_not_match() {
    let output = rebuff()
        .args(["test-regex", "-c"])
        .arg(fixture("valid/example.yml"))
        .args(["from <ip> port", "nothing here"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "no match\n");
}

#[test]
fn test_regex_reads_stdin_and_prints_each_match() {
    let output = rebuff()
        .args(["test-regex", "-c"])
        .arg(fixture("valid/example.yml"))
        .arg("from <ip> port")
        .write_stdin("a from 192.0.2.1 port 1\nno\nb from 2001:db8::1 port 2\n")
        .output()
        .expect("runs");
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(
        text.contains("ip=192.0.2.1") && text.contains("ip=2001:db8::/64"),
        "{text}"
    );
    assert!(!text.contains("\nno\n"), "{text}");
}

#[test]
fn test_regex_with_an_unknown_pattern_fails_clearly() {
    let output = rebuff()
        .args(["test-regex", "-c"])
        .arg(fixture("valid/simple.json"))
        .args(["from <nope>", "x"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("<nope>"), "{}", stderr(&output));
}

#[test]
fn test_regex_says_why_a_regex_is_invalid_in_the_regex_as_typed() {
    let output = rebuff()
        .args(["test-regex", "-c"])
        .arg(fixture("valid/example.yml"))
        .args(["from <ip> (port", "x"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert_eq!(
        err,
        "ERROR invalid regex: unclosed group\n    from <ip> (port\n              ^\n"
    );
}

#[test]
fn test_regex_lists_the_patterns_when_a_placeholder_names_none() {
    let output = rebuff()
        .args(["test-regex", "-c"])
        .arg(fixture("valid/example.yml"))
        .args(["from <nope>", "x"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("<nope> names no pattern of the configuration (its patterns: "),
        "{err}"
    );
    assert!(err.contains("ip"), "{err}");
}

#[test]
fn version_prints_name_and_version() {
    let output = rebuff().arg("-V").output().expect("runs");
    assert_eq!(
        stdout(&output),
        format!("rebuff {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn invoked_as_reaction_it_answers_as_reaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("reaction");
    std::os::unix::fs::symlink(assert_cmd::cargo::cargo_bin("rebuff"), &link).expect("symlink");
    let output = std::process::Command::new(&link)
        .arg("-V")
        .output()
        .expect("runs");
    let text = stdout(&output);
    // reaction-metrics-exporter takes the second word as the version.
    assert_eq!(
        text.split(' ').nth(1).map(str::trim),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(text.starts_with("reaction "), "{text}");
}

#[test]
fn a_warning_is_printed_for_a_regex_an_ip_type_overrides() {
    let config = write_config(
        "c.yml",
        "patterns:\n  ip:\n    type: ip\n    regex: '[0-9.]+'\nstreams:\n  s:\n    cmd: ['cat']\n    filters:\n      f:\n        regex: ['<ip>']\n",
    );
    let output = rebuff()
        .args(["test-config", "-c"])
        .arg(&config.path)
        .output()
        .expect("runs");
    assert!(output.status.success());
    assert!(stderr(&output).contains("WARN"), "{}", stderr(&output));
}
