//! The fault suite: the real `pier serve` (tests/faults/.rr.yaml) with PHP workers that misbehave on
//! purpose (tests/faults/worker.php), asserting what a client sees. Loopback only; every loop is
//! bounded in count and time; the whole file runs in well under a minute.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pier_e2e::{fresh_dir, raise_fd_limit, Pier, StartOptions, WorkerImpl};

const CONFIG: &str = "tests/faults/.rr.yaml";
/// Bound of every wait for pier to reach a state (never a timing assertion).
const LIMIT: Duration = Duration::from_secs(20);

/// Starts pier with the fault worker on `worker`, `overrides` applied; its workers log CLOSE
/// events to `<dir>/closes.log`.
fn start(worker: WorkerImpl, overrides: &[&str]) -> (Pier, PathBuf) {
    let (pier, dir) = start_quiet(worker, overrides);
    // Listening starts before the pool has started: one greeting means the workers are up.
    drop(Conn::open(&pier));
    (pier, dir)
}

/// [`start`] without the greeting: ready once pier has logged that its pool started (every worker
/// past its handshake), with no connection whose `CLOSE` may still be running on a worker.
fn start_quiet(worker: WorkerImpl, overrides: &[&str]) -> (Pier, PathBuf) {
    let dir = fresh_dir("faults").expect("a scratch directory");
    let env = format!("server.env.FAULTS_DIR={}", dir.display());
    let mut all = vec![env.as_str()];
    all.extend_from_slice(overrides);
    let options = StartOptions {
        overrides: &all,
        ..StartOptions::default()
    };
    let pier = Pier::start_with(CONFIG, &["faults"], worker, &[], options)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        pier.wait_for_output("worker pool started", LIMIT),
        "{}",
        pier.output()
    );
    (pier, dir)
}

/// Polls `done` every 20 ms for at most [`LIMIT`]; panics with `what` and pier's output if it
/// never holds.
fn eventually(pier: &Pier, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}; pier's output:\n{}",
            pier.output()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn closes(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("closes.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) takes plain integers; `pid` is one of pier's workers, read from /proc just
    // before (if it exited meanwhile the call fails harmlessly: pier's reaper has not reused it).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// A line client.
struct Conn {
    /// Buffered reads of the connection.
    reader: BufReader<TcpStream>,
    /// The connection id the worker greeted us with.
    uuid: String,
}

impl Conn {
    /// Connects and reads the greeting (`hi <uuid>`).
    fn open(pier: &Pier) -> Conn {
        let stream = pier.connect("faults").expect("connect");
        let mut conn = Conn {
            reader: BufReader::new(stream),
            uuid: String::new(),
        };
        let hi = conn.line().expect("a greeting");
        conn.uuid = hi.strip_prefix("hi ").expect("hi <uuid>").to_owned();
        conn
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(line.as_bytes())?;
        stream.write_all(b"\n")
    }

    /// The next line, `None` at EOF or on a reset.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                assert!(line.ends_with('\n'), "partial line {line:?}");
                line.pop();
                Some(line)
            }
        }
    }

    fn ask(&mut self, line: &str) -> Option<String> {
        self.send(line).ok()?;
        self.line()
    }
}

/// Percentile `p` (0..=100) of sorted durations.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// One event per worker at a time (`max_in_flight: 1`): each kill fails at most the one event its
/// worker was running.
#[test]
fn sigkill_of_random_workers_under_load_closes_only_the_connections_in_flight() {
    kill_storm(WorkerImpl::Extension, 1);
}

/// 50 busy connections on 4 workers with several events in flight per worker: a kill fails at
/// most the events its worker had in flight, every other answer reaches its own connection in
/// order, and each closed connection gets its CLOSE on another worker.
#[test]
fn sigkill_with_several_events_in_flight_fails_at_most_those_events() {
    kill_storm(WorkerImpl::Extension, 4);
}

/// The same with the pure-PHP package, which reads the events in flight together and answers them
/// in one write (the default `max_in_flight`).
#[test]
fn sigkill_with_events_in_flight_on_the_pure_php_package_fails_at_most_those_events() {
    kill_storm(WorkerImpl::Package, 16);
}

/// A CLOSE waiting in a worker's line when that worker is killed runs on another worker: the PHP
/// code sees the CLOSE of every connection it saw open (the kill storms above depend on it).
#[test]
fn a_close_waiting_behind_a_killed_worker_runs_on_another() {
    let (pier, dir) = start(
        WorkerImpl::Extension,
        &["tcp.pool.num_workers=1", "tcp.pool.max_in_flight=16"],
    );
    eventually(&pier, "1 worker", || pier.worker_pids().len() == 1);
    let pid = pier.worker_pids()[0];
    let mut busy = Conn::open(&pier);
    let leaving = Conn::open(&pier);
    let leaving_uuid = leaving.uuid.clone();
    busy.send("sleep 3000 busy").expect("send");
    // The sleep has started; the client that leaves now gets its CLOSE into the busy worker's
    // line behind it (an event joins a line during the first 500 ms of the one running).
    thread::sleep(Duration::from_millis(100));
    drop(leaving);
    thread::sleep(Duration::from_millis(100));
    sigkill(pid);
    // The event that was running is lost with its worker: its connection is closed.
    assert_eq!(busy.line(), None);
    eventually(&pier, "both CLOSEs on the new worker", || {
        let closes = closes(&dir);
        closes.contains(&leaving_uuid) && closes.contains(&busy.uuid)
    });
    eventually(&pier, "the retry logged", || {
        pier.output().contains("CLOSE lost with its worker")
    });
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

/// 20 SIGKILLs of random workers, 100 ms apart, under 50 connections asking in a loop.
fn kill_storm(worker: WorkerImpl, max_in_flight: usize) {
    let in_flight = format!("tcp.pool.max_in_flight={max_in_flight}");
    let (pier, dir) = start(worker, &[&in_flight]);
    eventually(&pier, "4 workers", || pier.worker_pids().len() == 4);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..50 {
        let mut conn = Conn::open(&pier);
        let stop = stop.clone();
        clients.push(thread::spawn(move || {
            // (requests answered, whether the connection was closed under it, its id)
            let mut answered = 0u32;
            for n in 0..2000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let want = format!("sleep 2 c{c}n{n}");
                match conn.ask(&want) {
                    Some(reply) => {
                        let tag = reply.rsplit(' ').next().unwrap_or("").to_owned();
                        assert_eq!(tag, format!("c{c}n{n}"), "a reply for another request");
                        answered += 1;
                    }
                    None => {
                        // Closed: nothing more may come on it.
                        assert_eq!(conn.line(), None);
                        return (answered, true, conn.uuid);
                    }
                }
            }
            (answered, false, conn.uuid)
        }));
    }
    let mut kills = 0;
    let mut seed = 0x2545_f491_u64;
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(100));
        let pids = pier.worker_pids();
        if pids.is_empty() {
            continue;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        sigkill(pids[(seed % pids.len() as u64) as usize]);
        kills += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut closed = Vec::new();
    let mut answered = 0;
    for client in clients {
        let (n, was_closed, uuid) = client.join().expect("no reply was wrong");
        answered += n;
        if was_closed {
            closed.push(uuid);
        }
    }
    // Each kill fails at most the events its worker had in flight.
    assert!(
        closed.len() <= kills * max_in_flight,
        "{} connections closed by {kills} kills with {max_in_flight} in flight per worker",
        closed.len()
    );
    assert!(answered > 100, "only {answered} replies under the kills");
    eventually(&pier, "a CLOSE for each closed connection", || {
        let closes = closes(&dir);
        closed.iter().all(|uuid| closes.contains(uuid))
    });
    // Back to full size, and serving.
    eventually(&pier, "the pool back to 4 workers", || {
        pier.worker_pids().len() == 4
    });
    let mut fresh = Conn::open(&pier);
    assert_eq!(
        fresh.ask("after the storm").as_deref(),
        Some("after the storm")
    );
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

/// 30 connections asking in a loop on one worker: several events in flight on it, every answer
/// reaches its own connection in order, and `max_jobs` still counts exactly (no worker answers
/// more events than that; none is lost when it is replaced).
#[test]
fn events_in_flight_on_one_worker_are_answered_in_order_within_max_jobs() {
    const MAX_JOBS: usize = 25;
    let (pier, _dir) = start(
        WorkerImpl::Extension,
        &[
            "tcp.pool.num_workers=1",
            "tcp.pool.max_jobs=25",
            "tcp.pool.max_in_flight=16",
        ],
    );
    let clients: Vec<_> = (0..30)
        .map(|c| {
            let mut conn = Conn::open(&pier);
            thread::spawn(move || {
                let mut pids = Vec::new();
                for n in 0..10 {
                    let tag = format!("c{c}n{n}");
                    let reply = conn
                        .ask(&format!("sleep 1 {tag}"))
                        .unwrap_or_else(|| panic!("request {tag} failed"));
                    let mut words = reply.split(' ');
                    assert_eq!(words.next(), Some("slept"), "{reply}");
                    pids.push(words.next().unwrap_or("").to_owned());
                    assert_eq!(
                        words.next(),
                        Some(tag.as_str()),
                        "a reply for another request"
                    );
                }
                pids
            })
        })
        .collect();
    let mut per_pid = std::collections::HashMap::<String, usize>::new();
    for client in clients {
        for pid in client.join().expect("every request answered in order") {
            *per_pid.entry(pid).or_default() += 1;
        }
    }
    // CONNECTED and CLOSE events count too: DATA answers alone stay within max_jobs.
    for (pid, n) in &per_pid {
        assert!(
            n <= &MAX_JOBS,
            "worker {pid} answered {n} events (max_jobs {MAX_JOBS})"
        );
    }
    assert!(per_pid.len() >= 300 / MAX_JOBS, "{per_pid:?}");
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

/// A worker asks to stop with events in flight behind that event: that event and the ones behind
/// it run on its replacement; no connection notices.
#[test]
fn a_stop_reply_with_events_in_flight_behind_it_reruns_them_all() {
    let (pier, _dir) = start(
        WorkerImpl::Extension,
        &["tcp.pool.num_workers=1", "tcp.pool.max_in_flight=16"],
    );
    let mut first = Conn::open(&pier);
    let mut stopper = Conn::open(&pier);
    let mut behind: Vec<Conn> = (0..4).map(|_| Conn::open(&pier)).collect();
    let pid = first.ask("pid").expect("answered");
    // While the worker sleeps, the stop request and four more events join its line.
    first.send("sleep 300 a").unwrap();
    thread::sleep(Duration::from_millis(50));
    stopper.send("stoponce").unwrap();
    thread::sleep(Duration::from_millis(20));
    for (i, conn) in behind.iter_mut().enumerate() {
        conn.send(&format!("sleep 1 b{i}")).unwrap();
    }
    assert_eq!(first.line(), Some(format!("slept {pid} a")));
    let resumed = stopper.line().expect("the stopping event was re-run");
    assert!(
        resumed.starts_with("resumed ") && resumed != format!("resumed {pid}"),
        "{resumed}"
    );
    for (i, conn) in behind.iter_mut().enumerate() {
        let reply = conn.line().expect("an event behind the stop was answered");
        assert!(reply.ends_with(&format!(" b{i}")), "{reply}");
    }
    assert!(
        pier.wait_for_output("worker asked to stop", LIMIT),
        "{}",
        pier.output()
    );
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

/// A worker killed at exec_ttl with events in flight behind the hung one: each of their
/// connections is closed and gets its CLOSE on the replacement, which serves new ones.
#[test]
fn exec_ttl_with_events_in_flight_closes_each_of_their_connections() {
    let (pier, dir) = start(
        WorkerImpl::Extension,
        &[
            "tcp.pool.num_workers=1",
            "tcp.pool.max_in_flight=16",
            "tcp.pool.supervisor.exec_ttl=500ms",
        ],
    );
    let mut hung = Conn::open(&pier);
    let mut behind: Vec<Conn> = (0..3).map(|_| Conn::open(&pier)).collect();
    hung.send("hang").unwrap();
    // Within the 500 ms after which a worker on one event takes no more.
    thread::sleep(Duration::from_millis(50));
    for conn in &mut behind {
        conn.send("queued").unwrap();
    }
    assert_eq!(hung.line(), None, "the hung connection is closed");
    for conn in &mut behind {
        assert_eq!(conn.line(), None, "in flight on the killed worker: closed");
    }
    eventually(&pier, "a CLOSE for each of the 4 connections", || {
        let closes = closes(&dir);
        closes.contains(&hung.uuid) && behind.iter().all(|c| closes.contains(&c.uuid))
    });
    let mut fresh = Conn::open(&pier);
    assert_eq!(fresh.ask("after").as_deref(), Some("after"));
    assert!(
        pier.wait_for_output("failed with this event in flight", LIMIT),
        "{}",
        pier.output()
    );
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

/// `max_queue_size` bounds the events waiting for the one busy worker, those written behind its
/// event (its line) included: one more fails at once, the waiting ones are answered in order.
/// On the pure-PHP package, which answers the events of its line together.
#[test]
fn max_queue_size_counts_the_events_in_a_busy_workers_line() {
    let (pier, dir) = start(
        WorkerImpl::Package,
        &[
            "tcp.pool.num_workers=1",
            "tcp.pool.max_in_flight=16",
            "tcp.pool.max_queue_size=3",
        ],
    );
    let mut busy = Conn::open(&pier);
    let mut queued: Vec<Conn> = (0..3).map(|_| Conn::open(&pier)).collect();
    let mut rejected = Conn::open(&pier);
    let pid = busy.ask("pid").expect("answered");
    busy.send("sleep 400 busy").unwrap();
    thread::sleep(Duration::from_millis(50));
    for (i, conn) in queued.iter_mut().enumerate() {
        conn.send(&format!("sleep 1 q{i}")).unwrap();
        thread::sleep(Duration::from_millis(10));
    }
    let sent = Instant::now();
    rejected.send("sleep 1 r").unwrap();
    assert_eq!(rejected.line(), None, "over max_queue_size: closed");
    assert!(
        sent.elapsed() < Duration::from_millis(300),
        "rejected at once, not after the busy event: {:?}",
        sent.elapsed()
    );
    assert_eq!(busy.line(), Some(format!("slept {pid} busy")));
    for (i, conn) in queued.iter_mut().enumerate() {
        assert_eq!(conn.line(), Some(format!("slept {pid} q{i}")));
    }
    assert!(
        pier.wait_for_output("wait queue is full", LIMIT),
        "{}",
        pier.output()
    );
    eventually(&pier, "a CLOSE for the rejected connection", || {
        closes(&dir).contains(&rejected.uuid)
    });
    // Nothing waits any more: the bound is free again.
    let mut fresh = Conn::open(&pier);
    assert_eq!(fresh.ask("free again").as_deref(), Some("free again"));
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

#[test]
fn workers_killed_while_idle_are_replaced_without_any_traffic() {
    // Idle means idle: no greeting, and the harness's readiness probe (a connect, then a close:
    // CONNECTED and CLOSE on a worker) answered — its CLOSE logged, every worker back in its relay
    // read. Killed while that CLOSE ran, the workers were found dead by the event itself
    // ("exited during the event") before the idle check could.
    let (pier, dir) = start_quiet(WorkerImpl::Extension, &["tcp.pool.num_workers=3"]);
    eventually(&pier, "the readiness probe's CLOSE", || {
        !closes(&dir).is_empty()
    });
    eventually(&pier, "3 workers, each blocked reading its relay", || {
        let pids = pier.worker_pids();
        pids.len() == 3
            && pids.iter().all(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/wchan"))
                    .is_ok_and(|wchan| wchan.contains("pipe_read"))
            })
    });
    let before = pier.worker_pids();
    for &pid in &before {
        sigkill(pid);
    }
    eventually(&pier, "3 replacement workers", || {
        let now = pier.worker_pids();
        now.len() == 3 && now.iter().all(|p| !before.contains(p))
    });
    let mut conn = Conn::open(&pier);
    assert_eq!(conn.ask("x").as_deref(), Some("x"));
    // Polled, not read once: pier's log reaches the harness through a reader thread.
    assert!(
        pier.wait_for_output("worker exited while idle; replacing it", LIMIT),
        "{}",
        pier.output()
    );
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

#[test]
fn a_hanging_worker_is_killed_at_exec_ttl_and_the_others_keep_serving() {
    // One event per worker at a time: `other` is never queued behind the hung event (see
    // exec_ttl_with_events_in_flight_closes_each_of_their_connections for that).
    let (pier, dir) = start(
        WorkerImpl::Extension,
        &[
            "tcp.pool.num_workers=2",
            "tcp.pool.max_in_flight=1",
            "tcp.pool.supervisor.exec_ttl=500ms",
        ],
    );
    let mut hung = Conn::open(&pier);
    let mut other = Conn::open(&pier);
    hung.send("hang").unwrap();
    let started = Instant::now();
    let answers = thread::spawn(move || {
        for i in 0..10 {
            assert_eq!(other.ask(&format!("n{i}")), Some(format!("n{i}")));
            thread::sleep(Duration::from_millis(30));
        }
        other
    });
    assert_eq!(hung.line(), None, "the hung connection is closed");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    let mut other = answers.join().expect("the other connection was served");
    eventually(&pier, "CLOSE for the hung connection", || {
        closes(&dir).contains(&hung.uuid)
    });
    eventually(&pier, "2 workers again", || pier.worker_pids().len() == 2);
    assert_eq!(other.ask("still").as_deref(), Some("still"));
    assert!(
        pier.wait_for_output("event ran over exec_ttl", LIMIT),
        "{}",
        pier.output()
    );
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

#[test]
fn a_leaking_worker_is_replaced_between_events_and_its_connection_stays() {
    let (pier, _dir) = start(
        WorkerImpl::Extension,
        &[
            "tcp.pool.num_workers=1",
            "tcp.pool.supervisor.max_worker_memory=64",
        ],
    );
    let mut conn = Conn::open(&pier);
    let leaker = conn.ask("leak 96").expect("answered");
    eventually(&pier, "the leaking worker replaced", || {
        let pids = pier.worker_pids();
        pids.len() == 1 && pids[0].to_string() != leaker
    });
    let next = conn.ask("pid").expect("the connection stayed open");
    assert_ne!(next, leaker);
    assert!(
        pier.wait_for_output("over max_worker_memory", LIMIT),
        "{}",
        pier.output()
    );
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

#[test]
fn stray_output_from_the_pure_php_package_costs_no_connection() {
    let (pier, _dir) = start(WorkerImpl::Package, &["tcp.pool.num_workers=2"]);
    let mut conn = Conn::open(&pier);
    // `echo` during an event: the package routes it to stderr; pier logs it.
    let echoer = conn.ask("echo").expect("answered despite the echo");
    assert!(pier.wait_for_output("stray echo from the fault worker", LIMIT));
    // Raw bytes on fd 1 while idle: caught before that worker gets another event, which goes
    // to a healthy worker instead; the connection never notices.
    let noisy = conn.ask("stdout").expect("answered");
    for i in 0..10 {
        let pid = conn.ask("pid").expect("the connection stayed open");
        assert_ne!(pid, noisy, "round {i}: the noisy worker served again");
    }
    assert!(pier.wait_for_output("wrote bytes while idle", LIMIT));
    assert_ne!(echoer, "", "the echoing worker answered");
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

/// With several events in flight per worker (the default `max_in_flight`), on 2 workers.
#[test]
fn sigterm_under_load_answers_every_packet_that_reached_pier_then_closes_each_connection() {
    sigterm_drain(&["tcp.pool.num_workers=2"]);
}

/// One event per worker at a time: the others wait in pier's queue through the drain.
#[test]
fn sigterm_under_load_with_one_event_per_worker_answers_every_packet_then_closes() {
    sigterm_drain(&["tcp.pool.num_workers=2", "tcp.pool.max_in_flight=1"]);
}

/// All 20 events in flight on one worker (its line) when the signal comes: each is answered,
/// then its connection closed, and each gets one CLOSE.
#[test]
fn sigterm_with_every_event_in_flight_on_one_worker_answers_each_then_closes() {
    sigterm_drain(&["tcp.pool.num_workers=1", "tcp.pool.max_in_flight=32"]);
}

/// SIGTERM while 20 connections each wait for a 50 ms answer: every packet that reached pier is
/// answered, then each connection is closed and gets one CLOSE.
fn sigterm_drain(overrides: &[&str]) {
    let (pier, dir) = start(WorkerImpl::Extension, overrides);
    let mut conns: Vec<Conn> = (0..20).map(|_| Conn::open(&pier)).collect();
    // 20 requests of 50 ms on 2 workers: most wait, in pier or still in their socket.
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send(&format!("sleep 50 r{i}")).unwrap();
    }
    thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    pier.signal(libc::SIGTERM).unwrap();
    let readers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            thread::spawn(move || {
                let reply = conn.line();
                let after = conn.line();
                (i, reply, after, conn.uuid)
            })
        })
        .collect();
    let mut uuids = Vec::new();
    for r in readers {
        let (i, reply, after, uuid) = r.join().unwrap();
        let reply = reply.unwrap_or_else(|| panic!("request {i} got no reply"));
        assert!(reply.ends_with(&format!(" r{i}")), "{reply}");
        assert_eq!(after, None, "closed after its reply");
        uuids.push(uuid);
    }
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "within the grace period"
    );
    let closes = closes(&dir);
    for uuid in uuids {
        assert_eq!(
            closes.iter().filter(|c| **c == uuid).count(),
            1,
            "one CLOSE for {uuid}"
        );
    }
}

#[test]
fn a_rolling_reset_under_load_fails_no_event() {
    let (pier, _dir) = start(WorkerImpl::Extension, &["tcp.pool.num_workers=3"]);
    eventually(&pier, "3 workers", || pier.worker_pids().len() == 3);
    let before = pier.worker_pids();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..20)
        .map(|c| {
            let mut conn = Conn::open(&pier);
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) && n < 5000 {
                    let tag = format!("c{c}n{n}");
                    let reply = conn.ask(&format!("sleep 1 {tag}"));
                    assert!(
                        reply.as_deref().is_some_and(|r| r.ends_with(&tag)),
                        "event {tag} failed: {reply:?}"
                    );
                    n += 1;
                }
                n
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    pier.signal(libc::SIGUSR1).unwrap();
    assert!(
        pier.wait_for_output("workers reset", LIMIT),
        "{}",
        pier.output()
    );
    stop.store(true, Ordering::Relaxed);
    let served: u32 = clients
        .into_iter()
        .map(|c| c.join().expect("no event failed"))
        .sum();
    assert!(served > 20, "{served}");
    let after = pier.worker_pids();
    assert_eq!(after.len(), 3);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} → {after:?}"
    );
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

#[test]
fn a_busy_pool_serves_waiting_events_fairly() {
    let (pier, _dir) = start(WorkerImpl::Extension, &["tcp.pool.num_workers=2"]);
    const CONNS: usize = 20;
    const ROUNDS: usize = 8;
    const SERVICE: Duration = Duration::from_millis(20);
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            let mut conn = Conn::open(&pier);
            thread::spawn(move || {
                let mut waits = Vec::new();
                for n in 0..ROUNDS {
                    let sent = Instant::now();
                    let reply = conn.ask(&format!("sleep {} c{c}n{n}", SERVICE.as_millis()));
                    assert!(reply.is_some(), "request c{c}n{n} failed");
                    waits.push(sent.elapsed());
                }
                waits
            })
        })
        .collect();
    let mut all: Vec<Duration> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.sort();
    // Fair share: with every connection always waiting, each request waits for one turn of all
    // the others on the 2 workers.
    let fair = SERVICE * (CONNS as u32) / 2;
    let p99 = percentile(&all, 99);
    assert!(
        p99 <= fair * 3,
        "p99 wait {p99:?} over 3 × the fair share {fair:?} (median {:?})",
        percentile(&all, 50)
    );
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

#[test]
fn a_10_mb_line_without_delimiter_closes_only_that_connection() {
    let (pier, dir) = start(WorkerImpl::Extension, &["tcp.pool.num_workers=2"]);
    let mut bystander = Conn::open(&pier);
    let mut flood = Conn::open(&pier);
    let chunk = vec![b'a'; 64 * 1024];
    let stream = flood.reader.get_mut();
    let mut sent = 0;
    while sent < 10 << 20 {
        // pier closes the connection once the line passes max_packet_size (1 MiB): writes fail.
        if stream.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert_eq!(flood.line(), None, "closed");
    assert!(pier.wait_for_output("without a delimiter exceed max_packet_size", LIMIT));
    eventually(&pier, "CLOSE for the flooding connection", || {
        closes(&dir).contains(&flood.uuid)
    });
    assert_eq!(bystander.ask("unharmed").as_deref(), Some("unharmed"));
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}

#[test]
fn two_thousand_connects_in_a_burst_are_all_served() {
    const N: usize = 2000;
    let limit = raise_fd_limit(2 * N as u64 + 512);
    assert!(
        limit >= 2 * N as u64 + 100,
        "open-file limit {limit} too low for the test"
    );
    let (pier, dir) = start(WorkerImpl::Extension, &[]);
    let mut streams = Vec::with_capacity(N);
    for _ in 0..N {
        let stream = pier.connect("faults").expect("connect");
        streams.push(stream);
    }
    let mut uuids = HashSet::new();
    for stream in streams {
        let mut conn = Conn {
            reader: BufReader::new(stream),
            uuid: String::new(),
        };
        let hi = conn.line().expect("a greeting for every connection");
        uuids.insert(hi.strip_prefix("hi ").unwrap().to_owned());
        assert_eq!(conn.ask("ping").as_deref(), Some("ping"));
    }
    assert_eq!(uuids.len(), N, "one connection id each");
    eventually(&pier, "a CLOSE for each of the 2,000", || {
        closes(&dir).len() >= N
    });
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}\n{output}");
}
