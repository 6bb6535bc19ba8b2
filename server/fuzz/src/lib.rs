//! What every framing fuzz target checks, given a framing built from the input's first bytes and
//! the rest of the input as a client's stream:
//! - nothing panics and every packet is within `max_packet_size` and so is what the codec holds between reads;
//! - the stream in one read, cut at input-chosen points, and one byte at a time yields the same
//!   packets and ends the same way (clean EOF or the same error kind): framing never depends on how
//!   TCP chunks the bytes. Raw mode is the exception by design: there the packets must instead
//!   concatenate back to the stream.

use bytes::BytesMut;
use pier_server::framing::{FrameCodec, Framing, FramingError};
use tokio_util::codec::Decoder;

/// Packets, then the error kind that stopped framing (`None` = clean EOF).
type Outcome = (Vec<Vec<u8>>, Option<std::mem::Discriminant<FramingError>>);

fn feed(framing: &Framing, max: usize, chunks: &[&[u8]]) -> Outcome {
    let mut codec = FrameCodec::new(framing, max);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(p)) => {
                    assert!(p.len() <= max, "packet of {} bytes over max {max}", p.len());
                    packets.push(p.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (packets, Some(std::mem::discriminant(&e))),
            }
        }
        // Every buffer fed by the outside is bounded: once the codec wants more, what it holds is
        // part of one packet.
        assert!(buf.len() <= max, "buffer grew to {}", buf.len());
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(p)) => {
                assert!(p.len() <= max);
                packets.push(p.to_vec());
            }
            Ok(None) => return (packets, None),
            Err(e) => return (packets, Some(std::mem::discriminant(&e))),
        }
    }
}

/// Cuts `stream` where `cuts` say (each byte is a chunk length 1–256).
fn chunks<'a>(stream: &'a [u8], cuts: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let len = usize::from(cuts.get(i % cuts.len().max(1)).copied().unwrap_or(0)) + 1;
        let end = (at + len).min(stream.len());
        out.push(&stream[at..end]);
        at = end;
        i += 1;
    }
    out
}

/// Runs the checks for `framing` on `stream`.
pub fn check(framing: &Framing, max: usize, stream: &[u8]) {
    let whole = feed(framing, max, &[stream]);
    let cut = feed(framing, max, &chunks(stream, &stream[..stream.len().min(16)]));
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let one_by_one = feed(framing, max, &bytes);
    if *framing == Framing::Raw {
        for (packets, error) in [&whole, &cut, &one_by_one] {
            assert!(error.is_none());
            assert_eq!(packets.concat(), stream);
        }
        return;
    }
    assert_eq!(whole, cut, "one read vs cut reads");
    assert_eq!(whole, one_by_one, "one read vs byte at a time");
}

/// A `max_packet_size` from one input byte: small enough for the fuzzer to reach it.
pub fn max_from(byte: u8) -> usize {
    usize::from(byte) * 4 + 1
}
