//! The two halves of a client connection as the connection task uses them: plaintext TCP (with
//! the bytes read past a PROXY header replayed first) or TLS over it.
//!
//! Plaintext keeps tokio's owned TCP halves, so its writes stay non-blocking `writev(2)` attempts
//! with no extra layer; TLS goes through rustls' buffered stream, driven by polls with a no-op
//! waker for the attempts and a real one while waiting (both cancel-safe).

use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
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
    Plain(OwnedWriteHalf),
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

/// The halves of a fresh connection.
pub(crate) fn split(transport: super::Transport) -> (ReadSide, WriteSide) {
    match transport {
        super::Transport::Plain { stream, prefix } => {
            let (r, w) = stream.into_split();
            (ReadSide::Plain(Rewind::new(prefix, r)), WriteSide::Plain(w))
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
        (ReadSide::Plain(r), WriteSide::Plain(w)) => r.into_inner().reunite(w).ok(),
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
    /// Writes what the socket takes now without waiting (`WouldBlock` when nothing). Inlined
    /// into the writer (one call per reply).
    #[inline]
    pub(crate) fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            WriteSide::Plain(w) => w.try_write_vectored(bufs),
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
            WriteSide::Plain(w) => w.writable().await,
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
            WriteSide::Plain(w) => w.shutdown().await,
            WriteSide::Tls { half, .. } => half.shutdown().await,
            WriteSide::Gone => Ok(()),
        }
    }
}
