//! The pool's supervisor task: starts replacements (in parallel, bounded, with backoff), replaces
//! a worker that died while idle as soon as its reaper reports it, and every `watch_tick` applies
//! RoadRunner's `tcp.pool.supervisor` limits (`ttl`, `idle_ttl`, `exec_ttl`, `max_worker_memory`)
//! and the `dynamic_allocator`.
//!
//! Nothing here runs per event: `exec_ttl` and `idle_ttl` are judged from each worker's activity
//! counter sampled once per tick (an event that has not moved it for `exec_ttl` is stuck), so their
//! precision is `watch_tick`, as in RoadRunner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log_scope::{debug, error, info, warn};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use super::worker::{spawn_worker, KillReason, Shared, Worker, RETIRE_MEMORY, RETIRE_TTL};
use super::{Pool, PoolError};
use crate::config::PoolConfig;
use crate::ops::RestartReason;

/// First respawn delay after a failed start; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest respawn delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How many workers may be starting at once: replacements after a mass crash start in parallel,
/// without forking hundreds of PHP processes in the same instant.
const MAX_PARALLEL_STARTS: usize = 8;

/// Delays between failed worker starts: 100 ms, doubling, at most 5 s; reset by a success.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    /// Failed starts in a row.
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt, counting one more failure.
    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = BACKOFF_START
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// Replacement workers asked for and not yet seen by the supervisor: a count and a wake-up, so
/// however many workers leave at once the requests take one word (a channel would queue one
/// message each).
#[derive(Debug, Default)]
pub(super) struct Respawn {
    /// Replacements asked for since the supervisor last looked.
    wanted: AtomicUsize,
    /// Wakes the supervisor; a wake-up while it is busy is kept for its next wait.
    wake: Notify,
}

impl Respawn {
    /// Asks for `n` replacement workers.
    pub(super) fn ask(&self, n: usize) {
        if n > 0 {
            self.wanted.fetch_add(n, Ordering::Release);
            self.wake.notify_one();
        }
    }

    /// Takes every request made so far.
    fn take(&self) -> usize {
        self.wanted.swap(0, Ordering::Acquire)
    }
}

/// The supervisor's own state; only its task touches it.
#[derive(Debug)]
struct Supervisor {
    /// The pool it keeps full.
    pool: Pool,
    /// Replacements asked for and not started yet.
    pending: usize,
    /// Starts under way.
    starts: JoinSet<Result<Box<Worker>, PoolError>>,
    /// Delays after failed starts.
    backoff: Backoff,
    /// No start before this (after a failure).
    retry_at: Option<tokio::time::Instant>,
    /// Per pid: the activity counter last seen and since when it has had that value.
    seen: HashMap<u32, (u64, Instant)>,
    /// Extra workers started by the dynamic allocator and still counted.
    extras: usize,
    /// When events last had to wait, for the dynamic allocator's `idle_timeout`.
    last_demand: Instant,
}

/// Runs until the pool shuts down. Replacements are asked for through the pool's [`Respawn`];
/// `exits` carries the pid of every reaped worker.
pub(super) async fn supervise(pool: Pool, mut exits: mpsc::Receiver<u32>) {
    let watch_tick = pool.inner.spec.config.supervisor.watch_tick;
    let watching = watches(&pool.inner.spec.config);
    let mut tick = tokio::time::interval(watch_tick.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let closed = pool.inner.closed.clone();
    let demand = pool.inner.queue.demand_signal.clone();
    let respawn = pool.inner.respawn.clone();
    let mut sup = Supervisor {
        pool,
        pending: 0,
        starts: JoinSet::new(),
        backoff: Backoff::default(),
        retry_at: None,
        seen: HashMap::new(),
        extras: 0,
        last_demand: Instant::now(),
    };
    loop {
        let retry_at = sup.retry_at;
        tokio::select! {
            _ = closed.cancelled() => {
                sup.starts.abort_all();
                return;
            }
            _ = respawn.wake.notified() => sup.pending += respawn.take(),
            Some(pid) = exits.recv() => sup.exited(pid),
            _ = demand.notified() => sup.grow(),
            Some(result) = sup.starts.join_next(), if !sup.starts.is_empty() => {
                match result {
                    Ok(result) => sup.started(result),
                    Err(join) => {
                        error!(error = %join, "worker start task failed");
                        sup.pending += 1;
                    }
                }
                // A round of the dynamic allocator may have ended with events still waiting.
                sup.grow();
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)),
                if retry_at.is_some() => sup.retry_at = None,
            _ = tick.tick(), if watching => sup.watch(),
        }
        sup.launch();
        sup.pool.inner.queue.open_lines(lines_open(
            &sup.pool.inner.spec.config,
            sup.extras,
            sup.pending > 0 || !sup.starts.is_empty(),
        ));
    }
}

/// Whether the supervisor has anything to do each `watch_tick`: a limit of
/// `tcp.pool.supervisor` or the dynamic allocator. Without either, no tick is armed: a pending
/// timer costs the runtime a look at its timer wheel and two clock reads at every park, twice per
/// message at one connection (bench/results/2026-11-30-pipeline.md, "tokio's park").
pub(super) fn watches(config: &PoolConfig) -> bool {
    let limits = &config.supervisor;
    !limits.ttl.is_zero()
        || !limits.idle_ttl.is_zero()
        || !limits.exec_ttl.is_zero()
        || limits.max_worker_memory > 0
        || config.dynamic.is_some()
}

/// Whether events may join busy workers' lines (`max_in_flight` over 1): not while the dynamic
/// allocator may still start workers (`extras` of its `max_workers` counted, `starting`: starts
/// asked for or under way), so that a waiting event goes to the first worker that is free or new,
/// as with one event per worker; an event in a line could not move to a new worker.
pub(super) fn lines_open(config: &PoolConfig, extras: usize, starting: bool) -> bool {
    config.max_in_flight > 1
        && config
            .dynamic
            .as_ref()
            .is_none_or(|d| extras >= d.max_workers && !starting)
}

impl Supervisor {
    /// Starts pending replacements, up to [`MAX_PARALLEL_STARTS`] at once, unless backing off.
    fn launch(&mut self) {
        while self.pending > 0 && self.starts.len() < MAX_PARALLEL_STARTS && self.retry_at.is_none()
        {
            self.pending -= 1;
            let inner = &self.pool.inner;
            let spec = inner.spec.clone();
            let relay = inner.relay.clone();
            let generation = inner.generation.load(Ordering::Relaxed);
            self.starts
                .spawn(async move { spawn_worker(&spec, relay.as_ref(), generation).await });
        }
    }

    /// A start finished.
    fn started(&mut self, result: Result<Box<Worker>, PoolError>) {
        match result {
            Ok(worker) => {
                self.backoff = Backoff::default();
                debug!(pid = worker.pid, "replacement worker started");
                self.pool.add(worker);
            }
            Err(e) => {
                self.pending += 1;
                if self.retry_at.is_none() {
                    let delay = self.backoff.next_delay();
                    error!(error = %e, retry_in = ?delay, "could not start a replacement worker");
                    self.retry_at = Some(tokio::time::Instant::now() + delay);
                } else {
                    error!(error = %e, "could not start a replacement worker");
                }
            }
        }
    }

    /// A worker process was reaped. If it was idle it is replaced now; if it was running an
    /// event, that event fails and its runner replaces it.
    fn exited(&mut self, pid: u32) {
        self.seen.remove(&pid);
        let gone = self.pool.inner.queue.remove_idle(1, |w| w.pid == pid);
        if !gone.is_empty() {
            warn!(pid, "worker exited while idle; replacing it");
            self.pool
                .inner
                .spec
                .metrics
                .worker_restart(RestartReason::Crash);
            self.pending += 1;
        }
    }

    /// Events are waiting: the dynamic allocator starts up to `spawn_rate` extra workers (at most
    /// `max_workers` extras), one round at a time.
    ///
    /// The demand flag is cleared only when a round starts. While the allocator is off, a round is
    /// under way or every extra runs, it stays set, so the events that wait meanwhile do not wake
    /// this task one by one (that cost hundreds of instructions per event when every worker was
    /// busy); a finished start and each tick look again.
    fn grow(&mut self) {
        let Some(dynamic) = &self.pool.inner.spec.config.dynamic else {
            return;
        };
        if self.pending > 0 || !self.starts.is_empty() || self.extras >= dynamic.max_workers {
            return;
        }
        if !self.pool.inner.queue.take_demand() {
            return;
        }
        self.last_demand = Instant::now();
        let n = dynamic.spawn_rate.min(dynamic.max_workers - self.extras);
        if n == 0 {
            return;
        }
        self.extras += n;
        self.pending += n;
        info!(
            started = n,
            extras = self.extras,
            max_workers = dynamic.max_workers,
            "events are waiting for workers; dynamic allocator starts extra workers"
        );
    }

    /// The periodic check: exec_ttl, ttl, idle_ttl, max_worker_memory, dynamic deallocation.
    fn watch(&mut self) {
        let now = Instant::now();
        let inner = self.pool.inner.clone();
        let limits = &inner.spec.config.supervisor;
        if inner.queue.waiting() > 0 {
            self.last_demand = now;
            // Re-arm: the allocator looks again now that its previous round may have finished.
            inner.queue.mark_demand();
            self.grow();
        } else if self.pool.inner.spec.config.dynamic.is_some() && inner.queue.take_demand() {
            // Events waited since the last tick (the flag stayed set while a round ran).
            self.last_demand = now;
        }
        let workers: Vec<Arc<Shared>> = match inner.spec.registry.lock() {
            Ok(registry) => registry.values().cloned().collect(),
            Err(_) => return,
        };
        self.seen
            .retain(|pid, _| workers.iter().any(|w| w.pid == *pid));
        for shared in workers {
            if shared.leaving.load(Ordering::Relaxed) {
                continue;
            }
            let pid = shared.pid;
            let seq = shared.activity.load(Ordering::Relaxed);
            let entry = self.seen.entry(pid).or_insert((seq, now));
            if entry.0 != seq {
                *entry = (seq, now);
            }
            let unchanged_for = now.saturating_duration_since(entry.1);
            let busy = seq % 2 == 1;
            if busy && !limits.exec_ttl.is_zero() && unchanged_for >= limits.exec_ttl {
                warn!(
                    pid,
                    exec_ttl = ?limits.exec_ttl,
                    "event ran over exec_ttl; killing its worker (the connection is closed)"
                );
                shared.kill(KillReason::ExecTtl);
                continue;
            }
            let reason = if !limits.ttl.is_zero()
                && now.saturating_duration_since(shared.started) >= limits.ttl
            {
                Some((RestartReason::Ttl, RETIRE_TTL, "ttl reached".to_owned()))
            } else if !busy
                && seq > 0
                && !limits.idle_ttl.is_zero()
                && unchanged_for >= limits.idle_ttl
            {
                Some((RestartReason::IdleTtl, 0, "idle_ttl reached".to_owned()))
            } else if limits.max_worker_memory > 0 {
                rss_bytes(pid)
                    .filter(|rss| *rss > limits.max_worker_memory)
                    .map(|rss| {
                        let why = format!(
                            "memory {} MB over max_worker_memory {} MB",
                            rss >> 20,
                            limits.max_worker_memory >> 20
                        );
                        (RestartReason::Memory, RETIRE_MEMORY, why)
                    })
            } else {
                None
            };
            let Some((metric, code, reason)) = reason else {
                continue;
            };
            let mut idle = inner.queue.remove_idle(1, |w| w.pid == pid);
            match idle.pop() {
                Some(worker) => {
                    info!(pid, %reason, "replacing idle worker");
                    self.pool.retire(worker);
                    inner.spec.metrics.worker_restart(metric);
                    self.pending += 1;
                }
                // idle_ttl only concerns idle workers: one that is not in the queue now is not.
                None if code == 0 => {}
                None => {
                    // Busy: replaced when its event ends (never mid-event).
                    if shared
                        .retire
                        .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        info!(pid, %reason, "worker will be replaced after its current event");
                    }
                }
            }
        }
        self.shrink(now);
    }

    /// Stops the dynamic allocator's extra workers once no event had to wait for `idle_timeout`.
    fn shrink(&mut self, now: Instant) {
        let Some(dynamic) = &self.pool.inner.spec.config.dynamic else {
            return;
        };
        if self.extras == 0
            || now.saturating_duration_since(self.last_demand) < dynamic.idle_timeout
        {
            return;
        }
        // Not-yet-started extras are simply not started.
        let unstarted = self.pending.min(self.extras);
        self.pending -= unstarted;
        self.extras -= unstarted;
        let idle = self.pool.inner.queue.remove_idle(self.extras, |_| true);
        if idle.is_empty() {
            return;
        }
        self.extras -= idle.len();
        info!(
            stopped = idle.len(),
            idle_timeout = ?dynamic.idle_timeout,
            "no event waited for idle_timeout; dynamic allocator stops extra workers"
        );
        for worker in idle {
            self.pool.retire(worker);
        }
    }
}

/// A process's resident set size in bytes (`/proc/<pid>/statm`, as RoadRunner reports a worker's
/// memory); `None` when it is gone.
fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf takes a plain integer and touches no memory of ours.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_to_5s() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), BACKOFF_MAX);
    }

    #[test]
    fn rss_of_this_process() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
