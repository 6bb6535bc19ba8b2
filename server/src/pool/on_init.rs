//! `server.on_init`: a command run to completion before the workers start (migrations, cache
//! warm-up), bounded by its `exec_timeout`. As in RoadRunner, a failure is logged and the workers
//! start anyway, unless `on_init.exit_on_error` is true: then pier stops with the failure.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::log_scope::{error, info};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::config::OnInit;

/// How long the output of an on_init that ended is still read (both streams together): a process it left behind may hold
/// its stdout/stderr open for ever, and must not keep the workers from starting.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// How `server.on_init` failed.
#[derive(Debug, thiserror::Error)]
pub enum OnInitError {
    /// The command could not be started (missing program, permissions, `on_init.user`).
    #[error("could not start server.on_init {command:?}")]
    Spawn {
        /// Program and arguments.
        command: Vec<String>,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The command ended unsuccessfully (non-zero exit code, or killed by a signal).
    #[error("could not complete server.on_init {command:?}: it ended with {status}")]
    Failed {
        /// Program and arguments.
        command: Vec<String>,
        /// Its exit code or signal.
        status: ExitStatus,
    },
    /// The command ran over `on_init.exec_timeout` and was killed.
    #[error("could not complete server.on_init {command:?} within on_init.exec_timeout ({exec_timeout:?}); it was killed")]
    Timeout {
        /// Program and arguments.
        command: Vec<String>,
        /// The bound it ran over.
        exec_timeout: Duration,
    },
    /// Waiting for the command failed.
    #[error("could not wait for server.on_init {command:?}")]
    Wait {
        /// Program and arguments.
        command: Vec<String>,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// Runs `on_init` with `server.env` plus its own `env` and logs its output. A failure is logged
/// and `Ok` when the workers should start anyway; it is the `Err` when `exit_on_error` is set.
pub async fn run_on_init(
    on_init: &OnInit,
    server_env: &[(String, String)],
) -> Result<(), OnInitError> {
    match run(on_init, server_env).await {
        Ok(()) => {
            info!(command = ?on_init.command, "server.on_init finished");
            Ok(())
        }
        Err(e) if on_init.exit_on_error => Err(e),
        Err(e) => {
            // The cause too (e.g. "No such file or directory"), as pier's own errors print it.
            error!(error = %crate::ErrorChain(&e), "server.on_init failed; starting the workers anyway (on_init.exit_on_error is false)");
            Ok(())
        }
    }
}

/// Runs the command to its end (or its `exec_timeout`).
async fn run(on_init: &OnInit, server_env: &[(String, String)]) -> Result<(), OnInitError> {
    let command = || on_init.command.clone();
    let mut cmd = Command::new(&on_init.command[0]);
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
    let mut child = cmd.spawn().map_err(|source| OnInitError::Spawn {
        command: command(),
        source,
    })?;
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(log_lines(s, "stdout"))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(log_lines(s, "stderr"))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let ended = match tokio::time::timeout(on_init.exec_timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(OnInitError::Failed {
            command: command(),
            status,
        }),
        Ok(Err(source)) => Err(OnInitError::Wait {
            command: command(),
            source,
        }),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(OnInitError::Timeout {
                command: command(),
                exec_timeout: on_init.exec_timeout,
            })
        }
    };
    let drained = tokio::time::Instant::now() + OUTPUT_DRAIN;
    for mut reader in readers {
        if tokio::time::timeout_at(drained, &mut reader).await.is_err() {
            reader.abort();
        }
    }
    ended
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
