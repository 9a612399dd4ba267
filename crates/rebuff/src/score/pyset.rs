//! A set of non-negative integers that iterates in the order CPython's `set`
//! does, so that a batch of ipset updates lists addresses in the order the
//! seed daemon (which keeps its pending updates in a Python `set` of ints)
//! sends them.
//!
//! The table follows CPython 3.11's open addressing: a power-of-two table of
//! at least 8 slots, `LINEAR_PROBES` neighbours inspected before jumping with
//! the perturbed recurrence, deleted slots left as dummies (the last dummy
//! seen on the probe path is reused by an insertion), a resize when the
//! filled slots reach 3/5 of the table, and `clear` back to 8 slots.
//! Iteration is slot order. The hash of a non-negative int is its value
//! modulo 2^61 − 1.

const MIN_SIZE: usize = 8;
const LINEAR_PROBES: usize = 9;
const PERTURB_SHIFT: u32 = 5;
const MODULUS: u128 = (1 << 61) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Unused,
    Dummy,
    Active(u128),
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct PySet {
    table: Vec<Slot>,
    /// Active and dummy slots.
    fill: usize,
    /// Active slots.
    used: usize,
}

impl Default for PySet {
    fn default() -> Self {
        Self::new()
    }
}

fn hash(key: u128) -> usize {
    (key % MODULUS) as usize
}

impl PySet {
    pub fn new() -> Self {
        Self {
            table: vec![Slot::Unused; MIN_SIZE],
            fill: 0,
            used: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.used
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    /// Adds `key`; nothing when it is present.
    pub fn insert(&mut self, key: u128) {
        let h = hash(key);
        let mask = self.mask();
        let mut i = h & mask;
        let mut perturb = h;
        let mut freeslot = None;
        loop {
            let probes = if i + LINEAR_PROBES <= mask {
                LINEAR_PROBES
            } else {
                0
            };
            for j in i..=i + probes {
                match self.table[j] {
                    Slot::Unused => {
                        if let Some(free) = freeslot {
                            self.table[free] = Slot::Active(key);
                            self.used += 1;
                            return;
                        }
                        self.table[j] = Slot::Active(key);
                        self.fill += 1;
                        self.used += 1;
                        if self.fill * 5 >= mask * 3 {
                            let minused = if self.used > 50_000 {
                                self.used * 2
                            } else {
                                self.used * 4
                            };
                            self.resize(minused);
                        }
                        return;
                    }
                    Slot::Active(k) if k == key => return,
                    Slot::Active(_) => {}
                    Slot::Dummy => freeslot = Some(j),
                }
            }
            perturb >>= PERTURB_SHIFT;
            i = (i.wrapping_mul(5).wrapping_add(1).wrapping_add(perturb)) & mask;
        }
    }

    fn resize(&mut self, minused: usize) {
        let mut size = MIN_SIZE;
        while size <= minused {
            size <<= 1;
        }
        let old = std::mem::replace(&mut self.table, vec![Slot::Unused; size]);
        self.fill = self.used;
        let mask = size - 1;
        for slot in old {
            if let Slot::Active(key) = slot {
                let h = hash(key);
                let mut i = h & mask;
                let mut perturb = h;
                'probe: loop {
                    let probes = if i + LINEAR_PROBES <= mask {
                        LINEAR_PROBES
                    } else {
                        0
                    };
                    for j in i..=i + probes {
                        if self.table[j] == Slot::Unused {
                            self.table[j] = Slot::Active(key);
                            break 'probe;
                        }
                    }
                    perturb >>= PERTURB_SHIFT;
                    i = (i.wrapping_mul(5).wrapping_add(1).wrapping_add(perturb)) & mask;
                }
            }
        }
    }

    /// Removes `key` when present, leaving a dummy slot.
    pub fn remove(&mut self, key: u128) {
        let h = hash(key);
        let mask = self.mask();
        let mut i = h & mask;
        let mut perturb = h;
        loop {
            let probes = if i + LINEAR_PROBES <= mask {
                LINEAR_PROBES
            } else {
                0
            };
            for j in i..=i + probes {
                match self.table[j] {
                    Slot::Unused => return,
                    Slot::Active(k) if k == key => {
                        self.table[j] = Slot::Dummy;
                        self.used -= 1;
                        return;
                    }
                    _ => {}
                }
            }
            perturb >>= PERTURB_SHIFT;
            i = (i.wrapping_mul(5).wrapping_add(1).wrapping_add(perturb)) & mask;
        }
    }

    pub fn contains(&self, key: u128) -> bool {
        self.table.contains(&Slot::Active(key))
    }

    /// Empties the set, back to the minimum table.
    pub fn clear(&mut self) {
        self.table.clear();
        self.table.resize(MIN_SIZE, Slot::Unused);
        self.table.shrink_to(MIN_SIZE);
        self.fill = 0;
        self.used = 0;
    }

    /// The keys in CPython's iteration order.
    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.table.iter().filter_map(|slot| match slot {
            Slot::Active(key) => Some(*key),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(set: &PySet) -> Vec<u128> {
        set.iter().collect()
    }

    #[test]
    fn small_ints_iterate_by_slot_then_resize_rehashes() {
        // In CPython: s = set(); for k in (59, 26, 46, 29): s.add(k) -> [26, 59, 29, 46]
        let mut set = PySet::new();
        for k in [59, 26, 46, 29] {
            set.insert(k);
        }
        assert_eq!(order(&set), [26, 59, 29, 46]);
        // The fifth distinct key resizes to 32 slots: [46, 21, 26, 59, 29].
        set.insert(21);
        assert_eq!(order(&set), [46, 21, 26, 59, 29]);
    }

    #[test]
    fn an_insertion_reuses_the_last_dummy_on_its_probe_path() {
        // CPython 3.11: s = {6, 14, 17, 22, 32, 40, 51, 52, 53, 54} with 53
        // and 54 discarded, then 53 added again lands after 22.
        let mut set = PySet::new();
        for k in [32, 40, 14, 17, 51, 52, 53, 22, 54, 6] {
            set.insert(k);
        }
        set.remove(53);
        set.remove(54);
        set.insert(53);
        let keys = order(&set);
        let at = |k| keys.iter().position(|&x| x == k).expect("present");
        assert!(at(22) < at(53), "{keys:?}");
    }

    #[test]
    fn clear_and_remove_of_absent_keys() {
        let mut set = PySet::new();
        set.remove(5);
        for k in 1..100 {
            set.insert(k * 7919);
        }
        assert_eq!(set.len(), 99);
        set.clear();
        assert!(set.is_empty());
        set.insert(3);
        assert!(set.contains(3));
        assert_eq!(order(&set), [3]);
    }
}
