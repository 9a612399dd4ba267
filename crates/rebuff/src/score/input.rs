//! Lines as the seed reads them: from stdin as they are, or from a path
//! opened read-write (a FIFO then never reaches end of file, whatever its
//! writers do) with Python's universal newlines (`\r\n` and `\r` end a
//! line and read as `\n`). Each line keeps its newline; a last line without
//! one is read at end of file.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Where lines come from.
#[derive(Debug)]
pub struct LineReader {
    file: File,
    universal: bool,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    scratch: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

/// Opens `--input`: `-` for stdin, else a path, made a FIFO when missing
/// and `create` is set.
pub fn open(input: &str, create: bool) -> Result<LineReader, String> {
    if input == "-" {
        use std::os::fd::AsFd;
        let fd = io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("Cannot open '-': {e}"))?;
        return Ok(LineReader::new(File::from(fd), false));
    }
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(input)
    };
    let file = match open() {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            rustix::fs::mkfifoat(
                rustix::fs::CWD,
                Path::new(input),
                rustix::fs::Mode::from(0o666),
            )
            .map_err(|e| format!("Cannot open '{input}': {}", io::Error::from(e)))?;
            open().map_err(|e| format!("Cannot open '{input}': {e}"))?
        }
        Err(e) => return Err(format!("Cannot open '{input}': {e}")),
    };
    Ok(LineReader::new(file, true))
}

impl LineReader {
    pub fn new(file: File, universal: bool) -> Self {
        Self {
            file,
            universal,
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
            eof: false,
            scratch: Vec::new(),
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match self.file.read(&mut self.buf[self.end..]) {
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

    /// Whether [`LineReader::next_line`] can answer without reading.
    pub fn has_buffered_line(&self) -> bool {
        let window = &self.buf[self.start..self.end];
        if self.eof {
            return !window.is_empty();
        }
        if self.universal {
            // A '\r' last in the buffer waits for the next byte.
            memchr::memchr2(b'\n', b'\r', window)
                .is_some_and(|p| p + 1 < window.len() || window[p] == b'\n')
        } else {
            memchr::memchr(b'\n', window).is_some()
        }
    }

    /// The next line, with its newline; `None` at end of file.
    pub fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            let window = &self.buf[self.start..self.end];
            let found = if self.universal {
                memchr::memchr2(b'\n', b'\r', window)
            } else {
                memchr::memchr(b'\n', window)
            };
            if let Some(p) = found {
                let p = self.start + p;
                if self.buf[p] == b'\n' {
                    let line = self.start..p + 1;
                    self.start = p + 1;
                    return Ok(Some(&self.buf[line]));
                }
                // A '\r': is a '\n' next?
                if p + 1 == self.end && !self.eof {
                    self.fill()?;
                    continue;
                }
                let skip = if self.buf.get(p + 1) == Some(&b'\n') && p + 1 < self.end {
                    2
                } else {
                    1
                };
                self.scratch.clear();
                self.scratch.extend_from_slice(&self.buf[self.start..p]);
                self.scratch.push(b'\n');
                self.start = p + skip;
                return Ok(Some(&self.scratch));
            }
            if self.eof {
                if self.start < self.end {
                    let line = self.start..self.end;
                    self.start = self.end;
                    return Ok(Some(&self.buf[line]));
                }
                return Ok(None);
            }
            self.fill()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8], universal: bool) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in");
        std::fs::write(&path, bytes).expect("write");
        let mut reader = LineReader::new(File::open(&path).expect("open"), universal);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().expect("reads") {
            out.push(String::from_utf8_lossy(line).into_owned());
        }
        out
    }

    #[test]
    fn newlines() {
        assert_eq!(lines(b"a\nb\r\nc\rd", false), ["a\n", "b\r\n", "c\rd"]);
        assert_eq!(lines(b"a\nb\r\nc\rd\r", true), ["a\n", "b\n", "c\n", "d\n"]);
        assert!(lines(b"", true).is_empty());
    }
}
