//! Pier's server: RoadRunner TCP configs, correct framing, a supervised PHP worker pool.
//!
//! # Layout
//! - [`cluster`]: several instances as one over Redis or NATS: node ids and the uuid tag that
//!   routes an operation to the node owning the connection, the bus envelope, forwarding the
//!   registry's operations, cluster-wide list/count/groups/info; [`cluster::bus`] is the
//!   transport (publish to a node or to all, reconnect, resubscribe).
//! - [`config`]: `.rr.yaml` (RoadRunner v3 layout): YAML tree, `${VAR}` expansion, `-o`
//!   overrides, unknown-key warnings, validation into [`config::Config`].
//! - [`framing`]: one I/O-free tokio-util `Decoder` per framing mode (delimiter, length field,
//!   varint, fixed size, raw) that cuts client bytes into packets under any chunking, bounded by
//!   `max_packet_size` before anything is buffered; [`framing::FrameCodec`] picks a server's;
//!   [`framing::packets`] reads a connection's packets with no read buffer of its own while idle.
//! - [`pool`]: the worker pool, one concept per file: `pool/worker.rs` (a process and its relay,
//!   pid handshake, reaper), `pool/line.rs` (several events in flight on a busy worker, answered
//!   in order), `pool/relay.rs` (socket relays), `pool/queue.rs` (fair FIFO waiting with one
//!   timer, `max_queue_size`), `pool/assign.rs` (the slot in a waiting event's own future that
//!   its worker or turn is handed through), `pool/spare.rs` (the per-thread reused block an event's future is boxed
//!   in), `pool/supervisor.rs` (replacements, `tcp.pool.supervisor`, dynamic
//!   allocator), `pool/reset.rs` (rolling reset), `pool/on_init.rs` (`server.on_init`);
//!   `pool/mod.rs` runs one event: an idle worker alone, or a place in a busy worker's line.
//! - [`listener`]: between accept and the first event: the PROXY header of trusted balancers
//!   ([`listener::proxy`]), TLS with SNI, client certificates and reload ([`listener::tls`]), the
//!   handshake timeout; also the handshake of a worker-commanded STARTTLS; `listener/stream.rs`
//!   is the accepted connection's two halves, plaintext or TLS.
//! - `connection`: one task per client: CONNECTED → DATA… → CLOSE exactly once, replies applied,
//!   connection state kept (Pier extension `state`), idle timeout, STARTTLS when a worker
//!   commands it (Pier extension `starttls`; the handshake itself is the listener's), and its one
//!   outbound queue (replies and pushes in order, bounded by `max_write_buffer` /
//!   `write_timeout`), written by that same task; at shutdown, packets already received still run.
//! - `limits`: per-server admission at accept (`max_connections`, per-address count and accept
//!   rate; behind a PROXY balancer the per-address limits apply to the header's client address),
//!   TCP keep-alive, the idle clock of a connection's reads.
//! - `log_scope`: a connection's log context (`conn{server, uuid}`), entered only when a line
//!   is logged (the crate's `debug!`/`info!`/`warn!`/`error!`), not on every poll of its task.
//! - [`ops`]: Prometheus metrics (`metrics.address`) and health/readiness (`status.address`).
//! - [`ctl`]: `pier reset`, `pier workers`, `pier connections`: a running server over its RPC.
//! - [`registry`]: live connections by uuid and their groups, woken at shutdown; the operations (send, close, join,
//!   leave, broadcast) that workers' command frames and RPC methods apply.
//! - [`rpc`]: goridge RPC on `rpc.listen` (`tcp.Close`, `rpc.Version`, `pier.*`), its codecs and
//!   its method table; [`rpc::ops`] RoadRunner's `resetter`/`informer` services; [`rpc::client`]
//!   the blocking client `pier reset`/`workers`/`connections` use.
//! - [`version`]: what `pier --version` reports (server, relay protocol, features, the
//!   extension a PHP beside it would load).
//! - this file: [`Server`] (bind, serve until shutdown, SIGUSR1 reset), [`TlsReloader`] (SIGHUP)
//!   and [`run`]; [`init_logging`]; [`FEATURES`].
//!
//! Shutdown order, bounded as a whole by `endure.grace_period`: stop accepting → every packet
//! already received is run and its reply written → every open connection gets its CLOSE event
//! while the workers are alive → sockets closed → stop frame to each worker, `destroy_timeout`,
//! then kill. Workers still on the event they had when shutdown began are killed after
//! `destroy_timeout`, so their connections get their CLOSE on other workers.

pub mod cluster;
pub mod config;
mod connection;
pub mod ctl;
pub mod framing;
mod limits;
pub mod listener;
mod log_scope;
pub mod ops;
pub mod pool;
pub mod registry;
pub mod rpc;
pub mod version;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::log_scope::{debug, error, info, warn};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, LogEncoding, LogOutput, LogsConfig};
use crate::limits::Admission;
use crate::listener::{Listener, TlsError};
use crate::ops::{Metrics, Ops, OpsError};
use crate::pool::{Pool, PoolError};
use crate::registry::Registry;
use crate::rpc::methods::{Context, Methods};
use crate::rpc::{RpcError, RpcServer};

/// The Pier extensions (PROTOCOL.md "Pier extensions") this server offers, in the order they are
/// announced to workers in `PIER_FEATURES` and listed by `pier --version`: append a name when
/// adding one. The extension's own list (`php-ext/src/session.rs`) must hold every name here: the
/// end-to-end suite checks a release build, and `pier --version` flags an extension that lacks one.
pub const FEATURES: &[&str] = &["state", "push", "idle_timeout", "starttls"];

/// How long the cluster's bus gets to say bye and close at the end of a shutdown.
const CLUSTER_STOP: Duration = Duration::from_secs(2);

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not bind (config's fault, or the port is taken).
    #[error("could not listen on {addr} for the server: {server}")]
    Bind {
        /// Server name.
        server: String,
        /// The address.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A server's TLS certificates could not be loaded (config's fault; names key and file).
    #[error("could not set up TLS for the server {server}")]
    Tls {
        /// Server name.
        server: String,
        /// What failed (boxed: its rustls causes are large, and every `ServeError` carries the
        /// largest variant's size).
        #[source]
        source: Box<TlsError>,
    },
    /// No worker could start.
    #[error("could not start the worker pool")]
    Pool(#[source] PoolError),
    /// `server.on_init` failed and `on_init.exit_on_error` is true: no worker is started.
    #[error("could not initialise (server.on_init.exit_on_error is true)")]
    OnInit(#[source] pool::OnInitError),
    /// The metrics or status listener could not bind.
    #[error("could not start the operations endpoints")]
    Ops(#[source] OpsError),
    /// `rpc.listen` could not be bound.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// `cluster.bus` names a bus the transport cannot use (config's fault: the bus URL).
    #[error("could not start the cluster bus")]
    Cluster(#[source] cluster::BusError),
    /// The graceful shutdown did not finish within `endure.grace_period`; workers were killed.
    #[error("could not shut down gracefully within endure.grace_period ({0:?}); workers killed")]
    GracePeriod(Duration),
    /// `logs.output` (or `file_logger_options.log_output`) cannot be opened for appending
    /// (config's fault; from [`init_logging`], before the server starts).
    #[error("could not open the log output {path}")]
    LogOutput {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A bound server with its worker pool, ready to serve.
#[derive(Debug)]
pub struct Server {
    /// Listeners with their settings, in config order.
    listeners: Vec<(Arc<Listener>, TcpListener)>,
    /// The workers.
    pool: Pool,
    /// How long connections may take to finish their CLOSE at shutdown.
    destroy_timeout: Duration,
    /// The metrics and status listeners (none when not configured).
    ops: Ops,
    /// The instance's metrics (off without `metrics.address`).
    metrics: Metrics,
    /// The RPC listener, when `rpc.listen` is set.
    rpc: Option<RpcServer>,
    /// Live connections by uuid.
    registry: Registry,
    /// This node's part of a cluster (`cluster.bus`); stopped after the graceful shutdown.
    cluster: Option<cluster::Handle>,
    /// `endure.grace_period`: bound of the whole shutdown.
    grace_period: Duration,
    /// SIGUSR1, registered first thing in [`Server::bind`] (its default action would end pier).
    usr1: Option<tokio::signal::unix::Signal>,
    /// What SIGHUP and `pier reset` reload (the listeners' certificates).
    tls: TlsReloader,
}

impl Server {
    /// Binds every `tcp.servers` address, then starts the workers.
    pub async fn bind(mut config: Config) -> Result<Server, ServeError> {
        use tokio::signal::unix::{signal, SignalKind};
        let usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "could not listen for SIGUSR1; workers cannot be reset by signal");
                None
            }
        };
        let ops = Ops::bind(config.metrics.as_ref(), config.status.as_ref())
            .await
            .map_err(ServeError::Ops)?;
        let metrics = if config.metrics.is_some() {
            Metrics::new()
        } else {
            Metrics::off()
        };
        let registry = Registry::new();
        // Before any listener serves: every connection's uuid must carry this node's tag.
        let cluster = match &config.cluster {
            Some(c) => Some(
                cluster::Cluster::start(c, &registry, metrics.clone())
                    .map_err(ServeError::Cluster)?,
            ),
            None => None,
        };
        // Filled once the workers run; the RPC methods that need them answer an error before.
        let pool_slot = Arc::new(std::sync::OnceLock::new());
        let mut listeners = Vec::new();
        for server in &config.servers {
            let server_metrics = metrics.server(&server.name);
            let admission =
                Admission::new(&server.name, server.limits.clone(), server_metrics.clone());
            let listener = Listener::new(
                server.clone(),
                config.read_buf_size,
                server_metrics,
                metrics.clone(),
                admission,
                registry.clone(),
            )
            .map_err(|source| ServeError::Tls {
                server: server.name.clone(),
                source: Box::new(source),
            })?;
            let socket =
                TcpListener::bind(&server.addr)
                    .await
                    .map_err(|source| ServeError::Bind {
                        server: server.name.clone(),
                        addr: server.addr.clone(),
                        source,
                    })?;
            listeners.push((Arc::new(listener), socket));
        }
        let tls = TlsReloader {
            listeners: listeners.iter().map(|(l, _)| l.clone()).collect(),
            cluster_tls: config.cluster.as_ref().is_some_and(|c| c.tls.is_some()),
        };
        let rpc = match &config.rpc {
            Some(rpc) => {
                let context = Context {
                    registry: registry.clone(),
                    pool: pool_slot.clone(),
                    metrics: metrics.clone(),
                    tls: tls.clone(),
                };
                let server = RpcServer::bind(rpc, Methods::standard(), context).await?;
                // As RoadRunner: workers find RPC in RR_RPC (the real port when the config said 0),
                // unless server.env sets it.
                if !config.pool.env.iter().any(|(k, _)| k == "RR_RPC") {
                    config.pool.env.push(("RR_RPC".into(), server.address()));
                }
                Some(server)
            }
            None => None,
        };
        if let Some(on_init) = &config.on_init {
            pool::run_on_init(on_init, &config.pool.env)
                .await
                .map_err(ServeError::OnInit)?;
        }
        let destroy_timeout = config.pool.destroy_timeout;
        let pool = Pool::start(config.pool, metrics.clone())
            .await
            .map_err(ServeError::Pool)?;
        let _ = pool_slot.set(pool.clone());
        Ok(Server {
            listeners,
            pool,
            destroy_timeout,
            ops,
            metrics,
            rpc,
            registry,
            cluster,
            grace_period: config.grace_period,
            usr1,
            tls,
        })
    }

    /// The bound operations endpoints: `("metrics" | "status", address)`.
    pub fn ops_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.ops.local_addrs()
    }

    /// The worker pool: [`Pool::reset`] (the `pier reset` mechanism), [`Pool::stats`].
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// The bound address of each server, by name (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(l, s)| Some((l.config.name.clone(), s.local_addr().ok()?)))
            .collect()
    }

    /// Where RPC listens (`tcp://…` with the real port, or `unix://…`), when configured.
    pub fn rpc_address(&self) -> Option<String> {
        self.rpc.as_ref().map(RpcServer::address)
    }

    /// The connection registry (what RPC and workers' push commands act on).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Something that re-reads every server's TLS certificates (SIGHUP, `pier reset`).
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.clone()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully within
    /// `endure.grace_period`. SIGUSR1 resets the workers meanwhile (one at a time).
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let token = CancellationToken::new();
        let connections = TaskTracker::new();
        // The operations endpoints answer until the workers are gone: a probe during shutdown
        // sees the pool draining.
        let ops_stop = CancellationToken::new();
        let ops_tasks = TaskTracker::new();
        self.ops.serve(
            self.metrics.clone(),
            self.pool.clone(),
            ops_stop.clone(),
            &ops_tasks,
        );
        let mut accept_loops = Vec::new();
        if let Some(rpc) = self.rpc {
            accept_loops.push(tokio::spawn(rpc.serve(token.clone())));
        }
        debug!(
            bytes = listener::task_size(),
            "size of a connection's task (held by every connection, idle or not)"
        );
        for (listener, socket) in std::mem::take(&mut self.listeners) {
            if let Ok(addr) = socket.local_addr() {
                info!(server = %listener.config.name, %addr, "listening");
            }
            let token = token.clone();
            let connections = connections.clone();
            let pool = self.pool.clone();
            accept_loops.push(tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        _ = token.cancelled() => return,
                        a = socket.accept() => a,
                    };
                    match accepted {
                        Ok((stream, peer)) => {
                            // Over a limit: closed at once (dropped), logged and counted. Behind
                            // a PROXY balancer the per-address limits wait for the header.
                            let per_address = listener.config.proxy_protocol.is_none();
                            let Ok(permit) = listener.admission.admit(peer.ip(), per_address)
                            else {
                                continue;
                            };
                            // Spawned as it is: a wrapping `async` block awaiting it would
                            // store the connection's future twice (RSS per idle connection).
                            connections.spawn(listener::serve(
                                stream,
                                peer,
                                permit,
                                listener.clone(),
                                pool.clone(),
                                token.clone(),
                            ));
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: wait instead of spinning.
                            warn!(server = %listener.config.name, error = %e, "could not accept");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        let resets = tokio::spawn(reset_on_sigusr1(self.pool.clone(), self.usr1.take()));
        shutdown.await;
        info!(grace_period = ?self.grace_period, "shutting down: running packets already received, then closing connections");
        token.cancel();
        // Connections waiting for a packet watch the registry's flag, not the token.
        self.registry.stop_connections();
        resets.abort();
        let grace_period = self.grace_period;
        let pool = self.pool.clone();
        let graceful = shut_down(
            self.pool.clone(),
            self.destroy_timeout,
            accept_loops,
            connections,
        );
        let result = if tokio::time::timeout(grace_period, graceful).await.is_err() {
            error!(
                ?grace_period,
                "graceful shutdown did not finish within endure.grace_period; killing the workers"
            );
            pool.kill_all();
            Err(ServeError::GracePeriod(grace_period))
        } else {
            Ok(())
        };
        if let Some(cluster) = self.cluster.take() {
            cluster.stop(CLUSTER_STOP).await;
        }
        ops_stop.cancel();
        ops_tasks.close();
        ops_tasks.wait().await;
        info!("stopped");
        result
    }
}

/// The graceful part of the shutdown, once accepting stopped (see the module docs).
async fn shut_down(
    pool: Pool,
    destroy_timeout: Duration,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
    connections: TaskTracker,
) {
    for accept in accept_loops {
        let _ = accept.await;
    }
    // Workers busy now and still on the same event after destroy_timeout are stuck on it.
    // Taken after the cancel: from here on, connections start no DATA event (but one whose
    // packet was already read when the cancel came), only CLOSE events.
    let busy = pool.busy_workers();
    connections.close();
    if tokio::time::timeout(destroy_timeout, connections.wait())
        .await
        .is_err()
    {
        // Kill the workers stuck on one event since shutdown began: their events fail as for
        // a crash, so those connections get their CLOSE on another (or a replacement) worker,
        // the stuck one being dead first (events of a connection never overlap).
        let killed = pool.kill_stuck(&busy);
        if !killed.is_empty() {
            warn!(
                pids = ?killed,
                timeout = ?destroy_timeout,
                "killed workers stuck on one event for destroy_timeout; their connections get CLOSE on other workers"
            );
        }
        if killed.is_empty()
            || tokio::time::timeout(destroy_timeout, connections.wait())
                .await
                .is_err()
        {
            error!(timeout = ?destroy_timeout, "connections did not finish in time");
        }
    }
    info!("stopping workers");
    pool.shutdown().await;
}

/// Resets the workers (one at a time, see [`Pool::reset`]) on each SIGUSR1.
async fn reset_on_sigusr1(pool: Pool, usr1: Option<tokio::signal::unix::Signal>) {
    let Some(mut usr1) = usr1 else {
        return;
    };
    while usr1.recv().await.is_some() {
        info!("SIGUSR1 received: resetting the workers one at a time");
        match pool.reset().await {
            Ok(replaced) => info!(replaced, "workers reset"),
            Err(e) => error!(error = %e, "worker reset incomplete"),
        }
    }
}

/// Re-reads the TLS certificate files of every server; cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsReloader {
    /// The servers, shared with their accept loops.
    listeners: Vec<Arc<Listener>>,
    /// Whether `cluster.tls` is set: it is read only at start (the bus clients keep it for their
    /// reconnects), so a reload says it was not reloaded rather than leave the operator who
    /// renewed those files to believe it was.
    cluster_tls: bool,
}

impl TlsReloader {
    /// Reloads every server with `tls`. New handshakes use the new certificates; open
    /// connections keep theirs. A server whose files are bad keeps its current certificates; the
    /// error is logged (naming the key and file) and returned with the others.
    pub fn reload(&self) -> Vec<(String, TlsError)> {
        if self.cluster_tls {
            info!("cluster.tls not reloaded: the cluster bus keeps the files read at start; restart pier to use renewed ones");
        }
        let mut failed = Vec::new();
        for listener in &self.listeners {
            let server = &listener.config.name;
            match listener.reload_tls() {
                Ok(true) => info!(%server, "TLS certificates reloaded"),
                Ok(false) => {}
                Err(e) => {
                    error!(%server, error = %ErrorChain(&e), "config error: TLS certificates not reloaded; the current ones stay in use");
                    failed.push((server.clone(), e));
                }
            }
        }
        failed
    }

    /// Connections each server refused before any event: (server, TLS handshake failures,
    /// PROXY refusals).
    pub fn refusals(&self) -> Vec<(String, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        self.listeners
            .iter()
            .map(|l| {
                (
                    l.config.name.clone(),
                    l.stats.tls_handshake_failures.load(Relaxed),
                    l.stats.proxy_refusals.load(Relaxed),
                )
            })
            .collect()
    }
}

/// Shows an error with its causes on one line (`a: b: c`).
pub(crate) struct ErrorChain<'a>(pub(crate) &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// Binds, starts the workers, serves until `shutdown` completes, stops gracefully. SIGHUP
/// reloads the TLS certificates.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    // Registered before anything listens: SIGHUP's default action would end pier, so one sent
    // as soon as the servers are up must already find this handler.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let server = Server::bind(config).await?;
    let reloader = server.tls_reloader();
    let hangups = tokio::spawn(async move {
        let mut hup = match hup {
            Ok(hup) => hup,
            Err(e) => {
                warn!(error = %e, "could not listen for SIGHUP: TLS certificates cannot be reloaded by signal");
                return;
            }
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP received: reloading TLS certificates");
            reloader.reload();
        }
    });
    let result = server.serve(shutdown).await;
    hangups.abort();
    result
}

/// Installs the global log subscriber for the `logs` section (`output`: stderr, stdout or a file
/// appended to; `mode`, `level`, `encoding`). `RUST_LOG`, when set, overrides the level. When
/// the output cannot be opened, says so on `err_output` (zap's meaning) and fails.
pub fn init_logging(logs: &LogsConfig) -> Result<(), ServeError> {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::EnvFilter;
    let open = |output: &LogOutput| -> Result<BoxMakeWriter, ServeError> {
        Ok(match output {
            LogOutput::Stderr => BoxMakeWriter::new(std::io::stderr),
            LogOutput::Stdout => BoxMakeWriter::new(std::io::stdout),
            LogOutput::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ServeError::LogOutput {
                        path: path.display().to_string(),
                        source,
                    })?;
                BoxMakeWriter::new(std::sync::Mutex::new(file))
            }
        })
    };
    let writer = match open(&logs.output) {
        Ok(w) => w,
        Err(e) => {
            let line = format!("error: {}\n", ErrorChain(&e));
            let _ = match &logs.err_output {
                LogOutput::Stdout => {
                    std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes())
                }
                LogOutput::File(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes())),
                LogOutput::Stderr => {
                    std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes())
                }
            };
            return Err(e);
        }
    };
    let ansi = match logs.output {
        LogOutput::Stderr => std::io::stderr().is_terminal(),
        LogOutput::Stdout => std::io::stdout().is_terminal(),
        LogOutput::File(_) => false,
    };
    // async-nats logs every connection event at info level, a failed reconnect attempt every
    // two seconds during an outage: the cluster's bus logs those transitions itself, rate-limited.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(&logs.level)
            .add_directive("async_nats=warn".parse().expect("a valid directive"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match (logs.raw, logs.encoding) {
        (true, _) => builder
            .without_time()
            .with_level(false)
            .with_target(false)
            .try_init(),
        (false, LogEncoding::Console) => builder.try_init(),
        (false, LogEncoding::Json) => builder.json().try_init(),
    };
    Ok(())
}
