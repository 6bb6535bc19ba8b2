//! Rows of a comparison run and their rendering: the terminal table and `bench/results/<date>.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::loadgen::LoadReport;
use crate::mqtt::MqttReport;

/// Which server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The in-bench tokio echo server: the ceiling.
    Raw,
    /// pier with workers on the PHP extension.
    Ext,
    /// The same with Prometheus metrics on (`metrics.address` set), to price them.
    ExtMetrics,
    /// pier with workers on the pure-PHP package.
    Php,
}

impl Kind {
    /// The name used in `--targets`.
    pub fn flag(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Ext => "ext",
            Kind::ExtMetrics => "ext-metrics",
            Kind::Php => "php",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Ext => "pier+ext",
            Kind::ExtMetrics => "pier+ext+metrics",
            Kind::Php => "pier+php",
        }
    }
}

/// One target server configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetId {
    /// Which server.
    pub kind: Kind,
    /// PHP worker processes (raw: runtime threads).
    pub workers: usize,
    /// Per-packet blocking time of the handler (µs), 0 for the plain echo.
    pub block_us: u64,
    /// Frames by a 4-byte big-endian length instead of the `\n` delimiter.
    pub length_prefix: bool,
}

impl TargetId {
    /// A delimiter-framed target.
    pub fn new(kind: Kind, workers: usize, block_us: u64) -> Self {
        Self {
            kind,
            workers,
            block_us,
            length_prefix: false,
        }
    }

    /// Human label, e.g. `pier+ext ×2` (`pier+ext ×2 len` when length-prefixed).
    pub fn label(&self) -> String {
        let framing = if self.length_prefix { " len" } else { "" };
        format!("{} ×{}{framing}", self.kind.label(), self.workers)
    }

    /// Label safe for a file name.
    pub fn file_name(&self) -> String {
        let framing = if self.length_prefix { "-len" } else { "" };
        format!(
            "{}-w{}-b{}{framing}",
            self.kind.flag(),
            self.workers,
            self.block_us
        )
    }
}

/// One traffic shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Connections.
    pub connections: usize,
    /// Packets in flight per connection (0 for idle).
    pub depth: usize,
    /// Packet size in bytes, delimiter included (0 for idle).
    pub size: usize,
}

impl Cell {
    /// A cell.
    pub fn new(connections: usize, depth: usize, size: usize) -> Self {
        Self {
            connections,
            depth,
            size,
        }
    }

    /// e.g. `c100 d16 1KiB`.
    pub fn label(&self) -> String {
        format!("c{} d{} {}", self.connections, self.depth, size(self.size))
    }
}

fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => format!("{b} B"),
    }
}

/// Which part of the run a row belongs to.
#[derive(Debug, Clone, PartialEq)]
pub enum Section {
    /// Closed-loop echo grid.
    Grid,
    /// Open loop at this total rate (msg/s).
    Open(f64),
    /// Idle connections: memory per connection.
    Idle,
    /// Closed loop against the blocking handler.
    Block,
    /// Closed loop, the same cells framed by the delimiter and by a 4-byte length.
    Framing,
}

impl Section {
    /// Short name for progress lines.
    pub fn name(&self) -> &'static str {
        match self {
            Section::Grid => "grid",
            Section::Open(_) => "open",
            Section::Idle => "idle",
            Section::Block => "block",
            Section::Framing => "framing",
        }
    }
}

/// One measured row.
#[derive(Debug, Clone)]
pub struct Row {
    /// Part of the run.
    pub section: Section,
    /// Which server.
    pub target: TargetId,
    /// Traffic shape.
    pub cell: Cell,
    /// The load generator's report, or why there is none.
    pub result: Result<LoadReport, String>,
}

impl Row {
    /// Measured something and saw no errors.
    pub fn ok(&self) -> bool {
        match &self.result {
            Ok(r) if self.section == Section::Idle => r.errors == 0 && r.connections > 0,
            Ok(r) => r.errors == 0 && r.messages > 0 && r.msg_per_s > 0.0 && r.server_cpu_ns > 0,
            Err(_) => false,
        }
    }
}

/// Server CPU per message (µs).
pub fn cpu_us_per_msg(r: &LoadReport) -> f64 {
    if r.messages == 0 {
        return 0.0;
    }
    r.server_cpu_ns as f64 / r.messages as f64 / 1000.0
}

/// The machine the run was on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// UTC date of the run (YYYY-MM-DD), also the results file name.
    pub date: String,
    /// UTC time of the run.
    pub time: String,
    /// CPU model.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Memory (GiB).
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// Distribution.
    pub os: String,
    /// PHP version.
    pub php: String,
    /// rustc version.
    pub rustc: String,
    /// Commit measured.
    pub commit: String,
}

fn output(cmd: &str, args: &[&str], dir: &Path) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    /// Describes this machine from /proc, /etc/os-release and the tools' versions.
    pub fn describe(php: &str, root: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let dirty = !output(
            "git",
            &["status", "--porcelain", "--untracked-files=no"],
            root,
        )
        .is_empty();
        Self {
            date: output("date", &["-u", "+%Y-%m-%d"], root),
            time: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], root),
            cpu,
            cpus: std::fs::read_to_string("/proc/cpuinfo")
                .map(|c| c.matches("\nprocessor").count() + usize::from(c.starts_with("processor")))
                .unwrap_or(0),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            os,
            php: output(php, &["-n", "-r", "echo PHP_VERSION;"], root),
            rustc: output("rustc", &["-V"], root),
            commit: format!(
                "{}{}",
                output("git", &["rev-parse", "--short", "HEAD"], root),
                if dirty { " (with local changes)" } else { "" }
            ),
        }
    }
}

/// How the run was configured, for the results file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Smoke run.
    pub quick: bool,
    /// Warm-up per cell (s).
    pub warmup: f64,
    /// Measured window per cell (s).
    pub duration: f64,
    /// Idle connections opened.
    pub idle: usize,
    /// Blocking handler time (µs).
    pub block_us: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Server CPUs (taskset list).
    pub server_cpus: Option<String>,
    /// Load generator CPUs.
    pub client_cpus: Option<String>,
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

fn n(v: f64) -> String {
    // Thousands separators keep msg/s columns readable.
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 && c.is_ascii_digit() {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn errors(r: &LoadReport) -> String {
    match (&r.first_error, r.errors) {
        (_, 0) => "0".into(),
        (Some(e), k) => format!("{k} ({})", e.replace('|', "/")),
        (None, k) => k.to_string(),
    }
}

/// The raw row a row is compared with: same section and cell; for the blocking handler the raw
/// server with as many threads as the row has workers.
fn baseline<'a>(rows: &'a [Row], row: &Row) -> Option<&'a LoadReport> {
    rows.iter()
        .find(|b| {
            b.target.kind == Kind::Raw
                && b.target.length_prefix == row.target.length_prefix
                && b.section == row.section
                && b.cell == row.cell
                && (row.section != Section::Block || b.target.workers == row.target.workers)
        })
        .and_then(|b| b.result.as_ref().ok())
}

fn throughput_table(out: &mut String, rows: &[Row], section: &Section) {
    out.push_str("| target | conns | depth | size | msg/s | × raw | p50 µs | p99 µs | p999 µs | server CPU µs/msg | × raw | server RSS MiB | gen CPU % | other CPU % | errors |\n");
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n");
    for row in rows.iter().filter(|r| &r.section == section) {
        let c = &row.cell;
        let head = format!(
            "| {} | {} | {} | {} ",
            row.target.label(),
            c.connections,
            c.depth,
            size(c.size)
        );
        match &row.result {
            Ok(r) => {
                let base = baseline(rows, row);
                let (x_tp, x_cpu) = match (row.target.kind, base) {
                    (Kind::Raw, _) | (_, None) => ("–".to_string(), "–".to_string()),
                    (_, Some(b)) => (
                        ratio(r.msg_per_s, b.msg_per_s),
                        ratio(cpu_us_per_msg(r), cpu_us_per_msg(b)),
                    ),
                };
                let _ = writeln!(
                    out,
                    "{head}| {} | {x_tp} | {} | {} | {} | {:.2} | {x_cpu} | {:.1} | {:.0} | {:.0} | {} |",
                    n(r.msg_per_s),
                    us(r.p50_us),
                    us(r.p99_us),
                    us(r.p999_us),
                    cpu_us_per_msg(r),
                    r.server_rss_kib as f64 / 1024.0,
                    r.client_cpu_ns as f64 / (r.seconds * 1e9) * 100.0,
                    (r.other_cpu_ns + r.steal_ns) as f64 / (r.seconds * 1e9) * 100.0,
                    errors(r),
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{head}| – | – | – | – | – | – | – | – | – | – | failed: {} |",
                    e.replace('|', "/")
                );
            }
        }
    }
}

/// Metrics on vs off: each pier+ext+metrics echo row against the pier+ext row of the same cell
/// and worker count, measured in the same run, and the median ratios.
fn metrics_table(out: &mut String, rows: &[Row]) {
    let pairs: Vec<(&Row, &LoadReport, &LoadReport)> = rows
        .iter()
        .filter(|r| r.section == Section::Grid && r.target.kind == Kind::ExtMetrics)
        .filter_map(|on| {
            let off = rows.iter().find(|b| {
                b.section == Section::Grid
                    && b.target.kind == Kind::Ext
                    && b.target.workers == on.target.workers
                    && b.cell == on.cell
            })?;
            Some((on, on.result.as_ref().ok()?, off.result.as_ref().ok()?))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## Metrics on vs off (echo, closed loop)\n");
    let _ = writeln!(out, "pier+ext with `metrics.address` set (every counter and histogram recording, nothing scraping) against pier+ext without it, same cell, same worker count, same run. CPU per message is the steadier measure on a shared machine; msg/s moves with any noise.\n");
    out.push_str("| workers | conns | depth | size | msg/s off | msg/s on | on ÷ off | CPU µs/msg off | CPU µs/msg on | on ÷ off |\n");
    out.push_str("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    let mut tp = Vec::new();
    let mut cpu = Vec::new();
    for (row, on, off) in &pairs {
        let c = &row.cell;
        tp.push(on.msg_per_s / off.msg_per_s);
        cpu.push(cpu_us_per_msg(on) / cpu_us_per_msg(off));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} |",
            row.target.workers,
            c.connections,
            c.depth,
            size(c.size),
            n(off.msg_per_s),
            n(on.msg_per_s),
            ratio(on.msg_per_s, off.msg_per_s),
            cpu_us_per_msg(off),
            cpu_us_per_msg(on),
            ratio(cpu_us_per_msg(on), cpu_us_per_msg(off)),
        );
    }
    let _ = writeln!(
        out,
        "\nMedian over {} cells: throughput on ÷ off **{:.3}**, server CPU per message on ÷ off **{:.3}**.",
        pairs.len(),
        median(&mut tp),
        median(&mut cpu)
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The results document (also printed to the terminal).
pub fn markdown(
    m: &Machine,
    s: &Settings,
    rows: &[Row],
    mqtt: &[(TargetId, Result<MqttReport, String>)],
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Pier benchmark — {}{}\n",
        m.time,
        if s.quick {
            " (quick smoke run, not a result)"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "## Machine\n");
    let _ = writeln!(
        o,
        "- CPU: {} × {} ({:.0} GiB RAM)",
        m.cpus, m.cpu, m.memory_gib
    );
    let _ = writeln!(o, "- OS: {}, kernel {}", m.os, m.kernel);
    let _ = writeln!(o, "- PHP {} (CLI, no opcache/JIT), {}", m.php, m.rustc);
    let _ = writeln!(o, "- Commit {}, release build (thin LTO)", m.commit);
    let _ = writeln!(
        o,
        "- Placement: servers and their PHP workers on CPU {}, load generator on CPU {} (taskset)\n",
        s.server_cpus.as_deref().unwrap_or("any (fewer than 2 CPUs: not pinned)"),
        s.client_cpus.as_deref().unwrap_or("any")
    );
    let _ = writeln!(o, "## How it was measured\n");
    let _ = writeln!(
        o,
        "`./dev.sh bench{}` ran every target in one run ({:.0} s wall time): **raw** (in-bench tokio echo server \
         framing on `\\n`, no PHP: the ceiling), **pier+ext** (pier with PHP workers on the extension) and \
         **pier+php** (pier with workers on the pure-PHP package), with 1 and 2 PHP workers (×1, ×2). \
         Cells run target after target, so drift of the machine hits all targets alike.\n",
        if s.quick { " --quick" } else { "" },
        s.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "- Closed loop: each connection sends `depth` packets of `size` bytes (delimiter included), waits for all \
         replies, repeats. {:.1} s warm-up, then {:.1} s measured per cell ({}). msg/s = replies received in the \
         window / window; latency = reply time − batch send time (a batch's last reply waits for the whole batch), \
         for every reply after the warm-up, including replies to batches still in flight when the window ends \
         (so a starved connection shows in p99 instead of vanishing).",
        s.warmup,
        s.duration,
        if s.quick {
            "smoke-run windows: too short for conclusions"
        } else {
            "chosen so the whole run, ~150 load runs with their connect ramps and settling, stays well under 15 minutes"
        }
    );
    let _ = writeln!(o, "- Server CPU µs/msg: CPU time (from /proc schedstat) of the server and all its worker processes during the window ÷ replies. On one pinned core, 1e6 ÷ this is the throughput ceiling of that target.");
    let _ = writeln!(o, "- gen CPU %: the load generator's own CPU in the window (100 % = its core is saturated: that row is bounded by the generator).");
    let _ = writeln!(o, "- other CPU %: CPU used during the window by anything but the server tree and the generator, plus hypervisor steal (from /proc/stat, 10 ms ticks, % of one CPU). Near 0 = an undisturbed row.");
    let _ = writeln!(o, "- Server RSS: the server process plus its workers (VmRSS summed) at the end of the window.");
    let _ = writeln!(o, "- × raw: this row divided by the raw row of the same cell (throughput: higher is better; CPU: lower is better).\n");

    // A run limited with --sections leaves some parts out: no empty tables for them.
    let has = |section: &Section| rows.iter().any(|r| &r.section == section);
    if has(&Section::Grid) {
        let _ = writeln!(o, "## Echo, closed loop\n");
        throughput_table(&mut o, rows, &Section::Grid);
    }

    for rate in rows
        .iter()
        .filter_map(|r| {
            if let Section::Open(x) = r.section {
                Some(x)
            } else {
                None
            }
        })
        .fold(Vec::new(), |mut v, x| {
            if !v.contains(&x) {
                v.push(x);
            }
            v
        })
    {
        let _ = writeln!(o, "\n## Echo, open loop at {} msg/s\n", n(rate));
        let _ = writeln!(o, "Packets are sent on a fixed schedule whatever the replies do, and latency is measured from the *scheduled* send time (no coordinated omission). The generator wakes 1.5 ms early and yields until the exact send time (tokio timers are 1 ms coarse), so its own lag (scheduled → actual send, median, shown) stays small; the raw row is the floor.\n");
        o.push_str("| target | conns | size | achieved msg/s | p50 µs | p99 µs | p999 µs | max µs | send lag p50 µs | server CPU µs/msg | gen CPU % | other CPU % | errors |\n");
        o.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n");
        for row in rows.iter().filter(|r| r.section == Section::Open(rate)) {
            match &row.result {
                Ok(r) => {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {} |",
                        row.target.label(),
                        row.cell.connections,
                        size(row.cell.size),
                        n(r.msg_per_s),
                        us(r.p50_us),
                        us(r.p99_us),
                        us(r.p999_us),
                        us(r.max_us),
                        us(r.send_lag_p50_us),
                        cpu_us_per_msg(r),
                        r.client_cpu_ns as f64 / (r.seconds * 1e9) * 100.0,
                        (r.other_cpu_ns + r.steal_ns) as f64 / (r.seconds * 1e9) * 100.0,
                        errors(r)
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | – | – | – | – | – | – | – | – | – | failed: {} |",
                        row.target.label(),
                        row.cell.connections,
                        size(row.cell.size),
                        e.replace('|', "/")
                    );
                }
            }
        }
    }

    metrics_table(&mut o, rows);
    if has(&Section::Idle) {
        idle_section(&mut o, rows, s.idle);
    }
    if has(&Section::Block) {
        block_section(&mut o, rows, s.block_us);
    }
    if has(&Section::Framing) {
        framing_section(&mut o, rows);
    }
    if !mqtt.is_empty() {
        mqtt_section(&mut o, mqtt);
    }
    o
}

/// Memory per idle connection.
fn idle_section(o: &mut String, rows: &[Row], idle: usize) {
    let _ = writeln!(o, "\n## Idle connections: memory per connection\n");
    let _ = writeln!(o, "{} connections opened (at most 256 connects in flight, 60 s bound), server left to settle, then RSS sampled. Per connection = (RSS with all open − RSS before) ÷ connections; the server process alone holds the per-connection state, the tree adds the workers.\n", idle);
    o.push_str("| target | connected | ramp s | server RSS before MiB | after MiB | bytes/conn (server process) | bytes/conn (server + workers) | errors |\n");
    o.push_str("|---|--:|--:|--:|--:|--:|--:|---|\n");
    for row in rows.iter().filter(|r| r.section == Section::Idle) {
        match &row.result {
            Ok(r) => {
                let per = |after: u64, before: u64| {
                    if r.connections == 0 {
                        "–".to_string()
                    } else {
                        n((after as f64 - before as f64) * 1024.0 / r.connections as f64)
                    }
                };
                let _ = writeln!(
                    o,
                    "| {} | {} | {:.2} | {:.1} | {:.1} | {} | {} | {} |",
                    row.target.label(),
                    r.connections,
                    r.connect_seconds,
                    r.server_rss_before_kib as f64 / 1024.0,
                    r.server_rss_kib as f64 / 1024.0,
                    per(r.server_root_rss_kib, r.server_root_rss_before_kib),
                    per(r.server_rss_kib, r.server_rss_before_kib),
                    errors(r)
                );
            }
            Err(e) => {
                let _ = writeln!(
                    o,
                    "| {} | – | – | – | – | – | – | failed: {} |",
                    row.target.label(),
                    e.replace('|', "/")
                );
            }
        }
    }
}

/// The blocking handler.
fn block_section(o: &mut String, rows: &[Row], block_us: u64) {
    let _ = writeln!(
        o,
        "\n## Handler blocking {} µs per packet (closed loop, depth 1, 32 B)\n",
        block_us
    );
    let _ = writeln!(o, "PHP workers call `usleep({})`; raw blocks one runtime thread per packet (`std::thread::sleep`), with as many threads as the row has workers, so × raw compares like with like. The ceiling is workers × 1e6 / {} msg/s.\n", block_us, block_us);
    throughput_table(o, rows, &Section::Block);
}

/// MQTT fan-out through examples/mqtt.
fn mqtt_section(o: &mut String, rows: &[(TargetId, Result<MqttReport, String>)]) {
    let _ = writeln!(o, "\n## MQTT fan-out (examples/mqtt, QoS 0)\n");
    let _ = writeln!(o, "One publisher, every subscriber on the same topic; the publisher sends 16 messages of 32 B back to back, waits until every subscriber has all of them, repeats. The broker is PHP (one SQLite lookup per PUBLISH, one Pier broadcast to the topic's group). Server CPU is pier plus its PHP workers, per delivered message; pier's share is the pier process alone (the rest is PHP).\n");
    o.push_str("| target | subscribers | published | published msg/s | delivered msg/s | server CPU µs/delivery | pier's share | other CPU % | error |\n");
    o.push_str("|---|--:|--:|--:|--:|--:|--:|--:|---|\n");
    for (id, r) in rows {
        match r {
            Ok(r) => {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {:.2} | {:.0} % | {:.0} | {} |",
                    id.label(),
                    r.subscribers,
                    r.published,
                    n(r.published_per_s),
                    n(r.delivered_per_s),
                    r.cpu_us_per_delivery(),
                    r.pier_share() * 100.0,
                    r.other_cpu_ns as f64 / (r.seconds.max(1e-9) * 1e9) * 100.0,
                    r.error.as_deref().unwrap_or("–").replace('|', "/")
                );
            }
            Err(e) => {
                let _ = writeln!(
                    o,
                    "| {} | – | – | – | – | – | – | – | failed: {} |",
                    id.label(),
                    e.replace('|', "/")
                );
            }
        }
    }
}

/// Length-prefixed echo against the delimiter echo of the same cell, measured in the same run.
fn framing_section(o: &mut String, rows: &[Row]) {
    let _ = writeln!(o, "\n## Length-prefixed framing (closed loop)\n");
    let _ = writeln!(o, "The same cells twice: framed by `\\n` (size includes it) and by a 4-byte big-endian length (`len`: pier's `framing: {{mode: length_field, length_size: 4}}`, the raw server's own length parser; size = payload, the frame is 4 bytes longer). Workers echo the packet they get (header included). × raw compares with raw of the same framing.\n");
    throughput_table(o, rows, &Section::Framing);
    let _ = writeln!(o, "\nFraming cost: server CPU per message framed by length minus framed by delimiter, same target and cell, same run (negative: the length framing is cheaper).\n");
    o.push_str("| target | conns | depth | size | delimiter µs/msg | length µs/msg | cost µs/msg | msg/s len ÷ delimiter |\n");
    o.push_str("|---|--:|--:|--:|--:|--:|--:|--:|\n");
    for row in rows
        .iter()
        .filter(|r| r.section == Section::Framing && r.target.length_prefix)
    {
        let delimited = rows.iter().find(|d| {
            d.section == Section::Framing
                && !d.target.length_prefix
                && d.target.kind == row.target.kind
                && d.target.workers == row.target.workers
                && d.cell == row.cell
        });
        let c = &row.cell;
        let label = TargetId {
            length_prefix: false,
            ..row.target
        }
        .label();
        let cells = match (&row.result, delimited.map(|d| &d.result)) {
            (Ok(l), Some(Ok(d))) => format!(
                "{:.2} | {:.2} | {:+.2} | {}",
                cpu_us_per_msg(d),
                cpu_us_per_msg(l),
                cpu_us_per_msg(l) - cpu_us_per_msg(d),
                ratio(l.msg_per_s, d.msg_per_s)
            ),
            _ => "– | – | – | –".into(),
        };
        let _ = writeln!(
            o,
            "| {label} | {} | {} | {} | {cells} |",
            c.connections,
            c.depth,
            size(c.size)
        );
    }
}

/// Prints the document to stdout.
pub fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: Kind, msg_per_s: f64, cpu_ns: u64) -> Row {
        Row {
            section: Section::Grid,
            target: TargetId::new(kind, 1, 0),
            cell: Cell::new(100, 16, 1024),
            result: Ok(LoadReport {
                messages: (msg_per_s * 2.0) as u64,
                seconds: 2.0,
                msg_per_s,
                server_cpu_ns: cpu_ns,
                client_cpu_ns: 1_000_000_000,
                ..LoadReport::default()
            }),
        }
    }

    #[test]
    fn rows_are_compared_with_raw_of_the_same_cell() {
        let rows = vec![
            row(Kind::Raw, 200_000.0, 400_000_000),
            row(Kind::Ext, 50_000.0, 1_000_000_000),
        ];
        let m = Machine::describe("php", Path::new("."));
        let s = Settings {
            quick: true,
            warmup: 0.1,
            duration: 2.0,
            idle: 10,
            block_us: 1000,
            elapsed: Duration::from_secs(3),
            server_cpus: Some("0".into()),
            client_cpus: Some("1".into()),
        };
        let text = markdown(&m, &s, &rows, &[]);
        // raw: 1 µs/msg; ext: 10 µs/msg, a quarter of the throughput.
        assert!(
            text.contains("| pier+ext ×1 | 100 | 16 | 1 KiB | 50,000 | 0.25 |"),
            "{text}"
        );
        assert!(text.contains("| 10.00 | 10.00 |"), "{text}");
        assert!(
            text.contains("| raw ×1 | 100 | 16 | 1 KiB | 200,000 | – |"),
            "{text}"
        );
    }

    #[test]
    fn a_row_without_messages_or_with_errors_is_not_ok() {
        let mut r = row(Kind::Ext, 0.0, 0);
        assert!(!r.ok());
        r = row(Kind::Ext, 10.0, 10);
        assert!(r.ok());
        if let Ok(rep) = &mut r.result {
            rep.errors = 1;
        }
        assert!(!r.ok());
    }
}
