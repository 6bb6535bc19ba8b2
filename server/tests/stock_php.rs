//! `pier serve` with `tests/php/stock_worker.php`, a plain-PHP worker that writes exactly the bytes
//! of a worker built on the stock spiral/roadrunner-tcp packages (pinned by
//! shared/relay-vectors.json), including the stray CLOSE after the stop frame.

mod support;

use support::Harness;

const TWO: &str = "    p1:\n      addr: 127.0.0.1:0\n    p2:\n      addr: 127.0.0.1:0\n      delimiter: \"\\n\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_worker_serves_unchanged_and_never_sees_state() {
    let mut h = Harness::php(TWO, "    num_workers: 2\n").await;

    let mut a = h.connect("p1").await;
    assert_eq!(
        a.line().await.unwrap(),
        format!("php hello p1 {}", a.local),
        "CONNECTED carries server name and the client's address"
    );
    // The body keeps its delimiter, as RoadRunner sends it; pipelined packets answer in order.
    a.send("ping\r\npong\r\n").await;
    assert_eq!(a.line().await.unwrap(), "php:ping\r");
    assert_eq!(a.line().await.unwrap(), "php:pong\r");
    // CONTINUE, then binary-safe echo.
    a.send("read\r\n").await;
    a.send(b"\x00\xff bin\r\n").await;
    let mut want = b"php:\x00\xff bin\r".to_vec();
    let mut got = Vec::new();
    use tokio::io::AsyncBufReadExt;
    a.reader.read_until(b'\n', &mut got).await.unwrap();
    want.push(b'\n');
    assert_eq!(got, want);

    let mut b = h.connect("p2").await;
    assert_eq!(b.line().await.unwrap(), format!("php hello p2 {}", b.local));
    assert_eq!(b.ask("x\n").await, "php:x");
    // The stock worker answers an event with more than one option with an error frame, which
    // closes the connection: a long exchange proves every event had exactly one.
    for i in 0..50 {
        assert_eq!(b.ask(&format!("n{i}\n")).await, format!("php:n{i}"));
    }
    assert_eq!(b.ask("quit\n").await, "php bye");
    assert_eq!(b.rest().await, b"");

    let mut c = h.connect("p1").await;
    c.line().await.unwrap();
    c.send("error\r\n").await;
    assert_eq!(c.rest().await, b"", "worker error closes without writing");

    drop(a);
    h.shutdown().await;
    // Every connection got exactly one CLOSE, delivered to the PHP worker.
    assert_eq!(h.log("php-closes.log").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_worker_rotation_tolerates_the_stray_close_after_stop() {
    let mut h = Harness::php(TWO, "    num_workers: 2\n    max_jobs: 2\n").await;
    let mut a = h.connect("p1").await;
    a.line().await.unwrap();
    for i in 0..20 {
        assert_eq!(a.ask(&format!("m{i}\r\n")).await, format!("php:m{i}\r"));
    }
    h.shutdown().await;
    assert_eq!(a.rest().await, b"");
    assert_eq!(h.log("php-closes.log").len(), 1);
}
