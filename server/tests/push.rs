//! Extension `push` over real sockets with the Rust test worker's push commands (see
//! `src/bin/test_worker.rs`): order against replies, chunks never interleaved, groups and
//! broadcast at 1,000 connections, clients that do not read, close.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use support::{raise_fd_limit, wait_for, Harness, Rpc, HANG};

const ONE: &str = "    s:\n      addr: 127.0.0.1:0\n";

fn pool(workers: usize) -> String {
    format!("    num_workers: {workers}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_pushes_come_before_the_reply_and_close_keeps_the_last_reply() {
    let mut h = Harness::rust(ONE, &pool(2)).await;
    let mut c = h.connect("s").await;
    let (_, _, uuid) = c.hello().await;
    c.send("self 3\r\n").await;
    for want in ["self 0", "self 1", "self 2", "reply"] {
        assert_eq!(c.line().await.unwrap(), want);
    }
    // Pushes to another connection, unknown uuids and unknown ops cost nothing.
    let mut d = h.connect("s").await;
    let (_, _, other) = d.hello().await;
    assert_eq!(c.ask(&format!("push {other} hi there\r\n")).await, "pushed");
    assert_eq!(d.line().await.unwrap(), "hi there");
    let nobody = "00000000-0000-4000-8000-000000000000";
    assert_eq!(c.ask(&format!("push {nobody} x\r\n")).await, "pushed");
    assert_eq!(c.ask("push not-a-uuid x\r\n").await, "pushed");
    assert_eq!(c.ask("badop\r\n").await, "ok");
    assert_eq!(c.ask("still\r\n").await, "s:still");
    // Closing another connection: it gets its CLOSE.
    assert_eq!(c.ask(&format!("kick {other}\r\n")).await, "kicked");
    assert!(d.rest().await.is_empty());
    wait_for(|| h.log("closes.log").iter().any(|l| l.starts_with(&other))).await;
    // Closing its own connection: the answer's body is still written, then the socket closes.
    c.send("bye-self\r\n").await;
    assert_eq!(c.line().await.unwrap(), "last words");
    assert!(c.rest().await.is_empty());
    wait_for(|| h.log("closes.log").iter().any(|l| l.starts_with(&uuid))).await;
    assert_eq!(h.log("closes.log").len(), 2);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_a_connection_while_its_own_event_runs() {
    let mut h = Harness::rust(ONE, &pool(2)).await;
    let mut busy = h.connect("s").await;
    let (_, _, uuid) = busy.hello().await;
    let mut pusher = h.connect("s").await;
    pusher.hello().await;
    // The connection's own event holds its worker for 3 s; the push, served by the other
    // worker, must not wait for it (the writer is woken while the event runs).
    let started = Instant::now();
    busy.send("sleep 3000\r\n").await;
    support::wait_for_marker(&h, "sleeping").await;
    assert_eq!(
        pusher.ask(&format!("push {uuid} meanwhile\r\n")).await,
        "pushed"
    );
    assert_eq!(busy.line().await.unwrap(), "meanwhile");
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "the push waited for the event: {:?}",
        started.elapsed()
    );
    assert_eq!(busy.line().await.unwrap(), "slept");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_replies_from_several_workers_never_interleave() {
    let mut h = Harness::rust(ONE, &pool(4)).await;
    let mut target = h.connect("s").await;
    let (_, _, uuid) = target.hello().await;
    // Three pushers on other workers send 40 lines of 3,000 bytes each while the target asks for
    // replies of 100,000 bytes (more than a socket takes at once, so writes are partial).
    let mut pushers = Vec::new();
    for ch in ["a", "b", "c"] {
        let mut p = h.connect("s").await;
        p.hello().await;
        let packet = format!("spam {uuid} {ch} 3000 40\r\n");
        pushers.push(tokio::spawn(async move {
            assert_eq!(p.ask(&packet).await, "spammed");
            p
        }));
    }
    for _ in 0..5 {
        target.send("fill R 100000\r\n").await;
    }
    let mut lines: HashMap<u8, usize> = HashMap::new();
    for _ in 0..(3 * 40 + 5) {
        let line = target.line().await.expect("a line");
        let first = line.as_bytes()[0];
        assert!(
            line.bytes().all(|b| b == first),
            "a line mixes chunks: {}…",
            &line[..line.len().min(80)]
        );
        let want = if first == b'R' { 99_999 } else { 2_999 };
        assert_eq!(line.len(), want, "a whole chunk ({})", first as char);
        *lines.entry(first).or_default() += 1;
    }
    assert_eq!(
        lines,
        HashMap::from([(b'a', 40), (b'b', 40), (b'c', 40), (b'R', 5)])
    );
    for p in pushers {
        p.await.unwrap();
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_member_of_1000_connections_in_10_groups_exactly_once() {
    raise_fd_limit();
    let mut h = Harness::rust_rpc(ONE, &pool(4)).await;
    let mut clients = Vec::new();
    for i in 0..1000 {
        let mut c = h.connect("s").await;
        c.hello().await;
        c.send(format!("join g{}\r\n", i % 10)).await;
        clients.push(c);
    }
    for c in &mut clients {
        assert_eq!(c.line().await.unwrap(), "joined");
    }
    let mut ctl = h.connect("s").await;
    ctl.hello().await;
    for g in 0..10 {
        assert_eq!(ctl.ask(&format!("bcast g{g} to g{g}\r\n")).await, "sent");
    }
    // Everyone but the sender, from a worker; then everyone, over RPC.
    assert_eq!(ctl.ask("bcast-others - to all\r\n").await, "sent");
    let mut rpc = support_rpc(&h).await;
    let n = rpc
        .ok("pier.Broadcast", json!({"data": "over rpc\n"}))
        .await;
    assert_eq!(n, json!(1001));
    let n = rpc.ok("pier.Count", json!({"group": "g7"})).await;
    assert_eq!(n, json!(100));
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.line().await.unwrap(),
            format!("to g{}", i % 10),
            "client {i}"
        );
        assert_eq!(c.line().await.unwrap(), "to all", "client {i}");
        assert_eq!(c.line().await.unwrap(), "over rpc", "client {i}");
        // Nothing else was queued before this reply: exactly once, none elsewhere.
        c.send("ping\r\n").await;
    }
    for c in &mut clients {
        assert_eq!(c.line().await.unwrap(), "s:ping");
    }
    assert_eq!(ctl.line().await.unwrap(), "over rpc");
    assert_eq!(ctl.ask("ping\r\n").await, "s:ping");
    // Membership dies with the connection.
    drop(clients);
    let deadline = Instant::now() + HANG;
    while rpc.ok("pier.Count", json!({})).await != json!(1) {
        assert!(
            Instant::now() < deadline,
            "the dropped clients were still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let groups = rpc.ok("pier.Groups", json!({})).await;
    assert_eq!(groups, json!([]));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed_at_the_bound_while_others_keep_going() {
    raise_fd_limit();
    let servers = "    s:\n      addr: 127.0.0.1:0\n      max_write_buffer: 65536\n      write_timeout: 30s\n";
    let mut h = Harness::rust_rpc(servers, &pool(4)).await;
    let mut slow = h.connect("s").await;
    let (_, _, slow_uuid) = slow.hello().await;
    let mut others = Vec::new();
    for _ in 0..100 {
        let mut c = h.connect("s").await;
        c.hello().await;
        others.push(c);
    }
    // 8 MB for a client that reads nothing: far past its bound and the kernel's buffers.
    let mut pusher = h.connect("s").await;
    pusher.hello().await;
    let push = tokio::spawn(async move {
        let started = Instant::now();
        assert_eq!(
            pusher
                .ask(&format!("spam {slow_uuid} x 8000 1000\r\n"))
                .await,
            "spammed"
        );
        (started.elapsed(), pusher)
    });
    // Meanwhile every other client keeps being answered; a writer stuck on the slow client
    // would hold them for write_timeout (30 s).
    let mut worst = Duration::ZERO;
    for round in 0..5 {
        for c in &mut others {
            let sent = Instant::now();
            assert_eq!(c.ask(&format!("r{round}\r\n")).await, format!("s:r{round}"));
            worst = worst.max(sent.elapsed());
        }
    }
    let (pushing, _pusher) = push.await.unwrap();
    assert!(
        worst < Duration::from_secs(5) && pushing < Duration::from_secs(5),
        "others waited {worst:?}, the pusher {pushing:?}"
    );
    let uuid = {
        let closes = || h.log("closes.log");
        wait_for(|| !closes().is_empty()).await;
        closes()[0].split(' ').next().unwrap().to_owned()
    };
    let mut rpc = support_rpc(&h).await;
    assert_eq!(
        rpc.ok("pier.Info", json!({ "uuid": uuid })).await,
        Value::Null,
        "the slow client is gone"
    );
    // It got what the kernel had taken, then EOF: never more than the bound plus the kernel's
    // buffers, and the stream ends on a whole chunk or mid-chunk, never past 8 MB.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(HANG, slow.reader.read_to_end(&mut got)).await;
    assert!(got.len() < 8_000_000, "{} bytes", got.len());
    assert_eq!(rpc.ok("pier.Count", json!({})).await, json!(101));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_for_write_timeout_is_closed() {
    // Under the bound, but nothing is read for 1 s.
    let servers = "    s:\n      addr: 127.0.0.1:0\n      max_write_buffer: 33554432\n      write_timeout: 1s\n";
    let mut h = Harness::rust(servers, &pool(2)).await;
    // Kept open and unread until the end of the test.
    let mut slow = h.connect("s").await;
    let (_, _, slow_uuid) = slow.hello().await;
    let mut pusher = h.connect("s").await;
    pusher.hello().await;
    let started = Instant::now();
    assert_eq!(
        pusher
            .ask(&format!("spam {slow_uuid} y 16000 1000\r\n"))
            .await,
        "spammed"
    );
    wait_for(|| {
        h.log("closes.log")
            .iter()
            .any(|l| l.starts_with(&slow_uuid))
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(pusher.ask("after\r\n").await, "s:after");
    drop(slow);
    h.shutdown().await;
}

/// A JSON RPC connection to the harness's server.
async fn support_rpc(h: &Harness) -> Rpc {
    let addr = h.rpc.as_deref().unwrap().strip_prefix("tcp://").unwrap();
    Rpc::connect(addr.parse().unwrap()).await
}
