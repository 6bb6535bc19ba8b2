//! The transport between Pier instances: a [`Bus`] handle over Redis pub/sub or NATS.
//!
//! Each instance listens on two channels (Redis) or subjects (NATS): `<prefix>.node.<node>`, its
//! own, and `<prefix>.all`, everyone's. Payloads are opaque bytes here; what they mean is the
//! cluster's business (`cluster/mod.rs`).
//!
//! What the handle promises, whichever bus is behind it:
//! - [`Bus::publish`] never waits: a payload goes into one bounded queue drained by one task over
//!   one publishing connection, so payloads published through one `Bus` reach every subscriber in
//!   the order published, across both channels (`cluster/nats.rs` restores that order, which NATS
//!   keeps only per subject on the client side).
//! - A bus that is down is no error that stops Pier: [`Bus::start`] only fails on a bad URL or
//!   name, connects in the background, and reconnects with `backoff` and resubscribes whenever
//!   the connection is lost, logging each transition. While it is down, `publish` answers
//!   [`BusError::Down`] at once and the cross-instance operation fails visibly.
//! - Every buffer is bounded: the outbound queue ([`QUEUE`], then [`BusError::Full`]) and the
//!   inbound one ([`INBOX`]; a consumer that falls behind loses payloads, counted in
//!   [`BusStats::dropped_in`] and logged, instead of growing memory inside the client library).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::BusTls;
use crate::log_scope::warn;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Payloads that may wait to be published. A burst beyond it means the bus (or the network to it)
/// is slower than the traffic for long enough that queueing more would only add latency.
pub const QUEUE: usize = 16_384;

/// Payloads received but not yet taken by the cluster. NATS' own default per subscription.
pub const INBOX: usize = 65_536;

/// Where a payload goes: one node's channel, or every node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// The channel of the node with this id (`<prefix>.node.<node>`).
    Node(String),
    /// The channel every node listens on (`<prefix>.all`), the sender included.
    All,
}

/// Why the bus could not start or take a payload.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL is not one a bus client can use (its password, if any, is not repeated here).
    #[error("could not use bus URL {url}")]
    Url {
        /// The URL without its password.
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Neither `redis://`, `rediss://`, `nats://` nor `tls://`.
    #[error("could not use bus URL {url}: the scheme must be redis://, rediss:// (TLS), nats:// or tls:// (NATS over TLS)")]
    Scheme {
        /// The URL without its password.
        url: String,
    },
    /// `cluster.tls` with a clear-text URL, or a `cluster.tls` file the client cannot use.
    #[error("could not set up TLS for bus URL {url}: {problem}")]
    Tls {
        /// The URL without its password.
        url: String,
        /// What is wrong (naming the `cluster.tls` key).
        problem: String,
    },
    /// A prefix or node id that cannot be part of a channel name.
    #[error("could not use {what} {value:?} in bus channel names: use letters, digits, '-' and '_' (and '.' inside a prefix)")]
    Name {
        /// `prefix` or `node id`.
        what: &'static str,
        /// What was given.
        value: String,
    },
    /// Not connected now: nothing was queued.
    #[error("could not publish: the bus is down (reconnecting in the background)")]
    Down,
    /// The outbound queue holds [`QUEUE`] payloads: nothing was queued.
    #[error("could not publish: the bus queue is full ({QUEUE} payloads waiting)")]
    Full,
    /// Larger than the bus accepts in one message (NATS' `max_payload`, 1 MiB by default).
    #[error("could not publish {size} bytes: the bus takes at most {max} bytes per message")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// What the bus server announced.
        max: usize,
    },
}

impl BusError {
    /// [`BusError::Url`] for `url`, shown without its password.
    pub(super) fn url(
        url: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BusError::Url {
            url: redact(url),
            source: source.into(),
        }
    }

    /// [`BusError::Tls`] for `url`, shown without its password.
    pub(super) fn tls(url: &str, problem: impl Into<String>) -> Self {
        BusError::Tls {
            url: redact(url),
            problem: problem.into(),
        }
    }
}

/// Counters since start, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Payloads written to the bus.
    pub published: u64,
    /// Payloads received and handed to the cluster.
    pub received: u64,
    /// Payloads accepted by `publish` but lost because the connection failed before or while
    /// they were written (whether the bus got those in flight cannot be known).
    pub dropped_out: u64,
    /// Payloads received but dropped because the cluster's inbox was full.
    pub dropped_in: u64,
    /// Connections established after the first one.
    pub reconnects: u64,
}

/// A running connection to the bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    /// State shared with the background task(s).
    shared: Arc<Shared>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("kind", &self.shared.kind)
            .field("url", &self.shared.url)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Bus {
    /// Parses `url` (`redis://` or `rediss://` `[user:pass@]host:port[/db]`, `nats://` or
    /// `tls://` `[user:pass@|token@]host:port`; with `tls`, the CA and client certificate of a
    /// TLS scheme), starts the background task(s)
    /// that keep one publishing and one subscribing connection alive (reconnect with backoff,
    /// resubscribe after every reconnect, logged), and returns the handle plus the stream of every
    /// payload received on `<prefix>.node.<node>` and `<prefix>.all` — its own `All` publishes
    /// included. Fails only on a bad URL, prefix or node id: a bus that is down at start is
    /// retried in the background. Must be called within a tokio runtime.
    pub fn start(
        url: &str,
        tls: Option<&BusTls>,
        prefix: &str,
        node: &str,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(Bus, mpsc::Receiver<Bytes>), BusError> {
        check_name("prefix", prefix, true)?;
        check_name("node id", node, false)?;
        let shown = redact(url);
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        let (kind, secure) = match scheme.as_deref() {
            Some("redis") => (Kind::Redis, false),
            Some("rediss") => (Kind::Redis, true),
            Some("nats") => (Kind::Nats, false),
            Some("tls") => (Kind::Nats, true),
            _ => return Err(BusError::Scheme { url: shown }),
        };
        if tls.is_some() && !secure {
            return Err(BusError::Tls {
                url: shown,
                problem: "cluster.tls is set but the URL is clear text (use rediss:// or tls://)"
                    .into(),
            });
        }
        let (queue_tx, queue_rx) = mpsc::channel(QUEUE);
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
        let shared = Arc::new(Shared {
            kind: kind.name(),
            url: shown,
            node_prefix: format!("{prefix}.node."),
            all: format!("{prefix}.all"),
            queue: queue_tx,
            up: AtomicBool::new(false),
            max_payload: AtomicUsize::new(usize::MAX),
            counters: Counters::default(),
            down_log: Mutex::new(DownLog::default()),
        });
        let link = Link {
            shared: shared.clone(),
            own: format!("{prefix}.node.{node}"),
            queue: queue_rx,
            inbox: inbox_tx,
            shutdown,
        };
        match kind {
            Kind::Redis => super::redis::start(url, tls, link, tracker)?,
            Kind::Nats => super::nats::start(url, tls, link, tracker)?,
        }
        Ok((Bus { shared }, inbox_rx))
    }

    /// Queues one payload. Never waits. Payloads published through one `Bus` reach each
    /// subscriber in the order published (one publishing connection, one queue).
    /// `Err(Down)` while not connected; `Err(Full)` when the bounded queue is full; `Err(TooLarge)`
    /// beyond the bus server's message size.
    pub fn publish(&self, to: Channel, payload: Bytes) -> Result<(), BusError> {
        let shared = &self.shared;
        if !shared.up.load(Ordering::Acquire) {
            return Err(BusError::Down);
        }
        let max = shared.max_payload.load(Ordering::Relaxed);
        if payload.len() > max {
            return Err(BusError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let subject = match to {
            Channel::Node(node) => {
                let mut subject = String::with_capacity(shared.node_prefix.len() + node.len());
                subject.push_str(&shared.node_prefix);
                subject.push_str(&node);
                subject
            }
            Channel::All => shared.all.clone(),
        };
        shared
            .queue
            .try_send(Outgoing { subject, payload })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => BusError::Full,
                mpsc::error::TrySendError::Closed(_) => BusError::Down,
            })
    }

    /// Whether the bus is connected now, subscriptions included (for metrics, RPC errors, status).
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// "redis" or "nats", for logs and metrics.
    pub fn kind(&self) -> &'static str {
        self.shared.kind
    }

    /// The bus URL as logged (without a password).
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Counters since start.
    pub fn stats(&self) -> BusStats {
        let c = &self.shared.counters;
        BusStats {
            published: c.published.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            dropped_out: c.dropped_out.load(Ordering::Relaxed),
            dropped_in: c.dropped_in.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
        }
    }
}

/// Which client library speaks to the bus.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Redis,
    Nats,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Nats => "nats",
        }
    }
}

/// State shared by the handles and the background task(s).
#[derive(Debug)]
pub(super) struct Shared {
    /// "redis" or "nats".
    pub(super) kind: &'static str,
    /// The URL without its password, for logs.
    pub(super) url: String,
    /// `<prefix>.node.`: a node's channel is this plus its id.
    node_prefix: String,
    /// `<prefix>.all`.
    all: String,
    /// The one outbound queue, drained by the publishing task.
    queue: mpsc::Sender<Outgoing>,
    /// Connected and subscribed: `publish` takes payloads only then.
    up: AtomicBool,
    /// The largest payload the bus server takes (NATS announces it; Redis: unbounded here).
    pub(super) max_payload: AtomicUsize,
    /// What [`Bus::stats`] reports.
    pub(super) counters: Counters,
    /// When the bus went down and when that was last logged, so a long outage is logged now and
    /// then, not once per reconnect attempt.
    down_log: Mutex<DownLog>,
}

/// [`BusStats`] as atomics.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// [`BusStats::published`].
    pub(super) published: AtomicU64,
    /// [`BusStats::received`].
    pub(super) received: AtomicU64,
    /// [`BusStats::dropped_out`].
    pub(super) dropped_out: AtomicU64,
    /// [`BusStats::dropped_in`].
    pub(super) dropped_in: AtomicU64,
    /// [`BusStats::reconnects`].
    pub(super) reconnects: AtomicU64,
}

/// See [`Shared::down_log`].
#[derive(Debug, Default)]
struct DownLog {
    /// Since when the bus is down (None: up, or never connected yet and not yet failed).
    since: Option<Instant>,
    /// When a failure was last logged at warn level.
    logged: Option<Instant>,
    /// Failed attempts since `since`.
    attempts: u64,
    /// Whether it was ever up (the first connection is not a reconnect).
    ever_up: bool,
}

/// How often a continuing outage is logged again at warn level.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(30);

impl Shared {
    /// The bus is connected and subscribed: logs it (with how long it was down) and opens
    /// `publish`.
    pub(super) fn set_up(&self, detail: &str) {
        let mut log = self.down_log.lock().unwrap_or_else(|e| e.into_inner());
        if log.ever_up {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        match log.since.take() {
            Some(since) => crate::log_scope::info!(
                bus = self.kind,
                url = %self.url,
                down_for = ?since.elapsed(),
                attempts = log.attempts,
                "bus back up, {detail}"
            ),
            None => crate::log_scope::info!(bus = self.kind, url = %self.url, "bus up, {detail}"),
        }
        log.ever_up = true;
        log.attempts = 0;
        log.logged = None;
        self.up.store(true, Ordering::Release);
    }

    /// The connection was lost or could not be made: closes `publish` and logs why, at warn level
    /// when it just went down and every [`DOWN_LOG_EVERY`] after, at debug level otherwise.
    pub(super) fn set_down(&self, why: &dyn fmt::Display, retry_in: Option<Duration>) {
        self.up.store(false, Ordering::Release);
        let mut log = self.down_log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let since = *log.since.get_or_insert(now);
        log.attempts += 1;
        let due = log.logged.is_none_or(|at| now - at >= DOWN_LOG_EVERY);
        if due {
            log.logged = Some(now);
            warn!(
                bus = self.kind,
                url = %self.url,
                down_for = ?(now - since),
                attempts = log.attempts,
                retry_in = ?retry_in,
                "bus down: {why}; cross-instance operations fail until it is back"
            );
        } else {
            crate::log_scope::debug!(bus = self.kind, url = %self.url, retry_in = ?retry_in, "bus still down: {why}");
        }
    }

    /// Hands a received payload to the cluster, or counts it lost when the inbox is full.
    pub(super) fn deliver(&self, inbox: &mpsc::Sender<Bytes>, payload: Bytes) {
        match inbox.try_send(payload) {
            Ok(()) => {
                self.counters.received.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let lost = self.counters.dropped_in.fetch_add(1, Ordering::Relaxed) + 1;
                // Powers of two: a lagging consumer is logged, not once per payload.
                if lost.is_power_of_two() {
                    warn!(
                        bus = self.kind,
                        lost, "bus payload dropped: the cluster's inbox is full ({INBOX} waiting)"
                    );
                }
            }
            // The cluster is gone (shutdown): nothing to hand it to.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Counts payloads accepted but lost with a connection, and says so.
    pub(super) fn lost(&self, n: usize, why: &dyn fmt::Display) {
        if n == 0 {
            return;
        }
        self.counters
            .dropped_out
            .fetch_add(n as u64, Ordering::Relaxed);
        warn!(
            bus = self.kind,
            lost = n,
            "bus payloads not published: {why}"
        );
    }
}

/// One payload waiting in the outbound queue.
#[derive(Debug)]
pub(super) struct Outgoing {
    /// The channel (Redis) or subject (NATS).
    pub(super) subject: String,
    /// What the cluster published.
    pub(super) payload: Bytes,
}

/// What a transport's background task gets from [`Bus::start`].
#[derive(Debug)]
pub(super) struct Link {
    /// State shared with the handles.
    pub(super) shared: Arc<Shared>,
    /// `<prefix>.node.<node>`: this node's channel.
    pub(super) own: String,
    /// The outbound queue's receiving end.
    pub(super) queue: mpsc::Receiver<Outgoing>,
    /// Where received payloads go.
    pub(super) inbox: mpsc::Sender<Bytes>,
    /// Ends the task (after publishing what is queued, within [`FLUSH_GRACE`]).
    pub(super) shutdown: CancellationToken,
}

impl Link {
    /// `<prefix>.all`.
    pub(super) fn all(&self) -> &str {
        &self.shared.all
    }

    /// Empties the outbound queue, counting what it held as lost (the connection that would have
    /// carried it is gone).
    pub(super) fn discard_queued(&mut self, why: &dyn fmt::Display) {
        let mut n = 0;
        while self.queue.try_recv().is_ok() {
            n += 1;
        }
        self.shared.lost(n, why);
    }
}

/// At shutdown, how long what is still queued may take to be published.
pub(super) const FLUSH_GRACE: Duration = Duration::from_secs(1);

/// Most payloads written in one batch (one Redis pipeline).
pub(super) const BATCH: usize = 512;

/// The delay before reconnect attempt `attempt` (1 = the first after a failure): 100 ms doubling
/// to at most 2 s, so a bus restart is noticed within about two seconds without hammering a bus
/// that stays down.
pub(super) fn backoff(attempt: u64) -> Duration {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);
    let shift = attempt.saturating_sub(1).min(8) as u32;
    (FIRST * 2u32.pow(shift)).min(MAX)
}

/// Channel names are `<prefix>.node.<node>` and `<prefix>.all`: NATS forbids wildcards and
/// whitespace in subjects and gives '.' a meaning, so both parts are kept to a safe alphabet.
fn check_name(what: &'static str, value: &str, dots: bool) -> Result<(), BusError> {
    let ok = !value.is_empty()
        && !value.starts_with('.')
        && !value.ends_with('.')
        && !value.contains("..")
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.'));
    if ok {
        Ok(())
    } else {
        Err(BusError::Name {
            what,
            value: value.to_owned(),
        })
    }
}

/// `url` without the password of its user info (`redis://:secret@host` → `redis://:***@host`),
/// for logs and errors.
pub(super) fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        // A lone token (`nats://token@host`) is a secret too.
        None => "***".to_owned(),
    };
    format!("{}{}{}", &url[..start], shown, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_two_seconds() {
        let delays: Vec<u64> = (1..=7).map(|a| backoff(a).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(u64::MAX), Duration::from_secs(2));
        assert_eq!(backoff(0), Duration::from_millis(100));
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("redis://:s3cret@10.0.0.1:6379/2"),
            "redis://:***@10.0.0.1:6379/2"
        );
        assert_eq!(redact("redis://app:s3cret@host"), "redis://app:***@host");
        assert_eq!(redact("nats://tok@host:4222"), "nats://***@host:4222");
        assert_eq!(redact("nats://host:4222"), "nats://host:4222");
        assert_eq!(redact("redis://host/0?x=a@b"), "redis://host/0?x=a@b");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("prefix", "pier", true).is_ok());
        assert!(check_name("prefix", "acme.pier-1", true).is_ok());
        assert!(check_name("node id", "node_7-a", false).is_ok());
        for bad in ["", "a b", "a.*", ">", "a..b", ".a", "a."] {
            assert!(check_name("prefix", bad, true).is_err(), "{bad:?}");
        }
        assert!(check_name("node id", "a.b", false).is_err());
    }

    #[tokio::test]
    async fn bad_urls_are_refused_at_start() {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let err = Bus::start("http://x", None, "pier", "a", &tracker, stop.clone()).unwrap_err();
        assert!(matches!(err, BusError::Scheme { .. }), "{err}");
        let err =
            Bus::start("redis://:pw@", None, "pier", "a", &tracker, stop.clone()).unwrap_err();
        assert!(matches!(err, BusError::Url { .. }), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
        let err = Bus::start(
            "nats://host:notaport",
            None,
            "pier",
            "a",
            &tracker,
            stop.clone(),
        )
        .unwrap_err();
        assert!(matches!(err, BusError::Url { .. }), "{err}");
        let err =
            Bus::start("redis://127.0.0.1:1", None, "pi er", "a", &tracker, stop).unwrap_err();
        assert!(matches!(err, BusError::Name { .. }), "{err}");
    }

    #[tokio::test]
    async fn publish_while_never_connected_is_down() {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        // Port 1 on loopback: nothing listens, the connection is refused and retried.
        let (bus, _inbox) = Bus::start(
            "redis://127.0.0.1:1",
            None,
            "pier",
            "a",
            &tracker,
            stop.clone(),
        )
        .unwrap();
        assert!(!bus.is_up());
        assert!(matches!(
            bus.publish(Channel::All, Bytes::from_static(b"x")),
            Err(BusError::Down)
        ));
        assert_eq!(bus.kind(), "redis");
        stop.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the bus task ends at shutdown");
    }
}
