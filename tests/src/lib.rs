//! Harness for Pier's end-to-end suite: starts the real `target/release/pier` with an example's
//! `.rr.yaml` (its addresses moved to free loopback ports with `-o`), with the PHP workers on the
//! extension or on the pure-PHP package, and hands out sockets to its servers.
//!
//! Every wait here is bounded; a bound that runs out is an error saying what did not happen, never a
//! timing assertion.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long `pier serve` may take to start listening (it starts its PHP workers first).
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long `pier serve` may take to exit after SIGTERM (it closes connections, stops workers).
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// Read/write timeout on every client socket: a reply that never comes fails the test, not hangs it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong while running `pier serve` for a test; the messages say who caused it.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The release binary is not there: the suite needs `./dev.sh build` first.
    #[error("could not find {0}: build it first (./dev.sh build, or cargo build --release)")]
    MissingBinary(PathBuf),
    /// No free port could be reserved on 127.0.0.1.
    #[error("could not reserve a free port on 127.0.0.1")]
    NoFreePort(#[source] io::Error),
    /// The `pier` process could not be spawned.
    #[error("could not start {binary}")]
    Spawn {
        /// The binary that was run.
        binary: PathBuf,
        /// Why spawning failed.
        #[source]
        source: io::Error,
    },
    /// `pier serve` exited before all its servers listened (bad config, no worker could start).
    #[error("could not start pier serve: it exited with {status} before listening; its output:\n{output}")]
    ExitedEarly {
        /// How it exited.
        status: ExitStatus,
        /// Everything it wrote to stdout and stderr.
        output: String,
    },
    /// A server did not accept connections within the start limit.
    #[error(
        "could not reach server {server}: it did not listen on {addr} within {START_LIMIT:?}; pier's output:\n{output}"
    )]
    NotListening {
        /// The server's name under `tcp.servers`.
        server: String,
        /// The address it was given.
        addr: SocketAddr,
        /// Everything pier wrote so far.
        output: String,
    },
    /// Waiting for or signalling the pier process failed.
    #[error("could not {action} pier (pid {pid})")]
    Process {
        /// What was attempted: "signal", "wait for".
        action: &'static str,
        /// The pier process.
        pid: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `pier serve` did not exit within the stop limit after SIGTERM (it was then killed).
    #[error("could not stop pier serve within {STOP_LIMIT:?} of SIGTERM (killed); its output:\n{output}")]
    DidNotStop {
        /// Everything pier wrote.
        output: String,
    },
}

/// Declares one `#[test]` per worker implementation, named as given, each running `scenario`
/// with its [`WorkerImpl`]: `on_each_worker!(echo_with_the_extension, echo_with_the_package,
/// echo_example);`. The suite runs every example on both, so each pair is spelled once.
#[macro_export]
macro_rules! on_each_worker {
    ($extension:ident, $package:ident, $scenario:path) => {
        #[test]
        fn $extension() {
            $scenario($crate::WorkerImpl::Extension);
        }

        #[test]
        fn $package() {
            $scenario($crate::WorkerImpl::Package);
        }
    };
}

/// Which implementation of the Pier PHP API the example workers run on (examples/php-worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerImpl {
    /// The native extension, `target/release/libpier.so`.
    Extension,
    /// The pure-PHP package in `php-client/`.
    Package,
}

impl WorkerImpl {
    /// Both, for tests that must pass on each.
    pub const ALL: [WorkerImpl; 2] = [WorkerImpl::Extension, WorkerImpl::Package];

    /// The value of `PIER_WORKER_IMPL` that forces this implementation.
    pub fn env_value(self) -> &'static str {
        match self {
            WorkerImpl::Extension => "ext",
            WorkerImpl::Package => "package",
        }
    }

    /// What examples/bootstrap.php writes to stderr (and pier logs) when this implementation serves.
    pub fn banner(self) -> &'static str {
        match self {
            WorkerImpl::Extension => "Pier API from the pier extension",
            WorkerImpl::Package => "Pier API from the pure-PHP package pier/worker",
        }
    }
}

/// The repository root: examples' commands and configs are relative to it.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A new empty directory under the system's temp dir, unique to this process and call.
pub fn fresh_dir(label: &str) -> io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pier-e2e-{}-{}-{label}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A port on 127.0.0.1 that was free a moment ago: bound to port 0, then released for pier.
fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(HarnessError::NoFreePort)?;
    let port = listener
        .local_addr()
        .map_err(HarnessError::NoFreePort)?
        .port();
    Ok(port)
}

/// A running `pier serve`; killed on drop if the test did not stop it.
#[derive(Debug)]
pub struct Pier {
    /// The `pier serve` process.
    child: Child,
    /// Everything pier (and, through it, its workers' stderr) wrote, stdout and stderr interleaved.
    output: Arc<Mutex<Vec<u8>>>,
    /// The threads copying pier's stdout and stderr into `output`.
    readers: Vec<JoinHandle<()>>,
    /// Each server's loopback address, by its name under `tcp.servers`.
    addrs: BTreeMap<String, SocketAddr>,
    /// Where the RPC listener was moved (`rpc.listen`), when the test asked for it.
    rpc: Option<SocketAddr>,
}

/// What [`Pier::start_with`] adds to [`Pier::start`].
#[derive(Debug, Default, Clone, Copy)]
pub struct StartOptions<'a> {
    /// Move the config's `rpc.listen` to a free port on 127.0.0.1 too (see [`Pier::rpc_address`]).
    pub rpc: bool,
    /// `-o dotted.key=value` overrides.
    pub overrides: &'a [&'a str],
}

impl Pier {
    /// Runs `target/release/pier serve -c <config>` from the repository root, every server in
    /// `servers` moved to a free port on 127.0.0.1, the workers forced onto `worker`, with `env`
    /// added to pier's environment; returns once every server accepts connections.
    pub fn start(
        config: &str,
        servers: &[&str],
        worker: WorkerImpl,
        env: &[(&str, &OsStr)],
    ) -> Result<Pier, HarnessError> {
        Self::start_with(config, servers, worker, env, StartOptions::default())
    }

    /// [`Pier::start`] with what `options` adds (RPC on a free port, `-o` overrides).
    pub fn start_with(
        config: &str,
        servers: &[&str],
        worker: WorkerImpl,
        env: &[(&str, &OsStr)],
        options: StartOptions<'_>,
    ) -> Result<Pier, HarnessError> {
        // A port is free when picked but another process may take it before pier binds it: then
        // pier exits saying "could not listen", and new ports are tried (a bounded number of times).
        let mut attempts = 3;
        loop {
            attempts -= 1;
            match Self::start_once(config, servers, worker, env, options) {
                Err(HarnessError::ExitedEarly { output, .. })
                    if attempts > 0 && output.contains("could not listen") => {}
                result => return result,
            }
        }
    }

    fn start_once(
        config: &str,
        servers: &[&str],
        worker: WorkerImpl,
        env: &[(&str, &OsStr)],
        StartOptions { rpc, overrides }: StartOptions<'_>,
    ) -> Result<Pier, HarnessError> {
        let root = repo_root();
        let binary = root.join("target/release/pier");
        if !binary.is_file() {
            return Err(HarnessError::MissingBinary(binary));
        }
        let mut command = Command::new(&binary);
        command.current_dir(&root).args(["serve", "-c", config]);
        let mut addrs = BTreeMap::new();
        for &server in servers {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            command
                .arg("-o")
                .arg(format!("tcp.servers.{server}.addr={addr}"));
            addrs.insert(server.to_owned(), addr);
        }
        let rpc = if rpc {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            command.arg("-o").arg(format!("rpc.listen=tcp://{addr}"));
            Some(addr)
        } else {
            None
        };
        for o in overrides {
            command.arg("-o").arg(o);
        }
        command
            .env("PIER_WORKER_IMPL", worker.env_value())
            // An ini directory that loads the extension (dev.sh exports one) would make the
            // package run impossible; the launcher adds the extension itself when asked to.
            .env_remove("PHP_INI_SCAN_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().map_err(|source| HarnessError::Spawn {
            binary: binary.clone(),
            source,
        })?;

        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(copy_into(stdout, Arc::clone(&output)));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(copy_into(stderr, Arc::clone(&output)));
        }
        let mut pier = Pier {
            child,
            output,
            readers,
            addrs,
            rpc,
        };
        pier.wait_listening()?;
        Ok(pier)
    }

    /// Polls each server's address until it accepts a connection (closed right away: a CONNECTED
    /// and a CLOSE event the workers answer like any other).
    fn wait_listening(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + START_LIMIT;
        for (server, &addr) in &self.addrs {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(HarnessError::ExitedEarly {
                        status,
                        output: self.output(),
                    });
                }
                if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(HarnessError::NotListening {
                        server: server.clone(),
                        addr,
                        output: self.output(),
                    });
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The address a server listens on.
    ///
    /// # Panics
    /// When `server` was not among the servers given to [`Pier::start`] (a bug in the test).
    pub fn addr(&self, server: &str) -> SocketAddr {
        match self.addrs.get(server) {
            Some(addr) => *addr,
            None => panic!("the test did not start a server named {server}"),
        }
    }

    /// The RPC listener's address as `rpc.listen` and `RR_RPC` write it (`tcp://127.0.0.1:PORT`);
    /// only when started with [`StartOptions::rpc`].
    pub fn rpc_address(&self) -> String {
        match self.rpc {
            Some(addr) => format!("tcp://{addr}"),
            None => panic!("the test did not start pier with StartOptions::rpc"),
        }
    }

    /// A client connection to a server, with [`IO_TIMEOUT`] on reads and writes.
    pub fn connect(&self, server: &str) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(self.addr(server))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    }

    /// The `pier serve` process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGUSR1`) to pier.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: kill(2) takes plain integers; `pid` is our own child, not yet reaped (we hold
        // its `Child`), so the pid cannot have been reused for another process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The pids of pier's live child processes (its workers), from `/proc`; zombies excluded.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.child.id())
    }

    /// Everything pier wrote so far (lossy UTF-8).
    pub fn output(&self) -> String {
        let bytes = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits (bounded by `limit`) until pier's output contains `needle`; returns whether it did.
    pub fn wait_for_output(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.output().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded: 30 s) until a worker of `worker`'s implementation said it serves (the
    /// example bootstrap's banner in pier's log); panics with pier's output otherwise.
    pub fn assert_served_by(&self, worker: WorkerImpl) {
        assert!(
            self.wait_for_output(worker.banner(), Duration::from_secs(30)),
            "no worker said \"{}\"; pier's output:\n{}",
            worker.banner(),
            self.output()
        );
    }

    /// Stops pier as a user would, with SIGTERM, and waits for it to exit (bounded); returns its exit
    /// status and everything it wrote.
    pub fn stop(mut self) -> Result<(ExitStatus, String), HarnessError> {
        let pid = self.child.id();
        let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
            return Err(HarnessError::Process {
                action: "signal",
                pid,
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        };
        // SAFETY: kill(2) takes plain integers; `raw_pid` is our own child, not yet reaped (we hold
        // its `Child`), so the pid cannot have been reused for another process.
        if unsafe { libc::kill(raw_pid, libc::SIGTERM) } != 0 {
            return Err(HarnessError::Process {
                action: "signal",
                pid,
                source: io::Error::last_os_error(),
            });
        }
        let deadline = Instant::now() + STOP_LIMIT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    return Err(HarnessError::DidNotStop {
                        output: self.output(),
                    })
                }
                Err(source) => {
                    return Err(HarnessError::Process {
                        action: "wait for",
                        pid,
                        source,
                    })
                }
            }
        };
        // Pier exited; its pipes reach EOF once whatever inherited them has exited too. Wait for
        // the last lines, bounded: a stuck grandchild must not hang the suite.
        let deadline = Instant::now() + STOP_LIMIT;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        Ok((status, self.output()))
    }
}

impl Drop for Pier {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The live (not zombie) child processes of `parent`, sorted.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = pier_devkit::procs::processes()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.ppid == parent && p.state != 'Z')
        .map(|p| p.pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// Raises this process's open-file limit (inherited by the pier it starts) to at least `want`,
/// within the hard limit; returns the soft limit now in force.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write the one struct passed, a live local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Copies a pipe into the shared output buffer until EOF.
fn copy_into(mut pipe: impl Read + Send + 'static, output: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            output
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&chunk[..n]);
        }
    })
}

/// Reads from `stream` until `len` bytes arrived or the peer closed; a read timeout is an error.
pub fn read_exactly(stream: &mut TcpStream, len: usize) -> io::Result<Vec<u8>> {
    let mut got = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match stream.read(&mut got[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    got.truncate(filled);
    Ok(got)
}

/// Reads until the peer closes the connection (a read timeout is an error); returns what came.
pub fn read_to_close(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    Ok(rest)
}

/// The TLS files and users file the SMTP example needs, made in `dir` (nothing is committed): a
/// self-signed ECDSA P-256 certificate for localhost (`openssl req`), its key, and a users file with
/// `alice` / `secret` (PHP's `password_hash`). Returns the environment for [`Pier::start`]:
/// `SMTP_TLS_CERT`, `SMTP_TLS_KEY`, `SMTP_USERS`.
pub fn smtp_tls_env(dir: &Path) -> io::Result<Vec<(&'static str, std::ffi::OsString)>> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let users = dir.join("users");
    pier_devkit::tls::self_signed_localhost(&cert, &key, 2)?;
    let hash = Command::new("php")
        .args([
            "-r",
            r#"echo "alice:", password_hash("secret", PASSWORD_DEFAULT), "\n";"#,
        ])
        .output()?;
    if !hash.status.success() {
        return Err(io::Error::other("php could not hash the password"));
    }
    std::fs::write(&users, hash.stdout)?;
    Ok(vec![
        ("SMTP_TLS_CERT", cert.into_os_string()),
        ("SMTP_TLS_KEY", key.into_os_string()),
        ("SMTP_USERS", users.into_os_string()),
    ])
}
