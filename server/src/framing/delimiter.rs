//! Delimiter framing of client bytes: one packet per delimiter, in order, under any chunking.
//!
//! RoadRunner only checks whether a read *ends* with the delimiter; this codec scans everything it
//! has not scanned yet, so pipelined packets, delimiters split across reads and byte-at-a-time
//! clients all frame the same, and a packet is bounded by `max_packet_size`.

use std::sync::Arc;

use bytes::BytesMut;
use memchr::memmem::Finder;
use tokio_util::codec::Decoder;

use super::FramingError;

/// Splits a byte stream on a delimiter (any bytes, several allowed); each packet keeps its
/// delimiter, as RoadRunner sends it.
///
/// At EOF, bytes after the last delimiter are delivered as one last packet (without delimiter), so
/// a client that sends `QUIT` and closes is still heard.
#[derive(Debug, Clone)]
pub struct DelimiterCodec {
    /// Precompiled substring searcher for the delimiter, shared by the clones of a server's
    /// codec: 288 bytes that would otherwise sit in every connection's state, read on every
    /// packet (see [`super::FrameCodec`]'s `Clone`).
    finder: Arc<Finder<'static>>,
    /// Delimiter length, cached.
    delimiter_len: usize,
    /// Largest packet, delimiter included.
    max: usize,
    /// Bytes at the start of the buffer already known to hold no delimiter start, so each byte is
    /// scanned once however the stream is chunked.
    scanned: usize,
    /// After an overflow: everything is dropped (the connection is being closed).
    discarding: bool,
}

impl DelimiterCodec {
    /// A codec for `delimiter` (non-empty) and packets of at most `max` bytes.
    pub fn new(delimiter: &[u8], max: usize) -> Self {
        Self {
            finder: Arc::new(Finder::new(delimiter).into_owned()),
            delimiter_len: delimiter.len(),
            max,
            scanned: 0,
            discarding: false,
        }
    }
}

impl Decoder for DelimiterCodec {
    type Item = BytesMut;
    type Error = FramingError;

    // Inlined into `FrameCodec::decode`'s dispatch (the default mode; one call per packet): with
    // `take_front` it stopped being inlined by itself, an 18-instruction call per packet.
    #[inline]
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        if self.discarding {
            buf.clear();
            return Ok(None);
        }
        // Look only where the limit allows a packet to end: a delimiter found further on would
        // make an oversized packet anyway.
        let window = buf.len().min(self.max);
        let from = self.scanned.min(window);
        if let Some(at) = self.finder.find(&buf[from..window]) {
            self.scanned = 0;
            return Ok(Some(super::take_front(buf, from + at + self.delimiter_len)));
        }
        if buf.len() >= self.max {
            let size = buf.len();
            self.discarding = true;
            buf.clear();
            return Err(FramingError::NoDelimiter {
                size,
                max: self.max,
            });
        }
        // A delimiter may start in the last `len - 1` bytes and end in the next read.
        self.scanned = buf.len().saturating_sub(self.delimiter_len - 1);
        Ok(None)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        if let Some(packet) = self.decode(buf)? {
            return Ok(Some(packet));
        }
        self.scanned = 0;
        if buf.is_empty() {
            Ok(None)
        } else {
            Ok(Some(buf.split()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one after the other, then EOF; returns packets and whether it overflowed.
    fn frame(delimiter: &[u8], max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
        let mut codec = DelimiterCodec::new(delimiter, max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(p)) => out.push(p.to_vec()),
                    Ok(None) => break,
                    Err(FramingError::NoDelimiter { .. }) => return (out, true),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        while let Some(p) = codec.decode_eof(&mut buf).unwrap() {
            out.push(p.to_vec());
        }
        (out, false)
    }

    fn bytes_of(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn table() {
        let byte_at_a_time: Vec<&[u8]> = b"EHLO x\r\nQUIT\r\n".chunks(1).collect();
        let big = "a".repeat(100) + "\r\n";
        let big_chunks: Vec<&[u8]> = big.as_bytes().chunks(7).collect();
        type Case<'a> = (&'a str, &'a [u8], usize, Vec<&'a [u8]>, Vec<&'a str>, bool);
        let cases: Vec<Case<'_>> = vec![
            (
                "one packet",
                b"\r\n",
                64,
                vec![b"HELO\r\n"],
                vec!["HELO\r\n"],
                false,
            ),
            (
                "pipelined in one read",
                b"\r\n",
                64,
                vec![b"A\r\nB\r\nC\r\n"],
                vec!["A\r\n", "B\r\n", "C\r\n"],
                false,
            ),
            (
                "delimiter split across reads",
                b"\r\n",
                64,
                vec![b"A\r", b"\nB", b"\r", b"\n"],
                vec!["A\r\n", "B\r\n"],
                false,
            ),
            (
                "byte at a time",
                b"\r\n",
                64,
                byte_at_a_time,
                vec!["EHLO x\r\n", "QUIT\r\n"],
                false,
            ),
            (
                "multi-byte delimiter, split and pipelined",
                b"--end--",
                64,
                vec![b"one--e", b"nd--two-", b"-end----end--"],
                vec!["one--end--", "two--end--", "--end--"],
                false,
            ),
            (
                "false start of a multi-byte delimiter",
                b"--end--",
                64,
                vec![b"a--en", b"x--end--"],
                vec!["a--enx--end--"],
                false,
            ),
            (
                "packet larger than one read",
                b"\r\n",
                1024,
                big_chunks,
                vec![big.as_str()],
                false,
            ),
            (
                "EOF leftovers are a last packet",
                b"\r\n",
                64,
                vec![b"A\r\nQUIT"],
                vec!["A\r\n", "QUIT"],
                false,
            ),
            ("empty stream", b"\r\n", 64, vec![], vec![], false),
            (
                "overflow without delimiter",
                b"\r\n",
                8,
                vec![b"A\r\n", b"0123", b"45678"],
                vec!["A\r\n"],
                true,
            ),
            (
                "exactly max with delimiter is fine",
                b"\r\n",
                8,
                vec![b"012345\r\n"],
                vec!["012345\r\n"],
                false,
            ),
            (
                "delimiter past max is an overflow",
                b"\r\n",
                8,
                vec![b"0123456\r\n"],
                vec![],
                true,
            ),
            (
                "binary delimiter and body",
                b"\x00\xff",
                64,
                vec![b"\x01\x00\x02\x00", b"\xff\xff\x00\xff"],
                vec!["\u{1}\u{0}\u{2}", "\u{ff}"],
                false,
            ),
        ];
        for (name, delimiter, max, chunks, want, overflow) in cases {
            let (got, overflowed) = frame(delimiter, max, &chunks);
            let want: Vec<Vec<u8>> = if name.starts_with("binary") {
                vec![b"\x01\x00\x02\x00\xff".to_vec(), b"\xff\x00\xff".to_vec()]
            } else {
                want.iter().map(|s| bytes_of(s)).collect()
            };
            assert_eq!(got, want, "{name}");
            assert_eq!(overflowed, overflow, "{name}");
        }
    }

    #[test]
    fn after_overflow_everything_is_discarded() {
        let mut codec = DelimiterCodec::new(b"\n", 4);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FramingError::NoDelimiter { size: 6, max: 4 })
        ));
        buf.extend_from_slice(b"x\n");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }
}
