//! JSONnet evaluation in a child process, under limits.
//!
//! A JSONnet file is a program: `std.range(0, 2e8)` asks for gigabytes, a
//! string doubled in a loop for more, and a loop may simply not end. The
//! evaluator (`rsjsonnet-lang`) offers a call-depth limit and nothing else:
//! no allocation budget, no step counter, no hook that runs during
//! evaluation. A cooperative bound inside this process would need one, and a
//! failed allocation aborts the whole process, which for a daemon reloading
//! its configuration is the one outcome that must not happen.
//!
//! So the rebuff binary evaluates each JSONnet file in a copy of itself,
//! started with [`CHILD_ARG`](super::CHILD_ARG). The child first lowers its
//! own limits (address space [`JSONNET_MEMORY`], CPU time, no core file),
//! then evaluates and converts the value exactly as in-process evaluation
//! does, within the tree bytes the parent has left, and writes the resulting
//! tree or error to its stdout in a small binary encoding. The parent kills
//! it at the wall-clock deadline, reads at most the bytes the tree may take,
//! and decodes while counting the tree against its own budget. Whatever the
//! child does, the parent only ever sees a bounded answer or a clear error
//! naming the file; nothing is shared but the pipe. Spawning from a
//! multi-threaded process is what `std::process::Command` is built for, so
//! a daemon can do it at reload time as well as at start.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{Resource, Rlimit, Signal, setrlimit};

use super::super::tree::{Key, Loc, Node, ParseError, Value};
use super::super::{Budget, JSONNET_MEMORY, JSONNET_TIME, NODE_COST, mib};
use super::{CHILD_ARG, MAX_DEPTH, eval_here};

/// Room for the child's error messages and the encoding's own framing.
const SLACK: usize = 1 << 20;

/// Most of the child's stderr kept for the error message.
const STDERR_KEPT: u64 = 16 << 10;

/// Runs the evaluator child on `path` and returns its tree, counted against
/// `budget`, or why there is none.
pub(super) fn evaluate(
    program: &Path,
    path: &Path,
    root: &Path,
    budget: &mut Budget,
) -> Result<Node, ParseError> {
    let fail = |message: String| ParseError::in_file(path, message);
    // Counted and checked here (a regular file, not too large); the child
    // reads it again for itself.
    budget.read(path)?;
    let time_left = budget.jsonnet_left();
    if time_left.is_zero() {
        return Err(fail(out_of_time()));
    }
    let tree_left = budget.tree_left();
    let cpu_seconds = time_left.as_secs().saturating_add(1);
    let started = Instant::now();
    let mut child = Command::new(program)
        .arg(CHILD_ARG)
        .arg(path)
        .arg(root)
        .arg(tree_left.to_string())
        .arg(cpu_seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot start the JSONnet evaluator {}: {e}",
                program.display()
            ))
        })?;
    let answer_limit = tree_left.saturating_add(SLACK);
    let stdout = child.stdout.take().map(|out| {
        std::thread::spawn(move || {
            let mut data = Vec::new();
            let read = out
                .take(answer_limit as u64 + 1)
                .read_to_end(&mut data)
                .is_ok();
            (data, read)
        })
    });
    let stderr = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            let mut data = Vec::new();
            let mut err = err;
            let _ = (&mut err).take(STDERR_KEPT).read_to_end(&mut data);
            // Drain the rest so the child never blocks on a full pipe.
            let _ = std::io::copy(&mut err, &mut std::io::sink());
            data
        })
    });
    let deadline = started + time_left;
    let status = wait_until(&mut child, deadline);
    budget.spend_jsonnet(started.elapsed());
    let (answer, read_ok) = stdout
        .and_then(|t| t.join().ok())
        .unwrap_or((Vec::new(), false));
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let status = match status {
        Ok(Some(status)) => status,
        Ok(None) => return Err(fail(out_of_time())),
        Err(e) => return Err(fail(format!("cannot wait for the JSONnet evaluator: {e}"))),
    };
    if !status.success() {
        return Err(fail(failure(status, &stderr)));
    }
    if !read_ok || answer.len() > answer_limit {
        return Err(fail(
            "the JSONnet evaluator's answer could not be read whole".to_owned(),
        ));
    }
    Decoder {
        bytes: &answer,
        pos: 0,
        files: Vec::new(),
        budget,
    }
    .answer()
    .map_err(|why| {
        fail(format!(
            "malformed answer from the JSONnet evaluator: {why}"
        ))
    })?
}

/// Waits for `child` until `deadline`, then kills it: `None` when it had to
/// be killed.
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn out_of_time() -> String {
    format!(
        "JSONnet evaluation did not finish within {} s, the time all JSONnet files of a \
         configuration may take together (a loop that does not end, or a computation far \
         larger than a configuration needs?)",
        JSONNET_TIME.as_secs()
    )
}

/// Why the child did not answer, from how it ended.
fn failure(status: ExitStatus, stderr: &[u8]) -> String {
    let said = String::from_utf8_lossy(stderr);
    let signal = status.signal();
    if signal == Some(Signal::XCPU.as_raw()) || signal == Some(Signal::KILL.as_raw()) {
        return out_of_time();
    }
    if said.contains("memory allocation of") || said.contains("capacity overflow") {
        return format!(
            "JSONnet evaluation needed more than {} of memory (a value that grows without \
             end: a huge std.range, or strings or objects doubled in a loop?)",
            mib(JSONNET_MEMORY)
        );
    }
    let last = said.lines().rev().find(|l| !l.trim().is_empty());
    match last {
        Some(line) => format!("the JSONnet evaluator failed ({status}): {}", line.trim()),
        None => format!("the JSONnet evaluator failed ({status})"),
    }
}

/// The child's side: `args` are what follows [`CHILD_ARG`].
pub fn child_main(args: &[OsString]) -> ExitCode {
    let [path, root, tree, cpu] = args else {
        eprintln!("usage: rebuff {CHILD_ARG} FILE ROOT TREE_BYTES CPU_SECONDS");
        return ExitCode::from(2);
    };
    let number = |arg: &OsString| arg.to_str().and_then(|s| s.parse::<u64>().ok());
    let (Some(tree), Some(cpu)) = (number(tree), number(cpu)) else {
        eprintln!("rebuff {CHILD_ARG}: TREE_BYTES and CPU_SECONDS are whole numbers");
        return ExitCode::from(2);
    };
    let limits = [
        (Resource::As, JSONNET_MEMORY, JSONNET_MEMORY),
        (Resource::Cpu, cpu, cpu.saturating_add(1)),
        (Resource::Core, 0, 0),
    ];
    for (resource, current, maximum) in limits {
        let limit = Rlimit {
            current: Some(current),
            maximum: Some(maximum),
        };
        if let Err(e) = setrlimit(resource, limit) {
            eprintln!("rebuff {CHILD_ARG}: cannot limit {resource:?}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut budget = Budget::with_tree_limit(usize::try_from(tree).unwrap_or(usize::MAX));
    let result = eval_here(Path::new(path), Path::new(root), &mut budget);
    let mut encoder = Encoder::default();
    encoder.answer(&result);
    drop(result);
    let mut out = std::io::stdout().lock();
    if out
        .write_all(&encoder.out)
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------
// The answer's encoding: little-endian integers, length-prefixed bytes.
//
//   answer  = 0 node | 1 loc message
//   loc     = file line:u32 col:u32
//   file    = u32 index of a file already named | u32::MAX bytes (a new one)
//   node    = tag:u8 loc payload
//   payload = null | bool:u8 | i64 | f64 bits | bytes | count:u32 node*
//           | count:u32 (bytes loc node)*
//   bytes   = len:u32 data

const NULL: u8 = 0;
const BOOL: u8 = 1;
const INT: u8 = 2;
const FLOAT: u8 = 3;
const STR: u8 = 4;
const SEQ: u8 = 5;
const MAP: u8 = 6;
const NEW_FILE: u32 = u32::MAX;

#[derive(Default)]
struct Encoder {
    out: Vec<u8>,
    files: Vec<Arc<Path>>,
}

impl Encoder {
    fn answer(&mut self, result: &Result<Node, ParseError>) {
        match result {
            Ok(node) => {
                self.out.push(0);
                self.node(node);
            }
            Err(err) => {
                self.out.push(1);
                self.loc(&err.loc);
                self.bytes(err.message.as_bytes());
            }
        }
    }

    fn u32(&mut self, n: u32) {
        self.out.extend_from_slice(&n.to_le_bytes());
    }

    fn len(&mut self, n: usize) {
        // The tree budget keeps every length far below 4 GiB.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn bytes(&mut self, data: &[u8]) {
        self.len(data.len());
        self.out.extend_from_slice(data);
    }

    fn loc(&mut self, loc: &Loc) {
        match self.files.iter().position(|f| *f == loc.file) {
            Some(index) => self.len(index),
            None => {
                self.u32(NEW_FILE);
                self.bytes(loc.file.as_os_str().as_bytes());
                self.files.push(loc.file.clone());
            }
        }
        self.u32(loc.line);
        self.u32(loc.col);
    }

    fn node(&mut self, node: &Node) {
        let tag = match &node.value {
            Value::Null => NULL,
            Value::Bool(_) => BOOL,
            Value::Int(_) => INT,
            Value::Float(_) => FLOAT,
            Value::Str(_) => STR,
            Value::Seq(_) => SEQ,
            Value::Map(_) => MAP,
        };
        self.out.push(tag);
        self.loc(&node.loc);
        match &node.value {
            Value::Null => {}
            Value::Bool(b) => self.out.push(u8::from(*b)),
            Value::Int(i) => self.out.extend_from_slice(&i.to_le_bytes()),
            Value::Float(f) => self.out.extend_from_slice(&f.to_bits().to_le_bytes()),
            Value::Str(s) => self.bytes(s.as_bytes()),
            Value::Seq(items) => {
                self.len(items.len());
                for item in items {
                    self.node(item);
                }
            }
            Value::Map(entries) => {
                self.len(entries.len());
                for (key, value) in entries {
                    self.bytes(key.name.as_bytes());
                    self.loc(&key.loc);
                    self.node(value);
                }
            }
        }
    }
}

struct Decoder<'a, 'b> {
    bytes: &'a [u8],
    pos: usize,
    files: Vec<Arc<Path>>,
    budget: &'b mut Budget,
}

/// The smallest encoded node: a tag and a loc.
const MIN_NODE: usize = 13;

impl Decoder<'_, '_> {
    fn answer(mut self) -> Result<Result<Node, ParseError>, String> {
        let result = match self.u8()? {
            0 => Ok(self.node(0)?),
            1 => {
                let loc = self.loc()?;
                let message = self.string()?;
                Err(ParseError::new(loc, message))
            }
            other => return Err(format!("unknown answer kind {other}")),
        };
        if self.pos != self.bytes.len() {
            return Err("trailing bytes".to_owned());
        }
        Ok(result)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or("truncated")?;
        let data = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(data)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut raw = [0; 4];
        raw.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(raw))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut raw = [0; 8];
        raw.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(raw))
    }

    fn bytes(&mut self) -> Result<&[u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a string is not UTF-8".to_owned())
    }

    /// A count of elements, each at least `min` bytes long.
    fn count(&mut self, min: usize) -> Result<usize, String> {
        let count = self.u32()? as usize;
        if count.saturating_mul(min) > self.bytes.len() - self.pos {
            return Err("a count larger than the answer".to_owned());
        }
        Ok(count)
    }

    fn loc(&mut self) -> Result<Loc, String> {
        let file = match self.u32()? {
            NEW_FILE => {
                let path = PathBuf::from(OsString::from_vec(self.bytes()?.to_vec()));
                let file: Arc<Path> = Arc::from(path.as_path());
                self.files.push(file.clone());
                file
            }
            index => self
                .files
                .get(index as usize)
                .cloned()
                .ok_or("an unknown file index")?,
        };
        let line = self.u32()?;
        let col = self.u32()?;
        Ok(Loc::new(file, line, col))
    }

    fn spend(&mut self, bytes: usize) -> Result<(), String> {
        self.budget.spend(bytes, false)
    }

    fn node(&mut self, depth: usize) -> Result<Node, String> {
        if depth > MAX_DEPTH + 1 {
            return Err("nested too deeply".to_owned());
        }
        self.spend(NODE_COST)?;
        let tag = self.u8()?;
        let loc = self.loc()?;
        let value = match tag {
            NULL => Value::Null,
            BOOL => Value::Bool(self.u8()? != 0),
            INT => Value::Int(self.u64()? as i64),
            FLOAT => Value::Float(f64::from_bits(self.u64()?)),
            STR => {
                let text = self.string()?;
                self.spend(text.len())?;
                Value::Str(text)
            }
            SEQ => {
                let count = self.count(MIN_NODE)?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.node(depth + 1)?);
                }
                Value::Seq(items)
            }
            MAP => {
                let count = self.count(4 + 12 + MIN_NODE)?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let name = self.string()?;
                    self.spend(NODE_COST.saturating_add(name.len()))?;
                    let loc = self.loc()?;
                    let value = self.node(depth + 1)?;
                    entries.push((Key { name, loc }, value));
                }
                Value::Map(entries)
            }
            other => return Err(format!("unknown value kind {other}")),
        };
        Ok(Node { value, loc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tree::shared_path;

    fn round_trip(result: &Result<Node, ParseError>) -> Result<Node, ParseError> {
        let mut encoder = Encoder::default();
        encoder.answer(result);
        let mut budget = Budget::new();
        Decoder {
            bytes: &encoder.out,
            pos: 0,
            files: Vec::new(),
            budget: &mut budget,
        }
        .answer()
        .expect("decodes")
    }

    #[test]
    fn trees_and_errors_survive_the_encoding() {
        let main = shared_path(Path::new("conf/main.jsonnet"));
        let lib = shared_path(Path::new("conf/lib/x.libsonnet"));
        let at = |line| Loc::new(main.clone(), line, 3);
        let node = Node {
            loc: at(1),
            value: Value::Map(vec![
                (
                    Key {
                        name: "é".into(),
                        loc: at(2),
                    },
                    Node {
                        loc: Loc::file_only(main.clone()),
                        value: Value::Seq(vec![
                            Node {
                                loc: at(3),
                                value: Value::Null,
                            },
                            Node {
                                loc: at(3),
                                value: Value::Bool(true),
                            },
                            Node {
                                loc: at(4),
                                value: Value::Int(-7),
                            },
                            Node {
                                loc: at(5),
                                value: Value::Float(0.25),
                            },
                            Node {
                                loc: at(6),
                                value: Value::Str("<ip>".into()),
                            },
                        ]),
                    },
                ),
                (
                    Key {
                        name: "m".into(),
                        loc: at(7),
                    },
                    Node {
                        loc: at(7),
                        value: Value::Map(vec![]),
                    },
                ),
            ]),
        };
        assert_eq!(round_trip(&Ok(node.clone())), Ok(node));
        let err = ParseError::new(Loc::new(lib, 9, 1), "boom");
        assert_eq!(round_trip(&Err(err.clone())), Err(err));
    }

    #[test]
    fn a_truncated_or_lying_answer_is_an_error_not_a_panic() {
        let node = Node {
            loc: Loc::new(shared_path(Path::new("m.jsonnet")), 1, 1),
            value: Value::Seq(vec![
                Node {
                    loc: Loc::new(shared_path(Path::new("m.jsonnet")), 1, 2),
                    value: Value::Str("x".into()),
                };
                3
            ]),
        };
        let mut encoder = Encoder::default();
        encoder.answer(&Ok(node));
        let full = encoder.out;
        for cut in 0..full.len() {
            let mut budget = Budget::new();
            let decoded = Decoder {
                bytes: &full[..cut],
                pos: 0,
                files: Vec::new(),
                budget: &mut budget,
            }
            .answer();
            assert!(decoded.is_err(), "cut at {cut}");
        }
        // A count claiming more elements than bytes remain.
        // answer kind, node tag, new file + its name, line, col: the count.
        let at = 1 + 1 + 4 + 4 + "m.jsonnet".len() + 4 + 4;
        let mut lying = full.clone();
        assert_eq!(lying[at..at + 4], 3u32.to_le_bytes());
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut budget = Budget::new();
        let decoded = Decoder {
            bytes: &lying,
            pos: 0,
            files: Vec::new(),
            budget: &mut budget,
        }
        .answer();
        assert!(decoded.is_err());
    }

    #[test]
    fn the_decoded_tree_is_counted_against_the_budget() {
        let node = Node {
            loc: Loc::new(shared_path(Path::new("m.jsonnet")), 1, 1),
            value: Value::Str("x".repeat(4096)),
        };
        let mut encoder = Encoder::default();
        encoder.answer(&Ok(node));
        let mut budget = Budget::with_tree_limit(1024);
        let decoded = Decoder {
            bytes: &encoder.out,
            pos: 0,
            files: Vec::new(),
            budget: &mut budget,
        }
        .answer();
        assert!(decoded.is_err_and(|e| e.contains("too large")));
    }
}
