//! The real `pier serve` binary as a child process: its log (stderr) collected as it comes, the
//! addresses it announces, signals, and the `pier` control commands against it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::HANG;

/// A running `pier serve -c CONFIG`, killed when dropped (use [`PierProcess::stop`] for a
/// graceful end).
pub struct PierProcess {
    /// The process.
    child: Child,
    /// Everything it logged so far (stderr), appended by a reader thread.
    log: Arc<Mutex<String>>,
    /// Bound address per server name, from its `listening` lines.
    pub addrs: HashMap<String, SocketAddr>,
    /// Where RPC listens (`tcp://…`), from its `RPC listening` line, when configured.
    pub rpc: Option<String>,
    /// The metrics endpoint, from its `operations endpoint listening` line, when configured.
    pub metrics: Option<SocketAddr>,
    /// The config it runs.
    pub config: PathBuf,
}

impl PierProcess {
    /// Starts `pier serve -c config` and waits (bounded) until each of `servers` listens.
    pub fn start(config: &Path, servers: &[&str]) -> PierProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pier"))
            .args(["serve", "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr);
            let mut line = String::new();
            while lines.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut pier = PierProcess {
            child,
            log,
            addrs: HashMap::new(),
            rpc: None,
            metrics: None,
            config: config.to_owned(),
        };
        let started = Instant::now();
        while pier.addrs.len() < servers.len() {
            assert!(
                started.elapsed() < HANG,
                "pier did not listen: {}",
                pier.log()
            );
            if let Ok(Some(status)) = pier.child.try_wait() {
                panic!("pier exited ({status}): {}", pier.log());
            }
            std::thread::sleep(Duration::from_millis(20));
            let log = pier.log();
            for line in log.lines() {
                if let Some(at) = line.find("listen=") {
                    pier.rpc = Some(line[at + 7..].split(' ').next().unwrap().to_owned());
                }
                if line.contains("operations endpoint listening") && line.contains("metrics=true") {
                    let at = line.find("addr=").unwrap();
                    pier.metrics = Some(line[at + 5..].split(' ').next().unwrap().parse().unwrap());
                }
                let (Some(s), Some(a)) = (line.find("server="), line.find("addr=")) else {
                    continue;
                };
                if !line.contains(" listening") {
                    continue;
                }
                let name = line[s + 7..].split(' ').next().unwrap().to_owned();
                let addr = line[a + 5..].split(' ').next().unwrap().parse().unwrap();
                pier.addrs.insert(name, addr);
            }
        }
        for server in servers {
            assert!(pier.addrs.contains_key(*server), "{server}: {}", pier.log());
        }
        pier
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until its log holds `count` lines containing `text`; returns those lines.
    pub fn wait_log(&self, text: &str, count: usize) -> Vec<String> {
        let started = Instant::now();
        loop {
            let lines: Vec<String> = self
                .log()
                .lines()
                .filter(|l| l.contains(text))
                .map(str::to_owned)
                .collect();
            if lines.len() >= count {
                return lines;
            }
            assert!(
                started.elapsed() < HANG,
                "never logged {count} × {text:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (`-HUP`, `-TERM`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Runs `pier ARGS -c CONFIG` against it: (exit code, stdout, stderr). A config whose
    /// `rpc.listen` says port 0 is given the real address first (a copy beside it).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let config = self.config.with_extension("ctl.yaml");
        let rpc = self.rpc.as_deref().unwrap_or("tcp://127.0.0.1:0");
        std::fs::write(&config, text.replace("tcp://127.0.0.1:0", rpc)).unwrap();
        run_pier(args, &config)
    }

    /// SIGTERM, then waits (bounded) for exit 0.
    pub fn stop(mut self) {
        self.signal("-TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert_eq!(status.code(), Some(0), "{}", self.log());
                return;
            }
            assert!(
                started.elapsed() < HANG,
                "pier did not stop: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PierProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `pier ARGS -c CONFIG` to its end: (exit code, stdout, stderr).
pub fn run_pier(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
