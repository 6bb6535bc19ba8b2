//! goridge RPC on `rpc.listen`, as RoadRunner's rpc plugin serves it: RoadRunner's `tcp.Close` and
//! `rpc.Version`, and Pier's `pier.*` methods over the connection registry.
//!
//! - [`codec`]: request frames → [`codec::Request`], answers, JSON / msgpack arguments and results.
//! - [`methods`]: the method table ([`methods::Methods`]) and every method.
//! - [`ops`]: RoadRunner's `resetter` and `informer` services (`rr reset`, `rr workers`).
//! - [`client`]: the client `pier reset`, `pier workers` and `pier connections` use.
//! - this file: the listener (`tcp://` or `unix://`) and one task per RPC connection, which reads
//!   requests and answers them in order.
//!
//! Hostile input costs only its own connection: a frame that is not goridge (bad version, header
//! length or CRC) or announces more than [`MAX_FRAME`] bytes closes that RPC connection (nothing
//! after it can be trusted to be in step); a request with a codec Pier does not speak, an unknown
//! method or an argument of the wrong shape gets an error answer and the connection goes on.
//! Buffers are bounded by [`MAX_FRAME`], connections by [`MAX_CONNECTIONS`].

pub mod client;
pub mod codec;
pub mod methods;
pub mod ops;

use std::sync::Arc;

use crate::log_scope::{debug, info, warn};
use bytes::BytesMut;
use pier_protocol::frame::decode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{RpcAddr, RpcConfig};
use codec::Request;
use methods::{Context, Methods};

/// Largest request payload (method name and argument); a frame announcing more closes the
/// connection before anything is buffered for it. Far above any push a queue can hold
/// (`max_write_buffer` defaults to 1 MiB).
pub const MAX_FRAME: u32 = 16 << 20;
/// Most RPC connections open at once; more are closed at accept, with a warning.
pub const MAX_CONNECTIONS: usize = 1024;
/// Read chunk of an RPC connection.
const READ_CHUNK: usize = 16 * 1024;

/// Why RPC could not start.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The address could not be bound.
    #[error("could not listen for RPC on {listen}")]
    Bind {
        /// `rpc.listen`.
        listen: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A bound RPC listener.
#[derive(Debug)]
pub struct RpcServer {
    /// The socket.
    socket: Socket,
    /// `rpc.listen` as configured.
    listen: String,
    /// The methods.
    methods: Arc<Methods>,
    /// What they use.
    context: Arc<Context>,
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl RpcServer {
    /// Binds `rpc.listen`. A unix socket file left by a previous run is replaced when nothing
    /// answers on it.
    pub async fn bind(
        config: &RpcConfig,
        methods: Methods,
        context: Context,
    ) -> Result<RpcServer, RpcError> {
        let bind_error = |source| RpcError::Bind {
            listen: config.listen.clone(),
            source,
        };
        let socket = match &config.addr {
            RpcAddr::Tcp(addr) => Socket::Tcp(TcpListener::bind(addr).await.map_err(bind_error)?),
            RpcAddr::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                let stale = std::fs::symlink_metadata(path)
                    .is_ok_and(|m| m.file_type().is_socket())
                    && std::os::unix::net::UnixStream::connect(path).is_err();
                if stale {
                    let _ = std::fs::remove_file(path);
                }
                Socket::Unix(UnixListener::bind(path).map_err(bind_error)?, path.clone())
            }
        };
        Ok(RpcServer {
            socket,
            listen: config.listen.clone(),
            methods: Arc::new(methods),
            context: Arc::new(context),
        })
    }

    /// The address clients use, as `rpc.listen` writes it, with the real port when the config
    /// said port 0: what workers get in `RR_RPC`.
    pub fn address(&self) -> String {
        match &self.socket {
            Socket::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("tcp://{addr}"),
                Err(_) => self.listen.clone(),
            },
            Socket::Unix(..) => self.listen.clone(),
        }
    }

    /// Accepts and serves RPC connections until `shutdown` is cancelled; then the open ones are
    /// closed after the request they are answering.
    pub async fn serve(self, shutdown: CancellationToken) {
        info!(listen = %self.address(), "RPC listening");
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "could not accept an RPC connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!(%peer, max = MAX_CONNECTIONS, "too many RPC connections; closing this one");
                continue;
            };
            let methods = self.methods.clone();
            let context = self.context.clone();
            let shutdown = shutdown.clone();
            let span = tracing::info_span!("rpc", %peer);
            tracker.spawn(
                async move {
                    match stream {
                        Stream::Tcp(s) => serve_connection(s, &methods, &context, &shutdown).await,
                        Stream::Unix(s) => serve_connection(s, &methods, &context, &shutdown).await,
                    }
                    drop(slot);
                }
                .instrument(span),
            );
        }
        tracker.close();
        tracker.wait().await;
        if let Socket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn accept(&self) -> std::io::Result<(Stream, String)> {
        match &self.socket {
            Socket::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Socket::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), format!("unix:{}", path.display())))
            }
        }
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Reads requests and answers each in turn until the client closes, sends something that is not a
/// frame, or the server shuts down.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    methods: &Methods,
    context: &Arc<Context>,
    shutdown: &CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::new();
    loop {
        let request = match decode(&buf, MAX_FRAME) {
            Ok(Some((frame, used))) => {
                let (flags, options) = (frame.flags, frame.options);
                let header = used - frame.payload.len();
                let payload = buf.split_to(used).freeze().slice(header..);
                match Request::parse(flags, options.as_slice(), payload) {
                    Ok(request) => request,
                    Err(e) => {
                        warn!(error = %e, "client error: closing the RPC connection");
                        return;
                    }
                }
            }
            Ok(None) => {
                buf.reserve(READ_CHUNK);
                let read = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = stream.read_buf(&mut buf) => r,
                };
                match read {
                    Ok(0) => {
                        if !buf.is_empty() {
                            debug!(
                                bytes = buf.len(),
                                "RPC client left in the middle of a frame"
                            );
                        }
                        return;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        debug!(error = %e, "RPC read error; closing");
                        return;
                    }
                }
            }
            Err(e) => {
                let start: Vec<u8> = buf.iter().take(16).copied().collect();
                warn!(error = %e, first_bytes = ?start, "client error: not a goridge frame; closing the RPC connection");
                return;
            }
        };
        out.clear();
        answer(&request, methods, context, &mut out).await;
        if let Err(e) = stream.write_all(&out).await {
            debug!(error = %e, "RPC write error; closing");
            return;
        }
    }
}

/// Runs one request and appends its answer (a result, or an error answer).
async fn answer(request: &Request, methods: &Methods, context: &Arc<Context>, out: &mut Vec<u8>) {
    let method = request.method_name();
    let Some(codec) = request.codec else {
        warn!(%method, flags = request.flags, "client error: RPC codec not supported");
        context.metrics.rpc_call(None, false);
        request.encode_error(
            out,
            &format!(
                "codec (flags {:#04x}) not supported: use JSON (0x08) or msgpack (0x10)",
                request.flags
            ),
        );
        return;
    };
    let Some(call) = methods.call(
        &request.method,
        context.clone(),
        codec,
        request.argument.clone(),
    ) else {
        warn!(%method, "client error: unknown RPC method");
        context.metrics.rpc_call(None, false);
        request.encode_error(out, &format!("rpc: can't find method {method}"));
        return;
    };
    match call.await {
        Ok(result) => {
            debug!(%method, "RPC call");
            context.metrics.rpc_call(Some(&method), true);
            request.encode_result(out, &result);
        }
        Err(e) => {
            // The client gets the whole chain: the error and its causes (a decoder's position,
            // the bus that is down), as the log does.
            let text = crate::ErrorChain(&e).to_string();
            info!(%method, error = %text, "RPC call failed (client error)");
            context.metrics.rpc_call(Some(&method), false);
            request.encode_error(out, &text);
        }
    }
}
