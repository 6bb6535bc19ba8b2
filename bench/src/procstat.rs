//! CPU time and resident memory of a process tree, read from `/proc`.
//!
//! The server's cost is the pier process plus every PHP worker it started (its descendants), so
//! every figure here is summed over the tree rooted at the server's pid. CPU time comes from
//! `/proc/<pid>/task/<tid>/schedstat` (nanoseconds on CPU, per thread) rather than `stat`'s 10 ms
//! clock ticks: a 3 s window at 20k msg/s needs sub-tick resolution to give µs per message.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// What went wrong reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The root of the tree is gone: the server under test exited.
    #[error("could not find process {pid} in /proc (the server under test exited?)")]
    Gone {
        /// The pid that is no longer there.
        pid: u32,
    },
    /// `/proc` itself could not be listed (not Linux, or no procfs mounted).
    #[error("could not list /proc")]
    List(#[source] std::io::Error),
}

/// Resource usage of one process tree at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// Total CPU time consumed so far by every live thread of every process in the tree (ns).
    pub cpu_ns: u64,
    /// Sum of VmRSS over the tree (KiB); shared pages are counted once per process.
    pub rss_kib: u64,
    /// VmRSS of the root process alone (KiB): where per-connection state of the server lives.
    pub root_rss_kib: u64,
    /// How many processes the tree has (the server plus its workers).
    pub processes: usize,
}

/// Parent pid of every process.
fn parents() -> Result<HashMap<u32, u32>, ProcError> {
    let all = pier_devkit::procs::processes().map_err(ProcError::List)?;
    Ok(all.into_iter().map(|p| (p.pid, p.ppid)).collect())
}

/// `root` and all its descendants.
pub fn tree(root: u32) -> Result<Vec<u32>, ProcError> {
    let parents = parents()?;
    if !parents.contains_key(&root) {
        return Err(ProcError::Gone { pid: root });
    }
    let mut out = vec![root];
    let mut i = 0;
    // Breadth-first; bounded by the number of processes on the machine.
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|&(_, &pp)| pp == p).map(|(&c, _)| c));
        i += 1;
    }
    Ok(out)
}

/// CPU nanoseconds of one process (all its threads); 0 when it has exited meanwhile.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// VmRSS of one process in KiB; 0 when it has exited meanwhile.
pub fn rss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let Ok(status) = fs::read_to_string(Path::new(&path)) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Machine-wide CPU time from the aggregate `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineCpu {
    /// Time all CPUs spent running anything (user, nice, system, irq, softirq), in ns.
    pub busy_ns: u64,
    /// Time the hypervisor ran something else while a vCPU wanted to run, in ns.
    pub steal_ns: u64,
}

/// Reads `/proc/stat`. Its unit is USER_HZ, which Linux fixes at 100 for user space on every
/// architecture this runs on, so one tick is 10 ms.
pub fn machine_cpu() -> MachineCpu {
    const TICK_NS: u64 = 10_000_000;
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineCpu::default();
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    MachineCpu {
        busy_ns: (at(0) + at(1) + at(2) + at(5) + at(6)) * TICK_NS,
        steal_ns: at(7) * TICK_NS,
    }
}

/// Usage of the tree rooted at `root`.
pub fn tree_usage(root: u32) -> Result<TreeUsage, ProcError> {
    let pids = tree(root)?;
    let mut usage = TreeUsage {
        processes: pids.len(),
        root_rss_kib: rss_kib(root),
        ..TreeUsage::default()
    };
    for pid in pids {
        usage.cpu_ns += cpu_ns(pid);
        usage.rss_kib += rss_kib(pid);
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_found_and_uses_cpu_and_memory() {
        let me = std::process::id();
        // Burn a little CPU so the counter is certainly non-zero.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let u = tree_usage(me).expect("own process is in /proc");
        assert!(u.cpu_ns > 0);
        assert!(u.rss_kib > 0);
        assert!(u.root_rss_kib > 0);
        assert!(u.processes >= 1);
    }

    #[test]
    fn children_are_part_of_the_tree() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep runs");
        let pids = tree(std::process::id()).expect("own tree");
        let _ = child.kill();
        let _ = child.wait();
        assert!(pids.contains(&child.id()));
    }

    #[test]
    fn the_machine_has_been_busy_since_boot() {
        assert!(machine_cpu().busy_ns > 0);
    }

    #[test]
    fn a_missing_root_is_an_error() {
        // Pids are bounded by pid_max (at most 2^22); this one cannot exist.
        assert!(matches!(tree(u32::MAX - 1), Err(ProcError::Gone { .. })));
    }
}
