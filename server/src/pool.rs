//! The supervised pool of PHP workers: spawn, handshake, hand out, rotate, replace, stop.
//!
//! Idle workers wait in an MPMC queue (FIFO, so consecutive events of a connection spread over the
//! workers); an event takes one out, runs on it exclusively, and puts it back. A supervisor task
//! starts replacements with backoff, so a script that dies at start does not spin the CPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use pier_protocol::control;
use pier_protocol::frame::{decode, FrameError};
use pier_protocol::tcp::{encode_event_with_context, EventKind, ReplyKind};
use pier_protocol::{MessageError, WorkerMessage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::PoolConfig;
use crate::ops::{Metrics, PoolSnapshot, RestartReason};
use crate::registry::Registry;

/// The `RR_VERSION` workers see: the RoadRunner release whose TCP plugin Pier follows (the stock
/// PHP packages only check that it is set).
pub const RR_VERSION: &str = "2024.3.0";
/// Largest frame accepted from a worker; a larger announced length is corruption.
const MAX_WORKER_FRAME: u32 = 1 << 30;
/// How many times one event is re-run after stop replies before the connection is given up.
const MAX_RERUNS: usize = 8;
/// First respawn delay after a failed start; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest respawn delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bytes of a worker's stderr kept to explain a failed start.
const STDERR_KEPT: usize = 4096;
/// Read chunk for worker stdout.
const READ_CHUNK: usize = 64 * 1024;

/// What went wrong in the pool: starting a worker (the pool, or a replacement), or running one
/// event (then only that event's connection is closed; nothing else is hurt).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The command could not be executed (config's fault: wrong path, not executable).
    #[error("could not start worker {command:?}")]
    Spawn {
        /// The program.
        command: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The worker exited or closed stdout before answering the pid handshake (worker's fault).
    #[error(
        "could not start worker: it exited before the pid handshake ({status}); stderr:\n{stderr}"
    )]
    HandshakeExited {
        /// Exit status as text.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// The worker did not answer the handshake within allocate_timeout (worker's fault).
    #[error("could not start worker pid {pid}: no pid handshake within {timeout:?} (killed); stderr:\n{stderr}")]
    HandshakeTimeout {
        /// Its pid.
        pid: u32,
        /// allocate_timeout.
        timeout: Duration,
        /// Its stderr.
        stderr: String,
    },
    /// The worker answered the handshake with something else (worker's fault).
    #[error("could not start worker pid {pid}: bad handshake answer: {detail}; stderr:\n{stderr}")]
    HandshakeGarbage {
        /// Its pid.
        pid: u32,
        /// What was wrong.
        detail: String,
        /// Its stderr.
        stderr: String,
    },
    /// Writing the handshake failed.
    #[error("could not write the pid handshake to worker pid {pid}")]
    HandshakeWrite {
        /// Its pid.
        pid: u32,
        /// The pipe error.
        #[source]
        source: std::io::Error,
    },
    // Per-event failures: the event's connection is closed; nothing else is hurt.
    /// No worker became free within allocate_timeout (overload or stuck workers).
    #[error("no free workers within {0:?}")]
    NoFreeWorkers(Duration),
    /// The pool is shut down.
    #[error("could not run event: the pool is stopped")]
    Closed,
    /// The worker answered with an error frame (`Worker::error()`); it stays in service.
    #[error("worker pid {pid} reported an error: {message}")]
    WorkerError {
        /// The worker.
        pid: u32,
        /// Its message.
        message: String,
    },
    /// The worker died or closed its pipes during the event; it is replaced.
    #[error("worker pid {pid} exited during the event")]
    WorkerExited {
        /// The worker.
        pid: u32,
        /// The pipe error, if any.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The worker wrote bytes that are not a frame (a stray `echo`); it is killed and replaced.
    #[error("worker pid {pid} wrote bytes that are not a frame: {bytes:?}")]
    Garbage {
        /// The worker.
        pid: u32,
        /// The first bytes, lossily as text.
        bytes: String,
        /// The frame decoder's complaint.
        #[source]
        source: FrameError,
    },
    /// The worker sent a well-formed frame that is not a reply; it is killed and replaced.
    #[error("worker pid {pid} sent a frame that is not a reply")]
    BadMessage {
        /// The worker.
        pid: u32,
        /// What was wrong.
        #[source]
        source: MessageError,
    },
    /// The worker wrote to stdout while idle (a stray `echo` from a timer or destructor, or bytes
    /// trailing its last reply); it is killed and replaced before any event is handed to it.
    #[error("worker pid {pid} wrote bytes while idle (not answering any event): {bytes:?}")]
    IdleGarbage {
        /// The worker.
        pid: u32,
        /// The first bytes, lossily as text.
        bytes: String,
    },
    /// The worker closed its stdout (exited) while idle; it is replaced before any event is
    /// handed to it.
    #[error("worker pid {pid} exited while idle")]
    IdleExited {
        /// The worker.
        pid: u32,
        /// The read error, if it was one rather than EOF.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The event could not be written to the worker (it is gone): the worker never read it, so the
    /// event is run on another worker.
    #[error("could not hand the event to worker pid {pid}")]
    Undelivered {
        /// The worker.
        pid: u32,
        /// The pipe error.
        #[source]
        source: std::io::Error,
    },
    /// The event does not fit in a frame (a packet or state over 4 GiB: a config allowing it).
    #[error("could not encode the event")]
    Encode(#[source] pier_protocol::frame::EncodeError),
    /// Every worker tried asked to stop.
    #[error("the event was re-run {0} times (stop replies, workers gone); giving up")]
    TooManyReruns(usize),
}

/// What a worker wants done with the connection (owned form of [`ReplyKind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the body, keep reading.
    Write,
    /// Keep reading.
    Continue,
    /// Write the body, then close.
    WriteClose,
    /// Close.
    Close,
    /// An unknown reply context (treated as `Close`), kept for the log.
    Unknown(String),
}

/// A worker's reply, detached from the worker so it can go back to the pool before the client is
/// written to.
#[derive(Debug, Clone)]
pub struct Reply {
    /// What to do.
    pub action: Action,
    /// Bytes to write (shares the worker's read buffer, no copy).
    pub body: Bytes,
    /// `Some` when the reply sets the connection state (empty = clear).
    pub state: Option<Bytes>,
    /// The worker that answered, for logs.
    pub pid: u32,
    /// `Some` when the worker set the connection's idle timeout (Pier extension
    /// `idle_timeout`): `Some(Some(ms))` (0 = none), `Some(None)` = back to the server's.
    pub idle_timeout: Option<Option<u64>>,
    /// The worker sent a `starttls` command before this answer (Pier extension `starttls`): write
    /// the body in plaintext, then start TLS.
    pub starttls: bool,
}

/// One event to run; borrowed from the connection.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The client's address.
    pub remote_addr: &'a str,
    /// The server name.
    pub server: &'a str,
    /// The connection id.
    pub uuid: &'a str,
    /// What happened.
    pub kind: EventKind,
    /// The connection's state (empty = none).
    pub state: &'a [u8],
    /// The packet.
    pub body: &'a [u8],
    /// What the worker's push commands during this event act on.
    pub connections: &'a Registry,
    /// The connection's TLS facts as a context fragment (Pier extension `tls`); empty = plaintext.
    pub tls: &'a [u8],
}

/// A running worker process and its pipes, owned by whoever is using it.
#[derive(Debug)]
struct Worker {
    /// Process id, from the OS.
    pid: u32,
    /// The process, for wait/kill.
    child: Child,
    /// Frames to the worker.
    stdin: ChildStdin,
    /// Frames from the worker.
    stdout: ChildStdout,
    /// Bytes read from stdout, not yet consumed; reused across events.
    rbuf: BytesMut,
    /// Each outgoing frame is encoded here and written with one write; reused across events.
    wbuf: Vec<u8>,
    /// Events handled, for max_jobs.
    jobs: u64,
    /// Counts event starts and ends (odd = in an event); the last value is published in
    /// `info.activity`.
    seq: u64,
    /// What the shutdown, the informer and the metrics see of this worker, through the registry.
    info: Arc<WorkerInfo>,
    /// How it was started; holds the registry this worker leaves when dropped.
    spec: Arc<Spec>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Before the `Child` is dropped (and possibly reaped): a registered pid is never reused.
        if let Ok(mut registry) = self.spec.registry.lock() {
            registry.remove(&self.pid);
        }
    }
}

/// What a worker said about an event.
enum Outcome {
    /// A reply.
    Reply(Reply),
    /// `Worker::error()`.
    Error(String),
    /// `Worker::stop()`.
    Stop,
}

/// What others may read about a live worker: the shutdown (stuck workers), `informer.Workers`
/// and `pier workers`, the metrics. The worker publishes it itself with plain atomic stores (and
/// one uncontended lock for the uuid) at each event start and end, so the hot path waits on no
/// one.
#[derive(Debug)]
pub(crate) struct WorkerInfo {
    /// `seq` of the worker: odd while an event runs.
    activity: AtomicU64,
    /// Events answered.
    execs: AtomicU64,
    /// When the running event started ([`coarse_now_ns`]).
    event_started: AtomicU64,
    /// The running (or last) event's connection uuid.
    event_uuid: Mutex<String>,
    /// When the worker process started (`created` in RoadRunner's WorkerList).
    created: SystemTime,
}

/// One worker as `informer.Workers` and `pier workers` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    /// Process id.
    pub pid: u32,
    /// Running an event now.
    pub busy: bool,
    /// Events answered.
    pub execs: u64,
    /// When it started.
    pub created: SystemTime,
    /// The running event: connection uuid and how long it has been running.
    pub event: Option<(String, Duration)>,
}

impl Worker {
    /// Publishes that an event for `uuid` starts on this worker. A plain method around the
    /// `exec` call rather than an async wrapper, which measurably grew the future. The start time
    /// is the coarse clock (a few ms resolution, no time-stamp counter arithmetic): the informer
    /// shows seconds, and `Instant::now()` here cost ~260 instructions per event (callgrind).
    fn begin(&mut self, uuid: &str) {
        self.info
            .event_started
            .store(coarse_now_ns(), Ordering::Relaxed);
        if let Ok(mut current) = self.info.event_uuid.lock() {
            current.clear();
            current.push_str(uuid);
        }
        self.seq += 1;
        self.info.activity.store(self.seq, Ordering::Relaxed);
    }

    /// Publishes that the event ended.
    fn end(&mut self) {
        self.seq += 1;
        self.info.activity.store(self.seq, Ordering::Relaxed);
        self.info.execs.store(self.seq / 2, Ordering::Relaxed);
    }

    /// Sends the event and reads frames until the worker answers it.
    async fn exec(&mut self, event: &Event<'_>) -> Result<Outcome, PoolError> {
        self.wbuf.clear();
        let pid = self.pid;
        encode_event_with_context(
            &mut self.wbuf,
            event.remote_addr,
            event.server,
            event.uuid,
            event.kind,
            event.tls,
            event.state,
            event.body,
        )
        .map_err(PoolError::Encode)?;
        self.stdin
            .write_all(&self.wbuf)
            .await
            .map_err(|source| PoolError::Undelivered { pid, source })?;
        // Commands for the event's own connection, applied with the answer (the last one wins).
        let mut idle_timeout = None;
        let mut starttls = false;
        loop {
            match decode(&self.rbuf, MAX_WORKER_FRAME) {
                Ok(Some((frame, used))) => {
                    let message = WorkerMessage::from_frame(&frame);
                    let base = self.rbuf.as_ptr() as usize;
                    let range = |s: &[u8]| {
                        let at = s.as_ptr() as usize - base;
                        at..at + s.len()
                    };
                    match message {
                        Ok(WorkerMessage::Pid(_)) => {
                            // A late handshake answer is harmless.
                            self.rbuf.advance(used);
                        }
                        Ok(WorkerMessage::Error(msg)) => {
                            let message = String::from_utf8_lossy(msg).into_owned();
                            self.rbuf.advance(used);
                            return Ok(Outcome::Error(message));
                        }
                        Ok(WorkerMessage::Stop) => {
                            self.rbuf.advance(used);
                            return Ok(Outcome::Stop);
                        }
                        Ok(WorkerMessage::Command(pier_protocol::Command::IdleTimeout { ms })) => {
                            idle_timeout = Some(ms);
                            self.rbuf.advance(used);
                        }
                        Ok(WorkerMessage::Command(pier_protocol::Command::Starttls)) => {
                            starttls = true;
                            self.rbuf.advance(used);
                        }
                        Ok(WorkerMessage::Command(command)) => {
                            // Applied here, in the order written, before the answer is: bytes
                            // queued for the event's own connection go out before its reply.
                            event.connections.apply(&command, pid);
                            drop(command);
                            self.rbuf.advance(used);
                        }
                        Ok(WorkerMessage::Reply(reply)) => {
                            let action = match reply.kind {
                                ReplyKind::Write => Action::Write,
                                ReplyKind::Continue => Action::Continue,
                                ReplyKind::WriteClose => Action::WriteClose,
                                ReplyKind::Close => Action::Close,
                                ReplyKind::Unknown(other) => Action::Unknown(control_text(other)),
                            };
                            let body = range(reply.body);
                            let state = reply.state.map(range);
                            let frame = self.rbuf.split_to(used).freeze();
                            return Ok(Outcome::Reply(Reply {
                                action,
                                body: frame.slice(body),
                                state: state.map(|r| frame.slice(r)),
                                pid,
                                idle_timeout,
                                starttls,
                            }));
                        }
                        Err(source) => return Err(PoolError::BadMessage { pid, source }),
                    }
                }
                Ok(None) => {
                    self.rbuf.reserve(READ_CHUNK);
                    match self.stdout.read_buf(&mut self.rbuf).await {
                        Ok(0) => return Err(PoolError::WorkerExited { pid, source: None }),
                        Ok(_) => {}
                        Err(e) => {
                            return Err(PoolError::WorkerExited {
                                pid,
                                source: Some(e),
                            })
                        }
                    }
                }
                Err(source) => {
                    return Err(PoolError::Garbage {
                        pid,
                        bytes: control_text(&self.rbuf),
                        source,
                    })
                }
            }
        }
    }
}

impl Worker {
    /// Checks, right before an event is handed over, that the worker stayed silent while idle: no
    /// bytes left after its last reply, nothing new on its stdout, stdout not closed. This is one
    /// non-blocking `read(2)` on the pipe (answered `EAGAIN` when all is well), replacing the
    /// `waitpid` that used to check for death, so the hot path pays no extra syscall.
    ///
    /// A real syscall rather than tokio's cached readiness: the cache only learns about bytes when
    /// the reactor next polls epoll, which under load can be after the event is handed over.
    fn check_idle(&mut self) -> Result<(), PoolError> {
        let pid = self.pid;
        if !self.rbuf.is_empty() {
            return Err(PoolError::IdleGarbage {
                pid,
                bytes: control_text(&self.rbuf),
            });
        }
        let mut probe = [0u8; 64];
        match read_now(&self.stdout, &mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Ok(0) => Err(PoolError::IdleExited { pid, source: None }),
            Ok(n) => Err(PoolError::IdleGarbage {
                pid,
                bytes: control_text(&probe[..n]),
            }),
            Err(e) => Err(PoolError::IdleExited {
                pid,
                source: Some(e),
            }),
        }
    }
}

/// One non-blocking `read(2)` on a worker's stdout, bypassing tokio's readiness cache. tokio made
/// the pipe `O_NONBLOCK`, so an empty pipe answers `WouldBlock`; bytes read here are never needed
/// by tokio (the worker is killed when there are any).
fn read_now(stdout: &ChildStdout, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd belongs to `stdout`, which is borrowed for the whole call, so it stays open;
    // `buf` is a live, writable slice of exactly `buf.len()` bytes.
    let n = unsafe { libc::read(stdout.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// At most 64 bytes, lossily as text, for logs.
fn control_text(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(64)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > cut.len() {
        s.push('…');
    }
    s
}

/// Delays between failed worker starts: 100 ms, doubling, at most 5 s; reset by a success.
#[derive(Debug, Default)]
struct Backoff {
    /// Failed starts in a row.
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt, counting one more failure.
    fn next_delay(&mut self) -> Duration {
        let delay = BACKOFF_START
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// How to start a worker; shared by the pool, its supervisor and every worker.
#[derive(Debug)]
struct Spec {
    /// Command, env, timeouts, max_jobs.
    config: PoolConfig,
    /// Every live worker's pid and published state, so the shutdown can find and kill workers
    /// stuck on one event and the informer can list them. Locked only when a worker starts or is
    /// dropped, at shutdown, and when someone asks for the list.
    registry: Mutex<HashMap<u32, Arc<WorkerInfo>>>,
    /// Where waits, event times and restarts are recorded.
    metrics: Metrics,
    /// Events waiting for a free worker now.
    waiting: AtomicUsize,
}

/// Workers that were in the middle of an event at one moment, with their activity counters
/// ([`Pool::busy_workers`]); later, [`Pool::kill_stuck`] kills those still on that same event.
#[derive(Debug, Default)]
pub struct BusyWorkers {
    /// (pid, activity counter) of each worker that was busy.
    busy: Vec<(u32, u64)>,
}

/// The pool handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Shared state.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// How to start workers.
    spec: Arc<Spec>,
    /// Idle workers go back here.
    idle_tx: async_channel::Sender<Box<Worker>>,
    /// Events take idle workers from here.
    idle_rx: async_channel::Receiver<Box<Worker>>,
    /// Asks the supervisor for one replacement worker.
    respawn: mpsc::UnboundedSender<()>,
    /// Stopping workers and the supervisor, awaited at shutdown.
    tasks: TaskTracker,
    /// Cancelled at shutdown: no more respawns.
    closed: CancellationToken,
}

impl Pool {
    /// Starts `num_workers` workers. Fails only when none of them can start (showing the first
    /// failure, stderr included); the missing ones are retried in the background.
    pub async fn start(config: PoolConfig, metrics: Metrics) -> Result<Pool, PoolError> {
        let spec = Arc::new(Spec {
            config,
            registry: Mutex::new(HashMap::new()),
            metrics,
            waiting: AtomicUsize::new(0),
        });
        let n = spec.config.num_workers.max(1);
        let (idle_tx, idle_rx) = async_channel::bounded(n);
        let (respawn, respawn_rx) = mpsc::unbounded_channel();
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..n {
            let spec = spec.clone();
            starts.spawn(async move { spawn_worker(&spec).await });
        }
        let mut first_error = None;
        let mut started = 0;
        while let Some(result) = starts.join_next().await {
            match result {
                Ok(Ok(worker)) => {
                    started += 1;
                    // Capacity is n: cannot be full.
                    let _ = idle_tx.try_send(worker);
                }
                Ok(Err(e)) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                    } else {
                        warn!(error = %e, "worker failed to start");
                    }
                }
                Err(join) => error!(error = %join, "worker start task failed"),
            }
        }
        if started == 0 {
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        let pool = Pool {
            inner: Arc::new(Inner {
                spec: spec.clone(),
                idle_tx,
                idle_rx,
                respawn,
                tasks: TaskTracker::new(),
                closed: CancellationToken::new(),
            }),
        };
        if let Some(e) = first_error {
            warn!(error = %e, "worker failed to start; retrying with backoff");
            for _ in started..n {
                let _ = pool.inner.respawn.send(());
            }
        }
        let supervisor = pool.clone();
        pool.inner
            .tasks
            .spawn(async move { supervisor.supervise(respawn_rx).await });
        info!(workers = started, command = ?spec.config.command, "worker pool started");
        Ok(pool)
    }

    /// Asks the supervisor for a replacement of a worker that is going away for `reason`.
    fn request_respawn(&self, reason: RestartReason) {
        self.inner.spec.metrics.worker_restart(reason);
        let _ = self.inner.respawn.send(());
    }

    /// Starts one replacement per request, backing off while starts fail.
    async fn supervise(&self, mut requests: mpsc::UnboundedReceiver<()>) {
        let closed = &self.inner.closed;
        let mut backoff = Backoff::default();
        loop {
            let request = tokio::select! {
                _ = closed.cancelled() => return,
                r = requests.recv() => r,
            };
            if request.is_none() {
                return;
            }
            loop {
                let result = tokio::select! {
                    _ = closed.cancelled() => return,
                    r = spawn_worker(&self.inner.spec) => r,
                };
                match result {
                    Ok(worker) => {
                        backoff = Backoff::default();
                        debug!(pid = worker.pid, "replacement worker started");
                        if let Err(back) = self.inner.idle_tx.try_send(worker) {
                            // Shutting down (or over capacity): stop it again.
                            self.retire(back.into_inner());
                        }
                        break;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        error!(error = %e, retry_in = ?delay, "could not start a replacement worker");
                        tokio::select! {
                            _ = closed.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }

    /// Runs one event to a reply. Re-runs it on another worker after a stop reply.
    pub async fn exec(&self, event: &Event<'_>) -> Result<Reply, PoolError> {
        let timeout = self.inner.spec.config.allocate_timeout;
        let metrics = &self.inner.spec.metrics;
        for _ in 0..MAX_RERUNS {
            let mut worker = self.acquire(timeout).await?;
            let started = metrics.clock();
            worker.begin(event.uuid);
            let outcome = worker.exec(event).await;
            worker.end();
            metrics.ran(event.kind, started);
            match outcome {
                Ok(Outcome::Reply(reply)) => {
                    self.release(worker);
                    return Ok(reply);
                }
                Ok(Outcome::Error(message)) => {
                    let pid = worker.pid;
                    self.release(worker);
                    return Err(PoolError::WorkerError { pid, message });
                }
                Ok(Outcome::Stop) => {
                    info!(
                        pid = worker.pid,
                        "worker asked to stop; re-running the event on another worker"
                    );
                    self.retire(worker);
                    self.request_respawn(RestartReason::Stop);
                }
                Err(e @ PoolError::Undelivered { .. }) => {
                    // The worker never read the event (it died after the idle check): run it on
                    // another one.
                    warn!(error = %e, "worker gone; running the event on another worker");
                    self.kill(worker);
                    self.request_respawn(RestartReason::Crash);
                }
                Err(e @ PoolError::Encode(_)) => {
                    // Nothing reached the worker: it is fine.
                    worker.jobs = worker.jobs.saturating_sub(1);
                    self.release(worker);
                    return Err(e);
                }
                Err(e) => {
                    self.kill(worker);
                    self.request_respawn(restart_reason(&e));
                    return Err(e);
                }
            }
        }
        Err(PoolError::TooManyReruns(MAX_RERUNS))
    }

    /// Takes an idle worker, waiting up to `timeout`. A worker that died or wrote to stdout while
    /// idle is killed and replaced here, before any event is handed to it (see
    /// [`Worker::check_idle`]), so the event loses nothing.
    async fn acquire(&self, timeout: Duration) -> Result<Box<Worker>, PoolError> {
        let metrics = &self.inner.spec.metrics;
        loop {
            // Fast path without a timer (nor a clock read for the wait metric): a worker is
            // usually free.
            let mut worker = match self.inner.idle_rx.try_recv() {
                Ok(worker) => {
                    metrics.no_wait();
                    worker
                }
                Err(async_channel::TryRecvError::Closed) => return Err(PoolError::Closed),
                Err(async_channel::TryRecvError::Empty) => {
                    let _waiting = Waiting::new(&self.inner.spec.waiting);
                    let since = metrics.clock();
                    let got = tokio::time::timeout(timeout, self.inner.idle_rx.recv()).await;
                    metrics.waited(since);
                    match got {
                        Err(_) => return Err(PoolError::NoFreeWorkers(timeout)),
                        Ok(Err(_)) => return Err(PoolError::Closed),
                        Ok(Ok(worker)) => worker,
                    }
                }
            };
            let reason = match worker.check_idle() {
                Ok(()) => return Ok(worker),
                Err(e) => {
                    // Nothing was handed to it: the event waits for another worker.
                    warn!(error = %e, "replacing worker; the event goes to another worker");
                    restart_reason(&e)
                }
            };
            self.kill(worker);
            self.request_respawn(reason);
        }
    }

    /// Puts a worker back, or rotates it out after max_jobs events.
    fn release(&self, mut worker: Box<Worker>) {
        worker.jobs += 1;
        let max_jobs = self.inner.spec.config.max_jobs;
        if max_jobs > 0 && worker.jobs >= max_jobs {
            debug!(
                pid = worker.pid,
                jobs = worker.jobs,
                "max_jobs reached; replacing worker"
            );
            self.retire(worker);
            self.request_respawn(RestartReason::MaxJobs);
            return;
        }
        if let Err(back) = self.inner.idle_tx.try_send(worker) {
            self.retire(back.into_inner());
        }
    }

    /// Stops a worker in the background: stop frame, wait up to destroy_timeout, then kill. Frames
    /// it still sends (the stock worker's stray `CLOSE` after the stop frame) are read and dropped.
    fn retire(&self, mut worker: Box<Worker>) {
        let destroy_timeout = self.inner.spec.config.destroy_timeout;
        self.inner.tasks.spawn(async move {
            worker.wbuf.clear();
            let _ = control::encode_stop_request(&mut worker.wbuf);
            let pid = worker.pid;
            let graceful = tokio::time::timeout(destroy_timeout, async {
                let _ = worker.stdin.write_all(&worker.wbuf).await;
                let mut sink = [0u8; 4096];
                while let Ok(n) = worker.stdout.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                worker.child.wait().await
            })
            .await;
            match graceful {
                Ok(Ok(status)) => debug!(pid, %status, "worker stopped"),
                _ => {
                    warn!(pid, timeout = ?destroy_timeout, "worker did not stop in time; killing it");
                    let _ = worker.child.kill().await;
                }
            }
        });
    }

    /// Kills a misbehaving or dead worker in the background and logs how it ended.
    fn kill(&self, mut worker: Box<Worker>) {
        self.inner.tasks.spawn(async move {
            let _ = worker.child.start_kill();
            match worker.child.wait().await {
                Ok(status) => info!(pid = worker.pid, %status, "worker replaced"),
                Err(e) => warn!(pid = worker.pid, error = %e, "could not reap worker"),
            }
        });
    }

    /// The workers in the middle of an event right now. Taken when shutdown starts; see
    /// [`Pool::kill_stuck`].
    pub fn busy_workers(&self) -> BusyWorkers {
        let Ok(registry) = self.inner.spec.registry.lock() else {
            return BusyWorkers::default();
        };
        let busy = registry
            .iter()
            .map(|(pid, info)| (*pid, info.activity.load(Ordering::Relaxed)))
            .filter(|(_, seq)| seq % 2 == 1)
            .collect();
        BusyWorkers { busy }
    }

    /// Kills (SIGKILL) every worker of `before` that is still on the very same event, i.e. stuck
    /// on it since `before` was taken. The event then fails as for a crash: its connection is
    /// closed and gets its `CLOSE` on another worker (a replacement is started as usual). Returns
    /// the pids killed.
    pub fn kill_stuck(&self, before: &BusyWorkers) -> Vec<u32> {
        // Held while killing: a registered worker is not dropped meanwhile, so its pid is not
        // reaped and cannot have been reused.
        let Ok(registry) = self.inner.spec.registry.lock() else {
            return Vec::new();
        };
        let mut killed = Vec::new();
        for &(pid, seq) in &before.busy {
            let Some(info) = registry.get(&pid) else {
                continue;
            };
            if info.activity.load(Ordering::Relaxed) != seq {
                continue;
            }
            let Ok(target) = libc::pid_t::try_from(pid) else {
                continue;
            };
            // SAFETY: kill(2) takes plain integers and touches no memory of ours. `target` is our
            // own unreaped child (see above), so its pid, and the process group it leads (workers
            // start in their own group), cannot belong to anyone else. The group goes too: a
            // process the worker started could otherwise keep its stdout open, and the event stuck.
            let done = unsafe {
                let leader = libc::kill(target, libc::SIGKILL);
                libc::kill(-target, libc::SIGKILL);
                leader
            };
            if done == 0 {
                killed.push(pid);
            }
        }
        killed
    }

    /// Counts for the gauges and the status checks; cheap (one short lock, no system call).
    pub fn snapshot(&self) -> PoolSnapshot {
        let (workers, busy) = match self.inner.spec.registry.lock() {
            Ok(registry) => (
                registry.len(),
                registry
                    .values()
                    .filter(|i| i.activity.load(Ordering::Relaxed) % 2 == 1)
                    .count(),
            ),
            Err(_) => (0, 0),
        };
        PoolSnapshot {
            workers,
            busy,
            // The idle queue can briefly hold a worker that is being checked or retired; never
            // more than the live workers.
            idle: self.inner.idle_rx.len().min(workers - busy),
            waiting: self.inner.spec.waiting.load(Ordering::Relaxed),
        }
    }

    /// The worker command (program and arguments).
    pub fn command(&self) -> &[String] {
        &self.inner.spec.config.command
    }

    /// Every live worker, by pid.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        let Ok(registry) = self.inner.spec.registry.lock() else {
            return Vec::new();
        };
        let now = coarse_now_ns();
        let mut out: Vec<WorkerStatus> = registry
            .iter()
            .map(|(pid, info)| {
                let busy = info.activity.load(Ordering::Relaxed) % 2 == 1;
                let event = busy.then(|| {
                    let started = info.event_started.load(Ordering::Relaxed);
                    let uuid = info
                        .event_uuid
                        .lock()
                        .map(|u| u.clone())
                        .unwrap_or_default();
                    (uuid, Duration::from_nanos(now.saturating_sub(started)))
                });
                WorkerStatus {
                    pid: *pid,
                    busy,
                    execs: info.execs.load(Ordering::Relaxed),
                    created: info.created,
                    event,
                }
            })
            .collect();
        out.sort_by_key(|w| w.pid);
        out
    }

    /// Stops every worker: no more respawns, stop frame to each idle worker, wait up to
    /// destroy_timeout each, then kill. Call after every connection is done.
    pub async fn shutdown(&self) {
        self.inner.closed.cancel();
        self.inner.idle_tx.close();
        while let Ok(worker) = self.inner.idle_rx.try_recv() {
            self.retire(worker);
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// Starts one worker and completes the pid handshake within allocate_timeout.
async fn spawn_worker(spec: &Arc<Spec>) -> Result<Box<Worker>, PoolError> {
    let config = &spec.config;
    let mut cmd = Command::new(&config.command[0]);
    cmd.args(&config.command[1..])
        .env("RR_RELAY", "pipes")
        .env("RR_MODE", "tcp")
        .env("RR_VERSION", RR_VERSION)
        .env("PIER_VERSION", env!("CARGO_PKG_VERSION"))
        .env("PIER_FEATURES", crate::FEATURES.join(","))
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Own process group: a Ctrl-C in the terminal reaches pier only, so the workers are still
        // alive to receive the CLOSE events of the graceful shutdown (RoadRunner does the same).
        // Orphaned workers still exit: their stdin reaches EOF when pier is gone.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| PoolError::Spawn {
        command: config.command[0].clone(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three pipes were requested");
    };
    let kept = Arc::new(Mutex::new(String::new()));
    let stderr_task = tokio::spawn(log_stderr(pid, stderr, kept.clone()));
    let stderr_text =
        |kept: &Arc<Mutex<String>>| kept.lock().map(|s| s.clone()).unwrap_or_default();

    let mut wbuf = Vec::with_capacity(READ_CHUNK);
    let _ = control::encode_pid_request(&mut wbuf, std::process::id());
    if let Err(source) = stdin.write_all(&wbuf).await {
        // It probably exited already; report that with its stderr.
        let status = child
            .wait()
            .await
            .map(|s| s.to_string())
            .unwrap_or_default();
        let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
        let stderr = stderr_text(&kept);
        if !stderr.is_empty() || !status.is_empty() {
            return Err(PoolError::HandshakeExited { status, stderr });
        }
        return Err(PoolError::HandshakeWrite { pid, source });
    }
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let answer = tokio::time::timeout(config.allocate_timeout, async {
        loop {
            match decode(&rbuf, MAX_WORKER_FRAME) {
                Ok(Some((frame, used))) => {
                    let result = match WorkerMessage::from_frame(&frame) {
                        Ok(WorkerMessage::Pid(_)) => Ok(()),
                        Ok(other) => Err(format!("expected a pid, got {other:?}")),
                        Err(e) => Err(e.to_string()),
                    };
                    rbuf.advance(used);
                    return Some(result);
                }
                Ok(None) => {}
                Err(e) => return Some(Err(format!("{e}: {:?}", control_text(&rbuf)))),
            }
            rbuf.reserve(READ_CHUNK);
            match stdout.read_buf(&mut rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await;
    match answer {
        Ok(Some(Ok(()))) => {
            debug!(pid, "worker started");
            let info = Arc::new(WorkerInfo {
                activity: AtomicU64::new(0),
                execs: AtomicU64::new(0),
                event_started: AtomicU64::new(0),
                event_uuid: Mutex::new(String::with_capacity(36)),
                created: SystemTime::now(),
            });
            if let Ok(mut registry) = spec.registry.lock() {
                registry.insert(pid, info.clone());
            }
            // Boxed: the worker moves through the idle queue twice per event, and a pointer is
            // cheaper to move than the whole struct (measured with callgrind).
            Ok(Box::new(Worker {
                pid,
                child,
                stdin,
                stdout,
                rbuf,
                wbuf,
                jobs: 0,
                seq: 0,
                info,
                spec: spec.clone(),
            }))
        }
        Ok(Some(Err(detail))) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
            Err(PoolError::HandshakeGarbage {
                pid,
                detail,
                stderr: stderr_text(&kept),
            })
        }
        Ok(None) => {
            let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(Ok(s)) => s.to_string(),
                _ => {
                    let _ = child.start_kill();
                    "closed its stdout".into()
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
            Err(PoolError::HandshakeExited {
                status,
                stderr: stderr_text(&kept),
            })
        }
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
            Err(PoolError::HandshakeTimeout {
                pid,
                timeout: config.allocate_timeout,
                stderr: stderr_text(&kept),
            })
        }
    }
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the kernel's last tick, read from the vDSO without the
/// time-stamp counter arithmetic of `Instant::now()`; a few ms resolution.
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Counts an event waiting for a free worker for as long as it lives (also when the waiting
/// future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The metrics' name for why a worker that failed this way is replaced.
fn restart_reason(e: &PoolError) -> RestartReason {
    match e {
        PoolError::Garbage { .. }
        | PoolError::BadMessage { .. }
        | PoolError::IdleGarbage { .. } => RestartReason::Garbage,
        _ => RestartReason::Crash,
    }
}

/// Logs a worker's stderr line by line with its pid; keeps the first bytes to explain a failed
/// start.
async fn log_stderr(pid: u32, stderr: tokio::process::ChildStderr, kept: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        info!(pid, "worker stderr: {text}");
        if let Ok(mut kept) = kept.lock() {
            if kept.len() < STDERR_KEPT {
                kept.push_str(text);
                kept.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_to_5s() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), BACKOFF_MAX);
    }
}
