//! Virtual streams end to end: a recidive jail fed by the bans of another
//! stream, in the real daemon and in `rebuff replay`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use serde_json::Value;

use super::daemon::{Site, failed_login, wait_until};
use super::{rebuff, stderr, stdout, test_config};

/// ssh bans at 2 failures for `{after}`, and tells `recidive` of each ban;
/// recidive bans for a day at 3 bans in an hour.
const RECIDIVE: &str = concat!(
    r#"
state_directory: {dir}/state
plugins:
  virtual:
    path: /usr/local/lib/reaction/reaction-plugin-virtual
"#,
    ssh_failed_filter!(),
    r#"        retry: 2
        retryperiod: 10m
        actions:
          ban:
            cmd: ['sh', '-c', 'echo "ban $1" >> {dir}/actions.log', 'sh', '<ip>']
          unban:
            cmd: ['sh', '-c', 'echo "unban $1" >> {dir}/actions.log', 'sh', '<ip>']
            after: {after}
          tell:
            type: virtual
            options:
              send: 'ban <ip>'
              to: recidive
  recidive:
    type: virtual
    filters:
      repeated:
        regex: ['^ban <ip>$']
        retry: 3
        retryperiod: 1h
        actions:
          longban:
            cmd: ['sh', '-c', 'echo "longban $1" >> {dir}/actions.log', 'sh', '<ip>']
          longunban:
            cmd: ['sh', '-c', 'echo "longunban $1" >> {dir}/actions.log', 'sh', '<ip>']
            after: 1d
"#
);

#[test]
fn test_config_keeps_the_virtual_types_and_warns_once_about_plugins() {
    let site = Site::new();
    let config = site.config(&RECIDIVE.replace("{after}", "1s"));
    let output = test_config(&config);
    assert!(output.status.success(), "{}", stderr(&output));
    let err = stderr(&output);
    assert_eq!(err.matches("WARN").count(), 1, "{err}");
    assert!(
        err.contains("plugins: ignored: virtual is built into rebuff"),
        "{err}"
    );
    let out = stdout(&output);
    assert!(out.contains("type: \"virtual\""), "{out}");
    assert!(out.contains("to: \"recidive\""), "{out}");
}

/// `GET /metrics` on `port`: the body.
fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
}

#[test]
fn three_short_bans_of_one_address_trigger_the_long_ban_once() {
    let site = Site::new();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    site.config(&format!(
        "{}metrics:\n  listen: 127.0.0.1:{port}\n",
        RECIDIVE.replace("{after}", "1s")
    ));
    let daemon = site.start();
    let ip = "198.51.100.33";
    for cycle in 1..=3 {
        site.log_lines(&[failed_login(ip), failed_login(ip)]);
        wait_until("the short ban", || {
            site.count_action(&format!("ban {ip}")) == cycle
        });
        wait_until("its unban", || {
            site.count_action(&format!("unban {ip}")) == cycle
        });
        if cycle < 3 {
            assert_eq!(site.count_action(&format!("longban {ip}")), 0);
            let tree = daemon.show(&[]);
            assert_eq!(tree["recidive"]["repeated"][ip]["matches"], cycle, "{tree}");
        }
    }
    wait_until("the long ban", || {
        site.count_action(&format!("longban {ip}")) == 1
    });
    let tree = daemon.show(&[]);
    let entry = &tree["recidive"]["repeated"][ip];
    assert_eq!(
        entry["actions"]["longunban"].as_array().map(Vec::len),
        Some(1),
        "{tree}"
    );
    // Up (it has nothing that can stop), its matches counted, the virtual
    // actions counted as actions that went well.
    let metrics = scrape(port);
    for expected in [
        r#"rebuff_stream_up{stream="recidive"} 1"#,
        r#"rebuff_matches_total{stream="recidive",filter="repeated"} 3"#,
        r#"rebuff_triggers_total{stream="recidive",filter="repeated"} 1"#,
        r#"rebuff_actions_total{stream="ssh",filter="failed",action="tell",result="ok"} 3"#,
    ] {
        assert!(metrics.contains(expected), "{expected} not in:\n{metrics}");
    }
    let output = daemon.stop();
    assert_eq!(site.count_action(&format!("longban {ip}")), 1);
    // One `run` line per virtual action, and one `match` line per line it
    // sent.
    assert_eq!(
        output.matches("ssh.failed.tell: run").count(),
        3,
        "{output}"
    );
    assert_eq!(
        output.matches("recidive.repeated: match").count(),
        3,
        "{output}"
    );
}

#[test]
fn replay_feeds_virtual_lines_in_log_time() {
    let site = Site::new();
    let config = site.config(&RECIDIVE.replace("{after}", "10m"));
    // Three ssh bans 20 minutes apart (each after the last one's unban),
    // then a fourth failure pair two hours later: out of the hour.
    let mut log = String::new();
    for time in ["10:00", "10:20", "10:40", "12:40"] {
        for second in ["00", "05"] {
            log.push_str(&format!(
                "2026-03-01T{time}:{second}Z host sshd[42]: Failed password for root from 203.0.113.9 port 22 ssh2\n"
            ));
        }
    }
    let path = site.path("auth.log");
    std::fs::write(&path, log).expect("write log");
    let output = rebuff()
        .args(["replay", "--format", "json", "-c"])
        .arg(&config)
        .arg(&path)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let got: Value = serde_json::from_str(&stdout(&output)).expect("json");
    let triggers = got["triggers"].as_array().expect("triggers");
    let recidive: Vec<&Value> = triggers
        .iter()
        .filter(|t| t["stream"] == "recidive")
        .collect();
    assert_eq!(recidive.len(), 1, "{got}");
    assert_eq!(recidive[0]["time"], "2026-03-01T10:40:05Z", "{got}");
    assert_eq!(recidive[0]["values"]["ip"], "203.0.113.9");
    assert_eq!(recidive[0]["actions"][0]["action"], "longban");
    let ssh = triggers.iter().filter(|t| t["stream"] == "ssh").count();
    assert_eq!(ssh, 4, "{got}");
    assert_eq!(
        got["summary"]["filters"]["recidive.repeated"]["matches"], 4,
        "{got}"
    );
}

#[test]
fn a_reload_keeps_the_virtual_stream_state_and_starts_nothing_for_it() {
    let site = Site::new();
    site.config(&RECIDIVE.replace("{after}", "1s"));
    let daemon = site.start();
    let ip = "198.51.100.34";
    site.log_lines(&[failed_login(ip), failed_login(ip)]);
    wait_until("the first cycle", || {
        site.count_action(&format!("unban {ip}")) == 1
    });
    // Recidive at two bans now: the one already counted stays counted.
    site.config(
        &RECIDIVE
            .replace("{after}", "1s")
            .replace("retry: 3", "retry: 2"),
    );
    let output = daemon.client("reload", &[]);
    assert!(output.status.success(), "{output:?}\n{}", daemon.output());
    let said = stdout(&output);
    assert!(said.contains("changed [\"recidive.repeated\"]"), "{said}");
    assert!(
        said.contains("streams added [], restarted [], removed []"),
        "{said}"
    );
    site.log_lines(&[failed_login(ip), failed_login(ip)]);
    wait_until("the long ban", || {
        site.count_action(&format!("longban {ip}")) == 1
    });
    daemon.stop();
}

#[test]
fn replay_sends_a_delayed_virtual_line_at_its_extended_time() {
    let site = Site::new();
    let config = site.config(
        r#"
patterns:
  ip:
    type: ip
streams:
  ssh:
    cmd: ['cat']
    filters:
      failed:
        regex: ['Failed password for \S+ from <ip> port']
        retry: 2
        retryperiod: 10m
        actions:
          ban:
            cmd: ['ban', '<ip>']
          expired:
            type: virtual
            after: 10m
            options: {send: 'expired <ip>', to: expiry}
  expiry:
    type: virtual
    filters:
      seen:
        regex: ['^expired <ip>$']
        actions:
          note:
            cmd: ['note', '<ip>']
"#,
    );
    let line = |time: &str| {
        format!(
            "2026-03-01T{time}Z host sshd[42]: Failed password for root from 192.0.2.40 port 22 ssh2\n"
        )
    };
    // Jailed at 10:00:05; the duplicate at 10:05 extends the jail, so the
    // line goes at 10:15, once.
    let log: String = ["10:00:00", "10:00:05", "10:05:00", "10:40:00"]
        .iter()
        .map(|t| line(t))
        .collect();
    let path = site.path("auth.log");
    std::fs::write(&path, log).expect("write log");
    let output = rebuff()
        .args(["replay", "--format", "json", "-c"])
        .arg(&config)
        .arg(&path)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let got: Value = serde_json::from_str(&stdout(&output)).expect("json");
    let times: Vec<&str> = got["triggers"]
        .as_array()
        .expect("triggers")
        .iter()
        .filter(|t| t["stream"] == "expiry")
        .filter_map(|t| t["time"].as_str())
        .collect();
    assert_eq!(times, ["2026-03-01T10:15:00Z"], "{got}");
}
