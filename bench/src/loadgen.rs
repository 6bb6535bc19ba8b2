//! The load generator: closed loop (C connections × depth D), open loop at a fixed rate, and an
//! idle connect ramp for memory per connection. One run prints one JSON [`LoadReport`].
//!
//! Every reply is matched to its request by order (the targets are echo servers, and a TCP
//! connection keeps order), and counted by its delimiter's last byte, which the filler never
//! contains. Length-prefixed packets (4-byte big-endian length, then the payload) end with that
//! byte too, and their length bytes are checked not to contain it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant as TokioInstant;

use crate::procstat::{self, ProcError, TreeUsage};

/// What went wrong generating load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The tokio runtime could not start.
    #[error("could not start the load generator's runtime")]
    Runtime(#[source] std::io::Error),
    /// Contradictory or impossible options (caller's mistake).
    #[error("could not use these load options: {0}")]
    Options(String),
    /// Not a single connection could be made: nothing to measure (server side).
    #[error("could not connect to {addr} at all (is the server up?)")]
    NoConnection {
        /// The target.
        addr: SocketAddr,
        /// The first connect error seen.
        #[source]
        source: std::io::Error,
    },
    /// The server's process tree could not be sampled.
    #[error("could not sample the server's CPU and memory")]
    Proc(#[source] ProcError),
}

/// The traffic shape shared by every mode.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Target address (loopback).
    pub addr: SocketAddr,
    /// How many connections to open.
    pub connections: usize,
    /// Packet size in bytes, delimiter included.
    pub size: usize,
    /// Packet terminator.
    pub delimiter: Vec<u8>,
    /// Length-prefixed packets: a 4-byte big-endian length, then `size` payload bytes (ending with
    /// the delimiter, which replies are counted by).
    pub length_prefix: bool,
    /// Most connects in flight at once during the ramp (a bound on SYN bursts and the accept queue).
    pub connect_concurrency: usize,
    /// Time allowed for the whole connect ramp; connections not made by then count as errors.
    pub connect_timeout: Duration,
    /// Server pid whose process tree is sampled for CPU and RSS (the harness passes it).
    pub watch_pid: Option<u32>,
    /// Speak TLS to the target (every connect is a full handshake: no session resumption).
    pub tls: Option<TlsClient>,
}

/// The client side of TLS for a target: who to trust and which name to ask for.
#[derive(Clone)]
pub struct TlsClient {
    /// rustls client config (resumption off, so each connect is a full handshake).
    connector: tokio_rustls::TlsConnector,
    /// The SNI name (also the name the certificate must carry).
    name: rustls_pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish()
    }
}

impl TlsClient {
    /// Trusts the PEM certificates in `ca_file`, asks for `name`; TLS 1.3 only (what the
    /// handshake row measures), no resumption.
    pub fn new(ca_file: &std::path::Path, name: &str) -> Result<TlsClient, LoadError> {
        use rustls_pki_types::pem::PemObject;
        let bad = |e: String| LoadError::Options(format!("--tls-ca {}: {e}", ca_file.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| bad(e.to_string()))?
        {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        let name = rustls_pki_types::ServerName::try_from(name.to_owned())
            .map_err(|e| LoadError::Options(format!("--sni: {e}")))?;
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// A client stream: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
type Stream = Box<dyn Io>;

/// One connection to the target: TCP connect, then the TLS handshake when asked.
async fn connect(addr: SocketAddr, tls: Option<&TlsClient>) -> std::io::Result<Stream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(match tls {
        None => Box::new(s),
        Some(t) => Box::new(t.connector.connect(t.name.clone(), s).await?),
    })
}

/// What to run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Each connection sends `depth` packets, waits for the `depth` replies, and repeats.
    Closed {
        /// Packets in flight per connection.
        depth: usize,
        /// Unmeasured time first.
        warmup: Duration,
        /// Measured time (with `batches`: the bound on the run).
        duration: Duration,
        /// Stop each connection after this many batches instead of at the end of the window
        /// (for profiling a known number of messages); the window then lasts until all are done.
        batches: Option<u64>,
    },
    /// Packets are sent on a fixed schedule whatever the replies do; latency runs from the
    /// scheduled send time, so a stalled server is charged for every packet it delayed.
    Open {
        /// Total packets per second over all connections.
        rate: f64,
        /// Unmeasured time first.
        warmup: Duration,
        /// Measured time.
        duration: Duration,
    },
    /// Open the connections, let the server settle, sample its memory, hold, close.
    Idle {
        /// How long the connections are kept open after the sample.
        hold: Duration,
    },
    /// `connections` tasks each connect (and, with TLS, handshake), then close, over and over:
    /// connections (handshakes) per second. Latency is connect + handshake.
    Connects {
        /// Unmeasured time first.
        warmup: Duration,
        /// Measured time.
        duration: Duration,
    },
}

/// One run's result, printed as a JSON line for the harness.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Connections asked for.
    pub connections_wanted: usize,
    /// Connections actually established.
    pub connections: usize,
    /// How long the connect ramp took (s).
    pub connect_seconds: f64,
    /// Replies received inside the measured window.
    pub messages: u64,
    /// Length of the measured window (s).
    pub seconds: f64,
    /// `messages / seconds`.
    pub msg_per_s: f64,
    /// Round-trip latency percentiles (µs); 0 when nothing was measured.
    pub p50_us: f64,
    /// 99th percentile (µs).
    pub p99_us: f64,
    /// 99.9th percentile (µs).
    pub p999_us: f64,
    /// Worst round trip (µs).
    pub max_us: f64,
    /// Failed connects, resets, unexpected EOFs, wrong replies and stalled batches.
    pub errors: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
    /// CPU the load generator used in the window (ns); near `seconds` × 1e9 means it was the bottleneck.
    pub client_cpu_ns: u64,
    /// Server tree CPU in the window (ns), when a pid was watched.
    pub server_cpu_ns: u64,
    /// CPU used in the window by everything else on the machine (ns): busy time of all CPUs
    /// minus the server tree and the generator. Far from 0 means the run was disturbed.
    pub other_cpu_ns: u64,
    /// Time the hypervisor stole from this VM's CPUs in the window (ns).
    pub steal_ns: u64,
    /// Server tree RSS at the end of the window, or with all idle connections open (KiB).
    pub server_rss_kib: u64,
    /// RSS of the server process alone at the same moment (KiB).
    pub server_root_rss_kib: u64,
    /// Idle mode: server tree RSS before the ramp (KiB).
    pub server_rss_before_kib: u64,
    /// Idle mode: server process RSS before the ramp (KiB).
    pub server_root_rss_before_kib: u64,
    /// Processes in the server tree (server + workers).
    pub server_processes: usize,
    /// Open loop: the rate asked for (msg/s).
    pub offered_rate: f64,
    /// Open loop: median delay between the scheduled and the actual send (µs): the generator's own lag.
    pub send_lag_p50_us: f64,
}

/// Runs one load and returns its report.
pub fn run(shape: Shape, mode: Mode) -> Result<LoadReport, LoadError> {
    if !shape.addr.ip().is_loopback() {
        // A load generator that can aim at other hosts is a flooding tool; Pier's bench only
        // ever measures servers on this machine.
        return Err(LoadError::Options(format!(
            "{} is not a loopback address: pier-bench only loads servers on this machine",
            shape.addr
        )));
    }
    if shape.connections == 0 {
        return Err(LoadError::Options("connections must be at least 1".into()));
    }
    if shape.delimiter.is_empty() || shape.size < shape.delimiter.len() + 1 {
        return Err(LoadError::Options(
            "size must exceed the delimiter, which must not be empty".into(),
        ));
    }
    if shape.length_prefix {
        let last = shape.delimiter.last().copied().unwrap_or(b'\n');
        let header = u32::try_from(shape.size).map(u32::to_be_bytes);
        if !header.is_ok_and(|h| !h.contains(&last)) {
            return Err(LoadError::Options(format!(
                "size {} cannot be length-prefixed here: its 4-byte length contains the byte replies are counted by",
                shape.size
            )));
        }
    }
    // The generator gets its own core(s) from taskset: one runtime thread per allowed core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(LoadError::Runtime)?;
    rt.block_on(async move {
        let mut report = LoadReport {
            connections_wanted: shape.connections,
            ..LoadReport::default()
        };
        if let Mode::Connects { warmup, duration } = mode {
            let plan = Plan::new(warmup, duration);
            report.connections = shape.connections;
            let mut set = JoinSet::new();
            for _ in 0..shape.connections {
                set.spawn(connect_loop(shape.clone(), plan.clone()));
            }
            measure(&mut report, set, &plan, shape.watch_pid).await?;
            return Ok(report);
        }
        let before = sample(shape.watch_pid)?;
        let began = Instant::now();
        let (streams, connect_errors, first) = connect_all(&shape).await;
        report.connect_seconds = began.elapsed().as_secs_f64();
        report.connections = streams.len();
        report.errors += connect_errors;
        report.first_error = first.as_ref().map(ToString::to_string);
        if streams.is_empty() {
            let source = first.unwrap_or_else(|| std::io::Error::other("no connection"));
            return Err(LoadError::NoConnection {
                addr: shape.addr,
                source,
            });
        }
        match mode {
            Mode::Closed {
                depth,
                warmup,
                duration,
                batches,
            } => {
                if depth == 0 {
                    return Err(LoadError::Options("depth must be at least 1".into()));
                }
                let mut plan = Plan::new(warmup, duration);
                plan.batches = batches;
                let batch: Arc<[u8]> = packet(&shape, depth).into();
                let mut set = JoinSet::new();
                for stream in streams {
                    set.spawn(closed_connection(
                        stream,
                        batch.clone(),
                        depth,
                        shape.clone(),
                        plan.clone(),
                    ));
                }
                measure(&mut report, set, &plan, shape.watch_pid).await?;
            }
            Mode::Open {
                rate,
                warmup,
                duration,
            } => {
                if rate.is_nan() || rate <= 0.0 {
                    return Err(LoadError::Options("rate must be positive".into()));
                }
                report.offered_rate = rate;
                let plan = Plan::new(warmup, duration);
                let one: Arc<[u8]> = packet(&shape, 1).into();
                let n = streams.len();
                let interval = Duration::from_secs_f64(n as f64 / rate);
                let mut set = JoinSet::new();
                for (i, stream) in streams.into_iter().enumerate() {
                    // Stagger the connections so the total rate is smooth, not n-packet bursts.
                    let offset = interval.mul_f64(i as f64 / n as f64);
                    set.spawn(open_connection(
                        stream,
                        one.clone(),
                        interval,
                        offset,
                        shape.clone(),
                        plan.clone(),
                    ));
                }
                measure(&mut report, set, &plan, shape.watch_pid).await?;
            }
            Mode::Connects { .. } => unreachable!("handled before the ramp"),
            Mode::Idle { hold } => {
                settle(shape.watch_pid).await;
                let after = sample(shape.watch_pid)?;
                report.server_rss_before_kib = before.rss_kib;
                report.server_root_rss_before_kib = before.root_rss_kib;
                report.server_rss_kib = after.rss_kib;
                report.server_root_rss_kib = after.root_rss_kib;
                report.server_processes = after.processes;
                tokio::time::sleep(hold).await;
                drop(streams);
            }
        }
        Ok(report)
    })
}

/// The measured window, shared by every connection task.
#[derive(Debug, Clone)]
struct Plan {
    /// When sending starts.
    begin: Instant,
    /// Start of the measured window (after the warm-up).
    start: Instant,
    /// End of the measured window: no new batch or scheduled packet after it.
    end: Instant,
    /// Set by the coordinator when the window is over, so closed-loop connections stop.
    stop: Arc<AtomicBool>,
    /// Closed loop: batches per connection, when the run is bounded by count rather than time.
    batches: Option<u64>,
}

impl Plan {
    fn new(warmup: Duration, duration: Duration) -> Self {
        let begin = Instant::now();
        Self {
            begin,
            start: begin + warmup,
            end: begin + warmup + duration,
            stop: Arc::new(AtomicBool::new(false)),
            batches: None,
        }
    }

    fn measured(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }

    /// After the window, in-flight work gets this long to finish before it counts as stalled.
    fn deadline(&self) -> Instant {
        self.end + Duration::from_secs(3)
    }
}

/// What one connection task measured.
#[derive(Debug)]
struct ConnStats {
    /// Round trips of replies received inside the window (ns).
    hist: Histogram<u64>,
    /// Open loop: scheduled-to-actual send lag (ns).
    lag: Histogram<u64>,
    /// Replies received inside the window.
    messages: u64,
    /// Errors on this connection (at most one: the connection stops at its first).
    errors: u64,
    /// What the error was.
    first_error: Option<String>,
}

impl ConnStats {
    fn new() -> Self {
        // 1 ns .. 100 s at 3 significant digits: fixed bounds, so creation cannot fail.
        let h = || Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid fixed bounds");
        Self {
            hist: h(),
            lag: h(),
            messages: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn fail(&mut self, what: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| what.to_string());
    }

    /// Records one reply's round trip; `counted` says whether it also counts toward throughput
    /// (received inside the window).
    fn record(&mut self, histogram_ns: u64, counted: bool) {
        if counted {
            self.messages += 1;
        }
        self.hist.saturating_record(histogram_ns.max(1));
    }
}

/// `count` packets of `shape.size` bytes (plus a 4-byte length when length-prefixed), back to
/// back.
fn packet(shape: &Shape, count: usize) -> Vec<u8> {
    let mut one = vec![b'x'; shape.size - shape.delimiter.len()];
    // The filler must not contain the byte the replies are counted by.
    let last = *shape.delimiter.last().unwrap_or(&b'\n');
    if last == b'x' {
        one.fill(b'y');
    }
    one.extend_from_slice(&shape.delimiter);
    if shape.length_prefix {
        // Checked in run(): the size fits in 4 bytes that do not contain the counted byte.
        let mut framed = (one.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&one);
        one = framed;
    }
    one.repeat(count)
}

/// Opens `shape.connections` connections with at most `connect_concurrency` in flight, within
/// `connect_timeout` overall. Returns the streams, the failure count and the first failure.
async fn connect_all(shape: &Shape) -> (Vec<Stream>, u64, Option<std::io::Error>) {
    let deadline = TokioInstant::now() + shape.connect_timeout;
    let mut set = JoinSet::new();
    let mut streams = Vec::with_capacity(shape.connections);
    let mut errors = 0u64;
    let mut first = None;
    let mut started = 0;
    while started < shape.connections || !set.is_empty() {
        if started < shape.connections
            && set.len() < shape.connect_concurrency.max(1)
            && TokioInstant::now() < deadline
        {
            let addr = shape.addr;
            let tls = shape.tls.clone();
            set.spawn(async move {
                tokio::time::timeout_at(deadline, connect(addr, tls.as_ref()))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect ramp timed out")
                    })?
            });
            started += 1;
            continue;
        }
        if started < shape.connections && TokioInstant::now() >= deadline {
            // Time is up: the ones never started are failures too.
            let missing = (shape.connections - started) as u64;
            errors += missing;
            started = shape.connections;
            first.get_or_insert_with(|| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect ramp timed out")
            });
        }
        match set.join_next().await {
            Some(Ok(Ok(s))) => streams.push(s),
            Some(Ok(Err(e))) => {
                errors += 1;
                first.get_or_insert(e);
            }
            Some(Err(e)) => {
                errors += 1;
                first.get_or_insert(std::io::Error::other(e));
            }
            None => {}
        }
    }
    (streams, errors, first)
}

/// Samples the watched tree, or zeros when nothing is watched.
fn sample(pid: Option<u32>) -> Result<TreeUsage, LoadError> {
    match pid {
        Some(pid) => procstat::tree_usage(pid).map_err(LoadError::Proc),
        None => Ok(TreeUsage::default()),
    }
}

/// Waits (at most 10 s) until the watched server uses under 5 % of a core over 100 ms: after a
/// ramp the server may still be handing CONNECTED events to its workers.
pub async fn settle(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let bound = Instant::now() + Duration::from_secs(10);
    let mut last = procstat::tree_usage(pid).map(|u| u.cpu_ns).unwrap_or(0);
    while Instant::now() < bound {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = procstat::tree_usage(pid).map(|u| u.cpu_ns).unwrap_or(0);
        if now.saturating_sub(last) < 5_000_000 {
            return;
        }
        last = now;
    }
}

/// Waits for the window, samples CPU at both ends, stops the connections and merges their stats.
async fn measure(
    report: &mut LoadReport,
    mut set: JoinSet<ConnStats>,
    plan: &Plan,
    pid: Option<u32>,
) -> Result<(), LoadError> {
    let me = std::process::id();
    tokio::time::sleep_until(plan.start.into()).await;
    let server0 = sample(pid)?;
    let client0 = procstat::tree_usage(me).map_err(LoadError::Proc)?;
    let machine0 = procstat::machine_cpu();
    let mut finished = Vec::new();
    let window_end = if plan.batches.is_some() {
        // Count-bounded: the window is however long the batches took.
        while let Some(done) = set.join_next().await {
            finished.push(done);
        }
        Instant::now()
    } else {
        tokio::time::sleep_until(plan.end.into()).await;
        plan.end
    };
    let server1 = sample(pid)?;
    let client1 = procstat::tree_usage(me).map_err(LoadError::Proc)?;
    let machine1 = procstat::machine_cpu();
    plan.stop.store(true, Ordering::Relaxed);
    report.seconds = (window_end - plan.start).as_secs_f64();
    report.server_cpu_ns = server1.cpu_ns.saturating_sub(server0.cpu_ns);
    report.client_cpu_ns = client1.cpu_ns.saturating_sub(client0.cpu_ns);
    report.other_cpu_ns = machine1
        .busy_ns
        .saturating_sub(machine0.busy_ns)
        .saturating_sub(report.server_cpu_ns + report.client_cpu_ns);
    report.steal_ns = machine1.steal_ns.saturating_sub(machine0.steal_ns);
    report.server_rss_kib = server1.rss_kib;
    report.server_root_rss_kib = server1.root_rss_kib;
    report.server_processes = server1.processes;
    let mut all = ConnStats::new();
    while let Some(done) = set.join_next().await {
        finished.push(done);
    }
    for done in finished {
        let stats = match done {
            Ok(s) => s,
            Err(e) => {
                all.fail(format!("connection task failed: {e}"));
                continue;
            }
        };
        // Same bounds everywhere: adding cannot fail.
        let _ = all.hist.add(&stats.hist);
        let _ = all.lag.add(&stats.lag);
        all.messages += stats.messages;
        all.errors += stats.errors;
        if let Some(e) = stats.first_error {
            all.first_error.get_or_insert(e);
        }
    }
    report.messages = all.messages;
    report.msg_per_s = all.messages as f64 / report.seconds;
    let us = |ns: u64| ns as f64 / 1000.0;
    if all.messages > 0 {
        report.p50_us = us(all.hist.value_at_quantile(0.50));
        report.p99_us = us(all.hist.value_at_quantile(0.99));
        report.p999_us = us(all.hist.value_at_quantile(0.999));
        report.max_us = us(all.hist.max());
    }
    if !all.lag.is_empty() {
        report.send_lag_p50_us = us(all.lag.value_at_quantile(0.50));
    }
    report.errors += all.errors;
    if report.first_error.is_none() {
        report.first_error = all.first_error;
    }
    Ok(())
}

/// One closed-loop connection: batch out, all replies back, repeat until the window ends.
async fn closed_connection(
    mut stream: Stream,
    batch: Arc<[u8]>,
    depth: usize,
    shape: Shape,
    plan: Plan,
) -> ConnStats {
    let mut stats = ConnStats::new();
    let last = *shape.delimiter.last().unwrap_or(&b'\n');
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while !plan.stop.load(Ordering::Relaxed) && Instant::now() < plan.end {
        if plan.batches.is_some_and(|b| sent >= b) {
            break;
        }
        sent += 1;
        let t0 = Instant::now();
        let (mut r, mut w) = tokio::io::split(&mut stream);
        // Write and read concurrently: a 1 MiB batch does not fit in the socket buffers, and a
        // server that answers as it reads would otherwise deadlock against us.
        let write = w.write_all(&batch);
        let read = async {
            let mut got = 0usize;
            let mut bytes = 0usize;
            while got < depth {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ));
                }
                let now = Instant::now();
                let k = memchr::memchr_iter(last, &buf[..n]).count();
                bytes += n;
                got += k;
                // Latency counts every reply after the warm-up, including those that arrive
                // after the window for batches still in flight at its end: a connection the
                // server starves must show in p99, not vanish from the histogram.
                if now >= plan.start {
                    let rtt = (now - t0).as_nanos() as u64;
                    for _ in 0..k {
                        stats.record(rtt, plan.measured(now));
                    }
                }
            }
            if got != depth || bytes != batch.len() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "expected {depth} echoed packets ({} bytes), got {got} ({bytes} bytes)",
                        batch.len()
                    ),
                ));
            }
            Ok(())
        };
        let both = async { tokio::join!(write, read) };
        match tokio::time::timeout_at(plan.deadline().into(), both).await {
            Ok((Ok(()), Ok(()))) => {}
            Ok((Err(e), _)) | Ok((_, Err(e))) => {
                stats.fail(e);
                break;
            }
            Err(_) => {
                stats.fail("batch stalled past the end of the window");
                break;
            }
        }
    }
    stats
}

/// Connects (and handshakes) and closes until the window ends; each finished connect is one
/// "message". The server is left to notice the close (its CLOSE event follows).
async fn connect_loop(shape: Shape, plan: Plan) -> ConnStats {
    let mut stats = ConnStats::new();
    while !plan.stop.load(Ordering::Relaxed) && Instant::now() < plan.end {
        let t0 = Instant::now();
        let attempt = tokio::time::timeout_at(
            plan.deadline().into(),
            connect(shape.addr, shape.tls.as_ref()),
        )
        .await;
        match attempt {
            Ok(Ok(mut stream)) => {
                let now = Instant::now();
                if now >= plan.start {
                    stats.record((now - t0).as_nanos() as u64, plan.measured(now));
                }
                // close_notify for TLS, FIN for TCP; the answer is not awaited.
                let _ = stream.shutdown().await;
            }
            Ok(Err(e)) => {
                stats.fail(e);
                break;
            }
            Err(_) => break,
        }
    }
    stats
}

/// One open-loop connection: sends on schedule, matches replies to their scheduled times.
async fn open_connection(
    stream: Stream,
    one: Arc<[u8]>,
    interval: Duration,
    offset: Duration,
    shape: Shape,
    plan: Plan,
) -> ConnStats {
    let stats = Mutex::new(ConnStats::new());
    let last = *shape.delimiter.last().unwrap_or(&b'\n');
    let (mut r, mut w) = tokio::io::split(stream);
    // Scheduled send times of packets whose replies are outstanding, oldest first.
    let pending: Mutex<VecDeque<Instant>> = Mutex::new(VecDeque::new());
    let writer_done = AtomicBool::new(false);
    let writer = async {
        let mut k: u32 = 0;
        loop {
            let scheduled = plan.begin + offset + interval * k;
            if scheduled >= plan.end {
                break;
            }
            // tokio's timer wheel fires up to 1 ms late; that lateness would be charged to the
            // server. Wake early and yield until the exact time instead (this costs the
            // generator's own core some CPU, never the server's).
            if let Some(early) = scheduled.checked_sub(Duration::from_micros(1500)) {
                tokio::time::sleep_until(early.into()).await;
            }
            while Instant::now() < scheduled {
                tokio::task::yield_now().await;
            }
            let lag = Instant::now().saturating_duration_since(scheduled);
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(scheduled);
            if let Err(e) = w.write_all(&one).await {
                stats.lock().unwrap_or_else(|p| p.into_inner()).fail(e);
                break;
            }
            if plan.measured(scheduled) {
                let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                s.lag.saturating_record(lag.as_nanos().max(1) as u64);
            }
            k += 1;
        }
        writer_done.store(true, Ordering::Release);
    };
    let reader = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if writer_done.load(Ordering::Acquire)
                && pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
            {
                return;
            }
            let n = match tokio::time::timeout(Duration::from_millis(50), r.read(&mut buf)).await {
                Err(_) => continue,
                Ok(Ok(0)) => {
                    stats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .fail("server closed the connection");
                    return;
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    stats.lock().unwrap_or_else(|p| p.into_inner()).fail(e);
                    return;
                }
            };
            let now = Instant::now();
            let k = memchr::memchr_iter(last, &buf[..n]).count();
            let mut q = pending.lock().unwrap_or_else(|p| p.into_inner());
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            for _ in 0..k {
                let Some(scheduled) = q.pop_front() else {
                    s.fail("more replies than packets sent");
                    return;
                };
                // Every packet scheduled after the warm-up counts for latency, whenever it is
                // answered; only replies inside the window count for throughput.
                if scheduled >= plan.start {
                    s.record((now - scheduled).as_nanos() as u64, plan.measured(now));
                }
            }
        }
    };
    let both = async { tokio::join!(writer, reader) };
    if tokio::time::timeout_at(plan.deadline().into(), both)
        .await
        .is_err()
    {
        stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail("replies stalled past the end of the window");
    }
    stats.into_inner().unwrap_or_else(|p| p.into_inner())
}
