//! [`ScoreBoard`]: weighted per-value scores for a filter with a `score`
//! block. Each match adds its regex's weight (negative allowed) to the
//! score of its values; the score never goes below the floor. Crossing
//! above the threshold is a trigger; falling back to or below it is a
//! fallback, for the actions marked to run then (an early unban). A value
//! idle for longer than the timeout starts again from 0 (dropped silently,
//! as the seed score daemon does); beyond `max_tracked` values the least
//! recently seen one is evicted, and counted. Every operation is O(1)
//! (expiry is amortised over the entries it drops).

use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::{Time, Values};

/// A filter's `score` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScorePlan {
    /// A score above this triggers.
    pub threshold: i64,
    /// The lowest score (at most the threshold).
    pub floor: i64,
    /// Milliseconds without a match after which a score is forgotten.
    pub timeout: Time,
    /// The most values tracked at once.
    pub max_tracked: usize,
}

/// What a weighted match did to a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// From at or below the threshold to above it: trigger.
    Above,
    /// From above the threshold back to it or below: fallback.
    Below,
}

/// The outcome of [`ScoreBoard::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreUpdate {
    pub before: i64,
    pub score: i64,
    pub crossing: Option<Crossing>,
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Entry {
    values: Values,
    score: i64,
    last_seen: Time,
    prev: u32,
    next: u32,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct ScoreBoard {
    plan: ScorePlan,
    index: HashMap<Values, u32, RandomState>,
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// Least recently seen first.
    head: u32,
    tail: u32,
    evicted: u64,
    expired: u64,
}

impl ScoreBoard {
    pub fn new(plan: ScorePlan) -> Self {
        ScoreBoard {
            plan,
            index: HashMap::default(),
            entries: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            evicted: 0,
            expired: 0,
        }
    }

    pub fn plan(&self) -> &ScorePlan {
        &self.plan
    }

    /// Values tracked now.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Values evicted by `max_tracked` so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Values forgotten after `timeout` so far.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// The current score of `values` at `now` (0 when unknown or idle).
    pub fn score(&self, values: &[String], now: Time) -> i64 {
        self.index
            .get(values)
            .map(|&i| &self.entries[i as usize])
            .filter(|e| !self.is_idle(e, now))
            .map_or(0, |e| e.score)
    }

    /// Whether `values` is above the threshold at `now`.
    pub fn is_above(&self, values: &[String], now: Time) -> bool {
        self.score(values, now) > self.plan.threshold
    }

    fn is_idle(&self, entry: &Entry, now: Time) -> bool {
        entry.last_seen.saturating_add(self.plan.timeout) <= now
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = (self.entries[i as usize].prev, self.entries[i as usize].next);
        match prev {
            NIL => self.head = next,
            p => self.entries[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.entries[n as usize].prev = prev,
        }
    }

    fn push_back(&mut self, i: u32) {
        self.entries[i as usize].prev = self.tail;
        self.entries[i as usize].next = NIL;
        match self.tail {
            NIL => self.head = i,
            t => self.entries[t as usize].next = i,
        }
        self.tail = i;
    }

    fn remove(&mut self, i: u32) -> Entry {
        self.unlink(i);
        let entry = std::mem::replace(
            &mut self.entries[i as usize],
            Entry {
                values: Box::new([]),
                score: 0,
                last_seen: 0,
                prev: NIL,
                next: NIL,
            },
        );
        self.index.remove(&entry.values);
        self.free.push(i);
        entry
    }

    /// Forgets the scores idle at `now`, oldest first.
    pub fn sweep(&mut self, now: Time) {
        while self.head != NIL && self.is_idle(&self.entries[self.head as usize], now) {
            self.remove(self.head);
            self.expired += 1;
        }
    }

    fn insert(&mut self, values: Values, score: i64, last_seen: Time) -> u32 {
        if self.plan.max_tracked == 0 {
            return NIL;
        }
        while self.index.len() >= self.plan.max_tracked {
            self.remove(self.head);
            self.evicted += 1;
        }
        let entry = Entry {
            values: values.clone(),
            score,
            last_seen,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.entries[i as usize] = entry;
                i
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        self.index.insert(values, i);
        self.push_back(i);
        i
    }

    /// Adds `weight` to the score of `values` at `now`.
    pub fn apply(&mut self, values: Values, weight: i64, now: Time) -> ScoreUpdate {
        self.sweep(now);
        let threshold = self.plan.threshold;
        let (before, i) = match self.index.get(&values) {
            Some(&i) => {
                self.unlink(i);
                self.push_back(i);
                (self.entries[i as usize].score, i)
            }
            None => (0, self.insert(values, 0, now)),
        };
        let score = self.plan.floor.max(before.saturating_add(weight));
        if i != NIL {
            let entry = &mut self.entries[i as usize];
            entry.score = score;
            entry.last_seen = now;
        }
        let crossing = match (before > threshold, score > threshold) {
            (false, true) => Some(Crossing::Above),
            (true, false) => Some(Crossing::Below),
            _ => None,
        };
        ScoreUpdate {
            before,
            score,
            crossing,
        }
    }

    /// Forgets `values` (flush); whether it was tracked.
    pub fn forget(&mut self, values: &[String]) -> bool {
        match self.index.get(values) {
            Some(&i) => {
                self.remove(i);
                true
            }
            None => false,
        }
    }

    /// Restores a persisted score (after a restart or reload); one idle at
    /// `now` or outside the floor is dropped or clamped.
    pub fn restore(&mut self, values: Values, score: i64, last_seen: Time, now: Time) {
        if last_seen.saturating_add(self.plan.timeout) <= now {
            return;
        }
        self.forget(&values);
        self.insert(values, score.max(self.plan.floor), last_seen);
    }

    /// Tracked values with their score and last match, least recently seen
    /// first (for `show` and the store).
    pub fn entries(&self) -> impl Iterator<Item = (&Values, i64, Time)> {
        let mut i = self.head;
        std::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let e = &self.entries[i as usize];
            i = e.next;
            Some((&e.values, e.score, e.last_seen))
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn v(s: &str) -> Values {
        vec![s.to_string()].into_boxed_slice()
    }

    fn board(max_tracked: usize) -> ScoreBoard {
        ScoreBoard::new(ScorePlan {
            threshold: 40,
            floor: -20,
            timeout: 600_000,
            max_tracked,
        })
    }

    #[test]
    fn five_failures_cross_and_a_success_in_between_delays_it() {
        let mut b = board(100);
        let ip = v("192.0.2.1");
        for n in 1..=4 {
            assert_eq!(b.apply(ip.clone(), 10, n).crossing, None);
        }
        assert_eq!(b.apply(ip.clone(), 10, 5).crossing, Some(Crossing::Above));
        let mut b = board(100);
        for n in 1..=2 {
            b.apply(ip.clone(), 10, n);
        }
        assert_eq!(b.apply(ip.clone(), -5, 3).score, 15);
        for n in 4..=5 {
            assert_eq!(b.apply(ip.clone(), 10, n).crossing, None);
        }
        // The fifth failure leaves 35: one more is needed.
        assert_eq!(b.apply(ip.clone(), 10, 6).crossing, Some(Crossing::Above));
        assert_eq!(b.apply(ip.clone(), -20, 8).crossing, Some(Crossing::Below));
    }

    #[test]
    fn floor_idle_timeout_and_eviction() {
        let mut b = board(2);
        assert_eq!(b.apply(v("a"), -100, 0).score, -20);
        assert_eq!(b.apply(v("a"), 30, 1).score, 10);
        assert_eq!(b.score(&v("a"), 600_001), 0, "idle: forgotten");
        b.apply(v("b"), 5, 2);
        b.apply(v("c"), 5, 3);
        assert_eq!(b.evicted(), 1);
        assert_eq!(b.score(&v("a"), 4), 0);
        assert_eq!(b.len(), 2);
        b.sweep(700_000);
        assert!(b.is_empty());
        assert_eq!(b.expired(), 2);
    }

    #[test]
    fn restore_and_entries() {
        let mut b = board(10);
        b.restore(v("a"), 55, 1_000, 2_000);
        b.restore(v("old"), 55, 0, 600_000);
        assert!(b.is_above(&v("a"), 2_000));
        assert_eq!(b.apply(v("a"), -15, 3_000).crossing, Some(Crossing::Below));
        let listed: Vec<_> = b.entries().map(|(v, s, t)| (v[0].clone(), s, t)).collect();
        assert_eq!(listed, [("a".to_string(), 40, 3_000)]);
        assert!(b.forget(&v("a")));
    }

    proptest! {
        /// The board against a plain model: a map of (score, last seen).
        #[test]
        fn board_matches_the_model(
            ops in proptest::collection::vec((0u8..6, -30i64..30, 0u64..400_000), 1..300),
            max_tracked in 1usize..8,
        ) {
            let mut b = board(max_tracked);
            let mut model: Vec<(Values, i64, Time)> = Vec::new();
            let mut now = 0;
            for (who, weight, after) in ops {
                now += after;
                let values = v(&who.to_string());
                model.retain(|(_, _, seen)| seen + 600_000 > now);
                let before = match model.iter().position(|(x, _, _)| *x == values) {
                    Some(i) => model.remove(i).1,
                    None => {
                        if model.len() >= max_tracked {
                            model.remove(0);
                        }
                        0
                    }
                };
                let score = (-20i64).max(before + weight);
                model.push((values.clone(), score, now));
                let update = b.apply(values, weight, now);
                prop_assert_eq!(update.before, before);
                prop_assert_eq!(update.score, score);
                let crossing = match (before > 40, score > 40) {
                    (false, true) => Some(Crossing::Above),
                    (true, false) => Some(Crossing::Below),
                    _ => None,
                };
                prop_assert_eq!(update.crossing, crossing);
                prop_assert_eq!(b.len(), model.len());
            }
        }
    }
}
