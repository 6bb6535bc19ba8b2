//! A goridge RPC client, as the stock PHP client (spiral/goridge) speaks it: what `pier reset`,
//! `pier workers` and `pier connections` use to talk to a running server on `rpc.listen`.
//!
//! Blocking on purpose: a command line tool makes one call at a time, and every socket operation
//! is bounded by a timeout so a server that stopped answering cannot hang it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use pier_protocol::frame::{decode, flags, Frame};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest answer accepted (a connection list of 1000 entries is far below it).
const MAX_ANSWER: u32 = 64 << 20;

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not `tcp://host:port`, `host:port` or `unix:///path`.
    #[error("could not use RPC address {0:?}: expected tcp://host:port or unix:///path")]
    Address(String),
    /// Nothing answers there (no server, wrong address, a server without `rpc.listen`).
    #[error("could not reach the RPC server at {address}")]
    Connect {
        /// The address tried.
        address: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed or timed out mid-call.
    #[error("could not complete the RPC call {method}")]
    Io {
        /// The method.
        method: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not a goridge frame for this call.
    #[error("could not read the answer to {method}: {problem}")]
    BadAnswer {
        /// The method.
        method: String,
        /// What was wrong.
        problem: String,
    },
    /// The server answered with an error.
    #[error("could not call {method}: the server answered: {message}")]
    Remote {
        /// The method.
        method: String,
        /// The server's text.
        message: String,
    },
}

/// A socket to the server.
#[derive(Debug)]
enum Stream {
    /// `tcp://`.
    Tcp(TcpStream),
    /// `unix://`.
    Unix(UnixStream),
}

impl Stream {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One connection to a server's RPC listener.
#[derive(Debug)]
pub struct Client {
    /// The socket.
    stream: Stream,
    /// The last sequence number used (the first call uses 1, as the PHP client).
    seq: u32,
    /// Bytes read and not yet used.
    buf: Vec<u8>,
}

impl Client {
    /// Connects to `address` (`tcp://host:port`, `host:port` or `unix:///path`); every later
    /// read and write times out after `timeout`.
    pub fn connect(address: &str, timeout: Duration) -> Result<Client, ClientError> {
        let connect_error = |source| ClientError::Connect {
            address: address.to_owned(),
            source,
        };
        let stream = if let Some(path) = address.strip_prefix("unix://") {
            let s = UnixStream::connect(path).map_err(connect_error)?;
            s.set_read_timeout(Some(timeout)).map_err(connect_error)?;
            s.set_write_timeout(Some(timeout)).map_err(connect_error)?;
            Stream::Unix(s)
        } else {
            let hostport = address.strip_prefix("tcp://").unwrap_or(address);
            if hostport.is_empty() || hostport.contains("://") {
                return Err(ClientError::Address(address.to_owned()));
            }
            use std::net::ToSocketAddrs;
            let addrs: Vec<_> = hostport
                .to_socket_addrs()
                .map_err(|_| ClientError::Address(address.to_owned()))?
                .collect();
            let mut last = None;
            let mut connected = None;
            for a in addrs {
                match TcpStream::connect_timeout(&a, timeout) {
                    Ok(s) => {
                        connected = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let s = connected.ok_or_else(|| {
                connect_error(last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()))
            })?;
            s.set_read_timeout(Some(timeout)).map_err(connect_error)?;
            s.set_write_timeout(Some(timeout)).map_err(connect_error)?;
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        };
        Ok(Client {
            stream,
            seq: 0,
            buf: Vec::new(),
        })
    }

    /// Calls `method` with `arg` (JSON codec, as the PHP client's default) and decodes the
    /// result.
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        arg: &A,
    ) -> Result<R, ClientError> {
        self.seq = self.seq.wrapping_add(1);
        let request =
            encode_request(self.seq, method, arg).map_err(|problem| ClientError::BadAnswer {
                method: method.to_owned(),
                problem,
            })?;
        let io_error = |source| ClientError::Io {
            method: method.to_owned(),
            source,
        };
        self.stream.io().write_all(&request).map_err(io_error)?;
        loop {
            match decode(&self.buf, MAX_ANSWER) {
                Ok(Some((frame, used))) => {
                    let result = decode_answer(&frame, self.seq, method);
                    self.buf.drain(..used);
                    return result;
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(ClientError::BadAnswer {
                        method: method.to_owned(),
                        problem: e.to_string(),
                    })
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.io().read(&mut chunk).map_err(io_error)?;
            if n == 0 {
                return Err(io_error(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A request frame: JSON codec, options `[seq, len(method)]`, payload method ‖ JSON argument.
pub fn encode_request<A: Serialize>(seq: u32, method: &str, arg: &A) -> Result<Vec<u8>, String> {
    let mut payload = method.as_bytes().to_vec();
    serde_json::to_writer(&mut payload, arg).map_err(|e| e.to_string())?;
    let name_len = u32::try_from(method.len()).map_err(|_| "method name too long".to_owned())?;
    let frame = Frame::new(flags::CODEC_JSON, &[seq, name_len], &payload)
        .ok_or_else(|| "too many options".to_owned())?;
    let mut out = Vec::new();
    frame.encode(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The result in an answer frame to call `seq` of `method`.
pub fn decode_answer<R: DeserializeOwned>(
    frame: &Frame<'_>,
    seq: u32,
    method: &str,
) -> Result<R, ClientError> {
    let bad = |problem: String| ClientError::BadAnswer {
        method: method.to_owned(),
        problem,
    };
    if frame.options.get(0) != Some(seq) {
        return Err(bad(format!(
            "sequence number {:?}, expected {seq}",
            frame.options.get(0)
        )));
    }
    let name_len = frame.options.get(1).unwrap_or(0) as usize;
    let body = frame
        .payload
        .get(name_len..)
        .ok_or_else(|| bad("method name longer than the payload".into()))?;
    if frame.has(flags::ERROR) {
        return Err(ClientError::Remote {
            method: method.to_owned(),
            message: String::from_utf8_lossy(body).into_owned(),
        });
    }
    if !frame.has(flags::CODEC_JSON) {
        return Err(bad(format!(
            "codec flags {:#04x}, expected JSON",
            frame.flags
        )));
    }
    serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/rpc-vectors.json");
        let text = std::fs::read_to_string(path).expect("../shared/rpc-vectors.json");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        hex::decode(json["frames"][name]["hex"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn requests_are_byte_identical_to_the_stock_php_client() {
        let cases: [(&str, u32, &str, serde_json::Value); 5] = [
            (
                "rpc_request_tcp_close_json",
                1,
                "tcp.Close",
                "6ba7b810-9dad-41d1-80b4-00c04fd430c8".into(),
            ),
            (
                "rpc_request_resetter_reset_json",
                3,
                "resetter.Reset",
                "tcp".into(),
            ),
            (
                "rpc_request_informer_workers_json",
                5,
                "informer.Workers",
                "tcp".into(),
            ),
            (
                "rpc_request_informer_list_json",
                6,
                "informer.List",
                true.into(),
            ),
            (
                "rpc_request_rpc_version_json",
                7,
                "rpc.Version",
                true.into(),
            ),
        ];
        for (name, seq, method, arg) in cases {
            assert_eq!(
                encode_request(seq, method, &arg).unwrap(),
                vector(name),
                "{name}"
            );
        }
    }

    fn answer<R: DeserializeOwned>(name: &str, seq: u32, method: &str) -> Result<R, ClientError> {
        let bytes = vector(name);
        let (frame, used) = decode(&bytes, MAX_ANSWER).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        decode_answer(&frame, seq, method)
    }

    #[test]
    fn answers_of_the_vectors_decode() {
        let reset: bool = answer("rpc_response_resetter_reset_json", 3, "resetter.Reset").unwrap();
        assert!(reset);
        let list: Vec<String> =
            answer("rpc_response_informer_list_json", 6, "informer.List").unwrap();
        assert_eq!(list, ["tcp"]);
        let workers: serde_json::Value =
            answer("rpc_response_informer_workers_json", 5, "informer.Workers").unwrap();
        assert_eq!(workers["workers"][0]["pid"], 4242);
        let err = answer::<bool>(
            "rpc_response_resetter_reset_unknown_json",
            4,
            "resetter.Reset",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not call resetter.Reset: the server answered: no such plugin: http"
        );
        let wrong = answer::<bool>("rpc_response_resetter_reset_json", 9, "resetter.Reset");
        assert!(matches!(wrong, Err(ClientError::BadAnswer { .. })));
    }
}
