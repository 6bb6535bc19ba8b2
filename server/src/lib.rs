//! Pier's server: RoadRunner TCP configs, correct framing, a supervised PHP worker pool.
//!
//! # Layout
//! - [`config`]: `.rr.yaml` (RoadRunner v3 layout): YAML tree, `${VAR}` expansion, `-o`
//!   overrides, unknown-key warnings, validation into [`config::Config`].
//! - [`framing`]: one I/O-free tokio-util `Decoder` per framing mode (delimiter, length field,
//!   varint, fixed size, raw) that cuts client bytes into packets under any chunking, bounded by
//!   `max_packet_size` before anything is buffered; [`framing::FrameCodec`] picks a server's.
//! - [`pool`]: worker processes on pipes: spawn + pid handshake, idle queue, `max_jobs` rotation,
//!   crash/garbage replacement with backoff, stop replies re-run, graceful stop.
//! - [`listener`]: between accept and the first event: the PROXY header of trusted balancers
//!   ([`listener::proxy`]), TLS with SNI, client certificates and reload ([`listener::tls`]), the
//!   handshake timeout; also the handshake of a worker-commanded STARTTLS.
//! - `connection`: one task per client: CONNECTED → DATA… → CLOSE exactly once, replies applied,
//!   connection state kept (Pier extension `state`), idle timeout, STARTTLS when a worker
//!   commands it (Pier extension `starttls`; the handshake itself is the listener's), and its one
//!   outbound queue (replies and pushes in order, bounded by `max_write_buffer` /
//!   `write_timeout`), written by that same task.
//! - `limits`: per-server admission at accept (`max_connections`, per-address count and accept
//!   rate), TCP keep-alive, the idle clock of a connection's reads.
//! - [`ops`]: Prometheus metrics (`metrics.address`) and health/readiness (`status.address`).
//! - [`ctl`]: `pier reset`, `pier workers`, `pier connections`: a running server over its RPC.
//! - [`registry`]: live connections by uuid and their groups; the operations (send, close, join,
//!   leave, broadcast) that workers' command frames and RPC methods apply.
//! - [`rpc`]: goridge RPC on `rpc.listen` (`tcp.Close`, `rpc.Version`, `pier.*`), its codecs and
//!   its method table.
//! - this file: [`Server`] (bind, serve until shutdown), [`TlsReloader`] (SIGHUP) and [`run`];
//!   [`init_logging`].
//!
//! Shutdown order: stop accepting → every open connection gets its CLOSE event while the workers
//! are alive → sockets closed → stop frame to each worker, `destroy_timeout`, then kill. Workers
//! still on the event they had when shutdown began are killed after `destroy_timeout`, so their
//! connections get their CLOSE on other workers.

pub mod config;
mod connection;
pub mod ctl;
pub mod framing;
mod limits;
pub mod listener;
pub mod ops;
pub mod pool;
pub mod registry;
pub mod rpc;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, LogEncoding, LogsConfig};
use crate::limits::Admission;
use crate::listener::{Listener, TlsError};
use crate::ops::{Metrics, Ops, OpsError};
use crate::pool::{Pool, PoolError};
use crate::registry::Registry;
use crate::rpc::methods::{Context, Methods};
use crate::rpc::{RpcError, RpcServer};

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
        /// What failed.
        #[source]
        source: TlsError,
    },
    /// No worker could start.
    #[error("could not start the worker pool")]
    Pool(#[source] PoolError),
    /// The metrics or status listener could not bind.
    #[error("could not start the operations endpoints")]
    Ops(#[source] OpsError),
    /// `rpc.listen` could not be bound.
    #[error(transparent)]
    Rpc(#[from] RpcError),
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
}

impl Server {
    /// Binds every `tcp.servers` address, then starts the workers.
    pub async fn bind(mut config: Config) -> Result<Server, ServeError> {
        let ops = Ops::bind(config.metrics.as_ref(), config.status.as_ref())
            .await
            .map_err(ServeError::Ops)?;
        let metrics = if config.metrics.is_some() {
            Metrics::new()
        } else {
            Metrics::off()
        };
        let registry = Registry::new();
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
                source,
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
        let rpc = match &config.rpc {
            Some(rpc) => {
                let context = Context {
                    registry: registry.clone(),
                    pool: pool_slot.clone(),
                    metrics: metrics.clone(),
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
        })
    }

    /// The bound operations endpoints: `("metrics" | "status", address)`.
    pub fn ops_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.ops.local_addrs()
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
        TlsReloader {
            listeners: self.listeners.iter().map(|(l, _)| l.clone()).collect(),
        }
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
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
        for (listener, socket) in self.listeners {
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
                            // Over a limit: closed at once (dropped), logged and counted.
                            let Ok(permit) = listener.admission.admit(peer.ip()) else {
                                continue;
                            };
                            let serve = listener::serve(
                                stream,
                                peer,
                                listener.clone(),
                                pool.clone(),
                                token.clone(),
                            );
                            connections.spawn(async move {
                                serve.await;
                                drop(permit);
                            });
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
        shutdown.await;
        info!("shutting down: closing connections");
        token.cancel();
        for accept in accept_loops {
            let _ = accept.await;
        }
        // Workers busy now and still on the same event after destroy_timeout are stuck on it.
        // Taken after the cancel: from here on, connections start no DATA event (but one whose
        // packet was already read when the cancel came), only CLOSE events.
        let busy = self.pool.busy_workers();
        connections.close();
        if tokio::time::timeout(self.destroy_timeout, connections.wait())
            .await
            .is_err()
        {
            // Kill the workers stuck on one event since shutdown began: their events fail as for
            // a crash, so those connections get their CLOSE on another (or a replacement) worker,
            // the stuck one being dead first (events of a connection never overlap).
            let killed = self.pool.kill_stuck(&busy);
            if !killed.is_empty() {
                warn!(
                    pids = ?killed,
                    timeout = ?self.destroy_timeout,
                    "killed workers stuck on one event for destroy_timeout; their connections get CLOSE on other workers"
                );
            }
            if killed.is_empty()
                || tokio::time::timeout(self.destroy_timeout, connections.wait())
                    .await
                    .is_err()
            {
                error!(timeout = ?self.destroy_timeout, "connections did not finish in time");
            }
        }
        info!("stopping workers");
        self.pool.shutdown().await;
        ops_stop.cancel();
        ops_tasks.close();
        ops_tasks.wait().await;
        info!("stopped");
    }
}

/// Re-reads the TLS certificate files of every server; cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsReloader {
    /// The servers, shared with their accept loops.
    listeners: Vec<Arc<Listener>>,
}

impl TlsReloader {
    /// Reloads every server with `tls`. New handshakes use the new certificates; open
    /// connections keep theirs. A server whose files are bad keeps its current certificates; the
    /// error is logged (naming the key and file) and returned with the others.
    pub fn reload(&self) -> Vec<(String, TlsError)> {
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
struct ErrorChain<'a>(&'a dyn std::error::Error);

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
    let server = Server::bind(config).await?;
    let reloader = server.tls_reloader();
    let hangups = tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            warn!("could not listen for SIGHUP: TLS certificates cannot be reloaded by signal");
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP received: reloading TLS certificates");
            reloader.reload();
        }
    });
    server.serve(shutdown).await;
    hangups.abort();
    Ok(())
}

/// Installs the global log subscriber for the `logs` section (stderr). `RUST_LOG`, when set,
/// overrides `logs.level`.
pub fn init_logging(logs: &LogsConfig) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&logs.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match logs.encoding {
        LogEncoding::Console => builder.try_init(),
        LogEncoding::Json => builder.json().try_init(),
    };
}
