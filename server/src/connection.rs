//! One client connection: CONNECTED, one DATA per packet, CLOSE exactly once; strictly in order.
//! And its one outbound queue: replies to its own events and bytes pushed by anyone (extension
//! `push`, RPC) go out in the order they were accepted, each chunk whole.
//!
//! The queue ([`Link`]) is shared with the registry; the connection's own task is its only writer
//! (no writer task per connection: an idle connection is one task). Pushers append a `Bytes` and
//! raise the link's signal, which wakes the task; they never wait, and a client that does not
//! read costs them nothing: past `max_write_buffer` queued bytes, or after `write_timeout`
//! without the client reading any, the connection is closed with a logged reason and gets its
//! CLOSE event. Replies are always queued (the connection reads its next packet only once
//! everything queued is written, so a client is paced by its own reading, as before); only pushes
//! are bounded.
//!
//! Echo traffic never pushes, so the push path must cost it (almost) nothing: while nothing is
//! queued the task only watches the signal (one atomic load per poll; its waker is handed to the
//! queue once, not per event), with no lock and no waiter list; a reply with nothing queued
//! before it is written at once. The writer's full loop ([`Writer::drive`], boxed) runs only once
//! bytes are queued or a close is asked for.
//!
//! While its DATA event waits in a busy worker's line and it waits for nothing else (plaintext, no
//! packet buffered, nothing queued), the task *parks*: registered for the socket's next bytes
//! (and, with an idle timeout, its idle timer set), it lets whoever reads the worker's answers
//! write a plain answer (WRITE or CONTINUE, no state, no command before it) straight to the
//! socket and mark the event done, without a wake-up ([`Link::deliver`]); the task finds the
//! event done when the client's next packet wakes it. Per message at 100 × 1 that is one task
//! poll and wake-up instead of two (bench/results/2026-12-01-answer.md; with an idle timeout,
//! bench/results/2026-12-01-idle.md).
//!
//! A pipelining client's replies share writes: while its next packet is read already, a reply is
//! held back and leaves with the next one ([`Writer::reply`]); a burst of 16 lines is answered
//! with one `send(2)`, not 16 (bench/results/2026-12-01-pipe.md).

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use crate::log_scope::{self, debug, error, info, warn};
use bytes::{Buf, Bytes};
use pier_protocol::tcp::{ContextPrefix, EventKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::ServerConfig;
use crate::framing::{self, FramingError};
use crate::limits::Reader;
use crate::listener::proxy::Rewind;
use crate::listener::stream::{self, ReadSide, WriteSide};
use crate::listener::{Accepted, Listener};
use crate::ops::{CloseReason, ServerMetrics};
use crate::pool::{Action, Event, Pool, PoolError, Reply, SpareBox};

/// Longest idle timeout a worker may set (Pier extension `idle_timeout`): a week. Longer is
/// almost surely a unit mistake (seconds for milliseconds); it is refused as a worker error.
const MAX_WORKER_IDLE_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;

/// Most bytes one read of a client takes, whatever `tcp.read_buf_size` says.
const INITIAL_READ_BUFFER: usize = framing::packets::SCRATCH_SIZE;
/// Most queued chunks handed to one `writev(2)`.
const MAX_IOVECS: usize = 64;
/// Most reply bytes held back to leave with the next reply ([`Writer::reply`]): larger replies
/// gain little from sharing a write, and a client is not kept waiting for much.
const MAX_HELD: usize = 16 * 1024;

/// What the connection does after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Keep reading packets.
    Read,
    /// Close the socket and send CLOSE.
    Close,
    /// The worker commanded STARTTLS: write what is queued, discard what the client sent
    /// meanwhile, handshake, read on.
    StartTls,
}

/// What ended the read loop's wait for the next packet.
enum Wake {
    /// The server is shutting down.
    Stopping,
    /// The writer's side: signalled, or all written (`None`: read on); else why it stopped.
    Settled(Option<Stop>),
    /// The next packet, or the end of the stream.
    Packet(Option<Result<bytes::BytesMut, FramingError>>),
    /// The idle deadline passed (the client may have sent bytes since).
    IdleDeadline,
}

/// A connection's packets, read through the idle clock.
type Packets = framing::Packets<Reader<ReadSide>>;

/// A live connection as the registry and pushers see it: ids, stats, the outbound queue.
///
/// Laid out by hand, on cache-line boundaries (`link_layout` checks it): what building an event
/// reads in the first line; the signal and the queue, all a reply touches, in the second; the
/// rest after. At 1000 connections on one worker a connection's state has left the core's L2 by
/// the time its next packet or answer comes, so each line an event touches is a miss
/// (bench/results/2026-11-30-pipeline.md): a packet reads lines 0 and 1 (the signal, then the
/// event's ids), its reply line 1 only.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Link {
    /// The listener it came from (server name, bounds).
    listener: Arc<Listener>,
    /// Client address, server name and id as events carry them, JSON-encoded once here rather
    /// than per event.
    context: ContextPrefix,
    /// The connection id (registry key).
    pub(crate) uuid: Uuid,
    /// Packet bytes received, delimiters included.
    bytes_in: AtomicU64,
    /// Ends the first line: `signal` starts the second.
    _line: [CacheLine; 0],
    /// Raised when the writer must look at the queue: bytes went into an empty queue, or a close
    /// was asked for; taken by the writer just before it locks the queue (so anything after that
    /// raises it again). While it is down and the writer holds nothing, nothing is queued: the
    /// connection's task checks that without the lock, which is all an echo event pays for push.
    signal: AtomicBool,
    /// The listener's counters, a handle of their own here so that a reply does not read the
    /// first line for them.
    metrics: ServerMetrics,
    /// Bytes waiting to be written, in the order accepted, and what was written.
    queue: Mutex<Queue>,
    /// Whether a running event's plain answer may be written by whoever holds the worker without
    /// waking this task ([`Link::deliver`]): [`AWAKE`], [`PARKED`], [`CLAIMED`], [`CLAIMED_WAKE`].
    park: AtomicU8,
    /// The running event waits for its turn in a worker's line (or in the pool's queue): only
    /// then may a runner deliver its answer, so only then does the task park.
    turn: AtomicBool,
    /// The connection has an idle timeout: a delivery notes when it wrote the answer
    /// (`answered`), where the idle clock restarts. Written by the task when the timeout is set.
    idle_clock: AtomicBool,
    /// The chunks the writer holds (`Writer::inflight`) are replies held back, not yet tried: the
    /// client's next packet was read already, and they leave with its reply, in one write
    /// ([`Writer::reply`]). Only the connection's task reads and writes it (an atomic only
    /// because the link is shared).
    held: AtomicBool,
    /// The plaintext socket's descriptor while [`PARKED`] or claimed. Rule: stored by the
    /// connection's task right before it parks, from its write half, which the task owns until
    /// after the running event's future is dropped; that drop gives the event's slot up under the
    /// worker's line lock, which a delivery holds throughout (`Line::pass_on`): no delivery uses
    /// the descriptor once the socket may close. After the flags, so that `answered` still ends
    /// the park state's line (`link_layout`).
    park_fd: AtomicI32,
    /// When a delivery wrote the running event's answer ([`crate::limits::coarse_now_ns`]
    /// time; only with `idle_clock`); 0: none since the task last looked.
    answered: AtomicU64,
    /// The id as sent in events.
    uuid_text: String,
    /// Client address as sent in events.
    pub(crate) remote_addr: String,
    /// When it was accepted.
    pub(crate) connected_at: SystemTime,
}

/// The task must be woken to learn its event's answer (the usual way).
const AWAKE: u8 = 0;
/// The task waits for nothing but its next packet (registered for the socket's read readiness),
/// its event's answer and the signal: a plain answer may be written for it without a wake-up.
const PARKED: u8 = 1;
/// A runner is delivering an answer to it.
const CLAIMED: u8 = 2;
/// As [`CLAIMED`], and the task was polled meanwhile: wake it once delivered.
const CLAIMED_WAKE: u8 = 3;

/// A zero-sized field that aligns what follows it to a cache line (see [`Link`]).
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct CacheLine;

/// The shared part of the outbound queue. In this order, so that what a reply reads and writes
/// (the count, what was written, whether the connection is closing) shares the lock's cache
/// line, the signal's (see [`Link`]); the chunks and the waker come after, touched only by
/// pushes and a writer that has something queued.
#[derive(Debug, Default)]
#[repr(C)]
struct Queue {
    /// Bytes not yet written: these chunks plus those the writer holds. Zero means no chunks.
    queued: usize,
    /// Bytes written to the socket (under the lock the writer holds anyway after a write).
    written: u64,
    /// Whether the connection is closing, and how.
    closing: Closing,
    /// Chunks not yet taken by the writer, oldest first.
    chunks: VecDeque<Bytes>,
    /// The connection's task, woken when the signal is raised. Kept, not taken, by a wake-up:
    /// its writer hands it over once (again only if the task's waker changes), not around every
    /// event as a `Notify` waiter or an `AtomicWaker` registration would be.
    waker: Option<Waker>,
}

/// How a connection is asked to close through its queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Closing {
    /// It is not.
    #[default]
    No,
    /// After what is queued is written (`close` op, RPC): no more pushes are taken.
    AfterFlush,
    /// Now, dropping what is queued: a push found `queued` bytes waiting and would have passed
    /// `max_write_buffer` with its `adding` more.
    Overflow {
        /// Bytes waiting.
        queued: usize,
        /// Bytes of the refused push.
        adding: usize,
    },
}

/// Why the writer stopped: the connection closes.
#[derive(Debug)]
enum Stop {
    /// Everything queued is written and a close was asked for.
    Flushed,
    /// Everything queued is written (only when the caller asked to be told).
    Drained,
    /// The client does not read: the bound was passed.
    Overflow {
        /// Bytes waiting.
        queued: usize,
        /// Bytes of the refused push.
        adding: usize,
    },
    /// The client read nothing for `write_timeout` while bytes waited.
    Timeout {
        /// Bytes waiting.
        queued: usize,
    },
    /// The socket failed.
    Io(std::io::Error),
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding it; a poisoned queue is still a valid queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id as sent in events.
    pub(crate) fn uuid_text(&self) -> &str {
        &self.uuid_text
    }

    /// The registry it is in (what workers' push commands act on).
    pub(crate) fn registry(&self) -> &crate::registry::Registry {
        &self.listener.registry
    }

    /// The `tcp.servers` key it belongs to.
    pub(crate) fn server(&self) -> &str {
        &self.listener.config.name
    }

    /// Packet bytes received.
    pub(crate) fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes written to the client.
    pub(crate) fn bytes_out(&self) -> u64 {
        self.lock().written
    }

    /// Queues pushed bytes; never waits. False when the connection is closing, or when the bytes
    /// would pass `max_write_buffer`: the connection is then closed (its client is not reading).
    pub(crate) fn push(&self, data: Bytes) -> bool {
        let mut q = self.lock();
        if q.closing != Closing::No {
            return false;
        }
        let max = self.listener.config.max_write_buffer;
        if q.queued.saturating_add(data.len()) > max {
            q.closing = Closing::Overflow {
                queued: q.queued,
                adding: data.len(),
            };
            self.raise(&q);
            return false;
        }
        if data.is_empty() {
            return true;
        }
        let was_empty = q.queued == 0;
        q.queued += data.len();
        self.metrics.queued(data.len());
        q.chunks.push_back(data);
        // Into a non-empty queue: the writer holds bytes or has the signal already, and takes
        // the whole queue each time it looks.
        if was_empty {
            self.raise(&q);
        }
        true
    }

    /// Forgets what is still queued (the connection is gone): no more pushes are taken.
    fn drop_queued(&self) {
        let mut q = self.lock();
        if q.closing == Closing::No {
            q.closing = Closing::AfterFlush;
        }
        q.chunks = VecDeque::new();
        // The task ends: the registry's last holders of this link must not keep it alive.
        q.waker = None;
        let dropped = std::mem::take(&mut q.queued);
        drop(q);
        if dropped > 0 {
            self.metrics.sent(dropped, false);
        }
    }

    /// Asks for the connection to close once what is queued is written.
    pub(crate) fn request_close(&self) {
        let mut q = self.lock();
        if q.closing == Closing::No {
            q.closing = Closing::AfterFlush;
        }
        self.raise(&q);
    }

    /// Wakes the connection's task (shutdown: see [`crate::registry::Registry::stop_connections`]);
    /// its writer then finds nothing new to write.
    pub(crate) fn wake(&self) {
        self.raise(&self.lock());
    }

    /// Tells the writer to look at the queue, and wakes its task. Under the queue's lock, so a
    /// writer handing over a new waker either sees the signal or is woken.
    fn raise(&self, q: &Queue) {
        self.signal.store(true, Ordering::Release);
        if let Some(waker) = &q.waker {
            waker.wake_by_ref();
        }
    }

    /// Writes a running event's plain answer `body` for the worker's holder, if this connection
    /// is [`PARKED`] and nothing is queued: `None` when not (its task gets the answer the usual
    /// way); `Some(wake)`: delivered, and `wake` when its task must still be woken (it was polled
    /// during the delivery). A short send queues the rest and raises the signal (the task writes
    /// it, as a reply's).
    pub(crate) fn deliver(&self, body: &[u8]) -> Option<bool> {
        if self
            .park
            .compare_exchange(PARKED, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let delivered = self.deliver_claimed(body);
        if delivered && self.idle_clock.load(Ordering::Relaxed) {
            // Seen by the task after the event's slot tells it the answer was delivered.
            self.answered
                .store(crate::limits::coarse_now_ns(), Ordering::Relaxed);
        }
        let was = self.park.swap(AWAKE, Ordering::AcqRel);
        delivered.then_some(was == CLAIMED_WAKE)
    }

    fn deliver_claimed(&self, body: &[u8]) -> bool {
        let fd = self.park_fd.load(Ordering::Relaxed);
        {
            let mut q = self.lock();
            if q.queued > 0 || q.closing != Closing::No || self.signalled() || fd < 0 {
                return false;
            }
            if body.is_empty() {
                return true;
            }
            self.metrics.queued(body.len());
            q.queued += body.len();
        }
        // SAFETY: `fd` is the plaintext socket's, open while a delivery runs (the rule on
        // `park_fd`), and the borrow ends with this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        // An error sends nothing: the body is queued, and the task's own write meets the error.
        let sent = stream::send_on_descriptor(fd, &[IoSlice::new(body)]).unwrap_or(0);
        let mut q = if sent > 0 {
            Writer::wrote(self, sent)
        } else {
            self.lock()
        };
        if sent < body.len() {
            // In front: a push accepted during the send (another thread) queued behind the
            // answer's count, so it goes after the whole answer. Nothing else can be there: the
            // queue was empty when the delivery counted the body.
            q.chunks.push_front(Bytes::copy_from_slice(&body[sent..]));
        }
        if q.queued > 0 {
            self.raise(&q);
        }
        true
    }

    /// Whether the task is parked now (a delivery may be tried; [`Link::deliver`] decides).
    pub(crate) fn parked(&self) -> bool {
        self.park.load(Ordering::Relaxed) == PARKED
    }

    /// When the running event's answer was delivered ([`Link::deliver`], with an idle timeout),
    /// once; 0 when it was not.
    fn take_answered(&self) -> u64 {
        let at = self.answered.load(Ordering::Relaxed);
        if at != 0 {
            self.answered.store(0, Ordering::Relaxed);
        }
        at
    }

    /// The running event waits for its turn (`yes`), or stopped waiting.
    pub(crate) fn awaits_turn(&self, yes: bool) {
        self.turn.store(yes, Ordering::Relaxed);
    }

    /// The task is polled: a parked connection takes it back (a runner delivering now wakes it).
    fn unpark(&self) {
        let mut now = self.park.load(Ordering::Acquire);
        loop {
            let to = match now {
                PARKED => AWAKE,
                CLAIMED => CLAIMED_WAKE,
                _ => return,
            };
            match self
                .park
                .compare_exchange(now, to, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => now = actual,
            }
        }
    }

    /// Whether the writer holds replies back ([`Link::held`]).
    fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether the writer must look at the queue.
    fn signalled(&self) -> bool {
        self.signal.load(Ordering::Acquire)
    }

    /// Takes the signal; the caller then locks the queue and handles all it finds.
    fn take_signal(&self) -> bool {
        self.signalled() && self.signal.swap(false, Ordering::AcqRel)
    }
}

/// The writing side: the socket and the chunks taken from the queue. Owned by the connection's
/// task; every method is cancel-safe (state lives here, writes are non-blocking attempts).
/// In this order (see [`Conn`]): what every packet and reply reads first, the chunks last.
#[repr(C)]
struct Writer {
    /// The socket's write half (plaintext or TLS).
    half: WriteSide,
    /// Since when the socket has refused bytes while some waited (`write_timeout` runs from here);
    /// `None` while writes make progress and once nothing is left.
    stalled_since: Option<Instant>,
    /// The waker last handed to the queue (`Queue::waker`): while the task's waker is still
    /// this one, waiting for the signal takes no lock.
    registered: Option<Waker>,
    /// Chunks taken from the shared queue and being written, front first; counted in `queued`.
    inflight: VecDeque<Bytes>,
}

/// Whether a reply would go behind bytes other than held replies ([`Link::held`]): pushes queued
/// since (they must keep their place, so the reply goes behind them, through the queue), or
/// bytes the writer still has to write or flush.
fn behind_others(q: &Queue, writer: &Writer, link: &Link) -> bool {
    !q.chunks.is_empty() || writer.holds(link)
}

/// Ready once the link's signal is raised, without taking it: one atomic load while the task's
/// waker is the one the queue holds, else the new one is handed over first (and the signal
/// checked again: a raise before that woke the old one). Cancel-safe: nothing is taken.
fn poll_signal(link: &Link, registered: &mut Option<Waker>, cx: &mut Context<'_>) -> Poll<()> {
    if link.signalled() {
        return Poll::Ready(());
    }
    if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        return Poll::Pending;
    }
    let waker = cx.waker().clone();
    link.lock().waker = Some(waker.clone());
    *registered = Some(waker);
    if link.signalled() {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

impl Writer {
    /// Waits until the link's signal is raised (see [`poll_signal`]).
    fn wait_signal<'a>(&'a mut self, link: &'a Link) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| poll_signal(link, &mut self.registered, cx))
    }

    /// Whether the writer holds bytes of its own to write now: taken from the queue and not yet
    /// written (replies held back for the next one do not count: [`Link::held`]), or (TLS) not
    /// yet flushed.
    fn holds(&self, link: &Link) -> bool {
        (!self.inflight.is_empty() && !link.held())
            || self.stalled_since.is_some()
            || self.half.unflushed()
    }

    /// Whether nothing waits to be written now (replies held back may: [`Writer::reply`]). No
    /// lock: the signal is down only while the queue is empty and no close is asked for (see
    /// [`Link::signal`]).
    fn idle(&self, link: &Link) -> bool {
        !self.holds(link) && !link.signalled()
    }

    /// A reply's body: written at once when nothing is queued before it (the common case: no
    /// copy, no wake-up), else queued behind what is. Replies are never refused by the bound.
    ///
    /// `hold`: the client's next packet is read already (a pipelining client) and the connection
    /// reads on: the reply is held back ([`Link::held`]) and leaves with the next reply, in one
    /// write, as long as nothing else is queued and the held replies stay within [`MAX_HELD`]
    /// bytes and [`MAX_IOVECS`] chunks. A burst of 16 echoed lines so costs one `send(2)`, not 16
    /// (bench/results/2026-12-01-pipe.md). Held replies are written at the latest when the
    /// connection would wait for its client (the read loop), when its event is not waiting for
    /// a worker's turn (`Running`: on an idle worker, or its turn came and the answer is not in
    /// yet), or when anything else is to be written (a push or close raises the signal): they
    /// wait at most for the next event's turn, as RFC 2920 asks of an SMTP server with
    /// pipelining (responses sent as a unit once the input buffer is empty).
    fn reply(&mut self, link: &Link, body: Bytes, hold: bool) -> std::io::Result<()> {
        {
            let mut q = link.lock();
            if matches!(q.closing, Closing::Overflow { .. }) {
                return Ok(());
            }
            link.metrics.queued(body.len());
            let behind = q.queued > 0 || self.holds(link);
            // Counted while it is written, so that pushes meanwhile queue behind it.
            q.queued += body.len();
            if hold
                && !behind_others(&q, self, link)
                && !link.signalled()
                && q.queued <= MAX_HELD
                && self.inflight.len() < MAX_IOVECS
            {
                drop(q);
                self.inflight.push_back(body);
                link.held.store(true, Ordering::Relaxed);
                return Ok(());
            }
            if behind {
                // (Held replies are counted in `queued`: only behind something is this asked.)
                if link.held() && !behind_others(&q, self, link) {
                    // Behind held replies only: it joins them, and all leave in one write.
                    drop(q);
                    self.inflight.push_back(body);
                    return self.write_now(link).map(|_| ());
                }
                q.chunks.push_back(body);
                drop(q);
                // No wake-up needed (this is the connection's task); the read loop sees the
                // signal and writes the queue before it reads on.
                link.signal.store(true, Ordering::Release);
                return Ok(());
            }
        }
        // Written straight from the body: the usual reply goes out whole in this one write, and
        // `inflight`'s buffer (a cache line of its own per connection, cold by the time the
        // answer comes at 1000 connections) is not touched.
        let mut body = body;
        match self.half.try_write_vectored(&[IoSlice::new(&body)]) {
            Ok(written) => {
                self.stalled_since = None;
                let mut q = Self::wrote(link, written);
                if written < body.len() {
                    body.advance(written);
                    self.inflight.push_back(body);
                } else if q.queued == 0 {
                    // Nothing was queued behind it (no chunks: their line stays cold).
                    drop(q);
                    return self.flushed().map(|_| ());
                } else {
                    Self::take_queue(&mut self.inflight, &mut q);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.stalled_since.get_or_insert_with(Instant::now);
                self.inflight.push_back(body);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.inflight.push_back(body),
            Err(e) => return Err(e),
        }
        self.write_now(link).map(|_| ())
    }

    /// Writes the replies held back ([`Link::held`]) before the read loop waits for its client:
    /// `Pending` when all went (wait on), else what ends the wait (the rest is written as the
    /// client reads; a write error closes). Out of line: the read loop's wait stays small enough
    /// to be inlined (+50 instructions per message at 100 × 1 when it was not).
    #[inline(never)]
    fn write_held(&mut self, link: &Link) -> Poll<Wake> {
        match self.write_now(link) {
            Ok(true) => Poll::Pending,
            Ok(false) => Poll::Ready(Wake::Settled(None)),
            Err(e) => Poll::Ready(Wake::Settled(Some(Stop::Io(e)))),
        }
    }

    /// Counts `written` bytes as gone to the client; returns the queue, locked.
    fn wrote(link: &Link, written: usize) -> MutexGuard<'_, Queue> {
        link.metrics.sent(written, true);
        let mut q = link.lock();
        q.written += written as u64;
        q.queued = q.queued.saturating_sub(written);
        q
    }

    /// Moves the whole shared queue into `inflight` (O(1): pushers start a fresh one); false
    /// when it is empty.
    fn take_queue(inflight: &mut VecDeque<Bytes>, q: &mut Queue) -> bool {
        if q.chunks.is_empty() {
            return false;
        }
        std::mem::swap(&mut q.chunks, inflight);
        true
    }

    /// Replies held back ([`Link::held`]) are to be written now: counted, and from now on they
    /// are what the writer holds.
    fn release(&self, link: &Link) {
        if link.held() {
            link.held.store(false, Ordering::Relaxed);
            link.metrics.held(self.inflight.len());
        }
    }

    /// Writes what it can without waiting: `Ok(true)` when nothing is left. One lock per write.
    /// Replies held back go too.
    fn write_now(&mut self, link: &Link) -> std::io::Result<bool> {
        self.release(link);
        if self.inflight.is_empty() && !Self::take_queue(&mut self.inflight, &mut link.lock()) {
            return self.flushed();
        }
        loop {
            let result = if let [chunk] = self.inflight.as_slices().0 {
                // One chunk (a reply): no 64-slot array to fill.
                self.half.try_write_vectored(&[IoSlice::new(chunk)])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut n = 0;
                for (slot, chunk) in slices.iter_mut().zip(&self.inflight) {
                    *slot = IoSlice::new(chunk);
                    n += 1;
                }
                self.half.try_write_vectored(&slices[..n])
            };
            let written = match result {
                Ok(written) => written,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.stalled_since.get_or_insert_with(Instant::now);
                    return Ok(false);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.stalled_since = None;
            let mut left = written;
            while left > 0 {
                let Some(front) = self.inflight.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.inflight.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
            let mut q = Self::wrote(link, written);
            if self.inflight.is_empty() && !Self::take_queue(&mut self.inflight, &mut q) {
                drop(q);
                return self.flushed();
            }
        }
    }

    /// Everything is handed to the socket: `Ok(true)` once it is flushed too.
    fn flushed(&mut self) -> std::io::Result<bool> {
        // TLS: the bytes count as written once rustls handed its records over.
        if self.half.try_flush()? {
            self.stalled_since = None;
            return Ok(true);
        }
        self.stalled_since.get_or_insert_with(Instant::now);
        Ok(false)
    }

    /// The writer while the connection waits for its next packet: while nothing is queued
    /// (`idle`), waits for the signal only (`None`: go round, and write); else writes everything
    /// queued as the client takes it (`None` once all is written). `Some`: the connection closes.
    /// Cancel-safe.
    async fn settle(&mut self, link: &Link, write_timeout: Duration, idle: bool) -> Option<Stop> {
        if idle {
            self.wait_signal(link).await;
            return None;
        }
        // Boxed: only pushes and slow clients get here; an idle connection's task does not carry
        // the writer's loop (RSS per idle connection), and an echo event does not build it.
        match Box::pin(self.drive(link, write_timeout, true)).await {
            Stop::Drained => None,
            stop => Some(stop),
        }
    }

    /// Writes the queue as the client takes it, waiting for bytes and for room, until the
    /// connection must close (or, with `until_drained`, until nothing is left). Cancel-safe: the
    /// signal is taken only right before the queue is looked at, with no wait in between.
    async fn drive(&mut self, link: &Link, write_timeout: Duration, until_drained: bool) -> Stop {
        // Replies held back go too (STARTTLS: in plaintext, before the handshake).
        self.release(link);
        loop {
            if !link.take_signal() && !self.holds(link) {
                // Nothing queued, no close asked for.
                if until_drained {
                    return Stop::Drained;
                }
                self.wait_signal(link).await;
                continue;
            }
            let closing = link.lock().closing;
            if let Closing::Overflow { queued, adding } = closing {
                return Stop::Overflow { queued, adding };
            }
            match self.write_now(link) {
                Err(e) => return Stop::Io(e),
                Ok(true) => {
                    if closing == Closing::AfterFlush {
                        return Stop::Flushed;
                    }
                    // Round again: a push or close since the signal was taken raised it.
                }
                Ok(false) => {
                    let stalled = self.stalled_since.unwrap_or_else(Instant::now);
                    let deadline = stalled + write_timeout;
                    tokio::select! {
                        r = self.half.writable() => {
                            if let Err(e) = r {
                                return Stop::Io(e);
                            }
                        }
                        () = std::future::poll_fn(|cx| poll_signal(link, &mut self.registered, cx)) => {}
                        _ = tokio::time::sleep_until(deadline), if !write_timeout.is_zero() => {
                            return Stop::Timeout { queued: link.lock().queued };
                        }
                    }
                }
            }
        }
    }
}

/// The connection's own state: its link, its writer, its worker state, why it ends. One value
/// owning all of it, built before the task's block and used in place there (the block captures
/// it), laid out in this order (`conn_layout` checks it): at 1000 connections a connection's
/// state has left the L2 cache by its next packet and again by its answer, and each visit reads
/// the link pointer, the writer's socket half, stall and waker, its chunk count and the idle
/// timeout, so these share ~2 lines rather than sitting in separate locals of the block (and the
/// link behind a reference to the block's own `Arc`). Measured (bench/results/2026-11-30-conn.md):
/// the task's state 1,200 → 928 B and 294 B less per idle connection; the L2 misses per message
/// did not move (the same lines are first touched elsewhere in the block).
#[repr(C)]
struct Conn {
    /// Ids, stats and the outbound queue (shared with the registry).
    link: Arc<Link>,
    /// The writing side.
    writer: Writer,
    /// No bytes from the client for this long closes the connection; `None` = never. Starts as
    /// the server's `idle_timeout`.
    idle_timeout: Option<Duration>,
    /// The worker pool.
    pool: Pool,
    /// Connection state (Pier extension): owned by this task, so no lock; empty = none.
    state: Bytes,
    /// TLS facts as an event-context fragment (Pier extension `tls`); empty = plaintext. A boxed
    /// slice, not a `Vec`: 8 bytes less in every connection's task (never grows once made).
    tls: Box<[u8]>,
    /// Why the connection ends when a reply closes it (for the metrics).
    reason: CloseReason,
}

/// Serves one accepted connection to the end. Not an `async fn` itself: the task is the
/// [`log_scope::scoped`] future around the connection's block, one layer (and one state tag,
/// a cache line of its own at 1000 connections) fewer. The connection's parts are built here,
/// before the block, so that it captures them rather than `accepted` (whose transport, address
/// and TLS fragment, 120 bytes, would stay in the task's state, dead, for the connection's life).
pub(crate) fn serve(
    accepted: Accepted,
    listener: Arc<Listener>,
    pool: Pool,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    // In a cluster the uuid names this node (its tag), so other nodes can route to it.
    let uuid = listener.registry.new_uuid();
    let span = tracing::info_span!("conn", server = %listener.config.name, uuid = %uuid);
    // Entered by the crate's log macros when they log, not on every poll (see `log_scope`);
    // the rare STARTTLS path enters it as a whole, for what rustls logs too.
    let tls_span = span.clone();
    let (reader, half) = stream::split(accepted.transport);
    let uuid_text = uuid.to_string();
    let remote_addr = accepted.remote_addr.to_string();
    let link = Arc::new(Link {
        uuid,
        context: ContextPrefix::new(&remote_addr, &listener.config.name, &uuid_text),
        uuid_text,
        listener: listener.clone(),
        remote_addr,
        connected_at: SystemTime::now(),
        bytes_in: AtomicU64::new(0),
        _line: [],
        signal: AtomicBool::new(false),
        metrics: listener.metrics.clone(),
        queue: Mutex::new(Queue::default()),
        park: AtomicU8::new(AWAKE),
        park_fd: AtomicI32::new(-1),
        turn: AtomicBool::new(false),
        idle_clock: AtomicBool::new(listener.config.limits.idle_timeout.is_some()),
        answered: AtomicU64::new(0),
        held: AtomicBool::new(false),
    });
    let idle_timeout = listener.config.limits.idle_timeout;
    let mut conn = Conn {
        link,
        writer: Writer {
            half,
            stalled_since: None,
            registered: None,
            inflight: VecDeque::new(),
        },
        idle_timeout,
        pool,
        state: Bytes::new(),
        tls: accepted.tls.into_boxed_slice(),
        reason: CloseReason::Worker,
    };
    // Made now (read from only after CONNECTED): its clock is restarted after CONNECTED's
    // answer, as if it were made then.
    let mut packets = framed(&listener, reader, idle_timeout);
    log_scope::scoped(span, async move {
        listener.registry.register(conn.link.clone());
        debug!(remote_addr = %conn.link.remote_addr, "connected");
        listener.metrics.accepted();
        // In a block of its own: the reply is not kept in the task's state past it.
        let (mut flow, stopped) = {
            let (reply, stopped) = conn.event(EventKind::Connected, &[], None).await;
            match reply {
                Ok(reply) => (conn.apply(reply, false), stopped),
                Err(e) => {
                    // CONNECTED did not succeed: no CLOSE is owed.
                    listener.registry.deregister(&conn.link.uuid);
                    log_exec_error(&e, "CONNECTED");
                    listener.metrics.closed(CloseReason::EventFailed);
                    conn.link.drop_queued();
                    return;
                }
            }
        };
        // Why the writer stopped, when it did: decides whether queued bytes are still written.
        let mut stop = stopped;
        if stop.is_some() {
            flow = Flow::Close;
        }
        if flow != Flow::Close {
            // The idle clock as if the packets were made now (CONNECTED may have set a timeout).
            packets.get_mut().track(conn.idle_timeout);
            packets.get_mut().ended(|| 0);
            // Left early (no packets to drop) when a STARTTLS failed: it took them.
            'read: {
                // True when the server is shutting down: the packets already received are then
                // run, after the loop, so that no `Wake` is kept in the task's state for it.
                let draining = loop {
                    if flow == Flow::StartTls {
                        flow = Flow::Read;
                        // Boxed, as every rare path: an idle connection's task does not carry them.
                        let upgrade =
                            start_tls(&mut conn, packets, listener.config.write_timeout, &shutdown);
                        match Box::pin(upgrade.instrument(tls_span.clone())).await {
                            Ok(upgraded) => packets = upgraded,
                            Err(stopped) => {
                                conn.reason = CloseReason::Protocol;
                                stop = stopped;
                                break 'read;
                            }
                        }
                    }
                    // In a block: nothing it computes (no deadline, no `Wake`, no `Option` of the
                    // packet) is kept past it, across the event's wait: each would be written into the
                    // task's state around every packet, lines that are cold again by the next one at
                    // 1000 connections (bench/results/2026-11-30-pipeline.md, "conn").
                    let packet = {
                        // The next packet is read only once everything queued is written: a client that
                        // does not read its answers is not handed more of them.
                        let idle = conn.writer.idle(&conn.link);
                        let wake = if idle {
                            // The usual wait (nothing queued), polled by hand: the select!'s
                            // futures were written into the task's state around every packet.
                            NextPacket {
                                registry: &listener.registry,
                                link: &conn.link,
                                writer: &mut conn.writer,
                                packets: &mut packets,
                            }
                            .await
                        } else {
                            tokio::select! {
                                biased;
                                () = stopping(&listener.registry) => Wake::Stopping,
                                s = conn.writer.settle(&conn.link, listener.config.write_timeout, idle) => Wake::Settled(s),
                                () = std::future::poll_fn(|cx| packets.get_mut().poll_deadline(cx)) => Wake::IdleDeadline,
                            }
                        };
                        let next = match wake {
                            Wake::Stopping => break true,
                            Wake::Settled(s) => {
                                // Signalled (then, round again: not idle) or all written: read on.
                                let Some(s) = s else { continue };
                                stop = Some(s);
                                break false;
                            }
                            Wake::Packet(next) => next,
                            Wake::IdleDeadline => {
                                let idle_timeout = conn.idle_timeout.unwrap_or_default();
                                debug!(?idle_timeout, "client idle; closing");
                                conn.reason = CloseReason::IdleTimeout;
                                break false;
                            }
                        };
                        match next {
                            Some(Ok(packet)) => packet,
                            Some(Err(FramingError::Io(e))) => {
                                debug!(error = %e, "read error; closing");
                                conn.reason = CloseReason::SocketError;
                                break false;
                            }
                            Some(Err(e @ FramingError::Truncated { .. })) => {
                                info!(error = %e, "client closed mid-packet; the partial packet is dropped");
                                conn.reason = CloseReason::Client;
                                break false;
                            }
                            Some(Err(e)) => {
                                warn!(
                                    error = %e,
                                    framing = listener.config.framing.mode(),
                                    "client error: invalid packet; closing"
                                );
                                conn.reason = CloseReason::Protocol;
                                break false;
                            }
                            None => {
                                debug!("client disconnected");
                                conn.reason = CloseReason::Client;
                                break false;
                            }
                        }
                    };
                    conn.link
                        .bytes_in
                        .fetch_add(packet.len() as u64, Ordering::Relaxed);
                    // The task may park while its event waits in a worker's line (see
                    // `Link::deliver`), its idle timer set (`Reader::watch_while_busy`).
                    let (result, stopped) = conn
                        .event(EventKind::Data, &packet, Some(&mut packets))
                        .await;
                    // Time spent on our side is not the client being idle: the clock restarts
                    // when the event ended (a delivered answer: when it was written).
                    packets.get_mut().ended(|| conn.link.take_answered());
                    match result {
                        Ok(reply) => {
                            // A pipelining client's next packet is here already: the reply
                            // may wait to leave with the next one (see `Writer::reply`).
                            flow = conn.apply(reply, packets.has_buffered());
                            packets.get_mut().track(conn.idle_timeout);
                            if flow == Flow::Close {
                                stop = stopped;
                                break false;
                            }
                        }
                        Err(e) => {
                            log_exec_error(&e, "DATA");
                            conn.reason = CloseReason::EventFailed;
                            stop = stopped;
                            break false;
                        }
                    }
                    if stopped.is_some() {
                        stop = stopped;
                        break false;
                    }
                };
                if draining {
                    debug!("server shutting down; running the packets already received");
                    conn.reason = CloseReason::Shutdown;
                    let budget = listener.config.max_packet_size + INITIAL_READ_BUFFER;
                    stop = Box::pin(conn.drain(packets, budget)).await;
                } else {
                    // The read half closes with the write half, before CLOSE runs.
                    drop(packets);
                }
            }
        } else {
            drop(packets);
        }
        // From here on the connection cannot be reached: no more pushes.
        listener.registry.deregister(&conn.link.uuid);
        // Queued bytes are still written (a close asked for by a worker or over RPC, a
        // WRITECLOSE, the client's EOF) unless the writer failed.
        let stop = match stop {
            Some(stop @ (Stop::Overflow { .. } | Stop::Timeout { .. } | Stop::Io(_))) => stop,
            stop => {
                if matches!(stop, Some(Stop::Flushed)) && conn.reason == CloseReason::Worker {
                    conn.reason = CloseReason::Requested;
                }
                let finish = finish(
                    &mut conn.writer,
                    &conn.link,
                    listener.config.write_timeout,
                    &shutdown,
                );
                Box::pin(finish).await
            }
        };
        match &stop {
            Stop::Overflow { .. } | Stop::Timeout { .. } => conn.reason = CloseReason::SlowClient,
            Stop::Io(_) => conn.reason = CloseReason::SocketError,
            Stop::Flushed | Stop::Drained => {}
        }
        log_stop(&stop, &listener.config);
        conn.link.drop_queued();
        listener.metrics.closed(conn.reason);
        let _ = conn.writer.half.shutdown().await;
        // The socket closes now, not when the task ends: CLOSE runs after it.
        conn.writer.half = WriteSide::Gone;
        conn.writer.inflight = VecDeque::new();
        if let Err(e) = Box::pin(conn.event_only(EventKind::Close, &[])).await {
            log_exec_error(&e, "CLOSE");
        }
    })
}

/// An event running on a worker while the writer keeps writing the queue ([`Conn::event`]).
///
/// A plain struct polled by hand, not an `async fn` around a `poll_fn`: every poll of a waiting
/// event (its turn, its answer) comes long after the connection's last one at 1000 connections,
/// and each layer of `async fn` kept its state tag and its fields in lines of their own (misses,
/// bench/results/2026-11-30-pipeline.md). These fields share one line: the writer's full loop
/// and why it stopped, which only pushes and slow clients need, are one box (32 bytes, not 64,
/// in the task's state around every event; bench/results/2026-12-01-conn.md).
struct Running<'s, E> {
    /// The worker's side, polled first each time (the answer wins).
    exec: SpareBox<E>,
    /// The connection's queue and signal.
    link: &'s Link,
    /// The writer while it only watches the signal (an echo event pays for nothing else);
    /// moved into `drive` once bytes are queued or a close is asked for.
    writer: Option<&'s mut Writer>,
    /// The writer's full loop once it runs, then why it stopped; `None` while it only watches.
    drive: Option<Box<Drive<'s>>>,
    /// The connection's packets, for a DATA event of the read loop: while it waits for nothing
    /// else, the task parks ([`Link::deliver`]).
    packets: Option<&'s mut Packets>,
}

/// The writer's full loop in a running event ([`Running::drive`]).
enum Drive<'s> {
    /// Writing the queue as the client takes it ([`Writer::drive`]).
    Writing(Pin<Box<dyn Future<Output = Stop> + Send + 's>>),
    /// It stopped: the connection closes after the answer.
    Stopped(Stop),
}

impl<E> Drop for Running<'_, E> {
    fn drop(&mut self) {
        // Dropped mid-wait (the task is dropped): nothing may be delivered to this connection
        // any more (a delivery under way ends before the exec, dropped next, gives its slot up).
        if self.packets.is_some() {
            self.link.unpark();
        }
    }
}

impl<E: Future<Output = Result<Reply, PoolError>>> Future for Running<'_, E> {
    type Output = (Result<Reply, PoolError>, Option<Stop>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is Unpin (the futures are boxed).
        let this = self.get_mut();
        if this.packets.is_some() {
            this.link.unpark();
        }
        if let Poll::Ready(reply) = Pin::new(&mut this.exec).poll(cx) {
            let stopped = match this.drive.take().map(|drive| *drive) {
                Some(Drive::Stopped(stop)) => Some(stop),
                // Still writing (it ends with the event) or never started.
                Some(Drive::Writing(_)) | None => None,
            };
            return Poll::Ready((reply, stopped));
        }
        let drive = match &mut this.drive {
            // The connection closes once the answer is applied; the worker's side registered
            // its wake-up when it returned Pending above.
            Some(drive) => match &mut **drive {
                Drive::Stopped(_) => return Poll::Pending,
                Drive::Writing(drive) => drive,
            },
            None => {
                // Set until `drive` takes it (and `drive` ends only with `Stopped`).
                let Some(writer) = this.writer.as_deref_mut() else {
                    return Poll::Pending;
                };
                // Replies held back for this event's (see `Writer::reply`) wait only while it
                // waits for its turn in a worker's line, which comes with a wake-up: on an idle
                // worker, or once the turn came and the answer is not in, they go now. An error
                // is met again by the writer's loop below (the bytes stay with it).
                let held = this.link.held();
                if held && !this.link.turn.load(Ordering::Relaxed) {
                    let _ = writer.write_now(this.link);
                }
                if writer.idle(this.link)
                    && poll_signal(this.link, &mut writer.registered, cx).is_pending()
                {
                    // Holding replies, it does not park: a delivery would have to refuse.
                    if let (Some(packets), Some(fd), true, false) = (
                        &mut this.packets,
                        writer.half.plain_fd(),
                        this.link.turn.load(Ordering::Relaxed),
                        held,
                    ) {
                        // From `AWAKE` only: a runner may be delivering (another thread).
                        if packets.poll_idle(cx) {
                            // A delivery does not wake the task: the idle timer must.
                            packets.get_mut().watch_while_busy(cx);
                            this.link.park_fd.store(fd, Ordering::Relaxed);
                            let _ = this.link.park.compare_exchange(
                                AWAKE,
                                PARKED,
                                Ordering::Release,
                                Ordering::Relaxed,
                            );
                        }
                    }
                    return Poll::Pending;
                }
                let writer = this.writer.take().expect("checked above");
                let write_timeout = this.link.listener.config.write_timeout;
                let mut drive = Box::pin(writer.drive(this.link, write_timeout, false));
                let state = match drive.as_mut().poll(cx) {
                    Poll::Ready(stop) => Drive::Stopped(stop),
                    Poll::Pending => Drive::Writing(drive),
                };
                this.drive = Some(Box::new(state));
                return Poll::Pending;
            }
        };
        if let Poll::Ready(stop) = drive.as_mut().poll(cx) {
            this.drive = Some(Box::new(Drive::Stopped(stop)));
        }
        Poll::Pending
    }
}

/// The read loop's usual wait for the next packet (nothing queued): the server stopping, the
/// link's signal, the packet, or the idle deadline. A future of its own rather than a `poll_fn`, so
/// that its poll is surely inlined into the task's (out of line it cost ~+30 instructions per
/// message at 100 × 1: its result went through memory).
struct NextPacket<'a> {
    /// Whether the server is stopping.
    registry: &'a crate::registry::Registry,
    /// The connection's queue and signal.
    link: &'a Link,
    /// The writer: its waker registration, and the replies it holds back.
    writer: &'a mut Writer,
    /// The packets.
    packets: &'a mut Packets,
}

impl Future for NextPacket<'_> {
    type Output = Wake;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wake> {
        // Every field is a reference (Unpin).
        let this = self.get_mut();
        if this.registry.stopping() {
            return Poll::Ready(Wake::Stopping);
        }
        if poll_signal(this.link, &mut this.writer.registered, cx).is_ready() {
            return Poll::Ready(Wake::Settled(None));
        }
        if let Poll::Ready(next) = this.packets.poll_next(cx) {
            return Poll::Ready(Wake::Packet(next));
        }
        if this.link.held() {
            // The client sent nothing more yet: the replies held back for its next packet go
            // now (see `Writer::reply`).
            if let Poll::Ready(wake) = this.writer.write_held(this.link) {
                return Poll::Ready(wake);
            }
        }
        // After the read: bytes it took restart the clock.
        this.packets
            .get_mut()
            .poll_deadline(cx)
            .map(|()| Wake::IdleDeadline)
    }
}

/// Ready once the server shuts down: one atomic load per poll. The wake-up comes through the
/// link's signal ([`crate::registry::Registry::stop_connections`]), which the read loop's writer
/// side always waits for; `CancellationToken::cancelled()` here cost ~450 instructions per packet
/// (a new waiter joined and left the token's list under its mutex around every packet; callgrind,
/// 1000 connections).
fn stopping(registry: &crate::registry::Registry) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |_| {
        if registry.stopping() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// Writes what is still queued before the socket closes, within `write_timeout` of no progress;
/// at shutdown only what goes out without waiting.
async fn finish(
    writer: &mut Writer,
    link: &Link,
    write_timeout: Duration,
    shutdown: &CancellationToken,
) -> Stop {
    link.request_close();
    tokio::select! {
        // Bytes that can go out without waiting win even during shutdown.
        biased;
        s = writer.drive(link, write_timeout, false) => s,
        _ = shutdown.cancelled() => {
            let queued = link.lock().queued;
            if queued == 0 {
                Stop::Flushed
            } else {
                Stop::Timeout { queued }
            }
        }
    }
}

/// Logs why the writer stopped, when that is worth a line.
fn log_stop(stop: &Stop, config: &ServerConfig) {
    match stop {
        Stop::Flushed | Stop::Drained => {}
        Stop::Overflow { queued, adding } => warn!(
            queued,
            adding,
            max_write_buffer = config.max_write_buffer,
            "client is not reading: a push would pass max_write_buffer; closing and dropping what is queued"
        ),
        Stop::Timeout { queued } => warn!(
            queued,
            write_timeout = ?config.write_timeout,
            "client is not reading: nothing written for write_timeout; closing and dropping what is queued"
        ),
        Stop::Io(e) => debug!(error = %e, "write error; closing"),
    }
}

/// Runs an event on a worker; nothing is written meanwhile. The pool's future itself, not an
/// `async fn` around it: one layer (a state tag and a copy of the event, lines of their own in
/// the boxed state) fewer. Inlined, so that [`SpareBox::new_with`] fills its block in place.
/// A function of the parts, not of [`Conn`]: [`Conn::event`] lends the writer meanwhile.
#[inline(always)]
fn exec_event<'s>(
    pool: &'s Pool,
    link: &'s Link,
    state: &'s [u8],
    tls: &'s [u8],
    kind: EventKind,
    body: &'s [u8],
) -> impl Future<Output = Result<Reply, PoolError>> + Send + use<'s> {
    link.listener.metrics.event(kind);
    pool.exec(Event {
        context: &link.context,
        uuid: link.uuid,
        kind,
        state,
        body,
        tls,
        conn: link,
    })
}

impl Conn {
    /// Runs an event on a worker while the queue keeps being written (pushes go out even while
    /// this connection's worker is busy). Resolves to the reply and, if the writer stopped
    /// meanwhile, why: the connection then closes after the reply is applied.
    fn event<'s>(
        &'s mut self,
        kind: EventKind,
        body: &'s [u8],
        packets: Option<&'s mut Packets>,
    ) -> Running<'s, impl Future<Output = Result<Reply, PoolError>> + Send + use<'s>> {
        let Conn {
            link,
            writer,
            pool,
            state,
            tls,
            ..
        } = self;
        let link: &'s Link = link;
        Running {
            // Boxed: the worker side of an event (pool.exec) is the largest state of a
            // connection's task; inline, every idle connection would carry its size for nothing
            // (RSS per idle connection). The block is the one this thread's last event freed
            // (no malloc or free per event), so its lines are warm when the event starts.
            exec: SpareBox::new_with(|| exec_event(pool, link, state, tls, kind, body)),
            link,
            writer: Some(writer),
            drive: None,
            packets,
        }
    }

    /// Runs an event on a worker; nothing is written meanwhile (see [`exec_event`]).
    #[inline(always)]
    fn event_only<'s>(
        &'s self,
        kind: EventKind,
        body: &'s [u8],
    ) -> impl Future<Output = Result<Reply, PoolError>> + Send + use<'s> {
        exec_event(&self.pool, &self.link, &self.state, &self.tls, kind, body)
    }

    /// Why this connection cannot start TLS now, if it cannot (the worker's error).
    fn starttls_refusal(&self) -> Option<String> {
        let listener = &self.link.listener;
        if listener.tls.is_none() {
            return Some(format!(
                "STARTTLS commanded but tcp.servers.{} has no tls",
                listener.config.name
            ));
        }
        if !self.tls.is_empty() {
            return Some("STARTTLS commanded on a connection that is already TLS".into());
        }
        None
    }

    /// Stores the state and the idle timeout, queues the body, decides what comes next.
    /// At shutdown: runs every complete packet that already reached pier (decoded but not run,
    /// buffered, or readable at once from the socket) and queues its reply; bytes that are not
    /// there yet are not waited for. Reads at most `budget` more bytes.
    async fn drain(&mut self, packets: Packets, mut budget: usize) -> Option<Stop> {
        use futures_util::FutureExt;
        use tokio::io::AsyncReadExt;
        use tokio_util::codec::Decoder;
        let (mut reader, mut buf, mut codec) = packets.into_parts();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(packet)) => {
                    self.link
                        .bytes_in
                        .fetch_add(packet.len() as u64, Ordering::Relaxed);
                    let (result, stopped) = self.event(EventKind::Data, &packet, None).await;
                    match result {
                        Ok(reply) => {
                            // A STARTTLS at shutdown is not started: the connection closes.
                            if self.apply(reply, false) != Flow::Read {
                                return stopped;
                            }
                        }
                        Err(e) => {
                            log_exec_error(&e, "DATA");
                            self.reason = CloseReason::EventFailed;
                            return stopped;
                        }
                    }
                    if stopped.is_some() {
                        return stopped;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "client error: invalid packet at shutdown; closing");
                    return None;
                }
            }
            if budget == 0 {
                break;
            }
            let start = buf.len();
            buf.resize(start + budget.min(INITIAL_READ_BUFFER), 0);
            // Only what is there now: a read that would wait ends the drain.
            match reader.read(&mut buf[start..]).now_or_never() {
                Some(Ok(n)) if n > 0 => {
                    buf.truncate(start + n);
                    budget = budget.saturating_sub(n);
                }
                _ => {
                    buf.truncate(start);
                    break;
                }
            }
        }
        if !buf.is_empty() {
            debug!(
                bytes = buf.len(),
                "shutdown: bytes of an incomplete packet dropped"
            );
        }
        None
    }

    /// `more`: the client's next packet is read already (the reply may be held back for it).
    fn apply(&mut self, reply: Reply, more: bool) -> Flow {
        if reply.starttls {
            if let Some(problem) = self.starttls_refusal() {
                error!(
                    pid = reply.pid,
                    "worker error: {problem}; closing without writing the reply"
                );
                self.reason = CloseReason::EventFailed;
                return Flow::Close;
            }
        }
        if let Some(ms) = reply.idle_timeout {
            self.set_idle_timeout(ms, reply.pid);
        }
        if let Some(state) = reply.state {
            let max = self.link.listener.config.max_state_size;
            if state.len() > max {
                error!(
                    pid = reply.pid,
                    size = state.len(),
                    max_state_size = max,
                    "worker error: state exceeds max_state_size; closing without writing the reply"
                );
                self.reason = CloseReason::EventFailed;
                return Flow::Close;
            }
            self.state = state;
        }
        let (write, flow) = match reply.action {
            Action::Write => (true, Flow::Read),
            Action::Continue => (false, Flow::Read),
            Action::WriteClose => (true, Flow::Close),
            Action::Close => (false, Flow::Close),
            Action::Unknown(context) => {
                warn!(
                    pid = reply.pid,
                    context, "unknown reply; closing as for CLOSE"
                );
                (false, Flow::Close)
            }
        };
        // Held only while the read loop reads on (its wait writes them before it waits for the
        // client; the idle clock is not touched: a held reply is not the client being idle).
        let hold = more && flow == Flow::Read && !reply.starttls;
        if write && !reply.body.is_empty() {
            if let Err(e) = self.writer.reply(&self.link, reply.body, hold) {
                debug!(error = %e, "write error; closing");
                self.reason = CloseReason::SocketError;
                return Flow::Close;
            }
        } else if !hold {
            // Replies held before this answer with no body go before whatever comes next (the
            // loop's writer writes them before it reads on).
            self.writer.release(&self.link);
        }
        if reply.starttls {
            if flow == Flow::Close {
                warn!(
                    pid = reply.pid,
                    "worker error: STARTTLS commanded with a closing answer; closing without TLS"
                );
            } else {
                return Flow::StartTls;
            }
        }
        flow
    }

    /// The worker's `idle_timeout` command: `Some(0)` = none, `None` = the server's.
    fn set_idle_timeout(&mut self, ms: Option<u64>, pid: u32) {
        self.idle_timeout = match ms {
            None => self.link.listener.config.limits.idle_timeout,
            Some(0) => None,
            Some(ms) if ms > MAX_WORKER_IDLE_TIMEOUT_MS => {
                error!(
                    pid,
                    ms,
                    max_ms = MAX_WORKER_IDLE_TIMEOUT_MS,
                    "worker error: idle_timeout over a week (seconds for milliseconds?); ignored"
                );
                return;
            }
            Some(ms) => Some(std::time::Duration::from_millis(ms)),
        };
        self.link
            .idle_clock
            .store(self.idle_timeout.is_some(), Ordering::Relaxed);
        debug!(idle_timeout = ?self.idle_timeout, pid, "idle timeout set by the worker");
    }
}

/// Packets of `reader`, framed as the server's config says.
fn framed(listener: &Listener, reader: ReadSide, idle_timeout: Option<Duration>) -> Packets {
    let codec = listener.codec.clone();
    let read_size = listener.read_buf_size.min(INITIAL_READ_BUFFER);
    let reader = Reader::new(reader, idle_timeout, listener.metrics.clone());
    Packets::new(reader, codec, read_size)
}

/// STARTTLS once the worker's answer is queued: everything queued (that answer included) is
/// written in plaintext first; whatever the client sent after its command and before the
/// handshake is discarded, never fed to TLS or to a worker (command injection, CVE-2011-0411);
/// then the handshake. `Err` ends the connection (with why the writer stopped, if it did).
async fn start_tls(
    conn: &mut Conn,
    packets: Packets,
    write_timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<Packets, Option<Stop>> {
    let link = &conn.link;
    let writer = &mut conn.writer;
    let listener = &link.listener;
    let drained = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return Err(None),
        s = writer.drive(link, write_timeout, true) => s,
    };
    if !matches!(drained, Stop::Drained) {
        return Err(Some(drained));
    }
    let (reader, pending, _) = packets.into_parts();
    if !pending.is_empty() {
        warn!(
            remote_addr = %link.remote_addr,
            bytes = pending.len(),
            "client error: bytes sent after STARTTLS before the handshake discarded (command injection, CVE-2011-0411)"
        );
    }
    let half = std::mem::replace(&mut writer.half, WriteSide::Gone);
    let tls = listener.tls.as_ref().ok_or(None)?;
    let socket = stream::reunite(reader.into_inner(), half).ok_or(None)?;
    let io = Rewind::new(bytes::BytesMut::new(), socket);
    let (tls_stream, facts) = listener
        .handshake(tls, io, &link.remote_addr, shutdown)
        .await
        .ok_or(None)?;
    debug!(version = %facts.version, cipher = %facts.cipher, "STARTTLS done");
    conn.tls = facts.context_fragment().into_boxed_slice();
    let (reader, half) = stream::split_tls(tls_stream);
    writer.half = half;
    writer.stalled_since = None;
    Ok(framed(listener, reader, conn.idle_timeout))
}

fn log_exec_error(e: &PoolError, event: &str) {
    match e {
        PoolError::WorkerError { pid, message } => {
            error!(
                pid,
                event, "worker error: {message}; closing the connection"
            )
        }
        PoolError::NoFreeWorkers(waited) => {
            error!(event, waited = ?waited, "no free workers; closing the connection")
        }
        PoolError::QueueFull(max) => {
            error!(
                event,
                max_queue_size = max,
                "no free workers and the wait queue is full; closing the connection"
            )
        }
        PoolError::ExecTtl { pid } => {
            error!(
                pid,
                event, "event ran over exec_ttl; its worker was killed; closing the connection"
            )
        }
        PoolError::Closed => info!(event, "pool stopped; closing the connection"),
        other => error!(event, error = %other, "closing the connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of the future `make` returns, for a borrowed connection.
    fn output_size<'a, R>(_: impl FnOnce(&'a mut Conn) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// The link's lines (see [`Link`]): a reply touches only the second, which holds the signal,
    /// the metrics handle and the queue's lock, count, written bytes and closing state.
    #[test]
    fn link_layout() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<Link>(), 256);
        assert!(offset_of!(Link, bytes_in) + 8 <= 64);
        assert_eq!(offset_of!(Link, signal), 64);
        let queue = offset_of!(Link, queue);
        // The queue is the mutex's last field (it may be unsized), so it ends the mutex.
        let data = queue + size_of::<Mutex<Queue>>() - size_of::<Queue>();
        assert!(offset_of!(Link, metrics) >= 64 && queue >= 64);
        assert!(data + offset_of!(Queue, closing) + size_of::<Closing>() <= 128);
        assert!(data + offset_of!(Queue, written) + 8 <= 128);
        // A delivery's line: the park state, the descriptor and, with an idle timeout, when.
        let line = offset_of!(Link, park) / 64;
        assert_eq!(offset_of!(Link, turn) / 64, line);
        assert_eq!(offset_of!(Link, park_fd) / 64, line);
        assert_eq!((offset_of!(Link, answered) + 7) / 64, line);
    }

    /// The connection's order (see [`Conn`]): the link pointer, then the writer's half, stall
    /// and waker, its chunks last; the cold fields after.
    #[test]
    fn conn_layout() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(Conn, link), 0);
        assert_eq!(offset_of!(Conn, writer), 8);
        assert_eq!(offset_of!(Writer, half), 0);
        assert!(offset_of!(Writer, registered) < offset_of!(Writer, inflight));
        assert!(offset_of!(Conn, idle_timeout) > offset_of!(Conn, writer));
        assert!(offset_of!(Conn, tls) < offset_of!(Conn, reason));
    }

    /// The sizes of a connection task's futures (`cargo test -p pier-server --lib future_sizes
    /// -- --nocapture` prints them): every poll of a waiting event at 1000 connections misses the
    /// cache once per line it touches, so the layers stay few and small
    /// (bench/results/2026-11-30-pipeline.md, "conn").
    #[test]
    fn future_sizes() {
        let task = crate::listener::task_size();
        let running = output_size(|c| c.event(EventKind::Data, &[], None));
        let event_only = output_size(|c| c.event_only(EventKind::Data, &[]));
        eprintln!("connection task {task} B, running event {running} B, boxed exec {event_only} B");
        // An event's own state (besides the boxed exec) fits a cache line: the writer's full
        // loop and its outcome are boxed (64 B inline); 32 B before the read loop's packets came
        // along, for the task to park while its event waits (see `Link::deliver`).
        assert!(running <= 40, "running event {running} B");
        // The task holds no dead copy of what `accepted` brought (transport, address, TLS
        // fragment): 1,200 B when the block captured it (this test's build); nor copies of the
        // listener's registry, metrics and write timeout (928 B with them, 936 with the write
        // half's descriptor beside it); 896 B while the wait of a connection with an idle
        // timeout held a `Sleep` inline (now one boxed timer per connection, `limits::Reader`,
        // beside the idle clock's 24 B: bench/results/2026-12-01-idle.md §7).
        assert!(task <= 760, "connection task {task} B");
    }

    /// A link as `serve` makes it, on a listener of the smallest config, with no socket: the
    /// tests below hand `Link::deliver` a descriptor of their own.
    fn test_link() -> Link {
        let text = "version: '3'\nserver:\n  command: [w]\ntcp:\n  servers:\n    s:\n      addr: 127.0.0.1:0\n";
        let config = crate::config::Config::parse(text, &[], &|_| None).unwrap();
        let server = config.servers[0].clone();
        let metrics = ServerMetrics::default();
        let admission =
            crate::limits::Admission::new(&server.name, server.limits.clone(), metrics.clone());
        let listener = Arc::new(
            Listener::new(
                server,
                config.read_buf_size,
                metrics.clone(),
                crate::ops::Metrics::off(),
                admission,
                crate::registry::Registry::new(),
            )
            .unwrap(),
        );
        Link {
            uuid: Uuid::nil(),
            context: ContextPrefix::new("127.0.0.1:1", "s", "u"),
            uuid_text: "u".into(),
            listener,
            remote_addr: "127.0.0.1:1".into(),
            connected_at: SystemTime::now(),
            bytes_in: AtomicU64::new(0),
            _line: [],
            signal: AtomicBool::new(false),
            metrics,
            queue: Mutex::new(Queue::default()),
            park: AtomicU8::new(AWAKE),
            park_fd: AtomicI32::new(-1),
            turn: AtomicBool::new(false),
            idle_clock: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            held: AtomicBool::new(false),
        }
    }

    /// A push accepted while a delivery's send is under way (from another thread, with
    /// `tcp.io_threads` above one) goes after the whole answer, not between its part sent and
    /// the rest queued. The send is made to wait: a blocking socket with a small buffer and a
    /// send timeout, so that it returns short after the push was queued.
    #[test]
    fn a_push_during_a_short_delivery_goes_after_the_rest_of_the_answer() {
        use std::os::fd::AsRawFd;
        let link = test_link();
        let (socket, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        socket2::SockRef::from(&socket)
            .set_send_buffer_size(4096)
            .unwrap();
        // Long enough that the pusher below, which waits for the send to begin, surely pushes
        // before it times out, even on a loaded host.
        socket
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        peer.set_nonblocking(true).unwrap();
        link.park_fd.store(socket.as_raw_fd(), Ordering::Relaxed);
        link.park.store(PARKED, Ordering::Relaxed);
        let body = vec![b'R'; 256 * 1024];
        let delivered = std::thread::scope(|s| {
            s.spawn(|| {
                // Once the send has begun (its first bytes reached the peer): the push is
                // accepted while the delivery's send is under way, not before it (bounded wait).
                let peer = socket2::SockRef::from(&peer);
                let began = std::time::Instant::now();
                while !peer
                    .peek(&mut [std::mem::MaybeUninit::uninit(); 1])
                    .is_ok_and(|n| n > 0)
                {
                    assert!(began.elapsed() < Duration::from_secs(5), "no send began");
                    std::thread::sleep(Duration::from_millis(1));
                }
                assert!(link.push(Bytes::from_static(b"~pushed\n")));
            });
            link.deliver(&body)
        });
        assert_eq!(delivered, Some(false));
        assert_eq!(link.park.load(Ordering::Relaxed), AWAKE);
        let q = link.lock();
        let sent = body.len() + 8 - q.queued;
        assert!(
            sent > 0 && sent < body.len(),
            "the send was not short: {sent}"
        );
        assert_eq!(
            q.chunks.len(),
            2,
            "{:?}",
            q.chunks.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert_eq!(q.chunks[0].len(), body.len() - sent);
        assert!(
            q.chunks[0].iter().all(|&b| b == b'R'),
            "the answer's rest is not first"
        );
        assert_eq!(&q.chunks[1][..], b"~pushed\n");
        assert!(link.signalled(), "the task is told to write them");
        drop(peer);
    }
}
