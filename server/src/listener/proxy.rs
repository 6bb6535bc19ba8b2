//! The PROXY protocol (v1 text and v2 binary headers, parsed by `ppp`): a trusted balancer's
//! header gives the client's real address; anything else closes the connection before any event.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::config::ProxyProtocolConfig;
use crate::ops::ProxyRefusal;

/// Largest v2 header: 16 fixed bytes and a 16-bit length (v1 headers are at most 107 bytes).
const MAX_HEADER: usize = 16 + u16::MAX as usize;

/// Why a connection was refused before any event (logged with the peer address).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The peer is not in `proxy_protocol.trusted`.
    #[error("could not accept: the peer is not a trusted PROXY source")]
    Untrusted,
    /// The header did not arrive in time (or the peer closed first).
    #[error("could not read a PROXY header within {0:?}")]
    Missing(Duration),
    /// The peer closed before a complete header.
    #[error("could not read a PROXY header: the peer closed after {0} bytes")]
    Closed(usize),
    /// The bytes are not a PROXY header.
    #[error("could not parse the PROXY header: {0}")]
    Malformed(String),
    /// Reading failed.
    #[error("could not read the PROXY header")]
    Io(#[source] std::io::Error),
}

impl ProxyError {
    /// The `reason` label this refusal is counted under.
    pub fn refusal(&self) -> ProxyRefusal {
        match self {
            ProxyError::Untrusted => ProxyRefusal::Untrusted,
            ProxyError::Missing(_) => ProxyRefusal::Timeout,
            ProxyError::Closed(_) | ProxyError::Io(_) => ProxyRefusal::Missing,
            ProxyError::Malformed(_) => ProxyRefusal::Malformed,
        }
    }
}

/// Whether `peer` may connect to a server with `config`.
pub(crate) fn trusted(config: &ProxyProtocolConfig, peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    config.trusted.iter().any(|net| net.contains(&peer))
}

/// Reads the header from `io` within `timeout`. Returns the client's address (the socket's
/// `peer` for v2 LOCAL, v1 UNKNOWN and non-IP families) and the bytes that followed the header.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<(SocketAddr, BytesMut), ProxyError> {
    let mut buf = BytesMut::with_capacity(256);
    let read = async {
        loop {
            if let Some((addr, used)) = parse(&buf, peer)? {
                buf.advance(used);
                return Ok(addr);
            }
            if buf.len() >= MAX_HEADER {
                return Err(ProxyError::Malformed("header too long".into()));
            }
            // Read only what the header can still need, so the buffer stays bounded.
            let room = (MAX_HEADER - buf.len()).min(4096);
            buf.reserve(room);
            let n = (&mut *io)
                .take(room as u64)
                .read_buf(&mut buf)
                .await
                .map_err(ProxyError::Io)?;
            if n == 0 {
                return Err(ProxyError::Closed(buf.len()));
            }
        }
    };
    let addr = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxyError::Missing(timeout))??;
    Ok((addr, buf))
}

/// `Some((client address, header length))` for a complete header, `None` when more bytes are needed.
fn parse(buf: &[u8], peer: SocketAddr) -> Result<Option<(SocketAddr, usize)>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let header = HeaderResult::parse(buf);
    if header.is_incomplete() {
        return Ok(None);
    }
    match header {
        HeaderResult::V1(Ok(h)) => {
            let addr = match h.addresses {
                v1::Addresses::Tcp4(a) => SocketAddr::from((a.source_address, a.source_port)),
                v1::Addresses::Tcp6(a) => SocketAddr::from((a.source_address, a.source_port)),
                v1::Addresses::Unknown => peer,
            };
            Ok(Some((addr, h.header.len())))
        }
        HeaderResult::V2(Ok(h)) => {
            let addr = match (h.command, h.addresses) {
                (v2::Command::Local, _) => peer,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    SocketAddr::from((a.source_address, a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    SocketAddr::from((a.source_address, a.source_port))
                }
                (v2::Command::Proxy, _) => peer,
            };
            Ok(Some((addr, h.header.len())))
        }
        HeaderResult::V1(Err(e)) => Err(ProxyError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyError::Malformed(e.to_string())),
    }
}

/// A stream that first yields the bytes read past the PROXY header, then the socket's.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    /// Bytes already read from `inner` that belong to the stream after the header.
    prefix: BytesMut,
    /// The socket.
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(prefix: BytesMut, inner: S) -> Self {
        Rewind { prefix, inner }
    }

    /// The stream, dropping what was not replayed yet.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl crate::framing::ReadReady for Rewind<tokio::net::tcp::OwnedReadHalf> {
    #[inline]
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            return Poll::Ready(Ok(()));
        }
        // The socket's own readiness, which its reads share (one registration).
        self.inner.as_ref().poll_read_ready(cx)
    }

    #[inline]
    fn try_read_direct(&mut self, buf: &mut impl bytes::BufMut) -> Option<std::io::Result<usize>> {
        if !self.prefix.is_empty() {
            return None;
        }
        Some(super::stream::try_read_plain(&self.inner, buf))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.1:4000".parse().unwrap()
    }

    /// One row: input bytes, what `parse` makes of them.
    struct Case {
        name: &'static str,
        input: Vec<u8>,
        want: Result<Option<(&'static str, usize)>, ()>,
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn headers_table() {
        let v4 = [192, 0, 2, 7, 10, 0, 0, 2, 0x30, 0x39, 0x00, 0x19];
        let cases = [
            Case {
                name: "v1 tcp4",
                input: b"PROXY TCP4 192.0.2.7 10.0.0.2 12345 25\r\nEHLO".to_vec(),
                want: Ok(Some(("192.0.2.7:12345", 40))),
            },
            Case {
                name: "v1 tcp6",
                input: b"PROXY TCP6 2001:db8::7 2001:db8::1 5 25\r\n".to_vec(),
                want: Ok(Some(("[2001:db8::7]:5", 41))),
            },
            Case {
                name: "v1 unknown keeps the socket's address",
                input: b"PROXY UNKNOWN\r\n".to_vec(),
                want: Ok(Some(("10.0.0.1:4000", 15))),
            },
            Case {
                name: "v1 partial",
                input: b"PROXY TCP4 192.0".to_vec(),
                want: Ok(None),
            },
            Case {
                name: "v2 proxy tcp4",
                input: v2(1, 0x11, &v4),
                want: Ok(Some(("192.0.2.7:12345", 28))),
            },
            Case {
                name: "v2 local keeps the socket's address",
                input: v2(0, 0x00, &[]),
                want: Ok(Some(("10.0.0.1:4000", 16))),
            },
            Case {
                name: "v2 partial",
                input: v2(1, 0x11, &v4)[..20].to_vec(),
                want: Ok(None),
            },
            Case {
                name: "plain SMTP is not a header",
                input: b"EHLO client.example\r\n".to_vec(),
                want: Err(()),
            },
            Case {
                name: "TLS ClientHello is not a header",
                input: vec![0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00],
                want: Err(()),
            },
        ];
        for case in cases {
            let got = parse(&case.input, peer());
            match (&got, &case.want) {
                (Ok(Some((addr, used))), Ok(Some((want_addr, want_used)))) => {
                    assert_eq!(addr.to_string(), *want_addr, "{}", case.name);
                    assert_eq!(used, want_used, "{}", case.name);
                }
                (Ok(None), Ok(None)) | (Err(_), Err(())) => {}
                _ => panic!("{}: got {got:?}", case.name),
            }
        }
    }

    #[tokio::test]
    async fn bytes_after_the_header_are_replayed() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.7 10.0.0.2 12345 25\r\nEHLO x\r\n";
        let (addr, rest) = read_header(&mut input, peer(), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(addr.to_string(), "192.0.2.7:12345");
        let mut stream = Rewind::new(rest, input);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"EHLO x\r\n");
    }

    #[test]
    fn trusted_networks_include_mapped_v4() {
        let config = ProxyProtocolConfig {
            trusted: vec!["127.0.0.0/8".parse().unwrap()],
            timeout: Duration::from_secs(1),
        };
        assert!(trusted(&config, "127.0.0.1".parse().unwrap()));
        assert!(trusted(&config, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!trusted(&config, "10.0.0.1".parse().unwrap()));
    }
}
