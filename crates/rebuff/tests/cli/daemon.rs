//! The daemon end to end: `rebuff start` on a temp dir, fed through a log
//! file its stream tails, driven with `show`/`flush`/`trigger`, stopped
//! with SIGTERM or SIGKILL, restarted on the same state.
//!
//! Nothing here sleeps to let time pass: tests poll for an observable
//! effect (a line in a file, an answer on the socket) with a deadline.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any awaited effect may take on a loaded CI machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it holds; panics naming `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temp dir holding a configuration, the log its stream tails, the file
/// its actions append to, the state and the socket. Dropping it kills
/// whatever still runs with its path in the command line (a stream child
/// orphaned by a SIGKILLed daemon).
pub struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Site {
        Site {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `config.yml` from `template`, where `{dir}` is the temp dir.
    pub fn config(&self, template: &str) -> PathBuf {
        let path = self.path("config.yml");
        let text = template.replace("{dir}", &self.dir.path().display().to_string());
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Appends lines to the log the stream tails.
    pub fn log_lines(&self, lines: &[String]) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("input.log"))
            .expect("open input log");
        let mut text = String::new();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        file.write_all(text.as_bytes())
            .expect("append to input log");
    }

    fn log_bytes(&self, bytes: &[u8]) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("input.log"))
            .expect("open input log");
        file.write_all(bytes).expect("append to input log");
    }

    fn truncate_log(&self) {
        std::fs::write(self.path("input.log"), "").expect("truncate the input log");
    }

    pub fn actions(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("actions.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn count_action(&self, line: &str) -> usize {
        self.actions().iter().filter(|l| *l == line).count()
    }

    pub fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    /// Starts the daemon under a wrapper that execs it (`ip netns exec
    /// NAME`), and waits for its socket.
    pub fn start_with(&self, wrapper: &[&str]) -> Daemon {
        let daemon = self.spawn_with(wrapper);
        let socket = daemon.socket.clone();
        let mut daemon = daemon;
        wait_until("the control socket", || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "the daemon exited early ({status}):\n{}",
                    std::fs::read_to_string(self.path("daemon.out")).unwrap_or_default()
                );
            }
            show_command(&socket, &["-f", "json"]).is_some()
        });
        daemon
    }

    /// Starts the daemon, under `wrapper` if not empty, without waiting
    /// for it.
    pub fn spawn_with(&self, wrapper: &[&str]) -> Daemon {
        let out = std::fs::File::create(self.path("daemon.out")).expect("create daemon.out");
        let err = out.try_clone().expect("clone daemon.out");
        let socket = self.path("rebuff.sock");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_rebuff"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_rebuff")),
        };
        let child = command
            .args(["start", "-l", "DEBUG", "-c"])
            .arg(self.path("config.yml"))
            .arg("-s")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn rebuff start");
        Daemon {
            child,
            socket,
            out: self.path("daemon.out"),
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        kill_processes_mentioning(self.dir.path());
    }
}

/// SIGKILLs every process whose command line mentions `path`.
pub fn kill_processes_mentioning(path: &Path) {
    let needle = path.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle)
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

pub struct Daemon {
    child: Child,
    socket: PathBuf,
    out: PathBuf,
}

impl Daemon {
    pub fn show(&self, args: &[&str]) -> Value {
        let mut all = vec!["-f", "json"];
        all.extend_from_slice(args);
        let text = show_command(&self.socket, &all).expect("show answers");
        serde_json::from_str(&text).expect("show prints JSON")
    }

    pub fn client(&self, command: &str, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_rebuff"))
            .arg(command)
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run the client")
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn signal_hup(&self) {
        self.signal(rustix::process::Signal::HUP);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal the daemon");
    }

    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the daemon did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(mut self) -> String {
        self.signal(rustix::process::Signal::TERM);
        let status = self.wait();
        assert!(status.success(), "exit {status}:\n{}", self.output());
        self.output()
    }

    pub fn kill(mut self) {
        self.signal(rustix::process::Signal::KILL);
        self.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rebuff show -s SOCKET ARGS…`: stdout when it exits 0.
fn show_command(socket: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_rebuff"))
        .arg("show")
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .expect("run rebuff show");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn failed_login(ip: &str) -> String {
    format!("Nov 23 10:00:00 host sshd[42]: Failed password for root from {ip} port 22 ssh2")
}

/// A jail: ban at the 2nd match, unban an hour later (or `{after}`).
const JAIL: &str = concat!(
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
            after: {after}
"#
);

fn jail(site: &Site, after: &str) {
    site.config(&JAIL.replace("{after}", after));
}

#[test]
fn a_ban_runs_at_the_retry_th_match_and_show_lists_the_pending_unban() {
    let site = Site::new();
    jail(&site, "1h");
    let daemon = site.start();
    site.log_lines(&[failed_login("203.0.113.7")]);
    wait_until("the first match counted", || {
        daemon.show(&[])["ssh"]["failed"]["203.0.113.7"]["matches"] == 1
    });
    assert_eq!(site.count_action("ban 203.0.113.7"), 0);
    site.log_lines(&[failed_login("203.0.113.7")]);
    wait_until("the ban", || site.count_action("ban 203.0.113.7") == 1);
    let tree = daemon.show(&[]);
    let entry = &tree["ssh"]["failed"]["203.0.113.7"];
    assert!(entry.get("matches").is_none(), "{tree}");
    assert_eq!(entry["actions"]["unban"].as_array().map(Vec::len), Some(1));
    let out = daemon.stop();
    assert!(
        out.contains("INFO ssh: start [\"tail\", \"-n\", \"+1\", \"-F\""),
        "{out}"
    );
    assert_eq!(
        out.matches("INFO ssh.failed: match [\"203.0.113.7\"]\n")
            .count(),
        2,
        "{out}"
    );
    assert!(
        out.contains("INFO ssh.failed.ban: run [\"sh\" \"-c\" \"echo \\\"ban $1\\\" >> "),
        "{out}"
    );
    assert!(
        out.contains("INFO received SIGTERM, closing streams...\n"),
        "{out}"
    );
    for line in out.lines() {
        let level = line.split(' ').next().unwrap_or_default();
        assert!(
            ["DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "a line without a level: {line:?}"
        );
    }
}

#[test]
fn restart_runs_the_ban_again_and_keeps_the_pending_unban() {
    let site = Site::new();
    jail(&site, "1h");
    let daemon = site.start();
    site.log_lines(&[failed_login("198.51.100.4"), failed_login("198.51.100.4")]);
    wait_until("the ban", || site.count_action("ban 198.51.100.4") == 1);
    let before = daemon.show(&[])["ssh"]["failed"]["198.51.100.4"]["actions"]["unban"].clone();
    daemon.stop();
    assert_eq!(site.count_action("unban 198.51.100.4"), 0);

    // Restarted on an empty log (a real stream tails with -n0): only the
    // store can know the ban.
    site.truncate_log();
    let daemon = site.start();
    wait_until("the ban run again", || {
        site.count_action("ban 198.51.100.4") == 2
    });
    let after = daemon.show(&[])["ssh"]["failed"]["198.51.100.4"]["actions"]["unban"].clone();
    assert_eq!(before, after, "the unban keeps its time");
    daemon.stop();
    assert_eq!(site.count_action("unban 198.51.100.4"), 0);
}

#[test]
fn sigkill_during_a_flood_loses_no_trigger_whose_ban_ran() {
    let site = Site::new();
    site.config(
        &JAIL
            .replace("        retry: 2\n        retryperiod: 10m\n", "")
            .replace("{after}", "1h"),
    );
    let daemon = site.start();
    let lines: Vec<String> = (0..2000)
        .map(|i| failed_login(&format!("10.{}.{}.1", i / 250, i % 250)))
        .collect();
    site.log_lines(&lines);
    wait_until("some bans", || site.actions().len() >= 50);
    daemon.kill();
    let banned: Vec<String> = site
        .actions()
        .iter()
        .filter_map(|l| l.strip_prefix("ban "))
        .map(str::to_owned)
        .collect();
    assert!(!banned.is_empty());

    // Restarted on an empty log: only the store can know the bans.
    site.truncate_log();
    let daemon = site.start();
    let tree = daemon.show(&[]);
    let jailed = tree["ssh"]["failed"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for ip in &banned {
        assert!(
            jailed
                .get(ip)
                .is_some_and(|e| e["actions"]["unban"].is_array()),
            "{ip} was banned before the kill but is not restored"
        );
    }
    daemon.stop();
}

#[test]
fn flush_runs_the_unban_now_and_a_restart_does_not_resurrect_it() {
    let site = Site::new();
    jail(&site, "1h");
    let daemon = site.start();
    site.log_lines(&[
        failed_login("203.0.113.50"),
        failed_login("203.0.113.50"),
        failed_login("203.0.113.51"),
        failed_login("203.0.113.51"),
    ]);
    wait_until("two bans", || {
        site.count_action("ban 203.0.113.50") == 1 && site.count_action("ban 203.0.113.51") == 1
    });
    let flushed = daemon.client("flush", &["-f", "json", "ip=203.0.113.50"]);
    assert!(flushed.status.success(), "{flushed:?}");
    let flushed: Value = serde_json::from_slice(&flushed.stdout).expect("flush prints JSON");
    assert!(flushed["ssh"]["failed"]["203.0.113.50"]["actions"]["unban"].is_array());
    assert!(flushed["ssh"]["failed"].get("203.0.113.51").is_none());
    wait_until("the unban", || site.count_action("unban 203.0.113.50") == 1);
    daemon.stop();

    site.truncate_log();
    let daemon = site.start();
    wait_until("the other ban restored", || {
        site.count_action("ban 203.0.113.51") == 2
    });
    let tree = daemon.show(&[]);
    assert!(
        tree["ssh"]["failed"].get("203.0.113.50").is_none(),
        "{tree}"
    );
    assert!(
        tree["ssh"]["failed"].get("203.0.113.51").is_some(),
        "{tree}"
    );
    daemon.stop();
    assert_eq!(site.count_action("ban 203.0.113.50"), 1);
}

#[test]
fn a_stale_unban_timer_does_not_fire_after_a_flush_and_a_new_ban() {
    let site = Site::new();
    jail(&site, "2s");
    let daemon = site.start();
    daemon.client("trigger", &["ssh.failed", "ip=192.0.2.77"]);
    wait_until("the ban", || site.count_action("ban 192.0.2.77") == 1);
    daemon.client("flush", &["ip=192.0.2.77"]);
    wait_until("the flush's unban", || {
        site.count_action("unban 192.0.2.77") == 1
    });
    daemon.client("trigger", &["ssh.failed", "ip=192.0.2.77"]);
    wait_until("the second ban", || {
        site.count_action("ban 192.0.2.77") == 2
    });
    // The first timer was due 2 s after the first ban; the second one 2 s
    // after the second ban. Until the second is due, exactly one unban.
    wait_until("the second unban", || {
        site.count_action("unban 192.0.2.77") == 2
    });
    let actions = site.actions();
    let second_ban = actions
        .iter()
        .rposition(|l| l == "ban 192.0.2.77")
        .expect("second ban");
    let unbans_after_second_ban = actions[second_ban..]
        .iter()
        .filter(|l| *l == "unban 192.0.2.77")
        .count();
    assert_eq!(unbans_after_second_ban, 1, "{actions:?}");
    daemon.stop();
}

#[test]
fn oversized_and_invalid_utf8_lines_are_counted_and_matching_goes_on() {
    let site = Site::new();
    jail(&site, "1h");
    let daemon = site.start();
    let mut bytes = "x".repeat(200_000).into_bytes();
    bytes.extend_from_slice(b" Failed password for root from 192.0.2.200 port 1\n");
    bytes.extend_from_slice(b"\xff\xfe Failed password for r\xc3oot from 192.0.2.201 port 1\n");
    site.log_bytes(&bytes);
    site.log_lines(&[failed_login("192.0.2.201")]);
    wait_until("the ban despite the bad lines", || {
        site.count_action("ban 192.0.2.201") == 1
    });
    let out = daemon.stop();
    assert!(
        out.contains("WARN stream=ssh count=1 a line longer than 65536 bytes was cut"),
        "{out}"
    );
    assert!(
        out.contains("WARN stream=ssh count=1 a line is not valid UTF-8"),
        "{out}"
    );
    // The tail of the long line was never matched.
    assert_eq!(site.count_action("ban 192.0.2.200"), 0);
}

#[test]
fn a_dead_stream_is_reported_and_the_others_keep_working() {
    let site = Site::new();
    site.config(
        &JAIL.replace("{after}", "1h").replace(
            "streams:\n",
            "streams:\n  dying:\n    cmd: ['sh', '-c', 'echo going; exit 3']\n    filters:\n      never:\n        regex: ['never <ip>']\n  missing:\n    cmd: ['/nonexistent/rebuff-test-binary']\n    filters:\n      never:\n        regex: ['never <ip>']\n",
        ),
    );
    let daemon = site.start();
    wait_until("the dead stream reported", || {
        daemon
            .output()
            .contains("ERROR stream dying exited: its command returned exit code 3")
    });
    site.log_lines(&[failed_login("203.0.113.9"), failed_login("203.0.113.9")]);
    wait_until("the ban", || site.count_action("ban 203.0.113.9") == 1);
    let out = daemon.stop();
    assert!(
        out.contains(
            "ERROR could not execute stream missing cmd: [\"/nonexistent/rebuff-test-binary\"]: "
        ),
        "{out}"
    );
    assert!(
        !out.lines().any(|l| l == "going"),
        "child output leaked: {out}"
    );
}

#[test]
fn a_failing_start_command_stops_startup_with_its_output() {
    let site = Site::new();
    site.config(&JAIL.replace("{after}", "1h").replace(
        "patterns:",
        "start:\n  - ['true']\n  - ['sh', '-c', 'echo chain exists >&2; exit 4']\n  - ['touch', '{dir}/never']\npatterns:",
    ));
    let mut daemon = site.spawn_with(&[]);
    let status = daemon.wait();
    let out = daemon.output();
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("INFO start command: run [\"true\"]\n"),
        "{out}"
    );
    assert!(
        out.contains("ERROR start command: run [\"sh\", \"-c\", \"echo chain exists >&2; exit 4\"]: exit code: 4"),
        "{out}"
    );
    assert!(out.contains("chain exists"), "{out}");
    assert!(!site.path("never").exists());
}

#[test]
fn show_prints_the_reaction_tree_in_yaml_and_json_and_selects() {
    let site = Site::new();
    jail(&site, "1h");
    let daemon = site.start();
    site.log_lines(&[
        failed_login("203.0.113.1"),
        failed_login("2001:db8::5"),
        failed_login("2001:db8::5"),
    ]);
    wait_until("the ban", || site.count_action("ban 2001:db8::5") == 1);
    let yaml = show_command(&daemon.socket, &[]).expect("show");
    let unban_time = daemon.show(&[])["ssh"]["failed"]["2001:db8::5"]["actions"]["unban"][0]
        .as_str()
        .expect("a time")
        .to_owned();
    assert_eq!(
        yaml,
        format!(
            "ssh:\n  failed:\n    \"2001:db8::5\":\n      actions:\n        unban:\n          - \"{unban_time}\"\n    \"203.0.113.1\":\n      matches: 1\n"
        )
    );
    let only_v4 = daemon.show(&["ip=203\\..*"]);
    assert_eq!(
        only_v4,
        serde_json::json!({"ssh": {"failed": {"203.0.113.1": {"matches": 1}}}})
    );
    assert_eq!(
        daemon.show(&["-l", "ssh.failed", "ip=192.0.2.1"]),
        serde_json::json!({})
    );
    assert_eq!(
        show_command(&daemon.socket, &["ip=192.0.2.1"]).as_deref(),
        Some("{}\n")
    );
    let unknown = daemon.client("show", &["-l", "nope"]);
    assert!(!unknown.status.success());
    daemon.stop();
}

#[test]
fn show_max_prints_the_first_entries_and_tells_how_many_were_left_out() {
    let site = Site::new();
    jail(&site, "1h");
    let daemon = site.start();
    site.log_lines(&[
        failed_login("203.0.113.1"),
        failed_login("203.0.113.2"),
        failed_login("203.0.113.3"),
    ]);
    wait_until("three entries", || {
        daemon.show(&[])["ssh"]["failed"]
            .as_object()
            .is_some_and(|o| o.len() == 3)
    });
    let cut = daemon.client("show", &["--max", "2"]);
    assert!(cut.status.success(), "{cut:?}");
    assert_eq!(
        String::from_utf8_lossy(&cut.stdout),
        "ssh:\n  failed:\n    \"203.0.113.1\":\n      matches: 1\n    \"203.0.113.2\":\n      matches: 1\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&cut.stderr),
        "1 more entries left out by --max\n"
    );
    assert_eq!(
        daemon.show(&["-n", "1", "-l", "ssh.failed", "ip=203.0.113.3"]),
        serde_json::json!({"ssh": {"failed": {"203.0.113.3": {"matches": 1}}}})
    );
    // Nothing cut: nothing said.
    let whole = daemon.client("show", &["--max", "3"]);
    assert!(
        whole.status.success() && whole.stderr.is_empty(),
        "{whole:?}"
    );
    assert_eq!(daemon.show(&["-n", "0"]), serde_json::json!({}));
    let bad = daemon.client("show", &["--max", "-1"]);
    assert!(!bad.status.success());
    daemon.stop();
}

#[test]
fn trigger_bans_at_once_bypassing_retry_and_rejects_bad_values() {
    let site = Site::new();
    jail(&site, "1h");
    let daemon = site.start();
    let out = daemon.client("trigger", &["ssh.failed", "ip=::ffff:192.0.2.44"]);
    assert!(out.status.success(), "{out:?}");
    wait_until("the ban", || site.count_action("ban 192.0.2.44") == 1);
    let bad = daemon.client("trigger", &["ssh.failed", "user=root"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no pattern \"user\""));
    let bad = daemon.client("trigger", &["ssh.nope", "ip=192.0.2.1"]);
    assert!(!bad.status.success());
    daemon.stop();
}

#[test]
fn show_and_flush_quote_a_bad_value_regex_as_typed_with_its_reason() {
    let site = Site::new();
    jail(&site, "1h");
    let daemon = site.start();
    for command in ["show", "flush"] {
        let out = daemon.client(command, &["ip=192.0.2.(1"]);
        assert!(!out.status.success(), "{command}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "invalid regex for pattern ip: unclosed group\n    192.0.2.(1\n            ^\n"
            ),
            "{command}: {err}"
        );
        // The anchoring added inside the daemon does not show.
        assert!(!err.contains("(?:"), "{command}: {err}");
    }
    daemon.stop();
}

/// One request line on the control socket, as a client that is not
/// `rebuff` may send it; returns the raw answer.
fn raw_request(socket: &Path, line: &str) -> String {
    use std::io::Read;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    stream.write_all(line.as_bytes()).expect("send");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

#[test]
fn trigger_checks_every_value_against_its_patterns_regex_and_keeps_nothing_refused() {
    let site = Site::new();
    site.config(
        r#"
state_directory: {dir}/state
patterns:
  ip:
    type: ip
  user:
    regex: '\w+'
streams:
  ssh:
    cmd: ['tail', '-n', '+1', '-F', '{dir}/input.log']
    filters:
      failed:
        regex:
          - 'Failed password for <user> from <ip> port'
        actions:
          ban:
            cmd: ['sh', '-c', 'echo "ban $1 $2" >> {dir}/actions.log', 'sh', '<ip>', '<user>']
          unban:
            cmd: ['sh', '-c', 'echo "unban $1 $2" >> {dir}/actions.log', 'sh', '<ip>', '<user>']
            after: 1h
"#,
    );
    let daemon = site.start();

    let out = daemon.client("trigger", &["ssh.failed", "ip=192.0.2.9", "user=root\nx"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"user="root\nx" does not match the pattern's regex '\w+' as a whole"#),
        "{err}"
    );
    let out = daemon.client("trigger", &["ssh.failed", "ip=192.0.2.9", "user=ro ot"]);
    assert!(!out.status.success());
    let out = daemon.client("trigger", &["ssh.failed", "ip=192.0.2.300", "user=root"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"ip="192.0.2.300" is not an address of type ip"#),
        "{err}"
    );

    // A NUL cannot be typed on a command line, but any client may send one.
    for (user, ip) in [("ro\\u0000ot", "192.0.2.9"), ("root", "192.0.2.9\\u0000")] {
        let answer = raw_request(
            &daemon.socket,
            &format!(
                "{{\"version\":1,\"command\":\"trigger\",\"stream\":\"ssh\",\"filter\":\"failed\",\
                 \"patterns\":[[\"user\",\"{user}\"],[\"ip\",\"{ip}\"]]}}\n"
            ),
        );
        assert!(
            answer.contains("holds a NUL character, which no command argument can carry"),
            "{answer}"
        );
    }

    let out = daemon.client("trigger", &["ssh.failed", "ip=192.0.2.9", "user=root"]);
    assert!(out.status.success(), "{out:?}");
    wait_until("the ban", || site.count_action("ban 192.0.2.9 root") == 1);
    daemon.stop();

    // Nothing refused was kept: the restart re-runs the one accepted ban.
    let daemon = site.start();
    wait_until("the ban run again", || {
        site.count_action("ban 192.0.2.9 root") == 2
    });
    let tree = daemon.show(&[]);
    let keys: Vec<&String> = tree["ssh"]["failed"]
        .as_object()
        .expect("the accepted trigger")
        .keys()
        .collect();
    assert_eq!(keys, ["192.0.2.9 root"], "{tree}");
    let out = daemon.stop();
    assert!(!out.contains("ERROR"), "{out}");
}

#[test]
fn the_daemon_exits_when_every_stream_ends_after_onexit_and_stop_commands() {
    let site = Site::new();
    site.config(
        &JAIL
            .replace("{after}", "1h\n            onexit: true")
            .replace(
                "['tail', '-n', '+1', '-F', '{dir}/input.log']",
                "['cat', '{dir}/input.log']",
            )
            .replace(
                "patterns:",
                "stop:\n  - ['sh', '-c', 'echo stopped >> {dir}/actions.log']\npatterns:",
            ),
    );
    site.log_lines(&[failed_login("192.0.2.3"), failed_login("192.0.2.3")]);
    let mut daemon = site.spawn_with(&[]);
    let status = daemon.wait();
    let out = daemon.output();
    assert!(status.success(), "{out}");
    assert_eq!(
        site.actions(),
        vec!["ban 192.0.2.3", "unban 192.0.2.3", "stopped"],
        "{out}"
    );
    assert!(
        out.contains("INFO stop command: run [\"sh\", \"-c\""),
        "{out}"
    );
}

#[test]
fn a_second_daemon_on_the_same_state_is_refused() {
    let site = Site::new();
    jail(&site, "1h");
    let daemon = site.start();
    let second = Command::new(env!("CARGO_BIN_EXE_rebuff"))
        .args(["start", "-c"])
        .arg(site.path("config.yml"))
        .arg("-s")
        .arg(site.path("other.sock"))
        .output()
        .expect("run a second daemon");
    assert!(!second.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(text.contains("state"), "{text}");
    daemon.stop();
}

#[test]
fn show_fails_fast_when_no_daemon_listens() {
    let site = Site::new();
    let start = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_rebuff"))
        .arg("show")
        .arg("-s")
        .arg(site.path("nobody.sock"))
        .output()
        .expect("run show");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nobody.sock"));
    assert!(start.elapsed() < DEADLINE);
}

#[test]
fn an_action_past_its_timeout_is_killed_and_logged_as_failed() {
    let site = Site::new();
    site.config(&JAIL.replace("{after}", "1h").replace(
        "          ban:\n            cmd: ['sh', '-c', 'echo \"ban $1\" >> {dir}/actions.log', 'sh', '<ip>']\n",
        "          ban:\n            cmd: ['sleep', '30']\n            timeout: 300ms\n",
    ));
    let daemon = site.start();
    daemon.client("trigger", &["ssh.failed", "ip=192.0.2.30"]);
    wait_until("the killed action logged", || {
        daemon
            .output()
            .contains("ERROR ssh.failed.ban: action failed: exit code: 137 (timed out")
    });
    // Its `run` line came when it was handed over, and only once.
    assert_eq!(
        daemon
            .output()
            .matches("INFO ssh.failed.ban: run [\"sleep\" \"30\"]")
            .count(),
        1
    );
    daemon.stop();
}

#[test]
fn a_zero_action_timeout_is_a_config_error() {
    let site = Site::new();
    let config = site.config(&JAIL.replace("{after}", "1h\n            timeout: 0s"));
    let output = Command::new(env!("CARGO_BIN_EXE_rebuff"))
        .args(["test-config", "-c"])
        .arg(&config)
        .output()
        .expect("run test-config");
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(
            "streams.ssh.filters.failed.actions.unban.timeout: timeout must be more than 0"
        ),
        "{err}"
    );
}
