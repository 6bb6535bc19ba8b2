//! Idle workers and the events waiting for one, strictly first come, first served.
//!
//! A freed worker goes to the oldest waiting event, never to a newer arrival: an event only takes
//! an idle worker directly when nobody is waiting. `max_queue_size` bounds the waiting events
//! (RoadRunner's meaning); the wait itself is bounded by `allocate_timeout`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::worker::Worker;

/// The queue's shared state, behind one short-held lock.
#[derive(Debug, Default)]
struct State {
    /// Idle workers, oldest first (so consecutive events of a connection spread over them).
    idle: VecDeque<Box<Worker>>,
    /// Events waiting for a worker, in arrival order.
    waiters: VecDeque<oneshot::Sender<Box<Worker>>>,
    /// Set at shutdown: nothing is handed out or taken back any more.
    closed: bool,
}

/// Idle workers and waiting events.
#[derive(Debug)]
pub(super) struct Queue {
    /// Idle workers and waiters.
    state: Mutex<State>,
    /// `max_queue_size`: how many events may wait at once; 0 = no limit.
    max_waiting: usize,
    /// Set when an event had to wait; cleared by the supervisor when it looks (dynamic allocator).
    demand: AtomicBool,
    /// Wakes the supervisor when `demand` is set.
    pub(super) demand_signal: Arc<Notify>,
}

/// What `take` found.
#[derive(Debug)]
pub(super) enum Take<'a> {
    /// An idle worker, nobody was waiting before us.
    Ready(Box<Worker>),
    /// Our place in line.
    Wait(Waiter<'a>),
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
    pub(super) fn new(max_waiting: usize) -> Queue {
        Queue {
            state: Mutex::new(State::default()),
            max_waiting,
            demand: AtomicBool::new(false),
            demand_signal: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain collections, updated without panicking paths in between.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes an idle worker if nobody waits before us, or joins the end of the line.
    pub(super) fn take(&self) -> Take<'_> {
        let mut state = self.lock();
        if state.closed {
            return Take::Closed;
        }
        if state.waiters.is_empty() {
            if let Some(worker) = state.idle.pop_front() {
                return Take::Ready(worker);
            }
        }
        if self.max_waiting > 0 && state.waiters.len() >= self.max_waiting {
            // Waiters that gave up (timed out, connection gone) no longer count.
            state.waiters.retain(|tx| !tx.is_closed());
            if state.waiters.len() >= self.max_waiting {
                return Take::Full(self.max_waiting);
            }
        }
        let (tx, rx) = oneshot::channel();
        state.waiters.push_back(tx);
        drop(state);
        // A plain load first: while the flag is set (the supervisor has not looked yet, or there
        // is nothing for it to do) a waiting event writes nothing shared and wakes nobody.
        if !self.demand.load(Ordering::Relaxed) && !self.demand.swap(true, Ordering::Relaxed) {
            self.demand_signal.notify_one();
        }
        Take::Wait(Waiter { rx, queue: self })
    }

    /// Gives a worker to the oldest waiting event, or puts it in the idle list. Returns it when
    /// the pool is shut down.
    pub(super) fn put(&self, worker: Box<Worker>) -> Result<(), Box<Worker>> {
        let mut state = self.lock();
        if state.closed {
            return Err(worker);
        }
        let mut worker = worker;
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(worker) {
                Ok(()) => return Ok(()),
                // That event gave up meanwhile: the next one.
                Err(back) => worker = back,
            }
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

    /// Events waiting right now.
    pub(super) fn waiting(&self) -> usize {
        let mut state = self.lock();
        state.waiters.retain(|tx| !tx.is_closed());
        state.waiters.len()
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
        state.idle.drain(..).collect()
    }
}

/// An event's place in line. Dropping it (the connection went away) gives up the place; a worker
/// handed to it in that very moment goes back to the queue, so none is lost.
#[derive(Debug)]
pub(super) struct Waiter<'a> {
    /// Where the worker arrives.
    rx: oneshot::Receiver<Box<Worker>>,
    /// To give back a worker that arrives as we give up.
    queue: &'a Queue,
}

impl Waiter<'_> {
    /// Waits for a worker, at most `timeout`.
    pub(super) async fn wait(mut self, timeout: Duration) -> Result<Box<Worker>, WaitError> {
        match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(worker)) => Ok(worker),
            Ok(Err(_)) => Err(WaitError::Closed),
            Err(_) => {
                // A worker handed over in the same instant is still ours.
                self.rx.close();
                self.rx.try_recv().map_err(|_| WaitError::Timeout)
            }
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(worker) = self.rx.try_recv() {
            // Dropped at shutdown: the worker is killed with it.
            let _ = self.queue.put(worker);
        }
    }
}
