//! Every invalid configuration the reference describes is rejected before
//! anything starts, with exit code 1 and a message naming the file, line,
//! column, key path, what was found and what is accepted.

use super::{fixture, rebuff, stderr, stdout, test_config, write_config};

/// A valid stream around `filter_body` (indented for `streams.s.filters.f`).
fn with_filter(patterns: &str, filter_body: &str) -> String {
    format!(
        "patterns:\n{patterns}streams:\n  s:\n    cmd: ['cat']\n    filters:\n      f:\n{filter_body}"
    )
}

const IP: &str = "  ip:\n    type: ip\n";

/// Runs `test-config` on `text` and checks the error mentions each piece.
fn assert_rejected(file: &str, text: &str, expected: &[&str]) {
    let config = write_config(file, text);
    let output = test_config(&config.path);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert!(output.stdout.is_empty(), "nothing printed on stdout");
    for piece in expected {
        assert!(err.contains(piece), "expected {piece:?} in:\n{err}");
    }
}

#[test]
fn retry_without_retryperiod_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(IP, "        regex: ['from <ip>']\n        retry: 3\n"),
        &[
            "c.yml:10:9:",
            "streams.s.filters.f.retry",
            "must come with retryperiod",
        ],
    );
}

#[test]
fn retryperiod_without_retry_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['from <ip>']\n        retryperiod: 1h\n",
        ),
        &[
            "c.yml:10:9:",
            "streams.s.filters.f.retryperiod",
            "must come with retry",
        ],
    );
}

#[test]
fn retry_of_one_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['from <ip>']\n        retry: 1\n        retryperiod: 1h\n",
        ),
        &[
            "c.yml:10:16",
            "streams.s.filters.f.retry",
            "greater than 1, found 1",
        ],
    );
}

#[test]
fn regexes_with_different_patterns_are_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            "  ip:\n    type: ip\n  user:\n    regex: '\\w+'\n",
            "        regex:\n          - 'from <ip>'\n          - 'user <user>'\n",
        ),
        &[
            "c.yml:13:13",
            "streams.s.filters.f.regex[1]",
            "same patterns",
            "<user>",
            "<ip>",
        ],
    );
}

#[test]
fn an_unknown_placeholder_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(IP, "        regex: ['from <ipp>']\n"),
        &[
            "c.yml:9:17",
            "streams.s.filters.f.regex[0]",
            "<ipp> names no pattern",
            "ip",
        ],
    );
}

#[test]
fn onexit_without_after_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['from <ip>']\n        actions:\n          a:\n            cmd: ['true']\n            onexit: true\n",
        ),
        &["c.yml:13:13", "actions.a.onexit", "set 'after'"],
    );
}

#[test]
fn ipv4only_and_ipv6only_together_are_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['from <ip>']\n        actions:\n          a:\n            cmd: ['true']\n            ipv4only: true\n            ipv6only: true\n",
        ),
        &["c.yml:14:13", "actions.a.ipv6only", "exclude each other"],
    );
}

#[test]
fn ipv4only_without_an_ip_pattern_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            "  user:\n    regex: '\\w+'\n",
            "        regex: ['user <user>']\n        actions:\n          a:\n            cmd: ['true']\n            ipv4only: true\n",
        ),
        &[
            "c.yml:13:13",
            "actions.a.ipv4only",
            "needs a pattern of type ip",
        ],
    );
}

#[test]
fn a_mask_on_a_regex_pattern_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            "  user:\n    regex: '\\w+'\n    ipv4mask: 24\n",
            "        regex: ['<user>']\n",
        ),
        // At the key: the key is what is wrong here, not its value.
        &[
            "c.yml:4:5:",
            "patterns.user.ipv4mask",
            "only allowed on patterns of type ip or ipv4",
        ],
    );
}

#[test]
fn an_ipv6mask_on_an_ipv4_pattern_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            "  ip:\n    type: ipv4\n    ipv6mask: 64\n",
            "        regex: ['<ip>']\n",
        ),
        &["c.yml:4:5:", "patterns.ip.ipv6mask", "not on type ipv4"],
    );
}

#[test]
fn a_mask_out_of_range_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            "  ip:\n    type: ip\n    ipv6mask: 129\n",
            "        regex: ['<ip>']\n",
        ),
        &[
            "c.yml:4:15",
            "patterns.ip.ipv6mask",
            "between 0 and 128, found 129",
        ],
    );
}

#[test]
fn ignorecidr_on_a_regex_pattern_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            "  user:\n    regex: '\\w+'\n    ignorecidr: ['10.0.0.0/8']\n",
            "        regex: ['<user>']\n",
        ),
        &[
            "c.yml:4:5:",
            "patterns.user.ignorecidr",
            "type ip, ipv4 or ipv6",
        ],
    );
}

#[test]
fn a_malformed_cidr_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            "  ip:\n    type: ip\n    ignorecidr: ['10.0.0.0/33']\n",
            "        regex: ['<ip>']\n",
        ),
        &["c.yml:4:18", "patterns.ip.ignorecidr[0]", "CIDR notation"],
    );
}

#[test]
fn a_duration_without_unit_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['<ip>']\n        retry: 2\n        retryperiod: '10'\n",
        ),
        &["c.yml:11:22", "retryperiod", "has no unit", "ms, s/sec"],
    );
}

#[test]
fn a_duration_with_an_unknown_unit_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['<ip>']\n        actions:\n          a:\n            cmd: ['true']\n            after: 2 weeks\n",
        ),
        &[
            "c.yml:13:20",
            "actions.a.after",
            "unit 'weeks'",
            "d/day/days",
        ],
    );
}

#[test]
fn a_fractional_duration_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['<ip>']\n        retry: 2\n        retryperiod: 1.5h\n",
        ),
        &["retryperiod", "1.5h"],
    );
}

#[test]
fn a_rotation_interval_under_30_minutes_is_rejected() {
    assert_rejected(
        "c.yml",
        &format!(
            "state_rotation_interval: 10m\n{}",
            with_filter(IP, "        regex: ['<ip>']\n")
        ),
        &["c.yml:1:26", "state_rotation_interval", "minimum is 30m"],
    );
}

#[test]
fn an_unknown_key_suggests_the_closest_one() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['<ip>']\n        retryperiode: 1h\n        retry: 2\n",
        ),
        &[
            "c.yml:10:9",
            "streams.s.filters.f.retryperiode",
            "did you mean 'retryperiod'",
        ],
    );
}

#[test]
fn an_unknown_pattern_type_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter("  ip:\n    type: ipv5\n", "        regex: ['<ip>']\n"),
        &[
            "c.yml:3:11",
            "patterns.ip.type",
            "accepted: regex, ip, ipv4, ipv6",
        ],
    );
}

#[test]
fn an_unknown_duplicate_policy_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(IP, "        regex: ['<ip>']\n        duplicates: keep\n"),
        &[
            "c.yml:10:21",
            "streams.s.filters.f.duplicates",
            "accepted: extend, rerun, ignore",
        ],
    );
}

#[test]
fn duplicate_and_duplicates_together_are_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['<ip>']\n        duplicate: extend\n        duplicates: ignore\n",
        ),
        &["c.yml:11:9:", "streams.s.filters.f.duplicates", "keep one"],
    );
}

#[test]
fn a_plugin_stream_type_is_rejected() {
    assert_rejected(
        "c.yml",
        "streams:\n  s:\n    type: cluster\n    filters:\n      f:\n        regex: ['x']\n",
        &[
            "c.yml:3:11",
            "streams.s.type",
            "reaction plugin",
            "accepted: cmd, virtual",
        ],
    );
}

#[test]
fn a_set_action_with_a_bad_option_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['<ip>']\n        actions:\n          a:\n            type: ipset\n            options: {set: bans, action: remove}\n",
        ),
        &[
            "c.yml:13:",
            "actions.a.options.action",
            "unknown set action 'remove' (accepted: add, del)",
        ],
    );
}

#[test]
fn a_plugin_rebuff_does_not_build_in_is_rejected() {
    assert_rejected(
        "c.yml",
        &format!(
            "plugins:\n  cluster:\n    path: /usr/lib/reaction/cluster\n{}",
            with_filter(IP, "        regex: ['<ip>']\n")
        ),
        &[
            "c.yml:2:3:",
            "plugins.cluster",
            "does not run reaction plugins",
        ],
    );
}

#[test]
fn a_virtual_action_to_a_stream_that_is_not_virtual_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['<ip>']\n        actions:\n          a:\n            type: virtual\n            options: {send: 'ban <ip>', to: s}\n",
        ),
        &[
            "c.yml:13:45",
            "streams.s.filters.f.actions.a.options.to",
            "stream 's' is not of type virtual",
        ],
    );
}

#[test]
fn a_pattern_without_regex_or_type_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            "  user:\n    ignore: [root]\n",
            "        regex: ['<user>']\n",
        ),
        &["c.yml:2:3:", "patterns.user", "needs a 'regex'"],
    );
}

#[test]
fn an_invalid_regex_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(IP, "        regex: ['from (<ip>']\n"),
        &[
            "c.yml:9:17",
            "streams.s.filters.f.regex[0]",
            "invalid regex",
        ],
    );
}

#[test]
fn an_invalid_ignoreregex_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            "  user:\n    regex: '\\w+'\n    ignoreregex: ['a(']\n",
            "        regex: ['<user>']\n",
        ),
        &[
            "c.yml:4:19",
            "patterns.user.ignoreregex[0]",
            "invalid regex",
        ],
    );
}

#[test]
fn an_empty_command_is_rejected() {
    assert_rejected(
        "c.yml",
        "streams:\n  s:\n    cmd: []\n    filters:\n      f:\n        regex: ['x']\n",
        &["c.yml:3:10", "streams.s.cmd", "at least the program"],
    );
}

#[test]
fn a_configuration_without_streams_is_rejected() {
    assert_rejected(
        "c.yml",
        "patterns:\n  ip:\n    type: ip\n",
        &["streams", "at least one stream"],
    );
}

#[test]
fn an_action_using_a_pattern_its_filter_does_not_capture_is_rejected() {
    assert_rejected(
        "c.yml",
        &with_filter(
            "  ip:\n    type: ip\n  user:\n    regex: '\\w+'\n",
            "        regex: ['from <ip>']\n        actions:\n          a:\n            cmd: ['echo', '<user>']\n",
        ),
        &[
            "c.yml:14:27",
            "actions.a.cmd[1]",
            "<user> is not captured",
            "<ip>",
        ],
    );
}

#[test]
fn a_yaml_syntax_error_names_its_position() {
    assert_rejected("c.yml", "streams:\n  s: [\n", &["c.yml:3:"]);
}

#[test]
fn a_json_error_names_its_position_and_expectation() {
    assert_rejected(
        "c.json",
        "{\"streams\": {\"s\": {\"cmd\": [\"a\",]}}}",
        &["c.json:1:", "expected"],
    );
}

#[test]
fn a_wrong_type_names_what_was_found() {
    assert_rejected(
        "c.json",
        "{\"streams\": {\"s\": {\"cmd\": \"cat\", \"filters\": {\"f\": {\"regex\": [\"x\"]}}}}}",
        &[
            "c.json:1:27",
            "streams.s.cmd",
            "expected a list of strings, found a string",
        ],
    );
}

#[test]
fn a_jsonnet_error_names_the_file() {
    assert_rejected(
        "c.jsonnet",
        "{ streams: { s: error 'boom' } }",
        &["c.jsonnet:1:", "boom"],
    );
}

#[test]
fn a_jsonnet_import_outside_the_configuration_directory_is_rejected() {
    assert_rejected(
        "c.jsonnet",
        "local x = import '../outside.libsonnet'; x",
        &["c.jsonnet:1:", "outside"],
    );
}

/// Loads a directory of `a.yml` (a valid config) and `other`, and returns
/// the errors, which must make the load fail.
fn directory_errors(other_name: &str, other_text: &str) -> String {
    let config = write_config("a.yml", &with_filter(IP, "        regex: ['<ip>']\n"));
    std::fs::write(config.dir.path().join(other_name), other_text).expect("write");
    let output = test_config(config.dir.path());
    assert_eq!(output.status.code(), Some(1));
    stderr(&output)
}

#[test]
fn a_pattern_defined_in_two_files_names_both() {
    let err = directory_errors("b.json", "{\"patterns\": {\"ip\": {\"type\": \"ipv4\"}}}");
    assert!(
        err.contains("b.json:1:15") && err.contains("a.yml:2:3"),
        "{err}"
    );
    assert!(err.contains("patterns.ip"), "{err}");
}

#[test]
fn several_errors_are_all_reported_at_once() {
    let config = write_config(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['<ip>']\n        retry: 1\n        retryperiod: 1h\n        duplicate: nope\n",
        ),
    );
    let output = test_config(&config.path);
    let err = stderr(&output);
    assert!(err.contains("retry") && err.contains("duplicate"), "{err}");
    assert!(err.contains("2 errors"), "{err}");
}

/// `test-config`'s stderr for `text`, which must be rejected.
fn rejection(file: &str, text: &str) -> String {
    let config = write_config(file, text);
    let output = test_config(&config.path);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    stderr(&output)
}

/// The error lines (a message may go on over indented lines), without the
/// closing summary.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("ERROR ") && !l.starts_with("ERROR invalid configuration"))
        .collect()
}

#[test]
fn an_invalid_pattern_is_reported_once_not_again_by_each_filter_and_action_using_it() {
    let err = rejection(
        "c.yml",
        r"patterns:
  addr:
    regex: '[0-9+'
  user:
    regex: '\w+'
streams:
  ssh:
    cmd: ['cat']
    filters:
      one:
        regex: ['fail from <addr>', 'bad <user> from <addr>']
        actions:
          ban: {cmd: ['echo', '<addr>']}
          tell: {cmd: ['echo', '<user>']}
  web:
    cmd: ['cat']
    filters:
      two:
        regex: ['GET from <addr>']
        actions:
          ban: {cmd: ['echo', '<addr>']}
",
    );
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0]
            .ends_with("c.yml:3:12: patterns.addr.regex: invalid regex: unclosed character class"),
        "{err}"
    );
    assert!(err.contains("1 error"), "{err}");
}

#[test]
fn an_invalid_filter_regex_does_not_blame_its_actions() {
    let err = rejection(
        "c.yml",
        &with_filter(
            "  ip:\n    type: ip\n  user:\n    regex: '\\w+'\n",
            "        regex: ['from ( <ip> as <user>']\n        actions:\n          ban:\n            cmd: ['echo', '<ip>', '<user>']\n",
        ),
    );
    assert_eq!(error_lines(&err).len(), 1, "{err}");
    assert!(!err.contains("not captured"), "{err}");
    let err = rejection(
        "c.yml",
        &with_filter(
            "  user:\n    regex: '\\w+'\n",
            "        regex: ['from <ipp> as <user>']\n        actions:\n          ban:\n            cmd: ['echo', '<user>']\n",
        ),
    );
    assert_eq!(error_lines(&err).len(), 1, "{err}");
    assert!(err.contains("<ipp> names no pattern"), "{err}");
}

#[test]
fn an_unknown_pattern_type_is_one_error() {
    let err = rejection(
        "c.yml",
        &with_filter("  ip:\n    type: ipx\n", "        regex: ['<ip>']\n"),
    );
    assert_eq!(error_lines(&err).len(), 1, "{err}");
    assert!(err.contains("unknown pattern type 'ipx'"), "{err}");
}

#[test]
fn a_regex_error_quotes_the_regex_as_written_with_a_caret_under_the_fault() {
    let err = rejection(
        "c.yml",
        &with_filter(IP, "        regex: ['from ( <ip> port']\n"),
    );
    assert!(
        err.contains(
            "c.yml:9:17: streams.s.filters.f.regex[0]: invalid regex: unclosed group\n    from ( <ip> port\n         ^\n"
        ),
        "{err}"
    );
    // Nothing of the expansion of <ip> leaks.
    assert!(
        !err.contains("rebuff_") && !err.contains("0-9a-fA-F"),
        "{err}"
    );

    // After a placeholder, the caret still lands in the text as written.
    let err = rejection(
        "c.yml",
        &with_filter(IP, "        regex: ['from <ip> [port']\n"),
    );
    assert!(
        err.contains("unclosed character class\n    from <ip> [port\n              ^\n"),
        "{err}"
    );
}

#[test]
fn a_regex_error_inside_a_placeholder_points_at_the_placeholder() {
    // The pattern's regex names a group, so using it twice repeats the name.
    let err = rejection(
        "c.yml",
        &with_filter(
            "  user:\n    regex: '(?P<u>\\w+)'\n",
            "        regex: ['<user> then <user>']\n",
        ),
    );
    assert!(
        err.contains(
            "duplicate capture group name\n    <user> then <user>\n                ^^^^^^\n"
        ),
        "{err}"
    );
}

#[test]
fn a_pattern_regex_error_has_the_reason_and_a_caret() {
    let err = rejection(
        "c.yml",
        &with_filter(
            "  user:\n    regex: 'a{2,1}'\n",
            "        regex: ['<user>']\n",
        ),
    );
    assert!(
        err.contains("patterns.user.regex: invalid regex: invalid repetition count range, the start must be <= the end\n    a{2,1}\n     ^^^^^\n"),
        "{err}"
    );
}

#[test]
fn a_key_written_twice_is_named_by_its_key_path_in_yaml_and_json() {
    let err = rejection(
        "c.yml",
        &with_filter(
            IP,
            "        regex: ['<ip>']\n        retry: 2\n        retry: 3\n",
        ),
    );
    assert!(
        err.contains("c.yml:11:9: streams.s.filters.f.retry: the key \"retry\" is written twice"),
        "{err}"
    );
    let err = rejection(
        "c.json",
        "{\"streams\": {\"s\": {\"cmd\": [\"cat\"],\n  \"cmd\": [\"true\"]}}}",
    );
    assert!(
        err.contains("c.json:2:3: streams.s.cmd: the key \"cmd\" is written twice"),
        "{err}"
    );
}

#[test]
fn a_missing_key_is_reported_at_the_key_of_what_lacks_it() {
    let err = rejection(
        "c.yml",
        "streams:\n  s:\n    filters:\n      f:\n        retry: 2\n        retryperiod: 1m\n        actions:\n          ban:\n            after: 1m\n",
    );
    for expected in [
        "c.yml:2:3: streams.s: a stream needs a 'cmd'",
        "c.yml:4:7: streams.s.filters.f: a filter needs a 'regex' list",
        "c.yml:8:11: streams.s.filters.f.actions.ban: an action needs a 'cmd'",
    ] {
        assert!(err.contains(expected), "{expected:?} in:\n{err}");
    }
}

#[test]
fn a_patterns_section_that_is_not_a_map_is_one_error() {
    let err = rejection(
        "c.yml",
        "patterns:\n  - ip\nstreams:\n  s:\n    cmd: ['cat']\n    filters:\n      f:\n        regex: ['from <ip>']\n        actions:\n          ban: {cmd: ['echo', '<ip>']}\n",
    );
    assert_eq!(error_lines(&err).len(), 1, "{err}");
    assert!(err.contains("patterns: expected a map"), "{err}");
}

#[test]
fn a_json_error_about_a_key_points_at_the_key_not_its_value() {
    let err = rejection(
        "c.json",
        r#"{"patterns": {"ip": {"type": "ip", "ipv4mask": 24}, "user": {"regex": "\\w+", "ipv4mask": 24}},
 "streams": {"s": {"cmd": ["cat"], "filters": {"f": {"regex": ["<ip>"], "retry": 2,
  "actions": {"ban": {"cmd": ["true"]}}}}}}}
"#,
    );
    for expected in [
        "c.json:1:79: patterns.user.ipv4mask: ipv4mask is only allowed",
        "c.json:2:73: streams.s.filters.f.retry: retry must come with retryperiod",
    ] {
        assert!(err.contains(expected), "{expected:?} in:\n{err}");
    }
}

#[test]
fn the_same_filter_of_a_stream_in_two_files_names_both() {
    let err = directory_errors(
        "b.yml",
        "streams:\n  s:\n    cmd: ['cat']\n    filters:\n      f:\n        regex: ['x']\n",
    );
    assert!(
        err.contains("b.yml:5:7") && err.contains("a.yml:8:7"),
        "{err}"
    );
    assert!(err.contains("streams.s.filters.f"), "{err}");
    assert!(err.contains("1 error"), "{err}");
}

#[test]
fn a_stream_cmd_given_differently_in_two_files_names_both() {
    let err = directory_errors(
        "b.yml",
        "streams:\n  s:\n    cmd: ['tail', '-F', 'x']\n    filters:\n      g:\n        regex: ['<ip>']\n",
    );
    assert!(
        err.contains("b.yml:3:5") && err.contains("a.yml:6:5"),
        "{err}"
    );
    assert!(err.contains("streams.s.cmd"), "{err}");
    assert!(err.contains("set differently"), "{err}");
}

#[test]
fn a_split_stream_without_cmd_in_any_file_is_rejected() {
    let config = write_config(
        "a.yml",
        "patterns:\n  ip:\n    type: ip\nstreams:\n  s:\n    filters:\n      f:\n        regex: ['<ip>']\n",
    );
    std::fs::write(
        config.dir.path().join("b.yml"),
        "streams:\n  s:\n    filters:\n      g:\n        regex: ['<ip>']\n",
    )
    .expect("write");
    let output = test_config(config.dir.path());
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("a.yml:5:3"), "{err}");
    assert!(err.contains("streams.s: a stream needs a 'cmd'"), "{err}");
}

#[test]
fn reaction_example_style_definitions_load_unchanged() {
    let output = rebuff()
        .args(["test-config", "-f", "json", "-c"])
        .arg(fixture("valid/definitions.yml"))
        .output()
        .expect("runs");
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(err.is_empty(), "no warnings expected: {err}");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("json");
    assert!(
        doc.get("definitions").is_none(),
        "definitions are not printed"
    );
    let portscan = &doc["streams"]["kernel"]["filters"]["portscan"];
    assert_eq!(portscan["retry"], 4, "{portscan}");
    assert_eq!(portscan["actions"]["unban"]["after"], "2d", "{portscan}");
    assert_eq!(
        doc["streams"]["ssh"]["filters"]["failedlogin"]["actions"]["ban"]["cmd"][5],
        "<ip>"
    );
}

#[test]
fn an_unknown_top_level_key_beside_definitions_is_still_rejected() {
    assert_rejected(
        "c.yml",
        &format!(
            "definitions: [&c ['cat']]\ndefinition: 1\n{}",
            with_filter(IP, "        regex: ['<ip>']\n")
        ),
        &["c.yml:2:1", "definition", "did you mean 'definitions'"],
    );
}

#[test]
fn a_stream_split_across_files_loads_with_its_filters_in_file_order() {
    let output = rebuff()
        .args(["test-config", "-f", "json", "-c"])
        .arg(fixture("valid/split"))
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("json");
    assert!(doc.get("definitions").is_none(), "{doc}");
    let sshd = doc["streams"]["sshd"]
        .as_object()
        .expect("one merged stream");
    assert_eq!(sshd["cmd"][3], "ssh.service");
    let filters: Vec<&String> = sshd["filters"].as_object().expect("map").keys().collect();
    assert_eq!(filters, ["failedlogin", "preauth", "kex", "rootlogin"]);
}

#[test]
fn test_config_warns_about_regexes_that_cannot_match_but_accepts_them() {
    let config = write_config(
        "c.yml",
        &with_filter(
            IP,
            "        regex:\n          - 'from \\<<ip>\\>'\n          - 'by <ip>$ port'\n",
        ),
    );
    let output = test_config(&config.path);
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(!output.stdout.is_empty());
    assert!(
        err.contains("WARN") && err.contains("c.yml:10:13: streams.s.filters.f.regex[0]"),
        "{err}"
    );
    assert!(err.contains("start-of-word"), "{err}");
    assert!(
        err.contains("c.yml:11:13: streams.s.filters.f.regex[1]")
            && err.contains("can never match"),
        "{err}"
    );
}

// Hostile configurations: whatever a file holds, `test-config` answers soon,
// within bounded memory, with an error naming the file and exit code 1.

#[test]
fn a_long_yaml_string_aliased_100_by_100_times_is_refused_by_its_bytes() {
    let text = format!(
        "a: &a \"{}\"\nb: &b [{}]\nc: [{}]\n",
        "x".repeat(1 << 20),
        vec!["*a"; 100].join(", "),
        vec!["*b"; 100].join(", ")
    );
    assert_rejected(
        "c.yml",
        &text,
        &["c.yml:2:", "more than 128 MiB", "aliases are expanded"],
    );
}

#[test]
fn a_19_mb_file_of_plain_keys_is_too_large_not_an_alias_bomb() {
    let mut text = String::with_capacity(19_100_000);
    let mut i = 0;
    while text.len() < 19_000_000 {
        text.push_str(&format!("key{i:07}: value\n"));
        i += 1;
    }
    let config = write_config("c.yml", &text);
    let output = test_config(&config.path);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("c.yml: the configuration is too large"),
        "{err}"
    );
    assert!(err.contains("16 MiB"), "{err}");
    assert!(!err.contains("alias"), "{err}");
}

#[test]
fn a_configuration_file_that_is_a_device_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yml");
    std::os::unix::fs::symlink("/dev/zero", &path).expect("symlink");
    let output = test_config(&path);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("c.yml: cannot read the file: it is not a regular file"),
        "{err}"
    );
}

/// Runs `test-config` on a JSONnet file and returns its stderr, after
/// checking the exit code and that it names the file.
fn jsonnet_refusal(text: &str) -> String {
    let config = write_config("c.jsonnet", text);
    let output = test_config(&config.path);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(output.stdout.is_empty());
    assert!(err.contains("c.jsonnet"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

const OUT_OF_MEMORY: &str = "needed more than 512 MiB of memory";

const OUT_OF_TIME: &str = "did not finish within 10 s";

#[test]
fn a_jsonnet_range_of_200_million_is_stopped_by_the_memory_limit() {
    let err = jsonnet_refusal("{ streams: { n: std.length(std.range(0, 2e8)) } }");
    assert!(err.contains(OUT_OF_MEMORY), "{err}");
}

#[test]
fn a_jsonnet_string_doubled_40_times_is_stopped_by_the_memory_limit() {
    let err = jsonnet_refusal(
        "local grow(s, n) = if n == 0 then s else grow(s + s, n - 1);\n\
         { streams: { s: { cmd: [grow('x', 40)] } } }",
    );
    assert!(err.contains(OUT_OF_MEMORY), "{err}");
}

#[test]
fn a_jsonnet_string_grown_in_a_loop_is_stopped() {
    let err = jsonnet_refusal(
        "{ streams: { s: { cmd: [std.foldl(function(acc, i) acc + 'xxxxxxxxxx', \
         std.range(1, 1e6), '')] } } }",
    );
    assert!(
        err.contains(OUT_OF_MEMORY) || err.contains(OUT_OF_TIME),
        "{err}"
    );
}

#[test]
fn a_jsonnet_object_doubled_30_levels_is_stopped() {
    let err = jsonnet_refusal(
        "local grow(o, n) = if n == 0 then o else grow({ a: o, b: o }, n - 1);\n\
         { streams: grow({ leaf: 'x' }, 30) }",
    );
    assert!(
        err.contains(OUT_OF_TIME) || err.contains("too large"),
        "{err}"
    );
}

#[test]
fn a_jsonnet_loop_that_never_ends_is_stopped_by_the_time_limit() {
    let err = jsonnet_refusal(
        "local spin(n, acc) = if n == 0 then acc else spin(n - 1, acc + 1) tailstrict;\n\
         { streams: spin(1e12, 0) }",
    );
    assert!(err.contains(OUT_OF_TIME), "{err}");
}

#[test]
fn deep_jsonnet_recursion_is_stopped_at_its_call() {
    let err = jsonnet_refusal(
        "local down(n) = if n == 0 then 0 else 1 + down(n - 1);\n{ depth: down(1e6) }",
    );
    assert!(err.contains("c.jsonnet:1:"), "{err}");
    assert!(err.contains("deeper than 500 calls"), "{err}");
}
