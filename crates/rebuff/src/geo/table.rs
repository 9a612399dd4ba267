//! A flat country table built from an MMDB tree at load: sorted address
//! ranges with their country, indexed by the first 16 bits.
//!
//! A tree walk is up to 32 (IPv4) or 128 (IPv6) dependent reads spread
//! over megabytes: on a database of real size most of them miss the CPU
//! caches, and a lookup costs microseconds. rebuff only ever asks for the
//! country, so at load the tree is flattened once into ranges of one
//! country (adjacent networks of the same country merged), and a lookup
//! is one read of the 16-bit index and a binary search among the few
//! ranges of that slot, usually within one or two cache lines.
//!
//! Building is bounded: a hostile tree (a DAG whose records share
//! children can describe exponentially many paths) stops the build after
//! a number of steps proportional to its node count, and the caller keeps
//! walking the tree instead. The table answers exactly what the tree walk
//! answers; a property test checks it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rebuff_engine::Country;

use super::mmdb::{Mmdb, Record};

/// Most ranges a table may hold (per family); past it, no table.
const MAX_RANGES: usize = 8 << 20;

/// Ranges of one family: `starts` sorted, each range running to the next
/// start; `index[p]` is the first range whose start is at or after prefix
/// `p` of the first 16 bits (one more slot at the end).
#[derive(Debug, Default)]
struct Ranges<T> {
    starts: Vec<T>,
    countries: Vec<u16>,
    index: Vec<u32>,
}

/// Countries by id; id 0 is "no country".
#[derive(Debug)]
pub struct CountryTable {
    v4: Ranges<u32>,
    v6: Option<Ranges<u128>>,
    countries: Vec<Option<Country>>,
}

/// A network's first address, its prefix length in its family, and the
/// country id.
struct Builder<'a> {
    db: &'a Mmdb,
    field: Vec<&'a str>,
    /// Leaf records to country ids; hashed with foldhash, as there is
    /// one lookup per leaf (millions in a city database).
    by_record: HashMap<Record, u16, foldhash::fast::RandomState>,
    /// The previous leaf's record: neighbouring networks often share it.
    last: Option<(Record, u16)>,
    countries: Vec<Option<Country>>,
    by_country: HashMap<Option<Country>, u16>,
    steps_left: u64,
}

impl Builder<'_> {
    fn country_id(&mut self, record: Option<Record>) -> u16 {
        let Some(record) = record else { return 0 };
        if let Some((last, id)) = self.last
            && last == record
        {
            return id;
        }
        if let Some(&id) = self.by_record.get(&record) {
            self.last = Some((record, id));
            return id;
        }
        let country = self
            .db
            .text_at(record, &self.field)
            .and_then(Country::from_code);
        let next = self.countries.len() as u16;
        let id = *self.by_country.entry(country).or_insert_with(|| {
            self.countries.push(country);
            next
        });
        self.by_record.insert(record, id);
        self.last = Some((record, id));
        id
    }

    /// Appends the ranges under `node` (reached after `depth` of `bits`
    /// bits, at address `base`), merging equal neighbours. False when the
    /// step budget ran out.
    fn walk(&mut self, start: u32, bits: u32, out: &mut (Vec<u128>, Vec<u16>)) -> bool {
        // (node or record value, depth, base address in the high bits)
        let mut stack: Vec<(u32, u32, u128)> = vec![(start, 0, 0)];
        while let Some((value, depth, base)) = stack.pop() {
            if self.steps_left == 0 {
                return false;
            }
            self.steps_left -= 1;
            if value < self.db.node_count() && depth < bits {
                // Right pushed first: the left half comes out first.
                let bit = 1u128 << (127 - depth);
                stack.push((self.db.child(value, 1), depth + 1, base | bit));
                stack.push((self.db.child(value, 0), depth + 1, base));
                continue;
            }
            let id = self.country_id(self.db.record_of(value));
            if out.1.last() == Some(&id) {
                continue;
            }
            if out.0.len() >= MAX_RANGES {
                return false;
            }
            out.0.push(base);
            out.1.push(id);
        }
        true
    }
}

fn index<T: Copy + Ord>(starts: &[T], slot_start: impl Fn(u32) -> T) -> Vec<u32> {
    let mut index = Vec::with_capacity(65_537);
    let mut i = 0;
    for p in 0..=65_536u32 {
        if p == 65_536 {
            index.push(starts.len() as u32);
            break;
        }
        let s = slot_start(p);
        while i < starts.len() && starts[i] < s {
            i += 1;
        }
        index.push(i as u32);
    }
    index
}

impl<T: Copy + Ord> Ranges<T> {
    /// The country id of `addr`, whose first 16 bits are `slot`.
    #[inline]
    fn find(&self, addr: T, slot: usize) -> u16 {
        let lo = self.index[slot] as usize;
        let hi = self.index[slot + 1] as usize;
        // The range holding `addr` is the last one starting at or before
        // it: among this slot's ranges, or the one before them.
        let within = &self.starts[lo..hi];
        let n = within.partition_point(|s| *s <= addr);
        let at = if n > 0 {
            lo + n - 1
        } else {
            lo.wrapping_sub(1)
        };
        self.countries.get(at).copied().unwrap_or(0)
    }
}

impl CountryTable {
    /// Flattens `db`'s tree for `field`; `None` when the tree is too large
    /// or too tangled to flatten within bounds.
    pub fn build(db: &Mmdb, field: &[String]) -> Option<CountryTable> {
        let mut b = Builder {
            db,
            field: field.iter().map(String::as_str).collect(),
            by_record: HashMap::default(),
            last: None,
            countries: vec![None],
            by_country: HashMap::from([(None, 0)]),
            steps_left: 16 * u64::from(db.node_count()) + 4096,
        };
        let mut v4 = (Vec::new(), Vec::new());
        if !b.walk(db.ipv4_start(), 32, &mut v4) {
            return None;
        }
        let v6 = if db.ip_version() == 6 {
            let mut v6 = (Vec::new(), Vec::new());
            if !b.walk(0, 128, &mut v6) {
                return None;
            }
            Some(v6)
        } else {
            None
        };
        if b.countries.len() > usize::from(u16::MAX) {
            return None;
        }
        let starts: Vec<u32> = v4.0.iter().map(|s| (s >> 96) as u32).collect();
        let v4 = Ranges {
            index: index(&starts, |p| p << 16),
            starts,
            countries: v4.1,
        };
        let v6 = v6.map(|(starts, countries)| Ranges {
            index: index(&starts, |p| u128::from(p) << 112),
            starts,
            countries,
        });
        Some(CountryTable {
            v4,
            v6,
            countries: b.countries,
        })
    }

    /// The country of `addr` (IPv4-mapped addresses as IPv4; an IPv6
    /// address in an IPv4 table has none).
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<Country> {
        let id = match addr {
            IpAddr::V4(v4) => self.find_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.find_v4(v4),
                None => self.find_v6(v6),
            },
        };
        self.countries.get(usize::from(id)).copied().flatten()
    }

    fn find_v4(&self, addr: Ipv4Addr) -> u16 {
        let a = u32::from(addr);
        self.v4.find(a, (a >> 16) as usize)
    }

    fn find_v6(&self, addr: Ipv6Addr) -> u16 {
        let Some(v6) = &self.v6 else { return 0 };
        let a = u128::from(addr);
        v6.find(a, (a >> 112) as usize)
    }

    /// Ranges held (IPv4, IPv6), for logs.
    pub fn len(&self) -> (usize, usize) {
        (
            self.v4.starts.len(),
            self.v6.as_ref().map_or(0, |r| r.starts.len()),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::mmdb::writer::{Value, Writer};
    use super::*;
    use proptest::prelude::*;

    fn tree_answer(db: &Mmdb, addr: IpAddr) -> Option<Country> {
        let record = db.lookup(addr)?;
        Country::from_code(db.text_at(record, &["country", "iso_code"])?)
    }

    fn sample_db(alias: bool, record_size: u16) -> Mmdb {
        let mut w = Writer::new(6, record_size);
        w.insert("192.0.2.0/24", Value::country_record("FR"));
        w.insert("192.0.3.0/24", Value::country_record("FR"));
        w.insert("10.0.0.0/8", Value::country_record("DE"));
        w.insert("10.1.2.3/32", Value::country_record("JP"));
        w.insert("0.0.0.0/1", Value::flat_record("XX"));
        w.insert("255.255.255.255/32", Value::country_record("US"));
        w.insert("2001:db8::/32", Value::city_record("JP"));
        w.insert("2001:db8:1::/48", Value::country_record("IT"));
        w.insert("ffff::/16", Value::country_record("BR"));
        if alias {
            w.alias_ipv4_mapped();
        }
        Mmdb::parse(w.build()).expect("valid")
    }

    fn field() -> Vec<String> {
        vec!["country".into(), "iso_code".into()]
    }

    #[test]
    fn the_table_answers_as_the_tree_at_range_edges() {
        for (alias, size) in [(false, 24), (true, 28), (true, 32)] {
            let db = sample_db(alias, size);
            let table = CountryTable::build(&db, &field()).expect("table");
            for addr in [
                "0.0.0.0",
                "9.255.255.255",
                "10.0.0.0",
                "10.1.2.2",
                "10.1.2.3",
                "10.1.2.4",
                "10.255.255.255",
                "11.0.0.0",
                "192.0.1.255",
                "192.0.2.0",
                "192.0.3.255",
                "192.0.4.0",
                "255.255.255.254",
                "255.255.255.255",
                "::",
                "::1",
                "::ffff:10.1.2.3",
                "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
                "2001:db8::",
                "2001:db8:1::5",
                "2001:db8:2::",
                "2001:db9::",
                "ffff::1",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ] {
                let addr: IpAddr = addr.parse().expect("addr");
                assert_eq!(table.lookup(addr), tree_answer(&db, addr), "{addr}");
            }
        }
    }

    #[test]
    fn a_tangled_tree_is_not_flattened_and_lookups_walk_it() {
        let mut w = Writer::new(6, 24);
        w.tangle(128, Value::country_record("FR"));
        let db = Mmdb::parse(w.build()).expect("valid shape");
        assert!(CountryTable::build(&db, &field()).is_none());
        let addr: IpAddr = "2001:db8::1".parse().expect("addr");
        assert_eq!(
            tree_answer(&db, addr).map(|c| c.to_string()).as_deref(),
            Some("FR")
        );
    }

    proptest! {
        #[test]
        fn the_table_answers_as_the_tree_anywhere(
            nets in prop::collection::vec((any::<u32>(), 1u32..=32, 0usize..4), 0..40),
            nets6 in prop::collection::vec((any::<u128>(), 1u32..=128, 0usize..4), 0..20),
            probes in prop::collection::vec(any::<u128>(), 50),
        ) {
            let codes = ["FR", "DE", "JP", "US"];
            let mut w = Writer::new(6, 28);
            let records: Vec<usize> = codes.iter().map(|c| w.shared(&Value::country_record(c))).collect();
            for (addr, len, c) in nets {
                let addr = Ipv4Addr::from(addr & (u32::MAX.checked_shl(32 - len).unwrap_or(0)));
                w.insert_at(&format!("{addr}/{len}"), records[c]);
            }
            for (addr, len, c) in nets6 {
                let addr = Ipv6Addr::from(addr & (u128::MAX.checked_shl(128 - len).unwrap_or(0)));
                if addr.to_ipv4_mapped().is_some() || u128::from(addr) >> 32 == 0 {
                    continue;
                }
                w.insert_at(&format!("{addr}/{len}"), records[c]);
            }
            let db = Mmdb::parse(w.build()).expect("valid");
            let table = CountryTable::build(&db, &field()).expect("table");
            for p in probes {
                for addr in [IpAddr::V6(Ipv6Addr::from(p)), IpAddr::V4(Ipv4Addr::from(p as u32))] {
                    prop_assert_eq!(table.lookup(addr), tree_answer(&db, addr), "{}", addr);
                }
            }
        }
    }
}
