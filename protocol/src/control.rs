//! Control frames: the pid handshake and the stop request. See "Control frames" in `PROTOCOL.md`.

use crate::frame::{encode, flags, EncodeError};
use crate::message::MessageError;

/// The payload a worker answers with when asked to stop, and the server's stop request.
pub const STOP_PAYLOAD: &[u8] = br#"{"stop":true}"#;

/// What a control payload asks or answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `{"pid":N}`: the server's handshake, or the worker's answer with its own pid.
    Pid(u32),
    /// `{"stop":true}`: the server asks the worker to leave its loop.
    Stop,
}

/// The shape of every control payload we understand; other keys are ignored.
#[derive(serde::Deserialize)]
struct ControlPayload {
    /// Process id, in the handshake.
    #[serde(default)]
    pid: Option<u32>,
    /// Stop request.
    #[serde(default)]
    stop: Option<bool>,
}

impl Control {
    /// Parses a control frame's JSON payload.
    pub fn parse(payload: &[u8]) -> Result<Self, MessageError> {
        let parsed: ControlPayload =
            serde_json::from_slice(payload).map_err(MessageError::ControlJson)?;
        match parsed {
            ControlPayload {
                stop: Some(true), ..
            } => Ok(Control::Stop),
            ControlPayload { pid: Some(pid), .. } => Ok(Control::Pid(pid)),
            _ => Err(MessageError::UnknownControl(truncate(payload))),
        }
    }
}

/// Server → worker: the pid handshake, flags CONTROL|JSON.
pub fn encode_pid_request(dst: &mut Vec<u8>, pid: u32) -> Result<(), EncodeError> {
    encode(
        dst,
        flags::CONTROL | flags::CODEC_JSON,
        0,
        &[],
        &[format!(r#"{{"pid":{pid}}}"#).as_bytes()],
    )
}

/// Worker → server: the answer to the handshake, flags CONTROL only (as the stock worker sends it).
pub fn encode_pid_reply(dst: &mut Vec<u8>, pid: u32) -> Result<(), EncodeError> {
    encode(
        dst,
        flags::CONTROL,
        0,
        &[],
        &[format!(r#"{{"pid":{pid}}}"#).as_bytes()],
    )
}

/// Server → worker: leave the loop, flags CONTROL|JSON.
pub fn encode_stop_request(dst: &mut Vec<u8>) -> Result<(), EncodeError> {
    encode(
        dst,
        flags::CONTROL | flags::CODEC_JSON,
        0,
        &[],
        &[STOP_PAYLOAD],
    )
}

/// Worker → server: the `{"stop":true}` reply (`Worker::stop()`): replace me, re-run the event.
pub fn encode_worker_stop(dst: &mut Vec<u8>) -> Result<(), EncodeError> {
    encode(dst, 0, 0, &[STOP_PAYLOAD.len() as u32], &[STOP_PAYLOAD])
}

/// Worker → server: the error frame (`Worker::error()`).
pub fn encode_error(dst: &mut Vec<u8>, message: &[u8]) -> Result<(), EncodeError> {
    encode(dst, flags::ERROR, 0, &[], &[message])
}

/// At most 64 bytes of `bytes`, lossily as text, for error messages and logs.
pub(crate) fn truncate(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(64)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > cut.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pid_and_stop() {
        assert_eq!(Control::parse(br#"{"pid":42}"#).unwrap(), Control::Pid(42));
        assert_eq!(Control::parse(br#"{"stop":true}"#).unwrap(), Control::Stop);
        assert_eq!(
            Control::parse(br#"{"pid":1,"extra":"x"}"#).unwrap(),
            Control::Pid(1)
        );
        assert!(matches!(
            Control::parse(br#"{"stop":false}"#),
            Err(MessageError::UnknownControl(_))
        ));
        assert!(matches!(
            Control::parse(b"not json"),
            Err(MessageError::ControlJson(_))
        ));
        assert!(matches!(
            Control::parse(br#"{"pid":-1}"#),
            Err(MessageError::ControlJson(_))
        ));
    }
}
