//! RoadRunner's `resetter` and `informer` services for the one plugin Pier has, `tcp`: what
//! `rr reset`, `rr workers` and spiral/roadrunner-worker's tools call, and what `pier reset` and
//! `pier workers` call.
//!
//! `informer.Workers` answers RoadRunner's WorkerList (`{"workers":[{pid, status, numExecs,
//! created, memoryUsage, CPUPercent, command, statusStr}]}`, in that key order) and adds one key
//! stock clients ignore: `event`, the event a worker is running now (`{"connection": uuid,
//! "seconds": f64}`, or null).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::methods::{MethodError, Methods};
use crate::pool::{Pool, WorkerStatus};

/// The plugin name RoadRunner gives the TCP server; the only one Pier has.
pub const PLUGIN: &str = "tcp";

/// RoadRunner's worker state numbers (its `fsm` package: inactive 0, ready 1, working 2, …).
pub const STATE_READY: i64 = 1;
/// See [`STATE_READY`].
pub const STATE_WORKING: i64 = 2;

/// The error RoadRunner answers for a plugin it does not have (byte for byte).
pub fn no_such_plugin(name: &str) -> String {
    format!("no such plugin: {name}")
}

/// Registers `resetter.List`, `resetter.Reset`, `informer.List` and `informer.Workers`.
/// `resetter.Reset("tcp")` also re-reads every server's TLS certificates (as SIGHUP does); a
/// server whose files are bad keeps its current ones, and the call answers an error naming the
/// key and the file once the workers are reset.
pub fn register(m: &mut Methods) {
    m.register("resetter.List", |_ctx, _arg: IgnoredAny| async move {
        Ok(vec![PLUGIN])
    });
    m.register("resetter.Reset", |ctx, plugin: String| async move {
        if plugin != PLUGIN {
            return Err(MethodError::Failed(no_such_plugin(&plugin)));
        }
        let pool = ctx.pool()?.clone();
        // The certificates first: a reload takes milliseconds, and a bad file is then reported
        // with what the worker reset did (each server that failed keeps its current ones).
        let tls_failed = ctx.tls.reload();
        let tls_failed = (!tls_failed.is_empty()).then(|| {
            let servers: Vec<String> = tls_failed
                .iter()
                .map(|(server, e)| format!("server {server}: {}", crate::ErrorChain(e)))
                .collect();
            format!(
                "could not reload the TLS certificates of {} (the current certificates stay in use)",
                servers.join("; ")
            )
        });
        let replaced = match pool.reset().await {
            Ok(replaced) => replaced,
            Err(e) => {
                let mut text = format!("could not reset the tcp workers: {e}");
                if let Some(tls) = tls_failed {
                    text = format!("{text}; and {tls}");
                }
                return Err(MethodError::Failed(text));
            }
        };
        crate::log_scope::info!(replaced, "workers reset over RPC (resetter.Reset)");
        match tls_failed {
            Some(tls) => Err(MethodError::Failed(format!(
                "workers reset ({replaced} replaced), but {tls}"
            ))),
            None => Ok(true),
        }
    });
    m.register("informer.List", |_ctx, _arg: IgnoredAny| async move {
        Ok(vec![PLUGIN])
    });
    m.register("informer.Workers", |ctx, plugin: String| async move {
        if plugin != PLUGIN {
            return Err(MethodError::Failed(no_such_plugin(&plugin)));
        }
        Ok(worker_list(ctx.pool()?))
    });
}

/// `informer.Workers`'s result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerList {
    /// Every live worker, by pid.
    pub workers: Vec<WorkerInfo>,
}

/// One worker in RoadRunner's WorkerList shape, plus `event`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerInfo {
    /// Process id.
    pub pid: u32,
    /// RoadRunner's state number ([`STATE_READY`], [`STATE_WORKING`]).
    pub status: i64,
    /// Events answered.
    #[serde(rename = "numExecs")]
    pub num_execs: u64,
    /// Start time, Unix nanoseconds.
    pub created: i64,
    /// Resident memory, bytes (`/proc/<pid>/statm`, as RoadRunner reports RSS).
    #[serde(rename = "memoryUsage")]
    pub memory_usage: u64,
    /// CPU time since start ÷ wall time since start, in percent.
    #[serde(rename = "CPUPercent")]
    pub cpu_percent: f64,
    /// The worker command.
    pub command: String,
    /// RoadRunner's state name: `ready`, `working`.
    #[serde(rename = "statusStr")]
    pub status_str: String,
    /// Pier: the event running now.
    #[serde(default)]
    pub event: Option<RunningEvent>,
}

/// The event a worker is running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunningEvent {
    /// The connection's uuid.
    pub connection: String,
    /// How long it has been running.
    pub seconds: f64,
}

/// The WorkerList of `pool` now.
pub fn worker_list(pool: &Pool) -> WorkerList {
    let command = pool.command().join(" ");
    let workers = pool
        .workers()
        .into_iter()
        .map(|w| describe(&w, &command))
        .collect();
    WorkerList { workers }
}

fn describe(w: &WorkerStatus, command: &str) -> WorkerInfo {
    let created = w
        .created
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let age = SystemTime::now()
        .duration_since(w.created)
        .unwrap_or(Duration::ZERO);
    let (memory_usage, cpu) = process_stats(w.pid);
    let cpu_percent = match (cpu, age.as_secs_f64()) {
        (Some(cpu), secs) if secs > 0.0 => {
            (cpu.as_secs_f64() / secs * 100.0 * 100.0).round() / 100.0
        }
        _ => 0.0,
    };
    WorkerInfo {
        pid: w.pid,
        status: if w.busy { STATE_WORKING } else { STATE_READY },
        num_execs: w.execs,
        created,
        memory_usage,
        cpu_percent,
        command: command.to_owned(),
        status_str: if w.busy { "working" } else { "ready" }.to_owned(),
        event: w.event.as_ref().map(|(uuid, running)| RunningEvent {
            connection: uuid.clone(),
            seconds: running.as_secs_f64(),
        }),
    }
}

/// RSS in bytes and CPU time (user + system) of a process, from `/proc`; zeros when it is gone.
fn process_stats(pid: u32) -> (u64, Option<Duration>) {
    // SAFETY: sysconf only reads a constant of the system.
    let (page, ticks) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    let rss = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * u64::try_from(page).unwrap_or(4096));
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The command name (field 2) may hold spaces: count fields after its closing paren.
            let rest = &s[s.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
            Some(Duration::from_millis((utime + stime) * 1000 / ticks))
        });
    (rss, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_list_keeps_roadrunners_key_order_and_shape() {
        let list = WorkerList {
            workers: vec![WorkerInfo {
                pid: 4242,
                status: STATE_READY,
                num_execs: 17,
                created: 1_764_430_000_000_000_000,
                memory_usage: 20_971_520,
                cpu_percent: 0.5,
                command: "php worker.php".into(),
                status_str: "ready".into(),
                event: None,
            }],
        };
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"{"workers":[{"pid":4242,"status":1,"numExecs":17,"created":1764430000000000000,"memoryUsage":20971520,"CPUPercent":0.5,"command":"php worker.php","statusStr":"ready","event":null}]}"#
        );
    }

    #[test]
    fn the_shared_vectors_worker_list_reads_back() {
        // The answer in ../shared/rpc-vectors.json (no `event` key: a stock server's answer).
        let stock = r#"{"workers":[{"pid":4242,"status":2,"numExecs":17,"created":1764430000000000000,"memoryUsage":20971520,"CPUPercent":0.5,"command":"php worker.php","statusStr":"ready"}]}"#;
        let list: WorkerList = serde_json::from_str(stock).unwrap();
        assert_eq!(list.workers[0].pid, 4242);
        assert_eq!(list.workers[0].event, None);
    }

    #[test]
    fn this_process_has_memory_and_cpu() {
        let (rss, cpu) = process_stats(std::process::id());
        assert!(rss > 1 << 20, "{rss}");
        assert!(cpu.is_some());
        assert_eq!(process_stats(u32::MAX), (0, None));
    }
}
