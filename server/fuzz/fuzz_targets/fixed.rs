//! Fixed-size framing: the packet size from the first byte; see `src/lib.rs` for the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_server::framing::Framing;

fuzz_target!(|data: &[u8]| {
    let [size, stream @ ..] = data else { return };
    let size = usize::from(size % 64) + 1;
    pier_server_fuzz::check(&Framing::Fixed(size), size, stream);
});
