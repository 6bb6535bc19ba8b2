//! Length-field framing: `offset` leading bytes, a 1–8 byte length, then `length + adjustment`
//! bytes (Netty's `LengthFieldBasedFrameDecoder` parameters).
//!
//! The cutting is tokio-util's `LengthDelimitedCodec`. It does not fit alone in two ways, so every
//! header is checked here before it sees it:
//! - it bounds the length *value*, not the frame, so `max_packet_size` (the frame on the wire,
//!   header included) is checked here, before anything is reserved for it;
//! - it only refuses a length that becomes negative after adjustment *counted from the stripped
//!   point*: with a length that counts the header (negative adjustment) and nothing stripped, a
//!   length smaller than the header would yield a packet that ends inside the header (an empty
//!   packet that consumes nothing, forever, for length 0). Netty calls that a corrupted frame; so
//!   do we.
//!
//! Its adjustment also means "bytes after the stripped point", where ours (Netty's) means "bytes
//! after the length field"; [`LengthFieldCodec::new`] converts.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use super::{eof_after, frame_size, Endian, FramingError, LengthField, Strip};

/// Splits a stream into length-prefixed frames; each packet is the frame without its first
/// `strip` bytes.
#[derive(Debug, Clone)]
pub struct LengthFieldCodec {
    /// tokio-util's codec, configured to cut exactly the frames the checks here allowed.
    inner: LengthDelimitedCodec,
    /// The layout, for reading each header before `inner` does.
    field: LengthField,
    /// `offset + size`: bytes needed to know the frame's size.
    header: usize,
    /// Largest frame on the wire, header included.
    max: usize,
    /// `inner` has taken a header and waits for the rest of its frame (its header is gone from
    /// the buffer when bytes were stripped, so it must not be read again).
    in_frame: bool,
}

impl LengthFieldCodec {
    /// A codec for `field` (validated by the config: size 1–8, strip within the header) and
    /// frames of at most `max` bytes.
    pub fn new(field: LengthField, max: usize) -> Self {
        let header = field.offset + field.size;
        let strip = match field.strip {
            Strip::Bytes(n) => n,
            Strip::Header => header,
        };
        // tokio-util counts the bytes to read after the stripped point: those of the header left
        // in the packet, then the length adjusted as Netty does.
        let adjustment = field.adjustment as isize + (header - strip) as isize;
        let mut builder = LengthDelimitedCodec::builder();
        builder
            .length_field_offset(field.offset)
            .length_field_length(field.size)
            .length_adjustment(adjustment)
            .num_skip(strip)
            // Bounded here, on the whole frame, before inner reads it.
            .max_frame_length(usize::MAX);
        match field.endian {
            Endian::Big => builder.big_endian(),
            Endian::Little => builder.little_endian(),
        };
        Self {
            inner: builder.new_codec(),
            field,
            header,
            max,
            in_frame: false,
        }
    }

    fn length(&self, buf: &[u8]) -> u64 {
        let bytes = &buf[self.field.offset..self.header];
        let fold = |n: u64, b: &u8| (n << 8) | u64::from(*b);
        match self.field.endian {
            Endian::Big => bytes.iter().fold(0, fold),
            Endian::Little => bytes.iter().rev().fold(0, fold),
        }
    }
}

impl Decoder for LengthFieldCodec {
    type Item = BytesMut;
    type Error = FramingError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        if !self.in_frame {
            if buf.len() < self.header {
                return Ok(None);
            }
            let length = self.length(buf);
            frame_size(
                self.header,
                u128::from(length),
                self.field.adjustment,
                self.max,
            )?;
        }
        // The checks above leave inner nothing to refuse; should it still, the stream is
        // unusable, which is what the error says.
        let packet = self.inner.decode(buf)?;
        self.in_frame = packet.is_none();
        Ok(packet)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        let packet = eof_after(self, buf);
        if !matches!(packet, Ok(Some(_))) {
            self.in_frame = false;
        }
        packet
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_fails, fails, frame, ok, Bad, Good};
    use super::super::Framing;
    use super::*;

    fn lf(offset: usize, size: usize, endian: Endian, adjustment: i64, strip: Strip) -> Framing {
        Framing::LengthField(LengthField {
            offset,
            size,
            endian,
            adjustment,
            strip,
        })
    }

    fn be4() -> Framing {
        lf(0, 4, Endian::Big, 0, Strip::Bytes(0))
    }

    #[test]
    fn table() {
        let byte_at_a_time: Vec<&[u8]> = b"\0\0\0\x02hi\0\0\0\x01!".chunks(1).collect();
        let good: Vec<Good<'_>> = vec![
            (
                "one frame, header kept",
                be4(),
                64,
                vec![b"\0\0\0\x02hi"],
                ok(&[b"\0\0\0\x02hi"]),
            ),
            (
                "many frames in one read",
                be4(),
                64,
                vec![b"\0\0\0\x01a\0\0\0\x00\0\0\0\x02bc"],
                ok(&[b"\0\0\0\x01a", b"\0\0\0\x00", b"\0\0\0\x02bc"]),
            ),
            (
                "header split across reads",
                be4(),
                64,
                vec![b"\0\0", b"\0", b"\x03ab", b"c"],
                ok(&[b"\0\0\0\x03abc"]),
            ),
            (
                "byte at a time",
                be4(),
                64,
                byte_at_a_time,
                ok(&[b"\0\0\0\x02hi", b"\0\0\0\x01!"]),
            ),
            (
                "little endian, 2 bytes, header stripped",
                lf(0, 2, Endian::Little, 0, Strip::Header),
                64,
                vec![b"\x03\0abc\x01\0z"],
                ok(&[b"abc", b"z"]),
            ),
            (
                "3-byte field after a type byte; strip only the type",
                lf(1, 3, Endian::Big, 0, Strip::Bytes(1)),
                64,
                vec![b"T\0\0\x02hiU\0\0\0"],
                ok(&[b"\0\0\x02hi", b"\0\0\0"]),
            ),
            (
                "length counts the whole frame",
                lf(0, 2, Endian::Big, -2, Strip::Bytes(0)),
                64,
                vec![b"\0\x05abc\0\x02"],
                ok(&[b"\0\x05abc", b"\0\x02"]),
            ),
            (
                "a 2-byte trailer the length leaves out",
                lf(0, 1, Endian::Big, 2, Strip::Header),
                64,
                vec![b"\x01x\r\n\x00\r\n"],
                ok(&[b"x\r\n", b"\r\n"]),
            ),
            (
                "8-byte field",
                lf(0, 8, Endian::Big, 0, Strip::Header),
                64,
                vec![b"\0\0\0\0\0\0\0\x01!"],
                ok(&[b"!"]),
            ),
            (
                "exactly max",
                be4(),
                6,
                vec![b"\0\0\0\x02hi"],
                ok(&[b"\0\0\0\x02hi"]),
            ),
            ("empty stream", be4(), 64, vec![], ok(&[])),
        ];
        for (name, framing, max, chunks, want) in good {
            assert_eq!(frame(&framing, max, &chunks), want, "{name}");
        }

        let bad: Vec<Bad<'_>> = vec![
            (
                "over max by one, refused at the header",
                be4(),
                6,
                vec![b"\0\0\0\x01a", b"\0\0\0\x03"],
                fails(&[b"\0\0\0\x01a"], "announces 7 bytes, over max_packet_size 6"),
            ),
            (
                "a 4 GiB announcement",
                be4(),
                1 << 20,
                vec![b"\xff\xff\xff\xff"],
                fails(&[], "announces 4294967299 bytes"),
            ),
            (
                "8-byte u64::MAX",
                lf(0, 8, Endian::Little, 0, Strip::Bytes(0)),
                1 << 20,
                vec![b"\xff\xff\xff\xff\xff\xff\xff\xff"],
                fails(&[], "announces 18446744073709551623 bytes"),
            ),
            (
                "length shorter than the header it counts",
                lf(0, 2, Endian::Big, -2, Strip::Bytes(0)),
                64,
                vec![b"\0\x01"],
                fails(&[], "length 1 with length_adjustment -2 would end the packet inside its 2-byte header"),
            ),
            (
                "length 0 counting the header (would loop on empty packets)",
                lf(0, 4, Endian::Big, -4, Strip::Bytes(0)),
                64,
                vec![b"\0\0\0\0abcd"],
                fails(&[], "length 0 with length_adjustment -4"),
            ),
            (
                "client closes mid-body",
                be4(),
                64,
                vec![b"\0\0\0\x01a\0\0\0\x09abc"],
                fails(&[b"\0\0\0\x01a"], "closed 7 bytes into an unfinished packet"),
            ),
            (
                "client closes mid-header",
                be4(),
                64,
                vec![b"\0\0"],
                fails(&[], "closed 2 bytes into"),
            ),
        ];
        for (name, framing, max, chunks, want) in bad {
            assert_fails(name, &frame(&framing, max, &chunks), &want);
        }
    }
}
