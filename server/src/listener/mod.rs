//! Listeners: what happens between `accept` and a connection's first event — the PROXY header of a
//! trusted balancer, the TLS handshake (implicit TLS) — and the TLS a worker may start later
//! (STARTTLS). A connection that fails here never reaches a worker.
//!
//! - [`tls`]: certificates, SNI, client certificates, reload, handshake.
//! - [`proxy`]: PROXY protocol v1/v2 headers.
//! - `stream`: a connection's read and write halves, plaintext or TLS.

pub mod proxy;
pub(crate) mod stream;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::log_scope::{debug, info, warn};
use bytes::BytesMut;
use pier_protocol::TlsFacts;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::{ServerConfig, TlsMode};
use crate::framing::FrameCodec;
use crate::limits::{self, Admission, Permit};
use crate::ops::{Metrics, ServerMetrics};
use crate::pool::Pool;
use crate::registry::Registry;

pub use proxy::ProxyError;
pub use tls::TlsError;

/// A connection's byte stream after the listener's preamble.
#[derive(Debug)]
pub(crate) enum Transport {
    /// Plain TCP, with the bytes read past a PROXY header (to be read first).
    Plain {
        /// The socket.
        stream: TcpStream,
        /// Bytes the client sent right behind its PROXY header.
        prefix: BytesMut,
    },
    /// TLS (implicit, or after STARTTLS).
    Tls(Box<stream::TlsIo>),
}

/// Everything a connection needs that does not change while it lives.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The `tcp.servers` entry.
    pub(crate) config: ServerConfig,
    /// `tcp.read_buf_size` in bytes: the read buffer starts at the smaller of it and 64 KiB.
    pub(crate) read_buf_size: usize,
    /// The server's framing, cloned for each connection (see [`FrameCodec`]'s `Clone`).
    pub(crate) codec: FrameCodec,
    /// Certificates and handshakes; `None` when the server has no `tls`.
    pub(crate) tls: Option<tls::Tls>,
    /// What went wrong before connections reached a worker.
    pub(crate) stats: ListenerStats,
    /// The server's counters (no-ops with metrics off).
    pub(crate) metrics: ServerMetrics,
    /// The instance's metrics (`pier_tls_handshakes_total{server,result}`,
    /// `pier_proxy_refusals_total{server,reason}`).
    pub(crate) instance_metrics: Metrics,
    /// Connection limits checked at accept (per-address ones behind PROXY: after the header).
    pub(crate) admission: Arc<Admission>,
    /// Where connections register so they can be reached by uuid.
    pub(crate) registry: Registry,
}

/// Connections refused before any event, by cause (for operators and metrics).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// TLS handshakes that failed or timed out (implicit TLS and STARTTLS).
    pub tls_handshake_failures: AtomicU64,
    /// Connections closed for a missing, malformed or untrusted PROXY header.
    pub proxy_refusals: AtomicU64,
}

/// A connection ready for its first event.
pub(crate) struct Accepted {
    /// The stream after the PROXY header and, with implicit TLS, the handshake.
    pub(crate) transport: Transport,
    /// The client's address: the PROXY header's source, else the socket's peer.
    pub(crate) remote_addr: SocketAddr,
    /// The TLS facts as a context fragment (see [`TlsFacts::context_fragment`]); empty = plaintext.
    pub(crate) tls: Vec<u8>,
}

impl Listener {
    /// Builds a listener for a server, reading its certificate files.
    pub(crate) fn new(
        config: ServerConfig,
        read_buf_size: usize,
        metrics: ServerMetrics,
        instance_metrics: Metrics,
        admission: Arc<Admission>,
        registry: Registry,
    ) -> Result<Listener, TlsError> {
        let tls = match &config.tls {
            Some(t) => Some(tls::Tls::load(&config.name, t.clone())?),
            None => None,
        };
        if config.proxy_protocol.is_some() {
            instance_metrics.proxy_server(&config.name);
        }
        Ok(Listener {
            codec: FrameCodec::new(&config.framing, config.max_packet_size),
            config,
            read_buf_size,
            tls,
            stats: ListenerStats::default(),
            metrics,
            instance_metrics,
            admission,
            registry,
        })
    }

    /// Re-reads this server's certificate files (nothing to do without `tls`); on error the
    /// current certificates stay and the error says why.
    pub(crate) fn reload_tls(&self) -> Result<bool, TlsError> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// The PROXY header (when configured; then the per-address limits on the client it names,
    /// counted in `permit`) and the implicit TLS handshake (when configured). `None` when the
    /// connection was refused; the reason is logged and counted.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: &mut Permit,
        shutdown: &CancellationToken,
    ) -> Option<Accepted> {
        let server = &self.config.name;
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "could not set TCP_NODELAY");
        }
        if let Some(ka) = &self.config.limits.keepalive {
            if let Err(e) = limits::set_keepalive(&stream, ka) {
                debug!(error = %e, "could not set TCP keep-alive");
            }
        }
        let mut remote_addr = peer;
        let mut stream = stream;
        let mut prefix = BytesMut::new();
        if let Some(proxy) = &self.config.proxy_protocol {
            let header = if proxy::trusted(proxy, peer.ip()) {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    r = proxy::read_header(&mut stream, peer, proxy.timeout) => r,
                }
            } else {
                Err(ProxyError::Untrusted)
            };
            match header {
                Ok((addr, rest)) => {
                    // Refused here before any handshake work (logged and counted inside).
                    if self
                        .admission
                        .admit_client(permit, addr.ip(), peer)
                        .is_err()
                    {
                        return None;
                    }
                    remote_addr = addr;
                    prefix = rest;
                }
                Err(e) => {
                    self.stats.proxy_refusals.fetch_add(1, Ordering::Relaxed);
                    self.instance_metrics.proxy_refusal(server, e.refusal());
                    match e {
                        ProxyError::Untrusted => info!(%server, %peer, "connection refused: {e}"),
                        _ => warn!(%server, %peer, "connection refused: {e}"),
                    }
                    return None;
                }
            }
        }
        let implicit = self
            .tls
            .as_ref()
            .filter(|t| t.config.mode == TlsMode::Implicit);
        let (transport, tls) = match implicit {
            None => (Transport::Plain { stream, prefix }, Vec::new()),
            Some(tls) => {
                let io = proxy::Rewind::new(prefix, stream);
                let (stream, facts) = self
                    .handshake(tls, io, &remote_addr.to_string(), shutdown)
                    .await?;
                (Transport::Tls(Box::new(stream)), facts.context_fragment())
            }
        };
        Some(Accepted {
            transport,
            remote_addr,
            tls,
        })
    }

    /// A TLS handshake on `io` (implicit or STARTTLS): failures are the client's, logged at
    /// debug with the reason and counted; shutdown abandons it.
    pub(crate) async fn handshake(
        &self,
        tls: &tls::Tls,
        io: proxy::Rewind<TcpStream>,
        remote_addr: &str,
        shutdown: &CancellationToken,
    ) -> Option<(stream::TlsIo, TlsFacts<'static>)> {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = tls.handshake(io) => r,
        };
        self.instance_metrics
            .tls_handshake(&self.config.name, result.is_ok());
        match result {
            Ok(done) => Some(done),
            Err(e) => {
                self.stats
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                let reason =
                    std::error::Error::source(&e).map_or_else(String::new, |s| s.to_string());
                debug!(server = %self.config.name, %remote_addr, %reason, "{e}");
                None
            }
        }
    }
}

/// Serves one accepted socket admitted with `permit` (held until the connection ends): the
/// listener's preamble, then the connection's events. A plain fn: the task is a [`Serve`], whose
/// state tag comes first, not an `async fn` whose tag sits past the connection's whole state.
pub(crate) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Permit,
    listener: Arc<Listener>,
    pool: Pool,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    // Boxed: the PROXY and TLS handshake state is not carried for the connection's life.
    let accept = Box::pin(async move {
        let mut permit = permit;
        let accepted = listener
            .accept(stream, peer, &mut permit, &shutdown)
            .await?;
        Some((accepted, permit, listener, pool, shutdown))
    });
    Serve::Accepting {
        accept,
        start: Some(|(accepted, permit, listener, pool, shutdown)| {
            (
                crate::connection::serve(accepted, listener, pool, shutdown),
                permit,
            )
        }),
    }
}

pin_project_lite::pin_project! {
    /// A connection's task: the listener's preamble ([`Listener::accept`], boxed), then the
    /// connection, with its permit dropped after it. `#[repr(C, u8)]`: the tag is the state's
    /// first byte. An `async fn` keeps its tag after the future it awaits, so every poll of a
    /// connection read one more line, past the connection's 1.4 KiB (a miss per message at
    /// 1000 connections, bench/results/2026-11-30-pipeline.md).
    #[project = ServeProj]
    #[repr(C, u8)]
    enum Serve<A, M, C> {
        /// The PROXY header and the TLS handshake.
        Accepting {
            // What they yield: the connection's parts, `None` when it was refused.
            accept: Pin<Box<A>>,
            // Makes the connection's future of those parts (taken once).
            start: Option<M>,
        },
        /// The connection's events.
        Serving {
            #[pin]
            conn: C,
            // Counts the connection in its server's limits until it ends.
            permit: Permit,
        },
        /// Over.
        Done,
    }
}

impl<A, P, M, C> Future for Serve<A, M, C>
where
    A: Future<Output = Option<P>>,
    M: FnOnce(P) -> (C, Permit),
    C: Future<Output = ()>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                ServeProj::Accepting { accept, start } => {
                    let accepted = std::task::ready!(accept.as_mut().poll(cx));
                    let (Some(parts), Some(start)) = (accepted, start.take()) else {
                        // Refused (logged and counted inside).
                        self.set(Serve::Done);
                        return Poll::Ready(());
                    };
                    let (conn, permit) = start(parts);
                    self.set(Serve::Serving { conn, permit });
                }
                ServeProj::Serving { conn, .. } => {
                    std::task::ready!(conn.poll(cx));
                    // The connection's future, then its permit.
                    self.set(Serve::Done);
                    return Poll::Ready(());
                }
                ServeProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Bytes of the future [`serve`] returns: what every connection's task holds besides its socket,
/// its registry entry and the buffers it allocates. Logged at debug level at start, as the first
/// thing to look at when memory per idle connection grows.
pub(crate) fn task_size() -> usize {
    fn output_size<F, A, B, C, D, E, G, R>(_: &F) -> usize
    where
        F: Fn(A, B, C, D, E, G) -> R,
    {
        std::mem::size_of::<R>()
    }
    output_size(&serve)
}
