//! `pier-bench broadcast`: the push path under load. Starts `pier serve` (PHP echo workers, RPC on
//! a loopback port), opens N idle connections, then broadcasts one S-byte message to all of them
//! over RPC (`pier.Broadcast`), R times. Per round: time from the call to the last client's read
//! of the whole message, and the server tree's CPU per delivered message. Also the server's RSS per
//! idle connection (registry included). Prints one JSON line.

use std::net::{SocketAddr, TcpListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_server::rpc::client::Client;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use crate::loadgen::settle;
use crate::procstat;

/// Waits for one read time from each of `clients` readers (each sends when it has read the
/// whole broadcast); the latest, not before `t0`. `Err(readers heard from)` when one does not
/// come within `within` of the previous one, or the readers are gone.
pub async fn last_read(
    rx: &mut mpsc::UnboundedReceiver<Instant>,
    clients: usize,
    t0: Instant,
    within: Duration,
) -> Result<Instant, usize> {
    let mut last = t0;
    for got in 0..clients {
        match tokio::time::timeout(within, rx.recv()).await {
            Ok(Some(at)) => last = last.max(at),
            Ok(None) | Err(_) => return Err(got),
        }
    }
    Ok(last)
}

/// How long one RPC call may take (a broadcast to 10,000 connections answers in milliseconds).
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags `broadcast` and `cluster` share: which `pier`, and the broadcast's shape.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// The `pier` binary.
    #[arg(long, default_value = "target/release/pier")]
    pub pier: PathBuf,
    /// Idle connections that receive each broadcast (with `cluster`, spread over the instances).
    #[arg(long, short = 'c', default_value_t = 10_000)]
    pub connections: usize,
    /// Broadcasts.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Message size in bytes, newline included.
    #[arg(long, short = 's', default_value_t = 64)]
    pub size: usize,
}

/// What to run (`pier-bench broadcast`'s flags).
#[derive(Debug, Clone, clap::Args)]
pub struct BroadcastOptions {
    /// The pier binary and the broadcast's shape.
    #[command(flatten)]
    pub push: PushArgs,
    /// Worker command.
    #[arg(
        long,
        default_value = "php -d extension=target/release/libpier.so bench/php/worker-ext.php 0"
    )]
    pub worker: String,
    /// PHP workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Scratch directory (config, server log).
    #[arg(long, default_value = "target/bench/broadcast")]
    pub scratch: PathBuf,
}

/// One broadcast.
#[derive(Debug, Serialize)]
pub struct Round {
    /// Connections the server said it queued to.
    pub queued: u64,
    /// From the RPC call to its answer (µs).
    pub answer_us: u64,
    /// From the RPC call to the last client's read (µs).
    pub last_read_us: u64,
    /// Server tree CPU per delivered message (ns), call to last read.
    pub cpu_ns_per_msg: f64,
}

/// The JSON line.
#[derive(Debug, Serialize)]
pub struct BroadcastReport {
    /// Connections.
    pub connections: usize,
    /// Message size.
    pub size: usize,
    /// Server tree RSS with no client (KiB).
    pub rss_base_kib: u64,
    /// Server tree RSS with every connection open and idle (KiB).
    pub rss_idle_kib: u64,
    /// pier's own RSS (root process) with no client and with every connection (KiB).
    pub root_rss_kib: (u64, u64),
    /// Per round.
    pub rounds: Vec<Round>,
}

/// Runs the scenario; the server is stopped at the end.
pub fn run(o: &BroadcastOptions) -> Result<BroadcastReport, String> {
    let port = |what: &str| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("could not find a port for {what}: {e}"))
    };
    let addr = port("the server")?;
    let rpc = port("RPC")?;
    std::fs::create_dir_all(&o.scratch).map_err(|e| e.to_string())?;
    let config = o.scratch.join("broadcast.rr.yaml");
    let yaml = format!(
        "version: \"3\"\nserver:\n  command: \"{}\"\nrpc:\n  listen: tcp://{rpc}\ntcp:\n  servers:\n    bench:\n      addr: \"{addr}\"\n      delimiter: \"\\n\"\n  pool:\n    num_workers: {}\nlogs:\n  level: warn\n",
        o.worker, o.workers
    );
    std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(o.scratch.join("broadcast.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&o.push.pier)
        .arg("serve")
        .arg("-c")
        .arg(&config)
        .env_remove("PHP_INI_SCAN_DIR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", o.push.pier.display()))?;
    let mut server = Stop(child);
    let pid = server.0.id();
    let until = Instant::now() + Duration::from_secs(20);
    while StdStream::connect_timeout(&rpc, Duration::from_millis(200)).is_err() {
        if Instant::now() > until || matches!(server.0.try_wait(), Ok(Some(_))) {
            return Err("pier did not start (see broadcast.log)".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = runtime.block_on(scenario(o, addr, rpc, pid));
    server.stop();
    report
}

async fn scenario(
    o: &BroadcastOptions,
    addr: SocketAddr,
    rpc: SocketAddr,
    pid: u32,
) -> Result<BroadcastReport, String> {
    settle(Some(pid)).await;
    let base = usage(pid)?;
    // Connect everyone (≤ 32 connects in flight: more overflows the accept queue of a busy 2-core
    // machine, and a connection dropped there with SYN cookies never reaches the server); each client then reads whole messages and
    // reports when it has one.
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let gate = Arc::new(Semaphore::new(32));
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..o.push.connections {
        let gate = gate.clone();
        connects.spawn(async move {
            let _permit = gate.acquire_owned().await;
            TcpStream::connect(addr).await
        });
    }
    let mut streams = Vec::with_capacity(o.push.connections);
    while let Some(r) = connects.join_next().await {
        let s = r
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        streams.push(s);
    }
    for mut s in streams {
        let tx = tx.clone();
        let size = o.push.size;
        tokio::spawn(async move {
            let mut buf = vec![0u8; size];
            while s.read_exact(&mut buf).await.is_ok() {
                if tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        });
    }
    settle(Some(pid)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rpc = rpc_client(rpc)?;
    // Accepting can lag the clients' connects (a full accept queue retries the handshake
    // later): wait until the server holds every connection.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let held = count(&mut rpc, "pier.Count", serde_json::json!({}))?;
        if held as usize >= o.push.connections {
            break;
        }
        if Instant::now() > until {
            return Err(format!(
                "the server holds {held} of {} connections",
                o.push.connections
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle(Some(pid)).await;
    let idle = usage(pid)?;
    let mut data = "x".repeat(o.push.size - 1);
    data.push('\n');
    let mut rounds = Vec::new();
    for seq in 1..=o.push.rounds as u32 {
        let cpu0 = usage(pid)?.cpu_ns;
        let t0 = Instant::now();
        let queued = count(
            &mut rpc,
            "pier.Broadcast",
            serde_json::json!({ "data": data }),
        )?;
        let answered = t0.elapsed();
        let last = last_read(&mut rx, o.push.connections, t0, Duration::from_secs(20))
            .await
            .map_err(|got| {
                format!(
                    "round {seq}: {got} of {} clients got the broadcast (server queued {queued})",
                    o.push.connections
                )
            })?;
        let cpu1 = usage(pid)?.cpu_ns;
        rounds.push(Round {
            queued,
            answer_us: answered.as_micros() as u64,
            last_read_us: (last - t0).as_micros() as u64,
            cpu_ns_per_msg: cpu1.saturating_sub(cpu0) as f64 / o.push.connections as f64,
        });
        settle(Some(pid)).await;
    }
    Ok(BroadcastReport {
        connections: o.push.connections,
        size: o.push.size,
        rss_base_kib: base.rss_kib,
        rss_idle_kib: idle.rss_kib,
        root_rss_kib: (base.root_rss_kib, idle.root_rss_kib),
        rounds,
    })
}

/// The server tree's usage; retried, since a process of the tree can vanish while it is read.
pub(crate) fn usage(pid: u32) -> Result<procstat::TreeUsage, String> {
    let mut last = String::new();
    for _ in 0..5 {
        match procstat::tree_usage(pid) {
            Ok(u) => return Ok(u),
            Err(e) => last = format!("could not read /proc for the server: {e:?}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(last)
}

/// A connection to pier's RPC at `addr`, through pier's own RPC client (the one `pier reset` and
/// `pier connections` use).
pub(crate) fn rpc_client(addr: SocketAddr) -> Result<Client, String> {
    Client::connect(&addr.to_string(), RPC_TIMEOUT).map_err(|e| chain(&e))
}

/// One JSON goridge RPC call whose result is a count.
pub(crate) fn count(rpc: &mut Client, method: &str, arg: serde_json::Value) -> Result<u64, String> {
    rpc.call(method, &arg).map_err(|e| chain(&e))
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Stops the server (SIGTERM via kill(1) would need libc; the child is killed).
pub(crate) struct Stop(pub(crate) Child);

impl Stop {
    pub(crate) fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.stop();
    }
}
