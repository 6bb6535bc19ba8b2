//! Several Pier instances acting as one over a message bus (Redis or NATS): `cluster.*` config.
//!
//! - [`node`]: this node's id and uuid tag, the owner of a uuid, the other nodes.
//! - [`envelope`]: the messages nodes exchange (MessagePack).
//! - [`bus`]: the transport ([`Bus`]): publish to one node's channel or to all, the stream of
//!   what this node receives, reconnection; `redis.rs` and `nats.rs` are its two transports.
//! - `query`: cluster-wide list/count/groups/info (scatter, gather with a timeout).
//! - this file: [`Cluster`]: forwarding the registry's operations, applying the other nodes'.
//!
//! **Routing.** A uuid names its owner (its first 32 bits are the owner's tag, see [`node`]), so
//! send, close, join and leave on another node's connection are one bus message to that node's
//! channel, and no node keeps or asks for a directory of connections. A broadcast (to a group, a
//! server, or everyone) is one message on `All` that every node applies to its own members; the
//! sender applies it locally at once and drops its own copy when it comes back.
//!
//! **Order.** One sender's messages leave through the bus handle's one queue and connection, and
//! every node reads its channels through one task that applies each message before the next;
//! a connection's outbound queue keeps the order it is given. So pushes from one sender (a
//! worker's event, an RPC connection) to one connection arrive in the order sent, wherever the
//! sender and the connection are.
//!
//! **Failure.** Nothing here waits on the bus: publishing is queueing (or an immediate error
//! while the bus is down or its queue is full), so a connection's own replies never wait for
//! it. Local operations never touch the bus. A cross-instance operation that could not be sent is
//! logged (rate-limited), counted (`pier_cluster_failures_total`) and, from RPC, answered with an
//! error; a worker's command is not blocked or failed by it. When the bus is back, forwarding
//! resumes by itself (the transport reconnects and resubscribes; the nodes say hello again).

pub mod bus;
pub mod envelope;
mod nats;
pub mod node;
mod query;
mod redis;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::log_scope::{debug, error, info, warn};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::bus::{Bus, BusError, BusStats, Channel};
use self::envelope::{Envelope, Msg, VERSION};
use self::node::{Node, Peers, Seen, HEARTBEAT};
pub use self::query::ListPage;
use crate::config::ClusterConfig;
use crate::ops::Metrics;
use crate::registry::Registry;

/// How often the heartbeat task looks at the bus: a bus that comes back is noticed (and the
/// nodes greet each other) within this.
const WATCH: Duration = Duration::from_millis(250);
/// How long the `Bye` of a stopping node gets to leave before the bus is closed.
const BYE_GRACE: Duration = Duration::from_millis(100);
/// A repeated failure is logged at most this often (the metric counts every one).
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Once the bus has been up this long, every live node has said hello (they answer a node whose
/// bus comes up at once, and say hello every [`HEARTBEAT`] anyway): a tag no known node has is
/// then a node that is gone, and its uuids are connections that are gone.
const WARM: Duration = Duration::from_secs(2);

/// Why a cross-instance operation failed. The text is what an RPC client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The bus is not connected (it reconnects in the background).
    #[error("could not reach the other cluster nodes: the bus ({bus}) is down")]
    Down {
        /// "redis" or "nats".
        bus: &'static str,
    },
    /// The bus is slower than the traffic: its outbound queue is full.
    #[error("could not reach the other cluster nodes: the bus ({bus}) queue is full")]
    Full {
        /// "redis" or "nats".
        bus: &'static str,
    },
    /// The message is larger than the bus takes.
    #[error("could not reach the other cluster nodes: {0}")]
    TooLarge(String),
    /// Nodes known alive did not answer a cluster-wide query in time.
    #[error("could not {what} across the cluster: no answer from node {nodes} within {timeout:?}")]
    NoAnswer {
        /// What was asked (`count the connections`, …).
        what: &'static str,
        /// The ids of the nodes that did not answer, comma-separated.
        nodes: String,
        /// `cluster.request_timeout`.
        timeout: Duration,
    },
}

impl ClusterError {
    /// The `reason` label of `pier_cluster_failures_total`.
    fn reason(&self) -> &'static str {
        match self {
            ClusterError::Down { .. } => "bus_down",
            ClusterError::Full { .. } => "queue_full",
            ClusterError::TooLarge(_) => "too_large",
            ClusterError::NoAnswer { .. } => "no_answer",
        }
    }
}

/// This node's part of a cluster; cheap to clone. Held by the registry (to forward) and by the
/// tasks that read the bus and keep the node list.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Shared state.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Who this node is.
    node: Node,
    /// The transport.
    bus: Bus,
    /// `cluster.request_timeout`.
    request_timeout: Duration,
    /// The other nodes, as heard on the bus.
    peers: Mutex<Peers>,
    /// Cluster-wide queries waiting for answers, by request id.
    pending: Mutex<HashMap<u64, query::Pending>>,
    /// The next request id.
    next_id: AtomicU64,
    /// Where messages and failures are counted.
    metrics: Metrics,
    /// Rate-limits the log of failed cross-instance operations.
    quiet: Quiet,
    /// Rate-limits the log of messages ignored because the node table is full.
    quiet_full: Quiet,
    /// Since when the bus is up without a break, as the heartbeat saw it (`None`: down).
    up_since: Mutex<Option<Instant>>,
}

/// A started cluster and what stops it: [`Handle::stop`] after the server's graceful shutdown,
/// so that CLOSE events run during it can still reach other nodes.
#[derive(Debug)]
pub struct Handle {
    /// The cluster.
    pub cluster: Cluster,
    /// Stops the heartbeat (which says bye and then stops the bus).
    stop: CancellationToken,
    /// The bus, reader and heartbeat tasks.
    tasks: TaskTracker,
}

impl Handle {
    /// Says bye to the other nodes and closes the bus; waits at most `within`.
    pub async fn stop(self, within: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(?within, "cluster bus tasks did not stop in time");
        }
    }
}

impl Cluster {
    /// Joins the cluster `config` names: starts the bus (connecting in the background: a bus
    /// that is down now is not an error), attaches the cluster to `registry` (from now on its
    /// new connections carry this node's tag and its operations are routed), and starts the
    /// tasks that apply the other nodes' messages and keep the node list. Fails only on a bus
    /// URL the transport cannot use.
    pub fn start(
        config: &ClusterConfig,
        registry: &Registry,
        metrics: Metrics,
    ) -> Result<Handle, BusError> {
        let node = Node::new(config.node.as_deref());
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let bus_stop = CancellationToken::new();
        let (bus, inbox) = Bus::start(
            &config.bus,
            config.tls.as_ref(),
            &config.prefix,
            &node.channel(),
            &tasks,
            bus_stop.clone(),
        )?;
        info!(
            node = %node.id,
            tag = %node.channel(),
            bus = bus.kind(),
            prefix = %config.prefix,
            generated = config.node.is_none(),
            "cluster node starting; connection uuids of this node begin with its tag"
        );
        metrics.cluster_state(bus.kind(), false, 1);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                node,
                bus,
                request_timeout: config.request_timeout,
                peers: Mutex::new(Peers::new(config.max_nodes)),
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                metrics,
                quiet: Quiet::default(),
                quiet_full: Quiet::default(),
                up_since: Mutex::new(None),
            }),
        };
        registry.attach(cluster.clone());
        tasks.spawn(read(cluster.clone(), registry.clone(), inbox));
        tasks.spawn(heartbeat(cluster.clone(), stop.clone(), bus_stop));
        Ok(Handle {
            cluster,
            stop,
            tasks,
        })
    }

    /// This node.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The ids of the other nodes known alive now, sorted.
    pub fn peers(&self) -> Vec<String> {
        self.peers_lock().ids()
    }

    /// Whether the bus is connected now.
    pub fn is_up(&self) -> bool {
        self.inner.bus.is_up()
    }

    /// The owner tag of `uuid` when another node owns it; `None` for this node's uuids and for
    /// text that is not a uuid (both are local lookups).
    pub(crate) fn remote_owner(&self, uuid: &str) -> Option<u32> {
        node::owner(uuid).filter(|tag| *tag != self.inner.node.tag)
    }

    /// Sends `msg` to the node with tag `owner`: `Ok(false)` (nothing sent) when that node is
    /// known to be gone, so its connections are too.
    pub(crate) fn forward(&self, owner: u32, msg: Msg<'_>) -> Result<bool, ClusterError> {
        if self.gone(owner) {
            return Ok(false);
        }
        self.publish(Channel::Node(node::channel(owner)), msg)?;
        Ok(true)
    }

    /// Whether no live node has tag `owner`, while the node list can be trusted (the bus has
    /// been up for [`WARM`]).
    pub(crate) fn gone(&self, owner: u32) -> bool {
        let warm = self
            .inner
            .up_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|since| since.elapsed() >= WARM);
        warm && self.peers_lock().by_tag(owner).is_none()
    }

    /// Sends `msg` to every other node.
    pub(crate) fn publish_all(&self, msg: Msg<'_>) -> Result<(), ClusterError> {
        self.publish(Channel::All, msg)
    }

    /// Encodes and queues one message; a failure is counted, logged (rate-limited) and returned.
    fn publish(&self, to: Channel, msg: Msg<'_>) -> Result<(), ClusterError> {
        let op = msg.op();
        let result = self.send_quietly(to, msg);
        match &result {
            Ok(()) => self.inner.metrics.cluster_message(true, op),
            Err(e) => self.failed(op, e.reason(), e),
        }
        result
    }

    /// Encodes and queues one message; only says whether it went.
    fn send_quietly(&self, to: Channel, msg: Msg<'_>) -> Result<(), ClusterError> {
        let node = &self.inner.node;
        let payload = envelope::encode(&Envelope {
            v: VERSION,
            from: Cow::Borrowed(&node.id),
            instance: node.instance,
            msg,
        });
        let bus = &self.inner.bus;
        bus.publish(to, Bytes::from(payload)).map_err(|e| match e {
            BusError::Full => ClusterError::Full { bus: bus.kind() },
            BusError::TooLarge { .. } => ClusterError::TooLarge(e.to_string()),
            _ => ClusterError::Down { bus: bus.kind() },
        })
    }

    /// Counts a failed cross-instance operation and logs it, at most every [`LOG_EVERY`] (a
    /// worker broadcasting in a loop while the bus is down must not flood the log).
    fn failed(&self, op: &'static str, reason: &'static str, e: &dyn std::fmt::Display) {
        self.inner.metrics.cluster_failure(op, reason);
        if let Some(not_logged) = self.inner.quiet.due() {
            warn!(op, reason, error = %e, not_logged, "cluster: a cross-instance operation failed (not_logged: failures since the last such line)");
        }
    }

    /// A message from node `from`, which the full node table could not take: counted, logged at
    /// most every [`LOG_EVERY`] (a process sending under ever new ids must not flood the log),
    /// and otherwise ignored — a node this one does not track is not part of its cluster.
    fn refused(&self, from: &str, op: &'static str) {
        self.inner.metrics.cluster_failure(op, "node_table_full");
        if let Some(not_logged) = self.inner.quiet_full.due() {
            let max_nodes = self.peers_lock().max();
            warn!(
                bus = self.inner.bus.kind(),
                node = %from,
                op,
                max_nodes,
                not_logged,
                "cluster bus: node table full; messages from node ids not in it are ignored (a process on the bus sends under many ids, or cluster.max_nodes is below the cluster's size; not_logged: ignored since the last such line)"
            );
        }
    }

    fn peers_lock(&self) -> MutexGuard<'_, Peers> {
        self.inner.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one message from the bus (see [`read`]).
    fn receive(&self, registry: &Registry, payload: &Bytes) {
        let metrics = &self.inner.metrics;
        let envelope = match envelope::decode(payload) {
            Ok(e) => e,
            Err(e) => {
                // Another program on the same channels, or a node of another version.
                self.failed("receive", "undecodable", &e);
                return;
            }
        };
        let me = &self.inner.node;
        let from = &*envelope.from;
        if from == me.id && envelope.instance == me.instance {
            // Our own message on All.
            return;
        }
        let op = envelope.msg.op();
        metrics.cluster_message(false, op);
        if !matches!(envelope.msg, Msg::Bye) {
            let seen = self
                .peers_lock()
                .seen(from, envelope.instance, Instant::now());
            match seen {
                Seen::New => info!(node = %from, "cluster: node joined"),
                Seen::OtherInstance => info!(node = %from, "cluster: node restarted"),
                Seen::Known => {}
                Seen::Refused => return self.refused(from, op),
            }
            // Said once per (other) process, not per message.
            if seen != Seen::Known && from == me.id {
                error!(node = %from, "cluster: another process uses this node's id (cluster.node must differ per instance); messages for either reach both");
            } else if seen != Seen::Known && node::tag(from) == me.tag {
                error!(node = %me.id, other = %from, tag = %me.channel(), "cluster: two node ids share a uuid tag; rename one (cluster.node)");
            }
        }
        match envelope.msg {
            Msg::Hello { answer } => {
                if answer {
                    let to = Channel::Node(node::channel(node::tag(from)));
                    let _ = self.send_quietly(to, Msg::Hello { answer: false });
                }
            }
            Msg::Bye => {
                if self.peers_lock().remove(from) {
                    info!(node = %from, "cluster: node left");
                }
            }
            Msg::Send { uuid, data } => {
                if !registry.send_local(&uuid, payload.slice_ref(data)) {
                    debug!(node = %from, target = %uuid, "cluster send: no such connection (or it is closing)");
                }
            }
            Msg::Close { uuid } => {
                if !registry.close_local(&uuid) {
                    debug!(node = %from, target = %uuid, "cluster close: no such connection");
                }
            }
            Msg::Join { uuid, group } => match registry.join_local(&uuid, &group) {
                Ok(true) => {}
                Ok(false) => {
                    debug!(node = %from, target = %uuid, %group, "cluster join: no such connection")
                }
                Err(e) => {
                    metrics.cluster_failure(op, "refused");
                    warn!(node = %from, target = %uuid, error = %e, "cluster join refused");
                }
            },
            Msg::Leave { uuid, group } => {
                if let Ok(false) = registry.leave_local(&uuid, &group) {
                    debug!(node = %from, target = %uuid, %group, "cluster leave: no such connection");
                }
            }
            Msg::Broadcast {
                group,
                server,
                except,
                data,
            } => {
                let filter = crate::registry::Filter {
                    server: server.as_deref(),
                    group: group.as_deref(),
                };
                match registry.broadcast_local(&payload.slice_ref(data), filter, &except) {
                    Ok(n) => debug!(node = %from, queued = n, "cluster broadcast"),
                    Err(e) => debug!(node = %from, error = %e, "cluster broadcast refused"),
                }
            }
            Msg::Query { id, query } => self.answer(registry, from, id, query),
            Msg::Reply { id, answer, last } => self.gathered(from, id, answer, last, payload.len()),
        }
    }
}

/// A log line that repeats at most every [`LOG_EVERY`]: when it was last written, and how many
/// were left out since.
#[derive(Debug, Default)]
struct Quiet(Mutex<(Option<Instant>, u64)>);

impl Quiet {
    /// `Some(left out since the last line)` when a line is due now; otherwise counts one more
    /// left out.
    fn due(&self) -> Option<u64> {
        let mut quiet = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if quiet.0.is_some_and(|at| now - at < LOG_EVERY) {
            quiet.1 += 1;
            return None;
        }
        quiet.0 = Some(now);
        Some(std::mem::take(&mut quiet.1))
    }
}

/// Applies every message the bus delivers, one at a time and in order (see "Order" above).
/// Nothing in it waits, so a slow connection cannot hold the others' messages up.
async fn read(cluster: Cluster, registry: Registry, mut inbox: mpsc::Receiver<Bytes>) {
    while let Some(payload) = inbox.recv().await {
        cluster.receive(&registry, &payload);
    }
}

/// Says hello every [`HEARTBEAT`] (and at once, asking for answers, whenever the bus comes up),
/// forgets silent nodes, keeps the gauges; at `stop`, says bye and closes the bus.
async fn heartbeat(cluster: Cluster, stop: CancellationToken, bus_stop: CancellationToken) {
    let inner = &cluster.inner;
    let kind = inner.bus.kind();
    let mut watch = tokio::time::interval(WATCH);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = false;
    let mut last_hello = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = watch.tick() => {}
        }
        let up = inner.bus.is_up();
        let now = Instant::now();
        if up && (!was_up || now - last_hello >= HEARTBEAT) {
            if !was_up {
                info!(bus = kind, node = %inner.node.id, "cluster: bus up; greeting the other nodes");
            }
            if cluster
                .send_quietly(Channel::All, Msg::Hello { answer: !was_up })
                .is_ok()
            {
                inner.metrics.cluster_message(true, "hello");
                last_hello = now;
            }
        }
        if up != was_up {
            *inner.up_since.lock().unwrap_or_else(|e| e.into_inner()) = up.then_some(now);
        }
        if was_up && !up {
            warn!(bus = kind, "cluster: bus down; operations on other nodes' connections fail until it is back (local ones go on)");
        }
        was_up = up;
        let (gone, nodes) = {
            let mut peers = cluster.peers_lock();
            (peers.expire(now), peers.len() + 1)
        };
        for id in gone {
            warn!(node = %id, silent_for = ?node::PEER_TTL, "cluster: node not heard from; treated as gone");
        }
        inner.metrics.cluster_state(kind, up, nodes);
    }
    if inner.bus.is_up() && cluster.send_quietly(Channel::All, Msg::Bye).is_ok() {
        tokio::time::sleep(BYE_GRACE).await;
    }
    bus_stop.cancel();
}
