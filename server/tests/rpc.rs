//! goridge RPC on `rpc.listen` over real sockets: the stock PHP client's frames from
//! `../shared/rpc-vectors.json` byte for byte, Pier's `pier.*` methods in both codecs, and hostile
//! input (which costs only its own RPC connection).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use pier_protocol::frame::{decode, encode, flags};
use pier_server::rpc::codec::{Codec, Request};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{wait_for, Harness, HANG};

const ONE: &str = "    s:\n      addr: 127.0.0.1:0\n";
const POOL: &str = "    num_workers: 2\n";
/// The uuid in the vectors' tcp.Close requests.
const VECTOR_UUID: &str = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";

fn vectors() -> BTreeMap<String, Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/rpc-vectors.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("could not read {}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap();
    json["frames"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), hex::decode(v["hex"].as_str().unwrap()).unwrap()))
        .collect()
}

/// A raw RPC connection.
struct Rpc {
    stream: TcpStream,
    seq: u32,
}

/// An answer: its flags and its payload after the method name.
#[derive(Debug)]
struct Answer {
    flags: u8,
    seq: u32,
    method: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        assert_eq!(self.flags, flags::CODEC_JSON, "{self:?}");
        serde_json::from_slice(&self.body).unwrap()
    }

    fn error(&self) -> String {
        assert!(self.flags & flags::ERROR != 0, "not an error: {self:?}");
        String::from_utf8(self.body.clone()).unwrap()
    }
}

impl Rpc {
    async fn connect(h: &Harness) -> Rpc {
        let addr = h.rpc.as_deref().unwrap().strip_prefix("tcp://").unwrap();
        Rpc {
            stream: TcpStream::connect(addr).await.unwrap(),
            seq: 0,
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one answer frame.
    async fn answer(&mut self) -> Answer {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 65536];
        loop {
            if let Some((frame, used)) = decode(&buf, u32::MAX).unwrap() {
                assert_eq!(used, buf.len(), "one answer per request");
                let options = frame.options.as_slice();
                let mlen = options[1] as usize;
                return Answer {
                    flags: frame.flags,
                    seq: options[0],
                    method: String::from_utf8(frame.payload[..mlen].to_vec()).unwrap(),
                    body: frame.payload[mlen..].to_vec(),
                };
            }
            let n = tokio::time::timeout(HANG, self.stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "RPC connection closed instead of answering");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads raw bytes until EOF: what a closed connection gives.
    async fn eof(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(HANG, self.stream.read_to_end(&mut rest))
            .await
            .expect("the server closes the RPC connection");
        rest
    }

    async fn call_with(&mut self, codec: Codec, method: &str, arg: &[u8]) -> Answer {
        self.seq += 1;
        let mut frame = Vec::new();
        encode(
            &mut frame,
            codec.flag(),
            0,
            &[self.seq, method.len() as u32],
            &[method.as_bytes(), arg],
        )
        .unwrap();
        self.send_raw(&frame).await;
        let answer = self.answer().await;
        assert_eq!(answer.seq, self.seq);
        assert_eq!(answer.method, method);
        answer
    }

    async fn call(&mut self, method: &str, arg: Value) -> Answer {
        self.call_with(Codec::Json, method, &serde_json::to_vec(&arg).unwrap())
            .await
    }

    async fn msgpack(&mut self, method: &str, arg: Value) -> Value {
        let arg = rmp_serde::to_vec_named(&arg).unwrap();
        let answer = self.call_with(Codec::Msgpack, method, &arg).await;
        assert_eq!(answer.flags, flags::CODEC_MSGPACK, "{answer:?}");
        rmp_serde::from_slice(&answer.body).unwrap()
    }
}

#[test]
fn every_request_vector_decodes() {
    for (name, bytes) in vectors() {
        let (frame, used) = decode(&bytes, u32::MAX).unwrap().unwrap();
        assert_eq!(used, bytes.len(), "{name}");
        let header = used - frame.payload.len();
        let payload = bytes::Bytes::copy_from_slice(&bytes[header..]);
        let request = Request::parse(frame.flags, frame.options.as_slice(), payload).unwrap();
        let method = request.method_name();
        assert!(
            name.contains(&method.to_lowercase().replace('.', "_")),
            "{name}: {method}"
        );
        if !name.starts_with("rpc_request_") {
            continue;
        }
        let codec = request.codec.expect("JSON or msgpack");
        let arg: Value = codec.decode(&request.argument).unwrap();
        let want = match method.as_str() {
            "tcp.Close" => json!(VECTOR_UUID),
            "resetter.Reset" if name.ends_with("unknown_json") => json!("http"),
            "resetter.Reset" | "informer.Workers" => json!("tcp"),
            "informer.List" | "rpc.Version" => json!(true),
            other => panic!("{name}: unexpected method {other}"),
        };
        assert_eq!(arg, want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_client_frames_get_byte_identical_answers() {
    let v = vectors();
    let mut h = Harness::rust_rpc(ONE, POOL).await;
    let mut rpc = Rpc::connect(&h).await;
    // An unknown uuid answers true, in the request's codec, exactly as RoadRunner does.
    for codec in ["json", "msgpack"] {
        rpc.send_raw(&v[&format!("rpc_request_tcp_close_{codec}")])
            .await;
        let mut want = v[&format!("rpc_response_tcp_close_{codec}")].clone();
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(HANG, rpc.stream.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hex::encode(&got), hex::encode(&want), "tcp.Close {codec}");
        want.clear();
    }
    // rpc.Version: same framing, Pier's version.
    rpc.send_raw(&v["rpc_request_rpc_version_json"]).await;
    let answer = rpc.answer().await;
    assert_eq!((answer.seq, answer.method.as_str()), (7, "rpc.Version"));
    assert_eq!(answer.json(), json!(env!("CARGO_PKG_VERSION")));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_close_from_raw_frames_closes_and_close_event_follows() {
    let v = vectors();
    let mut h = Harness::rust_rpc(ONE, POOL).await;
    let mut client = h.connect("s").await;
    let (_, _, uuid) = client.hello().await;
    let mut rpc = Rpc::connect(&h).await;
    // The stock client's frame with this connection's uuid in place of the captured one (same
    // length, so the header stays valid once its CRC is recomputed by re-encoding).
    let (frame, _) = decode(&v["rpc_request_tcp_close_json"], u32::MAX)
        .unwrap()
        .unwrap();
    let payload = String::from_utf8(frame.payload.to_vec())
        .unwrap()
        .replace(VECTOR_UUID, &uuid);
    let mut request = Vec::new();
    encode(
        &mut request,
        frame.flags,
        0,
        frame.options.as_slice(),
        &[payload.as_bytes()],
    )
    .unwrap();
    rpc.send_raw(&request).await;
    let answer = rpc.answer().await;
    assert_eq!(answer.body, b"true");
    assert!(client.rest().await.is_empty(), "the connection is closed");
    wait_for(|| h.log("closes.log").iter().any(|l| l.starts_with(&uuid))).await;
    // Closed already, and the RoadRunner v6 beta form: still true.
    assert_eq!(rpc.call("tcp.Close", json!(uuid)).await.json(), json!(true));
    assert_eq!(
        rpc.call("tcp.Close", json!({ "uuid": uuid })).await.json(),
        json!(true)
    );
    assert_eq!(h.log("closes.log").len(), 1, "CLOSE exactly once");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pier_methods_in_json_and_msgpack() {
    let servers = "    a:\n      addr: 127.0.0.1:0\n    b:\n      addr: 127.0.0.1:0\n";
    let mut h = Harness::rust_rpc(servers, POOL).await;
    let mut a1 = h.connect("a").await;
    let (_, _, u1) = a1.hello().await;
    let mut a2 = h.connect("a").await;
    let (_, _, u2) = a2.hello().await;
    let mut b1 = h.connect("b").await;
    let (_, _, u3) = b1.hello().await;
    let mut rpc = Rpc::connect(&h).await;

    assert_eq!(rpc.call("pier.Count", json!({})).await.json(), json!(3));
    assert_eq!(
        rpc.call("pier.Count", json!({"server": "a"})).await.json(),
        json!(2)
    );
    // Send: text, then bytes that are not UTF-8 through data_b64 (standard base64).
    let sent = rpc
        .call("pier.Send", json!({"uuid": u1, "data": "hi\n"}))
        .await;
    assert_eq!(sent.json(), json!(true));
    assert_eq!(a1.line().await.unwrap(), "hi");
    let sent = rpc
        .call("pier.Send", json!({"uuid": u1, "data_b64": "/wAK"}))
        .await;
    assert_eq!(sent.json(), json!(true));
    let mut raw = [0u8; 3];
    tokio::io::AsyncReadExt::read_exact(&mut a1.reader, &mut raw)
        .await
        .unwrap();
    assert_eq!(raw, [0xff, 0x00, b'\n']);
    let unknown = json!({"uuid": "00000000-0000-4000-8000-000000000000", "data": "x"});
    assert_eq!(rpc.call("pier.Send", unknown).await.json(), json!(false));

    // Groups: join, list, broadcast to a group with an exception, leave.
    for (u, g) in [(&u1, "room"), (&u2, "room"), (&u3, "room"), (&u1, "other")] {
        let joined = rpc.call("pier.Join", json!({"uuid": u, "group": g})).await;
        assert_eq!(joined.json(), json!(true));
    }
    assert_eq!(
        rpc.call("pier.Groups", json!({})).await.json(),
        json!([{"group": "other", "members": 1}, {"group": "room", "members": 3}])
    );
    assert_eq!(
        rpc.call("pier.Groups", json!({"server": "b"})).await.json(),
        json!([{"group": "room", "members": 1}])
    );
    let n = rpc
        .call(
            "pier.Broadcast",
            json!({"data": "to room\n", "group": "room", "except": [u2]}),
        )
        .await;
    assert_eq!(n.json(), json!(2));
    assert_eq!(a1.line().await.unwrap(), "to room");
    assert_eq!(b1.line().await.unwrap(), "to room");
    let n = rpc
        .call(
            "pier.Broadcast",
            json!({"data": "room of a\n", "group": "room", "server": "a"}),
        )
        .await;
    assert_eq!(n.json(), json!(2));
    assert_eq!(a1.line().await.unwrap(), "room of a");
    assert_eq!(a2.line().await.unwrap(), "room of a");
    let n = rpc
        .call(
            "pier.Broadcast",
            json!({"data": "all of b\n", "server": "b"}),
        )
        .await;
    assert_eq!(n.json(), json!(1));
    assert_eq!(b1.line().await.unwrap(), "all of b");
    let n = rpc.call("pier.Broadcast", json!({"data": "all\n"})).await;
    assert_eq!(n.json(), json!(3));
    for c in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(c.line().await.unwrap(), "all");
    }
    // The clients still talk to their workers, in between pushes.
    assert_eq!(a2.ask("ping\r\n").await, "a:ping");

    let info = rpc.call("pier.Info", json!({"uuid": u1})).await.json();
    assert_eq!(info["uuid"], json!(u1));
    assert_eq!(info["server"], json!("a"));
    assert_eq!(info["remote_addr"], json!(a1.local.to_string()));
    assert_eq!(info["groups"], json!(["other", "room"]));
    assert!(info["connected_at"].as_f64().unwrap() > 1.7e9);
    assert!(info["bytes_out"].as_u64().unwrap() > 20);
    let info2 = rpc.call("pier.Info", json!({"uuid": u2})).await.json();
    assert_eq!(info2["bytes_in"], json!(6), "ping\\r\\n");
    let gone = json!({"uuid": "00000000-0000-4000-8000-000000000000"});
    assert_eq!(rpc.call("pier.Info", gone).await.json(), Value::Null);

    let page = rpc
        .call("pier.List", json!({"group": "room", "limit": 2}))
        .await
        .json();
    assert_eq!(page["total"], json!(3));
    let listed: Vec<&str> = page["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [u1.as_str(), u2.as_str()], "by connect time");
    let page = rpc
        .call("pier.List", json!({"group": "room", "offset": 2}))
        .await
        .json();
    assert_eq!(page["connections"][0]["uuid"], json!(u3));
    let too_many = rpc.call("pier.List", json!({"limit": 1001})).await;
    assert!(too_many.error().contains("limit 1001"), "{too_many:?}");

    assert_eq!(
        rpc.call("pier.Leave", json!({"uuid": u1, "group": "room"}))
            .await
            .json(),
        json!(true)
    );
    assert_eq!(
        rpc.call("pier.Count", json!({"group": "room"}))
            .await
            .json(),
        json!(2)
    );
    // Joining a group twice, or leaving one it is not in, is fine and changes nothing; a group
    // goes with its last member; the 65th group of a connection is refused.
    for (method, u, g) in [
        ("pier.Join", &u2, "room"),
        ("pier.Leave", &u1, "room"),
        ("pier.Leave", &u1, "other"),
    ] {
        let answer = rpc.call(method, json!({"uuid": u, "group": g})).await;
        assert_eq!(answer.json(), json!(true), "{method} {g}");
    }
    assert_eq!(
        rpc.call("pier.Groups", json!({})).await.json(),
        json!([{"group": "room", "members": 2}])
    );
    for i in 1..64 {
        let joined = rpc
            .call("pier.Join", json!({"uuid": u3, "group": format!("g{i}")}))
            .await;
        assert_eq!(joined.json(), json!(true), "group {i} of 64");
    }
    let refused = rpc
        .call("pier.Join", json!({"uuid": u3, "group": "g64"}))
        .await;
    assert!(
        refused.error().contains("already in 64 groups"),
        "{refused:?}"
    );
    assert_eq!(
        rpc.call("pier.Count", json!({"group": "g64"})).await.json(),
        json!(0)
    );
    for i in 1..64 {
        let left = rpc
            .call("pier.Leave", json!({"uuid": u3, "group": format!("g{i}")}))
            .await;
        assert_eq!(left.json(), json!(true), "group {i}");
    }
    assert_eq!(
        rpc.call("pier.Groups", json!({})).await.json(),
        json!([{"group": "room", "members": 2}])
    );

    // msgpack: the same methods, maps with field names, binary data as bin.
    let mut mp = Rpc::connect(&h).await;
    assert_eq!(
        mp.msgpack("pier.Count", json!({"server": "b"})).await,
        json!(1)
    );
    let bin = rmp_serde::to_vec_named(&BinSend {
        uuid: u3.clone(),
        data: serde_bytes::ByteBuf::from(b"bin\xff\n".to_vec()),
    })
    .unwrap();
    let answer = mp.call_with(Codec::Msgpack, "pier.Send", &bin).await;
    assert_eq!(answer.body, [0xc3], "msgpack true");
    let mut raw = [0u8; 5];
    tokio::io::AsyncReadExt::read_exact(&mut b1.reader, &mut raw)
        .await
        .unwrap();
    assert_eq!(&raw, b"bin\xff\n");
    let info = mp.msgpack("pier.Info", json!({"uuid": u3})).await;
    assert_eq!(info["server"], json!("b"));
    assert_eq!(info["groups"], json!(["room"]));

    // pier.Close: true for a live connection, which gets its CLOSE; false once it is gone.
    assert_eq!(
        rpc.call("pier.Close", json!({"uuid": u2})).await.json(),
        json!(true)
    );
    assert!(a2.rest().await.is_empty());
    wait_for(|| h.log("closes.log").iter().any(|l| l.starts_with(&u2))).await;
    assert_eq!(
        rpc.call("pier.Close", json!({"uuid": u2})).await.json(),
        json!(false)
    );
    assert_eq!(
        rpc.call("pier.Count", json!({"group": "room"}))
            .await
            .json(),
        json!(1),
        "membership dies with the connection"
    );
    h.shutdown().await;
}

#[derive(serde::Serialize)]
struct BinSend {
    uuid: String,
    data: serde_bytes::ByteBuf,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rpc_input_costs_only_its_own_connection() {
    let mut h = Harness::rust_rpc(ONE, POOL).await;
    let mut client = h.connect("s").await;
    let (_, _, uuid) = client.hello().await;
    let mut good = Rpc::connect(&h).await;

    // Error answers; the connection goes on.
    let mut rpc = Rpc::connect(&h).await;
    let unknown = rpc.call("tcp.Nope", json!(true)).await;
    assert_eq!(unknown.error(), "rpc: can't find method tcp.Nope");
    assert_eq!(unknown.flags, flags::CODEC_JSON | flags::ERROR);
    let wrong_type = rpc.call("pier.Send", json!({"uuid": 5, "data": "x"})).await;
    // What failed, then why (the decoder's own words), once each.
    assert!(
        wrong_type
            .error()
            .starts_with("could not decode the JSON argument: invalid type: integer `5`")
            && wrong_type.error().matches("invalid type").count() == 1,
        "{wrong_type:?}"
    );
    let both = rpc
        .call(
            "pier.Send",
            json!({"uuid": uuid, "data": "x", "data_b64": "eA=="}),
        )
        .await;
    assert!(both.error().contains("exactly one of data and data_b64"));
    let not_json = rpc.call_with(Codec::Json, "pier.Count", b"{nope").await;
    assert!(not_json.error().contains("JSON"), "{not_json:?}");
    let long_group = "g".repeat(129);
    let bad_group = rpc
        .call("pier.Join", json!({"uuid": uuid, "group": long_group}))
        .await;
    assert!(bad_group.error().contains("1..=128 bytes"), "{bad_group:?}");
    let bad_leave = rpc
        .call("pier.Leave", json!({"uuid": uuid, "group": ""}))
        .await;
    assert!(bad_leave.error().contains("1..=128 bytes"), "{bad_leave:?}");
    // A codec Pier does not speak (gob, as the Go `rr` CLI uses): an error answer.
    let mut gob = Vec::new();
    encode(
        &mut gob,
        flags::CODEC_GOB,
        0,
        &[9, 9],
        &[b"tcp.Close", b"\x01"],
    )
    .unwrap();
    rpc.send_raw(&gob).await;
    let answer = rpc.answer().await;
    assert!(answer.error().contains("not supported"), "{answer:?}");
    assert_eq!(rpc.call("pier.Count", json!({})).await.json(), json!(1));

    // Connection-ending input: garbage, bad CRC, oversized length, wrong options. Each closes
    // only its own connection.
    let mut valid = Vec::new();
    encode(
        &mut valid,
        flags::CODEC_JSON,
        0,
        &[1, 9],
        &[b"tcp.Closetrue"],
    )
    .unwrap();
    let mut bad_crc = valid.clone();
    bad_crc[6] ^= 0xff;
    let mut huge = Vec::new();
    encode(&mut huge, flags::CODEC_JSON, 0, &[1, 9], &[b""]).unwrap();
    huge[2..6].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let crc = crc32(&huge[..6]);
    huge[6..10].copy_from_slice(&crc.to_le_bytes());
    let mut one_option = Vec::new();
    encode(&mut one_option, flags::CODEC_JSON, 0, &[1], &[b"tcp.Close"]).unwrap();
    let cases: [(&str, Vec<u8>); 5] = [
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("zeros", vec![0u8; 64]),
        ("bad CRC", bad_crc),
        ("oversized length", huge),
        ("one option", one_option),
    ];
    for (what, bytes) in cases {
        let mut bad = Rpc::connect(&h).await;
        bad.send_raw(&bytes).await;
        assert!(
            bad.eof().await.is_empty(),
            "{what}: closed without an answer"
        );
        // Everyone else is fine.
        assert_eq!(
            good.call("pier.Count", json!({})).await.json(),
            json!(1),
            "{what}"
        );
    }
    // A client that leaves in the middle of a frame.
    let mut partial = Rpc::connect(&h).await;
    partial.send_raw(&valid[..7]).await;
    drop(partial);
    assert_eq!(client.ask("still\r\n").await, "s:still");
    assert_eq!(
        good.call("pier.Send", json!({"uuid": uuid, "data": "ok\n"}))
            .await
            .json(),
        json!(true)
    );
    assert_eq!(client.line().await.unwrap(), "ok");
    h.shutdown().await;
}

fn crc32(bytes: &[u8]) -> u32 {
    // Bitwise CRC32-IEEE (the header checksum), so the test does not trust the codec it checks.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_rpc_answers_the_stock_client_and_goes_away_at_shutdown() {
    let v = vectors();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("rr.sock");
    // A stale socket file from an earlier run (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut text = support::yaml(dir.path(), &[&support::test_worker()], ONE, POOL, "");
    text.push_str(&format!("rpc:\n  listen: unix://{}\n", socket.display()));
    let mut h = Harness::start(dir, &text).await;
    assert_eq!(
        h.rpc.as_deref(),
        Some(format!("unix://{}", socket.display()).as_str())
    );
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    stream
        .write_all(&v["rpc_request_tcp_close_json"])
        .await
        .unwrap();
    let want = &v["rpc_response_tcp_close_json"];
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(HANG, stream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hex::encode(&got), hex::encode(want));
    drop(stream);
    h.shutdown().await;
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}
