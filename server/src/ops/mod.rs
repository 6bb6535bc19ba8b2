//! Operations endpoints: Prometheus metrics (`metrics.address`, `/metrics`) and RoadRunner's
//! status checks (`status.address`, `/health` and `/ready`), over plain HTTP/1.1 (hyper).
//!
//! Both listeners refuse non-loopback addresses unless the config allows it (see
//! [`crate::config::require_loopback`]): they have no authentication, and the metrics name every
//! server and reveal the load. When both sections name the same address, one listener serves
//! both.

pub mod metrics;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::log_scope::{debug, info, warn};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use metrics::{
    CloseReason, Metrics, PoolSnapshot, ProxyRefusal, RejectReason, RestartReason, ServerMetrics,
};

use crate::config::{OpsListenerConfig, StatusConfig};
use crate::pool::Pool;

/// Concurrent HTTP connections per operations listener: scrapers and probes are a handful; more
/// are closed at once rather than queued, so a flood on a local port cannot grow memory.
const MAX_HTTP_CONNECTIONS: usize = 64;
/// A client must send its request head within this time (a stalled probe holds nothing).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an operations listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The address could not be bound (taken, or not an address of this host).
    #[error("could not listen on {addr} for {what}")]
    Bind {
        /// `metrics` or `status`.
        what: &'static str,
        /// The configured address.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// What one listener answers.
#[derive(Debug, Clone, Default)]
struct Routes {
    /// `/metrics`.
    metrics: bool,
    /// `/health` and `/ready`, with the status code of a failing check.
    status: Option<u16>,
}

/// The bound operations listeners, before serving.
#[derive(Debug)]
pub struct Ops {
    /// Each socket and what it serves.
    listeners: Vec<(TcpListener, Routes)>,
}

impl Ops {
    /// Binds `metrics.address` and `status.address` (one socket when they are the same).
    pub async fn bind(
        metrics: Option<&OpsListenerConfig>,
        status: Option<&StatusConfig>,
    ) -> Result<Ops, OpsError> {
        let mut wanted: Vec<(String, &'static str, Routes)> = Vec::new();
        if let Some(m) = metrics {
            wanted.push((
                m.address.clone(),
                "metrics",
                Routes {
                    metrics: true,
                    status: None,
                },
            ));
        }
        if let Some(s) = status {
            match wanted.iter_mut().find(|(a, _, _)| *a == s.listener.address) {
                Some((_, _, routes)) => routes.status = Some(s.unavailable_status_code),
                None => wanted.push((
                    s.listener.address.clone(),
                    "status",
                    Routes {
                        metrics: false,
                        status: Some(s.unavailable_status_code),
                    },
                )),
            }
        }
        let mut listeners = Vec::new();
        for (addr, what, routes) in wanted {
            let socket = TcpListener::bind(&addr)
                .await
                .map_err(|source| OpsError::Bind { what, addr, source })?;
            listeners.push((socket, routes));
        }
        Ok(Ops { listeners })
    }

    /// The bound addresses: `("metrics" | "status", address)`; both names for a shared socket.
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out = Vec::new();
        for (socket, routes) in &self.listeners {
            let Ok(addr) = socket.local_addr() else {
                continue;
            };
            if routes.metrics {
                out.push(("metrics", addr));
            }
            if routes.status.is_some() {
                out.push(("status", addr));
            }
        }
        out
    }

    /// Serves every listener on `tasks` until `stop` is cancelled.
    pub fn serve(self, metrics: Metrics, pool: Pool, stop: CancellationToken, tasks: &TaskTracker) {
        for (socket, routes) in self.listeners {
            if let Ok(addr) = socket.local_addr() {
                info!(%addr, metrics = routes.metrics, status = routes.status.is_some(), "operations endpoint listening");
            }
            let state = Arc::new(Endpoint {
                routes,
                metrics: metrics.clone(),
                pool: pool.clone(),
            });
            let stop = stop.clone();
            let conns = tasks.clone();
            tasks.spawn(async move {
                let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
                loop {
                    let accepted = tokio::select! {
                        _ = stop.cancelled() => return,
                        a = socket.accept() => a,
                    };
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(error = %e, "operations endpoint: could not accept");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        debug!(%peer, "operations endpoint: too many connections; closing");
                        continue;
                    };
                    let state = state.clone();
                    let stop = stop.clone();
                    conns.spawn(async move {
                        serve_http(stream, state, stop).await;
                        drop(slot);
                    });
                }
            });
        }
    }
}

/// What a request needs to be answered.
#[derive(Debug)]
struct Endpoint {
    /// Which paths exist here.
    routes: Routes,
    /// The registry.
    metrics: Metrics,
    /// Read for the gauges and the checks.
    pool: Pool,
}

async fn serve_http(stream: tokio::net::TcpStream, state: Arc<Endpoint>, stop: CancellationToken) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.answer(&req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "operations endpoint: connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

impl Endpoint {
    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("");
        match path {
            "/metrics" if self.routes.metrics => {
                let body = self.metrics.render(&self.pool.snapshot());
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            "/health" | "/ready" => match self.routes.status {
                Some(unavailable) => {
                    let check = if path == "/health" {
                        status::Check::Health
                    } else {
                        status::Check::Ready
                    };
                    let (code, body) =
                        status::answer(check, query, &self.pool.snapshot(), unavailable);
                    text(
                        StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        body,
                    )
                }
                None => text(StatusCode::NOT_FOUND, "not found\n".into()),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
