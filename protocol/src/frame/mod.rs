//! goridge v3 frames: see "Frame" in `PROTOCOL.md`.
//!
//! What both directions share is here (the header's constants, flags, options, [`Frame`]); the
//! two directions are a module each, because their errors are two different faults:
//! [`decode`](mod@decode) reads a peer's bytes ([`FrameError`]: the peer's fault — corrupt or
//! hostile input), [`encode`](mod@encode) writes the caller's values ([`EncodeError`]: the
//! caller's mistake, never the peer's). Both are re-exported here.

use std::fmt;

pub mod decode;
pub mod encode;

pub use decode::{
    decode, decode_accepted, decode_memo, decode_view, whole_len, FrameError, FrameView, HeaderMemo,
};
pub(crate) use encode::{begin_header, finish_header, short_header};
pub use encode::{encode, EncodeError};

/// Length of the fixed part of a frame header, before the options.
pub const HEADER_LEN: usize = 12;
/// The only protocol version this codec speaks (high nibble of byte 0).
pub const VERSION: u8 = 1;
/// At most this many u32 options follow the fixed header (header length nibble ≤ 13 words).
pub const MAX_OPTIONS: usize = 10;
/// Smallest header length in 32-bit words (no options).
const MIN_HEADER_WORDS: u8 = 3;
/// Largest header length in 32-bit words (ten options).
const MAX_HEADER_WORDS: u8 = MIN_HEADER_WORDS + MAX_OPTIONS as u8;

/// CRC-32 (IEEE, reflected, initial and final value all ones): the header's checksum covers its
/// first 6 bytes. The crc crate builds the table at compile time; `header_crc` runs it.
const HEADER_CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
/// The crate's one 256-entry table, a static so that every call site reads the same 1 KiB.
static HEADER_CRC_TABLE: [u32; 256] = HEADER_CRC.table()[0];

/// The checksum of a header's first 6 bytes (`header`: at least those).
///
/// Six table steps on a fixed-size array, always inlined, rather than the crate's `checksum`:
/// that is a loop over a slice of any length whose inlining the compiler decides per call site.
/// Since c7172c7 split the codec into modules it stopped inlining it at some sites, `finish_header`
/// (every event frame pier encodes) the last one: a call of ~109 instructions per message at
/// 100 × 1, against ~30 inlined (bench/results). The `header_crc_is_crc32_ieee` test pins it to
/// crc32fast's CRC-32.
#[inline(always)]
fn header_crc(header: &[u8]) -> u32 {
    let bytes: &[u8; 6] = header
        .first_chunk()
        .expect("a header holds at least 6 bytes");
    let mut crc = !0u32;
    for &byte in bytes {
        crc = HEADER_CRC_TABLE[usize::from(crc as u8 ^ byte)] ^ (crc >> 8);
    }
    !crc
}

/// Frame flags (byte 1 of the header).
pub mod flags {
    /// A control frame (pid handshake, stop); never a job payload.
    pub const CONTROL: u8 = 0x01;
    /// Payload is raw bytes.
    pub const CODEC_RAW: u8 = 0x04;
    /// Payload is JSON.
    pub const CODEC_JSON: u8 = 0x08;
    /// Payload is MessagePack.
    pub const CODEC_MSGPACK: u8 = 0x10;
    /// Payload is Go gob.
    pub const CODEC_GOB: u8 = 0x20;
    /// The worker reports an error; payload is the message.
    pub const ERROR: u8 = 0x40;
    /// Payload is protobuf.
    pub const CODEC_PROTO: u8 = 0x80;
}

/// Stream bits (byte 10 of the header). Pier never sets them; they are decoded and kept.
pub mod stream {
    /// The payload is one chunk of a stream.
    pub const STREAM: u8 = 0x01;
    /// Stop the stream.
    pub const STOP: u8 = 0x02;
    /// Liveness probe.
    pub const PING: u8 = 0x04;
    /// Answer to [`PING`].
    pub const PONG: u8 = 0x08;
}

/// Up to ten u32 options, stored inline so decoding never allocates.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Option values; only the first `len` are meaningful.
    values: [u32; MAX_OPTIONS],
    /// How many options the frame carries.
    len: u8,
}

impl Options {
    /// Options from a slice; `None` when it has more than [`MAX_OPTIONS`] values.
    pub fn new(values: &[u32]) -> Option<Self> {
        if values.len() > MAX_OPTIONS {
            return None;
        }
        let mut out = Self::default();
        out.values[..values.len()].copy_from_slice(values);
        out.len = values.len() as u8;
        Some(out)
    }

    /// The options as a slice.
    pub fn as_slice(&self) -> &[u32] {
        &self.values[..usize::from(self.len)]
    }

    /// Option `i`, if present.
    pub fn get(&self, i: usize) -> Option<u32> {
        self.as_slice().get(i).copied()
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// A decoded frame that borrows its payload from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Header byte 1: see [`flags`].
    pub flags: u8,
    /// Header byte 10: see [`stream`].
    pub stream: u8,
    /// The u32 options after the fixed header.
    pub options: Options,
    /// The payload, borrowed from the decoded buffer.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// A frame with no stream bits.
    pub fn new(flags: u8, options: &[u32], payload: &'a [u8]) -> Option<Self> {
        Some(Self {
            flags,
            stream: 0,
            options: Options::new(options)?,
            payload,
        })
    }

    /// Whether every bit of `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, flags::CODEC_RAW, 0, &[5], &[b"WRITE", b"hello"]).unwrap();
        buf
    }

    #[test]
    fn round_trips_and_reports_consumed_length() {
        let mut buf = sample();
        buf.extend_from_slice(b"trailing");
        let (frame, used) = decode(&buf, 1024).unwrap().unwrap();
        assert_eq!(used, 16 + 10);
        assert_eq!(frame.flags, flags::CODEC_RAW);
        assert_eq!(frame.options.as_slice(), &[5]);
        assert_eq!(frame.payload, b"WRITEhello");
        let mut again = Vec::new();
        frame.encode(&mut again).unwrap();
        assert_eq!(again, &buf[..used]);
    }

    #[test]
    fn a_view_reads_what_decoding_builds_and_stops_at_its_frame() {
        for options in [&[][..], &[5], &[5, 0], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]] {
            let mut buf = Vec::new();
            encode(&mut buf, flags::CONTROL, 3, options, &[b"WRITEhello"]).unwrap();
            let whole = buf.len();
            buf.extend_from_slice(&sample());
            let (frame, used) = decode(&buf, 1024).unwrap().unwrap();
            assert_eq!(used, whole);
            let view = FrameView::accepted(&buf).unwrap();
            assert_eq!(view.frame(), frame, "{options:?}");
            assert_eq!(view.flags(), flags::CONTROL);
            assert_eq!(
                view.payload(),
                b"WRITEhello",
                "the next frame is not part of it"
            );
            for i in 0..=MAX_OPTIONS + 1 {
                assert_eq!(view.option(i), options.get(i).copied(), "option {i}");
            }
            assert_eq!(view.option(usize::MAX), None);
            assert_eq!(
                FrameView::accepted(&buf[..whole - 1]),
                None,
                "one byte short"
            );
        }
        let mut bad = sample();
        bad[0] = (VERSION << 4) | 2;
        assert_eq!(
            FrameView::accepted(&bad),
            None,
            "a header length under 3 words"
        );
        assert_eq!(FrameView::accepted(&bad[..11]), None, "less than a header");
    }

    #[test]
    fn needs_more_until_the_last_byte() {
        let buf = sample();
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut], 1024), Ok(None), "prefix of {cut} bytes");
        }
        assert!(decode(&buf, 1024).unwrap().is_some());
    }

    /// A header with the given first byte and payload length, with a valid checksum.
    fn header(first: u8, len: u32) -> Vec<u8> {
        let mut h = vec![first, 0];
        h.extend_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&[0, 0]);
        h
    }

    #[test]
    fn begun_and_finished_headers_match_whole_frames() {
        let options = [7u32, 0xdead_beef, 0, 1, 2, 3, 4, 5, 6, 0xffff_ffff];
        for n in 0..=MAX_OPTIONS {
            for payload in [&b""[..], b"x", b"hello, world"] {
                let mut whole = b"before".to_vec();
                encode(&mut whole, flags::CODEC_RAW, 0, &options[..n], &[payload]).unwrap();
                let mut begun = b"before".to_vec();
                let start = begin_header(&mut begun, flags::CODEC_RAW, n);
                begun.extend_from_slice(payload);
                finish_header(&mut begun, start, &options[..n]).unwrap();
                assert_eq!(begun, whole, "{n} options, payload {payload:?}");
            }
        }
    }

    #[test]
    fn header_crc_is_crc32_ieee() {
        for first in [0x13u8, 0x1d, 0xff, 0] {
            for len in [0u32, 1, 33, 1 << 20, u32::MAX] {
                let h = header(first, len);
                assert_eq!(header_crc(&h[..6]), crc32fast::hash(&h[..6]));
            }
        }
        // Every value of every byte the checksum covers (the table's every entry, at each step).
        for at in 0..6 {
            for value in 0..=255u8 {
                let mut h = [0x13, 0x04, 0x20, 0, 0, 0];
                h[at] = value;
                assert_eq!(
                    header_crc(&h),
                    crc32fast::hash(&h),
                    "byte {at} = {value:#04x}"
                );
            }
        }
    }

    #[test]
    fn rejections() {
        let mut bad_crc = sample();
        bad_crc[6] ^= 0xff;
        let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
            ("version 0", vec![0x03], FrameError::Version(0)),
            ("version 2", header(0x23, 0), FrameError::Version(2)),
            ("ascii garbage", b"hello\n".to_vec(), FrameError::Version(6)),
            ("header length 2", vec![0x12], FrameError::HeaderLength(2)),
            (
                "header length 0",
                header(0x10, 0),
                FrameError::HeaderLength(0),
            ),
            ("header length 14", vec![0x1e], FrameError::HeaderLength(14)),
            (
                "crc mismatch",
                bad_crc.clone(),
                FrameError::Checksum {
                    found: u32::from_le_bytes(bad_crc[6..10].try_into().unwrap()),
                    computed: crc32fast::hash(&bad_crc[..6]),
                },
            ),
            (
                "payload over limit",
                header(0x13, 1025),
                FrameError::PayloadTooLarge {
                    len: 1025,
                    max: 1024,
                },
            ),
            (
                "4 GiB payload announced",
                header(0x13, u32::MAX),
                FrameError::PayloadTooLarge {
                    len: u32::MAX.into(),
                    max: 1024,
                },
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(decode(&bytes, 1024), Err(want), "{name}");
        }
    }

    #[test]
    fn the_header_memo_never_changes_a_result() {
        // Every byte of a good header flipped, each twice (the second time the first result may
        // be remembered), with and without the memo; then the good frame again.
        let good = sample();
        let mut memo = HeaderMemo::new();
        for round in 0..2 {
            assert_eq!(
                decode_memo(&good, 1024, &mut memo),
                decode(&good, 1024),
                "{round}"
            );
            for at in 0..HEADER_LEN {
                for bit in [0x01, 0x80] {
                    let mut bad = good.clone();
                    bad[at] ^= bit;
                    let want = decode(&bad, 1024);
                    assert_eq!(decode_memo(&bad, 1024, &mut memo), want, "byte {at}");
                    let whole = want.map(|f| f.map(|(_, used)| used));
                    assert_eq!(whole_len(&bad, 1024, &mut memo), whole, "byte {at}");
                }
            }
            // The limit is checked on every call, remembered header or not.
            assert!(matches!(
                decode_memo(&good, 3, &mut memo),
                Err(FrameError::PayloadTooLarge { len: 10, max: 3 })
            ));
            for cut in 0..good.len() {
                assert_eq!(decode_memo(&good[..cut], 1024, &mut memo), Ok(None));
                assert_eq!(whole_len(&good[..cut], 1024, &mut memo), Ok(None));
            }
        }
        // More distinct headers than slots: each still decodes, the memo stays its size.
        for len in 0..300u32 {
            let mut buf = Vec::new();
            encode(&mut buf, 0, 0, &[], &[&vec![1u8; len as usize]]).unwrap();
            assert_eq!(decode_memo(&buf, 1024, &mut memo), decode(&buf, 1024));
        }
        assert!(format!("{memo:?}").ends_with("/64 headers)"));
    }

    #[test]
    fn reserved_byte_is_ignored_and_written_as_zero() {
        // Found by the fuzzer: goridge never reads byte 11, so neither do we, and we never set it.
        let mut buf = sample();
        buf[11] = 0x71;
        let (frame, _) = decode(&buf, 1024).unwrap().unwrap();
        let mut again = Vec::new();
        frame.encode(&mut again).unwrap();
        buf[11] = 0;
        assert_eq!(again, buf);
    }

    #[test]
    fn payload_at_the_limit_is_accepted() {
        let mut buf = Vec::new();
        encode(&mut buf, 0, 0, &[], &[&[7u8; 1024]]).unwrap();
        assert_eq!(decode(&buf, 1024).unwrap().unwrap().1, buf.len());
    }

    #[test]
    fn ten_options_and_stream_bits() {
        let options: Vec<u32> = (1..=10).collect();
        let mut buf = Vec::new();
        encode(&mut buf, flags::CONTROL, stream::PING, &options, &[b"x"]).unwrap();
        assert_eq!(buf[0], 0x1d);
        let (frame, _) = decode(&buf, 16).unwrap().unwrap();
        assert_eq!(frame.options.as_slice(), options.as_slice());
        assert_eq!(frame.stream, stream::PING);
        assert!(frame.has(flags::CONTROL));
        assert_eq!(
            encode(&mut buf, 0, 0, &[0; 11], &[]),
            Err(EncodeError::TooManyOptions(11))
        );
        assert!(Options::new(&[0; 11]).is_none());
    }
}
