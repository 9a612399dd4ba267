//! The command line, as reaction's users know it, plus rebuff's additions.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::replay::OutputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "rebuff",
    about = "A fast, observable, reaction-compatible log-watching ban daemon",
    disable_version_flag = true
)]
pub struct Cli {
    /// Print the version ("rebuff X.Y.Z", or "reaction X.Y.Z" when invoked as reaction).
    #[arg(short = 'V', long = "version")]
    pub version: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Output format of `test-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocFormat {
    Yaml,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a configuration, then print it merged.
    TestConfig {
        /// Configuration file or directory.
        #[arg(short, long)]
        config: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = DocFormat::Yaml)]
        format: DocFormat,
    },
    /// Try a regex, with the configuration's `<patterns>`, on a line or on stdin.
    TestRegex {
        /// Configuration file or directory (for its patterns).
        #[arg(short, long)]
        config: PathBuf,
        /// The regex, e.g. `Failed password for .* from <ip>`.
        regex: String,
        /// A line to test; without it, lines are read from stdin.
        line: Option<String>,
    },
    /// Run the whole pipeline over old logs, in log time, without running any action.
    Replay {
        /// Configuration file or directory.
        #[arg(short, long)]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Send lines to this stream's filters only (default: every stream).
        #[arg(long)]
        stream: Option<String>,
        /// Never draw the progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Log files, plain or gzip'ed; '-' for stdin.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}
