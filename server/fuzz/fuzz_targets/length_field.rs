//! Length-field framing: offset, size, endianness, adjustment, strip and `max_packet_size` from the
//! first bytes (kept to what the config accepts); see `src/lib.rs` for the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_server::framing::{Endian, Framing, LengthField, Strip};

fuzz_target!(|data: &[u8]| {
    let [offset, size, endian, adjustment, strip, max, stream @ ..] = data else { return };
    let offset = usize::from(offset % 4);
    let size = [1, 2, 3, 4, 8][usize::from(size % 5)];
    let header = offset + size;
    let max = pier_server_fuzz::max_from(*max).max(header);
    let adjustment = i64::from(*adjustment as i8).min((max - header) as i64);
    let strip = match strip % (header as u8 + 2) {
        n if usize::from(n) > header => Strip::Header,
        n => Strip::Bytes(usize::from(n)),
    };
    let framing = Framing::LengthField(LengthField {
        offset,
        size,
        endian: if endian % 2 == 0 { Endian::Big } else { Endian::Little },
        adjustment,
        strip,
    });
    pier_server_fuzz::check(&framing, max, stream);
});
