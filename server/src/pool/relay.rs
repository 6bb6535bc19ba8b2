//! Socket relays (`server.relay: tcp://host:port` or `unix:///path`): workers connect back to a
//! listener of the pool instead of talking on their stdin/stdout. Each connection is identified
//! by the pid handshake and handed to the start of the worker with that pid.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::log_scope::warn;
use bytes::BytesMut;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::worker::{handshake, HandshakeFailure, Relay, READ_CHUNK};
use super::PoolError;
use crate::config::RelayConfig;

/// A connected, identified worker relay with the bytes read past the handshake.
type Arrival = (Relay, BytesMut);

/// Connections identified but not claimed yet, and starts waiting for theirs.
#[derive(Debug, Default)]
struct Arrivals {
    /// Connected before their start asked (a fast worker), by pid.
    ready: HashMap<u32, Arrival>,
    /// Starts waiting for their worker to connect, by pid.
    waiting: HashMap<u32, oneshot::Sender<Arrival>>,
}

/// The listener workers connect back to.
#[derive(Debug)]
pub(crate) struct RelayListener {
    /// What workers get in `RR_RELAY` (the bound port, not port 0).
    address: String,
    /// The socket file of a unix relay, removed when the pool stops.
    path: Option<PathBuf>,
    /// Shared with the accept task.
    arrivals: Arc<Mutex<Arrivals>>,
    /// The accept loop, stopped with the pool.
    accept: JoinHandle<()>,
}

impl RelayListener {
    /// Binds the relay address; `relay_timeout` bounds each connection's handshake and how long
    /// an unclaimed connection is kept.
    pub(crate) async fn bind(
        config: &RelayConfig,
        relay_timeout: Duration,
    ) -> Result<Arc<RelayListener>, PoolError> {
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let bind_error = |address: &str, source| PoolError::RelayBind {
            address: address.to_owned(),
            source,
        };
        let (address, path, accept) = match config {
            RelayConfig::Pipes => unreachable!("pipes need no listener"),
            RelayConfig::Tcp(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| bind_error(addr, e))?;
                let local = listener.local_addr().map_err(|e| bind_error(addr, e))?;
                let arrivals = arrivals.clone();
                let accept = tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => {
                                let _ = stream.set_nodelay(true);
                                identify(Relay::Tcp(stream), arrivals.clone(), relay_timeout);
                            }
                            Err(e) => accept_failed(e).await,
                        }
                    }
                });
                (format!("tcp://{local}"), None, accept)
            }
            RelayConfig::Unix(path) => {
                let shown = path.display().to_string();
                // A socket file left by an earlier run that was killed would make bind fail.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                let listener = UnixListener::bind(path).map_err(|e| bind_error(&shown, e))?;
                let arrivals = arrivals.clone();
                let accept = tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => {
                                identify(Relay::Unix(stream), arrivals.clone(), relay_timeout)
                            }
                            Err(e) => accept_failed(e).await,
                        }
                    }
                });
                (format!("unix://{shown}"), Some(path.clone()), accept)
            }
        };
        Ok(Arc::new(RelayListener {
            address,
            path,
            arrivals,
            accept,
        }))
    }

    /// The `RR_RELAY` value for workers.
    pub(crate) fn worker_address(&self) -> &str {
        &self.address
    }

    /// Waits for the worker with `pid` to connect and answer the handshake (the caller bounds the
    /// wait with `relay_timeout`). `None` if the listener is gone.
    pub(crate) async fn claim(&self, pid: u32) -> Option<Arrival> {
        let rx = {
            let mut arrivals = self.arrivals.lock().ok()?;
            if let Some(ready) = arrivals.ready.remove(&pid) {
                return Some(ready);
            }
            let (tx, rx) = oneshot::channel();
            arrivals.waiting.insert(pid, tx);
            rx
        };
        let _unclaim = Unclaim {
            arrivals: &self.arrivals,
            pid,
        };
        rx.await.ok()
    }
}

impl Drop for RelayListener {
    fn drop(&mut self) {
        self.accept.abort();
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a start's wait when it gives up (timeout), so a late connection is not kept for it.
struct Unclaim<'a> {
    /// Where the wait is registered.
    arrivals: &'a Mutex<Arrivals>,
    /// Whose.
    pid: u32,
}

impl Drop for Unclaim<'_> {
    fn drop(&mut self) {
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.waiting.remove(&self.pid);
        }
    }
}

/// Runs the pid handshake on a new connection (bounded by `relay_timeout`), then hands it to the
/// start waiting for that pid, or keeps it for `relay_timeout` until that start asks.
fn identify(mut relay: Relay, arrivals: Arc<Mutex<Arrivals>>, relay_timeout: Duration) {
    tokio::spawn(async move {
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let pid = match tokio::time::timeout(relay_timeout, handshake(&mut relay, &mut rbuf)).await
        {
            Ok(Ok(pid)) => pid,
            Ok(Err(HandshakeFailure::Garbage(detail))) => {
                warn!(%detail, "relay connection answered the pid handshake wrongly; closed");
                return;
            }
            Ok(Err(_)) => return,
            Err(_) => {
                warn!(timeout = ?relay_timeout, "relay connection did not answer the pid handshake; closed");
                return;
            }
        };
        let mut arrival = Some((relay, rbuf));
        if let Ok(mut state) = arrivals.lock() {
            if let Some(tx) = state.waiting.remove(&pid) {
                match tx.send(arrival.take().unwrap_or_else(|| unreachable!())) {
                    Ok(()) => return,
                    Err(back) => arrival = Some(back),
                }
            }
            if let Some(arrival) = arrival.take() {
                state.ready.insert(pid, arrival);
            }
        }
        tokio::time::sleep(relay_timeout).await;
        let unclaimed = arrivals
            .lock()
            .ok()
            .and_then(|mut state| state.ready.remove(&pid));
        if unclaimed.is_some() {
            warn!(
                pid,
                "a process connected to the relay as pid {pid}, which pier did not start; closed"
            );
        }
    });
}

/// Out of file descriptors and the like: wait instead of spinning.
async fn accept_failed(e: std::io::Error) {
    warn!(error = %e, "could not accept a worker relay connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
