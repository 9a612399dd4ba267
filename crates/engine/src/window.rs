//! Retry windows: how many recent matches each value has, per filter.
//!
//! A match counts while it is strictly younger than `retryperiod`. When a
//! value reaches `retry` counted matches, the window reports a trigger and
//! forgets that value's matches (they were used up by the trigger). Each
//! value keeps at most `retry` timestamps, so memory per value is bounded,
//! and expired values are swept in amortised O(1) per match. Keys are
//! attacker-chosen text, so the hasher is fast but randomly seeded.

use std::collections::VecDeque;

use crate::{Key, KeyMap, Time};

/// The retry window of one filter.
#[derive(Debug, Clone)]
pub struct RetryWindow {
    retry: usize,
    period: Time,
    entries: KeyMap<VecDeque<Time>>,
    records_since_sweep: usize,
    /// Records allowed before the next sweep: the size left by the last
    /// sweep (at least 1024), which makes sweeping amortised O(1).
    sweep_every: usize,
}

impl RetryWindow {
    /// `retry` matches within `period` milliseconds trigger. `retry <= 1`
    /// means every match triggers and nothing is stored.
    pub fn new(retry: u32, period: Time) -> Self {
        RetryWindow {
            retry: retry.max(1) as usize,
            period,
            entries: KeyMap::default(),
            records_since_sweep: 0,
            sweep_every: 1024,
        }
    }

    pub fn retry(&self) -> usize {
        self.retry
    }

    /// Records one match of `values` at `now`; returns true when it triggers.
    pub fn record(&mut self, values: &Key, now: Time) -> bool {
        if self.retry <= 1 {
            return true;
        }
        self.records_since_sweep += 1;
        if self.records_since_sweep > self.sweep_every {
            self.sweep(now);
        }
        let (_, times) = self.entries.get_or_insert_with(values, VecDeque::new);
        expire(times, now, self.period);
        times.push_back(now);
        if times.len() >= self.retry {
            self.entries.remove(values);
            return true;
        }
        false
    }

    /// How many matches of `values` still count at `now`.
    pub fn count(&self, values: &Key, now: Time) -> usize {
        self.entries
            .get(values)
            .map(|times| {
                times
                    .iter()
                    .filter(|&&t| is_live(t, now, self.period))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Forgets the matches of `values` (flush).
    pub fn forget(&mut self, values: &Key) -> bool {
        self.entries.remove(values).is_some()
    }

    /// Drops every value whose matches have all expired.
    pub fn sweep(&mut self, now: Time) {
        let period = self.period;
        self.entries.retain(|_, times| {
            expire(times, now, period);
            !times.is_empty()
        });
        self.records_since_sweep = 0;
        self.sweep_every = self.entries.len().max(1024);
    }

    /// Restores a persisted match time.
    pub fn restore(&mut self, values: &Key, time: Time) {
        if self.retry <= 1 {
            return;
        }
        let (_, times) = self.entries.get_or_insert_with(values, VecDeque::new);
        times.push_back(time);
        times.make_contiguous().sort_unstable();
        while times.len() >= self.retry {
            times.pop_front();
        }
    }

    /// Every value with counted matches, and their times.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &VecDeque<Time>)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// One past the highest slot of the entries (for walking them in
    /// pieces with [`RetryWindow::at`]; a sweep may move them).
    pub fn slot_end(&self) -> u32 {
        self.entries.slot_end()
    }

    /// The value in `slot` and how many of its matches count at `now`.
    pub fn at(&self, slot: u32, now: Time) -> Option<(&Key, usize)> {
        let (key, times) = self.entries.at(slot)?;
        let live = times
            .iter()
            .filter(|&&t| is_live(t, now, self.period))
            .count();
        Some((key, live))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A match at `t` counts at `now` while strictly younger than `period`. A
/// time after `now` (out-of-order log lines) counts as age zero.
fn is_live(t: Time, now: Time, period: Time) -> bool {
    now.saturating_sub(t) < period
}

fn expire(times: &mut VecDeque<Time>, now: Time, period: Time) {
    // Times are pushed in arrival order; out-of-order arrivals only make
    // the front check conservative, never drop a live match early.
    while let Some(&front) = times.front() {
        if is_live(front, now, period) {
            break;
        }
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Key {
        Key::from_value(s)
    }

    #[test]
    fn retry_matches_within_the_period_trigger_and_are_used_up() {
        let mut w = RetryWindow::new(3, 10_000);
        assert!(!w.record(&v("a"), 0));
        assert!(!w.record(&v("a"), 1_000));
        assert!(w.record(&v("a"), 9_999));
        assert_eq!(w.count(&v("a"), 9_999), 0);
        assert!(!w.record(&v("a"), 10_000));
    }

    #[test]
    fn a_match_exactly_retryperiod_old_no_longer_counts() {
        let mut w = RetryWindow::new(2, 10_000);
        assert!(!w.record(&v("a"), 0));
        assert!(!w.record(&v("a"), 10_000));
        assert!(w.record(&v("a"), 19_999));
    }

    #[test]
    fn values_are_counted_separately() {
        let mut w = RetryWindow::new(2, 10_000);
        assert!(!w.record(&v("a"), 0));
        assert!(!w.record(&v("b"), 1));
        assert!(w.record(&v("a"), 2));
    }

    #[test]
    fn without_retry_every_match_triggers_and_nothing_is_kept() {
        let mut w = RetryWindow::new(1, 0);
        assert!(w.record(&v("a"), 0));
        assert!(w.is_empty());
    }

    #[test]
    fn sweeping_bounds_memory_under_a_flood_of_distinct_values() {
        let mut w = RetryWindow::new(5, 1_000);
        for i in 0..100_000u64 {
            w.record(&v(&i.to_string()), i * 10);
        }
        assert!(w.len() < 2_200, "{}", w.len());
    }

    #[test]
    fn restore_keeps_fewer_than_retry_times() {
        let mut w = RetryWindow::new(3, 10_000);
        for t in [5, 1, 3] {
            w.restore(&v("a"), t);
        }
        assert_eq!(w.count(&v("a"), 6), 2);
        assert!(w.record(&v("a"), 7));
    }
}
