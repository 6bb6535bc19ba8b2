//! Framing: how a server cuts its clients' byte stream into the packets workers get as `DATA`.
//!
//! One codec per mode, each an I/O-free tokio-util [`Decoder`] (tested by feeding byte slices),
//! all bounded by `max_packet_size` before anything is buffered for the length a client announces:
//! - [`delimiter`]: split on a delimiter (RoadRunner's framing, the default);
//! - [`length_field`]: a binary length field at a fixed offset (tokio-util's `LengthDelimitedCodec`
//!   behind a check of every length it reads);
//! - [`varint`]: a LEB128 length after fixed leading bytes (MQTT, protobuf delimited messages);
//! - [`fixed`]: every packet is N bytes;
//! - [`raw`]: every read is a packet (the worker frames the stream itself).
//!
//! [`FrameCodec`] picks the codec a server's [`Framing`] asks for; the connection only sees it,
//! through [`Packets`], which reads a connection's packets without holding a buffer while it idles.

pub mod delimiter;
pub mod fixed;
pub mod length_field;
pub mod packets;
pub mod raw;
pub mod varint;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

pub use delimiter::DelimiterCodec;
pub use fixed::FixedCodec;
pub use length_field::LengthFieldCodec;
pub use packets::{Packets, ReadReady};
pub use raw::RawCodec;
pub use varint::VarintCodec;

/// Why framing stopped. Every variant but `Io` is the client's doing; each closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// Delimiter mode: more than `max_packet_size` bytes arrived without a delimiter.
    #[error(
        "could not frame packet: {size} bytes without a delimiter exceed max_packet_size {max}"
    )]
    NoDelimiter {
        /// Bytes buffered when the limit was crossed.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A length field or varint announced a packet larger than `max_packet_size` (nothing of it
    /// was buffered).
    #[error(
        "could not frame packet: its header announces {size} bytes, over max_packet_size {max}"
    )]
    TooLarge {
        /// The packet size the header announced, header included.
        size: u128,
        /// The limit.
        max: usize,
    },
    /// A length that cannot be right: with the configured adjustment it ends inside the header.
    #[error("could not frame packet: length {length} with length_adjustment {adjustment} would end the packet inside its {header}-byte header")]
    NegativeLength {
        /// The length as the client sent it.
        length: u128,
        /// `length_adjustment` from the config.
        adjustment: i64,
        /// Header bytes (leading bytes and the length itself).
        header: usize,
    },
    /// A varint still had its continuation bit set at its last allowed byte.
    #[error("could not frame packet: the varint length is longer than {max_bytes} bytes")]
    VarintTooLong {
        /// `length_size`: the most bytes the varint may take.
        max_bytes: usize,
    },
    /// The client closed with part of a packet sent (binary modes; delimiter mode delivers such
    /// bytes as a last packet instead).
    #[error(
        "could not frame packet: the client closed {buffered} bytes into an unfinished packet"
    )]
    Truncated {
        /// Bytes of the unfinished packet that were received.
        buffered: usize,
    },
    /// Reading the socket failed.
    #[error("could not read from client")]
    Io(#[from] std::io::Error),
}

/// Byte order of a length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// Most significant byte first (network order).
    Big,
    /// Least significant byte first.
    Little,
}

/// How many leading bytes of each frame are removed before the packet goes to PHP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strip {
    /// A fixed count (never more than the shortest header).
    Bytes(usize),
    /// The whole header: leading bytes and the length (for a varint, however long it was).
    Header,
}

/// A length-field framing (`framing.mode: length_field`), as Netty's `LengthFieldBasedFrameDecoder`
/// counts: the frame is `offset + size + length + adjustment` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthField {
    /// Bytes before the length field.
    pub offset: usize,
    /// Bytes of the length field: 1, 2, 3, 4 or 8.
    pub size: usize,
    /// Byte order of the length field.
    pub endian: Endian,
    /// Added to the length to get the bytes that follow the length field: `-(offset + size)` when
    /// the length counts the whole header, positive for a trailer the length leaves out.
    pub adjustment: i64,
    /// Leading bytes removed before the packet goes to PHP.
    pub strip: Strip,
}

/// A varint framing (`framing.mode: varint`): `offset` bytes, a LEB128 length, then
/// `length + adjustment` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Varint {
    /// Bytes before the varint (MQTT: 1, its fixed header byte).
    pub offset: usize,
    /// The most bytes the varint may take (MQTT: 4; protobuf: 10); a longer one is an error.
    pub max_bytes: usize,
    /// Added to the length to get the bytes that follow the varint.
    pub adjustment: i64,
    /// Leading bytes removed before the packet goes to PHP.
    pub strip: Strip,
}

/// A server's framing mode, validated by the config (`tcp.servers.<name>.framing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Split on this delimiter (non-empty); RoadRunner's only mode and the default.
    Delimiter(Vec<u8>),
    /// A length field at a fixed offset.
    LengthField(LengthField),
    /// A LEB128 length after fixed leading bytes.
    Varint(Varint),
    /// Every packet has this many bytes (at least 1).
    Fixed(usize),
    /// Every read is a packet.
    Raw,
}

impl Framing {
    /// The mode's name as the config writes it.
    pub fn mode(&self) -> &'static str {
        match self {
            Framing::Delimiter(_) => "delimiter",
            Framing::LengthField(_) => "length_field",
            Framing::Varint(_) => "varint",
            Framing::Fixed(_) => "fixed",
            Framing::Raw => "raw",
        }
    }
}

/// The codec of one connection: the one its server's [`Framing`] names.
///
/// `Clone` gives a fresh codec for another connection (build one per server and clone it per
/// connection: the clones share what does not change, such as the delimiter's searcher, so
/// each connection's state stays small; at 1000 connections it does not all fit in the core's
/// L2). Clone only a codec that has not decoded anything yet.
#[derive(Debug, Clone)]
pub enum FrameCodec {
    /// `delimiter` mode.
    Delimiter(DelimiterCodec),
    /// `length_field` mode.
    LengthField(LengthFieldCodec),
    /// `varint` mode.
    Varint(VarintCodec),
    /// `fixed` mode.
    Fixed(FixedCodec),
    /// `raw` mode.
    Raw(RawCodec),
}

impl FrameCodec {
    /// A codec for `framing`, packets bounded by `max` bytes as they arrive (header included).
    pub fn new(framing: &Framing, max: usize) -> Self {
        match framing {
            Framing::Delimiter(d) => FrameCodec::Delimiter(DelimiterCodec::new(d, max)),
            Framing::LengthField(f) => FrameCodec::LengthField(LengthFieldCodec::new(*f, max)),
            Framing::Varint(v) => FrameCodec::Varint(VarintCodec::new(*v, max)),
            Framing::Fixed(n) => FrameCodec::Fixed(FixedCodec::new(*n)),
            Framing::Raw => FrameCodec::Raw(RawCodec::new(max)),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FramingError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        match self {
            FrameCodec::Delimiter(c) => c.decode(buf),
            FrameCodec::LengthField(c) => c.decode(buf),
            FrameCodec::Varint(c) => c.decode(buf),
            FrameCodec::Fixed(c) => c.decode(buf),
            FrameCodec::Raw(c) => c.decode(buf),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        match self {
            FrameCodec::Delimiter(c) => c.decode_eof(buf),
            FrameCodec::LengthField(c) => c.decode_eof(buf),
            FrameCodec::Varint(c) => c.decode_eof(buf),
            FrameCodec::Fixed(c) => c.decode_eof(buf),
            FrameCodec::Raw(c) => c.decode_eof(buf),
        }
    }
}

/// The first `n` bytes of `buf`, as a packet: the whole buffer without a split when that is all of
/// it (a packet per read, the usual case), since `split_to` shares the allocation — a reference
/// count taken, and the empty view left behind dropped after — ~55 instructions per message at
/// 100 × 1 (bench/results/2026-12-01-tokio2.md).
#[inline]
fn take_front(buf: &mut BytesMut, n: usize) -> BytesMut {
    if n == buf.len() {
        std::mem::take(buf)
    } else {
        buf.split_to(n)
    }
}

/// The end of stream for the binary modes: a finished packet is delivered, an unfinished one is an
/// error (a half packet means nothing to a worker), nothing left is the end.
fn eof_after<D>(codec: &mut D, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError>
where
    D: Decoder<Item = BytesMut, Error = FramingError>,
{
    if let Some(packet) = codec.decode(buf)? {
        return Ok(Some(packet));
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let buffered = buf.len();
    buf.clear();
    Err(FramingError::Truncated { buffered })
}

/// The length a frame announces, checked against the header and the bound: `Ok(total)` is the
/// frame's size on the wire, header included.
fn frame_size(
    header: usize,
    length: u128,
    adjustment: i64,
    max: usize,
) -> Result<usize, FramingError> {
    // i128 holds any u64/LEB128-70-bit length plus any adjustment without overflow.
    let total = header as i128 + length as i128 + i128::from(adjustment);
    if total < header as i128 {
        return Err(FramingError::NegativeLength {
            length,
            adjustment,
            header,
        });
    }
    if total > max as i128 {
        return Err(FramingError::TooLarge {
            size: total as u128,
            max,
        });
    }
    Ok(total as usize)
}

/// Test support shared by the codecs' table tests and the property test.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// What feeding a stream produced: packets, then how it ended.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Outcome {
        /// Packets in order.
        pub(crate) packets: Vec<Vec<u8>>,
        /// The error that stopped framing, as its message; `None` = clean EOF.
        pub(crate) error: Option<String>,
    }

    /// Feeds `chunks` one after the other as FramedRead does (decode until `None` after each
    /// read), then EOF.
    pub(crate) fn feed(
        codec: &mut impl Decoder<Item = BytesMut, Error = FramingError>,
        chunks: &[&[u8]],
    ) -> Outcome {
        let mut buf = BytesMut::new();
        let mut packets = Vec::new();
        let stop = |packets: Vec<Vec<u8>>, e: FramingError| Outcome {
            packets,
            error: Some(e.to_string()),
        };
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(p)) => packets.push(p.to_vec()),
                    Ok(None) => break,
                    Err(e) => return stop(packets, e),
                }
            }
        }
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(p)) => packets.push(p.to_vec()),
                Ok(None) => break,
                Err(e) => return stop(packets, e),
            }
        }
        Outcome {
            packets,
            error: None,
        }
    }

    /// Frames `chunks` with a fresh codec for `framing`.
    pub(crate) fn frame(framing: &Framing, max: usize, chunks: &[&[u8]]) -> Outcome {
        feed(&mut FrameCodec::new(framing, max), chunks)
    }

    /// Packets and the text the error must contain, for failing table rows.
    pub(crate) type Failure = (Vec<Vec<u8>>, String);

    /// A table row that frames cleanly: name, framing, max, chunks, outcome.
    pub(crate) type Good<'a> = (&'a str, Framing, usize, Vec<&'a [u8]>, Outcome);

    /// A table row that fails: name, framing, max, chunks, packets before the error and its text.
    pub(crate) type Bad<'a> = (&'a str, Framing, usize, Vec<&'a [u8]>, Failure);

    /// Clean packets, for table rows.
    pub(crate) fn ok(packets: &[&[u8]]) -> Outcome {
        Outcome {
            packets: packets.iter().map(|p| p.to_vec()).collect(),
            error: None,
        }
    }

    /// Packets then an error whose message contains `what`, for table rows.
    pub(crate) fn fails(packets: &[&[u8]], what: &str) -> Failure {
        (
            packets.iter().map(|p| p.to_vec()).collect(),
            what.to_owned(),
        )
    }

    /// Asserts an outcome against a failing row.
    pub(crate) fn assert_fails(name: &str, got: &Outcome, want: &Failure) {
        assert_eq!(got.packets, want.0, "{name}: packets");
        let error = got.error.as_deref().unwrap_or("(clean EOF)");
        assert!(
            error.contains(&want.1),
            "{name}: {error:?} does not say {:?}",
            want.1
        );
    }
}

#[cfg(test)]
mod tests {
    //! The property every mode owes: however TCP chunks a stream (one byte at a time, headers split,
    //! many frames per read), the packets are the same.

    use proptest::prelude::*;

    use super::testing::frame;
    use super::*;

    /// A framing with a stream of frames for it and the packets those frames must give.
    #[derive(Debug, Clone)]
    struct Case {
        framing: Framing,
        max: usize,
        stream: Vec<u8>,
        packets: Vec<Vec<u8>>,
    }

    fn be_or_le(endian: Endian, value: u64, size: usize) -> Vec<u8> {
        let be = value.to_be_bytes();
        let mut field = be[8 - size..].to_vec();
        if endian == Endian::Little {
            field.reverse();
        }
        field
    }

    fn leb128(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn bodies() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8)
    }

    fn length_field_case() -> impl Strategy<Value = Case> {
        (
            0usize..4,
            prop::sample::select(vec![1usize, 2, 3, 4, 8]),
            any::<bool>(),
            0usize..3,
            any::<bool>(),
            any::<bool>(),
            bodies(),
        )
            .prop_map(
                |(offset, size, big, trailer, counts_header, strip_header, bodies)| {
                    let endian = if big { Endian::Big } else { Endian::Little };
                    let header = offset + size;
                    // The length counts either the body alone or the whole frame; a trailer it leaves
                    // out is a positive adjustment.
                    let adjustment =
                        if counts_header { -(header as i64) } else { 0 } + trailer as i64;
                    let strip = if strip_header { header } else { offset };
                    let mut stream = Vec::new();
                    let mut packets = Vec::new();
                    for (i, body) in bodies.iter().enumerate() {
                        // A 1-byte length field holds at most 255.
                        let body = &body[..body.len().min(200)];
                        let length = if counts_header {
                            header + body.len()
                        } else {
                            body.len()
                        };
                        let mut frame = vec![i as u8; offset];
                        frame.extend(be_or_le(endian, length as u64, size));
                        frame.extend_from_slice(body);
                        frame.extend(vec![0xee; trailer]);
                        packets.push(frame[strip..].to_vec());
                        stream.extend(frame);
                    }
                    Case {
                        framing: Framing::LengthField(LengthField {
                            offset,
                            size,
                            endian,
                            adjustment,
                            strip: Strip::Bytes(strip),
                        }),
                        max: 1024,
                        stream,
                        packets,
                    }
                },
            )
    }

    fn varint_case() -> impl Strategy<Value = Case> {
        (
            0usize..3,
            any::<bool>(),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 0..8),
        )
            .prop_map(|(offset, strip_header, bodies)| {
                let mut stream = Vec::new();
                let mut packets = Vec::new();
                for body in &bodies {
                    let mut frame = vec![0x30; offset];
                    frame.extend(leb128(body.len() as u64));
                    let header = frame.len();
                    frame.extend_from_slice(body);
                    packets.push(frame[if strip_header { header } else { 0 }..].to_vec());
                    stream.extend(frame);
                }
                Case {
                    framing: Framing::Varint(Varint {
                        offset,
                        max_bytes: 4,
                        adjustment: 0,
                        strip: if strip_header {
                            Strip::Header
                        } else {
                            Strip::Bytes(0)
                        },
                    }),
                    max: 1024,
                    stream,
                    packets,
                }
            })
    }

    fn fixed_case() -> impl Strategy<Value = Case> {
        (1usize..40, 0usize..10, any::<u8>()).prop_map(|(size, count, fill)| {
            let packets: Vec<Vec<u8>> = (0..count)
                .map(|i| vec![fill.wrapping_add(i as u8); size])
                .collect();
            Case {
                framing: Framing::Fixed(size),
                max: 1024,
                stream: packets.concat(),
                packets,
            }
        })
    }

    fn delimiter_case() -> impl Strategy<Value = Case> {
        prop::collection::vec("[a-z]{0,30}", 0..8).prop_map(|lines| {
            let packets: Vec<Vec<u8>> = lines
                .iter()
                .map(|l| format!("{l}\r\n").into_bytes())
                .collect();
            Case {
                framing: Framing::Delimiter(b"\r\n".to_vec()),
                max: 1024,
                stream: packets.concat(),
                packets,
            }
        })
    }

    /// Cut points for a stream of `len` bytes: every cut yields one chunk.
    fn chunking(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for to in at.into_iter().chain([stream.len()]) {
            chunks.push(stream[from..to].to_vec());
            from = to;
        }
        chunks
    }

    fn check(case: &Case, chunks: &[Vec<u8>]) -> Result<(), TestCaseError> {
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let got = frame(&case.framing, case.max, &chunks);
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(&got.packets, &case.packets);
        Ok(())
    }

    fn any_case() -> impl Strategy<Value = Case> {
        prop_oneof![
            length_field_case(),
            varint_case(),
            fixed_case(),
            delimiter_case()
        ]
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_packets(
            case in any_case(),
            cuts in prop::collection::vec(any::<usize>(), 0..40),
        ) {
            // Whole stream in one read (many frames per read), random cuts (split headers), and one
            // byte at a time.
            check(&case, std::slice::from_ref(&case.stream))?;
            check(&case, &chunking(&case.stream, &cuts))?;
            let bytes: Vec<Vec<u8>> = case.stream.iter().map(|b| vec![*b]).collect();
            check(&case, &bytes)?;
        }

        #[test]
        fn raw_packets_concatenate_to_the_stream_each_within_max(
            stream in prop::collection::vec(any::<u8>(), 0..2000),
            cuts in prop::collection::vec(any::<usize>(), 0..40),
            max in 1usize..600,
        ) {
            let chunks = chunking(&stream, &cuts);
            let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let got = frame(&Framing::Raw, max, &chunks);
            prop_assert_eq!(got.error, None);
            prop_assert!(got.packets.iter().all(|p| !p.is_empty() && p.len() <= max));
            prop_assert_eq!(got.packets.concat(), stream);
        }
    }
}
