//! `pier`: the command line. Thin on purpose; the server lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pier_server::config::Config;

/// Serve raw TCP protocols with PHP workers (RoadRunner TCP compatible).
#[derive(Debug, Parser)]
#[command(name = "pier", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Cmd,
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
    let Cmd::Serve { config, overrides } = cli.command;
    let config = Config::load(&config, &overrides)
        .with_context(|| format!("could not load config {}", config.display()))?;
    pier_server::init_logging(&config.logs);
    for warning in &config.warnings {
        tracing::warn!("config: {warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "could not listen for SIGTERM");
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        };
        pier_server::run(config, shutdown).await
    })?;
    Ok(())
}
