//! Fuzzes `pier_protocol::decode` and the message classifiers on arbitrary bytes.
//!
//! Properties: nothing panics; a decoded frame never claims more bytes than it was given; re-encoding
//! a decoded frame gives back exactly the bytes it was decoded from, except the reserved byte 11, which
//! is ignored on decode and always written as 0; every prefix of a whole frame is `Ok(None)` (the
//! decoder never guesses).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_protocol::{decode, ServerMessage, WorkerMessage};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((frame, used))) = decode(&data[at..], 1 << 20) {
        assert!(used <= data.len() - at && used >= 12);
        let mut again = Vec::new();
        frame.encode(&mut again).expect("a decoded frame re-encodes");
        let mut original = data[at..at + used].to_vec();
        original[11] = 0;
        assert_eq!(again, original);
        assert!(matches!(decode(&data[at..at + used - 1], 1 << 20), Ok(None)));
        let view = pier_protocol::frame::decode_view(&data[at..], 1 << 20)
            .expect("decode_view accepts what decode does")
            .expect("whole");
        assert_eq!(view.frame(), frame);
        assert_eq!(
            format!("{:?}", WorkerMessage::from_view(&view)),
            format!("{:?}", WorkerMessage::from_frame(&frame))
        );
        let _ = ServerMessage::from_frame(&frame);
        at += used;
    }
});
