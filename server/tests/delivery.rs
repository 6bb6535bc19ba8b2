//! The answer-delivery path under churn: whoever holds a worker writes a plain answer straight to
//! a *parked* connection's socket (`Link::deliver`, `Line::pass_on`), from another task and, on
//! the multi-thread runtime, another thread. If the rule on `Link::park_fd` had a hole, the
//! failure would be bytes of one client's answer on **another** client's socket (the kernel
//! reuses a closed descriptor's number at once), or an answer lost or written twice.
//!
//! A storm of clients, each sending lines that carry its own id and sequence number to the
//! Rust test worker (`src/bin/test_worker.rs`): plain echoes (delivered when parked), naps that
//! keep a worker busy so that the events behind it wait in its line and their connections park,
//! answers with a state and answers behind a push (the task's own path), pipelined packets,
//! CONTINUE, large answers; clients ending at random points — after their last answer, right
//! after sending (mid-wait), by RST (`SO_LINGER` 0), by a half-close, by QUIT (WRITECLOSE) or
//! CLOSE, or by RST at a random moment of a wait as long as the answers take now — and
//! connections that only read the start of their greeting and go, all the time, so that a
//! descriptor number pier frees is soon another connection's (bytes written through a stale one
//! land before a greeting: each checks its greeting names its own address). In a second round,
//! worker crashes and `exec_ttl` kills between them; `max_jobs` restarts the workers throughout;
//! at the end the server shuts down with connections parked. Every client
//! checks that every byte it reads is the next one it expects (its own, in order), and, unless a
//! crash or kill failed its event (counted against `event_failed` closes), that nothing is
//! missing before its own close; the metrics show that the delivery path ran.
//!
//! Bounded: a fixed number of sessions per round, each read guarded by `support::HANG`, each
//! round by a deadline, no new session after a failure. A failure prints the seed;
//! `DELIVERY_SEED=<n>` replays its choices (not the scheduling). What it caught and missed of
//! deliberately broken variants: bench/results/2026-12-01-race.md.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{test_worker, yaml, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ONE: &str = "    s:\n      addr: 127.0.0.1:0\n";

/// Clients connected at once.
const CLIENTS: usize = 48;
/// Sessions (connections) per round.
const SESSIONS: usize = 500;
/// Connections at once that only take their greeting and go.
const CHURNERS: usize = 6;
/// Most of them per churner and round.
const CHURNS: usize = 2000;
/// A round stops starting sessions after this long (the count above is the usual bound).
const ROUND: Duration = Duration::from_secs(6);

/// Session ids, unique in the whole binary: every line a client sends or is owed carries its own.
static IDS: AtomicU64 = AtomicU64::new(0);

/// Lines pushed by one client to another that the other read, in the whole binary.
static PUSHED: AtomicUsize = AtomicUsize::new(0);
/// How long the last answer took to come, in µs (any session): a reset at a random moment of
/// a wait is drawn from twice that.
static LATENCY: AtomicU64 = AtomicU64::new(5000);

/// A small xorshift generator: the storm's choices, replayable from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Chaos events left to spend in a round (a crash or a hung event fails its worker's whole
/// line: spent sparingly, so that most sessions still run to their end).
struct Chaos {
    crashes: AtomicUsize,
    hangs: AtomicUsize,
}

impl Chaos {
    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// How a session ended, as its client saw it.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Every answer it waited for came (or it left without waiting, by its own choice).
    AsPlanned,
    /// The server closed it before an answer it waited for: allowed only when a crash or an
    /// `exec_ttl` kill failed its event (counted against `event_failed` closes).
    ClosedEarly,
}

/// One client connection: every byte it reads is checked against the bytes it expects next.
struct Session {
    stream: TcpStream,
    /// Its name in failures: round, session number, seed.
    name: String,
    /// Every byte it is owed so far, in order.
    expected: Vec<u8>,
    /// Every byte it read of its own (lines pushed by other clients taken out).
    got: Vec<u8>,
    /// Where the byte read last left it: at a line's start, in a line of its own, in one pushed.
    at: At,
}

/// Where a session's reading is (see [`Session::take`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    LineStart,
    Own,
    Pushed,
}

impl Session {
    /// Connects and reads the greeting, which carries the connection's uuid (unknown until
    /// then: once read, it is owed). `None`: closed before it.
    async fn greeted(
        addr: std::net::SocketAddr,
        name: String,
    ) -> Result<(Session, Option<String>), String> {
        let stream = tokio::time::timeout(support::HANG, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("{name}: connect hung"))?
            .map_err(|e| format!("{name}: connect failed: {e}"))?;
        stream.set_nodelay(true).unwrap();
        let mut s = Session {
            stream,
            name,
            expected: Vec::new(),
            got: Vec::new(),
            at: At::LineStart,
        };
        let mut buf = [0u8; 256];
        while !s.got.contains(&b'\n') {
            let n = match tokio::time::timeout(support::HANG, s.stream.read(&mut buf)).await {
                Err(_) => return Err(format!("{}: no greeting", s.name)),
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
            };
            if n == 0 {
                if !s.got.is_empty() {
                    return Err(format!("{}: a partial greeting {:?}", s.name, s.got));
                }
                return Ok((s, None));
            }
            s.got.extend_from_slice(&buf[..n]);
        }
        let hello = String::from_utf8_lossy(&s.got).into_owned();
        let words: Vec<&str> = hello.trim_end().split(' ').collect();
        if words.len() != 4 || words[0] != "hello" || hello.matches('\n').count() != 1 {
            return Err(format!("{}: not its greeting: {hello:?}", s.name));
        }
        // Its own greeting: the address is its own (not another connection's greeting).
        let local = s.stream.local_addr().unwrap().to_string();
        if words[2] != local {
            return Err(format!(
                "{}: another connection's greeting: {hello:?}",
                s.name
            ));
        }
        let uuid = words[3].to_owned();
        s.expected = s.got.clone();
        Ok((s, Some(uuid)))
    }

    /// Reads until `want` bytes are in (`Ok(true)`), or EOF / a reset (`Ok(false)`), checking
    /// each byte; `Err` on a foreign or out-of-order byte or a hang.
    async fn read_to(&mut self, want: usize) -> Result<bool, String> {
        let mut buf = [0u8; 64 * 1024];
        while self.got.len() < want {
            let n = match tokio::time::timeout(support::HANG, self.stream.read(&mut buf)).await {
                Err(_) => {
                    return Err(format!(
                        "{}: no answer and no close within {:?}: {} of {} bytes read (a lost answer or a hang); last expected: {:?}",
                        self.name,
                        support::HANG,
                        self.got.len(),
                        want,
                        tail(&self.expected)
                    ))
                }
                Ok(Ok(n)) => n,
                // A reset (a crash's close with packets unread, or our own RST) reads as a close.
                Ok(Err(_)) => 0,
            };
            if n == 0 {
                return Ok(false);
            }
            self.take(&buf[..n]);
            self.check()?;
        }
        Ok(true)
    }

    /// Sorts bytes read into its own and lines other clients pushed to it. Pushes are whole
    /// chunks: one can only start where a line of its own ended, so a `~` in the middle of one
    /// of its lines stays in `got` (and fails the check).
    fn take(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.at == At::LineStart {
                self.at = if b == b'~' { At::Pushed } else { At::Own };
            }
            if self.at == At::Own {
                self.got.push(b);
            }
            if b == b'\n' {
                if self.at == At::Pushed {
                    PUSHED.fetch_add(1, Ordering::Relaxed);
                }
                self.at = At::LineStart;
            }
        }
    }

    /// Whether what was read is a prefix of what is owed.
    fn check(&self) -> Result<(), String> {
        let at = self
            .got
            .iter()
            .zip(&self.expected)
            .position(|(a, b)| a != b)
            .or((self.got.len() > self.expected.len()).then_some(self.expected.len()));
        match at {
            None => Ok(()),
            Some(at) => Err(format!(
                "{}: byte {at} is not the one expected (another client's bytes, or an answer out of order or twice): read {:?}, expected {:?}",
                self.name,
                line_at(&self.got, at),
                line_at(&self.expected, at)
            )),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ()> {
        match tokio::time::timeout(support::HANG, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            // The server closed it (a failed event); what was read so far is checked by the
            // caller's next read.
            _ => Err(()),
        }
    }

    /// Reads to EOF: nothing may come beyond what is owed.
    async fn read_to_end(&mut self) -> Result<(), String> {
        let want = self.expected.len() + 1;
        match self.read_to(want).await? {
            true => unreachable!("check() refuses a byte beyond those owed"),
            false => Ok(()),
        }
    }

    /// After its last answer: no stray byte is waiting (a late write of someone else's answer
    /// would be one).
    fn nothing_more(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 4096];
        match self.stream.try_read(&mut buf) {
            Ok(n) if n > 0 => {
                self.take(&buf[..n]);
                self.check()
            }
            _ => Ok(()),
        }
    }

    /// Closes with a reset: `SO_LINGER` 0, then the drop.
    fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

fn tail(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(80)..]).into_owned()
}

/// The line around byte `at`.
fn line_at(bytes: &[u8], at: usize) -> String {
    let at = at.min(bytes.len());
    let start = bytes[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let end = bytes[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| at + i + 1)
        .min(start + 120);
    String::from_utf8_lossy(&bytes[start..end]).into_owned()
}

/// One session: connect, greeting, a few messages, an ending; `Err` on what must not happen.
async fn session(
    addr: std::net::SocketAddr,
    rng: &mut Rng,
    name: String,
    chaos: Option<&Chaos>,
    peers: &Peers,
) -> Result<Ended, String> {
    let (mut s, uuid) = match Session::greeted(addr, name).await? {
        (s, Some(uuid)) => (s, uuid),
        // CONNECTED may fail with a line a crash ended.
        (_, None) if chaos.is_some() => return Ok(Ended::ClosedEarly),
        (s, None) => return Err(format!("{}: closed before its greeting", s.name)),
    };
    peers.add(&uuid);
    let id = s.name.rsplit(' ').next().unwrap().to_owned();
    let tag = |seq: u64| format!("{id}.{seq}");
    let messages = 1 + rng.below(10);
    let ending = rng.below(100);
    for seq in 0..messages {
        let last = seq + 1 == messages;
        let t = tag(seq);
        let (packet, answer, read) = match rng.below(100) {
            0..=49 => (format!("{t} x\r\n"), format!("s:{t} x\n"), true),
            50..=59 => {
                let ms = 1 + rng.below(15);
                (
                    format!("nap {ms} {t}\r\n"),
                    format!("s:nap {ms} {t}\n"),
                    true,
                )
            }
            60..=69 => (format!("keep {t}\r\n"), format!("s:keep {t}\n"), true),
            70..=76 => (
                format!("push {uuid} {t}p\r\n"),
                format!("{t}p\npushed\n"),
                true,
            ),
            // A push to another client (maybe parked, maybe gone), which takes it as a line
            // that is not its own.
            77..=79 => (
                format!("push {} ~{t}\r\n", peers.pick(rng)),
                "pushed\n".into(),
                true,
            ),
            80..=87 => (
                format!("{t}a\r\n{t}b\r\n"),
                format!("s:{t}a\ns:{t}b\n"),
                true,
            ),
            // CONTINUE: nothing comes; the next packet goes at once (pipelined behind it).
            88..=93 if !last => ("continue\r\n".into(), String::new(), false),
            94..=96 => {
                // Large enough that a delivery's send is sometimes short.
                let size = 1000 + rng.below(400_000) as usize;
                let mut line = "Z".repeat(size - 1);
                line.push('\n');
                (format!("fill Z {size}\r\n"), line, true)
            }
            _ => match chaos {
                Some(c) if Chaos::take(&c.crashes) => ("crash\r\n".into(), String::new(), false),
                Some(c) if rng.below(4) == 0 && Chaos::take(&c.hangs) => {
                    ("hang\r\n".into(), String::new(), false)
                }
                _ => (format!("{t} y\r\n"), format!("s:{t} y\n"), true),
            },
        };
        let failing = packet == "crash\r\n" || packet == "hang\r\n";
        s.expected.extend_from_slice(answer.as_bytes());
        if s.send(packet.as_bytes()).await.is_err() {
            s.read_to_end().await?;
            return Ok(Ended::ClosedEarly);
        }
        if failing {
            // The worker dies with this event (and fails those behind it): the connection
            // closes with no answer.
            s.read_to_end().await?;
            return Ok(Ended::AsPlanned);
        }
        if last {
            match ending {
                // Gone right after sending, mid-wait: a FIN (or a reset, when answers are unread).
                40..=54 => return Ok(Ended::AsPlanned),
                // A reset mid-wait.
                55..=61 => {
                    s.reset();
                    return Ok(Ended::AsPlanned);
                }
                // A reset at any moment of the wait (the answer may be on its way, or being
                // delivered), reading meanwhile.
                62..=77 => {
                    // Anywhere in twice the last answer's wait (under load that is tens of
                    // milliseconds, with naps ahead in the line).
                    let latency = LATENCY.load(Ordering::Relaxed);
                    let wait = Duration::from_micros(rng.below(2 * latency + 1000));
                    let want = s.expected.len();
                    if let Ok(read) = tokio::time::timeout(wait, s.read_to(want)).await {
                        read?;
                    }
                    s.reset();
                    return Ok(Ended::AsPlanned);
                }
                // A half-close: every answer still comes, then the close.
                92..=99 => {
                    let _ = s.stream.shutdown().await;
                    s.read_to_end().await?;
                    return Ok(if s.got.len() == s.expected.len() {
                        Ended::AsPlanned
                    } else {
                        Ended::ClosedEarly
                    });
                }
                _ => {}
            }
        }
        if read {
            let sent = Instant::now();
            if !s.read_to(s.expected.len()).await? {
                return Ok(Ended::ClosedEarly);
            }
            LATENCY.store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }
    match ending {
        // QUIT: WRITECLOSE "bye", then the close.
        78..=85 => {
            s.expected.extend_from_slice(b"bye\n");
            if s.send(b"quit\r\n").await.is_ok() {
                s.read_to_end().await?;
            }
        }
        // CLOSE: nothing more, then the close.
        86..=91 => {
            if s.send(b"close\r\n").await.is_ok() {
                s.read_to_end().await?;
            }
        }
        _ => {
            s.read_to(s.expected.len()).await?;
            s.nothing_more()?;
            return Ok(Ended::AsPlanned);
        }
    }
    Ok(if s.got.len() == s.expected.len() {
        Ended::AsPlanned
    } else {
        Ended::ClosedEarly
    })
}

/// The uuids of the last clients greeted, for pushes from one client to another.
#[derive(Default)]
struct Peers(Mutex<std::collections::VecDeque<String>>);

impl Peers {
    fn add(&self, uuid: &str) {
        let mut peers = self.0.lock().unwrap();
        if peers.len() == CLIENTS {
            peers.pop_front();
        }
        peers.push_back(uuid.to_owned());
    }

    fn pick(&self, rng: &mut Rng) -> String {
        let peers = self.0.lock().unwrap();
        peers[rng.below(peers.len() as u64) as usize].clone()
    }
}

/// A connection that reads for `wait` and goes (by RST when `reset`): whatever came must be the
/// start of its own greeting.
async fn churn(
    addr: std::net::SocketAddr,
    name: String,
    wait: Duration,
    reset: bool,
) -> Result<(), String> {
    let stream = tokio::time::timeout(support::HANG, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("{name}: connect hung"))?
        .map_err(|e| format!("{name}: connect failed: {e}"))?;
    let local = stream.local_addr().unwrap();
    let mut s = Session {
        stream,
        name,
        expected: format!("hello s {local} ").into_bytes(),
        got: Vec::new(),
        at: At::LineStart,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 256];
    loop {
        let n = match tokio::time::timeout_at(deadline, s.stream.read(&mut buf)).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
        };
        s.got.extend_from_slice(&buf[..n]);
        // Its address, then a uuid and the newline, and nothing after.
        let head = s.expected.len().min(s.got.len());
        let uuid = s.got.get(s.expected.len()..).unwrap_or_default();
        let ok = s.got[..head] == s.expected[..head]
            && uuid.len() <= 37
            && uuid.iter().enumerate().all(|(i, &b)| {
                if i == 36 {
                    b == b'\n'
                } else {
                    b.is_ascii_hexdigit() || b == b'-'
                }
            });
        if !ok {
            return Err(format!(
                "{}: not the start of its greeting (another client's bytes): {:?}",
                s.name,
                String::from_utf8_lossy(&s.got)
            ));
        }
    }
    if reset {
        s.reset();
    }
    Ok(())
}

/// What a round saw.
#[derive(Debug, Default)]
struct Tally {
    sessions: usize,
    /// Connections that only took their greeting.
    churned: usize,
    closed_early: usize,
    failures: Vec<String>,
}

/// Runs `SESSIONS` sessions, `CLIENTS` at a time.
async fn round(h: &Harness, label: &str, seed: u64, chaos: Option<Arc<Chaos>>) -> Tally {
    let addr = h.addrs["s"];
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let peers = Arc::new(Peers::default());
    let deadline = Instant::now() + ROUND;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (next, tally, chaos, peers) =
            (next.clone(), tally.clone(), chaos.clone(), peers.clone());
        let label = label.to_owned();
        let mut rng = Rng((seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        tasks.push(tokio::spawn(async move {
            // Stops at the first failure (the sessions in flight then end within `HANG`).
            while next.fetch_add(1, Ordering::Relaxed) < SESSIONS
                && Instant::now() < deadline
                && tally.lock().unwrap().failures.is_empty()
            {
                let id = IDS.fetch_add(1, Ordering::Relaxed);
                let name = format!("{label} seed {seed} session {id}");
                let ended = session(addr, &mut rng, name, chaos.as_deref(), &peers).await;
                let mut t = tally.lock().unwrap();
                t.sessions += 1;
                match ended {
                    Ok(Ended::AsPlanned) => {}
                    Ok(Ended::ClosedEarly) if chaos.is_some() => t.closed_early += 1,
                    Ok(Ended::ClosedEarly) => t.failures.push(format!(
                        "{label} seed {seed} session {id}: closed by the server before its answers, with no crash or kill"
                    )),
                    Err(e) => t.failures.push(e),
                }
            }
        }));
    }
    // Connections that only take their greeting and go, all the time, so that a descriptor
    // number pier frees is soon another client's: bytes still written through a stale one would
    // land before a greeting.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut churners = Vec::new();
    for churner in 0..CHURNERS {
        let (done, tally, label) = (done.clone(), tally.clone(), label.to_owned());
        let mut rng = Rng((seed ^ (churner as u64 + 1000).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        churners.push(tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) && n < CHURNS {
                n += 1;
                let id = IDS.fetch_add(1, Ordering::Relaxed);
                let name = format!("{label} seed {seed} churner {churner} session {id}");
                let wait = Duration::from_micros(rng.below(3000));
                let failure = churn(addr, name, wait, n % 2 == 0).await.err();
                let mut t = tally.lock().unwrap();
                t.churned += 1;
                if let Some(e) = failure {
                    t.failures.push(e);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client task panicked");
    }
    done.store(true, Ordering::Relaxed);
    for task in churners {
        task.await.expect("a churner panicked");
    }
    Arc::try_unwrap(tally).unwrap().into_inner().unwrap()
}

/// A counter's value from the metrics endpoint (the sum over its label sets that match).
async fn metric(h: &Harness, name: &str, labels: &str) -> f64 {
    let (code, body) = h.http_get("metrics", "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Closes and worker restarts by reason, for a failure's message.
async fn counts(h: &Harness) -> String {
    let (_, body) = h.http_get("metrics", "/metrics").await;
    body.lines()
        .filter(|l| {
            (l.starts_with("pier_connections_closed_total")
                || l.starts_with("pier_worker_restarts_total"))
                && !l.ends_with(" 0")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Clients with events in flight (parked behind a nap) when the server shuts down: each gets
/// its answers (the shutdown drain runs what reached pier) or a close, only its own bytes.
async fn shutdown_with_parked(h: &mut Harness, seed: u64) -> Vec<String> {
    let addr = h.addrs["s"];
    let mut tasks = Vec::new();
    for i in 0..24 {
        tasks.push(tokio::spawn(async move {
            let id = IDS.fetch_add(1, Ordering::Relaxed);
            let name = format!("shutdown seed {seed} session {id}");
            let (mut s, uuid) = Session::greeted(addr, name.clone()).await?;
            if uuid.is_none() {
                return Err(format!("{name}: closed before its greeting"));
            }
            let packet = if i % 3 == 0 {
                format!("nap 40 {id}.0\r\n")
            } else {
                format!("{id}.0 x\r\n")
            };
            let answer = format!("s:{}\n", packet.trim_end());
            s.expected.extend_from_slice(answer.as_bytes());
            s.send(packet.as_bytes())
                .await
                .map_err(|()| format!("{name}: send failed"))?;
            Ok::<_, String>(s)
        }));
    }
    let mut sessions = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(s) => sessions.push(s),
            Err(e) => failures.push(e),
        }
    }
    // Let the events reach their lines (and the connections park), then stop.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stop = h.shutdown();
    let reads = async {
        for s in &mut sessions {
            if let Err(e) = s.read_to_end().await {
                failures.push(e);
            }
        }
    };
    tokio::join!(stop, reads);
    failures
}

/// The storm on server `s` (`servers`: its YAML, as `ONE`).
async fn storm(flavor: &str, servers: &str) {
    let seed = std::env::var("DELIVERY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    support::raise_fd_limit();
    // pier's warnings (a worker killed, an event given up), shown with a failure.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    // Two workers, long lines, a restart every 150 events; `exec_ttl` for the hung events (1 s:
    // not reached by a nap on a loaded host, whose workers may wait for a CPU).
    let pool = "    num_workers: 2\n    max_in_flight: 32\n    max_jobs: 150\n    supervisor:\n      watch_tick: 50ms\n      exec_ttl: 1s\n";
    let text = yaml(dir.path(), &[&test_worker()], servers, pool, "")
        + "metrics:\n  address: 127.0.0.1:0\n";
    let mut h = Harness::start(dir, &text).await;
    let started = Instant::now();
    let calm = round(&h, &format!("{flavor} calm"), seed, None).await;
    let calm_time = started.elapsed();
    let delivered_calm = metric(&h, "pier_answers_delivered_total", "").await;
    let calm_counts = counts(&h).await;
    let chaos = Arc::new(Chaos {
        crashes: AtomicUsize::new(4),
        hangs: AtomicUsize::new(2),
    });
    let stormy = round(&h, &format!("{flavor} chaos"), seed, Some(chaos.clone())).await;
    let delivered = metric(&h, "pier_answers_delivered_total", "").await;
    let failed = metric(&h, "pier_connections_closed_total", "event_failed").await;
    let restarts = metric(&h, "pier_worker_restarts_total", "max_jobs").await;
    let failures = shutdown_with_parked(&mut h, seed).await;
    eprintln!(
        "{flavor} (seed {seed}): calm {} sessions (+{} greetings only) in {calm_time:?}, {delivered_calm} delivered; chaos {} sessions, {} closed early, {failed} event_failed closes, {} crashes and {} hangs unspent; {delivered} delivered in all, {restarts} max_jobs restarts, {} lines pushed by one client read by another (both tests); {:?} in all",
        calm.sessions,
        calm.churned,
        stormy.sessions,
        stormy.closed_early,
        chaos.crashes.load(Ordering::Relaxed),
        chaos.hangs.load(Ordering::Relaxed),
        PUSHED.load(Ordering::Relaxed),
        started.elapsed(),
    );
    let all: Vec<&String> = calm
        .failures
        .iter()
        .chain(&stormy.failures)
        .chain(&failures)
        .collect();
    assert!(
        all.is_empty(),
        "{} failures (seed {seed}; replay the choices with DELIVERY_SEED={seed}):\n{}\nafter the calm round: {calm_counts}",
        all.len(),
        all.iter()
            .take(10)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        // A loaded host may end a round at its deadline: a fifth still makes a storm.
        calm.sessions >= SESSIONS / 5 && stormy.sessions >= SESSIONS / 5,
        "too few sessions ran: {} and {}",
        calm.sessions,
        stormy.sessions
    );
    // Each client counted a close before its answers only where a crash or kill may have failed
    // its event; every such close is an `event_failed` one.
    assert!(
        stormy.closed_early as f64 <= failed,
        "{} sessions closed before their answers, only {failed} events failed",
        stormy.closed_early
    );
    // The path under test ran, in both rounds.
    assert!(
        delivered_calm >= 100.0 && delivered - delivered_calm >= 100.0,
        "the delivery path ran too little: {delivered_calm} in the calm round, {} in the chaos round",
        delivered - delivered_calm
    );
    assert!(restarts >= 1.0, "no max_jobs restart happened");
    assert!(
        PUSHED.load(Ordering::Relaxed) > 0,
        "no client read a line another pushed to it"
    );
}

/// On the default runtime (`tcp.io_threads: 1`): one thread, deliveries from other tasks.
#[tokio::test(flavor = "current_thread")]
async fn answers_reach_only_their_own_clients_in_order_under_churn_on_one_thread() {
    storm("one thread", ONE).await;
}

/// `tcp.io_threads: 2`: deliveries from another thread while the connection's task may be polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_reach_only_their_own_clients_in_order_under_churn_on_two_threads() {
    storm("two threads", ONE).await;
}

/// With an idle timeout (which never runs out here: a client pauses at most a few ms), the
/// parked task also sets its idle timer and a delivery notes when it wrote the answer
/// (`Link::answered`): the same path with the idle clock's steps, on two threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_reach_only_their_own_clients_in_order_under_churn_with_an_idle_timeout() {
    storm(
        "idle timeout",
        "    s:\n      addr: 127.0.0.1:0\n      idle_timeout: 5s\n",
    )
    .await;
}

/// The delivery's counter.
async fn delivered(h: &Harness) -> f64 {
    metric(h, "pier_answers_delivered_total", "").await
}

/// Answers that are not plain replies, and a close over RPC, for connections parked in a line
/// among connections whose plain answers are delivered: each takes its task's own path and ends
/// as it would unparked — STARTTLS's answer in plaintext, then TLS; QUIT's "bye", then the
/// close; CLOSE's close; a connection closed over RPC (`pier.Close`) while parked gets its
/// answer, then the close (a close asked for writes what is queued first); the plain ones
/// around them get theirs and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_with_starttls_quit_close_or_an_rpc_close_end_as_unparked() {
    use support::pki::{tls_over, Pki};
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path());
    let cert = pki.server("server", &["localhost"], false);
    let servers = format!(
        "    s:\n      addr: 127.0.0.1:0\n      tls:\n        mode: starttls\n        cert: {:?}\n        key: {:?}\n",
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(
        dir.path(),
        &[&test_worker()],
        &servers,
        "    num_workers: 1\n    max_in_flight: 16\n",
        "",
    ) + "metrics:\n  address: 127.0.0.1:0\nrpc:\n  listen: tcp://127.0.0.1:0\n";
    let mut h = Harness::start(dir, &text).await;
    let rpc = h.rpc.as_deref().unwrap().strip_prefix("tcp://").unwrap();
    let mut rpc = support::Rpc::connect(rpc.parse().unwrap()).await;
    let waiting = |n: usize| {
        let pool = h.pool.clone();
        support::eventually(Duration::from_secs(5), "events waiting", move || {
            pool.stats().waiting == n
        })
    };
    let mut round = 0;
    // Until a delivery happened among them (the worker's answers come in reads of their own
    // sizes: within a few rounds one read brings several), and at least three rounds.
    while round < 3 || delivered(&h).await == 0.0 {
        assert!(round < 30, "no answer delivered in {round} rounds");
        let _ = std::fs::remove_file(h.dir.path().join("sleeping"));
        let mut busy = h.connect("s").await;
        busy.hello().await;
        let mut line = Vec::new();
        for _ in 0..6 {
            let mut c = h.connect("s").await;
            let (_, _, uuid) = c.hello().await;
            line.push((c, uuid));
        }
        busy.send("sleep 200\r\n").await;
        support::wait_for_marker(&h, "sleeping").await;
        let packets = ["p0", "starttls", "quit", "close", "k", "p5"];
        for (i, ((c, _), packet)) in line.iter_mut().zip(packets).enumerate() {
            c.send(format!("{packet}\r\n")).await;
            waiting(i + 1).await;
        }
        // Closed over RPC while it waits (parked) in the line.
        assert_eq!(
            rpc.ok("pier.Close", serde_json::json!({"uuid": line[4].1}))
                .await,
            serde_json::json!(true)
        );
        assert_eq!(busy.line().await.unwrap(), "slept");
        let mut line = line.into_iter().map(|(c, _)| c);
        let mut p0 = line.next().unwrap();
        let tls = line.next().unwrap();
        let mut quit = line.next().unwrap();
        let mut close = line.next().unwrap();
        let mut kicked = line.next().unwrap();
        let mut p5 = line.next().unwrap();
        assert_eq!(p0.line().await.unwrap(), "s:p0");
        assert_eq!(quit.line().await.unwrap(), "bye");
        assert_eq!(quit.line().await, None);
        assert_eq!(close.line().await, None);
        assert_eq!(kicked.line().await.unwrap(), "s:k");
        assert_eq!(kicked.line().await, None);
        assert_eq!(p5.line().await.unwrap(), "s:p5");
        // STARTTLS: "go ahead" in plaintext, then TLS on the same connection.
        let mut tls = {
            let mut c = tls;
            assert_eq!(c.line().await.unwrap(), "go ahead");
            assert!(c.reader.buffer().is_empty());
            let socket = c.reader.into_inner().reunite(c.writer).unwrap();
            tls_over(socket, &pki.ca_file, "localhost", None)
                .await
                .expect("handshake after STARTTLS")
        };
        tls.write_all(b"again\r\n").await.unwrap();
        let mut answer = [0u8; 64];
        let n = tokio::time::timeout(support::HANG, tls.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer[..n], b"s:again\n");
        assert_eq!(p0.ask("again\r\n").await, "s:again");
        assert_eq!(p5.ask("again\r\n").await, "s:again");
        // The round's seven connections closed and their CLOSE events ran: none of them waits
        // behind the next round's sleep, where the counts of waiting events above would see it.
        drop((busy, tls, p0, quit, close, kicked, p5));
        round += 1;
        support::eventually(support::HANG, "the round's CLOSE events", || {
            h.log("closes.log").len() == 7 * round
        })
        .await;
    }
    h.shutdown().await;
}
