//! `pier`: the command line. Thin on purpose; the server lives in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pier_server::config::Config;
use pier_server::ctl;

/// Serve raw TCP protocols with PHP workers (RoadRunner TCP compatible).
#[derive(Debug, Parser)]
// clap's own version flag prints one line; ours also names the protocol, the features and the
// extension PHP would use (pier_server::version).
#[command(
    name = "pier",
    about,
    disable_version_flag = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Print pier's version, relay protocol, features and the pier PHP extension's version.
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// What to do.
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the servers of a RoadRunner-style config until SIGINT/SIGTERM.
    Serve {
        /// The config file.
        #[arg(short = 'c', long = "config", default_value = ".rr.yaml")]
        config: PathBuf,
        /// Override a config value, `dotted.key=value` (repeatable), as `rr serve -o`.
        #[arg(short = 'o', long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Ask the running server (rpc.listen of the config) to replace every worker, one at a time,
    /// so new PHP code is picked up while connections stay open (RoadRunner's `rr reset`), and to
    /// re-read its TLS certificates (open connections keep theirs).
    Reset {
        /// The config file of the running server.
        #[arg(short = 'c', long = "config", default_value = ".rr.yaml")]
        config: PathBuf,
        /// Override a config value, `dotted.key=value` (repeatable).
        #[arg(short = 'o', long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// The running server's workers: pid, status, events run, memory, age, the event running now
    /// (RoadRunner's `rr workers`).
    Workers {
        /// The config file of the running server.
        #[arg(short = 'c', long = "config", default_value = ".rr.yaml")]
        config: PathBuf,
        /// Override a config value, `dotted.key=value` (repeatable).
        #[arg(short = 'o', long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Refresh the table in place every second until Ctrl-C.
        #[arg(short = 'i', long = "interactive")]
        interactive: bool,
    },
    /// The running server's connections: how many per server, then the list (uuid, remote
    /// address, age, bytes, groups).
    Connections {
        /// The config file of the running server.
        #[arg(short = 'c', long = "config", default_value = ".rr.yaml")]
        config: PathBuf,
        /// Override a config value, `dotted.key=value` (repeatable).
        #[arg(short = 'o', long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Only connections of this server (a `tcp.servers` key).
        #[arg(long)]
        server: Option<String>,
        /// Only members of this group.
        #[arg(long)]
        group: Option<String>,
        /// At most this many rows (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// The running server's RPC address (`rpc.listen`) and server names, from its config.
fn rpc_address(
    path: &std::path::Path,
    overrides: &[String],
) -> anyhow::Result<(String, Vec<String>)> {
    let config = Config::load(path, overrides)
        .with_context(|| format!("could not load config {}", path.display()))?;
    let servers = config.servers.iter().map(|s| s.name.clone()).collect();
    let rpc = config.rpc.ok_or(ctl::CtlError::NoRpc)?;
    Ok((rpc.listen, servers))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // "{:#}" prints the cause chain on one line; never a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let command = match (cli.version, cli.command) {
        (false, Some(command)) => command,
        // `--version` (clap's `arg_required_else_help` leaves no other case).
        _ => {
            let report = pier_server::version::Report::gather();
            std::io::stdout()
                .write_all(report.to_string().as_bytes())
                .context("could not write to stdout")?;
            return Ok(());
        }
    };
    let (config, overrides) = match command {
        Cmd::Serve { config, overrides } => (config, overrides),
        Cmd::Reset { config, overrides } => {
            let (address, _) = rpc_address(&config, &overrides)?;
            // The servers whose certificates the reset re-reads, to say so.
            let tls: Vec<String> = Config::load(&config, &overrides)?
                .servers
                .into_iter()
                .filter(|s| s.tls.is_some())
                .map(|s| s.name)
                .collect();
            return Ok(ctl::reset(&address, &tls, &mut std::io::stdout())?);
        }
        Cmd::Workers {
            config,
            overrides,
            interactive,
        } => {
            let (address, _) = rpc_address(&config, &overrides)?;
            return Ok(ctl::workers(&address, interactive, &mut std::io::stdout())?);
        }
        Cmd::Connections {
            config,
            overrides,
            server,
            group,
            limit,
        } => {
            let (address, servers) = rpc_address(&config, &overrides)?;
            let filter = ctl::ConnectionFilter {
                server,
                group,
                limit,
            };
            return Ok(ctl::connections(
                &address,
                &servers,
                &filter,
                &mut std::io::stdout(),
            )?);
        }
    };
    let config = Config::load(&config, &overrides)
        .with_context(|| format!("could not load config {}", config.display()))?;
    pier_server::init_logging(&config.logs).context("could not set up logging (logs section)")?;
    for warning in &config.warnings {
        tracing::warn!("config: {warning}");
    }
    // One thread by default: with PHP doing the work in other processes, the server's share per
    // message is small, and the multi-thread scheduler's bookkeeping and cross-thread wake-ups
    // cost more than a second thread gains (bench/results/2026-11-29-pipeline.md).
    let mut runtime = if config.io_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.io_threads);
        builder
    };
    let runtime = runtime
        .enable_all()
        // The reactor just polled epoll: the pool's next idle check may trust tokio's readiness.
        .on_thread_unpark(pier_server::pool::reactor_polled)
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered before anything listens: a signal that comes as soon as the first client is
        // served must find our handler, not the default action (exit without a graceful stop).
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        let shutdown = async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "could not listen for SIGTERM/SIGINT");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        pier_server::run(config, shutdown).await
    })?;
    Ok(())
}
