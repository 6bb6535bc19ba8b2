//! Reading frames from a peer's bytes: incremental decoding that borrows the payload, with an
//! optional memo of the headers already checked, and a view of an accepted frame read in place.
//! Every error is the peer's fault.

use std::fmt;

use super::{header_crc, Frame, Options, HEADER_LEN, MAX_HEADER_WORDS, MIN_HEADER_WORDS, VERSION};

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

/// [`decode`] read in place: the frame at the start of `buf` as a [`FrameView`] (its options
/// not copied out), once it is all there; the same checks and errors.
///
/// Inlined: pier reads each worker answer through it, and only needs one or two options of it
/// ([`crate::WorkerMessage::from_view`]); [`decode`]'s [`Frame`] copied ten options' room out
/// and went through memory twice (`decode` 114 + `from_frame` 68 instructions per answer at
/// 100 × 1, callgrind).
#[inline]
pub fn decode_view(buf: &[u8], max_payload: u32) -> Result<Option<FrameView<'_>>, FrameError> {
    let Some((header_len, total)) = check_header(buf, max_payload, None)? else {
        return Ok(None);
    };
    Ok(buf
        .get(..total)
        .map(|bytes| FrameView { bytes, header_len }))
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

    /// Header byte 1: see [`flags`](super::flags).
    pub fn flags(&self) -> u8 {
        self.bytes.get(1).copied().unwrap_or_default()
    }

    /// Option `i`, if the frame has it.
    pub fn option(&self, i: usize) -> Option<u32> {
        let at = HEADER_LEN.checked_add(i.checked_mul(4)?)?;
        let raw = self.bytes.get(at..self.header_len)?.first_chunk::<4>()?;
        Some(u32::from_le_bytes(*raw))
    }

    /// The frame's length in bytes, header included (what a decoder consumed).
    pub fn frame_len(&self) -> usize {
        self.bytes.len()
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
///
/// Always inlined into its callers (`decode_with`, `whole_len`): with the checksum's six table
/// steps inlined in it, the compiler left it out of line (+14 instructions per worker answer
/// pier reads at 100 × 1, callgrind).
#[inline(always)]
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

/// [`decode`] and [`decode_memo`]. Always inlined, so that each is compiled with its own `memo`
/// (`decode`'s `None` drops the memo's key and lookup): out of line, `decode` ran them (+26
/// instructions per worker answer pier reads at 100 × 1, callgrind).
#[inline(always)]
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
///
/// Always inlined: out of line its 64-byte frame went back through memory, then again into
/// `decode`'s result.
#[inline(always)]
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
