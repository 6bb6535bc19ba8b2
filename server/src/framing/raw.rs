//! Raw framing: every read is a packet, as it came off the socket. For protocols a worker frames
//! itself: it keeps partial input in the connection state and answers `CONTINUE` until it has a
//! whole message.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::FramingError;

/// Hands over whatever was read, at most `max` bytes per packet.
#[derive(Debug, Clone)]
pub struct RawCodec {
    /// `max_packet_size`: a larger read becomes several packets.
    max: usize,
}

impl RawCodec {
    /// A codec handing out packets of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl Decoder for RawCodec {
    type Item = BytesMut;
    type Error = FramingError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let n = buf.len().min(self.max);
        Ok(Some(super::take_front(buf, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{frame, ok, Outcome};
    use super::super::Framing;

    #[test]
    fn table() {
        let cases: Vec<(&str, usize, Vec<&[u8]>, Outcome)> = vec![
            (
                "each read is a packet",
                64,
                vec![b"ab", b"c", b"\0\xff"],
                ok(&[b"ab", b"c", b"\0\xff"]),
            ),
            (
                "a read over max is split",
                3,
                vec![b"abcdefg"],
                ok(&[b"abc", b"def", b"g"]),
            ),
            ("empty stream", 8, vec![], ok(&[])),
        ];
        for (name, max, chunks, want) in cases {
            assert_eq!(frame(&Framing::Raw, max, &chunks), want, "{name}");
        }
    }
}
