//! A connection's log context (its `conn{server, uuid}` span), entered only when a line is
//! logged, not on every poll of the connection's task.
//!
//! `Future::instrument` enters and leaves the span on each poll: with `tracing_subscriber`'s
//! registry and `EnvFilter` that was ~950 instructions per echoed message (a tenth of pier's,
//! callgrind at 1 × 1; bench/results/2026-11-30-pipeline.md). [`scoped`] instead only notes the
//! span's id in a thread-local while the task is polled (two thread-local writes), and this
//! crate's log macros ([`debug!`], [`info!`], [`warn!`], [`error!`], used instead of
//! `tracing`'s everywhere in the crate) enter that span around the event they emit. A line
//! logged on behalf of a connection — from the connection, its framing, limits, STARTTLS, the
//! pool's exec path, the registry, anything its task polls — carries `server` and `uuid`
//! exactly as before; elsewhere (no connection being polled) the macros are `tracing`'s.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tracing::span::Id;
use tracing::Span;

thread_local! {
    /// The span of the connection whose task this thread is polling, if any.
    static CURRENT: Cell<Option<Id>> = const { Cell::new(None) };
}

/// Runs `fut` with `span` as the log context of every line the macros of this module emit
/// while it is polled (what `fut.instrument(span)` does for all of `tracing`, without entering
/// the span on each poll).
pub(crate) fn scoped<F: Future>(span: Span, fut: F) -> Scoped<F> {
    Scoped {
        // A disabled span adds nothing to a line.
        id: span.id(),
        fut,
        _span: span,
    }
}

pin_project_lite::pin_project! {
    /// The future [`scoped`] returns. A plain struct, not an `async fn`: an `async fn` layer
    /// kept its state tag at the far end of its (connection-sized) state and a second copy of
    /// the wrapped future (`pin!` moves it), so at 1000 connections each poll of a connection's
    /// task missed the cache once more for it (bench/results/2026-11-30-pipeline.md, "conn").
    /// The span id sits right before the wrapped future's state.
    #[derive(Debug)]
    #[repr(C)]
    pub(crate) struct Scoped<F> {
        // The span's id, noted while the future is polled; `None`: the span is disabled.
        id: Option<Id>,
        #[pin]
        fut: F,
        // Keeps the span open for the future's life.
        _span: Span,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(id) = this.id else {
            return this.fut.poll(cx);
        };
        let previous = CURRENT.replace(Some(id.clone()));
        // Put back on the way out, even when the poll panics.
        let _restore = Restore(previous);
        this.fut.poll(cx)
    }
}

/// Puts the previous context back when a poll ends.
struct Restore(Option<Id>);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.set(self.0.take());
    }
}

/// Emits through `emit` inside the span of the connection being polled, if any. The macros'
/// helper: not for direct use.
#[doc(hidden)]
pub(crate) fn in_scope(emit: impl FnOnce()) {
    let current = CURRENT.take();
    CURRENT.set(current.clone());
    let Some(id) = current else {
        return emit();
    };
    let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
    dispatch.enter(&id);
    /// Leaves the span even when emitting panics.
    struct Exit<'a>(&'a tracing::Dispatch, &'a Id);
    impl Drop for Exit<'_> {
        fn drop(&mut self) {
            self.0.exit(self.1);
        }
    }
    let _exit = Exit(&dispatch, &id);
    emit();
}

/// One macro per level, each `tracing`'s with the connection's context (see the module doc).
macro_rules! scoped_macro {
    ($d:tt $name:ident $inner:ident $level:ident) => {
        macro_rules! $inner {
            ($d($d arg:tt)+) => {
                // The level check first: a disabled line costs what `tracing`'s does.
                if ::tracing::Level::$level <= ::tracing::level_filters::STATIC_MAX_LEVEL
                    && ::tracing::Level::$level <= ::tracing::level_filters::LevelFilter::current()
                {
                    $crate::log_scope::in_scope(|| ::tracing::$name!($d($d arg)+))
                }
            };
        }
        // Under another name first: `warn` alone is also the built-in attribute.
        pub(crate) use $inner as $name;
    };
}

scoped_macro!($ debug scoped_debug DEBUG);
scoped_macro!($ info scoped_info INFO);
scoped_macro!($ warn scoped_warn WARN);
scoped_macro!($ error scoped_error ERROR);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_logged_while_a_scoped_future_is_polled_names_its_span_and_no_other_does() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                let span = tracing::info_span!("conn", server = "s1", uuid = "u-1");
                scoped(span, async {
                    warn!("first");
                    tokio::task::yield_now().await;
                    debug!(n = 2, "second");
                })
                .await;
                error!("outside");
            });
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("conn{server=\"s1\" uuid=\"u-1\"}: ") && lines[0].contains("first"),
            "{text}"
        );
        assert!(
            lines[1].contains("conn{server=\"s1\" uuid=\"u-1\"}: ")
                && lines[1].contains("second n=2"),
            "{text}"
        );
        assert!(
            !lines[2].contains("conn{") && lines[2].contains("outside"),
            "{text}"
        );
    }
}
