//! The progress bar `replay` draws on stderr when it is a terminal.
//!
//! [`Progress`] owns one status line:
//! `[=====>    ] 45%  123.4 MiB/274.0 MiB  2.1 M lines/s  ETA 0:12`, or, when
//! the total size is unknown (a pipe), `123.4 MiB  2.1 M lines/s`. It is fed
//! from the per-line loop, so [`Progress::update`] costs a counter decrement
//! on most calls: the clock is read every 1024 calls and the line redrawn at
//! most every 100 ms. Disabled, it does nothing at all.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// At 2 M lines/s this reads the clock every half millisecond: negligible,
/// yet frequent enough when lines are slow to come (a stalled pipe aside).
const CALLS_PER_CLOCK_CHECK: u32 = 1024;
/// At most ~10 redraws per second: smooth, and cheap for the terminal.
const REDRAW_INTERVAL: Duration = Duration::from_millis(100);
/// Width of the bar between the brackets; the whole line stays well under
/// 80 columns.
const BAR_WIDTH: usize = 20;

/// A progress line on stderr; see the module documentation.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    total_bytes: Option<u64>,
    started: Instant,
    last_draw: Instant,
    /// Calls left until the clock is read again.
    countdown: u32,
    /// Something is on the terminal line that `finish` must clear.
    drawn: bool,
    /// Reused for every redraw.
    text: String,
}

impl Progress {
    /// A progress line against `total_bytes` (the raw input size, when
    /// known). Pass `std::io::stderr().is_terminal()` as `enabled`: drawn
    /// into a file or a pipe it would only be noise.
    pub fn new(enabled: bool, total_bytes: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            enabled,
            total_bytes,
            started: now,
            // The first draw waits one interval, so that a replay that ends
            // at once draws nothing and rates are not computed over ~0 s.
            last_draw: now,
            countdown: CALLS_PER_CLOCK_CHECK,
            drawn: false,
            text: String::new(),
        }
    }

    /// Records that `bytes_done` bytes (out of `total_bytes`) and `lines`
    /// lines are done; redraws when it is time. Cheap enough per line.
    #[inline]
    pub fn update(&mut self, bytes_done: u64, lines: u64) {
        if !self.enabled {
            return;
        }
        self.countdown -= 1;
        if self.countdown != 0 {
            return;
        }
        self.countdown = CALLS_PER_CLOCK_CHECK;
        self.maybe_draw(bytes_done, lines);
    }

    /// Clears the progress line, leaving the terminal as it was. Safe to
    /// call more than once; also done on drop.
    pub fn finish(&mut self) {
        if !self.drawn {
            return;
        }
        self.drawn = false;
        let mut err = std::io::stderr().lock();
        // A progress line is best-effort: a stderr that fails is not a
        // reason to fail the replay.
        let _ = err.write_all(b"\r\x1b[K");
        let _ = err.flush();
    }

    #[cold]
    fn maybe_draw(&mut self, bytes_done: u64, lines: u64) {
        let now = Instant::now();
        if now.duration_since(self.last_draw) < REDRAW_INTERVAL {
            return;
        }
        self.last_draw = now;
        self.text.clear();
        self.text.push('\r');
        render(
            &mut self.text,
            bytes_done,
            self.total_bytes,
            lines,
            now.duration_since(self.started),
        );
        // Clears what a longer previous line left to the right.
        self.text.push_str("\x1b[K");
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(self.text.as_bytes());
        let _ = err.flush();
        self.drawn = true;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // So that an early return (an error) does not leave a half line for
        // the error message to be printed after.
        self.finish();
    }
}

/// Appends the progress text (without `\r` and clearing) to `out`.
fn render(out: &mut String, done: u64, total: Option<u64>, lines: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    if let Some(total) = total {
        let fraction = if total == 0 {
            1.0
        } else {
            (done as f64 / total as f64).clamp(0.0, 1.0)
        };
        let filled = (fraction * BAR_WIDTH as f64) as usize;
        out.push('[');
        for i in 0..BAR_WIDTH {
            out.push(match i.cmp(&filled) {
                std::cmp::Ordering::Less => '=',
                std::cmp::Ordering::Equal => '>',
                std::cmp::Ordering::Greater => ' ',
            });
        }
        let _ = write!(out, "] {:>3}%  ", (fraction * 100.0) as u32);
        push_bytes(out, done);
        out.push('/');
        push_bytes(out, total);
    } else {
        push_bytes(out, done);
    }
    out.push_str("  ");
    push_rate(
        out,
        if seconds > 0.0 {
            lines as f64 / seconds
        } else {
            0.0
        },
    );
    if let Some(total) = total
        && done > 0
        && seconds > 0.0
    {
        let remaining = total.saturating_sub(done) as f64 * seconds / done as f64;
        out.push_str("  ETA ");
        push_clock(out, remaining.round() as u64);
    }
}

/// `512 B`, `12.3 KiB`, `123.4 MiB`, `1.2 GiB`.
fn push_bytes(out: &mut String, bytes: u64) {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        let _ = write!(out, "{bytes} B");
        return;
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let _ = write!(out, "{value:.1} {}", UNITS[unit]);
}

/// `950 lines/s`, `12.3 k lines/s`, `2.1 M lines/s`.
fn push_rate(out: &mut String, per_second: f64) {
    let _ = if per_second >= 1e6 {
        write!(out, "{:.1} M lines/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        write!(out, "{:.1} k lines/s", per_second / 1e3)
    } else {
        write!(out, "{per_second:.0} lines/s")
    };
}

/// `m:ss`, or `h:mm:ss` from an hour on.
fn push_clock(out: &mut String, seconds: u64) {
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let _ = if hours > 0 {
        write!(out, "{hours}:{minutes:02}:{seconds:02}")
    } else {
        write!(out, "{minutes}:{seconds:02}")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn rendered(done: u64, total: Option<u64>, lines: u64, elapsed_ms: u64) -> String {
        let mut out = String::new();
        render(
            &mut out,
            done,
            total,
            lines,
            Duration::from_millis(elapsed_ms),
        );
        out
    }

    #[test]
    fn known_total_shows_bar_percent_sizes_rate_and_eta() {
        assert_eq!(
            rendered(MIB * 1234 / 10, Some(MIB * 274), 21_000_000, 10_000),
            "[=========>          ]  45%  123.4 MiB/274.0 MiB  2.1 M lines/s  ETA 0:12"
        );
    }

    #[test]
    fn unknown_total_shows_no_bar_and_no_eta() {
        assert_eq!(
            rendered(MIB * 5, None, 12_300, 1_000),
            "5.0 MiB  12.3 k lines/s"
        );
    }

    #[test]
    fn complete_and_overshooting_progress_is_a_full_bar() {
        assert_eq!(
            rendered(2048, Some(1024), 10, 1_000),
            "[====================] 100%  2.0 KiB/1.0 KiB  10 lines/s  ETA 0:00"
        );
        assert_eq!(
            rendered(0, Some(0), 0, 1_000),
            "[====================] 100%  0 B/0 B  0 lines/s"
        );
    }

    #[test]
    fn nothing_done_yet_shows_an_empty_bar_without_eta() {
        assert_eq!(
            rendered(0, Some(MIB), 0, 0),
            "[>                   ]   0%  0 B/1.0 MiB  0 lines/s"
        );
    }

    #[test]
    fn long_eta_is_shown_with_hours() {
        let mut out = String::new();
        push_clock(&mut out, 3 * 3600 + 5 * 60 + 7);
        assert_eq!(out, "3:05:07");
    }

    #[test]
    fn large_sizes_use_binary_units() {
        let mut out = String::new();
        push_bytes(&mut out, 3 * 1024 * MIB / 2);
        assert_eq!(out, "1.5 GiB");
    }

    #[test]
    fn disabled_progress_never_draws() {
        let mut progress = Progress::new(false, Some(100));
        progress.last_draw -= Duration::from_secs(1);
        for i in 0..10_000 {
            progress.update(i, i);
        }
        progress.finish();
        assert!(!progress.drawn);
        assert_eq!(progress.countdown, CALLS_PER_CLOCK_CHECK);
    }

    #[test]
    fn enabled_progress_reads_the_clock_only_every_n_calls() {
        let mut progress = Progress::new(true, Some(100));
        for i in 0..u64::from(CALLS_PER_CLOCK_CHECK) - 1 {
            progress.update(i, i);
        }
        assert_eq!(progress.countdown, 1);
        // The first check falls within the first interval: nothing drawn.
        progress.update(1, 1);
        assert_eq!(progress.countdown, CALLS_PER_CLOCK_CHECK);
        assert!(!progress.drawn);
    }
}
