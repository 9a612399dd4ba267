//! The seed's `ScoreCounter`: a score per address, a floor, "last seen"
//! order for expiry and the size limit (both applied at flush time, without
//! sending anything), and the set of addresses to push at the next flush.

use std::collections::HashMap;

use super::addr::Addr;
use super::pyset::PySet;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node {
    addr: Addr,
    score: i64,
    /// Seconds since the counter started.
    last_seen: f64,
    prev: u32,
    next: u32,
}

/// What a call to [`ScoreCounter::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Unspecified, or not global with `--exclude-local`.
    Ignored,
    /// The new score, and whether the address is now to be pushed.
    Scored { score: i64, dirty: bool },
}

/// See the module documentation.
#[derive(Debug)]
pub struct ScoreCounter {
    timeout: f64,
    floor: i64,
    limit: usize,
    exclude_local: bool,
    index: HashMap<Addr, u32, foldhash::fast::RandomState>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    dirty4: PySet,
    dirty6: PySet,
    /// Entries dropped by expiry or the size limit.
    pub evicted: u64,
}

impl ScoreCounter {
    /// `timeout` in seconds (negative is 0), `floor` the minimum score,
    /// `limit` the number of tracked addresses kept at a flush (negative
    /// is 0).
    pub fn new(timeout: f64, floor: i64, limit: i64, exclude_local: bool) -> Self {
        Self {
            timeout: if timeout > 0.0 { timeout } else { 0.0 },
            floor,
            limit: usize::try_from(limit.max(0)).unwrap_or(usize::MAX),
            exclude_local,
            index: HashMap::default(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            dirty4: PySet::new(),
            dirty6: PySet::new(),
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn score(&self, addr: Addr) -> Option<i64> {
        self.index.get(&addr).map(|&i| self.nodes[i as usize].score)
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn push_back(&mut self, i: u32) {
        self.nodes[i as usize].prev = self.tail;
        self.nodes[i as usize].next = NIL;
        if self.tail == NIL {
            self.head = i;
        } else {
            self.nodes[self.tail as usize].next = i;
        }
        self.tail = i;
    }

    fn dirty(&mut self, addr: Addr) -> &mut PySet {
        match addr {
            Addr::V4(_) => &mut self.dirty4,
            Addr::V6(_) => &mut self.dirty6,
        }
    }

    fn key(addr: Addr) -> u128 {
        match addr {
            Addr::V4(ip) => u128::from(ip),
            Addr::V6(ip) => ip,
        }
    }

    /// Adds `score` to `addr` at time `now` (seconds).
    pub fn add(&mut self, addr: Addr, score: i64, now: f64) -> Added {
        if addr.is_unspecified() || (self.exclude_local && !addr.is_global()) {
            return Added::Ignored;
        }
        let i = match self.index.get(&addr) {
            Some(&i) => {
                self.unlink(i);
                i
            }
            None => {
                let node = Node {
                    addr,
                    score: 0,
                    last_seen: now,
                    prev: NIL,
                    next: NIL,
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.nodes[i as usize] = node;
                        i
                    }
                    None => {
                        self.nodes.push(node);
                        (self.nodes.len() - 1) as u32
                    }
                };
                self.index.insert(addr, i);
                i
            }
        };
        self.push_back(i);
        let node = &mut self.nodes[i as usize];
        let old = node.score;
        let new = self.floor.max(old.saturating_add(score));
        node.score = new;
        node.last_seen = now;
        let dirty = old != new || score == 0;
        if dirty {
            self.dirty(addr).insert(Self::key(addr));
        }
        Added::Scored { score: new, dirty }
    }

    fn remove_front(&mut self) -> Option<(Addr, i64)> {
        let i = self.head;
        if i == NIL {
            return None;
        }
        self.unlink(i);
        let (addr, score) = {
            let n = &self.nodes[i as usize];
            (n.addr, n.score)
        };
        self.index.remove(&addr);
        self.free.push(i);
        self.dirty(addr).remove(Self::key(addr));
        self.evicted += 1;
        Some((addr, score))
    }

    /// Expiry then the size limit, oldest first; the dropped entries.
    pub fn maintain(&mut self, now: f64) -> Vec<(Addr, i64)> {
        let mut dropped = Vec::new();
        let limit = now - self.timeout;
        while self.head != NIL && self.nodes[self.head as usize].last_seen < limit {
            dropped.extend(self.remove_front());
        }
        while self.index.len() > self.limit {
            dropped.extend(self.remove_front());
        }
        if self.index.is_empty() {
            self.nodes.clear();
            self.nodes.shrink_to(1024);
            self.free.clear();
            self.free.shrink_to(1024);
        }
        dropped
    }

    /// The addresses to push with their scores, in the seed's order, and
    /// forgets them.
    pub fn take_updates(&mut self) -> Vec<(Addr, i64)> {
        let mut updates = Vec::with_capacity(self.dirty4.len() + self.dirty6.len());
        for key in self.dirty4.iter() {
            let addr = Addr::V4(key as u32);
            updates.push((addr, self.score(addr).unwrap_or(0)));
        }
        for key in self.dirty6.iter() {
            let addr = Addr::V6(key);
            updates.push((addr, self.score(addr).unwrap_or(0)));
        }
        self.dirty4.clear();
        self.dirty6.clear();
        updates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u32) -> Addr {
        Addr::V4(0x0800_0000 + n)
    }

    #[test]
    fn floor_zero_scores_and_dirty() {
        let mut c = ScoreCounter::new(300.0, -5, 100, false);
        assert_eq!(
            c.add(a(1), -10, 0.0),
            Added::Scored {
                score: -5,
                dirty: true
            }
        );
        assert_eq!(
            c.add(a(1), -1, 0.0),
            Added::Scored {
                score: -5,
                dirty: false
            }
        );
        assert_eq!(
            c.add(a(1), 0, 0.0),
            Added::Scored {
                score: -5,
                dirty: true
            }
        );
        assert_eq!(c.add(Addr::V4(0), 10, 0.0), Added::Ignored);
        assert_eq!(c.take_updates(), [(a(1), -5)]);
        assert!(c.take_updates().is_empty());
    }

    #[test]
    fn expiry_and_limit_drop_oldest_silently() {
        let mut c = ScoreCounter::new(10.0, 0, 2, false);
        c.add(a(1), 1, 0.0);
        c.add(a(2), 1, 5.0);
        c.add(a(3), 1, 6.0);
        c.add(a(1), 0, 7.0); // refreshed: now the newest
        let dropped = c.maintain(15.5);
        // a(2) expired (5 < 5.5); then 2 left: a(3), a(1) within the limit.
        assert_eq!(dropped, [(a(2), 1)]);
        assert_eq!(c.len(), 2);
        let dropped = c.maintain(16.5);
        assert_eq!(dropped, [(a(3), 1)]);
        let updates = c.take_updates();
        assert_eq!(updates, [(a(1), 1)]);
        assert_eq!(c.evicted, 2);
    }

    #[test]
    fn exclude_local() {
        let mut c = ScoreCounter::new(300.0, 0, 100, true);
        assert_eq!(c.add(Addr::V4(0x0a00_0001), 1, 0.0), Added::Ignored);
        assert!(matches!(c.add(a(1), 1, 0.0), Added::Scored { .. }));
    }
}

#[cfg(test)]
mod model {
    //! The scoring rules against a plain model: a map of scores, a list in
    //! last-seen order, a set of pending addresses.
    use std::collections::{BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Add { who: u8, score: i64, after: f64 },
        Flush { after: f64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..12, -20i64..20, 0.0f64..3.0).prop_map(|(who, score, after)| Op::Add { who, score, after }),
            1 => (0.0f64..3.0).prop_map(|after| Op::Flush { after }),
        ]
    }

    fn addr(who: u8) -> Addr {
        match who {
            0 => Addr::V4(0),
            1 => Addr::V4(0x0a00_0001), // 10.0.0.1
            w => Addr::V4(0x0808_0800 + u32::from(w)),
        }
    }

    proptest! {
        #[test]
        fn counter_matches_the_model(
            ops in proptest::collection::vec(op(), 1..200),
            floor in -30i64..5,
            timeout in 0.5f64..10.0,
            limit in 0i64..8,
            exclude_local: bool,
        ) {
            let mut counter = ScoreCounter::new(timeout, floor, limit, exclude_local);
            let mut scores: HashMap<Addr, i64> = HashMap::new();
            let mut order: Vec<(Addr, f64)> = Vec::new();
            let mut pending: BTreeSet<Addr> = BTreeSet::new();
            let mut now = 0.0;
            for op in ops {
                match op {
                    Op::Add { who, score, after } => {
                        now += after;
                        let a = addr(who);
                        let added = counter.add(a, score, now);
                        if who == 0 || (exclude_local && who == 1) {
                            prop_assert_eq!(added, Added::Ignored);
                            continue;
                        }
                        let old = scores.get(&a).copied().unwrap_or(0);
                        let new = floor.max(old + score);
                        scores.insert(a, new);
                        order.retain(|(x, _)| *x != a);
                        order.push((a, now));
                        let dirty = old != new || score == 0;
                        if dirty {
                            pending.insert(a);
                        }
                        prop_assert_eq!(added, Added::Scored { score: new, dirty });
                    }
                    Op::Flush { after } => {
                        now += after;
                        while order.first().is_some_and(|(_, seen)| *seen < now - timeout) {
                            let (a, _) = order.remove(0);
                            scores.remove(&a);
                            pending.remove(&a);
                        }
                        while order.len() > limit as usize {
                            let (a, _) = order.remove(0);
                            scores.remove(&a);
                            pending.remove(&a);
                        }
                        counter.maintain(now);
                        let updates: BTreeSet<(Addr, i64)> = counter.take_updates().into_iter().collect();
                        let expected: BTreeSet<(Addr, i64)> =
                            pending.iter().map(|a| (*a, scores[a])).collect();
                        prop_assert_eq!(updates, expected);
                        pending.clear();
                        prop_assert_eq!(counter.len(), scores.len());
                    }
                }
            }
        }
    }
}
