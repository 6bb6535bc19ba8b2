//! A real haproxy (Debian package `haproxy`, installed by `./dev.sh setup`) in front of pier, for
//! the PROXY-protocol and cluster tests.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::HANG;

/// Starts haproxy in the foreground on `config` (written to `dir/haproxy.cfg`), killed when the
/// returned child is dropped; returns once haproxy listens on every address of `fronts` (bounded by
/// [`HANG`]), and fails at once if it exits first. Readiness is read from `/proc`, not probed: a
/// probe connection would reach pier as a client, and a probe bind (the former check) holds the
/// port for a moment — haproxy's own bind then fails and it exits ("cannot bind socket"), which a
/// loaded machine made happen ("haproxy did not start").
pub async fn start(dir: &Path, config: &str, fronts: &[SocketAddr]) -> tokio::process::Child {
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, config).unwrap();
    let mut child = tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy (Debian package haproxy)");
    let pid = child.id().expect("haproxy's pid");
    let started = Instant::now();
    while !fronts.iter().all(|front| listens(pid, *front)) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("haproxy exited before it listened on {fronts:?}: {status} (its log is above)");
        }
        assert!(started.elapsed() < HANG, "haproxy did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// Whether process `pid` holds a socket listening on `addr`'s port: the inodes of its open
/// sockets (`/proc/PID/fd`) against the listening entries (state `0A`) of `/proc/net/tcp` (tcp6
/// for an IPv6 address).
fn listens(pid: u32, addr: SocketAddr) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let port = format!(":{:04X}", addr.port());
    std::fs::read_to_string(table)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .any(|f| {
            f.len() > 9 && f[1].ends_with(&port) && f[3] == "0A" && inodes.iter().any(|i| i == f[9])
        })
}
