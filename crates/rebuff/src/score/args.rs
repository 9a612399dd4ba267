//! The seed's command line, parsed as Python's argparse does: `--opt value`
//! and `--opt=value`, unique prefixes of long options, the last occurrence
//! wins, usage errors exit 2, `-h/--help` prints the help and exits 0.

use std::path::PathBuf;

use super::ini::{parse_int, py_strip};
use super::log::Level;

/// The parsed options, with the seed's defaults.
#[derive(Debug, Clone)]
pub struct Args {
    pub input: String,
    pub input_create: bool,
    pub ruleset: PathBuf,
    pub ipset: String,
    pub ipset6: Option<String>,
    pub ipset_create: bool,
    pub ipset_create_maxelem: i64,
    pub ipset_create_timeout: i64,
    pub ipset_exe: String,
    pub update_interval: f64,
    pub score_threshold: i64,
    pub score_min: i64,
    pub score_timeout: f64,
    pub score_limit: i64,
    pub exclude_local: bool,
    pub systemd: bool,
    pub log_level: Level,
    pub log_time: bool,
    pub dry_run: bool,
}

/// The outcome of parsing.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Args>),
    Help(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Flag,
    Str,
    Int,
    Float,
    Level,
}

const OPTIONS: &[(&str, Kind, &str, &str)] = &[
    (
        "--input",
        Kind::Str,
        "STREAM",
        "pipe to read from or '-' for stdin",
    ),
    (
        "--input-create",
        Kind::Flag,
        "",
        "create the fifo with current umask if needed",
    ),
    ("--ruleset", Kind::Str, "INI", "ruleset configuration file"),
    (
        "--ipset",
        Kind::Str,
        "NAME",
        "name of the ipset to maintain",
    ),
    (
        "--ipset6",
        Kind::Str,
        "NAME",
        "name of the IPv6 ipset to maintain (default: IPv4 only)",
    ),
    (
        "--ipset-create",
        Kind::Flag,
        "",
        "create the ipset if needed",
    ),
    (
        "--ipset-create-maxelem",
        Kind::Int,
        "NUM",
        "max ipset size when creating (default: 65536)",
    ),
    (
        "--ipset-create-timeout",
        Kind::Int,
        "SEC",
        "ipset timeout when creating (default: 300)",
    ),
    (
        "--ipset-exe",
        Kind::Str,
        "CMD",
        "path to ipset command binary (default: /usr/sbin/ipset)",
    ),
    (
        "--update-interval",
        Kind::Float,
        "SEC",
        "how often to apply ipset changes (default: 5.0)",
    ),
    (
        "--score-threshold",
        Kind::Int,
        "NUM",
        "add address when above, remove otherwise (default: 0)",
    ),
    (
        "--score-min",
        Kind::Int,
        "NUM",
        "minimum value, if negative scores are involved (default: 0)",
    ),
    (
        "--score-timeout",
        Kind::Float,
        "SEC",
        "how long to locally keep address scores (default: 300.0)",
    ),
    (
        "--score-limit",
        Kind::Int,
        "LIMIT",
        "number of addresses to track locally (default: 65536)",
    ),
    (
        "--exclude-local",
        Kind::Flag,
        "",
        "ignore results for reserved local addresses",
    ),
    (
        "--systemd",
        Kind::Flag,
        "",
        "try to signal systemd readiness",
    ),
    (
        "--log-level",
        Kind::Level,
        "LVL",
        "log level: debug, info, warning, error (default: info)",
    ),
    ("--log-time", Kind::Flag, "", "prefix log with timestamp"),
    (
        "--dry-run",
        Kind::Flag,
        "",
        "do not actually perform ipset operations",
    ),
];

const PROG: &str = "rebuff score";

/// The usage line.
pub fn usage() -> String {
    format!(
        "usage: {PROG} [-h] --input STREAM [--input-create] --ruleset INI --ipset NAME [--ipset6 NAME]\n\
         \x20                   [--ipset-create] [--ipset-create-maxelem NUM] [--ipset-create-timeout SEC]\n\
         \x20                   [--ipset-exe CMD] [--update-interval SEC] [--score-threshold NUM]\n\
         \x20                   [--score-min NUM] [--score-timeout SEC] [--score-limit LIMIT] [--exclude-local]\n\
         \x20                   [--systemd] [--log-level LVL] [--log-time] [--dry-run]"
    )
}

fn help() -> String {
    let mut text = usage();
    text.push_str(
        "\n\nParse a log stream and track per-IP-address 'anomaly scores'.\n\
         An ipset is maintained for blocking subsequent access according to the configured ruleset and threshold.\n\
         A drop-in for ipset-score-daemon.py.\n\noptions:\n  -h, --help            show this help message and exit\n",
    );
    for (name, kind, metavar, help) in OPTIONS {
        let left = if *kind == Kind::Flag {
            name.to_string()
        } else {
            format!("{name} {metavar}")
        };
        text.push_str(&format!("  {left:<30} {help}\n"));
    }
    text
}

/// Python's `float(str)`.
pub fn parse_float(text: &str) -> Option<f64> {
    let s = py_strip(text);
    let lower = s.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if s.is_empty() || lower.len() - body.len() > 1 {
        return None;
    }
    if matches!(body, "inf" | "infinity" | "nan") {
        return lower.parse().ok();
    }
    // Underscores only between digits.
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_'
            && !(i > 0
                && bytes[i - 1].is_ascii_digit()
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            return None;
        }
    }
    let cleaned: String = s.chars().filter(|&c| c != '_').collect();
    if !cleaned
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    cleaned.parse().ok()
}

fn is_negative_number(arg: &str) -> bool {
    let Some(rest) = arg.strip_prefix('-') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(rest)
        || rest
            .split_once('.')
            .is_some_and(|(a, b)| a.bytes().all(|c| c.is_ascii_digit()) && digits(b))
}

/// Whether argparse would take `arg` for an option (not a value).
fn looks_like_option(arg: &str) -> bool {
    if !arg.starts_with('-') || arg == "-" {
        return false;
    }
    if arg == "--" || arg.starts_with("--") && lookup(arg.split('=').next().unwrap_or(arg)).is_ok()
    {
        return true;
    }
    if is_negative_number(arg) || arg.contains(' ') {
        return false;
    }
    true
}

/// The option named by `name` (exact, or a unique prefix).
fn lookup(name: &str) -> Result<usize, String> {
    if let Some(i) = OPTIONS.iter().position(|(n, ..)| *n == name) {
        return Ok(i);
    }
    if name.starts_with("--") && name.len() > 2 {
        let matches: Vec<usize> = (0..OPTIONS.len())
            .filter(|&i| OPTIONS[i].0.starts_with(name))
            .collect();
        match matches.len() {
            1 => return Ok(matches[0]),
            0 => {}
            _ => {
                let names: Vec<&str> = matches.iter().map(|&i| OPTIONS[i].0).collect();
                return Err(format!(
                    "ambiguous option: {name} could match {}",
                    names.join(", ")
                ));
            }
        }
    }
    Err(String::new())
}

/// Parses the arguments after `score`; a usage error's message.
pub fn parse(argv: &[String]) -> Result<Parsed, String> {
    let mut args = Args {
        input: String::new(),
        input_create: false,
        ruleset: PathBuf::new(),
        ipset: String::new(),
        ipset6: None,
        ipset_create: false,
        ipset_create_maxelem: 65536,
        ipset_create_timeout: 300,
        ipset_exe: "/usr/sbin/ipset".to_string(),
        update_interval: 5.0,
        score_threshold: 0,
        score_min: 0,
        score_timeout: 300.0,
        score_limit: 65536,
        exclude_local: false,
        systemd: false,
        log_level: Level::Info,
        log_time: false,
        dry_run: false,
    };
    let mut seen = [false; 4]; // input, ruleset, ipset, and spare
    let mut unrecognized: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        let arg = argv[i].as_str();
        i += 1;
        if arg == "--" {
            unrecognized.extend(argv[i..].iter().map(String::as_str));
            break;
        }
        if arg == "-h"
            || arg == "--help"
            || (arg.len() > 2 && "--help".starts_with(arg) && lookup(arg).is_err())
        {
            return Ok(Parsed::Help(help()));
        }
        if !looks_like_option(arg) {
            unrecognized.push(arg);
            continue;
        }
        let (name, explicit) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        let index = match lookup(name) {
            Ok(i) => i,
            Err(e) if !e.is_empty() => return Err(e),
            Err(_) => {
                unrecognized.push(arg);
                continue;
            }
        };
        let (opt, kind, ..) = OPTIONS[index];
        if kind == Kind::Flag {
            if let Some(v) = explicit {
                return Err(format!("argument {opt}: ignored explicit argument '{v}'"));
            }
            match opt {
                "--input-create" => args.input_create = true,
                "--ipset-create" => args.ipset_create = true,
                "--exclude-local" => args.exclude_local = true,
                "--systemd" => args.systemd = true,
                "--log-time" => args.log_time = true,
                _ => args.dry_run = true,
            }
            continue;
        }
        let value = match explicit {
            Some(v) => v,
            None => match argv.get(i) {
                Some(v) if !looks_like_option(v) => {
                    i += 1;
                    v.as_str()
                }
                _ => return Err(format!("argument {opt}: expected one argument")),
            },
        };
        let int = |v: &str| {
            parse_int(v).ok_or_else(|| format!("argument {opt}: invalid int value: '{v}'"))
        };
        let float = |v: &str| {
            parse_float(v).ok_or_else(|| format!("argument {opt}: invalid float value: '{v}'"))
        };
        match opt {
            "--input" => {
                args.input = value.to_string();
                seen[0] = true;
            }
            "--ruleset" => {
                args.ruleset = PathBuf::from(value);
                seen[1] = true;
            }
            "--ipset" => {
                args.ipset = value.to_string();
                seen[2] = true;
            }
            "--ipset6" => args.ipset6 = Some(value.to_string()),
            "--ipset-exe" => args.ipset_exe = value.to_string(),
            "--ipset-create-maxelem" => args.ipset_create_maxelem = int(value)?,
            "--ipset-create-timeout" => args.ipset_create_timeout = int(value)?,
            "--score-threshold" => args.score_threshold = int(value)?,
            "--score-min" => args.score_min = int(value)?,
            "--score-limit" => args.score_limit = int(value)?,
            "--update-interval" => args.update_interval = float(value)?,
            "--score-timeout" => args.score_timeout = float(value)?,
            _ => {
                args.log_level = Level::parse(value).ok_or_else(|| {
                    format!(
                        "argument {opt}: invalid choice: '{value}' (choose from 'debug', 'info', 'warning', 'error')"
                    )
                })?
            }
        }
    }
    let missing: Vec<&str> = [
        ("--input", seen[0]),
        ("--ruleset", seen[1]),
        ("--ipset", seen[2]),
    ]
    .iter()
    .filter(|(_, s)| !s)
    .map(|(n, _)| *n)
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the following arguments are required: {}",
            missing.join(", ")
        ));
    }
    if !unrecognized.is_empty() {
        return Err(format!(
            "unrecognized arguments: {}",
            unrecognized.join(" ")
        ));
    }
    Ok(Parsed::Run(Box::new(args)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Args {
        let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&argv) {
            Ok(Parsed::Run(args)) => *args,
            other => panic!("{other:?}"),
        }
    }

    fn parse_err(args: &[&str]) -> String {
        let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&argv) {
            Err(e) => e,
            other => panic!("{other:?}"),
        }
    }

    const BASE: [&str; 6] = ["--input", "-", "--ruleset", "r.ini", "--ipset", "s"];

    #[test]
    fn defaults_forms_prefixes_and_negatives() {
        let a = parse_ok(&BASE);
        assert_eq!(a.input, "-");
        assert_eq!(a.update_interval, 5.0);
        assert_eq!(a.score_limit, 65536);
        assert_eq!(a.ipset_exe, "/usr/sbin/ipset");
        let a = parse_ok(&[
            "--input=-",
            "--rules",
            "r.ini",
            "--ipset=s",
            "--score-min",
            "-5",
            "--score-thr=1_0",
            "--update-interval",
            " 1e-1 ",
            "--dry",
            "--log-level=debug",
            "--score-min=-7",
        ]);
        assert_eq!(a.score_min, -7);
        assert_eq!(a.score_threshold, 10);
        assert_eq!(a.update_interval, 0.1);
        assert!(a.dry_run);
        assert_eq!(a.log_level, Level::Debug);
    }

    #[test]
    fn usage_errors() {
        assert!(parse_err(&["--input", "-"]).contains("required: --ruleset, --ipset"));
        let mut args = BASE.to_vec();
        args.extend(["--score-t", "1"]);
        assert!(parse_err(&args).contains("ambiguous"));
        let mut args = BASE.to_vec();
        args.extend(["--score-threshold", "x"]);
        assert!(parse_err(&args).contains("invalid int value"));
        let mut args = BASE.to_vec();
        args.extend(["--log-level", "trace"]);
        assert!(parse_err(&args).contains("invalid choice"));
        let mut args = BASE.to_vec();
        args.push("extra");
        assert!(parse_err(&args).contains("unrecognized"));
        assert!(parse_err(&["--input", "--dry-run"]).contains("expected one argument"));
        let mut args = BASE.to_vec();
        args.push("--dry-run=1");
        assert!(parse_err(&args).contains("ignored explicit argument"));
    }

    #[test]
    fn floats() {
        assert_eq!(parse_float("inf"), Some(f64::INFINITY));
        assert_eq!(parse_float("1_0.5"), Some(10.5));
        assert_eq!(parse_float("1__0"), None);
        assert_eq!(parse_float("0x10"), None);
        assert!(parse_float("nan").is_some_and(f64::is_nan));
    }
}
