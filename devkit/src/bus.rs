//! Real bus servers for the cluster tests and the cluster bench: `redis-server` or `nats-server`
//! (Debian packages installed by `./dev.sh setup`) on a free loopback port with its files in a
//! scratch directory; stopped (killed, as a crash would), restarted on the same port, each start
//! waited for (bounded) until the server answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer.
pub const READY: Duration = Duration::from_secs(15);

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

    /// `redis` or `nats`.
    pub fn from_name(name: &str) -> Option<BusKind> {
        BusKind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn binary(self) -> &'static str {
        match self {
            BusKind::Redis => "redis-server",
            BusKind::Nats => "nats-server",
        }
    }
}

/// Why a bus server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BusServerError {
    /// No scratch directory.
    #[error("could not make a scratch directory for {binary}")]
    Dir {
        /// `redis-server` or `nats-server`.
        binary: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither on the PATH nor in the sbin directories.
    #[error("could not find {binary}: it is not installed (./dev.sh setup installs it)")]
    NotInstalled {
        /// `redis-server` or `nats-server`.
        binary: &'static str,
    },
    /// The process could not be spawned.
    #[error("could not start {binary}")]
    Spawn {
        /// `redis-server` or `nats-server`.
        binary: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It exited before answering.
    #[error("could not start {binary} on port {port}: it exited ({status}); its log:\n{log}")]
    Exited {
        /// `redis-server` or `nats-server`.
        binary: &'static str,
        /// The port it was given.
        port: u16,
        /// How it ended.
        status: ExitStatus,
        /// Its log.
        log: String,
    },
    /// It did not answer within [`READY`].
    #[error(
        "could not start {binary} on port {port}: no answer within {READY:?}; its log:\n{log}"
    )]
    NotReady {
        /// `redis-server` or `nats-server`.
        binary: &'static str,
        /// The port it was given.
        port: u16,
        /// Its log.
        log: String,
    },
}

/// A bus server process; killed when dropped.
#[derive(Debug)]
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
    /// Starts `kind` on a free loopback port and waits until it answers; panics (with the
    /// server's log) when it does not.
    pub fn start(kind: BusKind) -> BusServer {
        Self::try_start(kind).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `kind` on `port` and waits until it answers; panics when it does not.
    pub fn start_on(kind: BusKind, port: u16) -> BusServer {
        Self::try_start_on(kind, port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`BusServer::start`], as a `Result`.
    pub fn try_start(kind: BusKind) -> Result<BusServer, BusServerError> {
        Self::try_start_on(kind, free_port())
    }

    /// [`BusServer::start_on`], as a `Result`.
    pub fn try_start_on(kind: BusKind, port: u16) -> Result<BusServer, BusServerError> {
        let dir = tempfile::tempdir().map_err(|source| BusServerError::Dir {
            binary: kind.binary(),
            source,
        })?;
        let mut server = BusServer {
            kind,
            port,
            dir,
            child: None,
        };
        server.try_restart()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT` or `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        url(self.kind, self.port)
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL: clients see their connections drop, as in a crash) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (stopping it first if it runs) and waits until
    /// it answers; panics when it does not.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`BusServer::restart`], as a `Result`.
    pub fn try_restart(&mut self) -> Result<(), BusServerError> {
        self.stop();
        let binary = self.kind.binary();
        let log = self.dir.path().join("server.log");
        let port = self.port.to_string();
        let mut command = Command::new(find_binary(binary)?);
        match self.kind {
            BusKind::Redis => command
                .args([
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
                ])
                // Absolute (a tempdir is): redis-server changes into --dir before it opens
                // --logfile.
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--logfile")
                .arg(&log),
            BusKind::Nats => command
                .args(["-a", "127.0.0.1", "-p", &port, "-l"])
                .arg(&log),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| BusServerError::Spawn { binary, source })?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits (bounded by [`READY`]) until the server answers a client: Redis `PING` → `+PONG`,
    /// NATS greets with `INFO`.
    fn wait_ready(&mut self) -> Result<(), BusServerError> {
        let deadline = Instant::now() + READY;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let (binary, port) = (self.kind.binary(), self.port);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                self.child = None;
                let log = self.log();
                return Err(BusServerError::Exited {
                    binary,
                    port,
                    status,
                    log,
                });
            }
            if answers(self.kind, addr) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                let log = self.log();
                return Err(BusServerError::NotReady { binary, port, log });
            }
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
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
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
fn find_binary(name: &'static str) -> Result<PathBuf, BusServerError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(BusServerError::NotInstalled { binary: name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        for kind in BusKind::ALL {
            assert_eq!(BusKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(BusKind::from_name("kafka"), None);
        assert_eq!(url(BusKind::Nats, 4222), "nats://127.0.0.1:4222");
    }
}
