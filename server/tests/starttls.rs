//! STARTTLS commanded by the worker: the answer goes out in plaintext, then TLS; bytes the client
//! sent after its command and before the handshake never reach TLS or a worker (CVE-2011-0411).

mod support;

use std::time::Duration;

use support::pki::{tls_over, Pki};
use support::{Client, Harness, HANG};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn servers(pki: &Pki) -> String {
    let cert = pki.server("server", &["localhost"], false);
    format!(
        "    mail:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n      tls:\n        mode: starttls\n        cert: {:?}\n        key: {:?}\n        handshake_timeout: 500ms\n\
         \x20   implicit:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n      tls:\n        cert: {:?}\n        key: {:?}\n\
         \x20   plain:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n",
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    )
}

/// The plaintext socket of a client, after its greeting (nothing else is buffered).
fn socket(client: Client) -> tokio::net::TcpStream {
    assert!(client.reader.buffer().is_empty());
    client.reader.into_inner().reunite(client.writer).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_upgrades_and_an_injected_command_is_never_executed() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path());
    let mut h = Harness::rust_env(&servers(&pki), "    num_workers: 1\n", "    TW_DUMP: 1\n").await;
    let mut client = h.connect("mail").await;
    client.hello().await;
    assert_eq!(client.ask("tls\n").await, "tls none");
    // The command and an injected one in the same segment: the answer comes in plaintext, the
    // injected line is thrown away with the plaintext buffer.
    client.send("starttls\ninjected-before\n").await;
    assert_eq!(client.line().await.unwrap(), "go ahead");
    let tls = tls_over(socket(client), &pki.ca_file, "localhost", None)
        .await
        .expect("handshake after STARTTLS");
    let mut tls = BufReader::new(tls);
    tls.get_mut().write_all(b"tls\n").await.unwrap();
    let mut line = String::new();
    tls.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("tls TLSv1.3 TLS13_"), "{line}");
    assert!(line.contains(" localhost "), "{line}");
    tls.get_mut().write_all(b"quit\n").await.unwrap();
    line.clear();
    tls.read_line(&mut line).await.unwrap();
    assert_eq!(line, "bye\n");

    // Plaintext sent after the answer (where a ClientHello belongs) fails the handshake.
    let mut client = h.connect("mail").await;
    client.hello().await;
    assert_eq!(client.ask("starttls\n").await, "go ahead");
    client.send("injected-after\n").await;
    assert!(
        client.rest().await.iter().all(|b| *b != b'\n'),
        "no line answered"
    );
    let refusals = h.refusals_when(|r| r[0].1 == 1).await;
    assert_eq!(refusals[0], ("mail".to_owned(), 1, 0));
    h.shutdown().await;

    let frames = std::fs::read_to_string(h.dir.path().join("frames.log")).unwrap();
    for injected in ["injected-before", "injected-after"] {
        let needle: String = injected.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!frames.contains(&needle), "{injected} reached a worker");
    }
    // Both connections got their CLOSE.
    assert_eq!(h.log("closes.log").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_where_it_cannot_happen_closes_without_writing() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path());
    let mut h = Harness::rust(&servers(&pki), "    num_workers: 1\n").await;
    // No tls on the server.
    let mut client = h.connect("plain").await;
    client.hello().await;
    client.send("starttls\n").await;
    assert!(client.rest().await.is_empty());
    // Already TLS.
    let stream = support::pki::tls_connect(h.addrs["implicit"], &pki.ca_file, "localhost", None)
        .await
        .unwrap();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    stream.get_mut().write_all(b"starttls\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(HANG, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .ok();
    assert!(rest.is_empty(), "{rest:?}");
    // A closing answer with the command: written, closed, no TLS.
    let mut client = h.connect("mail").await;
    client.hello().await;
    assert_eq!(client.ask("starttls-quit\n").await, "bye");
    assert!(client.rest().await.is_empty());
    // A client that never starts the handshake is dropped after handshake_timeout.
    let mut client = h.connect("mail").await;
    client.hello().await;
    assert_eq!(client.ask("starttls\n").await, "go ahead");
    let started = std::time::Instant::now();
    assert!(client.rest().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(400));
    h.shutdown().await;
    assert_eq!(h.log("closes.log").len(), 4);
}
