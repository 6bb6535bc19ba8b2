//! The TCP plugin's messages: events to a worker, replies from it. See "TCP events" and
//! "TCP replies" in `PROTOCOL.md`.

use std::borrow::Cow;

use crate::frame::{
    begin_header, encode, finish_header, short_header, EncodeError, Frame, FrameView, HEADER_LEN,
};
use crate::message::MessageError;
use crate::tls::TlsFacts;

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
    /// The connection's state (Pier extension `state`): what a worker last stored with a reply;
    /// empty when none. An empty state is not sent, so the frame stays byte-identical to RoadRunner's.
    pub state: &'a [u8],
    /// The packet for `DATA` (delimiter included); empty otherwise.
    pub body: &'a [u8],
    /// What TLS negotiated (Pier extension `tls`); `None` on plaintext connections, whose context
    /// stays byte-identical to RoadRunner's. Boxed: most events have none.
    pub tls: Option<Box<TlsFacts<'a>>>,
}

/// The JSON context as it is read; unknown keys are ignored so newer servers stay readable.
#[derive(serde::Deserialize)]
struct ContextIn<'a> {
    /// The client's `ip:port`.
    #[serde(borrow, default)]
    remote_addr: Cow<'a, str>,
    /// The `tcp.servers` name that accepted the connection.
    #[serde(borrow, default)]
    server: Cow<'a, str>,
    /// The connection's uuid.
    #[serde(borrow, default)]
    uuid: Cow<'a, str>,
    /// `CONNECTED`, `DATA` or `CLOSE` (anything else is kept, as an unknown event).
    #[serde(borrow, default)]
    event: Cow<'a, str>,
    /// The TLS facts (Pier extension `tls`), absent on plaintext.
    #[serde(borrow, default)]
    tls: Option<Box<TlsFacts<'a>>>,
}

impl<'a> ContextIn<'a> {
    /// Reads the context the way Pier and RoadRunner write it (compact, keys in this order,
    /// strings without escapes) with a few prefix comparisons instead of a JSON parser: the JSON
    /// parse was the biggest cost of a worker's event. `None` for any other shape; serde_json then
    /// reads it (escapes, other key orders, whitespace, unknown keys) or reports the error.
    fn plain(context: &'a [u8]) -> Option<Self> {
        let rest = context.strip_prefix(br#"{"remote_addr":""#)?;
        let (remote_addr, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix(br#","server":""#)?;
        let (server, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix(br#","uuid":""#)?;
        let (uuid, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix(br#","event":""#)?;
        let (event, rest) = plain_string(rest)?;
        (rest == b"}").then_some(ContextIn {
            remote_addr: Cow::Borrowed(remote_addr),
            server: Cow::Borrowed(server),
            uuid: Cow::Borrowed(uuid),
            event: Cow::Borrowed(event),
            tls: None,
        })
    }
}

/// The text of a JSON string up to its closing quote and the bytes after that quote, when it has
/// no escape and no control character (those are left to serde_json, which rejects or unescapes
/// them).
fn plain_string(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    if bytes[end] != b'"' {
        return None;
    }
    let text = std::str::from_utf8(&bytes[..end]).ok()?;
    Some((text, &bytes[end + 1..]))
}

/// Whether the fast context reader agrees with serde_json on `context` (it either declines or
/// reads exactly what serde_json reads). For the fuzz target and tests.
#[doc(hidden)]
pub fn plain_context_agrees(context: &[u8]) -> bool {
    let Some(fast) = ContextIn::plain(context) else {
        return true;
    };
    let Ok(slow) = serde_json::from_slice::<ContextIn<'_>>(context) else {
        return false;
    };
    slow.tls.is_none()
        && (fast.remote_addr, fast.server, fast.uuid, fast.event)
            == (slow.remote_addr, slow.server, slow.uuid, slow.event)
}

/// The parts of a job payload: context ‖ state ‖ body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts<'a> {
    /// Option 0 bytes: the JSON context of an event, the reply kind of a reply.
    pub(crate) context: &'a [u8],
    /// Option 1 bytes when the frame has a second option (Pier's `state` extension), else `None`.
    pub(crate) state: Option<&'a [u8]>,
    /// Everything after context and state.
    pub(crate) body: &'a [u8],
}

/// Splits a payload at option 0 (context length) and, when present, option 1 (state length);
/// shared by events and replies. Options after the second are reserved and ignored.
pub(crate) fn split_parts<'a>(frame: &Frame<'a>) -> Result<Parts<'a>, MessageError> {
    split_payload(frame.payload, frame.options.get(0), frame.options.get(1))
}

/// [`split_parts`] of a frame read in place.
#[inline]
pub(crate) fn split_view<'a>(frame: &FrameView<'a>) -> Result<Parts<'a>, MessageError> {
    split_payload(frame.payload(), frame.option(0), frame.option(1))
}

/// Splits `payload` at `context_len` (option 0) and `state_len` (option 1), when present.
#[inline]
fn split_payload(
    payload: &[u8],
    context_len: Option<u32>,
    state_len: Option<u32>,
) -> Result<Parts<'_>, MessageError> {
    // A match, not `ok_or`: the error built eagerly was dropped for every frame.
    let Some(context_len) = context_len else {
        return Err(MessageError::MissingContextLength);
    };
    let context_len = context_len as usize;
    if context_len > payload.len() {
        return Err(MessageError::ContextOutOfBounds {
            context: context_len,
            payload: payload.len(),
        });
    }
    let (context, rest) = payload.split_at(context_len);
    let Some(state_len) = state_len else {
        return Ok(Parts {
            context,
            state: None,
            body: rest,
        });
    };
    let state_len = state_len as usize;
    if state_len > rest.len() {
        return Err(MessageError::StateOutOfBounds {
            context: context_len,
            state: state_len,
            payload: payload.len(),
        });
    }
    let (state, body) = rest.split_at(state_len);
    Ok(Parts {
        context,
        state: Some(state),
        body,
    })
}

impl<'a> TcpEvent<'a> {
    /// Reads an event from a (non-control) frame the server sent.
    pub fn decode(frame: &Frame<'a>) -> Result<Self, MessageError> {
        Self::from_parts(split_parts(frame)?)
    }

    /// The event whose payload was split into `parts`.
    pub(crate) fn from_parts(parts: Parts<'a>) -> Result<Self, MessageError> {
        let ctx = match ContextIn::plain(parts.context) {
            Some(ctx) => ctx,
            None => serde_json::from_slice(parts.context).map_err(MessageError::ContextJson)?,
        };
        Ok(TcpEvent {
            remote_addr: ctx.remote_addr,
            server: ctx.server,
            uuid: ctx.uuid,
            event: EventKind::from_name(&ctx.event),
            state: parts.state.unwrap_or_default(),
            body: parts.body,
            tls: ctx.tls,
        })
    }

    /// Appends this event as one frame (two options when `state` is non-empty).
    pub fn encode(&self, dst: &mut Vec<u8>) -> Result<(), EncodeError> {
        let tls = self
            .tls
            .as_ref()
            .map(|t| t.context_fragment())
            .unwrap_or_default();
        encode_event_with_context(
            dst,
            &self.remote_addr,
            &self.server,
            &self.uuid,
            self.event,
            &tls,
            self.state,
            self.body,
        )
    }
}

/// Appends an event frame without state, writing the JSON context straight into `dst` (no
/// temporary buffer). Byte-identical to RoadRunner's.
pub fn encode_event(
    dst: &mut Vec<u8>,
    remote_addr: &str,
    server: &str,
    uuid: &str,
    event: EventKind,
    body: &[u8],
) -> Result<(), EncodeError> {
    encode_event_with_state(dst, remote_addr, server, uuid, event, b"", body)
}

/// Appends an event frame carrying the connection's `state` (Pier extension): with an empty
/// state this is exactly [`encode_event`] (one option); otherwise option 1 is the state length
/// and the payload is context ‖ state ‖ body.
pub fn encode_event_with_state(
    dst: &mut Vec<u8>,
    remote_addr: &str,
    server: &str,
    uuid: &str,
    event: EventKind,
    state: &[u8],
    body: &[u8],
) -> Result<(), EncodeError> {
    encode_event_with_context(dst, remote_addr, server, uuid, event, b"", state, body)
}

/// [`encode_event_with_state`] with `extra_context` appended inside the context object after
/// `"event"`: a fragment starting with `,` such as [`TlsFacts::context_fragment`] (Pier extension
/// `tls`). An empty fragment gives exactly [`encode_event_with_state`]'s bytes.
#[allow(clippy::too_many_arguments)]
pub fn encode_event_with_context(
    dst: &mut Vec<u8>,
    remote_addr: &str,
    server: &str,
    uuid: &str,
    event: EventKind,
    extra_context: &[u8],
    state: &[u8],
    body: &[u8],
) -> Result<(), EncodeError> {
    let start = begin_event(
        dst,
        remote_addr.len() + server.len() + uuid.len() + extra_context.len() + 128,
        state,
        body,
    );
    push_context_prefix(dst, remote_addr, server, uuid);
    finish_event(dst, start, event, extra_context, state, body)
}

/// The part of a connection's event context that never changes while it lives (everything up to
/// the event name), JSON-escaped once when the connection opens instead of once per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextPrefix {
    /// `{"remote_addr":…,"server":…,"uuid":…,"event":"` exactly as [`encode_event`] writes it.
    bytes: Vec<u8>,
}

impl ContextPrefix {
    /// Its length in bytes (to size an event's frame before encoding it).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never: it always holds at least the keys.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Encodes the constant part of the context of a connection's events.
    pub fn new(remote_addr: &str, server: &str, uuid: &str) -> Self {
        let mut bytes = Vec::with_capacity(remote_addr.len() + server.len() + uuid.len() + 48);
        push_context_prefix(&mut bytes, remote_addr, server, uuid);
        ContextPrefix { bytes }
    }
}

/// Appends an event frame whose context starts with `prefix`: byte-identical to
/// [`encode_event_with_context`] with the prefix's remote address, server and uuid, minus the
/// per-event JSON escaping. On an error nothing is appended.
///
/// Every length is known before a byte is written, so the header is made whole (checksum
/// included) and each part appended once after one `reserve`: begun with zeros and patched
/// after the payload as [`encode_event_with_context`] does (it escapes as it writes), this was
/// ~214 instructions per event pier encodes at 100 × 1 (callgrind).
#[inline]
pub fn encode_event_prefixed(
    dst: &mut Vec<u8>,
    prefix: &ContextPrefix,
    event: EventKind,
    extra_context: &[u8],
    state: &[u8],
    body: &[u8],
) -> Result<(), EncodeError> {
    // The name, its closing quote and the context's closing brace, in one piece.
    let name: &[u8] = match event {
        EventKind::Connected => b"CONNECTED\"}",
        EventKind::Data => b"DATA\"}",
        EventKind::Close => b"CLOSE\"}",
        EventKind::Unknown => b"UNKNOWN\"}",
    };
    let context_len = prefix.bytes.len() + name.len() + extra_context.len();
    let too_large = |n: usize| EncodeError::PayloadTooLarge(n as u64);
    let context32 = u32::try_from(context_len).map_err(|_| too_large(context_len))?;
    let payload = context_len + state.len() + body.len();
    let header = if state.is_empty() {
        let len = u32::try_from(payload).map_err(|_| too_large(payload))?;
        &short_header(0, len, &[context32])[..HEADER_LEN + 4]
    } else {
        let state32 = u32::try_from(state.len()).map_err(|_| too_large(state.len()))?;
        let len = u32::try_from(payload).map_err(|_| too_large(payload))?;
        &short_header(0, len, &[context32, state32])[..]
    };
    dst.reserve(header.len() + payload);
    dst.extend_from_slice(header);
    dst.extend_from_slice(&prefix.bytes);
    // The extra context (TLS facts) and the state are usually empty: no copy call for them.
    if extra_context.is_empty() {
        dst.extend_from_slice(name);
    } else {
        let (name, brace) = name.split_at(name.len() - 1);
        dst.extend_from_slice(name);
        dst.extend_from_slice(extra_context);
        dst.extend_from_slice(brace);
    }
    if !state.is_empty() {
        dst.extend_from_slice(state);
    }
    dst.extend_from_slice(body);
    Ok(())
}

/// Reserves room for a whole event frame and begins its header (one option, two with state).
fn begin_event(dst: &mut Vec<u8>, context: usize, state: &[u8], body: &[u8]) -> usize {
    let options = if state.is_empty() { 1 } else { 2 };
    dst.reserve(HEADER_LEN + 8 + context + state.len() + body.len());
    begin_header(dst, 0, options)
}

/// Writes `{"remote_addr":…,"server":…,"uuid":…,"event":"`.
pub(crate) fn push_context_prefix(dst: &mut Vec<u8>, remote_addr: &str, server: &str, uuid: &str) {
    dst.extend_from_slice(br#"{"remote_addr":"#);
    push_json_string(dst, remote_addr);
    dst.extend_from_slice(br#","server":"#);
    push_json_string(dst, server);
    dst.extend_from_slice(br#","uuid":"#);
    push_json_string(dst, uuid);
    dst.extend_from_slice(br#","event":""#);
}

/// Ends the context after its prefix (event name, `extra_context`, closing brace), appends state
/// and body and patches the header begun at `start`.
fn finish_event(
    dst: &mut Vec<u8>,
    start: usize,
    event: EventKind,
    extra_context: &[u8],
    state: &[u8],
    body: &[u8],
) -> Result<(), EncodeError> {
    dst.extend_from_slice(event.as_str().as_bytes());
    dst.push(b'"');
    dst.extend_from_slice(extra_context);
    dst.push(b'}');
    let header_len = HEADER_LEN + if state.is_empty() { 4 } else { 8 };
    let context_len = dst.len() - start - header_len;
    let context_len =
        u32::try_from(context_len).map_err(|_| EncodeError::PayloadTooLarge(context_len as u64))?;
    if state.is_empty() {
        dst.extend_from_slice(body);
        return finish_header(dst, start, &[context_len]);
    }
    let state_len =
        u32::try_from(state.len()).map_err(|_| EncodeError::PayloadTooLarge(state.len() as u64))?;
    dst.extend_from_slice(state);
    dst.extend_from_slice(body);
    finish_header(dst, start, &[context_len, state_len])
}

/// Writes `s` as a JSON string the way Go's `encoding/json` does (RoadRunner's encoder), so
/// contexts are byte-identical to RoadRunner's: `<`, `>`, `&`, U+2028 and U+2029 escaped too.
pub(crate) fn push_json_string(dst: &mut Vec<u8>, s: &str) {
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
    /// The connection state to store (Pier extension `state`): `Some` replaces it (`Some(b"")`
    /// clears it), `None` (every stock reply, one option) leaves it as it is.
    pub state: Option<&'a [u8]>,
    /// Bytes to write for `WRITE` and `WRITECLOSE`.
    pub body: &'a [u8],
}

impl<'a> TcpReply<'a> {
    /// Reads a reply from a (non-control, non-error) frame a worker sent.
    pub fn decode(frame: &Frame<'a>) -> Result<Self, MessageError> {
        Ok(Self::from_parts(split_parts(frame)?))
    }

    /// The reply whose payload was split into `parts`.
    #[inline]
    pub(crate) fn from_parts(parts: Parts<'a>) -> Self {
        TcpReply {
            kind: ReplyKind::from_bytes(parts.context),
            state: parts.state,
            body: parts.body,
        }
    }

    /// Appends this reply as one frame.
    pub fn encode(&self, dst: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_reply(dst, self.kind, self.state, self.body)
    }
}

/// Appends a reply frame: one option (byte-identical to the stock worker) when `state` is `None`,
/// two (context length, state length; payload context ‖ state ‖ body) when it is `Some`.
pub fn encode_reply(
    dst: &mut Vec<u8>,
    kind: ReplyKind<'_>,
    state: Option<&[u8]>,
    body: &[u8],
) -> Result<(), EncodeError> {
    let context = kind.as_bytes();
    let context_len = u32::try_from(context.len())
        .map_err(|_| EncodeError::PayloadTooLarge(context.len() as u64))?;
    match state {
        None => encode(dst, 0, 0, &[context_len], &[context, body]),
        Some(state) => {
            let state_len = u32::try_from(state.len())
                .map_err(|_| EncodeError::PayloadTooLarge(state.len() as u64))?;
            encode(
                dst,
                0,
                0,
                &[context_len, state_len],
                &[context, state, body],
            )
        }
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
            state: b"",
            body: b"\x00\xff\r\n",
            tls: None,
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
    fn tls_facts_ride_in_the_context_and_round_trip() {
        let event = TcpEvent {
            remote_addr: "127.0.0.1:1".into(),
            server: "s".into(),
            uuid: "u".into(),
            event: EventKind::Data,
            state: b"st",
            body: b"x\r\n",
            tls: Some(Box::new(TlsFacts {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
                sni: Some("localhost".into()),
                client_subject: Some("CN=alice".into()),
                client_sha256: Some("ab".repeat(32).into()),
            })),
        };
        let mut buf = Vec::new();
        event.encode(&mut buf).unwrap();
        let (frame, _) = decode(&buf, 4096).unwrap().unwrap();
        let context = &frame.payload[..frame.options.get(0).unwrap() as usize];
        let context = std::str::from_utf8(context).unwrap();
        assert!(
            context.starts_with(r#"{"remote_addr":"127.0.0.1:1","server":"s","uuid":"u","event":"DATA","tls":{"version":"TLSv1.3","#),
            "{context}"
        );
        assert_eq!(TcpEvent::decode(&frame).unwrap(), event);
        // Without TLS, the bytes are the stock ones.
        let mut plain = Vec::new();
        encode_event_with_context(&mut plain, "a", "s", "u", EventKind::Close, b"", b"", b"")
            .unwrap();
        let mut stock = Vec::new();
        encode_event(&mut stock, "a", "s", "u", EventKind::Close, b"").unwrap();
        assert_eq!(plain, stock);
    }

    #[test]
    fn prefixed_events_are_byte_identical() {
        let addrs = [
            ("127.0.0.1:5000", "tcp", "4b1c2d"),
            ("[::1]:1", "we\"ird<\\>&\u{1}\u{2028}é", ""),
        ];
        for (remote_addr, server, uuid) in addrs {
            let prefix = ContextPrefix::new(remote_addr, server, uuid);
            for kind in [
                EventKind::Connected,
                EventKind::Data,
                EventKind::Close,
                EventKind::Unknown,
            ] {
                for (state, body) in [(&b""[..], &b""[..]), (b"", b"hi\n"), (b"\x00st", b"x")] {
                    let mut want = vec![7];
                    encode_event_with_state(
                        &mut want,
                        remote_addr,
                        server,
                        uuid,
                        kind,
                        state,
                        body,
                    )
                    .unwrap();
                    let mut got = vec![7];
                    encode_event_prefixed(&mut got, &prefix, kind, b"", state, body).unwrap();
                    assert_eq!(got, want, "{server:?} {kind:?} {state:?}");
                    let tls = br#","tls":{"version":"TLSv1.3"}"#;
                    let mut want = vec![7];
                    encode_event_with_context(
                        &mut want,
                        remote_addr,
                        server,
                        uuid,
                        kind,
                        tls,
                        state,
                        body,
                    )
                    .unwrap();
                    let mut got = vec![7];
                    encode_event_prefixed(&mut got, &prefix, kind, tls, state, body).unwrap();
                    assert_eq!(got, want, "{server:?} {kind:?} {state:?} with tls");
                }
            }
        }
    }

    #[test]
    fn plain_context_reader_declines_what_it_cannot_read_exactly() {
        // (context, read by the fast path)
        let cases: &[(&[u8], bool)] = &[
            (br#"{"remote_addr":"1.2.3.4:5","server":"s","uuid":"u","event":"DATA"}"#, true),
            (br#"{"remote_addr":"","server":"","uuid":"","event":""}"#, true),
            ("{\"remote_addr\":\"é\",\"server\":\"s\",\"uuid\":\"u\",\"event\":\"X\"}".as_bytes(), true),
            (br#"{"remote_addr":"a\"b","server":"s","uuid":"u","event":"DATA"}"#, false),
            (br#"{"remote_addr":"a\u003c","server":"s","uuid":"u","event":"DATA"}"#, false),
            (br#"{"server":"s","remote_addr":"a","uuid":"u","event":"DATA"}"#, false),
            (br#"{"remote_addr":"a", "server":"s","uuid":"u","event":"DATA"}"#, false),
            (br#"{"remote_addr":"a","server":"s","uuid":"u","event":"DATA","x":1}"#, false),
            (br#"{"remote_addr":"a","server":"s","uuid":"u","event":"DATA","tls":{"version":"v","cipher":"c"}}"#, false),
            (br#"{"remote_addr":"a","server":"s","uuid":"u","event":"DATA"} "#, false),
            (br#"{"remote_addr":"a","server":"s","uuid":"u","event":"DATA""#, false),
            (b"{\"remote_addr\":\"\xff\",\"server\":\"s\",\"uuid\":\"u\",\"event\":\"D\"}", false),
            (b"{\"remote_addr\":\"\x01\",\"server\":\"s\",\"uuid\":\"u\",\"event\":\"D\"}", false),
        ];
        for &(context, fast) in cases {
            let text = String::from_utf8_lossy(context);
            assert_eq!(ContextIn::plain(context).is_some(), fast, "{text}");
            assert!(plain_context_agrees(context), "{text}");
        }
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
            state: None,
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

    /// One row of the state table: what is encoded, the option count on the wire, what decodes.
    struct StateCase {
        /// Row name for failure messages.
        name: &'static str,
        /// The state given to the encoder.
        state: Option<&'static [u8]>,
        /// How many options the frame must carry.
        options: usize,
    }

    const STATE_CASES: &[StateCase] = &[
        StateCase {
            name: "no state",
            state: None,
            options: 1,
        },
        StateCase {
            name: "clear",
            state: Some(b""),
            options: 2,
        },
        StateCase {
            name: "text",
            state: Some(b"MAIL FROM:<a@b>"),
            options: 2,
        },
        StateCase {
            name: "binary",
            state: Some(b"\x00\xff\r\n{\"stop\":true}\x00"),
            options: 2,
        },
    ];

    #[test]
    fn replies_carry_state_as_a_second_option() {
        for case in STATE_CASES {
            for body in [&b""[..], b"250 ok\r\n", b"\x00\x01"] {
                let reply = TcpReply {
                    kind: ReplyKind::Write,
                    state: case.state,
                    body,
                };
                let mut buf = Vec::new();
                reply.encode(&mut buf).unwrap();
                let (frame, used) = decode(&buf, 1024).unwrap().unwrap();
                assert_eq!(used, buf.len(), "{}", case.name);
                assert_eq!(
                    frame.options.as_slice().len(),
                    case.options,
                    "{}",
                    case.name
                );
                let state_len = case.state.map_or(0, <[u8]>::len);
                assert_eq!(
                    frame.payload.len(),
                    5 + state_len + body.len(),
                    "{}",
                    case.name
                );
                assert_eq!(TcpReply::decode(&frame).unwrap(), reply, "{}", case.name);
                assert_eq!(
                    crate::WorkerMessage::from_frame(&frame).unwrap(),
                    crate::WorkerMessage::Reply(reply),
                    "{}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn events_carry_state_only_when_non_empty() {
        for case in STATE_CASES {
            let state = case.state.unwrap_or_default();
            let event = TcpEvent {
                remote_addr: "127.0.0.1:1".into(),
                server: "s".into(),
                uuid: "u".into(),
                event: EventKind::Close,
                state,
                body: b"tail",
                tls: None,
            };
            let mut buf = Vec::new();
            event.encode(&mut buf).unwrap();
            let (frame, _) = decode(&buf, 1024).unwrap().unwrap();
            let want_options = if state.is_empty() { 1 } else { 2 };
            assert_eq!(
                frame.options.as_slice().len(),
                want_options,
                "{}",
                case.name
            );
            assert_eq!(TcpEvent::decode(&frame).unwrap(), event, "{}", case.name);
            let mut plain = Vec::new();
            encode_event(
                &mut plain,
                "127.0.0.1:1",
                "s",
                "u",
                EventKind::Close,
                b"tail",
            )
            .unwrap();
            assert_eq!(state.is_empty(), plain == buf, "{}", case.name);
        }
    }

    #[test]
    fn stop_reply_is_still_a_stop_with_state() {
        let mut buf = Vec::new();
        encode(&mut buf, 0, 0, &[13, 1], &[br#"{"stop":true}"#, b"x"]).unwrap();
        let (frame, _) = decode(&buf, 1024).unwrap().unwrap();
        assert_eq!(
            crate::WorkerMessage::from_frame(&frame).unwrap(),
            crate::WorkerMessage::Stop
        );
    }

    #[test]
    fn bad_state_length_is_an_error() {
        let mut buf = Vec::new();
        encode(&mut buf, 0, 0, &[5, 4], &[b"WRITE", b"abc"]).unwrap();
        let (frame, _) = decode(&buf, 1024).unwrap().unwrap();
        assert!(matches!(
            TcpReply::decode(&frame),
            Err(MessageError::StateOutOfBounds {
                context: 5,
                state: 4,
                payload: 8
            })
        ));
        assert!(matches!(
            TcpEvent::decode(&frame),
            Err(MessageError::StateOutOfBounds { .. })
        ));
    }
}
