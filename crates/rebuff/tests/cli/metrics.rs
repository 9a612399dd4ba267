//! The metrics endpoint end to end: a real Prometheus scrapes a real
//! daemon fed known lines, and the stored series are checked through
//! Prometheus's HTTP API; then every dashboard query runs against it.
//!
//! Skipped, saying so, where the `prometheus` binary is missing.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::Value;

use crate::daemon::{DEADLINE, Site, wait_until};
use crate::dashboards::check_dashboard;
use crate::tsdb::Prometheus;

/// A free loopback port for the endpoint.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Ban at the 3rd match, unban in an hour; per-address labels, one of
/// them through a template.
const CONFIG: &str = r#"
state_directory: {dir}/state
start:
  - ['true']
patterns:
  ip:
    type: ip
  user:
    regex: '\S+'
streams:
  ssh:
    cmd: ['tail', '-n', '+1', '-F', '{dir}/input.log']
    filters:
      failed:
        regex:
          - 'Failed password for <user> from <ip> port'
        retry: 3
        retryperiod: 10m
        actions:
          ban:
            cmd: ['sh', '-c', 'echo "ban $1" >> {dir}/actions.log', 'sh', '<ip>']
          unban:
            cmd: ['sh', '-c', 'echo "unban $1" >> {dir}/actions.log', 'sh', '<ip>']
            after: 1h
metrics:
  listen: 127.0.0.1:{port}
  export:
    pattern_matches: true
"#;

fn failed(user: &str, ip: &str) -> String {
    format!("Nov 23 10:00:00 host sshd[42]: Failed password for {user} from {ip} port 22 ssh2")
}

/// The single value of an instant query's answer, `None` when it has no
/// sample.
fn scalar(answer: &Value) -> Option<f64> {
    let result = answer["result"].as_array()?;
    assert!(result.len() <= 1, "more than one series: {answer}");
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Waits until `promql` evaluates to `expected`.
fn expect_value(prometheus: &Prometheus, promql: &str, expected: f64) {
    let start = std::time::Instant::now();
    let mut last = None;
    while start.elapsed() < DEADLINE * 2 {
        match prometheus.query(promql) {
            Ok(answer) => {
                last = scalar(&answer);
                if last == Some(expected) {
                    return;
                }
            }
            Err(e) => panic!("{promql}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{promql}: expected {expected}, last answer {last:?}");
}

#[test]
fn prometheus_stores_what_the_daemon_counts_and_every_dashboard_query_runs() {
    let site = Site::new();
    let port = free_port();
    site.config(&CONFIG.replace("{port}", &port.to_string()));
    // Created first, so `tail` has nothing to say about it on stderr (which
    // the stream reads as lines too).
    site.log_lines(&[]);
    let daemon = site.start();
    let Some(prometheus) = Prometheus::start(&[format!("127.0.0.1:{port}")], "1s") else {
        return;
    };
    prometheus.wait_for(r#"up{job="reaction"} == 1"#, DEADLINE);

    // A user name with a quote, a backslash and non-ASCII letters reaches
    // Prometheus as it was written.
    let odd_user = r#"a"b\c-é名"#;
    site.log_lines(&[
        failed("root", "203.0.113.7"),
        failed("root", "203.0.113.7"),
        failed("root", "203.0.113.7"),
        failed(odd_user, "2001:db8::5"),
    ]);
    wait_until("the ban", || site.count_action("ban 203.0.113.7") == 1);

    let f = r#"stream="ssh",filter="failed""#;
    expect_value(&prometheus, r#"rebuff_lines_total{stream="ssh"}"#, 4.0);
    expect_value(&prometheus, &format!("rebuff_matches_total{{{f}}}"), 4.0);
    expect_value(&prometheus, &format!("rebuff_triggers_total{{{f}}}"), 1.0);
    expect_value(
        &prometheus,
        &format!(r#"rebuff_actions_total{{{f},action="ban",result="ok"}}"#),
        1.0,
    );
    expect_value(
        &prometheus,
        &format!(r#"rebuff_pending_actions{{{f},action="unban"}}"#),
        1.0,
    );
    expect_value(&prometheus, &format!("rebuff_jailed{{{f}}}"), 1.0);
    expect_value(&prometheus, r#"rebuff_stream_up{stream="ssh"}"#, 1.0);
    expect_value(
        &prometheus,
        r#"rebuff_commands_total{kind="start",result="ok"}"#,
        1.0,
    );
    expect_value(
        &prometheus,
        &format!(r#"rebuff_pattern_matches_total{{{f},ip="203.0.113.7",user="root"}}"#),
        3.0,
    );
    // The exporter's families count since the previous scrape: summed over
    // the scrapes, every match is there exactly once.
    expect_value(
        &prometheus,
        r#"sum(sum_over_time(reaction_match_count{ip="203.0.113.7",user="root"}[10m]))"#,
        3.0,
    );
    expect_value(
        &prometheus,
        r#"sum(sum_over_time(reaction_match_count{ip="2001:db8::5",user="a\"b\\c-é名"}[10m]))"#,
        1.0,
    );
    expect_value(
        &prometheus,
        r#"sum(sum_over_time(reaction_action_count{action="ban",ip="203.0.113.7"}[10m]))"#,
        1.0,
    );
    expect_value(
        &prometheus,
        r#"reaction_pending_count{action="unban",ip="203.0.113.7",user="root"}"#,
        1.0,
    );
    expect_value(
        &prometheus,
        r#"sum(sum_over_time(reaction_commands_count{state="start",command="true",status="True",code="0"}[10m]))"#,
        1.0,
    );
    expect_value(
        &prometheus,
        r#"sum(sum_over_time(reaction_stream_event_count{stream="ssh",type="start"}[10m]))"#,
        1.0,
    );
    expect_value(&prometheus, r#"reaction_status_info{status="1"}"#, 1.0);
    expect_value(&prometheus, "count(reaction_exporter_build_info)", 1.0);

    // Every panel of the dashboard must at least be a valid query here; on
    // this small site many are empty by design (no failures, no drops).
    check_dashboard(&prometheus, "dashboards/rebuff-prometheus.json", 0.0);

    let out = daemon.stop();
    assert!(out.contains("metrics endpoint listening"), "{out}");
}

#[test]
fn a_taken_metrics_port_stops_the_daemon_before_its_start_commands() {
    let site = Site::new();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    site.config(
        &CONFIG
            .replace("{port}", &port.to_string())
            .replace(
                "['true']",
                "['sh', '-c', 'echo started >> {dir}/actions.log']",
            )
            .replace("{dir}", &site.path("").display().to_string()),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rebuff"))
        .args(["start", "-c"])
        .arg(site.path("config.yml"))
        .arg("-s")
        .arg(site.path("rebuff.sock"))
        .output()
        .expect("run rebuff start");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        site.actions().is_empty(),
        "no start command ran: {:?}",
        site.actions()
    );
}
