//! Classifies decoded frames into what each side of the relay may say. See `PROTOCOL.md`.

use crate::command::Command;
use crate::control::{truncate, Control, STOP_PAYLOAD};
use crate::frame::{flags, Frame, FrameView};
use crate::tcp::{split_parts, split_view, Parts, TcpEvent, TcpReply};

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
        Ok(Self::answer(split_parts(frame)?))
    }

    /// [`WorkerMessage::from_frame`] of a frame read in place ([`crate::frame::decode_view`]):
    /// an answer (no error, control or JSON codec flag, as from every stock worker) is split
    /// from the view's bytes; any other frame is built and classified as `from_frame` does.
    #[inline]
    pub fn from_view(view: &FrameView<'a>) -> Result<Self, MessageError> {
        if view.flags() & (flags::ERROR | flags::CONTROL | flags::CODEC_JSON) != 0 {
            return Self::from_frame(&view.frame());
        }
        Ok(Self::answer(split_view(view)?))
    }

    /// A stop request or a reply, from a frame's split payload. The parts split once, not again
    /// by `TcpReply::decode` (~20 instructions per answer pier reads, callgrind).
    #[inline]
    fn answer(parts: Parts<'a>) -> Self {
        if parts.context == STOP_PAYLOAD && parts.body.is_empty() {
            return WorkerMessage::Stop;
        }
        WorkerMessage::Reply(TcpReply::from_parts(parts))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, decode_view, encode};

    /// Every kind of frame a worker may send, and the malformed ones, read in place as pier reads
    /// answers: the same message (or error) as through a decoded [`Frame`], and the same bytes
    /// consumed; a frame not all there yet is `None` both ways, a bad header the same error.
    #[test]
    fn a_worker_frame_read_in_place_is_the_same_message() {
        let cases: &[(u8, &[u32], &[u8])] = &[
            (flags::CODEC_RAW, &[5], b"WRITEhello"),
            (0, &[5], b"WRITEhello"),
            (flags::CODEC_RAW, &[10], b"WRITECLOSEbye"),
            (flags::CODEC_RAW, &[8], b"CONTINUE"),
            (flags::CODEC_RAW, &[5, 3], b"CLOSEst8"),
            (flags::CODEC_RAW, &[5, 0], b"WRITEbody"),
            (flags::CODEC_RAW, &[3], b"ODDbody"),
            (flags::CODEC_RAW, &[STOP_PAYLOAD.len() as u32], STOP_PAYLOAD),
            (flags::CODEC_RAW, &[0], STOP_PAYLOAD),
            (flags::CODEC_RAW, &[], b"WRITE"),
            (flags::CODEC_RAW, &[9], b"WRITE"),
            (flags::CODEC_RAW, &[5, 9], b"WRITEhi"),
            (flags::ERROR, &[], b"it failed"),
            (flags::ERROR | flags::CODEC_RAW, &[1], b"it failed"),
            (flags::CONTROL, &[], br#"{"pid":42}"#),
            (flags::CONTROL, &[], br#"{"stop":true}"#),
            (flags::CONTROL, &[], b"not json"),
            (flags::CODEC_JSON, &[14], br#"{"op":"close"}"#),
            (
                flags::CODEC_JSON,
                &[29],
                br#"{"op":"idle_timeout","ms":50}"#,
            ),
            (flags::CODEC_JSON, &[], b"{}"),
        ];
        for &(flags, options, payload) in cases {
            let mut bytes = Vec::new();
            encode(&mut bytes, flags, 0, options, &[payload]).unwrap();
            let (frame, used) = decode(&bytes, 1 << 20).unwrap().unwrap();
            let view = decode_view(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(view.frame_len(), used);
            assert_eq!(view.frame(), frame);
            assert_eq!(
                format!("{:?}", WorkerMessage::from_view(&view)),
                format!("{:?}", WorkerMessage::from_frame(&frame)),
                "{flags:#x} {options:?} {payload:?}"
            );
            for cut in 0..bytes.len() {
                assert_eq!(decode_view(&bytes[..cut], 1 << 20), Ok(None), "{cut}");
            }
            let mut corrupt = bytes.clone();
            corrupt[2] ^= 1;
            assert_eq!(
                decode_view(&corrupt, 1 << 20).map(|v| v.map(|v| v.frame())),
                decode(&corrupt, 1 << 20).map(|f| f.map(|(f, _)| f))
            );
            assert!(decode_view(&corrupt, 1 << 20).is_err());
            assert_eq!(
                decode_view(&bytes, 2).map(|v| v.is_some()),
                decode(&bytes, 2).map(|f| f.is_some()),
            );
        }
        // Two frames back to back: the view ends where the first does.
        let mut two = Vec::new();
        encode(&mut two, flags::CODEC_RAW, 0, &[5], &[b"WRITEa"]).unwrap();
        let first = two.len();
        encode(&mut two, flags::CODEC_RAW, 0, &[5], &[b"CLOSE"]).unwrap();
        let view = decode_view(&two, 1 << 20).unwrap().unwrap();
        assert_eq!(view.frame_len(), first);
        assert_eq!(view.payload(), b"WRITEa");
    }
}
