//! A connection's packets: its read half cut by its [`FrameCodec`], as tokio-util's `FramedRead`
//! does, but holding no read buffer while the connection waits for bytes.
//!
//! Why: most connections of a push server are idle most of the time, and a per-connection read
//! buffer costs at least the page its allocator touches (4 KiB of RSS per idle connection, more
//! than everything else it holds). So reads with nothing pending go to one scratch buffer per
//! runtime thread, and the connection keeps a view of just the bytes that came (no copy). When a
//! packet spans reads, the connection copies its part into a buffer of its own and reads the rest
//! straight into it, as before; once its packets are taken the buffer is let go. The views keep a
//! scratch allocation alive only while packets read into it are being run; the scratch is then
//! reused in place.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncRead;
use tokio_util::codec::Decoder;
use tokio_util::io::poll_read_buf;

use super::{FrameCodec, FramingError};

/// Size of a runtime thread's scratch buffer: the most one read takes.
pub const SCRATCH_SIZE: usize = 64 * 1024;

/// A read half that can say, without reading, that a read would find nothing yet, and that can
/// read plain TCP straight from the socket.
///
/// Why: after a read that returned less than it asked for, tokio has already cleared the TCP
/// socket's read readiness (a short read drains an edge-triggered socket), so the next read only
/// registers the task's waker and returns `Pending`. Through the read stack (this thread's
/// scratch buffer, `poll_read_buf`, the byte counter, the PROXY replay, `PollEvented::poll_read`)
/// that was ~200 instructions per echoed message at 100 × 1 (bench/results/2026-12-01-tokio.md);
/// [`Packets`] asks this instead, right after a short read. And the read that does find bytes
/// went through the same layers, each a `poll_read` of its own, with tokio's readiness poll and
/// budget in the last: [`ReadReady::try_read_direct`] is one call and one readiness check
/// (bench/results/2026-12-01-tokio2.md).
pub trait ReadReady {
    /// `Pending` (the task's waker registered, as a read's `Pending` does) when a read would find
    /// no bytes and no end of stream; `Ready` when a read may find some — or when this half cannot
    /// tell without reading (TLS: a record may already be buffered in rustls).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;

    /// Reads what the socket holds now into `buf` without waiting and without the `AsyncRead`
    /// layers: `Ok(0)` is the end of the stream. `None` when this half has no such read (TLS, a
    /// PROXY header's leftover still to replay): then it is read with `poll_read`.
    ///
    /// The contract [`Packets`] relies on: `WouldBlock` means nothing was read *and* the
    /// readiness that [`ReadReady::poll_read_ready`] reports is cleared, so that it waits for the
    /// socket (else the wait would return at once and spin); a read shorter than `buf` offers
    /// clears it too (the socket is drained), as tokio's own `poll_read` does on epoll.
    fn try_read_direct(&mut self, _buf: &mut impl BufMut) -> Option<std::io::Result<usize>> {
        None
    }
}

thread_local! {
    /// Where a read lands when its connection has nothing pending; taken (split) by the
    /// connection as a view, so the buffer is shared by every connection this thread serves.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Packets of one connection, framed by its server's codec.
#[derive(Debug)]
pub struct Packets<R> {
    /// The read half.
    io: R,
    /// The server's framing.
    codec: FrameCodec,
    /// Bytes read and not yet framed; empty (no allocation) while nothing is pending.
    buf: BytesMut,
    /// Whether `buf` is this connection's own allocation (else a view of a scratch buffer, which
    /// must not be kept while waiting for the client).
    own: bool,
    /// Most bytes one read takes (`tcp.read_buf_size`, at most [`SCRATCH_SIZE`]).
    read_size: usize,
    /// The last read returned end of stream.
    eof: bool,
    /// `buf` may hold a packet: decode before reading.
    readable: bool,
    /// A decode or read error was returned: the stream ends next.
    errored: bool,
    /// The last read into the scratch took less than `read_size`: the socket is likely drained,
    /// so the next read asks [`ReadReady`] first.
    drained: bool,
}

impl<R: AsyncRead + ReadReady + Unpin> Packets<R> {
    /// Packets of `io` cut by `codec`; reads take at most `read_size` bytes.
    pub fn new(io: R, codec: FrameCodec, read_size: usize) -> Self {
        Packets {
            io,
            codec,
            buf: BytesMut::new(),
            own: false,
            read_size: read_size.clamp(1, SCRATCH_SIZE),
            eof: false,
            readable: false,
            errored: false,
            drained: false,
        }
    }

    /// The next packet; `None` at the end of the stream (after an error, too). Cancel-safe: a
    /// packet is only taken from the buffer when it is returned.
    pub async fn next(&mut self) -> Option<Result<BytesMut, FramingError>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// True when nothing is buffered and the socket has no bytes now (the task's waker is
    /// registered for them, as a read's `Pending` does): the connection waits for nothing else.
    pub fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.buf.is_empty() || self.eof || self.errored {
            return false;
        }
        if self.io.poll_read_ready(cx).is_pending() {
            // Asked: the next poll is most likely the socket's wake-up, and reads at once.
            self.drained = false;
            return true;
        }
        false
    }

    /// Whether bytes of a next packet are read already (maybe not all of it): the client is
    /// pipelining. A hint, not a promise: the next packet may still need a read.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty() && !self.errored
    }

    /// The read half.
    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// The read half, mutably.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// The read half, the bytes read but not framed yet, and the codec.
    pub fn into_parts(self) -> (R, BytesMut, FrameCodec) {
        (self.io, self.buf, self.codec)
    }

    /// `FramedRead::poll_next`'s state machine (decode what is buffered, else read; at end of
    /// stream `decode_eof`), with the buffer handling described in the module's doc.
    /// Cancel-safe as [`Packets::next`].
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BytesMut, FramingError>>> {
        loop {
            if self.errored {
                self.errored = false;
                self.readable = false;
                return Poll::Ready(None);
            }
            if self.readable {
                let decoded = if self.eof {
                    self.codec.decode_eof(&mut self.buf)
                } else {
                    self.codec.decode(&mut self.buf)
                };
                match decoded {
                    Ok(Some(packet)) => {
                        // Nothing left: no packet either, so the next poll reads without asking
                        // the codec first (every codec needs at least one byte for a packet; the
                        // asking was ~55 instructions per message, the delimiter's empty search).
                        // At the end of stream `decode_eof` still has the last word.
                        self.readable = self.eof || !self.buf.is_empty();
                        self.let_go_if_empty();
                        return Poll::Ready(Some(Ok(packet)));
                    }
                    Ok(None) if self.eof => {
                        self.readable = false;
                        self.let_go_if_empty();
                        return Poll::Ready(None);
                    }
                    Ok(None) => self.readable = false,
                    Err(e) => {
                        self.errored = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            let read = if self.buf.is_empty() {
                if self.drained {
                    // The usual wait for a client's next packet (see `ReadReady`). Asked once:
                    // the next poll is most likely the socket's wake-up, and a read then asks
                    // tokio for the readiness itself (asking here too cost ~100 instructions per
                    // message). An error is the read's to report.
                    self.drained = false;
                    if self.io.poll_read_ready(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                self.read_scratch(cx)
            } else {
                self.read_own(cx)
            };
            let n = match ready!(read) {
                Ok(n) => n,
                Err(e) => {
                    self.errored = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            if n == 0 {
                if self.eof {
                    return Poll::Ready(None);
                }
                self.eof = true;
            } else {
                self.eof = false;
            }
            self.readable = true;
        }
    }

    /// Reads into this thread's scratch buffer; `buf` (empty) becomes a view of what came.
    fn read_scratch(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let read_size = self.read_size;
        let io = &mut self.io;
        let read = SCRATCH.with_borrow_mut(|scratch| -> Poll<std::io::Result<(usize, BytesMut)>> {
            // Reads go into what is left of the scratch until less than half a read is left;
            // then it is reclaimed in place if no view of it is alive, else a fresh one is made.
            // Not at every read: with many connections, views of the last reads are alive while
            // their events wait for a worker (1000×1: almost always), and a fresh 64 KiB per read
            // cost ~500 instructions per message in malloc and free (callgrind) and kept a block
            // alive per waiting packet.
            if scratch.capacity() < read_size.div_ceil(2) {
                scratch.reserve(SCRATCH_SIZE);
            }
            let limit = read_size.min(scratch.capacity());
            let n = ready!(read_into(io, cx, &mut (&mut *scratch).limit(limit)))?;
            Poll::Ready(Ok((n, scratch.split())))
        });
        let (n, bytes) = ready!(read)?;
        // Only a hint (`ReadReady` is asked, not trusted): a read near the scratch's end asked
        // for less than `read_size`, and may have filled it.
        self.drained = 0 < n && n < read_size;
        self.buf = bytes;
        self.own = false;
        Poll::Ready(Ok(n))
    }

    /// Reads more of a packet that spans reads into the connection's own buffer (made from the
    /// bytes pending when they are a view of a scratch buffer).
    fn read_own(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if !self.own {
            let mut own = BytesMut::with_capacity(self.buf.len() + self.read_size);
            own.extend_from_slice(&self.buf);
            self.buf = own;
            self.own = true;
        }
        self.buf.reserve(self.read_size);
        self.drained = false;
        // The task's coop budget, as tokio's own reads spend it: a packet that spans reads can
        // take many in one poll (a client streaming a long packet, `read_size` at a time, up to
        // `max_packet_size`), and the budget makes the task yield to the others every 128 reads.
        // The scratch read (the first of each packet) does not spend it: the connection's task
        // waits for its worker's answer after every packet, so it returns `Pending` between
        // packets anyway, and the budget (a thread-local and its restore) cost ~27 instructions
        // per message at 100 × 1 (bench/results/2026-12-01-tokio2.md).
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        let read = ready!(read_into(
            &mut self.io,
            cx,
            &mut (&mut self.buf).limit(self.read_size)
        ));
        coop.made_progress();
        Poll::Ready(read)
    }

    /// Drops the buffer once everything in it was framed, so an idle connection holds none.
    fn let_go_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.own = false;
        }
    }
}

/// One read of `io` into `buf`: straight from the socket when `io` can
/// ([`ReadReady::try_read_direct`]), waiting on its readiness while it has nothing; else through
/// its `poll_read`. A direct read spends none of the task's coop budget (see
/// [`Packets::read_own`] for the reads that must).
#[inline]
fn read_into<R: AsyncRead + ReadReady + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut impl BufMut,
) -> Poll<std::io::Result<usize>> {
    loop {
        match io.try_read_direct(buf) {
            None => return poll_read_buf(Pin::new(io), cx, buf),
            // Nothing now, and the readiness cleared: wait for the socket (a readiness that came
            // meanwhile is `Ready` at once: read again).
            Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                ready!(io.poll_read_ready(cx))?;
            }
            Some(read) => return Poll::Ready(read),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::Framing;
    use crate::listener::proxy::Rewind;
    use tokio::io::AsyncWriteExt;

    fn lines(max: usize) -> FrameCodec {
        FrameCodec::new(&Framing::Delimiter(b"\n".to_vec()), max)
    }

    /// The in-memory pipe cannot tell readiness without reading: it reads (as TLS does).
    impl ReadReady for tokio::io::DuplexStream {
        fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn all<R: AsyncRead + ReadReady + Unpin>(
        p: &mut Packets<R>,
    ) -> (Vec<Vec<u8>>, Option<String>) {
        let mut out = Vec::new();
        while let Some(r) = p.next().await {
            match r {
                Ok(packet) => out.push(packet.to_vec()),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn packets_in_one_read_and_across_reads() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut p = Packets::new(server, lines(1 << 20), SCRATCH_SIZE);
        client.write_all(b"one\ntwo\nthr").await.unwrap();
        assert_eq!(p.next().await.unwrap().unwrap(), &b"one\n"[..]);
        assert_eq!(p.next().await.unwrap().unwrap(), &b"two\n"[..]);
        assert!(!p.own, "whole packets are views of the scratch buffer");
        let third = tokio::spawn(async move {
            let packet = p.next().await.unwrap().unwrap();
            (packet, p)
        });
        tokio::task::yield_now().await;
        client.write_all(b"ee\n").await.unwrap();
        let (packet, mut p) = third.await.unwrap();
        assert_eq!(packet, &b"three\n"[..]);
        assert!(
            p.buf.is_empty() && p.buf.capacity() == 0,
            "nothing held once framed"
        );
        // A big packet: many reads, then the rest of the stream.
        let mut big = vec![b'x'; 3 * SCRATCH_SIZE + 17];
        big.push(b'\n');
        client.write_all(&big).await.unwrap();
        client.write_all(b"last").await.unwrap();
        drop(client);
        let (packets, error) = all(&mut p).await;
        assert_eq!(packets, vec![big, b"last".to_vec()]);
        assert_eq!(error, None);
        assert!(p.next().await.is_none(), "the end stays the end");
    }

    #[tokio::test]
    async fn errors_end_the_stream_and_bounds_hold() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut p = Packets::new(server, lines(8), SCRATCH_SIZE);
        client.write_all(b"ok\n0123456789").await.unwrap();
        drop(client);
        let (packets, error) = all(&mut p).await;
        assert_eq!(packets, vec![b"ok\n".to_vec()]);
        assert!(error.unwrap().contains("max_packet_size 8"));
        assert!(p.next().await.is_none());
    }

    /// Packets still being run keep their part of the scratch alive; reads go on into the rest
    /// of it instead of making a fresh 64 KiB buffer per read (1000 connections whose events wait
    /// for a worker).
    #[tokio::test]
    async fn reads_share_one_scratch_while_earlier_packets_are_alive() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut p = Packets::new(server, lines(1 << 20), SCRATCH_SIZE);
        let packet = [b'p'; 32];
        let mut alive = Vec::new();
        for _ in 0..1000 {
            client.write_all(&packet).await.unwrap();
            client.write_all(b"\n").await.unwrap();
            alive.push(p.next().await.unwrap().unwrap());
        }
        assert!(alive.iter().all(|b| b.len() == 33 && !p.own));
        // A packet not right behind the one before it came from another buffer.
        let buffers = 1 + alive
            .windows(2)
            .filter(|w| w[0].as_ptr().wrapping_add(33) != w[1].as_ptr())
            .count();
        assert!(buffers <= 3, "{buffers} scratch buffers for 33 KB read");
    }

    #[tokio::test]
    async fn a_partial_packet_is_not_kept_as_a_view_while_waiting() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut p = Packets::new(server, lines(1 << 20), 16);
        client.write_all(b"abc").await.unwrap();
        let pending = futures_util::FutureExt::now_or_never(p.next());
        assert!(pending.is_none(), "no delimiter yet");
        assert!(
            p.own,
            "the partial packet moved to the connection's own buffer"
        );
        assert_eq!(&p.buf[..], b"abc");
        client.write_all(&[b'y'; 40]).await.unwrap();
        client.write_all(b"\n").await.unwrap();
        let packet = p.next().await.unwrap().unwrap();
        assert_eq!(packet.len(), 44);
    }

    /// A read half that counts the reads that reach it.
    struct Counted<R> {
        inner: R,
        reads: usize,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<R: ReadReady> ReadReady for Counted<R> {
        fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.inner.poll_read_ready(cx)
        }

        fn try_read_direct(&mut self, buf: &mut impl BufMut) -> Option<std::io::Result<usize>> {
            let read = self.inner.try_read_direct(buf)?;
            self.reads += 1;
            Some(read)
        }
    }

    /// The client of a loopback connection, and the server's packets of it (lines up to `max`
    /// bytes, `read_size` a read), with `leftover` replayed first as a PROXY header's, and its
    /// write half (kept: dropping it would end the server's side).
    async fn socket_packets(
        leftover: &[u8],
        max: usize,
        read_size: usize,
    ) -> (
        tokio::net::TcpStream,
        Packets<Counted<Rewind<tokio::net::tcp::OwnedReadHalf>>>,
        tokio::net::tcp::OwnedWriteHalf,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();
        let read = Counted {
            inner: Rewind::new(BytesMut::from(leftover), read),
            reads: 0,
        };
        (client, Packets::new(read, lines(max), read_size), write)
    }

    #[tokio::test]
    async fn after_a_short_read_the_wait_for_bytes_asks_the_socket_readiness_not_a_read() {
        // A PROXY header's leftover first: replayed without the socket, then the socket's bytes.
        let (mut client, mut p, _write) = socket_packets(b"p\n", 64, SCRATCH_SIZE).await;
        assert_eq!(p.next().await.unwrap().unwrap(), &b"p\n"[..]);
        assert_eq!(p.io.reads, 1, "the leftover is read through poll_read");
        client.write_all(b"a\n").await.unwrap();
        assert_eq!(p.next().await.unwrap().unwrap(), &b"a\n"[..]);
        let reads = p.io.reads;
        // Nothing sent: the wait registers the task with the socket and reads nothing.
        let waker = std::sync::Arc::new(Flag::default());
        let task = std::task::Waker::from(waker.clone());
        let mut cx = Context::from_waker(&task);
        assert!(p.poll_next(&mut cx).is_pending());
        assert_eq!(p.io.reads, reads, "a drained socket is not read again");
        // Polled again without bytes (a wake-up for something else): a read (a direct one, which
        // finds tokio's readiness cleared and makes no system call), as before.
        assert!(p.poll_next(&mut cx).is_pending());
        assert_eq!(p.io.reads, reads + 1);
        // Bytes come: the task is woken, and the read takes them.
        client.write_all(b"b\n").await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), waker.woken())
            .await
            .expect("woken when bytes come");
        assert_eq!(p.next().await.unwrap().unwrap(), &b"b\n"[..]);
        // The end of the stream is seen through the same wait.
        drop(client);
        assert!(p.next().await.is_none());
    }

    /// A packet that spans reads spends the task's coop budget, as tokio's reads do: a client
    /// streaming one long packet (here a byte per read) makes its task yield to the others every
    /// 128 reads instead of reading until the packet is complete or the socket is empty.
    #[tokio::test]
    async fn a_packet_spanning_many_reads_yields_to_other_tasks() {
        let (mut client, mut p, _write) = socket_packets(b"", 1 << 20, 1).await;
        let mut long = vec![b'x'; 1000];
        long.push(b'\n');
        client.write_all(&long).await.unwrap();
        // Every byte is on the socket before the poll: `readable()` waits for the first, and
        // the loopback delivers one write whole.
        poll_fn(|cx| p.io.inner.poll_read_ready(cx)).await.unwrap();
        let waker = std::sync::Arc::new(Flag::default());
        let task = std::task::Waker::from(waker.clone());
        let mut cx = Context::from_waker(&task);
        assert!(p.poll_next(&mut cx).is_pending(), "yields before the end");
        let reads = p.io.reads;
        assert!(
            (100..=130).contains(&reads),
            "{reads} reads in one poll: the budget is 128"
        );
        tokio::time::timeout(std::time::Duration::from_secs(10), waker.woken())
            .await
            .expect("the yield wakes the task at once");
        assert_eq!(p.next().await.unwrap().unwrap(), long);
    }

    /// A waker that notes it was woken.
    #[derive(Default)]
    struct Flag(tokio::sync::Notify);

    impl Flag {
        async fn woken(&self) {
            self.0.notified().await;
        }
    }

    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.notify_one();
        }
    }
}
