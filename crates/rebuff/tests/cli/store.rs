//! The state store under stress, end to end: restarts right after a
//! SIGKILL while children are being forked, and a state filesystem that is
//! full or read-only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{DEADLINE, Daemon, Site, wait_until};
use crate::tsdb::free_port;

/// Starts `rebuff start` on the site's configuration, output to `out`.
fn spawn(site: &Site, out: &str) -> Child {
    let log = std::fs::File::create(site.path(out)).expect("create the daemon output");
    let err = log.try_clone().expect("clone the daemon output");
    Command::new(env!("CARGO_BIN_EXE_rebuff"))
        .args(["start", "-l", "DEBUG", "-c"])
        .arg(site.path("config.yml"))
        .arg("-s")
        .arg(site.path("rebuff.sock"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .expect("spawn rebuff start")
}

fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL the daemon");
    child.wait().expect("reap the daemon");
}

/// Lines of `path` (0 when it does not exist yet).
fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

/// A stream that floods matches, each running an action at once and one
/// later: the daemon forks children all the time, and every one holds the
/// daemon's descriptors (state lock, control socket, metrics port) until
/// it execs.
const BUSY: &str = r#"
state_directory: {dir}/state
concurrency: 16
patterns:
  ip:
    type: ip
streams:
  flood:
    cmd: ['sh', '-c', 'i=0; while :; do i=$((i+1)); echo "bad 10.0.$((i / 250 % 250)).$((i % 250))"; done']
    filters:
      bad:
        regex:
          - '^bad <ip>$'
        actions:
          ban:
            cmd: ['sh', '-c', 'echo "$1" >> {dir}/actions.log', 'sh', '<ip>']
          unban:
            cmd: ['true']
            after: 1h
metrics:
  listen: 127.0.0.1:{port}
"#;

#[test]
fn a_restart_right_after_a_sigkill_never_finds_the_state_in_use() {
    let site = Site::new();
    site.config(&BUSY.replace("{port}", &free_port().to_string()));
    let actions = site.path("actions.log");
    let rounds = 40;
    let mut previous: Option<Child> = None;
    for round in 0..rounds {
        let mut daemon = spawn(&site, "daemon.out");
        if let Some(mut old) = previous.take() {
            old.wait().expect("reap the previous daemon");
        }
        let before = count_lines(&actions);
        let start = Instant::now();
        // Busy: actions are being forked when the SIGKILL lands.
        while count_lines(&actions) < before + 20 {
            if let Some(status) = daemon.try_wait().expect("wait") {
                let out = std::fs::read_to_string(site.path("daemon.out")).unwrap_or_default();
                panic!("round {round}: the daemon exited ({status}) right after a SIGKILL:\n{out}");
            }
            assert!(
                start.elapsed() < DEADLINE,
                "round {round}: no action ran:\n{}",
                std::fs::read_to_string(site.path("daemon.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Not reaped first: a script's `kill -9 PID; rebuff start` does
        // not wait either.
        daemon.kill().expect("SIGKILL the daemon");
        previous = Some(daemon);
    }
    // The last one is still a healthy daemon: it answers and stops cleanly.
    let mut daemon = spawn(&site, "daemon.out");
    wait_until("the control socket", || {
        Command::new(env!("CARGO_BIN_EXE_rebuff"))
            .args(["show", "-s"])
            .arg(site.path("rebuff.sock"))
            .output()
            .is_ok_and(|o| o.status.success())
    });
    sigkill(&mut daemon);
}

#[test]
fn a_second_daemon_is_refused_with_the_pid_of_the_first() {
    let site = Site::new();
    site.config(&DISK_JAIL.replace("{port}", &free_port().to_string()));
    let mut first = spawn(&site, "first.out");
    wait_until("the control socket", || show(&site).is_some());
    let second = Command::new(env!("CARGO_BIN_EXE_rebuff"))
        .args(["start", "-c"])
        .arg(site.path("config.yml"))
        .arg("-s")
        .arg(site.path("other.sock"))
        .output()
        .expect("run a second daemon");
    sigkill(&mut first);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!(
            "state directory is in use by another process, pid {}",
            first.id()
        )),
        "{err}"
    );
}

/// A jail whose state lives in `{dir}/{state}` (a tmpfs in these tests):
/// ban at the 2nd match, unban in an hour; metrics on `{port}`.
const DISK_JAIL: &str = concat!(
    r#"
state_directory: {dir}/state
"#,
    ssh_failed_filter!(),
    r#"        retry: 2
        retryperiod: 10m
        actions:
          ban:
            cmd: ['sh', '-c', 'echo "ban $1" >> {dir}/actions.log', 'sh', '<ip>']
          unban:
            cmd: ['sh', '-c', 'echo "unban $1" >> {dir}/actions.log', 'sh', '<ip>']
            after: 1h
metrics:
  listen: 127.0.0.1:{port}
"#
);

fn failed_login(ip: &str) -> String {
    format!("Nov 23 10:00:00 host sshd[42]: Failed password for root from {ip} port 22 ssh2")
}

/// Whether `out` has an ERROR line saying `what`.
fn error_logged(out: &str, what: &str) -> bool {
    out.lines()
        .any(|line| line.starts_with("ERROR ") && line.contains(what))
}

/// `rebuff show -f json` of the site's daemon, `None` while it does not
/// answer.
fn show(site: &Site) -> Option<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_rebuff"))
        .args(["show", "-f", "json", "-s"])
        .arg(site.path("rebuff.sock"))
        .output()
        .expect("run rebuff show");
    output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).expect("show prints JSON"))
}

/// The addresses `show` lists with a pending unban.
fn jailed(site: &Site) -> Vec<String> {
    let tree = show(site).expect("show answers");
    let mut ips: Vec<String> = tree["ssh"]["failed"]
        .as_object()
        .map(|jail| {
            jail.iter()
                .filter(|(_, entry)| entry["actions"]["unban"].is_array())
                .map(|(ip, _)| ip.clone())
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    ips
}

/// The value of an unlabelled sample in the daemon's metrics.
fn metric(port: u16, name: &str) -> f64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send the scrape");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("read the scrape");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

/// A small tmpfs mounted on `path` for the life of the value; `None`,
/// after printing why, when it cannot be (not root, no mount).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, options: &str) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(path).expect("create the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot mount a tmpfs ({status:?})");
            return None;
        }
        Some(Tmpfs {
            path: path.to_owned(),
        })
    }

    fn remount(&self, how: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {how}");
    }

    /// Takes every free byte with a `filler` file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0u8; 4096];
        while file.write(&chunk).is_ok_and(|n| n > 0) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The site with `DISK_JAIL`, its state on a tmpfs mounted with
/// `options`, and the metrics port.
fn disk_site(options: &str) -> Option<(Site, Tmpfs, u16)> {
    let site = Site::new();
    let port = free_port();
    site.config(&DISK_JAIL.replace("{port}", &port.to_string()));
    let fs = Tmpfs::mount(&site.path("state"), options)?;
    Some((site, fs, port))
}

/// Bans `ip` (two failed logins) and waits for its `n`-th ban.
fn ban(site: &Site, ip: &str, n: usize) {
    site.log_lines(&[failed_login(ip), failed_login(ip)]);
    wait_until(&format!("ban {ip}"), || {
        site.count_action(&format!("ban {ip}")) == n
    });
}

/// Waits, feeding nothing, until the daemon says its writes work again: an
/// idle daemon retries its store on its own.
fn wait_for_the_store_to_catch_up(daemon: &Daemon) {
    let start = Instant::now();
    // The retry backs off up to 10 s: more than one deadline may pass.
    while !daemon.output().contains("state writes succeed again") {
        assert!(
            start.elapsed() < 2 * DEADLINE,
            "the store did not catch up:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_full_state_disk_does_not_stop_the_bans_and_the_store_catches_up() {
    let Some((site, fs, port)) = disk_site("size=256k,mode=0700") else {
        return;
    };
    let daemon = site.start();
    ban(&site, "192.0.2.1", 1);
    daemon.stop();
    let filler = fs.fill();

    // Restarted on a full disk and an empty log: the ban comes from the
    // store, which cannot compact.
    std::fs::write(site.path("input.log"), "").expect("truncate the input");
    let daemon = site.start();
    wait_until("the restored ban", || {
        site.count_action("ban 192.0.2.1") == 2
    });
    ban(&site, "192.0.2.2", 1);
    // More than fits in the slack of the log's last page.
    let scans: Vec<String> = (0..200)
        .map(|i| failed_login(&format!("10.0.{}.{}", i / 100, i % 100)))
        .collect();
    site.log_lines(&scans);
    wait_until("the failed commit logged", || {
        error_logged(&daemon.output(), "state commit failed")
    });
    let out = daemon.output();
    assert!(error_logged(&out, "state compaction failed"), "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    assert!(metric(port, "rebuff_store_errors_total") >= 2.0);
    assert_eq!(jailed(&site), ["192.0.2.1", "192.0.2.2"]);

    std::fs::remove_file(filler).expect("free space");
    wait_for_the_store_to_catch_up(&daemon);
    ban(&site, "192.0.2.3", 1);
    // SIGKILL: only what the running daemon wrote counts.
    drop(daemon);

    std::fs::write(site.path("input.log"), "").expect("truncate the input");
    let daemon = site.start();
    assert_eq!(jailed(&site), ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
    let tree = show(&site).expect("show answers");
    for i in 0..200 {
        let ip = format!("10.0.{}.{}", i / 100, i % 100);
        assert_eq!(tree["ssh"]["failed"][&ip]["matches"], 1, "{ip}: {tree}");
    }
    daemon.stop();
    drop(fs);
}

#[test]
fn a_read_only_state_disk_does_not_stop_the_bans_and_the_store_catches_up() {
    let Some((site, fs, _)) = disk_site("size=1m,mode=0700") else {
        return;
    };
    let daemon = site.start();
    ban(&site, "192.0.2.1", 1);
    daemon.stop();
    fs.remount("ro");

    std::fs::write(site.path("input.log"), "").expect("truncate the input");
    let daemon = site.start();
    wait_until("the restored ban", || {
        site.count_action("ban 192.0.2.1") == 2
    });
    ban(&site, "192.0.2.2", 1);
    let out = daemon.output();
    assert!(error_logged(&out, "state compaction failed"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert_eq!(jailed(&site), ["192.0.2.1", "192.0.2.2"]);

    fs.remount("rw");
    wait_for_the_store_to_catch_up(&daemon);
    drop(daemon);

    std::fs::write(site.path("input.log"), "").expect("truncate the input");
    let daemon = site.start();
    assert_eq!(jailed(&site), ["192.0.2.1", "192.0.2.2"]);
    daemon.stop();
    drop(fs);
}

#[test]
fn a_state_directory_that_cannot_be_created_is_created_once_it_can() {
    let site = Site::new();
    site.config(
        &DISK_JAIL
            .replace("{dir}/state", "{dir}/ro/state")
            .replace("{port}", &free_port().to_string()),
    );
    let Some(fs) = Tmpfs::mount(&site.path("ro"), "size=1m,mode=0700,ro") else {
        return;
    };
    let daemon = site.start();
    ban(&site, "192.0.2.1", 1);
    let out = daemon.output();
    assert!(out.contains("cannot create state directory"), "{out}");
    fs.remount("rw");
    wait_for_the_store_to_catch_up(&daemon);
    drop(daemon);

    std::fs::write(site.path("input.log"), "").expect("truncate the input");
    let daemon = site.start();
    wait_until("the restored ban", || {
        site.count_action("ban 192.0.2.1") == 2
    });
    assert_eq!(jailed(&site), ["192.0.2.1"]);
    daemon.stop();
    drop(fs);
}
