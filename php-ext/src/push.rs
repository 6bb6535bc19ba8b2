//! Server push from inside a worker (feature `push`): the commands `TcpWorker::send`, `broadcast`,
//! `join`, `leave` and `disconnect` send to the server during a request, before its answer
//! (PROTOCOL.md, "Pier extensions → Commands"). This module checks their arguments; the frames
//! are `pier_protocol::command`'s and the session decides when they may go out.

pub use pier_protocol::command::Command;

/// The longest group name the server accepts, in bytes.
pub const MAX_GROUP: usize = 128;

/// Why a push command was refused before anything was sent (the worker script's mistake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// A uuid argument is empty or not UTF-8.
    #[error("could not {0}: a uuid must be a non-empty UTF-8 string")]
    Uuid(&'static str),
    /// A group name is empty, longer than [`MAX_GROUP`] bytes, or not UTF-8.
    #[error(
        "could not {what}: a group name must be 1 to {MAX_GROUP} bytes of UTF-8 (got {len} bytes)"
    )]
    Group {
        /// The method.
        what: &'static str,
        /// The length given.
        len: usize,
    },
    /// `$except` holds something that is not a string.
    #[error("could not broadcast: $except must hold uuid strings only")]
    Except,
}

/// A uuid argument: non-empty UTF-8.
pub fn uuid<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a str, PushError> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.is_empty() => Ok(s),
        _ => Err(PushError::Uuid(what)),
    }
}

/// A group name argument: 1..=[`MAX_GROUP`] bytes of UTF-8.
pub fn group<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a str, PushError> {
    let bad = PushError::Group {
        what,
        len: bytes.len(),
    };
    if bytes.is_empty() || bytes.len() > MAX_GROUP {
        return Err(bad);
    }
    std::str::from_utf8(bytes).map_err(|_| bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_protocol::frame::{decode, flags};
    use std::borrow::Cow::Borrowed;

    fn payload(cmd: &Command<'_>) -> (u8, Vec<u32>, Vec<u8>) {
        let mut out = Vec::new();
        cmd.encode(&mut out).unwrap();
        let (f, used) = decode(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(used, out.len());
        (f.flags, f.options.as_slice().to_vec(), f.payload.to_vec())
    }

    #[test]
    fn each_command_has_its_header_then_data() {
        let cases: Vec<(Command<'_>, &[u8])> = vec![
            (
                Command::Send {
                    uuid: Borrowed("u-1"),
                    data: b"\x00hi\xff",
                },
                br#"{"op":"send","uuid":"u-1"}"#,
            ),
            (
                Command::Close {
                    uuid: Borrowed("u-1"),
                },
                br#"{"op":"close","uuid":"u-1"}"#,
            ),
            (
                Command::Join {
                    uuid: Borrowed("u-1"),
                    group: Borrowed("room/\u{e9}\""),
                },
                "{\"op\":\"join\",\"uuid\":\"u-1\",\"group\":\"room/\u{e9}\\\"\"}".as_bytes(),
            ),
            (
                Command::Leave {
                    uuid: Borrowed("u-1"),
                    group: Borrowed("g"),
                },
                br#"{"op":"leave","uuid":"u-1","group":"g"}"#,
            ),
            (
                Command::Broadcast {
                    group: None,
                    server: Some(Borrowed("chat")),
                    except: vec![Borrowed("a"), Borrowed("b")],
                    data: b"x",
                },
                br#"{"op":"broadcast","server":"chat","except":["a","b"]}"#,
            ),
            (
                Command::Broadcast {
                    group: Some(Borrowed("g")),
                    server: None,
                    except: vec![],
                    data: b"x",
                },
                br#"{"op":"broadcast","group":"g"}"#,
            ),
        ];
        for (cmd, header) in cases {
            let (flags, options, payload) = payload(&cmd);
            assert_eq!(flags, flags::CODEC_JSON);
            assert_eq!(options, vec![header.len() as u32], "{cmd:?}");
            assert_eq!(&payload[..header.len()], header, "{cmd:?}");
            let data: &[u8] = match cmd {
                Command::Send { data, .. } | Command::Broadcast { data, .. } => data,
                _ => b"",
            };
            assert_eq!(&payload[header.len()..], data);
        }
    }

    #[test]
    fn control_characters_are_escaped_as_php_json_encode_does() {
        let (_, _, payload) = payload(&Command::Close {
            uuid: Borrowed("a\u{1}\n\u{2028}/"),
        });
        assert_eq!(
            payload,
            "{\"op\":\"close\",\"uuid\":\"a\\u0001\\n\u{2028}/\"}".as_bytes()
        );
    }

    #[test]
    fn arguments_are_checked() {
        assert_eq!(uuid("send", b"abc"), Ok("abc"));
        assert_eq!(uuid("send", b""), Err(PushError::Uuid("send")));
        assert_eq!(uuid("send", b"\xff"), Err(PushError::Uuid("send")));
        assert_eq!(group("join", b"g"), Ok("g"));
        assert_eq!(group("join", &[b'g'; 128]).map(str::len), Ok(128));
        assert_eq!(
            group("join", &[b'g'; 129]),
            Err(PushError::Group {
                what: "join",
                len: 129
            })
        );
        assert_eq!(
            group("leave", b"").unwrap_err().to_string(),
            "could not leave: a group name must be 1 to 128 bytes of UTF-8 (got 0 bytes)"
        );
        assert!(group("join", b"\xc3").is_err());
    }
}
