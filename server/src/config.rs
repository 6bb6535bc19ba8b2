//! `.rr.yaml` in RoadRunner's v3 layout: parsing, `${VAR}` expansion, `-o` overrides, validation.
//!
//! The file is read into a YAML tree first (not straight into structs) because three things need
//! the tree: env expansion of every string value, `-o dotted.key=value` overrides, and warnings that
//! name the full path of every key Pier does not know.

use std::path::{Path, PathBuf};
use std::time::Duration;

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlLoader};

use crate::framing::{Endian, Framing, LengthField, Strip, Varint};

/// Default `tcp.servers.<name>.max_packet_size`: 1 MiB.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1 << 20;
/// Default `tcp.servers.<name>.max_state_size`: 64 KiB.
pub const DEFAULT_MAX_STATE_SIZE: usize = 64 << 10;
/// Default `tcp.servers.<name>.max_write_buffer`: 1 MiB of bytes queued for one client. Workerman's
/// default send buffer; Swoole's is 2 MiB. With the kernel's own send buffer (up to 4 MiB with
/// Linux autotuning) in front of it, a client that cannot take 1 MiB more is seconds behind even on
/// a slow link, and 10,000 such clients stay within 10 GiB at worst. Same as `max_packet_size`'s
/// default, so a server's bounds are symmetric.
pub const DEFAULT_MAX_WRITE_BUFFER: usize = 1 << 20;
/// Default `tcp.servers.<name>.write_timeout`: how long queued bytes may wait for a client that
/// reads nothing at all before it is closed.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `tcp.pool.max_in_flight`: events written to one busy worker at once. 16: 2.7 instead
/// of 9.3 system calls per message at 100 connections on one worker
/// (bench/results/2026-11-29-pipeline-phase2.md). 64: a worker woken by a relay write answers
/// what was written and blocks again, so the line's length bounds the events per wake-up; at 16
/// it woke every ~15 events (0.13 process switches per message at 100 x 1), at 64, with the
/// writes held while events keep joining (`pool/line.rs`), every ~60 (0.03;
/// bench/results/2026-11-30-switches.md). The price: a worker that crashes fails up to this many
/// events, and an event written behind a slow one waits for it (no event joins one that has run
/// 500 ms). Events in lines count as waiting for `max_queue_size` and the dynamic allocator (see
/// `pool/queue.rs`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Most `tcp.pool.max_in_flight` accepted.
const MAX_IN_FLIGHT: usize = 1024;
/// Most `tcp.io_threads` accepted: a typo like `10000` is refused rather than spawning threads.
const MAX_IO_THREADS: usize = 1024;
/// Default `tcp.read_buf_size`, in MB as RoadRunner counts it.
pub const DEFAULT_READ_BUF_SIZE_MB: usize = 1;
/// Default `allocate_timeout`, `destroy_timeout`, `reset_timeout`, `relay_timeout` and
/// `on_init.exec_timeout` (RoadRunner's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `endure.grace_period` (RoadRunner's).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Default `supervisor.watch_tick` (RoadRunner's).
pub const DEFAULT_WATCH_TICK: Duration = Duration::from_secs(1);
/// Default `dynamic_allocator.spawn_rate` (RoadRunner's since 2024.3, its pool's `schema.json`).
pub const DEFAULT_SPAWN_RATE: u64 = 5;
/// RoadRunner's ceiling for `dynamic_allocator.max_workers`.
pub const MAX_DYNAMIC_WORKERS: u64 = 100;

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            watch_tick: DEFAULT_WATCH_TICK,
            ttl: Duration::ZERO,
            idle_ttl: Duration::ZERO,
            exec_ttl: Duration::ZERO,
            max_worker_memory: 0,
        }
    }
}

/// Why a configuration cannot be used. Every variant is the config author's to fix; the message
/// names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("could not read config file {path}")]
    Read {
        /// The file asked for.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("could not parse config file as YAML")]
    Yaml(#[source] yaml_rust2::ScanError),
    /// The document is not a mapping at the top.
    #[error("could not read config: the document is not a mapping of keys")]
    NotAMapping,
    /// `version` is missing or is not "3".
    #[error("could not read config: version is {0}; only version \"3\" (RoadRunner v3 layout) is supported")]
    Version(String),
    /// A `-o` override is not `key=value`.
    #[error("could not apply override {0:?}: expected dotted.key=value")]
    Override(String),
    /// A key holds a value of the wrong kind or an invalid value.
    #[error("invalid value for {key}: {problem}")]
    Invalid {
        /// The dotted key path.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A duration RoadRunner would not parse either.
    #[error("invalid duration for {key}: {value:?}")]
    Duration {
        /// The dotted key path.
        key: String,
        /// The value as written.
        value: String,
    },
    /// `tcp.servers` is missing or empty.
    #[error("no servers registered (tcp.servers is empty)")]
    NoServers,
    /// A server without `addr`.
    #[error("empty address for the server: {0}")]
    EmptyAddress(String),
    /// Neither `tcp.pool.command` nor `server.command` is set.
    #[error("no worker command: set server.command (or tcp.pool.command)")]
    NoCommand,
    /// `rpc.listen` is not `tcp://host:port` or `unix:///path`.
    #[error("invalid value for rpc.listen: {0:?} is not tcp://host:port or unix:///path")]
    RpcListen(String),
    /// `rpc.listen` is a TCP address other than loopback without `rpc.allow_remote: true`.
    #[error("rpc.listen {0:?} is not a loopback address: RoadRunner's RPC has no authentication, so anyone who can reach it can send to, close and list every connection; listen on 127.0.0.1, ::1, localhost or a unix socket, or set rpc.allow_remote: true if a firewall protects it")]
    RpcNotLoopback(String),
    /// An operations listener (metrics, status) on an address other hosts can reach, without the
    /// config saying so: these endpoints have no authentication.
    #[error("{key} {addr:?} is reachable from other hosts, and it has no authentication: use a loopback address (127.0.0.1, [::1], localhost), or set {allow_key}: true if a firewall or network policy guards it")]
    NotLoopback {
        /// The address key.
        key: String,
        /// Its value.
        addr: String,
        /// The key that allows it.
        allow_key: String,
    },
    /// `server.relay` is none of pipes, tcp://host:port, unix:///path.
    #[error("invalid value for server.relay: {0:?} is not pipes, tcp://host:port or unix:///path")]
    Relay(String),
    /// `server.user` / `server.group` names no user or group here.
    #[error("invalid value for {key}: no {kind} named {name:?} on this system")]
    NoSuchId {
        /// The dotted key.
        key: String,
        /// "user" or "group".
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// `server.user` / `server.group` asks for another identity but pier is not root.
    #[error("{key} is {name:?}, but pier runs as uid {uid}, not root: it cannot start workers as another user or group (run pier as root, or remove {key})")]
    NotRoot {
        /// The dotted key.
        key: String,
        /// The name given.
        name: String,
        /// Pier's effective uid.
        uid: u32,
    },
    /// A RoadRunner key whose behaviour Pier does not provide; the message says what to do.
    #[error("{key} is not supported: {advice}")]
    Unsupported {
        /// The dotted key.
        key: String,
        /// What to do instead.
        advice: &'static str,
    },
}

/// Everything `pier serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The listeners, in file order.
    pub servers: Vec<ServerConfig>,
    /// Read chunk size for client sockets, in bytes (`tcp.read_buf_size` is in MB).
    pub read_buf_size: usize,
    /// Threads serving sockets and worker pipes (`tcp.io_threads`, Pier): 1 runs everything on
    /// one thread (tokio's current-thread runtime, the cheapest per message, measured in
    /// `bench/results/`); more starts tokio's multi-thread runtime with that many threads.
    pub io_threads: usize,
    /// How workers are started and supervised.
    pub pool: PoolConfig,
    /// The `logs` section.
    pub logs: LogsConfig,
    /// `metrics`: Prometheus exposition at `/metrics`; `None` = off.
    pub metrics: Option<OpsListenerConfig>,
    /// `status`: `/health` and `/ready`; `None` = off.
    pub status: Option<StatusConfig>,
    /// `rpc`: where goridge RPC listens; `None` when `rpc.listen` is not set.
    pub rpc: Option<RpcConfig>,
    /// `cluster` (Pier): the bus that joins several instances; `None` when `cluster.bus` is not
    /// set (a single instance).
    pub cluster: Option<ClusterConfig>,
    /// `endure.grace_period`: how long the whole graceful shutdown may take (RoadRunner's
    /// default 30 s); then workers are killed and pier exits with an error.
    pub grace_period: Duration,
    /// `server.on_init`: a command run to completion before the workers start.
    pub on_init: Option<OnInit>,
    /// Unknown or not-yet-supported keys, each naming its key path; logged by the caller once
    /// logging is set up.
    pub warnings: Vec<String>,
}

/// One `tcp.servers.<name>` entry.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The key under `tcp.servers`; sent to workers as `server`.
    pub name: String,
    /// Where to listen, `host:port` (the `tcp://` prefix removed, `:port` meaning all interfaces).
    pub addr: String,
    /// How client bytes are cut into packets (`framing`, `delimiter`).
    pub framing: Framing,
    /// Largest packet as it arrives (delimiter or header included) before the connection is
    /// closed.
    pub max_packet_size: usize,
    /// Largest connection state a worker may store (Pier extension `state`).
    pub max_state_size: usize,
    /// Most bytes pushed to one client (extension `push`, RPC) that may wait for it; a push past it
    /// closes the connection (the client is not reading).
    pub max_write_buffer: usize,
    /// How long queued bytes may wait without the client reading any before the connection is
    /// closed; zero = no limit.
    pub write_timeout: Duration,
    /// Connection limits and timeouts (Pier keys).
    pub limits: LimitsConfig,
    /// `tls`: certificates and how TLS starts (implicit or worker-commanded STARTTLS); `None` =
    /// plaintext only.
    pub tls: Option<TlsConfig>,
    /// `proxy_protocol`: PROXY header required from trusted balancers; `None` = not expected.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
}

/// Per-server connection limits and timeouts (Pier keys under `tcp.servers.<name>`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsConfig {
    /// `max_connections`: open connections at once; over it a new one is closed at once. 0 = no
    /// limit.
    pub max_connections: usize,
    /// `max_connections_per_ip`: open connections from one source address. 0 = no limit.
    pub max_connections_per_ip: usize,
    /// `accept_rate_per_ip`: new connections per second from one source address (also the
    /// burst). 0 = no limit.
    pub accept_rate_per_ip: u32,
    /// `idle_timeout`: a connection whose client sent nothing for this long is closed (and gets
    /// its CLOSE). `None` = never.
    pub idle_timeout: Option<Duration>,
    /// `tcp_keepalive`: TCP keep-alive probes on accepted sockets; `None` = off.
    pub keepalive: Option<KeepaliveConfig>,
}

/// TCP keep-alive settings (`tcp.servers.<name>.tcp_keepalive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Idle time before the first probe (`time`, TCP_KEEPIDLE).
    pub time: Duration,
    /// Time between probes (`interval`, TCP_KEEPINTVL).
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`retries`, TCP_KEEPCNT).
    pub retries: u32,
}

/// Go's defaults for accepted TCP sockets since Go 1.23, which RoadRunner's TCP plugin inherits:
/// idle 15 s, interval 15 s, 9 probes.
pub const DEFAULT_KEEPALIVE: KeepaliveConfig = KeepaliveConfig {
    time: Duration::from_secs(15),
    interval: Duration::from_secs(15),
    retries: 9,
};

/// An operations HTTP listener (`metrics`, `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsListenerConfig {
    /// `host:port` to bind.
    pub address: String,
}

/// The `status` section (RoadRunner's status plugin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    /// Where `/health` and `/ready` are served.
    pub listener: OpsListenerConfig,
    /// `unavailable_status_code`: the HTTP status of a failing check (default 503).
    pub unavailable_status_code: u16,
}

/// The `rpc` section: goridge RPC as RoadRunner's rpc plugin serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcConfig {
    /// `rpc.listen` as written: what workers get in `RR_RPC`.
    pub listen: String,
    /// Where to listen, parsed.
    pub addr: RpcAddr,
}

/// Default `cluster.prefix`: the first part of every channel name on the bus.
pub const DEFAULT_CLUSTER_PREFIX: &str = "pier";
/// Default `cluster.request_timeout`: how long a cluster-wide query waits for the other nodes.
pub const DEFAULT_CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest `cluster.node`, in bytes (it is in every bus message).
pub const MAX_NODE_ID: usize = 64;
/// Default `cluster.max_nodes`: other nodes one node keeps track of. Far above the instances a
/// real cluster runs; small enough that a full table costs little memory and the owner lookup
/// per cross-node operation (a scan of the table) stays cheap.
pub const DEFAULT_CLUSTER_MAX_NODES: usize = 256;
/// Largest `cluster.max_nodes` accepted.
pub const MAX_CLUSTER_MAX_NODES: usize = 4096;

/// The `cluster` section (Pier): several instances act as one over Redis or NATS (`cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `cluster.bus`: `redis://` / `rediss://` (TLS) `[user:pass@]host:port[/db]`, or
    /// `nats://` / `tls://` (TLS) `[user:pass@ | token@]host:port`.
    pub bus: String,
    /// `cluster.tls`: the bus connection's own CA and client certificate; `None` = a TLS scheme
    /// trusts the system's roots and sends no client certificate.
    pub tls: Option<BusTls>,
    /// `cluster.node`: this instance's id; `None` = generated at start (and logged).
    pub node: Option<String>,
    /// `cluster.prefix`: channel names start with it, so clusters can share one bus.
    pub prefix: String,
    /// `cluster.request_timeout`: how long list/count/info/groups wait for the other nodes.
    pub request_timeout: Duration,
    /// `cluster.max_nodes`: most other nodes this node keeps track of; a new node id heard on
    /// the bus while that many are known is ignored (logged, counted).
    pub max_nodes: usize,
}

/// `cluster.tls`: how the bus connection (`rediss://` or `tls://`) checks the server and proves
/// who it is. Each file is read once, at load, and checked there (a bad one is a config error
/// naming its key); the bus client uses that text for every connection it makes. Reading them
/// again when the bus starts (moments later) would pick up nothing new, and neither client could
/// re-read them at a reconnect: a renewed bus certificate takes a restart of pier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusTls {
    /// `cluster.tls.ca`: PEM file of the CA(s) that sign the bus server's certificate, trusted
    /// instead of the system's roots; `None` = the system's roots.
    pub ca: Option<PemFile>,
    /// `cluster.tls.cert` + `cluster.tls.key`: PEM client certificate chain and its private key,
    /// for a bus that requires mutual TLS; `None` = no client certificate.
    pub client: Option<(PemFile, PemFile)>,
}

/// A `cluster.tls` file as read at load.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    /// Where it was read from, for messages.
    pub path: PathBuf,
    /// Its PEM text, checked to hold what its key needs (certificates, or a private key).
    pub pem: Vec<u8>,
}

/// The path only: a key file's text is a secret, and a certificate's is noise in a log.
impl std::fmt::Debug for PemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PemFile({})", self.path.display())
    }
}

/// Where the RPC listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcAddr {
    /// `tcp://host:port`, as `host:port`.
    Tcp(String),
    /// `unix:///path`.
    Unix(PathBuf),
}

/// Default `tls.handshake_timeout`: a TLS handshake must finish within it.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `proxy_protocol.timeout`: the PROXY header must arrive within it.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// How TLS starts on a server's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// The connection is TLS from its first byte (465-style).
    Implicit,
    /// Plaintext until a worker commands STARTTLS (587-style).
    Starttls,
}

/// Whether clients must present a certificate signed by `client_ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client without a valid certificate is refused.
    Required,
    /// A client may present one; if it does, it must be valid.
    Optional,
}

/// A certificate chain and its key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// The key path of `cert` in the config, for error messages (`tcp.servers.x.tls.cert`).
    pub origin: String,
}

/// `tcp.servers.<name>.tls`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Implicit TLS or STARTTLS.
    pub mode: TlsMode,
    /// `cert` + `key`: the default certificate (clients without SNI, or whose name it covers).
    pub default: CertFiles,
    /// `sni`: more certificates, each chosen when the client's SNI name is one of its DNS names.
    pub sni: Vec<CertFiles>,
    /// `client_ca`: PEM file of the CAs that sign client certificates; `None` = none asked.
    pub client_ca: Option<PathBuf>,
    /// `client_auth`: whether a client certificate is required (default when `client_ca` is set).
    pub client_auth: ClientAuth,
    /// `min_version`: `"1.2"` (default) or `"1.3"`.
    pub tls13_only: bool,
    /// `handshake_timeout`: a handshake not finished within it is dropped.
    pub handshake_timeout: Duration,
}

/// `tcp.servers.<name>.proxy_protocol`.
#[derive(Debug, Clone)]
pub struct ProxyProtocolConfig {
    /// `trusted`: source networks allowed to connect; each must send a PROXY header.
    pub trusted: Vec<ipnet::IpNet>,
    /// `timeout`: the header must arrive within it.
    pub timeout: Duration,
}

/// The worker pool: `tcp.pool` plus `server`.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Program and arguments of each worker.
    pub command: Vec<String>,
    /// `server.env`, added to every worker's environment.
    pub env: Vec<(String, String)>,
    /// How many workers run at once.
    pub num_workers: usize,
    /// Events a worker handles before it is replaced; 0 = unlimited.
    pub max_jobs: u64,
    /// How long to wait for a worker's handshake, or for a free worker for an event.
    pub allocate_timeout: Duration,
    /// How long a stopping worker may take to exit before it is killed.
    pub destroy_timeout: Duration,
    /// `reset_timeout`: how long a rolling reset may take.
    pub reset_timeout: Duration,
    /// `max_queue_size`: how many events may wait for a worker at once (in the queue, and in busy
    /// workers' lines); 0 = no limit.
    pub max_queue_size: usize,
    /// `max_in_flight` (Pier): events written to one worker at once when every worker is busy
    /// (answered in order); 1 = one at a time. Bounds what a crashing worker takes down with it.
    pub max_in_flight: usize,
    /// `server.relay`: how workers talk to pier.
    pub relay: RelayConfig,
    /// `server.relay_timeout`: how long a worker on a socket relay may take to connect back.
    pub relay_timeout: Duration,
    /// `tcp.pool.supervisor`.
    pub supervisor: SupervisorConfig,
    /// `tcp.pool.dynamic_allocator`, when set.
    pub dynamic: Option<DynamicConfig>,
    /// `server.user` / `server.group`, resolved: workers run with these ids.
    pub run_as: Option<RunAs>,
}

/// `server.relay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayConfig {
    /// stdin/stdout of each worker (the default).
    Pipes,
    /// Workers connect back to this `host:port` (port 0: any free port).
    Tcp(String),
    /// Workers connect back to this unix socket path.
    Unix(PathBuf),
}

/// `tcp.pool.supervisor` (RoadRunner's names and meaning; zero = no limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// How often the limits are checked (default 1 s).
    pub watch_tick: Duration,
    /// Longest life of a worker; replaced when idle (soft).
    pub ttl: Duration,
    /// Longest idle time after its first event; replaced (soft).
    pub idle_ttl: Duration,
    /// Longest event; the worker is killed (hard).
    pub exec_ttl: Duration,
    /// Largest resident memory in bytes (`max_worker_memory` is in MB); replaced when idle (soft).
    pub max_worker_memory: u64,
}

/// `tcp.pool.dynamic_allocator` (RoadRunner 2024.3+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicConfig {
    /// Extra workers at most, beyond `num_workers`.
    pub max_workers: usize,
    /// Extra workers started per round while events wait.
    pub spawn_rate: usize,
    /// Extra workers are stopped after this long without waiting events.
    pub idle_timeout: Duration,
}

/// Resolved `server.user` / `server.group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// The user id.
    pub uid: u32,
    /// The group id (`server.group`, else the user's primary group).
    pub gid: u32,
}

/// `server.on_init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnInit {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Longest run before it is killed (default 60 s).
    pub exec_timeout: Duration,
    /// Added to its environment (on top of `server.env`).
    pub env: Vec<(String, String)>,
    /// `on_init.user`, resolved.
    pub run_as: Option<RunAs>,
    /// `on_init.exit_on_error`: a failure stops pier before any worker starts, instead of being
    /// logged (false, RoadRunner's default).
    pub exit_on_error: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEncoding {
    /// Human-readable lines.
    Console,
    /// One JSON object per line.
    Json,
}

/// The `logs` section.
#[derive(Debug, Clone)]
pub struct LogsConfig {
    /// A tracing filter level: `debug`, `info`, `warn`, `error`.
    pub level: String,
    /// Line format.
    pub encoding: LogEncoding,
    /// `mode: raw`: the message only (no time, level or fields), as RoadRunner's raw mode.
    pub raw: bool,
    /// Where log lines go (`output`, or `file_logger_options.log_output`).
    pub output: LogOutput,
    /// `err_output`: where the logger reports that it cannot write to `output` (zap's meaning).
    pub err_output: LogOutput,
}

/// A log destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    /// Standard error (the default).
    Stderr,
    /// Standard output.
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            level: "info".into(),
            encoding: LogEncoding::Console,
            raw: false,
            output: LogOutput::Stderr,
            err_output: LogOutput::Stderr,
        }
    }
}

impl Config {
    /// Reads `path`, applies `overrides` (`dotted.key=value`, as `rr serve -o`) and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, overrides, &|name| std::env::var(name).ok())
    }

    /// Parses YAML text; `env` looks up variables for `${VAR}` expansion.
    pub fn parse(
        text: &str,
        overrides: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let docs = YamlLoader::load_from_str(text).map_err(ConfigError::Yaml)?;
        let mut root = docs.into_iter().next().unwrap_or(Yaml::Hash(Hash::new()));
        if matches!(root, Yaml::Null) {
            root = Yaml::Hash(Hash::new());
        }
        if !matches!(root, Yaml::Hash(_)) {
            return Err(ConfigError::NotAMapping);
        }
        for o in overrides {
            let (key, value) = o
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| ConfigError::Override(o.clone()))?;
            set_path(&mut root, key, Yaml::String(value.to_owned()));
        }
        expand_tree(&mut root, env);
        Self::from_tree(&root)
    }

    fn from_tree(root: &Yaml) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let top = hash(root, "")?;
        check_keys(
            top,
            "",
            &[
                "version", "server", "tcp", "logs", "metrics", "status", "rpc", "endure", "cluster",
            ],
            &[],
            &mut warnings,
        );
        let version = match top.get(&key("version")) {
            None => return Err(ConfigError::Version("missing".into())),
            Some(v) => scalar_string(v, "version")?,
        };
        if version != "3" {
            return Err(ConfigError::Version(format!("{version:?}")));
        }

        let empty = Yaml::Hash(Hash::new());
        let server = top.get(&key("server")).unwrap_or(&empty);
        let server = hash(server, "server")?;
        check_keys(
            server,
            "server",
            &[
                "command",
                "env",
                "relay",
                "relay_timeout",
                "user",
                "group",
                "on_init",
                "after_init",
            ],
            &[],
            &mut warnings,
        );
        if server.contains_key(&key("after_init")) {
            // RoadRunner runs it once its pools are up; Pier has no hook there, and a command the
            // user expects to run (a cache warm-up, a registration) must not be skipped quietly.
            return Err(ConfigError::Unsupported {
                key: "server.after_init".into(),
                advice: "Pier runs server.on_init before the workers start, but nothing after; run the command once /ready (status.address) answers 200, e.g. from the service manager, and remove this key",
            });
        }
        let server_command = match server.get(&key("command")) {
            Some(v) => command(v, "server.command")?,
            None => Vec::new(),
        };
        let mut env = Vec::new();
        if let Some(v) = server.get(&key("env")) {
            for (k, v) in hash(v, "server.env")? {
                let name = scalar_string(k, "server.env")?;
                let value = scalar_string(v, &format!("server.env.{name}"))?;
                env.push((name, value));
            }
        }
        let relay = match server.get(&key("relay")) {
            Some(v) => relay(&scalar_string(v, "server.relay")?)?,
            None => RelayConfig::Pipes,
        };
        let relay_timeout = rr_timeout(server, "server", "relay_timeout")?;
        let run_as = run_as(server)?;
        let on_init = match server.get(&key("on_init")) {
            Some(v) => Some(on_init(hash(v, "server.on_init")?, &mut warnings)?),
            None => None,
        };

        let logs = match top.get(&key("logs")) {
            Some(v) => logs(hash(v, "logs")?, &mut warnings)?,
            None => LogsConfig::default(),
        };
        let grace_period = match top.get(&key("endure")) {
            Some(v) => endure(hash(v, "endure")?, &mut warnings)?,
            None => DEFAULT_GRACE_PERIOD,
        };

        let rpc = match top.get(&key("rpc")) {
            Some(v) if !matches!(v, Yaml::Null) => rpc(hash(v, "rpc")?, &mut warnings)?,
            _ => None,
        };

        let cluster = match top.get(&key("cluster")) {
            Some(v) if !matches!(v, Yaml::Null) => cluster(hash(v, "cluster")?, &mut warnings)?,
            _ => None,
        };

        let tcp = top.get(&key("tcp")).unwrap_or(&empty);
        let tcp = hash(tcp, "tcp")?;
        check_keys(
            tcp,
            "tcp",
            &["servers", "read_buf_size", "io_threads", "pool"],
            &[],
            &mut warnings,
        );
        let read_buf_size_mb = match tcp.get(&key("read_buf_size")) {
            Some(v) => number(v, "tcp.read_buf_size")?,
            None => DEFAULT_READ_BUF_SIZE_MB as u64,
        };
        let read_buf_size = usize::try_from(read_buf_size_mb.max(1))
            .ok()
            .and_then(|mb| mb.checked_mul(1 << 20))
            .ok_or_else(|| ConfigError::Invalid {
                key: "tcp.read_buf_size".into(),
                problem: "too large".into(),
            })?;

        let io_threads = match tcp.get(&key("io_threads")) {
            Some(v) => number(v, "tcp.io_threads")?,
            None => 1,
        };
        let io_threads = if io_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            usize::try_from(io_threads)
                .ok()
                .filter(|&n| n <= MAX_IO_THREADS)
                .ok_or_else(|| ConfigError::Invalid {
                    key: "tcp.io_threads".into(),
                    problem: format!("{io_threads} is more than {MAX_IO_THREADS} threads"),
                })?
        };

        let mut servers = Vec::new();
        if let Some(v) = tcp.get(&key("servers")) {
            if !matches!(v, Yaml::Null) {
                for (name, entry) in hash(v, "tcp.servers")? {
                    let name = scalar_string(name, "tcp.servers")?;
                    servers.push(server_entry(&name, entry, &mut warnings)?);
                }
            }
        }
        if servers.is_empty() {
            return Err(ConfigError::NoServers);
        }

        let pool_tree = tcp.get(&key("pool")).unwrap_or(&empty);
        let pool_tree = hash(pool_tree, "tcp.pool")?;
        check_keys(
            pool_tree,
            "tcp.pool",
            &[
                "command",
                "num_workers",
                "max_jobs",
                "allocate_timeout",
                "destroy_timeout",
                "reset_timeout",
                "max_queue_size",
                "max_in_flight",
                "supervisor",
                "dynamic_allocator",
                "stream_timeout",
                "debug",
            ],
            &[],
            &mut warnings,
        );
        if pool_tree.contains_key(&key("stream_timeout")) {
            // Checked as RoadRunner parses it, then of no use: it bounds cancelling a streamed
            // response, and no TCP worker streams (RoadRunner's TCP plugin does not use it either).
            rr_timeout(pool_tree, "tcp.pool", "stream_timeout")?;
            warnings.push(
                "tcp.pool.stream_timeout has no effect: TCP workers never stream a response (RoadRunner's TCP plugin ignores it too)"
                    .into(),
            );
        }
        if let Some(v) = pool_tree.get(&key("debug")) {
            if boolean(v, "tcp.pool.debug")? {
                return Err(ConfigError::Unsupported {
                    key: "tcp.pool.debug".into(),
                    advice: "Pier has no debug pool; set tcp.pool.max_jobs: 1 for a fresh worker after every event, and remove this key or set it to false",
                });
            }
        }
        let command = match pool_tree.get(&key("command")) {
            Some(v) => command(v, "tcp.pool.command")?,
            None => server_command,
        };
        if command.is_empty() {
            return Err(ConfigError::NoCommand);
        }
        let num_workers = match pool_tree.get(&key("num_workers")) {
            Some(v) => number(v, "tcp.pool.num_workers")?,
            None => 0,
        };
        let num_workers = if num_workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            usize::try_from(num_workers).map_err(|_| ConfigError::Invalid {
                key: "tcp.pool.num_workers".into(),
                problem: "too large".into(),
            })?
        };
        let max_jobs = match pool_tree.get(&key("max_jobs")) {
            Some(v) => number(v, "tcp.pool.max_jobs")?,
            None => 0,
        };
        let allocate_timeout = rr_timeout(pool_tree, "tcp.pool", "allocate_timeout")?;
        let destroy_timeout = rr_timeout(pool_tree, "tcp.pool", "destroy_timeout")?;
        let reset_timeout = rr_timeout(pool_tree, "tcp.pool", "reset_timeout")?;
        let max_queue_size = match pool_tree.get(&key("max_queue_size")) {
            Some(v) => usize::try_from(number(v, "tcp.pool.max_queue_size")?).map_err(|_| {
                ConfigError::Invalid {
                    key: "tcp.pool.max_queue_size".into(),
                    problem: "too large".into(),
                }
            })?,
            None => 0,
        };
        let max_in_flight = match pool_tree.get(&key("max_in_flight")) {
            Some(v) => usize::try_from(number(v, "tcp.pool.max_in_flight")?)
                .ok()
                .filter(|n| (1..=MAX_IN_FLIGHT).contains(n))
                .ok_or_else(|| ConfigError::Invalid {
                    key: "tcp.pool.max_in_flight".into(),
                    problem: format!("must be 1 to {MAX_IN_FLIGHT}"),
                })?,
            None => DEFAULT_MAX_IN_FLIGHT,
        };
        let supervisor = match pool_tree.get(&key("supervisor")) {
            Some(v) => supervisor(hash(v, "tcp.pool.supervisor")?, &mut warnings)?,
            None => SupervisorConfig::default(),
        };
        let dynamic = match pool_tree.get(&key("dynamic_allocator")) {
            Some(v) => Some(dynamic(
                hash(v, "tcp.pool.dynamic_allocator")?,
                &mut warnings,
            )?),
            None => None,
        };

        let metrics = match top.get(&key("metrics")) {
            None | Some(Yaml::Null) => None,
            Some(v) => {
                let h = hash(v, "metrics")?;
                check_keys(
                    h,
                    "metrics",
                    &["address", "allow_remote"],
                    &["collect"],
                    &mut warnings,
                );
                ops_listener(h, "metrics")?
            }
        };
        let status = match top.get(&key("status")) {
            None | Some(Yaml::Null) => None,
            Some(v) => {
                let h = hash(v, "status")?;
                check_keys(
                    h,
                    "status",
                    &["address", "unavailable_status_code", "allow_remote"],
                    &[],
                    &mut warnings,
                );
                let code = match h.get(&key("unavailable_status_code")) {
                    None => 503,
                    Some(v) => {
                        let n = number(v, "status.unavailable_status_code")?;
                        u16::try_from(n)
                            .ok()
                            .filter(|n| (100..=599).contains(n))
                            .ok_or(ConfigError::Invalid {
                                key: "status.unavailable_status_code".into(),
                                problem: format!("{n} is not an HTTP status code (100..=599)"),
                            })?
                    }
                };
                ops_listener(h, "status")?.map(|listener| StatusConfig {
                    listener,
                    unavailable_status_code: code,
                })
            }
        };

        Ok(Config {
            servers,
            read_buf_size,
            io_threads,
            pool: PoolConfig {
                command,
                env,
                num_workers,
                max_jobs,
                allocate_timeout,
                destroy_timeout,
                reset_timeout,
                max_queue_size,
                max_in_flight,
                relay,
                relay_timeout,
                supervisor,
                dynamic,
                run_as,
            },
            logs,
            metrics,
            status,
            rpc,
            cluster,
            grace_period,
            on_init,
            warnings,
        })
    }
}

/// `<section>.address` (absent or empty = off) with the loopback rule of [`require_loopback`].
fn ops_listener(h: &Hash, section: &str) -> Result<Option<OpsListenerConfig>, ConfigError> {
    let addr_key = format!("{section}.address");
    let address = match h.get(&key("address")) {
        Some(v) => scalar_string(v, &addr_key)?,
        None => String::new(),
    };
    let Some(address) = normalize_addr(&address) else {
        return Ok(None);
    };
    let allow_key = format!("{section}.allow_remote");
    let allow = match h.get(&key("allow_remote")) {
        Some(v) => boolean(v, &allow_key)?,
        None => false,
    };
    require_loopback(&address, &addr_key, &allow_key, allow)?;
    Ok(Some(OpsListenerConfig { address }))
}

/// Refuses a `host:port` other hosts could reach unless `allow`: the operations listeners
/// (metrics, status, RPC) have no authentication, and RPC can reset workers and close
/// connections, so reaching them from the network must be a decision written in the config.
/// Loopback is an IP literal in 127.0.0.0/8 or `::1`, or the name `localhost`.
pub fn require_loopback(
    addr: &str,
    key: &str,
    allow_key: &str,
    allow: bool,
) -> Result<(), ConfigError> {
    if allow {
        return Ok(());
    }
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(ConfigError::NotLoopback {
            key: key.into(),
            addr: addr.into(),
            allow_key: allow_key.into(),
        })
    }
}

fn key(name: &str) -> Yaml {
    Yaml::String(name.to_owned())
}

fn server_entry(
    name: &str,
    entry: &Yaml,
    warnings: &mut Vec<String>,
) -> Result<ServerConfig, ConfigError> {
    let path = format!("tcp.servers.{name}");
    let empty = Yaml::Hash(Hash::new());
    let entry = if matches!(entry, Yaml::Null) {
        &empty
    } else {
        entry
    };
    let h = hash(entry, &path)?;
    check_keys(
        h,
        &path,
        &[
            "addr",
            "delimiter",
            "framing",
            "max_packet_size",
            "max_state_size",
            "max_connections",
            "max_connections_per_ip",
            "accept_rate_per_ip",
            "idle_timeout",
            "tcp_keepalive",
            "max_write_buffer",
            "write_timeout",
            "tls",
            "proxy_protocol",
        ],
        &[],
        warnings,
    );
    let addr = match h.get(&key("addr")) {
        Some(v) => scalar_string(v, &format!("{path}.addr"))?,
        None => String::new(),
    };
    let addr = normalize_addr(&addr).ok_or_else(|| ConfigError::EmptyAddress(name.to_owned()))?;
    let size = |field: &str, default: usize| -> Result<usize, ConfigError> {
        let k = format!("{path}.{field}");
        match h.get(&key(field)) {
            None => Ok(default),
            Some(v) => {
                let n = number(v, &k)?;
                usize::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(ConfigError::Invalid {
                        key: k,
                        problem: format!("{n} is not a usable size in bytes"),
                    })
            }
        }
    };
    let max_packet_size = size("max_packet_size", DEFAULT_MAX_PACKET_SIZE)?;
    let framing = framing(h, &path, max_packet_size)?;
    let count = |field: &str| -> Result<u64, ConfigError> {
        match h.get(&key(field)) {
            None => Ok(0),
            Some(v) => number(v, &format!("{path}.{field}")),
        }
    };
    let too_large = |field: &str| ConfigError::Invalid {
        key: format!("{path}.{field}"),
        problem: "too large".into(),
    };
    let limits = LimitsConfig {
        max_connections: usize::try_from(count("max_connections")?)
            .map_err(|_| too_large("max_connections"))?,
        max_connections_per_ip: usize::try_from(count("max_connections_per_ip")?)
            .map_err(|_| too_large("max_connections_per_ip"))?,
        accept_rate_per_ip: u32::try_from(count("accept_rate_per_ip")?)
            .map_err(|_| too_large("accept_rate_per_ip"))?,
        idle_timeout: match h.get(&key("idle_timeout")) {
            None => None,
            Some(v) => Some(duration(v, &format!("{path}.idle_timeout"))?).filter(|d| !d.is_zero()),
        },
        keepalive: keepalive(h.get(&key("tcp_keepalive")), &path, warnings)?,
    };
    Ok(ServerConfig {
        name: name.to_owned(),
        addr,
        framing,
        max_packet_size,
        max_state_size: size("max_state_size", DEFAULT_MAX_STATE_SIZE)?,
        max_write_buffer: size("max_write_buffer", DEFAULT_MAX_WRITE_BUFFER)?,
        write_timeout: duration_or(h, &path, "write_timeout", DEFAULT_WRITE_TIMEOUT)?,
        limits,
        tls: match h.get(&key("tls")) {
            None | Some(Yaml::Null) => None,
            Some(v) => Some(tls_entry(&format!("{path}.tls"), v, warnings)?),
        },
        proxy_protocol: match h.get(&key("proxy_protocol")) {
            None | Some(Yaml::Null) => None,
            Some(v) => Some(proxy_entry(&format!("{path}.proxy_protocol"), v, warnings)?),
        },
    })
}

/// Reads `<path>.framing` (a mode name, or a mapping with `mode` and the mode's keys) and
/// `<path>.delimiter`, and checks them against `max`. Every key of the mapping belongs to some mode;
/// one the chosen mode does not use is an error rather than ignored, as is `delimiter` outside
/// delimiter mode, so a typo in `mode` cannot silently change how packets are cut.
fn framing(h: &Hash, path: &str, max: usize) -> Result<Framing, ConfigError> {
    let fpath = format!("{path}.framing");
    let invalid = |field: &str, problem: String| ConfigError::Invalid {
        key: if field.is_empty() {
            fpath.clone()
        } else {
            format!("{fpath}.{field}")
        },
        problem,
    };
    let empty = Hash::new();
    let (mode, keys) = match h.get(&key("framing")) {
        None => ("delimiter".to_owned(), &empty),
        Some(Yaml::Hash(keys)) => match keys.get(&key("mode")) {
            Some(v) => (scalar_string(v, &format!("{fpath}.mode"))?, keys),
            None => {
                return Err(invalid(
                    "mode",
                    "missing: one of delimiter, length_field, varint, fixed, raw".into(),
                ))
            }
        },
        Some(v) => (scalar_string(v, &fpath)?, &empty),
    };
    let used: &[&str] = match mode.as_str() {
        "delimiter" | "raw" => &[],
        "length_field" => &[
            "length_offset",
            "length_size",
            "endian",
            "length_adjustment",
            "strip",
        ],
        "varint" => &["length_offset", "length_size", "length_adjustment", "strip"],
        "fixed" => &["size"],
        other => {
            return Err(invalid(
                if keys.is_empty() { "" } else { "mode" },
                format!("{other:?} is not one of delimiter, length_field, varint, fixed, raw"),
            ))
        }
    };
    for k in keys.keys() {
        let name = scalar_string(k, &fpath)?;
        if name != "mode" && !used.contains(&name.as_str()) {
            return Err(invalid(&name, format!("not used by framing mode {mode}")));
        }
    }
    if mode != "delimiter" && h.contains_key(&key("delimiter")) {
        return Err(ConfigError::Invalid {
            key: format!("{path}.delimiter"),
            problem: format!("only used by framing mode delimiter, not {mode}"),
        });
    }
    let int = |field: &str, default: i64| -> Result<i64, ConfigError> {
        let Some(v) = keys.get(&key(field)) else {
            return Ok(default);
        };
        let text = scalar_string(v, &format!("{fpath}.{field}"))?;
        text.trim()
            .parse::<i64>()
            .map_err(|_| invalid(field, format!("{text:?} is not an integer")))
    };
    let unsigned = |field: &str, default: usize| -> Result<usize, ConfigError> {
        let n = int(field, default as i64)?;
        usize::try_from(n).map_err(|_| invalid(field, format!("{n} is negative")))
    };
    let strip = |header_min: usize, what: &str| -> Result<Strip, ConfigError> {
        match keys.get(&key("strip")) {
            Some(Yaml::String(s)) if s == "header" => Ok(Strip::Header),
            Some(_) => {
                let n = unsigned("strip", 0)?;
                if n > header_min {
                    return Err(invalid(
                        "strip",
                        format!("{n} is longer than {what} ({header_min} bytes); use \"header\" to strip all of it"),
                    ));
                }
                Ok(Strip::Bytes(n))
            }
            None => Ok(Strip::Bytes(0)),
        }
    };
    // The smallest frame must fit: a config whose every frame is over max is a mistake.
    let fits = |field: &str, smallest: i128| -> Result<(), ConfigError> {
        if smallest > max as i128 {
            return Err(invalid(
                field,
                format!("the smallest frame ({smallest} bytes) is over max_packet_size {max}"),
            ));
        }
        Ok(())
    };
    Ok(match mode.as_str() {
        "delimiter" => {
            let delimiter = match h.get(&key("delimiter")) {
                Some(v) => scalar_string(v, &format!("{path}.delimiter"))?.into_bytes(),
                None => b"\r\n".to_vec(),
            };
            if delimiter.is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("{path}.delimiter"),
                    problem: "the delimiter is empty".into(),
                });
            }
            if max < delimiter.len() {
                return Err(ConfigError::Invalid {
                    key: format!("{path}.max_packet_size"),
                    problem: "smaller than the delimiter".into(),
                });
            }
            Framing::Delimiter(delimiter)
        }
        "length_field" => {
            let offset = unsigned("length_offset", 0)?;
            let size = unsigned("length_size", 4)?;
            if ![1, 2, 3, 4, 8].contains(&size) {
                return Err(invalid(
                    "length_size",
                    format!("{size} is not one of 1, 2, 3, 4, 8"),
                ));
            }
            let header = offset.saturating_add(size);
            if header > max {
                return Err(invalid(
                    "length_offset",
                    format!("the length field (bytes {offset}..{header}) ends past max_packet_size {max}"),
                ));
            }
            let endian = match keys.get(&key("endian")) {
                None => Endian::Big,
                Some(v) => match scalar_string(v, &format!("{fpath}.endian"))?.as_str() {
                    "big" => Endian::Big,
                    "little" => Endian::Little,
                    other => {
                        return Err(invalid("endian", format!("{other:?} is not big or little")))
                    }
                },
            };
            let adjustment = int("length_adjustment", 0)?;
            fits(
                "length_adjustment",
                header as i128 + i128::from(adjustment.max(0)),
            )?;
            let strip = strip(header, "the header")?;
            Framing::LengthField(LengthField {
                offset,
                size,
                endian,
                adjustment,
                strip,
            })
        }
        "varint" => {
            let offset = unsigned("length_offset", 0)?;
            let max_bytes = unsigned("length_size", 4)?;
            if !(1..=10).contains(&max_bytes) {
                return Err(invalid(
                    "length_size",
                    format!("{max_bytes} is not between 1 and 10 (the most bytes of the varint)"),
                ));
            }
            if offset.saturating_add(1) > max {
                return Err(invalid(
                    "length_offset",
                    format!("the varint (from byte {offset}) starts past max_packet_size {max}"),
                ));
            }
            let adjustment = int("length_adjustment", 0)?;
            fits(
                "length_adjustment",
                offset as i128 + 1 + i128::from(adjustment.max(0)),
            )?;
            let strip = strip(offset, "the bytes before the varint")?;
            Framing::Varint(Varint {
                offset,
                max_bytes,
                adjustment,
                strip,
            })
        }
        "fixed" => {
            let size = match keys.get(&key("size")) {
                Some(_) => unsigned("size", 0)?,
                None => return Err(invalid("size", "missing: the bytes of every packet".into())),
            };
            if size == 0 || size > max {
                return Err(invalid(
                    "size",
                    format!("{size} is not between 1 and max_packet_size {max}"),
                ));
            }
            Framing::Fixed(size)
        }
        _ => Framing::Raw,
    })
}

/// `tcp_keepalive`: absent or `true` = [`DEFAULT_KEEPALIVE`] (what RoadRunner's Go listener does),
/// `false` = off, or a mapping of `time`, `interval`, `retries` (missing ones from the default).
fn keepalive(
    v: Option<&Yaml>,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<KeepaliveConfig>, ConfigError> {
    let k = format!("{path}.tcp_keepalive");
    let h = match v {
        None | Some(Yaml::Null) => return Ok(Some(DEFAULT_KEEPALIVE)),
        Some(Yaml::Hash(h)) => h,
        Some(other) => {
            return Ok(boolean(other, &k)?.then_some(DEFAULT_KEEPALIVE));
        }
    };
    check_keys(h, &k, &["time", "interval", "retries"], &[], warnings);
    let mut ka = DEFAULT_KEEPALIVE;
    let positive = |d: Duration, field: &str| {
        if d < Duration::from_secs(1) {
            Err(ConfigError::Invalid {
                key: format!("{k}.{field}"),
                problem: "must be at least 1s (the kernel counts whole seconds)".into(),
            })
        } else {
            Ok(d)
        }
    };
    if let Some(v) = h.get(&key("time")) {
        ka.time = positive(duration(v, &format!("{k}.time"))?, "time")?;
    }
    if let Some(v) = h.get(&key("interval")) {
        ka.interval = positive(duration(v, &format!("{k}.interval"))?, "interval")?;
    }
    if let Some(v) = h.get(&key("retries")) {
        let n = number(v, &format!("{k}.retries"))?;
        ka.retries = u32::try_from(n)
            .ok()
            .filter(|n| (1..=127).contains(n))
            .ok_or(ConfigError::Invalid {
                key: format!("{k}.retries"),
                problem: format!("{n} is not between 1 and 127"),
            })?;
    }
    Ok(Some(ka))
}

/// The `rpc` section; `None` without `rpc.listen`.
fn rpc(h: &Hash, warnings: &mut Vec<String>) -> Result<Option<RpcConfig>, ConfigError> {
    check_keys(h, "rpc", &["listen", "allow_remote"], &[], warnings);
    let Some(listen) = h.get(&key("listen")) else {
        return Ok(None);
    };
    let listen = scalar_string(listen, "rpc.listen")?.trim().to_owned();
    if listen.is_empty() {
        return Ok(None);
    }
    let allow_remote = match h.get(&key("allow_remote")) {
        None => false,
        Some(Yaml::Boolean(b)) => *b,
        Some(v) => match scalar_string(v, "rpc.allow_remote")?.as_str() {
            "true" => true,
            "false" => false,
            other => {
                return Err(ConfigError::Invalid {
                    key: "rpc.allow_remote".into(),
                    problem: format!("{other:?} is not true or false"),
                })
            }
        },
    };
    let addr = if let Some(path) = listen.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(ConfigError::RpcListen(listen));
        }
        RpcAddr::Unix(PathBuf::from(path))
    } else if let Some(hostport) = listen.strip_prefix("tcp://") {
        let (host, port) = hostport
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .ok_or_else(|| ConfigError::RpcListen(listen.clone()))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback && !allow_remote {
            return Err(ConfigError::RpcNotLoopback(listen));
        }
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        RpcAddr::Tcp(format!("{host}:{port}"))
    } else {
        return Err(ConfigError::RpcListen(listen));
    };
    Ok(Some(RpcConfig { listen, addr }))
}

/// The `cluster` section; `None` without `cluster.bus`. The bus URL's scheme is checked here (a
/// typo is a config error, not a bus that never connects); the rest of it when the bus starts.
fn cluster(h: &Hash, warnings: &mut Vec<String>) -> Result<Option<ClusterConfig>, ConfigError> {
    check_keys(
        h,
        "cluster",
        &[
            "bus",
            "node",
            "prefix",
            "request_timeout",
            "max_nodes",
            "tls",
        ],
        &[],
        warnings,
    );
    let text = |field: &str| -> Result<Option<String>, ConfigError> {
        match h.get(&key(field)) {
            None => Ok(None),
            Some(v) => {
                let v = scalar_string(v, &format!("cluster.{field}"))?;
                let v = v.trim();
                Ok((!v.is_empty()).then(|| v.to_owned()))
            }
        }
    };
    let Some(bus) = text("bus")? else {
        if !h.is_empty() {
            warnings.push("cluster.bus is not set: this instance runs alone (the other cluster keys are ignored)".into());
        }
        return Ok(None);
    };
    let scheme = ["redis://", "rediss://", "nats://", "tls://"]
        .into_iter()
        .find(|s| {
            bus.len() > s.len()
                && bus.is_char_boundary(s.len())
                && bus[..s.len()].eq_ignore_ascii_case(s)
        });
    let Some(scheme) = scheme else {
        return Err(ConfigError::Invalid {
            key: "cluster.bus".into(),
            // The URL may hold a password: it is not repeated.
            problem: "is not redis:// or rediss:// (TLS) host:port[/db], nor nats:// or tls:// (TLS) host:port".into(),
        });
    };
    if scheme == "rediss://" && bus.contains('#') {
        // redis-rs reads `#insecure` as "do not check the certificate": not offered.
        return Err(ConfigError::Invalid {
            key: "cluster.bus".into(),
            problem: "has a #fragment: the bus server's certificate is always checked (name its CA with cluster.tls.ca)".into(),
        });
    }
    let tls = match h.get(&key("tls")) {
        None | Some(Yaml::Null) => None,
        Some(v) => Some(bus_tls(hash(v, "cluster.tls")?, warnings)?),
    };
    if tls.is_some() && matches!(scheme, "redis://" | "nats://") {
        return Err(ConfigError::Invalid {
            key: "cluster.tls".into(),
            problem: format!(
                "is set but cluster.bus is {scheme}… (clear text): use rediss:// or tls:// for a bus over TLS"
            ),
        });
    }
    // The id names the node in logs, rows and every bus message: printable, short, no spaces.
    let node = text("node")?;
    if let Some(node) = &node {
        name_chars(
            node,
            "cluster.node",
            "letters, digits, '.', '_' or '-'",
            b"._-",
        )?;
    }
    // The prefix is one token of a NATS subject (and of a Redis channel name): no dots, spaces
    // or wildcards.
    let prefix = text("prefix")?.unwrap_or_else(|| DEFAULT_CLUSTER_PREFIX.to_owned());
    name_chars(
        &prefix,
        "cluster.prefix",
        "letters, digits, '_' or '-'",
        b"_-",
    )?;
    let request_timeout = duration_or(
        h,
        "cluster",
        "request_timeout",
        DEFAULT_CLUSTER_REQUEST_TIMEOUT,
    )?;
    if request_timeout.is_zero() {
        return Err(ConfigError::Invalid {
            key: "cluster.request_timeout".into(),
            problem: "0 would give the other nodes no time to answer".into(),
        });
    }
    let max_nodes = match h.get(&key("max_nodes")) {
        None => DEFAULT_CLUSTER_MAX_NODES,
        Some(v) => {
            let n = number(v, "cluster.max_nodes")?;
            usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_CLUSTER_MAX_NODES).contains(n))
                .ok_or_else(|| ConfigError::Invalid {
                    key: "cluster.max_nodes".into(),
                    problem: format!(
                        "{n} is not 1..={MAX_CLUSTER_MAX_NODES} (the other nodes this one keeps track of)"
                    ),
                })?
        }
    };
    Ok(Some(ClusterConfig {
        bus,
        tls,
        node,
        prefix,
        request_timeout,
        max_nodes,
    }))
}

/// `cluster.tls`: each file is read and parsed now (and kept, see [`BusTls`]), so a path that
/// cannot be read, a file without a certificate, or a certificate without its key is a config
/// error naming its key.
fn bus_tls(h: &Hash, warnings: &mut Vec<String>) -> Result<BusTls, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    check_keys(h, "cluster.tls", &["ca", "cert", "key"], &[], warnings);
    let file = |field: &str| -> Result<Option<PathBuf>, ConfigError> {
        match h.get(&key(field)) {
            None | Some(Yaml::Null) => Ok(None),
            Some(v) => {
                let v = scalar_string(v, &format!("cluster.tls.{field}"))?;
                Ok((!v.trim().is_empty()).then(|| PathBuf::from(v.trim())))
            }
        }
    };
    let invalid = |field: &str, problem: String| ConfigError::Invalid {
        key: format!("cluster.tls.{field}"),
        problem,
    };
    let read = |field: &str, path: PathBuf| -> Result<PemFile, ConfigError> {
        match std::fs::read(&path) {
            Ok(pem) => Ok(PemFile { path, pem }),
            Err(e) => Err(invalid(
                field,
                format!("could not read {}: {e}", path.display()),
            )),
        }
    };
    let certs = |field: &str, path: PathBuf| -> Result<PemFile, ConfigError> {
        let file = read(field, path)?;
        let found = CertificateDer::pem_slice_iter(&file.pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                invalid(
                    field,
                    format!(
                        "could not read PEM certificates from {}: {e}",
                        file.path.display()
                    ),
                )
            })?;
        if found.is_empty() {
            return Err(invalid(
                field,
                format!("{} holds no PEM certificate", file.path.display()),
            ));
        }
        Ok(file)
    };
    let ca = file("ca")?.map(|ca| certs("ca", ca)).transpose()?;
    let client = match (file("cert")?, file("key")?) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "key",
                "missing: cluster.tls.cert needs the PEM private key of its certificate".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "cert",
                "missing: cluster.tls.key needs the PEM client certificate it belongs to".into(),
            ))
        }
        (Some(cert), Some(key_file)) => {
            let cert = certs("cert", cert)?;
            let key_file = read("key", key_file)?;
            PrivateKeyDer::from_pem_slice(&key_file.pem).map_err(|e| {
                invalid(
                    "key",
                    format!(
                        "could not read a PEM private key from {}: {e}",
                        key_file.path.display()
                    ),
                )
            })?;
            Some((cert, key_file))
        }
    };
    if ca.is_none() && client.is_none() {
        warnings.push(
            "cluster.tls names no file: the bus server is checked against the system's roots"
                .into(),
        );
    }
    Ok(BusTls { ca, client })
}

/// Refuses a name longer than [`MAX_NODE_ID`] or with bytes other than ASCII letters, digits and
/// `extra` (`allowed` says which, for the message).
fn name_chars(value: &str, key: &str, allowed: &str, extra: &[u8]) -> Result<(), ConfigError> {
    let ok = value.len() <= MAX_NODE_ID
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        key: key.into(),
        problem: format!("{value:?} is not 1..={MAX_NODE_ID} {allowed}"),
    })
}

/// `tcp.servers.<name>.tls`. Files are only named here; they are read (and a missing one
/// reported with its key) when the server starts, so a reload reads them again.
fn tls_entry(path: &str, v: &Yaml, warnings: &mut Vec<String>) -> Result<TlsConfig, ConfigError> {
    let h = hash(v, path)?;
    check_keys(
        h,
        path,
        &[
            "mode",
            "cert",
            "key",
            "sni",
            "client_ca",
            "client_auth",
            "min_version",
            "handshake_timeout",
        ],
        &[],
        warnings,
    );
    let invalid = |field: &str, problem: String| ConfigError::Invalid {
        key: format!("{path}.{field}"),
        problem,
    };
    let text = |h: &Hash, field: &str, at: &str| -> Result<Option<String>, ConfigError> {
        match h.get(&key(field)) {
            None => Ok(None),
            Some(v) => Ok(Some(scalar_string(v, &format!("{at}.{field}"))?))
                .map(|s| s.filter(|s| !s.is_empty())),
        }
    };
    let pair = |h: &Hash, at: &str| -> Result<CertFiles, ConfigError> {
        let cert = text(h, "cert", at)?.ok_or_else(|| ConfigError::Invalid {
            key: format!("{at}.cert"),
            problem: "missing: the PEM certificate chain file".into(),
        })?;
        let key_file = text(h, "key", at)?.ok_or_else(|| ConfigError::Invalid {
            key: format!("{at}.key"),
            problem: "missing: the PEM private key file".into(),
        })?;
        Ok(CertFiles {
            cert: cert.into(),
            key: key_file.into(),
            origin: at.to_owned(),
        })
    };
    let mode = match text(h, "mode", path)?.as_deref() {
        None | Some("implicit") => TlsMode::Implicit,
        Some("starttls") => TlsMode::Starttls,
        Some(other) => {
            return Err(invalid(
                "mode",
                format!("{other:?} is not implicit or starttls"),
            ))
        }
    };
    let default = pair(h, path)?;
    let mut sni = Vec::new();
    match h.get(&key("sni")) {
        None | Some(Yaml::Null) => {}
        Some(Yaml::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{path}.sni.{i}");
                let entry = hash(item, &at)?;
                check_keys(entry, &at, &["cert", "key"], &[], warnings);
                sni.push(pair(entry, &at)?);
            }
        }
        Some(_) => {
            return Err(invalid(
                "sni",
                "expected a list of {cert, key} entries".into(),
            ))
        }
    }
    let client_ca = text(h, "client_ca", path)?.map(PathBuf::from);
    let client_auth = match text(h, "client_auth", path)?.as_deref() {
        None | Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        Some(other) => {
            return Err(invalid(
                "client_auth",
                format!("{other:?} is not required or optional"),
            ))
        }
    };
    if client_ca.is_none() && h.contains_key(&key("client_auth")) {
        return Err(invalid(
            "client_auth",
            "set client_ca too: the CAs that sign client certificates".into(),
        ));
    }
    let tls13_only = match text(h, "min_version", path)?.as_deref() {
        None | Some("1.2") | Some("TLSv1.2") => false,
        Some("1.3") | Some("TLSv1.3") => true,
        Some(other) => {
            return Err(invalid(
                "min_version",
                format!("{other:?} is not \"1.2\" or \"1.3\" (older versions are insecure)"),
            ))
        }
    };
    let handshake_timeout = match h.get(&key("handshake_timeout")) {
        None => DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        Some(_) => positive_duration(h, path, "handshake_timeout")?,
    };
    Ok(TlsConfig {
        mode,
        default,
        sni,
        client_ca,
        client_auth,
        tls13_only,
        handshake_timeout,
    })
}

/// `tcp.servers.<name>.proxy_protocol`.
fn proxy_entry(
    path: &str,
    v: &Yaml,
    warnings: &mut Vec<String>,
) -> Result<ProxyProtocolConfig, ConfigError> {
    let h = hash(v, path)?;
    check_keys(h, path, &["trusted", "timeout"], &[], warnings);
    let k = format!("{path}.trusted");
    let items: Vec<String> = match h.get(&key("trusted")) {
        Some(Yaml::Array(items)) => items
            .iter()
            .map(|item| scalar_string(item, &k))
            .collect::<Result<_, _>>()?,
        Some(Yaml::String(s)) => s.split(',').map(|s| s.trim().to_owned()).collect(),
        _ => Vec::new(),
    };
    let mut trusted = Vec::new();
    for item in items.iter().filter(|s| !s.is_empty()) {
        // A bare address is a one-address network.
        let net = item
            .parse::<ipnet::IpNet>()
            .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| ConfigError::Invalid {
                key: k.clone(),
                problem: format!("{item:?} is not a CIDR network such as 10.0.0.0/8 or ::1/128"),
            })?;
        trusted.push(net);
    }
    if trusted.is_empty() {
        return Err(ConfigError::Invalid {
            key: k,
            problem: "list the networks of the balancers that send PROXY headers".into(),
        });
    }
    let timeout = match h.get(&key("timeout")) {
        None => DEFAULT_PROXY_TIMEOUT,
        Some(_) => positive_duration(h, path, "timeout")?,
    };
    Ok(ProxyProtocolConfig { trusted, timeout })
}

/// A duration that must be above zero (a zero timeout would refuse every connection).
fn positive_duration(h: &Hash, path: &str, field: &str) -> Result<Duration, ConfigError> {
    let d = duration_or(h, path, field, DEFAULT_TIMEOUT)?;
    if d.is_zero() {
        return Err(ConfigError::Invalid {
            key: format!("{path}.{field}"),
            problem: "must be above zero".into(),
        });
    }
    Ok(d)
}

/// `tcp://host:port`, `host:port`, `[::1]:port` or `:port` → a `host:port` tokio can bind;
/// `None` when empty.
fn normalize_addr(addr: &str) -> Option<String> {
    let addr = addr.trim();
    let addr = addr.strip_prefix("tcp://").unwrap_or(addr);
    if addr.is_empty() {
        return None;
    }
    if addr.starts_with(':') {
        return Some(format!("0.0.0.0{addr}"));
    }
    Some(addr.to_owned())
}

fn logs(h: &Hash, warnings: &mut Vec<String>) -> Result<LogsConfig, ConfigError> {
    check_keys(
        h,
        "logs",
        &[
            "level",
            "encoding",
            "mode",
            "output",
            "err_output",
            "file_logger_options",
            "line_ending",
        ],
        &["channels"],
        warnings,
    );
    if let Some(v) = h.get(&key("line_ending")) {
        if scalar_string(v, "logs.line_ending")? != "\n" {
            return Err(ConfigError::Unsupported {
                key: "logs.line_ending".into(),
                advice: "Pier ends every log line with \\n (RoadRunner's default); remove this key or set it to \"\\n\"",
            });
        }
    }
    // RoadRunner's modes: production = JSON at info, development = console at debug, raw = the
    // message only, off/none = nothing. `level` and `encoding` still win when given.
    let mode = match h.get(&key("mode")) {
        Some(v) => scalar_string(v, "logs.mode")?.to_ascii_lowercase(),
        None => String::new(),
    };
    let (default_level, default_encoding, raw) = match mode.as_str() {
        "" => ("info", LogEncoding::Console, false),
        "development" => ("debug", LogEncoding::Console, false),
        "production" => ("info", LogEncoding::Json, false),
        "raw" => ("info", LogEncoding::Console, true),
        "off" | "none" => ("off", LogEncoding::Console, false),
        other => {
            return Err(ConfigError::Invalid {
                key: "logs.mode".into(),
                problem: format!("{other:?} is not one of development, production, raw, off, none"),
            })
        }
    };
    let level = match h.get(&key("level")) {
        Some(v) if default_level != "off" => scalar_string(v, "logs.level")?,
        _ => default_level.into(),
    };
    let level = match level.to_ascii_lowercase().as_str() {
        "debug" | "info" | "warn" | "error" | "off" => level.to_ascii_lowercase(),
        // zap's levels above error: tracing has none, error is the closest.
        "panic" | "fatal" | "dpanic" => "error".into(),
        other => {
            return Err(ConfigError::Invalid {
                key: "logs.level".into(),
                problem: format!("{other:?} is not one of debug, info, warn, error"),
            })
        }
    };
    let encoding = match h.get(&key("encoding")) {
        None => default_encoding,
        Some(v) => match scalar_string(v, "logs.encoding")?.as_str() {
            "console" => LogEncoding::Console,
            "json" => LogEncoding::Json,
            other => {
                return Err(ConfigError::Invalid {
                    key: "logs.encoding".into(),
                    problem: format!("{other:?} is not console or json"),
                })
            }
        },
    };
    let output_key = |field: &str| -> Result<LogOutput, ConfigError> {
        Ok(match h.get(&key(field)) {
            Some(v) => log_output(&scalar_string(v, &format!("logs.{field}"))?),
            None => LogOutput::Stderr,
        })
    };
    let mut output = output_key("output")?;
    let err_output = output_key("err_output")?;
    if let Some(v) = h.get(&key("file_logger_options")) {
        let f = hash(v, "logs.file_logger_options")?;
        check_keys(
            f,
            "logs.file_logger_options",
            &[
                "log_output",
                "max_size",
                "max_age",
                "max_backups",
                "compress",
            ],
            &[],
            warnings,
        );
        for rotation in ["max_size", "max_age", "max_backups", "compress"] {
            if f.contains_key(&key(rotation)) {
                return Err(ConfigError::Unsupported {
                    key: format!("logs.file_logger_options.{rotation}"),
                    advice: "Pier appends to log_output and does not rotate it; rotate with logrotate (copytruncate) and remove this key",
                });
            }
        }
        // RoadRunner's default file: <process name>-lumberjack.log in the temp directory.
        output = match f.get(&key("log_output")) {
            Some(v) => {
                let path = scalar_string(v, "logs.file_logger_options.log_output")?;
                if path.is_empty() {
                    LogOutput::File(std::env::temp_dir().join("pier-lumberjack.log"))
                } else {
                    LogOutput::File(PathBuf::from(path))
                }
            }
            None => LogOutput::File(std::env::temp_dir().join("pier-lumberjack.log")),
        };
    }
    Ok(LogsConfig {
        level,
        encoding,
        raw,
        output,
        err_output,
    })
}

fn log_output(text: &str) -> LogOutput {
    match text {
        "" | "stderr" => LogOutput::Stderr,
        "stdout" => LogOutput::Stdout,
        path => LogOutput::File(PathBuf::from(path)),
    }
}

/// `endure`: RoadRunner's plugin container; Pier has none, so only `grace_period` has meaning.
fn endure(h: &Hash, warnings: &mut Vec<String>) -> Result<Duration, ConfigError> {
    check_keys(
        h,
        "endure",
        &["grace_period", "print_graph", "log_level"],
        &[],
        warnings,
    );
    if let Some(v) = h.get(&key("print_graph")) {
        if scalar_string(v, "endure.print_graph")? == "true" {
            return Err(ConfigError::Unsupported {
                key: "endure.print_graph".into(),
                advice: "Pier has no plugin dependency graph to print; remove the key or set it to false",
            });
        }
    }
    if h.contains_key(&key("log_level")) {
        warnings.push(
            "endure.log_level has no effect: Pier has no plugin container; its messages follow logs.level"
                .into(),
        );
    }
    duration_or(h, "endure", "grace_period", DEFAULT_GRACE_PERIOD)
}

fn supervisor(h: &Hash, warnings: &mut Vec<String>) -> Result<SupervisorConfig, ConfigError> {
    let path = "tcp.pool.supervisor";
    check_keys(
        h,
        path,
        &[
            "watch_tick",
            "ttl",
            "idle_ttl",
            "exec_ttl",
            "max_worker_memory",
        ],
        &[],
        warnings,
    );
    let watch_tick = duration_or(h, path, "watch_tick", DEFAULT_WATCH_TICK)?;
    let watch_tick = if watch_tick.is_zero() {
        DEFAULT_WATCH_TICK
    } else {
        watch_tick
    };
    let mb = match h.get(&key("max_worker_memory")) {
        Some(v) => number(v, &format!("{path}.max_worker_memory"))?,
        None => 0,
    };
    Ok(SupervisorConfig {
        watch_tick,
        ttl: duration_or(h, path, "ttl", Duration::ZERO)?,
        idle_ttl: duration_or(h, path, "idle_ttl", Duration::ZERO)?,
        exec_ttl: duration_or(h, path, "exec_ttl", Duration::ZERO)?,
        max_worker_memory: mb.saturating_mul(1 << 20),
    })
}

fn dynamic(h: &Hash, warnings: &mut Vec<String>) -> Result<DynamicConfig, ConfigError> {
    let path = "tcp.pool.dynamic_allocator";
    check_keys(
        h,
        path,
        &["max_workers", "spawn_rate", "idle_timeout"],
        &[],
        warnings,
    );
    let count = |field: &str, default: u64| -> Result<usize, ConfigError> {
        let n = match h.get(&key(field)) {
            Some(v) => number(v, &format!("{path}.{field}"))?,
            None => default,
        };
        if n > MAX_DYNAMIC_WORKERS {
            return Err(ConfigError::Invalid {
                key: format!("{path}.{field}"),
                problem: format!("{n} is over {MAX_DYNAMIC_WORKERS} (RoadRunner's limit)"),
            });
        }
        Ok(n as usize)
    };
    let max_workers = count("max_workers", 10)?;
    let spawn_rate = count("spawn_rate", DEFAULT_SPAWN_RATE)?.max(1);
    Ok(DynamicConfig {
        max_workers,
        spawn_rate,
        // RoadRunner makes zero (and, unlike Pier, anything under a second) a minute.
        idle_timeout: rr_timeout(h, path, "idle_timeout")?,
    })
}

fn relay(text: &str) -> Result<RelayConfig, ConfigError> {
    let text = text.trim();
    if text.is_empty() || text == "pipes" {
        return Ok(RelayConfig::Pipes);
    }
    if let Some(addr) = text.strip_prefix("tcp://") {
        if addr
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        {
            return Ok(RelayConfig::Tcp(addr.to_owned()));
        }
    }
    if let Some(path) = text.strip_prefix("unix://") {
        if !path.is_empty() {
            return Ok(RelayConfig::Unix(PathBuf::from(path)));
        }
    }
    Err(ConfigError::Relay(text.to_owned()))
}

fn on_init(h: &Hash, warnings: &mut Vec<String>) -> Result<OnInit, ConfigError> {
    let path = "server.on_init";
    check_keys(
        h,
        path,
        &["command", "exec_timeout", "env", "user", "exit_on_error"],
        &[],
        warnings,
    );
    let command = match h.get(&key("command")) {
        Some(v) => command(v, "server.on_init.command")?,
        None => Vec::new(),
    };
    if command.is_empty() {
        return Err(ConfigError::Invalid {
            key: "server.on_init.command".into(),
            problem: "on_init needs a command".into(),
        });
    }
    let mut env = Vec::new();
    if let Some(v) = h.get(&key("env")) {
        for (k, v) in hash(v, "server.on_init.env")? {
            let name = scalar_string(k, "server.on_init.env")?;
            let value = scalar_string(v, &format!("server.on_init.env.{name}"))?;
            env.push((name, value));
        }
    }
    let run_as = match h.get(&key("user")) {
        Some(v) => {
            let name = scalar_string(v, "server.on_init.user")?;
            if name.is_empty() {
                None
            } else {
                let (uid, gid) = lookup_user(&name, "server.on_init.user")?;
                Some(check_root(
                    RunAs { uid, gid },
                    "server.on_init.user",
                    &name,
                )?)
            }
        }
        None => None,
    };
    Ok(OnInit {
        command,
        exec_timeout: rr_timeout(h, path, "exec_timeout")?,
        env,
        run_as,
        exit_on_error: match h.get(&key("exit_on_error")) {
            Some(v) => boolean(v, "server.on_init.exit_on_error")?,
            None => false,
        },
    })
}

/// `server.user` / `server.group` → the ids workers run with (the group defaults to the user's
/// primary group, so that a worker never keeps root's group).
fn run_as(server: &Hash) -> Result<Option<RunAs>, ConfigError> {
    let name = |field: &str| -> Result<String, ConfigError> {
        match server.get(&key(field)) {
            Some(v) => scalar_string(v, &format!("server.{field}")),
            None => Ok(String::new()),
        }
    };
    let (user, group) = (name("user")?, name("group")?);
    if user.is_empty() && group.is_empty() {
        return Ok(None);
    }
    // SAFETY: geteuid/getegid take no arguments and cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let (uid, mut gid) = if user.is_empty() {
        (euid, egid)
    } else {
        lookup_user(&user, "server.user")?
    };
    if !group.is_empty() {
        gid = lookup_group(&group)?;
    }
    let ids = RunAs { uid, gid };
    if !user.is_empty() {
        check_root(ids, "server.user", &user)?;
    }
    if !group.is_empty() {
        check_root(ids, "server.group", &group)?;
    }
    Ok(Some(ids))
}

/// Switching identity needs root, unless the ids are pier's own.
fn check_root(ids: RunAs, key: &str, name: &str) -> Result<RunAs, ConfigError> {
    // SAFETY: geteuid/getegid take no arguments and cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 && (ids.uid != euid || ids.gid != egid) {
        return Err(ConfigError::NotRoot {
            key: key.into(),
            name: name.into(),
            uid: euid,
        });
    }
    Ok(ids)
}

/// (uid, primary gid) of a user name, through the system's user database (NSS).
fn lookup_user(name: &str, key: &str) -> Result<(u32, u32), ConfigError> {
    lookup_name(name, key, "user", libc::getpwnam_r, |e: &libc::passwd| {
        (e.pw_uid, e.pw_gid)
    })
}

/// The gid of a group name, through the system's group database (NSS).
fn lookup_group(name: &str) -> Result<u32, ConfigError> {
    lookup_name(
        name,
        "server.group",
        "group",
        libc::getgrnam_r,
        |e: &libc::group| e.gr_gid,
    )
}

/// The shape shared by `getpwnam_r` and `getgrnam_r`: name, entry, string buffer, its length,
/// where the found entry goes.
type GetByName<T> = unsafe extern "C" fn(
    *const libc::c_char,
    *mut T,
    *mut libc::c_char,
    libc::size_t,
    *mut *mut T,
) -> libc::c_int;

/// Looks `name` up with one of the reentrant NSS calls and reads the ids wanted with `ids`. The
/// entry's strings go in a buffer that grows while the call says it is too small (a group with
/// many members), up to 1 MiB; `kind` and `key` name the lookup in the error.
fn lookup_name<T, R>(
    name: &str,
    key: &str,
    kind: &'static str,
    get_by_name: GetByName<T>,
    ids: impl FnOnce(&T) -> R,
) -> Result<R, ConfigError> {
    let missing = || ConfigError::NoSuchId {
        key: key.into(),
        kind,
        name: name.into(),
    };
    let c_name = std::ffi::CString::new(name).map_err(|_| missing())?;
    let mut len = 16 * 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        let mut entry = std::mem::MaybeUninit::<T>::uninit();
        let mut found: *mut T = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: `c_name` is NUL-terminated, `entry` and
        // `found` are live locals, `buf` is writable for `buf.len()` bytes.
        let rc = unsafe {
            get_by_name(
                c_name.as_ptr(),
                entry.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && len < 1 << 20 {
            len *= 4;
            continue;
        }
        if rc != 0 || found.is_null() {
            return Err(missing());
        }
        // SAFETY: on success `found` points to `entry`, which the call filled in; its strings
        // point into `buf`, still alive here.
        return Ok(ids(unsafe { &*found }));
    }
}

/// Warns about keys in `h` that are neither `known` nor `unsupported` (RoadRunner keys Pier does
/// not implement yet), naming each by its full path.
fn check_keys(
    h: &Hash,
    path: &str,
    known: &[&str],
    unsupported: &[&str],
    warnings: &mut Vec<String>,
) {
    for k in h.keys() {
        let name = match k {
            Yaml::String(s) => s.clone(),
            Yaml::Integer(i) => i.to_string(),
            other => format!("{other:?}"),
        };
        let full = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        if unsupported.contains(&name.as_str()) {
            warnings.push(format!("{full} is not supported yet (ignored)"));
        } else if !known.contains(&name.as_str()) {
            warnings.push(format!("unknown key {full} (ignored)"));
        }
    }
}

fn hash<'a>(v: &'a Yaml, path: &str) -> Result<&'a Hash, ConfigError> {
    match v {
        Yaml::Hash(h) => Ok(h),
        _ => Err(ConfigError::Invalid {
            key: if path.is_empty() {
                "(top level)".into()
            } else {
                path.into()
            },
            problem: "expected a mapping of keys".into(),
        }),
    }
}

fn scalar_string(v: &Yaml, path: &str) -> Result<String, ConfigError> {
    match v {
        Yaml::String(s) | Yaml::Real(s) => Ok(s.clone()),
        Yaml::Integer(i) => Ok(i.to_string()),
        Yaml::Boolean(b) => Ok(b.to_string()),
        Yaml::Null => Ok(String::new()),
        _ => Err(ConfigError::Invalid {
            key: path.into(),
            problem: "expected a single value".into(),
        }),
    }
}

fn number(v: &Yaml, path: &str) -> Result<u64, ConfigError> {
    let invalid = |shown: String| ConfigError::Invalid {
        key: path.into(),
        problem: format!("{shown} is not a non-negative integer"),
    };
    match v {
        Yaml::Integer(i) => u64::try_from(*i).map_err(|_| invalid(i.to_string())),
        // Values from `${VAR}` or `-o` arrive as strings.
        Yaml::String(s) => s.trim().parse().map_err(|_| invalid(format!("{s:?}"))),
        other => Err(invalid(format!("{other:?}"))),
    }
}

fn command(v: &Yaml, path: &str) -> Result<Vec<String>, ConfigError> {
    match v {
        Yaml::String(s) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Yaml::Array(items) => items.iter().map(|item| scalar_string(item, path)).collect(),
        _ => Err(ConfigError::Invalid {
            key: path.into(),
            problem: "expected a string or a list of strings".into(),
        }),
    }
}

/// One of RoadRunner's pool and server timeouts: absent or zero means 60 s, as RoadRunner
/// documents them ("Zero means 60s"); a zero taken literally would fail every worker start or
/// wait at once.
fn rr_timeout(h: &Hash, path: &str, field: &str) -> Result<Duration, ConfigError> {
    let d = duration_or(h, path, field, DEFAULT_TIMEOUT)?;
    Ok(if d.is_zero() { DEFAULT_TIMEOUT } else { d })
}

fn duration_or(
    h: &Hash,
    path: &str,
    field: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match h.get(&key(field)) {
        None => Ok(default),
        Some(v) => duration(v, &format!("{path}.{field}")),
    }
}

fn duration(v: &Yaml, path: &str) -> Result<Duration, ConfigError> {
    let text = scalar_string(v, path)?;
    parse_duration(&text).ok_or(ConfigError::Duration {
        key: path.into(),
        value: text,
    })
}

fn boolean(v: &Yaml, path: &str) -> Result<bool, ConfigError> {
    match v {
        Yaml::Boolean(b) => Ok(*b),
        // Values from `${VAR}` or `-o` arrive as strings.
        Yaml::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Yaml::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(ConfigError::Invalid {
            key: path.into(),
            problem: format!("{other:?} is not true or false"),
        }),
    }
}

/// Parses a Go duration (`60s`, `1m30s`, `500ms`, `1.5h`, `0`), as RoadRunner reads them. A bare
/// number other than 0 is refused: Go would read it as nanoseconds, which is never what was meant.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * unit;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Sets `dotted.key` in the tree, creating mappings on the way (as `rr serve -o` does).
fn set_path(root: &mut Yaml, dotted: &str, value: Yaml) {
    let mut node = root;
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        if !matches!(node, Yaml::Hash(_)) {
            *node = Yaml::Hash(Hash::new());
        }
        let Yaml::Hash(h) = node else { return };
        if parts.peek().is_none() {
            h.insert(key(part), value);
            return;
        }
        node = h.entry(key(part)).or_insert(Yaml::Hash(Hash::new()));
    }
}

fn expand_tree(node: &mut Yaml, env: &dyn Fn(&str) -> Option<String>) {
    match node {
        Yaml::String(s) if s.contains('$') => *s = expand(s, env),
        Yaml::Array(items) => items.iter_mut().for_each(|i| expand_tree(i, env)),
        Yaml::Hash(h) => h.values_mut().for_each(|v| expand_tree(v, env)),
        _ => {}
    }
}

/// Expands `${VAR}`, `${VAR:-default}` and `$VAR`; an unset variable becomes empty (as in
/// RoadRunner). A `$` not followed by a name stays as it is.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            if let Some(end) = inner.find('}') {
                let body = &inner[..end];
                let (name, default) = match body.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (body, None),
                };
                let value = env(name).filter(|v| !v.is_empty());
                out.push_str(&value.or(default.map(str::to_owned)).unwrap_or_default());
                rest = &inner[end + 1..];
                continue;
            }
        }
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len == 0 {
            out.push('$');
            rest = after;
            continue;
        }
        out.push_str(&env(&after[..name_len]).unwrap_or_default());
        rest = &after[name_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("7001".into()),
            "WORKERS" => Some("3".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &[], &env)
    }

    const MINIMAL: &str = "version: '3'\nserver:\n  command: php worker.php\ntcp:\n  servers:\n    smtp:\n      addr: 127.0.0.1:0\n";

    #[test]
    fn roadrunner_layout_with_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.servers.len(), 1);
        let s = &c.servers[0];
        assert_eq!(
            (s.name.as_str(), s.addr.as_str(), &s.framing),
            ("smtp", "127.0.0.1:0", &Framing::Delimiter(b"\r\n".to_vec()))
        );
        assert_eq!(s.max_packet_size, 1 << 20);
        assert_eq!(s.max_state_size, 65536);
        assert_eq!(s.max_write_buffer, 1 << 20);
        assert_eq!(s.write_timeout, Duration::from_secs(60));
        assert_eq!(c.rpc, None);
        assert_eq!(c.pool.command, ["php", "worker.php"]);
        assert_eq!(c.pool.allocate_timeout, Duration::from_secs(60));
        assert_eq!(c.pool.max_jobs, 0);
        assert_eq!(c.pool.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        assert!(c.pool.num_workers >= 1);
        assert_eq!(c.read_buf_size, 1 << 20);
        assert_eq!(c.io_threads, 1);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            r#"
version: "3"
server:
  command: ["php", "a b.php"]
  env: { APP: "x", N: 5 }
  relay: pipes
logs: { level: debug, encoding: json }
tcp:
  read_buf_size: 2
  io_threads: 3
  servers:
    a: { addr: "tcp://127.0.0.1:${PORT}", delimiter: "--end--", max_packet_size: 64, max_state_size: 9, max_write_buffer: 4096, write_timeout: 2s }
    b: { addr: "[::1]:0", delimiter: "\n" }
    c: { addr: ":${NOPE:-7002}" }
  pool:
    command: "php other.php"
    num_workers: ${WORKERS}
    max_jobs: 10
    allocate_timeout: 1m30s
    destroy_timeout: 500ms
"#,
        )
        .unwrap();
        assert_eq!(c.pool.command, ["php", "other.php"]);
        assert_eq!(
            c.pool.env,
            [("APP".into(), "x".into()), ("N".into(), "5".into())]
        );
        assert_eq!(c.pool.num_workers, 3);
        assert_eq!(c.pool.max_jobs, 10);
        assert_eq!(c.pool.allocate_timeout, Duration::from_secs(90));
        assert_eq!(c.pool.destroy_timeout, Duration::from_millis(500));
        assert_eq!(c.read_buf_size, 2 << 20);
        assert_eq!(c.io_threads, 3);
        assert_eq!(c.logs.level, "debug");
        assert_eq!(c.logs.encoding, LogEncoding::Json);
        let addrs: Vec<_> = c.servers.iter().map(|s| s.addr.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1:7001", "[::1]:0", "0.0.0.0:7002"]);
        assert_eq!(
            c.servers[0].framing,
            Framing::Delimiter(b"--end--".to_vec())
        );
        assert_eq!(c.servers[0].max_packet_size, 64);
        assert_eq!(c.servers[0].max_state_size, 9);
        assert_eq!(c.servers[1].framing, Framing::Delimiter(b"\n".to_vec()));
        assert_eq!(c.servers[0].max_write_buffer, 4096);
        assert_eq!(c.servers[0].write_timeout, Duration::from_secs(2));
    }

    #[test]
    fn supervision_relay_process_and_log_keys_are_read() {
        let c = parse(
            r#"
version: "3"
server:
  command: "php w.php"
  relay: "unix:///tmp/pier.sock"
  relay_timeout: 5s
  on_init: { command: "php init.php", exec_timeout: 2s, env: { A: b } }
endure: { grace_period: 7s, print_graph: false }
logs: { mode: production, output: stdout, err_output: /tmp/e.log }
tcp:
  servers: { a: { addr: "127.0.0.1:0" } }
  pool:
    max_queue_size: 12
    max_in_flight: 4
    reset_timeout: 3s
    supervisor: { watch_tick: 100ms, ttl: 1h, idle_ttl: 10s, exec_ttl: 2s, max_worker_memory: 64 }
    dynamic_allocator: { max_workers: 5, spawn_rate: 2, idle_timeout: 30s }
"#,
        )
        .unwrap();
        let p = &c.pool;
        assert_eq!(p.relay, RelayConfig::Unix("/tmp/pier.sock".into()));
        assert_eq!(p.relay_timeout, Duration::from_secs(5));
        assert_eq!(p.max_queue_size, 12);
        assert_eq!(p.max_in_flight, 4);
        assert_eq!(p.reset_timeout, Duration::from_secs(3));
        assert_eq!(
            p.supervisor,
            SupervisorConfig {
                watch_tick: Duration::from_millis(100),
                ttl: Duration::from_secs(3600),
                idle_ttl: Duration::from_secs(10),
                exec_ttl: Duration::from_secs(2),
                max_worker_memory: 64 << 20,
            }
        );
        assert_eq!(
            p.dynamic,
            Some(DynamicConfig {
                max_workers: 5,
                spawn_rate: 2,
                idle_timeout: Duration::from_secs(30)
            })
        );
        assert_eq!(c.grace_period, Duration::from_secs(7));
        let init = c.on_init.unwrap();
        assert_eq!(init.command, ["php", "init.php"]);
        assert_eq!(init.exec_timeout, Duration::from_secs(2));
        assert_eq!(init.env, [("A".into(), "b".into())]);
        assert!(!init.exit_on_error, "RoadRunner's default");
        assert_eq!(c.logs.encoding, LogEncoding::Json);
        assert_eq!(c.logs.output, LogOutput::Stdout);
        assert_eq!(c.logs.err_output, LogOutput::File("/tmp/e.log".into()));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let tcp = parse(&format!("{MINIMAL}  pool: {{}}\nendure: {{}}\n")).unwrap();
        assert_eq!(tcp.pool.relay, RelayConfig::Pipes);
        assert_eq!(tcp.grace_period, Duration::from_secs(30));
        let tcp = Config::parse(MINIMAL, &["server.relay=tcp://127.0.0.1:0".into()], &env).unwrap();
        assert_eq!(tcp.pool.relay, RelayConfig::Tcp("127.0.0.1:0".into()));
    }

    #[test]
    fn overrides_win_and_create_keys() {
        let c = Config::parse(
            MINIMAL,
            &[
                "tcp.pool.num_workers=2".into(),
                "tcp.servers.smtp.addr=127.0.0.1:9".into(),
                "tcp.servers.extra.addr=127.0.0.1:10".into(),
            ],
            &env,
        )
        .unwrap();
        assert_eq!(c.pool.num_workers, 2);
        assert_eq!(c.servers[0].addr, "127.0.0.1:9");
        assert_eq!(c.servers[1].name, "extra");
        assert!(matches!(
            Config::parse(MINIMAL, &["nope".into()], &env),
            Err(ConfigError::Override(_))
        ));
    }

    #[test]
    fn unknown_keys_are_warnings_with_their_path() {
        let c = parse(&format!(
            "{MINIMAL}      colour: red\n  pool:\n    supervisor: {{colour: 1}}\nrpcx:\n  listen: x\n"
        ))
        .unwrap();
        assert_eq!(
            c.warnings,
            [
                "unknown key rpcx (ignored)",
                "unknown key tcp.servers.smtp.colour (ignored)",
                "unknown key tcp.pool.supervisor.colour (ignored)",
            ]
        );
    }

    /// RoadRunner's pool and logger keys Pier has nothing behind: each is refused with a message
    /// when its value asks for something Pier does not do, accepted when it asks for nothing
    /// (RoadRunner's default), and never dropped without a word.
    #[test]
    fn roadrunner_keys_without_an_effect_are_refused_or_explained() {
        let refused = [
            (
                "server:\n  command: x\n  after_init: {command: 'php warm.php'}\n",
                "server.after_init is not supported: Pier runs server.on_init before the workers start, but nothing after",
            ),
            (
                "server: {command: x}\ntcp: {servers: {a: {addr: 'x:1'}}, pool: {debug: true}}\n",
                "tcp.pool.debug is not supported: Pier has no debug pool; set tcp.pool.max_jobs: 1",
            ),
            (
                "server: {command: x}\nlogs: {line_ending: \"\\r\\n\"}\n",
                "logs.line_ending is not supported: Pier ends every log line with \\n",
            ),
            (
                "server: {command: x}\ntcp: {servers: {a: {addr: 'x:1'}}, pool: {stream_timeout: soon}}\n",
                "invalid duration for tcp.pool.stream_timeout: \"soon\"",
            ),
        ];
        for (yaml, want) in refused {
            let yaml = if yaml.contains("tcp:") {
                format!("version: '3'\n{yaml}")
            } else {
                format!("version: '3'\n{yaml}tcp: {{servers: {{a: {{addr: 'x:1'}}}}}}\n")
            };
            let err = parse(&yaml).unwrap_err().to_string();
            assert!(err.starts_with(want), "{yaml}: {err}");
        }
        let accepted = parse(&format!(
            "{MINIMAL}  pool:\n    debug: false\n    stream_timeout: 30s\nlogs: {{line_ending: \"\\n\"}}\n"
        ))
        .unwrap();
        assert_eq!(
            accepted.warnings,
            ["tcp.pool.stream_timeout has no effect: TCP workers never stream a response (RoadRunner's TCP plugin ignores it too)"]
        );
    }

    #[test]
    fn on_init_exit_on_error_is_read_both_ways_and_must_be_a_boolean() {
        for (value, want) in [("true", true), ("false", false)] {
            let c = parse(&format!(
                "version: '3'\nserver: {{command: x, on_init: {{command: y, exit_on_error: {value}}}}}\ntcp: {{servers: {{a: {{addr: 'x:1'}}}}}}\n"
            ))
            .unwrap();
            assert!(c.warnings.is_empty(), "{:?}", c.warnings);
            assert_eq!(c.on_init.unwrap().exit_on_error, want, "{value}");
        }
        let err = parse(
            "version: '3'\nserver: {command: x, on_init: {command: y, exit_on_error: often}}\ntcp: {servers: {a: {addr: 'x:1'}}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("server.on_init.exit_on_error"), "{err}");
    }

    /// RoadRunner's pool and server timeouts: "Zero means 60s". Taken literally, a zero
    /// `allocate_timeout` would fail every worker's start.
    #[test]
    fn zero_roadrunner_timeouts_mean_a_minute_and_spawn_rate_defaults_to_five() {
        let c = parse(
            "version: '3'\nserver: {command: x, relay_timeout: 0, on_init: {command: y, exec_timeout: 0s}}\ntcp:\n  servers: {a: {addr: 'x:1'}}\n  pool: {allocate_timeout: 0, destroy_timeout: 0s, reset_timeout: 0, dynamic_allocator: {idle_timeout: 0}}\n",
        )
        .unwrap();
        let minute = Duration::from_secs(60);
        let p = &c.pool;
        assert_eq!(
            (
                p.relay_timeout,
                p.allocate_timeout,
                p.destroy_timeout,
                p.reset_timeout
            ),
            (minute, minute, minute, minute)
        );
        assert_eq!(c.on_init.as_ref().map(|o| o.exec_timeout), Some(minute));
        let dynamic = p.dynamic.as_ref().expect("dynamic_allocator set");
        assert_eq!(
            (
                dynamic.max_workers,
                dynamic.spawn_rate,
                dynamic.idle_timeout
            ),
            (10, 5, minute)
        );
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "version: '3'\nserver: {command: x}\ntcp: {servers: {}}\n",
                "no servers registered (tcp.servers is empty)",
            ),
            (
                "version: '3'\nserver: {command: x}\ntcp: {servers: {smtp: {delimiter: x}}}\n",
                "empty address for the server: smtp",
            ),
            (
                "version: '3'\nserver: {command: x}\ntcp: {servers: {a: {addr: 'x:1'}}, pool: {allocate_timeout: 6o s}}\n",
                "invalid duration for tcp.pool.allocate_timeout: \"6o s\"",
            ),
            (
                "version: '3'\nserver: {command: x}\ntcp: {servers: {a: {addr: 'x:1'}}, pool: {max_in_flight: 0}}\n",
                "invalid value for tcp.pool.max_in_flight: must be 1 to 1024",
            ),
            (
                "version: '2.7'\n",
                "could not read config: version is \"2.7\"; only version \"3\" (RoadRunner v3 layout) is supported",
            ),
            (
                "server: {command: x}\n",
                "could not read config: version is missing; only version \"3\" (RoadRunner v3 layout) is supported",
            ),
            (
                "version: '3'\ntcp: {servers: {a: {addr: 'x:1'}}}\n",
                "no worker command: set server.command (or tcp.pool.command)",
            ),
            (
                "version: '3'\nserver: {command: x}\ntcp: {servers: {a: {addr: 'x:1'}}, pool: {num_workers: many}}\n",
                "invalid value for tcp.pool.num_workers: \"many\" is not a non-negative integer",
            ),
            (
                "version: '3'\nserver: {command: x, relay: 'tcp://127.0.0.1'}\ntcp: {servers: {a: {addr: 'x:1'}}}\n",
                "invalid value for server.relay: \"tcp://127.0.0.1\" is not pipes, tcp://host:port or unix:///path",
            ),
            (
                "version: '3'\nserver: {command: x, user: no-such-user-here}\ntcp: {servers: {a: {addr: 'x:1'}}}\n",
                "invalid value for server.user: no user named \"no-such-user-here\" on this system",
            ),
            (
                "version: '3'\nserver: {command: x}\nlogs: {file_logger_options: {max_size: 10}}\ntcp: {servers: {a: {addr: 'x:1'}}}\n",
                "logs.file_logger_options.max_size is not supported: Pier appends to log_output and does not rotate it; rotate with logrotate (copytruncate) and remove this key",
            ),
            (
                "version: '3'\nserver: {command: x}\nlogs: {mode: loud}\ntcp: {servers: {a: {addr: 'x:1'}}}\n",
                "invalid value for logs.mode: \"loud\" is not one of development, production, raw, off, none",
            ),
            (
                "version: '3'\nserver: {command: x}\ntcp: {servers: {a: {addr: 'x:1'}}, pool: {dynamic_allocator: {max_workers: 101}}}\n",
                "invalid value for tcp.pool.dynamic_allocator.max_workers: 101 is over 100 (RoadRunner's limit)",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
    }

    fn framing_of(entry: &str) -> Result<Framing, ConfigError> {
        let text = format!(
            "version: '3'\nserver: {{command: x}}\ntcp: {{servers: {{s: {{addr: 'x:1', {entry}}}}}}}\n"
        );
        parse(&text).map(|c| c.servers[0].framing.clone())
    }

    #[test]
    fn framing_modes_and_their_defaults() {
        let lf = |offset, size, endian, adjustment, strip| {
            Framing::LengthField(LengthField {
                offset,
                size,
                endian,
                adjustment,
                strip,
            })
        };
        let cases: Vec<(&str, Framing)> = vec![
            ("delimiter: \"\\n\"", Framing::Delimiter(b"\n".to_vec())),
            ("framing: delimiter", Framing::Delimiter(b"\r\n".to_vec())),
            ("framing: raw", Framing::Raw),
            ("framing: {mode: raw}", Framing::Raw),
            (
                "framing: length_field",
                lf(0, 4, Endian::Big, 0, Strip::Bytes(0)),
            ),
            (
                "framing: {mode: length_field, length_offset: 2, length_size: 3, endian: little, length_adjustment: -5, strip: 2}",
                lf(2, 3, Endian::Little, -5, Strip::Bytes(2)),
            ),
            (
                "framing: {mode: length_field, length_size: 8, strip: header}",
                lf(0, 8, Endian::Big, 0, Strip::Header),
            ),
            (
                "framing: {mode: varint, length_offset: 1}",
                Framing::Varint(Varint {
                    offset: 1,
                    max_bytes: 4,
                    adjustment: 0,
                    strip: Strip::Bytes(0),
                }),
            ),
            (
                "framing: {mode: varint, length_size: 10, strip: header, length_adjustment: 2}",
                Framing::Varint(Varint {
                    offset: 0,
                    max_bytes: 10,
                    adjustment: 2,
                    strip: Strip::Header,
                }),
            ),
            ("framing: {mode: fixed, size: 16}", Framing::Fixed(16)),
        ];
        for (entry, want) in cases {
            assert_eq!(framing_of(entry).unwrap(), want, "{entry}");
        }
        // `-o` values arrive as strings.
        let c = Config::parse(
            MINIMAL,
            &[
                "tcp.servers.smtp.framing.mode=length_field".into(),
                "tcp.servers.smtp.framing.length_size=2".into(),
                "tcp.servers.smtp.framing.strip=header".into(),
            ],
            &env,
        )
        .unwrap();
        assert_eq!(
            c.servers[0].framing,
            lf(0, 2, Endian::Big, 0, Strip::Header)
        );
    }

    #[test]
    fn framing_errors_name_the_key() {
        let p = "invalid value for tcp.servers.s.framing";
        let cases: &[(&str, &str)] = &[
            ("framing: lines", &format!("{p}: \"lines\" is not one of delimiter, length_field, varint, fixed, raw")),
            ("framing: {mode: chunks}", &format!("{p}.mode: \"chunks\" is not one of")),
            ("framing: {length_size: 2}", &format!("{p}.mode: missing")),
            ("framing: {mode: length_field, length_size: 5}", &format!("{p}.length_size: 5 is not one of 1, 2, 3, 4, 8")),
            ("framing: {mode: length_field, length_size: -1}", &format!("{p}.length_size: -1 is negative")),
            (
                "max_packet_size: 8, framing: {mode: length_field, length_offset: 6}",
                &format!("{p}.length_offset: the length field (bytes 6..10) ends past max_packet_size 8"),
            ),
            (
                "framing: {mode: length_field, length_size: 2, strip: 3}",
                &format!("{p}.strip: 3 is longer than the header (2 bytes)"),
            ),
            ("framing: {mode: length_field, endian: middle}", &format!("{p}.endian: \"middle\" is not big or little")),
            ("framing: {mode: length_field, length_adjustment: x}", &format!("{p}.length_adjustment: \"x\" is not an integer")),
            (
                "max_packet_size: 100, framing: {mode: length_field, length_adjustment: 100}",
                &format!("{p}.length_adjustment: the smallest frame (104 bytes) is over max_packet_size 100"),
            ),
            ("framing: {mode: varint, length_size: 11}", &format!("{p}.length_size: 11 is not between 1 and 10")),
            (
                "framing: {mode: varint, length_offset: 1, strip: 2}",
                &format!("{p}.strip: 2 is longer than the bytes before the varint (1 bytes)"),
            ),
            (
                "max_packet_size: 4, framing: {mode: varint, length_offset: 4}",
                &format!("{p}.length_offset: the varint (from byte 4) starts past max_packet_size 4"),
            ),
            ("framing: {mode: varint, endian: big}", &format!("{p}.endian: not used by framing mode varint")),
            ("framing: {mode: fixed}", &format!("{p}.size: missing")),
            ("framing: {mode: fixed, size: 0}", &format!("{p}.size: 0 is not between 1 and max_packet_size 1048576")),
            ("max_packet_size: 8, framing: {mode: fixed, size: 9}", &format!("{p}.size: 9 is not between 1 and max_packet_size 8")),
            ("framing: {mode: raw, size: 9}", &format!("{p}.size: not used by framing mode raw")),
            (
                "delimiter: x, framing: raw",
                "invalid value for tcp.servers.s.delimiter: only used by framing mode delimiter, not raw",
            ),
        ];
        for (entry, want) in cases {
            let err = framing_of(entry).unwrap_err().to_string();
            assert!(err.starts_with(want), "{entry}: {err}");
        }
    }

    #[test]
    fn limits_and_operations_keys() {
        let c = parse(&format!(
            "{MINIMAL}      max_connections: 100\n      max_connections_per_ip: 5\n      accept_rate_per_ip: 20\n      idle_timeout: 5m\n      tcp_keepalive: {{ time: 30s, retries: 3 }}\nmetrics:\n  address: 127.0.0.1:2112\nstatus:\n  address: 'localhost:2114'\n  unavailable_status_code: 500\n"
        ))
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let l = &c.servers[0].limits;
        assert_eq!(
            (
                l.max_connections,
                l.max_connections_per_ip,
                l.accept_rate_per_ip
            ),
            (100, 5, 20)
        );
        assert_eq!(l.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(
            l.keepalive,
            Some(KeepaliveConfig {
                time: Duration::from_secs(30),
                interval: Duration::from_secs(15),
                retries: 3
            })
        );
        assert_eq!(c.metrics.unwrap().address, "127.0.0.1:2112");
        let status = c.status.unwrap();
        assert_eq!(status.listener.address, "localhost:2114");
        assert_eq!(status.unavailable_status_code, 500);

        // Defaults: no limits, keep-alive as Go's listener, no endpoints.
        let c = parse(MINIMAL).unwrap();
        assert_eq!(
            c.servers[0].limits,
            LimitsConfig {
                keepalive: Some(DEFAULT_KEEPALIVE),
                ..LimitsConfig::default()
            }
        );
        assert!(c.metrics.is_none() && c.status.is_none());
        let off = parse(&format!(
            "{MINIMAL}      tcp_keepalive: false\n      idle_timeout: 0\n"
        ))
        .unwrap();
        assert_eq!(off.servers[0].limits, LimitsConfig::default());
        assert_eq!(
            parse(&format!("{MINIMAL}metrics: {{ collect: {{}} }}\n"))
                .unwrap()
                .warnings,
            ["metrics.collect is not supported yet (ignored)"]
        );
    }

    #[test]
    fn operations_listeners_stay_on_loopback_unless_allowed() {
        for (addr, ok) in [
            ("127.0.0.1:2112", true),
            ("127.8.0.1:2112", true),
            ("'[::1]:2112'", true),
            ("localhost:2112", true),
            ("0.0.0.0:2112", false),
            ("':2112'", false),
            ("10.0.0.5:2112", false),
            ("'[::]:2112'", false),
            ("metrics.example.com:2112", false),
        ] {
            let text = format!("{MINIMAL}metrics:\n  address: {addr}\n");
            match parse(&text) {
                Ok(_) => assert!(ok, "{addr} accepted"),
                Err(e) => {
                    assert!(!ok, "{addr}: {e}");
                    assert!(
                        e.to_string().contains("set metrics.allow_remote: true"),
                        "{e}"
                    );
                }
            }
        }
        let allowed = parse(&format!(
            "{MINIMAL}status:\n  address: 0.0.0.0:2114\n  allow_remote: true\n"
        ))
        .unwrap();
        assert_eq!(allowed.status.unwrap().listener.address, "0.0.0.0:2114");
        let err = parse(&format!("{MINIMAL}status:\n  address: ':2114'\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "status.address \"0.0.0.0:2114\" is reachable from other hosts, and it has no authentication: use a loopback address (127.0.0.1, [::1], localhost), or set status.allow_remote: true if a firewall or network policy guards it"
        );
    }

    #[test]
    fn bad_limits_name_their_key() {
        for (extra, want) in [
            (
                "      idle_timeout: 10\n",
                "invalid duration for tcp.servers.smtp.idle_timeout: \"10\"",
            ),
            (
                "      tcp_keepalive: { retries: 0 }\n",
                "invalid value for tcp.servers.smtp.tcp_keepalive.retries: 0 is not between 1 and 127",
            ),
            (
                "      tcp_keepalive: { time: 10ms }\n",
                "invalid value for tcp.servers.smtp.tcp_keepalive.time: must be at least 1s (the kernel counts whole seconds)",
            ),
            (
                "      max_connections: -1\n",
                "invalid value for tcp.servers.smtp.max_connections: -1 is not a non-negative integer",
            ),
            (
                "status: { address: '127.0.0.1:1', unavailable_status_code: 42 }\n",
                "invalid value for status.unavailable_status_code: 42 is not an HTTP status code (100..=599)",
            ),
        ] {
            let err = parse(&format!("{MINIMAL}{extra}")).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn cluster_section() {
        let with = |body: &str| parse(&format!("{MINIMAL}cluster:\n{body}"));
        assert_eq!(parse(MINIMAL).unwrap().cluster, None);
        let c = with("  bus: redis://127.0.0.1:6379\n").unwrap();
        assert_eq!(
            c.cluster,
            Some(ClusterConfig {
                bus: "redis://127.0.0.1:6379".into(),
                tls: None,
                node: None,
                prefix: "pier".into(),
                request_timeout: Duration::from_secs(1),
                max_nodes: DEFAULT_CLUSTER_MAX_NODES,
            })
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = with("  bus: nats://10.0.0.5:4222\n  node: eu-1.a_b\n  prefix: chat-prod\n  request_timeout: 250ms\n  max_nodes: 7\n  colour: red\n").unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.max_nodes, 7);
        assert_eq!(cluster.node.as_deref(), Some("eu-1.a_b"));
        assert_eq!(cluster.prefix, "chat-prod");
        assert_eq!(cluster.request_timeout, Duration::from_millis(250));
        assert_eq!(c.warnings, ["unknown key cluster.colour (ignored)"]);
        // Keys without a bus: a single instance, said so.
        let c = with("  node: a\n").unwrap();
        assert_eq!(c.cluster, None);
        assert!(
            c.warnings[0].contains("cluster.bus is not set"),
            "{:?}",
            c.warnings
        );
        for (body, key) in [
            ("  bus: http://x:1\n", "cluster.bus"),
            ("  bus: redis://\n", "cluster.bus"),
            ("  bus: rediss://h:1/#insecure\n", "cluster.bus"),
            ("  bus: redis://h:1\n  node: a b\n", "cluster.node"),
            ("  bus: redis://h:1\n  node: a*\n", "cluster.node"),
            ("  bus: redis://h:1\n  prefix: a.b\n", "cluster.prefix"),
            (
                "  bus: redis://h:1\n  request_timeout: 0\n",
                "cluster.request_timeout",
            ),
            (
                "  bus: redis://h:1\n  request_timeout: soon\n",
                "cluster.request_timeout",
            ),
            (
                "  bus: redis://h:1\n  max_nodes: 0\n",
                "invalid value for cluster.max_nodes: 0 is not 1..=4096",
            ),
            (
                "  bus: redis://h:1\n  max_nodes: 5000\n",
                "invalid value for cluster.max_nodes: 5000 is not 1..=4096",
            ),
            (
                "  bus: redis://h:1\n  max_nodes: many\n",
                "invalid value for cluster.max_nodes: \"many\" is not a non-negative integer",
            ),
        ] {
            let err = with(body).unwrap_err().to_string();
            assert!(err.contains(key), "{body}: {err}");
        }
        let long = "n".repeat(MAX_NODE_ID + 1);
        assert!(with(&format!("  bus: redis://h:1\n  node: {long}\n")).is_err());
        // A password in a bad URL is not repeated.
        let err = with("  bus: http://u:s3cret@h:1\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn cluster_tls_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["bus".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (ca, crt, pem_key, empty) = (
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("c.key"),
            dir.path().join("empty.pem"),
        );
        std::fs::write(&ca, cert.pem()).unwrap();
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem_key, key.serialize_pem()).unwrap();
        std::fs::write(&empty, "").unwrap();
        let with = |bus: &str, tls: &str| {
            parse(&format!("{MINIMAL}cluster:\n  bus: {bus}\n  tls:\n{tls}"))
        };
        let c = with(
            "rediss://:pw@h:6380",
            &format!("    ca: {ca:?}\n    cert: {crt:?}\n    key: {pem_key:?}\n"),
        )
        .unwrap();
        // Each file as read at load: the bus client uses this text, it reads no file itself.
        let BusTls {
            ca: Some(ca_file),
            client: Some((cert_file, key_file)),
        } = c.cluster.unwrap().tls.unwrap()
        else {
            panic!("cluster.tls without its CA or client certificate");
        };
        for (file, path, text) in [
            (&ca_file, &ca, cert.pem()),
            (&cert_file, &crt, cert.pem()),
            (&key_file, &pem_key, key.serialize_pem()),
        ] {
            assert_eq!((&file.path, &file.pem[..]), (path, text.as_bytes()));
            // Debug shows where a file came from, never its text (a key is secret).
            assert_eq!(format!("{file:?}"), format!("PemFile({})", path.display()));
        }
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = with("tls://h:4222", &format!("    ca: {ca:?}\n")).unwrap();
        assert_eq!(c.cluster.unwrap().tls.unwrap().client, None);
        // Without a bus URL scheme for TLS, and with files that are not usable: errors naming
        // the key.
        let missing = dir.path().join("missing.pem");
        for (bus, tls, want) in [
            ("redis://h:1", format!("    ca: {ca:?}\n"), "cluster.tls"),
            ("nats://h:1", format!("    ca: {ca:?}\n"), "cluster.tls"),
            (
                "rediss://h:1",
                format!("    ca: {missing:?}\n"),
                "cluster.tls.ca",
            ),
            (
                "rediss://h:1",
                format!("    ca: {empty:?}\n"),
                "cluster.tls.ca",
            ),
            (
                "tls://h:1",
                format!("    cert: {crt:?}\n"),
                "cluster.tls.key",
            ),
            (
                "tls://h:1",
                format!("    key: {pem_key:?}\n"),
                "cluster.tls.cert",
            ),
            (
                "tls://h:1",
                format!("    cert: {crt:?}\n    key: {ca:?}\n"),
                "cluster.tls.key",
            ),
        ] {
            let err = with(bus, &tls).unwrap_err().to_string();
            assert!(err.contains(want), "{bus} {tls}: {err}");
        }
    }

    #[test]
    fn rpc_listen_loopback_or_unix_unless_allowed() {
        let with = |rpc: &str| parse(&format!("{MINIMAL}rpc:\n{rpc}"));
        let ok: &[(&str, RpcAddr)] = &[
            (
                "  listen: tcp://127.0.0.1:6001\n",
                RpcAddr::Tcp("127.0.0.1:6001".into()),
            ),
            (
                "  listen: tcp://localhost:0\n",
                RpcAddr::Tcp("localhost:0".into()),
            ),
            (
                "  listen: 'tcp://[::1]:6001'\n",
                RpcAddr::Tcp("[::1]:6001".into()),
            ),
            (
                "  listen: unix:///tmp/rr.sock\n",
                RpcAddr::Unix("/tmp/rr.sock".into()),
            ),
            (
                "  listen: tcp://0.0.0.0:6001\n  allow_remote: true\n",
                RpcAddr::Tcp("0.0.0.0:6001".into()),
            ),
        ];
        for (text, addr) in ok {
            let c = with(text).unwrap();
            assert_eq!(c.rpc.as_ref().map(|r| &r.addr), Some(addr), "{text}");
        }
        assert_eq!(
            with("  listen: tcp://127.0.0.1:6001\n")
                .unwrap()
                .rpc
                .unwrap()
                .listen,
            "tcp://127.0.0.1:6001"
        );
        for bad in [
            "  listen: tcp://0.0.0.0:6001\n",
            "  listen: tcp://:6001\n",
            "  listen: tcp://10.1.2.3:6001\n",
            "  listen: tcp://example.com:6001\n",
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("is not a loopback address"), "{bad}: {err}");
            assert!(err.contains("rpc.allow_remote: true"), "{err}");
        }
        for bad in [
            "  listen: 127.0.0.1:6001\n",
            "  listen: tcp://127.0.0.1\n",
            "  listen: 'unix://'\n",
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(
                err.contains("is not tcp://host:port or unix:///path"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn durations_as_go_writes_them() {
        let ok: &[(&str, u64)] = &[
            ("60s", 60_000),
            ("1m", 60_000),
            ("500ms", 500),
            ("1m30s", 90_000),
            ("1.5h", 5_400_000),
            ("0", 0),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_millis(*ms)),
                "{text}"
            );
        }
        for bad in ["", "60", "6o s", "s", "1x", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn env_expansion_forms() {
        let cases = [
            ("${PORT}", "7001"),
            ("$PORT/x", "7001/x"),
            ("${NOPE:-def}", "def"),
            ("${EMPTY:-def}", "def"),
            ("${NOPE}", ""),
            ("a$", "a$"),
            ("$ 1", "$ 1"),
            ("${PORT:-1}${WORKERS}", "70013"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &env), want, "{input}");
        }
    }

    #[test]
    fn tls_and_proxy_protocol_keys() {
        let c = parse(&format!(
            "{MINIMAL}      tls:\n        mode: starttls\n        cert: a.crt\n        key: a.key\n        sni:\n          - {{ cert: b.crt, key: b.key }}\n        client_ca: ca.pem\n        client_auth: optional\n        min_version: \"1.3\"\n        handshake_timeout: 2s\n      proxy_protocol:\n        trusted: [10.0.0.0/8, \"::1\"]\n        timeout: 1s\n"
        ))
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let s = &c.servers[0];
        let tls = s.tls.as_ref().unwrap();
        assert_eq!(tls.mode, TlsMode::Starttls);
        assert_eq!(tls.default.cert, PathBuf::from("a.crt"));
        assert_eq!(tls.default.origin, "tcp.servers.smtp.tls");
        assert_eq!(tls.sni[0].key, PathBuf::from("b.key"));
        assert_eq!(tls.sni[0].origin, "tcp.servers.smtp.tls.sni.0");
        assert_eq!(tls.client_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(tls.client_auth, ClientAuth::Optional);
        assert!(tls.tls13_only);
        assert_eq!(tls.handshake_timeout, Duration::from_secs(2));
        let proxy = s.proxy_protocol.as_ref().unwrap();
        assert_eq!(proxy.trusted.len(), 2);
        assert_eq!(proxy.timeout, Duration::from_secs(1));

        let c = parse(&format!(
            "{MINIMAL}      tls: {{ cert: a.crt, key: a.key }}\n      proxy_protocol: {{ trusted: 127.0.0.1/32 }}\n"
        ))
        .unwrap();
        let tls = c.servers[0].tls.as_ref().unwrap();
        assert_eq!(tls.mode, TlsMode::Implicit);
        assert!(!tls.tls13_only);
        assert_eq!(tls.handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT);
        assert_eq!(
            c.servers[0].proxy_protocol.as_ref().unwrap().timeout,
            DEFAULT_PROXY_TIMEOUT
        );
    }

    #[test]
    fn bad_tls_and_proxy_values_name_their_key() {
        let cases = [
            ("tls: { key: a.key }", "tcp.servers.smtp.tls.cert"),
            ("tls: { cert: a.crt }", "tcp.servers.smtp.tls.key"),
            (
                "tls: { cert: a, key: b, mode: sometimes }",
                "tcp.servers.smtp.tls.mode",
            ),
            (
                "tls: { cert: a, key: b, min_version: \"1.1\" }",
                "tcp.servers.smtp.tls.min_version",
            ),
            (
                "tls: { cert: a, key: b, client_auth: optional }",
                "tcp.servers.smtp.tls.client_auth",
            ),
            (
                "tls: { cert: a, key: b, handshake_timeout: 0 }",
                "tcp.servers.smtp.tls.handshake_timeout",
            ),
            (
                "tls: { cert: a, key: b, sni: x }",
                "tcp.servers.smtp.tls.sni",
            ),
            (
                "proxy_protocol: { trusted: [300.0.0.0/8] }",
                "tcp.servers.smtp.proxy_protocol.trusted",
            ),
            (
                "proxy_protocol: { timeout: 1s }",
                "tcp.servers.smtp.proxy_protocol.trusted",
            ),
        ];
        for (yaml, key) in cases {
            let err = parse(&format!("{MINIMAL}      {yaml}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{yaml}: {err}");
        }
        let c = parse(&format!(
            "{MINIMAL}      tls: {{ cert: a, key: b, ciphers: all }}\n"
        ))
        .unwrap();
        assert_eq!(
            c.warnings,
            ["unknown key tcp.servers.smtp.tls.ciphers (ignored)"]
        );
    }
}
