//! The seed's `BulkIpSet`: the startup check (`create` or `list`), and the
//! add/del calls of one flush sent as one `-exist add|del` call, or as one
//! `ipset restore` for two or more. The program runs with an empty
//! environment, stdin from /dev/null (or the batch), output discarded.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::addr::Addr;
use super::log::{Level, Logger};

/// Where the sets live and how to reach them.
#[derive(Debug, Clone)]
pub struct IpsetOptions {
    pub exe: String,
    pub name: String,
    /// The IPv6 set (rebuff's extension).
    pub name6: Option<String>,
    pub maxelem: i64,
    pub timeout: i64,
    pub create: bool,
    pub dry_run: bool,
}

#[derive(Debug)]
pub struct Ipset {
    options: IpsetOptions,
    calls: Vec<[String; 4]>,
    log: Logger,
    who: String,
    /// Calls that failed.
    pub failures: u64,
}

/// A program name without a slash is looked up as Python's subprocess does
/// with an empty environment: in `/bin` then `/usr/bin`.
fn resolve(exe: &str) -> PathBuf {
    if exe.contains('/') {
        return PathBuf::from(exe);
    }
    for dir in ["/bin", "/usr/bin"] {
        let path = PathBuf::from(dir).join(exe);
        if path.is_file() {
            return path;
        }
    }
    PathBuf::from(format!("/bin/{exe}"))
}

impl Ipset {
    pub fn new(options: IpsetOptions, log: Logger) -> Self {
        let who = format!("BulkIpSet.{}", options.name);
        Self {
            options,
            calls: Vec::new(),
            log,
            who,
            failures: 0,
        }
    }

    fn run(&mut self, stdin: Option<&str>, args: &[&str]) -> bool {
        let mut argv = vec![self.options.exe.as_str()];
        argv.extend_from_slice(args);
        let shown = argv.join(" ");
        if self.log.enabled(Level::Debug) {
            self.log.log(Level::Debug, &self.who, &shown);
            if let Some(input) = stdin {
                self.log
                    .log(Level::Debug, &self.who, &input.replace('\n', ""));
            }
        }
        if self.options.dry_run {
            return true;
        }
        let result = (|| -> std::io::Result<std::process::ExitStatus> {
            let mut child = Command::new(resolve(&self.options.exe))
                .args(args)
                .env_clear()
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
                // As Python's encode("ascii", errors="replace").
                let ascii: Vec<u8> = input
                    .chars()
                    .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                    .collect();
                let written = pipe.write_all(&ascii);
                drop(pipe);
                if let Err(e) = written
                    && e.kind() != std::io::ErrorKind::BrokenPipe
                {
                    let _ = child.wait();
                    return Err(e);
                }
            }
            child.wait()
        })();
        let error = match result {
            Ok(status) if status.success() => return true,
            Ok(status) => match status.code() {
                Some(code) => format!("exit status {code}"),
                None => format!("{status}"),
            },
            Err(e) => e.to_string(),
        };
        self.failures += 1;
        self.log.log(
            Level::Error,
            &self.who,
            &format!("Command failed: {shown} - {error}"),
        );
        false
    }

    /// The startup check; the error message when it fails.
    pub fn check(&mut self) -> Result<(), String> {
        let maxelem = self.options.maxelem.max(1).to_string();
        let timeout = self.options.timeout.max(0).to_string();
        let mut sets = vec![(self.options.name.clone(), "inet")];
        if let Some(name6) = self.options.name6.clone() {
            sets.push((name6, "inet6"));
        }
        for (name, family) in sets {
            if self.options.create {
                let args = [
                    "-exist", "create", &name, "hash:ip", "family", family, "maxelem", &maxelem,
                    "timeout", &timeout,
                ];
                if !self.run(None, &args) {
                    return Err(format!("Cannot create ipset {name}"));
                }
            } else if !self.run(None, &["-terse", "list", &name]) {
                return Err(format!("Cannot find ipset '{name}'"));
            }
        }
        Ok(())
    }

    fn set_for(&self, addr: Addr) -> String {
        match addr {
            Addr::V6(_) => self
                .options
                .name6
                .clone()
                .unwrap_or_else(|| self.options.name.clone()),
            Addr::V4(_) => self.options.name.clone(),
        }
    }

    /// Queues an add (resetting the entry's timeout).
    pub fn update(&mut self, addr: Addr) {
        self.log
            .log(Level::Info, &self.who, &format!("Update {addr}"));
        let set = self.set_for(addr);
        self.calls
            .push(["-exist".into(), "add".into(), set, addr.to_string()]);
    }

    /// Queues a delete (of an address that may be absent).
    pub fn remove(&mut self, addr: Addr) {
        self.log
            .log(Level::Info, &self.who, &format!("Remove {addr}"));
        let set = self.set_for(addr);
        self.calls
            .push(["-exist".into(), "del".into(), set, addr.to_string()]);
    }

    /// Sends the queued calls.
    pub fn apply(&mut self) {
        let calls = std::mem::take(&mut self.calls);
        match calls.len() {
            0 => {}
            1 => {
                let args: Vec<&str> = calls[0].iter().map(String::as_str).collect();
                self.run(None, &args);
            }
            _ => {
                let mut input = String::with_capacity(calls.len() * 40);
                for call in &calls {
                    input.push_str(&call.join(" "));
                    input.push('\n');
                }
                self.run(Some(&input), &["restore"]);
            }
        }
    }
}
