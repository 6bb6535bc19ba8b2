//! Pier command frames: requests a worker writes during an event, before its answer. See "Pier
//! extensions → Commands" in `PROTOCOL.md` for the framing, the ops and their semantics.
//!
//! Decoding borrows from the frame: strings are `Cow` only because JSON escapes force a copy.

use std::borrow::Cow;

use serde::Deserialize;

use crate::frame::{encode, flags, EncodeError, Frame};
use crate::message::MessageError;

/// Longest command header a receiver accepts; a longer one is the sender's fault.
pub const MAX_HEADER: usize = 64 * 1024;

/// One command, borrowed from its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `push`: queue `data` on connection `uuid`.
    Send {
        /// Target connection.
        uuid: Cow<'a, str>,
        /// Bytes to write.
        data: &'a [u8],
    },
    /// `push`: close connection `uuid`.
    Close {
        /// Target connection.
        uuid: Cow<'a, str>,
    },
    /// `push`: connection `uuid` joins `group`.
    Join {
        /// Target connection.
        uuid: Cow<'a, str>,
        /// Group name.
        group: Cow<'a, str>,
    },
    /// `push`: connection `uuid` leaves `group`.
    Leave {
        /// Target connection.
        uuid: Cow<'a, str>,
        /// Group name.
        group: Cow<'a, str>,
    },
    /// `push`: `data` to many connections.
    Broadcast {
        /// Only members of this group (`None`: no group filter).
        group: Option<Cow<'a, str>>,
        /// Only connections of this server (`None`: every server).
        server: Option<Cow<'a, str>>,
        /// Connections left out.
        except: Vec<Cow<'a, str>>,
        /// Bytes to write.
        data: &'a [u8],
    },
    /// `idle_timeout`: the idle timeout of the event's own connection, in milliseconds: `Some(0)`
    /// turns it off, `None` (JSON `null`) goes back to the server's `idle_timeout`.
    IdleTimeout {
        /// Milliseconds without bytes from the client before the connection is closed.
        ms: Option<u64>,
    },
    /// `starttls`: write this event's answer in plaintext, then start the TLS handshake (the
    /// server side) on the event's connection. No keys, no data.
    Starttls,
    /// An op this crate does not know (a newer worker, or a feature this server lacks). Kept whole
    /// so the receiver can log it.
    Unknown {
        /// The `op` value.
        op: Cow<'a, str>,
        /// The raw JSON header.
        header: &'a [u8],
    },
    /// A well-framed command whose header is not a JSON object with an `op`, or a known op without
    /// a key it needs: the worker's error, but only that command's (the frame itself was sound, so
    /// the relay is not out of step).
    Invalid {
        /// The raw header.
        header: &'a [u8],
        /// What was wrong.
        reason: String,
    },
}

/// Every key any op uses; each op checks the ones it needs. Unknown keys are ignored, so an op
/// can grow optional keys without breaking older receivers.
#[derive(Deserialize)]
struct Header<'a> {
    /// Which command.
    #[serde(borrow)]
    op: Cow<'a, str>,
    /// Target connection.
    #[serde(borrow, default)]
    uuid: Option<Cow<'a, str>>,
    /// Group name.
    #[serde(borrow, default)]
    group: Option<Cow<'a, str>>,
    /// Server name.
    #[serde(borrow, default)]
    server: Option<Cow<'a, str>>,
    /// Connections left out of a broadcast.
    #[serde(borrow, default)]
    except: Vec<Cow<'a, str>>,
    /// `idle_timeout`'s milliseconds: absent = `None`, `null` = `Some(None)`.
    #[serde(default, deserialize_with = "present")]
    ms: Option<Option<u64>>,
}

/// Tells a key given as `null` from a missing one.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

impl<'a> Command<'a> {
    /// Whether a (non-control, non-error) frame is a command frame rather than a TCP reply.
    pub fn is_command(frame: &Frame<'_>) -> bool {
        frame.has(flags::CODEC_JSON) && !frame.has(flags::CONTROL) && !frame.has(flags::ERROR)
    }

    /// Reads a command frame (see [`Command::is_command`]).
    pub fn decode(frame: &Frame<'a>) -> Result<Self, MessageError> {
        let header_len = frame
            .options
            .get(0)
            .ok_or(MessageError::MissingContextLength)? as usize;
        let payload = frame.payload;
        if header_len > payload.len() {
            return Err(MessageError::ContextOutOfBounds {
                context: header_len,
                payload: payload.len(),
            });
        }
        if header_len > MAX_HEADER {
            return Err(MessageError::CommandTooLarge(header_len));
        }
        let (raw, data) = payload.split_at(header_len);
        Ok(
            Self::from_parts(raw, data).unwrap_or_else(|reason| Command::Invalid {
                header: raw,
                reason,
            }),
        )
    }

    /// The command of a header and its data; `Err` says what is wrong with the header.
    fn from_parts(raw: &'a [u8], data: &'a [u8]) -> Result<Self, String> {
        let header: Header<'a> =
            serde_json::from_slice(raw).map_err(|e| format!("header is not a command: {e}"))?;
        let op = &header.op;
        let missing = |key: &str| format!("op {op:?} needs the key {key:?}");
        let command = match &**op {
            "send" => Command::Send {
                uuid: header.uuid.clone().ok_or_else(|| missing("uuid"))?,
                data,
            },
            "close" => Command::Close {
                uuid: header.uuid.clone().ok_or_else(|| missing("uuid"))?,
            },
            "join" | "leave" => {
                let uuid = header.uuid.clone().ok_or_else(|| missing("uuid"))?;
                let group = header.group.clone().ok_or_else(|| missing("group"))?;
                if op == "join" {
                    Command::Join { uuid, group }
                } else {
                    Command::Leave { uuid, group }
                }
            }
            "starttls" => Command::Starttls,
            "broadcast" => Command::Broadcast {
                group: header.group,
                server: header.server,
                except: header.except,
                data,
            },
            "idle_timeout" => Command::IdleTimeout {
                ms: header.ms.ok_or_else(|| missing("ms"))?,
            },
            _ => Command::Unknown {
                op: header.op,
                header: raw,
            },
        };
        Ok(command)
    }

    /// Appends this command as one frame.
    pub fn encode(&self, dst: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut header = String::with_capacity(96);
        let data: &[u8] = match self {
            Command::Send { uuid, data } => {
                push_head(&mut header, "send");
                push_key(&mut header, "uuid", uuid);
                data
            }
            Command::Close { uuid } => {
                push_head(&mut header, "close");
                push_key(&mut header, "uuid", uuid);
                b""
            }
            Command::Join { uuid, group } | Command::Leave { uuid, group } => {
                let op = if matches!(self, Command::Join { .. }) {
                    "join"
                } else {
                    "leave"
                };
                push_head(&mut header, op);
                push_key(&mut header, "uuid", uuid);
                push_key(&mut header, "group", group);
                b""
            }
            Command::Broadcast {
                group,
                server,
                except,
                data,
            } => {
                push_head(&mut header, "broadcast");
                if let Some(group) = group {
                    push_key(&mut header, "group", group);
                }
                if let Some(server) = server {
                    push_key(&mut header, "server", server);
                }
                if !except.is_empty() {
                    header.push_str(r#","except":["#);
                    for (i, uuid) in except.iter().enumerate() {
                        if i > 0 {
                            header.push(',');
                        }
                        push_json_string(&mut header, uuid);
                    }
                    header.push(']');
                }
                data
            }
            Command::IdleTimeout { ms } => {
                push_head(&mut header, "idle_timeout");
                match ms {
                    Some(ms) => header.push_str(&format!(r#","ms":{ms}"#)),
                    None => header.push_str(r#","ms":null"#),
                }
                b""
            }
            Command::Starttls => {
                push_head(&mut header, "starttls");
                b""
            }
            Command::Unknown { header: raw, .. } | Command::Invalid { header: raw, .. } => {
                return encode_raw(dst, raw, b"");
            }
        };
        header.push('}');
        encode_raw(dst, header.as_bytes(), data)
    }
}

/// Appends a command frame from an already encoded JSON header (`{"op":…,…}`) and its data. For
/// ops defined outside this module; the header must be one compact JSON object with an `op` key.
pub fn encode_raw(dst: &mut Vec<u8>, header: &[u8], data: &[u8]) -> Result<(), EncodeError> {
    let header_len = u32::try_from(header.len())
        .map_err(|_| EncodeError::PayloadTooLarge(header.len() as u64))?;
    encode(dst, flags::CODEC_JSON, 0, &[header_len], &[header, data])
}

fn push_head(out: &mut String, op: &str) {
    out.push_str(r#"{"op":"#);
    push_json_string(out, op);
}

fn push_key(out: &mut String, key: &str, value: &str) {
    out.push(',');
    push_json_string(out, key);
    out.push(':');
    push_json_string(out, value);
}

/// A JSON string literal (serde_json's escaping; infallible for `&str`).
fn push_json_string(out: &mut String, value: &str) {
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode;

    fn round_trip(command: &Command<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        command.encode(&mut buf).unwrap();
        let (frame, used) = decode(&buf, u32::MAX).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert!(Command::is_command(&frame));
        assert_eq!(&Command::decode(&frame).unwrap(), command);
        buf
    }

    #[test]
    fn every_op_round_trips() {
        round_trip(&Command::Send {
            uuid: "u-1".into(),
            data: b"\x00\xffhi\r\n",
        });
        round_trip(&Command::Close { uuid: "u-2".into() });
        round_trip(&Command::Join {
            uuid: "u-3".into(),
            group: "room \"1\" ü".into(),
        });
        round_trip(&Command::Leave {
            uuid: "u-3".into(),
            group: "r".into(),
        });
        round_trip(&Command::Broadcast {
            group: Some("g".into()),
            server: Some("chat".into()),
            except: vec!["a".into(), "b".into()],
            data: b"x",
        });
        round_trip(&Command::Broadcast {
            group: None,
            server: None,
            except: vec![],
            data: b"",
        });
        let idle = round_trip(&Command::IdleTimeout { ms: Some(90_000) });
        assert_eq!(&idle[16..], br#"{"op":"idle_timeout","ms":90000}"#);
        let default = round_trip(&Command::IdleTimeout { ms: None });
        assert_eq!(&default[16..], br#"{"op":"idle_timeout","ms":null}"#);
        round_trip(&Command::IdleTimeout { ms: Some(0) });
        let starttls = round_trip(&Command::Starttls);
        assert_eq!(&starttls[16..], br#"{"op":"starttls"}"#);
    }

    #[test]
    fn wire_bytes_are_the_documented_header() {
        let buf = round_trip(&Command::Send {
            uuid: "u".into(),
            data: b"hi",
        });
        assert_eq!(buf[1], flags::CODEC_JSON);
        let header = br#"{"op":"send","uuid":"u"}"#;
        assert_eq!(&buf[12..16], &(header.len() as u32).to_le_bytes());
        assert_eq!(&buf[16..16 + header.len()], header);
        assert_eq!(&buf[16 + header.len()..], b"hi");
    }

    #[test]
    fn unknown_op_is_kept_and_other_ops_can_be_framed() {
        let mut buf = Vec::new();
        encode_raw(&mut buf, br#"{"op":"later","x":1}"#, b"").unwrap();
        let (frame, _) = decode(&buf, u32::MAX).unwrap().unwrap();
        match Command::decode(&frame).unwrap() {
            Command::Unknown { op, header } => {
                assert_eq!(op, "later");
                assert_eq!(header, br#"{"op":"later","x":1}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn framing_errors_are_errors() {
        let cases: &[(&[u32], &[u8], &str)] = &[
            (&[], b"{}", "option 0"),
            (&[50], br#"{"op":"send"}"#, "exceeds payload"),
        ];
        for (options, payload, needle) in cases {
            let frame = Frame::new(flags::CODEC_JSON, options, payload).unwrap();
            let err = Command::decode(&frame).unwrap_err();
            let text = format!("{err}");
            assert!(text.contains(needle), "{payload:?}: {text}");
        }
        let big = vec![b' '; MAX_HEADER + 1];
        let frame = Frame::new(flags::CODEC_JSON, &[big.len() as u32], &big).unwrap();
        assert!(matches!(
            Command::decode(&frame),
            Err(MessageError::CommandTooLarge(_))
        ));
    }

    #[test]
    fn bad_headers_are_invalid_commands() {
        let cases: &[(&[u8], &str)] = &[
            (b"nope", "not a command"),
            (br#"{"x":1}"#, "not a command"),
            (br#"{"op":7}"#, "not a command"),
            (br#"{"op":"send"}"#, r#"op "send" needs the key "uuid""#),
            (br#"{"op":"close"}"#, r#""uuid""#),
            (
                br#"{"op":"join","uuid":"abcd"}"#,
                r#"op "join" needs the key "group""#,
            ),
            (br#"{"op":"leave","group":"g"}"#, r#""uuid""#),
            (
                br#"{"op":"idle_timeout"}"#,
                r#"op "idle_timeout" needs the key "ms""#,
            ),
            (br#"{"op":"idle_timeout","ms":-1}"#, "not a command"),
            (br#"{"op":"idle_timeout","ms":"5s"}"#, "not a command"),
        ];
        for (header, needle) in cases {
            let frame = Frame::new(flags::CODEC_JSON, &[header.len() as u32], header).unwrap();
            match Command::decode(&frame).unwrap() {
                Command::Invalid {
                    header: raw,
                    reason,
                } => {
                    assert_eq!(raw, *header);
                    assert!(reason.contains(needle), "{header:?}: {reason}");
                }
                other => panic!("{header:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn stock_replies_are_not_commands() {
        for flags_byte in [
            0,
            flags::CONTROL,
            flags::ERROR,
            flags::CONTROL | flags::CODEC_JSON,
        ] {
            let frame = Frame::new(flags_byte, &[5], b"WRITEhello").unwrap();
            assert!(!Command::is_command(&frame), "flags {flags_byte:#x}");
        }
    }
}
