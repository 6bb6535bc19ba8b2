//! The block an event's future lives in, kept per thread from event to event ([`SpareBox`]).
//!
//! A connection boxes the future of each event it runs ([`super::Pool::exec`], ~670 bytes):
//! inline, every idle connection would carry that size for nothing. At 100 connections on one
//! worker ~100 of these blocks are in flight and are freed in batches as a line's answers come
//! in; glibc's per-thread cache holds only 7 blocks of a size, so most `malloc`s and `free`s went
//! to its bins, ~200 instructions per message (callgrind, bench/results/2026-11-30-pipeline.md,
//! "exec"). A freed block here goes to a short per-thread list of blocks of its layout instead,
//! and the next event of this thread takes the one freed last, still in cache.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Most spare blocks kept per thread: about the events answered in one batch, with room.
const SPARES: usize = 128;

thread_local! {
    /// Blocks of one layout, freed by the events of this thread and not reused yet.
    static SPARE: RefCell<Spares> = const {
        RefCell::new(Spares {
            layout: None,
            blocks: Vec::new(),
        })
    };
}

/// A thread's spare blocks.
struct Spares {
    /// The layout of every block in `blocks` (the first one a thread used; one future type is
    /// boxed this way, and a block of another layout is freed as usual).
    layout: Option<Layout>,
    /// Allocated with `layout`, holding no value.
    blocks: Vec<NonNull<u8>>,
}

impl Drop for Spares {
    fn drop(&mut self) {
        if let Some(layout) = self.layout {
            for block in self.blocks.drain(..) {
                // SAFETY: every block in the list was allocated with `layout` (see `give`) and
                // is owned by the list alone.
                unsafe { dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

/// A block for a value of `layout` (not zero-sized): this thread's last spare of that layout,
/// or a new allocation.
fn take(layout: Layout) -> NonNull<u8> {
    let spare = SPARE
        .try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.layout == Some(layout) {
                spare.blocks.pop()
            } else {
                None
            }
        })
        .ok()
        .flatten();
    if let Some(block) = spare {
        return block;
    }
    // SAFETY: `layout` is not zero-sized (checked by the caller).
    let block = unsafe { alloc(layout) };
    NonNull::new(block).unwrap_or_else(|| handle_alloc_error(layout))
}

/// Gives back a block that [`take`] gave for `layout` and that holds no value any more: kept for
/// the next event, or freed when the list is full or kept for another layout.
fn give(block: NonNull<u8>, layout: Layout) {
    let kept = SPARE
        .try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.layout.is_none() {
                spare.layout = Some(layout);
            }
            if spare.layout == Some(layout) && spare.blocks.len() < SPARES {
                spare.blocks.push(block);
                true
            } else {
                false
            }
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: allocated with `layout` (by `take`) and owned by the caller, who gave it up.
        unsafe { dealloc(block.as_ptr(), layout) };
    }
}

/// `Box::pin` for a future, in a block reused from this thread's last freed one of its layout.
/// Polls the future it holds; drops it in place when dropped.
pub struct SpareBox<F> {
    /// The value, in a block from [`take`] (dangling when `F` is zero-sized). It never moves
    /// until it is dropped: the box is pinned in the sense of `Pin<Box<F>>`.
    value: NonNull<F>,
    /// Owns an `F` (for drop check and auto traits).
    owns: PhantomData<F>,
}

// SAFETY: the box owns its `F` as a `Box<F>` does; the block itself is plain memory of the global
// allocator, which may be freed or reused by any thread.
unsafe impl<F: Send> Send for SpareBox<F> {}
// SAFETY: as above; `&SpareBox<F>` gives no access to the `F`.
unsafe impl<F: Sync> Sync for SpareBox<F> {}

impl<F> SpareBox<F> {
    /// Boxes `make()`, written straight into the block. `Box::pin(make())` built the future
    /// (~500 bytes, of which a new one sets only its arguments) on the stack and copied all of it
    /// into the box, writing lines the last event in that block had not touched (~4 L2 misses per
    /// message at 1000 connections). Here the block is taken first and `make` is inlined (as
    /// the future's constructor, [`super::Pool::exec`]): the compiler then stores the arguments
    /// straight into the block. (A constructor called out of line returns the future through a
    /// temporary: a `memcpy` of all of it, since the block, unlike a fresh allocation, may be
    /// seen by the callee; ~100 instructions per message.)
    #[inline(always)]
    pub fn new_with(make: impl FnOnce() -> F) -> SpareBox<F> {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            let value = NonNull::<F>::dangling();
            // SAFETY: a dangling, aligned pointer is valid for writes of a zero-sized value.
            unsafe { value.as_ptr().write(make()) };
            return SpareBox {
                value,
                owns: PhantomData,
            };
        }
        /// Gives the block back if `make` panics (nothing was written into it).
        struct Unwritten(NonNull<u8>, Layout);
        impl Drop for Unwritten {
            fn drop(&mut self) {
                give(self.0, self.1);
            }
        }
        let guard = Unwritten(take(layout), layout);
        let value = guard.0.cast::<F>();
        // SAFETY: the block was allocated for `F`'s layout, holds nothing and is this box's
        // alone: valid as a unique reference to an uninitialized `F`.
        unsafe { value.as_ptr().write(make()) };
        std::mem::forget(guard);
        SpareBox {
            value,
            owns: PhantomData,
        }
    }
}

impl<F> Drop for SpareBox<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the value was written by `new_with` and is dropped only here, once.
        unsafe { self.value.as_ptr().drop_in_place() };
        if layout.size() != 0 {
            give(self.value.cast(), layout);
        }
    }
}

impl<F: Future> Future for SpareBox<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the value never moves out of its block until it is dropped in place (the box
        // hands out no `&mut F` otherwise), so it may be pinned, as in a `Pin<Box<F>>`.
        let value = unsafe { Pin::new_unchecked(&mut *self.get_mut().value.as_ptr()) };
        value.poll(cx)
    }
}

// The box is a pointer: moving it does not move the value (as `Box<F>`).
impl<F> Unpin for SpareBox<F> {}

impl<F> std::fmt::Debug for SpareBox<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpareBox").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// A future that is ready on its second poll, counting its drops.
    struct Twice {
        polled: bool,
        drops: Rc<std::cell::Cell<usize>>,
        payload: [u64; 16],
    }

    impl Future for Twice {
        type Output = u64;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
            if std::mem::replace(&mut self.polled, true) {
                Poll::Ready(self.payload.iter().sum())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    impl Drop for Twice {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    struct Nop;
    impl Wake for Nop {
        fn wake(self: Arc<Self>) {}
    }

    fn twice(drops: &Rc<std::cell::Cell<usize>>) -> Twice {
        Twice {
            polled: false,
            drops: drops.clone(),
            payload: [3; 16],
        }
    }

    fn spares() -> usize {
        SPARE.with(|s| s.borrow().blocks.len())
    }

    #[test]
    fn the_future_is_polled_in_place_and_dropped_once() {
        let drops = Rc::new(std::cell::Cell::new(0));
        let waker = Waker::from(Arc::new(Nop));
        let mut cx = Context::from_waker(&waker);
        let mut boxed = SpareBox::new_with(|| twice(&drops));
        let before = boxed.value;
        assert!(Pin::new(&mut boxed).poll(&mut cx).is_pending());
        // Moving the box does not move the future.
        let mut moved = boxed;
        assert_eq!(moved.value, before);
        assert_eq!(Pin::new(&mut moved).poll(&mut cx), Poll::Ready(48));
        assert_eq!(drops.get(), 0);
        drop(moved);
        assert_eq!(drops.get(), 1);
    }

    #[test]
    fn a_freed_block_is_the_next_one_used_and_the_list_is_bounded() {
        let drops = Rc::new(std::cell::Cell::new(0));
        let first = SpareBox::new_with(|| twice(&drops));
        let block = first.value;
        drop(first);
        assert_eq!(spares(), 1);
        let second = SpareBox::new_with(|| twice(&drops));
        assert_eq!(second.value, block, "the block freed last is reused");
        assert_eq!(spares(), 0);
        drop(second);

        let many: Vec<_> = (0..SPARES + 10)
            .map(|_| SpareBox::new_with(|| twice(&drops)))
            .collect();
        drop(many);
        assert_eq!(spares(), SPARES);
        assert_eq!(drops.get(), 2 + SPARES + 10);
    }

    #[test]
    fn blocks_of_another_layout_are_not_mixed_in() {
        let drops = Rc::new(std::cell::Cell::new(0));
        drop(SpareBox::new_with(|| twice(&drops)));
        assert_eq!(spares(), 1);
        // Another layout: allocated and freed as usual, the list keeps its own.
        let other = SpareBox::new_with(|| std::future::ready([7u8; 3]));
        assert_ne!(
            other.value.cast::<u8>(),
            SPARE.with(|s| s.borrow().blocks[0])
        );
        drop(other);
        assert_eq!(spares(), 1);
        // Zero-sized: no block at all.
        let waker = Waker::from(Arc::new(Nop));
        let mut unit = SpareBox::new_with(std::future::pending::<()>);
        assert!(Pin::new(&mut unit)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(unit);
        assert_eq!(spares(), 1);
    }

    #[test]
    fn a_panicking_make_gives_the_block_back() {
        let drops = Rc::new(std::cell::Cell::new(0));
        drop(SpareBox::new_with(|| twice(&drops)));
        assert_eq!(spares(), 1);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            SpareBox::new_with(|| -> Twice { panic!("make failed") })
        }));
        assert!(caught.is_err());
        assert_eq!(spares(), 1);
        assert_eq!(drops.get(), 1, "only the first future was made and dropped");
    }
}
