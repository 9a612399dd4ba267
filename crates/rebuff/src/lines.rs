//! Bounded line reading from plain or gzip'ed input.
//!
//! [`LineReader`] splits any [`Read`] into lines through one reused buffer,
//! so memory stays bounded by the longest line it keeps (`max_line`), never
//! by the longest line in the input: the part of a line beyond `max_line`
//! is skipped as it streams past. [`open_input`] opens a path (or `-`,
//! stdin), decodes gzip when the data starts with the gzip magic, and
//! returns an [`Input`]: the decoded reader plus what a progress display
//! needs (total and consumed raw bytes) and the file's mtime (the reference
//! time for yearless syslog stamps).

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

/// The buffer the reader starts with, and the most it reads at once.
const DEFAULT_BUFFER: usize = 256 * 1024;

/// One line, without its `\n` (and without a `\r` just before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line's bytes; at most `max_line` of them.
    pub bytes: &'a [u8],
    /// The line was longer than `max_line`: `bytes` is its beginning and
    /// the rest was skipped.
    pub truncated: bool,
}

/// Splits a reader into lines of at most `max_line` bytes each.
pub struct LineReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    /// Unconsumed data is `buf[start..end]`.
    start: usize,
    end: usize,
    /// `buf[start..scanned]` is known to hold no `\n`, so that a long line
    /// arriving in many reads is searched once, not once per read.
    scanned: usize,
    max_line: usize,
    /// The buffer never grows beyond this: a kept line, its `\r\n`, and the
    /// normal buffer.
    max_buffer: usize,
    /// The previous line was truncated: its rest must be skipped first.
    skipping: bool,
    eof: bool,
    consumed: u64,
}

impl<R: Read> fmt::Debug for LineReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineReader")
            .field("buffered", &(self.end - self.start))
            .field("capacity", &self.buf.len())
            .field("max_line", &self.max_line)
            .field("skipping", &self.skipping)
            .field("eof", &self.eof)
            .field("bytes_read", &self.consumed)
            .finish_non_exhaustive()
    }
}

impl<R: Read> LineReader<R> {
    /// A reader returning lines of at most `max_line` bytes (longer lines
    /// are truncated to that, see [`Line::truncated`]).
    pub fn new(inner: R, max_line: usize) -> Self {
        // A line is only known to be too long once `max_line + 2` bytes
        // without `\n` are buffered: the byte after `max_line` could be the
        // `\r` of a `\r\n`.
        let needed = max_line.saturating_add(2);
        LineReader {
            inner,
            buf: vec![0; DEFAULT_BUFFER],
            start: 0,
            end: 0,
            scanned: 0,
            max_line,
            max_buffer: needed.saturating_add(DEFAULT_BUFFER),
            skipping: false,
            eof: false,
            consumed: 0,
        }
    }

    /// Bytes of the (decoded) input consumed by the lines returned so far,
    /// terminators and skipped tails included; read-ahead is not counted.
    pub fn bytes_read(&self) -> u64 {
        self.consumed
    }

    /// Whether the next [`LineReader::next_line`] can answer from the
    /// buffer, without reading (and so without possibly blocking). A
    /// reader of a live pipe hands on what it collected before it blocks.
    pub fn has_buffered_line(&self) -> bool {
        if self.eof {
            return true;
        }
        // Skipping the rest of a long line may need reads: say no, which
        // only costs an early hand-on.
        !self.skipping
            && (memchr::memchr(b'\n', &self.buf[self.scanned..self.end]).is_some()
                || self.end - self.start >= self.max_line.saturating_add(2))
    }

    /// The next line, `None` at the end of the input. A last line without a
    /// final `\n` is returned too; an empty input has no lines.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        if self.skipping && !self.skip_rest_of_line()? {
            return Ok(None);
        }
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.buf[self.scanned..self.end]) {
                let newline = self.scanned + pos;
                let line_start = self.start;
                self.start = newline + 1;
                self.scanned = self.start;
                self.consumed += (self.start - line_start) as u64;
                return Ok(Some(self.line(line_start, newline)));
            }
            self.scanned = self.end;
            let buffered = self.end - self.start;
            if buffered >= self.max_line.saturating_add(2) {
                // Too long whatever follows: keep its beginning, drop what
                // is buffered after it, skip the rest on the next call.
                let line_start = self.start;
                self.consumed += buffered as u64;
                self.start = self.end;
                self.scanned = self.end;
                self.skipping = true;
                return Ok(Some(Line {
                    bytes: &self.buf[line_start..line_start + self.max_line],
                    truncated: true,
                }));
            }
            if self.eof {
                if buffered == 0 {
                    return Ok(None);
                }
                let line_start = self.start;
                self.start = self.end;
                self.consumed += buffered as u64;
                return Ok(Some(self.line(line_start, self.end)));
            }
            self.fill()?;
        }
    }

    /// The line in `buf[from..to]` (`to` excludes the `\n`), `\r`-stripped
    /// and cut to `max_line`.
    fn line(&self, from: usize, to: usize) -> Line<'_> {
        let mut bytes = &self.buf[from..to];
        if let [rest @ .., b'\r'] = bytes {
            bytes = rest;
        }
        if bytes.len() > self.max_line {
            Line {
                bytes: &bytes[..self.max_line],
                truncated: true,
            }
        } else {
            Line {
                bytes,
                truncated: false,
            }
        }
    }

    /// Discards input up to and including the next `\n`, reading through
    /// the buffer without keeping anything. `false` when the input ended
    /// first.
    fn skip_rest_of_line(&mut self) -> io::Result<bool> {
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                self.consumed += pos as u64 + 1;
                self.start += pos + 1;
                self.scanned = self.start;
                self.skipping = false;
                return Ok(true);
            }
            self.consumed += (self.end - self.start) as u64;
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
            if self.eof {
                self.skipping = false;
                return Ok(false);
            }
            self.fill()?;
        }
    }

    /// Reads more input after `buf[..end]`, first moving the unconsumed
    /// data to the front or growing the buffer when there is no room.
    /// Sets `eof` when the reader is exhausted.
    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
        } else if self.buf.len() - self.end < DEFAULT_BUFFER / 4 && self.start > 0 {
            // Little room left: move the partial line to the front (it is
            // short compared to the buffer unless it is a long line, which
            // is then moved once per buffer's worth of reads).
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // The partial line fills the whole buffer yet is not known to be
            // too long: grow, up to what one kept line needs.
            let grown = self.buf.len().saturating_mul(2).min(self.max_buffer);
            self.buf.resize(grown.max(self.end + 1), 0);
        }
        let room = (self.buf.len() - self.end).min(DEFAULT_BUFFER);
        loop {
            match self.inner.read(&mut self.buf[self.end..self.end + room]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// An opened input: the decoded byte stream and facts about its source.
pub struct Input {
    /// The decoded data (gunzipped if it was gzip).
    pub reader: Box<dyn Read + Send>,
    /// Whether the data was gzip.
    pub gzip: bool,
    /// Size of the raw (still compressed) data when known: a regular file.
    pub total_bytes: Option<u64>,
    /// Raw bytes read from the source so far, shared with the reader so
    /// that progress can be measured against `total_bytes` while the
    /// reader is owned by a [`LineReader`].
    pub raw_bytes_read: Arc<AtomicU64>,
    /// The source file's modification time, ms since the epoch, when known.
    pub mtime_ms: Option<i64>,
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input")
            .field("gzip", &self.gzip)
            .field("total_bytes", &self.total_bytes)
            .field(
                "raw_bytes_read",
                &self.raw_bytes_read.load(Ordering::Relaxed),
            )
            .field("mtime_ms", &self.mtime_ms)
            .finish_non_exhaustive()
    }
}

/// Opens `path` (`-` is stdin) for line reading. Gzip is recognised by its
/// magic bytes, not the name, and decoded with all its members (as
/// `zcat` does); a corrupt stream surfaces as an `io::Error` from `read`.
pub fn open_input(path: &Path) -> io::Result<Input> {
    let (source, metadata): (Box<dyn Read + Send>, Option<std::fs::Metadata>) =
        if path.as_os_str() == "-" {
            (Box::new(io::stdin()), stdin_metadata())
        } else {
            let file = File::open(path)?;
            let metadata = file.metadata().ok();
            (Box::new(file), metadata)
        };
    let regular = metadata.as_ref().filter(|m| m.is_file());
    let total_bytes = regular.map(|m| m.len());
    let mtime_ms =
        regular
            .and_then(|m| m.modified().ok())
            .and_then(|t| match t.duration_since(UNIX_EPOCH) {
                Ok(after) => i64::try_from(after.as_millis()).ok(),
                Err(before) => i64::try_from(before.duration().as_millis())
                    .ok()
                    .map(|ms| -ms),
            });
    let raw_bytes_read = Arc::new(AtomicU64::new(0));
    let mut counted = CountingReader {
        inner: source,
        count: Arc::clone(&raw_bytes_read),
    };
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut counted, &mut magic)?;
    let head = io::Cursor::new(magic).take(got as u64);
    let gzip = magic[..got] == [0x1f, 0x8b];
    let reader: Box<dyn Read + Send> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(head.chain(counted)))
    } else {
        Box::new(head.chain(counted))
    };
    Ok(Input {
        reader,
        gzip,
        total_bytes,
        raw_bytes_read,
        mtime_ms,
    })
}

/// Metadata of what stdin is connected to, so that `rebuff replay - < file`
/// shows progress and uses the file's mtime like a named file.
#[cfg(unix)]
fn stdin_metadata() -> Option<std::fs::Metadata> {
    use std::os::fd::AsFd;
    let fd = io::stdin().as_fd().try_clone_to_owned().ok()?;
    File::from(fd).metadata().ok()
}

#[cfg(not(unix))]
fn stdin_metadata() -> Option<std::fs::Metadata> {
    None
}

/// Reads until `buf` is full or the input ends (a pipe may deliver the two
/// magic bytes in separate reads); returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Adds the bytes read through it to a shared counter.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn lines_of(input: &[u8], max_line: usize) -> Vec<(Vec<u8>, bool)> {
        let mut reader = LineReader::new(input, max_line);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().expect("reading a slice cannot fail") {
            out.push((line.bytes.to_vec(), line.truncated));
        }
        assert_eq!(reader.bytes_read(), input.len() as u64);
        out
    }

    fn kept(text: &str) -> (Vec<u8>, bool) {
        (text.as_bytes().to_vec(), false)
    }

    /// Delivers its data a few bytes per `read`, as a slow pipe.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// `len` bytes of `x` (then `tail`), generated as they are read.
    struct Generated {
        left: u64,
        tail: &'static [u8],
    }

    impl Read for Generated {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                let n = self.tail.len().min(buf.len());
                buf[..n].copy_from_slice(&self.tail[..n]);
                self.tail = &self.tail[n..];
                return Ok(n);
            }
            let n = buf
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            buf[..n].fill(b'x');
            self.left -= n as u64;
            Ok(n)
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("writing to a Vec");
        encoder.finish().expect("writing to a Vec")
    }

    fn read_all_lines(input: Input) -> io::Result<Vec<String>> {
        let mut reader = LineReader::new(input.reader, 1024);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line()? {
            out.push(String::from_utf8_lossy(line.bytes).into_owned());
        }
        Ok(out)
    }

    #[test]
    fn lines_are_split_on_newlines_and_the_last_line_needs_none() {
        assert_eq!(
            lines_of(b"one\ntwo\n\nfour", 100),
            vec![kept("one"), kept("two"), kept(""), kept("four")]
        );
        assert_eq!(lines_of(b"one\n", 100), vec![kept("one")]);
    }

    #[test]
    fn empty_input_has_no_lines() {
        assert_eq!(lines_of(b"", 100), vec![]);
    }

    #[test]
    fn crlf_endings_lose_their_carriage_return_but_inner_ones_stay() {
        assert_eq!(
            lines_of(b"one\r\ntwo\r\nthr\ree\r", 100),
            vec![kept("one"), kept("two"), kept("thr\ree")]
        );
    }

    #[test]
    fn a_line_of_exactly_max_line_bytes_with_crlf_is_not_truncated() {
        assert_eq!(lines_of(b"abcd\r\nx", 4), vec![kept("abcd"), kept("x")]);
        assert_eq!(lines_of(b"abcd\r", 4), vec![kept("abcd")]);
        assert_eq!(lines_of(b"abcd", 4), vec![kept("abcd")]);
    }

    #[test]
    fn a_long_line_is_truncated_and_the_next_line_is_intact() {
        assert_eq!(
            lines_of(b"short\nabcdefghij\nnext\nabcdefg", 5),
            vec![
                kept("short"),
                (b"abcde".to_vec(), true),
                kept("next"),
                (b"abcde".to_vec(), true),
            ]
        );
        assert_eq!(
            lines_of(b"abcde\nx", 4),
            vec![(b"abcd".to_vec(), true), kept("x")]
        );
    }

    #[test]
    fn lines_arriving_a_few_bytes_per_read_are_reassembled() {
        let data = b"first line\nsecond, longer line\r\n\nlast";
        let mut reader = LineReader::new(Trickle { data, step: 3 }, 12);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().expect("no I/O error") {
            out.push((line.bytes.to_vec(), line.truncated));
        }
        assert_eq!(
            out,
            vec![
                kept("first line"),
                (b"second, long".to_vec(), true),
                kept(""),
                kept("last")
            ]
        );
        assert_eq!(reader.bytes_read(), data.len() as u64);
    }

    #[test]
    fn lines_longer_than_the_buffer_but_within_max_line_are_kept_whole() {
        let long = vec![b'y'; DEFAULT_BUFFER * 3 + 17];
        let mut data = long.clone();
        data.extend_from_slice(b"\nafter\n");
        let mut reader = LineReader::new(data.as_slice(), DEFAULT_BUFFER * 4);
        let first = reader
            .next_line()
            .expect("no I/O error")
            .map(|l| (l.bytes.to_vec(), l.truncated));
        assert_eq!(first, Some((long, false)));
        let second = reader
            .next_line()
            .expect("no I/O error")
            .map(|l| l.bytes.to_vec());
        assert_eq!(second, Some(b"after".to_vec()));
        assert!(reader.buf.len() <= reader.max_buffer);
    }

    #[test]
    fn a_100_mb_line_without_newline_is_read_in_bounded_memory() {
        const LEN: u64 = 100 * 1024 * 1024;
        let mut reader = LineReader::new(
            Generated {
                left: LEN,
                tail: b"",
            },
            4096,
        );
        let line = reader
            .next_line()
            .expect("no I/O error")
            .map(|l| (l.bytes.len(), l.truncated));
        assert_eq!(line, Some((4096, true)));
        assert!(reader.next_line().expect("no I/O error").is_none());
        assert_eq!(reader.bytes_read(), LEN);
        assert_eq!(reader.buf.len(), DEFAULT_BUFFER, "the buffer never grew");
    }

    #[test]
    fn a_100_mb_line_is_followed_by_the_next_line_intact() {
        const LEN: u64 = 100 * 1024 * 1024;
        let mut reader = LineReader::new(
            Generated {
                left: LEN,
                tail: b"\nnext\n",
            },
            4096,
        );
        let first = reader
            .next_line()
            .expect("no I/O error")
            .map(|l| l.truncated);
        assert_eq!(first, Some(true));
        let second = reader
            .next_line()
            .expect("no I/O error")
            .map(|l| (l.bytes.to_vec(), l.truncated));
        assert_eq!(second, Some(kept("next")));
        assert!(reader.next_line().expect("no I/O error").is_none());
        assert_eq!(reader.buf.len(), DEFAULT_BUFFER);
    }

    #[test]
    fn max_line_zero_keeps_empty_lines_and_truncates_the_others() {
        assert_eq!(
            lines_of(b"\nab\n\n", 0),
            vec![kept(""), (Vec::new(), true), kept("")]
        );
    }

    #[test]
    fn plain_file_is_read_as_is_with_size_and_mtime() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"a\nb\n").expect("write");
        let input = open_input(file.path()).expect("open");
        assert!(!input.gzip);
        assert_eq!(input.total_bytes, Some(4));
        assert!(input.mtime_ms.is_some_and(|ms| ms > 1_600_000_000_000));
        let counter = Arc::clone(&input.raw_bytes_read);
        assert_eq!(read_all_lines(input).expect("read"), ["a", "b"]);
        assert_eq!(counter.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn gzip_is_detected_by_magic_not_name_and_all_members_are_read() {
        let mut data = gzip(b"one\ntwo\n");
        data.extend(gzip(b"three\n"));
        let mut file = tempfile::Builder::new()
            .suffix(".log")
            .tempfile()
            .expect("temp file");
        file.write_all(&data).expect("write");
        let input = open_input(file.path()).expect("open");
        assert!(input.gzip);
        assert_eq!(input.total_bytes, Some(data.len() as u64));
        let counter = Arc::clone(&input.raw_bytes_read);
        assert_eq!(
            read_all_lines(input).expect("read"),
            ["one", "two", "three"]
        );
        assert_eq!(counter.load(Ordering::Relaxed), data.len() as u64);
    }

    #[test]
    fn a_gz_name_with_plain_content_is_read_as_plain() {
        let mut file = tempfile::Builder::new()
            .suffix(".gz")
            .tempfile()
            .expect("temp file");
        file.write_all(b"plain\n").expect("write");
        let input = open_input(file.path()).expect("open");
        assert!(!input.gzip);
        assert_eq!(read_all_lines(input).expect("read"), ["plain"]);
    }

    #[test]
    fn corrupt_gzip_gives_an_io_error() {
        let mut data = gzip(b"some text that compresses\n".repeat(100).as_slice());
        let middle = data.len() / 2;
        for byte in &mut data[10..middle] {
            *byte ^= 0x5a;
        }
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&data).expect("write");
        let input = open_input(file.path()).expect("open");
        assert!(input.gzip);
        assert!(read_all_lines(input).is_err());
    }

    #[test]
    fn truncated_gzip_gives_an_io_error() {
        let data = gzip(b"some text that compresses\n".repeat(100).as_slice());
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&data[..data.len() / 2]).expect("write");
        let input = open_input(file.path()).expect("open");
        assert!(read_all_lines(input).is_err());
    }

    #[test]
    fn empty_and_one_byte_files_open_as_plain() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let input = open_input(file.path()).expect("open");
        assert!(!input.gzip);
        assert_eq!(read_all_lines(input).expect("read"), Vec::<String>::new());
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&[0x1f]).expect("write");
        let input = open_input(file.path()).expect("open");
        assert!(!input.gzip);
        assert_eq!(read_all_lines(input).expect("read"), ["\u{1f}"]);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        assert!(open_input(Path::new("/nonexistent/rebuff/test.log")).is_err());
    }

    proptest! {
        #[test]
        fn line_reader_returns_exactly_the_newline_split_input(
            data in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'a'), Just(b'\r'), any::<u8>()], 0..2000),
            step in 1usize..300,
        ) {
            let mut expected: Vec<&[u8]> = data.split(|&c| c == b'\n').collect();
            if data.last().is_none_or(|&c| c == b'\n') {
                // A final `\n` ends the last line rather than starting one.
                expected.pop();
            }
            let expected: Vec<&[u8]> = expected
                .into_iter()
                .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
                .collect();
            let max_line = expected.iter().map(|l| l.len()).max().unwrap_or(0);
            let mut reader = LineReader::new(Trickle { data: &data, step }, max_line);
            let mut got = Vec::new();
            while let Some(line) = reader.next_line().expect("no I/O error") {
                prop_assert!(!line.truncated);
                got.push(line.bytes.to_vec());
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(reader.bytes_read(), data.len() as u64);
        }

        #[test]
        fn line_reader_truncates_exactly_the_lines_longer_than_max_line(
            data in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'a'), Just(b'\r'), any::<u8>()], 0..2000),
            step in 1usize..300,
            max_line in 0usize..40,
        ) {
            let mut expected: Vec<&[u8]> = data.split(|&c| c == b'\n').collect();
            if data.last().is_none_or(|&c| c == b'\n') {
                expected.pop();
            }
            let expected: Vec<(Vec<u8>, bool)> = expected
                .into_iter()
                .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
                .map(|line| (line[..line.len().min(max_line)].to_vec(), line.len() > max_line))
                .collect();
            let mut reader = LineReader::new(Trickle { data: &data, step }, max_line);
            let mut got = Vec::new();
            while let Some(line) = reader.next_line().expect("no I/O error") {
                got.push((line.bytes.to_vec(), line.truncated));
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(reader.bytes_read(), data.len() as u64);
        }
    }
}
