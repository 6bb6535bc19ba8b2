//! Every frame in `../shared/relay-vectors.json` (captured from the reference PHP implementation)
//! decodes to what its `meaning` says and re-encodes to the same bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pier_protocol::control::{self, Control};
use pier_protocol::frame::{decode, decode_view, flags};
use pier_protocol::tcp::{EventKind, ReplyKind, TcpEvent, TcpReply};
use pier_protocol::{ServerMessage, WorkerMessage};

const MAX: u32 = 16 << 20;
const UUID: &str = "1c9d8f2a-4b7e-4d2c-9a51-0e6f3b2a7c10";

fn vectors() -> BTreeMap<String, Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/relay-vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "could not read {}: {e} (shared/ must sit beside the repo)",
            path.display()
        )
    });
    let json: serde_json::Value = serde_json::from_str(&text).expect("vectors are JSON");
    json["frames"]
        .as_object()
        .expect("frames object")
        .iter()
        .map(|(name, v)| {
            (
                name.clone(),
                hex::decode(v["hex"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// The stock worker's reply vectors: name, kind and body (shared by the plain and the memo tests).
fn reply_cases() -> [(&'static str, ReplyKind<'static>, &'static [u8]); 5] {
    [
        ("worker_respond_write_hello", ReplyKind::Write, b"hello\r\n"),
        (
            "worker_respond_writeclose_bye",
            ReplyKind::WriteClose,
            b"goodbye\r\n",
        ),
        ("worker_read_continue", ReplyKind::Continue, b""),
        ("worker_close", ReplyKind::Close, b""),
        ("worker_respond_binary", ReplyKind::Write, b"\x00\xff\r\n"),
    ]
}

fn frame_of(bytes: &[u8]) -> pier_protocol::Frame<'_> {
    let (frame, used) = decode(bytes, MAX).unwrap().expect("a whole frame");
    assert_eq!(used, bytes.len(), "the vector is exactly one frame");
    frame
}

fn worker(bytes: &[u8]) -> WorkerMessage<'_> {
    let message = WorkerMessage::from_frame(&frame_of(bytes)).unwrap();
    // Read in place (as pier reads answers), the same message.
    let view = decode_view(bytes, MAX).unwrap().expect("a whole frame");
    assert_eq!(view.frame_len(), bytes.len());
    assert_eq!(WorkerMessage::from_view(&view).unwrap(), message);
    message
}

fn server(bytes: &[u8]) -> ServerMessage<'_> {
    ServerMessage::from_frame(&frame_of(bytes)).unwrap()
}

fn reencode_reply(kind: ReplyKind<'_>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    TcpReply {
        kind,
        state: None,
        body,
    }
    .encode(&mut out)
    .unwrap();
    out
}

fn event(kind: EventKind, body: &'static [u8]) -> TcpEvent<'static> {
    TcpEvent {
        remote_addr: "127.0.0.1:50412".into(),
        server: "smtp".into(),
        uuid: UUID.into(),
        event: kind,
        state: b"",
        body,
        tls: None,
    }
}

#[test]
fn every_vector_is_covered() {
    let names: Vec<String> = vectors().into_keys().collect();
    let known = [
        "server_event_close",
        "server_event_connected",
        "server_event_data",
        "server_pid_request",
        "server_stop",
        "worker_close",
        "worker_error",
        "worker_pid_reply_example",
        "worker_read_continue",
        "worker_respond_binary",
        "worker_respond_write_hello",
        "worker_respond_writeclose_bye",
        "worker_stop",
    ];
    assert_eq!(names, known, "a new vector needs a test below");
}

#[test]
fn worker_replies() {
    let v = vectors();
    let cases = reply_cases();
    for (name, kind, body) in cases {
        let bytes = &v[name];
        assert_eq!(
            worker(bytes),
            WorkerMessage::Reply(TcpReply {
                kind,
                state: None,
                body
            }),
            "{name}"
        );
        assert_eq!(frame_of(bytes).flags, 0, "{name}");
        assert_eq!(&reencode_reply(kind, body), bytes, "{name}");
    }
}

#[test]
fn worker_error_stop_and_pid() {
    let v = vectors();
    let bytes = &v["worker_error"];
    assert_eq!(worker(bytes), WorkerMessage::Error(b"boom"));
    assert_eq!(frame_of(bytes).flags, flags::ERROR);
    let mut out = Vec::new();
    control::encode_error(&mut out, b"boom").unwrap();
    assert_eq!(&out, bytes);

    let bytes = &v["worker_stop"];
    assert_eq!(worker(bytes), WorkerMessage::Stop);
    let mut out = Vec::new();
    control::encode_worker_stop(&mut out).unwrap();
    assert_eq!(&out, bytes);

    let bytes = &v["worker_pid_reply_example"];
    assert_eq!(worker(bytes), WorkerMessage::Pid(15621));
    assert_eq!(frame_of(bytes).flags, flags::CONTROL);
    let mut out = Vec::new();
    control::encode_pid_reply(&mut out, 15621).unwrap();
    assert_eq!(&out, bytes);
}

#[test]
fn server_events() {
    let v = vectors();
    let cases: [(&str, EventKind, &'static [u8]); 3] = [
        ("server_event_connected", EventKind::Connected, b""),
        (
            "server_event_data",
            EventKind::Data,
            b"EHLO example.org\r\n",
        ),
        ("server_event_close", EventKind::Close, b""),
    ];
    for (name, kind, body) in cases {
        let bytes = &v[name];
        let want = event(kind, body);
        assert_eq!(server(bytes), ServerMessage::Event(want.clone()), "{name}");
        let mut out = Vec::new();
        want.encode(&mut out).unwrap();
        assert_eq!(&out, bytes, "{name}");
    }
}

#[test]
fn server_control() {
    let v = vectors();
    let bytes = &v["server_pid_request"];
    assert_eq!(server(bytes), ServerMessage::Pid(4242));
    assert_eq!(frame_of(bytes).flags, flags::CONTROL | flags::CODEC_JSON);
    let mut out = Vec::new();
    control::encode_pid_request(&mut out, 4242).unwrap();
    assert_eq!(&out, bytes);

    let bytes = &v["server_stop"];
    assert_eq!(server(bytes), ServerMessage::Stop);
    assert_eq!(
        Control::parse(frame_of(bytes).payload).unwrap(),
        Control::Stop
    );
    let mut out = Vec::new();
    control::encode_stop_request(&mut out).unwrap();
    assert_eq!(&out, bytes);
}

#[test]
fn every_vector_needs_more_until_its_last_byte() {
    for (name, bytes) in vectors() {
        for cut in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..cut], MAX), Ok(None)),
                "{name} cut at {cut}"
            );
        }
    }
}

#[test]
fn a_stream_of_all_vectors_decodes_frame_by_frame() {
    let v = vectors();
    let stream: Vec<u8> = v.values().flatten().copied().collect();
    let mut at = 0;
    let mut count = 0;
    while let Some((_, used)) = decode(&stream[at..], MAX).unwrap() {
        at += used;
        count += 1;
    }
    assert_eq!((at, count), (stream.len(), v.len()));
}

/// The `state` extension adds nothing while no state is set: the explicit no-state encoders give
/// the stock bytes.
#[test]
fn no_state_is_byte_identical_to_the_vectors() {
    use pier_protocol::tcp::{encode_event_with_state, encode_reply};
    let v = vectors();
    let mut out = Vec::new();
    encode_event_with_state(
        &mut out,
        "127.0.0.1:50412",
        "smtp",
        UUID,
        EventKind::Data,
        b"",
        b"EHLO example.org\r\n",
    )
    .unwrap();
    assert_eq!(out, v["server_event_data"]);
    let mut out = Vec::new();
    encode_reply(&mut out, ReplyKind::Write, None, b"hello\r\n").unwrap();
    assert_eq!(out, v["worker_respond_write_hello"]);
}

/// The memos a worker keeps (checked headers, decoded contexts, stock reply heads) change no byte
/// and no result: every vector, and every corruption of its header, decodes the same with them as
/// without, twice in a row (the second time from the memo), and a frame `whole_len` accepted is
/// built without its checks to the same frame; every reply vector is encoded to its exact bytes
/// from a remembered head.
#[test]
fn the_memos_give_the_same_results_for_every_vector() {
    use pier_protocol::frame::{
        decode_accepted, decode_memo, whole_len, FrameView, HeaderMemo, MAX_OPTIONS,
    };
    use pier_protocol::memo::{ContextMemo, ReplyHeads};
    let v = vectors();
    let mut headers = HeaderMemo::new();
    let mut contexts = ContextMemo::new();
    for round in 0..2 {
        for (name, bytes) in &v {
            let want = decode(bytes, MAX);
            assert_eq!(
                decode_memo(bytes, MAX, &mut headers),
                want,
                "{name} {round}"
            );
            let whole = want.clone().map(|f| f.map(|(_, used)| used));
            assert_eq!(whole_len(bytes, MAX, &mut headers), whole, "{name}");
            if let Ok(Some((frame, used))) = &want {
                assert_eq!(
                    decode_accepted(&bytes[..*used]).as_ref(),
                    Some(frame),
                    "{name}"
                );
                // Read in place, the frame has the same flags, options and payload.
                let view = FrameView::accepted(bytes).expect("a whole frame");
                assert_eq!(view.frame(), *frame, "{name}");
                assert_eq!(view.flags(), frame.flags, "{name}");
                assert_eq!(view.payload(), frame.payload, "{name}");
                for i in 0..=MAX_OPTIONS {
                    assert_eq!(view.option(i), frame.options.get(i), "{name} option {i}");
                }
                if name.starts_with("server_event") {
                    let mut memo = ContextMemo::new();
                    assert_eq!(
                        memo.decode_view(&view).unwrap(),
                        TcpEvent::decode(frame).unwrap(),
                        "{name}"
                    );
                }
            }
            for at in 0..12 {
                let mut bad = bytes.clone();
                bad[at] ^= 0x40;
                assert_eq!(
                    decode_memo(&bad, MAX, &mut headers),
                    decode(&bad, MAX),
                    "{name} byte {at}"
                );
            }
            let frame = frame_of(bytes);
            if name.starts_with("server_event") {
                let plain = TcpEvent::decode(&frame).unwrap();
                assert_eq!(contexts.decode(&frame).unwrap(), plain, "{name} {round}");
            }
        }
    }
    let mut heads = ReplyHeads::new();
    let cases = reply_cases();
    for round in 0..2 {
        for (name, kind, body) in cases {
            let mut out = Vec::new();
            heads.encode_reply(&mut out, kind, None, body).unwrap();
            assert_eq!(out, v[name], "{name} {round}");
        }
    }
}
