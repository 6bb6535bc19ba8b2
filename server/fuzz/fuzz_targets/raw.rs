//! Raw framing: `max_packet_size` from the first byte; see `src/lib.rs` for the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_server::framing::Framing;

fuzz_target!(|data: &[u8]| {
    let [max, stream @ ..] = data else { return };
    pier_server_fuzz::check(&Framing::Raw, pier_server_fuzz::max_from(*max), stream);
});
