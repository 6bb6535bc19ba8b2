//! goridge v3 frames: see "Frame" in `PROTOCOL.md`.

use std::fmt;

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

/// CRC-32 (IEEE), table built at compile time: the header's checksum covers its first 6 bytes.
const HEADER_CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// The checksum of a header's first 6 bytes.
fn header_crc(bytes: &[u8]) -> u32 {
    HEADER_CRC.checksum(bytes)
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

/// Why bytes are not a valid frame. Every variant is the peer's fault (corrupt or hostile input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The version nibble is not [`VERSION`]: the peer does not speak goridge v3, or wrote garbage.
    #[error("could not decode frame: unsupported version {0} (expected {VERSION})")]
    Version(u8),
    /// The header-length nibble is outside 3..=13 words.
    #[error("could not decode frame: header length {0} words is outside 3..=13")]
    HeaderLength(u8),
    /// The CRC32 of header bytes 0..6 does not match bytes 6..10.
    #[error(
        "could not decode frame: header checksum {found:#010x} does not match {computed:#010x}"
    )]
    Checksum {
        /// The checksum the frame carries.
        found: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// The announced payload is larger than the caller allows; nothing was allocated for it.
    #[error("could not decode frame: payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Announced payload length.
        len: u64,
        /// The caller's limit.
        max: u64,
    },
}

/// Why a frame could not be encoded: the caller's mistake, never the peer's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// More than [`MAX_OPTIONS`] options.
    #[error("could not encode frame: {0} options (at most {MAX_OPTIONS})")]
    TooManyOptions(usize),
    /// The payload does not fit the u32 length field.
    #[error("could not encode frame: payload of {0} bytes does not fit in 32 bits")]
    PayloadTooLarge(u64),
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

    /// Appends this frame's bytes to `dst`.
    pub fn encode(&self, dst: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode(
            dst,
            self.flags,
            self.stream,
            self.options.as_slice(),
            &[self.payload],
        )
    }

    /// Whether every bit of `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }
}

/// Decodes one frame from the start of `buf`.
///
/// Returns `Ok(None)` while `buf` holds only part of a frame, and `Ok(Some((frame, consumed)))`
/// once a whole frame is there. A bad version or header length is reported from the first byte,
/// so garbage is rejected without waiting for twelve bytes; the payload length is checked against
/// `max_payload` only after the header checksum, and before anything is buffered for it.
pub fn decode(buf: &[u8], max_payload: u32) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    decode_with(buf, max_payload, None)
}

/// [`decode`] with a memo of the headers already checked: a header byte-identical to one that
/// passed before skips the CRC32 (the same bytes pass the same checks). Every result, error
/// included, is the one [`decode`] gives for the same bytes.
pub fn decode_memo<'a>(
    buf: &'a [u8],
    max_payload: u32,
    memo: &mut HeaderMemo,
) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
    decode_with(buf, max_payload, Some(memo))
}

/// The length of the whole frame at the start of `buf` once it is all there (`Ok(None)` before):
/// the checks of [`decode_memo`] without building the frame, to ask whether one is buffered.
pub fn whole_len(
    buf: &[u8],
    max_payload: u32,
    memo: &mut HeaderMemo,
) -> Result<Option<usize>, FrameError> {
    Ok(check_header(buf, max_payload, Some(memo))?
        .and_then(|(_, total)| (buf.len() >= total).then_some(total)))
}

/// The frame at the start of `buf` once [`whole_len`] accepted it (its header checked, all its
/// bytes there): builds it without checking again. `None` if `buf` does not start with the
/// whole frame its header describes (never, for bytes `whole_len` accepted).
pub fn decode_accepted(buf: &[u8]) -> Option<Frame<'_>> {
    FrameView::accepted(buf).map(|view| view.frame())
}

/// A whole frame read in place: its flags, options and payload are read from its bytes when
/// asked for. A [`Frame`] copies its options out (room for ten, ~60 instructions per frame) where
/// a TCP event needs one or two; a worker reads each event through a view instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameView<'a> {
    /// The frame's bytes, header included, and nothing after it.
    bytes: &'a [u8],
    /// The header's length in bytes: [`HEADER_LEN`] and four per option.
    header_len: usize,
}

impl<'a> FrameView<'a> {
    /// The frame at the start of `buf` once [`whole_len`] accepted it (its header checked, all
    /// its bytes there), without checking again: the same frame [`decode_accepted`] builds.
    /// `None` if `buf` does not start with the whole frame its header describes (never, for
    /// bytes `whole_len` accepted).
    pub fn accepted(buf: &'a [u8]) -> Option<Self> {
        let header = buf.first_chunk::<HEADER_LEN>()?;
        let words = header[0] & 0x0f;
        if !(MIN_HEADER_WORDS..=MAX_HEADER_WORDS).contains(&words) {
            return None;
        }
        let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
        let header_len = usize::from(words) * 4;
        let total = header_len.checked_add(len as usize)?;
        Some(FrameView {
            bytes: buf.get(..total)?,
            header_len,
        })
    }

    /// Header byte 1: see [`flags`].
    pub fn flags(&self) -> u8 {
        self.bytes.get(1).copied().unwrap_or_default()
    }

    /// Option `i`, if the frame has it.
    pub fn option(&self, i: usize) -> Option<u32> {
        let at = HEADER_LEN.checked_add(i.checked_mul(4)?)?;
        let raw = self.bytes.get(at..self.header_len)?.first_chunk::<4>()?;
        Some(u32::from_le_bytes(*raw))
    }

    /// The payload.
    pub fn payload(&self) -> &'a [u8] {
        self.bytes.get(self.header_len..).unwrap_or_default()
    }

    /// The frame, its options copied out.
    pub fn frame(&self) -> Frame<'a> {
        build(self.bytes, self.header_len, self.bytes.len())
    }
}

/// Frame headers that passed the checks of [`decode`] (version, header length, CRC32), so that a
/// header seen again is not checksummed again: a server's headers repeat (one per payload length
/// and option count). Bounded by construction: a direct-mapped table of [`HeaderMemo::SLOTS`]
/// headers indexed by their checksum, a new header replacing the one in its slot. Only headers
/// that passed are stored and a hit needs all the bytes the checks read to be equal (0..10:
/// version and length nibbles, flags, payload length, checksum; not the stream byte nor the
/// reserved one), so a corrupt header is never taken for a good one.
#[derive(Clone)]
pub struct HeaderMemo {
    /// Checked header bytes 0..8 and 8..10 (compared as two words), or zero (a header that never
    /// passes: version 0).
    slots: Box<[(u64, u16); HeaderMemo::SLOTS]>,
}

impl HeaderMemo {
    /// How many headers the memo holds at most (a power of two).
    pub const SLOTS: usize = 64;

    /// An empty memo.
    pub fn new() -> Self {
        HeaderMemo {
            slots: Box::new([(0, 0); Self::SLOTS]),
        }
    }

    /// The slot of a header (low bits of its checksum, which already mixes bytes 0..6) and the
    /// value stored there once it passed.
    fn key(header: &[u8; HEADER_LEN]) -> (usize, (u64, u16)) {
        let slot = usize::from(header[6]) & (Self::SLOTS - 1);
        let low = u64::from_le_bytes(*header.first_chunk::<8>().expect("8 < 12"));
        let high = u16::from_le_bytes([header[8], header[9]]);
        (slot, (low, high))
    }
}

impl Default for HeaderMemo {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HeaderMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used = self.slots.iter().filter(|s| s.0 != 0).count();
        write!(f, "HeaderMemo({used}/{} headers)", Self::SLOTS)
    }
}

/// Checks the header at the start of `buf`: `Ok(None)` until its twelve bytes are there, then
/// the header length in bytes and the whole frame's length.
fn check_header(
    buf: &[u8],
    max_payload: u32,
    memo: Option<&mut HeaderMemo>,
) -> Result<Option<(usize, usize)>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let version = first >> 4;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let words = first & 0x0f;
    if !(MIN_HEADER_WORDS..=MAX_HEADER_WORDS).contains(&words) {
        return Err(FrameError::HeaderLength(words));
    }
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let (slot, checked) = HeaderMemo::key(header);
    let known = memo.as_ref().is_some_and(|m| m.slots[slot] == checked);
    if !known {
        let found = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
        let computed = header_crc(&header[..6]);
        if found != computed {
            return Err(FrameError::Checksum { found, computed });
        }
        if let Some(memo) = memo {
            memo.slots[slot] = checked;
        }
    }
    let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
    if len > max_payload {
        return Err(FrameError::PayloadTooLarge {
            len: len.into(),
            max: max_payload.into(),
        });
    }
    let header_len = usize::from(words) * 4;
    Ok(Some((header_len, header_len + len as usize)))
}

fn decode_with<'a>(
    buf: &'a [u8],
    max_payload: u32,
    memo: Option<&mut HeaderMemo>,
) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
    let Some((header_len, total)) = check_header(buf, max_payload, memo)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((build(buf, header_len, total), total)))
}

/// The frame in `buf[..total]`, whose header (`header_len` bytes) was checked.
fn build(buf: &[u8], header_len: usize, total: usize) -> Frame<'_> {
    let words = (header_len / 4) as u8;
    let mut options = Options {
        len: words - MIN_HEADER_WORDS,
        ..Options::default()
    };
    for (slot, raw) in options
        .values
        .iter_mut()
        .zip(buf[HEADER_LEN..header_len].chunks_exact(4))
    {
        *slot = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    }
    Frame {
        flags: buf[1],
        stream: buf[10],
        options,
        payload: &buf[header_len..total],
    }
}

/// Appends one whole frame to `dst`, so that it can go out in a single write.
///
/// The payload is given in parts (for example context and body) so that callers never
/// concatenate them first.
pub fn encode(
    dst: &mut Vec<u8>,
    flags: u8,
    stream: u8,
    options: &[u32],
    payload: &[&[u8]],
) -> Result<(), EncodeError> {
    if options.len() > MAX_OPTIONS {
        return Err(EncodeError::TooManyOptions(options.len()));
    }
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let len32 = u32::try_from(len).map_err(|_| EncodeError::PayloadTooLarge(len as u64))?;
    dst.reserve(HEADER_LEN + options.len() * 4 + len);
    let start = dst.len();
    put_header(dst, flags, stream, options, len32);
    debug_assert_eq!(dst.len() - start, HEADER_LEN + options.len() * 4);
    for part in payload {
        dst.extend_from_slice(part);
    }
    Ok(())
}

/// Appends a header whose payload length is patched later by [`finish_header`]; used by encoders
/// that serialize the payload straight into `dst`.
pub(crate) fn begin_header(dst: &mut Vec<u8>, flags: u8, options: &[u32]) -> usize {
    let start = dst.len();
    put_header(dst, flags, 0, options, 0);
    start
}

/// Patches the payload length, the options and the checksum of a header begun at `start`.
pub(crate) fn finish_header(
    dst: &mut [u8],
    start: usize,
    options: &[u32],
) -> Result<(), EncodeError> {
    let header_len = HEADER_LEN + options.len() * 4;
    let len = dst.len() - start - header_len;
    let len32 = u32::try_from(len).map_err(|_| EncodeError::PayloadTooLarge(len as u64))?;
    let header = &mut dst[start..start + header_len];
    header[2..6].copy_from_slice(&len32.to_le_bytes());
    let crc = header_crc(&header[..6]);
    header[6..10].copy_from_slice(&crc.to_le_bytes());
    for (raw, value) in header[HEADER_LEN..].chunks_exact_mut(4).zip(options) {
        raw.copy_from_slice(&value.to_le_bytes());
    }
    Ok(())
}

fn put_header(dst: &mut Vec<u8>, flags: u8, stream: u8, options: &[u32], len: u32) {
    let words = MIN_HEADER_WORDS + options.len() as u8;
    let mut header = [0u8; HEADER_LEN];
    header[0] = (VERSION << 4) | words;
    header[1] = flags;
    header[2..6].copy_from_slice(&len.to_le_bytes());
    let crc = header_crc(&header[..6]);
    header[6..10].copy_from_slice(&crc.to_le_bytes());
    header[10] = stream;
    dst.extend_from_slice(&header);
    for option in options {
        dst.extend_from_slice(&option.to_le_bytes());
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
    fn header_crc_is_crc32_ieee() {
        for first in [0x13u8, 0x1d, 0xff, 0] {
            for len in [0u32, 1, 33, 1 << 20, u32::MAX] {
                let h = header(first, len);
                assert_eq!(header_crc(&h[..6]), crc32fast::hash(&h[..6]));
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
