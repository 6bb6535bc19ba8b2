//! The slot a waiting event learns what the pool assigns it on: a worker, a place in a busy
//! worker's line, its turn in that line ([`Assignment`]).
//!
//! The slot is part of the event's own future (a local of [`super::Pool::exec`], pinned in the
//! connection's [`super::SpareBox`] block, which does not move), not a shared allocation: the
//! queue or a line keeps a [`Sender`], a pointer to it, and the one who assigns writes the value
//! into it and wakes the event's task with the waker it holds. A one-shot channel per event (its
//! shared block taken from a per-thread list and given back, a reference count, a mutex taken by
//! both ends three times) cost ~280 instructions per message at 100 × 1 (callgrind,
//! bench/results/2026-11-30-pipeline.md); here the sender works under the lock it already holds.
//!
//! # Who touches a slot, and when
//! A slot is *linked* while a [`Sender`] points at it. A sender always has one *home*: a waiting
//! event of the queue (under the queue's lock) or a turn in one worker's line (under that line's
//! lock). It is made ([`Slot::link`]), moved from one home to another (the queue to a line: with
//! both locked), sent ([`Sender::send`]) or dropped only with its home's lock held, and it reaches
//! its slot only then. Its last access is the release store of `DONE`; it never reads the slot
//! again after it.
//!
//! The event's side (the slot's owner, one task):
//! - reads the value only after an acquire load of `DONE` ([`Slot::try_take`]);
//! - replaces its waker only with the sender's home locked ([`Slot::rewake`]): the queue's lock,
//!   and the line's when the sender is in one ([`Slot::line`], written with the queue locked, or
//!   by the owner itself when it joins a line, when no other sender exists);
//! - gives a linked slot up ([`Slot::cancel`], a connection gone while its event waits) by taking
//!   the same locks and removing the sender from its home (dropping it marks the slot `DONE`):
//!   from then on nothing points at the slot.
//!
//! A slot is pinned (its address stays valid until its drop) and its drop gives it up when it is
//! still linked (the event's future dropped mid-wait), so no sender outlives it. Assigning and
//! receiving each take no lock of their own, no allocation and no reference count.

use std::cell::UnsafeCell;
use std::future::Future;
use std::marker::PhantomPinned;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use super::queue::{Assignment, Queue};
use super::worker::Shared;

/// Nothing links the slot: its owner alone uses it.
const IDLE: u8 = 0;
/// A sender points at the slot (see the module's doc).
const LINKED: u8 = 1;
/// The sender sent (the value is in) or was dropped (no value); the owner alone uses the slot.
const DONE: u8 = 2;

/// Where an event waits for its [`Assignment`]; see the module's doc.
#[derive(Debug)]
pub(super) struct Slot {
    /// [`IDLE`], [`LINKED`] or [`DONE`].
    state: AtomicU8,
    /// The line whose turn holds the sender, once it is in one: `cancel` and `rewake` lock it.
    line: UnsafeCell<Option<Arc<Shared>>>,
    /// What was sent.
    value: UnsafeCell<Option<Assignment>>,
    /// The owner's task, woken by the send.
    waker: UnsafeCell<Option<Waker>>,
    /// The event's connection (null in unit tests): a runner holding the worker may deliver a
    /// plain answer to it itself ([`Sender::connection`]). Set at construction, never written.
    conn: *const crate::connection::Link,
    /// Senders point at it: it must not move while linked.
    _pinned: PhantomPinned,
}

// SAFETY: the cells are only accessed as the module's doc says: by a sender with its home's lock
// held, by the owner with the same locks held, or by the owner alone (`IDLE`, or after an acquire
// load of `DONE`, the sender's last access being the release store of it). `Arc<Shared>`,
// `Assignment` and `Waker` are `Send`.
unsafe impl Sync for Slot {}
// SAFETY: as `Sync`: `conn` is only read, and points at a `Link` (which is `Sync`) that outlives
// the slot's owner.
unsafe impl Send for Slot {}

/// The sender was dropped without sending.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Closed;

impl Slot {
    /// An idle slot.
    #[cfg(test)]
    pub(super) const fn new() -> Slot {
        Slot::with_conn(std::ptr::null())
    }

    /// An idle slot for an event of `conn` (which outlives the slot).
    pub(super) const fn with_conn(conn: *const crate::connection::Link) -> Slot {
        Slot {
            state: AtomicU8::new(IDLE),
            line: UnsafeCell::new(None),
            value: UnsafeCell::new(None),
            waker: UnsafeCell::new(None),
            conn,
            _pinned: PhantomPinned,
        }
    }

    /// Links the slot to a new sender, to be woken with `waker`. Call with the lock of the
    /// sender's home held (the queue's, or the line's it joins), and put the sender there before
    /// unlocking. `line`: the line whose turn the sender goes to, if it does.
    pub(super) fn link(self: Pin<&Self>, waker: Waker, line: Option<&Arc<Shared>>) -> Sender {
        assert_eq!(
            self.state.load(Ordering::Relaxed),
            IDLE,
            "an event waits for one assignment at a time"
        );
        // SAFETY: `IDLE`: no sender exists, the owner alone accesses the cells.
        unsafe {
            *self.waker.get() = Some(waker);
            *self.line.get() = line.cloned();
        }
        // Seen by the sender through the home's lock (taken by whoever sends).
        self.state.store(LINKED, Ordering::Relaxed);
        Sender(NonNull::from(self.get_ref()))
    }

    /// Whether a sender points at the slot now (may change at once unless its home is locked).
    pub(super) fn is_linked(&self) -> bool {
        self.state.load(Ordering::Relaxed) == LINKED
    }

    /// What was sent, once the sender is done (`Err(Closed)`: dropped without sending); the slot
    /// is idle again. `None` while linked (or idle).
    ///
    /// The check is always inlined: two of a waiting event's three calls (its waiter's first
    /// poll, its drop) find nothing, and as an out-of-line call each cost ~20 instructions.
    #[inline(always)]
    pub(super) fn try_take(&self) -> Option<Result<Assignment, Closed>> {
        if self.state.load(Ordering::Acquire) != DONE {
            return None;
        }
        Some(self.take_done())
    }

    /// [`Slot::try_take`] once `DONE` was loaded (with acquire ordering).
    fn take_done(&self) -> Result<Assignment, Closed> {
        // SAFETY: `DONE`, read with acquire ordering: the sender's last access (the release store
        // of `DONE`) happened before, and no sender exists any more. The owner alone accesses
        // the cells.
        let (value, line, waker) = unsafe {
            (
                (*self.value.get()).take(),
                (*self.line.get()).take(),
                (*self.waker.get()).take(),
            )
        };
        self.state.store(IDLE, Ordering::Relaxed);
        drop((line, waker));
        value.ok_or(Closed)
    }

    /// The line whose turn holds the sender, when it is in one.
    ///
    /// # Safety
    /// Call with the queue's lock held (see the module's doc), while the slot is linked.
    pub(super) unsafe fn line(&self) -> Option<&Arc<Shared>> {
        // SAFETY: written only with the queue's lock held (or by the owner, the caller, before
        // it linked), which the caller holds.
        unsafe { (*self.line.get()).as_ref() }
    }

    /// Makes the send wake `waker` from now on, if it would not already.
    ///
    /// # Safety
    /// Call with the lock of the sender's home held (see [`Slot::cancel`]), while the slot is
    /// linked.
    pub(super) unsafe fn set_waker(&self, waker: &Waker) {
        // SAFETY: linked, with the sender's home locked: the sender is not using the cell.
        let current = unsafe { &mut *self.waker.get() };
        match current {
            Some(current) if current.will_wake(waker) => {}
            _ => *current = Some(waker.clone()),
        }
    }

    /// Gives the slot up: a sender still pointing at it is removed from its home (see
    /// [`Queue::reach_sender`]). Returns what was sent before that, if anything; the slot is idle.
    pub(super) fn cancel(self: Pin<&Self>, queue: &Queue) -> Option<Assignment> {
        if self.is_linked() {
            queue.reach_sender(self.get_ref(), None);
        }
        self.try_take().and_then(Result::ok)
    }

    /// Makes the send wake `waker` (the owner was polled with another one than at
    /// [`Slot::link`]). Takes the sender's home's locks.
    pub(super) fn rewake(self: Pin<&Self>, queue: &Queue, waker: &Waker) {
        if self.is_linked() {
            queue.reach_sender(self.get_ref(), Some(waker));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The owner's future dropped mid-wait without giving the slot up (its waiting side gives
        // it up first; this is the backstop): a sender must not outlive the slot. Without the
        // queue at hand, the only safe way out is to stop.
        if *self.state.get_mut() == LINKED {
            eprintln!("pier: an event's slot was dropped while still waiting; aborting");
            std::process::abort();
        }
    }
}

/// Points at a linked [`Slot`]; kept in the queue (a waiting event) or in a line (a turn).
#[derive(Debug)]
pub(super) struct Sender(NonNull<Slot>);

// SAFETY: a plain pointer; every access through it happens with its home's lock held, whatever
// thread holds it (see the module's doc).
unsafe impl Send for Sender {}

impl Sender {
    /// Whether it points at `slot`.
    pub(super) fn is(&self, slot: &Slot) -> bool {
        std::ptr::eq(self.0.as_ptr(), slot)
    }

    /// The connection of the slot's event, if known. Valid while the sender exists: the slot's
    /// owner borrows the connection for its whole life.
    pub(super) fn connection(&self) -> Option<&crate::connection::Link> {
        // SAFETY: linked: the slot lives (see `finish`); `conn` is never written, and points at a
        // link the owner borrows for longer than the slot lives.
        unsafe { (*self.0.as_ptr()).conn.as_ref() }
    }

    /// Records that the sender goes to `line`'s turns. Call with the queue's lock held (the
    /// sender moves from the queue to the line: both are locked).
    pub(super) fn move_to_line(&self, line: &Arc<Shared>) {
        // SAFETY: linked (a sender exists) and the queue is locked: the owner reads the cell only
        // with the queue locked (`Slot::line`), nobody else touches it.
        unsafe { *(*self.0.as_ptr()).line.get() = Some(line.clone()) };
    }

    /// Sends `value`; returns the owner's waker, to wake (after unlocking, where it matters).
    /// Call with the sender's home locked.
    #[must_use = "the waiting event is woken by waking the waker"]
    pub(super) fn send(self, value: Assignment) -> Option<Waker> {
        let waker = self.finish(Some(value));
        std::mem::forget(self);
        waker
    }

    /// Takes the sender back for its slot's owner, who gives the slot up ([`Slot::cancel`]):
    /// as a drop, without waking the owner (it is the one asking). Call with its home locked.
    pub(super) fn retract(self) {
        drop(self.finish(None));
        std::mem::forget(self);
    }

    /// Marks the slot `DONE` with `value`; the last access to it.
    fn finish(&self, value: Option<Assignment>) -> Option<Waker> {
        let slot = self.0.as_ptr();
        // SAFETY: linked: the slot lives until it is given up, which takes this sender's home's
        // lock, held by the caller; the owner does not access `value` or `waker` meanwhile (see
        // the module's doc). After the store of `DONE` the slot is not touched again.
        unsafe {
            *(*slot).value.get() = value;
            let waker = (*(*slot).waker.get()).take();
            (*slot).state.store(DONE, Ordering::Release);
            waker
        }
    }
}

impl Drop for Sender {
    /// Dropped without sending (the queue shut, the event given up): the owner learns
    /// [`Closed`].
    fn drop(&mut self) {
        if let Some(waker) = self.finish(None) {
            waker.wake();
        }
    }
}

/// The polling task's waker: an await that never waits (what a waiting event links its slot
/// with). No closure is kept in the awaiting future's state, unlike a `poll_fn` doing the work.
pub(super) fn current_waker() -> impl Future<Output = Waker> {
    std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone()))
}
