//! The two halves of a client connection as the connection task uses them: plaintext TCP (with
//! the bytes read past a PROXY header replayed first) or TLS over it.
//!
//! Plaintext keeps tokio's owned TCP halves, so its writes stay non-blocking `send(2)` /
//! `sendmsg(2)` attempts with no extra layer (on the socket's descriptor, tokio only once the
//! socket is full); TLS goes through rustls' buffered stream, driven by
//! polls with a no-op waker for the attempts and a real one while waiting (both cancel-safe).

use std::future::poll_fn;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::proxy::Rewind;

/// A TLS connection as the server holds it.
pub(crate) type TlsIo = tokio_rustls::server::TlsStream<Rewind<TcpStream>>;

/// What a connection reads from.
#[derive(Debug)]
pub(crate) enum ReadSide {
    /// Plain TCP; the PROXY header's leftovers first.
    Plain(Rewind<OwnedReadHalf>),
    /// TLS.
    Tls(ReadHalf<TlsIo>),
}

/// What a connection writes to.
#[derive(Debug)]
pub(crate) enum WriteSide {
    /// Plain TCP.
    Plain(PlainWrite),
    /// TLS; `unflushed` while rustls may hold records the socket has not taken yet.
    Tls {
        /// The write half of the TLS stream.
        half: WriteHalf<TlsIo>,
        /// Records may wait in rustls' buffer: a flush is owed before the queue counts as written.
        unflushed: bool,
    },
    /// Taken for a STARTTLS handshake that failed: nothing can be written any more.
    Gone,
}

/// A plaintext write half and its socket's descriptor, kept beside it so that a reply's `send(2)`
/// skips tokio's `Registration::try_io` (~48 instructions: the halves' shared `TcpStream`, the
/// readiness in its `ScheduledIo`). The cache misses on those two lines at 1000 connections did
/// not go: the read loop's re-arm of the reader right after the reply touches both
/// (bench/results/2026-12-01-conn.md). tokio's path is taken only when the socket refuses bytes
/// (see [`PlainWrite::send`]).
#[derive(Debug)]
pub(crate) struct PlainWrite {
    /// The descriptor of `half`'s socket. Rule: set once, from `half`, in [`PlainWrite::new`],
    /// and the fields are private and never replaced, so it is open for as long as this value
    /// lives (the socket closes when the last of the halves' `Arc<TcpStream>`s drops, and `half`
    /// holds one).
    fd: RawFd,
    /// tokio's write half: owns the socket (with the read half) and its readiness.
    half: OwnedWriteHalf,
}

impl PlainWrite {
    fn new(half: OwnedWriteHalf) -> Self {
        let fd = half.as_ref().as_raw_fd();
        PlainWrite { fd, half }
    }

    /// Sends `bufs` without waiting: first on the descriptor itself; only if the socket refuses
    /// bytes again through tokio, whose attempt (a real one, made after it read its readiness)
    /// clears that readiness on `WouldBlock`, so that `writable()` waits for the socket to drain
    /// rather than returning at once on a stale readiness (a busy loop). The retry costs one more
    /// system call, only when the socket is full.
    #[inline]
    fn send(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        // SAFETY: `fd` is open for as long as `self` lives (the rule on the field), and the
        // borrow does not outlive `self`.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        match send_on_descriptor(fd, bufs) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => send(&self.half, bufs),
            sent => sent,
        }
    }
}

/// Sends `bufs` on a plaintext socket's descriptor without tokio (which therefore does not see a
/// `WouldBlock`: see [`PlainWrite::send`]): `send(2)` for one buffer, `sendmsg(2)` for several,
/// never waiting (tokio's sockets are non-blocking). Shared by a connection's writer and by a
/// worker's holder delivering a plain answer (`connection::Link::deliver`).
#[inline]
pub(crate) fn send_on_descriptor(
    fd: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
) -> std::io::Result<usize> {
    let socket = socket2::SockRef::from(&fd);
    // MSG_NOSIGNAL as std's own `send`: a closed peer is an EPIPE error, not a signal.
    match bufs {
        [one] => socket.send_with_flags(one, libc::MSG_NOSIGNAL),
        _ => socket.send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL),
    }
}

/// The halves of a fresh connection.
pub(crate) fn split(transport: super::Transport) -> (ReadSide, WriteSide) {
    match transport {
        super::Transport::Plain { stream, prefix } => {
            let (r, w) = stream.into_split();
            (
                ReadSide::Plain(Rewind::new(prefix, r)),
                WriteSide::Plain(PlainWrite::new(w)),
            )
        }
        super::Transport::Tls(tls) => split_tls(*tls),
    }
}

/// The halves of a TLS stream.
pub(crate) fn split_tls(tls: TlsIo) -> (ReadSide, WriteSide) {
    let (r, w) = tokio::io::split(tls);
    (
        ReadSide::Tls(r),
        WriteSide::Tls {
            half: w,
            unflushed: false,
        },
    )
}

/// The plaintext socket back from its halves (for STARTTLS). Bytes still in the PROXY replay
/// buffer are dropped with the rest of what the client sent before the handshake. `None` for TLS.
pub(crate) fn reunite(read: ReadSide, write: WriteSide) -> Option<TcpStream> {
    match (read, write) {
        (ReadSide::Plain(r), WriteSide::Plain(w)) => r.into_inner().reunite(w.half).ok(),
        _ => None,
    }
}

impl AsyncRead for ReadSide {
    // Inlined into the connection's read (one call per packet; plaintext is the usual arm).
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ReadSide::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl crate::framing::ReadReady for ReadSide {
    // Inlined into the connection's wait for its next packet.
    #[inline]
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self {
            ReadSide::Plain(r) => r.poll_read_ready(cx),
            // rustls may hold a whole record already read from the socket: only a read can tell.
            ReadSide::Tls(_) => Poll::Ready(Ok(())),
        }
    }

    // Inlined into the connection's read (one call per packet).
    #[inline]
    fn try_read_direct(&mut self, buf: &mut impl bytes::BufMut) -> Option<std::io::Result<usize>> {
        match self {
            ReadSide::Plain(r) => r.try_read_direct(buf),
            // Decrypting is rustls' read.
            ReadSide::Tls(_) => None,
        }
    }
}

/// Reads what a plaintext socket holds now into `buf` (as [`crate::framing::ReadReady`]'s
/// `try_read_direct`): one `recv(2)` after one look at tokio's readiness, instead of
/// `PollEvented::poll_read`'s readiness poll (the task's coop budget, the waker slot) behind
/// `AsyncRead` layers.
///
/// A read shorter than `buf` offers clears tokio's read readiness, as `PollEvented::poll_read`
/// does on epoll (an edge-triggered socket drained by it): the closure given to tokio's `try_io`
/// reports it as `WouldBlock`, which is how `try_io` is told to clear it, and the count is kept
/// beside it. tokio clears only the readiness of the event the read started from (its tick): an
/// event that came meanwhile is kept. Without the clear the next wait would find the stale
/// readiness and pay one more `recv` to learn there is nothing.
#[inline]
pub(crate) fn try_read_plain(
    half: &OwnedReadHalf,
    buf: &mut impl bytes::BufMut,
) -> std::io::Result<usize> {
    let offered = buf.chunk_mut().len();
    let mut short = 0;
    let read = half.as_ref().try_io(Interest::READABLE, || {
        // tokio's own read into a `BufMut` (its readiness is known to be set here).
        let n = half.try_read_buf(buf)?;
        if 0 < n && n < offered {
            short = n;
            return Err(would_block());
        }
        Ok(n)
    });
    match read {
        // Only the closure's own `WouldBlock` comes with `short` set (not asking the error its
        // kind again: a call, ~11 instructions).
        Err(_) if short > 0 => Ok(short),
        read => read,
    }
}

/// Sends `bufs` on a plaintext socket without waiting, through the socket calls rather than
/// `writev(2)`: `send(2)` for one buffer (a reply: the usual case), `sendmsg(2)` for several.
/// `writev` on a socket goes through the file layer first (`fdget_pos`, `vfs_writev`,
/// `sock_write_iter`, the iovec import); perf cpu-clock call graphs put that at ~0.2 µs per
/// message at 100 × 1 and ~0.4 µs at 1000 × 1 (bench/results/2026-11-30-kernel.md) — the part
/// of the reply's kernel time Workerman's `send` does not pay. `WouldBlock` clears tokio's write
/// readiness as `try_write_vectored` does, so `writable()` still waits for the socket to drain.
/// The retry of [`PlainWrite::send`] once its own attempt found the socket full.
#[cold]
fn send(w: &OwnedWriteHalf, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
    match bufs {
        // tokio → mio → std's `send(fd, …, MSG_NOSIGNAL)`.
        [one] => w.try_write(one),
        _ => w.as_ref().try_io(Interest::WRITABLE, || {
            // MSG_NOSIGNAL as std's own `send`: a closed peer is an EPIPE error, not a signal.
            socket2::SockRef::from(w.as_ref()).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
        }),
    }
}

fn would_block() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::WouldBlock)
}

fn gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the connection's stream is gone (failed STARTTLS)",
    )
}

impl WriteSide {
    /// The plaintext socket's descriptor (open while this half lives); `None` for TLS.
    pub(crate) fn plain_fd(&self) -> Option<RawFd> {
        match self {
            WriteSide::Plain(w) => Some(w.fd),
            _ => None,
        }
    }

    /// Writes what the socket takes now without waiting (`WouldBlock` when nothing). Inlined
    /// into the writer (one call per reply).
    #[inline]
    pub(crate) fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            WriteSide::Plain(w) => w.send(bufs),
            WriteSide::Tls { half, unflushed } => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut *half).poll_write_vectored(&mut cx, bufs) {
                    Poll::Ready(Ok(n)) => {
                        *unflushed = true;
                        Ok(n)
                    }
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(would_block()),
                }
            }
            WriteSide::Gone => Err(gone()),
        }
    }

    /// Pushes records rustls still holds to the socket without waiting: `Ok(true)` when none is
    /// left (always for plaintext).
    pub(crate) fn try_flush(&mut self) -> std::io::Result<bool> {
        match self {
            WriteSide::Tls { half, unflushed } if *unflushed => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut *half).poll_flush(&mut cx) {
                    Poll::Ready(Ok(())) => {
                        *unflushed = false;
                        Ok(true)
                    }
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Ok(false),
                }
            }
            WriteSide::Gone => Err(gone()),
            _ => Ok(true),
        }
    }

    /// Whether a flush is still owed (TLS records not yet on the socket).
    pub(crate) fn unflushed(&self) -> bool {
        matches!(
            self,
            WriteSide::Tls {
                unflushed: true,
                ..
            }
        )
    }

    /// Waits until the socket can take bytes (TLS: until rustls' buffered records are written,
    /// which makes room). Cancel-safe.
    pub(crate) async fn writable(&mut self) -> std::io::Result<()> {
        match self {
            WriteSide::Plain(w) => w.half.writable().await,
            WriteSide::Tls { half, unflushed } => {
                poll_fn(|cx| Pin::new(&mut *half).poll_flush(cx)).await?;
                *unflushed = false;
                Ok(())
            }
            WriteSide::Gone => Err(gone()),
        }
    }

    /// Ends the write side (TLS: close_notify first).
    pub(crate) async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            WriteSide::Plain(w) => w.half.shutdown().await,
            WriteSide::Tls { half, .. } => half.shutdown().await,
            WriteSide::Gone => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected loopback pair: (the server's write half, the client).
    async fn pair() -> (WriteSide, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();
        // Dropping the read half leaves the socket open (only the write half's drop shuts it down).
        drop(read);
        (WriteSide::Plain(PlainWrite::new(write)), client)
    }

    async fn read_exactly(client: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("the bytes arrive within 10 s")
            .unwrap();
        got
    }

    /// One buffer (`send`) and several (`sendmsg`) arrive in order; a socket that takes nothing
    /// more answers `WouldBlock`, and `writable()` then waits until the client reads — the
    /// contract the connection's `write_timeout` and `max_write_buffer` rest on.
    #[tokio::test]
    async fn plaintext_sends_one_or_several_buffers_and_waits_once_full() {
        let (mut write, mut client) = pair().await;
        assert_eq!(
            write.try_write_vectored(&[IoSlice::new(b"one\n")]).unwrap(),
            4
        );
        assert_eq!(read_exactly(&mut client, 4).await, b"one\n");
        let several = [
            IoSlice::new(b"two "),
            IoSlice::new(b"three"),
            IoSlice::new(b"\n"),
        ];
        assert_eq!(write.try_write_vectored(&several).unwrap(), 10);
        assert_eq!(read_exactly(&mut client, 10).await, b"two three\n");

        let sent = fill(&mut write, true);
        let reader = waits_until_read(&mut write, client, sent).await;
        assert!(write.try_write_vectored(&[IoSlice::new(b"more")]).is_ok());
        assert_eq!(reader.await.unwrap(), sent);
    }

    /// The descriptor's own `send` (which tokio does not see) fills the socket, then `writable()`
    /// waits: the retry through tokio cleared the readiness tokio had from the connect. Without
    /// that retry `writable()` returns at once on the stale readiness, and a writer waiting for
    /// room spins instead of waiting (and `write_timeout` never passes).
    #[tokio::test]
    async fn plaintext_send_on_the_descriptor_leaves_tokio_waiting_once_full() {
        let (mut write, client) = pair().await;
        // tokio learns that the socket is writable (its first event) before the fill.
        tokio::time::timeout(Duration::from_secs(10), write.writable())
            .await
            .expect("a fresh socket is writable")
            .unwrap();
        let sent = fill(&mut write, false);
        let reader = waits_until_read(&mut write, client, sent).await;
        assert_eq!(reader.await.unwrap(), sent);
    }

    /// The direct read's contract ([`crate::framing::ReadReady::try_read_direct`]): a read that
    /// fills what it was offered keeps tokio's readiness (more may be there); a shorter one clears
    /// it, so the wait for the next bytes waits — without the clear it returns at once, and the
    /// connection pays a `recv` that finds nothing before every wait; the end of stream stays
    /// readable.
    #[tokio::test]
    async fn a_short_direct_read_clears_tokio_s_readiness_a_full_one_keeps_it() {
        use bytes::BufMut;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, _write) = server.into_split();
        let mut cx = Context::from_waker(Waker::noop());
        let ten_s = Duration::from_secs(10);
        let mut buf = bytes::BytesMut::with_capacity(64);
        client.write_all(b"0123456789").await.unwrap();
        tokio::time::timeout(ten_s, read.readable())
            .await
            .expect("the bytes come")
            .unwrap();
        assert_eq!(try_read_plain(&read, &mut (&mut buf).limit(4)).unwrap(), 4);
        assert!(read.as_ref().poll_read_ready(&mut cx).is_ready());
        assert_eq!(try_read_plain(&read, &mut (&mut buf).limit(64)).unwrap(), 6);
        assert_eq!(&buf[..], b"0123456789");
        assert!(
            read.as_ref().poll_read_ready(&mut cx).is_pending(),
            "a short read leaves tokio waiting for the socket"
        );
        let nothing = try_read_plain(&read, &mut buf).unwrap_err();
        assert_eq!(nothing.kind(), std::io::ErrorKind::WouldBlock);

        client.write_all(b"x").await.unwrap();
        tokio::time::timeout(ten_s, read.readable())
            .await
            .expect("woken by the next bytes")
            .unwrap();
        assert_eq!(try_read_plain(&read, &mut buf).unwrap(), 1);
        drop(client);
        tokio::time::timeout(ten_s, read.readable())
            .await
            .expect("woken by the end of stream")
            .unwrap();
        for _ in 0..2 {
            assert_eq!(try_read_plain(&read, &mut buf).unwrap(), 0);
            assert!(read.as_ref().poll_read_ready(&mut cx).is_ready());
        }
    }

    /// Fills the send buffer and the client's receive buffer (a few MiB at most on loopback)
    /// with one buffer per write, or (`several`) every other write with two; the bytes sent.
    fn fill(write: &mut WriteSide, several: bool) -> usize {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        let full = (0..10_000).any(|i| {
            let bufs = [IoSlice::new(&chunk), IoSlice::new(&chunk[..1 + i % 7])];
            let result = if several && i % 2 == 1 {
                write.try_write_vectored(&bufs)
            } else {
                write.try_write_vectored(&bufs[..1])
            };
            match result {
                Ok(n) => {
                    sent += n;
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                Err(e) => panic!("could not write: {e}"),
            }
        });
        assert!(full, "the socket never filled up");
        sent
    }

    /// On a full socket: `writable()` waits while the client reads nothing, and is ready once a
    /// reader (returned, with the count it read) takes the `sent` bytes.
    async fn waits_until_read(
        write: &mut WriteSide,
        mut client: TcpStream,
        sent: usize,
    ) -> tokio::task::JoinHandle<usize> {
        assert!(
            tokio::time::timeout(Duration::from_millis(50), write.writable())
                .await
                .is_err(),
            "writable() must wait while the client reads nothing"
        );
        let reader = tokio::spawn(async move { read_exactly(&mut client, sent).await.len() });
        tokio::time::timeout(Duration::from_secs(10), write.writable())
            .await
            .expect("writable once the client reads")
            .unwrap();
        reader
    }
}
