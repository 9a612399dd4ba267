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

pub use crate::control::client::ShowFormat;
pub use crate::log::LogLevel;

/// Where the daemon listens and clients connect by default.
pub const DEFAULT_SOCKET: &str = "/run/rebuff/rebuff.sock";

/// reaction's default socket, rebuff's default when invoked as `reaction`,
/// so that a `reaction` symlink is a drop-in for scripts and units.
pub const REACTION_SOCKET: &str = "/run/reaction/reaction.sock";

/// The subcommands that take `-s/--socket`.
const SOCKET_COMMANDS: [&str; 5] = ["start", "show", "flush", "trigger", "reload"];

/// The command line as `invoked_as` (`rebuff` or `reaction`): the name in
/// help and errors, and, as `reaction`, reaction's default socket.
pub fn command(invoked_as: &'static str) -> clap::Command {
    use clap::CommandFactory;
    let mut command = Cli::command().name(invoked_as);
    if invoked_as == "reaction" {
        for name in SOCKET_COMMANDS {
            command = command.mut_subcommand(name, |sub| {
                sub.mut_arg("socket", |arg| arg.default_value(REACTION_SOCKET))
            });
        }
    }
    command
}

/// `show`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Show at most N entries, in order; stderr tells how many were left
    /// out.
    #[arg(short = 'n', long, value_name = "N")]
    pub max: Option<u64>,
}

/// The arguments `show` and `flush` share.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectArgs {
    /// Control socket of the daemon.
    #[arg(short, long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = ShowFormat::Yaml)]
    pub format: ShowFormat,
    /// Only this stream, or this stream's filter (`STREAM[.FILTER]`).
    #[arg(short, long, value_name = "STREAM[.FILTER]")]
    pub limit: Option<String>,
    /// Only entries whose pattern NAME has a value matching the regex VALUE
    /// (whole value), e.g. `ip=192.0.2.1`.
    #[arg(value_name = "NAME=VALUE")]
    pub patterns: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: start commands, streams, actions, control socket.
    Start {
        /// Configuration file or directory.
        #[arg(short, long)]
        config: PathBuf,
        /// Minimum level of log lines.
        #[arg(short = 'l', long = "loglevel", value_enum, default_value_t = LogLevel::Info)]
        loglevel: LogLevel,
        /// Control socket to create.
        #[arg(short, long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print current matches and pending actions.
    Show(ShowArgs),
    /// Run matching pending actions now and forget their matches.
    Flush(SelectArgs),
    /// Act as if a filter triggered for the given values.
    Trigger {
        /// Control socket of the daemon.
        #[arg(short, long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The filter, as `STREAM.FILTER`.
        #[arg(value_name = "STREAM.FILTER")]
        target: String,
        /// One value per pattern of the filter, e.g. `ip=192.0.2.1`.
        #[arg(value_name = "NAME=VALUE", required = true)]
        patterns: Vec<String>,
    },
    /// Make the daemon re-read its configuration (as SIGHUP does), keeping
    /// its state; prints what changed, or the errors (exit 1).
    Reload {
        /// Control socket of the daemon.
        #[arg(short, long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
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
    /// Keep weighted per-address scores from INI rulesets and maintain an
    /// ipset: a drop-in for ipset-score-daemon.py (`rebuff score --help`).
    #[command(disable_help_flag = true)]
    Score {
        /// The score daemon's own options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
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
    /// reaction-metrics-exporter 1.0.1 for an upstream reaction: read its
    /// log, serve its metrics (same configuration file, same families).
    Exporter {
        /// The exporter's configuration file (YAML or JSON); the defaults without it.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Output format of `defaults` (default yaml) and `test-config` (default json).
        #[arg(short, long, value_enum)]
        format: Option<crate::exporter::DumpFormat>,
        /// start: read logs, count, serve /metrics; defaults: print the
        /// default configuration; test-config: validate and print the
        /// configuration; version: print the exporter version served.
        #[arg(value_enum)]
        mode: crate::exporter::Mode,
    },
}
