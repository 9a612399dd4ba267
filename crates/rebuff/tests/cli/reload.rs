//! `rebuff reload` and SIGHUP: the configuration is re-read without losing
//! state. Pending unbans survive every kind of change, an invalid file
//! changes nothing, and an unchanged stream loses no line.

use super::daemon::{Daemon, Site, failed_login, wait_until};

/// `{after}`, `{extra}` (more filters) and `{cmd}` vary between versions.
const BASE: &str = r#"
state_directory: {dir}/state
{metrics}
patterns:
  ip:
    type: ip
streams:
  ssh:
    cmd: {cmd}
    filters:
      failed:
        regex:
          - 'Failed password for \S+ from <ip> port'
        retry: 2
        retryperiod: 10m
        actions:
          ban:
            cmd: ['sh', '-c', 'echo "ban $1" >> {dir}/actions.log', 'sh', '<ip>']
          unban:
            cmd: ['sh', '-c', 'echo "unban $1" >> {dir}/actions.log', 'sh', '<ip>']
            after: {after}
{extra}"#;

const TAIL: &str = "['tail', '-n', '+1', '-F', '{dir}/input.log']";

const INVALID_USER: &str = r#"      invalid:
        regex:
          - 'Invalid user \S+ from <ip>'
        actions:
          note:
            cmd: ['sh', '-c', 'echo "note $1" >> {dir}/actions.log', 'sh', '<ip>']
          forget:
            cmd: ['sh', '-c', 'echo "forget $1" >> {dir}/actions.log', 'sh', '<ip>']
            after: 1h
"#;

fn write(site: &Site, after: &str, extra: &str, cmd: &str) {
    write_with_metrics(site, after, extra, cmd, "");
}

fn write_with_metrics(site: &Site, after: &str, extra: &str, cmd: &str, metrics: &str) {
    site.config(
        &BASE
            .replace("{metrics}", metrics)
            .replace("{after}", after)
            .replace("{extra}", extra)
            .replace("{cmd}", cmd),
    );
}

fn reload(daemon: &Daemon) -> std::process::Output {
    daemon.client("reload", &[])
}

fn pending_unban(daemon: &Daemon, ip: &str) -> bool {
    daemon.show(&[])["ssh"]["failed"][ip]["actions"]["unban"].is_array()
}

fn ban(site: &Site, daemon: &Daemon, ip: &str) {
    site.log_lines(&[failed_login(ip), failed_login(ip)]);
    wait_until("the ban", || pending_unban(daemon, ip));
}

#[test]
fn a_reload_adds_filters_and_changes_after_keeping_pending_unbans() {
    let site = Site::new();
    write(&site, "1h", "", TAIL);
    let daemon = site.start();
    ban(&site, &daemon, "192.0.2.10");
    write(&site, "2h", INVALID_USER, TAIL);
    let output = reload(&daemon);
    assert!(output.status.success(), "{output:?}\n{}", daemon.output());
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("added [\"ssh.invalid\"]"), "{said}");
    assert!(said.contains("changed [\"ssh.failed\"]"), "{said}");
    assert!(pending_unban(&daemon, "192.0.2.10"));
    // The new filter works on the running stream, and the new `after`
    // applies to new bans.
    site.log_lines(&["Invalid user bob from 192.0.2.11".to_owned()]);
    wait_until("the new filter's action", || {
        site.count_action("note 192.0.2.11") == 1
    });
    ban(&site, &daemon, "192.0.2.12");
    let show = daemon.show(&[]);
    let times = |ip: &str| {
        show["ssh"]["failed"][ip]["actions"]["unban"][0]
            .as_str()
            .map(str::to_owned)
    };
    assert!(times("192.0.2.12") > times("192.0.2.10"), "{show}");
    // A restart still knows every pending action.
    daemon.stop();
    let daemon = site.start();
    assert!(pending_unban(&daemon, "192.0.2.10"));
    assert!(pending_unban(&daemon, "192.0.2.12"));
    daemon.stop();
}

#[test]
fn a_removed_filter_is_forgotten_and_others_keep_their_unbans() {
    let site = Site::new();
    write(&site, "1h", INVALID_USER, TAIL);
    let daemon = site.start();
    ban(&site, &daemon, "192.0.2.20");
    site.log_lines(&["Invalid user eve from 192.0.2.21".to_owned()]);
    wait_until("the other filter's pending action", || {
        daemon.show(&[])["ssh"]["invalid"]["192.0.2.21"]["actions"]["forget"].is_array()
    });
    write(&site, "1h", "", TAIL);
    let output = reload(&daemon);
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("removed [\"ssh.invalid\"]"), "{said}");
    assert!(said.contains("pending actions dropped 1"), "{said}");
    assert!(pending_unban(&daemon, "192.0.2.20"));
    assert!(daemon.show(&[])["ssh"].get("invalid").is_none());
    assert_eq!(
        site.count_action("forget 192.0.2.21"),
        0,
        "dropped, not run"
    );
    daemon.stop();
}

#[test]
fn a_changed_stream_command_restarts_the_stream_and_keeps_its_unbans() {
    let site = Site::new();
    write(&site, "1h", "", TAIL);
    let daemon = site.start();
    ban(&site, &daemon, "192.0.2.30");
    // Another file: the restarted stream reads it.
    write(
        &site,
        "1h",
        "",
        "['tail', '-n', '+1', '-F', '{dir}/other.log']",
    );
    let output = reload(&daemon);
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("restarted [\"ssh\"]"), "{said}");
    assert!(pending_unban(&daemon, "192.0.2.30"));
    std::fs::write(
        site.path("other.log"),
        format!(
            "{}\n{}\n",
            failed_login("192.0.2.31"),
            failed_login("192.0.2.31")
        ),
    )
    .expect("write other.log");
    wait_until("a ban from the new command", || {
        pending_unban(&daemon, "192.0.2.31")
    });
    daemon.stop();
}

#[test]
fn an_invalid_configuration_changes_nothing_and_says_why() {
    let site = Site::new();
    write(&site, "1h", "", TAIL);
    let daemon = site.start();
    ban(&site, &daemon, "192.0.2.40");
    write(&site, "soon", "", TAIL);
    let output = reload(&daemon);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("config.yml:") && said.contains("after"),
        "{said}"
    );
    assert!(pending_unban(&daemon, "192.0.2.40"));
    // Still running on the old configuration.
    ban(&site, &daemon, "192.0.2.41");
    let out = daemon.stop();
    assert!(
        out.contains("the new configuration is invalid; the running one stays"),
        "{out}"
    );
}

#[test]
fn sighup_reloads_and_an_unchanged_stream_loses_no_line() {
    let site = Site::new();
    let port = super::tsdb::free_port();
    let metrics = format!("metrics:\n  listen: 127.0.0.1:{port}");
    write_with_metrics(&site, "1h", "", TAIL, &metrics);
    let daemon = site.start();
    let lines = |from: usize, to: usize| -> Vec<String> {
        (from..to)
            .map(|i| failed_login(&format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)))
            .collect()
    };
    let writer = {
        let path = site.path("input.log");
        let batches: Vec<Vec<String>> = (0..20).map(|b| lines(b * 100, b * 100 + 100)).collect();
        std::thread::spawn(move || {
            use std::io::Write;
            for batch in batches {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .expect("open input");
                file.write_all((batch.join("\n") + "\n").as_bytes())
                    .expect("append");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    for round in 0..4 {
        let extra = if round % 2 == 0 { INVALID_USER } else { "" };
        write_with_metrics(&site, "1h", extra, TAIL, &metrics);
        daemon.signal_hup();
        wait_until("the reload", || {
            daemon.output().matches("configuration reloaded").count() == round + 1
        });
    }
    writer.join().expect("writer");
    wait_until("every line matched", || {
        daemon.output().matches("INFO ssh.failed: match [").count() == 2000
    });
    // The new counters know the kept stream is up.
    let (status, body) =
        super::tsdb::http_get(&format!("127.0.0.1:{port}"), "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert!(
        body.contains("rebuff_stream_up{stream=\"ssh\"} 1"),
        "{body}"
    );
    let out = daemon.stop();
    assert_eq!(
        out.matches("INFO ssh: start [").count(),
        1,
        "never restarted:\n{out}"
    );
}

#[test]
fn a_reload_starts_again_a_stream_whose_process_had_exited() {
    let site = Site::new();
    let once = "['sh', '-c', 'echo started >> {dir}/runs.log']";
    let config = BASE
        .replace("{metrics}", "")
        .replace("{after}", "1h")
        .replace("{cmd}", TAIL)
        .replace(
            "{extra}",
            &format!("  once:\n    cmd: {once}\n    filters:\n      f:\n        regex: ['never <ip>']\n        actions:\n          a:\n            cmd: ['true']\n"),
        );
    site.config(&config);
    let daemon = site.start();
    let runs = || {
        std::fs::read_to_string(site.path("runs.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_until("the short stream ran", || runs() == 1);
    wait_until("its exit logged", || {
        daemon.output().contains("stream once exited")
    });
    let output = reload(&daemon);
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("restarted [\"once\"]"), "{said}");
    wait_until("the short stream ran again", || runs() == 2);
    daemon.stop();
}
