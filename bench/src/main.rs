//! `pier-bench`: Pier's load generator, its raw echo server (the ceiling) and the harness that
//! runs the comparison (`./dev.sh bench`).

mod broadcast;
mod cluster;
mod echo;
mod harness;
mod loadgen;
mod mqtt;
mod procstat;
mod report;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Load generator and comparison harness for Pier.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// What to run.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The raw target: a tokio echo server framing packets by the delimiter, no PHP.
    Echo {
        /// Address to listen on (loopback).
        #[arg(long, default_value = "127.0.0.1:7700")]
        addr: SocketAddr,
        /// Packet delimiter (escapes \n \r \t \\ understood).
        #[arg(long, default_value = "\\n")]
        delimiter: String,
        /// Block each packet this many µs before answering (the 1 ms handler).
        #[arg(long, default_value_t = 0)]
        block_us: u64,
        /// Threads running the blocking handler (mirrors the PHP worker count).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Largest packet in bytes; a connection exceeding it without a delimiter is closed.
        #[arg(long, default_value_t = 1 << 20)]
        max_packet: usize,
        /// Frame by a 4-byte big-endian length instead of the delimiter (each frame echoed whole).
        #[arg(long)]
        length_prefix: bool,
    },
    /// Generate load against a delimiter-framed echo server; prints one JSON report line.
    Load(LoadArgs),
    /// MQTT fan-out against an MQTT broker (examples/mqtt): one publisher, N subscribers, QoS 0;
    /// prints one JSON report line.
    Mqtt(mqtt::Options),
    /// Broadcast over RPC to many idle connections of a `pier serve` it starts (push path: time to
    /// the last read, server CPU per delivered message, RSS per idle connection); one JSON line.
    Broadcast(broadcast::BroadcastOptions),
    /// The push path across instances: broadcast to N clients spread over two instances and
    /// one-to-one sends between instances, over Redis and over NATS, next to one instance alone
    /// (one JSON line per setup).
    Cluster(cluster::ClusterOptions),
    /// Print a free loopback port (for scripts such as bench/profile.sh that write a config).
    Port,
    /// Run the comparison (raw, pier + extension, pier + pure PHP), print the table and write
    /// bench/results/YYYY-MM-DD.md.
    Run(harness::RunArgs),
    /// pier + extension with plaintext and TLS 1.3 side by side (echo rows, handshakes/s, idle
    /// RSS); writes bench/results/YYYY-MM-DD-tls.md.
    Tls(harness::TlsArgs),
}

/// Flags of `pier-bench load`.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Target address (loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 1)]
    connections: usize,
    /// Packets in flight per connection (closed loop).
    #[arg(long, short = 'd', default_value_t = 1)]
    depth: usize,
    /// Packet size in bytes, delimiter included.
    #[arg(long, short = 's', default_value_t = 32)]
    size: usize,
    /// Packet delimiter (escapes \n \r \t \\ understood).
    #[arg(long, default_value = "\\n")]
    delimiter: String,
    /// Prefix each packet with its 4-byte big-endian length (`--size` is then the payload).
    #[arg(long)]
    length_prefix: bool,
    /// Warm-up seconds (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Closed loop: stop each connection after this many batches (window = until done,
    /// `--duration` bounds it); for profiling a known number of messages.
    #[arg(long, conflicts_with_all = ["rate", "idle"])]
    batches: Option<u64>,
    /// Open loop at this many packets per second in total (latency from the scheduled send time).
    #[arg(long, conflicts_with = "idle")]
    rate: Option<f64>,
    /// Only open the connections, sample server memory, hold them this many seconds.
    #[arg(long)]
    idle: Option<f64>,
    /// Server pid whose process tree (server + workers) is sampled for CPU and RSS.
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Most connects in flight during the ramp.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Seconds allowed for the whole connect ramp.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Speak TLS 1.3, trusting the PEM certificate(s) in this file (full handshakes, no resumption).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// The SNI name to ask for with --tls-ca.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// Connection rate: each of -c tasks connects (and handshakes), closes, repeats.
    #[arg(long, conflicts_with_all = ["rate", "idle", "batches"])]
    connects: bool,
}

/// `\n`, `\r`, `\t` and `\\` escapes, so a delimiter can be given on a command line.
pub fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.bytes();
    while let Some(c) = chars.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    out
}

/// Prints one JSON report line on stdout (the result; progress goes to stderr).
fn print_line(report: &impl serde::Serialize) -> anyhow::Result<()> {
    let line = serde_json::to_string(report).context("could not encode the report")?;
    writeln!(std::io::stdout().lock(), "{line}").context("could not print the report")
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).context("durations must be non-negative seconds")
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Echo {
            addr,
            delimiter,
            block_us,
            threads,
            max_packet,
            length_prefix,
        } => echo::serve(echo::EchoOptions {
            addr,
            delimiter: unescape(&delimiter),
            block: Duration::from_micros(block_us),
            threads,
            max_packet,
            length_prefix,
        })
        .context("raw echo server failed")?,
        Command::Load(a) => {
            let shape = loadgen::Shape {
                addr: a.addr,
                connections: a.connections,
                size: a.size,
                delimiter: unescape(&a.delimiter),
                length_prefix: a.length_prefix,
                connect_concurrency: a.connect_concurrency,
                connect_timeout: secs(a.connect_timeout)?,
                watch_pid: a.watch_pid,
                tls: match &a.tls_ca {
                    Some(ca) => Some(loadgen::TlsClient::new(ca, &a.sni)?),
                    None => None,
                },
            };
            let mode = match (a.rate, a.idle) {
                _ if a.connects => loadgen::Mode::Connects {
                    warmup: secs(a.warmup)?,
                    duration: secs(a.duration)?,
                },
                (Some(rate), _) => loadgen::Mode::Open {
                    rate,
                    warmup: secs(a.warmup)?,
                    duration: secs(a.duration)?,
                },
                (None, Some(hold)) => loadgen::Mode::Idle { hold: secs(hold)? },
                (None, None) => loadgen::Mode::Closed {
                    depth: a.depth,
                    warmup: secs(a.warmup)?,
                    duration: secs(a.duration)?,
                    batches: a.batches,
                },
            };
            let report = loadgen::run(shape, mode).context("load generation failed")?;
            print_line(&report)?;
        }
        Command::Mqtt(options) => {
            let report = mqtt::run(options).context("MQTT load failed")?;
            print_line(&report)?;
        }
        Command::Run(args) => harness::run(args)?,
        Command::Tls(args) => harness::run_tls(args)?,
        Command::Broadcast(options) => {
            anyhow::ensure!(options.push.size >= 1, "--size must be at least 1");
            let report = broadcast::run(&options)
                .map_err(anyhow::Error::msg)
                .context("broadcast run failed")?;
            print_line(&report)?;
        }
        Command::Cluster(options) => {
            anyhow::ensure!(options.push.size >= 2, "--size must be at least 2");
            let reports = cluster::run(&options)
                .map_err(anyhow::Error::msg)
                .context("cluster run failed")?;
            for report in &reports {
                print_line(report)?;
            }
        }
        Command::Port => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("could not find a free loopback port")?
                .port();
            writeln!(std::io::stdout().lock(), "{port}").context("could not print the port")?;
        }
    }
    Ok(())
}
