//! Server push from inside a worker (feature `push`): the commands `TcpWorker::send`, `broadcast`,
//! `join`, `leave` and `disconnect` send to the server during a request, before its answer
//! (PROTOCOL.md, "Pier extensions"). This module checks their arguments and encodes them; the
//! session decides when they may go out.

use pier_protocol::frame::{self, flags, EncodeError};
use serde::Serialize;

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

/// One push command, its arguments checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// Queue `data` on connection `uuid`.
    Send {
        /// The target connection.
        uuid: &'a str,
        /// The bytes to write.
        data: &'a [u8],
    },
    /// Close connection `uuid` (`disconnect()`).
    Close {
        /// The target connection.
        uuid: &'a str,
    },
    /// Add connection `uuid` to `group`.
    Join {
        /// The target connection.
        uuid: &'a str,
        /// The group.
        group: &'a str,
    },
    /// Remove connection `uuid` from `group`.
    Leave {
        /// The target connection.
        uuid: &'a str,
        /// The group.
        group: &'a str,
    },
    /// Queue `data` on the members of `group`, or on every connection of `server`, minus `except`.
    Broadcast {
        /// Members of this group only.
        group: Option<&'a str>,
        /// Connections of this server only.
        server: Option<&'a str>,
        /// Uuids left out.
        except: Vec<&'a str>,
        /// The bytes to write.
        data: &'a [u8],
    },
}

/// The JSON header of a command frame; absent keys are left out, in this order (the pure-PHP
/// package writes the same bytes).
#[derive(Debug, Serialize)]
struct Header<'a> {
    /// The operation.
    op: &'static str,
    /// The target connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    uuid: Option<&'a str>,
    /// The group (join, leave, broadcast).
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    /// The server (broadcast).
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'a str>,
    /// Uuids left out (broadcast).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    except: &'a [&'a str],
}

impl Command<'_> {
    /// Appends the command frame: flags `CODEC_JSON`, one option = header length, payload =
    /// compact JSON header ‖ data.
    pub fn encode(&self, dst: &mut Vec<u8>) -> Result<(), EncodeError> {
        let none: &[&str] = &[];
        let (header, data) = match self {
            Command::Send { uuid, data } => (header("send", Some(uuid), None, None, none), *data),
            Command::Close { uuid } => (header("close", Some(uuid), None, None, none), &[][..]),
            Command::Join { uuid, group } => {
                (header("join", Some(uuid), Some(group), None, none), &[][..])
            }
            Command::Leave { uuid, group } => (
                header("leave", Some(uuid), Some(group), None, none),
                &[][..],
            ),
            Command::Broadcast {
                group,
                server,
                except,
                data,
            } => (header("broadcast", None, *group, *server, except), *data),
        };
        let json = serde_json::to_vec(&header).expect("a header of strings always serializes");
        let len = u32::try_from(json.len())
            .map_err(|_| EncodeError::PayloadTooLarge(json.len() as u64))?;
        frame::encode(dst, flags::CODEC_JSON, 0, &[len], &[&json, data])
    }
}

fn header<'a>(
    op: &'static str,
    uuid: Option<&'a str>,
    group: Option<&'a str>,
    server: Option<&'a str>,
    except: &'a [&'a str],
) -> Header<'a> {
    Header {
        op,
        uuid,
        group,
        server,
        except,
    }
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
    use pier_protocol::frame::decode;

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
                    uuid: "u-1",
                    data: b"\x00hi\xff",
                },
                br#"{"op":"send","uuid":"u-1"}"#,
            ),
            (
                Command::Close { uuid: "u-1" },
                br#"{"op":"close","uuid":"u-1"}"#,
            ),
            (
                Command::Join {
                    uuid: "u-1",
                    group: "room/\u{e9}\"",
                },
                "{\"op\":\"join\",\"uuid\":\"u-1\",\"group\":\"room/\u{e9}\\\"\"}".as_bytes(),
            ),
            (
                Command::Leave {
                    uuid: "u-1",
                    group: "g",
                },
                br#"{"op":"leave","uuid":"u-1","group":"g"}"#,
            ),
            (
                Command::Broadcast {
                    group: None,
                    server: Some("chat"),
                    except: vec!["a", "b"],
                    data: b"x",
                },
                br#"{"op":"broadcast","server":"chat","except":["a","b"]}"#,
            ),
            (
                Command::Broadcast {
                    group: Some("g"),
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
            uuid: "a\u{1}\n\u{2028}/",
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
