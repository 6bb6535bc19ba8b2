//! Classifies decoded frames into what each side of the relay may say. See `PROTOCOL.md`.

use crate::command::Command;
use crate::control::{truncate, Control, STOP_PAYLOAD};
use crate::frame::{flags, Frame};
use crate::tcp::{split_parts, TcpEvent, TcpReply};

/// A frame that is well-formed but does not carry a message we understand: the peer's fault.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// A job frame without option 0 (the context length).
    #[error("could not read message: option 0 (context length) is missing")]
    MissingContextLength,
    /// Option 0 points past the end of the payload.
    #[error("could not read message: context length {context} exceeds payload length {payload}")]
    ContextOutOfBounds {
        /// Announced context length.
        context: usize,
        /// Actual payload length.
        payload: usize,
    },
    /// Option 1 (state length, Pier's `state` extension) points past the end of the payload.
    #[error("could not read message: context length {context} plus state length {state} exceeds payload length {payload}")]
    StateOutOfBounds {
        /// Announced context length.
        context: usize,
        /// Announced state length.
        state: usize,
        /// Actual payload length.
        payload: usize,
    },
    /// An event's context is not the JSON object the TCP plugin sends.
    #[error("could not read event context")]
    ContextJson(#[source] serde_json::Error),
    /// A control frame's payload is not JSON.
    #[error("could not read control frame")]
    ControlJson(#[source] serde_json::Error),
    /// A control frame that is neither a pid handshake nor a stop request.
    #[error("could not read control frame: unknown payload {0:?}")]
    UnknownControl(String),
    /// A command frame's header (Pier extension) is longer than [`crate::command::MAX_HEADER`].
    #[error("could not read command: header of {0} bytes is too long")]
    CommandTooLarge(usize),
}

/// Everything a worker may send the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerMessage<'a> {
    /// The pid handshake answer.
    Pid(u32),
    /// `Worker::error()`: the event failed; the payload is the message.
    Error(&'a [u8]),
    /// `Worker::stop()`: replace this worker and run the event elsewhere.
    Stop,
    /// An answer to a TCP event.
    Reply(TcpReply<'a>),
    /// A Pier command (extension), sent during an event before its answer.
    Command(Command<'a>),
}

impl<'a> WorkerMessage<'a> {
    /// Classifies a frame a worker sent.
    pub fn from_frame(frame: &Frame<'a>) -> Result<Self, MessageError> {
        if frame.has(flags::ERROR) {
            return Ok(WorkerMessage::Error(frame.payload));
        }
        if frame.has(flags::CONTROL) {
            return match Control::parse(frame.payload)? {
                Control::Pid(pid) => Ok(WorkerMessage::Pid(pid)),
                Control::Stop => Err(MessageError::UnknownControl(truncate(frame.payload))),
            };
        }
        if Command::is_command(frame) {
            return Ok(WorkerMessage::Command(Command::decode(frame)?));
        }
        let parts = split_parts(frame)?;
        if parts.context == STOP_PAYLOAD && parts.body.is_empty() {
            return Ok(WorkerMessage::Stop);
        }
        // The parts split above, not split again by `TcpReply::decode` (~20 instructions per
        // answer pier reads, callgrind).
        Ok(WorkerMessage::Reply(TcpReply::from_parts(parts)))
    }
}

/// Everything a server may send a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// The pid handshake: answer with your own pid.
    Pid(u32),
    /// Leave the worker loop.
    Stop,
    /// A TCP event to answer.
    Event(TcpEvent<'a>),
}

impl<'a> ServerMessage<'a> {
    /// Classifies a frame the server sent.
    pub fn from_frame(frame: &Frame<'a>) -> Result<Self, MessageError> {
        if frame.has(flags::CONTROL) {
            return Ok(match Control::parse(frame.payload)? {
                Control::Pid(pid) => ServerMessage::Pid(pid),
                Control::Stop => ServerMessage::Stop,
            });
        }
        Ok(ServerMessage::Event(TcpEvent::decode(frame)?))
    }
}
