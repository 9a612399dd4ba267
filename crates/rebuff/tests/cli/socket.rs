//! The control socket from the outside: where it goes by default (also when
//! invoked as `reaction`), what `start` does when it cannot be created, its
//! mode, and `show` under a crowd of idle connections.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::daemon::Site;
use super::stderr;

/// A stream that runs until stopped, and a start command that leaves a
/// mark: `start` must fail before either runs.
const CONFIG: &str = "
start:
  - ['touch', '{dir}/started']
patterns:
  ip:
    type: ip
streams:
  ssh:
    cmd: ['tail', '-F', '-n0', '{dir}/input.log']
    filters:
      failed:
        regex: ['Failed password for .* from <ip> port']
        actions:
          ban:
            cmd: ['true']
";

fn rebuff_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rebuff")
}

/// A `reaction` symlink to the binary, in `dir`.
fn reaction_link(dir: &Path) -> std::path::PathBuf {
    let link = dir.join("reaction");
    std::os::unix::fs::symlink(rebuff_bin(), &link).expect("symlink");
    link
}

/// Runs `program args…` in `cwd` as an unprivileged user: directly when
/// this process is not root, through `setpriv` as `nobody` when it is.
/// `None`, after printing why, when privileges cannot be dropped.
fn run_unprivileged(program: &Path, args: &[&str], cwd: &Path) -> Option<Output> {
    let mut command = if rustix::process::geteuid().is_root() {
        let nobody = 65534;
        if rustix::fs::chown(
            cwd,
            Some(rustix::process::Uid::from_raw(nobody)),
            Some(rustix::process::Gid::from_raw(nobody)),
        )
        .is_err()
        {
            eprintln!("skipped: cannot give the test directory to nobody");
            return None;
        }
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program);
        command
    } else {
        Command::new(program)
    };
    command.args(args).current_dir(cwd).stdin(Stdio::null());
    match command.output() {
        Ok(output) if output.status.code() == Some(127) => {
            eprintln!("skipped: setpriv could not run the binary as nobody");
            None
        }
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: `setpriv` is not installed (util-linux)");
            None
        }
        Err(e) => panic!("run {}: {e}", program.display()),
    }
}

/// Whether an unprivileged user could create `dir`'s socket anyway (then a
/// test about failing to is meaningless on this machine).
fn writable_by_anyone(dir: &str) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o002 != 0)
}

#[test]
fn start_as_a_user_without_the_default_socket_directory_fails_before_writing_state() {
    for (program, socket_dir) in [("rebuff", "/run/rebuff"), ("reaction", "/run/reaction")] {
        if writable_by_anyone(socket_dir) || writable_by_anyone("/run") {
            eprintln!("skipped: {socket_dir} is writable by anyone on this machine");
            return;
        }
        let site = Site::new();
        // Reachable by the unprivileged user.
        std::fs::set_permissions(site.path(""), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let work = site.path("work");
        std::fs::create_dir(&work).expect("mkdir");
        // No state_directory: reaction's default is the working directory.
        std::fs::write(
            work.join("config.yml"),
            CONFIG.replace("{dir}", &work.display().to_string()),
        )
        .expect("write config");
        let binary = match program {
            "reaction" => reaction_link(&site.path("")),
            _ => rebuff_bin().into(),
        };
        let Some(output) = run_unprivileged(&binary, &["start", "-c", "config.yml"], &work) else {
            return;
        };
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{program}: {err}");
        assert!(err.contains(socket_dir), "{program}: {err}");
        assert!(err.contains("-s PATH"), "{program}: {err}");
        let mut left: Vec<String> = std::fs::read_dir(&work)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["config.yml"],
            "{program} wrote into its working directory"
        );
    }
}

#[test]
fn start_with_a_socket_that_cannot_be_created_runs_nothing_and_writes_no_state() {
    let site = Site::new();
    let config = site.config(&format!("state_directory: {{dir}}/state\n{CONFIG}"));
    // A file where the socket's directory should be: even root cannot.
    std::fs::write(site.path("not-a-dir"), "").expect("write");
    let output = Command::new(rebuff_bin())
        .args(["start", "-c"])
        .arg(&config)
        .arg("-s")
        .arg(site.path("not-a-dir/rebuff.sock"))
        .stdin(Stdio::null())
        .output()
        .expect("run rebuff start");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot create the socket directory") && err.contains("-s PATH"),
        "{err}"
    );
    assert!(!site.path("state").exists(), "the state was written");
    assert!(!site.path("started").exists(), "a start command ran");
}

#[test]
fn invoked_as_reaction_the_clients_default_to_reactions_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reaction = reaction_link(dir.path());
    let socket = "/run/reaction/reaction.sock";
    if Path::new(socket).exists() {
        eprintln!("skipped: {socket} exists on this machine");
        return;
    }
    for command in ["show", "flush"] {
        let output = Command::new(&reaction)
            .arg(command)
            .output()
            .expect("run reaction");
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("cannot connect to the daemon at {socket}")),
            "{command}: {err}"
        );
    }
    let output = Command::new(&reaction)
        .args(["trigger", "ssh.failed", "ip=192.0.2.1"])
        .output()
        .expect("run reaction");
    assert!(stderr(&output).contains(socket), "{}", stderr(&output));
    let help = Command::new(&reaction)
        .args(["start", "--help"])
        .output()
        .expect("run reaction");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains(&format!("[default: {socket}]")),
        "{}",
        String::from_utf8_lossy(&help.stdout)
    );
    // Under its own name, rebuff keeps its own default.
    let output = Command::new(rebuff_bin())
        .arg("show")
        .output()
        .expect("run rebuff");
    assert!(
        stderr(&output).contains("/run/rebuff/rebuff.sock"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn show_answers_despite_two_hundred_idle_connections() {
    let site = Site::new();
    site.config(&format!("state_directory: {{dir}}/state\n{CONFIG}"));
    let daemon = site.start();
    let socket = site.path("rebuff.sock");
    // Created 0660 whatever the daemon's umask (here the test's).
    let meta = std::fs::metadata(&socket).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());

    let idle: Vec<std::os::unix::net::UnixStream> = (0..200)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).expect("connect"))
        .collect();
    let mut show = Command::new(rebuff_bin())
        .args(["show", "-f", "json", "-s"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rebuff show");
    // Idle clients used to hold every slot for 5 s, round after round
    // (15 s for 200): an answer must not wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = show.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = show.kill();
            panic!("show did not answer while 200 idle connections were open");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = show.wait_with_output().expect("output");
    assert!(status.success(), "{}", stderr(&output));
    let tree: serde_json::Value = serde_json::from_slice(&output.stdout).expect("show prints JSON");
    assert!(tree.is_object(), "{tree}");
    drop(idle);
    daemon.stop();
}
