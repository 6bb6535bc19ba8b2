//! `pier reset`, `pier workers [-i]` and `pier connections`: a running server's workers and
//! connections over its RPC listener (`rpc.listen` of the same config), printed for people.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;

use crate::registry::ConnInfo;
use crate::rpc::client::{Client, ClientError};
use crate::rpc::ops::{WorkerList, PLUGIN};

/// How long a plain call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a rolling reset may take: one worker at a time, each bounded by the server's own
/// `reset_timeout`; this only stops the command from waiting forever on a server that hangs.
const RESET_TIMEOUT: Duration = Duration::from_secs(600);
/// How often `pier workers -i` refreshes.
const REFRESH: Duration = Duration::from_secs(1);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The config has no `rpc.listen`: there is nothing to talk to.
    #[error("could not find rpc.listen in the config: `pier serve` starts the RPC listener only when rpc.listen is set (for example rpc: {{ listen: tcp://127.0.0.1:6001 }})")]
    NoRpc,
    /// Nothing answers at the address, or the connection failed during the call. The cause
    /// (address and OS error) is the source, printed once after this text.
    #[error("could not talk to the running server (is `pier serve` running with this config?)")]
    Unreachable(#[source] ClientError),
    /// The server answered, but not as expected.
    #[error(transparent)]
    Call(ClientError),
    /// The server has no `tcp` plugin (another RoadRunner-compatible server).
    #[error("could not find the tcp plugin on the server at {0} (it lists {1:?})")]
    NoTcp(String, Vec<String>),
    /// Writing to the terminal failed.
    #[error("could not write the output")]
    Output(#[source] std::io::Error),
}

fn connect(address: &str, timeout: Duration) -> Result<Client, CtlError> {
    Client::connect(address, timeout).map_err(CtlError::Unreachable)
}

fn call<R: for<'de> Deserialize<'de>>(
    client: &mut Client,
    method: &str,
    arg: serde_json::Value,
) -> Result<R, CtlError> {
    client.call(method, &arg).map_err(|e| match e {
        e @ (ClientError::Connect { .. } | ClientError::Io { .. }) => CtlError::Unreachable(e),
        e => CtlError::Call(e),
    })
}

/// `pier reset`: asks for a rolling reset of the tcp workers, which also re-reads the TLS
/// certificates of the servers that have `tls` (`tls_servers`, from the config: named in the
/// output), and prints what happened. A bad certificate file makes it fail with the server's
/// message (the workers are reset all the same; that server keeps its current certificates).
pub fn reset(address: &str, tls_servers: &[String], out: &mut dyn Write) -> Result<(), CtlError> {
    let mut client = connect(address, CALL_TIMEOUT)?;
    let plugins: Vec<String> = call(&mut client, "resetter.List", json!(true))?;
    if !plugins.iter().any(|p| p == PLUGIN) {
        return Err(CtlError::NoTcp(address.to_owned(), plugins));
    }
    let before: WorkerList = call(&mut client, "informer.Workers", json!(PLUGIN))?;
    let pids =
        |l: &WorkerList| -> Vec<String> { l.workers.iter().map(|w| w.pid.to_string()).collect() };
    writeln!(
        out,
        "Resetting {PLUGIN}: {} workers (pids {}), one at a time; connections stay open",
        before.workers.len(),
        pids(&before).join(" ")
    )
    .map_err(CtlError::Output)?;
    let started = Instant::now();
    let mut client = connect(address, RESET_TIMEOUT)?;
    let _: bool = call(&mut client, "resetter.Reset", json!(PLUGIN))?;
    let after: WorkerList = call(&mut client, "informer.Workers", json!(PLUGIN))?;
    writeln!(
        out,
        "Done in {:.1} s: {} workers running now (pids {})",
        started.elapsed().as_secs_f64(),
        after.workers.len(),
        pids(&after).join(" ")
    )
    .map_err(CtlError::Output)?;
    if !tls_servers.is_empty() {
        writeln!(
            out,
            "TLS certificates reloaded: {} (open connections keep theirs)",
            tls_servers.join(", ")
        )
        .map_err(CtlError::Output)?;
    }
    Ok(())
}

/// `pier workers`: the table once, or (`interactive`) refreshed in place until Ctrl-C.
pub fn workers(address: &str, interactive: bool, out: &mut dyn Write) -> Result<(), CtlError> {
    let mut client = connect(address, CALL_TIMEOUT)?;
    loop {
        let plugins: Vec<String> = call(&mut client, "informer.List", json!(true))?;
        let mut text = String::new();
        for plugin in &plugins {
            let list: WorkerList = call(&mut client, "informer.Workers", json!(plugin))?;
            text.push_str(&workers_table(plugin, &list, SystemTime::now()));
        }
        if interactive {
            // Home, clear the screen, then the table: a steady picture, as `rr workers -i`.
            writeln!(
                out,
                "\x1b[H\x1b[2J{text}(refreshing every second; Ctrl-C to quit)"
            )
            .map_err(CtlError::Output)?;
            out.flush().map_err(CtlError::Output)?;
            std::thread::sleep(REFRESH);
        } else {
            out.write_all(text.as_bytes()).map_err(CtlError::Output)?;
            return Ok(());
        }
    }
}

/// The workers of one plugin as a table.
pub fn workers_table(plugin: &str, list: &WorkerList, now: SystemTime) -> String {
    let busy = list.workers.iter().filter(|w| w.event.is_some()).count();
    let mut rows = vec![[
        "PID".to_owned(),
        "STATUS".to_owned(),
        "EVENTS".to_owned(),
        "MEMORY".to_owned(),
        "CPU".to_owned(),
        "AGE".to_owned(),
        "RUNNING NOW".to_owned(),
    ]];
    for w in &list.workers {
        let created = UNIX_EPOCH + Duration::from_nanos(u64::try_from(w.created).unwrap_or(0));
        let age = now.duration_since(created).unwrap_or(Duration::ZERO);
        rows.push([
            w.pid.to_string(),
            w.status_str.clone(),
            w.num_execs.to_string(),
            bytes(w.memory_usage),
            format!("{:.1} %", w.cpu_percent),
            duration(age),
            match &w.event {
                Some(e) => format!(
                    "{} for {}",
                    e.connection,
                    duration(Duration::from_secs_f64(e.seconds.max(0.0)))
                ),
                None => "-".to_owned(),
            },
        ]);
    }
    format!(
        "{plugin}: {} workers, {busy} running an event\n{}",
        list.workers.len(),
        table(&rows)
    )
}

/// `pier.List`'s result.
#[derive(Debug, Deserialize)]
struct Page {
    /// Matching connections in all.
    total: usize,
    /// This page.
    connections: Vec<ConnInfo>,
    /// In a cluster, the nodes that did not answer in time.
    #[serde(default)]
    missing: Vec<String>,
}

/// What `pier connections` lists.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    /// Only this server.
    pub server: Option<String>,
    /// Only this group's members.
    pub group: Option<String>,
    /// At most this many rows.
    pub limit: usize,
}

/// `pier connections`: how many per server, then the list.
pub fn connections(
    address: &str,
    servers: &[String],
    filter: &ConnectionFilter,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let mut client = connect(address, CALL_TIMEOUT)?;
    let mut text = String::new();
    for server in servers {
        if filter.server.as_ref().is_some_and(|s| s != server) {
            continue;
        }
        let n: usize = call(&mut client, "pier.Count", json!({ "server": server }))?;
        text.push_str(&format!("{server}: {n} connections\n"));
    }
    let mut arg = serde_json::Map::new();
    if let Some(s) = &filter.server {
        arg.insert("server".into(), json!(s));
    }
    if let Some(g) = &filter.group {
        arg.insert("group".into(), json!(g));
    }
    arg.insert("limit".into(), json!(filter.limit.clamp(1, 1000)));
    let page: Page = call(&mut client, "pier.List", serde_json::Value::Object(arg))?;
    text.push('\n');
    text.push_str(&connections_table(&page.connections, SystemTime::now()));
    if page.total > page.connections.len() {
        text.push_str(&format!(
            "(showing {} of {}; --limit shows more, up to 1000)\n",
            page.connections.len(),
            page.total
        ));
    }
    if !page.missing.is_empty() {
        text.push_str(&format!(
            "(not counted: cluster nodes {} did not answer in time)\n",
            page.missing.join(", ")
        ));
    }
    out.write_all(text.as_bytes()).map_err(CtlError::Output)
}

/// Connections as a table; with a NODE column when they come from a cluster.
pub fn connections_table(list: &[ConnInfo], now: SystemTime) -> String {
    let table = plain_table(list, now);
    if list.iter().all(|c| c.node.is_none()) {
        return table;
    }
    // The node goes last: the columns before it keep their place.
    let nodes =
        std::iter::once("NODE").chain(list.iter().map(|c| c.node.as_deref().unwrap_or("-")));
    let lines: Vec<&str> = table.lines().collect();
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (line, node) in lines.iter().zip(nodes) {
        let pad = width - line.chars().count() + 2;
        out.push_str(&format!("{line}{}{node}\n", " ".repeat(pad)));
    }
    out
}

fn plain_table(list: &[ConnInfo], now: SystemTime) -> String {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let mut rows = vec![[
        "UUID".to_owned(),
        "SERVER".to_owned(),
        "REMOTE".to_owned(),
        "AGE".to_owned(),
        "IN".to_owned(),
        "OUT".to_owned(),
        "GROUPS".to_owned(),
    ]];
    for c in list {
        rows.push([
            c.uuid.clone(),
            c.server.clone(),
            c.remote_addr.clone(),
            duration(Duration::from_secs_f64((now - c.connected_at).max(0.0))),
            bytes(c.bytes_in),
            bytes(c.bytes_out),
            if c.groups.is_empty() {
                "-".to_owned()
            } else {
                c.groups.join(",")
            },
        ]);
    }
    table(&rows)
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < N {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `512 B`, `1.5 KiB`, `24.1 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::ops::{RunningEvent, WorkerInfo};

    #[test]
    fn workers_table_shows_the_running_event() {
        let now = UNIX_EPOCH + Duration::from_secs(1_764_430_100);
        let worker = |pid, event: Option<RunningEvent>| WorkerInfo {
            pid,
            status: if event.is_some() { 2 } else { 1 },
            num_execs: 17,
            created: 1_764_430_000_000_000_000,
            memory_usage: 20_971_520,
            cpu_percent: 0.5,
            command: "php worker.php".into(),
            status_str: if event.is_some() { "working" } else { "ready" }.into(),
            event,
        };
        let list = WorkerList {
            workers: vec![
                worker(4242, None),
                worker(
                    4243,
                    Some(RunningEvent {
                        connection: "6ba7b810-9dad-41d1-80b4-00c04fd430c8".into(),
                        seconds: 1.25,
                    }),
                ),
            ],
        };
        assert_eq!(
            workers_table("tcp", &list, now),
            "tcp: 2 workers, 1 running an event\n\
             PID   STATUS   EVENTS  MEMORY    CPU    AGE    RUNNING NOW\n\
             4242  ready    17      20.0 MiB  0.5 %  1m40s  -\n\
             4243  working  17      20.0 MiB  0.5 %  1m40s  6ba7b810-9dad-41d1-80b4-00c04fd430c8 for 1.2s\n"
        );
    }

    #[test]
    fn cluster_rows_get_a_node_column() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let row = |uuid: &str, node: Option<&str>, groups: &[&str]| ConnInfo {
            uuid: uuid.into(),
            server: "s".into(),
            remote_addr: "127.0.0.1:5000".into(),
            connected_at: 990.0,
            bytes_in: 10,
            bytes_out: 2048,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            node: node.map(str::to_owned),
        };
        let single = [row("u1", None, &[])];
        assert!(!connections_table(&single, now).contains("NODE"));
        let cluster = [row("u1", Some("n0"), &["room"]), row("u2", Some("n1"), &[])];
        assert_eq!(
            connections_table(&cluster, now),
            "UUID  SERVER  REMOTE          AGE    IN    OUT      GROUPS  NODE\n\
             u1    s       127.0.0.1:5000  10.0s  10 B  2.0 KiB  room    n0\n\
             u2    s       127.0.0.1:5000  10.0s  10 B  2.0 KiB  -       n1\n"
        );
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(7380)), "2h03m");
        assert_eq!(duration(Duration::from_secs(273_600)), "3d04h");
    }
}
