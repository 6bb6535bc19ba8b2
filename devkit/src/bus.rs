//! Real bus servers for the cluster tests and the cluster bench: `redis-server` or `nats-server`
//! (Debian packages installed by `./dev.sh setup`) on a free loopback port with its files in a
//! scratch directory; stopped (killed, as a crash would), restarted on the same port, each start
//! waited for (bounded) until the server answers. [`BusOptions`] adds TLS (server certificate,
//! optionally client certificates required) and a password.

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

/// How a bus server is started beyond the plain default.
#[derive(Debug, Clone, Default)]
pub struct BusOptions {
    /// Serve TLS only with this PEM certificate chain and key: Redis on `--tls-port` with its
    /// clear-text port off, NATS with a `tls {}` block (every client must upgrade). The URL
    /// becomes `rediss://` / `tls://`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: require a client certificate signed by this PEM CA.
    pub client_ca: Option<PathBuf>,
    /// Require this user and password. Redis: for the user `default`, `requirepass` (its
    /// password); for any other user, an ACL user with only the commands pier documents it needs
    /// (`on >password &<channels> -@all +publish +subscribe +ping`: no keys) and `default` off,
    /// so only that user gets in. NATS: `authorization {}`.
    pub auth: Option<(String, String)>,
    /// Redis, with `auth` for a user other than `default`: the channels (a glob) that user may
    /// use; `None` = every channel.
    pub channels: Option<String>,
}

/// A bus server process; killed when dropped.
#[derive(Debug)]
pub struct BusServer {
    /// Which server.
    pub kind: BusKind,
    /// TLS and credentials it was started with.
    pub options: BusOptions,
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
        Self::try_start_with(kind, port, BusOptions::default())
    }

    /// Starts `kind` with `options` (TLS, a password) on a free loopback port and waits until it
    /// answers; panics (with the server's log) when it does not.
    pub fn start_with(kind: BusKind, options: BusOptions) -> BusServer {
        Self::try_start_with(kind, free_port(), options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`BusServer::start_with`] on `port`, as a `Result`.
    pub fn try_start_with(
        kind: BusKind,
        port: u16,
        options: BusOptions,
    ) -> Result<BusServer, BusServerError> {
        let dir = tempfile::tempdir().map_err(|source| BusServerError::Dir {
            binary: kind.binary(),
            source,
        })?;
        let mut server = BusServer {
            kind,
            options,
            port,
            dir,
            child: None,
        };
        server.try_restart()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT` or `nats://127.0.0.1:PORT`; `rediss://` / `tls://` with TLS;
    /// with the user and password of [`BusOptions::auth`].
    pub fn url(&self) -> String {
        let auth = self
            .options
            .auth
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()));
        self.url_as(auth)
    }

    /// [`BusServer::url`] with other credentials (`None`: none).
    pub fn url_as(&self, auth: Option<(&str, &str)>) -> String {
        let scheme = match (self.kind, self.options.tls.is_some()) {
            (BusKind::Redis, false) => "redis",
            (BusKind::Redis, true) => "rediss",
            (BusKind::Nats, false) => "nats",
            (BusKind::Nats, true) => "tls",
        };
        let userinfo = auth.map(|(u, p)| format!("{u}:{p}@")).unwrap_or_default();
        format!("{scheme}://{userinfo}127.0.0.1:{}", self.port)
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
        let options = &self.options;
        match self.kind {
            BusKind::Redis => {
                if let Some((cert, key)) = &options.tls {
                    command
                        .args(["--port", "0", "--tls-port", &port])
                        .arg("--tls-cert-file")
                        .arg(cert)
                        .arg("--tls-key-file")
                        .arg(key);
                    match &options.client_ca {
                        Some(ca) => command
                            .args(["--tls-auth-clients", "yes", "--tls-ca-cert-file"])
                            .arg(ca),
                        None => command.args(["--tls-auth-clients", "no"]),
                    };
                } else {
                    command.args(["--port", &port]);
                }
                match &options.auth {
                    Some((user, password)) if user == "default" => {
                        command.args(["--requirepass", password]);
                    }
                    Some((user, password)) => {
                        let channels = options.channels.as_deref().unwrap_or("*");
                        // redis-server joins the words after `--user` into one `user` line.
                        command
                            .args(["--user", user, "on", &format!(">{password}")])
                            .arg(format!("&{channels}"))
                            .args(["-@all", "+publish", "+subscribe", "+ping"])
                            .args(["--user", "default", "off"]);
                    }
                    None => {}
                }
                command
                    .args([
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
                    .arg(&log);
            }
            BusKind::Nats => {
                command
                    .args(["-a", "127.0.0.1", "-p", &port, "-l"])
                    .arg(&log);
                let mut conf = String::new();
                if let Some((cert, key)) = &options.tls {
                    conf += &format!("tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n");
                    if let Some(ca) = &options.client_ca {
                        conf += &format!("  ca_file: {ca:?}\n  verify: true\n");
                    }
                    conf += "  timeout: 2\n}\n";
                }
                if let Some((user, password)) = &options.auth {
                    conf += &format!(
                        "authorization {{\n  user: {user:?}\n  password: {password:?}\n}}\n"
                    );
                }
                if !conf.is_empty() {
                    let file = self.dir.path().join("nats.conf");
                    std::fs::write(&file, conf)
                        .map_err(|source| BusServerError::Dir { binary, source })?;
                    command.arg("-c").arg(file);
                }
            }
        }
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
            if answers(self.kind, &self.options, addr) {
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

/// Whether the server at `addr` answers as `kind` does. Redis over TLS: it accepts (it listens
/// only once it is ready to serve; a TLS client here would be a second stack for one check).
fn answers(kind: BusKind, options: &BusOptions, addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    match kind {
        BusKind::Redis if options.tls.is_some() => true,
        BusKind::Redis => {
            let (ask, want): (String, &[u8]) = match &options.auth {
                Some((user, password)) => (
                    format!("AUTH {user} {password}\r\nPING\r\n"),
                    b"+OK\r\n+PONG\r\n",
                ),
                None => ("PING\r\n".to_owned(), b"+PONG\r\n"),
            };
            if stream.write_all(ask.as_bytes()).is_err() {
                return false;
            }
            let mut answer = vec![0u8; want.len()];
            stream.read_exact(&mut answer).is_ok() && answer == want
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
