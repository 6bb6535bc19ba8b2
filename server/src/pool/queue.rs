//! Idle workers and the events waiting for one, strictly first come, first served.
//!
//! A freed worker goes to the oldest waiting event, never to a newer arrival: an event only takes
//! an idle worker directly when nobody is waiting. With no worker idle, an event joins the
//! shortest line of a busy worker that has room (see [`super::line`]); only when none has does it
//! wait, and room freed in a line goes to the oldest waiting event too.
//!
//! An event in a busy worker's line waits as much as one here: it waits for that worker, only its
//! frame is written already. So "waiting" counts both, the events here and those in lines behind
//! the event each worker is answering: `max_queue_size` bounds them together (RoadRunner's meaning,
//! whatever `max_in_flight` is), and either kind is demand for the dynamic allocator. While the
//! allocator may still start workers, no event joins a line: it waits here for the first worker
//! that is free or new, as with one event per worker (an event committed to a busy worker could
//! not move to a new one). `allocate_timeout` bounds the wait here, kept by one task for the whole
//! queue ([`Queue::expire`]) instead of a timer per waiting event; an event in a line has been
//! handed to its worker and fails with it (`exec_ttl`, a crash).
//!
//! A waiting event whose frame is small ([`PRE_ENCODED`]) waits with its frame already encoded,
//! made when the packet was read (while it and the connection's state were in cache). Room in a
//! line then takes it in without waking its connection: [`Queue::admit`] appends the frame to the
//! line's outbox and moves the event's sender (see [`super::assign`]) to the line, which hands
//! it its turn through it ([`Assignment::Turn`]). At 1000 connections on one worker, ~1000 events wait between a
//! packet's read and its dispatch; each wake-up in between touched that connection's state again
//! after it had left the core's L2 (bench/results/2026-11-30-pipeline.md).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::assign::{self, Slot};
use super::line::{Entered, Handoff};
use super::worker::{Shared, Worker};
use crate::ops::Metrics;

/// Largest frame (its size estimate) a waiting event keeps encoded while it waits (see the
/// module's doc); a larger one is encoded when its place in a line comes. Bounds the second copy
/// of the packet a waiting event holds.
pub(super) const PRE_ENCODED: usize = 2048;

/// Most frame buffers kept for reuse ([`State::spare_frames`]): a line takes in at most
/// `max_in_flight` frames at once, and the next events to wait take them again.
const SPARE_FRAMES: usize = 64;

/// The queue's shared state, behind one short-held lock.
#[derive(Debug, Default)]
struct State {
    /// Idle workers, oldest first (so consecutive events of a connection spread over them).
    idle: VecDeque<Box<Worker>>,
    /// Events waiting for a worker, in arrival order.
    waiters: VecDeque<Waiting>,
    /// Set at shutdown: nothing is handed out or taken back any more.
    closed: bool,
    /// Buffers of frames already copied into a line, for the next events to wait with (each
    /// under `2 × PRE_ENCODED`, at most [`SPARE_FRAMES`]): no allocation and free per waiting
    /// event, and the buffer reused is the one just read, still in cache.
    spare_frames: Vec<Vec<u8>>,
}

/// A waiting event.
#[derive(Debug)]
struct Waiting {
    /// Where its worker or place in a line arrives: the event's slot.
    tx: assign::Sender,
    /// Its frame's size estimate, for joining a line.
    bytes: usize,
    /// When it started waiting, for `allocate_timeout`.
    since: Instant,
    /// Its frame, encoded when it started waiting (small events only, lines open): it can enter
    /// a line without its runner.
    frame: Option<Vec<u8>>,
}

/// What a waiting event gets.
#[derive(Debug)]
pub(super) enum Assignment {
    /// A free worker.
    Worker(Box<Worker>),
    /// A place reserved in this worker's line.
    Slot(Arc<Shared>),
    /// The event waited with its frame encoded and was entered into a line
    /// ([`Queue::admit`]), or joined one itself: what it learns when its turn comes.
    Turn(Handoff),
    /// `allocate_timeout` passed.
    Expired,
}

/// Idle workers and waiting events.
#[derive(Debug)]
pub(super) struct Queue {
    /// Idle workers and waiters.
    state: Mutex<State>,
    /// `max_queue_size`: how many events may wait at once, here and in lines; 0 = no limit.
    max_waiting: usize,
    /// Events waiting in busy workers' lines (kept by each [`super::line::Line`]); they are only
    /// ever added with this queue locked, so the bound holds.
    in_lines: Arc<AtomicUsize>,
    /// `waiters.len()`, readable without the lock (kept under it).
    waiting: AtomicUsize,
    /// Whether events may join lines: false while the dynamic allocator may still start workers
    /// (set by the supervisor), and with `max_in_flight: 1`.
    lines_open: AtomicBool,
    /// Set when an event had to wait; cleared by the supervisor when it looks (dynamic allocator).
    demand: AtomicBool,
    /// Wakes the supervisor when `demand` is set.
    pub(super) demand_signal: Arc<Notify>,
    /// Wakes [`Queue::expire`] when an event starts waiting with nobody waiting before it.
    expiry: Notify,
}

/// What `take` found.
#[derive(Debug)]
pub(super) enum Take {
    /// An idle worker, nobody was waiting before us.
    Ready(Box<Worker>),
    /// A place reserved in this busy worker's line (no worker idle, nobody waiting).
    Joined(Arc<Shared>),
    /// Our place in line: wait on the slot ([`Queue::waiter`]).
    Wait,
    /// `max_queue_size` events are already waiting.
    Full(usize),
    /// The pool is shut down.
    Closed,
}

/// Why a wait ended without a worker.
#[derive(Debug)]
pub(super) enum WaitError {
    /// `allocate_timeout` passed.
    Timeout,
    /// The pool shut down.
    Closed,
}

impl Queue {
    pub(super) fn new(max_waiting: usize, in_lines: Arc<AtomicUsize>, lines_open: bool) -> Queue {
        Queue {
            state: Mutex::new(State::default()),
            max_waiting,
            in_lines,
            waiting: AtomicUsize::new(0),
            lines_open: AtomicBool::new(lines_open),
            demand: AtomicBool::new(false),
            demand_signal: Arc::new(Notify::new()),
            expiry: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain collections, updated without panicking paths in between.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes how many events wait here (call with the lock held, after changing `waiters`).
    fn counted(&self, state: &State) {
        self.waiting.store(state.waiters.len(), Ordering::Relaxed);
    }

    /// Events waiting here for a worker or a place in a line (no lock; may lag by a moment).
    pub(super) fn waiting_here(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes an idle worker if nobody waits before us, else a place in a busy worker's line
    /// (`join` reserves one, for an event of `bytes`), else joins the end of the wait. Either
    /// kind of waiting is refused past `max_queue_size` when `bounded` (not for a `CLOSE`: a
    /// connection's last event is never dropped, and there is at most one per connection).
    /// `encode` gives the event's frame, written into the (empty) buffer it is given, asked for
    /// only when the event waits, lines are open and the frame is small (see the module's doc).
    /// A waiting event waits on `slot` (linked here, to wake `waker`).
    /// Inlined into its one caller, as the compiler did until the event's future got smaller.
    #[inline(always)]
    pub(super) fn take<'a>(
        &'a self,
        slot: Pin<&'a Slot>,
        waker: Waker,
        bytes: usize,
        bounded: bool,
        join: impl FnOnce() -> Option<Arc<Shared>>,
        encode: impl FnOnce(Vec<u8>) -> Option<Vec<u8>>,
    ) -> Take {
        let mut state = self.lock();
        if state.closed {
            return Take::Closed;
        }
        if state.waiters.is_empty() {
            if let Some(worker) = state.idle.pop_front() {
                return Take::Ready(worker);
            }
        }
        // Waiters that gave up (connection gone) left at once (`reach_sender`); those that timed
        // out were taken out.
        if bounded && self.max_waiting > 0 && self.waiting_locked(&state) >= self.max_waiting {
            return Take::Full(self.max_waiting);
        }
        if state.waiters.is_empty() && self.lines_open.load(Ordering::Relaxed) {
            if let Some(shared) = join() {
                drop(state);
                self.note_demand();
                return Take::Joined(shared);
            }
        }
        let tx = slot.link(waker, None);
        let first = state.waiters.is_empty();
        let frame = if bytes <= PRE_ENCODED && self.lines_open() {
            encode(state.spare_frames.pop().unwrap_or_default())
        } else {
            None
        };
        state.waiters.push_back(Waiting {
            tx,
            bytes,
            since: Instant::now(),
            frame,
        });
        self.counted(&state);
        drop(state);
        if first {
            self.expiry.notify_one();
        }
        self.note_demand();
        Take::Wait
    }

    /// The wait of an event on its linked slot (made where it is awaited: the future keeps no
    /// second copy of it); `bytes`: its frame's size estimate, `fresh`: linked during this poll,
    /// with its waker.
    pub(super) fn waiter<'a>(
        &'a self,
        slot: Pin<&'a Slot>,
        bytes: usize,
        fresh: bool,
    ) -> Waiter<'a> {
        Waiter {
            slot,
            bytes,
            queue: self,
            fresh,
        }
    }

    /// With the home of `slot`'s sender locked (this queue, and its line when it is in one, see
    /// [`super::assign`]): makes the send wake `rewake`, or, without one, removes the sender (the
    /// event gives up; the sender's drop marks the slot done). Nothing once it is not linked.
    pub(super) fn reach_sender(&self, slot: &Slot, rewake: Option<&Waker>) {
        let mut state = self.lock();
        if !slot.is_linked() {
            return;
        }
        // SAFETY: the queue is locked and the slot linked.
        if let Some(shared) = unsafe { slot.line() } {
            shared.line.reach_sender(slot, rewake);
            return;
        }
        // Not in a line: among the waiting events (anywhere else it would be in the hands of
        // someone holding the queue's lock).
        match rewake {
            // SAFETY: its home, this queue, is locked; linked.
            Some(waker) => unsafe { slot.set_waker(waker) },
            None => {
                if let Some(gone) = state
                    .waiters
                    .iter()
                    .position(|w| w.tx.is(slot))
                    .and_then(|i| state.waiters.remove(i))
                {
                    self.counted(&state);
                    // With the queue locked, as its home's lock requires.
                    gone.tx.retract();
                }
            }
        }
    }

    /// Events wait here and in lines, as `max_queue_size` counts them.
    fn waiting_locked(&self, state: &State) -> usize {
        state.waiters.len() + self.in_lines.load(Ordering::Relaxed)
    }

    /// An event waits (here or in a line): tells the dynamic allocator.
    fn note_demand(&self) {
        // A plain load first: while the flag is set (the supervisor has not looked yet, or there
        // is nothing for it to do) a waiting event writes nothing shared and wakes nobody.
        if !self.demand.load(Ordering::Relaxed) && !self.demand.swap(true, Ordering::Relaxed) {
            self.demand_signal.notify_one();
        }
    }

    /// Whether events may join lines now (see [`Queue::open_lines`]).
    pub(super) fn lines_open(&self) -> bool {
        self.lines_open.load(Ordering::Relaxed)
    }

    /// Lets events join lines, or not (the dynamic allocator may still start workers).
    pub(super) fn open_lines(&self, open: bool) {
        if self.lines_open.load(Ordering::Relaxed) != open {
            self.lines_open.store(open, Ordering::Relaxed);
        }
    }

    /// Room was made in `shared`'s line: the oldest waiting events get places in it, as many as
    /// fit. An event waiting with its frame is entered into the line at once (its runner is not
    /// woken until its turn; the line's next runner writes the frames before it reads); any
    /// other gets a reserved place and joins itself. (An event that gave up left the queue
    /// then, [`Queue::reach_sender`].) `metrics`: the wait of each entered event ends here.
    pub(super) fn admit(&self, shared: &Arc<Shared>, metrics: &Metrics) {
        if !self.lines_open() {
            return;
        }
        let mut state = self.lock();
        // The line, locked once for every event taken in now (when one is).
        let mut entry = None;
        while let Some(mut waiting) = state.waiters.pop_front() {
            let line = entry.get_or_insert_with(|| shared.line.entry(shared.retiring()));
            let tx = match waiting.frame.take() {
                Some(mut frame) => match line.enter(&frame, waiting.bytes, waiting.tx, shared) {
                    Entered::Queued { more } => {
                        metrics.waited(Some(waiting.since.into_std()));
                        if state.spare_frames.len() < SPARE_FRAMES
                            && frame.capacity() <= 2 * PRE_ENCODED
                        {
                            frame.clear();
                            state.spare_frames.push(frame);
                        }
                        if !more {
                            break;
                        }
                        continue;
                    }
                    Entered::Full(tx) => {
                        waiting.tx = tx;
                        waiting.frame = Some(frame);
                        state.waiters.push_front(waiting);
                        break;
                    }
                    // A worker is parked for a reserved place: the event joins itself
                    // (whoever joins first gets the worker).
                    Entered::Parked(tx) => tx,
                },
                None => waiting.tx,
            };
            if !line.reserve(waiting.bytes) {
                waiting.tx = tx;
                state.waiters.push_front(waiting);
                break;
            }
            wake(tx.send(Assignment::Slot(shared.clone())));
        }
        // Unlocks the line (and counts what entered it) while the queue is still locked, so
        // that `max_queue_size` never sees an event in neither.
        drop(entry);
        self.counted(&state);
    }

    /// Fails the waiting events that have waited `timeout`; returns when the next one falls due.
    fn expire_due(&self, now: Instant, timeout: Duration) -> Option<Instant> {
        let mut state = self.lock();
        while let Some(front) = state.waiters.front() {
            let due = front.since + timeout;
            if due > now {
                return Some(due);
            }
            if let Some(waiting) = state.waiters.pop_front() {
                wake(waiting.tx.send(Assignment::Expired));
            }
            self.counted(&state);
        }
        None
    }

    /// Keeps `allocate_timeout` for every waiting event with one timer: sleeps until the oldest
    /// falls due (waiting events are in arrival order), or until an event waits at all. Runs
    /// until `closed`.
    pub(super) async fn expire(&self, timeout: Duration, closed: CancellationToken) {
        loop {
            let next = self.expire_due(Instant::now(), timeout);
            tokio::select! {
                _ = closed.cancelled() => return,
                _ = self.expiry.notified(), if next.is_none() => {}
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
            }
        }
    }

    /// Gives a worker to the oldest waiting event, or puts it in the idle list. Returns it when
    /// the pool is shut down.
    pub(super) fn put(&self, worker: Box<Worker>) -> Result<(), Box<Worker>> {
        let mut state = self.lock();
        if state.closed {
            return Err(worker);
        }
        if let Some(waiting) = state.waiters.pop_front() {
            self.counted(&state);
            wake(waiting.tx.send(Assignment::Worker(worker)));
            return Ok(());
        }
        state.idle.push_back(worker);
        Ok(())
    }

    /// Whether an event had to wait since the last call (and clears it).
    pub(super) fn take_demand(&self) -> bool {
        self.demand.swap(false, Ordering::Relaxed)
    }

    /// Idle workers right now.
    pub(super) fn idle(&self) -> usize {
        self.lock().idle.len()
    }

    /// Records that events are waiting (seen by the supervisor's tick).
    pub(super) fn mark_demand(&self) {
        self.demand.store(true, Ordering::Relaxed);
    }

    /// Events waiting right now, here and in lines.
    pub(super) fn waiting(&self) -> usize {
        let state = self.lock();
        self.waiting_locked(&state)
    }

    /// Events waiting in lines right now (no lock).
    pub(super) fn in_lines(&self) -> usize {
        self.in_lines.load(Ordering::Relaxed)
    }

    /// Removes idle workers matching `pick` (at most `limit`), e.g. one that exited or is due for
    /// replacement.
    // Boxed workers, as everywhere in the pool: they move in and out as pointers.
    #[allow(clippy::vec_box)]
    pub(super) fn remove_idle(
        &self,
        limit: usize,
        mut pick: impl FnMut(&Worker) -> bool,
    ) -> Vec<Box<Worker>> {
        let mut state = self.lock();
        let mut removed = Vec::new();
        let mut i = 0;
        while i < state.idle.len() && removed.len() < limit {
            if pick(&state.idle[i]) {
                if let Some(worker) = state.idle.remove(i) {
                    removed.push(worker);
                }
            } else {
                i += 1;
            }
        }
        removed
    }

    /// Shuts the queue: waiting events fail with `Closed`; returns the idle workers to stop.
    #[allow(clippy::vec_box)]
    pub(super) fn close(&self) -> Vec<Box<Worker>> {
        let mut state = self.lock();
        state.closed = true;
        state.waiters.clear();
        self.counted(&state);
        state.idle.drain(..).collect()
    }
}

/// Wakes the event a send was for (the queue's sends wake with the queue locked, as before).
fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// An event's place in the wait. Dropping it (the connection went away) gives up the place; a
/// worker or line place handed to it in that very moment goes back, so none is lost.
#[derive(Debug)]
pub(super) struct Waiter<'a> {
    /// Where the worker or place arrives: the event's slot, linked.
    slot: Pin<&'a Slot>,
    /// The event's frame size estimate (a place reserved for it counts it).
    bytes: usize,
    /// To give back a worker that arrives as we give up, and to reach the sender.
    queue: &'a Queue,
    /// The slot was linked during this poll, with its waker: the first poll need not check it.
    fresh: bool,
}

/// Waits for a worker or a place in a line, at most `allocate_timeout` (see [`Queue::expire`]);
/// the waiter itself is the future (no `async fn` around it: a layer of state fewer in every
/// waiting event's future).
impl std::future::Future for Waiter<'_> {
    type Output = Result<Assignment, WaitError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let mut got = this.slot.try_take();
        if got.is_none() && !std::mem::take(&mut this.fresh) {
            // Polled again before the send: the sender must wake this waker (usually it already
            // would; a send meanwhile is seen right after).
            this.slot.rewake(this.queue, cx.waker());
            got = this.slot.try_take();
        }
        match got {
            None => std::task::Poll::Pending,
            Some(Ok(Assignment::Expired)) => std::task::Poll::Ready(Err(WaitError::Timeout)),
            Some(Ok(assignment)) => std::task::Poll::Ready(Ok(assignment)),
            Some(Err(_)) => std::task::Poll::Ready(Err(WaitError::Closed)),
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let worker = match self.slot.cancel(self.queue) {
            Some(Assignment::Worker(worker)) => Some(worker),
            Some(Assignment::Slot(shared)) => shared.line.unreserve(self.bytes),
            Some(Assignment::Turn(Handoff::Worker(worker))) => {
                // Its turn came as it gave up (only at a forced shutdown): nobody reads its
                // answer, nor those behind it; as for an orphaned event, the worker goes.
                let pid = worker.pid;
                worker.shared.line.end(|| {
                    Handoff::Failed(Box::new(super::PoolError::Abandoned {
                        pid,
                        cause: "an event before it was dropped".into(),
                    }))
                });
                worker.shared.kill(super::worker::KillReason::None);
                None
            }
            Some(Assignment::Turn(_) | Assignment::Expired) | None => None,
        };
        if let Some(worker) = worker {
            // Dropped at shutdown: the worker is killed with it.
            let _ = self.queue.put(worker);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The slot's hand-over, cancellation and drop (see [`super::super::assign`]), through the
    //! queue that keeps the senders.
    use super::*;
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Wake};

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Count {
        fn woken(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn queue() -> Queue {
        Queue::new(0, Arc::new(AtomicUsize::new(0)), false)
    }

    /// The event waits (no worker idle, no line): its slot is linked to a new waiting event.
    fn wait(queue: &Queue, slot: Pin<&Slot>, count: &Arc<Count>) {
        let took = queue.take(
            slot,
            Waker::from(count.clone()),
            10,
            true,
            || None,
            |_| None,
        );
        assert!(matches!(took, Take::Wait));
    }

    fn poll(waiter: &mut Waiter<'_>, count: &Arc<Count>) -> Poll<Result<Assignment, WaitError>> {
        let waker = Waker::from(count.clone());
        Pin::new(waiter).poll(&mut Context::from_waker(&waker))
    }

    /// Sends `Expired` to every waiting event (`allocate_timeout` of zero).
    fn expire_all(queue: &Queue) {
        assert!(queue
            .expire_due(Instant::now() + Duration::from_secs(3600), Duration::ZERO)
            .is_none());
    }

    #[test]
    fn what_is_sent_arrives_once_in_the_slot_and_wakes_the_event_once() {
        let queue = queue();
        let slot = std::pin::pin!(Slot::new());
        let count = Arc::new(Count::default());
        wait(&queue, slot.as_ref(), &count);
        assert_eq!(queue.waiting_here(), 1);
        let mut waiter = queue.waiter(slot.as_ref(), 10, true);
        assert!(poll(&mut waiter, &count).is_pending());
        assert!(poll(&mut waiter, &count).is_pending());
        expire_all(&queue);
        assert_eq!(count.woken(), 1);
        assert_eq!(queue.waiting_here(), 0);
        assert!(matches!(
            poll(&mut waiter, &count),
            Poll::Ready(Err(WaitError::Timeout))
        ));
        drop(waiter);
        // Idle again: the next wait links it anew, and a send before the first poll is seen.
        assert!(!slot.is_linked());
        wait(&queue, slot.as_ref(), &count);
        expire_all(&queue);
        let mut waiter = queue.waiter(slot.as_ref(), 10, true);
        assert!(matches!(
            poll(&mut waiter, &count),
            Poll::Ready(Err(WaitError::Timeout))
        ));
    }

    #[test]
    fn an_event_that_gives_up_leaves_the_queue_and_nothing_is_sent_to_its_slot() {
        let queue = queue();
        let count = Arc::new(Count::default());
        let first = std::pin::pin!(Slot::new());
        let second = std::pin::pin!(Slot::new());
        let third = std::pin::pin!(Slot::new());
        wait(&queue, first.as_ref(), &count);
        wait(&queue, second.as_ref(), &count);
        wait(&queue, third.as_ref(), &count);
        let mut first_waiter = queue.waiter(first.as_ref(), 10, true);
        let mut third_waiter = queue.waiter(third.as_ref(), 10, true);
        assert!(poll(&mut first_waiter, &count).is_pending());
        // The middle one's connection goes: its place is given up, the others keep theirs.
        drop(queue.waiter(second.as_ref(), 10, true));
        assert!(!second.is_linked());
        assert_eq!(queue.waiting_here(), 2);
        assert_eq!(queue.waiting(), 2);
        expire_all(&queue);
        assert_eq!(count.woken(), 2);
        assert!(poll(&mut first_waiter, &count).is_ready());
        assert!(poll(&mut third_waiter, &count).is_ready());
        // Nothing arrived in the slot given up.
        assert!(second.try_take().is_none());
    }

    #[test]
    fn a_value_sent_as_the_event_gives_up_is_taken_back_with_its_place() {
        let queue = queue();
        let count = Arc::new(Count::default());
        let slot = std::pin::pin!(Slot::new());
        wait(&queue, slot.as_ref(), &count);
        expire_all(&queue);
        // Sent, not received: the cancel returns it (a worker would go back to the queue).
        assert!(matches!(
            slot.as_ref().cancel(&queue),
            Some(Assignment::Expired)
        ));
        assert!(!slot.is_linked());
        assert!(slot.try_take().is_none());
    }

    #[test]
    fn a_closed_queue_ends_every_wait_with_closed() {
        let queue = queue();
        let count = Arc::new(Count::default());
        let slot = std::pin::pin!(Slot::new());
        wait(&queue, slot.as_ref(), &count);
        let mut waiter = queue.waiter(slot.as_ref(), 10, true);
        assert!(poll(&mut waiter, &count).is_pending());
        assert!(queue.close().is_empty());
        assert_eq!(count.woken(), 1);
        assert!(matches!(
            poll(&mut waiter, &count),
            Poll::Ready(Err(WaitError::Closed))
        ));
    }

    #[test]
    fn a_poll_with_another_waker_moves_the_wake_up_to_it() {
        let queue = queue();
        let linked_with = Arc::new(Count::default());
        let polled_with = Arc::new(Count::default());
        let slot = std::pin::pin!(Slot::new());
        wait(&queue, slot.as_ref(), &linked_with);
        let mut waiter = queue.waiter(slot.as_ref(), 10, true);
        assert!(poll(&mut waiter, &linked_with).is_pending());
        assert!(poll(&mut waiter, &polled_with).is_pending());
        expire_all(&queue);
        assert_eq!(linked_with.woken(), 0);
        assert_eq!(polled_with.woken(), 1);
        assert!(poll(&mut waiter, &polled_with).is_ready());
    }
}
