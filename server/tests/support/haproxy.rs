//! A real haproxy (Debian package `haproxy`, installed by `./dev.sh setup`) in front of pier, for
//! the PROXY-protocol and cluster tests.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::HANG;

/// Starts haproxy in the foreground on `config` (written to `dir/haproxy.cfg`), killed when the
/// returned child is dropped; returns once every address of `fronts` is bound (bounded by
/// [`HANG`]). Readiness is a failed bind, not a probe connection: a probe would reach pier as a
/// client.
pub async fn start(dir: &Path, config: &str, fronts: &[SocketAddr]) -> tokio::process::Child {
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, config).unwrap();
    let child = tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy (Debian package haproxy)");
    let started = Instant::now();
    for front in fronts {
        while std::net::TcpListener::bind(front).is_ok() {
            assert!(started.elapsed() < HANG, "haproxy did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    child
}
