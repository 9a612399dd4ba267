//! The state store under stress, end to end: restarts right after a
//! SIGKILL while children are being forked, and a state filesystem that is
//! full or read-only.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{DEADLINE, Site, wait_until};

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
/// later: the daemon forks children all the time.
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
"#;

#[test]
fn a_restart_right_after_a_sigkill_never_finds_the_state_in_use() {
    let site = Site::new();
    site.config(BUSY);
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
