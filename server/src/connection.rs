//! One client connection: CONNECTED, one DATA per packet, CLOSE exactly once; strictly in order.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use pier_protocol::tcp::EventKind;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::config::ServerConfig;
use crate::framing::{FrameCodec, FramingError};
use crate::limits::{self, Admission, Reader};
use crate::ops::{CloseReason, ServerMetrics};
use crate::pool::{Action, Event, Pool, PoolError, Reply};

/// Largest initial read buffer of a connection, whatever `tcp.read_buf_size` says.
const INITIAL_READ_BUFFER: usize = 64 * 1024;

/// What the connection does after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Keep reading packets.
    Read,
    /// Close the socket and send CLOSE.
    Close,
}

/// Everything a connection needs that does not change while it lives.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The `tcp.servers` entry.
    pub(crate) config: ServerConfig,
    /// `tcp.read_buf_size` in bytes: the read buffer starts at the smaller of it and 64 KiB.
    pub(crate) read_buf_size: usize,
    /// The server's counters (no-ops with metrics off).
    pub(crate) metrics: ServerMetrics,
    /// Connection limits checked at accept.
    pub(crate) admission: Arc<Admission>,
}

/// The per-connection part: ids, socket writer, state.
struct Conn<'a> {
    /// The listener this connection came from.
    listener: &'a Listener,
    /// The worker pool.
    pool: &'a Pool,
    /// Client address as sent in events.
    remote_addr: String,
    /// UUID v4 text.
    uuid: String,
    /// Where replies are written; `None` once closed.
    writer: Option<OwnedWriteHalf>,
    /// Connection state (Pier extension): owned by this task, so no lock; empty = none.
    state: Bytes,
    /// Cancelled at server shutdown: a write blocked on a client that does not read is given up.
    shutdown: &'a CancellationToken,
    /// No bytes from the client for this long closes the connection; `None` = never. Starts as
    /// the server's `idle_timeout`.
    idle_timeout: Option<std::time::Duration>,
    /// Why the connection ends when a reply closes it (for the metrics).
    reason: CloseReason,
}

/// Serves one accepted connection to the end.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    pool: Pool,
    shutdown: CancellationToken,
) {
    let uuid = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("conn", server = %listener.config.name, uuid = %uuid);
    async move {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "could not set TCP_NODELAY");
        }
        if let Some(ka) = &listener.config.limits.keepalive {
            if let Err(e) = limits::set_keepalive(&stream, ka) {
                debug!(error = %e, "could not set TCP keep-alive");
            }
        }
        let metrics = &listener.metrics;
        let (reader, writer) = stream.into_split();
        let mut conn = Conn {
            listener: &listener,
            pool: &pool,
            remote_addr: peer.to_string(),
            uuid,
            writer: Some(writer),
            state: Bytes::new(),
            shutdown: &shutdown,
            idle_timeout: listener.config.limits.idle_timeout,
            reason: CloseReason::Worker,
        };
        debug!(remote_addr = %conn.remote_addr, "connected");
        metrics.accepted();
        let flow = match conn.event(EventKind::Connected, &[]).await {
            Ok(reply) => conn.apply(reply).await,
            Err(e) => {
                // CONNECTED did not succeed: no CLOSE is owed.
                log_exec_error(&e, "CONNECTED");
                metrics.closed(CloseReason::EventFailed);
                return;
            }
        };
        if flow == Flow::Read {
            let codec =
                FrameCodec::new(&listener.config.framing, listener.config.max_packet_size);
            // Start small so that thousands of idle connections stay cheap; the buffer grows
            // (up to max_packet_size) only for connections that send big packets.
            let capacity = listener.read_buf_size.min(INITIAL_READ_BUFFER);
            let reader = Reader::new(reader, conn.idle_timeout.is_some(), metrics.clone());
            let mut packets = FramedRead::with_capacity(reader, codec, capacity);
            loop {
                let idle_deadline = conn.idle_timeout.map(|t| packets.get_ref().last() + t);
                let next = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        debug!("server shutting down");
                        conn.reason = CloseReason::Shutdown;
                        break;
                    }
                    next = packets.next() => next,
                    _ = limits::sleep_until(idle_deadline) => {
                        // Bytes may have come in since the deadline was computed (a partial
                        // packet): then the clock starts again from them.
                        let last = packets.get_ref().last();
                        match conn.idle_timeout {
                            Some(t) if last.elapsed() >= t => {
                                debug!(idle_timeout = ?t, "client idle; closing");
                                conn.reason = CloseReason::IdleTimeout;
                                break;
                            }
                            _ => continue,
                        }
                    }
                };
                match next {
                    Some(Ok(packet)) => {
                        let result = conn.event(EventKind::Data, &packet).await;
                        // Time spent on our side is not the client being idle.
                        packets.get_mut().touch();
                        match result {
                            Ok(reply) => {
                                if conn.apply(reply).await == Flow::Close {
                                    break;
                                }
                            }
                            Err(e) => {
                                log_exec_error(&e, "DATA");
                                conn.reason = CloseReason::EventFailed;
                                break;
                            }
                        }
                    }
                    Some(Err(FramingError::Io(e))) => {
                        debug!(error = %e, "read error; closing");
                        conn.reason = CloseReason::SocketError;
                        break;
                    }
                    Some(Err(e @ FramingError::Truncated { .. })) => {
                        info!(error = %e, "client closed mid-packet; the partial packet is dropped");
                        conn.reason = CloseReason::Client;
                        break;
                    }
                    Some(Err(e)) => {
                        warn!(
                            error = %e,
                            framing = listener.config.framing.mode(),
                            "client error: invalid packet; closing"
                        );
                        conn.reason = CloseReason::Protocol;
                        break;
                    }
                    None => {
                        debug!("client disconnected");
                        conn.reason = CloseReason::Client;
                        break;
                    }
                }
            }
        } else {
            drop(reader);
        }
        metrics.closed(conn.reason);
        conn.close_socket().await;
        if let Err(e) = conn.event(EventKind::Close, &[]).await {
            log_exec_error(&e, "CLOSE");
        }
    }
    .instrument(span)
    .await;
}

impl Conn<'_> {
    async fn event(&self, kind: EventKind, body: &[u8]) -> Result<Reply, PoolError> {
        self.listener.metrics.event(kind);
        self.pool
            .exec(&Event {
                remote_addr: &self.remote_addr,
                server: &self.listener.config.name,
                uuid: &self.uuid,
                kind,
                state: &self.state,
                body,
            })
            .await
    }

    /// Stores the state, writes the body, decides what comes next.
    async fn apply(&mut self, reply: Reply) -> Flow {
        if let Some(state) = reply.state {
            let max = self.listener.config.max_state_size;
            if state.len() > max {
                error!(
                    pid = reply.pid,
                    size = state.len(),
                    max_state_size = max,
                    "worker error: state exceeds max_state_size; closing without writing the reply"
                );
                self.reason = CloseReason::EventFailed;
                return Flow::Close;
            }
            self.state = state;
        }
        let (write, flow) = match reply.action {
            Action::Write => (true, Flow::Read),
            Action::Continue => (false, Flow::Read),
            Action::WriteClose => (true, Flow::Close),
            Action::Close => (false, Flow::Close),
            Action::Unknown(context) => {
                warn!(
                    pid = reply.pid,
                    context, "unknown reply; closing as for CLOSE"
                );
                (false, Flow::Close)
            }
        };
        if write && !reply.body.is_empty() {
            if let Some(writer) = self.writer.as_mut() {
                self.listener.metrics.queued(reply.body.len());
                let written = tokio::select! {
                    // A write that can finish wins even during shutdown.
                    biased;
                    r = writer.write_all(&reply.body) => r,
                    _ = self.shutdown.cancelled() => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "server shutting down while the client is not reading",
                    )),
                };
                self.listener
                    .metrics
                    .sent(reply.body.len(), written.is_ok());
                if let Err(e) = written {
                    debug!(error = %e, "write error; closing");
                    self.reason = CloseReason::SocketError;
                    return Flow::Close;
                }
            }
        }
        flow
    }

    async fn close_socket(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            let _ = writer.shutdown().await;
        }
    }
}

fn log_exec_error(e: &PoolError, event: &str) {
    match e {
        PoolError::WorkerError { pid, message } => {
            error!(
                pid,
                event, "worker error: {message}; closing the connection"
            )
        }
        PoolError::NoFreeWorkers(waited) => {
            error!(event, waited = ?waited, "no free workers; closing the connection")
        }
        PoolError::Closed => info!(event, "pool stopped; closing the connection"),
        other => error!(event, error = %other, "closing the connection"),
    }
}
