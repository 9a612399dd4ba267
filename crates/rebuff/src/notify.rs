//! systemd notifications: readiness, status, stopping and the watchdog.
//!
//! Owns nothing but a timer. Receives calls from the daemon at its turning
//! points and the shutdown token; sends `sd_notify(3)` datagrams to
//! `$NOTIFY_SOCKET`. Without that variable (not under systemd, or not
//! `Type=notify`) every function does nothing. A failed notification is
//! logged at DEBUG and never fatal: the daemon's job is banning, not
//! reporting to the service manager.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Startup is finished (`READY=1`): the streams are running and the control
/// socket answers.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// A configuration reload has begun (`RELOADING=1`); [`ready`] ends it.
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// Shutdown has begun (`STOPPING=1`).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A one-line status for `systemctl status` (`STATUS=…`).
pub fn status(text: &str) {
    send(&[NotifyState::Status(&one_line(text))]);
}

/// Pings the watchdog (`WATCHDOG=1`) every half of the interval systemd
/// asked for (`WatchdogSec=`), until `shutdown` is cancelled. Returns at
/// once when the watchdog is not enabled for this process.
///
/// The pings come from a tokio task, so they stop when the runtime stalls:
/// that is the hang the watchdog is there to catch.
pub async fn watchdog(shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    ping_every(interval / 2, &shutdown, || send(&[NotifyState::Watchdog])).await;
}

/// Calls `ping` at once, then every `period`, until `shutdown` is cancelled.
async fn ping_every(period: Duration, shutdown: &CancellationToken, mut ping: impl FnMut()) {
    // `interval` panics on a zero period.
    let mut ticks = tokio::time::interval(period.max(Duration::from_millis(1)));
    // After a stall, one ping now is enough; a burst to catch up says
    // nothing more to systemd.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => ping(),
        }
    }
}

/// The protocol is one `KEY=value` per line: a newline in a status would
/// start another assignment.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(error = %error, "could not notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Set in the child process the tests below start: environment
    /// variables are process-wide (and changing them needs `unsafe`), so
    /// `NOTIFY_SOCKET` is tested in a copy of this test binary.
    const CHILD_MODE: &str = "REBUFF_NOTIFY_TEST_CHILD";

    #[tokio::test(start_paused = true)]
    async fn pings_start_at_once_and_repeat_every_period_until_shutdown() {
        let pings = AtomicU32::new(0);
        let shutdown = CancellationToken::new();
        let pinger = ping_every(Duration::from_secs(10), &shutdown, || {
            pings.fetch_add(1, Ordering::Relaxed);
        });
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(25)).await;
            shutdown.cancel();
        };
        tokio::join!(pinger, stopper);
        // At 0 s, 10 s and 20 s.
        assert_eq!(pings.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_status_stays_one_line() {
        assert_eq!(one_line("replaying\nstate\r\u{0}"), "replaying state  ");
    }

    /// The child side of the tests below; does nothing in a normal run.
    #[test]
    fn child_process_sends_what_its_mode_asks() {
        let Ok(mode) = std::env::var(CHILD_MODE) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async {
            ready();
            status("replaying\nstate");
            let shutdown = CancellationToken::new();
            let dog = tokio::spawn(watchdog(shutdown.clone()));
            if mode == "watchdog" {
                // WATCHDOG_USEC=200000: pings at 0, 100 and 200 ms.
                tokio::time::sleep(Duration::from_millis(250)).await;
                shutdown.cancel();
            }
            // Without a watchdog this returns although never cancelled;
            // paused time makes a hang fail at once instead of waiting.
            tokio::time::timeout(Duration::from_secs(3600), dog)
                .await
                .unwrap_or_else(|_| panic!("the watchdog task did not end"))
                .unwrap_or_else(|e| panic!("{e}"));
            stopping();
        });
    }

    /// Runs [`child_process_sends_what_its_mode_asks`] in a child with
    /// `NOTIFY_SOCKET` pointing at a fresh socket; returns the datagrams.
    fn notifications_from_child(mode: &str, watchdog_usec: Option<&str>) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("{e}"));
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(exe);
        child
            .args([
                "--exact",
                "notify::tests::child_process_sends_what_its_mode_asks",
                "--test-threads=1",
            ])
            .env(CHILD_MODE, mode)
            .env("NOTIFY_SOCKET", &path)
            .env_remove("WATCHDOG_PID")
            .env_remove("WATCHDOG_USEC");
        if let Some(usec) = watchdog_usec {
            child.env("WATCHDOG_USEC", usec);
        }
        let output = child.output().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        socket
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut received = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = socket.recv(&mut buf) {
            received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        received
    }

    #[test]
    fn ready_status_watchdog_and_stopping_reach_the_notify_socket() {
        let received = notifications_from_child("watchdog", Some("200000"));
        assert_eq!(
            received,
            [
                "READY=1\n",
                "STATUS=replaying state\n",
                "WATCHDOG=1\n",
                "WATCHDOG=1\n",
                "WATCHDOG=1\n",
                "STOPPING=1\n",
            ]
        );
    }

    #[test]
    fn the_watchdog_returns_at_once_when_systemd_did_not_enable_it() {
        let received = notifications_from_child("no-watchdog", None);
        assert_eq!(
            received,
            ["READY=1\n", "STATUS=replaying state\n", "STOPPING=1\n"]
        );
    }
}
