//! Fuzzes the fast event-context reader against serde_json.
//!
//! Property: on any bytes, the fast reader either declines (serde_json then decides) or reads
//! exactly what serde_json reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert!(pier_protocol::tcp::plain_context_agrees(data));
});
