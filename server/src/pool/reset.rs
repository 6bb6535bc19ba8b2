//! The rolling reset (RoadRunner's `rr reset` / RPC `resetter.Reset`; Pier's SIGUSR1): every
//! worker is replaced, one at a time, while connections stay open and no event fails.
//!
//! Each step starts a new worker first and puts it in service, then takes one old worker out: an
//! idle one directly, or a busy one as soon as its current event ends (never mid-event). The whole
//! reset is bounded by `reset_timeout`; old workers still on an event then are replaced after it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::log_scope::{info, warn};
use tokio::time::Instant;

use super::worker::{spawn_worker, Shared, RETIRE_REMOVE, RETIRE_RESET};
use super::{Pool, PoolError};
use crate::ops::RestartReason;

/// How often a reset step looks whether the old worker it waits for came back from its event.
const POLL: Duration = Duration::from_millis(5);

impl Pool {
    /// Replaces every worker, one at a time; returns how many were replaced once every worker
    /// serving is a new one. Resets do not overlap: a second call waits for the first.
    pub async fn reset(&self) -> Result<usize, PoolError> {
        let _one_at_a_time = self.inner.resetting.lock().await;
        let inner = &self.inner;
        let config = &inner.spec.config;
        let deadline = Instant::now() + config.reset_timeout;
        // Workers started from now on (by this reset or as replacements) are new ones.
        let generation = inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        info!(
            workers = self.old_workers(generation).len(),
            "resetting workers one at a time"
        );
        let mut replaced = 0;
        loop {
            if inner.closed.is_cancelled() {
                return Err(PoolError::Closed);
            }
            let old = self.old_workers(generation);
            let Some(first) = old.first().cloned() else {
                break;
            };
            let started = tokio::time::timeout_at(
                deadline,
                spawn_worker(&inner.spec, inner.relay.as_ref(), generation),
            )
            .await;
            let new = match started {
                Ok(Ok(worker)) => worker,
                Ok(Err(e)) => return Err(PoolError::ResetStart(Box::new(e))),
                Err(_) => return Err(self.reset_timed_out(generation)),
            };
            self.add(new);
            // Prefer an idle old worker; else the first busy one leaves after its event.
            let idle = inner
                .queue
                .remove_idle(1, |w| w.shared.generation < generation);
            let leaving = match idle.into_iter().next() {
                Some(worker) => {
                    let shared = worker.shared.clone();
                    worker.stop(config.destroy_timeout).await;
                    shared
                }
                None => {
                    let _ = first.retire.compare_exchange(
                        0,
                        RETIRE_REMOVE,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    if !self.wait_out(&first, deadline).await {
                        return Err(self.reset_timed_out(generation));
                    }
                    first
                }
            };
            leaving.exited().await;
            inner.spec.metrics.worker_restart(RestartReason::Reset);
            replaced += 1;
        }
        info!(replaced, "workers reset");
        Ok(replaced)
    }

    /// Old workers still serving.
    fn old_workers(&self, generation: u64) -> Vec<Arc<Shared>> {
        self.inner.spec.registry.lock().map_or(Vec::new(), |r| {
            r.values()
                .filter(|w| w.generation < generation && !w.leaving.load(Ordering::Relaxed))
                .cloned()
                .collect()
        })
    }

    /// Waits until `old` leaves service (its event ended and `release` stopped it, or it died),
    /// taking it out of the idle queue if it went back there meanwhile. `false` at the deadline.
    async fn wait_out(&self, old: &Arc<Shared>, deadline: Instant) -> bool {
        loop {
            if old.leaving.load(Ordering::Relaxed) {
                return true;
            }
            if let Some(worker) = self
                .inner
                .queue
                .remove_idle(1, |w| w.pid == old.pid)
                .into_iter()
                .next()
            {
                worker.stop(self.inner.spec.config.destroy_timeout).await;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `reset_timeout` passed: the old workers left are replaced after their current event.
    fn reset_timed_out(&self, generation: u64) -> PoolError {
        let old = self.old_workers(generation);
        for shared in &old {
            // A worker already told to leave without replacement keeps that.
            let _ = shared.retire.compare_exchange(
                0,
                RETIRE_RESET,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        warn!(
            left = old.len(),
            "reset_timeout reached; the old workers left are replaced after their current event"
        );
        PoolError::ResetTimeout {
            timeout: self.inner.spec.config.reset_timeout,
            left: old.len(),
        }
    }
}
