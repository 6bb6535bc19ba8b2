//! The framing cost per message, for `valgrind --tool=callgrind` (stable instruction counts on a
//! noisy machine, where the bench's CPU times are not): frames `count` packets of `size` payload
//! bytes, fed in 64 KiB reads as a socket would deliver them, with the delimiter codec (`\n`) or the
//! length-field codec (4-byte big-endian length).
//!
//! ```sh
//! cargo build --release -p pier-server --example framing_cost
//! for mode in delimiter length; do for n in 0 100000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/framing_cost $mode 32 $n 2>&1 | grep refs
//! done; done   # (Ir at 100000 − Ir at 0) / 100000 = instructions per message
//! ```

use bytes::BytesMut;
use pier_server::framing::{Endian, FrameCodec, Framing, LengthField, Strip};
use tokio_util::codec::Decoder;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(size), Some(count)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: framing_cost delimiter|length SIZE COUNT");
        std::process::exit(2);
    };
    let size: usize = size.parse().expect("SIZE is a number");
    let count: usize = count.parse().expect("COUNT is a number");
    let (framing, one) = match mode.as_str() {
        "delimiter" => {
            let mut one = vec![b'x'; size.saturating_sub(1)];
            one.push(b'\n');
            (Framing::Delimiter(b"\n".to_vec()), one)
        }
        "length" => {
            let mut one = (size as u32).to_be_bytes().to_vec();
            one.extend(vec![b'x'; size]);
            let field = LengthField {
                offset: 0,
                size: 4,
                endian: Endian::Big,
                adjustment: 0,
                strip: Strip::Bytes(0),
            };
            (Framing::LengthField(field), one)
        }
        other => panic!("unknown mode {other}"),
    };
    let stream = one.repeat(count);
    let mut codec = FrameCodec::new(&framing, 1 << 20);
    let mut buf = BytesMut::with_capacity(128 * 1024);
    let mut packets = 0usize;
    for chunk in stream.chunks(64 * 1024) {
        buf.extend_from_slice(chunk);
        while let Some(packet) = codec.decode(&mut buf).expect("valid frames") {
            packets += std::hint::black_box(packet).len().min(1);
        }
    }
    assert_eq!(packets, count);
}
