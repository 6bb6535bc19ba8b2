//! goridge RPC frames as RoadRunner's rpc plugin reads and writes them (net/rpc over goridge; see
//! `../shared/roadrunner-rpc.md` and the "RPC" section of the server README), and the argument /
//! result codecs: JSON and msgpack. I/O-free.

use bytes::Bytes;
use pier_protocol::frame::{encode, flags as codec_flags};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The codec of a request, named by its frame flags; the answer uses the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `CODEC_JSON` (0x08): the PHP client's default.
    Json,
    /// `CODEC_MSGPACK` (0x10).
    Msgpack,
}

/// What failed in this module: reading a frame as a request (the client's fault; the connection
/// is closed, since nothing can be answered without a sequence number and a method), decoding an
/// argument, or encoding a result.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not the two options `[seq, len(method)]`.
    #[error("could not read RPC request: {0} options, expected 2 ([seq, method length])")]
    Options(usize),
    /// The method length points past the payload.
    #[error("could not read RPC request: method length {method} exceeds payload length {payload}")]
    MethodOutOfBounds {
        /// Announced method length.
        method: usize,
        /// Payload length.
        payload: usize,
    },
    /// JSON that is not the argument the method takes.
    #[error("could not decode the JSON argument")]
    Json(#[source] serde_json::Error),
    /// msgpack that is not the argument the method takes.
    #[error("could not decode the msgpack argument")]
    MsgpackDecode(#[source] rmp_serde::decode::Error),
    /// A result that msgpack cannot hold (a bug: results are plain data).
    #[error("could not encode the msgpack result")]
    MsgpackEncode(#[source] rmp_serde::encode::Error),
}

impl Codec {
    /// The flag this codec is named by.
    pub fn flag(self) -> u8 {
        match self {
            Codec::Json => codec_flags::CODEC_JSON,
            Codec::Msgpack => codec_flags::CODEC_MSGPACK,
        }
    }

    /// Decodes a method's argument.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(CodecError::Json),
            Codec::Msgpack => rmp_serde::from_slice(bytes).map_err(CodecError::MsgpackDecode),
        }
    }

    /// Encodes a method's result (msgpack maps keep their field names, as PHP clients expect).
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::Json => serde_json::to_vec(value).map_err(CodecError::Json),
            Codec::Msgpack => rmp_serde::to_vec_named(value).map_err(CodecError::MsgpackEncode),
        }
    }
}

/// One request, copied out of its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Option 0: the client's sequence number, echoed in the answer.
    pub seq: u32,
    /// The method name (`Service.Method`), as sent.
    pub method: Bytes,
    /// The request frame's codec flags (every flag but `ERROR`), echoed in the answer.
    pub flags: u8,
    /// The codec, when it is one Pier speaks.
    pub codec: Option<Codec>,
    /// The encoded argument.
    pub argument: Bytes,
}

impl Request {
    /// Reads a request from its frame's flags, options and payload (as shared bytes: the
    /// argument is a slice of it, not a copy).
    pub fn parse(flags: u8, options: &[u32], payload: Bytes) -> Result<Request, CodecError> {
        let [seq, method_len] = *options else {
            return Err(CodecError::Options(options.len()));
        };
        let method_len = method_len as usize;
        if method_len > payload.len() {
            return Err(CodecError::MethodOutOfBounds {
                method: method_len,
                payload: payload.len(),
            });
        }
        let codec = if flags & codec_flags::CODEC_JSON != 0 {
            Some(Codec::Json)
        } else if flags & codec_flags::CODEC_MSGPACK != 0 {
            Some(Codec::Msgpack)
        } else {
            None
        };
        Ok(Request {
            seq,
            method: payload.slice(..method_len),
            flags: flags & !codec_flags::ERROR,
            codec,
            argument: payload.slice(method_len..),
        })
    }

    /// The method name as text (lossy: an invalid name matches no method anyway).
    pub fn method_name(&self) -> String {
        String::from_utf8_lossy(&self.method).into_owned()
    }

    /// Appends the answer carrying `result` (already encoded in the request's codec).
    pub fn encode_result(&self, dst: &mut Vec<u8>, result: &[u8]) {
        self.encode_answer(dst, self.flags, result);
    }

    /// Appends an error answer: the `ERROR` flag, payload = method name ‖ `message`.
    pub fn encode_error(&self, dst: &mut Vec<u8>, message: &str) {
        self.encode_answer(dst, self.flags | codec_flags::ERROR, message.as_bytes());
    }

    fn encode_answer(&self, dst: &mut Vec<u8>, flags: u8, body: &[u8]) {
        use codec_flags::ERROR;
        // Cannot fail: two options, and the payload is bounded by the request's frame size
        // plus a result the server built (far below 4 GiB).
        let options = [self.seq, self.method.len() as u32];
        if encode(dst, flags, 0, &options, &[&self.method, body]).is_err() {
            let _ = encode(
                dst,
                flags | ERROR,
                0,
                &options,
                &[&self.method, b"answer too large"],
            );
        }
    }
}
