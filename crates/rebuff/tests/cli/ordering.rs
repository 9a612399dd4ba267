//! The actions of one trigger run in order and at least once, across
//! stops, restarts and SIGKILL: an overdue unban never overtakes the ban
//! re-applied at start, and an unban that was flushed or fell due but had
//! not finished when the daemon died still runs after a restart.

use std::collections::HashMap;
use std::time::Duration;

use super::daemon::{Site, failed_login, kill_processes_mentioning, wait_until};

/// Bans take `{ban_secs}` (then log), unbans log at once, `{after}` later.
const SLOW_BAN: &str = concat!(
    r#"
state_directory: {dir}/state
concurrency: {concurrency}
"#,
    ssh_failed_filter!(),
    r#"        actions:
          ban:
            cmd: ['sh', '-c', 'sleep {ban_secs}; echo "ban $1" >> {dir}/actions.log', 'sh', '<ip>']
          unban:
            cmd: ['sh', '-c', 'echo "unban $1" >> {dir}/actions.log', 'sh', '<ip>']
            after: {after}
"#
);

fn slow_ban(site: &Site, concurrency: u32, ban_secs: &str, after: &str) {
    site.config(
        &SLOW_BAN
            .replace("{concurrency}", &concurrency.to_string())
            .replace("{ban_secs}", ban_secs)
            .replace("{after}", after),
    );
}

fn addresses(count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("198.51.100.{i}")).collect()
}

/// The actions run for each address, in the order they logged.
fn history(site: &Site) -> HashMap<String, Vec<String>> {
    let mut by_address: HashMap<String, Vec<String>> = HashMap::new();
    for line in site.actions() {
        if let Some((action, ip)) = line.split_once(' ') {
            by_address
                .entry(ip.to_owned())
                .or_default()
                .push(action.to_owned());
        }
    }
    by_address
}

/// Every address ended unbanned: its last action is an unban.
fn all_unbanned(site: &Site, ips: &[String]) -> bool {
    let history = history(site);
    ips.iter().all(|ip| {
        history
            .get(ip)
            .is_some_and(|actions| actions.last().map(String::as_str) == Some("unban"))
    })
}

fn describe(site: &Site) -> String {
    let mut lines: Vec<String> = history(site)
        .into_iter()
        .map(|(ip, actions)| format!("{ip}: {}", actions.join(" ")))
        .collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn an_overdue_unban_runs_after_the_ban_reapplied_at_restart() {
    let site = Site::new();
    let ips = addresses(40);
    slow_ban(&site, 8, "0.2", "3s");
    let daemon = site.start();
    site.log_lines(&ips.iter().map(|ip| failed_login(ip)).collect::<Vec<_>>());
    wait_until("every ban", || history(&site).len() == ips.len());
    daemon.stop();
    // Let every unban fall due while rebuff is down.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::remove_file(site.path("input.log")).expect("forget the old lines");
    let daemon = site.start();
    wait_until("every address unbanned", || {
        all_unbanned(&site, &ips) && daemon.show(&[]) == serde_json::json!({})
    });
    daemon.stop();
    for (ip, actions) in history(&site) {
        assert_eq!(
            actions.last().map(String::as_str),
            Some("unban"),
            "{ip}: {actions:?}"
        );
        let bans = actions.iter().filter(|a| *a == "ban").count();
        assert_eq!(bans, 2, "re-applied once at restart: {ip}: {actions:?}");
    }
}

#[test]
fn flushed_unbans_lost_in_a_sigkill_run_after_restart() {
    let site = Site::new();
    let ips = addresses(10);
    slow_ban(&site, 1, "0.2", "1h");
    let daemon = site.start();
    site.log_lines(&ips.iter().map(|ip| failed_login(ip)).collect::<Vec<_>>());
    wait_until("every address jailed", || {
        daemon.show(&[])["ssh"]["failed"]
            .as_object()
            .is_some_and(|jailed| jailed.len() == ips.len())
    });
    let flushed = daemon.client("flush", &["-f", "json"]);
    assert!(flushed.status.success(), "{flushed:?}");
    // The bans queued behind one another, and the unbans behind them.
    assert!(!all_unbanned(&site, &ips));
    daemon.kill();
    kill_processes_mentioning(&site.path(""));
    std::fs::remove_file(site.path("input.log")).expect("forget the old lines");
    let daemon = site.start();
    wait_until("every flushed address unbanned", || {
        all_unbanned(&site, &ips)
    });
    assert_eq!(
        daemon.show(&[]),
        serde_json::json!({}),
        "{}",
        describe(&site)
    );
    let out = daemon.stop();
    assert!(out.contains("state restored"), "{out}");
}

#[test]
fn due_unbans_queued_behind_slow_bans_survive_a_sigkill() {
    let site = Site::new();
    let ips = addresses(20);
    slow_ban(&site, 1, "0.2", "1s");
    let daemon = site.start();
    site.log_lines(&ips.iter().map(|ip| failed_login(ip)).collect::<Vec<_>>());
    // By the 8th ban (1.6 s), the first unbans fell due behind the bans.
    wait_until("eight bans", || history(&site).len() >= 8);
    daemon.kill();
    kill_processes_mentioning(&site.path(""));
    std::fs::remove_file(site.path("input.log")).expect("forget the old lines");
    let daemon = site.start();
    wait_until("every address unbanned", || all_unbanned(&site, &ips));
    let out = daemon.stop();
    for (ip, actions) in history(&site) {
        assert_eq!(
            actions.last().map(String::as_str),
            Some("unban"),
            "{ip}: {actions:?}\n{out}"
        );
    }
}
