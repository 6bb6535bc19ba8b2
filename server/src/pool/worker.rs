//! One worker process and its relay: spawn (pipes or a socket it connects back on), the pid
//! handshake, reading an event's answer, the idle check, and the reaper task that owns the
//! process, so a worker that dies while idle is noticed at once (no system call per event). What is
//! written to the worker goes through its [`Line`].

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::log_scope::{debug, info, warn};
use bytes::{Buf, Bytes, BytesMut};
use pier_protocol::control;
use pier_protocol::frame::{decode, decode_view};
use pier_protocol::tcp::ReplyKind;
use pier_protocol::WorkerMessage;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::net::{tcp, unix, TcpStream, UnixStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch, Notify};

use super::line::Line;
use super::relay::RelayListener;
use super::{Action, Event, PoolError, Reply, Spec};
use crate::ops::RestartReason;

/// The `RR_VERSION` workers see: the RoadRunner release whose TCP plugin Pier follows (the stock
/// PHP packages only check that it is set).
pub const RR_VERSION: &str = "2024.3.0";
/// Largest frame accepted from a worker; a larger announced length is corruption.
const MAX_WORKER_FRAME: u32 = 1 << 30;
/// Bytes of a worker's stderr kept to explain a failed start.
const STDERR_KEPT: usize = 4096;
/// Read chunk for worker output.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// Makes room in `rbuf` for a read of the relay: [`READ_CHUNK`] bytes, asked for only once less
/// than half of that is left. Each answer read takes some of the buffer's room (the bytes consumed
/// before it are reclaimed only by `reserve`), so asking for a whole chunk before every read called
/// `BytesMut::reserve_inner` once per message at one connection (~63 instructions, callgrind);
/// now about once per 32 KiB of answers. A read still gets at least 32 KiB.
fn read_room(rbuf: &mut BytesMut) {
    if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
        rbuf.reserve(READ_CHUNK);
    }
}

/// `Shared::retire`: replace the worker after its event, over `supervisor.ttl`.
pub(super) const RETIRE_TTL: u8 = 1;
/// `Shared::retire`: take the worker out after its event without a replacement (a reset
/// already started one).
pub(super) const RETIRE_REMOVE: u8 = 2;
/// `Shared::retire`: replace the worker after its event, over `max_worker_memory`.
pub(super) const RETIRE_MEMORY: u8 = 3;
/// `Shared::retire`: replace the worker after its event, left over by a reset that timed out.
pub(super) const RETIRE_RESET: u8 = 4;

/// The metrics' reason for a `Shared::retire` code.
pub(super) fn retire_reason(code: u8) -> RestartReason {
    match code {
        RETIRE_TTL => RestartReason::Ttl,
        RETIRE_MEMORY => RestartReason::Memory,
        _ => RestartReason::Reset,
    }
}

/// Why the pool killed a worker, so the event that fails says so (not "exited").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum KillReason {
    /// Not killed by the pool (it exited on its own, or was killed from outside).
    None = 0,
    /// Its event ran over `supervisor.exec_ttl`.
    ExecTtl = 1,
    /// It was stuck on one event through the shutdown's `destroy_timeout`.
    Stuck = 2,
}

/// What the pool knows about a live worker process, shared by the worker, its reaper task, the
/// registry and the supervisor. Reads on the event path are plain relaxed atomics.
#[derive(Debug)]
pub(super) struct Shared {
    /// Process id, from the OS.
    pub(super) pid: u32,
    /// Counts event starts and ends (odd = in an event): one plain atomic store per start and
    /// end; the supervisor samples it each `watch_tick` for `exec_ttl` and `idle_ttl`.
    pub(super) activity: AtomicU64,
    /// When it finished its handshake, for `ttl`.
    pub(super) started: Instant,
    /// When the worker process started (`created` in RoadRunner's WorkerList).
    pub(super) created: SystemTime,
    /// Events answered (informer, metrics).
    pub(super) execs: AtomicU64,
    /// When the running event started ([`coarse_now_ns`]) (informer).
    pub(super) event_started: AtomicU64,
    /// The running (or last) event's connection uuid (informer), in two halves: written only
    /// between events (while `activity` is even), read as a sequence lock against `activity`
    /// ([`Shared::event_uuid`]). A mutex here cost ~45 instructions per event (callgrind).
    uuid_halves: [AtomicU64; 2],
    /// The pool's reset generation it was started in (see `Pool::reset`).
    pub(super) generation: u64,
    /// Set while it runs an event to take it out of service when the event ends:
    /// [`RETIRE_TTL`], [`RETIRE_MEMORY`], [`RETIRE_RESET`] (a replacement is started) or
    /// [`RETIRE_REMOVE`] (a reset already started its replacement). 0 = stays.
    pub(super) retire: AtomicU8,
    /// Set once it is being stopped or killed: no longer counted as serving.
    pub(super) leaving: AtomicBool,
    /// Why the pool killed it ([`KillReason`] as u8).
    reason: AtomicU8,
    /// Wakes the reaper to kill the process (and its process group).
    kill: Notify,
    /// Becomes true once the reaper has reaped the process.
    exited: watch::Sender<bool>,
    /// The events written to it and waiting for their answers, and the relay's write half.
    pub(super) line: Line,
}

impl Shared {
    /// Kills the process (SIGKILL to it and its process group) through its reaper.
    pub(super) fn kill(&self, reason: KillReason) {
        if reason != KillReason::None {
            self.reason.store(reason as u8, Ordering::Relaxed);
        }
        self.leaving.store(true, Ordering::Relaxed);
        self.kill.notify_one();
    }

    /// Whether it leaves service after its events (supervisor limit, reset, stopping): no event
    /// joins its line any more.
    pub(super) fn retiring(&self) -> bool {
        self.retire.load(Ordering::Relaxed) != 0 || self.leaving.load(Ordering::Relaxed)
    }

    /// Why the pool killed it, if it did.
    pub(super) fn reason(&self) -> KillReason {
        match self.reason.load(Ordering::Relaxed) {
            1 => KillReason::ExecTtl,
            2 => KillReason::Stuck,
            _ => KillReason::None,
        }
    }

    /// The connection uuid of the event it runs now, when it runs one (informer). `None` while
    /// idle, and in the unlikely case that it moved on to other events during each of a few tries.
    pub(super) fn event_uuid(&self) -> Option<uuid::Uuid> {
        for _ in 0..4 {
            let before = self.activity.load(Ordering::Acquire);
            if before % 2 == 0 {
                return None;
            }
            let high = self.uuid_halves[0].load(Ordering::Relaxed);
            let low = self.uuid_halves[1].load(Ordering::Relaxed);
            // Orders the two reads above before the check below (the reader's half of a
            // sequence lock): `activity` unchanged after them means `begin` wrote the halves
            // before its store we read, and nothing wrote them since (they change only after
            // `end` moved `activity` on).
            std::sync::atomic::fence(Ordering::Acquire);
            if self.activity.load(Ordering::Relaxed) == before {
                return Some(uuid::Uuid::from_u64_pair(high, low));
            }
        }
        None
    }

    /// Waits until the process has exited and been reaped.
    pub(super) async fn exited(&self) {
        let mut rx = self.exited.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

/// The byte stream to a worker: its stdin/stdout pipes, or the socket it connected back on.
#[derive(Debug)]
pub(super) enum Relay {
    /// `server.relay: pipes` (the default).
    Pipes {
        /// Frames to the worker.
        stdin: ChildStdin,
        /// Frames from the worker: its stdout, as a tokio pipe (which, unlike `ChildStdout`,
        /// tells its readiness without a syscall: see [`Worker::check_idle`]).
        stdout: pipe::Receiver,
    },
    /// `server.relay: tcp://…`.
    Tcp(TcpStream),
    /// `server.relay: unix://…`.
    Unix(UnixStream),
}

impl Relay {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Relay::Pipes { stdin, .. } => stdin.write_all(bytes).await,
            Relay::Tcp(s) => s.write_all(bytes).await,
            Relay::Unix(s) => s.write_all(bytes).await,
        }
    }

    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Relay::Pipes { stdout, .. } => stdout.read_buf(buf).await,
            Relay::Tcp(s) => s.read_buf(buf).await,
            Relay::Unix(s) => s.read_buf(buf).await,
        }
    }

    /// Splits it: answers are read by whoever runs the event being answered, while events are
    /// written by those queued behind it (see [`Line`]).
    fn split(self) -> (RelayRead, RelayWrite) {
        match self {
            Relay::Pipes { stdin, stdout } => (RelayRead::Pipe(stdout), RelayWrite::Pipe(stdin)),
            Relay::Tcp(s) => {
                let (r, w) = s.into_split();
                (RelayRead::Tcp(r), RelayWrite::Tcp(w))
            }
            Relay::Unix(s) => {
                let (r, w) = s.into_split();
                (RelayRead::Unix(r), RelayWrite::Unix(w))
            }
        }
    }
}

/// The half of a worker's relay its answers are read from.
#[derive(Debug)]
pub(super) enum RelayRead {
    /// The worker's stdout.
    Pipe(pipe::Receiver),
    /// A TCP relay's read half.
    Tcp(tcp::OwnedReadHalf),
    /// A unix relay's read half.
    Unix(unix::OwnedReadHalf),
}

impl RelayRead {
    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            RelayRead::Pipe(s) => s.read_buf(buf).await,
            RelayRead::Tcp(s) => s.read_buf(buf).await,
            RelayRead::Unix(s) => s.read_buf(buf).await,
        }
    }

    /// Polls one read into `buf` (as `read_buf`, without a future to keep).
    fn poll_read_buf(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut BytesMut,
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::pin::Pin;
        use tokio_util::io::poll_read_buf;
        match self {
            RelayRead::Pipe(s) => poll_read_buf(Pin::new(s), cx, buf),
            RelayRead::Tcp(s) => poll_read_buf(Pin::new(s), cx, buf),
            RelayRead::Unix(s) => poll_read_buf(Pin::new(s), cx, buf),
        }
    }

    /// One read of what tokio knows to be there: `WouldBlock` without a syscall while the
    /// reactor saw no bytes come.
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RelayRead::Pipe(s) => s.try_read(buf),
            RelayRead::Tcp(s) => s.try_read(buf),
            RelayRead::Unix(s) => s.try_read(buf),
        }
    }

    /// The descriptor frames are read from, for the idle check's non-blocking read.
    fn read_fd(&self) -> RawFd {
        match self {
            RelayRead::Pipe(s) => s.as_raw_fd(),
            RelayRead::Tcp(s) => s.as_ref().as_raw_fd(),
            RelayRead::Unix(s) => s.as_ref().as_raw_fd(),
        }
    }
}

/// The half of a worker's relay events are written to.
#[derive(Debug)]
pub(super) enum RelayWrite {
    /// The worker's stdin.
    Pipe(ChildStdin),
    /// A TCP relay's write half.
    Tcp(tcp::OwnedWriteHalf),
    /// A unix relay's write half.
    Unix(unix::OwnedWriteHalf),
}

impl RelayWrite {
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            RelayWrite::Pipe(s) => s.write_all(bytes).await,
            RelayWrite::Tcp(s) => s.write_all(bytes).await,
            RelayWrite::Unix(s) => s.write_all(bytes).await,
        }
    }

    /// One non-blocking `write(2)` of what fits now (0 when the relay is full), bypassing tokio's
    /// readiness cache: the descriptor is `O_NONBLOCK`, and a later async write of the rest checks
    /// readiness itself. An event taken on an idle worker almost always fits at once: this spares
    /// it the write future and a second lock of its line (254 Ir per message at 1x1, callgrind).
    pub(super) fn write_now(&self, bytes: &[u8]) -> std::io::Result<usize> {
        let fd = match self {
            RelayWrite::Pipe(s) => s.as_raw_fd(),
            RelayWrite::Tcp(s) => s.as_ref().as_raw_fd(),
            RelayWrite::Unix(s) => s.as_ref().as_raw_fd(),
        };
        // SAFETY: `fd` belongs to the relay `self` borrows for the whole call, so it stays open;
        // `bytes` is a live slice of exactly `bytes.len()` bytes that write(2) only reads. SIGPIPE
        // is ignored by the Rust runtime, so a closed relay answers EPIPE.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// How many bytes may be in flight towards the worker so that a write never waits for it to
    /// read: half the pipe's capacity (a pipe can be as small as one page when the user's pipe
    /// quota is used up), at most [`super::line::MAX_LINE_BYTES`] (a socket's buffers are larger).
    fn budget(&self) -> usize {
        let max = super::line::MAX_LINE_BYTES;
        match self {
            RelayWrite::Pipe(s) => {
                // SAFETY: F_GETPIPE_SZ reads a property of the open descriptor `s` borrows; it
                // touches no memory of ours.
                let capacity = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETPIPE_SZ) };
                usize::try_from(capacity).map_or(0, |c| (c / 2).min(max))
            }
            RelayWrite::Tcp(_) | RelayWrite::Unix(_) => max,
        }
    }
}

/// A running worker, owned by whoever is using it (the idle queue, one event, a stopping task).
/// Dropping it kills the process.
#[derive(Debug)]
pub(super) struct Worker {
    /// Process id, from the OS.
    pub(super) pid: u32,
    /// Frames from the worker (they go to it through `shared.line`).
    relay: RelayRead,
    /// Bytes read from the relay, not yet consumed; reused across events (answers of events
    /// behind the current one wait here for their turn).
    rbuf: BytesMut,
    /// An event taken on an idle worker is encoded here and written with one write; reused.
    wbuf: Vec<u8>,
    /// Events handled, for max_jobs.
    pub(super) jobs: u64,
    /// Event starts and ends so far; published in `shared.activity`.
    seq: u64,
    /// Shared with the registry, the reaper and the supervisor.
    pub(super) shared: Arc<Shared>,
    /// Whether the last idle check came first after the runtime's park (see
    /// [`Worker::check_idle`]): nothing else was ready to run, so the runtime parks again right
    /// after this event is written, unless its answer is read at once ([`Worker::read_early`]).
    fresh: bool,
    /// Whether reading the answer right after the event's write pays off lately.
    early: EarlyReads,
}

/// Whether reading a worker's answer right after writing its event ([`Worker::read_early`]) has
/// paid off lately: a score that goes up by one on a hit and down by two on a miss; tried while
/// above 0, else once in [`EARLY_RETRY`] chances.
#[derive(Debug)]
struct EarlyReads {
    /// 0 to [`EARLY_MAX`].
    score: u8,
    /// Chances passed up since the score reached 0.
    skipped: u8,
}

/// While reading early does not pay, one chance in this many still tries.
const EARLY_RETRY: u8 = 16;
/// The most the score climbs to: after a run of hits, four misses in a row turn it off.
const EARLY_MAX: u8 = 8;

impl EarlyReads {
    fn new() -> EarlyReads {
        EarlyReads {
            score: EARLY_MAX,
            skipped: 0,
        }
    }

    /// Whether to try now.
    fn now(&mut self) -> bool {
        if self.score == 0 {
            self.skipped += 1;
            if self.skipped < EARLY_RETRY {
                return false;
            }
        }
        self.skipped = 0;
        true
    }

    /// What the try found.
    fn found(&mut self, hit: bool) {
        self.score = if hit {
            (self.score + 1).min(EARLY_MAX)
        } else {
            self.score.saturating_sub(2)
        };
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // As `kill_on_drop`: a worker nobody owns any more must not linger.
        self.shared.kill(KillReason::None);
    }
}

/// The commands for an event's own connection met before its answer, applied with it (the last
/// one of each kind wins).
#[derive(Debug, Default)]
struct Seen {
    /// `idle_timeout` (Pier extension): `Some(Some(ms))`, or `Some(None)` = the server's.
    idle_timeout: Option<Option<u64>>,
    /// `starttls` (Pier extension): start TLS after the reply's body.
    starttls: bool,
}

/// What a worker said about an event.
#[derive(Debug)]
pub(super) enum Outcome {
    /// A reply.
    Reply(Reply),
    /// `Worker::error()`.
    Error(String),
    /// `Worker::stop()`.
    Stop,
}

impl Worker {
    /// Publishes that an event for `uuid` starts on this worker (see `Shared::activity`). A plain
    /// method around the `exec` call rather than an async wrapper, which measurably grew the
    /// future. The start time is the coarse clock (a few ms resolution, no time-stamp counter
    /// arithmetic): the informer shows seconds, and `Instant::now()` here cost ~260 instructions
    /// per event (callgrind).
    pub(super) fn begin(&mut self, uuid: uuid::Uuid) {
        self.shared
            .event_started
            .store(coarse_now_ns(), Ordering::Relaxed);
        // Written while `activity` is even (between events), published by its odd store below
        // (see `Shared::event_uuid`).
        let (high, low) = uuid.as_u64_pair();
        self.shared.uuid_halves[0].store(high, Ordering::Relaxed);
        self.shared.uuid_halves[1].store(low, Ordering::Relaxed);
        self.seq += 1;
        self.shared.activity.store(self.seq, Ordering::Release);
    }

    /// Publishes that the event ended.
    pub(super) fn end(&mut self) {
        self.seq += 1;
        self.shared.activity.store(self.seq, Ordering::Relaxed);
        self.shared.execs.store(self.seq / 2, Ordering::Relaxed);
    }

    /// An event whose answer was delivered by the runner holding the worker
    /// ([`Worker::deliver_next`]) started and ended: counted as one (`execs`), with no start
    /// published (it took no time on the worker's side).
    pub(super) fn ran_delivered(&mut self) {
        self.seq += 2;
        self.shared.activity.store(self.seq, Ordering::Relaxed);
        self.shared.execs.store(self.seq / 2, Ordering::Relaxed);
    }

    /// Writes the event to this worker, which has nothing else in flight (taken while idle), and
    /// opens its line behind it (`bytes`: the frame's size estimate).
    pub(super) async fn send(&mut self, event: &Event<'_>, bytes: usize) -> Result<(), PoolError> {
        self.wbuf.clear();
        let pid = self.pid;
        event.encode(&mut self.wbuf).map_err(PoolError::Encode)?;
        self.shared
            .line
            .open(&self.wbuf, bytes, self.jobs)
            .await
            .map_err(|source| PoolError::Undelivered { pid, source })
    }

    /// Whether its last idle check came first after the runtime's park ([`Worker::check_idle`]):
    /// nothing else was ready to run.
    pub(super) fn first_after_park(&self) -> bool {
        self.fresh
    }

    /// Right after an event was written to this idle worker, when the runtime has nothing else
    /// to do (the event came first after its park): one non-blocking read of the answer, in case
    /// the worker has already written it, bypassing tokio's readiness (which learns of it only at
    /// the next park), as long as that has paid off lately.
    ///
    /// With pier and its worker on one core, writing the event wakes the worker, and the kernel
    /// often lets it run at once: it reads the event, answers and blocks again before pier's
    /// write returns. The answer is then already there, and waiting for it the usual way costs a
    /// park of the runtime, an `epoll_wait` and the task's wake-up for nothing: at one
    /// connection ~3 of 4 answers were there (one `epoll_wait` of the six system calls of a
    /// round trip spared). Not under load: other ready connections would have joined the
    /// worker's line meanwhile, and their events go to the worker in one write with the answers
    /// read in one read; an answer read at once would end the line after one event. When the
    /// worker is elsewhere or busy the read finds nothing and is a wasted system call: after a
    /// few misses only one event in [`EARLY_RETRY`] tries (bench/results/2026-11-30-pipeline.md,
    /// "The 1 × 1 round trip").
    pub(super) fn read_early(&mut self) {
        if std::mem::take(&mut self.fresh) && self.early.now() {
            let hit = self.read_now();
            self.early.found(hit);
        }
    }

    /// One non-blocking read into `rbuf`, bypassing tokio's readiness: true when bytes came. A
    /// closed or failed relay reads as nothing here; the next read through tokio sees it again.
    fn read_now(&mut self) -> bool {
        read_room(&mut self.rbuf);
        let spare = self.rbuf.spare_capacity_mut();
        let fd = self.relay.read_fd();
        // SAFETY: `fd` belongs to the worker's relay, borrowed for the whole call; `spare` is
        // writable memory of exactly `spare.len()` bytes, of which read(2) initializes the first
        // `n` it reports, and only those are then counted as the buffer's.
        let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
        if n <= 0 {
            return false;
        }
        // SAFETY: read(2) initialized the first `n` spare bytes (n <= spare.len()).
        unsafe { self.rbuf.set_len(self.rbuf.len() + n as usize) };
        true
    }

    /// Reads frames until the worker answers the event, whose answer is the next one to come.
    /// Under load the answer is usually read already (the worker answers a line's events
    /// together): decoded without waiting. The future stays small (it is inside every event's):
    /// the read is polled in place, and the rare write that would wait is boxed.
    pub(super) async fn answer(&mut self, event: &Event<'_>) -> Result<Outcome, PoolError> {
        let mut seen = Seen::default();
        loop {
            if let Some(outcome) = self.decode_answer(event, &mut seen) {
                return outcome;
            }
            // About to wait for the worker: first hand it the events entered behind this one
            // since it last read (see `Line::take_entered`), once the events of the connections
            // pier is going through have joined them (`Line::write_held`): written at once, they
            // woke the worker (which, on pier's core, preempts pier) while more were coming, and
            // those waited for the next wake-up. Boxed: once per batch. Nothing to admit while
            // held: events wait in the pool's queue only while the line is full, and then it is
            // written at once (and a reference to the pool here grew every event's future).
            let shared = &self.shared;
            if let Some(writer) = shared.line.take_entered() {
                let write = shared.line.write_held(writer, || {});
                if Box::pin(write).await.is_err() {
                    // Their answers, and this one if it is not in yet, fail as for a crash.
                    shared.kill(KillReason::None);
                }
            }
            read_room(&mut self.rbuf);
            let (relay, rbuf) = (&mut self.relay, &mut self.rbuf);
            match std::future::poll_fn(|cx| relay.poll_read_buf(cx, rbuf)).await {
                Ok(0) => return Err(self.exited_error(None)),
                Ok(_) => {}
                Err(e) => return Err(self.exited_error(Some(e))),
            }
        }
    }

    /// When the next answer in the read buffer is a plain reply (WRITE or CONTINUE, no state),
    /// offers its body to `conn` ([`crate::connection::Link::deliver`]); consumed when taken.
    /// `Some(wake)`: delivered, and its task still needs a wake-up.
    pub(super) fn deliver_next(&mut self, conn: &crate::connection::Link) -> Option<bool> {
        // Checked first: a connection that is not parked (it has packets to run: 100 × 16) would
        // have its answer decoded twice, here and by its task (+150 instructions per message).
        if !conn.parked() {
            return None;
        }
        let Ok(Some(view)) = decode_view(&self.rbuf, MAX_WORKER_FRAME) else {
            return None;
        };
        let used = view.frame_len();
        let body: &[u8] = match WorkerMessage::from_view(&view) {
            Ok(WorkerMessage::Reply(reply)) if reply.state.is_none() => match reply.kind {
                ReplyKind::Write => reply.body,
                ReplyKind::Continue => &[],
                _ => return None,
            },
            _ => return None,
        };
        let wake = conn.deliver(body)?;
        self.rbuf.advance(used);
        Some(wake)
    }

    /// Decodes the frames read so far up to the event's answer: `None` when it is not all in.
    /// `seen`: the commands for the event's own connection met before it. Inlined (one caller):
    /// out of line, its large result went through memory (+45 instructions per event).
    #[inline(always)]
    fn decode_answer(
        &mut self,
        event: &Event<'_>,
        seen: &mut Seen,
    ) -> Option<Result<Outcome, PoolError>> {
        let pid = self.pid;
        loop {
            // Read in place, no `Frame` built (see `decode_view`).
            match decode_view(&self.rbuf, MAX_WORKER_FRAME) {
                Ok(Some(view)) => {
                    let used = view.frame_len();
                    let message = WorkerMessage::from_view(&view);
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
                            return Some(Ok(Outcome::Error(message)));
                        }
                        Ok(WorkerMessage::Stop) => {
                            self.rbuf.advance(used);
                            return Some(Ok(Outcome::Stop));
                        }
                        Ok(WorkerMessage::Command(pier_protocol::Command::IdleTimeout { ms })) => {
                            seen.idle_timeout = Some(ms);
                            self.rbuf.advance(used);
                        }
                        Ok(WorkerMessage::Command(pier_protocol::Command::Starttls)) => {
                            seen.starttls = true;
                            self.rbuf.advance(used);
                        }
                        Ok(WorkerMessage::Command(command)) => {
                            // Applied here, in the order written, before the answer is: bytes
                            // queued for the event's own connection go out before its reply.
                            event.conn.registry().apply(&command, pid);
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
                            // Only what is kept is split off (state, then body: the frame's
                            // end), the rest skipped; an empty part is no split at all. Frozen
                            // whole and sliced, each answer took a reference of the buffer for
                            // the frame and one per part, and dropped the frame's.
                            debug_assert_eq!(body.end, used);
                            self.rbuf
                                .advance(state.as_ref().map_or(body.start, |s| s.start));
                            let mut part = |len: usize| match len {
                                0 => Bytes::new(),
                                len => self.rbuf.split_to(len).freeze(),
                            };
                            let state = state.map(|s| part(s.len()));
                            let body = part(body.len());
                            return Some(Ok(Outcome::Reply(Reply {
                                action,
                                body,
                                state,
                                pid,
                                idle_timeout: seen.idle_timeout,
                                starttls: seen.starttls,
                            })));
                        }
                        Err(source) => return Some(Err(PoolError::BadMessage { pid, source })),
                    }
                }
                Ok(None) => return None,
                Err(source) => {
                    return Some(Err(PoolError::Garbage {
                        pid,
                        bytes: control_text(&self.rbuf),
                        source,
                    }))
                }
            }
        }
    }

    /// The error for a worker whose relay closed during an event: says when the pool killed it.
    fn exited_error(&self, source: Option<std::io::Error>) -> PoolError {
        let pid = self.pid;
        match self.shared.reason() {
            KillReason::ExecTtl => PoolError::ExecTtl { pid },
            KillReason::Stuck => PoolError::KilledStuck { pid },
            KillReason::None => PoolError::WorkerExited { pid, source },
        }
    }

    /// Checks, right before an event is handed over, that the worker stayed silent while idle: no
    /// bytes left after its last reply, nothing new on its relay, relay not closed. This is one
    /// non-blocking `read(2)` (answered `EAGAIN` when all is well); a death while idle is noticed
    /// by the reaper without it.
    ///
    /// A real syscall rather than tokio's cached readiness: the cache only learns about bytes when
    /// the reactor next polls epoll, which under load can be after the event is handed over.
    /// Except for the first check after the reactor polled epoll on this thread ([`reactor_polled`]):
    /// the cache is then as fresh as the syscall would be, short of the microseconds since, and
    /// is asked instead (no syscall unless it says bytes came). That is every event at one
    /// connection (the packet's own wake-up is that poll), one system call of 7 per message;
    /// under load, when the reactor is polled only between batches of tasks, the syscall stays.
    pub(super) fn check_idle(&mut self) -> Result<(), PoolError> {
        let pid = self.pid;
        if !self.rbuf.is_empty() {
            return Err(PoolError::IdleGarbage {
                pid,
                bytes: control_text(&self.rbuf),
            });
        }
        let mut probe = [0u8; 64];
        self.fresh = FRESH.replace(false);
        let probed = if self.fresh {
            // `WouldBlock` without a syscall unless tokio saw the relay become readable.
            self.relay.try_read(&mut probe)
        } else {
            read_now(self.relay.read_fd(), &mut probe)
        };
        match probed {
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

    /// Stops the worker: stop frame, then waits up to `destroy_timeout` for it to exit (frames
    /// it still sends, such as the stock worker's stray `CLOSE` after the stop frame, are read
    /// and dropped), then kills it.
    pub(super) async fn stop(mut self: Box<Self>, destroy_timeout: Duration) {
        self.shared.leaving.store(true, Ordering::Relaxed);
        self.wbuf.clear();
        let _ = control::encode_stop_request(&mut self.wbuf);
        let pid = self.pid;
        let shared = self.shared.clone();
        let graceful = tokio::time::timeout(destroy_timeout, async {
            let _ = shared.line.write_alone(&self.wbuf).await;
            let mut sink = BytesMut::with_capacity(4096);
            loop {
                sink.clear();
                match self.relay.read_buf(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            shared.exited().await;
        })
        .await;
        match graceful {
            Ok(()) => debug!(pid, "worker stopped"),
            Err(_) => {
                warn!(pid, timeout = ?destroy_timeout, "worker did not stop in time; killing it")
            }
        }
        // Dropping it kills it if it is still there.
    }
}

thread_local! {
    /// Set by [`reactor_polled`] when the reactor has just polled epoll on this thread; taken by
    /// the next idle check here (see [`Worker::check_idle`]).
    static FRESH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The runtime's `on_thread_unpark` hook (`main` installs it): the thread comes back from the
/// reactor, which polled epoll, so tokio's readiness of every relay is up to date; the next idle
/// check on this thread trusts it instead of reading. Without the hook every check reads.
pub fn reactor_polled() {
    FRESH.set(true);
}

/// One non-blocking `read(2)` on a worker's relay, bypassing tokio's readiness cache. tokio made
/// the descriptor `O_NONBLOCK`, so an empty one answers `WouldBlock`; bytes read here are never
/// needed by tokio (the worker is killed when there are any).
fn read_now(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `fd` belongs to the worker's relay, which the caller borrows for the whole call, so
    // it stays open; `buf` is a live, writable slice of exactly `buf.len()` bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// At most 64 bytes, lossily as text, for logs.
pub(super) fn control_text(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(64)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > cut.len() {
        s.push('…');
    }
    s
}

/// Sends the pid request and reads the answer on a fresh relay; returns the pid the worker
/// reported and the bytes read past its answer. `Err` carries what was wrong, for the log.
pub(super) async fn handshake(
    relay: &mut Relay,
    rbuf: &mut BytesMut,
) -> Result<u32, HandshakeFailure> {
    let mut wbuf = Vec::with_capacity(64);
    let _ = control::encode_pid_request(&mut wbuf, std::process::id());
    relay
        .write_all(&wbuf)
        .await
        .map_err(HandshakeFailure::Write)?;
    loop {
        match decode(rbuf, MAX_WORKER_FRAME) {
            Ok(Some((frame, used))) => {
                let result = match WorkerMessage::from_frame(&frame) {
                    Ok(WorkerMessage::Pid(pid)) => Ok(pid),
                    Ok(other) => Err(HandshakeFailure::Garbage(format!(
                        "expected a pid, got {other:?}"
                    ))),
                    Err(e) => Err(HandshakeFailure::Garbage(e.to_string())),
                };
                rbuf.advance(used);
                return result;
            }
            Ok(None) => {}
            Err(e) => {
                return Err(HandshakeFailure::Garbage(format!(
                    "{e}: {:?}",
                    control_text(rbuf)
                )))
            }
        }
        rbuf.reserve(READ_CHUNK);
        match relay.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(HandshakeFailure::Closed),
            Ok(_) => {}
        }
    }
}

/// Why a pid handshake failed.
#[derive(Debug)]
pub(super) enum HandshakeFailure {
    /// The request could not be written.
    Write(std::io::Error),
    /// The relay closed before an answer.
    Closed,
    /// The answer was not a pid.
    Garbage(String),
}

/// Starts one worker and completes the pid handshake within allocate_timeout (on a socket relay:
/// the worker connects back within `relay_timeout` and the relay listener does the handshake).
pub(super) async fn spawn_worker(
    spec: &Arc<Spec>,
    relay: Option<&Arc<RelayListener>>,
    generation: u64,
) -> Result<Box<Worker>, PoolError> {
    let config = &spec.config;
    let mut cmd = Command::new(&config.command[0]);
    let relay_env = relay.map_or_else(|| "pipes".to_owned(), |r| r.worker_address().to_owned());
    cmd.args(&config.command[1..])
        .env("RR_RELAY", relay_env)
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
    if let Some(ids) = &config.run_as {
        cmd.uid(ids.uid).gid(ids.gid);
    }
    let mut child = cmd.spawn().map_err(|source| PoolError::Spawn {
        command: config.command[0].clone(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three pipes were requested");
    };
    let kept = Arc::new(Mutex::new(String::new()));
    let stderr_task = tokio::spawn(log_lines(pid, "stderr", stderr, Some(kept.clone())));
    let stderr_text =
        |kept: &Arc<Mutex<String>>| kept.lock().map(|s| s.clone()).unwrap_or_default();

    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let connected = match relay {
        None => {
            let stdout = stdout
                .into_owned_fd()
                .and_then(pipe::Receiver::from_owned_fd)
                .map_err(|source| PoolError::Spawn {
                    command: config.command[0].clone(),
                    source,
                })?;
            let mut pipes = Relay::Pipes { stdin, stdout };
            let answer =
                tokio::time::timeout(config.allocate_timeout, handshake(&mut pipes, &mut rbuf))
                    .await;
            answer.map(|r| r.map(|_| pipes))
        }
        Some(listener) => {
            // The worker's stdout is not the relay: log it as its stderr is.
            tokio::spawn(log_lines(pid, "stdout", stdout, None));
            // Unused on a socket relay: an orphaned worker learns that pier is gone from its
            // socket instead.
            drop(stdin);
            let arrived = tokio::time::timeout(config.relay_timeout, listener.claim(pid)).await;
            match arrived {
                Ok(Some((socket, leftover))) => {
                    rbuf = leftover;
                    Ok(Ok(socket))
                }
                Ok(None) => Ok(Err(HandshakeFailure::Closed)),
                Err(elapsed) => Err(elapsed),
            }
        }
    };
    let failed = |child: &mut Child| {
        let _ = child.start_kill();
    };
    match connected {
        Ok(Ok(relay)) => {
            debug!(pid, "worker started");
            let (relay, writer) = relay.split();
            let (exited, _) = watch::channel(false);
            let shared = Arc::new(Shared {
                pid,
                activity: AtomicU64::new(0),
                started: Instant::now(),
                created: SystemTime::now(),
                execs: AtomicU64::new(0),
                event_started: AtomicU64::new(0),
                uuid_halves: [AtomicU64::new(0), AtomicU64::new(0)],
                generation,
                retire: AtomicU8::new(0),
                leaving: AtomicBool::new(false),
                reason: AtomicU8::new(KillReason::None as u8),
                kill: Notify::new(),
                exited,
                line: Line::new(
                    writer.budget(),
                    writer,
                    config.max_in_flight,
                    config.max_jobs,
                    spec.in_lines.clone(),
                ),
            });
            if let Ok(mut registry) = spec.registry.lock() {
                registry.insert(pid, shared.clone());
            }
            tokio::spawn(reap(child, shared.clone(), spec.clone()));
            // Boxed: the worker moves through the idle queue twice per event, and a pointer is
            // cheaper to move than the whole struct (measured with callgrind).
            Ok(Box::new(Worker {
                pid,
                relay,
                rbuf,
                wbuf: Vec::with_capacity(READ_CHUNK),
                jobs: 0,
                seq: 0,
                fresh: false,
                early: EarlyReads::new(),
                shared,
            }))
        }
        Ok(Err(HandshakeFailure::Garbage(detail))) => {
            failed(&mut child);
            let _ = child.wait().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
            Err(PoolError::HandshakeGarbage {
                pid,
                detail,
                stderr: stderr_text(&kept),
            })
        }
        Ok(Err(HandshakeFailure::Write(source))) => {
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
            Err(PoolError::HandshakeWrite { pid, source })
        }
        Ok(Err(HandshakeFailure::Closed)) => {
            let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(Ok(s)) => s.to_string(),
                _ => {
                    failed(&mut child);
                    "closed its relay".into()
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
            Err(PoolError::HandshakeExited {
                status,
                stderr: stderr_text(&kept),
            })
        }
        Err(_) => {
            failed(&mut child);
            let _ = child.wait().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
            let timeout = if relay.is_some() {
                config.relay_timeout
            } else {
                config.allocate_timeout
            };
            Err(PoolError::HandshakeTimeout {
                pid,
                timeout,
                stderr: stderr_text(&kept),
            })
        }
    }
}

/// Owns the worker's process until it exits: kills it (and its process group) when asked, reaps
/// it, leaves the registry, and tells the supervisor, which replaces it at once if it was idle.
/// Only this task waits on the process, so a pid it signals is never a reused one.
async fn reap(mut child: Child, shared: Arc<Shared>, spec: Arc<Spec>) {
    let pid = shared.pid;
    let status = tokio::select! {
        status = child.wait() => status,
        _ = shared.kill.notified() => {
            if let Some(target) = child.id().and_then(|id| libc::pid_t::try_from(id).ok()) {
                // SAFETY: kill(2) takes plain integers and touches no memory of ours. The process
                // is our unreaped child (`child.id()` is `Some` until it is reaped, and only this
                // task reaps it), and it leads its own process group, so neither can be anyone
                // else's. The group goes too: a process the worker started could otherwise keep
                // its relay open.
                unsafe {
                    libc::kill(-target, libc::SIGKILL);
                }
            }
            let _ = child.start_kill();
            child.wait().await
        }
    };
    if let Ok(mut registry) = spec.registry.lock() {
        registry.remove(&pid);
    }
    shared.exited.send_replace(true);
    match status {
        Ok(status) => debug!(pid, %status, "worker exited"),
        Err(e) => warn!(pid, error = %e, "could not reap worker"),
    }
    // Waits for room when more workers than the pool's largest size end at once (stopping ones
    // count too); fails only once the supervisor is gone (shutdown).
    let _ = spec.exits.send(pid).await;
}

/// Logs a worker's output line by line with its pid; keeps the first bytes to explain a failed
/// start when `kept` is given.
async fn log_lines(
    pid: u32,
    stream: &'static str,
    output: impl AsyncRead + Unpin,
    kept: Option<Arc<Mutex<String>>>,
) {
    let mut lines = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a worker writing an endless line without a newline is logged in pieces.
        match (&mut lines)
            .take(STDERR_KEPT as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        info!(pid, "worker {stream}: {text}");
        if let Some(kept) = &kept {
            if let Ok(mut kept) = kept.lock() {
                if kept.len() < STDERR_KEPT {
                    kept.push_str(text);
                    kept.push('\n');
                }
            }
        }
    }
}

/// The registry's exit notifications: pids of reaped workers, for the supervisor. Bounded by the
/// pool's largest size (`num_workers` + the dynamic allocator's `max_workers`).
pub(super) type Exits = mpsc::Sender<u32>;

/// `CLOCK_MONOTONIC_COARSE` in ns: the kernel's last tick, read from the vDSO without the
/// time-stamp counter arithmetic of `Instant::now()`; a few ms resolution.
pub(crate) fn coarse_now_ns() -> u64 {
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

#[cfg(test)]
mod tests {
    use super::{read_room, EarlyReads, EARLY_MAX, EARLY_RETRY, READ_CHUNK};
    use bytes::{Buf, BytesMut};

    #[test]
    fn read_room_reserves_a_chunk_only_when_less_than_half_is_left() {
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        // An answer read and consumed: the room it took is not reclaimed yet, and need not be.
        rbuf.extend_from_slice(&[1; 100]);
        rbuf.advance(100);
        let spare = rbuf.capacity() - rbuf.len();
        assert!(spare < READ_CHUNK);
        read_room(&mut rbuf);
        assert_eq!(
            rbuf.capacity() - rbuf.len(),
            spare,
            "half a chunk left: no reserve"
        );
        // Under half a chunk left (with bytes still unread): a whole chunk of room, bytes kept.
        rbuf.extend_from_slice(&vec![2; READ_CHUNK / 2 + 1]);
        read_room(&mut rbuf);
        assert!(rbuf.capacity() - rbuf.len() >= READ_CHUNK);
        assert_eq!(rbuf.len(), READ_CHUNK / 2 + 1);
        assert!(rbuf.iter().all(|&b| b == 2));
    }

    /// Chances taken out of `n`, each try finding `hit`.
    fn tries(early: &mut EarlyReads, n: usize, hit: bool) -> usize {
        (0..n)
            .filter(|_| {
                let now = early.now();
                if now {
                    early.found(hit);
                }
                now
            })
            .count()
    }

    #[test]
    fn early_reads_stop_when_they_miss_and_come_back_when_they_hit() {
        let mut early = EarlyReads::new();
        // Hits (one connection, worker on the same core): every chance is taken.
        assert_eq!(tries(&mut early, 100, true), 100);
        // Misses (load, or the worker elsewhere): EARLY_MAX / 2 tries, then one in EARLY_RETRY.
        let n = 10 * usize::from(EARLY_RETRY);
        let taken = tries(&mut early, usize::from(EARLY_MAX / 2) + n, false);
        assert_eq!(taken, usize::from(EARLY_MAX / 2) + 10);
        // One hit among the retries turns it on again.
        assert_eq!(tries(&mut early, usize::from(EARLY_RETRY), true), 1);
        assert_eq!(tries(&mut early, 10, true), 10);
        // A miss now and then (3 hits in 4) keeps it on.
        for i in 0..400 {
            assert!(early.now(), "chance {i} passed up");
            early.found(i % 4 != 0);
        }
    }
}
