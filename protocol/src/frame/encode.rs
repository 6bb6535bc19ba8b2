//! Writing frames: a whole frame into one buffer, or a header patched once the payload was
//! serialized after it. Every error is the caller's mistake.

use super::{header_crc, Frame, HEADER_LEN, MAX_OPTIONS, MIN_HEADER_WORDS, VERSION};

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

impl Frame<'_> {
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

/// Appends a header with room for `options` options, to be completed by [`finish_header`] (its
/// payload length, checksum and option values are zeros until then); used by encoders that
/// serialize the payload straight into `dst`.
///
/// No checksum here: `finish_header` writes the one that counts. Begun by `put_header`, every
/// event frame's header was checksummed twice (83 instructions per event pier encodes at 100 × 1,
/// callgrind).
#[inline(always)]
pub(crate) fn begin_header(dst: &mut Vec<u8>, flags: u8, options: usize) -> usize {
    assert!(options <= MAX_OPTIONS, "at most {MAX_OPTIONS} options");
    let start = dst.len();
    let mut header = [0u8; HEADER_LEN + 4 * MAX_OPTIONS];
    header[0] = (VERSION << 4) | (MIN_HEADER_WORDS + options as u8);
    header[1] = flags;
    dst.extend_from_slice(&header[..HEADER_LEN + 4 * options]);
    start
}

/// Patches the payload length, the options and the checksum of a header begun at `start`.
///
/// Always inlined: its callers (the event encoders) pass one or two options, a length the
/// compiler then knows; out of line it was a call with a loop over the options (68 instructions
/// per event pier encodes at 100 × 1, callgrind, against ~40 inlined).
#[inline(always)]
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

/// A whole header with one or two options, checksummed, for an encoder that knows its payload's
/// length before writing it (the first `HEADER_LEN + 4 * options.len()` bytes count).
///
/// Built on the stack and appended once: begun with zeros and patched after the payload
/// ([`begin_header`], [`finish_header`]), every event frame pier encodes went through `dst`'s
/// bounds checks twice and its length was counted back from it.
#[inline(always)]
pub(crate) fn short_header(flags: u8, len: u32, options: &[u32]) -> [u8; HEADER_LEN + 8] {
    assert!(options.len() <= 2, "at most 2 options here");
    let mut header = [0u8; HEADER_LEN + 8];
    header[0] = (VERSION << 4) | (MIN_HEADER_WORDS + options.len() as u8);
    header[1] = flags;
    header[2..6].copy_from_slice(&len.to_le_bytes());
    let crc = header_crc(&header[..6]);
    header[6..10].copy_from_slice(&crc.to_le_bytes());
    for (raw, value) in header[HEADER_LEN..].chunks_exact_mut(4).zip(options) {
        raw.copy_from_slice(&value.to_le_bytes());
    }
    header
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
