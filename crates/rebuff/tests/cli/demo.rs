//! The README's demo (`examples/live-demo.yml` on `examples/attack.sh`): it
//! must show bans and unbans while it runs. Run as it is (its pace is that
//! of its shell script): the first unban comes after about 30 s.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::Site;

#[test]
fn the_live_demo_bans_and_unbans_while_it_runs() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let config = std::fs::read_to_string(examples.join("live-demo.yml")).expect("read demo");
    let attack = examples.join("attack.sh");
    let edited = config
        .replace("'examples/attack.sh'", &format!("'{}'", attack.display()))
        .replace("127.0.0.1:9411", "127.0.0.1:0");
    assert!(edited.contains(&*attack.display().to_string()) && edited.contains(":0\n"));
    let site = Site::new();
    std::fs::write(site.path("live-demo.yml"), edited).expect("write");

    // As in the README: relative paths, from the directory it runs in.
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_rebuff"))
        .args([
            "start",
            "-c",
            "live-demo.yml",
            "-s",
            "demo-state/rebuff.sock",
        ])
        .current_dir(site.path(""))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let bans_log = site.path("demo-state/bans.log");
    let events = || -> Vec<(String, String)> {
        std::fs::read_to_string(&bans_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut words = line.split(' ').skip(1);
                Some((words.next()?.to_owned(), words.next()?.to_owned()))
            })
            .collect()
    };
    // The attackers stop: an unban comes while the demo still runs.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !events().iter().any(|(what, _)| what == "unban") {
        assert!(
            daemon.try_wait().expect("wait").is_none(),
            "the demo stopped"
        );
        assert!(
            Instant::now() < deadline,
            "no unban while the demo ran: {:?}",
            events()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = events();
    let (_, unbanned) = seen
        .iter()
        .find(|(what, _)| what == "unban")
        .expect("an unban");
    let banned_at = seen
        .iter()
        .position(|e| *e == ("ban".into(), unbanned.clone()))
        .expect("the ban before the unban");
    let unbanned_at = seen
        .iter()
        .position(|e| *e == ("unban".into(), unbanned.clone()))
        .expect("the unban");
    assert!(banned_at < unbanned_at, "{seen:?}");
    assert!(
        !seen.contains(&("rebuff".into(), "stopped".into())),
        "{seen:?}"
    );
    let pid = rustix::process::Pid::from_raw(daemon.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("stop the demo");
    let status = daemon.wait().expect("wait");
    assert!(status.success(), "{status}");
}
