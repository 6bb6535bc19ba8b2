//! Prometheus metrics: what Pier counts, and the cheap handles the hot path counts through.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client): one [`Registry`] per server
//! instance, no global state, so several servers in one process (tests) keep their own numbers.
//! The hot path never looks a label set up: every per-server counter is resolved once, when the
//! listener is created, into a [`ServerMetrics`] of plain `Arc<AtomicU64>` handles. With metrics
//! off every handle is `None` and each hook is one branch.
//!
//! Every metric and its labels is listed in `server/README.md` ("Metrics").

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use pier_protocol::tcp::EventKind;

/// Histogram buckets for event and wait times, in seconds: 100 µs to 10 s. An echo event takes
/// tens of µs; a worker doing I/O, milliseconds; a wait near `allocate_timeout` is an outage.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Why a connection ended (label `reason` of `pier_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed its side.
    Client,
    /// The worker answered CLOSE or WRITECLOSE.
    Worker,
    /// No bytes from the client for the idle timeout.
    IdleTimeout,
    /// A packet over `max_packet_size`, or another framing error.
    Protocol,
    /// A read or write on the socket failed.
    SocketError,
    /// An event failed (worker error, crash, no free worker, state too large).
    EventFailed,
    /// The server shut down.
    Shutdown,
    /// The client did not read what was queued for it (`max_write_buffer`, `write_timeout`).
    SlowClient,
    /// A `close` command of a worker or an RPC call (`tcp.Close`, `pier.Close`).
    Requested,
}

impl CloseReason {
    const ALL: [CloseReason; 9] = [
        CloseReason::Client,
        CloseReason::Worker,
        CloseReason::IdleTimeout,
        CloseReason::Protocol,
        CloseReason::SocketError,
        CloseReason::EventFailed,
        CloseReason::Shutdown,
        CloseReason::SlowClient,
        CloseReason::Requested,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Worker => "worker",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Protocol => "protocol",
            CloseReason::SocketError => "socket_error",
            CloseReason::EventFailed => "event_failed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowClient => "slow_client",
            CloseReason::Requested => "requested",
        }
    }
}

/// Why a new connection was turned away before any event (label `reason` of
/// `pier_connections_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_connections` open already.
    MaxConnections,
    /// `max_connections_per_ip` open already from that address.
    PerIpLimit,
    /// Over `accept_rate_per_ip`.
    AcceptRate,
}

impl RejectReason {
    const ALL: [RejectReason; 3] = [
        RejectReason::MaxConnections,
        RejectReason::PerIpLimit,
        RejectReason::AcceptRate,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MaxConnections => "max_connections",
            RejectReason::PerIpLimit => "max_connections_per_ip",
            RejectReason::AcceptRate => "accept_rate_per_ip",
        }
    }
}

/// Why a connection was closed at its PROXY header, before any event (label `reason` of
/// `pier_proxy_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// The peer is not in `proxy_protocol.trusted`.
    Untrusted,
    /// The peer closed (or the read failed) before a complete header.
    Missing,
    /// The bytes are not a PROXY header (e.g. a client talking to the port directly).
    Malformed,
    /// No complete header within `proxy_protocol.timeout`.
    Timeout,
}

impl ProxyRefusal {
    const ALL: [ProxyRefusal; 4] = [
        ProxyRefusal::Untrusted,
        ProxyRefusal::Missing,
        ProxyRefusal::Malformed,
        ProxyRefusal::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted => "untrusted",
            ProxyRefusal::Missing => "missing",
            ProxyRefusal::Malformed => "malformed",
            ProxyRefusal::Timeout => "timeout",
        }
    }
}

/// Why a worker was replaced (label `reason` of `pier_worker_restarts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// `max_jobs` events done.
    MaxJobs,
    /// Over the supervisor's `ttl`.
    Ttl,
    /// Over the supervisor's `idle_ttl`.
    IdleTtl,
    /// Over `max_worker_memory`.
    Memory,
    /// An event ran past `exec_ttl`.
    ExecTtl,
    /// It died (during an event or while idle).
    Crash,
    /// It wrote bytes that are not a frame, or a frame that is not a reply.
    Garbage,
    /// It asked to stop (a stop reply).
    Stop,
    /// A rolling reset (`pier reset`, `resetter.Reset`) replaced it.
    Reset,
}

impl RestartReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::MaxJobs => "max_jobs",
            RestartReason::Ttl => "ttl",
            RestartReason::IdleTtl => "idle_ttl",
            RestartReason::Memory => "memory",
            RestartReason::ExecTtl => "exec_ttl",
            RestartReason::Crash => "crash",
            RestartReason::Garbage => "garbage",
            RestartReason::Stop => "stop",
            RestartReason::Reset => "reset",
        }
    }
}

/// The pool as it is at scrape time: gauges read from it, never pushed on the hot path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Live workers (started, not yet stopped or killed).
    pub workers: usize,
    /// Of those, running an event now.
    pub busy: usize,
    /// Of those, idle in the queue, ready for an event.
    pub idle: usize,
    /// Events waiting for a free worker.
    pub waiting: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabel {
    /// The `tcp.servers` name the sample is about.
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerReasonLabels {
    /// The `tcp.servers` name the sample is about.
    server: String,
    /// Why it happened, from a fixed list (see the metric's help).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerResultLabels {
    /// The `tcp.servers` name the sample is about.
    server: String,
    /// How it ended, from a fixed list (see the metric's help).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerKindLabels {
    /// The `tcp.servers` name the sample is about.
    server: String,
    /// Which kind it is, from a fixed list (see the metric's help).
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    /// Which kind it is, from a fixed list (see the metric's help).
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    /// Why it happened, from a fixed list (see the metric's help).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    /// The state counted, from a fixed list (see the metric's help).
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    /// The RPC method called; `other` for every name the server does not have.
    method: String,
    /// How it ended, from a fixed list (see the metric's help).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterMessageLabels {
    /// `sent` (published on the bus) or `received`.
    direction: &'static str,
    /// The envelope's operation (send, close, join, …, query, reply, hello, bye).
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterFailureLabels {
    /// The cross-instance operation that failed (send, close, join, …, query).
    op: &'static str,
    /// Why it happened, from a fixed list (see the metric's help).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BusLabel {
    /// The bus kind: `redis` or `nats`.
    bus: &'static str,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

/// Every metric of one server instance, registered.
#[derive(Debug)]
struct Inner {
    /// For the exposition; metrics are never added after start.
    registry: Registry,
    /// `pier_connections_accepted_total{server}`.
    accepted: Family<ServerLabel, Counter>,
    /// `pier_connections_open{server}`.
    open: Family<ServerLabel, Gauge>,
    /// `pier_connections_closed_total{server,reason}`.
    closed: Family<ServerReasonLabels, Counter>,
    /// `pier_connections_rejected_total{server,reason}`.
    rejected: Family<ServerReasonLabels, Counter>,
    /// `pier_received_bytes_total{server}`.
    bytes_in: Family<ServerLabel, Counter>,
    /// `pier_sent_bytes_total{server}`.
    bytes_out: Family<ServerLabel, Counter>,
    /// `pier_replies_held_total{server}`.
    held: Family<ServerLabel, Counter>,
    /// `pier_events_total{server,kind}`.
    events: Family<ServerKindLabels, Counter>,
    /// `pier_event_duration_seconds{kind}`: time on the worker; connected, data, close.
    event_seconds: [Histogram; 3],
    /// `pier_worker_wait_duration_seconds`: time an event waited for a free worker.
    wait_seconds: Histogram,
    /// `pier_worker_restarts_total{reason}`.
    restarts: Family<ReasonLabel, Counter>,
    /// `pier_answers_delivered_total`: answers written by the worker's reader itself.
    delivered: Counter,
    /// `pier_workers{state}`, set at scrape time.
    workers: Family<StateLabel, Gauge>,
    /// `pier_events_waiting`, set at scrape time.
    waiting: Gauge,
    /// `pier_write_buffer_bytes`: reply and pushed bytes queued for clients, not yet taken by the kernel.
    write_buffer: Gauge,
    /// `pier_rpc_calls_total{method,result}`.
    rpc_calls: Family<RpcLabels, Counter>,
    /// `pier_tls_handshakes_total{server,result}`.
    tls_handshakes: Family<ServerResultLabels, Counter>,
    /// `pier_proxy_refusals_total{server,reason}`.
    proxy_refusals: Family<ServerReasonLabels, Counter>,
    /// `pier_cluster_messages_total{direction,op}`: bus messages sent and received.
    cluster_messages: Family<ClusterMessageLabels, Counter>,
    /// `pier_cluster_failures_total{op,reason}`: cross-instance operations that failed.
    cluster_failures: Family<ClusterFailureLabels, Counter>,
    /// `pier_cluster_bus_up{bus}`: 1 while the bus is connected (no series without a cluster).
    cluster_bus_up: Family<BusLabel, Gauge>,
    /// `pier_cluster_nodes{bus}`: nodes known alive, this one included.
    cluster_nodes: Family<BusLabel, Gauge>,
}

/// The metrics of one server instance; cheap to clone. [`Metrics::off`] records nothing.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `None` when `metrics.address` is not configured.
    inner: Option<Arc<Inner>>,
}

impl Metrics {
    /// Metrics that record nothing (no `metrics.address`).
    pub fn off() -> Metrics {
        Metrics { inner: None }
    }

    /// A registry with every Pier metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pier");
        let accepted = Family::<ServerLabel, Counter>::default();
        registry.register(
            "connections_accepted",
            "Connections accepted and handed to the workers (CONNECTED sent), per server",
            accepted.clone(),
        );
        let open = Family::<ServerLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Connections open now, per server",
            open.clone(),
        );
        let closed = Family::<ServerReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Accepted connections that ended, per server and reason (client, worker, idle_timeout, protocol, socket_error, event_failed, shutdown, slow_client, requested)",
            closed.clone(),
        );
        let rejected = Family::<ServerReasonLabels, Counter>::default();
        registry.register(
            "connections_rejected",
            "Connections closed at accept, before any event, per server and limit (max_connections, max_connections_per_ip, accept_rate_per_ip)",
            rejected.clone(),
        );
        let bytes_in = Family::<ServerLabel, Counter>::default();
        registry.register_with_unit(
            "received",
            "Bytes read from clients, per server",
            Unit::Bytes,
            bytes_in.clone(),
        );
        let bytes_out = Family::<ServerLabel, Counter>::default();
        registry.register_with_unit(
            "sent",
            "Bytes written to clients, per server",
            Unit::Bytes,
            bytes_out.clone(),
        );
        let held = Family::<ServerLabel, Counter>::default();
        registry.register(
            "replies_held",
            "Replies held back to leave in one write with the connection's next (the client's next packet was read already), per server",
            held.clone(),
        );
        let events = Family::<ServerKindLabels, Counter>::default();
        registry.register(
            "events",
            "Events run on a worker, per server and kind (connected, data, close)",
            events.clone(),
        );
        let event_seconds = Family::<KindLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            seconds_histogram,
        );
        registry.register_with_unit(
            "event_duration",
            "Time from handing an event to a worker to its answer, per kind",
            Unit::Seconds,
            event_seconds.clone(),
        );
        let wait_seconds = seconds_histogram();
        registry.register_with_unit(
            "worker_wait_duration",
            "Time an event waited for a free worker",
            Unit::Seconds,
            wait_seconds.clone(),
        );
        let restarts = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "worker_restarts",
            "Workers replaced, per reason (max_jobs, ttl, idle_ttl, memory, exec_ttl, crash, garbage, stop, reset)",
            restarts.clone(),
        );
        let delivered = Counter::default();
        registry.register(
            "answers_delivered",
            "Plain answers written to their clients by the reader of the worker's answers, without waking the connection's task",
            delivered.clone(),
        );
        let workers = Family::<StateLabel, Gauge>::default();
        registry.register(
            "workers",
            "Live workers, per state (ready: idle, working: running an event)",
            workers.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "events_waiting",
            "Events waiting for a free worker now",
            waiting.clone(),
        );
        let write_buffer = Gauge::default();
        registry.register_with_unit(
            "write_buffer",
            "Bytes of replies and pushes not yet taken by the clients' sockets",
            Unit::Bytes,
            write_buffer.clone(),
        );
        let rpc_calls = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_calls",
            "RPC calls on rpc.listen, per method and result (ok, error)",
            rpc_calls.clone(),
        );
        let tls_handshakes = Family::<ServerResultLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes, per server and result (ok, failed)",
            tls_handshakes.clone(),
        );
        let proxy_refusals = Family::<ServerReasonLabels, Counter>::default();
        registry.register(
            "proxy_refusals",
            "Connections closed at their PROXY header, before any event, per server and reason (untrusted, missing, malformed, timeout)",
            proxy_refusals.clone(),
        );
        let cluster_messages = Family::<ClusterMessageLabels, Counter>::default();
        registry.register(
            "cluster_messages",
            "Cluster bus messages, per direction (sent, received) and op (send, close, join, leave, broadcast, query, reply, hello, bye)",
            cluster_messages.clone(),
        );
        let cluster_failures = Family::<ClusterFailureLabels, Counter>::default();
        registry.register(
            "cluster_failures",
            "Cross-instance operations that failed, per op and reason (bus_down, queue_full, too_large: not sent; no_answer: a node did not answer a query in time; undecodable: a bus message this node cannot read; refused: the owner refused a join; node_table_full: a message from a node id the full node table could not take, ignored)",
            cluster_failures.clone(),
        );
        let cluster_bus_up = Family::<BusLabel, Gauge>::default();
        registry.register(
            "cluster_bus_up",
            "1 while the cluster bus (redis, nats) is connected, else 0",
            cluster_bus_up.clone(),
        );
        let cluster_nodes = Family::<BusLabel, Gauge>::default();
        registry.register(
            "cluster_nodes",
            "Cluster nodes known alive (heard from within the peer timeout), this one included",
            cluster_nodes.clone(),
        );
        // Label sets that exist from the start, so dashboards and rate() see zeros rather than
        // gaps.
        let event_seconds = ["connected", "data", "close"]
            .map(|kind| event_seconds.get_or_create_owned(&KindLabel { kind }));
        for state in ["ready", "working"] {
            workers.get_or_create_owned(&StateLabel { state });
        }
        Metrics {
            inner: Some(Arc::new(Inner {
                registry,
                accepted,
                open,
                closed,
                rejected,
                bytes_in,
                bytes_out,
                held,
                events,
                event_seconds,
                wait_seconds,
                restarts,
                delivered,
                workers,
                waiting,
                write_buffer,
                rpc_calls,
                tls_handshakes,
                proxy_refusals,
                cluster_messages,
                cluster_failures,
                cluster_bus_up,
                cluster_nodes,
            })),
        }
    }

    /// Whether anything is recorded.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// The handles of one `tcp.servers` entry, resolved once.
    pub fn server(&self, name: &str) -> ServerMetrics {
        let Some(m) = &self.inner else {
            return ServerMetrics::default();
        };
        let server = ServerLabel {
            server: name.to_owned(),
        };
        let reason = |family: &Family<ServerReasonLabels, Counter>, reason: &'static str| {
            family.get_or_create_owned(&ServerReasonLabels {
                server: name.to_owned(),
                reason,
            })
        };
        let kind = |kind: &'static str| {
            m.events.get_or_create_owned(&ServerKindLabels {
                server: name.to_owned(),
                kind,
            })
        };
        ServerMetrics {
            inner: Some(Arc::new(ServerHandles {
                accepted: m.accepted.get_or_create_owned(&server),
                open: m.open.get_or_create_owned(&server),
                closed: CloseReason::ALL.map(|r| reason(&m.closed, r.as_str())),
                rejected: RejectReason::ALL.map(|r| reason(&m.rejected, r.as_str())),
                bytes_in: m.bytes_in.get_or_create_owned(&server),
                bytes_out: m.bytes_out.get_or_create_owned(&server),
                held: m.held.get_or_create_owned(&server),
                events: [kind("connected"), kind("data"), kind("close")],
                write_buffer: m.write_buffer.clone(),
            })),
        }
    }

    /// Now, when metrics are on (an event's wait starts); `None` costs no clock read.
    #[inline]
    pub fn clock(&self) -> Option<Instant> {
        self.inner.as_ref().map(|_| Instant::now())
    }

    /// An event waited since `since` ([`Metrics::clock`]) for a free worker and got one now.
    #[inline]
    pub fn waited(&self, since: Option<Instant>) {
        if let (Some(m), Some(since)) = (&self.inner, since) {
            m.wait_seconds.observe(since.elapsed().as_secs_f64());
        }
    }

    /// An event got a worker at once (no clock read: the usual case).
    #[inline]
    pub fn no_wait(&self) {
        if let Some(m) = &self.inner {
            m.wait_seconds.observe(0.0);
        }
    }

    /// An event of `kind` that started on its worker at `started` ([`Metrics::clock`]) was
    /// answered now.
    #[inline]
    pub fn ran(&self, kind: EventKind, started: Option<Instant>) {
        if let (Some(m), Some(started)) = (&self.inner, started) {
            let at = match kind {
                EventKind::Connected => 0,
                EventKind::Data => 1,
                EventKind::Close | EventKind::Unknown => 2,
            };
            m.event_seconds[at].observe(started.elapsed().as_secs_f64());
        }
    }

    /// `n` answers were delivered by the reader of the worker's answers (see
    /// `pool::line::Line::pass_on`).
    pub fn delivered(&self, n: usize) {
        if let Some(m) = &self.inner {
            m.delivered.inc_by(n as u64);
        }
    }

    /// A worker is being replaced.
    pub fn worker_restart(&self, reason: RestartReason) {
        if let Some(m) = &self.inner {
            m.restarts
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .inc();
        }
    }

    /// An RPC call on `rpc.listen` was answered (`ok`) or answered with an error. `method` is
    /// `None` for a method the server does not have: client-chosen names share the label value
    /// `other`, so a client cannot grow the registry without bound.
    pub fn rpc_call(&self, method: Option<&str>, ok: bool) {
        if let Some(m) = &self.inner {
            m.rpc_calls
                .get_or_create(&RpcLabels {
                    method: method.unwrap_or("other").to_owned(),
                    result: if ok { "ok" } else { "error" },
                })
                .inc();
        }
    }

    /// A TLS handshake on `server` finished (`ok`) or failed. Counted per handshake, not on the
    /// event path, so the label lookup is affordable; servers without TLS show no series.
    pub fn tls_handshake(&self, server: &str, ok: bool) {
        if let Some(m) = &self.inner {
            m.tls_handshakes
                .get_or_create(&ServerResultLabels {
                    server: server.to_owned(),
                    result: if ok { "ok" } else { "failed" },
                })
                .inc();
        }
    }

    /// A server with `proxy_protocol`: its `pier_proxy_refusals_total` series exist from now on,
    /// at zero (servers without it show none).
    pub fn proxy_server(&self, server: &str) {
        if let Some(m) = &self.inner {
            for reason in ProxyRefusal::ALL {
                m.proxy_refusals.get_or_create_owned(&ServerReasonLabels {
                    server: server.to_owned(),
                    reason: reason.as_str(),
                });
            }
        }
    }

    /// A connection to `server` was closed at its PROXY header. Per refused connection, not on
    /// the event path, so the label lookup is affordable.
    pub fn proxy_refusal(&self, server: &str, reason: ProxyRefusal) {
        if let Some(m) = &self.inner {
            m.proxy_refusals
                .get_or_create(&ServerReasonLabels {
                    server: server.to_owned(),
                    reason: reason.as_str(),
                })
                .inc();
        }
    }

    /// A cluster bus message was sent (`sent`) or received; `op` as in the envelope.
    pub fn cluster_message(&self, sent: bool, op: &'static str) {
        if let Some(m) = &self.inner {
            m.cluster_messages
                .get_or_create(&ClusterMessageLabels {
                    direction: if sent { "sent" } else { "received" },
                    op,
                })
                .inc();
        }
    }

    /// A cross-instance operation failed (see `pier_cluster_failures_total` for the reasons).
    pub fn cluster_failure(&self, op: &'static str, reason: &'static str) {
        if let Some(m) = &self.inner {
            m.cluster_failures
                .get_or_create(&ClusterFailureLabels { op, reason })
                .inc();
        }
    }

    /// The cluster bus `bus` is up or down now, and `nodes` nodes are known alive.
    pub fn cluster_state(&self, bus: &'static str, up: bool, nodes: usize) {
        if let Some(m) = &self.inner {
            m.cluster_bus_up
                .get_or_create(&BusLabel { bus })
                .set(i64::from(up));
            m.cluster_nodes
                .get_or_create(&BusLabel { bus })
                .set(i64::try_from(nodes).unwrap_or(i64::MAX));
        }
    }

    /// The exposition (OpenMetrics text, which Prometheus scrapes as its text format), with the
    /// pool's gauges as they are now.
    pub fn render(&self, pool: &PoolSnapshot) -> String {
        let mut out = String::new();
        if let Some(m) = &self.inner {
            let set = |state: &'static str, n: usize| {
                m.workers
                    .get_or_create(&StateLabel { state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            };
            set("ready", pool.idle);
            set("working", pool.busy);
            m.waiting
                .set(i64::try_from(pool.waiting).unwrap_or(i64::MAX));
            // Writing into a String cannot fail.
            let _ = encode(&mut out, &m.registry);
        }
        out
    }
}

/// The per-server handles of the connection path.
#[derive(Debug)]
struct ServerHandles {
    /// Connections accepted.
    accepted: Counter,
    /// Connections open.
    open: Gauge,
    /// Closed, indexed like [`CloseReason::ALL`].
    closed: [Counter; 9],
    /// Rejected, indexed like [`RejectReason::ALL`].
    rejected: [Counter; 3],
    /// Bytes read from clients.
    bytes_in: Counter,
    /// Bytes written to clients.
    bytes_out: Counter,
    /// Replies held back to leave with the connection's next.
    held: Counter,
    /// Events, indexed connected, data, close.
    events: [Counter; 3],
    /// The instance-wide write-buffer gauge.
    write_buffer: Gauge,
}

/// The counters of one server, for its connections; cheap to clone. Every method is a branch
/// and, with metrics on, an atomic add.
#[derive(Debug, Clone, Default)]
pub struct ServerMetrics {
    /// `None` with metrics off.
    inner: Option<Arc<ServerHandles>>,
}

impl ServerMetrics {
    /// A connection was accepted (it is open from now on).
    #[inline]
    pub fn accepted(&self) {
        if let Some(m) = &self.inner {
            m.accepted.inc();
            m.open.inc();
        }
    }

    /// An accepted connection ended.
    #[inline]
    pub fn closed(&self, reason: CloseReason) {
        if let Some(m) = &self.inner {
            m.open.dec();
            let at = CloseReason::ALL
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(0);
            m.closed[at].inc();
        }
    }

    /// A new connection was turned away.
    #[inline]
    pub fn rejected(&self, reason: RejectReason) {
        if let Some(m) = &self.inner {
            let at = RejectReason::ALL
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(0);
            m.rejected[at].inc();
        }
    }

    /// An event of `kind` is about to run.
    #[inline]
    pub fn event(&self, kind: EventKind) {
        if let Some(m) = &self.inner {
            let at = match kind {
                EventKind::Connected => 0,
                EventKind::Data => 1,
                EventKind::Close | EventKind::Unknown => 2,
            };
            m.events[at].inc();
        }
    }

    /// `n` bytes were read from a client.
    #[inline]
    pub fn received(&self, n: usize) {
        if let Some(m) = &self.inner {
            m.bytes_in.inc_by(n as u64);
        }
    }

    /// `n` replies held back went out with a later one (or before the connection waited).
    #[inline]
    pub fn held(&self, n: usize) {
        if let Some(m) = &self.inner {
            m.held.inc_by(n as u64);
        }
    }

    /// `n` bytes are queued for the socket (they count in the write buffer until [`Self::sent`]).
    #[inline]
    pub fn queued(&self, n: usize) {
        if let Some(m) = &self.inner {
            m.write_buffer.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// `n` queued bytes left the buffer: written to the client (`written`), or dropped.
    #[inline]
    pub fn sent(&self, n: usize, written: bool) {
        if let Some(m) = &self.inner {
            m.write_buffer.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
            if written {
                m.bytes_out.inc_by(n as u64);
            }
        }
    }
}
