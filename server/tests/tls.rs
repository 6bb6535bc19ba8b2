//! TLS per server with real peers: `openssl s_client` (TLS 1.2 and 1.3, SNI, client certificates),
//! plaintext and stalled handshakes, certificate reload while connections are busy, and reload in
//! the real `pier serve` binary by `pier reset` and SIGHUP.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::pki::{sha256_hex, tls_connect, Issued, Pki};
use support::process::PierProcess;
use support::{Harness, HANG};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// What `openssl s_client` printed and whether it succeeded.
struct SClient {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `openssl s_client` against `addr` with `args`, writing `input` (then waiting for the
/// server to close: `-quiet` implies `-ign_eof`).
async fn s_client(addr: std::net::SocketAddr, args: &[&str], input: &str) -> SClient {
    let mut child = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-quiet")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl (Debian package openssl)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(HANG, child.wait_with_output())
        .await
        .expect("s_client finishes")
        .unwrap();
    SClient {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn tls_yaml(name: &str, cert: &Issued, extra: &str) -> String {
    format!(
        "    {name}:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n      tls:\n        cert: {:?}\n        key: {:?}\n{extra}",
        cert.cert.display().to_string(),
        cert.key.display().to_string()
    )
}

fn ca_arg(pki: &Pki) -> String {
    pki.ca_file.display().to_string()
}

/// The `tls …` line of the test worker.
fn tls_line(out: &str) -> Vec<String> {
    out.lines()
        .find(|l| l.starts_with("tls "))
        .unwrap_or_else(|| panic!("no tls line in {out:?}"))
        .split(' ')
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_speaks_tls_1_2_and_1_3_to_ecdsa_and_rsa_servers() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path());
    let ecdsa = pki.server("ecdsa", &["localhost"], false);
    let rsa = pki.server("rsa", &["localhost"], true);
    let servers = format!(
        "{}{}{}",
        tls_yaml("ec", &ecdsa, ""),
        tls_yaml("rsa", &rsa, ""),
        tls_yaml("only13", &ecdsa, "        min_version: \"1.3\"\n"),
    );
    let mut h = Harness::rust(&servers, "    num_workers: 1\n").await;
    let ca = ca_arg(&pki);
    for (server, version, flag) in [
        ("ec", "TLSv1.2", "-tls1_2"),
        ("ec", "TLSv1.3", "-tls1_3"),
        ("rsa", "TLSv1.2", "-tls1_2"),
        ("rsa", "TLSv1.3", "-tls1_3"),
        ("only13", "TLSv1.3", "-tls1_3"),
    ] {
        let out = s_client(
            h.addrs[server],
            &[
                flag,
                "-servername",
                "localhost",
                "-CAfile",
                &ca,
                "-verify_return_error",
                "-verify_hostname",
                "localhost",
            ],
            "tls\nquit\n",
        )
        .await;
        assert!(out.ok, "{server} {version}: {}", out.stderr);
        let greeting = out.stdout.lines().next().unwrap_or_default();
        assert!(
            greeting.starts_with(&format!("hello {server} 127.0.0.1:")),
            "{greeting}"
        );
        let tls = tls_line(&out.stdout);
        assert_eq!(tls[1], version, "{server}: {tls:?}");
        assert!(tls[2].starts_with("TLS"), "cipher {tls:?}");
        assert_eq!(tls[3], "localhost");
        assert_eq!(tls[4], "-", "no client certificate");
        assert!(out.stdout.ends_with("bye\n"), "{}", out.stdout);
    }
    // A 1.3-only server refuses a 1.2-only client, and no worker hears of it.
    let out = s_client(h.addrs["only13"], &["-tls1_2"], "tls\n").await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(!out.stdout.contains("hello"), "{}", out.stdout);
    h.shutdown().await;
    assert_eq!(
        h.log("closes.log").len(),
        5,
        "only handshaken connections had events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_a_wrong_name_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path());
    let default = pki.server("default", &["localhost"], false);
    let mail = pki.server("mail", &["mail.test", "*.mx.test"], false);
    let sni = format!(
        "        sni:\n          - cert: {:?}\n            key: {:?}\n",
        mail.cert.display().to_string(),
        mail.key.display().to_string()
    );
    let mut h = Harness::rust(&tls_yaml("s", &default, &sni), "    num_workers: 1\n").await;
    let ca = ca_arg(&pki);
    for name in ["localhost", "mail.test", "a.mx.test"] {
        let out = s_client(
            h.addrs["s"],
            &[
                "-servername",
                name,
                "-CAfile",
                &ca,
                "-verify_return_error",
                "-verify_hostname",
                name,
            ],
            "tls\nquit\n",
        )
        .await;
        assert!(out.ok, "{name}: {}", out.stderr);
        assert_eq!(tls_line(&out.stdout)[3], name);
    }
    // A name no certificate covers: refused during the handshake, counted, never an event.
    let out = s_client(h.addrs["s"], &["-servername", "other.test"], "tls\n").await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(!out.stdout.contains("hello"));
    let refusals = h.refusals_when(|r| r[0].1 == 1).await;
    assert_eq!(refusals, vec![("s".to_owned(), 1, 0)]);
    h.shutdown().await;
    assert_eq!(h.log("closes.log").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_reach_the_worker_and_bad_ones_are_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path());
    let server = pki.server("server", &["localhost"], false);
    let alice = pki.client("alice", "alice", false);
    let expired = pki.client("expired", "old", true);
    let ca = ca_arg(&pki);
    let required = format!("        client_ca: {ca:?}\n");
    let optional = format!("        client_ca: {ca:?}\n        client_auth: optional\n");
    let servers = format!(
        "{}{}",
        tls_yaml("req", &server, &required),
        tls_yaml("opt", &server, &optional)
    );
    let mut h = Harness::rust(&servers, "    num_workers: 1\n").await;
    // s_client's arguments for a client presenting `c` to "localhost".
    let with_cert = |c: &Issued| {
        vec![
            "-servername".to_owned(),
            "localhost".to_owned(),
            "-cert".to_owned(),
            c.cert.display().to_string(),
            "-key".to_owned(),
            c.key.display().to_string(),
        ]
    };
    for server in ["req", "opt"] {
        let args = with_cert(&alice);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s_client(h.addrs[server], &args, "tls\nquit\n").await;
        assert!(out.ok, "{server}: {}", out.stderr);
        let tls = tls_line(&out.stdout);
        assert_eq!(tls[4], sha256_hex(&alice.der), "{tls:?}");
        let subject = tls[5..].join(" ");
        assert!(subject.contains("CN=alice"), "{subject}");
        assert!(subject.contains("O=Pier tests"), "{subject}");
    }
    // Optional: no certificate is fine, and the worker sees none.
    let out = s_client(h.addrs["opt"], &["-servername", "localhost"], "tls\nquit\n").await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(tls_line(&out.stdout)[4], "-");
    // Required: no certificate, or an expired one, is refused before any event. (With TLS 1.3
    // the client learns it on its first read, so look for the missing greeting.)
    let out = s_client(h.addrs["req"], &["-servername", "localhost"], "tls\n").await;
    assert!(!out.stdout.contains("hello"), "{}", out.stdout);
    for server in ["req", "opt"] {
        let args = with_cert(&expired);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s_client(h.addrs[server], &args, "tls\n").await;
        assert!(!out.stdout.contains("hello"), "{server}: {}", out.stdout);
    }
    let refusals = h
        .refusals_when(|r| r.iter().map(|r| r.1).sum::<u64>() == 3)
        .await;
    let refused: u64 = refusals.iter().map(|r| r.1).sum();
    assert_eq!(refused, 3);
    h.shutdown().await;
    assert_eq!(h.log("closes.log").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_stalled_handshakes_are_dropped_without_events() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path());
    let server = pki.server("server", &["localhost"], false);
    let servers = tls_yaml("s", &server, "        handshake_timeout: 300ms\n");
    let mut h = Harness::rust(&servers, "    num_workers: 1\n").await;
    // Plaintext to a TLS port: the server answers with an alert (or nothing) and closes.
    let mut plain = tokio::net::TcpStream::connect(h.addrs["s"]).await.unwrap();
    plain.write_all(b"EHLO client.test\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(HANG, plain.read_to_end(&mut answer))
        .await
        .expect("closed")
        .ok();
    assert!(!String::from_utf8_lossy(&answer).contains("hello"));
    // A client that connects and says nothing is dropped after handshake_timeout.
    let started = std::time::Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(h.addrs["s"]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(HANG, stalled.read(&mut buf))
        .await
        .expect("dropped")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Half a ClientHello stalls too.
    let mut half = tokio::net::TcpStream::connect(h.addrs["s"]).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let n = tokio::time::timeout(HANG, half.read(&mut buf))
        .await
        .expect("dropped")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let refusals = h.refusals_when(|r| r[0].1 == 3).await;
    assert_eq!(refusals, vec![("s".to_owned(), 3, 0)]);
    // The server still serves TLS.
    let ok = tls_connect(h.addrs["s"], &pki.ca_file, "localhost", None)
        .await
        .unwrap();
    let mut ok = BufReader::new(ok);
    let mut line = String::new();
    ok.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("hello s "), "{line}");
    drop(ok);
    h.shutdown().await;
    assert_eq!(h.log("closes.log").len(), 1);
}

async fn leaf_cn(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let der = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.subject().to_string()
}

fn replace_files(from: &Issued, to: &Issued) {
    // Renamed into place, as certbot and friends do, so a reload never reads half a file.
    for (src, dst) in [(&from.cert, &to.cert), (&from.key, &to.key)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_under_load_loses_no_connection() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path());
    let live = pki.server("live", &["localhost", "old.test"], false);
    let fresh = pki.server("fresh", &["localhost", "new.test"], false);
    let mut h = Harness::rust(&tls_yaml("s", &live, ""), "    num_workers: 2\n").await;
    let addr = h.addrs["s"];
    let ca = pki.ca_file.clone();
    // Clients that keep talking through the reloads, each over its own connection.
    let mut clients = Vec::new();
    for c in 0..8 {
        let ca = ca.clone();
        clients.push(tokio::spawn(async move {
            let stream = tls_connect(addr, &ca, "localhost", None).await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            for i in 0..150 {
                stream
                    .get_mut()
                    .write_all(format!("c{c}-{i}\n").as_bytes())
                    .await
                    .unwrap();
                line.clear();
                stream.read_line(&mut line).await.unwrap();
                assert_eq!(line, format!("s:c{c}-{i}\n"));
            }
        }));
    }
    let before = tls_connect(addr, &ca, "localhost", None).await.unwrap();
    assert!(leaf_cn(&before).await.contains("CN=localhost"));
    // A broken file keeps the old certificate.
    std::fs::write(&live.key, "not a key").unwrap();
    let failed = h.tls.reload();
    assert_eq!(failed.len(), 1);
    let message = anyhow_like(&failed[0].1);
    assert!(message.contains("tcp.servers.s.tls.key"), "{message}");
    assert!(
        message.contains(&live.key.display().to_string()),
        "{message}"
    );
    let still = tls_connect(addr, &ca, "old.test", None).await;
    assert!(still.is_ok(), "old certificate still served");
    // A good one is taken for new handshakes.
    replace_files(&fresh, &live);
    for _ in 0..5 {
        assert!(h.tls.reload().is_empty());
    }
    let after = tls_connect(addr, &ca, "new.test", None).await;
    assert!(after.is_ok(), "new certificate served: {after:?}");
    assert!(tls_connect(addr, &ca, "old.test", None).await.is_err());
    for client in clients {
        tokio::time::timeout(HANG, client).await.unwrap().unwrap();
    }
    h.shutdown().await;
}

/// `a: b: c` for an error and its causes.
fn anyhow_like(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[tokio::test]
async fn a_missing_certificate_file_stops_the_server_naming_key_and_file() {
    let scratch = tempfile::tempdir().unwrap();
    let missing = Path::new("/nonexistent/pier-test.crt");
    let text = support::yaml(
        scratch.path(),
        &[&support::test_worker()],
        &format!(
            "    s:\n      addr: 127.0.0.1:0\n      tls:\n        cert: {missing:?}\n        key: /nonexistent/k.pem\n"
        ),
        "",
        "",
    );
    let config = pier_server::config::Config::parse(&text, &[], &|_| None).unwrap();
    let err = pier_server::Server::bind(config).await.unwrap_err();
    let message = anyhow_like(&err);
    assert!(message.contains("tcp.servers.s.tls.cert"), "{message}");
    assert!(message.contains("/nonexistent/pier-test.crt"), "{message}");
}

/// The subject of the certificate `pier` serves at `addr` to `openssl s_client` (SNI localhost,
/// verified against the test CA).
async fn served_subject(addr: std::net::SocketAddr, ca: &Path) -> String {
    let out = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost", "-verify_return_error"])
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(HANG, out)
        .await
        .expect("s_client finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject in {stdout}"))
        .to_owned()
}

/// A `pier serve` process with one TLS server `s` serving `cert`, and RPC on a free port.
fn tls_binary(scratch: &Path, cert: &Issued) -> PierProcess {
    let config = scratch.join("rr.yaml");
    let text = support::yaml(
        scratch,
        &[&support::test_worker()],
        &tls_yaml("s", cert, ""),
        "    num_workers: 1\n",
        "",
    ) + "rpc:\n  listen: tcp://127.0.0.1:0\n";
    std::fs::write(&config, text).unwrap();
    PierProcess::start(&config, &["s"])
}

/// A TLS connection that has had its greeting, for checking it survives a reload.
async fn open_tls(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let stream = tls_connect(addr, ca, "localhost", None).await.unwrap();
    assert!(leaf_cn(&stream).await.contains("CN=old.test"));
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("hello s "), "{line}");
    stream
}

/// One echo on an open connection: the worker answers `s:<packet>`.
async fn echo(stream: &mut BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>) {
    stream.get_mut().write_all(b"still-here\n").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(HANG, stream.read_line(&mut line))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(line, "s:still-here\n");
}

/// A running `pier serve` binary whose TLS server `s` serves `live` (old.test), the `fresh`
/// certificate (new.test) to rotate to, and one TLS connection open through it.
struct Rotation {
    /// The test CA.
    pki: Pki,
    /// The files the config names.
    live: Issued,
    /// What [`Rotation::renew`] puts in their place.
    fresh: Issued,
    pier: PierProcess,
    /// Opened before any reload; must survive each.
    open: BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    /// Holds the files.
    _scratch: tempfile::TempDir,
}

impl Rotation {
    async fn start() -> Rotation {
        let scratch = tempfile::tempdir().unwrap();
        let pki = Pki::new(scratch.path());
        let live = pki.server("live", &["old.test", "localhost"], false);
        let fresh = pki.server("fresh", &["new.test", "localhost"], false);
        let pier = tls_binary(scratch.path(), &live);
        let open = open_tls(pier.addrs["s"], &pki.ca_file).await;
        Rotation {
            pki,
            live,
            fresh,
            pier,
            open,
            _scratch: scratch,
        }
    }

    /// A new handshake gets the certificate that names `name`, and the open connection still
    /// answers.
    async fn serves(&mut self, name: &str) {
        let subject = served_subject(self.pier.addrs["s"], &self.pki.ca_file).await;
        assert!(subject.contains(name), "{name}: {subject}");
        echo(&mut self.open).await;
    }

    /// The fresh certificate and key renamed over the live files.
    fn renew(&self) {
        replace_files(&self.fresh, &self.live);
    }

    fn stop(self) {
        drop(self.open);
        self.pier.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pier_reset_reloads_the_certificates_of_a_running_pier_keeping_connections() {
    let mut r = Rotation::start().await;
    r.serves("old.test").await;

    // A broken key file: the workers are reset all the same, the server keeps its certificate,
    // and both `pier reset` and the server's log say which key and file.
    std::fs::write(&r.live.key, "not a key").unwrap();
    let (code, stdout, stderr) = r.pier.ctl(&["reset"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let key = r.live.key.display().to_string();
    for text in [
        "tcp.servers.s.tls.key",
        &key,
        "the current certificates stay in use",
    ] {
        assert!(stderr.contains(text), "{text} in {stderr}");
    }
    let logged = r.pier.wait_log("TLS certificates not reloaded", 1);
    assert!(logged[0].contains(&key), "{logged:?}");
    r.serves("old.test").await;

    // Good files: new handshakes get the new certificate, the open connection keeps working.
    r.renew();
    let (code, stdout, stderr) = r.pier.ctl(&["reset"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("TLS certificates reloaded: s"), "{stdout}");
    r.serves("new.test").await;
    assert!(leaf_cn(r.open.get_ref()).await.contains("CN=old.test"));
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificates_of_a_running_pier_keeping_connections() {
    let mut r = Rotation::start().await;

    // A broken certificate file: the current certificate stays, the log says which key and file.
    std::fs::write(&r.live.cert, "not a certificate").unwrap();
    r.pier.signal("-HUP");
    let logged = r.pier.wait_log("TLS certificates not reloaded", 1);
    let cert = r.live.cert.display().to_string();
    assert!(logged[0].contains("tcp.servers.s.tls.cert"), "{logged:?}");
    assert!(logged[0].contains(&cert), "{logged:?}");
    r.serves("old.test").await;

    // Good files: the next handshakes get the new certificate; nothing open is dropped.
    r.renew();
    r.pier.signal("-HUP");
    r.pier.wait_log("TLS certificates reloaded", 1);
    r.serves("new.test").await;
    r.stop();
}
