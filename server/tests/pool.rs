//! The pool's supervision, fairness, reset, relays and shutdown, in-process with the Rust test
//! worker (`src/bin/test_worker.rs`): real sockets on 127.0.0.1:0, real worker processes.
//! Every wait is bounded (support::HANG, or a bounded poll).

mod support;

use std::time::{Duration, Instant};

use support::{eventually, test_worker, yaml, Client, Harness};

const ONE: &str = "    s:\n      addr: 127.0.0.1:0\n";

fn pool(workers: usize, extra: &str) -> String {
    format!("    num_workers: {workers}\n{extra}")
}

/// `n` connections to server `s`, each past the test worker's greeting.
async fn greeted(h: &Harness, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut c = h.connect("s").await;
        c.hello().await;
        clients.push(c);
    }
    clients
}

/// SIGKILL to a worker, from outside, as an OOM killer or an operator would.
fn sigkill(pid: u32) {
    // SAFETY: kill(2) takes plain integers; the pid is a live worker of the pool under test.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_idle_is_replaced_with_no_traffic_at_all() {
    let mut h = Harness::rust(ONE, &pool(2, "")).await;
    let before = h.wait_workers(2).await;
    sigkill(before[0]);
    // Noticed by its reaper, not by an event: nobody sends anything.
    eventually(
        Duration::from_secs(10),
        "the killed worker was not replaced",
        || {
            let now = h.pool.pids();
            now.len() == 2 && !now.contains(&before[0])
        },
    )
    .await;
    let mut c = h.connect("s").await;
    c.hello().await;
    assert_eq!(c.ask("x\r\n").await, "s:x");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_ttl_kills_a_hung_event_closes_its_connection_and_the_pool_heals() {
    let supervisor = "    supervisor:\n      watch_tick: 50ms\n      exec_ttl: 300ms\n";
    let mut h = Harness::rust(ONE, &pool(2, supervisor)).await;
    let mut hung = h.connect("s").await;
    let (_, _, hung_uuid) = hung.hello().await;
    let mut other = h.connect("s").await;
    other.hello().await;
    let started = Instant::now();
    hung.send("hang\r\n").await;
    // The other worker keeps serving meanwhile.
    for i in 0..5 {
        assert_eq!(other.ask(&format!("n{i}\r\n")).await, format!("s:n{i}"));
    }
    assert_eq!(
        hung.line().await,
        None,
        "the hung event's connection is closed"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Its CLOSE ran on another worker; the pool is back to two.
    eventually(
        Duration::from_secs(10),
        "no CLOSE for the hung connection",
        || {
            h.log("closes.log")
                .iter()
                .any(|l| l.starts_with(&hung_uuid))
        },
    )
    .await;
    h.wait_workers(2).await;
    assert_eq!(other.ask("after\r\n").await, "s:after");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_max_worker_memory_is_replaced_between_events() {
    let supervisor = "    supervisor:\n      watch_tick: 50ms\n      max_worker_memory: 40\n";
    let mut h = Harness::rust(ONE, &pool(1, supervisor)).await;
    let mut c = h.connect("s").await;
    c.hello().await;
    let leaker = c.ask("leak 64\r\n").await;
    eventually(Duration::from_secs(10), "the leaking worker stayed", || {
        let pids = h.pool.pids();
        pids.len() == 1 && pids[0].to_string() != leaker
    })
    .await;
    // The same connection goes on, on the replacement.
    assert_ne!(c.ask("pid\r\n").await, leaker);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ttl_and_ttl_replace_workers_while_connections_stay() {
    for limit in ["idle_ttl: 200ms", "ttl: 300ms"] {
        let supervisor = format!("    supervisor:\n      watch_tick: 50ms\n      {limit}\n");
        let mut h = Harness::rust(ONE, &pool(1, &supervisor)).await;
        let mut c = h.connect("s").await;
        c.hello().await;
        let first = c.ask("pid\r\n").await;
        eventually(Duration::from_secs(10), limit, || {
            let pids = h.pool.pids();
            pids.len() == 1 && pids[0].to_string() != first
        })
        .await;
        assert_ne!(c.ask("pid\r\n").await, first, "{limit}");
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_events_get_the_worker_in_arrival_order() {
    let mut h = Harness::rust(ONE, &pool(1, "")).await;
    let mut busy = h.connect("s").await;
    busy.hello().await;
    let mut waiting = greeted(&h, 6).await;
    busy.send("sleep 400\r\n").await;
    support::wait_for_marker(&h, "sleeping").await;
    // Each arrives while the only worker is busy, once the one before it waits in pier.
    for (i, c) in waiting.iter_mut().enumerate() {
        c.send(format!("w{i}\r\n")).await;
        eventually(support::HANG, "the event never waited", || {
            h.pool.stats().waiting == i + 1
        })
        .await;
    }
    let answers = waiting.into_iter().enumerate().map(|(i, mut c)| {
        tokio::spawn(async move {
            assert_eq!(c.line().await.unwrap(), format!("s:w{i}"));
            Instant::now()
        })
    });
    let mut at = Vec::new();
    for a in answers {
        at.push(a.await.unwrap());
    }
    assert_eq!(busy.line().await.unwrap(), "slept");
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "answers came out of arrival order"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_queue_size_an_event_fails_at_once_and_the_queued_one_is_served() {
    let mut h = Harness::rust(ONE, &pool(1, "    max_queue_size: 1\n")).await;
    let mut busy = h.connect("s").await;
    busy.hello().await;
    let mut queued = h.connect("s").await;
    queued.hello().await;
    let mut rejected = h.connect("s").await;
    rejected.hello().await;
    busy.send("sleep 600\r\n").await;
    support::wait_for_marker(&h, "sleeping").await;
    queued.send("q\r\n").await;
    eventually(support::HANG, "the first event never waited", || {
        h.pool.stats().waiting == 1
    })
    .await;
    let started = Instant::now();
    rejected.send("r\r\n").await;
    assert_eq!(rejected.line().await, None, "closed: the queue is full");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "rejected at once, not after a wait"
    );
    assert_eq!(busy.line().await.unwrap(), "slept");
    assert_eq!(queued.line().await.unwrap(), "s:q");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_a_busy_workers_line_count_as_waiting_until_their_turn() {
    let mut h = Harness::rust(ONE, &pool(1, "    max_in_flight: 16\n")).await;
    let mut busy = h.connect("s").await;
    busy.hello().await;
    let mut queued = greeted(&h, 3).await;
    busy.send("sleep 400\r\n").await;
    support::wait_for_marker(&h, "sleeping").await;
    for (i, c) in queued.iter_mut().enumerate() {
        c.send(format!("q{i}\r\n")).await;
    }
    // Written behind the sleeping event, they wait for the worker: /ready, the gauge and the
    // stats see them.
    eventually(
        Duration::from_secs(5),
        "3 events waiting in the line",
        || h.pool.snapshot().waiting == 3 && h.pool.stats().waiting == 3,
    )
    .await;
    assert_eq!(busy.line().await.unwrap(), "slept");
    for (i, c) in queued.iter_mut().enumerate() {
        assert_eq!(c.line().await.unwrap(), format!("s:q{i}"));
    }
    eventually(Duration::from_secs(5), "nothing waiting any more", || {
        h.pool.snapshot().waiting == 0 && h.pool.stats().waiting == 0
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamic_allocator_adds_workers_while_events_wait_and_stops_them_when_idle() {
    let extra = "    supervisor:\n      watch_tick: 50ms\n    dynamic_allocator:\n      max_workers: 2\n      spawn_rate: 2\n      idle_timeout: 300ms\n";
    let mut h = Harness::rust(ONE, &pool(1, extra)).await;
    let mut busy = h.connect("s").await;
    busy.hello().await;
    busy.send("sleep 3000\r\n").await;
    support::wait_for_marker(&h, "sleeping").await;
    let started = Instant::now();
    // Its CONNECTED waits for a worker: extras are started for it.
    let mut late = h.connect("s").await;
    late.hello().await;
    assert_eq!(late.ask("x\r\n").await, "s:x");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "served by an extra worker, not after the busy one"
    );
    // spawn_rate 2: both extras start (the second may still be starting when `late` is served).
    h.wait_workers(3).await;
    assert_eq!(busy.line().await.unwrap(), "slept");
    // No event waited for idle_timeout: back to num_workers.
    h.wait_workers(1).await;
    assert_eq!(late.ask("y\r\n").await, "s:y");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_reset_replaces_every_worker_under_load_and_no_event_fails() {
    let mut h = Harness::rust(ONE, &pool(3, "")).await;
    let before = h.wait_workers(3).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..8 {
        let mut c = h.connect("s").await;
        c.hello().await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                // A slow event now and then: the reset must wait for it, not break it.
                let packet = if n % 7 == i % 7 { "sleep 30" } else { "x" };
                let answer = c.ask(&format!("{packet}\r\n")).await;
                assert!(answer == "slept" || answer == "s:x", "{answer}");
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let replaced = h.pool.reset().await.expect("reset completes");
    assert_eq!(replaced, 3);
    let after = h.wait_workers(3).await;
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} → {after:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for l in load {
        served += l.await.expect("every event of every connection answered");
    }
    assert!(served > 8, "{served}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_tcp_and_unix_socket_relays_serve_like_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("relay.sock");
    for relay in [
        "tcp://127.0.0.1:0".to_owned(),
        format!("unix://{}", sock.display()),
    ] {
        let work = tempfile::tempdir().unwrap();
        let server_keys = format!("  relay: {relay:?}\n  relay_timeout: 10s\n");
        let text = yaml(
            work.path(),
            &[&test_worker()],
            ONE,
            &pool(2, ""),
            &server_keys,
        );
        let mut h = Harness::start(work, &text).await;
        let mut c = h.connect("s").await;
        c.hello().await;
        assert_eq!(c.ask("over the relay\r\n").await, "s:over the relay");
        // A crash over a socket relay is noticed and replaced too.
        let victim = h.wait_workers(2).await[0];
        sigkill(victim);
        eventually(Duration::from_secs(10), "not replaced", || {
            let pids = h.pool.pids();
            pids.len() == 2 && !pids.contains(&victim)
        })
        .await;
        assert_eq!(c.ask("again\r\n").await, "s:again", "{relay}");
        h.shutdown().await;
    }
    assert!(
        !sock.exists(),
        "the unix relay socket is removed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_runs_every_packet_already_received_then_closes() {
    let mut h = Harness::rust(ONE, &pool(1, "")).await;
    let mut busy = h.connect("s").await;
    let (_, _, busy_uuid) = busy.hello().await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = h.connect("s").await;
        let (_, _, uuid) = c.hello().await;
        clients.push((c, uuid));
    }
    busy.send("sleep 500\r\n").await;
    support::wait_for_marker(&h, "sleeping").await;
    // Sent while the only worker is busy; some pipelined: all reach pier before the shutdown.
    for (i, (c, _)) in clients.iter_mut().enumerate() {
        c.send(format!("a{i}\r\nb{i}\r\n")).await;
    }
    // Each connection's first packet waits for the worker (its second waits behind it, read).
    eventually(support::HANG, "the packets never reached pier", || {
        h.pool.stats().waiting == 5
    })
    .await;
    let stopping = async {
        h.shutdown().await;
    };
    let reading = async {
        assert_eq!(busy.line().await.unwrap(), "slept");
        assert_eq!(busy.line().await, None);
        let mut uuids = vec![busy_uuid.clone()];
        for (i, (c, uuid)) in clients.iter_mut().enumerate() {
            assert_eq!(c.line().await.unwrap(), format!("s:a{i}"));
            assert_eq!(c.line().await.unwrap(), format!("s:b{i}"));
            assert_eq!(c.line().await, None, "closed after its replies");
            uuids.push(uuid.clone());
        }
        uuids
    };
    let ((), uuids) = tokio::join!(stopping, reading);
    let closes = h.log("closes.log");
    for uuid in uuids {
        assert_eq!(
            closes.iter().filter(|l| l.starts_with(&uuid)).count(),
            1,
            "one CLOSE for {uuid}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_init_runs_before_the_workers_with_its_env() {
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("init-ran");
    let server_keys = format!(
        "  on_init:\n    command: [\"sh\", \"-c\", \"env > {}\"]\n    exec_timeout: 10s\n    env:\n      GREETING: hello\n",
        marker.display()
    );
    let text = yaml(
        work.path(),
        &[&test_worker()],
        ONE,
        &pool(1, ""),
        &server_keys,
    );
    let mut h = Harness::start(work, &text).await;
    let env = std::fs::read_to_string(&marker).expect("on_init ran before the server started");
    assert!(env.lines().any(|l| l == "GREETING=hello"), "{env}");
    let mut c: Client = h.connect("s").await;
    c.hello().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_user_runs_workers_as_that_user_when_pier_is_root() {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let work = tempfile::tempdir().unwrap();
    let text = yaml(
        work.path(),
        &[&test_worker()],
        ONE,
        &pool(1, ""),
        "  user: nobody\n",
    );
    if !root {
        let err = pier_server::config::Config::parse(&text, &[], &|_| None).unwrap_err();
        assert!(err.to_string().contains("not root"), "{err}");
        return;
    }
    // The worker writes its markers as nobody.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut h = Harness::start(work, &text).await;
    let mut c = h.connect("s").await;
    c.hello().await;
    let pid = c.ask("pid\r\n").await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let nobody = uid_line.split_whitespace().nth(1).unwrap();
    assert_ne!(nobody, "0", "{uid_line}");
    h.shutdown().await;
}

/// Events that come together to an idle worker reach it in one relay write: the first of them does
/// not go out alone (which would wake the worker for it alone) but waits until the others ready in
/// the same turn of the scheduler have joined its line. One thread (`current_thread`): the test's
/// clients write every packet before the runtime runs pier's connections, which then all find
/// their packets in one poll of the reactor. The test worker logs the frames of each of its reads.
#[tokio::test(flavor = "current_thread")]
async fn events_ready_together_reach_an_idle_worker_in_one_write() {
    const CLIENTS: usize = 6;
    let mut h = Harness::rust_env(
        ONE,
        &pool(1, "    max_in_flight: 16\n"),
        "    TW_READS: 1\n",
    )
    .await;
    let mut clients = greeted(&h, CLIENTS).await;
    let log = h.dir.path().join("reads.log");
    let reads = || -> Vec<usize> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    for round in 0..3 {
        // The worker is idle: every answer of the last round is in, and it logged that read (it
        // logs a read's count before it answers the read's last frame).
        let before = reads();
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(format!("r{round}c{i}\r\n")).await;
        }
        for (i, c) in clients.iter_mut().enumerate() {
            assert_eq!(c.line().await.unwrap(), format!("s:r{round}c{i}"));
        }
        // Logged before the answers went out; still waited for (bounded), should a file write lag.
        let mut after = reads();
        let deadline = Instant::now() + Duration::from_secs(5);
        while after.iter().skip(before.len()).sum::<usize>() < CLIENTS && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            after = reads();
        }
        assert_eq!(
            after[before.len()..],
            [CLIENTS],
            "round {round}: frames per read of the worker"
        );
    }
    h.shutdown().await;
}

/// Server `s` on the Rust test worker with `pool`, and metrics on.
async fn metered(pool: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let text =
        yaml(dir.path(), &[&test_worker()], ONE, pool, "") + "metrics:\n  address: 127.0.0.1:0\n";
    Harness::start(dir, &text).await
}

/// `pier_answers_delivered_total` now: answers the reader of a worker's answers wrote to their
/// clients itself, without waking their connections' tasks.
async fn delivered(h: &Harness) -> f64 {
    let (code, body) = h.http_get("metrics", "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("pier_answers_delivered_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pier_answers_delivered_total in {body}"))
}

/// Waits until `n` events wait in the worker's line (so that the next one joins behind them).
async fn waiting(h: &Harness, n: usize) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} events waiting"),
        || h.pool.stats().waiting == n,
    )
    .await;
}

/// Events that wait in a busy worker's line, from connections that wait for nothing else, get
/// their plain answers written by whoever reads the worker's answers (the counter says so; without
/// it their tasks are woken and write them): each in its own connection's order, a connection's
/// own pushes still before its reply (its answer is not plain: its task writes it), a pipelined
/// client's answers in order (its task has packets to run: it is woken as before). One thread:
/// the clients' packets are all written before pier's tasks run, so they join one line.
#[tokio::test(flavor = "current_thread")]
async fn plain_answers_in_a_line_are_written_without_waking_their_connections_in_order() {
    const CLIENTS: usize = 6;
    let mut h = metered(&pool(1, "    max_in_flight: 32\n")).await;
    let mut clients = greeted(&h, CLIENTS).await;
    // Bounded: the worker answers each event with a write of its own, so a read of pier's may
    // bring one answer only; within a few rounds one brings several.
    let mut round = 0;
    while delivered(&h).await == 0.0 {
        assert!(
            round < 50,
            "no answer delivered by the worker's reader in {round} rounds"
        );
        for (i, c) in clients.iter_mut().enumerate() {
            match i {
                2 => c.send("self 2\r\n").await,
                5 => {
                    c.send(format!("r{round}a\r\nr{round}b\r\nr{round}c\r\n"))
                        .await
                }
                _ => c.send(format!("r{round}c{i}\r\n")).await,
            }
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let want: Vec<String> = match i {
                2 => vec!["self 0".into(), "self 1".into(), "reply".into()],
                5 => ["a", "b", "c"]
                    .iter()
                    .map(|p| format!("s:r{round}{p}"))
                    .collect(),
                _ => vec![format!("s:r{round}c{i}")],
            };
            for want in want {
                assert_eq!(c.line().await.unwrap(), want, "round {round}, client {i}");
            }
        }
        round += 1;
    }
    // Every connection still runs its next event as usual.
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.ask(&format!("after{i}\r\n")).await, format!("s:after{i}"));
    }
    h.shutdown().await;
}

/// A worker that crashes with answered events behind the one being answered: those answered
/// before the crash reach their clients (delivered or not) and their connections go on; the event
/// it crashed on and the one behind it fail, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_behind_answered_events_in_a_line_fails_only_the_events_from_the_crash_on() {
    let mut h = Harness::rust(ONE, &pool(1, "    max_in_flight: 16\n")).await;
    let mut busy = h.connect("s").await;
    busy.hello().await;
    let mut line = greeted(&h, 5).await;
    busy.send("sleep 300\r\n").await;
    support::wait_for_marker(&h, "sleeping").await;
    // In this order in the line: three plain events, the crash, one behind it.
    for (i, c) in line.iter_mut().enumerate() {
        c.send(if i == 3 {
            "crash\r\n".to_owned()
        } else {
            format!("p{i}\r\n")
        })
        .await;
        waiting(&h, i + 1).await;
    }
    assert_eq!(busy.line().await.unwrap(), "slept");
    for (i, c) in line.iter_mut().enumerate().take(3) {
        assert_eq!(c.line().await.unwrap(), format!("s:p{i}"));
    }
    // Failed: the connection closes (no reply).
    assert_eq!(line[3].line().await, None);
    assert_eq!(line[4].line().await, None);
    // The three go on, on the worker that replaced the crashed one.
    for (i, c) in line.iter_mut().enumerate().take(3) {
        assert_eq!(c.ask(&format!("again{i}\r\n")).await, format!("s:again{i}"));
    }
    h.shutdown().await;
}

/// A client that does not read while its event waits in a line: its large answer, written by
/// whoever reads the worker's answers or by its own task, fills its socket; the rest is queued
/// and goes out as the client reads, whole and before its next answer, and the events behind it
/// are answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_in_a_line_to_a_client_not_reading_is_queued_and_written_whole() {
    const SIZE: usize = 8_000_000;
    let mut h = Harness::rust(ONE, &pool(1, "    max_in_flight: 16\n")).await;
    let mut busy = h.connect("s").await;
    busy.hello().await;
    let mut slow = h.connect("s").await;
    slow.hello().await;
    let mut next = h.connect("s").await;
    next.hello().await;
    busy.send("sleep 300\r\n").await;
    support::wait_for_marker(&h, "sleeping").await;
    slow.send(format!("fill R {SIZE}\r\n")).await;
    waiting(&h, 1).await;
    next.send("behind\r\n").await;
    waiting(&h, 2).await;
    assert_eq!(busy.line().await.unwrap(), "slept");
    assert_eq!(next.line().await.unwrap(), "s:behind");
    let line = slow.line().await.unwrap();
    assert_eq!(line.len(), SIZE - 1);
    assert!(line.bytes().all(|b| b == b'R'));
    assert_eq!(slow.ask("again\r\n").await, "s:again");
    h.shutdown().await;
}

/// `pier_replies_held_total` now (every server): replies held back to leave in one write with
/// their connection's next reply.
async fn held(h: &Harness) -> f64 {
    let (code, body) = h.http_get("metrics", "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("pier_replies_held_total"))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| panic!("no pier_replies_held_total in {body}"))
}

/// A pipelining client (several packets in one write): a reply whose connection has its next
/// packet read already is held back to leave with the next reply, in one write (the counter says
/// so; without it each reply is written alone). Order stays: the replies in packet order, and a
/// push the worker makes for its own connection while a reply is held goes out after the held
/// reply and before the reply of the event that pushed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_a_pipelined_burst_are_held_to_leave_together_in_order_with_pushes() {
    let mut h = metered(&pool(1, "")).await;
    let mut c = greeted(&h, 1).await.remove(0);
    assert_eq!(held(&h).await, 0.0);
    // Bounded: the burst is one write and normally one read of pier's; if the kernel split
    // it, a later round holds.
    let mut round = 0;
    while held(&h).await == 0.0 {
        assert!(round < 20, "no reply held in {round} rounds");
        c.send(format!("a{round}\r\nself 2\r\nb{round}\r\nc{round}\r\n"))
            .await;
        let want = [
            format!("s:a{round}"),
            "self 0".into(),
            "self 1".into(),
            "reply".into(),
            format!("s:b{round}"),
            format!("s:c{round}"),
        ];
        for want in want {
            assert_eq!(c.line().await.unwrap(), want, "round {round}");
        }
        round += 1;
    }
    // One packet at a time: nothing is held, and the connection goes on as usual.
    let before = held(&h).await;
    for i in 0..3 {
        assert_eq!(c.ask(&format!("one{i}\r\n")).await, format!("s:one{i}"));
    }
    assert_eq!(held(&h).await, before);
    h.shutdown().await;
}

/// A held reply does not wait for a slow event behind it: the event runs on an idle worker (it
/// does not wait for a turn in a line), so the reply held for it goes out as it starts, seconds
/// before its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_reply_goes_out_while_the_slow_event_behind_it_runs() {
    let mut h = metered(&pool(1, "")).await;
    let mut c = greeted(&h, 1).await.remove(0);
    // Bounded as above; each round's slow event takes 4 s, the held reply must come within 2.
    let mut round = 0;
    loop {
        assert!(round < 5, "no reply held in {round} rounds");
        c.send(format!("fast{round}\r\nsleep 4000\r\n")).await;
        support::wait_for_marker(&h, "sleeping").await;
        let fast = tokio::time::timeout(Duration::from_secs(2), c.line())
            .await
            .expect("the held reply while the slow event runs");
        assert_eq!(fast.unwrap(), format!("s:fast{round}"));
        assert_eq!(c.line().await.unwrap(), "slept");
        std::fs::remove_file(h.dir.path().join("sleeping")).unwrap();
        if held(&h).await > 0.0 {
            break;
        }
        round += 1;
    }
    assert_eq!(c.ask("after\r\n").await, "s:after");
    h.shutdown().await;
}

/// A reply held while the next event waits in a worker's line, and that event's answer pushes to
/// its own connection: the push goes out after the held reply and before the pushing event's
/// reply, as it would without holding. The line: a pipelining client of slow events keeps the
/// worker busy, so that each event of the other client waits for its turn behind one of them.
/// One thread: the busy client's next event joins the line (in the same poll as its answer)
/// before the other client's task runs, so the pushing event surely waits behind it.
#[tokio::test(flavor = "current_thread")]
async fn a_push_made_while_a_reply_is_held_goes_out_after_it_and_before_the_next_reply() {
    let mut h = metered(&pool(1, "    max_in_flight: 16\n")).await;
    let mut clients = greeted(&h, 2).await;
    let (busy, c) = clients.split_at_mut(1);
    let (busy, c) = (&mut busy[0], &mut c[0]);
    // A few rounds: which event waits behind which depends on the threads' timing.
    for round in 0..3 {
        busy.send("sleep 200\r\nsleep 200\r\nsleep 200\r\n").await;
        support::wait_for_marker(&h, "sleeping").await;
        c.send(format!("a{round}\r\nself 2\r\nb{round}\r\n")).await;
        let want = [
            format!("s:a{round}"),
            "self 0".into(),
            "self 1".into(),
            "reply".into(),
            format!("s:b{round}"),
        ];
        for want in want {
            assert_eq!(c.line().await.unwrap(), want, "round {round}");
        }
        for _ in 0..3 {
            assert_eq!(busy.line().await.unwrap(), "slept");
        }
        std::fs::remove_file(h.dir.path().join("sleeping")).unwrap();
    }
    assert!(held(&h).await > 0.0);
    h.shutdown().await;
}
