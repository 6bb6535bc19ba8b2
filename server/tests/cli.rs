//! The `pier` binary: exit codes, config errors on stderr, warnings, worker stderr in the log,
//! SIGTERM → graceful stop, exit 0.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::{test_worker, yaml, Client};

fn pier() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pier"))
}

#[test]
fn config_errors_exit_1_naming_key_and_problem_without_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "version: '3'\nserver: {command: x}\ntcp: {servers: {}}\n",
            vec![],
            "no servers registered",
        ),
        (
            "version: '3'\nserver: {command: x}\ntcp: {servers: {smtp: {delimiter: x}}}\n",
            vec![],
            "empty address for the server: smtp",
        ),
        (
            "version: '3'\nserver: {command: x}\ntcp: {servers: {a: {addr: 'x:1'}}}\n",
            vec!["-o", "tcp.pool.allocate_timeout=6o s"],
            "invalid duration for tcp.pool.allocate_timeout: \"6o s\"",
        ),
        (
            "version: [\n",
            vec![],
            "could not parse config file as YAML",
        ),
        (
            // A scheme the config takes, a URL the bus client cannot use: found when the
            // cluster starts, before any worker.
            "version: '3'\nserver: {command: 'false'}\ntcp: {servers: {a: {addr: '127.0.0.1:0'}}}\ncluster: {bus: 'redis://host:notaport'}\n",
            vec![],
            "could not start the cluster bus: could not use bus URL redis://host:notaport: ",
        ),
        (
            "version: '3'\nserver: {command: 'false'}\ntcp: {servers: {a: {addr: '127.0.0.1:0'}}}\nlogs: {output: '/nonexistent-dir/pier.log'}\n",
            vec![],
            "could not open the log output /nonexistent-dir/pier.log: No such file or directory",
        ),
    ];
    for (text, args, want) in cases {
        let path = dir.path().join("rr.yaml");
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = run_bounded(
            pier()
                .arg("serve")
                .arg("-c")
                .arg(&path)
                .args(&args)
                .env("RUST_BACKTRACE", "1"),
        );
        assert_eq!(code, Some(1), "{want}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(want), "{want}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
    let (code, stderr) = run_bounded(
        pier()
            .args(["serve", "-c"])
            .arg(dir.path().join("missing.yaml")),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("could not read config file"), "{stderr}");
}

#[test]
fn a_worker_that_cannot_start_exits_1_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(
        dir.path(),
        &[&test_worker()],
        "    s:\n      addr: 127.0.0.1:0\n",
        "    num_workers: 1\n",
        "    TW_BOOT: die\n",
    );
    let path = dir.path().join(".rr.yaml");
    std::fs::write(&path, text).unwrap();
    // Default config path: .rr.yaml in the working directory.
    let (code, stderr) = run_bounded(pier().arg("serve").current_dir(dir.path()));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("fatal: cannot boot (test worker)"),
        "{stderr}"
    );
}

/// Also the multi-thread runtime (`tcp.io_threads` > 1); the other test runs the default one.
#[test]
fn sigterm_stops_gracefully_with_exit_0_and_worker_stderr_is_logged() {
    graceful_stop("-TERM", false, 2);
}

/// Ctrl-C in a terminal signals the whole foreground process group: the workers must not die
/// with pier, or the open connections' CLOSE events would be lost.
#[test]
fn sigint_to_the_process_group_still_delivers_close() {
    graceful_stop("-INT", true, 1);
}

fn graceful_stop(signal: &str, whole_group: bool, io_threads: usize) {
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(
        dir.path(),
        &[&test_worker()],
        "    s:\n      addr: 127.0.0.1:0\n      colour: blue\n",
        "    num_workers: 1\n",
        "",
    );
    let path = dir.path().join("rr.yaml");
    std::fs::write(&path, text).unwrap();
    let mut command = pier();
    command
        .args(["serve", "-c"])
        .arg(&path)
        .arg("-o")
        .arg(format!("tcp.io_threads={io_threads}"))
        .stderr(Stdio::piped());
    // Its own group, as a shell gives a foreground job.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().unwrap();
    // pier's log through a thread, so that every wait for it is bounded (`support::HANG` per
    // line): a pier that hangs fails the test with what it wrote, instead of hanging it.
    let (log_tx, log) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if log_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let addr = loop {
        let line = log
            .recv_timeout(support::HANG)
            .unwrap_or_else(|e| panic!("no address logged ({e}): {seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if let Some(at) = line.find("addr=") {
            break line[at + 5..].trim().parse().unwrap();
        }
    };
    assert!(
        seen.contains("unknown key tcp.servers.s.colour"),
        "warning names the key path: {seen}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The connection stays open through the shutdown: it must still get its CLOSE.
    let (uuid, noisy, _open) = runtime.block_on(async {
        let mut c = Client::connect(addr).await;
        let (_, _, uuid) = c.hello().await;
        assert_eq!(c.ask("stderr\r\n").await, "ok");
        // Stray bytes behind a reply: the worker is replaced before the next event (logged below).
        let noisy = c.ask("echo-trailing\r\n").await;
        assert_ne!(
            c.ask("pid\r\n").await,
            noisy,
            "the next event ran elsewhere"
        );
        (uuid, noisy, c)
    });
    let target = if whole_group {
        format!("-{}", child.id())
    } else {
        child.id().to_string()
    };
    let status = Command::new("kill")
        .args([signal, "--", &target])
        .status()
        .unwrap();
    assert!(status.success());
    // Until pier has exited and its stderr is closed (the channel disconnects).
    loop {
        match log.recv_timeout(support::HANG) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => {
                let _ = child.kill();
                panic!("pier did not stop ({e}): {seen}");
            }
        }
    }
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "{seen}");
    let stderr_line = seen
        .lines()
        .find(|l| l.contains("line one from the worker"))
        .unwrap_or_else(|| panic!("worker stderr logged: {seen}"));
    assert!(stderr_line.contains("pid="), "{stderr_line}");
    assert!(seen.contains("line two from the worker"));
    let idle_line = seen
        .lines()
        .find(|l| l.contains(&format!("worker pid {noisy} wrote bytes while idle")))
        .unwrap_or_else(|| panic!("idle garbage logged with the pid: {seen}"));
    assert!(
        idle_line.contains("Notice: stray echo after the reply"),
        "with the bytes: {idle_line}"
    );
    let closes = std::fs::read_to_string(dir.path().join("closes.log")).unwrap();
    assert!(closes.contains(&uuid), "CLOSE delivered at shutdown");
}

#[test]
fn version_names_server_protocol_features_and_the_extension_php_would_use() {
    for flag in ["--version", "-V"] {
        let out = pier().arg(flag).output().unwrap();
        assert!(out.status.success(), "{flag}: {out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], format!("pier {}", env!("CARGO_PKG_VERSION")));
        assert!(
            lines[1].starts_with("relay protocol: goridge frames version 1, RoadRunner TCP"),
            "{stdout}"
        );
        assert_eq!(
            lines[2],
            format!("features: {}", pier_server::FEATURES.join(","))
        );
        // Whatever this machine's PHP has, the report says it (loaded, not loaded, or why not).
        assert!(
            lines[3..]
                .iter()
                .any(|l| l.starts_with("extension in php (the php on PATH")),
            "{stdout}"
        );
    }
    // Without a command, pier says how to use it (as before --version existed).
    let out = pier().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: pier"));
}

/// `server.on_init` with `exit_on_error: true`: a failing command (exit code, unknown program,
/// running over `exec_timeout`) stops pier with exit 1 and the cause, before any worker starts or
/// any server listens.
#[test]
fn on_init_failure_with_exit_on_error_stops_pier_before_the_workers() {
    let cases = [
        (
            r#"["sh", "-c", "echo migrating; exit 3"]"#,
            "10s",
            "could not complete server.on_init [\"sh\", \"-c\", \"echo migrating; exit 3\"]: it ended with exit status: 3",
        ),
        (
            r#"["/nonexistent/pier-on-init"]"#,
            "10s",
            "could not start server.on_init [\"/nonexistent/pier-on-init\"]: No such file or directory",
        ),
        // The shell is killed; the sleep it left behind holds the output pipe for 40 s (longer
        // than run_bounded waits): pier must not wait for it.
        (
            r#"["sh", "-c", "sleep 40; true"]"#,
            "1s",
            "could not complete server.on_init [\"sh\", \"-c\", \"sleep 40; true\"] within on_init.exec_timeout (1s); it was killed",
        ),
    ];
    for (command, exec_timeout, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = on_init_config(dir.path(), command, exec_timeout, true);
        let (code, stderr) = run_bounded(pier().args(["serve", "-c"]).arg(&path));
        assert_eq!(code, Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains("could not initialise (server.on_init.exit_on_error is true)"),
            "{stderr}"
        );
        assert!(stderr.contains(want), "{want}: {stderr}");
        assert!(
            !stderr.contains(" listening") && !stderr.contains("worker pool started"),
            "{stderr}"
        );
        assert!(
            !dir.path().join("worker-started").exists(),
            "{command}: no worker ran"
        );
    }
}

/// `exit_on_error: false` (RoadRunner's default): the failure is logged and pier serves.
#[test]
fn on_init_failure_without_exit_on_error_is_logged_and_pier_serves() {
    let dir = tempfile::tempdir().unwrap();
    let path = on_init_config(dir.path(), r#"["sh", "-c", "exit 3"]"#, "10s", false);
    let pier = support::process::PierProcess::start(&path, &["s"]);
    let failed = pier.wait_log("server.on_init failed; starting the workers anyway", 1);
    assert!(
        failed[0].contains("it ended with exit status: 3"),
        "{failed:?}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = Client::connect(pier.addrs["s"]).await;
        c.hello().await;
    });
}

/// A config whose worker leaves a `worker-started` file in `dir`, with the given on_init.
fn on_init_config(
    dir: &std::path::Path,
    command: &str,
    exec_timeout: &str,
    exit_on_error: bool,
) -> std::path::PathBuf {
    let worker = format!(
        "touch {:?}; exec {:?}",
        dir.join("worker-started").display().to_string(),
        test_worker()
    );
    let text = yaml(
        dir,
        &["sh", "-c", &worker],
        "    s:\n      addr: 127.0.0.1:0\n",
        "    num_workers: 1\n",
        &format!(
            "  on_init:\n    command: {command}\n    exec_timeout: {exec_timeout}\n    exit_on_error: {exit_on_error}\n"
        ),
    );
    let path = dir.join("rr.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `command` to its end, at most `support::HANG` (then kills it and fails): (exit code, stderr).
fn run_bounded(command: &mut Command) -> (Option<i32>, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > support::HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pier did not exit: {}", reader.join().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (status.code(), reader.join().unwrap())
}
