//! The built-in `nftables` and `ipset` action types against the real
//! programs, in network namespaces these tests create (`ip netns`), so the
//! host's firewall is never touched. They need root, `ip`, `nft` (and
//! `ipset`, `iptables`, `python3` where said); without them they print
//! `skipped: <reason>` and pass.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use super::daemon::{Site, failed_login, wait_until};
use super::{rebuff, stderr, stdout, test_config};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Netns {
    /// A new namespace, or `None` (having said why) when this machine
    /// cannot make one or lacks a program the test needs.
    fn new(test: &str, programs: &[&str]) -> Option<Netns> {
        if !rustix::process::geteuid().is_root() {
            println!("skipped: {test} needs root to create network namespaces");
            return None;
        }
        for program in ["ip", "nft"].iter().chain(programs) {
            if !have(program) {
                println!("skipped: {test} needs {program}, which is not installed");
                return None;
            }
        }
        let name = format!(
            "rebuff-t{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let made = Command::new("ip").args(["netns", "add", &name]).output();
        match made {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                println!(
                    "skipped: {test}: cannot create a network namespace: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            Err(error) => {
                println!("skipped: {test}: cannot run ip: {error}");
                return None;
            }
        }
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// The wrapper that runs a program inside.
    fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("run ip netns exec")
    }

    /// Runs `argv` inside and insists that it succeeds.
    fn run(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(out.status.success(), "{argv:?}: {}", stderr(&out));
        stdout(&out)
    }

    /// The elements of an nftables set of table `reaction`, with their
    /// timeouts in seconds; empty when the set is missing.
    fn nft_set(&self, set: &str) -> Vec<(String, Option<u64>)> {
        let out = self.exec(&["nft", "-j", "list", "set", "inet", "reaction", set]);
        if !out.status.success() {
            return Vec::new();
        }
        let json: Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
        let Some(items) = json["nftables"].as_array() else {
            return Vec::new();
        };
        let mut elements = Vec::new();
        for item in items {
            for elem in item["set"]["elem"].as_array().into_iter().flatten() {
                let (value, timeout) = match elem.get("elem") {
                    Some(inner) => (&inner["val"], inner["timeout"].as_u64()),
                    None => (elem, None),
                };
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => format!(
                        "{}/{}",
                        other["prefix"]["addr"].as_str().unwrap_or("?"),
                        other["prefix"]["len"]
                    ),
                };
                elements.push((text, timeout));
            }
        }
        elements
    }

    /// Seconds until `element` of `set` expires, if it is there with a
    /// timeout.
    fn nft_expires(&self, set: &str, element: &str) -> Option<u64> {
        let out = self.exec(&["nft", "-j", "list", "set", "inet", "reaction", set]);
        let json: Value = serde_json::from_slice(&out.stdout).ok()?;
        json["nftables"]
            .as_array()?
            .iter()
            .flat_map(|item| item["set"]["elem"].as_array().into_iter().flatten())
            .filter_map(|elem| elem.get("elem"))
            .find(|inner| inner["val"] == element)
            .and_then(|inner| inner["expires"].as_u64())
    }

    fn nft_has(&self, set: &str, element: &str) -> bool {
        self.nft_set(set).iter().any(|(e, _)| e == element)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Bans through the `bans` set for `{after}` on every failed login (two
/// thousand distinct sources need no retry), and through the `nets` set,
/// by /24 and /64, on invalid users.
const NFT_JAIL: &str = r#"
state_directory: {dir}/state
firewall:
  reconcile: {reconcile}
patterns:
  ip:
    type: ip
  net:
    type: ip
    ipv4mask: 24
    ipv6mask: 64
streams:
  ssh:
    cmd: ['tail', '-n', '+1', '-F', '{dir}/input.log']
    filters:
      failed:
        regex:
          - 'Failed password for \S+ from <ip> port'
        actions:
          ban:
            type: nftables
            options: {set: bans, action: add}
          unban:
            type: nftables
            options: {set: bans, action: delete}
            after: {after}
      scan:
        regex:
          - 'Did not receive identification string from <ip>'
        actions:
          ban:
            type: nftables
            options: {set: bans, action: add}
          unban:
            type: nftables
            options: {set: bans, action: delete}
            after: 3s
      invalid:
        regex:
          - 'Invalid user \S+ from <net>'
        actions:
          ban:
            type: nftables
            options: {set: nets, action: add}
          unban:
            type: nftables
            options: {set: nets, action: delete}
            after: 2h
"#;

fn nft_jail(site: &Site, after: &str, reconcile: &str) {
    site.config(
        &NFT_JAIL
            .replace("{after}", after)
            .replace("{reconcile}", reconcile),
    );
}

fn v4(i: u32) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

fn v6(i: u32) -> String {
    format!("2001:db8:1::{i:x}")
}

#[test]
fn two_thousand_bans_reach_the_kernel_with_their_timeouts() {
    let Some(ns) = Netns::new("two_thousand_bans_reach_the_kernel", &[]) else {
        return;
    };
    let site = Site::new();
    nft_jail(&site, "1h", "null");
    let daemon = site.start_with(&ns.wrapper());
    let mut lines: Vec<String> = (1..=1000).map(|i| failed_login(&v4(i))).collect();
    lines.extend((1..=1000).map(|i| failed_login(&v6(i))));
    lines.push("sshd[1]: Invalid user bob from 203.0.113.77 port 1".to_owned());
    lines.push("sshd[1]: Invalid user eve from 2001:db8:5:0:1:2:3:4 port 1".to_owned());
    site.log_lines(&lines);
    wait_until("2,000 elements in bansv4 and bansv6", || {
        ns.nft_set("bansv4").len() == 1000 && ns.nft_set("bansv6").len() == 1000
    });
    for (element, timeout) in ns.nft_set("bansv4").iter().chain(&ns.nft_set("bansv6")) {
        // The unban's delay and a tenth of it: the kernel never ends a ban
        // before rebuff's unban does.
        assert_eq!(*timeout, Some(3960), "{element}");
    }
    assert!(ns.nft_has("bansv4", &v4(1)) && ns.nft_has("bansv6", &v6(1000)));
    wait_until("the prefixes in nets", || {
        ns.nft_has("netsv4", "203.0.113.0/24") && ns.nft_has("netsv6", "2001:db8:5::/64")
    });
    // `show` tells which set holds an address.
    let tree = daemon.show(&[]);
    assert_eq!(
        tree["ssh"]["failed"][v4(1).as_str()]["sets"],
        serde_json::json!(["nftables inet reaction bansv4"]),
        "{}",
        tree["ssh"]["failed"][v4(1).as_str()]
    );
    assert_eq!(
        tree["ssh"]["failed"][v6(7).as_str()]["sets"],
        serde_json::json!(["nftables inet reaction bansv6"])
    );
    let ruleset = ns.run(&["nft", "list", "table", "inet", "reaction"]);
    assert!(ruleset.contains("flags interval,timeout"), "{ruleset}");
    assert!(ruleset.contains("ip saddr @bansv4 drop"), "{ruleset}");
    assert!(ruleset.contains("ip6 saddr @netsv6 drop"), "{ruleset}");

    // A short ban beside the long ones keeps its own timeout, and the
    // kernel's expiry and rebuff's unban agree (the unban finds it gone
    // or deletes it; either way it succeeds).
    site.log_lines(&["sshd[1]: Did not receive identification string from 192.0.2.99".to_owned()]);
    wait_until("the short ban", || {
        ns.nft_set("bansv4")
            .iter()
            .any(|(e, t)| e == "192.0.2.99" && *t == Some(4))
    });
    wait_until("the short unban", || {
        daemon
            .output()
            .contains(r#"ssh.scan.unban: run ["nftables" "delete" "bans" "192.0.2.99"]"#)
    });
    wait_until("the short ban gone", || !ns.nft_has("bansv4", "192.0.2.99"));
    assert_eq!(ns.nft_set("bansv4").len(), 1000);
    let out = daemon.stop();
    assert!(!out.contains("ERROR"), "{out}");
    assert!(
        out.contains(r#"INFO ssh.failed.ban: run ["nftables" "add" "bans" "10.0.0.1"]"#),
        "the reaction-compatible run line of each element:\n{out}"
    );
}

/// Under `extend` a new match moves the unban later; the element's kernel
/// timeout moves with it, or the kernel would end the ban early.
#[test]
fn an_extended_ban_pushes_its_kernel_timeout_back() {
    let Some(ns) = Netns::new("an_extended_ban_pushes_its_kernel_timeout_back", &[]) else {
        return;
    };
    let site = Site::new();
    nft_jail(&site, "20s", "null");
    let daemon = site.start_with(&ns.wrapper());
    let ip = "192.0.2.60";
    site.log_lines(&[failed_login(ip)]);
    wait_until("the ban", || ns.nft_has("bansv4", ip));
    std::thread::sleep(std::time::Duration::from_secs(5));
    // 20 s and a 2 s margin: without a refresh it expires in 17 s at
    // most by now.
    assert!(ns.nft_expires("bansv4", ip).is_some_and(|s| s <= 17));
    site.log_lines(&[failed_login(ip)]);
    wait_until("the pushed-back expiry", || {
        ns.nft_expires("bansv4", ip).is_some_and(|s| s > 18)
    });
    let out = daemon.stop();
    assert_eq!(
        out.matches(r#"ssh.failed.ban: run ["nftables" "add" "bans" "192.0.2.60"]"#)
            .count(),
        1,
        "a refresh is no action run:\n{out}"
    );
}

#[test]
fn warm_and_cold_restarts_restore_every_pending_ban() {
    let Some(ns) = Netns::new("warm_and_cold_restarts_restore", &[]) else {
        return;
    };
    let site = Site::new();
    nft_jail(&site, "1h", "null");
    let daemon = site.start_with(&ns.wrapper());
    let lines: Vec<String> = (1..=300)
        .map(|i| failed_login(&v4(i)))
        .chain((1..=300).map(|i| failed_login(&v6(i))))
        .collect();
    site.log_lines(&lines);
    wait_until("600 bans", || {
        ns.nft_set("bansv4").len() == 300 && ns.nft_set("bansv6").len() == 300
    });
    daemon.stop();
    // Kept at stop: a restart opens no window.
    assert_eq!(ns.nft_set("bansv4").len(), 300);

    // Warm: the same namespace. The log is not read again (a new match
    // would count as a new trigger); the state restores the bans.
    std::fs::write(site.path("input.log"), "").expect("empty the log");
    let daemon = site.start_with(&ns.wrapper());
    wait_until("the restore", || daemon.output().contains("state restored"));
    assert_eq!(ns.nft_set("bansv4").len(), 300);
    daemon.stop();

    // Cold: a fresh namespace, as after a reboot: every pending ban comes
    // back from the state, with its timeout.
    let Some(fresh) = Netns::new("warm_and_cold_restarts_restore", &[]) else {
        return;
    };
    assert!(fresh.nft_set("bansv4").is_empty());
    let daemon = site.start_with(&fresh.wrapper());
    wait_until("every ban restored", || {
        fresh.nft_set("bansv4").len() == 300 && fresh.nft_set("bansv6").len() == 300
    });
    assert!(fresh.nft_set("bansv6").iter().all(|(_, t)| t.is_some()));
    let out = daemon.stop();
    assert!(out.contains("rerun=600"), "{out}");
    assert!(!out.contains("ERROR"), "{out}");
}

/// SIGKILL in the middle of a flood of bans: after a cold restart on an
/// empty log, every address that was in the kernel set before the kill is
/// in it again, restored from the state alone (a trigger is on disk before
/// its ban reaches the writer).
#[test]
fn sigkill_during_a_flood_loses_no_ban_of_the_kernel_set() {
    let Some(ns) = Netns::new("sigkill_during_a_flood_loses_no_ban", &[]) else {
        return;
    };
    let site = Site::new();
    nft_jail(&site, "1h", "null");
    let daemon = site.start_with(&ns.wrapper());
    // Large enough that the kill lands in the middle of it.
    let lines: Vec<String> = (1..=20_000).map(|i| failed_login(&v4(i))).collect();
    site.log_lines(&lines);
    wait_until("some bans in the kernel", || {
        ns.nft_set("bansv4").len() >= 100
    });
    daemon.kill();
    let before: Vec<String> = ns.nft_set("bansv4").into_iter().map(|(e, _)| e).collect();

    // A cold restart (a fresh namespace) on an empty log: only the state
    // can bring the bans back.
    std::fs::write(site.path("input.log"), "").expect("empty the log");
    let Some(fresh) = Netns::new("sigkill_during_a_flood_loses_no_ban", &[]) else {
        return;
    };
    let daemon = site.start_with(&fresh.wrapper());
    let missing = |wanted: &[String]| -> Vec<String> {
        let now = fresh.nft_set("bansv4");
        wanted
            .iter()
            .filter(|ip| !now.iter().any(|(e, _)| e == *ip))
            .cloned()
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !missing(&before).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let lost = missing(&before);
    assert!(
        lost.is_empty(),
        "in the kernel before the kill, not after the restart: {lost:?}\n{}",
        daemon.output()
    );
    daemon.stop();
}

#[test]
fn reconcile_repairs_a_deleted_element_a_flushed_ruleset_and_a_stale_one() {
    let Some(ns) = Netns::new("reconcile_repairs", &[]) else {
        return;
    };
    let site = Site::new();
    nft_jail(&site, "1h", "1s");
    let daemon = site.start_with(&ns.wrapper());
    site.log_lines(&[
        failed_login("192.0.2.1"),
        failed_login("192.0.2.2"),
        failed_login("2001:db8::7"),
    ]);
    wait_until("three bans", || {
        ns.nft_set("bansv4").len() == 2 && ns.nft_set("bansv6").len() == 1
    });
    ns.run(&[
        "nft",
        "delete",
        "element",
        "inet",
        "reaction",
        "bansv4",
        "{ 192.0.2.1 }",
    ]);
    wait_until("the deleted element back", || {
        ns.nft_has("bansv4", "192.0.2.1")
    });

    ns.run(&["nft", "flush", "ruleset"]);
    wait_until("the table, its rules and elements back", || {
        ns.nft_set("bansv4").len() == 2 && ns.nft_set("bansv6").len() == 1
    });
    let ruleset = ns.run(&["nft", "list", "table", "inet", "reaction"]);
    assert!(ruleset.contains("ip6 saddr @bansv6 drop"), "{ruleset}");

    // A timed element rebuff never banned is stale; an element without a
    // timeout is a permanent ban (of a filter without unban) and stays.
    ns.run(&[
        "nft",
        "add element inet reaction bansv4 { 198.51.100.9 timeout 1h, 198.51.100.10 }",
    ]);
    wait_until("the stale element removed", || {
        !ns.nft_has("bansv4", "198.51.100.9")
    });
    assert!(ns.nft_has("bansv4", "198.51.100.10"));
    let out = daemon.stop();
    assert!(out.contains("missing from the kernel"), "{out}");
}

/// `add` of present elements and `delete` of absent ones in one batch:
/// nft applies a batch all or nothing, so neither may fail it.
#[test]
fn a_batch_with_present_adds_and_absent_deletes_succeeds() {
    let Some(ns) = Netns::new("a_batch_with_present_adds_and_absent_deletes", &[]) else {
        return;
    };
    let site = Site::new();
    site.config(concat!(
        r#"
state_directory: {dir}/state
"#,
        ssh_failed_filter!(),
        r#"        duplicate: rerun
        actions:
          ban:
            type: nftables
            options: {set: bans, action: add}
      accepted:
        regex:
          - 'Accepted password for \S+ from <ip> port'
        actions:
          pardon:
            type: nftables
            options: {set: bans, action: delete}
"#
    ));
    let daemon = site.start_with(&ns.wrapper());
    let accepted = |ip: &str| format!("sshd[1]: Accepted password for bob from {ip} port 22");
    site.log_lines(&[failed_login("192.0.2.1")]);
    wait_until("the first ban", || ns.nft_has("bansv4", "192.0.2.1"));
    // One write: a present add (rerun), an absent delete, a new add.
    site.log_lines(&[
        failed_login("192.0.2.1"),
        accepted("192.0.2.50"),
        accepted("2001:db8::50"),
        failed_login("192.0.2.2"),
    ]);
    wait_until("the new ban", || ns.nft_has("bansv4", "192.0.2.2"));
    assert!(ns.nft_has("bansv4", "192.0.2.1"));
    // An early unban of a banned address works too.
    site.log_lines(&[accepted("192.0.2.1")]);
    wait_until("the pardon", || !ns.nft_has("bansv4", "192.0.2.1"));
    let out = daemon.stop();
    assert!(!out.contains("ERROR"), "{out}");
}

/// One element the kernel refuses (an address inside a prefix of an
/// interval set without auto-merge) fails alone: the rest of its batch is
/// applied, and its action is reported failed.
#[test]
fn a_refused_element_fails_alone_and_its_batch_goes_in() {
    let Some(ns) = Netns::new("a_refused_element_fails_alone", &[]) else {
        return;
    };
    let site = Site::new();
    site.config(
        &NFT_JAIL
            .replace("{after}", "1h")
            .replace("{reconcile}", "null")
            .replace("options: {set: bans, action: add}\n          unban:\n            type: nftables\n            options: {set: bans, action: delete}\n            after: 1h", "options: {set: nets, action: add}"),
    );
    let daemon = site.start_with(&ns.wrapper());
    site.log_lines(&["sshd[1]: Invalid user bob from 203.0.113.77 port 1".to_owned()]);
    wait_until("the prefix", || ns.nft_has("netsv4", "203.0.113.0/24"));
    site.log_lines(&[
        failed_login("198.51.100.1"),
        failed_login("203.0.113.5"),
        failed_login("198.51.100.2"),
        failed_login("198.51.100.3"),
    ]);
    wait_until("the others", || {
        ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
            .iter()
            .all(|ip| ns.nft_has("netsv4", ip))
    });
    wait_until("the failure reported", || {
        daemon
            .output()
            .contains("ERROR ssh.failed.ban: action failed")
    });
    let out = daemon.stop();
    assert_eq!(
        out.matches("ERROR ssh.failed.ban: action failed").count(),
        1,
        "{out}"
    );
}

/// A reload that brings the first set action sets it up before its
/// actions run; one whose set does not fit keeps the running configuration.
#[test]
fn a_reload_sets_up_new_sets_first() {
    let Some(ns) = Netns::new("a_reload_sets_up_new_sets_first", &[]) else {
        return;
    };
    let site = Site::new();
    let with_cmd = concat!(
        r#"
state_directory: {dir}/state
"#,
        ssh_failed_filter!(),
        r#"        actions:
          ban:
            cmd: ['true']
"#
    );
    site.config(with_cmd);
    let daemon = site.start_with(&ns.wrapper());
    assert!(ns.nft_set("bansv4").is_empty());
    nft_jail(&site, "1h", "null");
    let out = daemon.client("reload", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    site.log_lines(&[failed_login("192.0.2.70")]);
    wait_until("the ban in the new set", || {
        ns.nft_has("bansv4", "192.0.2.70")
    });

    ns.run(&["nft", "add table inet reaction; add set inet reaction othersv4 { type ipv6_addr; flags timeout; }"]);
    site.config(
        &NFT_JAIL
            .replace("set: nets", "set: others")
            .replace("{after}", "1h")
            .replace("{reconcile}", "null"),
    );
    let out = daemon.client("reload", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("othersv4 does not fit"),
        "{}",
        stderr(&out)
    );
    site.log_lines(&[failed_login("192.0.2.71")]);
    wait_until("the running configuration still bans", || {
        ns.nft_has("bansv4", "192.0.2.71")
    });
    daemon.stop();
}

#[test]
fn an_existing_set_that_does_not_fit_stops_the_start_with_a_clear_error() {
    let Some(ns) = Netns::new("an_existing_set_that_does_not_fit", &[]) else {
        return;
    };
    ns.run(&[
        "nft",
        "add table inet reaction; add set inet reaction bansv4 { type ipv4_addr; }",
    ]);
    let site = Site::new();
    nft_jail(&site, "1h", "null");
    let mut daemon = site.spawn_with(&ns.wrapper());
    let status = daemon.wait();
    assert!(!status.success());
    let out = daemon.output();
    assert!(
        out.contains(
            "the existing nftables set inet reaction bansv4 does not fit: it has no 'timeout' flag"
        ),
        "{out}"
    );
}

/// The drop rules really drop: from a second namespace over a veth pair,
/// a banned source cannot connect and a clean one can, in both families.
#[test]
fn a_banned_source_cannot_connect_and_a_clean_one_can() {
    let Some(server) = Netns::new("a_banned_source_cannot_connect", &["python3"]) else {
        return;
    };
    let Some(client) = Netns::new("a_banned_source_cannot_connect", &["python3"]) else {
        return;
    };
    let veth = format!("rbv{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let peer = format!("{veth}p");
    server.run(&[
        "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
    ]);
    server.run(&["ip", "link", "set", &peer, "netns", &client.name]);
    server.run(&["ip", "addr", "add", "10.77.0.1/24", "dev", &veth]);
    server.run(&["ip", "addr", "add", "fd77::1/64", "dev", &veth, "nodad"]);
    server.run(&["ip", "link", "set", &veth, "up"]);
    for addr in ["10.77.0.2/24", "10.77.0.3/24"] {
        client.run(&["ip", "addr", "add", addr, "dev", &peer]);
    }
    for addr in ["fd77::2/64", "fd77::3/64"] {
        client.run(&["ip", "addr", "add", addr, "dev", &peer, "nodad"]);
    }
    client.run(&["ip", "link", "set", &peer, "up"]);

    let site = Site::new();
    nft_jail(&site, "1h", "null");
    let daemon = site.start_with(&server.wrapper());
    let listener = Command::new("ip")
        .args(["netns", "exec", &server.name, "python3", "-c"])
        .arg(
            "import socket\n\
             s = socket.socket(socket.AF_INET6)\n\
             s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
             s.bind(('::', 7777))\n\
             s.listen(64)\n\
             while True:\n    c, _ = s.accept()\n    c.close()\n",
        )
        .spawn()
        .expect("start the listener");
    let _listener = Guard(listener);
    let connects = |source: &str, target: &str| {
        let script = format!(
            "import socket, sys\n\
             fam = socket.AF_INET6 if ':' in '{target}' else socket.AF_INET\n\
             s = socket.socket(fam)\n\
             s.settimeout(1.5)\n\
             s.bind(('{source}', 0))\n\
             try:\n    s.connect(('{target}', 7777))\n    sys.exit(0)\n\
             except OSError:\n    sys.exit(1)\n"
        );
        client.exec(&["python3", "-c", &script]).status.success()
    };
    // Every source connects before the bans (neighbour discovery done).
    for (source, target) in [
        ("10.77.0.2", "10.77.0.1"),
        ("10.77.0.3", "10.77.0.1"),
        ("fd77::2", "fd77::1"),
        ("fd77::3", "fd77::1"),
    ] {
        wait_until(&format!("{source} to connect"), || connects(source, target));
    }
    for ip in ["10.77.0.2", "fd77::2"] {
        let out = daemon.client("trigger", &["ssh.failed", &format!("ip={ip}")]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    wait_until("both bans", || {
        server.nft_has("bansv4", "10.77.0.2") && server.nft_has("bansv6", "fd77::2")
    });
    assert!(
        !connects("10.77.0.2", "10.77.0.1"),
        "banned IPv4 source connected"
    );
    assert!(
        !connects("fd77::2", "fd77::1"),
        "banned IPv6 source connected"
    );
    wait_until("the clean IPv4 source", || {
        connects("10.77.0.3", "10.77.0.1")
    });
    wait_until("the clean IPv6 source", || connects("fd77::3", "fd77::1"));
    daemon.stop();
}

/// Kills a child when dropped.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Recidive: each short ban tells a virtual stream; five of them in its
/// window put the address in a long-ban set.
const RECIDIVE: &str = concat!(
    r#"
state_directory: {dir}/state
"#,
    ssh_failed_filter!(),
    r#"        actions:
          ban:
            type: nftables
            options: {set: bans, action: add}
          unban:
            type: nftables
            options: {set: bans, action: delete}
            after: 1s
          tell:
            type: virtual
            options: {send: 'banned <ip>', to: recidive}
  recidive:
    type: virtual
    filters:
      repeated:
        regex: ['^banned <ip>$']
        retry: 5
        retryperiod: 1d
        actions:
          ban:
            type: nftables
            options: {set: recidive, action: add}
          unban:
            type: nftables
            options: {set: recidive, action: delete}
            after: 30d
"#
);

#[test]
fn five_short_bans_make_a_long_one_in_the_daemon_and_in_replay() {
    let site = Site::new();
    let config = site.config(RECIDIVE);
    let ip = "203.0.113.5";
    // replay needs no root: it decides, and runs nothing.
    let log = site.path("auth.log");
    let lines: String = (0..5)
        .map(|i| {
            format!(
                "Nov 23 10:0{i}:00 host sshd[42]: Failed password for root from {ip} port 22 ssh2\n"
            )
        })
        .collect();
    std::fs::write(&log, lines).expect("write the log");
    let out = rebuff()
        .args(["replay", "--format", "json", "--no-progress", "-c"])
        .arg(&config)
        .arg(&log)
        .output()
        .expect("run replay");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let recidive: Vec<&Value> = report["triggers"]
        .as_array()
        .expect("triggers")
        .iter()
        .filter(|t| t["stream"] == "recidive")
        .collect();
    assert_eq!(recidive.len(), 1, "{report}");

    let Some(ns) = Netns::new("five_short_bans_make_a_long_one", &[]) else {
        return;
    };
    let daemon = site.start_with(&ns.wrapper());
    for cycle in 1..=5 {
        site.log_lines(&[failed_login(ip)]);
        wait_until("the short ban", || ns.nft_has("bansv4", ip));
        wait_until("its end", || !ns.nft_has("bansv4", ip));
        assert_eq!(ns.nft_has("recidivev4", ip), cycle == 5, "cycle {cycle}");
    }
    wait_until("the long ban", || ns.nft_has("recidivev4", ip));
    let long = ns.nft_set("recidivev4");
    assert!(long[0].1.is_some_and(|t| t >= 29 * 86_400), "{long:?}");
    daemon.stop();
}

/// A configuration as reaction users write it for the nftables plugin
/// (JSONnet, a `plugins` section with the plugin's path) runs unchanged.
#[test]
fn a_reaction_nftables_plugin_configuration_runs_unchanged() {
    let fixture = super::fixture("reaction-nftables.jsonnet");
    let out = test_config(&fixture);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("plugins: ignored: nftables is built into rebuff"),
        "{}",
        stderr(&out)
    );
    let Some(ns) = Netns::new("a_reaction_nftables_plugin_configuration", &[]) else {
        return;
    };
    let site = Site::new();
    let text = std::fs::read_to_string(&fixture).expect("read the fixture");
    let log = site.path("input.log");
    std::fs::write(&log, "").expect("create the log");
    let state = site.path("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let config = site.path("reaction.jsonnet");
    std::fs::write(
        &config,
        text.replace("/var/log/auth.log", &log.display().to_string())
            .replace("/var/lib/reaction", &state.display().to_string()),
    )
    .expect("write the configuration");
    let out_file = std::fs::File::create(site.path("daemon.out")).expect("daemon.out");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_rebuff"),
            "start",
            "-c",
        ])
        .arg(&config)
        .arg("-s")
        .arg(site.path("rebuff.sock"))
        .stdout(out_file.try_clone().expect("clone"))
        .stderr(out_file)
        .spawn()
        .expect("start rebuff");
    let _daemon = Guard(child);
    // `tail -n0` reads only what comes after it started: write until the
    // bans show.
    wait_until("the bans", || {
        site.log_lines(&[failed_login("192.0.2.200"), failed_login("2001:db8::200")]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        ns.nft_has("bansv4", "192.0.2.200") && ns.nft_has("bansv6", "2001:db8::200")
    });
    let timeouts = ns.nft_set("bansv4");
    assert_eq!(timeouts[0].1, Some(48 * 3600 + 600), "{timeouts:?}");
}

#[test]
fn ipset_bans_reach_the_kernel_and_rules_are_not_duplicated() {
    let Some(ns) = Netns::new(
        "ipset_bans_reach_the_kernel",
        &["ipset", "iptables", "ip6tables"],
    ) else {
        return;
    };
    let site = Site::new();
    site.config(concat!(
        r#"
state_directory: {dir}/state
"#,
        ssh_failed_filter!(),
        r#"        actions:
          ban:
            type: ipset
            options: {set: bans, action: add, chains: [INPUT]}
          unban:
            type: ipset
            options: {set: bans, action: del}
            after: 1h
"#
    ));
    let daemon = site.start_with(&ns.wrapper());
    let lines: Vec<String> = (1..=200)
        .map(|i| failed_login(&v4(i)))
        .chain((1..=200).map(|i| failed_login(&v6(i))))
        .collect();
    site.log_lines(&lines);
    let count = |set: &str| {
        let out = ns.exec(&["ipset", "list", set, "-o", "save"]);
        stdout(&out)
            .lines()
            .filter(|l| l.starts_with("add ") && l.contains(" timeout "))
            .count()
    };
    wait_until("400 elements with timeouts", || {
        count("bansv4") == 200 && count("bansv6") == 200
    });
    daemon.stop();
    let daemon = site.start_with(&ns.wrapper());
    let rules = ns.run(&["iptables", "-S", "INPUT"]);
    assert_eq!(
        rules.matches("--match-set bansv4 src -j DROP").count(),
        1,
        "{rules}"
    );
    let rules = ns.run(&["ip6tables", "-S", "INPUT"]);
    assert_eq!(
        rules.matches("--match-set bansv6 src -j DROP").count(),
        1,
        "{rules}"
    );
    assert_eq!(count("bansv4"), 200);
    let out = daemon.stop();
    assert!(!out.contains("ERROR"), "{out}");
}
