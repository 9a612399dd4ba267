//! Compact pattern values: [`Key`], the values of one match as decision
//! state keeps them, and [`KeyMap`], a map from keys that costs a few bytes
//! of index per entry.
//!
//! A jail may hold a million addresses, so what is kept per address
//! matters. A value that an IPv4 or IPv6 address (or network, `addr/len`)
//! prints back to exactly is kept as its bytes, inline; anything else as
//! its text. Since the choice depends on the text alone, equal texts give
//! equal keys, and a key prints exactly the text it was made from.

use std::fmt;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr};

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use crate::Values;

/// The values of one match (or one value of it), compact: 24 bytes, and no
/// allocation for a single address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Key {
    V4([u8; 4]),
    V6([u8; 16]),
    /// An IPv4 network, `address/prefix`.
    Net4([u8; 4], u8),
    /// An IPv6 network, `address/prefix`.
    Net6([u8; 16], u8),
    /// Any other value, as written.
    Text(Box<str>),
    /// Several values (a filter with several patterns); never nested.
    Many(Box<[Key]>),
}

impl Key {
    /// The key of one value.
    pub fn from_value(value: &str) -> Key {
        Self::compact(value).unwrap_or_else(|| Key::Text(value.into()))
    }

    /// The key of one owned value (its text is reused when kept as text).
    pub fn from_string(value: String) -> Key {
        Self::compact(&value).unwrap_or_else(|| Key::Text(value.into_boxed_str()))
    }

    /// The key of the values of a match.
    pub fn from_values<S: AsRef<str>>(values: &[S]) -> Key {
        match values {
            [one] => Key::from_value(one.as_ref()),
            many => Key::Many(many.iter().map(|v| Key::from_value(v.as_ref())).collect()),
        }
    }

    /// An address or network that prints back to `value` exactly.
    fn compact(value: &str) -> Option<Key> {
        let bytes = value.as_bytes();
        // Cheap refusals first: most non-address values fail here.
        if bytes.len() < 2 || bytes.len() > 43 || !bytes[0].is_ascii_hexdigit() && bytes[0] != b':'
        {
            return None;
        }
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => {
                if prefix.is_empty()
                    || prefix.len() > 3
                    || (prefix.len() > 1 && prefix.starts_with('0'))
                {
                    return None;
                }
                (addr, Some(prefix.parse::<u8>().ok()?))
            }
            None => (addr_only(value)?, None),
        };
        let key = if let Ok(v4) = addr.parse::<Ipv4Addr>() {
            match prefix {
                None => Key::V4(v4.octets()),
                Some(p) if p <= 32 => Key::Net4(v4.octets(), p),
                Some(_) => return None,
            }
        } else if let Ok(v6) = addr.parse::<Ipv6Addr>() {
            match prefix {
                None => Key::V6(v6.octets()),
                Some(p) if p <= 128 => Key::Net6(v6.octets(), p),
                Some(_) => return None,
            }
        } else {
            return None;
        };
        // Only a value that prints back exactly (no leading zeros, lower
        // case, canonical IPv6 form) is kept as bytes.
        let mut text = Buf::default();
        key.write_one(&mut text).ok()?;
        (text.as_str() == value).then_some(key)
    }

    /// How many values.
    pub fn len(&self) -> usize {
        match self {
            Key::Many(values) => values.len(),
            _ => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values one by one (a single value is its own only part).
    pub fn parts(&self) -> &[Key] {
        match self {
            Key::Many(values) => values,
            one => std::slice::from_ref(one),
        }
    }

    /// The values as text, as the matcher made them.
    pub fn to_values(&self) -> Values {
        self.parts().iter().map(Key::to_string).collect()
    }

    /// Calls `f` with the text of value `slot`, without allocating for an
    /// address.
    pub fn with_text<R>(&self, slot: usize, f: impl FnOnce(&str) -> R) -> Option<R> {
        let part = self.parts().get(slot)?;
        if let Key::Text(text) = part {
            return Some(f(text));
        }
        let mut buf = Buf::default();
        part.write_one(&mut buf).ok()?;
        Some(f(buf.as_str()))
    }

    fn write_one(&self, f: &mut impl fmt::Write) -> fmt::Result {
        match self {
            Key::V4(a) => write!(f, "{}", Ipv4Addr::from(*a)),
            Key::V6(a) => write!(f, "{}", Ipv6Addr::from(*a)),
            Key::Net4(a, p) => write!(f, "{}/{p}", Ipv4Addr::from(*a)),
            Key::Net6(a, p) => write!(f, "{}/{p}", Ipv6Addr::from(*a)),
            Key::Text(text) => f.write_str(text),
            Key::Many(values) => {
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_char(' ')?;
                    }
                    value.write_one(f)?;
                }
                Ok(())
            }
        }
    }

    /// Orders keys as their values' texts do, value by value (as
    /// `Vec<String>` orders), without allocating for an address.
    pub fn cmp_text(&self, other: &Key) -> std::cmp::Ordering {
        let (a, b) = (self.parts(), other.parts());
        for (x, y) in a.iter().zip(b) {
            let ord = x.with_text(0, |x| y.with_text(0, |y| x.cmp(y)));
            match ord.flatten() {
                Some(std::cmp::Ordering::Equal) | None => {}
                Some(ord) => return ord,
            }
        }
        a.len().cmp(&b.len())
    }
}

/// The part of `value` before a `%zone`, refused: a zone is not kept.
fn addr_only(value: &str) -> Option<&str> {
    (!value.contains('%')).then_some(value)
}

/// Values joined by a space, as `show` prints a key.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_one(f)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// A stack buffer for the text of one address.
struct Buf {
    bytes: [u8; 64],
    len: usize,
}

impl Default for Buf {
    fn default() -> Self {
        Buf {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl Buf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A map from [`Key`]s whose entries live in one vector (a slab), indexed
/// by a hash table of 4-byte slots: an entry costs its key, its value and
/// about 10 bytes of index, where a `HashMap` bucket would be up to twice
/// the entry. Each entry keeps its slot until removed, so a slot number
/// can name an entry (check the entry is still the expected one: a freed
/// slot is reused).
#[derive(Clone)]
pub struct KeyMap<V> {
    index: HashTable<u32>,
    slots: Vec<Option<(Key, V)>>,
    free: Vec<u32>,
    hasher: RandomState,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hasher: RandomState::default(),
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for KeyMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> KeyMap<V> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn find(&self, key: &Key) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        self.index
            .find(hash, |&i| {
                slots[i as usize].as_ref().is_some_and(|(k, _)| k == key)
            })
            .copied()
    }

    /// Room for `additional` more entries without growing.
    pub fn reserve(&mut self, additional: usize) {
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.reserve(additional, |&j| {
            slots[j as usize]
                .as_ref()
                .map_or(0, |(k, _)| hasher.hash_one(k))
        });
        self.slots
            .reserve(additional.saturating_sub(self.free.len()));
    }

    /// The slot of `key`, if present.
    pub fn slot(&self, key: &Key) -> Option<u32> {
        self.find(key)
    }

    pub fn get(&self, key: &Key) -> Option<&V> {
        let i = self.find(key)?;
        self.slots[i as usize].as_ref().map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &Key) -> Option<&mut V> {
        let i = self.find(key)?;
        self.slots[i as usize].as_mut().map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        self.find(key).is_some()
    }

    /// The entry in `slot`, if one is there.
    pub fn at(&self, slot: u32) -> Option<(&Key, &V)> {
        self.slots.get(slot as usize)?.as_ref().map(|(k, v)| (k, v))
    }

    pub fn at_mut(&mut self, slot: u32) -> Option<(&Key, &mut V)> {
        self.slots
            .get_mut(slot as usize)?
            .as_mut()
            .map(|(k, v)| (&*k, v))
    }

    /// The value of `key`, inserted by `make` if absent; and its slot.
    pub fn get_or_insert_with(&mut self, key: &Key, make: impl FnOnce() -> V) -> (u32, &mut V) {
        let slot = match self.find(key) {
            Some(i) => i,
            None => self.insert_new(key.clone(), make()),
        };
        let value = self.slots[slot as usize]
            .as_mut()
            .map(|(_, v)| v)
            .expect("a slot found or just filled holds an entry");
        (slot, value)
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: Key, value: V) -> Option<V> {
        if let Some(i) = self.find(&key) {
            let slot = self.slots[i as usize].as_mut()?;
            return Some(std::mem::replace(&mut slot.1, value));
        }
        self.insert_new(key, value);
        None
    }

    fn insert_new(&mut self, key: Key, value: V) -> u32 {
        let hash = self.hasher.hash_one(&key);
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some((key, value));
                i
            }
            None => {
                self.slots.push(Some((key, value)));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 entries")
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, i, |&j| {
            slots[j as usize]
                .as_ref()
                .map_or(0, |(k, _)| hasher.hash_one(k))
        });
        i
    }

    pub fn remove(&mut self, key: &Key) -> Option<V> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        let entry = self
            .index
            .find_entry(hash, |&i| {
                slots[i as usize].as_ref().is_some_and(|(k, _)| k == key)
            })
            .ok()?;
        let (i, _) = entry.remove();
        self.free_slot(i).map(|(_, v)| v)
    }

    fn free_slot(&mut self, i: u32) -> Option<(Key, V)> {
        let taken = self.slots[i as usize].take();
        if self.index.is_empty() {
            // Empty again: give the memory back.
            self.slots = Vec::new();
            self.free = Vec::new();
        } else {
            self.free.push(i);
        }
        taken
    }

    /// Entries in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.slots.iter().flatten().map(|(k, v)| (k, v))
    }

    /// Entries with their slots, in slot order.
    pub fn iter_slots(&self) -> impl Iterator<Item = (u32, &Key, &V)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|(k, v)| (i as u32, k, v)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Key, &mut V)> {
        self.slots.iter_mut().flatten().map(|(k, v)| (&*k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.iter().map(|(k, _)| k)
    }

    /// One past the highest slot in use (for walking slots in pieces).
    pub fn slot_end(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Keeps the entries `keep` says yes to; shrinks the storage when
    /// most of it is free.
    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &mut V) -> bool) {
        let slots = &mut self.slots;
        let free = &mut self.free;
        self.index.retain(|&mut i| {
            let Some((k, v)) = slots[i as usize].as_mut() else {
                return false;
            };
            if keep(k, v) {
                return true;
            }
            slots[i as usize] = None;
            free.push(i);
            false
        });
        self.shrink_if_sparse();
    }

    /// Rebuilds a storage mostly free (after a sweep or a flush of most
    /// entries). Slots change: only where no slot number is kept.
    fn shrink_if_sparse(&mut self) {
        if self.slots.len() > 1024 && self.len() < self.slots.len() / 4 {
            let entries: Vec<(Key, V)> = std::mem::take(&mut self.slots)
                .into_iter()
                .flatten()
                .collect();
            *self = KeyMap {
                hasher: std::mem::take(&mut self.hasher),
                ..KeyMap::default()
            };
            for (k, v) in entries {
                self.insert_new(k, v);
            }
        }
    }

    /// Every entry, by value (the map is left empty).
    pub fn drain(&mut self) -> impl Iterator<Item = (Key, V)> + use<V> {
        let slots = std::mem::take(&mut self.slots);
        *self = KeyMap {
            hasher: std::mem::take(&mut self.hasher),
            ..KeyMap::default()
        };
        slots.into_iter().flatten()
    }
}

impl<V> IntoIterator for KeyMap<V> {
    type Item = (Key, V);
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Option<(Key, V)>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.slots.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> Key {
        let key = Key::from_value(text);
        assert_eq!(key.to_string(), text, "{text} prints back");
        assert_eq!(key.to_values().as_ref(), [text.to_string()]);
        assert_eq!(Key::from_string(text.to_string()), key);
        key
    }

    #[test]
    fn addresses_and_networks_are_kept_as_bytes_and_print_back() {
        assert!(matches!(round_trip("192.0.2.7"), Key::V4(_)));
        assert!(matches!(round_trip("0.0.0.0"), Key::V4(_)));
        assert!(matches!(round_trip("255.255.255.255"), Key::V4(_)));
        assert!(matches!(round_trip("2001:db8::1"), Key::V6(_)));
        assert!(matches!(round_trip("::"), Key::V6(_)));
        assert!(matches!(round_trip("::1"), Key::V6(_)));
        assert!(matches!(round_trip("::ffff:192.0.2.1"), Key::V6(_)));
        assert!(matches!(round_trip("fe80::1:2:3:4"), Key::V6(_)));
        assert!(matches!(round_trip("192.0.2.0/24"), Key::Net4(_, 24)));
        assert!(matches!(round_trip("192.0.2.7/32"), Key::Net4(_, 32)));
        assert!(matches!(round_trip("0.0.0.0/0"), Key::Net4(_, 0)));
        assert!(matches!(round_trip("2001:db8::/64"), Key::Net6(_, 64)));
        assert!(matches!(round_trip("2001:db8::1/128"), Key::Net6(_, 128)));
    }

    #[test]
    fn other_texts_are_kept_as_written() {
        for text in [
            "",
            "alice",
            "a b",
            "192.0.2",
            "192.000.2.7",
            "01.2.3.4",
            "2001:DB8::1",
            "2001:0db8::1",
            "2001:db8:0:0:0:0:0:1",
            "::FFFF:192.0.2.1",
            "192.0.2.0/33",
            "192.0.2.0/024",
            "192.0.2.0/",
            "2001:db8::/129",
            "fe80::1%eth0",
            "192.0.2.7 ",
            "deadbeef",
            "cafe",
            "1.2.3.4.5",
            "é192.0.2.1",
        ] {
            let key = round_trip(text);
            assert!(matches!(key, Key::Text(_)), "{text:?} is text: {key:?}");
        }
    }

    #[test]
    fn several_values_print_joined_by_a_space_and_in_order() {
        let values = ["192.0.2.7", "alice", "2001:db8::/48"];
        let key = Key::from_values(&values);
        assert_eq!(key.to_string(), "192.0.2.7 alice 2001:db8::/48");
        assert_eq!(key.len(), 3);
        assert_eq!(key.to_values().as_ref(), values.map(String::from));
        assert_eq!(key.with_text(1, str::to_owned), Some("alice".into()));
        assert_eq!(
            key.with_text(2, str::to_owned),
            Some("2001:db8::/48".into())
        );
        assert_eq!(key.with_text(3, str::to_owned), None);
        let none: [&str; 0] = [];
        assert_eq!(Key::from_values(&none).to_values().len(), 0);
        assert_eq!(Key::from_values(&["x"]), Key::from_value("x"));
    }

    #[test]
    fn a_key_is_small() {
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }

    #[test]
    fn text_order_compares_value_by_value() {
        let mut keys: Vec<Key> = ["9.0.0.1", "10.0.0.1", "2001:db8::1", "alice", "10.0.0.1/8"]
            .into_iter()
            .map(Key::from_value)
            .collect();
        keys.sort_by(Key::cmp_text);
        let texts: Vec<String> = keys.iter().map(Key::to_string).collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(texts, sorted);
        let a = Key::from_values(&["10.0.0.1", "b"]);
        let b = Key::from_values(&["9.0.0.1", "a"]);
        assert_eq!(a.cmp_text(&b), "10.0.0.1 b".cmp("9.0.0.1 a"));
    }

    #[test]
    fn a_map_inserts_finds_removes_and_reuses_slots() {
        let mut map = KeyMap::default();
        map.reserve(10);
        let a = Key::from_value("192.0.2.1");
        let b = Key::from_value("bob");
        assert_eq!(map.insert(a.clone(), 1), None);
        assert_eq!(map.insert(b.clone(), 2), None);
        assert_eq!(map.insert(a.clone(), 3), Some(1));
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&a), Some(&3));
        let slot = map.slot(&b).expect("b");
        assert_eq!(map.at(slot), Some((&b, &2)));
        assert_eq!(map.remove(&b), Some(2));
        assert_eq!(map.at(slot), None);
        assert_eq!(map.get(&b), None);
        let (again, value) = map.get_or_insert_with(&Key::from_value("carol"), || 7);
        assert_eq!((again, *value), (slot, 7));
        map.retain(|_, v| *v != 3);
        assert_eq!(map.len(), 1);
        assert_eq!(
            map.keys().map(Key::to_string).collect::<Vec<_>>(),
            ["carol"]
        );
        assert_eq!(map.remove(&Key::from_value("carol")), Some(7));
        assert!(map.is_empty());
    }

    #[test]
    fn a_sparse_map_shrinks_and_keeps_its_entries() {
        let mut map = KeyMap::default();
        for i in 0..5000u32 {
            map.insert(Key::V4(i.to_be_bytes()), i);
        }
        map.retain(|_, v| *v % 100 == 0);
        assert_eq!(map.len(), 50);
        assert!(map.slot_end() < 5000);
        for i in (0..5000u32).step_by(100) {
            assert_eq!(map.get(&Key::V4(i.to_be_bytes())), Some(&i));
        }
    }
}
