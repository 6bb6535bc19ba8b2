//! Varint framing: offset, the varint's most bytes, adjustment, strip and `max_packet_size` from
//! the first bytes (kept to what the config accepts); see `src/lib.rs` for the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_server::framing::{Framing, Strip, Varint};

fuzz_target!(|data: &[u8]| {
    let [offset, max_bytes, adjustment, strip, max, stream @ ..] = data else { return };
    let offset = usize::from(offset % 4);
    let max = pier_server_fuzz::max_from(*max).max(offset + 1);
    let adjustment = i64::from(*adjustment as i8).min((max - offset - 1) as i64);
    let strip = match strip % (offset as u8 + 2) {
        n if usize::from(n) > offset => Strip::Header,
        n => Strip::Bytes(usize::from(n)),
    };
    let framing = Framing::Varint(Varint {
        offset,
        max_bytes: usize::from(max_bytes % 10) + 1,
        adjustment,
        strip,
    });
    pier_server_fuzz::check(&framing, max, stream);
});
