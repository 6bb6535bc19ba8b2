//! The supervised pool of PHP workers: start, hand out fairly, rotate, replace, reset, stop.
//!
//! - `worker.rs`: one worker process and its relay (pipes or socket), the pid handshake, reading an
//!   event's answer, the idle check, and the reaper task that notices a death while idle at once.
//! - `line.rs`: several events in flight on a busy worker, written together, answered in order.
//! - `relay.rs`: the listener workers connect back to on `server.relay: tcp://…|unix://…`.
//! - `queue.rs`: idle workers and the events waiting for one (or for room in a line), strictly
//!   first come, first served, bounded by `max_queue_size` together with the events waiting in
//!   lines, timed out by one timer.
//! - `supervisor.rs`: replacements (parallel, bounded, backoff), `tcp.pool.supervisor` limits and
//!   the dynamic allocator.
//! - `reset.rs`: the rolling reset behind `pier reset` and SIGUSR1.
//! - `on_init.rs`: `server.on_init`, run to completion before the workers start (and, with
//!   `exit_on_error`, before anything is served).
//! - `assign.rs`: the slot in a waiting event's own future that the queue or a line hands it its
//!   worker, place or turn through.
//! - `spare.rs`: [`SpareBox`], the block a connection boxes each event's future in, reused per
//!   thread from event to event.
//! - this file: [`Pool`], and running one event ([`Pool::exec`]): take an idle worker or a place in
//!   a busy one's line, read the answer, hand the worker on or give it back.

mod assign;
mod line;
mod on_init;
mod queue;
mod relay;
mod reset;
mod spare;
mod supervisor;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::log_scope::{debug, error, info, warn};
use bytes::Bytes;
use pier_protocol::frame::EncodeError;
use pier_protocol::frame::FrameError;
use pier_protocol::tcp::{encode_event_prefixed, ContextPrefix, EventKind};
use pier_protocol::MessageError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{PoolConfig, RelayConfig};
use crate::ops::{Metrics, PoolSnapshot, RestartReason};
use assign::{current_waker, Slot};
use line::{Handoff, Joined, Passed};
use queue::{Assignment, Queue, Take, WaitError};
use relay::RelayListener;
use supervisor::Respawn;
/// The coarse monotonic clock, also the connections' idle clock (`limits::Reader`).
pub(crate) use worker::coarse_now_ns;
use worker::{spawn_worker, KillReason, Outcome, RelayWrite, Shared, Worker, RETIRE_REMOVE};

pub use on_init::{run_on_init, OnInitError};
pub use spare::SpareBox;
pub use worker::{reactor_polled, RR_VERSION};

/// An event running this long on a worker keeps others from joining its line.
const LONG_EVENT: Duration = Duration::from_millis(500);

/// How many times one event is re-run after stop replies before the connection is given up.
const MAX_RERUNS: usize = 8;

/// What went wrong in the pool: starting a worker (the pool, or a replacement), or running one
/// event (then only that event's connection is closed; nothing else is hurt).
///
/// Every message says what could not be done, then keeps the text earlier versions logged after
/// it ("worker pid N wrote bytes that are not a frame: …", RoadRunner's "no free workers"), so
/// that what users and the README match still matches.
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
    /// The worker did not answer the handshake within allocate_timeout (on a socket relay: did
    /// not connect and answer within relay_timeout) (worker's fault).
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
    #[error("could not run the event: no free workers within {0:?}")]
    NoFreeWorkers(Duration),
    /// The pool is shut down.
    #[error("could not run the event: the pool is stopped")]
    Closed,
    /// The worker answered with an error frame (`Worker::error()`); it stays in service.
    #[error("could not run the event: worker pid {pid} reported an error: {message}")]
    WorkerError {
        /// The worker.
        pid: u32,
        /// Its message.
        message: String,
    },
    /// The worker died or closed its pipes during the event; it is replaced.
    #[error("could not run the event: worker pid {pid} exited during the event")]
    WorkerExited {
        /// The worker.
        pid: u32,
        /// The pipe error, if any.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The worker wrote bytes that are not a frame (a stray `echo`); it is killed and replaced.
    #[error(
        "could not run the event: worker pid {pid} wrote bytes that are not a frame: {bytes:?}"
    )]
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
    #[error("could not run the event: worker pid {pid} sent a frame that is not a reply")]
    BadMessage {
        /// The worker.
        pid: u32,
        /// What was wrong.
        #[source]
        source: MessageError,
    },
    /// The worker wrote to stdout while idle (a stray `echo` from a timer or destructor, or bytes
    /// trailing its last reply); it is killed and replaced before any event is handed to it.
    #[error("could not keep the worker: worker pid {pid} wrote bytes while idle (not answering any event): {bytes:?}")]
    IdleGarbage {
        /// The worker.
        pid: u32,
        /// The first bytes, lossily as text.
        bytes: String,
    },
    /// The worker closed its stdout (exited) while idle; it is replaced before any event is
    /// handed to it.
    #[error("could not keep the worker: worker pid {pid} exited while idle")]
    IdleExited {
        /// The worker.
        pid: u32,
        /// The read error, if it was one rather than EOF.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The worker failed (died, misbehaved, was killed) while this event was in flight behind the
    /// one it was running (several events in flight, `tcp.pool.max_in_flight`); it is replaced.
    #[error(
        "could not run the event: worker pid {pid} failed with this event in flight ({cause})"
    )]
    Abandoned {
        /// The worker.
        pid: u32,
        /// What happened to the event it was running.
        cause: String,
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
    Encode(#[source] EncodeError),
    /// Every worker tried asked to stop.
    #[error("could not run the event: re-run {0} times (stop replies, workers gone); giving up")]
    TooManyReruns(usize),
    /// `max_queue_size` events were already waiting for a worker (overload).
    #[error(
        "could not run the event: no free workers: {0} events already waiting (max_queue_size)"
    )]
    QueueFull(usize),
    /// The event ran over `supervisor.exec_ttl`: its worker was killed and is replaced.
    #[error("could not run the event: it ran over exec_ttl; worker pid {pid} killed")]
    ExecTtl {
        /// The worker.
        pid: u32,
    },
    /// The worker was stuck on this event through the shutdown's `destroy_timeout`.
    #[error("could not run the event: worker pid {pid} was still on it after destroy_timeout at shutdown; killed")]
    KilledStuck {
        /// The worker.
        pid: u32,
    },
    /// The socket relay could not listen (config's fault, or the address is taken).
    #[error("could not listen on the worker relay {address}")]
    RelayBind {
        /// `server.relay`.
        address: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A reset could not start a new worker; the old ones keep serving.
    #[error("could not reset the workers: a new worker could not start")]
    ResetStart(#[source] Box<PoolError>),
    /// A reset did not finish within `reset_timeout`: workers still busy on an event then are
    /// replaced after it.
    #[error("could not reset every worker within reset_timeout ({timeout:?}): {left} still on an event, replaced after it")]
    ResetTimeout {
        /// `reset_timeout`.
        timeout: Duration,
        /// Old workers left.
        left: usize,
    },
}

/// What a worker wants done with the connection (owned form of [`pier_protocol::ReplyKind`]).
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

impl Reply {
    /// What the event of a delivered answer resolves to: its bytes are written already.
    fn delivered(pid: u32) -> Reply {
        Reply {
            action: Action::Continue,
            body: Bytes::new(),
            state: None,
            pid,
            idle_timeout: None,
            starttls: false,
        }
    }
}

/// One event to run; borrowed from the connection.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The connection's constant part of the context (client address, server name, connection
    /// id), JSON-encoded once when the connection opened.
    pub context: &'a ContextPrefix,
    /// The connection id (also inside `context`), for the per-worker status: the 16-byte value,
    /// not its text (the text lives on the heap, a cache line of its own per connection that an
    /// event would read only for the status).
    pub uuid: uuid::Uuid,
    /// What happened.
    pub kind: EventKind,
    /// The connection's state (empty = none).
    pub state: &'a [u8],
    /// The packet.
    pub body: &'a [u8],
    /// The connection's TLS facts as a context fragment (Pier extension `tls`); empty = plaintext.
    pub tls: &'a [u8],
    /// The connection itself: a plain answer may be delivered to it by whoever holds the worker
    /// (see [`line::Line::pass_on`]); its registry is what the worker's push commands during this
    /// event act on.
    pub conn: &'a crate::connection::Link,
}

impl Event<'_> {
    /// Appends its frame to `dst` (every path that hands an event to a worker: written alone,
    /// held back, joining a line, entered by the queue).
    #[inline(always)]
    fn encode(&self, dst: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_event_prefixed(
            dst,
            self.context,
            self.kind,
            self.tls,
            self.state,
            self.body,
        )
    }

    /// Its frame's size, estimated from above (a line's byte budget counts it).
    fn frame_bytes(&self) -> usize {
        // Header and options, the event name and the context's closing bytes.
        64 + self.context.len() + self.tls.len() + self.state.len() + self.body.len()
    }
}

/// Where [`Pool::join_line`] left an event.
enum Joining {
    /// Its answer is next (`Some`, the worker), or it runs elsewhere (`None`).
    Done(Option<Box<Worker>>),
    /// Its answer is next, but the relay was full: the rest of the outbox is written first.
    Write(Box<Worker>, RelayWrite),
    /// It waits for its turn (its slot linked to the line); with the write half when it writes
    /// the outbox.
    Queued(Option<RelayWrite>),
}

/// What `acquire` found for an event.
enum Got {
    /// An idle worker (checked): the event is written to it alone.
    Worker(Box<Worker>),
    /// A place reserved in this busy worker's line.
    Slot(Arc<Shared>),
    /// The event waited with its frame and the queue entered it into a line: its turn.
    Turn(Handoff),
}

/// How to start a worker; shared by the pool, its supervisor and every worker.
#[derive(Debug)]
struct Spec {
    /// Command, env, timeouts, limits.
    config: PoolConfig,
    /// Every live worker process by pid (from its handshake until it is reaped), so the
    /// supervisor, the shutdown and the reset can find workers whatever they are doing.
    registry: Mutex<HashMap<u32, Arc<Shared>>>,
    /// Each reaped worker's pid, for the supervisor (bounded by the pool's largest size).
    exits: worker::Exits,
    /// Where waits, event times and restarts are recorded.
    metrics: Metrics,
    /// Events waiting in busy workers' lines now (see [`queue`]'s "waiting"), kept by the lines.
    in_lines: Arc<AtomicUsize>,
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
    /// Idle workers and waiting events.
    queue: Queue,
    /// The listener workers connect back to, on a socket relay.
    relay: Option<Arc<RelayListener>>,
    /// Replacement workers asked of the supervisor.
    respawn: Arc<Respawn>,
    /// Stopping workers and the supervisor, awaited at shutdown.
    tasks: TaskTracker,
    /// Cancelled at shutdown: no more respawns.
    closed: CancellationToken,
    /// The reset generation new workers are started in (see [`Pool::reset`]).
    generation: AtomicU64,
    /// One reset at a time.
    resetting: tokio::sync::Mutex<()>,
}

impl Pool {
    /// Starts `num_workers` workers. Fails only when none of them can start (showing the first
    /// failure, stderr included); the missing ones are retried in the background.
    pub async fn start(config: PoolConfig, metrics: Metrics) -> Result<Pool, PoolError> {
        let relay = match &config.relay {
            RelayConfig::Pipes => None,
            other => Some(RelayListener::bind(other, config.relay_timeout).await?),
        };
        // Each reaped worker sends one pid; more than the pool's largest size at once only makes
        // a reaper wait for room (see `reap`), nothing is dropped.
        let most = config.num_workers.max(1) + config.dynamic.as_ref().map_or(0, |d| d.max_workers);
        let (exits, exits_rx) = mpsc::channel(most);
        let spec = Arc::new(Spec {
            config,
            registry: Mutex::new(HashMap::new()),
            exits,
            metrics,
            in_lines: Arc::new(AtomicUsize::new(0)),
        });
        let n = spec.config.num_workers.max(1);
        let pool = Pool {
            inner: Arc::new(Inner {
                spec: spec.clone(),
                queue: Queue::new(
                    spec.config.max_queue_size,
                    spec.in_lines.clone(),
                    supervisor::lines_open(&spec.config, 0, false),
                ),
                relay,
                respawn: Arc::new(Respawn::default()),
                tasks: TaskTracker::new(),
                closed: CancellationToken::new(),
                generation: AtomicU64::new(0),
                resetting: tokio::sync::Mutex::new(()),
            }),
        };
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..n {
            let spec = spec.clone();
            let relay = pool.inner.relay.clone();
            starts.spawn(async move { spawn_worker(&spec, relay.as_ref(), 0).await });
        }
        let mut first_error = None;
        let mut started = 0;
        while let Some(result) = starts.join_next().await {
            match result {
                Ok(Ok(worker)) => {
                    started += 1;
                    pool.add(worker);
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
        if let Some(e) = first_error {
            warn!(error = %e, "worker failed to start; retrying with backoff");
            pool.inner.respawn.ask(n - started);
        }
        let supervisor = pool.clone();
        pool.inner
            .tasks
            .spawn(supervisor::supervise(supervisor, exits_rx));
        let expiry = pool.clone();
        pool.inner.tasks.spawn(async move {
            let inner = &expiry.inner;
            inner
                .queue
                .expire(inner.spec.config.allocate_timeout, inner.closed.clone())
                .await;
        });
        info!(workers = started, command = ?spec.config.command, "worker pool started");
        Ok(pool)
    }

    /// Asks the supervisor for a replacement of a worker that is going away for `reason`.
    fn request_respawn(&self, reason: RestartReason) {
        self.inner.spec.metrics.worker_restart(reason);
        self.inner.respawn.ask(1);
    }

    /// Puts a new worker in service (or stops it again at shutdown).
    fn add(&self, worker: Box<Worker>) {
        if let Err(back) = self.inner.queue.put(worker) {
            self.retire(back);
        }
    }

    /// Runs one event to a reply. Re-runs it on another worker after a stop reply. Takes the
    /// event by value: the connection's task then holds one future, not one around this one.
    /// Inlined (the constructor of the future, not its body): the caller's box is filled in
    /// place (see [`SpareBox::new_with`]).
    // An async block, not an `async fn`: an `async fn` keeps its arguments twice in its future
    // (rust-lang/rust#62958; here the event's 88 bytes), and this future is in every event's.
    #[allow(clippy::manual_async_fn)]
    #[inline(always)]
    pub fn exec<'p, 'e>(
        &'p self,
        event: Event<'e>,
    ) -> impl Future<Output = Result<Reply, PoolError>> + Send + use<'p, 'e> {
        async move {
            let event = &event;
            let spec = &self.inner.spec;
            let bytes = event.frame_bytes();
            // A CLOSE is the worker's one chance to clean up after a connection: one lost with its
            // worker (killed or crashed while running it, or failed with the CLOSE waiting in its
            // line) runs once more on another. Once only, so a CLOSE that itself crashes workers
            // costs two of them.
            let mut close_retry = event.kind == EventKind::Close;
            let mut retry_close = |e: PoolError| {
                if std::mem::take(&mut close_retry) && lost_with_worker(&e) {
                    warn!(error = %e, "CLOSE lost with its worker; running it on another worker");
                    Ok(())
                } else {
                    Err(e)
                }
            };
            // Where a waiting event learns its worker, place or turn (see `assign`): part of this
            // future, which does not move (the connection's `SpareBox`).
            let slot = std::pin::pin!(Slot::with_conn(event.conn));
            let slot = slot.as_ref();
            for _ in 0..MAX_RERUNS {
                let bounded = event.kind != EventKind::Close;
                // Each await's result is taken apart before the next await (never a `match` on it
                // around one), so that the future keeps no result across it (`exec_future_sizes`).
                let got = match self.acquire(event, bytes, bounded, slot).await {
                    Ok(got) => got,
                    Err(e) => {
                        retry_close(e)?;
                        continue;
                    }
                };
                let (mut worker, alone) = match got {
                    Got::Worker(worker) => (worker, true),
                    Got::Slot(shared) => {
                        let joined = self.join(&shared, event, bytes, slot).await;
                        match joined {
                            Ok(Ok(worker)) => (worker, false),
                            Ok(Err(Some(pid))) => return Ok(Reply::delivered(pid)),
                            Ok(Err(None)) => continue,
                            Err(e) => {
                                retry_close(e)?;
                                continue;
                            }
                        }
                    }
                    Got::Turn(Handoff::Worker(worker)) => (worker, false),
                    Got::Turn(Handoff::Delivered(pid)) => return Ok(Reply::delivered(pid)),
                    Got::Turn(Handoff::Rerun) => continue,
                    Got::Turn(Handoff::Failed(e)) => {
                        retry_close(*e)?;
                        continue;
                    }
                };
                let started = spec.metrics.clock();
                worker.begin(event.uuid);
                // Taken idle: the event is written alone and the worker's line opens behind it
                // (room for waiting events now). In line: its frame is written already.
                let outcome = 'run: {
                    if alone {
                        // Taken first after the runtime's park, the event is written at once (at
                        // one connection nothing else is coming, and its answer may be read
                        // early); else it is held back until the other events ready now have
                        // joined it (`send_held`). Boxed: once per batch, not per event.
                        let sent = if worker.first_after_park() {
                            worker.send(event, bytes).await
                        } else {
                            Box::pin(self.send_held(&mut worker, event, bytes)).await
                        };
                        if let Err(e) = sent {
                            break 'run Err(e);
                        }
                        self.admit_waiting(&worker.shared);
                        // Only while no other event was entered behind it: those frames are written
                        // right before the answer is waited for (`Worker::answer`), which an early
                        // answer would delay.
                        if !worker.shared.line.has_entered() {
                            worker.read_early();
                        }
                    }
                    worker.answer(event).await
                };
                worker.end();
                spec.metrics.ran(event.kind, started);
                match outcome {
                    Ok(Outcome::Reply(reply)) => {
                        self.pass_on(worker);
                        return Ok(reply);
                    }
                    Ok(Outcome::Error(message)) => {
                        let pid = worker.pid;
                        self.pass_on(worker);
                        return Err(PoolError::WorkerError { pid, message });
                    }
                    Ok(Outcome::Stop) => {
                        info!(
                            pid = worker.pid,
                            "worker asked to stop; re-running the event on another worker"
                        );
                        // The events behind it were not answered either: they go elsewhere too.
                        worker.shared.line.end(|| Handoff::Rerun);
                        let replace = worker.shared.retire.load(Ordering::Relaxed) != RETIRE_REMOVE;
                        self.retire(worker);
                        if replace {
                            self.request_respawn(RestartReason::Stop);
                        }
                    }
                    Err(e @ PoolError::Undelivered { .. }) => {
                        // The worker never read the event (it died after the idle check), nor any
                        // event that joined behind it meanwhile: run them all on other workers.
                        warn!(error = %e, "worker gone; running the event on another worker");
                        worker.shared.line.end(|| Handoff::Rerun);
                        self.kill_and_replace(worker, RestartReason::Crash);
                    }
                    Err(e @ PoolError::Encode(_)) => {
                        // Nothing reached the worker (taken idle): it is fine.
                        self.release(worker);
                        return Err(e);
                    }
                    Err(e) => {
                        let (pid, cause) = (worker.pid, e.to_string());
                        worker.shared.line.end(|| {
                            Handoff::Failed(Box::new(PoolError::Abandoned {
                                pid,
                                cause: cause.clone(),
                            }))
                        });
                        self.kill_and_replace(worker, restart_reason(&e));
                        retry_close(e)?;
                    }
                }
            }
            Err(PoolError::TooManyReruns(MAX_RERUNS))
        }
    }

    /// Writes the event taken on an idle worker, not first after the runtime's park, together with
    /// the events of the connections pier is going through: its frame goes to the line's outbox
    /// and the line opens behind it ([`line::Line::hold`]); the waiting events are entered; the
    /// outbox is held back while more join, then written in one write ([`line::Line::write_held`]).
    ///
    /// With pier and its worker on one core, a write to a worker blocked on its relay wakes it and
    /// it preempts pier: written at once, the event alone cost the worker a wake-up (two process
    /// switches), and the events that joined behind it another. Held back, one wake-up serves them
    /// all. No timer: the cost is a few turns of the scheduler while others are ready.
    async fn send_held(
        &self,
        worker: &mut Worker,
        event: &Event<'_>,
        bytes: usize,
    ) -> Result<(), PoolError> {
        let pid = worker.pid;
        let line = &worker.shared.line;
        let Some(writer) = line
            .hold(bytes, worker.jobs, |buf| event.encode(buf))
            .map_err(PoolError::Encode)?
        else {
            return Err(PoolError::Undelivered {
                pid,
                source: std::io::ErrorKind::BrokenPipe.into(),
            });
        };
        let shared = &worker.shared;
        self.admit_waiting(shared);
        line.write_held(writer, || self.admit_waiting(shared))
            .await
            .map_err(|source| PoolError::Undelivered { pid, source })
    }

    /// Joins `shared`'s line at the place reserved for the event: its frame goes to the outbox,
    /// written by the first event that joined since the last write, after the other events ready
    /// now have added theirs. Returns the worker once the event's answer is next; `Err(Some(pid))`
    /// when its answer was delivered by whoever held the worker (see [`line::Line::pass_on`]);
    /// `Err(None)` when the event must run elsewhere (the line ended first, the worker asked to
    /// stop).
    ///
    /// Only the wait for its turn is awaited here; the joining itself is [`Pool::join_line`]'s,
    /// with no await, and the rare writes that would wait are boxed: this future is inside every
    /// event's (`exec_future_sizes`).
    // An async block, not an `async fn`: an `async fn` keeps its arguments twice in its future
    // (rust-lang/rust#62958; here the event's 88 bytes), and this future is in every event's.
    #[allow(clippy::manual_async_fn)]
    fn join<'a, 'e>(
        &'a self,
        shared: &'a Arc<Shared>,
        event: &'a Event<'e>,
        bytes: usize,
        slot: Pin<&'a Slot>,
    ) -> impl Future<Output = Result<Result<Box<Worker>, Option<u32>>, PoolError>> + use<'a, 'e>
    {
        async move {
            let line = &shared.line;
            // What is awaited is made first, so that nothing of the joining is kept across an await.
            // The wait on the slot is made as soon as the slot is linked: dropped (the connection
            // gone) during the write, it gives the slot up.
            let waker = current_waker().await;
            let queue = &self.inner.queue;
            // `Err`: the worker, its answer next (once the rest of the outbox is written).
            let (mut turn, write): (_, Option<Pin<Box<dyn Future<Output = _> + Send + '_>>>) =
                match self.join_line(shared, event, bytes, (slot, waker))? {
                    Joining::Done(worker) => return Ok(worker.ok_or(None)),
                    // The worker waits for this frame, and the relay was full: the rest now.
                    Joining::Write(worker, rest) => {
                        (Err(Some(worker)), Some(Box::pin(line.flush(rest))))
                    }
                    Joining::Queued(None) => (Ok(queue.waiter(slot, bytes, true)), None),
                    // The worker is busy: let the other events ready in this turn of the scheduler
                    // join first, and write them all at once. Boxed, as the write above: the first
                    // of a batch of joining events only.
                    Joining::Queued(Some(writer)) => {
                        let write = line.write_held(writer, || self.admit_waiting(shared));
                        // Polled again after the write's first wait: not fresh.
                        (Ok(queue.waiter(slot, bytes, false)), Some(Box::pin(write)))
                    }
                };
            if let Some(write) = write {
                if write.await.is_err() {
                    // Its answer read next fails as for a crash.
                    shared.kill(KillReason::None);
                }
            }
            // Awaited where it is (no second copy in the future).
            let waiter = match &mut turn {
                Ok(waiter) => waiter,
                Err(worker) => return Ok(worker.take().ok_or(None)),
            };
            event.conn.awaits_turn(true);
            let turn = waiter.await;
            event.conn.awaits_turn(false);
            match turn {
                Ok(Assignment::Turn(Handoff::Worker(worker))) => Ok(Ok(worker)),
                Ok(Assignment::Turn(Handoff::Delivered(pid))) => Ok(Err(Some(pid))),
                Ok(Assignment::Turn(Handoff::Rerun)) => Ok(Err(None)),
                Ok(Assignment::Turn(Handoff::Failed(e))) => Err(*e),
                // Whoever held the worker was dropped (only at a forced shutdown); a line's turn
                // carries nothing else.
                Ok(_) | Err(_) => Err(PoolError::Closed),
            }
        }
    }

    /// [`Pool::join`]'s part that does not wait: the frame entered into the line, and written at
    /// once when the worker waits for it (as much as the relay takes).
    fn join_line(
        &self,
        shared: &Arc<Shared>,
        event: &Event<'_>,
        bytes: usize,
        (slot, waker): (Pin<&Slot>, std::task::Waker),
    ) -> Result<Joining, PoolError> {
        let line = &shared.line;
        let joined = line.join(bytes, |buf| event.encode(buf), (slot, waker, shared));
        match joined {
            Ok(Joined::Closed) => Ok(Joining::Done(None)),
            Err((e, parked)) => {
                if let Some(worker) = parked {
                    self.release(worker);
                }
                Err(PoolError::Encode(e))
            }
            Ok(Joined::Now { worker, writer }) => {
                // The worker waits for this frame: write at once.
                match writer.map(|writer| line.write_now(writer)) {
                    None | Some(Ok(None)) => Ok(Joining::Done(Some(worker))),
                    Some(Ok(Some(rest))) => Ok(Joining::Write(worker, rest)),
                    Some(Err(_)) => {
                        // Its answer read next fails as for a crash.
                        shared.kill(KillReason::None);
                        Ok(Joining::Done(Some(worker)))
                    }
                }
            }
            Ok(Joined::Queued { writer }) => Ok(Joining::Queued(writer)),
        }
    }

    /// The event's answer is in: the worker goes to the next event of its line, or back to the
    /// pool when the line is empty.
    fn pass_on(&self, mut worker: Box<Worker>) {
        worker.jobs += 1;
        let shared = worker.shared.clone();
        let mut delivered = 0;
        let passed = shared.line.pass_on(worker, &mut delivered);
        if delivered > 0 {
            // Their events took no time on the worker's side once their turn came.
            let metrics = &self.inner.spec.metrics;
            metrics.delivered(delivered);
            for _ in 0..delivered {
                metrics.ran(EventKind::Data, metrics.clock());
            }
        }
        match passed {
            // Waiting events are taken in once the line is down to half its length, several
            // at once (one lock of the queue and of the line for them all), not one per answer:
            // the worker still has half a line of events to answer meanwhile.
            Passed::On { depth } if 2 * depth <= self.inner.spec.config.max_in_flight => {
                self.admit_waiting(&shared)
            }
            Passed::On { .. } => {}
            Passed::Back(worker) => self.release(worker),
            Passed::Orphaned(worker) => {
                warn!(
                    pid = worker.pid,
                    "an event in the worker's line was dropped; replacing the worker"
                );
                let pid = worker.pid;
                shared.line.end(|| {
                    Handoff::Failed(Box::new(PoolError::Abandoned {
                        pid,
                        cause: "an event before it was dropped".into(),
                    }))
                });
                self.kill_and_replace(worker, RestartReason::Crash);
            }
        }
    }

    /// Room was made in `shared`'s line: waiting events get places in it. The frames of those
    /// the queue entered (see [`queue`]) are written by the line's next runner right before it
    /// reads from the worker ([`line::Line::take_entered`]), after the answers already read
    /// have each made room for one: one relay write for them all. Written at once, each answer
    /// cost a relay write and the worker a read of one event (1000x1: 0.9 more system calls per
    /// message in pier, 1.1 in the worker); written by a task spawned per batch, ~150
    /// instructions per message at 100x1 went to the task.
    fn admit_waiting(&self, shared: &Arc<Shared>) {
        if self.inner.queue.waiting_here() == 0 {
            return;
        }
        self.inner.queue.admit(shared, &self.inner.spec.metrics);
    }

    /// Takes an idle worker, in strict arrival order, or a place in a busy worker's line when
    /// none is idle, waiting up to `allocate_timeout` when no line has room. A worker that died
    /// or wrote to its relay while idle is killed and replaced here, before any event is handed
    /// to it (see [`Worker::check_idle`]), so the event loses nothing.
    // An async block, not an `async fn`: an `async fn` keeps its arguments twice in its future
    // (rust-lang/rust#62958; here the event's 88 bytes), and this future is in every event's.
    #[allow(clippy::manual_async_fn)]
    fn acquire<'a, 'e>(
        &'a self,
        event: &'a Event<'e>,
        bytes: usize,
        bounded: bool,
        slot: Pin<&'a Slot>,
    ) -> impl Future<Output = Result<Got, PoolError>> + use<'a, 'e> {
        async move {
            let metrics = &self.inner.spec.metrics;
            loop {
                let encode = |mut frame: Vec<u8>| {
                    frame.reserve(bytes);
                    event.encode(&mut frame).ok().map(|()| frame)
                };
                // What is awaited (the wait) is taken out first, so that nothing else of the take is
                // kept across the await (`exec_future_sizes`).
                // The task's waker, for the slot should the event wait (see `assign`).
                let waker = current_waker().await;
                let take = self.inner.queue.take(
                    slot,
                    waker,
                    bytes,
                    bounded,
                    || self.find_line(bytes),
                    encode,
                );
                match take {
                    // No clock read for the wait metric on this, the usual, path.
                    Take::Ready(worker) => {
                        metrics.no_wait();
                        match self.checked(worker) {
                            Some(worker) => return Ok(Got::Worker(worker)),
                            None => continue,
                        }
                    }
                    Take::Joined(shared) => {
                        metrics.no_wait();
                        return Ok(Got::Slot(shared));
                    }
                    Take::Wait => {}
                    Take::Full(max) => return Err(PoolError::QueueFull(max)),
                    Take::Closed => return Err(PoolError::Closed),
                }
                let since = metrics.clock();
                event.conn.awaits_turn(true);
                let waited = self.inner.queue.waiter(slot, bytes, true).await;
                event.conn.awaits_turn(false);
                let worker = match waited {
                    // Its wait ended when the queue entered it into the line.
                    Ok(Assignment::Turn(handoff)) => return Ok(Got::Turn(handoff)),
                    Ok(Assignment::Worker(worker)) => {
                        metrics.waited(since);
                        worker
                    }
                    Ok(Assignment::Slot(shared)) => {
                        metrics.waited(since);
                        return Ok(Got::Slot(shared));
                    }
                    Ok(Assignment::Expired) | Err(WaitError::Timeout) => {
                        metrics.waited(since);
                        let timeout = self.inner.spec.config.allocate_timeout;
                        return Err(PoolError::NoFreeWorkers(timeout));
                    }
                    Err(WaitError::Closed) => {
                        metrics.waited(since);
                        return Err(PoolError::Closed);
                    }
                };
                if let Some(worker) = self.checked(worker) {
                    return Ok(Got::Worker(worker));
                }
            }
        }
    }

    /// The idle worker taken for an event, if it is fine (see [`Worker::check_idle`]); else it
    /// is killed and replaced, and the event waits for another one.
    fn checked(&self, mut worker: Box<Worker>) -> Option<Box<Worker>> {
        let reason = match worker.check_idle() {
            Ok(()) => return Some(worker),
            Err(e) => {
                // Nothing was handed to it: the event waits for another worker.
                warn!(error = %e, "replacing worker; the event goes to another worker");
                restart_reason(&e)
            }
        };
        self.kill_and_replace(worker, reason);
        None
    }

    /// Reserves a place for an event of `bytes` in the shortest line with room (called with the
    /// queue locked, when no worker is idle and no event waits).
    fn find_line(&self, bytes: usize) -> Option<Arc<Shared>> {
        if self.inner.spec.config.max_in_flight <= 1 {
            return None;
        }
        let registry = self.inner.spec.registry.lock().ok()?;
        let now = worker::coarse_now_ns();
        let mut best: Option<(&Arc<Shared>, usize)> = None;
        for shared in registry.values() {
            // A worker that has been on one event for long takes no more: what joined it would
            // wait for that event (or fail with it at exec_ttl) while other workers free up.
            let running = now.saturating_sub(shared.event_started.load(Ordering::Relaxed));
            if running > LONG_EVENT.as_nanos() as u64 {
                continue;
            }
            let Some(depth) = shared.line.room(bytes, shared.retiring()) else {
                continue;
            };
            if best.is_none_or(|(_, d)| depth < d) {
                best = Some((shared, depth));
            }
        }
        let (shared, _) = best?;
        shared
            .line
            .reserve(bytes, shared.retiring())
            .then(|| shared.clone())
    }

    /// Puts a worker back, or replaces it after max_jobs events or when the supervisor marked it
    /// (ttl, memory) during its event.
    fn release(&self, worker: Box<Worker>) {
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
        match worker.shared.retire.load(Ordering::Relaxed) {
            0 => {}
            RETIRE_REMOVE => {
                debug!(pid = worker.pid, "worker leaves after its event (reset)");
                self.retire(worker);
                return;
            }
            code => {
                info!(
                    pid = worker.pid,
                    "replacing worker after its event (supervisor limit)"
                );
                self.retire(worker);
                self.request_respawn(worker::retire_reason(code));
                return;
            }
        }
        if let Err(back) = self.inner.queue.put(worker) {
            self.retire(back);
        }
    }

    /// Stops a worker in the background: stop frame, wait up to destroy_timeout, then kill.
    fn retire(&self, worker: Box<Worker>) {
        worker
            .shared
            .leaving
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let destroy_timeout = self.inner.spec.config.destroy_timeout;
        self.inner.tasks.spawn(worker.stop(destroy_timeout));
    }

    /// Kills a misbehaving or dead worker (its reaper logs how it ended) and starts a replacement,
    /// unless a reset already started one for it.
    fn kill_and_replace(&self, worker: Box<Worker>, reason: RestartReason) {
        debug!(pid = worker.pid, "killing worker");
        let replace = worker.shared.retire.load(Ordering::Relaxed) != RETIRE_REMOVE;
        worker.shared.kill(KillReason::None);
        drop(worker);
        if replace {
            self.request_respawn(reason);
        }
    }

    /// How many worker processes are alive and serving (not being stopped), and how many events
    /// wait for one.
    pub fn stats(&self) -> PoolStats {
        let workers = self.inner.spec.registry.lock().map_or(0, |r| {
            r.values()
                .filter(|w| !w.leaving.load(Ordering::Relaxed))
                .count()
        });
        PoolStats {
            workers,
            waiting: self.inner.queue.waiting(),
        }
    }

    /// The pids of the live workers that are serving (not being stopped).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.inner.spec.registry.lock().map_or(Vec::new(), |r| {
            r.values()
                .filter(|w| !w.leaving.load(Ordering::Relaxed))
                .map(|w| w.pid)
                .collect()
        });
        pids.sort_unstable();
        pids
    }

    /// The workers in the middle of an event right now. Taken when shutdown starts; see
    /// [`Pool::kill_stuck`].
    pub fn busy_workers(&self) -> BusyWorkers {
        let Ok(registry) = self.inner.spec.registry.lock() else {
            return BusyWorkers::default();
        };
        let busy = registry
            .iter()
            .map(|(pid, shared)| (*pid, shared.activity.load(Ordering::Relaxed)))
            .filter(|(_, seq)| seq % 2 == 1)
            .collect();
        BusyWorkers { busy }
    }

    /// Kills (SIGKILL, with its process group) every worker of `before` that is still on the very
    /// same event, i.e. stuck on it since `before` was taken. The event then fails as for a crash:
    /// its connection is closed and gets its `CLOSE` on another worker (a replacement is started
    /// as usual). Returns the pids killed.
    pub fn kill_stuck(&self, before: &BusyWorkers) -> Vec<u32> {
        let Ok(registry) = self.inner.spec.registry.lock() else {
            return Vec::new();
        };
        let mut killed = Vec::new();
        for &(pid, seq) in &before.busy {
            let Some(shared) = registry.get(&pid) else {
                continue;
            };
            if shared.activity.load(Ordering::Relaxed) == seq {
                shared.kill(KillReason::Stuck);
                killed.push(pid);
            }
        }
        killed
    }

    /// Counts for the gauges and the status checks; cheap (one short lock, no system call).
    pub fn snapshot(&self) -> PoolSnapshot {
        let (workers, busy) = match self.inner.spec.registry.lock() {
            Ok(registry) => {
                let serving = registry
                    .values()
                    .filter(|w| !w.leaving.load(Ordering::Relaxed));
                let (mut workers, mut busy) = (0, 0);
                for w in serving {
                    workers += 1;
                    busy += usize::from(w.activity.load(Ordering::Relaxed) % 2 == 1);
                }
                (workers, busy)
            }
            Err(_) => (0, 0),
        };
        PoolSnapshot {
            workers,
            busy,
            // The idle queue can briefly hold a worker that is being checked or retired; never
            // more than the live workers.
            idle: self.inner.queue.idle().min(workers - busy),
            // Events queued in a busy worker's line wait for it as much as those in the queue.
            waiting: self.inner.queue.waiting_here() + self.inner.queue.in_lines(),
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
        let now = worker::coarse_now_ns();
        let mut out: Vec<WorkerStatus> = registry
            .iter()
            .map(|(pid, info)| {
                let busy = info.activity.load(Ordering::Relaxed) % 2 == 1;
                let event = busy.then(|| {
                    let started = info.event_started.load(Ordering::Relaxed);
                    let uuid = info.event_uuid().map(|u| u.to_string()).unwrap_or_default();
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

    /// Kills every worker at once (the grace period ran out).
    pub fn kill_all(&self) {
        if let Ok(registry) = self.inner.spec.registry.lock() {
            for shared in registry.values() {
                shared.kill(KillReason::Stuck);
            }
        }
    }

    /// Stops every worker: no more respawns, stop frame to each idle worker, wait up to
    /// destroy_timeout each, then kill. Call after every connection is done.
    pub async fn shutdown(&self) {
        self.inner.closed.cancel();
        for worker in self.inner.queue.close() {
            self.retire(worker);
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // Workers still running an event (the grace period ran out) are killed with it.
        self.kill_all();
    }
}

/// A snapshot of the pool's size, for logs, tests and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Worker processes alive and serving.
    pub workers: usize,
    /// Events waiting for a worker: in the queue, and in busy workers' lines.
    pub waiting: usize,
}

/// Whether `e` says the event was lost with its worker: the worker died while running it (a
/// kill, the OOM killer, a crash) or failed while the event waited in its line. Not when the
/// worker misbehaved on the event itself (stray bytes, overran `exec_ttl`: likely again on
/// another worker), nor when the pool or the worker's own error reply ended it.
fn lost_with_worker(e: &PoolError) -> bool {
    matches!(
        e,
        PoolError::WorkerExited { .. } | PoolError::Abandoned { .. }
    )
}

/// The metrics' name for why a worker that failed this way is replaced.
fn restart_reason(e: &PoolError) -> RestartReason {
    match e {
        PoolError::Garbage { .. }
        | PoolError::BadMessage { .. }
        | PoolError::IdleGarbage { .. } => RestartReason::Garbage,
        PoolError::ExecTtl { .. } => RestartReason::ExecTtl,
        _ => RestartReason::Crash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of the future `make` returns.
    fn size<'a, A: 'a, B, R>(_: impl FnOnce(&'a A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Bytes of the future `make` returns, for a method of `&mut A`.
    fn size_mut<'a, A: 'a, B, R>(_: impl FnOnce(&'a mut A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// The sizes of an event's futures (`cargo test -p pier-server --lib exec_future_sizes --
    /// --nocapture` prints them). The exec future is boxed per event ([`SpareBox`]) and touched again when its
    /// turn comes, long after, at 1000 connections out of the cache: each line it spans can cost a
    /// miss (bench/results/2026-11-30-pipeline.md, "exec"). The rare paths (a relay write that
    /// would wait) are boxed so that they do not grow it.
    #[test]
    fn exec_future_sizes() {
        let exec = size(|p: &Pool, e: Event<'_>| p.exec(e));
        let slot = std::pin::pin!(Slot::new());
        let slot = slot.as_ref();
        let acquire = size(|p: &Pool, e: &Event<'_>| p.acquire(e, 0, true, slot));
        let answer = size_mut(|w: &mut Worker, e: &Event<'_>| w.answer(e));
        let send = size_mut(|w: &mut Worker, e: &Event<'_>| w.send(e, 0));
        let join = size(|p: &Pool, (s, e): (&Arc<Shared>, &Event<'_>)| p.join(s, e, 0, slot));
        eprintln!("exec {exec} B: acquire {acquire}, send {send}, join {join}, answer {answer}");
        // 744, 216, 312, 400, 296 before the rare paths were boxed; then 672, 168, 88, 336, 120
        // before `join` kept nothing of the joining across its awaits; exec 504 and acquire 168
        // before `exec` and `acquire` kept no await's result across the next; exec 432, acquire
        // 144, join 96 before the slot (48 bytes, in exec: see `assign`) replaced the channel
        // and `exec`, `acquire` and `join` became async blocks (an `async fn` keeps its arguments
        // twice: exec's event was 2 × 88 bytes).
        assert!(answer <= 160, "answer {answer} B");
        assert!(send <= 128, "send {send} B");
        assert!(join <= 128, "join {join} B");
        assert!(acquire <= 128, "acquire {acquire} B");
        // 384 before the slot kept its connection (8 bytes: the runner holding the worker reaches
        // a parked connection through its turn's slot, `Line::pass_on`); the event's registry
        // pointer went for the connection's.
        assert!(exec <= 392, "exec {exec} B");
    }
}
