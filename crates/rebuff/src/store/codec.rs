//! The byte format of `rebuff.db`: the header, frame encoding, and the
//! replay of a frame sequence into [`RestoredEntry`]s.
//!
//! It owns no I/O: [`Store`](super::Store) hands it buffers to fill
//! ([`encode`]) and the file's bytes to read back ([`replay`]). The layout is
//! described in the [parent module](super).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use std::sync::Arc;

use rebuff_engine::{Key, Time};

use super::{Record, RestoredEntry, Times};

pub(super) const MAGIC: &[u8; 8] = b"RBFSTATE";
pub(super) const FORMAT_VERSION: u32 = 1;
pub(super) const HEADER_LEN: usize = 16;
/// Frame header: payload length, then its CRC32.
const FRAME_HEADER_LEN: usize = 8;
/// A larger length can only come from corruption; the cap also keeps a
/// corrupt length from making the reader trust a huge slice.
pub(super) const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

const KIND_MATCH: u8 = 1;
const KIND_TRIGGER: u8 = 2;
const KIND_DONE: u8 = 3;
const KIND_FORGET: u8 = 4;

/// The 16-byte file header.
pub(super) fn header() -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 12..16: reserved, zero.
    header
}

/// Whether `bytes` starts with a header this build can read. Anything
/// else (short, foreign, newer or with reserved bits set) is never read.
pub(super) fn header_supported(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[..HEADER_LEN] == header()
}

/// Why a record could not be encoded. Such a record is never written: its
/// frame would be unreadable, and a reader stops at the first unreadable
/// frame, which would hide every later record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unencodable {
    TooManyValues(usize),
    TooLarge(usize),
}

/// Appends `record` as one frame to `buf`. On error `buf` is left as it was.
pub(super) fn encode(buf: &mut Vec<u8>, record: &Record<'_>) -> Result<(), Unencodable> {
    let (kind, stream, filter, values) = match *record {
        Record::Match {
            stream,
            filter,
            values,
            ..
        } => (KIND_MATCH, stream, filter, values),
        Record::Trigger {
            stream,
            filter,
            values,
            ..
        } => (KIND_TRIGGER, stream, filter, values),
        Record::Done {
            stream,
            filter,
            values,
            ..
        } => (KIND_DONE, stream, filter, values),
        Record::Forget {
            stream,
            filter,
            values,
        } => (KIND_FORGET, stream, filter, values),
    };
    let count =
        u16::try_from(values.len()).map_err(|_| Unencodable::TooManyValues(values.len()))?;
    let start = buf.len();
    // Length and CRC are patched in once the payload is known, so the
    // payload is written once, straight into the caller's buffer.
    buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    buf.push(kind);
    put_str(buf, stream);
    put_str(buf, filter);
    buf.extend_from_slice(&count.to_le_bytes());
    values.for_each(|value| put_str(buf, value));
    match *record {
        Record::Match { time, .. } | Record::Done { time, .. } => {
            buf.extend_from_slice(&time.to_le_bytes());
        }
        Record::Trigger { time, replace, .. } => {
            buf.extend_from_slice(&time.to_le_bytes());
            buf.push(u8::from(replace));
        }
        Record::Forget { .. } => {}
    }
    let payload_len = buf.len() - start - FRAME_HEADER_LEN;
    // A string over 4 GiB had its length saturated by `put_str`; it is far
    // over the cap, so this check catches it too.
    if payload_len > MAX_PAYLOAD {
        buf.truncate(start);
        return Err(Unencodable::TooLarge(payload_len));
    }
    // Lossless: at most MAX_PAYLOAD.
    let len = payload_len as u32;
    let crc = crc32fast::hash(&buf[start + FRAME_HEADER_LEN..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// The size of the frames that compaction would write for one key with
/// `matches` matches and `triggers` triggers.
pub(super) fn live_size(entry: &RestoredEntry) -> u64 {
    let key = 1
        + 4
        + entry.stream.len()
        + 4
        + entry.filter.len()
        + 2
        + entry
            .values
            .parts()
            .iter()
            .map(|v| 4 + v.with_text(0, str::len).unwrap_or(0))
            .sum::<usize>();
    let matched = FRAME_HEADER_LEN + key + 8;
    let triggered = matched + 1;
    (entry.matches.len() * matched + entry.triggers.len() * triggered) as u64
}

/// What replaying a frame sequence gave.
#[derive(Debug, Default)]
pub(super) struct Replayed {
    pub entries: Vec<RestoredEntry>,
    pub records: u64,
    /// How many leading bytes of the input were whole, valid frames.
    pub good_len: usize,
}

/// Replays the frames in `bytes` (the file after its header), stopping at
/// the first frame that is truncated, fails its CRC, has an impossible
/// length or does not decode.
pub(super) fn replay(bytes: &[u8]) -> Replayed {
    // Keys are looked up by their encoded bytes, which borrow from the
    // file: the encoding is deterministic and length-prefixed, so equal
    // keys have equal bytes, and a record costs no allocation unless it
    // introduces a key.
    // Sized for a compacted log of one-value entries (a frame is some 40
    // bytes), so a large restore does not rehash again and again; keys
    // come from the file, which rebuff wrote, hence the fast hasher.
    let mut index: HashMap<&[u8], usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(bytes.len() / 64, Default::default());
    // `None` is a key forgotten after it was first seen: removing it from
    // the vector would shift every later index.
    let mut slots: Vec<Option<RestoredEntry>> = Vec::new();
    let mut names = Names::default();
    let mut records = 0;
    let mut pos = 0;
    while let Some((frame, next)) = next_frame(bytes, pos) {
        let slot = match index.entry(frame.key) {
            Entry::Occupied(occupied) if frame.op == Op::Forget => {
                slots[occupied.remove()] = None;
                None
            }
            Entry::Occupied(occupied) => Some(*occupied.get()),
            Entry::Vacant(_) if frame.op == Op::Forget => None,
            Entry::Vacant(vacant) => {
                // `decode` checked these bytes; `None` cannot happen, and
                // would only end the replay like any undecodable frame.
                let Some(entry) = owned_key(frame.key, &mut names) else {
                    break;
                };
                vacant.insert(slots.len());
                slots.push(Some(entry));
                Some(slots.len() - 1)
            }
        };
        if let Some(entry) = slot.and_then(|slot| slots[slot].as_mut()) {
            apply(entry, frame.op);
        }
        records += 1;
        pos = next;
    }
    Replayed {
        entries: slots
            .into_iter()
            .flatten()
            .filter(|entry| !entry.matches.is_empty() || !entry.triggers.is_empty())
            .collect(),
        records,
        good_len: pos,
    }
}

fn apply(entry: &mut RestoredEntry, op: Op) {
    match op {
        Op::Match(time) => entry.matches.push(time),
        // A trigger uses up the matches that led to it.
        Op::Trigger { time, replace } => {
            entry.matches.clear();
            if replace {
                entry.triggers.clear();
            }
            entry.triggers.push(time);
        }
        Op::Done(time) => {
            if let Some(i) = entry.triggers.iter().position(|&t| t == time) {
                entry.triggers.remove(i);
            }
        }
        Op::Forget => {}
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Match(Time),
    Trigger { time: Time, replace: bool },
    Done(Time),
    Forget,
}

/// One decoded frame: the encoded key (stream, filter, values) as it is
/// in the file, already checked to be well-formed, and what happened to it.
struct Frame<'a> {
    key: &'a [u8],
    op: Op,
}

/// The frame at `pos` and where the next one starts, or `None` when there
/// is no whole, valid frame there.
fn next_frame(bytes: &[u8], pos: usize) -> Option<(Frame<'_>, usize)> {
    let mut r = Reader(bytes.get(pos..)?);
    let len = r.u32()? as usize;
    let crc = r.u32()?;
    if len > MAX_PAYLOAD {
        return None;
    }
    let payload = r.0.get(..len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((decode(payload)?, pos + FRAME_HEADER_LEN + len))
}

fn decode(payload: &[u8]) -> Option<Frame<'_>> {
    let mut r = Reader(payload);
    let kind = r.u8()?;
    let after_kind = r.0;
    r.str()?;
    r.str()?;
    for _ in 0..r.u16()? {
        r.str()?;
    }
    let key = &after_kind[..after_kind.len() - r.0.len()];
    let op = match kind {
        KIND_MATCH => Op::Match(r.u64()?),
        KIND_TRIGGER => {
            let time = r.u64()?;
            let replace = match r.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            Op::Trigger { time, replace }
        }
        KIND_DONE => Op::Done(r.u64()?),
        KIND_FORGET => Op::Forget,
        _ => return None,
    };
    // Trailing bytes mean the frame is not what this build wrote.
    if !r.0.is_empty() {
        return None;
    }
    Some(Frame { key, op })
}

/// Stream and filter names met so far, shared by the entries.
#[derive(Debug, Default)]
struct Names(Vec<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        // Few names, and entries of one filter mostly in a row: the last
        // ones are looked at first.
        if let Some(found) = self.0.iter().rev().find(|n| ***n == *name) {
            return found.clone();
        }
        let name: Arc<str> = name.into();
        self.0.push(name.clone());
        name
    }
}

/// A new entry, with no matches or triggers yet, for an encoded key.
fn owned_key(key: &[u8], names: &mut Names) -> Option<RestoredEntry> {
    let mut r = Reader(key);
    let stream = names.get(r.str()?);
    let filter = names.get(r.str()?);
    let count = r.u16()?;
    let values = if count == 1 {
        Key::from_value(r.str()?)
    } else {
        let values = (0..count).map(|_| r.str()).collect::<Option<Vec<_>>>()?;
        Key::from_values(&values)
    };
    Some(RestoredEntry {
        stream,
        filter,
        values,
        matches: Times::new(),
        triggers: Times::new(),
    })
}

/// A cursor over a payload; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(s).ok()
    }
}
