//! `show` answers built off the tracker.
//!
//! The tracker copies what `show` needs into a compact [`Snapshot`] (a key,
//! a match count and the pending triggers per entry: no text), and answers
//! at once with a channel; [`render`] then runs on a blocking thread: it
//! applies the value regexes, sorts, and writes the JSON text of the answer
//! in pieces that the connection sends as they come. The tracker goes on
//! matching and firing timers meanwhile, and no tree of the whole answer is
//! ever built: memory is the snapshot and a piece or two.
//!
//! The text is what `serde_json` writes for the [`Response`] tree
//! (`{"ok":{stream:{filter:{values:{"matches":n,"actions":{name:[times]}}}}}}`,
//! entries sorted by their values), with `"left_out":n` after the tree when
//! `max` cut it.
//!
//! [`Response`]: super::Response

use std::sync::Arc;

use rebuff_engine::{Key, Time};
use regex::Regex;
use smallvec::SmallVec;

use crate::events::format_time;

/// Where a piece is flushed to the connection.
const PIECE: usize = 256 * 1024;

/// A trigger's time and its pending delayed actions, a bit by action
/// index (a filter has at most 64 actions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    pub time: Time,
    pub actions: u64,
}

impl Pending {
    fn contains(&self, action: usize) -> bool {
        u32::try_from(action)
            .ok()
            .and_then(|a| 1u64.checked_shl(a))
            .is_some_and(|bit| self.actions & bit != 0)
    }
}

/// One entry of a filter.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: Key,
    /// Matches that still count.
    pub matches: u32,
    /// Triggers with delayed actions not yet handed over.
    pub triggers: SmallVec<[Pending; 1]>,
}

/// The entries of one selected filter.
#[derive(Debug, Clone)]
pub struct FilterRows {
    pub stream: Arc<str>,
    pub filter: Arc<str>,
    /// Each action's name and delay (0 for an immediate one).
    pub actions: Vec<(Arc<str>, Time)>,
    /// Value regexes by slot; an entry is shown when all match.
    pub slots: Vec<(usize, Regex)>,
    /// The kernel sets the filter's ban puts an address in: the value slot
    /// it takes, and the set's name for IPv4 and for IPv6 addresses
    /// (`nftables inet reaction bansv4`). A jailed entry lists those that
    /// hold its address under `sets`.
    pub sets: Vec<KernelSets>,
    /// With `geoip`: the slot of the address and the database; each
    /// entry then has `country` (the ISO code, empty when unknown).
    pub country: Option<(usize, crate::geo::Geo)>,
    pub rows: Vec<Row>,
}

/// See [`FilterRows::sets`].
#[derive(Debug, Clone)]
pub struct KernelSets {
    pub slot: usize,
    pub v4: Option<Arc<str>>,
    pub v6: Option<Arc<str>>,
}

/// What a `show` answers, copied off the tracker.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub filters: Vec<FilterRows>,
    /// Show at most this many entries; say how many were left out.
    pub max: Option<u64>,
}

/// Writes the answer's JSON text to `sink` in pieces, in order; stops when
/// `sink` returns false (the client is gone). Returns how many entries
/// `max` left out.
pub fn render(snapshot: Snapshot, mut sink: impl FnMut(Vec<u8>) -> bool) -> u64 {
    let mut out = Vec::with_capacity(PIECE + 4096);
    out.extend_from_slice(b"{\"ok\":{");
    let mut shown = 0u64;
    let mut left_out = 0u64;
    let max = snapshot.max.unwrap_or(u64::MAX);
    let mut last_stream: Option<Arc<str>> = None;
    for mut filter in snapshot.filters {
        filter.rows.retain(|row| {
            has_content(row)
                && filter.slots.iter().all(|(slot, re)| {
                    row.key
                        .with_text(*slot, |text| re.is_match(text))
                        .unwrap_or(false)
                })
        });
        if filter.rows.is_empty() {
            continue;
        }
        if shown >= max {
            left_out += filter.rows.len() as u64;
            continue;
        }
        let (texts, order) = sorted(&filter.rows);
        // A stream's filters are consecutive: open its object once.
        if last_stream.as_deref() != Some(&*filter.stream) {
            if last_stream.is_some() {
                out.extend_from_slice(b"},");
            }
            string(&mut out, &filter.stream);
            out.extend_from_slice(b":{");
        } else {
            out.push(b',');
        }
        last_stream = Some(filter.stream.clone());
        string(&mut out, &filter.filter);
        out.extend_from_slice(b":{");
        let count = order.len();
        for (i, &(start, end, index)) in order.iter().enumerate() {
            if shown >= max {
                left_out += (count - i) as u64;
                break;
            }
            if i > 0 {
                out.push(b',');
            }
            entry(
                &mut out,
                &filter.actions,
                &filter.sets,
                filter.country.as_ref(),
                &texts[start..end],
                &filter.rows[index],
            );
            shown += 1;
            if out.len() >= PIECE
                && !sink(std::mem::replace(
                    &mut out,
                    Vec::with_capacity(PIECE + 4096),
                ))
            {
                return left_out;
            }
        }
        out.push(b'}');
    }
    if last_stream.is_some() {
        out.push(b'}');
    }
    out.push(b'}');
    if left_out > 0 {
        out.extend_from_slice(b",\"left_out\":");
        out.extend_from_slice(itoa::Buffer::new().format(left_out).as_bytes());
    }
    out.push(b'}');
    sink(out);
    left_out
}

/// The rows' keys as text (values joined by a space) in one string, and
/// `(start, end, row)` in the order `show` lists them: by values, one by
/// one. A filter's keys all have as many values; with one each, that is
/// the order of the texts, compared without formatting again.
fn sorted(rows: &[Row]) -> (String, Vec<(usize, usize, usize)>) {
    use std::fmt::Write as _;
    let mut texts = String::new();
    let mut order = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let start = texts.len();
        // Writing to a String cannot fail.
        let _ = write!(texts, "{}", row.key);
        order.push((start, texts.len(), index));
    }
    let bytes = texts.as_bytes();
    if rows.iter().all(|row| row.key.len() == 1) {
        order.sort_unstable_by(|a, b| bytes[a.0..a.1].cmp(&bytes[b.0..b.1]));
    } else {
        order.sort_unstable_by(|a, b| rows[a.2].key.cmp_text(&rows[b.2].key));
    }
    // A snapshot copied over several tracker rounds may meet a value twice
    // (removed, then added again further on): it is shown once.
    order.dedup_by(|a, b| rows[a.2].key == rows[b.2].key);
    (texts, order)
}

/// Whether a row has anything to show.
fn has_content(row: &Row) -> bool {
    row.matches > 0 || row.triggers.iter().any(|t| t.actions != 0)
}

/// `"values":{"matches":n,"actions":{…}}`, as `serde_json` writes it.
fn entry(
    out: &mut Vec<u8>,
    actions: &[(Arc<str>, Time)],
    sets: &[KernelSets],
    country: Option<&(usize, crate::geo::Geo)>,
    text: &str,
    row: &Row,
) {
    string(out, text);
    out.extend_from_slice(b":{");
    let mut first = true;
    if row.matches > 0 {
        out.extend_from_slice(b"\"matches\":");
        out.extend_from_slice(itoa::Buffer::new().format(row.matches).as_bytes());
        first = false;
    }
    let mut times: SmallVec<[Time; 4]> = SmallVec::new();
    let mut opened = false;
    for (action, (name, after)) in actions.iter().enumerate() {
        times.clear();
        times.extend(
            row.triggers
                .iter()
                .filter(|t| t.contains(action))
                .map(|t| t.time.saturating_add(*after)),
        );
        if times.is_empty() {
            continue;
        }
        times.sort_unstable();
        if opened {
            out.push(b',');
        } else {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(b"\"actions\":{");
            opened = true;
        }
        string(out, name);
        out.push(b':');
        out.push(b'[');
        for (i, &time) in times.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, &format_time(time));
        }
        out.push(b']');
    }
    if opened {
        out.push(b'}');
    }
    if opened && !sets.is_empty() {
        let mut listed = false;
        for set in sets {
            let is_v6 = row.key.with_text(set.slot, |t| t.contains(':'));
            let name = match is_v6 {
                Some(true) => set.v6.as_ref(),
                Some(false) => set.v4.as_ref(),
                None => None,
            };
            let Some(name) = name else { continue };
            out.extend_from_slice(if listed { b"," } else { b",\"sets\":[" });
            listed = true;
            string(out, name);
        }
        if listed {
            out.push(b']');
        }
    }
    if let Some((slot, geo)) = country
        && let Some(code) = row
            .key
            .with_text(*slot, |value| crate::geo::country_text(geo, value))
    {
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        out.extend_from_slice(b"\"country\":");
        string(out, &code);
    }
    out.push(b'}');
}

/// A JSON string, escaped as `serde_json` does.
fn string(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail, and a str always serializes.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn rendered(snapshot: Snapshot) -> (Value, u64) {
        let mut text = Vec::new();
        let left_out = render(snapshot, |piece| {
            text.extend_from_slice(&piece);
            true
        });
        (serde_json::from_slice(&text).expect("valid JSON"), left_out)
    }

    fn row(value: &str, matches: u32, triggers: &[(Time, u64)]) -> Row {
        Row {
            key: Key::from_value(value),
            matches,
            triggers: triggers
                .iter()
                .map(|&(time, actions)| Pending { time, actions })
                .collect(),
        }
    }

    fn filter(stream: &str, name: &str, rows: Vec<Row>) -> FilterRows {
        FilterRows {
            sets: Vec::new(),
            country: None,
            stream: stream.into(),
            filter: name.into(),
            actions: vec![("ban".into(), 0), ("unban".into(), 3_600_000)],
            slots: Vec::new(),
            rows,
        }
    }

    #[test]
    fn the_text_is_the_tree_serde_json_writes_in_the_same_order() {
        let snapshot = Snapshot {
            filters: vec![
                filter(
                    "ssh",
                    "failed",
                    vec![
                        row("9.0.0.1", 0, &[(0, 0b10), (1_000, 0b10)]),
                        row("10.0.0.1", 2, &[]),
                        row("2001:db8::1", 1, &[(0, 0b10)]),
                        row("gone", 0, &[]),
                    ],
                ),
                filter("ssh", "empty", vec![row("x", 0, &[(5, 0)])]),
                filter("web", "probe", vec![row("a \"quoted\" é", 3, &[])]),
            ],
            max: None,
        };
        let (answer, left_out) = rendered(snapshot);
        assert_eq!(left_out, 0);
        let expected = json!({"ok": {
            "ssh": {"failed": {
                "10.0.0.1": {"matches": 2},
                "2001:db8::1": {"matches": 1, "actions": {"unban": ["1970-01-01T01:00:00Z"]}},
                "9.0.0.1": {"actions": {"unban": ["1970-01-01T01:00:00Z", "1970-01-01T01:00:01Z"]}},
            }},
            "web": {"probe": {"a \"quoted\" é": {"matches": 3}}},
        }});
        assert_eq!(answer, expected);
        // Byte for byte what the tree serialized whole would be.
        let mut text = Vec::new();
        render(
            Snapshot {
                filters: vec![filter(
                    "ssh",
                    "failed",
                    vec![row("10.0.0.1", 2, &[(0, 0b11)])],
                )],
                max: None,
            },
            |piece| {
                text.extend_from_slice(&piece);
                true
            },
        );
        let whole = json!({"ok": {"ssh": {"failed": {"10.0.0.1": {"matches": 2, "actions": {
            "ban": ["1970-01-01T00:00:00Z"], "unban": ["1970-01-01T01:00:00Z"]}}}}}});
        assert_eq!(String::from_utf8(text).expect("utf-8"), whole.to_string());
    }

    #[test]
    fn several_values_sort_value_by_value() {
        let mut f = filter(
            "s",
            "f",
            ["b a", "a", "a b"]
                .iter()
                .map(|v| Row {
                    key: Key::from_values(&v.split(' ').collect::<Vec<_>>()),
                    matches: 1,
                    triggers: SmallVec::new(),
                })
                .collect(),
        );
        f.rows.push(Row {
            key: Key::from_values(&["a b", "c"]),
            matches: 2,
            triggers: SmallVec::new(),
        });
        f.rows.retain(|r| r.key.len() == 2);
        let mut text = Vec::new();
        render(
            Snapshot {
                filters: vec![f],
                max: None,
            },
            |piece| {
                text.extend_from_slice(&piece);
                true
            },
        );
        // ["a", "b"] < ["a b", "c"] < ["b", "a"], as Vec<String> orders.
        assert_eq!(
            String::from_utf8(text).expect("utf-8"),
            r#"{"ok":{"s":{"f":{"a b":{"matches":1},"a b c":{"matches":2},"b a":{"matches":1}}}}}"#
        );
    }

    #[test]
    fn max_cuts_in_order_and_counts_what_it_left_out() {
        let rows = || {
            (0..5)
                .map(|i| row(&format!("v{i}"), 1, &[]))
                .collect::<Vec<_>>()
        };
        let snapshot = Snapshot {
            filters: vec![filter("a", "f", rows()), filter("b", "g", rows())],
            max: Some(3),
        };
        let mut text = Vec::new();
        let left_out = render(snapshot, |piece| {
            text.extend_from_slice(&piece);
            true
        });
        assert_eq!(left_out, 7);
        let answer: Value = serde_json::from_slice(&text).expect("JSON");
        assert_eq!(
            answer,
            json!({"ok": {"a": {"f": {"v0": {"matches": 1}, "v1": {"matches": 1}, "v2": {"matches": 1}}}},
                   "left_out": 7})
        );
        let (answer, left_out) = rendered(Snapshot {
            filters: vec![filter("a", "f", rows())],
            max: Some(0),
        });
        assert_eq!((answer, left_out), (json!({"ok": {}, "left_out": 5}), 5));
        let (answer, left_out) = rendered(Snapshot {
            filters: vec![filter("a", "f", rows())],
            max: Some(5),
        });
        assert_eq!(left_out, 0);
        assert!(answer.get("left_out").is_none());
    }

    #[test]
    fn value_regexes_select_by_slot_and_an_empty_answer_is_an_empty_map() {
        let mut f = filter(
            "ssh",
            "failed",
            vec![row("192.0.2.7", 1, &[]), row("alice", 1, &[])],
        );
        f.slots = vec![(
            0,
            rebuff_engine::whole_value_regex("192\\..*").expect("regex"),
        )];
        let (answer, _) = rendered(Snapshot {
            filters: vec![f],
            max: None,
        });
        assert_eq!(
            answer,
            json!({"ok": {"ssh": {"failed": {"192.0.2.7": {"matches": 1}}}}})
        );
        assert_eq!(rendered(Snapshot::default()).0, json!({"ok": {}}));
    }

    #[test]
    fn a_big_answer_comes_in_several_pieces_that_make_one_document() {
        let rows = (0..20_000u32)
            .map(|i| row(&std::net::Ipv4Addr::from(i).to_string(), 1, &[(0, 0b10)]))
            .collect();
        let mut pieces = 0;
        let mut text = Vec::new();
        render(
            Snapshot {
                filters: vec![filter("s", "f", rows)],
                max: None,
            },
            |piece| {
                pieces += 1;
                text.extend_from_slice(&piece);
                true
            },
        );
        assert!(pieces > 1, "{pieces}");
        let answer: Value = serde_json::from_slice(&text).expect("JSON");
        assert_eq!(
            answer["ok"]["s"]["f"].as_object().map(|o| o.len()),
            Some(20_000)
        );
    }
}
