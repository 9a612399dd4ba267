//! Pattern-labelled series: bounded tables of counts keyed by owner (a
//! filter, or a filter's action) and label values.
//!
//! Every distinct address is a series, so these tables are where an attack
//! could make rebuff grow. Each table holds at most `max` series; a new
//! series beyond that is not created, and the loss is counted (served as
//! `rebuff_metric_series_dropped_total`). Delta tables (the exporter's
//! "since the previous scrape" families) are emptied by each scrape;
//! cumulative ones forget series idle for longer than the configured time.
//! Lookups hash the borrowed labels, so counting an existing series never
//! allocates.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;

/// One series: whose it is, its label values, its count.
#[derive(Debug)]
pub struct Series {
    /// Global filter index, or global action index (the table's choice).
    pub owner: u32,
    /// One per pattern slot; `None` where the label is left out.
    pub labels: Box<[Option<Box<str>>]>,
    pub value: u64,
    /// Seconds (any monotonic origin) of the last count.
    pub touched: u64,
    hash: u64,
}

/// A bounded table of series.
#[derive(Debug)]
pub struct SeriesTable {
    max: usize,
    table: Mutex<Table>,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Table {
    series: HashTable<Series>,
    hasher: foldhash::fast::RandomState,
}

/// A locked table, to count a whole batch under one lock.
#[derive(Debug)]
pub struct Locked<'a> {
    table: std::sync::MutexGuard<'a, Table>,
    max: usize,
    dropped: &'a AtomicU64,
}

/// Label values in slot order, `None` where a label is left out; cloned
/// to be walked more than once, so nothing is collected per count.
pub trait Labels<'a>: ExactSizeIterator<Item = Option<&'a str>> + Clone {}
impl<'a, T: ExactSizeIterator<Item = Option<&'a str>> + Clone> Labels<'a> for T {}

/// No pattern label (a family with `extra: false`).
pub fn no_labels<'a>() -> std::iter::Empty<Option<&'a str>> {
    std::iter::empty()
}

/// Every value as its label.
pub fn raw<'a>(values: &'a [String]) -> impl Labels<'a> {
    values.iter().map(|v| Some(v.as_str()))
}

/// Rendered labels, as [`super::labels::LabelRules::render`] leaves them.
pub fn rendered<'a>(labels: &'a [Option<String>]) -> impl Labels<'a> {
    labels.iter().map(|l| l.as_deref())
}

fn hash_of<'a>(hasher: &foldhash::fast::RandomState, owner: u32, labels: impl Labels<'a>) -> u64 {
    let mut h = hasher.build_hasher();
    owner.hash(&mut h);
    for label in labels {
        match label {
            Some(value) => {
                1u8.hash(&mut h);
                value.hash(&mut h);
            }
            None => 0u8.hash(&mut h),
        }
    }
    h.finish()
}

fn same<'a>(series: &Series, owner: u32, labels: impl Labels<'a>) -> bool {
    series.owner == owner
        && series.labels.len() == labels.len()
        && series
            .labels
            .iter()
            .zip(labels)
            .all(|(a, b)| a.as_deref() == b)
}

impl Locked<'_> {
    /// Adds `n` to the series, creating it if the table has room. Returns
    /// false when it had to be dropped.
    pub fn add<'a>(&mut self, owner: u32, labels: impl Labels<'a>, n: u64, now: u64) -> bool {
        let table = &mut *self.table;
        let hash = hash_of(&table.hasher, owner, labels.clone());
        if let Some(series) = table
            .series
            .find_mut(hash, |s| s.hash == hash && same(s, owner, labels.clone()))
        {
            series.value += n;
            series.touched = now;
            return true;
        }
        if table.series.len() >= self.max {
            self.dropped.fetch_add(n.max(1), Ordering::Relaxed);
            return false;
        }
        let series = Series {
            owner,
            labels: labels.map(|l| l.map(Box::from)).collect(),
            value: n,
            touched: now,
            hash,
        };
        table.series.insert_unique(hash, series, |s| s.hash);
        true
    }
}

impl SeriesTable {
    pub fn new(max: usize) -> Self {
        SeriesTable {
            max,
            table: Mutex::new(Table::default()),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn lock(&self) -> Locked<'_> {
        Locked {
            table: self.table.lock().unwrap_or_else(|e| e.into_inner()),
            max: self.max,
            dropped: &self.dropped,
        }
    }

    /// Counts that could not get a series, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.lock().table.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties the table and returns what it held (a delta family's scrape).
    pub fn take(&self) -> Vec<Series> {
        let old = std::mem::take(&mut self.lock().table.series);
        old.into_iter().collect()
    }

    /// Forgets series untouched since `idle_before`, then calls `each` on
    /// every remaining one, under the lock (a cumulative family's scrape).
    pub fn visit(&self, idle_before: u64, mut each: impl FnMut(&Series)) {
        let mut locked = self.lock();
        locked.table.series.retain(|s| s.touched >= idle_before);
        for series in locked.table.series.iter() {
            each(series);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ip: &str) -> std::array::IntoIter<Option<&str>, 1> {
        [Some(ip)].into_iter()
    }

    #[test]
    fn counts_add_up_per_owner_and_labels() {
        let table = SeriesTable::new(10);
        {
            let mut t = table.lock();
            t.add(0, labels("1.2.3.4"), 1, 0);
            t.add(0, labels("1.2.3.4"), 2, 0);
            t.add(1, labels("1.2.3.4"), 1, 0);
            t.add(0, [None].into_iter(), 1, 0);
        }
        let mut taken = table.take();
        taken.sort_by_key(|s| (s.owner, s.value));
        let seen: Vec<(u32, u64)> = taken.iter().map(|s| (s.owner, s.value)).collect();
        assert_eq!(seen, vec![(0, 1), (0, 3), (1, 1)]);
        assert_eq!(table.len(), 0, "a take empties the table");
    }

    #[test]
    fn series_beyond_the_bound_are_dropped_and_counted() {
        let table = SeriesTable::new(2);
        let mut t = table.lock();
        assert!(t.add(0, labels("a"), 1, 0));
        assert!(t.add(0, labels("b"), 1, 0));
        assert!(!t.add(0, labels("c"), 3, 0));
        assert!(t.add(0, labels("a"), 1, 0), "existing series still count");
        drop(t);
        assert_eq!(table.dropped(), 3);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn idle_series_are_forgotten_at_the_next_visit() {
        let table = SeriesTable::new(10);
        {
            let mut t = table.lock();
            t.add(0, labels("old"), 1, 100);
            t.add(0, labels("new"), 1, 200);
        }
        let mut seen = Vec::new();
        table.visit(150, |s| seen.push(s.labels[0].clone()));
        assert_eq!(seen, vec![Some(Box::from("new"))]);
        assert_eq!(table.len(), 1);
    }
}
