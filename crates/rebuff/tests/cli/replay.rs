//! `rebuff replay`: ground truth on real-looking logs, bad input contained
//! and counted, both output formats.

use std::io::Write;

use serde_json::Value;

use super::{fixture, rebuff, stderr, stdout, write_config};

fn replay_json(config: &std::path::Path, args: &[&str], files: &[&std::path::Path]) -> Value {
    let output = rebuff()
        .args(["replay", "--format", "json", "-c"])
        .arg(config)
        .args(args)
        .args(files)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).expect("one JSON object")
}

fn check_expected(log: &str, expected: &str) {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(expected)).expect("read"))
            .expect("json");
    let got = replay_json(&fixture("valid/example.yml"), &[], &[&fixture(log)]);
    let (g, e) = (&got["summary"], &expected["summary"]);
    assert_eq!(g["lines"], e["lines"]);
    assert_eq!(g["matches"], e["matches"]);
    assert_eq!(g["triggers"], e["triggers"]);
    for (name, want) in e["filters"].as_object().expect("filters") {
        assert_eq!(
            g["filters"][name]["matches"], want["matches"],
            "{name} matches"
        );
        assert_eq!(
            g["filters"][name]["triggers"], want["triggers"],
            "{name} triggers"
        );
    }
}

#[test]
fn replay_of_the_sshd_sample_gives_the_expected_counts() {
    check_expected("logs/sshd-sample.log", "logs/sshd-sample.expected.json");
}

#[test]
fn replay_of_the_nginx_sample_gives_the_expected_counts() {
    check_expected("logs/nginx-sample.log", "logs/nginx-sample.expected.json");
}

const CONFIG: &str = "patterns:
  ip:
    type: ip
    ignorecidr: ['127.0.0.0/8']
streams:
  ssh:
    cmd: ['cat']
    filters:
      failed:
        regex: ['Failed password for .* from <ip> port']
        retry: 3
        retryperiod: 10m
        actions:
          ban:
            cmd: ['ban', '<ip>']
          unban:
            cmd: ['unban', '<ip>']
            after: 1h
  web:
    cmd: ['cat']
    filters:
      scan:
        regex: ['^<ip> .*\"GET /\\.env']
        actions:
          alert:
            cmd: ['alert', '<ip>']
";

fn syslog(minute: u32, ip: &str) -> String {
    format!(
        "Mar  3 10:{minute:02}:00 host sshd[1]: Failed password for root from {ip} port 22 ssh2\n"
    )
}

#[test]
fn triggers_follow_log_time_not_wall_time() {
    let config = write_config("c.yml", CONFIG);
    let log = config.dir.path().join("auth.log");
    // Three failures within 10 minutes trigger; three spread over 30 do not.
    let mut text = String::new();
    for minute in [0, 1, 2] {
        text.push_str(&syslog(minute, "192.0.2.1"));
    }
    for minute in [10, 25, 40] {
        text.push_str(&syslog(minute, "192.0.2.2"));
    }
    std::fs::write(&log, text).expect("write");
    let out = replay_json(&config.path, &["--stream", "ssh"], &[&log]);
    let triggers = out["triggers"].as_array().expect("list");
    assert_eq!(triggers.len(), 1, "{out}");
    assert_eq!(triggers[0]["values"]["ip"], "192.0.2.1");
    assert_eq!(triggers[0]["filter"], "failed");
    let actions = triggers[0]["actions"].as_array().expect("actions");
    assert_eq!(actions[0]["cmd"], serde_json::json!(["ban", "192.0.2.1"]));
    // The unban is due one hour after the trigger's log time.
    assert!(
        actions[1]["at"]
            .as_str()
            .expect("time")
            .ends_with("-03T11:02:00Z"),
        "{out}"
    );
    assert_eq!(out["summary"]["matches"], 6);
    assert_eq!(out["summary"]["lines_without_timestamp"], 0);
}

#[test]
fn every_stream_sees_every_line_unless_one_is_picked() {
    let config = write_config("c.yml", CONFIG);
    let log = config.dir.path().join("mixed.log");
    std::fs::write(
        &log,
        "203.0.113.5 - - [03/Mar/2025:10:00:00 +0000] \"GET /.env HTTP/1.1\" 404 1\n",
    )
    .expect("write");
    let all = replay_json(&config.path, &[], &[&log]);
    assert_eq!(all["summary"]["filters"]["web.scan"]["triggers"], 1);
    let ssh_only = replay_json(&config.path, &["--stream", "ssh"], &[&log]);
    assert_eq!(ssh_only["summary"]["triggers"], 0);
    assert!(ssh_only["summary"]["filters"].get("web.scan").is_none());
}

#[test]
fn an_unknown_stream_is_a_clear_error() {
    let config = write_config("c.yml", CONFIG);
    let output = rebuff()
        .args(["replay", "--stream", "nope", "-c"])
        .arg(&config.path)
        .arg(&config.path)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no stream named 'nope'"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn gzip_and_plain_files_give_the_same_result() {
    let config = write_config("c.yml", CONFIG);
    let plain = config.dir.path().join("auth.log");
    let gz = config.dir.path().join("auth.log.1.gz");
    let mut text = String::new();
    for minute in 0..30 {
        text.push_str(&syslog(minute, &format!("198.51.100.{}", minute % 4)));
    }
    std::fs::write(&plain, &text).expect("write");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("create"),
        flate2::Compression::default(),
    );
    encoder.write_all(text.as_bytes()).expect("gzip");
    encoder.finish().expect("gzip");
    let a = replay_json(&config.path, &[], &[&plain]);
    let b = replay_json(&config.path, &[], &[&gz]);
    assert_eq!(a["summary"]["triggers"], b["summary"]["triggers"]);
    assert_eq!(a["summary"]["lines"], 30);
    assert_eq!(b["summary"]["lines"], 30);
    assert_eq!(a["triggers"], b["triggers"]);
}

#[test]
fn stdin_is_read_with_a_dash() {
    let config = write_config("c.yml", CONFIG);
    let output = rebuff()
        .args(["replay", "--format", "json", "-c"])
        .arg(&config.path)
        .arg("-")
        .write_stdin(syslog(0, "192.0.2.9").repeat(3))
        .output()
        .expect("runs");
    let out: Value = serde_json::from_str(&stdout(&output)).expect("json");
    assert_eq!(out["summary"]["triggers"], 1);
}

#[test]
fn oversized_invalid_utf8_and_nul_lines_are_counted_and_contained() {
    let config = write_config("c.yml", CONFIG);
    let log = config.dir.path().join("bad.log");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(syslog(0, "192.0.2.7").as_bytes());
    bytes.extend(std::iter::repeat_n(b'x', 200_000));
    bytes.push(b'\n');
    bytes.extend_from_slice(
        b"Mar  3 10:01:00 host sshd[1]: Failed password for \xff\xfe\x00 from 192.0.2.7 port 22\n",
    );
    bytes.extend_from_slice(b"no timestamp here\0\n");
    bytes.extend_from_slice(syslog(2, "192.0.2.7").as_bytes());
    std::fs::write(&log, bytes).expect("write");
    let out = replay_json(&config.path, &["--stream", "ssh"], &[&log]);
    let s = &out["summary"];
    assert_eq!(s["lines"], 5);
    assert_eq!(s["oversized_lines"], 1);
    assert_eq!(s["invalid_utf8_lines"], 1);
    assert_eq!(s["lines_without_timestamp"], 2);
    // The invalid bytes in the user name do not hide the attack.
    assert_eq!(s["matches"], 3);
    assert_eq!(s["triggers"], 1);
}

#[test]
fn a_file_without_newline_is_read_in_bounded_memory() {
    let config = write_config("c.yml", CONFIG);
    let log = config.dir.path().join("one-line.log");
    let mut file = std::fs::File::create(&log).expect("create");
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..64 {
        file.write_all(&chunk).expect("write");
    }
    drop(file);
    let out = replay_json(&config.path, &[], &[&log]);
    assert_eq!(out["summary"]["lines"], 1);
    assert_eq!(out["summary"]["oversized_lines"], 1);
}

#[test]
fn ignored_matches_are_counted_by_reason() {
    let config = write_config("c.yml", CONFIG);
    let log = config.dir.path().join("auth.log");
    std::fs::write(&log, syslog(0, "127.0.0.1").repeat(4)).expect("write");
    let out = replay_json(&config.path, &[], &[&log]);
    assert_eq!(out["summary"]["matches"], 0);
    assert_eq!(out["summary"]["ignored_by_reason"]["ignorecidr"], 4);
    assert_eq!(out["summary"]["triggers"], 0);
}

#[test]
fn duplicates_extend_the_pending_actions_instead_of_triggering_again() {
    let config = write_config("c.yml", CONFIG);
    let log = config.dir.path().join("auth.log");
    std::fs::write(&log, syslog(0, "192.0.2.3").repeat(5)).expect("write");
    let out = replay_json(&config.path, &[], &[&log]);
    assert_eq!(out["summary"]["triggers"], 1);
    assert_eq!(out["summary"]["extended"], 2);
}

#[test]
fn text_output_ends_with_the_summary_tables() {
    let config = write_config("c.yml", CONFIG);
    let log = config.dir.path().join("auth.log");
    std::fs::write(&log, syslog(0, "192.0.2.3").repeat(3)).expect("write");
    let output = rebuff()
        .args(["replay", "-c"])
        .arg(&config.path)
        .arg(&log)
        .output()
        .expect("runs");
    let text = stdout(&output);
    assert!(
        text.contains("ssh.failed 192.0.2.3 new -> ban now, unban at"),
        "{text}"
    );
    assert!(text.contains("matches 3"), "{text}");
    assert!(text.contains("top offenders"), "{text}");
    assert!(
        output.stderr.is_empty(),
        "no progress bar when not a terminal"
    );
}

fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

#[test]
fn the_demo_counts_one_ban_and_one_unban_per_trigger() {
    // 4 sshd triggers extended 75 times: the extensions move the 4 pending
    // unbans, they add none.
    let out = replay_json(&example("demo.yml"), &[], &[&example("demo.log")]);
    let summary = &out["summary"];
    let ssh = &summary["filters"]["sshd.failedlogin"];
    assert_eq!(ssh["triggers"], 4, "{summary}");
    assert_eq!(ssh["extended"], 75, "{summary}");
    assert_eq!(ssh["actions"], serde_json::json!({"ban": 4, "unban": 4}));
    let web = &summary["filters"]["nginx.scanners"];
    assert_eq!(web["triggers"], 5, "{summary}");
    assert_eq!(web["actions"], serde_json::json!({"ban": 5, "unban": 5}));
    assert_eq!(summary["actions"], 18);
}

#[test]
fn an_extension_counts_again_only_the_delayed_actions_that_already_ran() {
    let config = write_config(
        "c.yml",
        "streams:
  ssh:
    cmd: ['cat']
    filters:
      failed:
        regex: ['Failed password for .* from <ip> port']
        actions:
          ban:
            cmd: ['ban', '<ip>']
          warn:
            cmd: ['warn', '<ip>']
            after: 5m
          unban:
            cmd: ['unban', '<ip>']
            after: 1h
      again:
        regex: ['Failed password for .* from <ip> port']
        duplicate: rerun
        actions:
          ban:
            cmd: ['ban', '<ip>']
          unban:
            cmd: ['unban', '<ip>']
            after: 1h
patterns:
  ip:
    type: ip
",
    );
    let log = config.dir.path().join("auth.log");
    let mut text = String::new();
    // New at :00 (ban, warn, unban), extended at :02 (warn and unban still
    // pending: nothing more), at :10 (warn ran at :07: once more), at :11
    // (warn pending again since :10: nothing more).
    for minute in [0, 2, 10, 11] {
        text.push_str(&syslog(minute, "192.0.2.9"));
    }
    std::fs::write(&log, text).expect("write");
    let out = replay_json(&config.path, &[], &[&log]);
    let filters = &out["summary"]["filters"];
    let failed = &filters["ssh.failed"];
    assert_eq!(failed["triggers"], 1, "{out}");
    assert_eq!(failed["extended"], 3, "{out}");
    assert_eq!(
        failed["actions"],
        serde_json::json!({"ban": 1, "warn": 2, "unban": 1}),
        "{out}"
    );
    // Under `rerun` every duplicate runs every action again.
    let again = &filters["ssh.again"];
    assert_eq!(again["reruns"], 3, "{out}");
    assert_eq!(
        again["actions"],
        serde_json::json!({"ban": 4, "unban": 4}),
        "{out}"
    );
    assert_eq!(out["summary"]["actions"], 4 + 8);
}
