//! `server.on_init`: a command run to completion before the workers start (migrations, cache
//! warm-up), bounded by its `exec_timeout`. As in RoadRunner, a failure is logged and the workers
//! start anyway.

use std::process::Stdio;

use crate::log_scope::{error, info};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::config::OnInit;

/// Runs `on_init` with `server.env` plus its own `env`; logs its output and how it ended.
pub async fn run_on_init(on_init: &OnInit, server_env: &[(String, String)]) {
    let program = &on_init.command[0];
    let mut cmd = Command::new(program);
    cmd.args(&on_init.command[1..])
        .envs(server_env.iter().map(|(k, v)| (k, v)))
        .envs(on_init.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ids) = on_init.run_as {
        cmd.uid(ids.uid).gid(ids.gid);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            error!(command = ?on_init.command, error = %e, "could not start server.on_init; starting the workers anyway");
            return;
        }
    };
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(log_lines(s, "stdout")));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(log_lines(s, "stderr")));
    match tokio::time::timeout(on_init.exec_timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            info!(command = ?on_init.command, "server.on_init finished")
        }
        Ok(Ok(status)) => {
            error!(command = ?on_init.command, %status, "server.on_init failed; starting the workers anyway")
        }
        Ok(Err(e)) => {
            error!(command = ?on_init.command, error = %e, "could not wait for server.on_init")
        }
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            error!(command = ?on_init.command, exec_timeout = ?on_init.exec_timeout, "server.on_init ran over exec_timeout and was killed; starting the workers anyway");
        }
    }
    for task in [out, err].into_iter().flatten() {
        let _ = task.await;
    }
}

/// Logs one output stream of the on_init command, line by line (each line bounded).
async fn log_lines(output: impl AsyncRead + Unpin, stream: &'static str) {
    let mut lines = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut lines).take(4096).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        info!("on_init {stream}: {}", text.trim_end_matches(['\r', '\n']));
    }
}
