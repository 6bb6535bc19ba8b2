//! The PROXY protocol with a real balancer: haproxy with `send-proxy` (v1) and `send-proxy-v2`
//! in front of pier, plaintext and TLS; untrusted, headerless and stalled peers are refused and
//! counted; per-address limits apply to the clients named by the headers.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use pier_devkit::bus::free_port;
use support::pki::{tls_over, Pki};
use support::process::PierProcess;
use support::{Client, Harness, HANG};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// haproxy in the foreground, killed when dropped.
struct Haproxy {
    _child: tokio::process::Child,
    /// Frontend address per backend option (`send-proxy`, `send-proxy-v2`, `tls`).
    fronts: Vec<(&'static str, SocketAddr)>,
}

impl Haproxy {
    async fn start(dir: &std::path::Path, routes: &[(&'static str, SocketAddr, &str)]) -> Haproxy {
        let mut config = String::from(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
        );
        let mut fronts = Vec::new();
        for (i, (name, target, option)) in routes.iter().enumerate() {
            let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            config.push_str(&format!(
                "frontend f{i}\n  bind {front}\n  default_backend b{i}\nbackend b{i}\n  server pier {target} {option}\n"
            ));
            fronts.push((*name, front));
        }
        let fronts_bound: Vec<SocketAddr> = fronts.iter().map(|(_, front)| *front).collect();
        let child = support::haproxy::start(dir, &config, &fronts_bound).await;
        Haproxy {
            _child: child,
            fronts,
        }
    }

    fn front(&self, name: &str) -> SocketAddr {
        self.fronts.iter().find(|(n, _)| *n == name).unwrap().1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v1_and_v2_give_the_worker_the_real_client_address() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path());
    let cert = pki.server("server", &["localhost"], false);
    let servers = format!(
        "    proxied:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n      proxy_protocol:\n        trusted: [127.0.0.1/32, \"::1/128\"]\n        timeout: 300ms\n\
         \x20   proxied_tls:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n      proxy_protocol:\n        trusted: [127.0.0.0/8]\n      tls:\n        cert: {:?}\n        key: {:?}\n\
         \x20   strict:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n      proxy_protocol:\n        trusted: [10.0.0.0/8]\n",
        cert.cert.display().to_string(),
        cert.key.display().to_string()
    );
    let mut h = Harness::rust(&servers, "    num_workers: 2\n").await;
    let haproxy = Haproxy::start(
        scratch.path(),
        &[
            ("v1", h.addrs["proxied"], "send-proxy"),
            ("v2", h.addrs["proxied"], "send-proxy-v2"),
            ("tls", h.addrs["proxied_tls"], "send-proxy-v2"),
        ],
    )
    .await;

    for version in ["v1", "v2"] {
        let mut client = Client::connect(haproxy.front(version)).await;
        let (server, remote, _) = client.hello().await;
        assert_eq!(server, "proxied");
        // The client's own address, not haproxy's outgoing one.
        assert_eq!(remote, client.local.to_string(), "{version}");
        assert_eq!(client.ask("ping\n").await, "proxied:ping", "{version}");
        assert_eq!(client.ask("quit\n").await, "bye");
    }

    // PROXY then TLS: the header is read first, the bytes after it are the handshake.
    let tcp = tokio::net::TcpStream::connect(haproxy.front("tls"))
        .await
        .unwrap();
    let local = tcp.local_addr().unwrap();
    let tls = tls_over(tcp, &pki.ca_file, "localhost", None)
        .await
        .unwrap();
    let mut tls = BufReader::new(tls);
    let mut line = String::new();
    tls.read_line(&mut line).await.unwrap();
    assert!(
        line.starts_with(&format!("hello proxied_tls {local} ")),
        "{line}"
    );
    tls.get_mut().write_all(b"tls\n").await.unwrap();
    line.clear();
    tls.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("tls TLSv1.3 "), "{line}");
    drop(tls);

    // Refused before any event: an untrusted source, a trusted one without a header (plaintext
    // first), and a trusted one that sends nothing within the timeout.
    for (server, send) in [
        ("strict", &b"hello\n"[..]),
        ("proxied", b"EHLO me\r\n"),
        ("proxied", b""),
    ] {
        let mut direct = tokio::net::TcpStream::connect(h.addrs[server])
            .await
            .unwrap();
        direct.write_all(send).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(HANG, direct.read_to_end(&mut answer))
            .await
            .expect("closed by the server")
            .ok();
        assert!(answer.is_empty(), "{server}: {answer:?}");
    }
    // A refusal is counted around the time its socket closes: polled, not read once.
    let want = vec![
        ("proxied".to_owned(), 0, 2),
        ("proxied_tls".to_owned(), 0, 0),
        ("strict".to_owned(), 0, 1),
    ];
    let sorted = |r: &[(String, u64, u64)]| {
        let mut r = r.to_vec();
        r.sort();
        r
    };
    let refusals = h.refusals_when(|r| sorted(r) == want).await;
    assert_eq!(sorted(&refusals), want);
    h.shutdown().await;
    assert_eq!(
        h.log("closes.log").len(),
        3,
        "only proxied clients had events"
    );
}

/// A server config with metrics on loopback port 0.
async fn with_metrics(servers: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let text = support::yaml(
        dir.path(),
        &[&support::test_worker()],
        servers,
        "    num_workers: 1\n",
        "",
    ) + "metrics:\n  address: 127.0.0.1:0\n";
    Harness::start(dir, &text).await
}

/// Connects to `addr`, sends `send` (then half-closes when `close`), and reads until the server
/// closes: nothing may come back.
async fn refused(addr: SocketAddr, send: &[u8], close: bool) {
    let mut direct = tokio::net::TcpStream::connect(addr).await.unwrap();
    direct.write_all(send).await.unwrap();
    if close {
        direct.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(HANG, direct.read_to_end(&mut answer))
        .await
        .expect("closed by the server")
        .ok();
    assert!(answer.is_empty(), "{answer:?}");
}

/// The `/metrics` text once every line of `want` is in it, waiting at most 5 s (a refusal is
/// counted around the time its socket closes, so a scrape right after the close may miss it).
async fn metrics_when(h: &Harness, want: &[String]) -> String {
    let mut text = String::new();
    for _ in 0..250 {
        text = h.http_get("metrics", "/metrics").await.1;
        if want.iter().all(|line| text.lines().any(|l| l == line)) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never got {want:?} in\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refusals_are_counted_per_server_and_reason_on_the_metrics_endpoint() {
    let servers = "    proxied:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n      proxy_protocol:\n        trusted: [127.0.0.0/8]\n        timeout: 300ms\n\
                   \x20   strict:\n      addr: 127.0.0.1:0\n      proxy_protocol:\n        trusted: [10.0.0.0/8]\n\
                   \x20   plain:\n      addr: 127.0.0.1:0\n";
    let mut h = with_metrics(servers).await;
    let line = |server: &str, reason: &str, n: u64| {
        format!("pier_proxy_refusals_total{{server=\"{server}\",reason=\"{reason}\"}} {n}")
    };
    // Zeros from the start for the servers with proxy_protocol; none for the others.
    let reasons = ["untrusted", "missing", "malformed", "timeout"];
    let zeros: Vec<String> = ["proxied", "strict"]
        .iter()
        .flat_map(|s| reasons.map(|r| line(s, r, 0)))
        .collect();
    let text = metrics_when(&h, &zeros).await;
    assert!(
        !text.contains("pier_proxy_refusals_total{server=\"plain\""),
        "{text}"
    );

    refused(h.addrs["strict"], b"hello\n", false).await; // untrusted
    refused(h.addrs["proxied"], b"EHLO me\r\n", false).await; // malformed
    refused(h.addrs["proxied"], b"PROXY TCP4 192.0", true).await; // missing: closed mid-header
    refused(h.addrs["proxied"], b"", false).await; // timeout
    let want = [
        line("strict", "untrusted", 1),
        line("strict", "malformed", 0),
        line("proxied", "untrusted", 0),
        line("proxied", "malformed", 1),
        line("proxied", "missing", 1),
        line("proxied", "timeout", 1),
    ];
    metrics_when(&h, &want).await;
    // A proper header still gets through.
    let mut ok = Client::connect(h.addrs["proxied"]).await;
    ok.send("PROXY TCP4 192.0.2.7 127.0.0.1 4000 25\r\n").await;
    let (_, remote, _) = ok.hello().await;
    assert_eq!(remote, "192.0.2.7:4000");
    drop(ok);
    // The header and the first packets in one write: those are replayed from what the header's
    // read took (through `poll_read`), the next ones read straight from the socket.
    let mut both = Client::connect(h.addrs["proxied"]).await;
    both.send("PROXY TCP4 192.0.2.8 127.0.0.1 4000 25\r\nping\npong\n")
        .await;
    let (_, remote, _) = both.hello().await;
    assert_eq!(remote, "192.0.2.8:4000");
    assert_eq!(both.line().await.unwrap(), "proxied:ping");
    assert_eq!(both.line().await.unwrap(), "proxied:pong");
    assert_eq!(both.ask("again\n").await, "proxied:again");
    drop(both);
    h.shutdown().await;
}

/// A PROXY v2 header from a balancer on loopback: PROXY for `client` (IPv4), or LOCAL (`None`).
fn v2_header(client: Option<std::net::SocketAddrV4>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    match client {
        Some(c) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&[127, 0, 0, 1]);
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&25u16.to_be_bytes());
        }
        None => h.extend_from_slice(&[0x20, 0x00, 0, 0]),
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limits_apply_to_each_client_behind_a_trusted_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rr.yaml");
    let text = support::yaml(
        dir.path(),
        &[&support::test_worker()],
        "    proxied:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n      max_connections_per_ip: 2\n      proxy_protocol:\n        trusted: [127.0.0.0/8]\n",
        "    num_workers: 1\n",
        "",
    ) + "metrics:\n  address: 127.0.0.1:0\n";
    std::fs::write(&config, text).unwrap();
    let pier = PierProcess::start(&config, &["proxied"]);
    let addr = pier.addrs["proxied"];
    let connect = |client: Option<&str>| {
        let header = v2_header(client.map(|c| c.parse().unwrap()));
        async move {
            let mut c = Client::connect(addr).await;
            c.send(header).await;
            c
        }
    };
    // Every socket comes from the balancer's 127.0.0.1; two clients behind it get two each.
    let mut open = Vec::new();
    for client in ["192.0.2.1", "192.0.2.2"] {
        for port in [1001, 1002] {
            let client = format!("{client}:{port}");
            let mut c = connect(Some(&client)).await;
            let (_, remote, _) = c.hello().await;
            assert_eq!(remote, client);
            open.push(c);
        }
    }
    // A third from the first client is closed after its header, before any event; the log names
    // the client and the balancer.
    let mut third = connect(Some("192.0.2.1:1003")).await;
    assert!(third.rest().await.is_empty());
    let line = pier.wait_log("over a connection limit", 1).remove(0);
    assert!(line.contains("limit=\"max_connections_per_ip\""), "{line}");
    assert!(line.contains("latest_address=192.0.2.1 "), "{line}");
    assert!(line.contains("balancer=127.0.0.1:"), "{line}");
    // v2 LOCAL (the balancer's own checks) counts under the socket's address, its remote_addr.
    for _ in 0..2 {
        let mut c = connect(None).await;
        let (_, remote, _) = c.hello().await;
        assert!(remote.starts_with("127.0.0.1:"), "{remote}");
        open.push(c);
    }
    assert!(connect(None).await.rest().await.is_empty());
    // Counted like every other refusal.
    let want =
        "pier_connections_rejected_total{server=\"proxied\",reason=\"max_connections_per_ip\"} 2";
    let metrics = pier.metrics.unwrap();
    let mut text = String::new();
    for _ in 0..250 {
        text = support::http_get(metrics, "/metrics").await.1;
        if text.lines().any(|l| l == want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(text.lines().any(|l| l == want), "{want} in\n{text}");
    // The admitted ones are unaffected.
    for c in &mut open {
        assert_eq!(c.ask("ping\n").await, "proxied:ping");
    }
    drop(open);
    pier.stop();
}
