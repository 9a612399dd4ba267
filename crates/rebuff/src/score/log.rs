//! The seed's log lines on stderr: `LEVEL logger: message`, optionally
//! after a `YYYY-MM-DD HH:MM:SS,mmm` UTC time (`--log-time`).

use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

impl Level {
    pub fn parse(name: &str) -> Option<Level> {
        match name {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warning" => Some(Level::Warning),
            "error" => Some(Level::Error),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Logger {
    pub level: Level,
    pub time: bool,
}

impl Logger {
    pub fn enabled(&self, level: Level) -> bool {
        level >= self.level
    }

    pub fn log(&self, level: Level, who: &str, message: &str) {
        if !self.enabled(level) {
            return;
        }
        let mut line = String::with_capacity(message.len() + 40);
        if self.time {
            let stamp = crate::events::format_time(crate::events::now_ms());
            // RFC 3339 to Python's asctime: "2026-12-04 04:15:21,123".
            let stamp = stamp.trim_end_matches('Z').replacen('T', " ", 1);
            match stamp.split_once('.') {
                Some((s, ms)) => line.push_str(&format!("{s},{ms} ")),
                None => line.push_str(&format!("{stamp},000 ")),
            }
        }
        line.push_str(level.name());
        line.push(' ');
        line.push_str(who);
        line.push_str(": ");
        line.push_str(message);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
