//! I/O-free relay codec shared by the Pier server and the `pier` PHP extension.
//!
//! The wire format is specified in [`PROTOCOL.md`](../../PROTOCOL.md) at the repository root; this
//! crate implements it and links to it rather than restating it.
//!
//! # Layout
//! - [`frame`]: goridge v3 frames: incremental [`frame::decode`](fn@frame::decode) that borrows
//!   the payload, and [`frame::encode`](fn@frame::encode) that writes a whole frame into one
//!   buffer. Flag and stream-bit constants. [`frame::HeaderMemo`] remembers the headers already
//!   checked. Reading and writing are a module each ([`frame::decode`](mod@frame::decode),
//!   [`frame::encode`](mod@frame::encode)): their errors are the peer's fault and the caller's.
//! - [`control`]: control frames: the pid handshake and the stop request (server → worker), the
//!   pid reply (worker → server).
//! - [`tcp`]: the TCP plugin's messages: events (`CONNECTED`/`DATA`/`CLOSE`, server → worker) and
//!   replies (`WRITE`/`CONTINUE`/`WRITECLOSE`/`CLOSE`, worker → server).
//! - [`command`]: Pier command frames (worker → server, during an event, before its answer):
//!   `push` ops and the generic framing other extensions' ops use.
//! - [`tls`]: the TLS facts of a connection, the `tls` key of event contexts (Pier extension).
//! - [`memo`]: what a worker remembers between events to skip repeated work, each memo bounded
//!   and byte-exact: the decoded context of each connection, the head of each stock reply.
//! - [`message`]: classifies a decoded frame into everything a worker may say
//!   ([`message::WorkerMessage`]) or a server may say ([`message::ServerMessage`]).
//!
//! Nothing here does I/O, allocates for a payload before it is validated, or panics on any input.

pub mod command;
pub mod control;
pub mod frame;
pub mod memo;
pub mod message;
pub mod tcp;
pub mod tls;

pub use command::Command;
pub use frame::{decode, encode, Frame, FrameError, Options};
pub use message::{MessageError, ServerMessage, WorkerMessage};
pub use tcp::{
    encode_event, encode_event_with_context, encode_event_with_state, encode_reply, EventKind,
    ReplyKind, TcpEvent, TcpReply,
};
pub use tls::TlsFacts;
