//! One worker's conversation with the server: what the PHP classes do, without PHP.
//!
//! It answers pid handshakes, turns frames into events, enforces the answer discipline (exactly
//! one answer per request) and encodes every answer as one frame.
//!
//! Answers are batched without delaying anyone: an answer is written at once unless the next
//! event is already buffered (the server sent several; see "Several events in flight" in
//! PROTOCOL.md). Then it waits in `out` while that event is handled, and the answers of the batch
//! leave together in one write, at the latest when the worker would block reading, stops, or
//! holds `MAX_HELD` bytes. With one event at a time (RoadRunner, or a Pier server with free
//! workers) every answer is written as soon as it is given, as before.

use pier_protocol::control::{self, Control};
use pier_protocol::frame::{flags, EncodeError};
use pier_protocol::memo::{ContextMemo, Kept, ReplyHeads};
use pier_protocol::tcp::{ReplyKind, TcpEvent};
use pier_protocol::MessageError;

use std::borrow::Cow;

use crate::push::{self, Command, PushError};
use crate::relay::{Relay, RelayError};

/// Answer bytes held back for a batch before they are written anyway, so a long batch of large
/// answers neither grows memory nor overruns the pipe's buffer in one go.
const MAX_HELD: usize = 64 * 1024;

/// The environment variable Pier sets with the extensions it supports.
pub const FEATURES_ENV: &str = "PIER_FEATURES";

/// The Pier extensions (PROTOCOL.md "Pier extensions") this extension implements, as named in
/// `PIER_FEATURES`: append a name when adding one. PHP sees it as `Pier\features()`, `php --ri pier`
/// and `pier --version` show it.
pub const FEATURES: &[&str] = &["state", "push", "idle_timeout", "starttls"];

/// Why a session call failed. `Relay` is a transport failure; every other variant is misuse by
/// the worker script or a frame the server should never have sent.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The transport failed (see [`RelayError`]).
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The server sent a well-formed frame that is not an event or control message we know.
    #[error("could not understand a frame from the server")]
    Message(#[source] MessageError),
    /// An answer could not be encoded (a body over 4 GiB: the worker's mistake).
    #[error("could not encode the answer")]
    Encode(#[source] EncodeError),
    /// respond/read/close before the first waitRequest() (worker script bug).
    #[error("could not answer: answering before any request (call waitRequest() first)")]
    AnswerBeforeRequest,
    /// respond/read/close twice for one request (worker script bug).
    #[error("could not answer: answering twice (the request was already answered)")]
    AnswerTwice,
    /// waitRequest() while the previous request is unanswered: the server would wait forever.
    #[error("could not wait for a request: the pending request has no answer yet (respond(), read(), close(), error() or stop() first)")]
    Unanswered,
    /// setState() under a server that did not announce the `state` extension.
    #[error("connection state needs a Pier server (PIER_FEATURES has no 'state')")]
    StateUnsupported,
    /// setState() before the first waitRequest() (worker script bug).
    #[error(
        "could not set state: answering before any request (the state rides on the next answer)"
    )]
    StateBeforeRequest,
    /// setState() after the request was answered (worker script bug).
    #[error("could not set state: answering twice (the request was already answered)")]
    StateAfterAnswer,
    /// A push method under a server that did not announce the `push` extension.
    #[error("server push needs a Pier server (PIER_FEATURES has no 'push')")]
    PushUnsupported,
    /// A push method before the first waitRequest() (worker script bug).
    #[error("could not {0}: no request is being handled (push commands go out during a request, after waitRequest())")]
    PushBeforeRequest(&'static str),
    /// A push method after the request was answered (worker script bug).
    #[error(
        "could not {0}: the request was already answered (push commands go out before the answer)"
    )]
    PushAfterAnswer(&'static str),
    /// A push method's argument is not acceptable (worker script bug).
    #[error(transparent)]
    Push(#[from] PushError),
    /// setIdleTimeout() under a server that did not announce the `idle_timeout` extension.
    #[error(
        "a per-connection idle timeout needs a Pier server (PIER_FEATURES has no 'idle_timeout')"
    )]
    IdleTimeoutUnsupported,
    /// setIdleTimeout() before the first waitRequest() (worker script bug).
    #[error("could not set the idle timeout: no request is being handled (it is sent during a request, after waitRequest())")]
    IdleTimeoutBeforeRequest,
    /// setIdleTimeout() after the request was answered (worker script bug).
    #[error("could not set the idle timeout: the request was already answered (it is sent before the answer)")]
    IdleTimeoutAfterAnswer,
    /// setIdleTimeout() with a negative value or one over a week (worker script bug).
    #[error("could not set the idle timeout: {0} ms is not between 0 and {MAX_IDLE_TIMEOUT_MS} (a week), or null for the server's")]
    IdleTimeoutRange(i64),
    /// startTls() under a server that did not announce the `starttls` extension.
    #[error("STARTTLS needs a Pier server (PIER_FEATURES has no 'starttls')")]
    StarttlsUnsupported,
    /// startTls() before the first waitRequest() (worker script bug).
    #[error("answering before any request: startTls() needs a request from waitRequest()")]
    StarttlsBeforeRequest,
    /// startTls() after the request was answered (worker script bug).
    #[error("answering twice: startTls() after the request was already answered")]
    StarttlsAfterAnswer,
}

/// The longest idle timeout the server accepts, in milliseconds (a week; PROTOCOL.md).
pub const MAX_IDLE_TIMEOUT_MS: i64 = 604_800_000;

/// Where the worker is in the request/answer cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// No request was ever received.
    Start,
    /// A request waits for its one answer.
    Pending,
    /// The last request was answered.
    Answered,
}

/// Which Pier extensions the server announced in `PIER_FEATURES`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// The server keeps connection state (`state`).
    pub state: bool,
    /// The server takes push commands (`push`).
    pub push: bool,
    /// The server takes per-connection idle timeouts (`idle_timeout`).
    pub idle_timeout: bool,
    /// The server starts TLS when a worker commands it (`starttls`).
    pub starttls: bool,
}

impl Features {
    /// Parses a comma-separated `PIER_FEATURES` value; unknown names are ignored.
    pub fn parse(value: Option<&str>) -> Self {
        let has = |feature: &str| {
            value
                .unwrap_or("")
                .split(',')
                .any(|name| name.trim() == feature)
        };
        Features {
            state: has("state"),
            push: has("push"),
            idle_timeout: has("idle_timeout"),
            starttls: has("starttls"),
        }
    }
}

/// What waiting produced.
#[derive(Debug)]
pub enum Incoming<'a, X = ()> {
    /// An event to answer (borrows the relay's buffer), and what the caller keeps with its
    /// connection ([`Kept`]).
    Event(TcpEvent<'a>, Kept<'a, X>),
    /// The server asked us to stop, or closed the relay: leave the loop.
    End,
}

/// A worker's side of the relay. `X` is what its caller keeps with each connection (the
/// extension: the connection's PHP strings), next to the connection's decoded context.
#[derive(Debug)]
pub struct Session<X = ()> {
    /// The transport and its read buffer.
    relay: Relay,
    /// Extensions the server supports (read once, when the worker is created).
    features: Features,
    /// Answer discipline.
    turn: Turn,
    /// State to attach to the next answer (`setState`), if any.
    state: Option<Vec<u8>>,
    /// Outgoing frames not written yet (answers of a batch while its next event is buffered);
    /// reused, so steady-state answers do not allocate.
    out: Vec<u8>,
    /// Our pid, for the handshake.
    pid: u32,
    /// The server said stop, or the relay closed: every later wait ends too, without reading.
    ended: bool,
    /// The uuid of the connection whose request is being handled (push commands default to it),
    /// once [`Session::current_context`] copied it for a push command; reused between events.
    uuid: String,
    /// The server of the request being handled (a broadcast without a group goes to its
    /// connections), copied with `uuid`; reused between events.
    server: String,
    /// Whether `uuid` and `server` hold the pending request's (they are copied only when a push
    /// command needs them, not per event).
    context_copied: bool,
    /// Each connection's context, decoded once (not per event), and what the caller keeps with it.
    contexts: ContextMemo<X>,
    /// Stock reply heads, encoded once per kind and body length.
    heads: ReplyHeads,
}

impl<X: Default> Session<X> {
    /// A session over `relay`.
    pub fn new(relay: Relay, features: Features) -> Self {
        Session {
            relay,
            features,
            turn: Turn::Start,
            state: None,
            out: Vec::new(),
            pid: std::process::id(),
            ended: false,
            uuid: String::new(),
            server: String::new(),
            context_copied: false,
            contexts: ContextMemo::keeping(),
            heads: ReplyHeads::new(),
        }
    }

    /// Waits for the next event, answering pid handshakes on the way.
    ///
    /// Always inlined into its one caller per process (`waitRequest()`), for the reason
    /// `ContextMemo::decode_keeping` is (−27 instructions per event, measured; inlining `reply`,
    /// `split_parts` or the memo's hash as well made each event dearer).
    #[inline(always)]
    pub fn wait(&mut self) -> Result<Incoming<'_, X>, SessionError> {
        if self.ended {
            return Ok(Incoming::End);
        }
        if self.turn == Turn::Pending {
            return Err(SessionError::Unanswered);
        }
        loop {
            if !self.out.is_empty() && !self.relay.frame_buffered() {
                // About to block on the relay: the batch's answers go first.
                self.flush()?;
            }
            if !self.relay.advance()? {
                self.ended = true;
                // The server closed the relay: the held answers are only sent in case it still
                // reads (it closed its write side only).
                let _ = self.flush_held();
                return Ok(Incoming::End);
            }
            if self.relay.current_flags() & flags::CONTROL == 0 {
                break;
            }
            // Handshakes are answered here, whenever one arrives.
            let frame = self.relay.current_frame()?;
            match Control::parse(frame.payload()).map_err(SessionError::Message)? {
                Control::Stop => {
                    self.ended = true;
                    self.flush_held()?;
                    return Ok(Incoming::End);
                }
                Control::Pid(_) => {
                    let at = self.out.len();
                    control::encode_pid_reply(&mut self.out, self.pid)
                        .map_err(|e| self.unwind(at, e))?;
                }
            }
        }
        // The event is decoded from the frame the loop stopped at, once.
        let frame = self.relay.current_frame()?;
        let (event, kept) = self
            .contexts
            .decode_view_keeping(&frame)
            .map_err(SessionError::Message)?;
        self.turn = Turn::Pending;
        self.state = None;
        self.context_copied = false;
        Ok(Incoming::Event(event, kept))
    }

    /// `join($group, $uuid)` / `leave(…)`: `uuid` None means the current request's connection.
    pub fn membership(
        &mut self,
        join: bool,
        group: &[u8],
        uuid: Option<&[u8]>,
    ) -> Result<(), SessionError> {
        let what = if join { "join" } else { "leave" };
        self.require_push(what)?;
        let group = Cow::Borrowed(push::group(what, group)?);
        let uuid = uuid.map(|u| push::uuid(what, u)).transpose()?;
        if uuid.is_none() {
            self.copy_context()?;
        }
        // The current uuid is moved out so the command can borrow it while `self.out` is written.
        let current = std::mem::take(&mut self.uuid);
        let uuid = Cow::Borrowed(uuid.unwrap_or(current.as_str()));
        let result = self.command(&if join {
            Command::Join { uuid, group }
        } else {
            Command::Leave { uuid, group }
        });
        self.uuid = current;
        result
    }

    /// `broadcast($data, $group, $except)`: to the members of `group`, or with none to every
    /// connection of the current request's server. `except` is None when it held a non-string.
    pub fn broadcast(
        &mut self,
        data: &[u8],
        group: Option<&[u8]>,
        except: Option<&[&[u8]]>,
    ) -> Result<(), SessionError> {
        self.require_push("broadcast")?;
        let group = group
            .map(|g| push::group("broadcast", g).map(Cow::Borrowed))
            .transpose()?;
        let except = except
            .ok_or(PushError::Except)?
            .iter()
            .map(|u| push::uuid("broadcast", u).map(Cow::Borrowed))
            .collect::<Result<Vec<_>, _>>()?;
        if group.is_none() {
            self.copy_context()?;
        }
        // The server name is moved out so the command can borrow it while `self.out` is written.
        let current = std::mem::take(&mut self.server);
        let server = group.is_none().then_some(Cow::Borrowed(current.as_str()));
        let result = self.command(&Command::Broadcast {
            group,
            server,
            except,
            data,
        });
        self.server = current;
        result
    }

    /// Copies the pending request's uuid and server into `uuid` and `server` (once per request):
    /// the push commands that default to them need them, while most requests send none, so
    /// they are not copied per event. The request's frame is still the relay's current one
    /// (nothing is read before the next [`Session::wait`]); decoding it again gives the same
    /// event (the memo's promise), from the memo when its connection is remembered.
    fn copy_context(&mut self) -> Result<(), SessionError> {
        if self.context_copied {
            return Ok(());
        }
        let frame = self.relay.current_frame()?;
        let event = self
            .contexts
            .decode_view(&frame)
            .map_err(SessionError::Message)?;
        self.uuid.clear();
        self.uuid.push_str(&event.uuid);
        self.server.clear();
        self.server.push_str(&event.server);
        self.context_copied = true;
        Ok(())
    }

    /// Drops what the caller kept with every connection (for values that must not outlive
    /// something of the caller's, e.g. a PHP request's memory); the decoded contexts stay.
    pub fn forget_kept(&mut self) {
        self.contexts.forget_kept();
    }
}

impl<X> Session<X> {
    /// Answers the pending request (`respond`, `read`, `close`).
    pub fn reply(&mut self, kind: ReplyKind<'_>, body: &[u8]) -> Result<(), SessionError> {
        match self.turn {
            Turn::Start => return Err(SessionError::AnswerBeforeRequest),
            Turn::Answered => return Err(SessionError::AnswerTwice),
            Turn::Pending => {}
        }
        let at = self.out.len();
        let state = self.state.take();
        self.heads
            .encode_reply(&mut self.out, kind, state.as_deref(), body)
            .map_err(|e| self.unwind(at, e))?;
        self.turn = Turn::Answered;
        self.send_or_hold()
    }

    /// Sends the error frame; always allowed, answers the pending request.
    pub fn error(&mut self, message: &[u8]) -> Result<(), SessionError> {
        let at = self.out.len();
        control::encode_error(&mut self.out, message).map_err(|e| self.unwind(at, e))?;
        self.settle();
        self.send_or_hold()
    }

    /// Sends the `{"stop":true}` reply, with any answers still held; always allowed, answers the
    /// pending request.
    pub fn stop(&mut self) -> Result<(), SessionError> {
        let at = self.out.len();
        control::encode_worker_stop(&mut self.out).map_err(|e| self.unwind(at, e))?;
        self.settle();
        self.flush()
    }

    /// Writes the answers held back for the batch, if any. Called when the worker ends (the
    /// session is dropped) so that a worker leaving mid-batch loses no answer it gave.
    pub fn flush_held(&mut self) -> Result<(), SessionError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.flush()
    }

    /// Attaches `state` to the next answer of the pending request (`b""` clears it).
    pub fn set_state(&mut self, state: &[u8]) -> Result<(), SessionError> {
        self.require(
            self.features.state,
            [
                SessionError::StateUnsupported,
                SessionError::StateBeforeRequest,
                SessionError::StateAfterAnswer,
            ],
        )?;
        let slot = self.state.get_or_insert_with(Vec::new);
        slot.clear();
        slot.extend_from_slice(state);
        Ok(())
    }

    /// Checks that a push command may go out now: the server supports push and a request waits
    /// for its answer. `what` names the method in the error.
    fn require_push(&self, what: &'static str) -> Result<(), SessionError> {
        self.require(
            self.features.push,
            [
                SessionError::PushUnsupported,
                SessionError::PushBeforeRequest(what),
                SessionError::PushAfterAnswer(what),
            ],
        )
    }

    /// Checks that a call needing a Pier extension may go out now: the server announced it
    /// (`supported`) and a request waits for its answer. `refusals` are the errors for an
    /// unsupported extension, no request yet and a request already answered, in that order.
    fn require(&self, supported: bool, refusals: [SessionError; 3]) -> Result<(), SessionError> {
        let [unsupported, before, after] = refusals;
        match (supported, self.turn) {
            (false, _) => Err(unsupported),
            (true, Turn::Start) => Err(before),
            (true, Turn::Answered) => Err(after),
            (true, Turn::Pending) => Ok(()),
        }
    }

    /// Sends a command frame behind the answers held for the batch (the server sees every frame
    /// in order), with the same hold-or-send rule as answers.
    fn command(&mut self, command: &Command<'_>) -> Result<(), SessionError> {
        let at = self.out.len();
        command
            .encode(&mut self.out)
            .map_err(|e| self.unwind(at, e))?;
        self.send_or_hold()
    }

    /// `setIdleTimeout($ms)`: the idle timeout of the pending request's connection (None = the
    /// server's, 0 = none). Nothing is sent when it fails.
    pub fn set_idle_timeout(&mut self, ms: Option<i64>) -> Result<(), SessionError> {
        self.require(
            self.features.idle_timeout,
            [
                SessionError::IdleTimeoutUnsupported,
                SessionError::IdleTimeoutBeforeRequest,
                SessionError::IdleTimeoutAfterAnswer,
            ],
        )?;
        let ms = match ms {
            None => None,
            Some(ms) if (0..=MAX_IDLE_TIMEOUT_MS).contains(&ms) => u64::try_from(ms).ok(),
            Some(ms) => return Err(SessionError::IdleTimeoutRange(ms)),
        };
        self.command(&Command::IdleTimeout { ms })
    }

    /// `send($uuid, $data)`: queue `data` on connection `uuid`.
    pub fn send(&mut self, uuid: &[u8], data: &[u8]) -> Result<(), SessionError> {
        self.require_push("send")?;
        let uuid = Cow::Borrowed(push::uuid("send", uuid)?);
        self.command(&Command::Send { uuid, data })
    }

    /// `disconnect($uuid)`: close connection `uuid`.
    pub fn disconnect(&mut self, uuid: &[u8]) -> Result<(), SessionError> {
        self.require_push("disconnect")?;
        let uuid = Cow::Borrowed(push::uuid("disconnect", uuid)?);
        self.command(&Command::Close { uuid })
    }

    /// Sends the `starttls` command: the server writes the next answer in plaintext, then starts
    /// TLS. Checked first, so nothing is sent when it fails.
    pub fn start_tls(&mut self) -> Result<(), SessionError> {
        self.require(
            self.features.starttls,
            [
                SessionError::StarttlsUnsupported,
                SessionError::StarttlsBeforeRequest,
                SessionError::StarttlsAfterAnswer,
            ],
        )?;
        self.command(&Command::Starttls)
    }

    /// error() and stop() end the request whatever state it was in (they also answer nothing
    /// when nothing is pending, which the server tolerates).
    fn settle(&mut self) {
        if self.turn == Turn::Pending {
            self.turn = Turn::Answered;
        }
        self.state = None;
    }

    /// Writes `out` now, unless the next event is already buffered and less than [`MAX_HELD`]
    /// is held: then the answer leaves with the batch's next ones.
    fn send_or_hold(&mut self) -> Result<(), SessionError> {
        if self.out.len() < MAX_HELD && self.relay.frame_buffered() {
            return Ok(());
        }
        self.flush()
    }

    /// Drops a partly encoded frame from `out` (frames held before it stay).
    fn unwind(&mut self, at: usize, e: EncodeError) -> SessionError {
        self.out.truncate(at);
        SessionError::Encode(e)
    }

    fn flush(&mut self) -> Result<(), SessionError> {
        let sent = self.relay.send(&self.out);
        self.out.clear();
        if self.out.capacity() > 1 << 20 {
            self.out = Vec::new();
        }
        Ok(sent?)
    }
}

impl<X> Drop for Session<X> {
    fn drop(&mut self) {
        // Best effort: the relay may be gone already, and there is nobody left to tell.
        let _ = self.flush_held();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::Transport;
    use pier_protocol::frame::decode;
    use pier_protocol::tcp::{encode_event_with_state, EventKind, TcpReply};
    use pier_protocol::WorkerMessage;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn session(features: Features) -> (Session, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Session::new(Relay::new(Transport::Unix(a)), features), b)
    }

    fn event(kind: EventKind, state: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_event_with_state(&mut out, "127.0.0.1:1", "srv", "uuid-1", kind, state, body)
            .unwrap();
        out
    }

    /// Reads exactly one frame from the peer side and returns its bytes.
    fn read_frame(peer: &mut UnixStream) -> Vec<u8> {
        let mut buf = vec![0u8; 12];
        peer.read_exact(&mut buf).unwrap();
        let words = usize::from(buf[0] & 0x0f);
        let len = u32::from_le_bytes(buf[2..6].try_into().unwrap()) as usize;
        buf.resize(words * 4 + len, 0);
        peer.read_exact(&mut buf[12..]).unwrap();
        buf
    }

    #[test]
    fn handshake_is_answered_then_event_then_stop() {
        let (mut s, mut peer) = session(Features::default());
        let mut pid = Vec::new();
        control::encode_pid_request(&mut pid, 4242).unwrap();
        peer.write_all(&pid).unwrap();
        peer.write_all(&event(EventKind::Data, b"", b"hi\r\n"))
            .unwrap();
        let mut stop = Vec::new();
        control::encode_stop_request(&mut stop).unwrap();
        peer.write_all(&stop).unwrap();

        match s.wait().unwrap() {
            Incoming::Event(e, _) => {
                assert_eq!(e.event, EventKind::Data);
                assert_eq!(e.body, b"hi\r\n");
                assert_eq!(e.server, "srv");
            }
            Incoming::End => panic!("expected an event"),
        }
        s.reply(ReplyKind::Write, b"ok").unwrap();
        // Everything arrived at once, so the handshake answer and the reply were held for the
        // batch; the stop request sends them.
        assert!(matches!(s.wait().unwrap(), Incoming::End));
        let reply = read_frame(&mut peer);
        let (frame, _) = decode(&reply, 1024).unwrap().unwrap();
        assert_eq!(
            WorkerMessage::from_frame(&frame).unwrap(),
            WorkerMessage::Pid(std::process::id())
        );
        assert_eq!(read_frame(&mut peer), reply_bytes(b"ok"));
        // After the stop request nothing more is read, even if the server sent more.
        peer.write_all(&event(EventKind::Data, b"", b"late"))
            .unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::End));
    }

    /// Whether the peer has nothing to read right now (a byte it does read is lost, which only
    /// happens when the assertion using this fails anyway).
    fn nothing_to_read(mut peer: &UnixStream) -> bool {
        peer.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let empty =
            matches!(peer.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        peer.set_nonblocking(false).unwrap();
        empty
    }

    fn reply_bytes(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        TcpReply {
            kind: ReplyKind::Write,
            state: None,
            body,
        }
        .encode(&mut out)
        .unwrap();
        out
    }

    #[test]
    fn answers_of_a_batch_leave_together_and_a_lone_event_is_answered_at_once() {
        let (mut s, mut peer) = session(Features::default());
        let mut batch = Vec::new();
        for body in [&b"a"[..], b"b", b"c"] {
            batch.extend(event(EventKind::Data, b"", body));
        }
        peer.write_all(&batch).unwrap();
        let mut want = Vec::new();
        for body in [&b"a"[..], b"b", b"c"] {
            assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
            assert!(
                nothing_to_read(&peer),
                "held while the next event is buffered"
            );
            s.reply(ReplyKind::Write, body).unwrap();
            want.extend(reply_bytes(body));
        }
        // The last event of the batch: all three answers in one write.
        let mut got = vec![0u8; want.len() + 64];
        let n = peer.read(&mut got).unwrap();
        assert_eq!(&got[..n], &want[..]);

        // A lone event is answered at once.
        peer.write_all(&event(EventKind::Data, b"", b"d")).unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        s.reply(ReplyKind::Write, b"d").unwrap();
        assert_eq!(read_frame(&mut peer), reply_bytes(b"d"));
    }

    #[test]
    fn held_answers_are_sent_before_blocking_on_a_partial_frame_at_stop_and_at_drop() {
        // The next event is only partly there: the answer is not held (reading would block).
        let (mut s, mut peer) = session(Features::default());
        let mut bytes = event(EventKind::Data, b"", b"a");
        let second = event(EventKind::Data, b"", b"b");
        bytes.extend_from_slice(&second[..10]);
        peer.write_all(&bytes).unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        s.reply(ReplyKind::Write, b"a").unwrap();
        assert_eq!(read_frame(&mut peer), reply_bytes(b"a"));

        // Held answers go out before the stop request ends the loop.
        let (mut s, mut peer) = session(Features::default());
        let mut bytes = event(EventKind::Data, b"", b"a");
        control::encode_stop_request(&mut bytes).unwrap();
        peer.write_all(&bytes).unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        s.reply(ReplyKind::Write, b"a").unwrap();
        assert!(nothing_to_read(&peer));
        assert!(matches!(s.wait().unwrap(), Incoming::End));
        assert_eq!(read_frame(&mut peer), reply_bytes(b"a"));

        // A worker that leaves mid-batch (exit() in the script) still sends what it answered.
        let (mut s, mut peer) = session(Features::default());
        let mut bytes = event(EventKind::Data, b"", b"a");
        bytes.extend(event(EventKind::Data, b"", b"b"));
        peer.write_all(&bytes).unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        s.reply(ReplyKind::Write, b"a").unwrap();
        assert!(nothing_to_read(&peer));
        drop(s);
        assert_eq!(read_frame(&mut peer), reply_bytes(b"a"));
    }

    #[test]
    fn answer_discipline() {
        let (mut s, mut peer) = session(Features::default());
        assert!(matches!(
            s.reply(ReplyKind::Continue, b""),
            Err(SessionError::AnswerBeforeRequest)
        ));
        peer.write_all(&event(EventKind::Connected, b"", b""))
            .unwrap();
        peer.write_all(&event(EventKind::Close, b"", b"")).unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        assert!(matches!(s.wait(), Err(SessionError::Unanswered)));
        s.reply(ReplyKind::Continue, b"").unwrap();
        assert!(matches!(
            s.reply(ReplyKind::Close, b""),
            Err(SessionError::AnswerTwice)
        ));
        // error() is always sent and ends the next request too.
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        s.error(b"boom").unwrap();
        assert!(matches!(
            s.reply(ReplyKind::Close, b""),
            Err(SessionError::AnswerTwice)
        ));
        s.stop().unwrap();
        let first = read_frame(&mut peer);
        let (f, _) = decode(&first, 1024).unwrap().unwrap();
        assert_eq!(
            WorkerMessage::from_frame(&f).unwrap(),
            WorkerMessage::Reply(TcpReply {
                kind: ReplyKind::Continue,
                state: None,
                body: b""
            })
        );
        let err = read_frame(&mut peer);
        assert_eq!(err[1], flags::ERROR);
        let stop = read_frame(&mut peer);
        let (f, _) = decode(&stop, 1024).unwrap().unwrap();
        assert_eq!(WorkerMessage::from_frame(&f).unwrap(), WorkerMessage::Stop);
    }

    #[test]
    fn state_round_trip_and_feature_gate() {
        let (mut s, mut peer) = session(Features::default());
        peer.write_all(&event(EventKind::Data, b"", b"x")).unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        assert!(matches!(
            s.set_state(b"st"),
            Err(SessionError::StateUnsupported)
        ));

        let (mut s, mut peer) = session(Features::parse(Some("foo, state")));
        assert!(matches!(
            s.set_state(b"st"),
            Err(SessionError::StateBeforeRequest)
        ));
        peer.write_all(&event(EventKind::Data, b"\x00old\xff", b"body"))
            .unwrap();
        peer.write_all(&event(EventKind::Data, b"", b"next"))
            .unwrap();
        match s.wait().unwrap() {
            Incoming::Event(e, _) => {
                assert_eq!(e.state, b"\x00old\xff");
                assert_eq!(e.body, b"body");
            }
            Incoming::End => panic!("expected an event"),
        }
        s.set_state(b"first").unwrap();
        s.set_state(b"\x00new\xff").unwrap();
        s.reply(ReplyKind::Write, b"out").unwrap();
        assert!(matches!(
            s.set_state(b"late"),
            Err(SessionError::StateAfterAnswer)
        ));
        // The state does not stick to the next request's answer.
        match s.wait().unwrap() {
            Incoming::Event(e, _) => assert_eq!(e.state, b""),
            Incoming::End => panic!("expected an event"),
        }
        s.set_state(b"").unwrap();
        s.reply(ReplyKind::Continue, b"").unwrap();
        // Both events arrived together: both answers leave now, in order.
        let bytes = read_frame(&mut peer);
        let (f, _) = decode(&bytes, 1024).unwrap().unwrap();
        assert_eq!(f.options.as_slice(), &[5, 5]);
        assert_eq!(
            WorkerMessage::from_frame(&f).unwrap(),
            WorkerMessage::Reply(TcpReply {
                kind: ReplyKind::Write,
                state: Some(b"\x00new\xff"),
                body: b"out"
            })
        );
        let bytes = read_frame(&mut peer);
        let (f, _) = decode(&bytes, 1024).unwrap().unwrap();
        assert_eq!(f.options.as_slice(), &[8, 0], "empty state clears");
    }

    #[test]
    fn idle_timeout_goes_out_before_the_answer_and_only_when_allowed() {
        let (mut s, mut peer) = session(Features::parse(Some("state,push")));
        peer.write_all(&event(EventKind::Data, b"", b"x")).unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        assert!(matches!(
            s.set_idle_timeout(Some(5)),
            Err(SessionError::IdleTimeoutUnsupported)
        ));

        let (mut s, mut peer) = session(Features::parse(Some("idle_timeout")));
        assert!(matches!(
            s.set_idle_timeout(None),
            Err(SessionError::IdleTimeoutBeforeRequest)
        ));
        peer.write_all(&event(EventKind::Data, b"", b"x")).unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        for bad in [-1, MAX_IDLE_TIMEOUT_MS + 1] {
            assert!(matches!(
                s.set_idle_timeout(Some(bad)),
                Err(SessionError::IdleTimeoutRange(ms)) if ms == bad
            ));
        }
        s.set_idle_timeout(Some(90_000)).unwrap();
        s.set_idle_timeout(None).unwrap();
        s.reply(ReplyKind::Continue, b"").unwrap();
        assert!(matches!(
            s.set_idle_timeout(Some(0)),
            Err(SessionError::IdleTimeoutAfterAnswer)
        ));
        for want in [Some(90_000), None] {
            let bytes = read_frame(&mut peer);
            let (f, _) = decode(&bytes, 1024).unwrap().unwrap();
            assert_eq!(
                WorkerMessage::from_frame(&f).unwrap(),
                WorkerMessage::Command(Command::IdleTimeout { ms: want })
            );
        }
    }

    #[test]
    fn push_commands_go_out_in_order_before_the_answer() {
        let (mut s, mut peer) = session(Features::default());
        peer.write_all(&event(EventKind::Data, b"", b"x")).unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        assert!(matches!(
            s.send(b"u", b"x"),
            Err(SessionError::PushUnsupported)
        ));

        let (mut s, mut peer) = session(Features::parse(Some("state,push")));
        assert_eq!(
            s.membership(true, b"g", None).unwrap_err().to_string(),
            "could not join: no request is being handled (push commands go out during a request, after waitRequest())"
        );
        peer.write_all(&event(EventKind::Data, b"", b"x")).unwrap();
        assert!(matches!(s.wait().unwrap(), Incoming::Event(..)));
        s.send(b"other", b"\x00hi").unwrap();
        s.membership(true, b"room", None).unwrap();
        s.membership(false, b"room", Some(b"other")).unwrap();
        s.broadcast(b"all", None, Some(&[b"other"])).unwrap();
        s.broadcast(b"room!", Some(b"room"), Some(&[])).unwrap();
        s.disconnect(b"other").unwrap();
        assert_eq!(
            s.broadcast(b"", Some(b""), None).unwrap_err().to_string(),
            "could not broadcast: a group name must be 1 to 128 bytes of UTF-8 (got 0 bytes)"
        );
        assert_eq!(
            s.broadcast(b"", None, None).unwrap_err().to_string(),
            "could not broadcast: $except must hold uuid strings only"
        );
        s.reply(ReplyKind::Write, b"ok").unwrap();
        assert_eq!(
            s.disconnect(b"u").unwrap_err().to_string(),
            "could not disconnect: the request was already answered (push commands go out before the answer)"
        );
        let mut want = Vec::new();
        for cmd in [
            Command::Send {
                uuid: "other".into(),
                data: b"\x00hi",
            },
            Command::Join {
                uuid: "uuid-1".into(),
                group: "room".into(),
            },
            Command::Leave {
                uuid: "other".into(),
                group: "room".into(),
            },
            Command::Broadcast {
                group: None,
                server: Some("srv".into()),
                except: vec!["other".into()],
                data: b"all",
            },
            Command::Broadcast {
                group: Some("room".into()),
                server: None,
                except: vec![],
                data: b"room!",
            },
            Command::Close {
                uuid: "other".into(),
            },
        ] {
            cmd.encode(&mut want).unwrap();
        }
        want.extend(reply_bytes(b"ok"));
        let mut got = vec![0u8; want.len()];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn corrupt_and_truncated_input() {
        let (mut s, mut peer) = session(Features::default());
        let mut bad = Vec::new();
        pier_protocol::frame::encode(&mut bad, flags::CONTROL, 0, &[], &[b"nope"]).unwrap();
        peer.write_all(&bad).unwrap();
        assert!(matches!(s.wait(), Err(SessionError::Message(_))));

        let (mut s, mut peer) = session(Features::default());
        let ev = event(EventKind::Data, b"", b"abc");
        peer.write_all(&ev[..ev.len() - 1]).unwrap();
        drop(peer);
        assert!(matches!(
            s.wait(),
            Err(SessionError::Relay(RelayError::Truncated { .. }))
        ));
    }
}
