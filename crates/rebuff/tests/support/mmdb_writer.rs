//! A small MaxMind DB writer for tests: builds tiny databases with known
//! networks, in every record size, with or without the `::ffff:0:0/96`
//! alias, and with deliberate defects (a cut tree, a record pointing past
//! the data, raw bytes, a self-pointer). Shared by the library's unit tests
//! (through `#[path]`) and the integration tests; no downloaded database is
//! ever needed.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;

/// A value in the data section.
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Uint(u32),
    Double(f64),
    Bool(bool),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
    /// A pointer to itself (a loop).
    SelfPointer,
    /// Bytes written as they are.
    Raw(Vec<u8>),
}

impl Value {
    pub fn str(text: &str) -> Value {
        Value::Str(text.to_owned())
    }

    pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    /// A GeoIP2/GeoLite2 Country-shaped record.
    pub fn country_record(code: &str) -> Value {
        let names = |name: &str| {
            Value::map([
                ("de", Value::str(name)),
                ("en", Value::str(name)),
                ("fr", Value::str(name)),
            ])
        };
        Value::map([
            (
                "continent",
                Value::map([
                    ("code", Value::str("EU")),
                    ("geoname_id", Value::Uint(6255148)),
                    ("names", names("Europe")),
                ]),
            ),
            (
                "country",
                Value::map([
                    ("geoname_id", Value::Uint(3017382)),
                    ("iso_code", Value::str(code)),
                    ("names", names(code)),
                ]),
            ),
            (
                "registered_country",
                Value::map([
                    ("geoname_id", Value::Uint(3017382)),
                    ("iso_code", Value::str(code)),
                    ("names", names(code)),
                ]),
            ),
        ])
    }

    /// A GeoIP2/GeoLite2 City-shaped record: `country` comes after `city`
    /// and `continent`, with doubles, arrays and booleans around it.
    pub fn city_record(code: &str) -> Value {
        let names = |name: &str| {
            Value::Map(
                ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]
                    .iter()
                    .map(|l| ((*l).to_owned(), Value::str(name)))
                    .collect(),
            )
        };
        Value::map([
            (
                "city",
                Value::map([
                    ("geoname_id", Value::Uint(2988507)),
                    ("names", names("Paris")),
                ]),
            ),
            (
                "continent",
                Value::map([
                    ("code", Value::str("EU")),
                    ("geoname_id", Value::Uint(6255148)),
                    ("names", names("Europe")),
                ]),
            ),
            (
                "country",
                Value::map([
                    ("geoname_id", Value::Uint(3017382)),
                    ("is_in_european_union", Value::Bool(true)),
                    ("iso_code", Value::str(code)),
                    ("names", names(code)),
                ]),
            ),
            (
                "location",
                Value::map([
                    ("accuracy_radius", Value::Uint(20)),
                    ("latitude", Value::Double(48.8534)),
                    ("longitude", Value::Double(2.3488)),
                    ("time_zone", Value::str("Europe/Paris")),
                ]),
            ),
            ("postal", Value::map([("code", Value::str("75001"))])),
            (
                "subdivisions",
                Value::Array(vec![Value::map([
                    ("geoname_id", Value::Uint(3012874)),
                    ("iso_code", Value::str("IDF")),
                    ("names", names("Ile-de-France")),
                ])]),
            ),
        ])
    }

    /// An ip-location-db-shaped flat record.
    pub fn flat_record(code: &str) -> Value {
        Value::map([("country_code", Value::str(code))])
    }
}

#[derive(Debug, Clone, Copy)]
enum Child {
    Empty,
    Node(usize),
    Data(usize),
}

/// Builds one database in memory.
#[derive(Debug)]
pub struct Writer {
    ip_version: u16,
    record_size: u16,
    nodes: Vec<[Child; 2]>,
    data: Vec<u8>,
    strings: HashMap<String, usize>,
    pub database_type: String,
    /// Claim many more nodes than the file holds.
    pub cut_tree: bool,
    /// Make one record point past the data section.
    pub point_past_data: bool,
}

impl Writer {
    pub fn new(ip_version: u16, record_size: u16) -> Writer {
        Writer {
            ip_version,
            record_size,
            nodes: vec![[Child::Empty, Child::Empty]],
            data: Vec::new(),
            strings: HashMap::new(),
            database_type: "rebuff-test".to_owned(),
            cut_tree: false,
            point_past_data: false,
        }
    }

    /// The bits of a network as the tree sees them, and its prefix length.
    fn bits(&self, cidr: &str) -> (u128, u32) {
        let (addr, len) = cidr.split_once('/').expect("CIDR");
        let len: u32 = len.parse().expect("prefix length");
        match addr.parse::<IpAddr>().expect("address") {
            IpAddr::V4(v4) if self.ip_version == 4 => (u128::from(u32::from(v4)) << 96, len),
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), len + 96),
            IpAddr::V6(v6) => {
                assert_eq!(self.ip_version, 6, "an IPv6 network in an IPv4 database");
                (u128::from(v6), len)
            }
        }
    }

    /// The node at the end of `len` bits, created as needed.
    fn node_at(&mut self, bits: u128, len: u32) -> usize {
        let mut node = 0;
        for i in 0..len {
            let bit = ((bits >> (127 - i)) & 1) as usize;
            node = match self.nodes[node][bit] {
                Child::Node(next) => next,
                _ => {
                    self.nodes.push([Child::Empty, Child::Empty]);
                    let next = self.nodes.len() - 1;
                    self.nodes[node][bit] = Child::Node(next);
                    next
                }
            };
        }
        node
    }

    /// Maps `cidr` (IPv4 or IPv6) to `value`.
    pub fn insert(&mut self, cidr: &str, value: Value) {
        let offset = self.write(&value);
        self.insert_at(cidr, offset);
    }

    /// Writes `value` once, for many networks to share (as real databases
    /// share one record per country).
    pub fn shared(&mut self, value: &Value) -> usize {
        self.write(value)
    }

    /// Maps `cidr` to a value written by [`Writer::shared`]. A network
    /// inserted over a longer one replaces it.
    pub fn insert_at(&mut self, cidr: &str, offset: usize) {
        let (bits, len) = self.bits(cidr);
        assert!(len > 0, "a network of prefix length 0 is not supported");
        let parent = self.node_at(bits, len - 1);
        let bit = ((bits >> (128 - len)) & 1) as usize;
        self.nodes[parent][bit] = Child::Data(offset);
    }

    /// Makes `::ffff:0:0/96` lead to the IPv4 subtree (`::/96`), as MaxMind's
    /// databases do.
    pub fn alias_ipv4_mapped(&mut self) {
        let v4 = self.node_at(0, 96);
        let mapped: u128 = 0xffff << 32;
        let parent = self.node_at(mapped, 95);
        let bit = ((mapped >> 32) & 1) as usize;
        self.nodes[parent][bit] = Child::Node(v4);
    }

    /// Replaces the tree with a chain of `depth` nodes whose two records
    /// both lead to the next node: 2^depth paths through `depth` nodes, the
    /// last ones ending at `value`.
    pub fn tangle(&mut self, depth: usize, value: Value) {
        let offset = self.write(&value);
        self.nodes = (0..depth)
            .map(|i| {
                let next = if i + 1 == depth {
                    Child::Data(offset)
                } else {
                    Child::Node(i + 1)
                };
                [next, next]
            })
            .collect();
    }

    fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
        let (low, extra): (u8, Vec<u8>) = if size < 29 {
            (size as u8, vec![])
        } else if size < 285 {
            (29, vec![(size - 29) as u8])
        } else if size < 65_821 {
            (30, ((size - 285) as u16).to_be_bytes().to_vec())
        } else {
            (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
        };
        if kind <= 7 {
            out.push(kind << 5 | low);
        } else {
            out.push(low);
            out.push(kind - 7);
        }
        out.extend(extra);
    }

    fn pointer(out: &mut Vec<u8>, target: usize) {
        let t = target as u32;
        if t < 2048 {
            out.extend([0x20 | (t >> 8) as u8, t as u8]);
        } else if t < 2048 + (1 << 19) {
            let p = t - 2048;
            out.extend([0x28 | (p >> 16) as u8, (p >> 8) as u8, p as u8]);
        } else if t < 526_336 + (1 << 27) {
            let p = t - 526_336;
            out.extend([
                0x30 | (p >> 24) as u8,
                (p >> 16) as u8,
                (p >> 8) as u8,
                p as u8,
            ]);
        } else {
            out.push(0x38);
            out.extend(t.to_be_bytes());
        }
    }

    /// Writes `value` to the data section; returns its offset. Text seen
    /// before is written as a pointer to its first copy, as real databases
    /// do for map keys.
    fn write(&mut self, value: &Value) -> usize {
        let offset = self.data.len();
        let mut out = std::mem::take(&mut self.data);
        self.encode(&mut out, value, true);
        self.data = out;
        offset
    }

    fn encode(&mut self, out: &mut Vec<u8>, value: &Value, top: bool) {
        match value {
            Value::Str(text) => {
                if !top && let Some(&at) = self.strings.get(text) {
                    Self::pointer(out, at);
                    return;
                }
                self.strings.insert(text.clone(), out.len());
                Self::control(out, 2, text.len());
                out.extend(text.as_bytes());
            }
            Value::Uint(n) => {
                let bytes = n.to_be_bytes();
                let skip = bytes.iter().take_while(|&&b| b == 0).count();
                Self::control(out, 6, 4 - skip);
                out.extend(&bytes[skip..]);
            }
            Value::Double(x) => {
                Self::control(out, 3, 8);
                out.extend(x.to_be_bytes());
            }
            Value::Bool(b) => Self::control(out, 14, usize::from(*b)),
            Value::Map(entries) => {
                Self::control(out, 7, entries.len());
                for (key, value) in entries {
                    self.encode(out, &Value::Str(key.clone()), false);
                    self.encode(out, value, false);
                }
            }
            Value::Array(items) => {
                Self::control(out, 11, items.len());
                for item in items {
                    self.encode(out, item, false);
                }
            }
            Value::SelfPointer => {
                let at = out.len();
                Self::pointer(out, at);
            }
            Value::Raw(bytes) => out.extend(bytes),
        }
    }

    /// The file's bytes.
    pub fn build(&self) -> Vec<u8> {
        let count = self.nodes.len();
        let data_len = self.data.len();
        let value = |child: Child| -> u32 {
            (match child {
                Child::Empty => count,
                Child::Node(n) => n,
                Child::Data(offset) => count + 16 + offset,
            }) as u32
        };
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let mut left = value(node[0]);
            let right = value(node[1]);
            if self.point_past_data && i == 0 {
                left = (count + 16 + data_len + 100) as u32;
            }
            match self.record_size {
                24 => {
                    out.extend(&left.to_be_bytes()[1..]);
                    out.extend(&right.to_be_bytes()[1..]);
                }
                28 => {
                    out.extend(&left.to_be_bytes()[1..]);
                    out.push(((left >> 24) as u8) << 4 | (right >> 24) as u8 & 0x0f);
                    out.extend(&right.to_be_bytes()[1..]);
                }
                32 => {
                    out.extend(left.to_be_bytes());
                    out.extend(right.to_be_bytes());
                }
                other => panic!("record size {other}"),
            }
        }
        out.extend([0u8; 16]);
        out.extend(&self.data);
        out.extend(b"\xAB\xCD\xEFMaxMind.com");
        let claimed = if self.cut_tree {
            count + 1_000_000
        } else {
            count
        };
        let metadata = Value::Map(vec![
            ("binary_format_major_version".into(), Value::Uint(2)),
            ("binary_format_minor_version".into(), Value::Uint(0)),
            ("build_epoch".into(), Value::Uint(1_700_000_000)),
            (
                "database_type".into(),
                Value::Str(self.database_type.clone()),
            ),
            ("description".into(), Value::Map(vec![])),
            ("ip_version".into(), Value::Uint(u32::from(self.ip_version))),
            ("languages".into(), Value::Array(vec![Value::str("en")])),
            ("node_count".into(), Value::Uint(claimed as u32)),
            (
                "record_size".into(),
                Value::Uint(u32::from(self.record_size)),
            ),
        ]);
        let mut meta = Vec::new();
        let mut plain = Writer::new(self.ip_version, self.record_size);
        plain.encode(&mut meta, &metadata, true);
        out.extend(meta);
        out
    }
}
