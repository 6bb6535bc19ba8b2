//! Varint framing: `offset` leading bytes, a LEB128 length (7 bits per byte, least significant
//! group first, high bit = more bytes follow), then `length + adjustment` bytes. MQTT's fixed header
//! (one type byte, then the remaining length in at most 4 bytes) and protobuf's delimited messages
//! (offset 0, up to 10 bytes) are both this. tokio-util has no varint codec, hence this one.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::{eof_after, frame_size, FramingError, Strip, Varint};

/// Splits a stream into varint-prefixed frames.
#[derive(Debug, Clone)]
pub struct VarintCodec {
    /// The layout.
    varint: Varint,
    /// Largest frame on the wire, header included.
    max: usize,
    /// The frame being received: (its size, its header's size), once its header was read, so a
    /// header is decoded once however slowly the body arrives.
    pending: Option<(usize, usize)>,
}

impl VarintCodec {
    /// A codec for `varint` (validated by the config: `max_bytes` 1–10, strip within the offset)
    /// and frames of at most `max` bytes.
    pub fn new(varint: Varint, max: usize) -> Self {
        Self {
            varint,
            max,
            pending: None,
        }
    }

    /// Reads the header at the start of `buf`: `Ok(None)` until all of it is there.
    fn header(&self, buf: &[u8]) -> Result<Option<(usize, usize)>, FramingError> {
        let offset = self.varint.offset;
        // u128 holds 10 groups of 7 bits without losing any.
        let mut length: u128 = 0;
        for i in 0..self.varint.max_bytes {
            let Some(&byte) = buf.get(offset + i) else {
                return Ok(None);
            };
            length |= u128::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                let header = offset + i + 1;
                let size = frame_size(header, length, self.varint.adjustment, self.max)?;
                return Ok(Some((size, header)));
            }
        }
        Err(FramingError::VarintTooLong {
            max_bytes: self.varint.max_bytes,
        })
    }
}

impl Decoder for VarintCodec {
    type Item = BytesMut;
    type Error = FramingError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        let (size, header) = match self.pending {
            Some(pending) => pending,
            None => {
                let Some(pending) = self.header(buf)? else {
                    return Ok(None);
                };
                // Bounded by max_packet_size in header(): room for this frame only.
                buf.reserve(pending.0.saturating_sub(buf.len()));
                self.pending = Some(pending);
                pending
            }
        };
        if buf.len() < size {
            return Ok(None);
        }
        self.pending = None;
        let mut packet = super::take_front(buf, size);
        packet.advance(match self.varint.strip {
            Strip::Bytes(n) => n,
            Strip::Header => header,
        });
        Ok(Some(packet))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        let packet = eof_after(self, buf);
        if !matches!(packet, Ok(Some(_))) {
            self.pending = None;
        }
        packet
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_fails, fails, frame, ok, Bad, Good};
    use super::super::Framing;
    use super::*;

    fn mqtt() -> Framing {
        Framing::Varint(Varint {
            offset: 1,
            max_bytes: 4,
            adjustment: 0,
            strip: Strip::Bytes(0),
        })
    }

    fn protobuf() -> Framing {
        Framing::Varint(Varint {
            offset: 0,
            max_bytes: 10,
            adjustment: 0,
            strip: Strip::Header,
        })
    }

    #[test]
    fn table() {
        let body_200 = [0x61u8; 200];
        let mut frame_200 = vec![0x30, 0xc8, 0x01];
        frame_200.extend_from_slice(&body_200);
        let pingreq_byte_at_a_time: Vec<&[u8]> = b"\xc0\x00\xe0\x00".chunks(1).collect();
        let good: Vec<Good<'_>> = vec![
            (
                "MQTT PINGREQ and DISCONNECT in one read",
                mqtt(),
                64,
                vec![b"\xc0\x00\xe0\x00"],
                ok(&[b"\xc0\x00", b"\xe0\x00"]),
            ),
            (
                "byte at a time",
                mqtt(),
                64,
                pingreq_byte_at_a_time,
                ok(&[b"\xc0\x00", b"\xe0\x00"]),
            ),
            (
                "two-byte varint (200) split between its bytes",
                mqtt(),
                1024,
                vec![&frame_200[..2], &frame_200[2..100], &frame_200[100..]],
                ok(&[&frame_200]),
            ),
            (
                "protobuf: varint stripped",
                protobuf(),
                64,
                vec![b"\x03abc\x00\x01z"],
                ok(&[b"abc", b"", b"z"]),
            ),
            (
                "strip the leading byte only",
                Framing::Varint(Varint {
                    offset: 2,
                    max_bytes: 2,
                    adjustment: 1,
                    strip: Strip::Bytes(1),
                }),
                64,
                vec![b"ab\x01xy"],
                ok(&[b"b\x01xy"]),
            ),
            (
                "non-minimal encoding is accepted (0 in two bytes)",
                mqtt(),
                64,
                vec![b"\xd0\x80\x00"],
                ok(&[b"\xd0\x80\x00"]),
            ),
            (
                "exactly max",
                mqtt(),
                4,
                vec![b"\x30\x02ab"],
                ok(&[b"\x30\x02ab"]),
            ),
        ];
        for (name, framing, max, chunks, want) in good {
            assert_eq!(frame(&framing, max, &chunks), want, "{name}");
        }

        let bad: Vec<Bad<'_>> = vec![
            (
                "a fifth varint byte (MQTT allows 4)",
                mqtt(),
                1 << 30,
                vec![b"\x30\xff\xff\xff\xff\x01"],
                fails(&[], "varint length is longer than 4 bytes"),
            ),
            (
                "MQTT's largest length over a 1 MiB max, refused at the header",
                mqtt(),
                1 << 20,
                vec![b"\x30\xff\xff\xff\x7f"],
                fails(
                    &[],
                    "announces 268435460 bytes, over max_packet_size 1048576",
                ),
            ),
            (
                "over max by one",
                mqtt(),
                4,
                vec![b"\x30\x03abc"],
                fails(&[], "announces 5 bytes"),
            ),
            (
                "ten bytes of 0x7f groups: no overflow, just too large",
                protobuf(),
                1 << 20,
                vec![b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f"],
                fails(&[], "over max_packet_size"),
            ),
            (
                "negative adjustment past the header",
                Framing::Varint(Varint {
                    offset: 0,
                    max_bytes: 4,
                    adjustment: -3,
                    strip: Strip::Bytes(0),
                }),
                64,
                vec![b"\x02ab"],
                fails(&[], "length 2 with length_adjustment -3"),
            ),
            (
                "client closes mid-body",
                mqtt(),
                64,
                vec![b"\xc0\x00\x30\x05ab"],
                fails(&[b"\xc0\x00"], "closed 4 bytes into an unfinished packet"),
            ),
        ];
        for (name, framing, max, chunks, want) in bad {
            assert_fails(name, &frame(&framing, max, &chunks), &want);
        }
    }
}
