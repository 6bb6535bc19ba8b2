//! `pier-test-worker`: test support for the server's integration tests, not part of the product.
//!
//! A worker speaking the relay protocol through `pier-protocol` on stdin/stdout, whose behaviour the
//! tests script through the packets they send. Every reply line ends with `\n`.
//!
//! - CONNECTED: `WRITE "hello <server> <remote_addr> <uuid>\n"`.
//! - DATA, by first word of the packet (delimiter stripped):
//!   `continue` → CONTINUE; `quit` → WRITECLOSE `bye`; `close` → CLOSE; `error` → error frame;
//!   `stop` → stop reply the first time in `$TW_DIR` (marker file), else `rerun <pid> <hex state>`;
//!   `crash` → exit 3 mid-event; `garbage` → raw bytes on stdout; `pid` → `<pid>`; `flood <n>` → n bytes `f`; `exit-after` → answers `<pid>`, then exits while idle;
//!   `append` → answers `<pid> <hex state>` and stores state ‖ 00 ff `<n>`; `big` → stores a 100 000
//!   byte state; `clear` → clears the state; `sleep <ms>` → creates `$TW_DIR/sleeping`, sleeps, answers `slept`;
//!   `stderr` → two lines on stderr, answers `ok`; `env <NAME>` → that variable;
//!   `idle <ms>|default` → the `idle_timeout`
//!   command for its connection, then `idle <ms>|default`; `echo-later [ms]` → answers `<pid>`, then
//!   (idle, after `ms`, default 0) writes a stray line to stdout and creates `$TW_DIR/echoed`; `echo-trailing` → answers `<pid>`
//!   with a stray line right behind the reply, in the same write; `tls` → `tls none` or
//!   `tls <version> <cipher> <sni|-> <sha256|-> <subject|->` (the event's TLS facts);
//!   `starttls` → a `starttls` command, then `go ahead`; `starttls-quit` → the command, then
//!   WRITECLOSE `bye`; `nap <ms> …` → sleeps `<ms>` (default 10), then answers
//!   `<server>:<packet>`; `keep …` → answers `<server>:<packet>` with the packet as its state (an
//!   answer that is not a plain reply); anything else → `<server>:<packet>`.
//! - Push commands (extension `push`), each followed by a `WRITE` reply: `push <uuid> <text>` →
//!   send `<text>\n` to uuid, answers `pushed`; `self <n>` → n sends `self <i>\n` to its own
//!   connection, answers `reply`; `spam <uuid> <char> <size> <n>` → n sends of a `<size>`-byte line of
//!   `<char>` (newline included), answers `spammed`; `fill <char> <size>` → answers a `<size>`-byte
//!   line of `<char>`; `join <group>` / `leave <group>` (own uuid) → `joined`/`left`;
//!   `bcast <group|-> <text>` → broadcast `<text>\n` to the group (`-`: every connection),
//!   answers `sent`; `bcast-others <group> <text>` → the same except its own connection;
//!   `kick <uuid>` → close uuid, answers `kicked`; `bye-self` → closes its own connection,
//!   answers `last words` (still written); `badop` → an unknown op, answers `ok`.
//! - CLOSE: appends `<uuid> <hex state>` to `$TW_DIR/closes.log`, answers CLOSE.
//! - The stop control frame: answers one stray CLOSE (as the stock PHP worker does) and exits 0.
//! - `TW_MODE=echo`: a plain echo server (CONNECTED → CONTINUE, DATA → the packet), for load.
//! - `TW_DUMP=1`: every frame received is appended, hex-encoded, to `$TW_DIR/frames.log`.
//! - `TW_READS=1`: the number of frames a read from the relay brought (one line per read that
//!   brought any) is appended to `$TW_DIR/reads.log`, with the last of them, before it is answered
//!   (so once a client has every answer, the log holds every read that brought them): how pier
//!   batched its writes, as the worker saw them.
//! - `TW_BOOT`: `die` (stderr, exit 1 before the handshake), `die-after-first` (only the first
//!   worker boots), `hang` (never answers it), `garbage`.
//! - `RR_RELAY=tcp://host:port` or `unix:///path`: frames go over a socket it connects to, as
//!   the stock PHP packages do; `pipes` (or unset): stdin/stdout.
//! - More DATA commands for the supervisor: `hang` → never answers; `leak <mb>` → keeps `<mb>` MB
//!   more resident memory, answers `<pid>`.

use std::io::{Read, Write};
use std::path::PathBuf;

use pier_protocol::command::{encode_raw, Command};
use pier_protocol::control;
use pier_protocol::frame::decode;
use pier_protocol::tcp::{encode_reply, EventKind, ReplyKind};
use pier_protocol::ServerMessage;

fn main() {
    let dir = PathBuf::from(std::env::var("TW_DIR").unwrap_or_else(|_| "/tmp".into()));
    let pid = std::process::id();
    let (mut stdin, mut stdout): (Box<dyn Read>, Box<dyn Write>) =
        match std::env::var("RR_RELAY").as_deref() {
            Ok(tcp) if tcp.starts_with("tcp://") => {
                let s = std::net::TcpStream::connect(&tcp[6..]).expect("connect to the relay");
                (Box::new(s.try_clone().unwrap()), Box::new(s))
            }
            Ok(unix) if unix.starts_with("unix://") => {
                let s = std::os::unix::net::UnixStream::connect(&unix[7..])
                    .expect("connect to the relay");
                (Box::new(s.try_clone().unwrap()), Box::new(s))
            }
            _ => (
                Box::new(std::io::stdin().lock()),
                Box::new(std::io::stdout().lock()),
            ),
        };
    // Memory kept by `leak`, so that it stays resident.
    let mut leaked: Vec<Vec<u8>> = Vec::new();
    match std::env::var("TW_BOOT").as_deref() {
        Ok("die") => {
            eprintln!("fatal: cannot boot (test worker)");
            std::process::exit(1);
        }
        Ok("die-after-first") => {
            // Only the first worker in $TW_DIR boots; every later start fails.
            let first = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join("booted"))
                .is_ok();
            if !first {
                eprintln!("fatal: cannot boot again (test worker)");
                std::process::exit(1);
            }
        }
        Ok("hang") => std::thread::sleep(std::time::Duration::from_secs(3600)),
        Ok("garbage") => {
            let _ = stdout.write_all(b"<html>not a frame</html>");
            let _ = stdout.flush();
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        _ => {}
    }
    // `TW_MODE=echo`: plain echo (CONNECTED → CONTINUE, DATA → the packet), for load tests.
    let echo = std::env::var("TW_MODE").as_deref() == Ok("echo");
    // `TW_DUMP=1`: every frame received is appended, hex, to `$TW_DIR/frames.log`.
    let dump = std::env::var("TW_DUMP").is_ok();
    // `TW_READS=1`: frames decoded per read, appended to `$TW_DIR/reads.log`.
    let reads = std::env::var("TW_READS").is_ok();
    let mut since_read = 0usize;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut out = Vec::new();
    loop {
        let (frame, used) = loop {
            match decode(&buf, u32::MAX) {
                Ok(Some((_, used))) => {
                    let (frame, _) = decode(&buf[..used], u32::MAX).unwrap().unwrap();
                    since_read += 1;
                    // The last whole frame buffered: logged now, before its answer is written
                    // (logged before the next read instead, a test could see the answers before
                    // the count of the read that brought them).
                    if reads && matches!(decode(&buf[used..], u32::MAX), Ok(None)) {
                        let mut log = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(dir.join("reads.log"))
                            .expect("reads.log");
                        log.write_all(format!("{since_read}\n").as_bytes()).unwrap();
                        since_read = 0;
                    }
                    break (frame, used);
                }
                Ok(None) => {}
                Err(e) => panic!("server sent a bad frame: {e}"),
            }
            let n = stdin.read(&mut chunk).expect("read stdin");
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if dump {
            let line = format!("{}\n", hex(&buf[..used]));
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("frames.log"))
                .expect("frames.log");
            log.write_all(line.as_bytes()).unwrap();
        }
        out.clear();
        let mut exit_after = false;
        match ServerMessage::from_frame(&frame).expect("a server message") {
            ServerMessage::Pid(_) => control::encode_pid_reply(&mut out, pid).unwrap(),
            ServerMessage::Stop => {
                encode_reply(&mut out, ReplyKind::Close, None, b"").unwrap();
                exit_after = true;
            }
            ServerMessage::Event(ev) => {
                let server = ev.server.to_string();
                let state = ev.state.to_vec();
                match ev.event {
                    EventKind::Connected if echo => {
                        encode_reply(&mut out, ReplyKind::Continue, None, b"").unwrap();
                    }
                    EventKind::Data if echo => {
                        encode_reply(&mut out, ReplyKind::Write, None, ev.body).unwrap();
                    }
                    EventKind::Close if echo => {
                        encode_reply(&mut out, ReplyKind::Close, None, b"").unwrap();
                    }
                    EventKind::Connected => {
                        let hello = format!("hello {server} {} {}\n", ev.remote_addr, ev.uuid);
                        encode_reply(&mut out, ReplyKind::Write, None, hello.as_bytes()).unwrap();
                    }
                    EventKind::Close | EventKind::Unknown => {
                        let line = format!("{} {}\n", ev.uuid, hex(&state));
                        let mut log = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(dir.join("closes.log"))
                            .expect("closes.log");
                        log.write_all(line.as_bytes()).unwrap();
                        encode_reply(&mut out, ReplyKind::Close, None, b"").unwrap();
                    }
                    EventKind::Data if ev.body.starts_with(b"tls") => {
                        let line = match &ev.tls {
                            None => "tls none\n".to_owned(),
                            Some(t) => format!(
                                "tls {} {} {} {} {}\n",
                                t.version,
                                t.cipher,
                                t.sni.as_deref().unwrap_or("-"),
                                t.client_sha256.as_deref().unwrap_or("-"),
                                t.client_subject.as_deref().unwrap_or("-"),
                            ),
                        };
                        encode_reply(&mut out, ReplyKind::Write, None, line.as_bytes()).unwrap();
                    }
                    EventKind::Data => {
                        let text = String::from_utf8_lossy(ev.body).into_owned();
                        let packet = text
                            .trim_end_matches("--end--")
                            .trim_end_matches(['\r', '\n']);
                        let uuid = ev.uuid.to_string();
                        let mut words = packet.split_whitespace();
                        if push(&mut out, &uuid, packet) {
                            // A push command (see `push`).
                        } else if words.next() == Some("hang") {
                            loop {
                                std::thread::sleep(std::time::Duration::from_secs(3600));
                            }
                        } else if packet.starts_with("leak") {
                            let mb: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(16);
                            // Touched, so that the pages are resident.
                            leaked.push(vec![1u8; mb << 20]);
                            let body = format!("{pid}\n");
                            encode_reply(&mut out, ReplyKind::Write, None, body.as_bytes())
                                .unwrap();
                        } else {
                            data(&mut out, &mut stdout, &dir, pid, &server, packet, &state);
                        }
                    }
                }
            }
        }
        buf.drain(..used);
        stdout.write_all(&out).expect("write stdout");
        stdout.flush().expect("flush stdout");
        if exit_after {
            return;
        }
    }
}

fn data(
    out: &mut Vec<u8>,
    stdout: &mut Box<dyn Write>,
    dir: &std::path::Path,
    pid: u32,
    server: &str,
    packet: &str,
    state: &[u8],
) {
    let mut words = packet.split_whitespace();
    let write = |out: &mut Vec<u8>, body: String, state: Option<&[u8]>| {
        encode_reply(out, ReplyKind::Write, state, body.as_bytes()).unwrap()
    };
    match words.next().unwrap_or("") {
        "continue" => encode_reply(out, ReplyKind::Continue, None, b"").unwrap(),
        "starttls" => {
            Command::Starttls.encode(out).unwrap();
            write(out, "go ahead\n".into(), None);
        }
        "starttls-quit" => {
            Command::Starttls.encode(out).unwrap();
            encode_reply(out, ReplyKind::WriteClose, None, b"bye\n").unwrap();
        }
        "quit" => encode_reply(out, ReplyKind::WriteClose, None, b"bye\n").unwrap(),
        "close" => encode_reply(out, ReplyKind::Close, None, b"").unwrap(),
        "error" => control::encode_error(out, format!("boom from {pid}").as_bytes()).unwrap(),
        "stop" => {
            let first = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join("stopped"))
                .is_ok();
            if first {
                control::encode_worker_stop(out).unwrap();
            } else {
                write(out, format!("rerun {pid} {}\n", hex(state)), None);
            }
        }
        "crash" => {
            eprintln!("crashing on purpose");
            std::process::exit(3);
        }
        "garbage" => {
            stdout
                .write_all(b"Notice: stray echo from the worker\n")
                .unwrap();
            stdout.flush().unwrap();
        }
        "pid" => write(out, format!("{pid}\n"), None),
        "nap" => {
            let ms: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(10);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            write(out, format!("{server}:{packet}\n"), None);
        }
        "keep" => write(out, format!("{server}:{packet}\n"), Some(packet.as_bytes())),
        "flood" => {
            let n: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(1 << 20);
            encode_reply(out, ReplyKind::Write, None, &vec![b'f'; n]).unwrap();
        }
        "exit-after" => {
            write(out, format!("{pid}\n"), None);
            stdout.write_all(out).unwrap();
            stdout.flush().unwrap();
            std::process::exit(0);
        }
        "append" => {
            let mut next = state.to_vec();
            next.extend_from_slice(&[0x00, 0xff, (state.len() / 3) as u8]);
            write(out, format!("{pid} {}\n", hex(state)), Some(&next));
        }
        "big" => write(out, "should not arrive\n".into(), Some(&vec![7u8; 100_000])),
        "clear" => write(out, "cleared\n".into(), Some(b"")),
        "sleep" => {
            let ms: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(100);
            // Tells the test this worker is now busy.
            let _ = std::fs::write(dir.join("sleeping"), pid.to_string());
            std::thread::sleep(std::time::Duration::from_millis(ms));
            write(out, "slept\n".into(), None);
        }
        "echo-later" => {
            let ms: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            write(out, format!("{pid}\n"), None);
            stdout.write_all(out).unwrap();
            stdout.flush().unwrap();
            out.clear();
            // With a delay, pier has surely read the reply alone: the stray line comes as
            // bytes on an idle relay, not behind the reply in its read.
            std::thread::sleep(std::time::Duration::from_millis(ms));
            // As a PHP timer or destructor echoing between events would.
            stdout
                .write_all(b"Notice: stray echo while idle\n")
                .unwrap();
            stdout.flush().unwrap();
            let _ = std::fs::write(dir.join("echoed"), pid.to_string());
        }
        "echo-trailing" => {
            write(out, format!("{pid}\n"), None);
            out.extend_from_slice(b"Notice: stray echo after the reply\n");
        }
        "env" => {
            let name = words.next().unwrap_or("");
            write(
                out,
                format!("{}\n", std::env::var(name).unwrap_or_default()),
                None,
            );
        }
        "idle" => {
            // `idle <ms>` or `idle default`: the Pier command `idle_timeout`, then the answer.
            let ms = words.next().and_then(|w| w.parse().ok());
            pier_protocol::Command::IdleTimeout { ms }
                .encode(out)
                .unwrap();
            let shown = ms.map_or("default".to_owned(), |ms| ms.to_string());
            write(out, format!("idle {shown}\n"), None);
        }
        "stderr" => {
            eprintln!("line one from the worker");
            eprintln!("line two from the worker");
            write(out, "ok\n".into(), None);
        }
        _ => write(out, format!("{server}:{packet}\n"), None),
    }
}

/// The push commands (see the header); false when the packet is not one.
fn push(out: &mut Vec<u8>, own: &str, packet: &str) -> bool {
    let words: Vec<&str> = packet.split_whitespace().collect();
    let write = |out: &mut Vec<u8>, body: &str| {
        encode_reply(out, ReplyKind::Write, None, format!("{body}\n").as_bytes()).unwrap()
    };
    let send = |out: &mut Vec<u8>, uuid: &str, data: &[u8]| {
        Command::Send {
            uuid: uuid.into(),
            data,
        }
        .encode(out)
        .unwrap()
    };
    let rest = |n: usize| words.get(n..).map(|w| w.join(" ")).unwrap_or_default();
    let arg = |n: usize| words.get(n).copied().unwrap_or("");
    let num = |n: usize| arg(n).parse::<usize>().unwrap_or(1);
    match arg(0) {
        "push" => {
            send(out, arg(1), format!("{}\n", rest(2)).as_bytes());
            write(out, "pushed");
        }
        "self" => {
            for i in 0..num(1) {
                send(out, own, format!("self {i}\n").as_bytes());
            }
            write(out, "reply");
        }
        "spam" => {
            let line = line_of(arg(2), num(3));
            for _ in 0..num(4) {
                send(out, arg(1), &line);
            }
            write(out, "spammed");
        }
        "fill" => {
            let line = line_of(arg(1), num(2));
            encode_reply(out, ReplyKind::Write, None, &line).unwrap();
        }
        "join" | "leave" => {
            let (uuid, group) = (own.into(), arg(1).into());
            let command = if arg(0) == "join" {
                Command::Join { uuid, group }
            } else {
                Command::Leave { uuid, group }
            };
            command.encode(out).unwrap();
            write(out, if arg(0) == "join" { "joined" } else { "left" });
        }
        "bcast" | "bcast-others" => {
            let data = format!("{}\n", rest(2));
            Command::Broadcast {
                group: (arg(1) != "-").then(|| arg(1).into()),
                server: None,
                except: if arg(0) == "bcast-others" {
                    vec![own.into()]
                } else {
                    vec![]
                },
                data: data.as_bytes(),
            }
            .encode(out)
            .unwrap();
            write(out, "sent");
        }
        "kick" => {
            Command::Close {
                uuid: arg(1).into(),
            }
            .encode(out)
            .unwrap();
            write(out, "kicked");
        }
        "bye-self" => {
            Command::Close { uuid: own.into() }.encode(out).unwrap();
            write(out, "last words");
        }
        "badop" => {
            encode_raw(out, br#"{"op":"frobnicate"}"#, b"").unwrap();
            write(out, "ok");
        }
        _ => return false,
    }
    true
}

/// `size` bytes: `ch` repeated, the last one a newline.
fn line_of(ch: &str, size: usize) -> Vec<u8> {
    let mut line = vec![ch.as_bytes().first().copied().unwrap_or(b'x'); size.max(1)];
    if let Some(last) = line.last_mut() {
        *last = b'\n';
    }
    line
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
