//! Shared harness: a server run in-process on 127.0.0.1:0 with real worker processes, and a line
//! client over a real socket.

#![allow(dead_code)]

pub mod haproxy;
pub mod pki;
pub mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pier_server::config::Config;
use pier_server::{Server, TlsReloader};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Guards every await on the network so a broken server fails the test instead of hanging it.
/// Not an assertion on timing: nothing in these tests comes close to it when things work.
pub const HANG: Duration = Duration::from_secs(30);

pub fn test_worker() -> String {
    env!("CARGO_BIN_EXE_pier-test-worker").to_owned()
}

pub fn php_worker() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/php/stock_worker.php")
        .display()
        .to_string()
}

/// A running server and the scratch directory its workers write to.
pub struct Harness {
    /// Marker files and logs of the workers (`TW_DIR`).
    pub dir: tempfile::TempDir,
    /// Bound address per server name.
    pub addrs: HashMap<String, SocketAddr>,
    /// Bound operations endpoints: `metrics`, `status`.
    pub ops: HashMap<&'static str, SocketAddr>,
    /// Where RPC listens (`tcp://…`), when the config has `rpc.listen`.
    pub rpc: Option<String>,
    /// Reloads TLS certificates as SIGHUP does; also reports refusals.
    pub tls: TlsReloader,
    /// The server's worker pool (reset, stats).
    pub pool: pier_server::pool::Pool,
    /// Completes the shutdown future.
    stop: Option<oneshot::Sender<()>>,
    /// The serve task.
    task: Option<JoinHandle<Result<(), pier_server::ServeError>>>,
}

/// A config with `command` as the worker and `TW_DIR` in its env; `servers` and `pool` are YAML
/// fragments indented for their sections.
pub fn yaml(dir: &Path, command: &[&str], servers: &str, pool: &str, env: &str) -> String {
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    format!(
        "version: '3'\nserver:\n  command: [{}]\n  env:\n    TW_DIR: {:?}\n{env}tcp:\n  servers:\n{servers}  pool:\n    allocate_timeout: 20s\n    destroy_timeout: 10s\n{pool}",
        command.join(", "),
        dir.display().to_string(),
    )
}

impl Harness {
    /// The listeners' refusal counts (server, TLS handshake failures, PROXY refusals) once
    /// `settled` holds for them, waiting at most 5 s: a failed handshake drops its socket before it
    /// is counted, so a client can see the close first.
    pub async fn refusals_when(
        &self,
        settled: impl Fn(&[(String, u64, u64)]) -> bool,
    ) -> Vec<(String, u64, u64)> {
        for _ in 0..500 {
            let refusals = self.tls.refusals();
            if settled(&refusals) {
                return refusals;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.tls.refusals()
    }

    /// Starts a server running the Rust test worker.
    pub async fn rust(servers: &str, pool: &str) -> Harness {
        Self::rust_env(servers, pool, "").await
    }

    /// Same, with extra `server.env` lines (indented by four spaces).
    pub async fn rust_env(servers: &str, pool: &str, env: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let text = yaml(dir.path(), &[&test_worker()], servers, pool, env);
        Self::start(dir, &text).await
    }

    /// Starts a server running the Rust test worker, with RPC on a free loopback port.
    pub async fn rust_rpc(servers: &str, pool: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut text = yaml(dir.path(), &[&test_worker()], servers, pool, "");
        text.push_str("rpc:\n  listen: tcp://127.0.0.1:0\n");
        Self::start(dir, &text).await
    }

    /// Starts a server running the stock-equivalent PHP worker.
    pub async fn php(servers: &str, pool: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let text = yaml(dir.path(), &["php", &php_worker()], servers, pool, "");
        Self::start(dir, &text).await
    }

    pub async fn start(dir: tempfile::TempDir, text: &str) -> Harness {
        let config = Config::parse(text, &[], &|_| None).expect("test config is valid");
        let server = Server::bind(config).await.expect("server starts");
        let addrs = server.local_addrs().into_iter().collect();
        let ops = server.ops_addrs().into_iter().collect();
        let rpc = server.rpc_address();
        let tls = server.tls_reloader();
        let pool = server.pool();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Harness {
            dir,
            addrs,
            ops,
            rpc,
            tls,
            pool,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn connect(&self, server: &str) -> Client {
        Client::connect(self.addrs[server]).await
    }

    /// Graceful shutdown; returns once every connection got its CLOSE and the workers stopped.
    /// Waits (bounded) until the pool has `n` workers serving and returns their pids.
    pub async fn wait_workers(&self, n: usize) -> Vec<u32> {
        for _ in 0..2000 {
            let pids = self.pool.pids();
            if pids.len() == n {
                return pids;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "the pool never had {n} workers (has {:?})",
            self.pool.pids()
        );
    }

    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(HANG, task)
                .await
                .expect("shutdown finishes")
                .unwrap()
                .expect("graceful shutdown within the grace period");
        }
    }

    /// `GET path` on an operations endpoint (`metrics` or `status`): (status code, body).
    pub async fn http_get(&self, endpoint: &str, path: &str) -> (u16, String) {
        http_get(self.ops[endpoint], path).await
    }

    /// Lines of a log file the workers wrote (empty when it does not exist).
    pub fn log(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A test client over a real socket.
pub struct Client {
    /// Answers from the server, read line by line.
    pub reader: BufReader<OwnedReadHalf>,
    /// Packets to the server.
    pub writer: OwnedWriteHalf,
    /// The client's own address: what `remote_addr` must say.
    pub local: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(HANG, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client::over(stream)
    }

    /// A client over a connected `stream`.
    pub fn over(stream: TcpStream) -> Client {
        let local = stream.local_addr().unwrap();
        let (r, w) = stream.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
            local,
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.writer.write_all(bytes.as_ref()).await.unwrap();
    }

    /// The next `\n`-terminated line without it; `None` at EOF (or reset).
    pub async fn line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(HANG, self.reader.read_until(b'\n', &mut buf))
            .await
            .expect("an answer or EOF")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        assert_eq!(buf.last(), Some(&b'\n'), "partial line {buf:?}");
        buf.pop();
        Some(String::from_utf8(buf).unwrap())
    }

    /// Sends `packet` and returns the answer line.
    pub async fn ask(&mut self, packet: &str) -> String {
        self.send(packet).await;
        self.line()
            .await
            .unwrap_or_else(|| panic!("EOF instead of an answer to {packet:?}"))
    }

    /// Everything until EOF (the server closed).
    pub async fn rest(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        tokio::time::timeout(HANG, self.reader.read_to_end(&mut buf))
            .await
            .expect("EOF")
            .unwrap_or(0);
        buf
    }

    /// Reads the greeting of the Rust test worker: returns (server, remote_addr, uuid).
    pub async fn hello(&mut self) -> (String, String, String) {
        let line = self.line().await.expect("a greeting");
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 4, "{line}");
        assert_eq!(parts[0], "hello", "{line}");
        (parts[1].into(), parts[2].into(), parts[3].into())
    }
}

/// A plain HTTP/1.1 GET over a real socket, as a probe or a scraper sends it: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::time::timeout(HANG, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(HANG, stream.read_to_end(&mut raw))
        .await
        .expect("a response")
        .unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    (code, body.to_owned())
}

/// The soft open-files limit raised to the hard one: tests with hundreds of connections hold two
/// descriptors per connection in this process (both ends).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed, which lives on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Polls `done` every 5 ms, at most `limit`; panics with `what` if it never holds. The bounded
/// wait for anything the test cannot await directly (a count, a log line, a pool statistic).
pub async fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`eventually`] within [`HANG`].
pub async fn wait_for(done: impl FnMut() -> bool) {
    eventually(HANG, "condition never held", done).await;
}

/// Waits (bounded) until the workers created the marker file `name` in the harness's directory.
pub async fn wait_for_marker(h: &Harness, name: &str) {
    let marker = h.dir.path().join(name);
    for _ in 0..2000 {
        if marker.exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the worker never created {name}");
}

/// A goridge RPC connection speaking JSON.
pub struct Rpc(TcpStream);

impl Rpc {
    /// Connects to the RPC listener at `addr`.
    pub async fn connect(addr: SocketAddr) -> Rpc {
        Rpc(tokio::time::timeout(HANG, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap())
    }

    /// The answer, or the error text the server answered.
    pub async fn call(&mut self, method: &str, arg: Value) -> Result<Value, String> {
        use pier_protocol::frame::{self, flags};
        let arg = serde_json::to_vec(&arg).unwrap();
        let mut request = Vec::new();
        frame::encode(
            &mut request,
            flags::CODEC_JSON,
            0,
            &[1, method.len() as u32],
            &[method.as_bytes(), &arg],
        )
        .unwrap();
        self.0.write_all(&request).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 65536];
        loop {
            if let Some((answer, _)) = frame::decode(&buf, u32::MAX).unwrap() {
                let body = &answer.payload[method.len()..];
                if answer.flags & flags::ERROR != 0 {
                    return Err(String::from_utf8_lossy(body).into_owned());
                }
                assert_eq!(answer.flags, flags::CODEC_JSON, "{method}: answer flags");
                return Ok(serde_json::from_slice(body).unwrap());
            }
            let n = tokio::time::timeout(HANG, self.0.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "RPC connection closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The answer; panics on an error answer.
    pub async fn ok(&mut self, method: &str, arg: Value) -> Value {
        self.call(method, arg.clone())
            .await
            .unwrap_or_else(|e| panic!("{method} {arg}: {e}"))
    }
}
