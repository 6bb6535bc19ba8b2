//! `pier workers`, `pier connections`, `pier reset` (the real binary) and RoadRunner's `informer` /
//! `resetter` methods (the shared vectors, byte for byte) against a server in-process, with its RPC
//! listener on 127.0.0.1:0.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{test_worker, yaml, Harness};

const ONE: &str = "    s:\n      addr: 127.0.0.1:0\n";

fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/rpc-vectors.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    hex::decode(json["frames"][name]["hex"].as_str().unwrap()).unwrap()
}

/// A server with RPC (and metrics) on loopback port 0.
async fn start(workers: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(
        dir.path(),
        &[&test_worker()],
        ONE,
        &format!("    num_workers: {workers}\n"),
        "",
    ) + "rpc:\n  listen: tcp://127.0.0.1:0\nmetrics:\n  address: 127.0.0.1:0\n";
    Harness::start(dir, &text).await
}

/// A config file for the `pier` commands: the harness's servers and its real RPC address.
fn config_for(h: &Harness) -> PathBuf {
    let path = h.dir.path().join("ctl.rr.yaml");
    let text = yaml(h.dir.path(), &[&test_worker()], ONE, "", "")
        + &format!("rpc:\n  listen: {}\n", h.rpc.as_ref().unwrap());
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `pier ARGS -c CONFIG` in a blocking thread: (exit code, stdout, stderr).
async fn pier(args: &[&str], config: PathBuf) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        support::process::run_pier(&args, &config)
    })
    .await
    .unwrap()
}

/// One raw request frame to the RPC listener; the raw answer frame.
async fn raw_call(h: &Harness, request: Vec<u8>) -> Vec<u8> {
    let addr = h
        .rpc
        .as_ref()
        .unwrap()
        .trim_start_matches("tcp://")
        .to_owned();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(support::HANG)).unwrap();
        s.write_all(&request).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        let hl = usize::from(head[0] & 0x0f) * 4;
        let len = u32::from_le_bytes(head[2..6].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; hl - 12 + len];
        s.read_exact(&mut rest).unwrap();
        [head.to_vec(), rest].concat()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informer_answers_match_the_stock_client_vectors() {
    let mut h = start(2).await;
    // informer.List: byte for byte.
    assert_eq!(
        raw_call(&h, vector("rpc_request_informer_list_json")).await,
        vector("rpc_response_informer_list_json")
    );
    // informer.Workers: RoadRunner's shape (its own pids and numbers).
    let answer = raw_call(&h, vector("rpc_request_informer_workers_json")).await;
    let body = &answer[12 + 8 + "informer.Workers".len()..];
    let list: serde_json::Value = serde_json::from_slice(body).unwrap();
    let workers = list["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{list}");
    for w in workers {
        for key in [
            "pid",
            "status",
            "numExecs",
            "created",
            "memoryUsage",
            "CPUPercent",
            "command",
            "statusStr",
        ] {
            assert!(w.get(key).is_some(), "{key} in {w}");
        }
        assert_eq!(w["statusStr"], "ready");
        assert_eq!(w["status"], 1);
        assert!(w["memoryUsage"].as_u64().unwrap() > 0);
        assert_eq!(w["command"], test_worker());
    }
    // Every call is counted.
    let (_, metrics) = h.http_get("metrics", "/metrics").await;
    for line in [
        "pier_rpc_calls_total{method=\"informer.List\",result=\"ok\"} 1",
        "pier_rpc_calls_total{method=\"informer.Workers\",result=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pier_workers_shows_each_worker_and_the_event_it_runs() {
    let mut h = start(2).await;
    let mut busy = h.connect("s").await;
    let (_, _, uuid) = busy.hello().await;
    busy.send("sleep 3000\r\n").await;
    support::wait_for_marker(&h, "sleeping").await;
    let busy_pid = std::fs::read_to_string(h.dir.path().join("sleeping")).unwrap();
    let (code, out, err) = pier(&["workers"], config_for(&h)).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "tcp: 2 workers, 1 running an event", "{out}");
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        header,
        ["PID", "STATUS", "EVENTS", "MEMORY", "CPU", "AGE", "RUNNING", "NOW"]
    );
    assert_eq!(lines.len(), 4, "{out}");
    let working = lines
        .iter()
        .find(|l| l.starts_with(&format!("{busy_pid} ")))
        .unwrap_or_else(|| panic!("pid {busy_pid} in\n{out}"));
    assert!(working.contains(" working "), "{working}");
    assert!(working.contains(&format!("{uuid} for ")), "{working}");
    let idle = lines[2..]
        .iter()
        .find(|l| !l.starts_with(&format!("{busy_pid} ")))
        .unwrap();
    assert!(idle.contains(" ready ") && idle.ends_with(" -"), "{idle}");
    assert_eq!(busy.line().await.unwrap(), "slept");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pier_connections_counts_and_lists_them() {
    let mut h = start(1).await;
    let mut a = h.connect("s").await;
    let (_, remote_a, uuid_a) = a.hello().await;
    let mut b = h.connect("s").await;
    let (_, _, uuid_b) = b.hello().await;
    assert_eq!(a.ask("hi\r\n").await, "s:hi");
    let (code, out, err) = pier(&["connections"], config_for(&h)).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("s: 2 connections\n"), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&uuid_a))
        .unwrap_or_else(|| panic!("{uuid_a} in\n{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // uuid, server, remote, age, in (n B), out (n B), groups
    assert_eq!(&cells[1..3], ["s", remote_a.as_str()], "{row}");
    assert_eq!(
        cells[4..6],
        ["4", "B"],
        "the 4 bytes of \"hi\\r\\n\": {row}"
    );
    assert!(out.contains(&uuid_b), "{out}");
    let (_, limited, _) = pier(&["connections", "--limit", "1"], config_for(&h)).await;
    assert!(limited.contains("(showing 1 of 2;"), "{limited}");
    h.shutdown().await;
}

#[test]
fn control_commands_without_a_server_exit_1_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    // A loopback port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path().join("rr.yaml");
    let base = yaml(dir.path(), &[&test_worker()], ONE, "", "");
    std::fs::write(
        &path,
        format!("{base}rpc:\n  listen: tcp://127.0.0.1:{port}\n"),
    )
    .unwrap();
    for cmd in ["reset", "workers", "connections"] {
        let out = Command::new(env!("CARGO_BIN_EXE_pier"))
            .args([cmd, "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {stderr}");
        // The advice, then the cause (address and OS error) once: anyhow prints the chain.
        let cause = format!("could not reach the RPC server at tcp://127.0.0.1:{port}");
        assert!(
            stderr.starts_with(
                "error: could not talk to the running server (is `pier serve` running with this config?): "
            ) && stderr.matches(&cause).count() == 1,
            "{cmd}: {stderr}"
        );
    }
    let no_rpc = dir.path().join("no-rpc.yaml");
    std::fs::write(&no_rpc, &base).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["reset", "-c"])
        .arg(&no_rpc)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("could not find rpc.listen in the config"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pier_reset_under_load_replaces_every_worker_and_fails_no_event() {
    let mut h = start(3).await;
    let config = config_for(&h);
    // The resetter vectors: reset of tcp answers exactly the stock answer; an unknown plugin too.
    assert_eq!(
        raw_call(&h, vector("rpc_request_resetter_reset_unknown_json")).await,
        vector("rpc_response_resetter_reset_unknown_json")
    );
    let pids = |out: &str| -> std::collections::BTreeSet<String> {
        out.lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let (_, before, _) = pier(&["workers"], config.clone()).await;
    let before = pids(&before);
    assert_eq!(before.len(), 3);
    // 12 clients keep asking while the workers are replaced.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..12 {
        let mut c = h.connect("s").await;
        c.hello().await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                let q = format!("c{i}-{n}");
                assert_eq!(c.ask(&format!("{q}\r\n")).await, format!("s:{q}"));
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, out, err) = pier(&["reset"], config.clone()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("Resetting tcp: 3 workers"), "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Each client asserted every answer (a connection closed by the reset would have failed it).
    for task in load {
        assert!(
            task.await.unwrap() > 0,
            "every client was answered throughout"
        );
    }
    let (_, after, _) = pier(&["workers"], config).await;
    let after = pids(&after);
    assert_eq!(after.len(), 3);
    assert!(
        before.is_disjoint(&after),
        "every pid is new: {before:?} → {after:?}"
    );
    let (_, metrics) = h.http_get("metrics", "/metrics").await;
    assert!(
        metrics.contains("pier_worker_restarts_total{reason=\"reset\"} 3"),
        "{metrics}"
    );
    // The stock client's resetter.Reset("tcp"): the answer is the captured one, byte for byte.
    assert_eq!(
        raw_call(&h, vector("rpc_request_resetter_reset_json")).await,
        vector("rpc_response_resetter_reset_json")
    );
    h.shutdown().await;
}
