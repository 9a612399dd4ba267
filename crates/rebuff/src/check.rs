//! `test-config` and `test-regex`: checking a configuration by hand.

use std::io::{BufRead, Write};

use rebuff_engine::{FilterSpec, MatcherError, StreamMatcher, line_text};

use crate::cli::DocFormat;
use crate::config::{Config, emit};

/// Prints the merged configuration. reaction-metrics-exporter parses this
/// YAML and reads `streams.<s>.filters.<f>.regex` with `<name>` intact.
pub fn print_config(config: &Config, format: DocFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    match format {
        DocFormat::Yaml => out.write_all(emit::to_yaml(&config.document).as_bytes())?,
        DocFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &config.document)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// Compiles `regex` with the configuration's patterns. An error says what
/// is wrong in the regex as typed: its placeholders are not expanded.
pub fn compile_regex(config: &Config, regex: &str) -> anyhow::Result<StreamMatcher> {
    let spec = FilterSpec {
        name: "test-regex".into(),
        regexes: vec![regex.to_owned()],
    };
    StreamMatcher::new(&config.patterns, &[spec]).map_err(|e| match e {
        MatcherError::Regex { error, .. } => anyhow::anyhow!("invalid regex: {error}"),
        MatcherError::UnknownPattern { name, .. } => {
            let defined: Vec<&str> = config.patterns.iter().map(|p| p.name()).collect();
            anyhow::anyhow!(
                "<{name}> names no pattern of the configuration (its patterns: {})",
                if defined.is_empty() {
                    "none".to_owned()
                } else {
                    defined.join(", ")
                }
            )
        }
        other => other.into(),
    })
}

/// Tests one line; returns whether it matched (ignored values count as a
/// match of the regex, and say which rule dropped them).
pub fn test_line(matcher: &StreamMatcher, line: &str, out: &mut dyn Write) -> anyhow::Result<bool> {
    let mut scratch = matcher.scratch();
    let mut found = Vec::new();
    matcher.find(line, &mut scratch, &mut found);
    let Some(m) = found.first() else {
        writeln!(out, "no match")?;
        return Ok(false);
    };
    let names = matcher.filter_pattern_names(0);
    match &m.outcome {
        Ok(values) => {
            write!(out, "match")?;
            for (name, value) in names.iter().zip(values.iter()) {
                write!(out, " {name}={value}")?;
            }
            writeln!(out)?;
        }
        Err(ignored) => writeln!(
            out,
            "match, but ignored by {}: {}={}",
            ignored.reason, ignored.pattern, ignored.value
        )?,
    }
    Ok(true)
}

/// Reads lines from `input` and prints each matching one with its values.
pub fn test_stream(
    matcher: &StreamMatcher,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let mut scratch = matcher.scratch();
    let mut found = Vec::new();
    let mut buf = Vec::new();
    let mut lossy = String::new();
    let mut matched = 0;
    let names = matcher.filter_pattern_names(0);
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let (line, _) = line_text(&buf, &mut lossy);
        found.clear();
        if !matcher.find(line, &mut scratch, &mut found) {
            continue;
        }
        matched += 1;
        match &found[0].outcome {
            Ok(values) => {
                let shown: Vec<String> = names
                    .iter()
                    .zip(values.iter())
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                writeln!(out, "{line}\n  -> match {}", shown.join(" "))?;
            }
            Err(ignored) => writeln!(
                out,
                "{line}\n  -> ignored by {}: {}={}",
                ignored.reason, ignored.pattern, ignored.value
            )?,
        }
    }
    Ok(matched)
}
