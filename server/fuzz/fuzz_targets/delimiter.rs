//! Delimiter framing: a 1–3 byte delimiter and `max_packet_size` from the first bytes; see
//! `src/lib.rs` for the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_server::framing::Framing;

fuzz_target!(|data: &[u8]| {
    let [len, max, rest @ ..] = data else { return };
    let len = usize::from(len % 3) + 1;
    if rest.len() < len {
        return;
    }
    let (delimiter, stream) = rest.split_at(len);
    let max = pier_server_fuzz::max_from(*max).max(len);
    pier_server_fuzz::check(&Framing::Delimiter(delimiter.to_vec()), max, stream);
});
