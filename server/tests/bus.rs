//! The cluster's transport against real servers: each test runs with redis-server and with
//! nats-server, started on loopback by the test (pier_devkit::bus).

mod support;

use std::time::Duration;

use bytes::Bytes;
use pier_devkit::bus::{free_port, url, BusKind, BusServer};
use pier_server::cluster::bus::{INBOX, QUEUE};
use pier_server::cluster::{Bus, BusError, Channel};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bounds every wait on the bus: reconnecting takes at most about 2 s of backoff plus the connect.
const WAIT: Duration = Duration::from_secs(20);

/// A bus handle with its inbox and the means to stop it.
struct Node {
    bus: Bus,
    inbox: mpsc::Receiver<Bytes>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Node {
    fn start(url: &str, prefix: &str, node: &str) -> Node {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let (bus, inbox) =
            Bus::start(url, None, prefix, node, &tracker, stop.clone()).expect("a valid bus URL");
        Node {
            bus,
            inbox,
            tracker,
            stop,
        }
    }

    /// Waits (bounded) until the bus is up, or down when `up` is false.
    async fn until_up(&self, up: bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.bus.is_up() != up {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {} bus is not {} after {WAIT:?}",
                self.bus.kind(),
                if up { "up" } else { "down" }
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next payload received.
    async fn next(&mut self) -> String {
        let payload = tokio::time::timeout(WAIT, self.inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("no payload on the {} bus within {WAIT:?}", self.bus.kind()))
            .expect("the inbox stays open while the bus runs");
        String::from_utf8(payload.to_vec()).unwrap()
    }

    fn publish(&self, to: Channel, text: &str) {
        self.bus
            .publish(to, Bytes::copy_from_slice(text.as_bytes()))
            .unwrap_or_else(|e| panic!("publish {text:?} on the {} bus: {e}", self.bus.kind()));
    }

    /// Stops the task(s) and waits for them (bounded).
    async fn stop(self) {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(WAIT, self.tracker.wait())
            .await
            .expect("the bus tasks end at shutdown");
    }
}

fn node(name: &str) -> Channel {
    Channel::Node(name.to_owned())
}

/// Runs `$test(kind)` once per bus, as `$test::redis` and `$test::nats`.
macro_rules! on_both_buses {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$test(super::BusKind::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                super::$test(super::BusKind::Nats).await
            }
        }
    )*};
}

on_both_buses!(
    node_and_all_channels,
    ten_thousand_payloads_keep_their_order,
    down_at_start_then_up,
    restart_resubscribes,
);

/// A node's channel reaches that node only; `All` reaches every node, the sender included; another
/// prefix is another cluster.
async fn node_and_all_channels(kind: BusKind) {
    let server = BusServer::start(kind);
    let mut a = Node::start(&server.url(), "pier", "a");
    let mut b = Node::start(&server.url(), "pier", "b");
    let mut other = Node::start(&server.url(), "other", "b");
    for n in [&a, &b, &other] {
        n.until_up(true).await;
    }
    assert_eq!(a.bus.kind(), kind.name());

    a.publish(node("b"), "a to b");
    a.publish(Channel::All, "a to all");
    b.publish(node("a"), "b to a");
    assert_eq!(b.next().await, "a to b");
    assert_eq!(b.next().await, "a to all");
    // Two publishers: no order between them.
    let mut got = [a.next().await, a.next().await];
    got.sort();
    assert_eq!(got, ["a to all", "b to a"]);

    // Nothing else arrived in between: the marker is each one's next payload. The other
    // cluster's node "b" saw none of the above.
    other.publish(Channel::All, "other marker");
    a.publish(Channel::All, "marker");
    assert_eq!(a.next().await, "marker");
    assert_eq!(b.next().await, "marker");
    assert_eq!(other.next().await, "other marker");
    assert!(a.inbox.try_recv().is_err() && b.inbox.try_recv().is_err());

    // The publisher task counts a payload once the bus acknowledged it, which can be after a
    // subscriber (here: `a` itself) already received it: wait for the count, bounded.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = a.bus.stats();
        let seen = (stats.published, stats.dropped_out, stats.reconnects);
        if seen == (3, 0, 0) {
            break;
        }
        assert!(
            seen.0 < 3 && tokio::time::Instant::now() < deadline,
            "{stats:?}: expected 3 published, none dropped, no reconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in [a, b, other] {
        n.stop().await;
    }
}

/// 10,000 payloads alternating between the receiver's channel and `All` arrive in the order
/// published, none lost.
async fn ten_thousand_payloads_keep_their_order(kind: BusKind) {
    const N: usize = 10_000;
    let server = BusServer::start(kind);
    let a = Node::start(&server.url(), "pier", "a");
    let mut b = Node::start(&server.url(), "pier", "b");
    a.until_up(true).await;
    b.until_up(true).await;
    for i in 0..N {
        let to = if i % 3 == 0 { Channel::All } else { node("b") };
        a.publish(to, &format!("{i:05}"));
    }
    for i in 0..N {
        assert_eq!(b.next().await, format!("{i:05}"), "payload {i} of {N}");
    }
    assert_eq!(b.bus.stats().dropped_in, 0);
    a.stop().await;
    b.stop().await;
}

/// A bus that is down when Pier starts is retried until it is up; meanwhile publishing fails at
/// once with `Down`.
async fn down_at_start_then_up(kind: BusKind) {
    let port = free_port();
    let mut a = Node::start(&url(kind, port), "pier", "a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.bus.is_up());
    let refused = a.bus.publish(Channel::All, Bytes::from_static(b"lost"));
    assert!(matches!(refused, Err(BusError::Down)), "{refused:?}");

    let _server = BusServer::start_on(kind, port);
    a.until_up(true).await;
    a.publish(Channel::All, "after start");
    a.publish(node("a"), "to myself");
    assert_eq!(a.next().await, "after start");
    assert_eq!(a.next().await, "to myself");
    a.stop().await;
}

/// A bus server restart: the bus goes down (publish answers `Down` without waiting), reconnects
/// and resubscribes by itself, and payloads flow both ways again.
async fn restart_resubscribes(kind: BusKind) {
    let mut server = BusServer::start(kind);
    let mut a = Node::start(&server.url(), "pier", "a");
    let mut b = Node::start(&server.url(), "pier", "b");
    a.until_up(true).await;
    b.until_up(true).await;
    a.publish(node("b"), "before");
    assert_eq!(b.next().await, "before");

    server.stop();
    a.until_up(false).await;
    let started = std::time::Instant::now();
    let refused = a.bus.publish(node("b"), Bytes::from_static(b"while down"));
    assert!(matches!(refused, Err(BusError::Down)), "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "publish waited"
    );

    server.restart();
    a.until_up(true).await;
    b.until_up(true).await;
    a.publish(node("b"), "after, to b");
    b.publish(Channel::All, "after, to all");
    // Two publishers: no order between them.
    let mut got = [b.next().await, b.next().await];
    got.sort();
    assert_eq!(got, ["after, to all", "after, to b"]);
    assert_eq!(a.next().await, "after, to all");
    assert!(a.bus.stats().reconnects >= 1, "{:?}", a.bus.stats());
    a.stop().await;
    b.stop().await;
}

/// A full queue refuses at once with `Full`; everything queued before is still delivered. The
/// test's single thread publishes without yielding, so the bus task cannot drain meanwhile.
async fn full_queue_refuses(kind: BusKind) {
    let server = BusServer::start(kind);
    let mut a = Node::start(&server.url(), "pier", "a");
    a.until_up(true).await;
    const { assert!(QUEUE < INBOX, "every queued payload fits in the inbox") };
    for i in 0..QUEUE {
        a.publish(Channel::All, &i.to_string());
    }
    let refused = a
        .bus
        .publish(Channel::All, Bytes::from_static(b"one too many"));
    assert!(matches!(refused, Err(BusError::Full)), "{refused:?}");
    for i in 0..QUEUE {
        assert_eq!(a.next().await, i.to_string());
    }
    a.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn full_queue_refuses_redis() {
    full_queue_refuses(BusKind::Redis).await
}

#[tokio::test(flavor = "current_thread")]
async fn full_queue_refuses_nats() {
    full_queue_refuses(BusKind::Nats).await
}
