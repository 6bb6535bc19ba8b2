//! Real bus servers for the cluster tests: `redis-server` or `nats-server` (Debian packages
//! installed by `./dev.sh setup`) on a free loopback port with its files in a scratch directory;
//! stopped (killed, as a crash would), restarted on the same port, each start waited for (bounded)
//! until the server answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer.
const READY: Duration = Duration::from_secs(15);

/// Which bus server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    Redis,
    Nats,
}

impl BusKind {
    /// Both, for tests run against each.
    pub const ALL: [BusKind; 2] = [BusKind::Redis, BusKind::Nats];

    /// The URL scheme and log name.
    pub fn name(self) -> &'static str {
        match self {
            BusKind::Redis => "redis",
            BusKind::Nats => "nats",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            BusKind::Redis => "redis-server",
            BusKind::Nats => "nats-server",
        }
    }
}

/// A bus server process owned by a test; killed when dropped.
pub struct BusServer {
    /// Which server.
    pub kind: BusKind,
    /// Its loopback port, the same across restarts.
    pub port: u16,
    /// Its working directory and log (`server.log`).
    dir: tempfile::TempDir,
    /// The running process, None while stopped.
    child: Option<Child>,
}

impl BusServer {
    /// Starts `kind` on a free loopback port and waits until it answers.
    pub fn start(kind: BusKind) -> BusServer {
        Self::start_on(kind, free_port())
    }

    /// Starts `kind` on `port` and waits until it answers.
    pub fn start_on(kind: BusKind, port: u16) -> BusServer {
        let mut server = BusServer {
            kind,
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT` or `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        url(self.kind, self.port)
    }

    /// Kills the server (SIGKILL: clients see their connections drop, as in a crash) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (stopping it first if it runs) and waits until
    /// it answers.
    pub fn restart(&mut self) {
        self.stop();
        let log = self.dir.path().join("server.log");
        let port = self.port.to_string();
        let mut command = Command::new(find_binary(self.kind.binary()));
        match self.kind {
            BusKind::Redis => command.args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                &self.dir.path().display().to_string(),
                "--logfile",
                &log.display().to_string(),
            ]),
            BusKind::Nats => command.args([
                "-a",
                "127.0.0.1",
                "-p",
                &port,
                "-l",
                &log.display().to_string(),
            ]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", self.kind.binary()));
        self.child = Some(child);
        self.wait_ready();
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits (bounded by [`READY`]) until the server answers a client: Redis `PING` → `+PONG`,
    /// NATS greets with `INFO`.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "{} on port {} exited at start ({status}); its log:\n{}",
                    self.kind.binary(),
                    self.port,
                    self.log()
                );
            }
            if answers(self.kind, addr) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} on port {} did not answer within {READY:?}; its log:\n{}",
                self.kind.binary(),
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The bus URL of `kind` on loopback `port`.
pub fn url(kind: BusKind, port: u16) -> String {
    format!("{}://127.0.0.1:{port}", kind.name())
}

/// A loopback port nothing listens on now (the OS's pick for port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether the server at `addr` answers as `kind` does.
fn answers(kind: BusKind, addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    match kind {
        BusKind::Redis => {
            if stream.write_all(b"PING\r\n").is_err() {
                return false;
            }
            let mut answer = [0u8; 7];
            stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
        }
        BusKind::Nats => {
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
        }
    }
}

/// `name` on the PATH or in the sbin directories (Debian installs nats-server in /usr/sbin,
/// which a non-root PATH may lack).
fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: ./dev.sh setup installs it"))
}
