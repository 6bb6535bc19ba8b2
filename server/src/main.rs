//! `pier`: the command line. Thin on purpose; the server lives in the library.

use clap::Parser;

/// Serve raw TCP protocols with PHP workers.
#[derive(Debug, Parser)]
#[command(name = "pier", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
