//! `rebuff exporter` end to end: reaction's log lines of every kind, through
//! a followed file and through a real journal directory, with a stand-in
//! `reaction` on PATH answering `-V`, `test-config` and `show`; scrapes
//! compared with the exporter's expected output, with the real
//! reaction-metrics-exporter 1.0.1 on the same log when it is installed,
//! and across a restart.
//!
//! Scrapes empty the "since the previous scrape" families, so a test adds
//! up every scrape until the counts it waits for are there.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::DEADLINE;
use super::tsdb::{free_port, http_get};

/// The stand-in: `reaction -V`, `reaction test-config -c PATH` (prints
/// PATH), `reaction show --socket PATH` (prints show.yml beside the socket,
/// or fails when the socket is missing).
const STAND_IN: &str = r#"#!/bin/sh
case "$1" in
  -V) echo "reaction 2.2.0" ;;
  test-config) cat "$3" ;;
  show)
    if [ -e "$3" ]; then cat "$(dirname "$3")/show.yml"; else echo "cannot connect to $3" >&2; exit 1; fi ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"#;

const REACTION_CONFIG: &str = r#"patterns:
  ip:
    regex: '[0-9a-f.:]+'
  user:
    regex: '\w+'
streams:
  ssh:
    cmd: ['tail', '-F', '/var/log/auth.log']
    filters:
      failedlogin:
        regex:
          - 'Failed password for .* from <ip>'
          - 'Invalid user .* from <ip>'
        actions:
          ban:
            cmd: ['echo', 'ban', '<ip>']
          unban:
            cmd: ['echo', 'unban', '<ip>']
            after: 1h
      two:
        regex: ['user <user> from <ip>']
        actions:
          notify:
            cmd: ['echo']
  web:
    cmd: ['tail', '-F', '/var/log/nginx/access.log']
    filters:
      bots:
        regex: ['^<ip> .* bot']
        actions:
          ban:
            cmd: ['echo']
"#;

const SHOW: &str = r#"ssh:
  failedlogin:
    203.0.113.7:
      matches: 1
      actions:
        unban: ["2026-01-01 12:00:00"]
    2001:db8::5:
      actions:
        unban: ["2026-01-01 12:00:01"]
        notify: ["2026-01-01 12:00:02"]
  two:
    1.2.3.4 alice:
      matches: 2
      actions:
        notify: ["2026-01-01 12:00:00"]
    5.6.7.8 bob:
      matches: 1
"#;

/// reaction's log lines of every kind the exporter reads (formats
/// reference §1.2), in an order that exercises the last-match labelling
/// of actions and `hold` (the start command near the end holds the action
/// after it).
const LINES: &[&str] = &[
    r#"INFO ssh: start ["tail", "-n0", "-F", "/var/log/auth.log"]"#,
    r#"INFO ssh.failedlogin: match ["203.0.113.7"]"#,
    r#"INFO ssh.failedlogin: match ["203.0.113.7"]"#,
    r#"INFO ssh.failedlogin.ban: run ["echo" "ban" "203.0.113.7"]"#,
    r#"INFO ssh.two: match ["1.2.3.4", "alice"]"#,
    r#"INFO ssh.two.notify: run ["echo"]"#,
    r#"ERROR ssh.failedlogin.ban: run ["false"]: exit code: 1"#,
    r#"INFO ssh.failedlogin: match ["2001:db8::5"]"#,
    r#"INFO ssh.failedlogin.ban: run ["echo" "ban" "2001:db8::5"]"#,
    r#"INFO web.bots: match ["198.51.100.9"]"#,
    r#"INFO web.bots: match ["198.7.7.7"]"#,
    r#"INFO web.bots.ban: run ["echo"]"#,
    r#"INFO nope.nothing: match ["1.1.1.1"]"#,
    r#"INFO ssh.failedlogin: match ["a", "b"]"#,
    r#"INFO stop command: run ["true"]"#,
    r#"ERROR stop command: run ["ip6tables", "-w", "-X", "reaction"]: exit code: 4"#,
    r#"ERROR could not execute stream web cmd: ["tail", "-F", "/nope"]: No such file or directory (os error 2)"#,
    "ERROR stream ssh exited: its command returned exit code 1",
    "ERROR child process of stream ssh did not terminate",
    "ERROR impossible to read output from stream ssh: stream did not contain valid UTF-8",
    "WARN something harmless",
    r#"DEBUG ssh.failedlogin: match ["9.9.9.9"]"#,
    "INFO received SIGTERM, closing streams...",
    r#"INFO start command: run ["iptables" "-N"]"#,
    r#"ERROR start command: run ["false"]: exit code: 1"#,
    r#"INFO ssh.failedlogin: match ["203.0.113.8"]"#,
    r#"INFO ssh.failedlogin.ban: run ["echo" "ban" "203.0.113.8"]"#,
    r#"INFO web: start ["tail"]"#,
];

/// What the real exporter 1.0.1 serves for [`LINES`] (checked against it
/// by `the_real_exporter_and_rebuff_agree_on_the_same_log`), as one map of
/// `name{sorted labels}` to value.
fn expected() -> BTreeMap<String, f64> {
    [
        (r#"reaction_exporter_build_info{version="1.0.1"}"#, 1.0),
        (r#"reaction_status_info{status="1",version="2.2.0"}"#, 1.0),
        (r#"reaction_commands_count{code="0",command="true",state="stop",status="True"}"#, 1.0),
        (r#"reaction_commands_count{code="4",command="ip6tables",state="stop",status="False"}"#, 1.0),
        (r#"reaction_commands_count{code="0",command="iptables-N",state="start",status="True"}"#, 1.0),
        (r#"reaction_commands_count{code="1",command="false",state="start",status="False"}"#, 1.0),
        (r#"reaction_stream_event_count{stream="ssh",type="start"}"#, 1.0),
        (r#"reaction_stream_event_count{stream="web",type="exec"}"#, 1.0),
        (r#"reaction_stream_event_count{stream="ssh",type="exit"}"#, 1.0),
        (r#"reaction_stream_event_count{stream="ssh",type="timeout"}"#, 1.0),
        (r#"reaction_stream_event_count{stream="ssh",type="read"}"#, 1.0),
        (r#"reaction_stream_event_count{stream="web",type="start"}"#, 1.0),
        (r#"reaction_match_count{filter="failedlogin",ip="203.0.113.7",stream="ssh"}"#, 2.0),
        (r#"reaction_match_count{filter="two",ip="1.2.3.4",stream="ssh",user="alice"}"#, 1.0),
        (r#"reaction_match_count{filter="failedlogin",ip="2001:db8::5",stream="ssh"}"#, 1.0),
        (r#"reaction_match_count{filter="bots",ip="198",stream="web"}"#, 2.0),
        (r#"reaction_match_count{filter="failedlogin",ip="203.0.113.8",stream="ssh"}"#, 1.0),
        (r#"reaction_action_count{action="ban",filter="failedlogin",ip="203.0.113.7",stream="ssh"}"#, 2.0),
        (r#"reaction_action_count{action="notify",filter="two",ip="1.2.3.4",stream="ssh",user="alice"}"#, 1.0),
        (r#"reaction_action_count{action="ban",filter="failedlogin",ip="2001:db8::5",stream="ssh"}"#, 1.0),
        (r#"reaction_action_count{action="ban",filter="bots",ip="198",stream="web"}"#, 1.0),
        (r#"reaction_pending_count{action="unban",filter="failedlogin",ip="203.0.113.7",stream="ssh"}"#, 1.0),
        (r#"reaction_pending_count{action="unban",filter="failedlogin",ip="2001:db8::5",stream="ssh"}"#, 2.0),
        (r#"reaction_pending_count{action="notify",filter="failedlogin",ip="2001:db8::5",stream="ssh"}"#, 2.0),
        (r#"reaction_pending_count{action="notify",filter="two",ip="1.2.3.4",stream="ssh",user="alice"}"#, 1.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Families whose values are live (not emptied by a scrape).
const LIVE: [&str; 3] = [
    "reaction_exporter_build_info",
    "reaction_status_info",
    "reaction_pending_count",
];

/// A temp dir with the stand-in, reaction's configuration and `show`
/// answer, a "socket" and the log.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let site = Site {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let bin = site.path("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        let stand_in = bin.join("reaction");
        std::fs::write(&stand_in, STAND_IN).expect("stand-in");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(site.path("reaction.yml"), REACTION_CONFIG).expect("reaction config");
        std::fs::write(site.path("show.yml"), SHOW).expect("show");
        std::fs::write(site.path("reaction.sock"), "").expect("socket stand-in");
        std::fs::write(site.path("reaction.log"), "").expect("log");
        site
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// The exporter's configuration for `logs` (a YAML flow map), with
    /// `hold: 60` and a template on web.bots.
    fn config(&self, name: &str, port: u16, logs: &str, extra: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(
            &path,
            format!(
                "listen: {{address: 127.0.0.1, port: {port}}}\nreaction:\n  config: {}\n  logs: {logs}\n  socket: {}\n  hold: 60\n{extra}metrics:\n  for:\n    web:\n      bots:\n        ip: \"{{{{ ip.split('.')[0] }}}}\"\n",
                self.path("reaction.yml").display(),
                self.path("reaction.sock").display(),
            ),
        )
        .expect("exporter config");
        path
    }

    fn append(&self, lines: &[&str]) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path("reaction.log"))
            .expect("open log");
        let mut text = String::new();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        file.write_all(text.as_bytes()).expect("append");
    }

    /// `rebuff exporter -c CONFIG start` in `workdir` (created).
    fn start_rebuff(&self, config: &Path, workdir: &str, port: u16) -> Running {
        let cwd = self.path(workdir);
        std::fs::create_dir_all(&cwd).expect("workdir");
        let log = std::fs::File::create(cwd.join("output.log")).expect("output");
        let child = Command::new(env!("CARGO_BIN_EXE_rebuff"))
            .args(["exporter", "-c"])
            .arg(config)
            .arg("start")
            .current_dir(&cwd)
            .env("PATH", self.path_env())
            .env_remove("STATE_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("start rebuff exporter");
        Running::new(child, port, cwd.join("output.log"))
    }
}

/// A running exporter; killed when dropped.
struct Running {
    child: Child,
    addr: String,
    output: PathBuf,
    /// Every scrape added up (live families: the last value).
    seen: BTreeMap<String, f64>,
}

impl Running {
    fn new(child: Child, port: u16, output: PathBuf) -> Running {
        let running = Running {
            child,
            addr: format!("127.0.0.1:{port}"),
            output,
            seen: BTreeMap::new(),
        };
        let start = Instant::now();
        while !http_get(&running.addr, "/-/healthy").is_ok_and(|(s, _)| s == 200)
            && !http_get(&running.addr, "/metrics").is_ok_and(|(s, _)| s == 200)
        {
            assert!(
                start.elapsed() < DEADLINE,
                "the exporter never answered:\n{}",
                running.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        running
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// One scrape, added to [`Running::seen`]; returns its body.
    fn scrape(&mut self) -> String {
        let (status, body) = http_get(&self.addr, "/metrics").unwrap_or_else(|e| {
            panic!("scrape failed: {e}\n{}", self.output());
        });
        assert_eq!(status, 200, "{body}");
        for key in self.seen.keys().cloned().collect::<Vec<_>>() {
            if LIVE.iter().any(|f| key.starts_with(&format!("{f}{{"))) {
                self.seen.remove(&key);
            }
        }
        for (key, value) in samples(&body) {
            if LIVE.iter().any(|f| key.starts_with(&format!("{f}{{"))) {
                self.seen.insert(key, value);
            } else {
                *self.seen.entry(key).or_default() += value;
            }
        }
        body
    }

    /// Scrapes until `done(seen)` holds.
    fn scrape_until(&mut self, what: &str, done: impl Fn(&BTreeMap<String, f64>) -> bool) {
        let start = Instant::now();
        loop {
            self.scrape();
            if done(&self.seen) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}: {:#?}\n{}",
                self.seen,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `reaction_*` samples seen, without the warm-up stream's.
    fn exporter_families(&self) -> BTreeMap<String, f64> {
        exporter_only(&self.seen)
    }

    fn stop(mut self) {
        let pid = self.child.id() as i32;
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the exporter did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name{labels}` -> value of every sample line.
fn samples(body: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn counter(seen: &BTreeMap<String, f64>, key: &str) -> f64 {
    seen.get(key).copied().unwrap_or(0.0)
}

/// Writes warm-up lines until the exporter has read one: a fresh exporter
/// starts at the end of the log, so lines written before it got there
/// would not count.
fn warm_up(running: &mut Running, write: &dyn Fn()) {
    let start = Instant::now();
    loop {
        write();
        std::thread::sleep(Duration::from_millis(150));
        running.scrape();
        if running.seen.keys().any(|k| k.contains("stream=\"warmup\"")) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the exporter never read the log:\n{}",
            running.output()
        );
    }
}

const WARMUP: &str = r#"INFO warmup: start ["true"]"#;
const SENTINEL: &str = r#"INFO sentinel: start ["true"]"#;

/// The `reaction_*` samples of `seen`, without the warm-up and sentinel
/// streams'.
fn exporter_only(seen: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    seen.iter()
        .filter(|(k, _)| {
            k.starts_with("reaction_")
                && !k.contains("stream=\"warmup\"")
                && !k.contains("stream=\"sentinel\"")
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn saw_sentinel(seen: &BTreeMap<String, f64>) -> bool {
    seen.keys().any(|k| k.contains("stream=\"sentinel\""))
}

#[test]
fn exporter_file_source_serves_the_exporters_families_for_every_kind_of_line() {
    let site = Site::new();
    let port = free_port();
    let config = site.config(
        "exporter.yml",
        port,
        &format!("{{file: {}}}", site.path("reaction.log").display()),
        "",
    );
    let mut rebuff = site.start_rebuff(&config, "rebuff", port);
    warm_up(&mut rebuff, &|| site.append(&[WARMUP]));
    site.append(LINES);
    // Lines that kill the exporter are counted here, then skipped.
    let mut hostile: Vec<u8> = Vec::new();
    hostile.extend_from_slice(b"ban 1.2.3.4\n\nINFO\nWARNING x\nINFO bad \xff utf-8\n");
    hostile.extend_from_slice(b"ERROR start command: run [\"false\"]\n");
    hostile.extend_from_slice(b"INFO s.f: match [\"a]b\"]\n");
    hostile.extend_from_slice(&[b'x'; 70_000]);
    hostile.extend_from_slice(b"\n");
    std::fs::OpenOptions::new()
        .append(true)
        .open(site.path("reaction.log"))
        .and_then(|mut f| f.write_all(&hostile))
        .expect("append hostile lines");
    site.append(&[SENTINEL]);
    rebuff.scrape_until("the sentinel line", saw_sentinel);
    assert_eq!(
        rebuff.exporter_families(),
        expected(),
        "{}",
        rebuff.output()
    );
    // The counters are cumulative: the last scrape's value counts.
    let body = rebuff.scrape();
    let last: BTreeMap<String, f64> = samples(&body).into_iter().collect();
    let reason = |r: &str| {
        counter(
            &last,
            &format!("rebuff_exporter_unparsed_lines_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(reason("level"), 4.0, "{body}");
    assert_eq!(reason("invalid_utf8"), 1.0, "{body}");
    assert_eq!(reason("command"), 1.0, "{body}");
    assert_eq!(reason("values"), 1.0, "{body}");
    assert_eq!(reason("too_long"), 1.0, "{body}");
    assert_eq!(reason("pattern"), 2.0, "{body}");
    assert_eq!(
        counter(&last, "rebuff_exporter_held_actions_total"),
        1.0,
        "{body}"
    );
    // The second scrape has nothing left in the delta families.
    assert!(!body.contains("reaction_match_count{"), "{body}");
    assert!(body.contains("reaction_pending_count{"), "{body}");
}

#[test]
fn exporter_restart_counts_lines_written_while_down_once() {
    let site = Site::new();
    let port = free_port();
    let config = site.config(
        "exporter.yml",
        port,
        &format!("{{file: {}}}", site.path("reaction.log").display()),
        "",
    );
    let mut first = site.start_rebuff(&config, "work", port);
    warm_up(&mut first, &|| site.append(&[WARMUP]));
    site.append(&[
        r#"INFO ssh.failedlogin: match ["192.0.2.1"]"#,
        r#"INFO ssh: start ["tail"]"#,
    ]);
    first.scrape_until("the first lines", |seen| {
        seen.contains_key(r#"reaction_stream_event_count{stream="ssh",type="start"}"#)
    });
    // Read but not scraped yet: kept in the state file across the restart.
    site.append(&[r#"INFO ssh.failedlogin: match ["192.0.2.2"]"#]);
    // Read before the stop or after the restart, it counts once either way.
    std::thread::sleep(Duration::from_millis(300));
    first.stop();
    // Written while the exporter is down.
    site.append(&[
        r#"INFO ssh.failedlogin: match ["192.0.2.3"]"#,
        r#"INFO ssh.failedlogin: match ["192.0.2.3"]"#,
        SENTINEL,
    ]);
    let mut second = site.start_rebuff(&config, "work", port);
    second.scrape_until("the lines written while down", saw_sentinel);
    let got = second.exporter_families();
    let matches: BTreeMap<&str, f64> = got
        .iter()
        .filter(|(k, _)| k.starts_with("reaction_match_count"))
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        matches,
        BTreeMap::from([
            (
                r#"reaction_match_count{filter="failedlogin",ip="192.0.2.2",stream="ssh"}"#,
                1.0
            ),
            (
                r#"reaction_match_count{filter="failedlogin",ip="192.0.2.3",stream="ssh"}"#,
                2.0
            ),
        ]),
        "{}",
        second.output()
    );
    assert!(
        !got.contains_key(r#"reaction_stream_event_count{stream="ssh",type="start"}"#),
        "a scraped count is not served again"
    );
}

/// systemd-journal-remote, which writes journal files from the export
/// format (Debian: package systemd-journal-remote).
fn journal_remote() -> Option<PathBuf> {
    [
        "/lib/systemd/systemd-journal-remote",
        "/usr/lib/systemd/systemd-journal-remote",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Appends entries to the journal file in `dir`, through journal-remote.
fn journal_write(remote: &Path, dir: &Path, entries: &[(&str, &[u8], u8)]) {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut export = Vec::new();
    for (unit, message, priority) in entries {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros();
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        write!(
            export,
            "__REALTIME_TIMESTAMP={now}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT={unit}\nPRIORITY={priority}\n",
            seq * 1000
        )
        .expect("write");
        if std::str::from_utf8(message).is_ok() {
            export.extend_from_slice(b"MESSAGE=");
            export.extend_from_slice(message);
            export.push(b'\n');
        } else {
            // The export format's binary field: name, newline, LE64 size, data.
            export.extend_from_slice(b"MESSAGE\n");
            export.extend_from_slice(&(message.len() as u64).to_le_bytes());
            export.extend_from_slice(message);
            export.push(b'\n');
        }
        export.push(b'\n');
    }
    let input = dir.join("entries.export");
    std::fs::write(&input, &export).expect("export file");
    let out = Command::new(remote)
        .arg(format!("--output={}", dir.join("remote.journal").display()))
        .arg(&input)
        .output()
        .expect("run systemd-journal-remote");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exporter_journal_source_reads_the_units_entries_and_resumes_after_its_cursor() {
    let Some(remote) = journal_remote() else {
        println!(
            "skipped: systemd-journal-remote is not installed (apt-get install systemd-journal-remote)"
        );
        return;
    };
    if Command::new("journalctl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: journalctl is not installed");
        return;
    }
    let site = Site::new();
    let journal = site.path("journal");
    std::fs::create_dir_all(&journal).expect("journal dir");
    let port = free_port();
    let config = site.config(
        "exporter.yml",
        port,
        "{systemd: reaction.service}",
        &format!("  journal_directory: {}\n", journal.display()),
    );
    // `extra` lands after `hold:` inside `reaction:`.
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("  hold: 60\n  journal_directory:"), "{text}");
    journal_write(
        &remote,
        &journal,
        &[("reaction.service", WARMUP.as_bytes(), 6)],
    );
    let mut rebuff = site.start_rebuff(&config, "work", port);
    warm_up(&mut rebuff, &|| {
        journal_write(
            &remote,
            &journal,
            &[("reaction.service", WARMUP.as_bytes(), 6)],
        );
    });
    let mut entries: Vec<(&str, &[u8], u8)> = LINES
        .iter()
        .map(|l| ("reaction.service", l.as_bytes(), 6u8))
        .collect();
    // Not counted: another unit, a debug-priority entry, invalid UTF-8.
    entries.push((
        "sshd.service",
        br#"INFO ssh.failedlogin: match ["203.0.113.7"]"#,
        6,
    ));
    entries.push((
        "reaction.service",
        br#"INFO ssh.failedlogin: match ["203.0.113.7"]"#,
        7,
    ));
    entries.push(("reaction.service", b"INFO bad \xff utf-8", 6));
    entries.push(("reaction.service", SENTINEL.as_bytes(), 6));
    journal_write(&remote, &journal, &entries);
    rebuff.scrape_until("the sentinel entry", saw_sentinel);
    // journalctl --follow may hand over entries of one write in more than
    // one read; the counts add up across scrapes, so wait for all of them
    // (a lost entry still fails, at the deadline).
    let wanted = expected();
    rebuff.scrape_until("every entry counted", |seen| exporter_only(seen) == wanted);
    assert_eq!(
        rebuff.exporter_families(),
        expected(),
        "{}",
        rebuff.output()
    );
    let body = rebuff.scrape();
    assert!(
        body.contains("rebuff_exporter_unparsed_lines_total{reason=\"invalid_utf8\"} 1\n"),
        "{body}"
    );

    // Down, entries arrive, up again: they count once, after the cursor.
    rebuff.stop();
    journal_write(
        &remote,
        &journal,
        &[
            (
                "reaction.service",
                br#"INFO ssh.failedlogin: match ["192.0.2.9"]"#,
                6,
            ),
            ("reaction.service", SENTINEL.as_bytes(), 6),
        ],
    );
    let mut again = site.start_rebuff(&config, "work", port);
    again.scrape_until("the entries written while down", saw_sentinel);
    let got = again.exporter_families();
    let matches: Vec<(&String, &f64)> = got
        .iter()
        .filter(|(k, _)| k.starts_with("reaction_match_count"))
        .collect();
    assert_eq!(
        matches,
        vec![(
            &r#"reaction_match_count{filter="failedlogin",ip="192.0.2.9",stream="ssh"}"#.to_owned(),
            &1.0
        )],
        "{}",
        again.output()
    );
}

/// The Python that has reaction-metrics-exporter: `REBUFF_EXPORTER_PYTHON`,
/// else `python3` when it can import it.
fn exporter_python() -> Option<String> {
    let candidates = std::env::var("REBUFF_EXPORTER_PYTHON")
        .into_iter()
        .chain(["python3".to_owned()]);
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import reaction_metrics_exporter"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(python);
        }
    }
    None
}

#[test]
fn exporter_the_real_exporter_and_rebuff_agree_on_the_same_log() {
    let Some(python) = exporter_python() else {
        println!(
            "skipped: reaction-metrics-exporter 1.0.1 is not installed (pip install reaction-metrics-exporter==1.0.1, or set REBUFF_EXPORTER_PYTHON)"
        );
        return;
    };
    let site = Site::new();
    let logs = format!("{{file: {}}}", site.path("reaction.log").display());
    let (port_py, port_rb) = (free_port(), free_port());
    let config_py = site.config("py.yml", port_py, &logs, "");
    let config_rb = site.config("rb.yml", port_rb, &logs, "");
    let cwd = site.path("py");
    std::fs::create_dir_all(&cwd).expect("py dir");
    let log = std::fs::File::create(cwd.join("output.log")).expect("output");
    let child = Command::new(&python)
        .args(["-m", "reaction_metrics_exporter", "-c"])
        .arg(&config_py)
        .arg("start")
        .current_dir(&cwd)
        .env("PATH", site.path_env())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("start the real exporter");
    let mut real = Running::new(child, port_py, cwd.join("output.log"));
    let mut rebuff = site.start_rebuff(&config_rb, "rebuff", port_rb);
    let start = Instant::now();
    loop {
        site.append(&[WARMUP]);
        std::thread::sleep(Duration::from_millis(200));
        real.scrape();
        rebuff.scrape();
        let warm = |r: &Running| r.seen.keys().any(|k| k.contains("stream=\"warmup\""));
        if warm(&real) && warm(&rebuff) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the exporters never read the log:\n{}",
            real.output()
        );
    }
    site.append(LINES);
    site.append(&[SENTINEL]);
    real.scrape_until("the sentinel line (real exporter)", saw_sentinel);
    rebuff.scrape_until("the sentinel line (rebuff)", saw_sentinel);
    assert_eq!(
        rebuff.exporter_families(),
        real.exporter_families(),
        "real exporter:\n{}",
        real.output()
    );
    assert_eq!(real.exporter_families(), expected());
}

#[test]
fn exporter_defaults_and_test_config_print_the_exporters_data() {
    let out = super::rebuff()
        .args(["exporter", "defaults", "-f", "json"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let defaults: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(defaults["reaction"]["logs"]["systemd"], "reaction.service");
    assert_eq!(
        defaults["metrics"]["export"]["commands"],
        serde_json::Value::Null
    );
    assert_eq!(defaults["listen"]["port"], 8080);

    let site = Site::new();
    let config = site.config("exporter.yml", 9999, "{file: }", "");
    let out = super::rebuff()
        .args(["exporter", "-c"])
        .arg(&config)
        .arg("test-config")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", super::stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["reaction"]["logs"]["file"], "/var/log/reaction.log");
    assert_eq!(doc["reaction"]["hold"], 60);
    assert_eq!(doc["metrics"]["export"]["pending"]["extra"], true);
    assert_eq!(
        doc["metrics"]["for"]["web"]["bots"]["ip"],
        "{{ ip.split('.')[0] }}"
    );

    std::fs::write(site.path("bad.yml"), "reaction:\n  hold: soon\n").expect("write");
    let out = super::rebuff()
        .args(["exporter", "-c"])
        .arg(site.path("bad.yml"))
        .arg("test-config")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = super::stderr(&out);
    assert!(
        err.contains("bad.yml:2:9: reaction.hold: expected an integer"),
        "{err}"
    );
}
