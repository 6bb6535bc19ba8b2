//! Fuzzes the worker's memos against decoding without them.
//!
//! Properties: on any stream of frames, a header memo kept across the stream gives every result
//! (frames and errors) `decode` gives; a context memo kept across the stream decodes every event
//! frame to what `TcpEvent::decode` gives, error or event; a reply-head memo encodes every reply
//! to the bytes `encode_reply` gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_protocol::decode;
use pier_protocol::frame::{decode_memo, HeaderMemo};
use pier_protocol::memo::{ContextMemo, ReplyHeads};
use pier_protocol::tcp::{encode_reply, ReplyKind, TcpEvent};

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMemo::new();
    let mut contexts = ContextMemo::new();
    let mut heads = ReplyHeads::new();
    let mut at = 0;
    loop {
        let want = decode(&data[at..], 1 << 20);
        assert_eq!(decode_memo(&data[at..], 1 << 20, &mut headers), want);
        let Ok(Some((frame, used))) = want else { break };
        assert_eq!(
            contexts.decode(&frame).map_err(|e| e.to_string()),
            TcpEvent::decode(&frame).map_err(|e| e.to_string())
        );
        let kind = ReplyKind::from_bytes(&frame.payload[..frame.payload.len().min(10)]);
        let state = (frame.stream & 1 == 1).then_some(&b"st"[..]);
        let (mut got, mut want) = (Vec::new(), Vec::new());
        heads
            .encode_reply(&mut got, kind, state, frame.payload)
            .unwrap();
        encode_reply(&mut want, kind, state, frame.payload).unwrap();
        assert_eq!(got, want);
        at += used;
    }
});
