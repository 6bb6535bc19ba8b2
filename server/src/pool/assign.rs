//! The one-shot channel an event waits on for what the pool assigns it: a worker, a place in a
//! busy worker's line, its turn in that line ([`Assignment`]).
//!
//! Every event that waits (all of them once every worker is busy) used one `tokio::sync::oneshot`:
//! an allocation when it started waiting and a free when it was answered, ~250 instructions per
//! message at 100 × 1 (callgrind; glibc's per-thread cache holds only 7 blocks of a size, and ~100
//! waiting events each held one). This channel keeps the same contract but its shared part goes
//! back to a small per-thread list when the receiver is done with it and the sender is gone, and
//! the next channel takes it from there: no allocation while events keep waiting, and the block
//! reused is the one just touched.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::queue::Assignment;

/// Most spare channels kept per thread: as many as events are answered in one batch, with room.
const SPARES: usize = 256;

thread_local! {
    /// Channels whose receiver finished with its sender gone, ready for the next event.
    static SPARE: RefCell<Vec<Arc<Inner>>> = const { RefCell::new(Vec::new()) };
}

/// The part both ends share.
#[derive(Debug, Default)]
struct Inner {
    /// Set once the receiver is closed or dropped: a send then fails. Written under `state`'s
    /// lock (so a send sees it or the receiver sees the value), read without it as a hint.
    closed: AtomicBool,
    /// The value and who waits for it.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Sent and not received yet.
    value: Option<Assignment>,
    /// The receiver's task, when it waits.
    waker: Option<Waker>,
    /// The sender sent or was dropped: nothing more will come.
    sender_gone: bool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain fields, no panicking paths while held.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A new channel, from this thread's spares when there is one.
pub(super) fn channel() -> (Sender, Receiver) {
    let inner = SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default();
    (
        Sender {
            inner: Some(inner.clone()),
        },
        Receiver { inner, done: false },
    )
}

/// The sending end: sends once.
#[derive(Debug)]
pub(super) struct Sender {
    /// `None` once sent.
    inner: Option<Arc<Inner>>,
}

impl Sender {
    /// Sends `value` and wakes the receiver; gives it back when the receiver is closed or gone.
    pub(super) fn send(mut self, value: Assignment) -> Result<(), Assignment> {
        let Some(inner) = self.inner.take() else {
            unreachable!("a sender sends once: `send` takes it by value");
        };
        let waker = {
            let mut st = inner.lock();
            st.sender_gone = true;
            if inner.closed.load(Ordering::Relaxed) {
                return Err(value);
            }
            st.value = Some(value);
            st.waker.take()
        };
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the receiver is closed or gone (a send would fail).
    pub(super) fn is_closed(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|inner| inner.closed.load(Ordering::Relaxed))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        // Dropped without sending: the receiver learns that nothing will come.
        let waker = {
            let mut st = inner.lock();
            st.sender_gone = true;
            st.waker.take()
        };
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The sender was dropped without sending.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Closed;

/// The receiving end: a future of the value, `Err(Closed)` when the sender was dropped first.
#[derive(Debug)]
pub(super) struct Receiver {
    /// Shared with the sender.
    inner: Arc<Inner>,
    /// The wait ended (a value, or the sender gone): the sender is done with the channel, and
    /// closing it needs no lock.
    done: bool,
}

impl Receiver {
    /// Refuses what is not sent yet: a later send fails and gets its value back. A value sent
    /// before stays for [`Receiver::try_recv`].
    pub(super) fn close(&mut self) {
        if self.done {
            return;
        }
        let _st = self.inner.lock();
        self.inner.closed.store(true, Ordering::Relaxed);
    }

    /// The value, if it was sent and not received yet.
    pub(super) fn try_recv(&mut self) -> Option<Assignment> {
        if self.done {
            return None;
        }
        let value = self.inner.lock().value.take();
        self.done = value.is_some();
        value
    }
}

impl Future for Receiver {
    type Output = Result<Assignment, Closed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(Err(Closed));
        }
        let mut st = this.inner.lock();
        if let Some(value) = st.value.take() {
            drop(st);
            this.done = true;
            return Poll::Ready(Ok(value));
        }
        if st.sender_gone {
            drop(st);
            this.done = true;
            return Poll::Ready(Err(Closed));
        }
        match &mut st.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
        // The sender is gone too (sent, or dropped): nobody else can see the channel any more,
        // so it is reset and kept for the next event. A value never received is dropped here,
        // as when a oneshot channel is freed.
        let Some(inner) = Arc::get_mut(&mut self.inner) else {
            return;
        };
        let st = inner
            .state
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let value = st.value.take();
        st.waker = None;
        st.sender_gone = false;
        *inner.closed.get_mut() = false;
        let spare = self.inner.clone();
        let _ = SPARE.try_with(|list| {
            let mut list = list.borrow_mut();
            if list.len() < SPARES {
                list.push(spare);
            }
        });
        drop(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll(rx: &mut Receiver, count: &Arc<Count>) -> Poll<Result<Assignment, Closed>> {
        let waker = Waker::from(count.clone());
        Pin::new(rx).poll(&mut Context::from_waker(&waker))
    }

    fn spares() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    #[test]
    fn a_value_sent_before_or_after_the_wait_arrives_once_and_wakes_the_waiter() {
        let count = Arc::new(Count::default());
        let (tx, mut rx) = channel();
        assert!(poll(&mut rx, &count).is_pending());
        assert!(!tx.is_closed());
        tx.send(Assignment::Expired).unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(matches!(
            poll(&mut rx, &count),
            Poll::Ready(Ok(Assignment::Expired))
        ));

        let (tx, mut rx) = channel();
        tx.send(Assignment::Expired).unwrap();
        assert!(matches!(
            poll(&mut rx, &count),
            Poll::Ready(Ok(Assignment::Expired))
        ));
    }

    #[test]
    fn a_dropped_sender_ends_the_wait_with_closed() {
        let count = Arc::new(Count::default());
        let (tx, mut rx) = channel();
        assert!(poll(&mut rx, &count).is_pending());
        drop(tx);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(matches!(poll(&mut rx, &count), Poll::Ready(Err(Closed))));
    }

    #[test]
    fn a_closed_or_dropped_receiver_refuses_the_value_but_keeps_one_sent_before() {
        let (tx, mut rx) = channel();
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(
            tx.send(Assignment::Expired),
            Err(Assignment::Expired)
        ));
        assert!(rx.try_recv().is_none());

        let (tx, mut rx) = channel();
        tx.send(Assignment::Expired).unwrap();
        rx.close();
        assert!(matches!(rx.try_recv(), Some(Assignment::Expired)));
        assert!(rx.try_recv().is_none());

        let (tx, rx) = channel();
        drop(rx);
        assert!(tx.is_closed());
        assert!(tx.send(Assignment::Expired).is_err());
    }

    #[test]
    fn a_finished_channel_is_reused_fresh_and_only_when_both_ends_are_gone() {
        SPARE.with(|s| s.borrow_mut().clear());
        let count = Arc::new(Count::default());
        let (tx, mut rx) = channel();
        assert!(poll(&mut rx, &count).is_pending());
        tx.send(Assignment::Expired).unwrap();
        assert!(poll(&mut rx, &count).is_ready());
        drop(rx);
        assert_eq!(spares(), 1);

        // Reused: nothing of the last use is left (no value, not closed, no sender gone).
        let (tx, mut rx) = channel();
        assert_eq!(spares(), 0);
        assert!(!tx.is_closed());
        assert!(rx.try_recv().is_none());
        assert!(poll(&mut rx, &count).is_pending());
        // The receiver goes first: the sender still holds the channel, so it is not reused.
        drop(rx);
        assert_eq!(spares(), 0);
        assert!(tx.is_closed());
        drop(tx);
        assert_eq!(spares(), 0);

        // A value sent and never received is dropped with the receiver, and the channel reused.
        let (tx, rx) = channel();
        tx.send(Assignment::Expired).unwrap();
        drop(rx);
        assert_eq!(spares(), 1);
        let (_tx, mut rx) = channel();
        assert!(rx.try_recv().is_none());
    }
}
