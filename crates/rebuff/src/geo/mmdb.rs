//! A reader of MaxMind DB (MMDB) files, written for hostile input.
//!
//! An MMDB file is a binary search tree over address bits, a 16-byte
//! separator, a data section of typed values, and a metadata map after the
//! marker `\xAB\xCD\xEFMaxMind.com`. rebuff only ever asks one question of
//! it: the text at one dotted path (`country.iso_code`) in the record of an
//! address. This reader answers that question and nothing more, with these
//! guarantees whatever the file holds:
//!
//! - it never panics and never reads outside the file (every read is a
//!   checked slice access);
//! - at [`Mmdb::parse`], every record of the tree is checked to point at a
//!   node, at "no data", or inside the data section, so a tree that points
//!   past its data is refused at load rather than discovered per lookup;
//! - one lookup does bounded work: at most 128 tree steps, and decoding
//!   stops after [`DECODE_BUDGET`] values, [`MAX_DEPTH`] nested containers
//!   or [`MAX_POINTER_HOPS`] pointer hops (a pointer loop or a deep nest
//!   gives "no value", not a hang or a stack overflow);
//! - sizes are checked against the bytes that remain before anything is
//!   skipped, so a huge declared size is an error, not an allocation.
//!
//! The whole file is read into memory (no `mmap`: the crate forbids
//! `unsafe`, and a file replaced on disk must not change under a reader).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The marker before the metadata map.
const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
/// The metadata must start within this many bytes of the end of the file.
const METADATA_WINDOW: usize = 128 * 1024;
/// The zero bytes between the search tree and the data section.
const SEPARATOR: usize = 16;
/// Most values one lookup may decode or skip.
pub const DECODE_BUDGET: u32 = 4096;
/// Most containers (maps, arrays) nested inside one another that a lookup
/// descends into.
pub const MAX_DEPTH: u32 = 32;
/// Most pointers followed in a row (the format allows one: a pointer to a
/// pointer is invalid).
pub const MAX_POINTER_HOPS: u32 = 4;
/// Largest database file read (the biggest public city databases take a
/// few hundred megabytes).
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// Why a file is not a usable MMDB database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmdbError {
    #[error("the file is empty")]
    Empty,
    #[error("not an MMDB database: no metadata marker in its last 128 KiB")]
    NoMetadata,
    #[error("the metadata is invalid: {0}")]
    Metadata(String),
    #[error(
        "the file is truncated: its search tree of {nodes} nodes needs {needed} bytes, only {have} are there"
    )]
    Truncated { nodes: u32, needed: u64, have: u64 },
    #[error(
        "the search tree points past the data section (node {node} holds {value}, the data section has {data_len} bytes)"
    )]
    PointsPastData {
        node: u32,
        value: u32,
        data_len: usize,
    },
    #[error("the separator after the search tree is not 16 zero bytes")]
    Separator,
}

/// A parsed database; lookups borrow it immutably, so one `Arc<Mmdb>` is
/// shared by every thread.
#[derive(Clone)]
pub struct Mmdb {
    bytes: Vec<u8>,
    node_count: u32,
    record_size: u16,
    ip_version: u16,
    /// Offset of the data section (after the separator).
    data_start: usize,
    /// Offset of the metadata marker: the data section ends there.
    data_end: usize,
    /// The record reached after the 96 zero bits of `::/96` in an IPv6
    /// tree (where IPv4 addresses live); the root in an IPv4 tree.
    ipv4_start: u32,
    database_type: String,
}

impl std::fmt::Debug for Mmdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmdb")
            .field("bytes", &self.bytes.len())
            .field("node_count", &self.node_count)
            .field("record_size", &self.record_size)
            .field("ip_version", &self.ip_version)
            .field("database_type", &self.database_type)
            .finish()
    }
}

/// Where a lookup landed: an offset in the data section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record(usize);

impl Mmdb {
    /// Parses and checks a whole database file's bytes.
    pub fn parse(bytes: Vec<u8>) -> Result<Mmdb, MmdbError> {
        if bytes.is_empty() {
            return Err(MmdbError::Empty);
        }
        let window_start = bytes.len().saturating_sub(METADATA_WINDOW);
        let marker = memchr::memmem::rfind(&bytes[window_start..], METADATA_MARKER)
            .map(|at| window_start + at)
            .ok_or(MmdbError::NoMetadata)?;
        let meta_start = marker + METADATA_MARKER.len();
        let meta = Metadata::decode(&bytes[meta_start..])?;
        if !matches!(meta.record_size, 24 | 28 | 32) {
            return Err(MmdbError::Metadata(format!(
                "record_size is {}, accepted: 24, 28 or 32",
                meta.record_size
            )));
        }
        if !matches!(meta.ip_version, 4 | 6) {
            return Err(MmdbError::Metadata(format!(
                "ip_version is {}, accepted: 4 or 6",
                meta.ip_version
            )));
        }
        // A node is two records: record_size * 2 bits = record_size / 4 bytes.
        let tree_bytes = u64::from(meta.node_count) * u64::from(meta.record_size) / 4;
        let needed = tree_bytes + SEPARATOR as u64;
        if needed > marker as u64 {
            return Err(MmdbError::Truncated {
                nodes: meta.node_count,
                needed,
                have: marker as u64,
            });
        }
        // Both fit in usize: they are below `marker`.
        let tree_bytes = tree_bytes as usize;
        if bytes[tree_bytes..tree_bytes + SEPARATOR]
            .iter()
            .any(|&b| b != 0)
        {
            return Err(MmdbError::Separator);
        }
        let mut db = Mmdb {
            bytes,
            node_count: meta.node_count,
            record_size: meta.record_size,
            ip_version: meta.ip_version,
            data_start: tree_bytes + SEPARATOR,
            data_end: marker,
            ipv4_start: 0,
            database_type: meta.database_type,
        };
        db.check_tree()?;
        db.ipv4_start = db.find_ipv4_start();
        Ok(db)
    }

    /// The metadata's `database_type` (e.g. `GeoLite2-Country`).
    pub fn database_type(&self) -> &str {
        &self.database_type
    }

    /// 4 for a database of IPv4 networks only, 6 otherwise.
    pub fn ip_version(&self) -> u16 {
        self.ip_version
    }

    pub fn node_count(&self) -> u32 {
        self.node_count
    }

    /// Every record must lead somewhere valid; checked once here so that a
    /// lookup can trust the tree's shape (it still checks every read).
    fn check_tree(&self) -> Result<(), MmdbError> {
        let data_len = self.data_end - self.data_start;
        let limit = u64::from(self.node_count) + SEPARATOR as u64 + data_len as u64;
        for node in 0..self.node_count {
            for side in 0..2 {
                let value = self.record(node, side);
                // `value - node_count - 16` is the offset in the data section.
                if u64::from(value) > u64::from(self.node_count)
                    && (u64::from(value) >= limit
                        || u64::from(value) < u64::from(self.node_count) + SEPARATOR as u64)
                {
                    return Err(MmdbError::PointsPastData {
                        node,
                        value,
                        data_len,
                    });
                }
            }
        }
        Ok(())
    }

    /// One record of a node (`side` 0 left, 1 right); 0 for a node outside
    /// the tree (never the case after `check_tree`, but reads stay checked).
    #[inline]
    fn record(&self, node: u32, side: usize) -> u32 {
        let b = &self.bytes;
        match self.record_size {
            24 => {
                let at = node as usize * 6 + side * 3;
                match b.get(at..at + 3) {
                    Some(r) => u32::from_be_bytes([0, r[0], r[1], r[2]]),
                    None => 0,
                }
            }
            28 => {
                let at = node as usize * 7;
                let Some(r) = b.get(at..at + 7) else { return 0 };
                if side == 0 {
                    u32::from_be_bytes([r[3] >> 4, r[0], r[1], r[2]])
                } else {
                    u32::from_be_bytes([r[3] & 0x0f, r[4], r[5], r[6]])
                }
            }
            _ => {
                let at = node as usize * 8 + side * 4;
                match b.get(at..at + 4) {
                    Some(r) => u32::from_be_bytes([r[0], r[1], r[2], r[3]]),
                    None => 0,
                }
            }
        }
    }

    /// One record of a node (`side` 0 left, 1 right), for walks outside
    /// this module.
    pub(crate) fn child(&self, node: u32, side: usize) -> u32 {
        self.record(node, side)
    }

    /// The node (or record value) where IPv4 addresses start.
    pub(crate) fn ipv4_start(&self) -> u32 {
        self.ipv4_start
    }

    /// The data record a record value points to, if it points to one.
    pub(crate) fn record_of(&self, value: u32) -> Option<Record> {
        if value <= self.node_count {
            return None;
        }
        ((value - self.node_count) as usize)
            .checked_sub(SEPARATOR)
            .map(Record)
    }

    fn find_ipv4_start(&self) -> u32 {
        if self.ip_version == 4 {
            return 0;
        }
        let mut node = 0;
        for _ in 0..96 {
            if node >= self.node_count {
                break;
            }
            node = self.record(node, 0);
        }
        node
    }

    /// The data record of `addr`, or `None` when the database has none (or
    /// cannot hold one: an IPv6 address in an IPv4 database). IPv4-mapped
    /// IPv6 addresses are looked up as IPv4, whether or not the database
    /// aliases `::ffff:0:0/96`.
    pub fn lookup(&self, addr: IpAddr) -> Option<Record> {
        let addr = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match addr {
            IpAddr::V4(v4) => self.walk(self.ipv4_start, u128::from(u32::from(v4)) << 96, 32),
            IpAddr::V6(v6) if self.ip_version == 6 => self.walk(0, u128::from(v6), 128),
            IpAddr::V6(_) => None,
        }
    }

    /// Shorthand for an IPv4 lookup.
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<Record> {
        self.lookup(IpAddr::V4(addr))
    }

    /// Shorthand for an IPv6 lookup.
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<Record> {
        self.lookup(IpAddr::V6(addr))
    }

    #[inline]
    fn walk(&self, start: u32, bits: u128, count: u32) -> Option<Record> {
        let mut node = start;
        let mut i = 0;
        while node < self.node_count && i < count {
            let bit = ((bits >> (127 - i)) & 1) as usize;
            node = self.record(node, bit);
            i += 1;
        }
        if node <= self.node_count {
            // The empty record, or bits ran out inside the tree.
            return None;
        }
        let offset = ((node - self.node_count) as usize).checked_sub(SEPARATOR)?;
        Some(Record(offset))
    }

    /// The text at `path` (map keys from the record's root) in `record`, or
    /// `None` when it is missing, not text, or the data is malformed.
    pub fn text_at<'a>(&'a self, record: Record, path: &[&str]) -> Option<&'a str> {
        let data = self.bytes.get(self.data_start..self.data_end)?;
        let mut decoder = Decoder {
            data,
            budget: DECODE_BUDGET,
        };
        let mut at = record.0;
        for key in path {
            at = decoder.map_value(at, key)?;
        }
        decoder.string(at)
    }
}

/// The fields of the metadata map rebuff needs.
#[derive(Debug, Default)]
struct Metadata {
    node_count: u32,
    record_size: u16,
    ip_version: u16,
    database_type: String,
}

impl Metadata {
    fn decode(data: &[u8]) -> Result<Metadata, MmdbError> {
        let bad = |why: &str| MmdbError::Metadata(why.to_owned());
        let mut d = Decoder {
            data,
            budget: DECODE_BUDGET,
        };
        let (kind, size, mut at) = d.head(0).ok_or_else(|| bad("cannot be decoded"))?;
        if kind != Kind::Map {
            return Err(bad("is not a map"));
        }
        let mut meta = Metadata::default();
        let (mut nodes, mut record, mut version) = (None, None, None);
        for _ in 0..size {
            let key = d.string(at).ok_or_else(|| bad("a key is not text"))?;
            let value = d
                .skip(at, 0)
                .ok_or_else(|| bad("a key cannot be decoded"))?;
            let next = d
                .skip(value, 0)
                .ok_or_else(|| bad("a value cannot be decoded"))?;
            match key {
                "node_count" => nodes = d.uint(value),
                "record_size" => record = d.uint(value),
                "ip_version" => version = d.uint(value),
                "database_type" => {
                    meta.database_type = d.string(value).unwrap_or_default().to_owned()
                }
                _ => {}
            }
            at = next;
        }
        let need = |v: Option<u64>, name: &str| {
            v.ok_or_else(|| MmdbError::Metadata(format!("{name} is missing or not a number")))
        };
        meta.node_count = u32::try_from(need(nodes, "node_count")?)
            .map_err(|_| bad("node_count is too large"))?;
        meta.record_size =
            u16::try_from(need(record, "record_size")?).map_err(|_| bad("bad record_size"))?;
        meta.ip_version =
            u16::try_from(need(version, "ip_version")?).map_err(|_| bad("bad ip_version"))?;
        Ok(meta)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pointer,
    String,
    Double,
    Bytes,
    Uint16,
    Uint32,
    Map,
    Int32,
    Uint64,
    Uint128,
    Array,
    Bool,
    Float,
}

/// Decodes values of one section; every offset is relative to `data`.
struct Decoder<'a> {
    data: &'a [u8],
    /// Values that may still be looked at.
    budget: u32,
}

impl<'a> Decoder<'a> {
    /// The kind, size and payload offset of the value at `at`. For a
    /// pointer, the size is the target offset.
    fn head(&mut self, at: usize) -> Option<(Kind, usize, usize)> {
        self.budget = self.budget.checked_sub(1)?;
        let ctrl = *self.data.get(at)?;
        let mut next = at + 1;
        let kind = match ctrl >> 5 {
            1 => {
                let ss = (ctrl >> 3) & 3;
                let vvv = u32::from(ctrl & 7);
                let take = usize::from(ss) + 1;
                let b = self.data.get(next..next + take)?;
                let target = match ss {
                    0 => (vvv << 8) | u32::from(b[0]),
                    1 => ((vvv << 16) | (u32::from(b[0]) << 8) | u32::from(b[1])) + 2048,
                    2 => {
                        ((vvv << 24) | (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8))
                            + u32::from(b[2])
                            + 526_336
                    }
                    _ => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                };
                return Some((Kind::Pointer, target as usize, next + take));
            }
            2 => Kind::String,
            3 => Kind::Double,
            4 => Kind::Bytes,
            5 => Kind::Uint16,
            6 => Kind::Uint32,
            7 => Kind::Map,
            0 => {
                let ext = *self.data.get(next)?;
                next += 1;
                match ext {
                    1 => Kind::Int32,
                    2 => Kind::Uint64,
                    3 => Kind::Uint128,
                    4 => Kind::Array,
                    7 => Kind::Bool,
                    8 => Kind::Float,
                    // 5 (data cache container), 6 (end marker) and
                    // anything else have no place in a record.
                    _ => return None,
                }
            }
            _ => return None,
        };
        let low = usize::from(ctrl & 0x1f);
        let size = match low {
            0..=28 => low,
            29 => 29 + usize::from(*self.data.get(next)?),
            30 => {
                let b = self.data.get(next..next + 2)?;
                285 + usize::from(u16::from_be_bytes([b[0], b[1]]))
            }
            _ => {
                let b = self.data.get(next..next + 3)?;
                65_821 + (usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
            }
        };
        next += match low {
            29 => 1,
            30 => 2,
            31 => 3,
            _ => 0,
        };
        let fixed = match kind {
            Kind::Double => Some(8),
            Kind::Float => Some(4),
            _ => None,
        };
        let max = match kind {
            Kind::Uint16 => Some(2),
            Kind::Uint32 | Kind::Int32 => Some(4),
            Kind::Uint64 => Some(8),
            Kind::Uint128 => Some(16),
            _ => None,
        };
        if fixed.is_some_and(|f| f != size) || max.is_some_and(|m| size > m) {
            return None;
        }
        Some((kind, size, next))
    }

    /// Follows pointers from `at` to a value that is not one.
    fn resolve(&mut self, mut at: usize) -> Option<(Kind, usize, usize)> {
        for _ in 0..=MAX_POINTER_HOPS {
            let (kind, size, next) = self.head(at)?;
            if kind != Kind::Pointer {
                return Some((kind, size, next));
            }
            at = size;
        }
        None
    }

    /// The offset just past the value at `at` (a pointer is skipped, not
    /// followed).
    fn skip(&mut self, at: usize, depth: u32) -> Option<usize> {
        let (kind, size, next) = self.head(at)?;
        let end = match kind {
            Kind::Pointer | Kind::Bool => next,
            Kind::Map | Kind::Array => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                let items = if kind == Kind::Map {
                    size.checked_mul(2)?
                } else {
                    size
                };
                // Each item takes at least one byte and one unit of budget.
                if items > self.data.len() - next.min(self.data.len()) {
                    return None;
                }
                let mut at = next;
                for _ in 0..items {
                    at = self.skip(at, depth + 1)?;
                }
                at
            }
            _ => next.checked_add(size)?,
        };
        (end <= self.data.len()).then_some(end)
    }

    /// Text, through pointers.
    fn string(&mut self, at: usize) -> Option<&'a str> {
        let (kind, size, next) = self.resolve(at)?;
        if kind != Kind::String {
            return None;
        }
        let bytes = self.data.get(next..next.checked_add(size)?)?;
        std::str::from_utf8(bytes).ok()
    }

    /// An unsigned integer of any width, through pointers.
    fn uint(&mut self, at: usize) -> Option<u64> {
        let (kind, size, next) = self.resolve(at)?;
        if !matches!(
            kind,
            Kind::Uint16 | Kind::Uint32 | Kind::Uint64 | Kind::Uint128
        ) {
            return None;
        }
        let bytes = self.data.get(next..next + size)?;
        let mut value: u128 = 0;
        for &b in bytes {
            value = (value << 8) | u128::from(b);
        }
        u64::try_from(value).ok()
    }

    /// The offset of the value under `key` in the map at `at`.
    fn map_value(&mut self, at: usize, key: &str) -> Option<usize> {
        let (kind, size, mut entry) = self.resolve(at)?;
        if kind != Kind::Map {
            return None;
        }
        for _ in 0..size {
            let found = self.string(entry)? == key;
            let value = self.skip(entry, 0)?;
            if found {
                return Some(value);
            }
            entry = self.skip(value, 0)?;
        }
        None
    }
}

#[cfg(test)]
#[path = "../../tests/support/mmdb_writer.rs"]
pub(crate) mod writer;

#[cfg(test)]
mod tests {
    use super::writer::{Value, Writer};
    use super::*;

    fn country(code: &str) -> Value {
        Value::map([("country", Value::map([("iso_code", Value::str(code))]))])
    }

    fn sample(record_size: u16, alias: bool) -> Mmdb {
        let mut w = Writer::new(6, record_size);
        w.insert("192.0.2.0/24", country("FR"));
        w.insert("198.51.100.0/25", country("DE"));
        w.insert("2001:db8::/32", country("JP"));
        if alias {
            w.alias_ipv4_mapped();
        }
        Mmdb::parse(w.build()).expect("valid")
    }

    fn code(db: &Mmdb, addr: &str) -> Option<String> {
        let record = db.lookup(addr.parse().expect("addr"))?;
        db.text_at(record, &["country", "iso_code"])
            .map(str::to_owned)
    }

    #[test]
    fn every_record_size_finds_its_networks() {
        for size in [24, 28, 32] {
            let db = sample(size, false);
            assert_eq!(code(&db, "192.0.2.77").as_deref(), Some("FR"), "{size}");
            assert_eq!(code(&db, "198.51.100.1").as_deref(), Some("DE"));
            assert_eq!(code(&db, "198.51.100.200"), None);
            assert_eq!(code(&db, "2001:db8:1::1").as_deref(), Some("JP"));
            assert_eq!(code(&db, "2001:db9::1"), None);
            assert_eq!(code(&db, "10.0.0.1"), None);
        }
    }

    #[test]
    fn mapped_addresses_are_looked_up_as_ipv4_with_or_without_the_alias() {
        for alias in [false, true] {
            let db = sample(28, alias);
            assert_eq!(code(&db, "::ffff:192.0.2.9").as_deref(), Some("FR"));
            assert_eq!(code(&db, "::ffff:203.0.113.9"), None);
        }
    }

    #[test]
    fn an_ipv4_database_gives_ipv6_addresses_no_record() {
        let mut w = Writer::new(4, 24);
        w.insert("192.0.2.0/24", country("FR"));
        let db = Mmdb::parse(w.build()).expect("valid");
        assert_eq!(code(&db, "192.0.2.1").as_deref(), Some("FR"));
        assert_eq!(code(&db, "::ffff:192.0.2.1").as_deref(), Some("FR"));
        assert_eq!(code(&db, "2001:db8::1"), None);
    }

    #[test]
    fn bad_files_are_refused_with_their_reason() {
        assert_eq!(Mmdb::parse(Vec::new()).err(), Some(MmdbError::Empty));
        assert_eq!(
            Mmdb::parse(b"hello world".to_vec()).err(),
            Some(MmdbError::NoMetadata)
        );
        let good = {
            let mut w = Writer::new(6, 24);
            w.insert("192.0.2.0/24", country("FR"));
            w.build()
        };
        // Cut the tree short: the metadata is found but the tree is not there.
        let mut w = Writer::new(6, 24);
        w.insert("192.0.2.0/24", country("FR"));
        w.cut_tree = true;
        assert!(matches!(
            Mmdb::parse(w.build()),
            Err(MmdbError::Truncated { .. })
        ));
        // Truncated anywhere: never a panic, and an error or a database
        // whose lookups are bounded.
        for cut in 0..good.len() {
            if let Ok(db) = Mmdb::parse(good[..cut].to_vec()) {
                let _ = code(&db, "192.0.2.1");
            }
        }
        let mut w = Writer::new(6, 24);
        w.insert("192.0.2.0/24", country("FR"));
        w.point_past_data = true;
        assert!(matches!(
            Mmdb::parse(w.build()),
            Err(MmdbError::PointsPastData { .. })
        ));
    }

    #[test]
    fn pointer_loops_and_deep_nesting_give_no_value() {
        // A record that is a pointer to itself.
        let mut w = Writer::new(6, 24);
        w.insert("192.0.2.0/24", Value::SelfPointer);
        let db = Mmdb::parse(w.build()).expect("valid shape");
        assert_eq!(code(&db, "192.0.2.1"), None);
        // Maps nested far deeper than any real record.
        let mut deep = Value::str("FR");
        for _ in 0..200 {
            deep = Value::map([("x", deep)]);
        }
        let mut w = Writer::new(6, 24);
        w.insert(
            "192.0.2.0/24",
            Value::map([("a", deep), ("country", country("FR"))]),
        );
        let db = Mmdb::parse(w.build()).expect("valid shape");
        // The deep value must be skipped to reach `country`: over the depth
        // bound, so no answer, but no stack overflow either.
        assert_eq!(code(&db, "192.0.2.1"), None);
    }

    #[test]
    fn a_huge_declared_size_is_refused_without_allocating() {
        let mut w = Writer::new(6, 24);
        w.insert(
            "192.0.2.0/24",
            Value::Raw(vec![0xe0 | 31, 0xff, 0xff, 0xff]),
        );
        let db = Mmdb::parse(w.build()).expect("valid shape");
        assert_eq!(code(&db, "192.0.2.1"), None);
    }

    proptest::proptest! {
        #[test]
        fn flipped_bytes_never_panic(flips in proptest::collection::vec((0usize..4096, 0u8..=255), 1..8)) {
            let mut w = Writer::new(6, 28);
            w.insert("192.0.2.0/24", country("FR"));
            w.insert("2001:db8::/32", Value::map([("country_code", Value::str("JP"))]));
            let mut bytes = w.build();
            for (at, b) in flips {
                let len = bytes.len();
                bytes[at % len] ^= b;
            }
            if let Ok(db) = Mmdb::parse(bytes) {
                for addr in ["192.0.2.1", "2001:db8::1", "10.0.0.1", "::ffff:192.0.2.1"] {
                    let _ = code(&db, addr);
                }
            }
        }
    }
}
