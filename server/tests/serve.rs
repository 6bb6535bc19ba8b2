//! `pier serve` in-process with the Rust test worker (`src/bin/test_worker.rs`): real sockets on
//! 127.0.0.1:0, real worker processes, assertions on what a client sees.

mod support;

use std::collections::HashSet;
use std::path::Path;

use tokio::io::AsyncWriteExt;

use pier_server::config::Config;
use pier_server::pool::PoolError;
use pier_server::{ServeError, Server};
use support::{test_worker, wait_for_marker, yaml, Client, Harness};

const ONE: &str = "    s:\n      addr: 127.0.0.1:0\n";

fn pool(workers: usize, extra: &str) -> String {
    format!("    num_workers: {workers}\n{extra}")
}

/// Config text: server `s` with `workers` Rust test workers, `env` lines in `server.env`, and the
/// pool's `timeout` (`allocate_timeout` or `destroy_timeout`, which the harness sets long) at
/// 300 ms.
fn short(timeout: &str, dir: &Path, workers: usize, env: &str) -> String {
    let text = yaml(dir, &[&test_worker()], ONE, &pool(workers, ""), env);
    let line = format!("\n    {timeout}: ");
    let at = text.find(&line).expect("the harness sets this timeout") + line.len();
    let end = at + text[at..].find('\n').unwrap();
    format!("{}300ms{}", &text[..at], &text[end..])
}

/// [`short`] started.
async fn start_short(timeout: &str, workers: usize, env: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let text = short(timeout, dir.path(), workers, env);
    Harness::start(dir, &text).await
}

/// How many CLOSE events the worker logged for `uuid`; read after [`Harness::shutdown`], when the
/// workers are gone and the log is complete.
fn closes_of(h: &Harness, uuid: &str) -> usize {
    h.log("closes.log")
        .iter()
        .filter(|l| l.starts_with(uuid))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_get_their_name_remote_addr_and_correct_framing() {
    let servers = "    a:\n      addr: 127.0.0.1:0\n    b:\n      addr: 127.0.0.1:0\n      delimiter: \"--end--\"\n";
    let mut h = Harness::rust(servers, &pool(2, "")).await;

    let mut a = h.connect("a").await;
    let (server, remote, uuid) = a.hello().await;
    assert_eq!(server, "a");
    assert_eq!(
        remote,
        a.local.to_string(),
        "remote_addr is the client's address"
    );
    let parsed = uuid::Uuid::parse_str(&uuid).unwrap();
    assert_eq!(parsed.get_version_num(), 4);

    // Pipelined: three packets in one write, three answers in order.
    a.send("x\r\ny\r\nz\r\n").await;
    for want in ["a:x", "a:y", "a:z"] {
        assert_eq!(a.line().await.unwrap(), want);
    }
    // Byte at a time, the delimiter split across writes.
    for byte in b"slow\r\n" {
        a.send([*byte]).await;
    }
    assert_eq!(a.line().await.unwrap(), "a:slow");

    let mut b = h.connect("b").await;
    let (server, _, uuid_b) = b.hello().await;
    assert_eq!(server, "b");
    assert_ne!(uuid_b, uuid);
    b.send("one--e").await;
    b.send("nd--two--end").await;
    b.send("--").await;
    assert_eq!(b.line().await.unwrap(), "b:one");
    assert_eq!(b.line().await.unwrap(), "b:two");

    // Bytes left at EOF arrive as a last DATA event.
    a.send("tail").await;
    a.writer.shutdown().await.unwrap();
    assert_eq!(a.line().await.unwrap(), "a:tail");
    assert_eq!(a.rest().await, b"");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_loop_100_round_trips_on_several_servers_in_parallel() {
    let servers = "    s1:\n      addr: 127.0.0.1:0\n    s2:\n      addr: 127.0.0.1:0\n    s3:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n";
    let mut h = Harness::rust(servers, &pool(3, "")).await;
    let mut clients = Vec::new();
    for name in ["s1", "s2", "s3"] {
        for _ in 0..2 {
            let mut c = h.connect(name).await;
            let delimiter = if name == "s3" { "\n" } else { "\r\n" };
            clients.push(tokio::spawn(async move {
                c.hello().await;
                for i in 0..100 {
                    c.send(format!("continue{delimiter}")).await;
                    let answer = c.ask(&format!("echo {i}{delimiter}")).await;
                    assert_eq!(answer, format!("{name}:echo {i}"));
                }
            }));
        }
    }
    for c in clients {
        c.await.unwrap();
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writeclose_and_close_end_the_connection_with_one_close_event() {
    let mut h = Harness::rust(ONE, &pool(2, "")).await;
    let mut c1 = h.connect("s").await;
    let (_, _, u1) = c1.hello().await;
    assert_eq!(c1.ask("quit\r\n").await, "bye");
    assert_eq!(c1.rest().await, b"");

    let mut c2 = h.connect("s").await;
    let (_, _, u2) = c2.hello().await;
    c2.send("close\r\n").await;
    assert_eq!(c2.rest().await, b"");
    h.shutdown().await;
    for uuid in [u1, u2] {
        assert_eq!(closes_of(&h, &uuid), 1, "one CLOSE for {uuid}");
    }
    assert_eq!(h.log("closes.log").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_error_closes_the_connection_and_the_worker_stays() {
    let mut h = Harness::rust(ONE, &pool(1, "")).await;
    let mut c1 = h.connect("s").await;
    let (_, _, u1) = c1.hello().await;
    let pid = c1.ask("pid\r\n").await;
    c1.send("error\r\n").await;
    assert_eq!(c1.rest().await, b"", "nothing written after a worker error");

    let mut c2 = h.connect("s").await;
    c2.hello().await;
    assert_eq!(
        c2.ask("pid\r\n").await,
        pid,
        "the same worker is still serving"
    );
    drop(c2);
    h.shutdown().await;
    assert_eq!(closes_of(&h, &u1), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_reply_reruns_the_event_on_another_worker_with_its_state() {
    let mut h = Harness::rust(ONE, &pool(2, "")).await;
    let mut c = h.connect("s").await;
    c.hello().await;
    c.ask("append\r\n").await;
    let answer = c.ask("stop\r\n").await;
    let parts: Vec<&str> = answer.split(' ').collect();
    assert_eq!(parts[0], "rerun", "{answer}");
    assert_eq!(
        parts[2], "00ff00",
        "the re-run carries the connection state"
    );
    assert!(h.dir.path().join("stopped").exists(), "a worker did stop");
    // The pool is whole again: the connection keeps working.
    assert_eq!(c.ask("after\r\n").await, "s:after");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_jobs_rotates_workers_without_losing_events() {
    let mut h = Harness::rust(ONE, &pool(2, "    max_jobs: 3\n")).await;
    let mut c = h.connect("s").await;
    c.hello().await;
    let mut pids = HashSet::new();
    for _ in 0..30 {
        pids.insert(c.ask("pid\r\n").await);
    }
    assert!(pids.len() >= 8, "workers were rotated: {pids:?}");
    let mut c2 = h.connect("s").await;
    c2.hello().await;
    assert_eq!(c2.ask("still\r\n").await, "s:still");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_event_closes_only_that_connection() {
    let mut h = Harness::rust(ONE, &pool(1, "")).await;
    let mut other = h.connect("s").await;
    other.hello().await;
    let mut c = h.connect("s").await;
    let (_, _, uuid) = c.hello().await;
    c.send("crash\r\n").await;
    assert_eq!(c.rest().await, b"");
    assert_eq!(
        other.ask("fine\r\n").await,
        "s:fine",
        "a replacement serves"
    );
    let mut fresh = h.connect("s").await;
    fresh.hello().await;
    drop((other, fresh));
    h.shutdown().await;
    assert_eq!(
        closes_of(&h, &uuid),
        1,
        "the crashed connection still gets its CLOSE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_worker_stdout_replaces_the_worker() {
    let mut h = Harness::rust(ONE, &pool(1, "")).await;
    let mut c = h.connect("s").await;
    c.hello().await;
    let pid = c.ask("pid\r\n").await;
    c.send("garbage\r\n").await;
    assert_eq!(c.rest().await, b"");
    let mut c2 = h.connect("s").await;
    c2.hello().await;
    assert_ne!(c2.ask("pid\r\n").await, pid, "the worker was replaced");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_echo_from_an_idle_worker_costs_no_connection() {
    stray_echo_costs_no_connection().await;
}

/// The same on the runtime `pier` runs: one thread, with the unpark hook that lets the first
/// idle check after the reactor polled epoll trust tokio's readiness instead of reading.
#[test]
fn a_stray_echo_from_an_idle_worker_is_caught_on_pier_s_own_runtime() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_unpark(pier_server::pool::reactor_polled)
        .build()
        .unwrap()
        .block_on(stray_echo_costs_no_connection());
}

async fn stray_echo_costs_no_connection() {
    let mut h = Harness::rust(ONE, &pool(1, "")).await;
    let mut c = h.connect("s").await;
    let (_, _, uuid) = c.hello().await;
    // Written 50 ms after the reply: the idle check has to find it on the relay (not in the
    // bytes read with the reply).
    let pid = c.ask("echo-later 50\r\n").await;
    // The only worker is idle and has written its stray line.
    wait_for_marker(&h, "echoed").await;
    let next = c.ask("pid\r\n").await;
    assert_ne!(
        next, pid,
        "the event ran on a replacement, not on the noisy worker"
    );
    assert_eq!(
        c.ask("pid\r\n").await,
        next,
        "the replacement stays in service"
    );
    // Stray bytes right behind a reply (same write) are caught the same way.
    let noisy = c.ask("echo-trailing\r\n").await;
    let after = c.ask("pid\r\n").await;
    assert_ne!(
        after, noisy,
        "the noisy worker was replaced before the next event"
    );
    assert!(
        h.log("closes.log").is_empty(),
        "the connection was never closed"
    );
    c.send("close\r\n").await;
    assert_eq!(c.rest().await, b"");
    h.shutdown().await;
    assert_eq!(h.log("closes.log").len(), 1, "the only connection's CLOSE");
    assert_eq!(closes_of(&h, &uuid), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_echo_from_an_idle_worker_moves_the_event_to_a_healthy_worker() {
    let mut h = Harness::rust(ONE, &pool(2, "")).await;
    let mut c = h.connect("s").await;
    c.hello().await;
    let noisy = c.ask("echo-later\r\n").await;
    wait_for_marker(&h, "echoed").await;
    // Whichever worker the queue hands out next, every answer comes, and never from the noisy one.
    for i in 0..6 {
        assert_ne!(c.ask("pid\r\n").await, noisy, "event {i}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_waits_longer_than_allocate_timeout_closes_its_connection() {
    let mut h = start_short("allocate_timeout", 1, "").await;
    let mut busy = h.connect("s").await;
    busy.hello().await;
    busy.send("sleep 3000\r\n").await;
    // The only worker is busy once it has written its marker (bounded wait, not a timing assertion).
    wait_for_marker(&h, "sleeping").await;
    // Past the first 500 ms of an event its worker takes no more events behind it
    // (`max_in_flight`): from then on a new event waits for a free worker, bounded by
    // allocate_timeout. (One written behind the event earlier has been handed to that worker: it
    // waits for it, as the event running there does; see PROTOCOL.md "Several events in flight".)
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let mut late = Client::connect(h.addrs["s"]).await;
    assert_eq!(late.rest().await, b"", "no greeting: no free worker");
    assert_eq!(busy.line().await.unwrap(), "slept");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_cannot_start_fail_the_server_with_their_stderr() {
    for (boot, want) in [
        ("die", "fatal: cannot boot (test worker)"),
        ("hang", "no pid handshake within 300ms"),
        ("garbage", "bad handshake answer"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let env = format!("    TW_BOOT: {boot}\n");
        let text = short("allocate_timeout", dir.path(), 2, &env);
        let config = Config::parse(&text, &[], &|_| None).unwrap();
        let err = Server::bind(config).await.unwrap_err();
        assert!(matches!(err, ServeError::Pool(_)), "{boot}: {err}");
        let ServeError::Pool(inner) = &err else {
            unreachable!()
        };
        assert!(inner.to_string().contains(want), "{boot}: {inner}");
        if boot == "die" {
            assert!(matches!(inner, PoolError::HandshakeExited { .. }));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_close_to_every_open_connection() {
    let mut h = Harness::rust(ONE, &pool(2, "")).await;
    let mut clients = Vec::new();
    let mut uuids = Vec::new();
    for _ in 0..3 {
        let mut c = h.connect("s").await;
        let (_, _, uuid) = c.hello().await;
        assert_eq!(c.ask("hi\r\n").await, "s:hi");
        uuids.push(uuid);
        clients.push(c);
    }
    h.shutdown().await;
    for c in &mut clients {
        assert_eq!(c.rest().await, b"", "socket closed");
    }
    for uuid in &uuids {
        assert_eq!(closes_of(&h, uuid), 1, "{:?}", h.log("closes.log"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_closes_the_connection_with_a_close_event() {
    let servers = "    s:\n      addr: 127.0.0.1:0\n      max_packet_size: 16\n";
    let mut h = Harness::rust(servers, &pool(1, "")).await;
    let mut c = h.connect("s").await;
    let (_, _, uuid) = c.hello().await;
    assert_eq!(c.ask("short\r\n").await, "s:short");
    c.send([b'x'; 64]).await;
    assert_eq!(c.rest().await, b"");
    h.shutdown().await;
    assert_eq!(closes_of(&h, &uuid), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_round_trips_across_workers_binary_and_reaches_close() {
    let mut h = Harness::rust(ONE, &pool(3, "")).await;
    let mut c = h.connect("s").await;
    let (_, _, uuid) = c.hello().await;
    let mut want = Vec::<u8>::new();
    let mut pids = HashSet::new();
    for round in 0..40u8 {
        let answer = c.ask("append\r\n").await;
        let (pid, state) = answer.split_once(' ').unwrap();
        assert_eq!(state, hex::encode(&want), "round {round}");
        pids.insert(pid.to_owned());
        want.extend_from_slice(&[0x00, 0xff, round]);
    }
    assert!(
        pids.len() >= 2,
        "events landed on several workers: {pids:?}"
    );
    assert_eq!(c.ask("clear\r\n").await, "cleared");
    let answer = c.ask("append\r\n").await;
    assert_eq!(answer.split_once(' ').unwrap().1, "", "cleared");
    c.send("close\r\n").await;
    assert_eq!(c.rest().await, b"");
    h.shutdown().await;
    let closes = h.log("closes.log");
    assert!(
        closes.contains(&format!("{uuid} 00ff00")),
        "CLOSE carried the state: {closes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_over_max_state_size_closes_without_writing() {
    let servers = "    s:\n      addr: 127.0.0.1:0\n      max_state_size: 1000\n";
    let mut h = Harness::rust(servers, &pool(1, "")).await;
    let mut c = h.connect("s").await;
    let (_, _, uuid) = c.hello().await;
    c.ask("append\r\n").await;
    c.send("big\r\n").await;
    assert_eq!(c.rest().await, b"", "the reply body is not written");
    h.shutdown().await;
    assert!(
        h.log("closes.log").contains(&format!("{uuid} 00ff00")),
        "the stored state is the last valid one, never a truncated one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_while_idle_is_replaced_without_losing_the_next_event() {
    let mut h = Harness::rust(ONE, &pool(1, "")).await;
    let mut c = h.connect("s").await;
    c.hello().await;
    let pid = c.ask("exit-after\r\n").await;
    // Wait (bounded) until the process is gone or a zombie: it exited while idle.
    let stat = format!("/proc/{pid}/stat");
    for _ in 0..2000 {
        match std::fs::read_to_string(&stat) {
            Err(_) => break,
            Ok(s) if s.split(' ').nth(2) == Some("Z") => break,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
    let next = c.ask("pid\r\n").await;
    assert_ne!(next, pid, "a replacement answered");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_larger_than_the_read_buffer_arrives_whole() {
    let mut h = Harness::rust(ONE, &pool(1, "")).await;
    let mut c = h.connect("s").await;
    c.hello().await;
    let big: String = (0..300_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (mut reader, mut writer) = (c.reader, c.writer);
    let packet = format!("{big}\r\n");
    let send = tokio::spawn(async move {
        writer.write_all(packet.as_bytes()).await.unwrap();
        writer
    });
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    reader.read_line(&mut line).await.unwrap();
    assert_eq!(line, format!("s:{big}\n"));
    drop(send.await.unwrap());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_client_that_never_reads() {
    let mut h = Harness::rust(ONE, &pool(1, "")).await;
    let mut c = h.connect("s").await;
    let (_, _, uuid) = c.hello().await;
    // 64 MB: far more than the socket buffers hold, so the server's write blocks.
    c.send("flood 67108864\r\n").await;
    // The reply reached the connection once the worker is free again; a second client proves it.
    let mut probe = h.connect("s").await;
    probe.hello().await;
    drop(probe);
    h.shutdown().await;
    assert_eq!(
        closes_of(&h, &uuid),
        1,
        "the blocked connection still got its CLOSE before the workers stopped"
    );
}

/// Without state, every frame the server writes is exactly what RoadRunner writes: the pid
/// request, and events with one option and the context in RoadRunner's key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_to_workers_are_byte_identical_to_roadrunner_without_state() {
    use pier_protocol::tcp::{encode_event, encode_event_with_state, EventKind};
    let mut h = Harness::rust_env(ONE, &pool(1, ""), "    TW_DUMP: '1'\n").await;
    let mut c = h.connect("s").await;
    let (_, remote, uuid) = c.hello().await;
    assert_eq!(c.ask("EHLO example.org\r\n").await, "s:EHLO example.org");
    c.ask("append\r\n").await;
    c.send("close\r\n").await;
    assert_eq!(c.rest().await, b"");
    h.shutdown().await;

    let frames: Vec<Vec<u8>> = h
        .log("frames.log")
        .iter()
        .map(|l| hex::decode(l).unwrap())
        .collect();
    let event = |kind, state: &[u8], body: &[u8]| {
        let mut out = Vec::new();
        encode_event_with_state(&mut out, &remote, "s", &uuid, kind, state, body).unwrap();
        out
    };
    let mut plain = Vec::new();
    encode_event(
        &mut plain,
        &remote,
        "s",
        &uuid,
        EventKind::Data,
        b"EHLO example.org\r\n",
    )
    .unwrap();
    let mut pid_request = Vec::new();
    pier_protocol::control::encode_pid_request(&mut pid_request, std::process::id()).unwrap();
    let mut stop = Vec::new();
    pier_protocol::control::encode_stop_request(&mut stop).unwrap();
    let want = vec![
        pid_request,
        event(EventKind::Connected, b"", b""),
        plain,
        event(EventKind::Data, b"", b"append\r\n"),
        // From here the connection has a state: events carry it (Pier extension).
        event(EventKind::Data, b"\x00\xff\x00", b"close\r\n"),
        event(EventKind::Close, b"\x00\xff\x00", b""),
        stop,
    ];
    assert_eq!(frames, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacements_that_cannot_start_leave_the_server_up_and_stoppable() {
    let mut h = start_short("allocate_timeout", 1, "    TW_BOOT: die-after-first\n").await;
    let mut c = h.connect("s").await;
    c.hello().await;
    c.send("crash\r\n").await;
    assert_eq!(c.rest().await, b"");
    // Replacements keep failing (with backoff): new clients are turned away, the server lives.
    for _ in 0..3 {
        let mut late = h.connect("s").await;
        assert_eq!(late.rest().await, b"", "no free workers");
    }
    h.shutdown().await;
}

/// IPv6 loopback (this machine has `::1` on `lo`): both address spellings bind, events name the
/// client by its IPv6 address, and an IPv4 server runs beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_servers_serve_and_report_the_client_address() {
    let servers = "    v6:\n      addr: \"[::1]:0\"\n    v6tcp:\n      addr: \"tcp://[::1]:0\"\n    v4:\n      addr: 127.0.0.1:0\n";
    let mut h = Harness::rust(servers, &pool(2, "")).await;
    for name in ["v6", "v6tcp"] {
        assert!(
            h.addrs[name].is_ipv6(),
            "{name} listens on {}",
            h.addrs[name]
        );
        let mut c = h.connect(name).await;
        let (server, remote, _) = c.hello().await;
        assert_eq!(server, name);
        assert!(remote.starts_with("[::1]:"), "{remote}");
        assert_eq!(
            remote,
            c.local.to_string(),
            "remote_addr is the client's address"
        );
        c.send("a\r\nb\r\n").await;
        assert_eq!(c.line().await.unwrap(), format!("{name}:a"));
        assert_eq!(c.line().await.unwrap(), format!("{name}:b"));
    }
    let mut c4 = h.connect("v4").await;
    let (_, remote, _) = c4.hello().await;
    assert!(remote.starts_with("127.0.0.1:"), "{remote}");
    h.shutdown().await;
}

/// A connection whose event is stuck in a worker for longer than destroy_timeout at shutdown still
/// gets its CLOSE: the stuck worker is killed and the CLOSE runs on a replacement (the only worker
/// was the stuck one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_close_for_an_event_stuck_longer_than_destroy_timeout() {
    let mut h = start_short("destroy_timeout", 1, "").await;
    let mut stuck = h.connect("s").await;
    let (_, _, uuid) = stuck.hello().await;
    stuck.send("sleep 600000\r\n").await;
    wait_for_marker(&h, "sleeping").await;
    let pid: i32 = std::fs::read_to_string(h.dir.path().join("sleeping"))
        .unwrap()
        .parse()
        .unwrap();
    h.shutdown().await;
    assert_eq!(stuck.rest().await, b"", "closed without an answer");
    assert_eq!(
        closes_of(&h, &uuid),
        1,
        "the stuck connection got its CLOSE"
    );
    let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.split(' ').nth(2) == Some("Z"));
    assert!(gone, "the stuck worker was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_framings_cut_packets_and_a_bad_header_closes_only_its_connection() {
    let servers = concat!(
        "    lf:\n      addr: 127.0.0.1:0\n      max_packet_size: 64\n",
        "      framing: { mode: length_field, length_size: 2, strip: header }\n",
        "    mq:\n      addr: 127.0.0.1:0\n      max_packet_size: 64\n",
        "      framing: { mode: varint, length_offset: 1, strip: header }\n",
        "    fx:\n      addr: 127.0.0.1:0\n      framing: { mode: fixed, size: 4 }\n",
    );
    let mut h = Harness::rust(servers, &pool(2, "")).await;

    let mut lf = h.connect("lf").await;
    let (_, _, lf_uuid) = lf.hello().await;
    // Two frames in one write, the third split inside its length field.
    lf.send(b"\0\x03one\0\x03two\0").await;
    lf.send(b"\x05three").await;
    for want in ["lf:one", "lf:two", "lf:three"] {
        assert_eq!(lf.line().await.unwrap(), want);
    }

    let mut mq = h.connect("mq").await;
    let (_, _, mq_uuid) = mq.hello().await;
    mq.send(b"\x30\x05hello\xc0").await;
    mq.send(b"\x00").await;
    assert_eq!(mq.line().await.unwrap(), "mq:hello");
    assert_eq!(
        mq.line().await.unwrap(),
        "mq:",
        "an empty body after stripping"
    );

    let mut fx = h.connect("fx").await;
    fx.hello().await;
    fx.send(b"abcdefg").await;
    fx.send(b"h").await;
    assert_eq!(fx.line().await.unwrap(), "fx:abcd");
    assert_eq!(fx.line().await.unwrap(), "fx:efgh");

    // A length over max_packet_size and a 5-byte varint: each closes its own connection, no DATA.
    lf.send(b"\xff\xff").await;
    assert_eq!(lf.rest().await, b"");
    mq.send(b"\x30\xff\xff\xff\xff\x01").await;
    assert_eq!(mq.rest().await, b"");
    let pid = fx.ask("pid ").await;
    assert!(
        pid.parse::<u32>().is_ok(),
        "the fixed-size client is still served: {pid}"
    );
    h.shutdown().await;
    for uuid in [lf_uuid, mq_uuid] {
        assert_eq!(closes_of(&h, &uuid), 1, "{:?}", h.log("closes.log"));
    }
}

/// The real binary's log: a line logged on behalf of a connection names its server and uuid
/// (the `conn` span, entered only when a line is logged: `log_scope`), and a line logged
/// outside any connection does not carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_warning_in_the_log_names_its_server_and_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rr.yaml");
    let servers = "    s:\n      addr: 127.0.0.1:0\n      max_packet_size: 16\n";
    std::fs::write(
        &config,
        yaml(dir.path(), &[&test_worker()], servers, &pool(1, ""), ""),
    )
    .unwrap();
    let pier = support::process::PierProcess::start(&config, &["s"]);
    // Two connections: each warning names its own uuid, not the other's.
    let mut uuids = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(pier.addrs["s"]).await;
        let (_, _, uuid) = c.hello().await;
        assert_eq!(c.ask("short\r\n").await, "s:short");
        c.send([b'x'; 64]).await;
        assert_eq!(c.rest().await, b"");
        uuids.push(uuid);
    }
    let lines = pier.wait_log("client error: invalid packet", 2);
    for (line, uuid) in lines.iter().zip(&uuids) {
        assert!(
            line.contains(&format!("conn{{server=s uuid={uuid}}}")),
            "{line}"
        );
    }
    let listening = pier.wait_log(" listening", 1).remove(0);
    assert!(!listening.contains("conn{"), "{listening}");
    pier.stop();
}
