//! `Pier\Tcp\Connections`: a goridge RPC client with the JSON codec, calling the server's `pier.*`
//! methods on `rpc.listen` (PUSH-SPEC / README "Server push").
//!
//! Requests are framed exactly as the stock PHP client (spiral/goridge 4.2, `RPC::call`) frames
//! them: flags `CODEC_JSON`, options `[sequence, length of the method name]`, payload = method name
//! ‖ JSON argument; sequence numbers start at 1 in each process and grow by one per call. An answer
//! is accepted when its first option is the call's sequence number; the method name its second
//! option measures is stripped; the ERROR flag makes the rest the error text. The pure-PHP package
//! (`Pier\Internal\RpcClient`) does the same, with the same messages.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use pier_protocol::frame::{self, flags, EncodeError, FrameError};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

/// The largest answer accepted, in bytes: a full page of `pier.List` is far below it.
pub const MAX_ANSWER: u32 = 16 << 20;

/// How long to wait for the connection to the RPC listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the server's bytes before a call fails.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The last sequence number used in this process (the stock client's counter is per process too).
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A decoded JSON result, as PHP's `json_decode($json, true)` sees it: object keys keep their
/// order (serde_json's own map sorts them), integers beyond 64 bits become floats.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    List(Vec<Json>),
    /// An object, keys in the order written.
    Map(Vec<(String, Json)>),
}

impl Json {
    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Int(i) => s.serialize_i64(*i),
            Json::Float(x) => s.serialize_f64(*x),
            Json::Str(t) => s.serialize_str(t),
            Json::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

/// Builds [`Json`] values.
struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Json, E> {
        Ok(Json::Int(i))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Json, E> {
        Ok(i64::try_from(u).map_or(Json::Float(u as f64), Json::Int))
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Json, E> {
        Ok(Json::Float(x))
    }
    fn visit_str<E: de::Error>(self, t: &str) -> Result<Json, E> {
        Ok(Json::Str(t.to_owned()))
    }
    fn visit_string<E: de::Error>(self, t: String) -> Result<Json, E> {
        Ok(Json::Str(t))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Json::Map(entries))
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The address is not `tcp://host:port` or `unix:///path` (the caller's mistake).
    #[error("could not use the RPC address {0}: expected tcp://host:port or unix:///path")]
    Address(String),
    /// `RR_RPC` is not set (the process was not started by a server with `rpc.listen`).
    #[error("could not find the RPC address: RR_RPC is not set (configure rpc.listen, or use new Connections($address))")]
    NoEnvironment,
    /// The listener could not be reached.
    #[error("could not call {method}: could not connect to {address}")]
    Connect {
        /// The method being called.
        method: String,
        /// The address.
        address: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The connection failed during the call, or the answer is not a frame of this call.
    #[error("could not call {method} on {address}")]
    Call {
        /// The method being called.
        method: String,
        /// The address.
        address: String,
        /// What went wrong.
        #[source]
        problem: Problem,
    },
    /// An argument string is not UTF-8 (JSON strings are; binary data travels as `data_b64`).
    #[error("could not call {0}: a string in its argument is not UTF-8")]
    NotUtf8(&'static str),
    /// `$except` holds something that is not a string.
    #[error("could not call pier.Broadcast: $except must hold uuid strings only")]
    Except,
    /// The server answered with the ERROR flag; the message is its text.
    #[error("{0}")]
    Server(String),
    /// The answer is a frame of this call, but not the JSON result expected.
    #[error("could not call {method}: {problem}")]
    Answer {
        /// The method called.
        method: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// What went wrong on the connection during a call. Each message says what failed and leaves its
/// cause to `source()` (the exception's message joins the chain with ": "); the texts are the
/// pure-PHP package's, which the conformance suite holds both implementations to.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Sending the request failed.
    #[error("the connection failed while sending")]
    Send(#[source] io::Error),
    /// The server did not answer in time.
    #[error("no answer within {} s", IO_TIMEOUT.as_secs())]
    Timeout,
    /// The server closed the connection.
    #[error("the server closed the connection before answering")]
    Closed,
    /// Reading failed.
    #[error("the connection failed while receiving")]
    Receive(#[source] io::Error),
    /// The answer is not a goridge frame (or is larger than [`MAX_ANSWER`]).
    #[error("the answer is not a goridge frame")]
    Frame(#[source] FrameError),
    /// The request could not be encoded (an argument over 4 GiB).
    #[error("the request is too large")]
    Encode(#[source] EncodeError),
}

/// Where the RPC listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `tcp://host:port`: host and port as written.
    Tcp(String),
    /// `unix:///path`: the socket's path.
    Unix(String),
}

impl Address {
    /// Parses `tcp://host:port` or `unix:///path` (the forms of RoadRunner's `rpc.listen`).
    pub fn parse(text: &str) -> Result<Self, RpcError> {
        let bad = || RpcError::Address(serde_json::to_string(text).unwrap_or_default());
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            let host_ok = if let Some(inner) = host.strip_prefix('[') {
                inner.strip_suffix(']').is_some_and(|ip| {
                    !ip.is_empty()
                        && ip
                            .chars()
                            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
                })
            } else {
                !host.is_empty() && !host.contains([':', '/', '[', ']'])
            };
            let port_ok = (1..=5).contains(&port.len())
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| p <= 65535);
            if host_ok && port_ok {
                return Ok(Address::Tcp(rest.to_owned()));
            }
        } else if let Some(path) = text.strip_prefix("unix://") {
            if !path.is_empty() && path != "/" {
                return Ok(Address::Unix(path.to_owned()));
            }
        }
        Err(bad())
    }
}

/// The connection to the listener.
#[derive(Debug)]
enum Stream {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

impl Stream {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(bytes),
            Stream::Unix(s) => s.write_all(bytes),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

/// Appends the request frame of call `sequence`: the stock client's framing.
pub fn encode_request(
    dst: &mut Vec<u8>,
    sequence: u32,
    method: &str,
    json: &[u8],
) -> Result<(), EncodeError> {
    let len = u32::try_from(method.len())
        .map_err(|_| EncodeError::PayloadTooLarge(method.len() as u64))?;
    frame::encode(
        dst,
        flags::CODEC_JSON,
        0,
        &[sequence, len],
        &[method.as_bytes(), json],
    )
}

/// The JSON result of the answer `frame` to call `sequence`, or the server's error.
pub fn decode_answer<'a>(
    method: &'static str,
    sequence: u32,
    frame: &frame::Frame<'a>,
) -> Result<&'a [u8], RpcError> {
    let options = frame.options.as_slice();
    let skip = options.get(1).map_or(usize::MAX, |&n| n as usize);
    if options.first() != Some(&sequence) || skip > frame.payload.len() {
        let list: Vec<String> = options.iter().map(u32::to_string).collect();
        return Err(RpcError::Answer {
            method,
            problem: format!(
                "the answer does not belong to call {sequence} (options [{}])",
                list.join(", ")
            ),
        });
    }
    let body = &frame.payload[skip..];
    if frame.has(flags::ERROR) {
        return Err(RpcError::Server(String::from_utf8_lossy(body).into_owned()));
    }
    if !frame.has(flags::CODEC_JSON) {
        return Err(RpcError::Answer {
            method,
            problem: format!("the answer is not JSON (flags 0x{:02x})", frame.flags),
        });
    }
    Ok(body)
}

/// One RPC connection: opened on the first call and kept; any failure closes it, and the next
/// call reconnects.
#[derive(Debug)]
pub struct Client {
    /// Where to connect.
    address: Address,
    /// The address as given, for messages.
    text: String,
    /// The connection, None until the first call and after a failure.
    stream: Option<Stream>,
    /// Reused buffer for requests and answers.
    buf: Vec<u8>,
}

impl Client {
    /// A client for `address` (nothing is connected yet).
    pub fn new(address: &str) -> Result<Self, RpcError> {
        Ok(Client {
            address: Address::parse(address)?,
            text: address.to_owned(),
            stream: None,
            buf: Vec::new(),
        })
    }

    /// Calls `method` with `argument` and returns the decoded result.
    pub fn call(
        &mut self,
        method: &'static str,
        argument: &impl Serialize,
    ) -> Result<Json, RpcError> {
        let json = serde_json::to_vec(argument).map_err(|_| RpcError::NotUtf8(method))?;
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if self.stream.is_none() {
            self.stream = Some(self.connect(method)?);
        }
        let answer = self.exchange(method, sequence, &json);
        if answer.is_err() {
            self.stream = None;
        }
        let (start, end) = answer.map_err(|problem| RpcError::Call {
            method: method.to_owned(),
            address: self.text.clone(),
            problem,
        })?;
        let (frame, _) = frame::decode(&self.buf[start..end], MAX_ANSWER)
            .ok()
            .flatten()
            .expect("exchange returned a whole, checked frame");
        let body = decode_answer(method, sequence, &frame)?;
        let value = serde_json::from_slice(body).map_err(|e| RpcError::Answer {
            method,
            problem: format!("its answer is not JSON: {e}"),
        });
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        value
    }

    fn connect(&self, method: &str) -> Result<Stream, RpcError> {
        let fail = |source| RpcError::Connect {
            method: method.to_owned(),
            address: self.text.clone(),
            source,
        };
        let stream = match &self.address {
            Address::Tcp(hostport) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
                let mut connected = None;
                for addr in hostport.to_socket_addrs().map_err(fail)? {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = connected.ok_or(last).map_err(fail)?;
                s.set_nodelay(true).map_err(fail)?;
                s.set_read_timeout(Some(IO_TIMEOUT)).map_err(fail)?;
                s.set_write_timeout(Some(IO_TIMEOUT)).map_err(fail)?;
                Stream::Tcp(s)
            }
            Address::Unix(path) => {
                let s = UnixStream::connect(path).map_err(fail)?;
                s.set_read_timeout(Some(IO_TIMEOUT)).map_err(fail)?;
                s.set_write_timeout(Some(IO_TIMEOUT)).map_err(fail)?;
                Stream::Unix(s)
            }
        };
        Ok(stream)
    }

    /// Sends the request and reads one whole frame into `self.buf`; returns where it is.
    fn exchange(
        &mut self,
        method: &str,
        sequence: u32,
        json: &[u8],
    ) -> Result<(usize, usize), Problem> {
        self.buf.clear();
        encode_request(&mut self.buf, sequence, method, json).map_err(Problem::Encode)?;
        let stream = self.stream.as_mut().ok_or(Problem::Closed)?;
        stream.write_all(&self.buf).map_err(Problem::Send)?;
        self.buf.clear();
        loop {
            match frame::decode(&self.buf, MAX_ANSWER) {
                Ok(Some((_, used))) => return Ok((0, used)),
                Ok(None) => {}
                Err(e) => return Err(Problem::Frame(e)),
            }
            let have = self.buf.len();
            self.buf.resize(have + 64 * 1024, 0);
            let read = stream.read(&mut self.buf[have..]);
            match read {
                Ok(0) => {
                    self.buf.truncate(have);
                    return Err(Problem::Closed);
                }
                Ok(n) => self.buf.truncate(have + n),
                Err(e) => {
                    self.buf.truncate(have);
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) {
                        return Err(Problem::Timeout);
                    }
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if e.kind() == io::ErrorKind::ConnectionReset {
                        return Err(Problem::Closed);
                    }
                    return Err(Problem::Receive(e));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pier.* methods

/// Bytes as `data` when they are UTF-8, else as `data_b64` (standard base64).
#[derive(Debug, Serialize)]
struct Data<'a> {
    /// The bytes, when they are UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    /// The bytes in standard base64, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_b64: Option<String>,
}

impl<'a> Data<'a> {
    fn of(bytes: &'a [u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) => Data {
                data: Some(s),
                data_b64: None,
            },
            Err(_) => Data {
                data: None,
                data_b64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }
}

/// `pier.Send`'s argument.
#[derive(Debug, Serialize)]
struct SendArg<'a> {
    /// The target connection.
    uuid: &'a str,
    /// The bytes.
    #[serde(flatten)]
    data: Data<'a>,
}

/// `pier.Broadcast`'s argument. Its `group` and `server` are not a flattened [`Filter`] (which
/// `duplicates` finds alike): the pure-PHP package sends them in this order, `Filter` in the
/// other, and a flattened struct goes through serde's map serializer.
#[derive(Debug, Serialize)]
struct BroadcastArg<'a> {
    /// The bytes.
    #[serde(flatten)]
    data: Data<'a>,
    /// Members of this group only.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    /// Connections of this server only.
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'a str>,
    /// Uuids left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    except: Vec<&'a str>,
}

/// `pier.Join` / `pier.Leave`'s argument.
#[derive(Debug, Serialize)]
struct MemberArg<'a> {
    /// The connection.
    uuid: &'a str,
    /// The group.
    group: &'a str,
}

/// `pier.Close` / `pier.Info`'s argument.
#[derive(Debug, Serialize)]
struct UuidArg<'a> {
    /// The connection.
    uuid: &'a str,
}

/// `pier.Count` / `pier.Groups`'s argument, and the start of `pier.List`'s.
#[derive(Debug, Serialize)]
struct Filter<'a> {
    /// Connections of this server only.
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'a str>,
    /// Members of this group only.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
}

/// `pier.List`'s argument.
#[derive(Debug, Serialize)]
struct ListArg<'a> {
    /// Which connections.
    #[serde(flatten)]
    filter: Filter<'a>,
    /// How many to skip.
    offset: i64,
    /// At most this many.
    limit: i64,
}

/// The `pier.*` methods over one [`Client`]; what `Pier\Tcp\Connections` calls.
#[derive(Debug)]
pub struct Connections {
    /// The RPC connection.
    client: Client,
}

fn text<'a>(method: &'static str, bytes: &'a [u8]) -> Result<&'a str, RpcError> {
    std::str::from_utf8(bytes).map_err(|_| RpcError::NotUtf8(method))
}

fn texts<'a>(method: &'static str, bytes: Option<&'a [u8]>) -> Result<Option<&'a str>, RpcError> {
    bytes.map(|b| text(method, b)).transpose()
}

fn unexpected(method: &'static str, expected: &str, value: &Json) -> RpcError {
    RpcError::Answer {
        method,
        problem: format!("the server answered {value}, expected {expected}"),
    }
}

fn boolean(method: &'static str, value: Json) -> Result<bool, RpcError> {
    match value {
        Json::Bool(b) => Ok(b),
        other => Err(unexpected(method, "a boolean", &other)),
    }
}

fn integer(method: &'static str, value: Json) -> Result<i64, RpcError> {
    match value {
        Json::Int(i) => Ok(i),
        other => Err(unexpected(method, "an integer", &other)),
    }
}

impl Connections {
    /// The server at `address` (`tcp://host:port` or `unix:///path`).
    pub fn new(address: &str) -> Result<Self, RpcError> {
        Ok(Connections {
            client: Client::new(address)?,
        })
    }

    /// The server whose address `RR_RPC` holds.
    pub fn from_environment() -> Result<Self, RpcError> {
        match std::env::var("RR_RPC") {
            Ok(address) if !address.is_empty() => Self::new(&address),
            _ => Err(RpcError::NoEnvironment),
        }
    }

    /// `pier.Send`.
    pub fn send(&mut self, uuid: &[u8], data: &[u8]) -> Result<bool, RpcError> {
        const M: &str = "pier.Send";
        let arg = SendArg {
            uuid: text(M, uuid)?,
            data: Data::of(data),
        };
        boolean(M, self.client.call(M, &arg)?)
    }

    /// `pier.Broadcast`; `except` is None when it held a non-string.
    pub fn broadcast(
        &mut self,
        data: &[u8],
        group: Option<&[u8]>,
        server: Option<&[u8]>,
        except: Option<Vec<&[u8]>>,
    ) -> Result<i64, RpcError> {
        const M: &str = "pier.Broadcast";
        let except = except.ok_or(RpcError::Except)?;
        let arg = BroadcastArg {
            data: Data::of(data),
            group: texts(M, group)?,
            server: texts(M, server)?,
            except: except
                .into_iter()
                .map(|u| text(M, u))
                .collect::<Result<_, _>>()?,
        };
        integer(M, self.client.call(M, &arg)?)
    }

    /// `pier.Join` (`join` true) or `pier.Leave`.
    pub fn membership(&mut self, join: bool, group: &[u8], uuid: &[u8]) -> Result<bool, RpcError> {
        let m = if join { "pier.Join" } else { "pier.Leave" };
        let arg = MemberArg {
            uuid: text(m, uuid)?,
            group: text(m, group)?,
        };
        boolean(m, self.client.call(m, &arg)?)
    }

    /// `pier.Close`.
    pub fn close(&mut self, uuid: &[u8]) -> Result<bool, RpcError> {
        const M: &str = "pier.Close";
        let arg = UuidArg {
            uuid: text(M, uuid)?,
        };
        boolean(M, self.client.call(M, &arg)?)
    }

    /// `pier.List`: the page, checked to have `total` and `connections`.
    pub fn list(
        &mut self,
        server: Option<&[u8]>,
        group: Option<&[u8]>,
        offset: i64,
        limit: i64,
    ) -> Result<Json, RpcError> {
        const M: &str = "pier.List";
        let arg = ListArg {
            filter: Filter {
                server: texts(M, server)?,
                group: texts(M, group)?,
            },
            offset,
            limit,
        };
        let page = self.client.call(M, &arg)?;
        let ok = matches!(page.get("total"), Some(Json::Int(_)))
            && matches!(page.get("connections"), Some(Json::List(_) | Json::Map(_)));
        if !ok {
            return Err(unexpected(M, r#"a page {"total", "connections"}"#, &page));
        }
        Ok(page)
    }

    /// `pier.Info`: the connection, or None.
    pub fn info(&mut self, uuid: &[u8]) -> Result<Option<Json>, RpcError> {
        const M: &str = "pier.Info";
        let arg = UuidArg {
            uuid: text(M, uuid)?,
        };
        match self.client.call(M, &arg)? {
            Json::Null => Ok(None),
            v @ (Json::Map(_) | Json::List(_)) => Ok(Some(v)),
            v => Err(unexpected(M, "a connection or null", &v)),
        }
    }

    /// `pier.Count`.
    pub fn count(&mut self, server: Option<&[u8]>, group: Option<&[u8]>) -> Result<i64, RpcError> {
        const M: &str = "pier.Count";
        let arg = Filter {
            server: texts(M, server)?,
            group: texts(M, group)?,
        };
        integer(M, self.client.call(M, &arg)?)
    }

    /// `pier.Groups`: a list.
    pub fn groups(&mut self, server: Option<&[u8]>) -> Result<Json, RpcError> {
        const M: &str = "pier.Groups";
        let arg = Filter {
            server: texts(M, server)?,
            group: None,
        };
        match self.client.call(M, &arg)? {
            v @ Json::List(_) => Ok(v),
            v => Err(unexpected(M, "a list of groups", &v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::thread;

    fn vector(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/rpc-vectors.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "could not read {}: {e} (shared/ must sit beside the repo)",
                path.display()
            )
        });
        let all: Value = serde_json::from_str(&text).unwrap();
        hex::decode(all["frames"][name]["hex"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn requests_are_framed_as_the_stock_client_frames_them() {
        let mut out = Vec::new();
        encode_request(
            &mut out,
            1,
            "tcp.Close",
            br#""6ba7b810-9dad-41d1-80b4-00c04fd430c8""#,
        )
        .unwrap();
        assert_eq!(out, vector("rpc_request_tcp_close_json"));
        out.clear();
        encode_request(&mut out, 3, "resetter.Reset", br#""tcp""#).unwrap();
        assert_eq!(out, vector("rpc_request_resetter_reset_json"));
        out.clear();
        encode_request(&mut out, 7, "rpc.Version", b"true").unwrap();
        assert_eq!(out, vector("rpc_request_rpc_version_json"));
    }

    fn answer(name: &str, sequence: u32) -> Result<Json, RpcError> {
        let bytes = vector(name);
        let (frame, _) = frame::decode(&bytes, MAX_ANSWER).unwrap().unwrap();
        decode_answer("m", sequence, &frame).map(|b| serde_json::from_slice(b).unwrap())
    }

    #[test]
    fn the_response_vectors_are_accepted_and_the_error_vector_is_an_error() {
        assert_eq!(
            answer("rpc_response_tcp_close_json", 1).unwrap(),
            Json::Bool(true)
        );
        assert_eq!(
            answer("rpc_response_resetter_reset_json", 3).unwrap(),
            Json::Bool(true)
        );
        assert_eq!(
            answer("rpc_response_informer_list_json", 6).unwrap(),
            Json::List(vec![Json::Str("tcp".into())])
        );
        // Keys keep their order, as json_decode keeps them.
        assert_eq!(
            answer("rpc_response_informer_workers_json", 5)
                .unwrap()
                .to_string(),
            r#"{"workers":[{"pid":4242,"status":2,"numExecs":17,"created":1764430000000000000,"memoryUsage":20971520,"CPUPercent":0.5,"command":"php worker.php","statusStr":"ready"}]}"#
        );
        assert_eq!(
            answer("rpc_response_rpc_version_json", 7).unwrap(),
            Json::Str("2025.1.15".into())
        );
        match answer("rpc_response_resetter_reset_unknown_json", 4) {
            Err(RpcError::Server(text)) => assert_eq!(text, "no such plugin: http"),
            other => panic!("expected the server's error, got {other:?}"),
        }
        // Another call's answer, or another codec, is refused.
        assert!(matches!(
            answer("rpc_response_tcp_close_json", 2),
            Err(RpcError::Answer { .. })
        ));
        assert!(matches!(
            answer("rpc_response_tcp_close_msgpack", 2),
            Err(RpcError::Answer { .. })
        ));
    }

    #[test]
    fn addresses() {
        for ok in [
            "tcp://127.0.0.1:6001",
            "tcp://localhost:1",
            "tcp://[::1]:6001",
            "unix:///tmp/rr.sock",
        ] {
            assert!(Address::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1:6001",
            "tcp://127.0.0.1",
            "tcp://:6001",
            "tcp://h:70000",
            "http://h:1",
            "unix://",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Address::parse("udp://x").unwrap_err().to_string(),
            r#"could not use the RPC address "udp://x": expected tcp://host:port or unix:///path"#
        );
    }

    /// A request the fake server saw: sequence number, method, JSON argument.
    type Seen = (u32, String, String);

    /// A fake server thread: answers each request with `answers[i]` (Ok = JSON result, Err = error
    /// text), echoing the call's sequence number and method; returns the requests it saw.
    fn fake(
        answers: Vec<Result<&'static str, &'static str>>,
    ) -> (String, thread::JoinHandle<Vec<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("tcp://{}", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = Vec::new();
            for a in answers {
                let (seq, method, arg, used) = loop {
                    if let Some((f, used)) = frame::decode(&buf, 1 << 20).unwrap() {
                        let o = f.options.as_slice();
                        let (m, arg) = f.payload.split_at(o[1] as usize);
                        assert_eq!(f.flags, flags::CODEC_JSON);
                        break (
                            o[0],
                            String::from_utf8(m.to_vec()).unwrap(),
                            String::from_utf8(arg.to_vec()).unwrap(),
                            used,
                        );
                    }
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).unwrap();
                    assert!(n > 0, "client went away");
                    buf.extend_from_slice(&chunk[..n]);
                };
                buf.drain(..used);
                let (fl, body) = match a {
                    Ok(json) => (flags::CODEC_JSON, json),
                    Err(text) => (flags::CODEC_JSON | flags::ERROR, text),
                };
                let mut out = Vec::new();
                frame::encode(
                    &mut out,
                    fl,
                    0,
                    &[seq, method.len() as u32],
                    &[method.as_bytes(), body.as_bytes()],
                )
                .unwrap();
                s.write_all(&out).unwrap();
                seen.push((seq, method, arg));
            }
            seen
        });
        (address, handle)
    }

    #[test]
    fn methods_send_their_arguments_and_check_their_results() {
        let (address, server) = fake(vec![
            Ok("true"),
            Ok("3"),
            Ok("false"),
            Ok("true"),
            Ok(r#"{"total":1,"connections":[{"uuid":"u"}]}"#),
            Ok("null"),
            Ok("7"),
            Ok(r#"[{"group":"g","members":2}]"#),
            Err("boom"),
            Ok(r#""nope""#),
        ]);
        let mut c = Connections::new(&address).unwrap();
        assert!(c.send(b"u", b"hi\n").unwrap());
        assert_eq!(
            c.broadcast(b"\xff\x00", Some(b"g"), None, Some(vec![b"a", b"b"]))
                .unwrap(),
            3
        );
        assert!(!c.membership(true, b"g", b"u").unwrap());
        assert!(c.close(b"u").unwrap());
        assert_eq!(
            c.list(Some(b"s"), None, 0, 100).unwrap().get("total"),
            Some(&Json::Int(1))
        );
        assert_eq!(c.info(b"u").unwrap(), None);
        assert_eq!(c.count(None, Some(b"g")).unwrap(), 7);
        assert_eq!(
            c.groups(None).unwrap().to_string(),
            r#"[{"group":"g","members":2}]"#
        );
        assert_eq!(c.close(b"u").unwrap_err().to_string(), "boom");
        assert_eq!(
            c.count(None, None).unwrap_err().to_string(),
            r#"could not call pier.Count: the server answered "nope", expected an integer"#
        );
        assert_eq!(
            c.send(b"\xff", b"").unwrap_err().to_string(),
            "could not call pier.Send: a string in its argument is not UTF-8"
        );
        assert_eq!(
            c.broadcast(b"", None, None, None).unwrap_err().to_string(),
            "could not call pier.Broadcast: $except must hold uuid strings only"
        );
        let seen = server.join().unwrap();
        let args: Vec<(&str, &str)> = seen
            .iter()
            .map(|(_, m, a)| (m.as_str(), a.as_str()))
            .collect();
        assert_eq!(
            args,
            vec![
                ("pier.Send", r#"{"uuid":"u","data":"hi\n"}"#),
                (
                    "pier.Broadcast",
                    r#"{"data_b64":"/wA=","group":"g","except":["a","b"]}"#
                ),
                ("pier.Join", r#"{"uuid":"u","group":"g"}"#),
                ("pier.Close", r#"{"uuid":"u"}"#),
                ("pier.List", r#"{"server":"s","offset":0,"limit":100}"#),
                ("pier.Info", r#"{"uuid":"u"}"#),
                ("pier.Count", r#"{"group":"g"}"#),
                ("pier.Groups", "{}"),
                ("pier.Close", r#"{"uuid":"u"}"#),
                ("pier.Count", "{}"),
            ]
        );
        // Sequence numbers grow by one per call (other tests in this process may interleave).
        assert!(seen.windows(2).all(|w| w[1].0 > w[0].0));
    }

    #[test]
    fn each_cause_is_told_once_in_the_message_chain() {
        let send = || Problem::Send(io::Error::other("broken pipe"));
        assert_eq!(
            crate::php::describe(&send()),
            "the connection failed while sending: broken pipe"
        );
        let call = RpcError::Call {
            method: "pier.Send".to_owned(),
            address: "tcp://127.0.0.1:6001".to_owned(),
            problem: send(),
        };
        assert_eq!(
            crate::php::describe(&call),
            "could not call pier.Send on tcp://127.0.0.1:6001: the connection failed while sending: broken pipe"
        );
    }

    #[test]
    fn a_dead_server_is_an_error_and_the_next_call_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("tcp://{}", listener.local_addr().unwrap());
        let mut c = Connections::new(&address).unwrap();
        let closer = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.read(&mut [0u8; 256]);
            drop(s);
            listener
        });
        let err = c.close(b"u").unwrap_err();
        assert_eq!(
            crate::php::describe(&err),
            format!("could not call pier.Close on {address}: the server closed the connection before answering")
        );
        drop(closer.join().unwrap());
        let err = c.close(b"u").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "could not call pier.Close: could not connect to {address}"
            )),
            "{err}"
        );
    }
}
