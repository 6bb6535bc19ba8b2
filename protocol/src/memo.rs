//! What a worker remembers between events so that it does not decode or encode the same bytes
//! again: the decoded context of each connection ([`ContextMemo`]) and the head of each stock
//! reply ([`ReplyHeads`]); frame headers already checked are [`crate::frame::HeaderMemo`]'s.
//!
//! Each memo is bounded whatever the server sends, and each gives exactly what decoding or
//! encoding without it gives: a memo entry is only used for bytes equal to the ones it was made
//! from.

use std::borrow::Cow;
use std::collections::hash_map::Entry::{Occupied, Vacant};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use memchr::memmem::Finder;

use crate::frame::{self, EncodeError, Frame, FrameView, HEADER_LEN};
use crate::message::MessageError;
use crate::tcp::{
    push_context_prefix, split_parts, split_view, EventKind, Parts, ReplyKind, TcpEvent,
};
use crate::tls::TlsFacts;

/// Where the constant part of a context ends: the uuid's closing quote and the `"event"` key.
const EVENT_KEY: &[u8] = br#"","event":""#;

/// The context of one connection's events, decoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Context {
    /// `remote_addr`.
    remote_addr: String,
    /// `server`.
    server: String,
    /// `uuid`.
    uuid: String,
    /// `tls` (Pier extension), `None` on plaintext connections.
    tls: Option<TlsFacts<'static>>,
}

/// How a plaintext DATA event's context ends: the `"event"` key and its value.
const DATA_END: [u8; DATA_END_LEN] = *br#"","event":"DATA"}"#;
/// [`DATA_END`]'s length.
const DATA_END_LEN: usize = 17;

/// The known event names as the last bytes of a plaintext context, DATA (the common one) first.
const EVENT_NAMES: &[(&[u8], EventKind)] = &[
    (b"DATA\"}", EventKind::Data),
    (b"CONNECTED\"}", EventKind::Connected),
    (b"CLOSE\"}", EventKind::Close),
];

/// One connection's decoded context and the exact bytes it was decoded from.
#[derive(Debug)]
struct Entry<X> {
    /// The constant part: `{"remote_addr":…,"server":…,"uuid":…,"event":"`.
    prefix: Box<[u8]>,
    /// What follows the event name: `"}`, or `","tls":{…}}` once the connection speaks TLS.
    tail: Box<[u8]>,
    /// What those bytes (with any known event name between them) decode to.
    context: Context,
    /// What the caller keeps with the connection ([`Kept`]).
    kept: X,
}

/// What a caller keeps with a connection's entry, e.g. values made from its context that it would
/// otherwise make again per event (the extension: the PHP strings of the address, uuid and
/// server), given with each decoded event by [`ContextMemo::decode_keeping`]. It belongs to
/// exactly the context bytes of the entry: a changed context (STARTTLS) starts a new one.
#[derive(Debug)]
pub enum Kept<'a, X> {
    /// The connection's entry: what was kept with it (`X::default()` for a new entry).
    Entry(&'a mut X),
    /// The connection's last event (CLOSE): its entry is gone; this was kept with it.
    Last(X),
    /// The context is not remembered (decoded in full; a shape the memo does not take).
    None,
}

/// The decoded contexts of the connections a worker serves, so that each connection's context is
/// decoded once and not per event (PROTOCOL.md, "TCP events": everything before the event name is
/// the same in all of a connection's events, and the `tls` key after it changes only at STARTTLS).
///
/// A context is split at its `"event"` key into the constant part (the key of the memo: one entry
/// per connection), the event name and the tail (TLS facts). An entry is made only when the
/// decoded context re-encodes to exactly the bytes it came from (what Pier and RoadRunner write),
/// and used only when the constant part and the tail are byte-equal and the event name is one
/// this codec knows: those bytes are then the encoding of the entry's fields, which decodes to
/// them. Anything else (another key order, escapes a server need not write, unknown event names)
/// is decoded in full every time, as without the memo. A changed tail (STARTTLS) replaces the
/// connection's entry; its `CLOSE` removes it.
///
/// Bounded: at most [`ContextMemo::MAX_ENTRIES`] connections (past it the memo starts afresh) and
/// contexts of at most [`ContextMemo::MAX_CONTEXT`] bytes.
pub struct ContextMemo<X = ()> {
    /// Entries by the hash of their constant part.
    entries: HashMap<u64, Entry<X>, BuildHasherDefault<Prehashed>>,
    /// Searches for [`EVENT_KEY`].
    finder: Finder<'static>,
    /// Scratch space to re-encode a decoded context (reused).
    scratch: Vec<u8>,
}

impl<X> std::fmt::Debug for ContextMemo<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContextMemo({} connections)", self.entries.len())
    }
}

impl<X: Default> Default for ContextMemo<X> {
    fn default() -> Self {
        Self::keeping()
    }
}

impl ContextMemo {
    /// Most connections remembered; a worker serving more starts afresh when it meets one more.
    pub const MAX_ENTRIES: usize = 4096;
    /// Largest context remembered, in bytes (a plaintext one is about 100, one with TLS facts and
    /// a client certificate a few hundred); larger ones are decoded every time.
    pub const MAX_CONTEXT: usize = 2048;

    /// An empty memo that keeps nothing with its connections.
    pub fn new() -> Self {
        Self::keeping()
    }
}

impl<X: Default> ContextMemo<X> {
    /// An empty memo that keeps an `X` with each connection ([`Kept`]).
    pub fn keeping() -> Self {
        ContextMemo {
            entries: HashMap::default(),
            finder: Finder::new(EVENT_KEY),
            scratch: Vec::new(),
        }
    }

    /// How many connections it remembers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// [`TcpEvent::decode`], with the context taken from the memo when its bytes were seen before.
    /// The same event, or the same error, as [`TcpEvent::decode`] for every frame.
    pub fn decode<'a>(&'a mut self, frame: &Frame<'a>) -> Result<TcpEvent<'a>, MessageError> {
        self.decode_keeping(frame).map(|(event, _)| event)
    }

    /// [`ContextMemo::decode`] of a frame read in place.
    pub fn decode_view<'a>(
        &'a mut self,
        frame: &FrameView<'a>,
    ) -> Result<TcpEvent<'a>, MessageError> {
        self.decode_view_keeping(frame).map(|(event, _)| event)
    }

    /// [`ContextMemo::decode`], and what the caller keeps with the event's connection.
    pub fn decode_keeping<'a>(
        &'a mut self,
        frame: &Frame<'a>,
    ) -> Result<(TcpEvent<'a>, Kept<'a, X>), MessageError> {
        self.decode_parts(split_parts(frame)?)
    }

    /// [`ContextMemo::decode_keeping`] of a frame read in place (a worker's way: see
    /// [`FrameView`]).
    ///
    /// Always inlined (a worker calls it from one place, once per event): the event is then
    /// built where its caller keeps it instead of being returned through memory and copied
    /// (the extension: −40 instructions per event, measured).
    #[inline(always)]
    pub fn decode_view_keeping<'a>(
        &'a mut self,
        frame: &FrameView<'a>,
    ) -> Result<(TcpEvent<'a>, Kept<'a, X>), MessageError> {
        self.decode_parts(split_view(frame)?)
    }

    /// The event of a payload split into `parts`, its context from the memo when its bytes were
    /// seen before, and what the caller keeps with its connection.
    #[inline(always)]
    fn decode_parts<'a>(
        &'a mut self,
        parts: Parts<'a>,
    ) -> Result<(TcpEvent<'a>, Kept<'a, X>), MessageError> {
        let context = parts.context;
        let state = parts.state.unwrap_or_default();
        let body = parts.body;
        let Some((prefix, kind, tail)) = self.split(context) else {
            return Ok((TcpEvent::from_parts(parts)?, Kept::None));
        };
        let key = hash(prefix);
        if kind != EventKind::Close
            && self.entries.len() >= ContextMemo::MAX_ENTRIES
            && !self.entries.contains_key(&key)
        {
            // Full, and this may be a new connection's first event: start afresh.
            self.entries.clear();
        }
        // One probe: a hit returns from the entry found, a miss replaces it or fills its room.
        let room = match self.entries.entry(key) {
            Occupied(found) if found.get().holds(prefix, tail) => {
                return Ok(if kind == EventKind::Close {
                    // The connection's last event: its entry is not needed any more.
                    let entry = found.remove();
                    let Context {
                        remote_addr,
                        server,
                        uuid,
                        tls,
                    } = entry.context;
                    let event = TcpEvent {
                        remote_addr: Cow::Owned(remote_addr),
                        server: Cow::Owned(server),
                        uuid: Cow::Owned(uuid),
                        event: kind,
                        state,
                        body,
                        tls: tls.map(Box::new),
                    };
                    (event, Kept::Last(entry.kept))
                } else {
                    let Entry { context, kept, .. } = found.into_mut();
                    let event = TcpEvent {
                        remote_addr: Cow::Borrowed(&context.remote_addr),
                        server: Cow::Borrowed(&context.server),
                        uuid: Cow::Borrowed(&context.uuid),
                        event: kind,
                        state,
                        body,
                        tls: context.tls.as_ref().map(|t| Box::new(borrowed(t))),
                    };
                    (event, Kept::Entry(kept))
                });
            }
            room => room,
        };
        let event = TcpEvent::from_parts(parts)?;
        if kind == EventKind::Close
            || context.len() > ContextMemo::MAX_CONTEXT
            || event.event != kind
            || !encodes_to(&mut self.scratch, &event, prefix, tail)
        {
            return Ok((event, Kept::None));
        }
        let entry = Entry {
            prefix: prefix.into(),
            tail: tail.into(),
            context: Context {
                remote_addr: event.remote_addr.to_string(),
                server: event.server.to_string(),
                uuid: event.uuid.to_string(),
                tls: event.tls.as_deref().map(owned),
            },
            kept: X::default(),
        };
        let entry = match room {
            Occupied(mut old) => {
                old.insert(entry);
                old.into_mut()
            }
            Vacant(room) => room.insert(entry),
        };
        Ok((event, Kept::Entry(&mut entry.kept)))
    }

    /// Drops what callers kept with every connection (`X::default()` in its place), keeping the
    /// decoded contexts: for values that must not outlive something of the caller's.
    pub fn forget_kept(&mut self) {
        for entry in self.entries.values_mut() {
            entry.kept = X::default();
        }
    }

    /// The constant part, the event kind and the tail of `context`, when its event name is one
    /// this codec knows; `None` for any other shape.
    ///
    /// Always inlined: a plaintext DATA event's context, the usual one, is recognised by its
    /// end compared as one array (a few word comparisons, no call); any other goes to
    /// [`ContextMemo::split_other`].
    #[inline(always)]
    fn split<'c>(&self, context: &'c [u8]) -> Option<(&'c [u8], EventKind, &'c [u8])> {
        if context.last_chunk::<DATA_END_LEN>() == Some(&DATA_END) {
            let head = context.len() - (DATA_END_LEN - EVENT_KEY.len());
            return Some((
                &context[..head],
                EventKind::Data,
                &context[context.len() - 2..],
            ));
        }
        self.split_other(context)
    }

    /// [`ContextMemo::split`] of any context.
    fn split_other<'c>(&self, context: &'c [u8]) -> Option<(&'c [u8], EventKind, &'c [u8])> {
        // A plaintext context ends with its event name (a few comparisons); one with TLS facts
        // after the name is searched.
        for (name, kind) in EVENT_NAMES {
            if let Some(head) = context.strip_suffix(*name) {
                if head.ends_with(EVENT_KEY) {
                    return Some((head, *kind, &context[context.len() - 2..]));
                }
            }
        }
        let prefix_len = self.finder.find(context)? + EVENT_KEY.len();
        let rest = &context[prefix_len..];
        let name_len = memchr::memchr(b'"', rest)?;
        let kind = match &rest[..name_len] {
            b"DATA" => EventKind::Data,
            b"CONNECTED" => EventKind::Connected,
            b"CLOSE" => EventKind::Close,
            _ => return None,
        };
        Some((&context[..prefix_len], kind, &rest[name_len..]))
    }
}

/// Whether `event`'s context encodes to exactly `prefix`, its event name and `tail` (`scratch`
/// is reused space to encode it in).
fn encodes_to(scratch: &mut Vec<u8>, event: &TcpEvent<'_>, prefix: &[u8], tail: &[u8]) -> bool {
    scratch.clear();
    push_context_prefix(scratch, &event.remote_addr, &event.server, &event.uuid);
    if *scratch != *prefix {
        return false;
    }
    scratch.clear();
    scratch.push(b'"');
    if let Some(tls) = &event.tls {
        scratch.extend_from_slice(&tls.context_fragment());
    }
    scratch.push(b'}');
    *scratch == *tail
}

impl<X> Entry<X> {
    /// Whether the entry was made from exactly these bytes (`tail` is usually the two bytes of
    /// a plaintext context, compared without a call). Always inlined into the memo's lookup.
    #[inline(always)]
    fn holds(&self, prefix: &[u8], tail: &[u8]) -> bool {
        let short_tail =
            |a: &[u8], b: &[u8]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y);
        self.prefix.len() == prefix.len()
            && if tail.len() <= 4 {
                short_tail(&self.tail, tail)
            } else {
                *self.tail == *tail
            }
            && *self.prefix == *prefix
    }
}

/// TLS facts borrowed from the memo.
fn borrowed<'a>(t: &'a TlsFacts<'static>) -> TlsFacts<'a> {
    let borrow = |s: &'a Option<Cow<'static, str>>| s.as_deref().map(Cow::Borrowed);
    TlsFacts {
        version: Cow::Borrowed(&t.version),
        cipher: Cow::Borrowed(&t.cipher),
        sni: borrow(&t.sni),
        client_subject: borrow(&t.client_subject),
        client_sha256: borrow(&t.client_sha256),
    }
}

/// TLS facts that outlive the frame they were decoded from.
fn owned(t: &TlsFacts<'_>) -> TlsFacts<'static> {
    let own = |s: &Option<Cow<'_, str>>| s.as_deref().map(|s| Cow::Owned(s.to_owned()));
    TlsFacts {
        version: Cow::Owned(t.version.to_string()),
        cipher: Cow::Owned(t.cipher.to_string()),
        sni: own(&t.sni),
        client_subject: own(&t.client_subject),
        client_sha256: own(&t.client_sha256),
    }
}

/// A cheap hash of a context's constant part: its length, its first and its last sixteen bytes
/// (with Pier's and RoadRunner's layout: the client's address and port, the end of the uuid),
/// mixed as FxHash does. Two constant parts with the same hash only replace each other's entry: a
/// hit still needs equal bytes.
///
/// Always inlined into the memo's lookup (a constant part is ~100 bytes: its four words are read
/// without a bounds check each); a shorter one goes to [`hash_short`], the same words
/// zero-padded.
#[inline(always)]
fn hash(bytes: &[u8]) -> u64 {
    if let (Some(head), Some(end)) = (
        bytes.get(16..32).and_then(|b| b.first_chunk::<16>()),
        bytes.last_chunk::<16>(),
    ) {
        // Each sixteen bytes as their two little-endian words.
        let (head, end) = (u128::from_le_bytes(*head), u128::from_le_bytes(*end));
        let [a, b, c, d] = [
            head as u64,
            (head >> 64) as u64,
            end as u64,
            (end >> 64) as u64,
        ];
        return fold(mix(mix(mix(mix(bytes.len() as u64, a), b), c), d));
    }
    hash_short(bytes)
}

/// One step of [`hash`], as FxHash mixes.
#[inline(always)]
fn mix(h: u64, word: u64) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    (h.rotate_left(5) ^ word).wrapping_mul(K)
}

/// [`hash`]'s last step.
#[inline(always)]
fn fold(h: u64) -> u64 {
    h ^ (h >> 29)
}

/// [`hash`] of a constant part shorter than 32 bytes.
#[cold]
fn hash_short(bytes: &[u8]) -> u64 {
    // Eight bytes from `at`, zero-padded past the end.
    let word = |at: usize| match bytes.get(at..).and_then(|b| b.first_chunk::<8>()) {
        Some(w) => u64::from_le_bytes(*w),
        None => {
            let mut w = [0u8; 8];
            let part = bytes.get(at..).unwrap_or_default();
            let n = part.len().min(8);
            w[..n].copy_from_slice(&part[..n]);
            u64::from_le_bytes(w)
        }
    };
    let end = bytes.len().saturating_sub(16);
    let mut h = mix(bytes.len() as u64, word(16));
    h = mix(h, word(24));
    h = mix(h, word(end));
    h = mix(h, word(end + 8));
    fold(h)
}

/// The hasher of a map whose keys are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are u64); fold anything else in anyway.
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// The bytes of a stock reply before its body (header, the context-length option, the context),
/// encoded once per reply kind and body length instead of once per answer: a worker's answers
/// repeat a few lengths. A direct-mapped table of [`ReplyHeads::SLOTS`] heads indexed by the
/// payload length; a head is used only for the same payload length and context.
pub struct ReplyHeads {
    /// Encoded heads; `len == 0` marks an empty slot.
    slots: Box<[ReplyHead; ReplyHeads::SLOTS]>,
}

/// One remembered reply head.
#[derive(Clone, Copy)]
struct ReplyHead {
    /// Payload length (context ‖ body) it was encoded for.
    payload_len: u32,
    /// Length of the head: header, one option and the context.
    len: u8,
    /// The stock reply kind it was encoded for ([`stock_kind`]).
    kind: u8,
    /// The head's bytes (12-byte header, 4-byte option, context of at most 10 bytes).
    bytes: [u8; HEAD_MAX],
}

/// The longest stock reply head: header, one option, `WRITECLOSE`.
const HEAD_MAX: usize = HEADER_LEN + 4 + 10;

impl std::fmt::Debug for ReplyHeads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self.slots.iter().filter(|s| s.len != 0).count();
        write!(f, "ReplyHeads({used}/{})", Self::SLOTS)
    }
}

impl Default for ReplyHeads {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyHeads {
    /// How many heads it holds at most (a power of two).
    pub const SLOTS: usize = 64;

    /// An empty memo.
    pub fn new() -> Self {
        let empty = ReplyHead {
            payload_len: 0,
            len: 0,
            kind: 0,
            bytes: [0; HEAD_MAX],
        };
        ReplyHeads {
            slots: Box::new([empty; Self::SLOTS]),
        }
    }

    /// [`crate::tcp::encode_reply`]: the same bytes, with a stock reply's head (no state, a
    /// known kind) taken from the memo when it was encoded before.
    pub fn encode_reply(
        &mut self,
        dst: &mut Vec<u8>,
        kind: ReplyKind<'_>,
        state: Option<&[u8]>,
        body: &[u8],
    ) -> Result<(), EncodeError> {
        let context = kind.as_bytes();
        let payload_len = context.len() + body.len();
        let (Some(tag), None, Ok(payload_len)) =
            (stock_kind(kind), state, u32::try_from(payload_len))
        else {
            return crate::tcp::encode_reply(dst, kind, state, body);
        };
        let head_len = HEADER_LEN + 4 + context.len();
        let slot = &mut self.slots[payload_len as usize & (Self::SLOTS - 1)];
        // The same kind and payload length: the same head bytes.
        let fresh = slot.payload_len == payload_len && slot.kind == tag;
        if !fresh {
            let mut head = Vec::with_capacity(HEAD_MAX + body.len());
            frame::encode(&mut head, 0, 0, &[context.len() as u32], &[context, body])?;
            slot.bytes[..head_len].copy_from_slice(&head[..head_len]);
            slot.len = head_len as u8;
            slot.payload_len = payload_len;
            slot.kind = tag;
        }
        dst.reserve(head_len + body.len());
        dst.extend_from_slice(&slot.bytes[..head_len]);
        dst.extend_from_slice(body);
        Ok(())
    }
}

/// A stock reply kind's tag in a [`ReplyHead`] (never 0, an empty slot's), `None` for others.
fn stock_kind(kind: ReplyKind<'_>) -> Option<u8> {
    match kind {
        ReplyKind::Write => Some(1),
        ReplyKind::Continue => Some(2),
        ReplyKind::WriteClose => Some(3),
        ReplyKind::Close => Some(4),
        ReplyKind::Unknown(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode;
    use crate::tcp::{encode_event_with_context, encode_reply, TcpReply};

    fn event_frame(
        remote_addr: &str,
        uuid: &str,
        kind: EventKind,
        tls: Option<&TlsFacts<'_>>,
        state: &[u8],
        body: &[u8],
    ) -> Vec<u8> {
        let fragment = tls.map(TlsFacts::context_fragment).unwrap_or_default();
        let mut out = Vec::new();
        encode_event_with_context(
            &mut out,
            remote_addr,
            "srv",
            uuid,
            kind,
            &fragment,
            state,
            body,
        )
        .unwrap();
        out
    }

    /// Decodes `bytes` with and without the memo and asserts both agree.
    fn both(memo: &mut ContextMemo, bytes: &[u8]) -> Result<TcpEvent<'static>, String> {
        let (frame, _) = decode(bytes, u32::MAX).unwrap().unwrap();
        let plain = TcpEvent::decode(&frame).map_err(|e| e.to_string());
        let memoized = memo.decode(&frame).map_err(|e| e.to_string());
        let owned = |e: TcpEvent<'_>| TcpEvent {
            remote_addr: e.remote_addr.into_owned().into(),
            server: e.server.into_owned().into(),
            uuid: e.uuid.into_owned().into(),
            event: e.event,
            state: e.state.to_vec().leak(),
            body: e.body.to_vec().leak(),
            tls: e.tls.map(|t| Box::new(owned(&t))),
        };
        let plain = plain.map(owned);
        assert_eq!(memoized.map(owned), plain);
        plain
    }

    #[test]
    fn a_connection_is_decoded_once_and_every_event_agrees() {
        let tls = TlsFacts {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            sni: Some("mail.example".into()),
            client_subject: Some("CN=a<b>".into()),
            client_sha256: None,
        };
        let mut memo = ContextMemo::new();
        for round in 0..3 {
            for conn in 0..5 {
                let addr = format!("10.0.0.{conn}:5{conn}");
                let uuid = format!("uuid-{conn}");
                // STARTTLS on connection 1 in round 2: its tail changes, the entry is replaced.
                let facts = (conn == 1 && round == 2).then_some(&tls);
                let kind = if round == 0 {
                    EventKind::Connected
                } else {
                    EventKind::Data
                };
                let state = if round == 1 { &b"st"[..] } else { b"" };
                let e = both(
                    &mut memo,
                    &event_frame(&addr, &uuid, kind, facts, state, b"x\n"),
                )
                .unwrap();
                assert_eq!((e.uuid.as_ref(), e.event, e.state), (&*uuid, kind, state));
                assert_eq!(e.tls.is_some(), facts.is_some());
            }
        }
        assert_eq!(memo.len(), 5, "one entry per connection");
        for conn in 0..5 {
            let facts = (conn == 1).then_some(&tls);
            let bytes = event_frame(
                &format!("10.0.0.{conn}:5{conn}"),
                &format!("uuid-{conn}"),
                EventKind::Close,
                facts,
                b"",
                b"",
            );
            both(&mut memo, &bytes).unwrap();
        }
        assert!(memo.is_empty(), "CLOSE forgets the connection");
    }

    #[test]
    fn what_is_kept_stays_with_its_connection_and_its_context_bytes() {
        let tls = TlsFacts {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            sni: None,
            client_subject: None,
            client_sha256: None,
        };
        // Each event notes its uuid in what is kept; returns the notes made before it.
        fn note(
            memo: &mut ContextMemo<Vec<String>>,
            uuid: &str,
            kind: EventKind,
            tls: Option<&TlsFacts<'_>>,
        ) -> Option<Vec<String>> {
            let bytes = event_frame("10.0.0.1:5", uuid, kind, tls, b"", b"x");
            let (frame, _) = decode(&bytes, u32::MAX).unwrap().unwrap();
            let (event, kept) = memo.decode_keeping(&frame).unwrap();
            assert_eq!((&*event.uuid, event.event), (uuid, kind));
            match kept {
                Kept::Entry(notes) => {
                    let before = notes.clone();
                    notes.push(uuid.to_owned());
                    Some(before)
                }
                Kept::Last(notes) => Some(notes),
                Kept::None => None,
            }
        }
        let mut memo: ContextMemo<Vec<String>> = ContextMemo::keeping();
        let none: Vec<String> = Vec::new();
        assert_eq!(
            note(&mut memo, "a", EventKind::Connected, None),
            Some(none.clone())
        );
        assert_eq!(
            note(&mut memo, "b", EventKind::Connected, None),
            Some(none.clone())
        );
        assert_eq!(
            note(&mut memo, "a", EventKind::Data, None),
            Some(vec!["a".to_owned()])
        );
        assert_eq!(
            note(&mut memo, "b", EventKind::Data, None),
            Some(vec!["b".to_owned()])
        );
        // STARTTLS: a new context, so a new entry with nothing kept.
        assert_eq!(
            note(&mut memo, "a", EventKind::Data, Some(&tls)),
            Some(none.clone())
        );
        assert_eq!(
            note(&mut memo, "a", EventKind::Close, Some(&tls)),
            Some(vec!["a".to_owned()])
        );
        let b = vec!["b".to_owned(), "b".to_owned()];
        assert_eq!(note(&mut memo, "b", EventKind::Close, None), Some(b));
        // Gone with the CLOSE: a later event of that uuid starts afresh.
        assert_eq!(
            note(&mut memo, "b", EventKind::Data, None),
            Some(none.clone())
        );
        memo.forget_kept();
        assert_eq!(
            note(&mut memo, "b", EventKind::Data, None),
            Some(none),
            "forgotten"
        );
        // A context the memo does not take keeps nothing.
        let long = "x".repeat(ContextMemo::MAX_CONTEXT);
        assert_eq!(note(&mut memo, &long, EventKind::Data, None), None);
    }

    #[test]
    fn contexts_it_cannot_vouch_for_are_decoded_in_full() {
        let mut memo = ContextMemo::new();
        let contexts: &[&[u8]] = &[
            // Another key order, escapes Pier does not write, unknown names, whitespace, junk.
            br#"{"server":"s","remote_addr":"a","uuid":"u","event":"DATA"}"#,
            br#"{"remote_addr":"\u0061","server":"s","uuid":"u","event":"DATA"}"#,
            br#"{"remote_addr":"a","server":"s","uuid":"u","event":"PING"}"#,
            br#"{"remote_addr":"a","server":"s","uuid":"u","event":"DATA" }"#,
            br#"{"remote_addr":"a","server":"s","uuid":"u","event":"DATA","x":1}"#,
            br#"{"remote_addr":"a","server":"s","uuid":"u","event":"DATA"}junk"#,
            br#"{"remote_addr":"a","server":"s","uuid":"u","event":"DATA"#,
            br#"{"remote_addr":"a","server":"s","uuid":"u","event":"DATA"}"#,
            b"{\"remote_addr\":\"\xff\",\"server\":\"s\",\"uuid\":\"u\",\"event\":\"DATA\"}",
        ];
        for _ in 0..2 {
            for context in contexts {
                let mut bytes = Vec::new();
                frame::encode(&mut bytes, 0, 0, &[context.len() as u32], &[context, b"b"]).unwrap();
                let _ = both(&mut memo, &bytes);
            }
        }
        assert_eq!(memo.len(), 1, "only the canonical context is remembered");
        // A bad context length fails the same way with the memo.
        let mut bytes = Vec::new();
        frame::encode(&mut bytes, 0, 0, &[9], &[b"{}"]).unwrap();
        assert!(both(&mut memo, &bytes).is_err());
    }

    #[test]
    fn the_memo_is_bounded() {
        let mut memo = ContextMemo::new();
        for conn in 0..ContextMemo::MAX_ENTRIES + 10 {
            let bytes = event_frame("a:1", &conn.to_string(), EventKind::Data, None, b"", b"");
            both(&mut memo, &bytes).unwrap();
            assert!(memo.len() <= ContextMemo::MAX_ENTRIES);
        }
        let long = "x".repeat(ContextMemo::MAX_CONTEXT);
        let mut memo = ContextMemo::new();
        both(
            &mut memo,
            &event_frame(&long, "u", EventKind::Data, None, b"", b""),
        )
        .unwrap();
        assert!(memo.is_empty(), "contexts over MAX_CONTEXT are not kept");
    }

    #[test]
    fn reply_heads_give_the_bytes_of_encode_reply() {
        let mut heads = ReplyHeads::new();
        let kinds = [
            ReplyKind::Write,
            ReplyKind::Continue,
            ReplyKind::WriteClose,
            ReplyKind::Close,
            ReplyKind::Unknown(b"SHOUT"),
        ];
        let bodies: Vec<Vec<u8>> = (0..200).map(|n| vec![b'z'; n % 90]).collect();
        for state in [None, Some(&b""[..]), Some(b"st")] {
            for (i, body) in bodies.iter().enumerate() {
                let kind = kinds[i % kinds.len()];
                let mut want = vec![1];
                encode_reply(&mut want, kind, state, body).unwrap();
                let mut got = vec![1];
                heads.encode_reply(&mut got, kind, state, body).unwrap();
                assert_eq!(got, want, "{kind:?} {state:?} {}", body.len());
                let (frame, _) = decode(&got[1..], u32::MAX).unwrap().unwrap();
                assert_eq!(
                    TcpReply::decode(&frame).unwrap(),
                    TcpReply { kind, state, body }
                );
            }
        }
    }
}
