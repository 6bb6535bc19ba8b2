//! The relay between a worker process and the Pier (or RoadRunner) server: a byte transport
//! (pipes, a TCP socket or a Unix socket) with our own read buffer, read frame by frame with
//! `pier_protocol::frame::decode`. Nothing here knows what a frame means; see [`crate::session`].

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use pier_protocol::frame::{self, Frame, FrameError, FrameView, HeaderMemo};

/// Largest payload we accept from the server. Pier bounds packets far below this; the limit only
/// keeps a corrupt length from making the worker allocate gigabytes before failing.
pub const MAX_PAYLOAD: u32 = 1 << 30;

/// Bytes asked from the transport per read when the buffer has no better idea.
const READ_CHUNK: usize = 64 * 1024;

/// After a frame larger than this, the read buffer is given back to the allocator once it is
/// empty, so one multi-megabyte body does not pin its memory for the life of the worker.
const KEEP_CAPACITY: usize = 1 << 20;

/// How long a socket relay keeps retrying to connect (the server may still be binding).
const CONNECT_FOR: Duration = Duration::from_secs(5);

/// Pause between two connection attempts.
const CONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Why the relay failed. Each variant says who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// `RR_RELAY` names a transport we do not know (the worker's environment is wrong).
    #[error(
        "could not use relay {0:?}: RR_RELAY must be `pipes`, `tcp://host:port` or `unix:///path`"
    )]
    UnknownRelay(String),
    /// The socket relay could not be reached within the retry window (server gone or wrong address).
    #[error("could not connect to the relay {address} (retried for {CONNECT_FOR:?})")]
    Connect {
        /// The address from `RR_RELAY`.
        address: String,
        /// The last connection error.
        #[source]
        source: io::Error,
    },
    /// Setting up the private pipe descriptors failed (internal: the process is out of fds).
    #[error("could not set up the pipe relay: {what}")]
    PipeSetup {
        /// Which step failed.
        what: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// Reading from the relay failed (the server went away abnormally).
    #[error("could not read from the relay")]
    Read(#[source] io::Error),
    /// Writing a frame to the relay failed (the server closed it, or is gone).
    #[error("could not write a frame of {len} bytes to the relay")]
    Write {
        /// Size of the frame.
        len: usize,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The relay ended after part of a frame (the server died mid-write, or this is not a relay).
    #[error(
        "could not read a frame: the relay closed after {buffered} bytes of an incomplete frame"
    )]
    Truncated {
        /// How many bytes of the incomplete frame had arrived.
        buffered: usize,
    },
    /// The bytes on the relay are not a goridge frame (the server is not a relay, or is corrupt).
    #[error("could not read a frame from the relay")]
    Frame(#[source] FrameError),
}

/// The byte transport under the relay.
#[derive(Debug)]
pub enum Transport {
    /// Frames arrive on one descriptor and leave on another (fd 0 and a private copy of fd 1).
    Pipes {
        /// Where the server's frames come from.
        input: File,
        /// Where our frames go.
        output: File,
    },
    /// `tcp://host:port`.
    Tcp(TcpStream),
    /// `unix:///path`.
    Unix(UnixStream),
}

impl Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Pipes { input, .. } => input.read(buf),
            Transport::Tcp(s) => s.read(buf),
            Transport::Unix(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Pipes { output, .. } => output.write_all(bytes),
            Transport::Tcp(s) => s.write_all(bytes),
            Transport::Unix(s) => s.write_all(bytes),
        }
    }
}

/// Where the relay is, as `RR_RELAY` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelaySpec {
    /// `pipes` (also when `RR_RELAY` is unset or empty).
    Pipes,
    /// `tcp://host:port`: the `host:port` part.
    Tcp(String),
    /// `unix:///path`: the path.
    Unix(String),
}

impl RelaySpec {
    /// Parses an `RR_RELAY` value.
    pub fn parse(value: &str) -> Result<Self, RelayError> {
        let value = value.trim();
        if value.is_empty() || value == "pipes" || value == "pipe" {
            return Ok(RelaySpec::Pipes);
        }
        if let Some(addr) = value.strip_prefix("tcp://") {
            if !addr.is_empty() {
                return Ok(RelaySpec::Tcp(addr.to_owned()));
            }
        }
        if let Some(path) = value.strip_prefix("unix://") {
            if !path.is_empty() {
                return Ok(RelaySpec::Unix(path.to_owned()));
            }
        }
        Err(RelayError::UnknownRelay(value.to_owned()))
    }
}

/// Takes fd 0 and fd 1 for the relay and makes fd 1 harmless.
///
/// fd 1 is duplicated to a private close-on-exec descriptor that only the relay writes to, then
/// fd 2 (stderr) is copied onto fd 1: `echo`, `print`, `var_dump`, `fwrite(STDOUT)` and C
/// libraries all write to fd 1 and now land in the server's log instead of corrupting frames.
/// fd 0 stays where it is (PHP's `STDIN` stream is never read by us, and reading it in userland
/// would steal frames — documented for users).
pub fn take_stdio() -> Result<Transport, RelayError> {
    let input: OwnedFd =
        io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| RelayError::PipeSetup {
                what: "duplicating fd 0",
                source,
            })?;
    let output: OwnedFd = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| RelayError::PipeSetup {
            what: "duplicating fd 1",
            source,
        })?;
    // SAFETY: dup2 on two descriptor numbers has no memory-safety preconditions; fd 2 is open in
    // every PHP CLI process, and if it is not, dup2 fails with EBADF, which we report.
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(RelayError::PipeSetup {
            what: "pointing fd 1 at stderr",
            source: io::Error::last_os_error(),
        });
    }
    Ok(Transport::Pipes {
        input: File::from(input),
        output: File::from(output),
    })
}

/// Connects a socket relay, retrying for a short while as the reference client does.
pub fn connect(spec: &RelaySpec) -> Result<Transport, RelayError> {
    let started = Instant::now();
    loop {
        let attempt = match spec {
            RelaySpec::Pipes => return take_stdio(),
            RelaySpec::Tcp(addr) => TcpStream::connect(addr.as_str()).map(|s| {
                // Frames are written whole; Nagle would only delay the server's read.
                let _ = s.set_nodelay(true);
                Transport::Tcp(s)
            }),
            RelaySpec::Unix(path) => UnixStream::connect(path).map(Transport::Unix),
        };
        match attempt {
            Ok(transport) => return Ok(transport),
            Err(source) if started.elapsed() >= CONNECT_FOR => {
                let address = match spec {
                    RelaySpec::Tcp(a) => format!("tcp://{a}"),
                    RelaySpec::Unix(p) => format!("unix://{p}"),
                    RelaySpec::Pipes => "pipes".to_owned(),
                };
                return Err(RelayError::Connect { address, source });
            }
            Err(_) => std::thread::sleep(CONNECT_PAUSE),
        }
    }
}

/// A transport plus the buffer frames are decoded from.
#[derive(Debug)]
pub struct Relay {
    /// The byte transport.
    transport: Transport,
    /// Received bytes; `buf[start..end]` is not yet consumed.
    buf: Vec<u8>,
    /// First unconsumed byte in `buf`.
    start: usize,
    /// One past the last received byte in `buf`.
    end: usize,
    /// Length of the frame handed out by the last `read_frame`, consumed at the next call (the
    /// frame borrows the buffer until then).
    handed_out: usize,
    /// Length of the whole, checked frame after the one handed out, once [`Relay::frame_buffered`]
    /// found it (0: not known yet), so that [`Relay::advance`] does not check it again.
    next: usize,
    /// Frame headers already checked: the server's headers repeat (one per payload length), so
    /// each distinct one is checksummed once.
    headers: HeaderMemo,
}

impl Relay {
    /// A relay over `transport`.
    pub fn new(transport: Transport) -> Self {
        Relay {
            transport,
            buf: Vec::new(),
            start: 0,
            end: 0,
            handed_out: 0,
            next: 0,
            headers: HeaderMemo::new(),
        }
    }

    /// The next frame, or `None` when the relay ended cleanly between frames.
    ///
    /// The frame borrows the relay's buffer; it is released by the next call.
    pub fn read_frame(&mut self) -> Result<Option<Frame<'_>>, RelayError> {
        if !self.advance()? {
            return Ok(None);
        }
        self.current_frame().map(|view| Some(view.frame()))
    }

    /// Moves to the next frame, reading until it is all buffered; `false` when the relay ended
    /// cleanly between frames. [`Relay::current_frame`] then gives it.
    pub fn advance(&mut self) -> Result<bool, RelayError> {
        self.start += std::mem::take(&mut self.handed_out);
        let next = std::mem::take(&mut self.next);
        if next != 0 {
            self.handed_out = next;
            return Ok(true);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
        loop {
            let buffered = &self.buf[self.start..self.end];
            let need = match frame::whole_len(buffered, MAX_PAYLOAD, &mut self.headers) {
                Ok(Some(used)) => {
                    self.handed_out = used;
                    return Ok(true);
                }
                Ok(None) => needed_len(buffered),
                Err(e) => return Err(RelayError::Frame(e)),
            };
            if !self.fill(need)? {
                let buffered = self.end - self.start;
                return if buffered == 0 {
                    Ok(false)
                } else {
                    Err(RelayError::Truncated { buffered })
                };
            }
        }
    }

    /// The flags byte of the frame [`Relay::advance`] moved to (0 before any).
    pub fn current_flags(&self) -> u8 {
        if self.handed_out == 0 {
            return 0;
        }
        self.buf[self.start + 1]
    }

    /// The frame [`Relay::advance`] moved to, read in place from the buffer (`advance` or
    /// [`Relay::frame_buffered`] checked its header with `whole_len`: not checked again).
    pub fn current_frame(&mut self) -> Result<FrameView<'_>, RelayError> {
        let bytes = &self.buf[self.start..self.start + self.handed_out];
        // `None` is unreachable: these bytes are the one whole frame `whole_len` accepted.
        // A match, not `ok_or`: the error built eagerly was dropped for every frame (~9
        // instructions; clippy calls the lazy form unnecessary).
        match FrameView::accepted(bytes) {
            Some(frame) => Ok(frame),
            None => Err(RelayError::Truncated {
                buffered: bytes.len(),
            }),
        }
    }

    /// Whether a whole frame after the one handed out is already buffered, i.e. whether the next
    /// [`Relay::advance`] returns without reading from the transport. A session uses this to
    /// hold its answers back while more events are waiting (they then leave in one write).
    pub fn frame_buffered(&mut self) -> bool {
        if self.next != 0 {
            return true;
        }
        let rest = &self.buf[self.start + self.handed_out..self.end];
        match frame::whole_len(rest, MAX_PAYLOAD, &mut self.headers) {
            Ok(Some(len)) => {
                self.next = len;
                true
            }
            _ => false,
        }
    }

    /// Reads at least one more byte, making room for a frame of `need` bytes; `false` on EOF.
    fn fill(&mut self, need: usize) -> Result<bool, RelayError> {
        let have = self.end - self.start;
        let room = need.max(READ_CHUNK);
        if self.start > 0 && self.buf.len() - self.start < room {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = have;
        }
        if self.buf.len() < self.start + room {
            self.buf.resize(self.start + room, 0);
        }
        loop {
            match self.transport.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(RelayError::Read(e)),
            }
        }
    }

    /// Sends whole frames (one or several) with a single write call (retried only for what the
    /// kernel did not take, so frames never interleave with anything).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), RelayError> {
        self.transport
            .write_all(frame)
            .map_err(|source| RelayError::Write {
                len: frame.len(),
                source,
            })
    }
}

/// How many bytes the frame starting at `buf` needs in total, as far as its header tells.
fn needed_len(buf: &[u8]) -> usize {
    if buf.len() < frame::HEADER_LEN {
        return frame::HEADER_LEN;
    }
    let words = usize::from(buf[0] & 0x0f);
    let payload = u32::from_le_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
    words * 4 + payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Relay, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Relay::new(Transport::Unix(a)), b)
    }

    fn frame_bytes(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode(&mut out, 0, 0, &[0], &[payload]).unwrap();
        out
    }

    #[test]
    fn parses_rr_relay() {
        assert_eq!(RelaySpec::parse("").unwrap(), RelaySpec::Pipes);
        assert_eq!(RelaySpec::parse("pipes").unwrap(), RelaySpec::Pipes);
        assert_eq!(
            RelaySpec::parse("tcp://127.0.0.1:6001").unwrap(),
            RelaySpec::Tcp("127.0.0.1:6001".into())
        );
        assert_eq!(
            RelaySpec::parse("unix:///tmp/rr.sock").unwrap(),
            RelaySpec::Unix("/tmp/rr.sock".into())
        );
        for bad in ["tcp://", "http://x", "unix://", "stdio"] {
            assert!(
                matches!(RelaySpec::parse(bad), Err(RelayError::UnknownRelay(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn frames_split_byte_by_byte_and_glued_together() {
        let (mut relay, mut peer) = pair();
        let mut stream = frame_bytes(b"first");
        stream.extend(frame_bytes(b"second"));
        let writer = std::thread::spawn(move || {
            for b in stream {
                peer.write_all(&[b]).unwrap();
            }
        });
        assert_eq!(relay.read_frame().unwrap().unwrap().payload, b"first");
        assert_eq!(relay.read_frame().unwrap().unwrap().payload, b"second");
        writer.join().unwrap();
        assert!(relay.read_frame().unwrap().is_none(), "clean EOF");
    }

    #[test]
    fn knows_whether_the_next_frame_is_buffered() {
        let (mut relay, mut peer) = pair();
        let first = frame_bytes(b"first");
        let second = frame_bytes(b"second");
        let mut both = first.clone();
        both.extend_from_slice(&second[..5]);
        peer.write_all(&both).unwrap();
        assert!(!relay.frame_buffered(), "nothing read yet");
        assert_eq!(relay.read_frame().unwrap().unwrap().payload, b"first");
        assert!(!relay.frame_buffered(), "only part of the second frame");
        peer.write_all(&second[5..]).unwrap();
        peer.write_all(&first).unwrap();
        // The partial frame makes read_frame read; that read brings both remaining frames.
        assert_eq!(relay.read_frame().unwrap().unwrap().payload, b"second");
        assert!(relay.frame_buffered());
        assert_eq!(relay.read_frame().unwrap().unwrap().payload, b"first");
        assert!(!relay.frame_buffered());
    }

    #[test]
    fn multi_megabyte_payload_and_buffer_release() {
        let (mut relay, mut peer) = pair();
        let body: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let bytes = frame_bytes(&body);
        let small = frame_bytes(b"x");
        let writer = std::thread::spawn(move || {
            peer.write_all(&bytes).unwrap();
            peer.write_all(&small).unwrap();
        });
        assert_eq!(relay.read_frame().unwrap().unwrap().payload, &body[..]);
        assert_eq!(relay.read_frame().unwrap().unwrap().payload, b"x");
        writer.join().unwrap();
        assert!(relay.buf.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn eof_mid_frame_is_truncation() {
        let (mut relay, mut peer) = pair();
        let bytes = frame_bytes(b"hello");
        peer.write_all(&bytes[..bytes.len() - 2]).unwrap();
        drop(peer);
        assert!(matches!(
            relay.read_frame(),
            Err(RelayError::Truncated { buffered }) if buffered == bytes.len() - 2
        ));
    }

    #[test]
    fn garbage_is_a_frame_error() {
        let (mut relay, mut peer) = pair();
        peer.write_all(b"hello world\n").unwrap();
        assert!(matches!(
            relay.read_frame(),
            Err(RelayError::Frame(FrameError::Version(6)))
        ));
    }

    #[test]
    fn send_and_write_failure() {
        let (mut relay, mut peer) = pair();
        relay.send(b"abc").unwrap();
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        drop(peer);
        // Writing to a closed socket fails (EPIPE; Rust ignores SIGPIPE in tests).
        let err = relay.send(&[0u8; 1 << 16]).unwrap_err();
        assert!(matches!(err, RelayError::Write { len: 65536, .. }));
    }

    #[test]
    fn tcp_relay_connects_and_carries_frames() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(&frame_bytes(b"over tcp")).unwrap();
        });
        let mut relay = Relay::new(connect(&RelaySpec::Tcp(addr)).unwrap());
        assert_eq!(relay.read_frame().unwrap().unwrap().payload, b"over tcp");
        server.join().unwrap();
        assert!(relay.read_frame().unwrap().is_none());
    }
}
