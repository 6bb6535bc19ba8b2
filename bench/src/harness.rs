//! The comparison: starts each target (raw, pier + extension, pier + pure PHP) with the same
//! worker counts, pins servers and load generator to different cores, runs the grid through
//! `pier-bench load` subprocesses and hands the rows to [`crate::report`].

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::loadgen::LoadReport;
use crate::mqtt::MqttReport;
use crate::procstat;
use crate::report::{self, Cell, Kind, Row, Section, TargetId};

/// What went wrong running the comparison.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file the comparison needs is missing (not built yet, wrong path given).
    #[error("could not find {what} at {path} ({hint})")]
    Missing {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
    /// A process (server, load generator, taskset, php) could not be started.
    #[error("could not start {what}")]
    Spawn {
        /// Which program.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A target server did not accept connections in time or died while starting.
    #[error("could not get {target} to accept connections on {addr}: {why} (log: {log})")]
    NotReady {
        /// Which target.
        target: String,
        /// Where it should listen.
        addr: SocketAddr,
        /// What was seen.
        why: String,
        /// The server's output.
        log: PathBuf,
    },
    /// Writing a config, a log or the results failed.
    #[error("could not write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Some rows failed or measured nothing (the results file is written anyway).
    #[error("could not measure {count} row(s): see the table (server logs in {logs})")]
    RowsFailed {
        /// How many.
        count: usize,
        /// Where the server logs are.
        logs: PathBuf,
    },
    /// No free loopback port could be found.
    #[error("could not find a free loopback port")]
    Port(#[source] std::io::Error),
}

/// Flags of `pier-bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Smoke run (≤ 60 s): a few cells, short windows, 1000 idle connections; results go to
    /// target/bench/, not bench/results/.
    #[arg(long)]
    pub quick: bool,
    /// Repository root (paths below are relative to it).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// The pier server binary.
    #[arg(long, default_value = "target/release/pier")]
    pub pier: PathBuf,
    /// The Pier PHP extension.
    #[arg(long, default_value = "target/release/libpier.so")]
    pub ext: PathBuf,
    /// PHP CLI binary.
    #[arg(long, default_value = "php")]
    pub php: String,
    /// Which targets to run (comma-separated: raw, ext, ext-metrics, php). ext-metrics is pier +
    /// extension with Prometheus metrics on; it runs the echo rows only.
    #[arg(long, default_value = "raw,ext,ext-metrics,php", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// PHP worker counts (the raw blocking server uses as many threads).
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// Which parts to run (comma-separated: grid, open, idle, block, framing, mqtt).
    #[arg(
        long,
        default_value = "grid,open,idle,block,framing,mqtt",
        value_delimiter = ','
    )]
    pub sections: Vec<String>,
    /// Where the results file goes (default: bench/results, or target/bench with --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Grid and windows of one run.
#[derive(Debug, Clone)]
struct Plan {
    /// Closed-loop cells (connections, depth, size).
    cells: Vec<Cell>,
    /// Warm-up of each closed/open-loop cell (s).
    warmup: f64,
    /// Measured window of each cell (s).
    duration: f64,
    /// Open-loop cells (connections, rate).
    open: Vec<(usize, f64)>,
    /// Idle connections for memory per connection.
    idle: usize,
    /// Blocking-handler cells (connections; depth 1, 32 B).
    block: Vec<usize>,
    /// How long each packet blocks in the blocking handler (µs).
    block_us: u64,
    /// Cells run framed by the delimiter and by a 4-byte length.
    framing: Vec<Cell>,
    /// MQTT fan-out: subscribers, messages published.
    mqtt: (usize, u64),
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            return Self {
                cells: vec![Cell::new(1, 1, 32), Cell::new(100, 16, 1024)],
                warmup: 0.3,
                duration: 1.0,
                open: vec![(10, 1000.0)],
                idle: 1000,
                block: vec![100],
                block_us: 1000,
                framing: vec![Cell::new(1, 1, 32), Cell::new(100, 16, 64 * 1024)],
                mqtt: (100, 200),
            };
        }
        let mut cells = Vec::new();
        for c in [1, 100, 1000] {
            for d in [1, 16] {
                for s in [32, 1024, 64 * 1024] {
                    cells.push(Cell::new(c, d, s));
                }
            }
        }
        Self {
            cells,
            warmup: 1.0,
            duration: 3.0,
            open: vec![(100, 5000.0)],
            idle: 10_000,
            block: vec![1, 100],
            block_us: 1000,
            framing: vec![
                Cell::new(1, 1, 32),
                Cell::new(100, 16, 32),
                Cell::new(1, 1, 64 * 1024),
                Cell::new(100, 16, 64 * 1024),
            ],
            mqtt: (100, 2000),
        }
    }
}

/// Absolute paths and CPU placement for the run.
#[derive(Debug, Clone)]
struct Env {
    /// This binary (it is also the raw server and the load generator).
    me: PathBuf,
    /// Repository root.
    root: PathBuf,
    /// pier binary (only needed for the pier targets).
    pier: PathBuf,
    /// libpier.so.
    ext: PathBuf,
    /// PHP CLI.
    php: String,
    /// taskset CPU list for the servers and their workers, when the machine has ≥ 2 CPUs.
    server_cpus: Option<String>,
    /// taskset CPU list for the load generator.
    client_cpus: Option<String>,
    /// Scratch directory for configs and server logs.
    scratch: PathBuf,
}

/// A running target server; killed when dropped.
#[derive(Debug)]
struct Server {
    /// Which target this is.
    id: TargetId,
    /// Where it listens.
    addr: SocketAddr,
    /// The server process (taskset execs it, so this is the server's own pid).
    child: Child,
    /// Its stdout/stderr.
    log: PathBuf,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (pier shuts its workers down gracefully), then SIGKILL after 5 s.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the whole comparison.
pub fn run(args: RunArgs) -> Result<(), HarnessError> {
    let env = environment(&args)?;
    let plan = Plan::new(args.quick);
    let kinds: Vec<Kind> = [Kind::Raw, Kind::Ext, Kind::ExtMetrics, Kind::Php]
        .into_iter()
        .filter(|k| args.targets.iter().any(|t| t == k.flag()))
        .collect();
    check_files(&env, &kinds)?;
    let began = Instant::now();
    let machine = report::Machine::describe(&env.php, &env.root);
    let mut rows: Vec<Row> = Vec::new();

    // Echo servers: raw once (no PHP), each pier target once per worker count.
    let mut echo_targets = Vec::new();
    for &kind in &kinds {
        if kind == Kind::Raw {
            echo_targets.push(TargetId::new(kind, 1, 0));
        } else {
            for &w in &args.workers {
                echo_targets.push(TargetId::new(kind, w, 0));
            }
        }
    }
    let want = |section: &str| args.sections.iter().any(|s| s == section);
    let count = |section: &str, n: usize| if want(section) { n } else { 0 };
    // Metrics change nothing per idle connection nor in a blocked handler: those rows skip it.
    let idle_targets: Vec<TargetId> = echo_targets
        .iter()
        .copied()
        .filter(|t| t.kind != Kind::ExtMetrics)
        .collect();
    let block_kinds: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| *k != Kind::ExtMetrics)
        .collect();
    let total = count("grid", plan.cells.len() * echo_targets.len())
        + count("open", plan.open.len() * echo_targets.len())
        + count("idle", idle_targets.len())
        + count(
            "block",
            plan.block.len() * block_kinds.len() * args.workers.len(),
        )
        + count("framing", 2 * plan.framing.len() * idle_targets.len())
        + count(
            "mqtt",
            block_kinds.iter().filter(|k| **k != Kind::Raw).count() * args.workers.len(),
        );
    let per = plan.warmup + plan.duration + 0.8;
    say(&format!(
        "{} load runs, about {:.0} s of load plus connect ramps; servers on CPU {}, load generator on CPU {}",
        total,
        total as f64 * per,
        env.server_cpus.as_deref().unwrap_or("any"),
        env.client_cpus.as_deref().unwrap_or("any"),
    ));
    let mut done = 0usize;
    let mut servers = Vec::new();
    if want("grid") || want("open") {
        for id in &echo_targets {
            servers.push(start(&env, *id)?);
        }
    }
    // Cell-major order: every target runs a cell before the next cell starts, so drift in the
    // machine's speed during the run hits all targets alike.
    for cell in plan.cells.iter().filter(|_| want("grid")) {
        for server in &mut servers {
            done += 1;
            let args = closed_args(cell, &plan);
            let r = load(&env, server, &args);
            progress(done, total, server.id, &Section::Grid, cell, &r);
            rows.push(Row {
                section: Section::Grid,
                target: server.id,
                cell: *cell,
                result: r,
            });
            settle(server.pid());
        }
    }
    for &(c, rate) in plan.open.iter().filter(|_| want("open")) {
        for server in &mut servers {
            done += 1;
            let cell = Cell::new(c, 1, 32);
            let args = vec![
                "-c".into(),
                c.to_string(),
                "-s".into(),
                "32".into(),
                "--rate".into(),
                rate.to_string(),
                "--warmup".into(),
                plan.warmup.to_string(),
                "--duration".into(),
                plan.duration.to_string(),
            ];
            let r = load(&env, server, &args);
            progress(done, total, server.id, &Section::Open(rate), &cell, &r);
            rows.push(Row {
                section: Section::Open(rate),
                target: server.id,
                cell,
                result: r,
            });
            settle(server.pid());
        }
    }
    drop(servers);
    // Memory per idle connection on freshly started servers: after the grid, allocator caches
    // from the 64 KiB cells would absorb new connections and hide their cost.
    for id in idle_targets.iter().filter(|_| want("idle")) {
        done += 1;
        let cell = Cell::new(plan.idle, 0, 0);
        let args = vec![
            "-c".into(),
            plan.idle.to_string(),
            "--idle".into(),
            "0.5".into(),
            "--connect-timeout".into(),
            "60".into(),
        ];
        let r = match start(&env, *id) {
            Ok(mut server) => {
                let r = load(&env, &mut server, &args);
                settle(server.pid());
                r
            }
            Err(e) => Err(e.to_string()),
        };
        progress(done, total, *id, &Section::Idle, &cell, &r);
        rows.push(Row {
            section: Section::Idle,
            target: *id,
            cell,
            result: r,
        });
    }

    // The blocking handler: raw blocks a runtime thread per worker, PHP calls usleep().
    let mut servers = Vec::new();
    for &kind in block_kinds.iter().filter(|_| want("block")) {
        for &w in &args.workers {
            servers.push(start(&env, TargetId::new(kind, w, plan.block_us))?);
        }
    }
    for &c in &plan.block {
        let cell = Cell::new(c, 1, 32);
        for server in &mut servers {
            done += 1;
            let r = load(&env, server, &closed_args(&cell, &plan));
            progress(done, total, server.id, &Section::Block, &cell, &r);
            rows.push(Row {
                section: Section::Block,
                target: server.id,
                cell,
                result: r,
            });
            settle(server.pid());
        }
    }
    drop(servers);

    // Length-prefixed framing next to the delimiter, same cells, same run: every echo target
    // twice, once per framing.
    let mut servers = Vec::new();
    if want("framing") {
        // Metrics do not depend on the framing: the metrics target skips these rows.
        for id in &idle_targets {
            for length_prefix in [false, true] {
                servers.push(start(
                    &env,
                    TargetId {
                        length_prefix,
                        ..*id
                    },
                )?);
            }
        }
    }
    for cell in plan.framing.iter().filter(|_| want("framing")) {
        for server in &mut servers {
            done += 1;
            let mut args = closed_args(cell, &plan);
            if server.id.length_prefix {
                args.push("--length-prefix".into());
            }
            let r = load(&env, server, &args);
            progress(done, total, server.id, &Section::Framing, cell, &r);
            rows.push(Row {
                section: Section::Framing,
                target: server.id,
                cell: *cell,
                result: r,
            });
            settle(server.pid());
        }
    }
    drop(servers);

    // MQTT fan-out through examples/mqtt on each PHP target (raw has no broker).
    let mut mqtt_rows = Vec::new();
    for &kind in block_kinds
        .iter()
        .filter(|k| **k != Kind::Raw && want("mqtt"))
    {
        for &w in &args.workers {
            let id = TargetId::new(kind, w, 0);
            done += 1;
            let r = match start_mqtt(&env, id) {
                Ok(mut server) => mqtt_load(&env, &mut server, plan.mqtt),
                Err(e) => Err(e.to_string()),
            };
            let what = match &r {
                Ok(r) => format!(
                    "{:.0} published/s, {:.0} delivered/s, server {:.2} µs CPU/delivery{}",
                    r.published_per_s,
                    r.delivered_per_s,
                    r.cpu_us_per_delivery(),
                    r.error
                        .as_deref()
                        .map(|e| format!(", {e}"))
                        .unwrap_or_default()
                ),
                Err(e) => format!("FAILED: {e}"),
            };
            say(&format!("[{done}/{total}] mqtt {}: {what}", id.label()));
            mqtt_rows.push((id, r));
        }
    }

    let elapsed = began.elapsed();
    let settings = report::Settings {
        quick: args.quick,
        warmup: plan.warmup,
        duration: plan.duration,
        idle: plan.idle,
        block_us: plan.block_us,
        elapsed,
        server_cpus: env.server_cpus.clone(),
        client_cpus: env.client_cpus.clone(),
    };
    let text = report::markdown(&machine, &settings, &rows, &mqtt_rows);
    let file = publish(&args, &env, &format!("{}.md", machine.date), text)?;
    say(&format!(
        "wrote {} ({:.0} s)",
        file.display(),
        elapsed.as_secs_f64()
    ));
    let failed = rows.iter().filter(|r| !r.ok()).count()
        + mqtt_rows
            .iter()
            .filter(|(_, r)| !r.as_ref().is_ok_and(|r| r.error.is_none()))
            .count();
    outcome(&env, failed)
}

/// The run's result: an error naming where the logs are when `failed` rows failed.
fn outcome(env: &Env, failed: usize) -> Result<(), HarnessError> {
    if failed > 0 {
        return Err(HarnessError::RowsFailed {
            count: failed,
            logs: env.scratch.clone(),
        });
    }
    Ok(())
}

/// Prints the report `text` and writes it as `name` (`<date>.md`, `<date>-tls.md`) to `--out`,
/// or by default to bench/results (target/bench with `--quick`, as `<date>-quick.md`).
fn publish(args: &RunArgs, env: &Env, name: &str, text: String) -> Result<PathBuf, HarnessError> {
    report::print(&text);
    let out = args.out.clone().unwrap_or_else(|| {
        if args.quick {
            env.root.join("target/bench")
        } else {
            env.root.join("bench/results")
        }
    });
    fs::create_dir_all(&out).map_err(|source| HarnessError::Write {
        path: out.clone(),
        source,
    })?;
    let name = match name.strip_suffix(".md") {
        Some(stem) if args.quick => format!("{stem}-quick.md"),
        _ => name.to_owned(),
    };
    let file = out.join(name);
    fs::write(&file, text).map_err(|source| HarnessError::Write {
        path: file.clone(),
        source,
    })?;
    Ok(file)
}

fn closed_args(cell: &Cell, plan: &Plan) -> Vec<String> {
    vec![
        "-c".into(),
        cell.connections.to_string(),
        "-d".into(),
        cell.depth.to_string(),
        "-s".into(),
        cell.size.to_string(),
        "--warmup".into(),
        plan.warmup.to_string(),
        "--duration".into(),
        plan.duration.to_string(),
    ]
}

fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "pier-bench: {line}");
}

fn progress(
    done: usize,
    total: usize,
    id: TargetId,
    section: &Section,
    cell: &Cell,
    r: &Result<LoadReport, String>,
) {
    let what = match r {
        Ok(r) if matches!(section, Section::Idle) => format!(
            "{} conns, server {:.1} MiB → {:.1} MiB, {} errors",
            r.connections,
            r.server_rss_before_kib as f64 / 1024.0,
            r.server_rss_kib as f64 / 1024.0,
            r.errors
        ),
        Ok(r) => format!(
            "{:.0} msg/s, p50 {:.0} µs, p99 {:.0} µs, server {:.1} µs CPU/msg, other load {:.0} %, {} errors",
            r.msg_per_s,
            r.p50_us,
            r.p99_us,
            report::cpu_us_per_msg(r),
            (r.other_cpu_ns + r.steal_ns) as f64 / (r.seconds.max(1e-9) * 1e9) * 100.0,
            r.errors
        ),
        Err(e) => format!("FAILED: {e}"),
    };
    say(&format!(
        "[{done}/{total}] {} {} {}: {what}",
        section.name(),
        id.label(),
        cell.label()
    ));
}

/// Resolves paths and decides CPU placement.
fn environment(args: &RunArgs) -> Result<Env, HarnessError> {
    let abs = |p: &Path| -> PathBuf {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            args.root.join(p)
        };
        fs::canonicalize(&p).unwrap_or(p)
    };
    let root = fs::canonicalize(&args.root).unwrap_or_else(|_| args.root.clone());
    let me = std::env::current_exe().map_err(|source| HarnessError::Spawn {
        what: "pier-bench (own path)".into(),
        source,
    })?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let have_taskset = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let (server_cpus, client_cpus) = if cpus >= 2 && have_taskset {
        // Servers (and the PHP workers they spawn, which inherit the mask) on CPU 0, the load
        // generator on the others: neither steals the other's core.
        let client = if cpus == 2 {
            "1".to_string()
        } else {
            format!("1-{}", cpus - 1)
        };
        (Some("0".to_string()), Some(client))
    } else {
        (None, None)
    };
    let scratch = root.join("target/bench/run");
    fs::create_dir_all(&scratch).map_err(|source| HarnessError::Write {
        path: scratch.clone(),
        source,
    })?;
    Ok(Env {
        me,
        pier: abs(&args.pier),
        ext: abs(&args.ext),
        php: args.php.clone(),
        root,
        server_cpus,
        client_cpus,
        scratch,
    })
}

fn check_files(env: &Env, kinds: &[Kind]) -> Result<(), HarnessError> {
    let need = |what, path: PathBuf, hint| {
        if path.exists() {
            Ok(())
        } else {
            Err(HarnessError::Missing { what, path, hint })
        }
    };
    if kinds.iter().any(|k| *k != Kind::Raw) {
        need(
            "the pier server",
            env.pier.clone(),
            "cargo build --release -p pier-server",
        )?;
        need(
            "the bench workers",
            env.root.join("bench/php/serve.php"),
            "run from the repository root",
        )?;
    }
    if kinds.contains(&Kind::Ext) || kinds.contains(&Kind::ExtMetrics) {
        need(
            "the Pier extension",
            env.ext.clone(),
            "cargo build --release -p pier",
        )?;
    }
    if kinds.contains(&Kind::Php) {
        need(
            "the pure-PHP package",
            env.root.join("php-client/src"),
            "php-client/ is part of the repository",
        )?;
    }
    Ok(())
}

/// A loopback port nobody listens on right now (the OS picks it).
fn free_port() -> Result<SocketAddr, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(HarnessError::Port)?;
    l.local_addr().map_err(HarnessError::Port)
}

fn pinned(cpus: &Option<String>, program: &Path) -> Command {
    match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(list).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Starts one target and waits until it accepts connections.
fn start(env: &Env, id: TargetId) -> Result<Server, HarnessError> {
    // The port is picked before the server binds it, so another process may take it meanwhile:
    // a server that exits while starting gets two more tries on fresh ports.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start_on(env, id, free_port()?) {
            Err(HarnessError::NotReady { why, .. })
                if attempt < 3 && why.starts_with("it exited") => {}
            other => return other,
        }
    }
}

/// One attempt of [`start`] on `addr`.
fn start_on(env: &Env, id: TargetId, addr: SocketAddr) -> Result<Server, HarnessError> {
    let name = id.file_name();
    let log = env.scratch.join(format!("{name}.log"));
    let cmd = match id.kind {
        Kind::Raw => {
            let mut c = pinned(&env.server_cpus, &env.me);
            c.arg("echo")
                .arg("--addr")
                .arg(addr.to_string())
                .arg("--threads")
                .arg(id.workers.to_string())
                .arg("--block-us")
                .arg(id.block_us.to_string());
            if id.length_prefix {
                c.arg("--length-prefix");
            }
            c
        }
        Kind::Ext | Kind::ExtMetrics | Kind::Php => {
            let config = env.scratch.join(format!("{name}.rr.yaml"));
            let worker = env.root.join("bench/php").join(if id.kind == Kind::Php {
                "worker-php.php"
            } else {
                "worker-ext.php"
            });
            let ext = if id.kind == Kind::Php {
                String::new()
            } else {
                format!("-d extension={} ", env.ext.display())
            };
            let metrics = if id.kind == Kind::ExtMetrics {
                format!("metrics:\n  address: \"{}\"\n", free_port()?)
            } else {
                String::new()
            };
            let framing = if id.length_prefix {
                "framing: { mode: length_field, length_size: 4 }"
            } else {
                "delimiter: \"\\n\""
            };
            let yaml = format!(
                "version: \"3\"\n\
                 server:\n  command: \"{php} {ext}{worker} {block}\"\n\
                 tcp:\n  servers:\n    bench:\n      addr: \"{addr}\"\n      {framing}\n\
                 \x20 pool:\n    num_workers: {workers}\n{metrics}",
                php = env.php,
                worker = worker.display(),
                block = id.block_us,
                workers = id.workers,
            );
            fs::write(&config, yaml).map_err(|source| HarnessError::Write {
                path: config.clone(),
                source,
            })?;
            let mut c = pinned(&env.server_cpus, &env.pier);
            c.arg("serve").arg("-c").arg(&config);
            c
        }
    };
    launch(id, addr, cmd, log, &env.root)
}

/// Starts the MQTT example broker (examples/mqtt) for `id` and waits until it accepts connections.
fn start_mqtt(env: &Env, id: TargetId) -> Result<Server, HarnessError> {
    let addr = free_port()?;
    let name = format!("mqtt-{}", id.file_name());
    let log = env.scratch.join(format!("{name}.log"));
    let store = env.scratch.join(format!("{name}.sqlite"));
    for stale in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{stale}", store.display()));
    }
    let mut cmd = pinned(&env.server_cpus, &env.pier);
    cmd.arg("serve")
        .arg("-c")
        .arg("examples/mqtt/.rr.yaml")
        .arg("-o")
        .arg(format!("tcp.servers.mqtt.addr={addr}"))
        .arg("-o")
        .arg(format!("tcp.pool.num_workers={}", id.workers))
        .arg("-o")
        .arg("logs.level=warn")
        .env("MQTT_STORE", &store)
        .env("PHP", &env.php)
        .env("PIER_EXT", &env.ext)
        .env(
            "PIER_WORKER_IMPL",
            if id.kind == Kind::Ext {
                "ext"
            } else {
                "package"
            },
        );
    launch(id, addr, cmd, log, &env.root)
}

/// Runs one `pier-bench mqtt` against `server`, pinned to the client CPUs.
fn mqtt_load(
    env: &Env,
    server: &mut Server,
    (subscribers, messages): (usize, u64),
) -> Result<MqttReport, String> {
    let mut cmd = pinned(&env.client_cpus, &env.me);
    cmd.arg("mqtt")
        .arg("--addr")
        .arg(server.addr.to_string())
        .arg("--watch-pid")
        .arg(server.pid().to_string())
        .arg("--subscribers")
        .arg(subscribers.to_string())
        .arg("--messages")
        .arg(messages.to_string())
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| format!("could not start the MQTT load generator: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "MQTT load generator failed ({}): {}; log: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " "),
            server.log.display()
        ));
    }
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .map_err(|e| format!("could not parse the MQTT report: {e}"))
}

/// Spawns a prepared server command with its output in `log` and waits until `addr` accepts
/// connections.
fn launch(
    id: TargetId,
    addr: SocketAddr,
    mut cmd: Command,
    log: PathBuf,
    root: &Path,
) -> Result<Server, HarnessError> {
    let log_file = fs::File::create(&log).map_err(|source| HarnessError::Write {
        path: log.clone(),
        source,
    })?;
    let log_err = log_file.try_clone().map_err(|source| HarnessError::Write {
        path: log.clone(),
        source,
    })?;
    // Workers get exactly the PHP configuration named on their command line.
    cmd.env_remove("PHP_INI_SCAN_DIR")
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
        what: id.label(),
        source,
    })?;
    let mut server = Server {
        id,
        addr,
        child,
        log: log.clone(),
    };
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(HarnessError::NotReady {
                target: id.label(),
                addr,
                why: format!("it exited ({status})"),
                log,
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() > until {
            return Err(HarnessError::NotReady {
                target: id.label(),
                addr,
                why: "nothing listening after 20 s".into(),
                log,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The probe connection is an event for the workers too: let them finish starting.
    settle(server.pid());
    let _ = &server.log;
    Ok(server)
}

/// Runs one `pier-bench load` against `server`, pinned to the client CPUs.
fn load(env: &Env, server: &mut Server, extra: &[String]) -> Result<LoadReport, String> {
    if let Ok(Some(status)) = server.child.try_wait() {
        return Err(format!(
            "server exited before this run ({status}); log: {}",
            server.log.display()
        ));
    }
    let mut cmd = pinned(&env.client_cpus, &env.me);
    cmd.arg("load")
        .arg("--addr")
        .arg(server.addr.to_string())
        .arg("--watch-pid")
        .arg(server.pid().to_string())
        .args(extra)
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| format!("could not start the load generator: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "load generator failed ({}): {}",
            out.status,
            err.trim().replace('\n', " ")
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .map_err(|e| format!("could not parse the load generator's report: {e}"))
}

/// Waits (bounded) until the server tree is idle, so one run's leftovers (CLOSE events of 1000
/// connections) do not land in the next run's window.
fn settle(pid: u32) {
    let until = Instant::now() + Duration::from_secs(10);
    let mut last = procstat::tree_usage(pid).map(|u| u.cpu_ns).unwrap_or(0);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        let now = procstat::tree_usage(pid).map(|u| u.cpu_ns).unwrap_or(0);
        if now.saturating_sub(last) < 3_000_000 {
            return;
        }
        last = now;
    }
}

/// Flags of `pier-bench tls`.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// The same paths and options as `pier-bench run` (targets and workers are ignored: pier +
    /// extension with one worker).
    #[command(flatten)]
    pub run: RunArgs,
    /// Which rows to run (comma-separated: echo, connects, idle).
    #[arg(long, value_delimiter = ',', default_value = "echo,connects,idle")]
    pub rows: Vec<String>,
}

/// One row of the TLS comparison: what ran, on which server, and the report.
struct TlsRow {
    /// Row label.
    what: String,
    /// `plaintext` or `TLS 1.3`.
    transport: &'static str,
    /// The load generator's report, or why the row failed.
    result: Result<LoadReport, String>,
}

/// `pier-bench tls`: pier + extension (one worker) with a plaintext and a TLS 1.3 server (ECDSA
/// P-256 certificate made with `openssl req` for the run), side by side: echo rows, full
/// handshakes per second against plain connects per second, and RSS per idle connection. Writes
/// `<out>/<date>-tls.md`.
pub fn run_tls(args: TlsArgs) -> Result<(), HarnessError> {
    let want = |part: &str| args.rows.iter().any(|r| r == part);
    let (want_echo, want_connects, want_idle) = (want("echo"), want("connects"), want("idle"));
    let args = args.run;
    let env = environment(&args)?;
    check_files(&env, &[Kind::Ext])?;
    let began = Instant::now();
    let machine = report::Machine::describe(&env.php, &env.root);
    let (warmup, duration, idle) = if args.quick {
        (0.3, 1.0, 200)
    } else {
        (1.0, 3.0, 10_000)
    };
    let cert = env.scratch.join("tls-cert.pem");
    let key = env.scratch.join("tls-key.pem");
    if let Err(e) = pier_devkit::tls::self_signed_localhost(&cert, &key, 1) {
        say(&format!("{e}"));
        return Err(HarnessError::Missing {
            what: "a test certificate",
            path: cert,
            hint: "openssl req failed; install the openssl package",
        });
    }
    let tls_args = |extra: &[&str]| -> Vec<String> {
        let mut v = owned(extra);
        v.extend(["--tls-ca".into(), cert.display().to_string()]);
        v
    };
    let window = |c: usize, d: usize, s: usize| -> Vec<String> {
        owned(&[
            "-c",
            &c.to_string(),
            "-d",
            &d.to_string(),
            "-s",
            &s.to_string(),
            "--warmup",
            &warmup.to_string(),
            "--duration",
            &duration.to_string(),
        ])
    };
    let connects = owned(&[
        "-c",
        "16",
        "--connects",
        "--warmup",
        &warmup.to_string(),
        "--duration",
        &duration.to_string(),
    ]);
    let idle_args = owned(&[
        "-c",
        &idle.to_string(),
        "--idle",
        "0.5",
        "--connect-timeout",
        "60",
    ]);
    let mut rows = Vec::new();
    // Runs one row on `server`, for the transports asked (`plaintext`, `TLS 1.3`).
    let mut run_row = |server: &mut Server,
                       plain: SocketAddr,
                       tls: SocketAddr,
                       what: &str,
                       base: &[String],
                       transports: &[&'static str]| {
        for (transport, addr) in [("plaintext", plain), ("TLS 1.3", tls)] {
            if !transports.contains(&transport) {
                continue;
            }
            server.addr = addr;
            let extra: Vec<String> = if transport == "plaintext" {
                base.to_vec()
            } else {
                let base: Vec<&str> = base.iter().map(String::as_str).collect();
                tls_args(&base)
            };
            let result = load(&env, server, &extra);
            say(&format!(
                "{what:<28} {transport:<10} {}",
                match &result {
                    Ok(r) => format!(
                        "{:>10.0}/s  p50 {:>7.0} µs  server {:>6.1} µs each  rss {} KiB",
                        r.msg_per_s,
                        r.p50_us,
                        report::cpu_us_per_msg(r),
                        r.server_rss_kib
                    ),
                    Err(e) => format!("failed: {e}"),
                }
            ));
            rows.push(TlsRow {
                what: what.to_owned(),
                transport,
                result,
            });
            settle(server.pid());
        }
    };
    let both = ["plaintext", "TLS 1.3"];
    if want_echo || want_connects {
        let (mut server, plain, tls) = start_tls_target(&env, &cert, &key)?;
        if want_echo {
            let rows = [
                ("echo c100 d1 32 B", window(100, 1, 32)),
                ("echo c100 d16 1 KiB", window(100, 16, 1024)),
            ];
            for (what, base) in rows {
                run_row(&mut server, plain, tls, what, &base, &both);
            }
        }
        if want_connects {
            let what = "connects (16 at a time)";
            run_row(&mut server, plain, tls, what, &connects, &both);
        }
        drop(server);
    }
    // Idle memory: each transport on its own fresh server process. After other rows (or the
    // other transport's idle row) the allocator keeps freed pages that new connections reuse
    // unseen, which once made TLS look cheaper per connection than plaintext.
    for transport in both.iter().filter(|_| want_idle) {
        let (mut server, plain, tls) = start_tls_target(&env, &cert, &key)?;
        let what = format!("{idle} idle connections");
        run_row(&mut server, plain, tls, &what, &idle_args, &[transport]);
        drop(server);
    }

    let text = tls_markdown(&machine, &rows, warmup, duration, began.elapsed(), &env);
    let file = publish(&args, &env, &format!("{}-tls.md", machine.date), text)?;
    say(&format!("wrote {}", file.display()));
    let failed = rows
        .iter()
        .filter(|r| {
            r.result
                .as_ref()
                .map_or(true, |r| r.errors > 0 || r.connections == 0)
        })
        .count();
    outcome(&env, failed)
}

/// pier + extension, one echo worker, serving `plain` and `tls` (implicit TLS) from one process.
fn start_tls_target(
    env: &Env,
    cert: &Path,
    key: &Path,
) -> Result<(Server, SocketAddr, SocketAddr), HarnessError> {
    let id = TargetId {
        kind: Kind::Ext,
        workers: 1,
        block_us: 0,
        length_prefix: false,
    };
    let plain = free_port()?;
    let tls = free_port()?;
    let log = env.scratch.join("tls-pier.log");
    let config = env.scratch.join("tls.rr.yaml");
    let yaml = format!(
        "version: \"3\"\n\
         server:\n  command: \"{php} -d extension={ext} {worker} 0\"\n\
         tcp:\n  servers:\n\
         \x20   plain:\n      addr: \"{plain}\"\n      delimiter: \"\\n\"\n\
         \x20   tls:\n      addr: \"{tls}\"\n      delimiter: \"\\n\"\n      tls:\n        cert: {cert:?}\n        key: {key:?}\n\
         \x20 pool:\n    num_workers: 1\n",
        php = env.php,
        ext = env.ext.display(),
        worker = env.root.join("bench/php/worker-ext.php").display(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    );
    fs::write(&config, yaml).map_err(|source| HarnessError::Write {
        path: config.clone(),
        source,
    })?;
    let mut cmd = pinned(&env.server_cpus, &env.pier);
    cmd.arg("serve").arg("-c").arg(&config);
    let server = launch(id, plain, cmd, log, &env.root)?;
    Ok((server, plain, tls))
}

/// The results document of `pier-bench tls`.
fn tls_markdown(
    m: &report::Machine,
    rows: &[TlsRow],
    warmup: f64,
    duration: f64,
    elapsed: Duration,
    env: &Env,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# TLS: pier + extension, plaintext next to TLS 1.3 ({})\n",
        m.date
    );
    let _ = writeln!(
        s,
        "Machine: {} ({} CPUs, {:.1} GiB), {}, kernel {}, PHP {}, {}; commit {}. Run at {} UTC, {:.0} s.",
        m.cpu, m.cpus, m.memory_gib, m.os, m.kernel, m.php, m.rustc, m.commit, m.time, elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "Server and its one PHP worker (extension, echo) on CPU {}, load generator on CPU {}. One pier \
         process serves both a plaintext and an implicit-TLS server (rustls, ring, ECDSA P-256 \
         certificate, TLS 1.3 only on the client, no session resumption: every connect is a full \
         handshake). Closed loop, {warmup} s warm-up + {duration} s measured per row. \"connects\": 16 \
         tasks connect (and handshake), close, repeat; each connection also costs a CONNECTED and a \
         CLOSE event in PHP. Server CPU is the whole tree (pier + worker) per message, per connection \
         or per handshake. Idle: RSS of the tree over the connections, per connection, each transport \
         on its own freshly started server process.\n",
        env.server_cpus.as_deref().unwrap_or("any"),
        env.client_cpus.as_deref().unwrap_or("any"),
    );
    let _ = writeln!(
        s,
        "| row | transport | rate (/s) | p50 (µs) | p99 (µs) | server CPU (µs each) | RSS (KiB) | RSS per idle connection (KiB) | errors | other load (ms) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        match &row.result {
            Ok(r) => {
                let idle = row.what.contains("idle");
                let per_conn = if idle && r.connections > 0 {
                    format!(
                        "{:.1}",
                        r.server_rss_kib.saturating_sub(r.server_rss_before_kib) as f64
                            / r.connections as f64
                    )
                } else {
                    "—".into()
                };
                let dash = |v: f64| {
                    if idle {
                        "—".to_string()
                    } else {
                        format!("{v:.0}")
                    }
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    row.what,
                    row.transport,
                    dash(r.msg_per_s),
                    dash(r.p50_us),
                    dash(r.p99_us),
                    if idle {
                        "—".to_string()
                    } else {
                        format!("{:.1}", report::cpu_us_per_msg(r))
                    },
                    r.server_rss_kib,
                    per_conn,
                    r.errors,
                    r.other_cpu_ns / 1_000_000,
                );
            }
            Err(e) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | failed: {} | | | | | | | |",
                    row.what, row.transport, e
                );
            }
        }
    }
    s
}

/// A command line's arguments as owned strings.
fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
