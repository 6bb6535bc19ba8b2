//! Throwaway TLS files: nothing secret is committed, every run makes its own.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// Writes a self-signed ECDSA P-256 certificate for `localhost` and `127.0.0.1` to `cert` and its
/// key to `key` with `openssl req`, valid for `days`. It is an end-entity certificate
/// (`CA:FALSE`): rustls (webpki) refuses a CA certificate as a server's.
pub fn self_signed_localhost(cert: &Path, key: &Path, days: u32) -> io::Result<()> {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-days")
        .arg(days.to_string())
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| io::Error::new(e.kind(), format!("could not run openssl req: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl req could not make the certificate ({status})"
        )))
    }
}
