//! The `rebuff` binary: parse the command line, dispatch, map errors to
//! exit codes (1 for a configuration or runtime error, 2 for usage).

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::FromArgMatches;
use rebuff::cli::{self, Cli, Command, ShowFormat};
use rebuff::config::{self, Config};
use rebuff::control::{Request, client};
use rebuff::{check, daemon, log, replay};

fn main() -> ExitCode {
    // A copy of rebuff started to evaluate one JSONnet file under limits.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == config::jsonnet::CHILD_ARG) {
        return config::jsonnet::child_main(&args[2..]);
    }
    // `rebuff score` parses its arguments as the seed daemon's argparse does.
    if args.get(1).is_some_and(|a| a == "score") {
        let rest: Vec<String> = args[2..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return ExitCode::from(rebuff::score::main(&rest));
    }
    let this_program = Path::new("/proc/self/exe");
    if this_program.exists() {
        config::jsonnet::use_child_process(this_program.to_path_buf());
    } else if let Ok(program) = std::env::current_exe() {
        config::jsonnet::use_child_process(program);
    }
    // Invoked through a symlink named `reaction`, rebuff answers as reaction
    // (reaction-metrics-exporter calls `reaction -V` and parses the name).
    let as_reaction = std::env::args_os()
        .next()
        .is_some_and(|a| Path::new(&a).file_name().is_some_and(|n| n == "reaction"));
    let invoked_as = if as_reaction { "reaction" } else { "rebuff" };
    let matches = cli::command(invoked_as).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if cli.version {
        println!("{invoked_as} {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        let _ = cli::command(invoked_as).print_help();
        return ExitCode::from(2);
    };
    match run(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    match config::load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("WARN {warning}");
            }
            Ok(config)
        }
        Err(errors) => {
            let count = errors.0.len();
            for error in &errors.0 {
                eprintln!("ERROR {error}");
            }
            anyhow::bail!(
                "invalid configuration {}: {count} error{}",
                path.display(),
                if count == 1 { "" } else { "s" }
            )
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    match command {
        Command::TestConfig { config, format } => {
            let config = load(&config)?;
            check::print_config(&config, format, &mut out)?;
        }
        Command::TestRegex {
            config,
            regex,
            line,
        } => {
            let config = load(&config)?;
            let matcher = check::compile_regex(&config, &regex)?;
            match line {
                Some(line) => {
                    let matched = check::test_line(&matcher, &line, &mut out)?;
                    out.flush()?;
                    if !matched {
                        return Ok(ExitCode::FAILURE);
                    }
                }
                None => {
                    let stdin = std::io::stdin();
                    check::test_stream(&matcher, &mut stdin.lock(), &mut out)?;
                }
            }
        }
        Command::Replay {
            config,
            format,
            stream,
            no_progress,
            files,
        } => {
            let config = load(&config)?;
            let options = replay::ReplayOptions {
                format,
                stream,
                files,
                progress: !no_progress,
            };
            replay::run(&config, &options, &mut out)?;
        }
        Command::Start {
            config,
            loglevel,
            socket,
        } => {
            let _log = log::init(loglevel);
            let config_path = std::path::absolute(&config).unwrap_or_else(|_| config.clone());
            let config = load(&config)?;
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            let options = daemon::StartOptions {
                socket,
                config_path,
            };
            match daemon::run(config, options)? {
                daemon::Exit::Clean => {}
                daemon::Exit::StartFailed => return Ok(ExitCode::FAILURE),
            }
        }
        Command::Show(cli::ShowArgs { select: args, max }) => {
            let mut selection = client::selection(args.limit.as_deref(), &args.patterns)?;
            selection.max = max;
            let answer = client::request_full(&args.socket, Request::Show(selection))?;
            client::print_tree(&answer.tree, args.format, &mut out)?;
            if answer.left_out > 0 {
                out.flush()?;
                eprintln!("{} more entries left out by --max", answer.left_out);
            }
        }
        Command::Flush(args) => {
            let request = Request::Flush(client::selection(args.limit.as_deref(), &args.patterns)?);
            let tree = client::request(&args.socket, request)?;
            client::print_tree(&tree, args.format, &mut out)?;
        }
        Command::Trigger {
            socket,
            target,
            patterns,
        } => {
            let (stream, filter) = client::parse_target(&target)?;
            let request = Request::Trigger {
                stream,
                filter,
                patterns: client::parse_patterns(&patterns)?,
            };
            let tree = client::request(&socket, request)?;
            client::print_tree(&tree, ShowFormat::Yaml, &mut out)?;
        }
        Command::Exporter {
            config,
            format,
            mode,
        } => {
            let code = rebuff::exporter::run(config, format, mode, &mut out)?;
            out.flush()?;
            return Ok(code);
        }
        Command::Score { args } => return Ok(ExitCode::from(rebuff::score::main(&args))),
        Command::Reload { socket } => {
            let answer = client::request(&socket, Request::Reload)?;
            if let Some(text) = answer.as_str() {
                writeln!(out, "{text}")?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
