//! Fixed-size framing: every packet is exactly N bytes (sensor records, game ticks, fixed-layout
//! binary messages).

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::{eof_after, FramingError};

/// Cuts the stream every `size` bytes.
#[derive(Debug, Clone)]
pub struct FixedCodec {
    /// Bytes per packet (at least 1, at most `max_packet_size`: checked by the config).
    size: usize,
}

impl FixedCodec {
    /// A codec for packets of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self { size }
    }
}

impl Decoder for FixedCodec {
    type Item = BytesMut;
    type Error = FramingError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        if buf.len() < self.size {
            buf.reserve(self.size - buf.len());
            return Ok(None);
        }
        Ok(Some(super::take_front(buf, self.size)))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        eof_after(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_fails, fails, frame, ok, Outcome};
    use super::super::Framing;

    #[test]
    fn table() {
        let byte_at_a_time: Vec<&[u8]> = b"abcdef".chunks(1).collect();
        let good: Vec<(&str, usize, Vec<&[u8]>, Outcome)> = vec![
            ("one packet", 3, vec![b"abc"], ok(&[b"abc"])),
            (
                "many per read",
                2,
                vec![b"abcdef"],
                ok(&[b"ab", b"cd", b"ef"]),
            ),
            (
                "split across reads",
                4,
                vec![b"a", b"bc", b"defgh"],
                ok(&[b"abcd", b"efgh"]),
            ),
            ("byte at a time", 3, byte_at_a_time, ok(&[b"abc", b"def"])),
            ("size 1", 1, vec![b"\0\xff"], ok(&[b"\0", b"\xff"])),
            ("empty stream", 3, vec![], ok(&[])),
        ];
        for (name, size, chunks, want) in good {
            assert_eq!(frame(&Framing::Fixed(size), 64, &chunks), want, "{name}");
        }
        assert_fails(
            "client closes mid-packet",
            &frame(&Framing::Fixed(4), 64, &[b"abcdef"]),
            &fails(&[b"abcd"], "closed 2 bytes into an unfinished packet"),
        );
    }
}
