//! Operations: Prometheus metrics after a known workload, health and readiness, connection limits
//! and the idle timeout. Real sockets on loopback, real worker processes (the Rust test worker),
//! the exposition read by a Prometheus text-format parser.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::{test_worker, yaml, Client, Harness, HANG};
use tokio::net::TcpSocket;

const ONE: &str = "    s:\n      addr: 127.0.0.1:0\n";
const OPS: &str = "metrics:\n  address: 127.0.0.1:0\nstatus:\n  address: 127.0.0.1:0\n";

/// A server with `servers`, `pool` (fragment under `tcp.pool`), `env` (under `server.env`) and
/// top-level `extra` sections.
async fn start(servers: &str, pool: &str, env: &str, extra: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(dir.path(), &[&test_worker()], servers, pool, env) + extra;
    Harness::start(dir, &text).await
}

/// The exposition, parsed: (name, sorted labels) → value.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

async fn scrape(h: &Harness) -> Samples {
    let (code, body) = h.http_get("metrics", "/metrics").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "a complete exposition");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("the text format parses");
    let mut out = Samples::new();
    for s in parsed.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            // Histograms are checked through their _count and _sum samples.
            _ => continue,
        };
        out.insert((s.metric, labels), value);
    }
    out
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut key: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    key.sort();
    *samples
        .get(&(name.to_owned(), key))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

/// Scrapes until `done` holds (bounded: the server finishes CLOSE events asynchronously).
async fn scrape_until(h: &Harness, done: impl Fn(&Samples) -> bool) -> Samples {
    for _ in 0..500 {
        let s = scrape(h).await;
        if done(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the metrics never reached the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload_exactly() {
    let mut h = start(ONE, "    num_workers: 2\n", "", OPS).await;
    let mut sent = 0usize;
    let mut line = |l: String| {
        sent += l.len() + 1;
        l
    };
    let mut c1 = h.connect("s").await;
    let mut c2 = h.connect("s").await;
    let mut c3 = h.connect("s").await;
    for c in [&mut c1, &mut c2, &mut c3] {
        line(c.line().await.unwrap());
    }
    for _ in 0..3 {
        c1.send("a\r\n").await;
        assert_eq!(line(c1.line().await.unwrap()), "s:a");
    }
    c2.send("b\r\n").await;
    assert_eq!(line(c2.line().await.unwrap()), "s:b");
    c2.send("quit\r\n").await;
    assert_eq!(line(c2.line().await.unwrap()), "bye");
    assert_eq!(c2.rest().await, b"");
    drop(c1);
    drop(c3);
    let server = [("server", "s")];
    let s = scrape_until(&h, |s| {
        s.get(&(
            "pier_connections_open".to_owned(),
            vec![("server".to_owned(), "s".to_owned())],
        )) == Some(&0.0)
            // Counted when the CLOSE events were answered.
            && s.get(&(
                "pier_event_duration_seconds_count".to_owned(),
                vec![("kind".to_owned(), "close".to_owned())],
            )) == Some(&3.0)
            // The workers' gauge settles apart from the CLOSE events' count: a single read after
            // the latter raced it (it read 1 ready worker of 2 once, on a loaded machine).
            && s.get(&(
                "pier_workers".to_owned(),
                vec![("state".to_owned(), "ready".to_owned())],
            )) == Some(&2.0)
    })
    .await;
    assert_eq!(get(&s, "pier_connections_accepted_total", &server), 3.0);
    let closed = |reason| {
        get(
            &s,
            "pier_connections_closed_total",
            &[("server", "s"), ("reason", reason)],
        )
    };
    assert_eq!(closed("client"), 2.0);
    assert_eq!(closed("worker"), 1.0);
    assert_eq!(closed("idle_timeout"), 0.0);
    let events = |kind| get(&s, "pier_events_total", &[("server", "s"), ("kind", kind)]);
    assert_eq!(
        (events("connected"), events("data"), events("close")),
        (3.0, 5.0, 3.0)
    );
    assert_eq!(
        get(&s, "pier_received_bytes_total", &server),
        (3 * "a\r\n".len() + "b\r\n".len() + "quit\r\n".len()) as f64
    );
    assert_eq!(get(&s, "pier_sent_bytes_total", &server), sent as f64);
    let timed = |kind| get(&s, "pier_event_duration_seconds_count", &[("kind", kind)]);
    assert_eq!(
        (timed("connected"), timed("data"), timed("close")),
        (3.0, 5.0, 3.0)
    );
    assert_eq!(
        get(&s, "pier_worker_wait_duration_seconds_count", &[]),
        11.0
    );
    assert_eq!(get(&s, "pier_workers", &[("state", "ready")]), 2.0);
    assert_eq!(get(&s, "pier_workers", &[("state", "working")]), 0.0);
    assert_eq!(get(&s, "pier_events_waiting", &[]), 0.0);
    assert_eq!(get(&s, "pier_write_buffer_bytes", &[]), 0.0);
    assert!(
        !s.keys()
            .any(|(name, _)| name.starts_with("pier_worker_restarts")),
        "no worker was replaced"
    );
    // Not a page of this endpoint: 404; the status endpoint is here too.
    assert_eq!(h.http_get("metrics", "/nope").await.0, 404);
    assert_eq!(h.http_get("status", "/health?plugin=tcp").await.0, 200);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_while_events_wait_for_the_only_worker() {
    let mut h = start(ONE, "    num_workers: 1\n", "", OPS).await;
    assert_eq!(
        h.http_get("status", "/ready?plugin=tcp").await,
        (200, "plugin: tcp, status: 200\n".into())
    );
    let mut busy = h.connect("s").await;
    busy.hello().await;
    busy.send("sleep 3000\r\n").await;
    support::wait_for_marker(&h, "sleeping").await;
    // The only worker is busy, nothing waits: the pool can still take an event.
    assert_eq!(h.http_get("status", "/ready?plugin=tcp").await.0, 200);
    // An event now waits for it: not ready; still healthy.
    let waiting = Client::connect(h.addrs["s"]).await;
    let mut code = 0;
    for _ in 0..500 {
        code = h.http_get("status", "/ready?plugin=tcp").await.0;
        if code == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(code, 503, "ready while an event waits for the only worker");
    assert_eq!(
        h.http_get("status", "/health?plugin=tcp").await,
        (200, "plugin: tcp, status: 200\n".into())
    );
    let s = scrape(&h).await;
    assert_eq!(get(&s, "pier_events_waiting", &[]), 1.0);
    assert_eq!(get(&s, "pier_workers", &[("state", "working")]), 1.0);
    assert_eq!(busy.line().await.unwrap(), "slept");
    let mut waiting = waiting;
    waiting.hello().await;
    assert_eq!(h.http_get("status", "/ready").await.0, 200);
    assert_eq!(h.http_get("status", "/ready?plugin=http").await.0, 404);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_fail_with_the_configured_code_when_no_worker_is_alive() {
    let ops = "metrics:\n  address: 127.0.0.1:0\nstatus:\n  address: 127.0.0.1:0\n  unavailable_status_code: 500\n";
    let mut h = start(
        ONE,
        "    num_workers: 1\n",
        "    TW_BOOT: die-after-first\n",
        ops,
    )
    .await;
    assert_eq!(h.http_get("status", "/health?plugin=tcp").await.0, 200);
    let mut c = h.connect("s").await;
    c.hello().await;
    c.send("crash\r\n").await;
    assert_eq!(c.rest().await, b"", "the crash closes its connection");
    // Every replacement fails to boot: no worker is alive.
    let mut health = 0;
    for _ in 0..500 {
        health = h.http_get("status", "/health?plugin=tcp").await.0;
        if health == 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(health, 500);
    assert_eq!(
        h.http_get("status", "/ready?plugin=tcp").await,
        (500, "plugin: tcp, status: 500\n".into())
    );
    let s = scrape(&h).await;
    assert_eq!(
        get(&s, "pier_worker_restarts_total", &[("reason", "crash")]),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "pier_connections_closed_total",
            &[("server", "s"), ("reason", "event_failed")]
        ),
        1.0
    );
    h.shutdown().await;
}

/// A client whose source address is `from` (any 127.0.0.0/8 address is this host on Linux).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    let stream = tokio::time::timeout(HANG, socket.connect(to))
        .await
        .unwrap()
        .unwrap();
    Client::over(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_a_new_connection_is_closed_at_once_and_others_keep_working() {
    let servers = "    s:\n      addr: 127.0.0.1:0\n      max_connections: 2\n";
    let mut h = start(servers, "    num_workers: 2\n", "", OPS).await;
    let mut c1 = h.connect("s").await;
    let mut c2 = h.connect("s").await;
    c1.hello().await;
    c2.hello().await;
    let mut over = h.connect("s").await;
    assert_eq!(over.rest().await, b"", "closed without a greeting");
    assert_eq!(c1.ask("one\r\n").await, "s:one");
    assert_eq!(c2.ask("two\r\n").await, "s:two");
    // One leaves: its place frees once its CLOSE ran.
    drop(c1);
    let mut again = None;
    for _ in 0..200 {
        let mut c = h.connect("s").await;
        if let Some(line) = c.line().await {
            assert!(line.starts_with("hello s "), "{line}");
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = again.expect("a place frees when a connection ends");
    assert_eq!(again.ask("three\r\n").await, "s:three");
    let s = scrape(&h).await;
    let rejected = get(
        &s,
        "pier_connections_rejected_total",
        &[("server", "s"), ("reason", "max_connections")],
    );
    assert!(rejected >= 1.0, "{rejected}");
    assert_eq!(get(&s, "pier_connections_open", &[("server", "s")]), 2.0);
    let closes = h.log("closes.log");
    assert_eq!(
        closes.len(),
        1,
        "rejected connections get no CLOSE: {closes:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limit_and_accept_rate_spare_other_addresses() {
    let servers = "    s:\n      addr: 127.0.0.1:0\n      max_connections_per_ip: 1\n    r:\n      addr: 127.0.0.1:0\n      accept_rate_per_ip: 1\n";
    let mut h = start(servers, "    num_workers: 2\n", "", OPS).await;
    let (s_addr, r_addr) = (h.addrs["s"], h.addrs["r"]);
    let mut first = connect_from([127, 0, 0, 1], s_addr).await;
    first.hello().await;
    let mut second = connect_from([127, 0, 0, 1], s_addr).await;
    assert_eq!(
        second.rest().await,
        b"",
        "a second connection from 127.0.0.1"
    );
    let mut other = connect_from([127, 0, 0, 2], s_addr).await;
    assert_eq!(other.hello().await.1, other.local.to_string());
    assert_eq!(first.ask("x\r\n").await, "s:x");

    let mut a = connect_from([127, 0, 0, 1], r_addr).await;
    a.hello().await;
    // The bucket holds one accept per second: an immediate second one is over the rate.
    let mut b = connect_from([127, 0, 0, 1], r_addr).await;
    assert_eq!(b.rest().await, b"", "over the accept rate");
    let mut c = connect_from([127, 0, 0, 3], r_addr).await;
    c.hello().await;
    let s = scrape(&h).await;
    assert_eq!(
        get(
            &s,
            "pier_connections_rejected_total",
            &[("server", "s"), ("reason", "max_connections_per_ip")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "pier_connections_rejected_total",
            &[("server", "r"), ("reason", "accept_rate_per_ip")]
        ),
        1.0
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_silent_clients_with_their_close_event() {
    let servers = "    s:\n      addr: 127.0.0.1:0\n      idle_timeout: 1s\n";
    let mut h = start(servers, "    num_workers: 2\n", "", OPS).await;
    let mut silent = h.connect("s").await;
    let (_, _, silent_uuid) = silent.hello().await;
    let mut slow = h.connect("s").await;
    let (_, _, slow_uuid) = slow.hello().await;
    // A client that keeps sending bytes is not idle, even mid-packet: 2.5 s of one byte every
    // 100 ms, then the delimiter.
    for _ in 0..25 {
        slow.send("x").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(slow.ask("\r\n").await, format!("s:{}", "x".repeat(25)));
    // The silent one was closed meanwhile, and its CLOSE ran.
    assert_eq!(silent.rest().await, b"");
    // Then the slow one falls silent too.
    assert_eq!(slow.rest().await, b"");
    let s = scrape_until(&h, |s| {
        s.get(&(
            "pier_connections_open".to_owned(),
            vec![("server".to_owned(), "s".to_owned())],
        )) == Some(&0.0)
    })
    .await;
    assert_eq!(
        get(
            &s,
            "pier_connections_closed_total",
            &[("server", "s"), ("reason", "idle_timeout")]
        ),
        2.0
    );
    // The gauge drops when the socket closes; the CLOSE event runs just after it: wait for both.
    let closed_uuids = || -> Vec<String> {
        h.log("closes.log")
            .iter()
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect()
    };
    for _ in 0..500 {
        let closes = closed_uuids();
        if closes.contains(&silent_uuid) && closes.contains(&slow_uuid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closes = closed_uuids();
    assert!(
        closes.contains(&silent_uuid) && closes.contains(&slow_uuid),
        "{closes:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sets_the_idle_timeout_of_its_connection() {
    let servers = "    s:\n      addr: 127.0.0.1:0\n      idle_timeout: 600ms\n    none:\n      addr: 127.0.0.1:0\n";
    let mut h = start(servers, "    num_workers: 2\n", "", "").await;

    // A server without idle_timeout: the worker gives this connection one (MQTT's keep-alive).
    let mut short = h.connect("none").await;
    short.hello().await;
    assert_eq!(short.ask("idle 300\r\n").await, "idle 300");
    assert_eq!(short.rest().await, b"", "closed after 300 ms without bytes");

    // A server with 600 ms: the worker turns it off for this connection, then restores it.
    let mut kept = h.connect("s").await;
    kept.hello().await;
    assert_eq!(kept.ask("idle 0\r\n").await, "idle 0");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(kept.ask("still\r\n").await, "s:still");
    // A timeout over a week is a worker error: ignored, the connection keeps "none".
    assert_eq!(kept.ask("idle 999999999999\r\n").await, "idle 999999999999");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(kept.ask("idle default\r\n").await, "idle default");
    assert_eq!(kept.rest().await, b"", "closed after the server's 600 ms");
    // Both get their CLOSE (the last one runs just after the socket closed).
    for _ in 0..500 {
        if h.log("closes.log").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.log("closes.log").len(), 2, "both got their CLOSE");
    h.shutdown().await;
}

/// `pier_answers_delivered_total` now (answers written by whoever read them from the worker,
/// without waking their connections' tasks).
fn delivered(samples: &Samples) -> f64 {
    get(samples, "pier_answers_delivered_total", &[])
}

/// One round of plain events, one per client, all sent before any answer is read (on one
/// thread, pier's tasks run only once the test waits: the events join one worker's line, where
/// answers read together may be delivered). Returns when each client got its answer.
async fn plain_round(clients: &mut [Client], round: usize) -> Vec<std::time::Instant> {
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("r{round}c{i}\r\n")).await;
    }
    let mut answered = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        // The echo names the client's server: `s:` or `none:`.
        let line = c.line().await.unwrap();
        assert!(line.ends_with(&format!(":r{round}c{i}")), "{line}");
        answered.push(std::time::Instant::now());
    }
    answered
}

/// A connection with an idle timeout waits in a busy worker's line as one without: its plain
/// answer is written by whoever reads the worker's answers, without waking its task (before,
/// only connections without an idle timeout were, and this counter stayed at 0).
#[tokio::test(flavor = "current_thread")]
async fn answers_to_connections_with_an_idle_timeout_are_delivered_without_waking_them() {
    let servers = "    s:\n      addr: 127.0.0.1:0\n      idle_timeout: 30s\n";
    let pool = "    num_workers: 1\n    max_in_flight: 32\n";
    let mut h = start(servers, pool, "", OPS).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut c = h.connect("s").await;
        c.hello().await;
        clients.push(c);
    }
    // Bounded: the worker writes each answer on its own, so a read of pier's may bring one only;
    // within a few rounds one brings several.
    let mut round = 0;
    while delivered(&scrape(&h).await) == 0.0 {
        assert!(round < 50, "no answer delivered in {round} rounds");
        plain_round(&mut clients, round).await;
        round += 1;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.ask(&format!("after{i}\r\n")).await, format!("s:after{i}"));
    }
    h.shutdown().await;
}

/// Connections whose last answers were delivered without waking them (parked), then whose
/// clients fall silent, are still closed at their idle deadline, counted from when the answer
/// was written, and get their CLOSE: with the server's `idle_timeout` and with one a worker set
/// (`idle_timeout` command) on a server without one. Pier closes no earlier than the timeout
/// after the answer and, by design, at most ~15 ms after it (the coarse clock's tick bound, the
/// timer's millisecond); 500 ms is slack for a loaded machine, and under the 2 × timeout a clock
/// restarted when the parked task's timer woke it (not at the delivery) would give.
#[tokio::test(flavor = "current_thread")]
async fn parked_connections_that_fall_silent_are_closed_at_their_idle_deadline() {
    const TIMEOUT: Duration = Duration::from_millis(800);
    let servers = "    s:\n      addr: 127.0.0.1:0\n      idle_timeout: 800ms\n    none:\n      addr: 127.0.0.1:0\n";
    let pool = "    num_workers: 1\n    max_in_flight: 32\n";
    let mut h = start(servers, pool, "", OPS).await;
    let mut clients = Vec::new();
    let mut uuids = Vec::new();
    for i in 0..6 {
        let mut c = h.connect(if i % 2 == 0 { "s" } else { "none" }).await;
        uuids.push(c.hello().await.2);
        if i % 2 == 1 {
            assert_eq!(c.ask("idle 800\r\n").await, "idle 800");
        }
        clients.push(c);
    }
    // Rounds until one had answers delivered: then every connection's last event is that round's.
    let mut answered;
    let mut round = 0;
    loop {
        assert!(round < 50, "no answer delivered in {round} rounds");
        let before = delivered(&scrape(&h).await);
        answered = plain_round(&mut clients, round).await;
        round += 1;
        if delivered(&scrape(&h).await) > before {
            break;
        }
    }
    // All silent now; each client waits for the server's EOF on its own.
    let waits: Vec<_> = clients
        .into_iter()
        .zip(answered)
        .map(|(mut c, at)| {
            tokio::spawn(async move {
                let rest = tokio::time::timeout(TIMEOUT + Duration::from_secs(2), c.rest()).await;
                (rest.map(|r| r.is_empty()), at.elapsed())
            })
        })
        .collect();
    for (i, wait) in waits.into_iter().enumerate() {
        let (rest, silent) = wait.await.unwrap();
        assert_eq!(rest, Ok(true), "client {i}: closed without more bytes");
        assert!(
            silent + Duration::from_millis(30) >= TIMEOUT,
            "client {i}: closed after {silent:?} of silence, before the idle timeout"
        );
        assert!(
            silent <= TIMEOUT + Duration::from_millis(500),
            "client {i}: closed only after {silent:?} of silence"
        );
    }
    let s = scrape_until(&h, |s| {
        ["s", "none"].iter().all(|server| {
            s.get(&(
                "pier_connections_closed_total".to_owned(),
                vec![
                    ("reason".to_owned(), "idle_timeout".to_owned()),
                    ("server".to_owned(), (*server).to_owned()),
                ],
            )) == Some(&3.0)
        })
    })
    .await;
    assert!(delivered(&s) > 0.0);
    // The CLOSE events run just after the sockets closed.
    support::eventually(Duration::from_secs(10), "every CLOSE logged", || {
        let closes = h.log("closes.log");
        uuids
            .iter()
            .all(|u| closes.iter().any(|l| l.starts_with(u.as_str())))
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_see_the_features_of_this_server() {
    let mut h = start(ONE, "    num_workers: 1\n", "", "").await;
    let mut c = h.connect("s").await;
    c.hello().await;
    assert_eq!(
        c.ask("env PIER_FEATURES\r\n").await,
        pier_server::FEATURES.join(",")
    );
    assert!(pier_server::FEATURES.contains(&"idle_timeout"));
    h.shutdown().await;
}
