//! The real reaction-metrics-exporter 1.0.1 beside rebuff, reading its log
//! in file mode and calling it as `reaction`: every action is attributed to
//! the address that caused it, also when matches of other addresses come
//! between, and a failed action is counted once.
//!
//! Skips, saying so, when the exporter is not installed (`.ci/run`
//! installs it with pip when it can).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::{DEADLINE, Site, failed_login, wait_until};
use super::tsdb::{free_port, http_get};

const CONFIG: &str = concat!(
    r#"
state_directory: {dir}/state
"#,
    ssh_failed_filter!(),
    r#"        retry: 2
        retryperiod: 10m
        actions:
          ban:
            cmd: ['sh', '-c', 'echo "ban $1" >> {dir}/actions.log', 'sh', '<ip>']
          alert:
            cmd: ['false']
          unban:
            cmd: ['sh', '-c', 'echo "unban $1" >> {dir}/actions.log', 'sh', '<ip>']
            after: 1h
"#
);

fn exporter_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import reaction_metrics_exporter"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Exporter {
    child: Child,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sample values of `family` by their `ip` label, from one exposition.
fn samples_by_ip(exposition: &str, family: &str, action: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(family).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        if !labels.contains(&format!("action=\"{action}\"")) {
            continue;
        }
        let ip = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("ip=\""))
            .map(|v| v.trim_end_matches('"').to_owned())
            .unwrap_or_default();
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry(ip).or_default() += value;
    }
    out
}

#[test]
fn the_real_exporter_labels_each_action_with_its_own_address() {
    if !exporter_installed() {
        println!(
            "skipped: reaction-metrics-exporter 1.0.1 is not installed (pip install reaction-metrics-exporter==1.0.1)"
        );
        return;
    }
    let site = Site::new();
    let config = site.config(CONFIG);
    let bin = site.path("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_rebuff"), bin.join("reaction"))
        .expect("reaction symlink");
    let daemon = site.start();

    let port = free_port();
    let exporter_config = site.path("exporter.yml");
    std::fs::write(
        &exporter_config,
        format!(
            "listen: {{address: 127.0.0.1, port: {port}}}\nreaction:\n  config: {}\n  logs: {{file: {}}}\n  socket: {}\n  hold: 0\n",
            config.display(),
            site.path("daemon.out").display(),
            site.path("rebuff.sock").display(),
        ),
    )
    .expect("write exporter config");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let exporter_log = std::fs::File::create(site.path("exporter.log")).expect("exporter log");
    let child = Command::new("python3")
        .args(["-m", "reaction_metrics_exporter", "-c"])
        .arg(&exporter_config)
        .arg("start")
        .current_dir(site.path(""))
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(exporter_log.try_clone().expect("clone"))
        .stderr(exporter_log)
        .spawn()
        .expect("start the exporter");
    let _exporter = Exporter { child };
    let addr = format!("127.0.0.1:{port}");
    let exporter_output = || std::fs::read_to_string(site.path("exporter.log")).unwrap_or_default();
    wait_until("the exporter's endpoint", || {
        http_get(&addr, "/metrics").is_ok_and(|(status, _)| status == 200)
    });

    // Interleaved: each trigger's matches have the other address's between.
    let (v4, v6) = ("203.0.113.7", "2001:db8::5");
    site.log_lines(&[
        failed_login(v4),
        failed_login(v6),
        failed_login(v4),
        failed_login(v6),
    ]);
    wait_until("both bans", || {
        site.count_action(&format!("ban {v4}")) == 1 && site.count_action(&format!("ban {v6}")) == 1
    });
    wait_until("the failed alerts logged", || {
        daemon
            .output()
            .matches("ssh.failed.alert: action failed")
            .count()
            == 2
    });

    // Each scrape empties the exporter's counts: add them up.
    let mut bans: HashMap<String, f64> = HashMap::new();
    let mut alerts: HashMap<String, f64> = HashMap::new();
    let start = Instant::now();
    loop {
        if let Ok((200, body)) = http_get(&addr, "/metrics") {
            for (ip, n) in samples_by_ip(&body, "reaction_action_count", "ban") {
                *bans.entry(ip).or_default() += n;
            }
            for (ip, n) in samples_by_ip(&body, "reaction_action_count", "alert") {
                *alerts.entry(ip).or_default() += n;
            }
        }
        let seen = |m: &HashMap<String, f64>| m.values().sum::<f64>() >= 2.0;
        if seen(&bans) && seen(&alerts) {
            // One more scrape, for anything counted twice that came late.
            std::thread::sleep(Duration::from_millis(500));
            if let Ok((200, body)) = http_get(&addr, "/metrics") {
                for (ip, n) in samples_by_ip(&body, "reaction_action_count", "alert") {
                    *alerts.entry(ip).or_default() += n;
                }
            }
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the exporter never counted both bans: bans {bans:?}, alerts {alerts:?}\n{}\n{}",
            exporter_output(),
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let expected: HashMap<String, f64> = [(v4.to_owned(), 1.0), (v6.to_owned(), 1.0)].into();
    assert_eq!(bans, expected, "{}", daemon.output());
    assert_eq!(
        alerts,
        expected,
        "a failed action counts once\n{}",
        daemon.output()
    );
    daemon.stop();
}
