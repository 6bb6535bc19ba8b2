//! Several events in flight on one worker: its line.
//!
//! While every worker is busy, an event does not wait for one to become free: it is written to a
//! busy worker right behind the events already there (the shortest line), and its answer is read
//! after theirs, in order. The worker reads them together and answers them together (PROTOCOL.md
//! "Several events in flight"), so one relay write and one read serve a batch. While a worker is
//! free, an event never joins a line: a crash then still costs only the event that was running.
//!
//! Whoever runs the event being answered owns the worker ([`Worker`], its read half and read
//! buffer) and reads; when its answer is in, it hands the worker to the next event of the line
//! ([`Handoff`]), which finds its own answer in the buffer or reads on — unless that answer is
//! read already, is a plain reply and its connection waits for nothing else: then the holder
//! writes it to that connection itself and goes on down the line ([`Line::pass_on`]), sparing
//! the connection's task a wake-up. Events joining the line
//! append their frames to the line's outbox; the first of them takes the write half and writes the
//! outbox once the events of the connections pier is going through have stopped adding theirs
//! ([`Line::write_held`]): a worker woken by a write answers what it finds and blocks again, so
//! each write costs a wake-up. An event taken on an idle worker while others are ready opens the
//! line the same way, its frame held in the outbox ([`Line::hold`]). A line
//! holds at most `max_in_flight` events and a budget of bytes smaller than the relay's buffer, so
//! a write never waits for the worker (which could be waiting for its answers to be read).
//!
//! An event in a line, reserved or queued behind the one being answered, still waits for the
//! worker: the pool counts it with the waiting events (see [`super::queue`]). An event that waited
//! in the queue with its frame encoded is entered into a line by the queue ([`Entry::enter`]), on
//! its runner's behalf; the runner then learns its turn on the slot it waited on (its sender
//! moves from the queue to the line, see [`super::assign`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use super::assign::{self, Slot};
use super::queue::Assignment;
use super::worker::{RelayWrite, Shared, Worker};
use super::PoolError;
use pier_protocol::frame::EncodeError;

/// Most bytes of events in flight on one worker (their frames, estimated from above): room for
/// ~200 short events, and well inside a pipe's 64 KiB.
pub(super) const MAX_LINE_BYTES: usize = 16 * 1024;

/// Most turns of the scheduler a batch of frames is held back while events keep joining it
/// ([`Line::write_held`]): bounds the latency it adds when events come one per turn.
const MAX_HOLD: usize = 4;

/// What an event in a line learns when its turn comes.
#[derive(Debug)]
pub(super) enum Handoff {
    /// Its answer is the worker's next one: read it.
    Worker(Box<Worker>),
    /// The worker asked to stop before answering it: run it on another worker.
    Rerun,
    /// Its answer, a plain reply, was written to its connection by whoever held the worker
    /// (the worker's pid): the event is done.
    Delivered(u32),
    /// The worker failed (died, misbehaved, was killed) with this event in flight. Boxed: rare,
    /// and every event's handoff moves through its slot and its future (56 -> 16 bytes).
    Failed(Box<PoolError>),
}

/// An event of the line waiting for its turn.
#[derive(Debug)]
struct Turn {
    /// Where the worker is handed over ([`Assignment::Turn`]): the event's slot. `None` once the
    /// event gave up ([`Line::reach_sender`]): its answer has nobody to read it.
    tx: Option<assign::Sender>,
    /// Its frame's size estimate, counted in [`LineState::bytes`].
    bytes: usize,
}

/// A worker's line.
#[derive(Debug)]
pub(super) struct Line {
    /// Most frame bytes in flight (see [`RelayWrite`]'s budget).
    budget: usize,
    /// `tcp.pool.max_in_flight`.
    max_in_flight: usize,
    /// `tcp.pool.max_jobs` (0 = unlimited): no more events are handed to the worker than that.
    max_jobs: u64,
    /// The pool's count of events waiting in lines (reserved or queued behind the event being
    /// answered, over every worker): they count toward `max_queue_size` and the dynamic
    /// allocator's demand like events waiting in the queue.
    waiting: Arc<AtomicUsize>,
    /// Frames entered by the queue ([`Entry::enter`]) wait in the outbox with nobody charged with
    /// writing them: the next runner writes them before it reads ([`Line::take_entered`]).
    entered: AtomicBool,
    /// Everything else, behind one short lock.
    state: Mutex<LineState>,
}

#[derive(Debug)]
struct LineState {
    /// Someone runs an event on the worker (or the worker is parked here for a reserved slot):
    /// events may join. False while it is idle, being stopped, or after it failed.
    active: bool,
    /// Events on the worker: the one answered now, those in `queued`, the reserved slots.
    depth: usize,
    /// Their frames' size estimates.
    bytes: usize,
    /// The size estimate of the event answered now.
    current: usize,
    /// Events handed to the worker in its life (for `max_jobs`).
    dispatched: u64,
    /// Slots reserved for events that have not written their frame yet.
    reserved: usize,
    /// Events written (or in the outbox) behind the one answered now, in order.
    queued: VecDeque<Turn>,
    /// The worker, when its last answer is in but a reserved slot's event has not joined yet.
    parked: Option<Box<Worker>>,
    /// The relay's write half; `None` while someone writes with it.
    writer: Option<RelayWrite>,
    /// Frames of joined events not written yet.
    outbox: Vec<u8>,
    /// A spare buffer swapped with the outbox by the writer (no allocation per batch).
    spare: Vec<u8>,
}

impl LineState {
    /// The line opens behind the event just taken on the idle worker ([`Line::open`],
    /// [`Line::hold`]): it is the one answered now; `bytes`: its frame's size estimate; `jobs`:
    /// the events the worker finished before it.
    fn open(&mut self, bytes: usize, jobs: u64) {
        self.active = true;
        self.depth = 1;
        self.bytes = bytes;
        self.current = bytes;
        self.dispatched = jobs + 1;
    }

    /// Appends the frame `encode` writes to the outbox; on an error, nothing of it stays there
    /// ([`Line::hold`], [`Line::join`]).
    #[inline]
    fn append(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let mark = self.outbox.len();
        encode(&mut self.outbox).inspect_err(|_| self.outbox.truncate(mark))
    }
}

/// How joining a line went ([`Line::join`]).
#[derive(Debug)]
pub(super) enum Joined {
    /// The line ended before the event joined (its worker failed or asked to stop): run it
    /// elsewhere; nothing was written.
    Closed,
    /// The frame is queued; the turn comes through the event's slot, linked to the line.
    /// `writer`: this event writes the outbox (nobody else is writing).
    Queued {
        /// The write half, when this event has to write the outbox.
        writer: Option<RelayWrite>,
    },
    /// The worker was parked for this slot: its answer is next.
    Now {
        /// The worker.
        worker: Box<Worker>,
        /// The write half, when this event has to write the outbox.
        writer: Option<RelayWrite>,
    },
}

/// How entering an encoded event went ([`Entry::enter`]).
#[derive(Debug)]
pub(super) enum Entered {
    /// Its frame is in the outbox and its turn comes through its slot; whoever writes the
    /// outbox next writes it (see [`Line::take_entered`]). `more`: another event may still fit
    /// (false when the line is at `max_in_flight`, its byte budget or `max_jobs`), so that the
    /// queue does not try one more only to have it refused.
    Queued {
        /// Another event may fit.
        more: bool,
    },
    /// It does not fit (or the line is not open): its sender back.
    Full(assign::Sender),
    /// A worker is parked for a reserved place: its sender back, the event is to reserve and
    /// join itself (so that the parked worker goes to whoever joins first, as usual).
    Parked(assign::Sender),
}

/// What happened to the worker when an event's answer was in ([`Line::pass_on`]).
#[derive(Debug)]
pub(super) enum Passed {
    /// Handed to the next event of the line (or parked for a reserved slot); `depth`: the events
    /// left on the worker (that one included).
    On {
        /// Events still on the worker.
        depth: usize,
    },
    /// The line is empty: the worker goes back to the pool.
    Back(Box<Worker>),
    /// The next event's runner is gone (its task was dropped): nobody would read its answer.
    Orphaned(Box<Worker>),
}

impl Line {
    pub(super) fn new(
        budget: usize,
        writer: RelayWrite,
        max_in_flight: usize,
        max_jobs: u64,
        waiting: Arc<AtomicUsize>,
    ) -> Line {
        Line {
            budget,
            max_in_flight,
            max_jobs,
            waiting,
            entered: AtomicBool::new(false),
            state: Mutex::new(LineState {
                active: false,
                depth: 0,
                bytes: 0,
                current: 0,
                dispatched: 0,
                reserved: 0,
                queued: VecDeque::new(),
                parked: None,
                writer: Some(writer),
                outbox: Vec::new(),
                spare: Vec::new(),
            }),
        }
    }

    /// `n` more events wait in this line.
    fn more_waiting(&self, n: usize) {
        self.waiting.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` events of this line stopped waiting (their turn came, or they left it).
    fn less_waiting(&self, n: usize) {
        if n > 0 {
            self.waiting.fetch_sub(n, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, LineState> {
        // Plain fields, no panicking paths while held.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a frame while nothing else is in flight (the stop request). Fails when the write half is gone (an earlier write failed: the worker is
    /// being killed).
    pub(super) async fn write_alone(&self, frame: &[u8]) -> std::io::Result<()> {
        let Some(mut writer) = self.lock().writer.take() else {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        };
        let result = writer.write_all(frame).await;
        if result.is_ok() {
            self.lock().writer = Some(writer);
        }
        result
    }

    /// Writes the event taken on an idle worker and opens the line behind it: events may join from
    /// now on (frames that join during this write wait in the outbox and go out right after it).
    /// `bytes`: its frame's size estimate; `jobs`: the events the worker finished before it. Fails
    /// when the write half is gone (an earlier write failed: the worker is being killed); the
    /// caller then ends the line.
    pub(super) async fn open(&self, frame: &[u8], bytes: usize, jobs: u64) -> std::io::Result<()> {
        let (writer, written) = {
            let mut st = self.lock();
            let Some(writer) = st.writer.as_ref() else {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            };
            // Usually the whole frame fits in the relay at once: written here, under the lock
            // (nobody joins before the line is active), the event needs no write future and no
            // second lock.
            let written = writer.write_now(frame)?;
            st.open(bytes, jobs);
            if written == frame.len() {
                return Ok(());
            }
            let Some(writer) = st.writer.take() else {
                unreachable!("checked above, under the same lock");
            };
            (writer, written)
        };
        // The relay was full: the rest goes out through a future of its own, boxed so that the
        // usual path's future (inside every event's) stays small.
        Box::pin(self.open_rest(writer, &frame[written..])).await
    }

    /// Opens the line behind the event taken on an idle worker without writing it: the frame
    /// `encode` appends goes to the outbox, events may join from now on, and the caller holds the
    /// write half until the other events ready in this turn of the scheduler have joined, then
    /// writes them all with [`Line::write_out`] (see [`super::Pool::send_held`]). `bytes`: its
    /// frame's size estimate; `jobs`: the events the worker finished before it. `Ok(None)`: the
    /// write half is gone (an earlier write failed: the worker is being killed); the line stays
    /// closed and the outbox empty.
    pub(super) fn hold(
        &self,
        bytes: usize,
        jobs: u64,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
    ) -> Result<Option<RelayWrite>, EncodeError> {
        let mut st = self.lock();
        let Some(writer) = st.writer.take() else {
            return Ok(None);
        };
        if let Err(e) = st.append(encode) {
            st.writer = Some(writer);
            return Err(e);
        }
        st.open(bytes, jobs);
        Ok(Some(writer))
    }

    /// Holds the outbox back while events keep joining it, then writes it with the write half
    /// the caller took (the first event of a batch: see [`Line::hold`], [`Line::take_entered`],
    /// [`Line::join`]). The task yields — tokio runs it again after the tasks ready now and those
    /// the reactor then wakes, at most `event_interval` tasks later — and `admit` enters what
    /// waits in the pool's queue; it yields again while that brought more frames and the line
    /// has room, at most [`MAX_HOLD`] times, then writes.
    ///
    /// With pier and its worker on one core, a write to a worker blocked on its relay wakes it and
    /// it preempts pier: it answers what was written and blocks again. Written at once, or after
    /// one turn of the scheduler (~25 events at 100 connections: tokio polls the reactor every 61
    /// tasks under load), every batch cost the worker a wake-up and pier a preemption; held while
    /// the connections pier is going through keep adding events, a wake-up serves a line's worth.
    /// The cost is the turns held: a few µs each while pier is busy, and none at one connection
    /// (nothing joins: one yield, written after the reactor's poll finds nothing new).
    pub(super) async fn write_held(
        &self,
        writer: RelayWrite,
        admit: impl Fn(),
    ) -> std::io::Result<()> {
        let mut queued = self.lock().outbox.len();
        for _ in 0..MAX_HOLD {
            tokio::task::yield_now().await;
            admit();
            let st = self.lock();
            let more = st.outbox.len();
            if more == queued || !self.fits(&st, 0, false) {
                break;
            }
            queued = more;
        }
        self.write_out(writer).await
    }

    /// Writes the outbox with the write half its caller took (the first event of a batch, see
    /// [`Line::hold`] and [`Line::join`]): what the relay takes now, under the lock and with no
    /// future, the rest (the relay was full) through [`Line::flush`]; then puts the half back.
    pub(super) async fn write_out(&self, writer: RelayWrite) -> std::io::Result<()> {
        match self.write_now(writer)? {
            None => Ok(()),
            Some(rest) => self.flush(rest).await,
        }
    }

    /// Writes the rest of the frame [`Line::open`] could not write at once, then what joined
    /// meanwhile.
    async fn open_rest(&self, mut writer: RelayWrite, rest: &[u8]) -> std::io::Result<()> {
        writer.write_all(rest).await?;
        {
            // Usually nobody joined meanwhile (no flush and its future to go through).
            let mut st = self.lock();
            if st.outbox.is_empty() {
                st.writer = Some(writer);
                return Ok(());
            }
        }
        self.flush(writer).await
    }

    /// The line's length when one more event of `bytes` may join it; `retiring`: the worker leaves
    /// after its events (no more join).
    pub(super) fn room(&self, bytes: usize, retiring: bool) -> Option<usize> {
        let st = self.lock();
        self.fits(&st, bytes, retiring).then_some(st.depth)
    }

    fn fits(&self, st: &LineState, bytes: usize, retiring: bool) -> bool {
        st.active
            && !retiring
            && st.depth < self.max_in_flight
            && st.bytes + bytes <= self.budget
            && (self.max_jobs == 0 || st.dispatched < self.max_jobs)
    }

    /// Reserves a place for an event of `bytes` if it fits; the event then calls [`Line::join`]
    /// (or [`Line::unreserve`]).
    pub(super) fn reserve(&self, bytes: usize, retiring: bool) -> bool {
        self.entry(retiring).reserve(bytes)
    }

    /// Gives a reserved place back unused. Returns the worker when it was parked for it alone
    /// (then idle: the caller puts it back).
    pub(super) fn unreserve(&self, bytes: usize) -> Option<Box<Worker>> {
        self.entry(false).unreserve(bytes)
    }

    /// The line locked for the queue to enter waiting events into it, or reserve places for
    /// them, several under one lock ([`Entry`]). `retiring`: the worker leaves after its events.
    pub(super) fn entry(&self, retiring: bool) -> Entry<'_> {
        Entry {
            line: self,
            st: self.lock(),
            retiring,
            entered: 0,
        }
    }

    /// Whether the queue entered frames that nobody has written yet.
    pub(super) fn has_entered(&self) -> bool {
        self.entered.load(Ordering::Relaxed)
    }

    /// Takes the write half for the frames the queue entered, if nobody else is writing them:
    /// called by a runner of this line right before it reads from the worker, i.e. when it would
    /// wait anyway; it then writes them (with what joins meanwhile) after the other events ready
    /// in this turn of the scheduler ([`super::worker::Worker::answer`]). The events entered while
    /// the worker's last batch of answers was handed along the line (one per answer) so go out in
    /// one write, without a task or wake-up of their own; and no event waits for its answer
    /// behind an unwritten frame of its own, since its runner reads only after every event before
    /// it was answered.
    #[inline]
    pub(super) fn take_entered(&self) -> Option<RelayWrite> {
        if !self.entered.load(Ordering::Relaxed) {
            return None;
        }
        self.take_entered_now()
    }

    /// [`Line::take_entered`] once frames were entered (out of line: the check alone is the
    /// usual case at one connection).
    #[inline(never)]
    fn take_entered_now(&self) -> Option<RelayWrite> {
        let mut st = self.lock();
        self.entered.store(false, Ordering::Relaxed);
        if st.outbox.is_empty() {
            return None;
        }
        // `None`: someone is writing; it writes the outbox until it is empty.
        st.writer.take()
    }

    /// Fills a reserved place: the frame `encode` appends goes to the outbox, behind the frames
    /// already there. An encoding error gives the place back and returns the worker if it was
    /// parked for it (see [`Line::unreserve`]). Unless its turn is now, the event waits for it on
    /// `slot`, linked here (to wake `waker`); `shared`: this line's worker.
    pub(super) fn join(
        &self,
        bytes: usize,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
        (slot, waker, shared): (Pin<&Slot>, Waker, &Arc<Shared>),
    ) -> Result<Joined, (EncodeError, Option<Box<Worker>>)> {
        let mut st = self.lock();
        if !st.active {
            st.reserved -= 1;
            st.depth -= 1;
            st.bytes -= bytes;
            st.dispatched = st.dispatched.saturating_sub(1);
            self.less_waiting(1);
            return Ok(Joined::Closed);
        }
        if let Err(e) = st.append(encode) {
            drop(st);
            return Err((e, self.unreserve(bytes)));
        }
        st.reserved -= 1;
        let writer = st.writer.take();
        if let Some(worker) = st.parked.take() {
            // Its turn, at once.
            st.current = bytes;
            self.less_waiting(1);
            return Ok(Joined::Now { worker, writer });
        }
        let tx = slot.link(waker, Some(shared));
        st.queued.push_back(Turn {
            tx: Some(tx),
            bytes,
        });
        Ok(Joined::Queued { writer })
    }

    /// Writes what the relay takes of the outbox now, under the lock and with no future, then
    /// puts the write half back; returns it when some is left (the relay is full: the caller
    /// finishes with [`Line::flush`], boxed, so that the usual path's future stays small: it is
    /// inside every event's that joins a line). On a write error the half is dropped (as
    /// [`Line::flush`]).
    pub(super) fn write_now(&self, writer: RelayWrite) -> std::io::Result<Option<RelayWrite>> {
        let mut st = self.lock();
        if !st.outbox.is_empty() && !write_some(&mut st.outbox, &writer)? {
            return Ok(Some(writer));
        }
        st.writer = Some(writer);
        Ok(None)
    }

    /// Writes the outbox until it is empty, then puts the write half back. On a write error the
    /// half is dropped: the caller kills the worker, whose line then fails.
    pub(super) async fn flush(&self, mut writer: RelayWrite) -> std::io::Result<()> {
        let mut buf = Vec::new();
        loop {
            {
                let mut st = self.lock();
                if st.outbox.is_empty() {
                    st.writer = Some(writer);
                    if st.spare.capacity() < buf.capacity() {
                        buf.clear();
                        st.spare = buf;
                    }
                    return Ok(());
                }
                if buf.capacity() == 0 {
                    buf = std::mem::take(&mut st.spare);
                }
                std::mem::swap(&mut st.outbox, &mut buf);
            }
            writer.write_all(&buf).await?;
            buf.clear();
        }
    }

    /// The current event's answer is in: hands the worker to the next event of the line, parks
    /// it for a reserved slot, or gives it back when the line is empty. Before that, the answers
    /// of the next events that are read already, are plain replies and whose connections wait
    /// for nothing else are written to their connections here, without waking their tasks
    /// (`delivered` counts them; see [`Worker::deliver_next`]).
    pub(super) fn pass_on(&self, mut worker: Box<Worker>, delivered: &mut usize) -> Passed {
        let mut st = self.lock();
        loop {
            st.depth -= 1;
            st.bytes -= st.current;
            st.current = 0;
            let depth = st.depth;
            if let Some(next) = st.queued.pop_front() {
                st.current = next.bytes;
                let Some(tx) = next.tx else {
                    drop(st);
                    self.less_waiting(1);
                    return Passed::Orphaned(worker);
                };
                if let Some(wake) = tx.connection().and_then(|conn| worker.deliver_next(conn)) {
                    worker.jobs += 1;
                    worker.ran_delivered();
                    *delivered += 1;
                    let waker = tx.send(Assignment::Turn(Handoff::Delivered(worker.pid)));
                    self.less_waiting(1);
                    if let (true, Some(waker)) = (wake, waker) {
                        waker.wake();
                    }
                    continue;
                }
                // Sent with the line locked (its home's lock, see `assign`); woken after.
                let waker = tx.send(Assignment::Turn(Handoff::Worker(worker)));
                drop(st);
                self.less_waiting(1);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return Passed::On { depth };
            }
            if st.reserved > 0 {
                st.parked = Some(worker);
                return Passed::On { depth };
            }
            st.active = false;
            return Passed::Back(worker);
        }
    }

    /// Ends the line (the worker failed or asked to stop): every event queued in it learns
    /// `handoff()`; reserved slots find the line closed when they join.
    pub(super) fn end(&self, handoff: impl Fn() -> Handoff) {
        let mut st = self.lock();
        st.active = false;
        let queued = std::mem::take(&mut st.queued);
        let queued_len = queued.len();
        st.depth = st.reserved;
        st.bytes -= st.current + queued.iter().map(|t| t.bytes).sum::<usize>();
        st.current = 0;
        // Sent with the line locked (their home's lock, see `assign`); woken after.
        let wakers: Vec<Waker> = queued
            .into_iter()
            .filter_map(|turn| turn.tx)
            .filter_map(|tx| tx.send(Assignment::Turn(handoff())))
            .collect();
        drop(st);
        self.less_waiting(queued_len);
        for waker in wakers {
            waker.wake();
        }
    }

    /// With the line locked: makes the send to `slot` (a turn in this line) wake `rewake`, or,
    /// without one, takes its sender out of its turn (the event gave up; the turn stays, for the
    /// answer nobody reads: see [`Passed::Orphaned`]). Called by [`super::queue::Queue::reach_sender`],
    /// with the queue locked.
    pub(super) fn reach_sender(&self, slot: &Slot, rewake: Option<&Waker>) {
        let mut st = self.lock();
        if !slot.is_linked() {
            return;
        }
        match rewake {
            // SAFETY: its home, this line, is locked; linked.
            Some(waker) => unsafe { slot.set_waker(waker) },
            None => {
                let turn = st
                    .queued
                    .iter_mut()
                    .find(|turn| turn.tx.as_ref().is_some_and(|tx| tx.is(slot)));
                // With the line locked, as its home's lock requires.
                if let Some(tx) = turn.and_then(|turn| turn.tx.take()) {
                    tx.retract();
                }
            }
        }
    }
}

/// Writes what the relay takes of `outbox` now and removes it from the outbox: true when all of
/// it went ([`Line::write_now`]).
#[inline]
fn write_some(outbox: &mut Vec<u8>, writer: &RelayWrite) -> std::io::Result<bool> {
    let written = writer.write_now(outbox)?;
    if written == outbox.len() {
        outbox.clear();
        return Ok(true);
    }
    outbox.drain(..written);
    Ok(false)
}

/// A line locked by the queue ([`Line::entry`]): the waiting events it takes in, one after the
/// other, share the lock, and the count of events waiting in lines is updated once.
#[derive(Debug)]
pub(super) struct Entry<'a> {
    /// The line.
    line: &'a Line,
    /// Its state, locked.
    st: MutexGuard<'a, LineState>,
    /// The worker leaves after its events: none joins.
    retiring: bool,
    /// Events entered (their frames in the outbox) under this lock.
    entered: usize,
}

impl Entry<'_> {
    /// Enters an event whose frame is already encoded, on behalf of its runner waiting on `tx`
    /// (the queue admits it): as [`Entry::reserve`] and [`Line::join`] in one, without the
    /// runner. `bytes`: its frame's size estimate; `shared`: this line's worker.
    pub(super) fn enter(
        &mut self,
        frame: &[u8],
        bytes: usize,
        tx: assign::Sender,
        shared: &Arc<Shared>,
    ) -> Entered {
        let st = &mut *self.st;
        if !self.line.fits(st, bytes, self.retiring) {
            return Entered::Full(tx);
        }
        if st.parked.is_some() {
            return Entered::Parked(tx);
        }
        st.depth += 1;
        st.bytes += bytes;
        st.dispatched += 1;
        st.outbox.extend_from_slice(frame);
        // The sender's home is the line from now on (the queue is locked too).
        tx.move_to_line(shared);
        st.queued.push_back(Turn {
            tx: Some(tx),
            bytes,
        });
        self.entered += 1;
        Entered::Queued {
            more: self.line.fits(st, 0, self.retiring),
        }
    }

    /// Reserves a place for an event of `bytes` if it fits; the event then calls [`Line::join`]
    /// (or [`Line::unreserve`]).
    pub(super) fn reserve(&mut self, bytes: usize) -> bool {
        let st = &mut *self.st;
        if !self.line.fits(st, bytes, self.retiring) {
            return false;
        }
        st.reserved += 1;
        st.depth += 1;
        st.bytes += bytes;
        st.dispatched += 1;
        self.line.more_waiting(1);
        true
    }

    /// Gives a reserved place back unused. Returns the worker when it was parked for it alone
    /// (then idle: the caller puts it back).
    pub(super) fn unreserve(&mut self, bytes: usize) -> Option<Box<Worker>> {
        let st = &mut *self.st;
        st.reserved -= 1;
        st.depth -= 1;
        st.bytes -= bytes;
        st.dispatched = st.dispatched.saturating_sub(1);
        self.line.less_waiting(1);
        if st.reserved == 0 && st.queued.is_empty() {
            if let Some(worker) = st.parked.take() {
                st.active = false;
                return Some(worker);
            }
        }
        None
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        if self.entered == 0 {
            return;
        }
        self.line.more_waiting(self.entered);
        if self.st.writer.is_some() {
            // Nobody is writing: the next runner to read will (a writer loops until the outbox
            // is empty, these frames included).
            self.line.entered.store(true, Ordering::Relaxed);
        }
    }
}
