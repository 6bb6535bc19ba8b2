//! `pier-bench cluster`: the push path across instances. For each setup — one instance alone, two
//! instances over Redis, two over NATS (a `redis-server` / `nats-server` started on a free
//! loopback port) — it runs:
//!
//! - broadcast: N idle clients spread evenly over the instances; `pier.Broadcast` of one S-byte
//!   message over RPC on the first instance, R times; per round the time from the call to the last
//!   client's read, and the CPU of every process involved (pier instances, their workers, the bus
//!   server) per delivered message;
//! - sends: P sender connections on the first instance, each with its own target connection on
//!   the last one (the same instance when alone); each sender's worker sends its target M S-byte
//!   lines in one event (`spam`, worker command frames: the path a worker's `send` takes); the time
//!   from the first request to the last line read gives sends per second. Each target checks it got
//!   exactly its M lines.
//!
//! The workers are `pier-test-worker` (release build): its greeting carries the connection's uuid,
//! and the push paths measured involve no worker after the connect. Prints one JSON line per
//! setup.

use std::net::{SocketAddr, TcpListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_devkit::bus::{BusKind, BusServer};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use crate::broadcast::{count, last_read, rpc_client, usage, PushArgs, Stop};
use crate::loadgen::settle;

/// What to run (`pier-bench cluster`'s flags).
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterOptions {
    /// The pier binary and the broadcast's shape (`--size` also sizes the sends' lines).
    #[command(flatten)]
    pub push: PushArgs,
    /// Worker (its greeting carries the connection's uuid).
    #[arg(long, default_value = "target/release/pier-test-worker")]
    pub worker: PathBuf,
    /// Setups, comma-separated: single, redis, nats.
    #[arg(long, default_value = "single,redis,nats", value_delimiter = ',')]
    pub setups: Vec<String>,
    /// Sender/target connection pairs of the sends phase.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Lines each sender sends its target.
    #[arg(long, default_value_t = 2_000)]
    pub sends: usize,
    /// Scratch directory (configs, pier logs).
    #[arg(long, default_value = "target/bench/cluster")]
    pub scratch: PathBuf,
}

/// One broadcast.
#[derive(Debug, Serialize)]
pub struct Round {
    /// From the RPC call to its answer (µs).
    pub answer_us: u64,
    /// From the RPC call to the last client's read (µs).
    pub last_read_us: u64,
    /// CPU of the pier instances, their workers and the bus server per delivered message (ns).
    pub cpu_ns_per_msg: f64,
}

/// The sends phase.
#[derive(Debug, Serialize)]
pub struct Sends {
    /// Lines sent in all.
    pub messages: usize,
    /// From the first request to the last line read (µs).
    pub elapsed_us: u64,
    /// `messages` per second over `elapsed_us`.
    pub per_second: f64,
    /// CPU of every process involved per delivered line (ns).
    pub cpu_ns_per_msg: f64,
}

/// The JSON line of one setup.
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    /// `single`, `redis` or `nats`.
    pub setup: String,
    /// Pier instances.
    pub instances: usize,
    /// Idle connections.
    pub connections: usize,
    /// Message size.
    pub size: usize,
    /// Per broadcast.
    pub rounds: Vec<Round>,
    /// The one-to-one sends.
    pub sends: Sends,
}

/// Runs every setup in turn; one report each.
pub fn run(o: &ClusterOptions) -> Result<Vec<ClusterReport>, String> {
    std::fs::create_dir_all(&o.scratch).map_err(|e| e.to_string())?;
    let mut reports = Vec::new();
    for setup in &o.setups {
        let report = run_setup(o, setup).map_err(|e| format!("setup {setup}: {e}"))?;
        let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        // Progress on stderr; the JSON lines are the result.
        eprintln!("{line}");
        reports.push(report);
    }
    Ok(reports)
}

/// One running `pier serve`.
struct Instance {
    /// Its server address.
    addr: SocketAddr,
    /// Its RPC address.
    rpc: SocketAddr,
    /// The process (killed on drop).
    process: Stop,
}

fn run_setup(o: &ClusterOptions, setup: &str) -> Result<ClusterReport, String> {
    let (bus, instances) = match setup {
        "single" => (None, 1),
        "redis" | "nats" => {
            let kind = BusKind::from_name(setup).expect("redis or nats");
            let bus = BusServer::try_start(kind).map_err(|e| e.to_string())?;
            (Some(bus), 2)
        }
        other => return Err(format!("unknown setup {other} (single, redis, nats)")),
    };
    let mut pids: Vec<u32> = bus.iter().filter_map(BusServer::pid).collect();
    let mut nodes = Vec::new();
    for i in 0..instances {
        let instance = start_instance(o, setup, i, bus.as_ref().map(BusServer::url).as_deref())?;
        pids.push(instance.process.0.id());
        nodes.push(instance);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = runtime.block_on(scenario(o, setup, &nodes, &pids));
    for mut node in nodes {
        node.process.stop();
    }
    drop(bus);
    report
}

/// Writes the config of instance `i` and starts it; returns once RPC answers.
fn start_instance(
    o: &ClusterOptions,
    setup: &str,
    i: usize,
    bus: Option<&str>,
) -> Result<Instance, String> {
    let addr = free_addr()?;
    let rpc = free_addr()?;
    let cluster = match bus {
        Some(url) => format!("cluster:\n  bus: {url}\n  node: node{i}\n"),
        None => String::new(),
    };
    let dir = o.scratch.join(format!("{setup}-{i}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("pier.rr.yaml");
    let yaml = format!(
        "version: \"3\"\nserver:\n  command: \"{}\"\n  env:\n    TW_DIR: \"{}\"\nrpc:\n  listen: tcp://{rpc}\ntcp:\n  servers:\n    bench:\n      addr: \"{addr}\"\n      delimiter: \"\\n\"\n  pool:\n    num_workers: 2\nlogs:\n  level: warn\n{cluster}",
        o.worker.display(),
        dir.display(),
    );
    std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("pier.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&o.push.pier)
        .arg("serve")
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", o.push.pier.display()))?;
    let mut process = Stop(child);
    wait_accepting(rpc, &mut process.0, &dir.join("pier.log"))?;
    Ok(Instance { addr, rpc, process })
}

async fn scenario(
    o: &ClusterOptions,
    setup: &str,
    nodes: &[Instance],
    pids: &[u32],
) -> Result<ClusterReport, String> {
    let cpu = || -> Result<u64, String> {
        pids.iter()
            .map(|&pid| usage(pid).map(|u| u.cpu_ns))
            .sum::<Result<u64, String>>()
    };
    let settle_all = || async {
        for &pid in pids {
            settle(Some(pid)).await;
        }
    };
    settle_all().await;

    // Idle clients, spread evenly; each reads its greeting (the server holds it then), then lines.
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let gate = Arc::new(Semaphore::new(32));
    let mut connects = tokio::task::JoinSet::new();
    for i in 0..o.push.connections {
        let gate = gate.clone();
        let addr = nodes[i % nodes.len()].addr;
        let tx = tx.clone();
        connects.spawn(async move {
            let permit = gate.acquire_owned().await;
            let stream = TcpStream::connect(addr).await?;
            let mut reader = AsyncBufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            drop(permit);
            tokio::spawn(async move {
                loop {
                    line.clear();
                    match reader.read_line(&mut line).await {
                        Ok(n) if n > 0 => {
                            if tx.send(Instant::now()).is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            });
            Ok::<(), std::io::Error>(())
        });
    }
    while let Some(r) = connects.join_next().await {
        r.map_err(|e| e.to_string())?
            .map_err(|e| format!("connect: {e}"))?;
    }
    settle_all().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut rpc = rpc_client(nodes[0].rpc)?;
    let mut data = "x".repeat(o.push.size - 1);
    data.push('\n');
    let mut rounds = Vec::new();
    for seq in 1..=o.push.rounds as u32 {
        let cpu0 = cpu()?;
        let t0 = Instant::now();
        count(
            &mut rpc,
            "pier.Broadcast",
            serde_json::json!({ "data": data }),
        )?;
        let answered = t0.elapsed();
        let last = last_read(&mut rx, o.push.connections, t0, Duration::from_secs(30))
            .await
            .map_err(|got| {
                format!(
                    "round {seq}: {got} of {} clients got the broadcast",
                    o.push.connections
                )
            })?;
        let cpu1 = cpu()?;
        rounds.push(Round {
            answer_us: answered.as_micros() as u64,
            last_read_us: (last - t0).as_micros() as u64,
            cpu_ns_per_msg: cpu1.saturating_sub(cpu0) as f64 / o.push.connections as f64,
        });
        settle_all().await;
    }

    let sends = sends(o, nodes, &cpu).await?;
    Ok(ClusterReport {
        setup: setup.to_owned(),
        instances: nodes.len(),
        connections: o.push.connections,
        size: o.push.size,
        rounds,
        sends,
    })
}

/// The sends phase: `pairs` senders on the first instance, their targets on the last.
async fn sends(
    o: &ClusterOptions,
    nodes: &[Instance],
    cpu: &dyn Fn() -> Result<u64, String>,
) -> Result<Sends, String> {
    let first = nodes[0].addr;
    let last = nodes[nodes.len() - 1].addr;
    let mut senders = Vec::new();
    let mut targets = Vec::new();
    let mut uuids = Vec::new();
    for _ in 0..o.pairs {
        senders.push(greeted(first).await?.0);
        let (target, uuid) = greeted(last).await?;
        targets.push(target);
        uuids.push(uuid);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu0 = cpu()?;
    let t0 = Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    for mut reader in targets {
        let (n, size) = (o.sends, o.push.size);
        readers.spawn(async move {
            let mut line = String::new();
            for i in 0..n {
                line.clear();
                let read =
                    tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut line))
                        .await
                        .map_err(|_| format!("a target got {i} of {n} lines"))?
                        .map_err(|e| e.to_string())?;
                if read != size {
                    return Err(format!("a target got a {read}-byte line instead of {size}"));
                }
            }
            Ok::<Instant, String>(Instant::now())
        });
    }
    for (sender, uuid) in senders.iter_mut().zip(&uuids) {
        let request = format!("spam {uuid} x {} {}\n", o.push.size, o.sends);
        sender
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut end = t0;
    while let Some(done) = readers.join_next().await {
        end = end.max(done.map_err(|e| e.to_string())??);
    }
    let cpu1 = cpu()?;
    for sender in &mut senders {
        let mut line = String::new();
        sender
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        if line != "spammed\n" {
            return Err(format!("a sender's worker answered {line:?}"));
        }
    }
    let messages = o.pairs * o.sends;
    let elapsed = end - t0;
    Ok(Sends {
        messages,
        elapsed_us: elapsed.as_micros() as u64,
        per_second: messages as f64 / elapsed.as_secs_f64(),
        cpu_ns_per_msg: cpu1.saturating_sub(cpu0) as f64 / messages as f64,
    })
}

/// Connects and reads the greeting: (the connection, its uuid).
async fn greeted(addr: SocketAddr) -> Result<(AsyncBufReader<TcpStream>, String), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut reader = AsyncBufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    // "hello <server> <remote_addr> <uuid>\n"
    let uuid = line
        .split_whitespace()
        .nth(3)
        .ok_or_else(|| format!("unexpected greeting {line:?}"))?
        .to_owned();
    Ok((reader, uuid))
}

fn free_addr() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("could not find a free port: {e}"))
}

/// Waits (at most 20 s) until `addr` accepts a connection; fails if the process exits first.
fn wait_accepting(addr: SocketAddr, child: &mut Child, log: &Path) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if StdStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > until || matches!(child.try_wait(), Ok(Some(_))) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "{addr} did not accept within 20 s; {}:\n{text}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
