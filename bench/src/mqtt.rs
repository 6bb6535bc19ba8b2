//! MQTT fan-out load: one publisher, N subscribers of one topic, QoS 0 (`pier-bench mqtt`, run by
//! the harness against examples/mqtt). Prints one JSON [`MqttReport`].
//!
//! The publisher sends windows of `window` messages and waits until every subscriber has every
//! message of the window before sending the next: QoS 0 has no acknowledgement, and an unpaced
//! publisher would only measure how fast the server's outbound queues fill. Deliveries are counted
//! by bytes: every PUBLISH the subscribers get is the same packet.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::procstat;

/// The topic every subscriber subscribes to and the publisher publishes to.
const TOPIC: &str = "bench/fanout";

/// What went wrong generating MQTT load.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// Impossible options (caller's mistake).
    #[error("could not use these options: {0}")]
    Options(String),
    /// The tokio runtime could not start.
    #[error("could not start the runtime")]
    Runtime(#[source] std::io::Error),
    /// A client could not connect, subscribe or publish (the broker's side, or a dead server).
    #[error("could not {what}")]
    Client {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Traffic shape (`pier-bench mqtt`'s flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Broker address (loopback).
    #[arg(long)]
    pub addr: SocketAddr,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Messages to publish.
    #[arg(long, default_value_t = 2000)]
    pub messages: u64,
    /// Messages per window (then every delivery of the window is awaited).
    #[arg(long, default_value_t = 16)]
    pub window: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Server pid whose process tree is sampled for CPU.
    #[arg(long)]
    pub watch_pid: Option<u32>,
    /// Seconds allowed for the whole run.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
}

/// One run's numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MqttReport {
    /// Subscriber connections.
    pub subscribers: usize,
    /// Messages published.
    pub published: u64,
    /// Messages received by subscribers in total.
    pub delivered: u64,
    /// From the first publish to the last delivery (s).
    pub seconds: f64,
    /// `published / seconds`.
    pub published_per_s: f64,
    /// `delivered / seconds`.
    pub delivered_per_s: f64,
    /// Server tree CPU during the run (ns).
    pub server_cpu_ns: u64,
    /// The pier process alone (ns): the rest of `server_cpu_ns` is the PHP workers'.
    pub pier_cpu_ns: u64,
    /// Everything else's CPU plus steal during the run (ns): far from 0 means a disturbed run.
    pub other_cpu_ns: u64,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
}

impl MqttReport {
    /// Server CPU per delivered message (µs).
    pub fn cpu_us_per_delivery(&self) -> f64 {
        self.server_cpu_ns as f64 / 1000.0 / self.delivered.max(1) as f64
    }

    /// The pier process's share of the server CPU (0–1).
    pub fn pier_share(&self) -> f64 {
        self.pier_cpu_ns as f64 / self.server_cpu_ns.max(1) as f64
    }
}

fn str16(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Connects and completes CONNECT/CONNACK (clean session, keep-alive off).
async fn connect(addr: SocketAddr, client_id: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut body = str16("MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]);
    body.extend(str16(client_id));
    stream.write_all(&packet(0x10, &body)).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    if connack != [0x20, 2, 0, 0] {
        return Err(std::io::Error::other(format!("CONNACK {connack:?}")));
    }
    Ok(stream)
}

/// Runs the fan-out and returns its report.
pub fn run(opts: Options) -> Result<MqttReport, MqttError> {
    if !opts.addr.ip().is_loopback() {
        return Err(MqttError::Options(format!(
            "{} is not a loopback address: pier-bench only loads servers on this machine",
            opts.addr
        )));
    }
    if opts.subscribers == 0 || opts.window == 0 || opts.messages == 0 {
        return Err(MqttError::Options(
            "subscribers, window and messages must be at least 1".into(),
        ));
    }
    let timeout = Duration::try_from_secs_f64(opts.timeout).map_err(|_| {
        MqttError::Options(format!(
            "--timeout {} is not a non-negative number of seconds",
            opts.timeout
        ))
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .enable_all()
        .build()
        .map_err(MqttError::Runtime)?;
    rt.block_on(async move {
        let deadline = Instant::now() + timeout;
        let client = |what: String| move |source| MqttError::Client { what, source };
        let publish = packet(0x30, &[str16(TOPIC), vec![b'm'; opts.size]].concat());
        let delivered = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let mut readers = Vec::with_capacity(opts.subscribers);
        for i in 0..opts.subscribers {
            let mut sub = connect(opts.addr, &format!("bench-sub-{i}"))
                .await
                .map_err(client(format!("connect subscriber {i}")))?;
            let mut body = 1u16.to_be_bytes().to_vec();
            body.extend(str16(TOPIC));
            body.push(0);
            sub.write_all(&packet(0x82, &body))
                .await
                .map_err(client(format!("subscribe subscriber {i}")))?;
            let mut suback = [0u8; 5];
            sub.read_exact(&mut suback)
                .await
                .map_err(client(format!("read SUBACK of subscriber {i}")))?;
            let (delivered, progress, size) =
                (delivered.clone(), progress.clone(), publish.len() as u64);
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut bytes = 0u64;
                loop {
                    match sub.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let before = bytes / size;
                            bytes += n as u64;
                            let whole = bytes / size - before;
                            if whole > 0 {
                                delivered.fetch_add(whole, Ordering::Relaxed);
                                progress.notify_one();
                            }
                        }
                    }
                }
            }));
        }
        let mut publisher = connect(opts.addr, "bench-pub")
            .await
            .map_err(client("connect the publisher".into()))?;
        let before = procstat::tree_usage(opts.watch_pid.unwrap_or(0)).unwrap_or_default();
        let machine_before = procstat::machine_cpu();
        let me_before = procstat::cpu_ns(std::process::id());
        let pier_before = opts.watch_pid.map_or(0, procstat::cpu_ns);
        let began = Instant::now();
        let mut report = MqttReport {
            subscribers: opts.subscribers,
            ..MqttReport::default()
        };
        let want_per_message = opts.subscribers as u64;
        'run: while report.published < opts.messages {
            let n = opts.window.min(opts.messages - report.published);
            let batch = publish.repeat(n as usize);
            if let Err(e) = publisher.write_all(&batch).await {
                report.error = Some(format!("publish: {e}"));
                break;
            }
            report.published += n;
            let want = report.published * want_per_message;
            while delivered.load(Ordering::Relaxed) < want {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero()
                    || tokio::time::timeout(left, progress.notified())
                        .await
                        .is_err()
                {
                    report.error = Some(format!(
                        "timed out: {} of {want} deliveries",
                        delivered.load(Ordering::Relaxed)
                    ));
                    break 'run;
                }
            }
        }
        report.seconds = began.elapsed().as_secs_f64();
        let after = procstat::tree_usage(opts.watch_pid.unwrap_or(0)).unwrap_or_default();
        let machine_after = procstat::machine_cpu();
        report.delivered = delivered.load(Ordering::Relaxed);
        report.published_per_s = report.published as f64 / report.seconds;
        report.delivered_per_s = report.delivered as f64 / report.seconds;
        report.server_cpu_ns = after.cpu_ns.saturating_sub(before.cpu_ns);
        report.pier_cpu_ns = opts
            .watch_pid
            .map_or(0, procstat::cpu_ns)
            .saturating_sub(pier_before);
        let busy = machine_after.busy_ns.saturating_sub(machine_before.busy_ns);
        let me = procstat::cpu_ns(std::process::id()).saturating_sub(me_before);
        report.other_cpu_ns = busy.saturating_sub(report.server_cpu_ns).saturating_sub(me)
            + machine_after
                .steal_ns
                .saturating_sub(machine_before.steal_ns);
        for r in readers {
            r.abort();
        }
        Ok(report)
    })
}
