//! `rebuff score` against the seed score daemon itself: the same INI
//! rulesets, input and flags, the ipset calls recorded by a fake `ipset`
//! program and compared call by call (argv and stdin). The seed runs when
//! `python3` and `../shared/seeds/ipset-score-daemon.runnable.py` are
//! there; otherwise these tests print "skipped: …".

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The seed script, or `None` (with the reason printed).
fn seed() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/seeds/ipset-score-daemon.runnable.py");
    if !path.exists() {
        println!("skipped: the seed script {} is missing", path.display());
        return None;
    }
    let python = Command::new("python3").arg("--version").output();
    if !python.is_ok_and(|o| o.status.success()) {
        println!("skipped: python3 is not installed");
        return None;
    }
    Some(path)
}

fn rebuff_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rebuff"))
}

/// A fake `ipset` that appends its argv and stdin to `log`; it fails
/// (exit 1) when the argv contains `fail`.
fn fake_ipset(dir: &Path, log: &Path) -> PathBuf {
    let path = dir.join("fake-ipset");
    let script = format!(
        "#!/bin/sh\n{{ printf 'ARGV'; for a in \"$@\"; do printf ' %s' \"$a\"; done; printf '\\n'; /bin/cat; printf 'END\\n'; }} >> '{}'\ncase \"$*\" in *fail*) exit 1;; esac\nexit 0\n",
        log.display()
    );
    std::fs::write(&path, script).expect("write fake ipset");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// What one run left behind.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    calls: String,
    stderr: String,
}

/// Runs `program` (the seed or rebuff score) with `flags`, the ruleset
/// and the fake ipset; `input` goes to stdin once the daemon has had time
/// to do its first (empty) flush, so that the seed's flusher thread cannot
/// race the first lines.
fn run_one(program: &[PathBuf], dir: &Path, ruleset: &str, flags: &[&str], input: &str) -> Run {
    run_with_workers(program, dir, ruleset, flags, input, None)
}

/// [`run_one`], with `REBUFF_SCORE_WORKERS` set (rebuff's matching
/// threads; 0 matches on the reading thread).
fn run_with_workers(
    program: &[PathBuf],
    dir: &Path,
    ruleset: &str,
    flags: &[&str],
    input: &str,
    workers: Option<&str>,
) -> Run {
    let log = dir.join("calls.log");
    let _ = std::fs::remove_file(&log);
    let exe = fake_ipset(dir, &log);
    let rules = dir.join("rules.ini");
    std::fs::write(&rules, ruleset).expect("write ruleset");
    let mut command = Command::new(&program[0]);
    command.args(&program[1..]);
    if let Some(workers) = workers {
        command.env("REBUFF_SCORE_WORKERS", workers);
    }
    // `--input FILE` among the flags reads that file instead of stdin.
    if !flags.contains(&"--input") {
        command.args(["--input", "-"]);
    }
    command
        .arg("--ruleset")
        .arg(&rules)
        .arg("--ipset-exe")
        .arg(&exe)
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawns");
    std::thread::sleep(Duration::from_millis(400));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().expect("waits");
    let _ = writer.join();
    Run {
        code: output.status.code(),
        calls: std::fs::read_to_string(&log).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs both on the same ruleset, flags and input; asserts the same exit
/// code and the same ipset calls; returns rebuff's run.
fn compare(ruleset: &str, flags: &[&str], input: &str) -> Option<Run> {
    let seed = seed()?;
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = run_one(
        &[PathBuf::from("python3"), seed],
        dir.path(),
        ruleset,
        flags,
        input,
    );
    let mut last = None;
    // On the reading thread, and on two matching threads.
    for workers in ["0", "2"] {
        let actual = run_with_workers(
            &[rebuff_bin(), PathBuf::from("score")],
            dir.path(),
            ruleset,
            flags,
            input,
            Some(workers),
        );
        assert_eq!(
            actual.code, expected.code,
            "exit codes differ ({workers} workers)\nseed stderr:\n{}\nrebuff stderr:\n{}",
            expected.stderr, actual.stderr
        );
        assert_eq!(
            actual.calls, expected.calls,
            "ipset calls differ ({workers} workers)\nseed stderr:\n{}\nrebuff stderr:\n{}",
            expected.stderr, actual.stderr
        );
        last = Some(actual);
    }
    let actual = last?;
    Some(actual)
}

/// A small deterministic generator (xorshift), so inputs vary by seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Addresses of every kind the seed treats differently.
fn address(g: &mut Gen, public: usize) -> String {
    match g.below(20) {
        0 => "0.0.0.0".to_string(),
        1 => "10.1.2.3".to_string(),
        2 => "192.0.2.44".to_string(),
        3 => "100.64.7.1".to_string(),
        4 => "01.2.3.4".to_string(),
        5 => "2001:db8::1".to_string(),
        6 => "224.0.0.5".to_string(),
        _ => {
            let n = g.below(public) as u32 + 1;
            format!(
                "{}.{}.{}.{}",
                8 + n % 50,
                (n >> 3) % 256,
                (n * 7) % 256,
                n % 251 + 1
            )
        }
    }
}

fn sshd_log(g: &mut Gen, lines: usize, public: usize) -> String {
    let mut out = String::new();
    for _ in 0..lines {
        let ip = address(g, public);
        let user = g.pick(&["root", "admin", "bob", "Alice"]);
        let line = match g.below(8) {
            0..=3 => format!(
                "Dec  4 10:00:00 host sshd[{}]: Failed password for {user} from {ip} port 22 ssh2",
                g.below(9999)
            ),
            4 => format!(
                "Dec  4 10:00:00 host sshd[7]: Accepted publickey for {user} from {ip} port 22 ssh2"
            ),
            5 => format!("Dec  4 10:00:00 host sshd[7]: Invalid user {user} from {ip} port 4242"),
            6 => format!("Dec  4 10:00:00 host nginx: {ip} - - \"GET /wp-login.php HTTP/1.1\" 404"),
            _ => format!("Dec  4 10:00:00 host cron[1]: session opened for {user}"),
        };
        out.push_str(&line);
        out.push(if g.below(10) == 0 { '\r' } else { ' ' });
        out.push('\n');
    }
    out
}

/// DEFAULT inheritance, `%(x)s` and `%%`, `:` delimiters, comments,
/// continuation lines, templates (`$var`, `${var}`, `$$`, unknown names
/// kept), ignore_case, negated, defaults, disabled rules and rulesets,
/// `last` on rules and rulesets, scores of 0 and negative.
const FEATURES: &str = r"# the seed's dialect
[DEFAULT]
ip = (?P<address>[0-9a-f.:]+)
score: 0

[ruleset.web]
match = nginx: %(ip)s
score = 50
last = true

[ruleset.sshd]
match = sshd\[(?P<pid>\d+)\]:
; pre-match score inherited from DEFAULT (0)
[ruleset.sshd.failed]
match = Failed password for (?P<user>\S+) from %(ip)s port
score = 10
[ruleset.sshd.root]
target = ${user}@$pid $$HOME $nosuch
match = ^ROOT@
ignore_case = yes
score = 25
[ruleset.sshd.accepted]
match = Accepted \w+ for \S+ from %(ip)s
score = -15
[ruleset.sshd.not-invalid]
match = Invalid user
negated = true
defaults = kind = ssh
  extra=1
score: 1
[ruleset.sshd.invalid]
target = $kind/$line_kind
match = ^ssh/\$line_kind$
defaults = line_kind=x
score = 3
last = on
[ruleset.sshd.never]
match = .*
score = 1000
[ruleset.sshd.disabled]
match = (?P<address>.*)
score = 999
enabled = false

[ruleset.off]
match = .
score = 100
enabled = 0
[ruleset.off.r]
match = (?P<address>[0-9.]+)

[ruleset.invalid]
match = Invalid user \S+ from %(ip)s port (?P<port>\d+)$
score = 5
[ruleset.invalid.pct]
target = 100%%-$port
match = ^100%%-4242$
score = 2
";

#[test]
fn every_ruleset_feature_gives_the_seeds_calls() {
    for seed_value in [1u64, 2, 3] {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15 ^ seed_value);
        let input = sshd_log(&mut g, 600, 40);
        let Some(_) = compare(
            FEATURES,
            &[
                "--ipset",
                "bad",
                "--update-interval",
                "3600",
                "--score-threshold",
                "30",
                "--score-min",
                "-20",
            ],
            &input,
        ) else {
            return;
        };
    }
}

#[test]
fn exclude_local_limit_create_and_zero_threshold() {
    let mut g = Gen(77);
    let input = sshd_log(&mut g, 500, 30);
    let flag_sets: [&[&str]; 4] = [
        &[
            "--ipset",
            "bad",
            "--update-interval=3600",
            "--exclude-local",
        ],
        &[
            "--ipset",
            "bad",
            "--update-interval",
            "3600",
            "--score-limit",
            "5",
            "--ipset-create",
            "--ipset-create-maxelem",
            "0",
            "--ipset-create-timeout=-3",
        ],
        &[
            "--ipset",
            "bad",
            "--update-interval",
            "3600",
            "--score-timeout",
            "0",
        ],
        &[
            "--ipset",
            "bad",
            "--update-interval",
            "3600",
            "--score-min",
            "5",
            "--score-threshold",
            "2",
        ],
    ];
    for flags in flag_sets {
        if compare(FEATURES, flags, &input).is_none() {
            return;
        }
    }
}

#[test]
fn thousands_of_addresses_in_one_batch_keep_the_seeds_order() {
    let mut g = Gen(4242);
    let input = sshd_log(&mut g, 8000, 5000);
    compare(
        FEATURES,
        &[
            "--ipset",
            "many",
            "--update-interval",
            "3600",
            "--score-threshold",
            "15",
        ],
        &input,
    );
}

#[test]
fn one_update_is_a_single_call_and_none_is_no_call() {
    let one = "Dec  4 host sshd[1]: Failed password for bob from 203.0.113.9 port 22\n";
    compare(
        FEATURES,
        &["--ipset", "s", "--update-interval", "3600"],
        one,
    );
    compare(
        FEATURES,
        &["--ipset", "s", "--update-interval", "3600"],
        "nothing here\n",
    );
}

#[test]
fn errors_exit_as_the_seeds_do() {
    // A bad regex in a disabled rule, an unknown section, a bad int, a bad
    // boolean, a missing interpolation, a parse error: exit 1.
    for ruleset in [
        "[ruleset.a]\nmatch = x\n[ruleset.a.b]\nmatch = (\nenabled = false\n",
        "[ruleset.a]\nmatch = x\n[other]\n",
        "[ruleset.a]\nmatch = x\nscore = ten\n",
        "[ruleset.a]\nmatch = x\nlast = maybe\n",
        "[ruleset.a]\nmatch = %(nope)s\n",
        "[ruleset.a]\nmatch x\n",
        "[ruleset.a.b]\nmatch = x\n",
    ] {
        if compare(ruleset, &["--ipset", "s"], "").is_none() {
            return;
        }
    }
    // The set check fails: exit 1; usage errors: exit 2.
    compare(FEATURES, &["--ipset", "fail"], "");
    compare(FEATURES, &["--ipset", "s", "--score-min", "x"], "");
    compare(FEATURES, &["--ipset", "s", "--log-level", "trace"], "");
    compare(FEATURES, &["--ipset", "s", "--bogus"], "");
    // Dry run: not even the check.
    compare(
        FEATURES,
        &["--ipset", "fail", "--dry-run"],
        "Failed password for x from 8.8.8.8 port\n",
    );
}

#[test]
fn lookarounds_and_backreferences_are_load_errors_naming_the_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.ini");
    std::fs::write(
        &rules,
        "[ruleset.a]\nmatch = x\n[ruleset.a.ahead]\nmatch = foo(?=bar)\n",
    )
    .expect("write");
    let output = Command::new(rebuff_bin())
        .args([
            "score",
            "--input",
            "-",
            "--ipset",
            "s",
            "--dry-run",
            "--ruleset",
        ])
        .arg(&rules)
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("[ruleset.a.ahead] match") && stderr.contains("lookahead"),
        "{stderr}"
    );
    assert!(!stderr.contains("Traceback"));
}

#[test]
fn ipv6_goes_to_the_second_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = "Failed password for x from 2001:db8::7 port 22\nFailed password for y from 203.0.113.7 port 22\n";
    let run = run_one(
        &[rebuff_bin(), PathBuf::from("score")],
        dir.path(),
        "[ruleset.f]\nmatch = Failed password for \\S+ from (?P<address>[0-9a-f.:]+) port\nscore = 5\n",
        &[
            "--ipset",
            "v4",
            "--ipset6",
            "v6",
            "--ipset-create",
            "--update-interval",
            "3600",
        ],
        input,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.calls,
        "ARGV -exist create v4 hash:ip family inet maxelem 65536 timeout 300\nEND\n\
         ARGV -exist create v6 hash:ip family inet6 maxelem 65536 timeout 300\nEND\n\
         ARGV restore\n-exist add v4 203.0.113.7\n-exist add v6 2001:db8::7\nEND\n"
    );
}

/// Spawns `program` reading a FIFO (created by it) at debug level; the
/// lines of its stderr arrive on the receiver.
fn spawn_fifo(
    program: &[PathBuf],
    dir: &Path,
    fifo: &Path,
    exe: &Path,
) -> (Child, mpsc::Receiver<String>) {
    let rules = dir.join("rules.ini");
    std::fs::write(&rules, FEATURES).expect("write ruleset");
    let mut child = Command::new(&program[0])
        .args(&program[1..])
        .arg("--input")
        .arg(fifo)
        .args([
            "--input-create",
            "--ipset",
            "f",
            "--update-interval",
            "3600",
            "--log-level",
            "debug",
            "--ruleset",
        ])
        .arg(&rules)
        .arg("--ipset-exe")
        .arg(exe)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_for(rx: &mpsc::Receiver<String>, needle: &str) {
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(e) => panic!("no line with {needle:?}: {e}"),
        }
    }
}

fn fifo_run(program: &[PathBuf], dir: &Path) -> (Option<i32>, String) {
    let log = dir.join("calls.log");
    let _ = std::fs::remove_file(&log);
    let exe = fake_ipset(dir, &log);
    let fifo = dir.join("in.fifo");
    let _ = std::fs::remove_file(&fifo);
    let (mut child, rx) = spawn_fifo(program, dir, &fifo, &exe);
    wait_for(&rx, "Starting up");
    // Three writers in turn, each opening, writing and closing the FIFO.
    for (n, ip) in ["198.51.100.1", "8.8.4.4", "8.8.4.4"].iter().enumerate() {
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("open fifo");
        writeln!(
            writer,
            "sshd[{n}]: Failed password for root from {ip} port 22"
        )
        .expect("write");
        writeln!(writer, "writer {n} done").expect("write");
        drop(writer);
        wait_for(&rx, &format!("writer {n} done"));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("waits");
    (
        status.code(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[test]
fn a_fifo_survives_writers_coming_and_going_then_sigint_flushes() {
    let Some(seed) = seed() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = fifo_run(&[PathBuf::from("python3"), seed], dir.path());
    let actual = fifo_run(&[rebuff_bin(), PathBuf::from("score")], dir.path());
    assert_eq!(actual, expected);
    assert_eq!(actual.0, Some(0));
    assert!(actual.1.contains("-exist add f 8.8.4.4"), "{}", actual.1);
    // The FIFO was created, as a FIFO.
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(dir.path().join("in.fifo"))
        .expect("exists")
        .file_type();
    assert!(kind.is_fifo());
}

#[test]
fn an_interval_flush_sends_without_waiting_for_the_end_of_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls.log");
    let exe = fake_ipset(dir.path(), &log);
    let fifo = dir.path().join("in.fifo");
    let rules = dir.path().join("rules.ini");
    std::fs::write(&rules, FEATURES).expect("write ruleset");
    let mut child = Command::new(rebuff_bin())
        .arg("score")
        .arg("--input")
        .arg(&fifo)
        .args([
            "--input-create",
            "--ipset=s",
            "--update-interval=0.2",
            "--ruleset",
        ])
        .arg(&rules)
        .arg("--ipset-exe")
        .arg(&exe)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    // The FIFO exists once the daemon has opened it.
    while !fifo.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open fifo");
    writeln!(
        writer,
        "sshd[1]: Failed password for bob from 8.8.8.8 port 22"
    )
    .expect("write");
    // The FIFO stays open: only a periodic flush can send this.
    let mut calls = String::new();
    for _ in 0..600 {
        calls = std::fs::read_to_string(&log).unwrap_or_default();
        if calls.contains("ARGV -exist add s 8.8.8.8\nEND\n") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        calls.contains("ARGV -exist add s 8.8.8.8\nEND\n"),
        "{calls}"
    );
}

#[test]
fn help_exits_0_and_names_the_seed_flags() {
    let output = Command::new(rebuff_bin())
        .args(["score", "--help"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--input-create",
        "--ipset-create-maxelem",
        "--score-limit",
        "--ipset6",
        "--dry-run",
    ] {
        assert!(text.contains(flag), "{flag} in {text}");
    }
}

#[test]
fn a_file_input_reads_universal_newlines_as_the_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("input.log");
    // CRLF and lone CR end lines when the seed opens a path (not on stdin).
    std::fs::write(
        &path,
        "sshd[1]: Failed password for root from 8.8.8.8 port 22\r\nsshd[2]: Failed password for root from 8.8.4.4 port 22\rsshd[3]: Invalid user x from 9.9.9.9 port 4242\r",
    )
    .expect("write");
    let path = path.to_string_lossy().into_owned();
    compare(
        FEATURES,
        &[
            "--input",
            &path,
            "--ipset",
            "s",
            "--update-interval",
            "3600",
        ],
        "",
    );
}
