//! The raw target: a tokio echo server with the same framing job as Pier (split the byte stream
//! at the delimiter, or by a 4-byte big-endian length, answer each packet) and no PHP. It is the ceiling the other targets are
//! compared against.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What went wrong running the raw echo server.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// The tokio runtime could not start (threads, epoll).
    #[error("could not start the echo server's runtime")]
    Runtime(#[source] std::io::Error),
    /// The listening address is taken or not local (caller's configuration).
    #[error("could not listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the bind failed.
        #[source]
        source: std::io::Error,
    },
    /// An empty delimiter would make every byte a packet boundary.
    #[error("could not use an empty delimiter")]
    EmptyDelimiter,
}

/// How the raw server behaves.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// Where to listen (loopback).
    pub addr: SocketAddr,
    /// Packet terminator; each complete packet is echoed including it.
    pub delimiter: Vec<u8>,
    /// Time each packet blocks its thread (std sleep, like PHP's usleep) before it is answered;
    /// 0 for the plain echo.
    pub block: Duration,
    /// Blocking-handler threads: the blocking variant runs each packet's handler on one of
    /// this many threads, like a pool of that many PHP workers.
    pub threads: usize,
    /// Largest packet accepted; a connection that sends more without a delimiter is closed,
    /// like Pier's bounded framing.
    pub max_packet: usize,
    /// Frames are a 4-byte big-endian length and that many bytes, echoed whole (the delimiter is
    /// then unused).
    pub length_prefix: bool,
}

/// Runs the echo server until the process is killed.
pub fn serve(opts: EchoOptions) -> Result<(), EchoError> {
    if opts.delimiter.is_empty() {
        return Err(EchoError::EmptyDelimiter);
    }
    // One event loop is the natural design for one pinned core; the blocking variant runs its
    // handlers on a pool of `threads` blocking threads instead (see `connection`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(opts.threads.max(1))
        .build()
        .map_err(EchoError::Runtime)?;
    rt.block_on(async move {
        let listener = TcpListener::bind(opts.addr)
            .await
            .map_err(|source| EchoError::Bind {
                addr: opts.addr,
                source,
            })?;
        accept_loop(listener, opts).await;
        Ok(())
    })
}

/// Serves connections from `listener` forever (tests call it on a port-0 listener).
pub async fn accept_loop(listener: TcpListener, opts: EchoOptions) {
    loop {
        // Accept errors (EMFILE under the 10k ramp) are transient: back off and go on.
        match listener.accept().await {
            Ok((stream, _)) => {
                let opts = opts.clone();
                tokio::spawn(async move {
                    // A client closing or resetting is its own business: nothing to report.
                    let _ = connection(stream, &opts).await;
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Echoes complete packets of one connection until EOF.
async fn connection(mut stream: TcpStream, opts: &EchoOptions) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let finder = memchr::memmem::Finder::new(&opts.delimiter);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    // Where the search for the next delimiter resumes: bytes before it hold no delimiter start.
    let mut scanned = 0;
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut end = 0;
        let mut packets = 0u32;
        if opts.length_prefix {
            // Whole frames only; a length over the bound closes the connection before buffering.
            while let Some(head) = buf.get(end..end + 4) {
                let len = 4 + u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                if len > opts.max_packet {
                    return Ok(());
                }
                if buf.len() - end < len {
                    break;
                }
                end += len;
                packets += 1;
            }
            scanned = end;
        } else {
            while let Some(i) = finder.find(&buf[scanned..]) {
                end = scanned + i + opts.delimiter.len();
                scanned = end;
                packets += 1;
            }
        }
        if packets > 0 {
            if !opts.block.is_zero() {
                // Deliberately blocks a pool thread, as a PHP worker blocks its process; the pool
                // has `threads` threads, so at most that many packets are handled at once.
                let block = opts.block * packets;
                tokio::task::spawn_blocking(move || std::thread::sleep(block)).await?;
            }
            stream.write_all(&buf[..end]).await?;
            buf.drain(..end);
            scanned = 0;
        }
        if buf.len() > opts.max_packet {
            return Ok(());
        }
        // A delimiter may be split across reads: rescan its possible start.
        scanned = scanned.max(buf.len().saturating_sub(opts.delimiter.len() - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts the raw server on a port-0 loopback listener in its own runtime thread.
    fn start(block: Duration) -> SocketAddr {
        start_framed(block, false)
    }

    /// [`start`], framing by a 4-byte length when `length_prefix`.
    fn start_framed(block: Duration, length_prefix: bool) -> SocketAddr {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let addr = std_listener.local_addr().expect("local addr");
        std_listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                accept_loop(
                    listener,
                    EchoOptions {
                        addr,
                        delimiter: b"\r\n".to_vec(),
                        block,
                        threads: 1,
                        max_packet: 1024,
                        length_prefix,
                    },
                )
                .await;
            });
        });
        addr
    }

    /// A blocking client of the server at `addr` whose reads give up after 5 s.
    fn client(addr: SocketAddr) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    }

    #[test]
    fn echoes_whole_packets_under_any_chunking() {
        use std::io::{Read, Write};
        let addr = start(Duration::ZERO);
        let mut s = client(addr);
        // Two packets in one write, then a third split inside its delimiter.
        s.write_all(b"one\r\ntwo\r\nthr").expect("write");
        s.write_all(b"ee\r").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"\n").expect("write");
        let want = b"one\r\ntwo\r\nthree\r\n";
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).expect("echo");
        assert_eq!(&got, want);
    }

    #[test]
    fn echoes_length_prefixed_frames_whole_and_refuses_a_length_over_the_bound() {
        use std::io::{Read, Write};
        let addr = start_framed(Duration::ZERO, true);
        let mut s = client(addr);
        // Two frames in one write, then a third split inside its length.
        s.write_all(b"\0\0\0\x01a\0\0\0\x02bc\0\0").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"\0\x01\n").expect("write");
        let want = b"\0\0\0\x01a\0\0\0\x02bc\0\0\0\x01\n";
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).expect("echo");
        assert_eq!(&got, want);
        s.write_all(b"\0\x01\0\0").expect("write");
        let mut buf = [0u8; 16];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }

    #[test]
    fn a_packet_over_the_bound_closes_the_connection() {
        use std::io::{Read, Write};
        let addr = start(Duration::ZERO);
        let mut s = client(addr);
        s.write_all(&[b'x'; 4096]).expect("write");
        let mut buf = [0u8; 16];
        // EOF (0) or a reset: either way, no echo of the oversized data.
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }

    #[test]
    fn the_load_generator_measures_the_raw_server() {
        use crate::loadgen::{run, Mode, Shape};
        let addr = start(Duration::ZERO);
        let shape = |connections| Shape {
            addr,
            connections,
            size: 64,
            delimiter: b"\r\n".to_vec(),
            length_prefix: false,
            connect_concurrency: 16,
            connect_timeout: Duration::from_secs(10),
            watch_pid: Some(std::process::id()),
            tls: None,
        };
        let closed = run(
            shape(4),
            Mode::Closed {
                depth: 8,
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(300),
                batches: None,
            },
        )
        .expect("closed loop runs");
        assert_eq!(closed.errors, 0, "{:?}", closed.first_error);
        assert_eq!(closed.connections, 4);
        assert!(closed.messages > 0 && closed.msg_per_s > 0.0);
        assert!(closed.p50_us > 0.0 && closed.p99_us >= closed.p50_us);
        assert!(closed.server_cpu_ns > 0 && closed.server_rss_kib > 0);

        let open = run(
            shape(4),
            Mode::Open {
                rate: 400.0,
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(300),
            },
        )
        .expect("open loop runs");
        assert_eq!(open.errors, 0, "{:?}", open.first_error);
        assert!(open.messages > 0 && open.p50_us > 0.0);

        let idle = run(
            shape(200),
            Mode::Idle {
                hold: Duration::ZERO,
            },
        )
        .expect("idle runs");
        assert_eq!(idle.errors, 0, "{:?}", idle.first_error);
        assert_eq!(idle.connections, 200);
        assert!(idle.server_rss_kib > 0);
    }

    #[test]
    fn only_loopback_targets_are_loaded() {
        use crate::loadgen::{run, LoadError, Mode, Shape};
        let shape = Shape {
            addr: "192.0.2.1:80".parse().expect("address"),
            connections: 1,
            size: 8,
            delimiter: b"\n".to_vec(),
            length_prefix: false,
            connect_concurrency: 1,
            connect_timeout: Duration::from_secs(1),
            watch_pid: None,
            tls: None,
        };
        let err = run(
            shape,
            Mode::Idle {
                hold: Duration::ZERO,
            },
        )
        .expect_err("refused");
        assert!(matches!(err, LoadError::Options(m) if m.contains("loopback")));
    }

    #[test]
    fn nothing_listening_is_an_error_not_a_hang() {
        use crate::loadgen::{run, LoadError, Mode, Shape};
        // Bind then drop: the port is (almost certainly) closed now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port 0");
        let shape = Shape {
            addr,
            connections: 2,
            size: 8,
            delimiter: b"\n".to_vec(),
            length_prefix: false,
            connect_concurrency: 2,
            connect_timeout: Duration::from_secs(5),
            watch_pid: None,
            tls: None,
        };
        let err = run(
            shape,
            Mode::Idle {
                hold: Duration::ZERO,
            },
        )
        .expect_err("no server");
        assert!(matches!(err, LoadError::NoConnection { .. }));
    }
}
