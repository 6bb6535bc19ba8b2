//! The TCP plugin's messages: events to a worker, replies from it. See "TCP events" and
//! "TCP replies" in `PROTOCOL.md`.

use std::borrow::Cow;

use crate::frame::{begin_header, encode, finish_header, EncodeError, Frame};
use crate::message::MessageError;

/// What happened on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A client connected; first event of every connection.
    Connected,
    /// One framed packet arrived (the body ends with the delimiter).
    Data,
    /// The connection is gone; last event of every connection.
    Close,
    /// A name this codec does not know (only ever seen by a worker talking to a newer server).
    Unknown,
}

impl EventKind {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connected => "CONNECTED",
            EventKind::Data => "DATA",
            EventKind::Close => "CLOSE",
            EventKind::Unknown => "UNKNOWN",
        }
    }

    /// The kind named `name`; [`EventKind::Unknown`] for anything else.
    pub fn from_name(name: &str) -> Self {
        match name {
            "CONNECTED" => EventKind::Connected,
            "DATA" => EventKind::Data,
            "CLOSE" => EventKind::Close,
            _ => EventKind::Unknown,
        }
    }
}

/// A TCP event: what the server sends a worker for each connection event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEvent<'a> {
    /// The client's address, `ip:port` (`[v6]:port` for IPv6).
    pub remote_addr: Cow<'a, str>,
    /// The name of the server (the key under `tcp.servers`).
    pub server: Cow<'a, str>,
    /// The connection's UUID v4, the same for all its events.
    pub uuid: Cow<'a, str>,
    /// What happened.
    pub event: EventKind,
    /// The packet for `DATA` (delimiter included); empty otherwise.
    pub body: &'a [u8],
}

/// The JSON context as it is read; unknown keys are ignored so newer servers stay readable.
#[derive(serde::Deserialize)]
struct ContextIn<'a> {
    #[serde(borrow, default)]
    remote_addr: Cow<'a, str>,
    #[serde(borrow, default)]
    server: Cow<'a, str>,
    #[serde(borrow, default)]
    uuid: Cow<'a, str>,
    #[serde(borrow, default)]
    event: Cow<'a, str>,
}

/// Splits a payload into (context, body) at option 0; shared by events and replies.
pub(crate) fn split_context<'a>(frame: &Frame<'a>) -> Result<(&'a [u8], &'a [u8]), MessageError> {
    let len = frame
        .options
        .get(0)
        .ok_or(MessageError::MissingContextLength)? as usize;
    if len > frame.payload.len() {
        return Err(MessageError::ContextOutOfBounds {
            context: len,
            payload: frame.payload.len(),
        });
    }
    Ok(frame.payload.split_at(len))
}

impl<'a> TcpEvent<'a> {
    /// Reads an event from a (non-control) frame the server sent.
    pub fn decode(frame: &Frame<'a>) -> Result<Self, MessageError> {
        let (context, body) = split_context(frame)?;
        let ctx: ContextIn<'a> =
            serde_json::from_slice(context).map_err(MessageError::ContextJson)?;
        Ok(TcpEvent {
            remote_addr: ctx.remote_addr,
            server: ctx.server,
            uuid: ctx.uuid,
            event: EventKind::from_name(&ctx.event),
            body,
        })
    }

    /// Appends this event as one frame.
    pub fn encode(&self, dst: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_event(
            dst,
            &self.remote_addr,
            &self.server,
            &self.uuid,
            self.event,
            self.body,
        )
    }
}

/// Appends an event frame, writing the JSON context straight into `dst` (no temporary buffer).
pub fn encode_event(
    dst: &mut Vec<u8>,
    remote_addr: &str,
    server: &str,
    uuid: &str,
    event: EventKind,
    body: &[u8],
) -> Result<(), EncodeError> {
    let start = begin_header(dst, 0, &[0]);
    let context_start = dst.len();
    dst.extend_from_slice(br#"{"remote_addr":"#);
    push_json_string(dst, remote_addr);
    dst.extend_from_slice(br#","server":"#);
    push_json_string(dst, server);
    dst.extend_from_slice(br#","uuid":"#);
    push_json_string(dst, uuid);
    dst.extend_from_slice(br#","event":""#);
    dst.extend_from_slice(event.as_str().as_bytes());
    dst.extend_from_slice(b"\"}");
    let context_len = dst.len() - context_start;
    dst.extend_from_slice(body);
    let context_len =
        u32::try_from(context_len).map_err(|_| EncodeError::PayloadTooLarge(context_len as u64))?;
    finish_header(dst, start, &[context_len])
}

/// Writes `s` as a JSON string the way Go's `encoding/json` does (RoadRunner's encoder), so
/// contexts are byte-identical to RoadRunner's: `<`, `>`, `&`, U+2028 and U+2029 escaped too.
fn push_json_string(dst: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    dst.push(b'"');
    let mut plain_from = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&[u8]> = match c {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            '\u{2028}' => Some(b"\\u2028"),
            '\u{2029}' => Some(b"\\u2029"),
            c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' => Some(b""),
            _ => None,
        };
        let Some(escape) = escape else { continue };
        dst.extend_from_slice(&s.as_bytes()[plain_from..i]);
        if escape.is_empty() {
            let b = c as u8;
            dst.extend_from_slice(b"\\u00");
            dst.push(HEX[usize::from(b >> 4)]);
            dst.push(HEX[usize::from(b & 0xf)]);
        } else {
            dst.extend_from_slice(escape);
        }
        plain_from = i + c.len_utf8();
    }
    dst.extend_from_slice(&s.as_bytes()[plain_from..]);
    dst.push(b'"');
}

/// What a worker wants done with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind<'a> {
    /// `WRITE`: write the body, keep reading.
    Write,
    /// `CONTINUE`: write nothing, keep reading.
    Continue,
    /// `WRITECLOSE`: write the body, then close.
    WriteClose,
    /// `CLOSE`: close without writing.
    Close,
    /// Any other context: the server treats it as `CLOSE` (RoadRunner does the same).
    Unknown(&'a [u8]),
}

impl<'a> ReplyKind<'a> {
    /// The context bytes on the wire.
    pub fn as_bytes(self) -> &'a [u8] {
        match self {
            ReplyKind::Write => b"WRITE",
            ReplyKind::Continue => b"CONTINUE",
            ReplyKind::WriteClose => b"WRITECLOSE",
            ReplyKind::Close => b"CLOSE",
            ReplyKind::Unknown(other) => other,
        }
    }

    /// The kind whose context is exactly `context`.
    pub fn from_bytes(context: &'a [u8]) -> Self {
        match context {
            b"WRITE" => ReplyKind::Write,
            b"CONTINUE" => ReplyKind::Continue,
            b"WRITECLOSE" => ReplyKind::WriteClose,
            b"CLOSE" => ReplyKind::Close,
            other => ReplyKind::Unknown(other),
        }
    }
}

/// A worker's answer to a TCP event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpReply<'a> {
    /// What to do with the connection.
    pub kind: ReplyKind<'a>,
    /// Bytes to write for `WRITE` and `WRITECLOSE`.
    pub body: &'a [u8],
}

impl<'a> TcpReply<'a> {
    /// Reads a reply from a (non-control, non-error) frame a worker sent.
    pub fn decode(frame: &Frame<'a>) -> Result<Self, MessageError> {
        let (context, body) = split_context(frame)?;
        Ok(TcpReply {
            kind: ReplyKind::from_bytes(context),
            body,
        })
    }

    /// Appends this reply as one frame.
    pub fn encode(&self, dst: &mut Vec<u8>) -> Result<(), EncodeError> {
        let context = self.kind.as_bytes();
        encode(dst, 0, 0, &[context.len() as u32], &[context, self.body])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode;

    #[test]
    fn event_round_trip_with_escaping() {
        let event = TcpEvent {
            remote_addr: "[::1]:5000".into(),
            server: "we\"ird<\\>&\u{1}\u{2028}é".into(),
            uuid: "u".into(),
            event: EventKind::Data,
            body: b"\x00\xff\r\n",
        };
        let mut buf = Vec::new();
        event.encode(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[16..]);
        assert!(
            text.contains(r#""server":"we\"ird\u003c\\\u003e\u0026\u0001\u2028é""#),
            "{text}"
        );
        let (frame, used) = decode(&buf, u32::MAX).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(TcpEvent::decode(&frame).unwrap(), event);
    }

    #[test]
    fn unknown_event_and_reply_names_are_values_not_errors() {
        let mut buf = Vec::new();
        encode(&mut buf, 0, 0, &[13], &[br#"{"event":"X"}"#]).unwrap();
        let (frame, _) = decode(&buf, 1024).unwrap().unwrap();
        let event = TcpEvent::decode(&frame).unwrap();
        assert_eq!(event.event, EventKind::Unknown);
        assert_eq!(event.server, "");

        let reply = TcpReply {
            kind: ReplyKind::Unknown(b"SHOUT"),
            body: b"hi",
        };
        let mut buf = Vec::new();
        reply.encode(&mut buf).unwrap();
        let (frame, _) = decode(&buf, 1024).unwrap().unwrap();
        assert_eq!(TcpReply::decode(&frame).unwrap(), reply);
    }

    #[test]
    fn bad_context_lengths_are_errors() {
        let mut buf = Vec::new();
        encode(&mut buf, 0, 0, &[], &[b"WRITE"]).unwrap();
        let (frame, _) = decode(&buf, 1024).unwrap().unwrap();
        assert!(matches!(
            TcpReply::decode(&frame),
            Err(MessageError::MissingContextLength)
        ));

        let mut buf = Vec::new();
        encode(&mut buf, 0, 0, &[6], &[b"WRITE"]).unwrap();
        let (frame, _) = decode(&buf, 1024).unwrap().unwrap();
        assert!(matches!(
            TcpReply::decode(&frame),
            Err(MessageError::ContextOutOfBounds {
                context: 6,
                payload: 5
            })
        ));
        assert!(matches!(
            TcpEvent::decode(&frame),
            Err(MessageError::ContextOutOfBounds { .. })
        ));
    }
}
