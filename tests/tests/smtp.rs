//! The SMTP example (examples/smtp) through the real `pier serve` with two workers, on both worker
//! implementations: a pipelined session with two recipients, a dot-stuffed line, a 2 MB body, RSET
//! and bad command orders, checked against the `.eml` files in the maildir byte for byte.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::ffi::OsStr;

use pier_e2e::{fresh_dir, read_to_close, smtp_tls_env, Pier, WorkerImpl};

const SENDER: &str = "alice@example.org";
const RECIPIENTS: [&str; 2] = ["bob@example.net", "carol@example.com"];

/// One SMTP reply: its code and every line of it.
#[derive(Debug)]
struct Reply {
    /// The three-digit code.
    code: u16,
    /// The reply's lines as received, CRLF stripped.
    lines: Vec<String>,
}

/// A client connection, reading replies line by line.
struct Client {
    /// The connection, buffered for reading replies.
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(pier: &Pier) -> Client {
        let stream = pier.connect("smtp").expect("connect to the smtp server");
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).expect("send to the smtp server");
        stream.flush().expect("flush to the smtp server");
    }

    /// Reads one (possibly multi-line) reply: lines "ddd-…" until "ddd …".
    fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read a reply line");
            assert!(
                n > 0,
                "the server closed the connection; replies so far: {lines:?}"
            );
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            line.truncate(line.len() - 2);
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let last = line.as_bytes().get(3) == Some(&b' ') || line.len() == 3;
            let Some(code) = code else {
                panic!("malformed reply line {line:?}");
            };
            lines.push(line);
            if last {
                return Reply { code, lines };
            }
        }
    }

    /// Reads one reply per expected code and checks the codes, all at once (pipelined commands).
    fn expect(&mut self, codes: &[u16]) -> Vec<Reply> {
        let replies: Vec<Reply> = codes.iter().map(|_| self.reply()).collect();
        let got: Vec<u16> = replies.iter().map(|r| r.code).collect();
        assert_eq!(got, codes, "reply codes; replies: {replies:#?}");
        replies
    }
}

/// A message of a bit over 2 MiB as the sender means it (before dot-stuffing): short and long lines,
/// lines starting with a dot (one of them a lone "."), 8-bit bytes and one 600 kB line.
fn big_message() -> Vec<u8> {
    let mut text = format!(
        "From: Alice <{SENDER}>\r\nTo: Bob <{}>, Carol <{}>\r\nSubject: two megabytes\r\n\r\n",
        RECIPIENTS[0], RECIPIENTS[1]
    )
    .into_bytes();
    text.extend_from_slice(b".this line starts with a dot\r\n.\r\n..two dots\r\n");
    text.extend_from_slice("8-bit: caf\u{e9} \u{fc}ber \u{1f680}\r\n".as_bytes());
    text.extend_from_slice(&[0xff, 0xfe, 0x80, b'\r', b'\n']);
    let mut i: u32 = 0;
    while text.len() < 2 * 1024 * 1024 {
        if i == 5000 {
            text.extend(std::iter::repeat_n(b'L', 600_000));
            text.extend_from_slice(b"\r\n");
        }
        let fill = usize::try_from(i % 97).unwrap_or(0);
        if i % 1000 == 0 {
            text.push(b'.');
        }
        text.extend_from_slice(format!("line {i:06} ").as_bytes());
        text.extend(std::iter::repeat_n(
            b'a' + u8::try_from(i % 26).unwrap_or(0),
            fill,
        ));
        text.extend_from_slice(b"\r\n");
        i += 1;
    }
    text
}

/// The message as sent in DATA: every line starting with "." gets another one, then the lone ".".
fn dot_stuffed(text: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(text.len() + 1024);
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

/// What the worker stores: the envelope as headers, then the message as the sender meant it.
fn stored(sender: &str, recipients: &[&str], text: &[u8]) -> Vec<u8> {
    let mut eml = format!("Return-Path: <{sender}>\r\n").into_bytes();
    for r in recipients {
        eml.extend_from_slice(format!("Delivered-To: <{r}>\r\n").as_bytes());
    }
    eml.extend_from_slice(text);
    eml
}

/// The maildir's entries: the `.eml` files' contents (sorted by name) and every other name.
fn maildir(dir: &Path) -> (Vec<(PathBuf, Vec<u8>)>, Vec<String>) {
    let mut emls = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the maildir") {
        let path = entry.expect("read a maildir entry").path();
        if path.extension().is_some_and(|e| e == "eml") {
            let bytes = std::fs::read(&path).expect("read an .eml file");
            emls.push((path, bytes));
        } else {
            others.push(path.display().to_string());
        }
    }
    emls.sort();
    (emls, others)
}

/// Asserts two byte strings are equal, reporting sizes and the first difference instead of megabytes.
fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let around = |b: &[u8]| {
        String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned()
    };
    panic!(
        "{what}: {} bytes stored, {} expected; first difference at byte {at}: stored {:?}, expected {:?}",
        got.len(),
        want.len(),
        around(got),
        around(want)
    );
}

/// The example's servers: every one moved to a free port, so runs in parallel do not collide.
const SERVERS: [&str; 3] = ["smtp", "submission", "submissions"];

fn smtp_session(worker: WorkerImpl) {
    let mail = fresh_dir("mail").expect("create a maildir");
    let tls = smtp_tls_env(&fresh_dir("tls").expect("a scratch dir")).expect("make the TLS files");
    let mut env: Vec<(&str, &OsStr)> = tls.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    env.push(("SMTP_MAILDIR", mail.as_os_str()));
    env.push(("SMTP_TRACE", "1".as_ref()));
    let pier = Pier::start("examples/smtp/.rr.yaml", &SERVERS, worker, &env)
        .unwrap_or_else(|e| panic!("{e}"));
    pier.assert_served_by(worker);
    let mut smtp = Client::connect(&pier);
    let greeting = smtp.expect(&[220]);
    assert!(greeting[0].lines[0].contains("ESMTP"), "{greeting:?}");

    // Bad order and bad commands, pipelined: MAIL before EHLO, an unknown verb, then after EHLO:
    // RCPT before MAIL, DATA before MAIL, a MAIL without brackets.
    smtp.send(b"MAIL FROM:<early@example.org>\r\nHELLO there\r\nEHLO client.example\r\nRCPT TO:<bob@example.net>\r\nDATA\r\nMAIL FROM:alice@example.org\r\n");
    let replies = smtp.expect(&[503, 500, 250, 503, 503, 501]);
    let ehlo: Vec<&str> = replies[2].lines.iter().map(|l| &l[4..]).collect();
    for keyword in ["PIPELINING", "SIZE 33554432", "8BITMIME"] {
        assert!(
            ehlo.contains(&keyword),
            "EHLO does not advertise {keyword}: {ehlo:?}"
        );
    }

    // The first message: envelope and DATA pipelined in one write, as RFC 2920 allows.
    let text = big_message();
    smtp.send(
        format!(
            "MAIL FROM:<{SENDER}> SIZE={} BODY=8BITMIME\r\nRCPT TO:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
            text.len(),
            RECIPIENTS[0],
            RECIPIENTS[1]
        )
        .as_bytes(),
    );
    smtp.expect(&[250, 250, 250, 354]);
    // The 2 MB text and, in the same write, a transaction abandoned with RSET and a RCPT after it
    // (bad order again: RSET forgot the sender).
    let mut wire = dot_stuffed(&text);
    wire.extend_from_slice(b"MAIL FROM:<dropped@example.org>\r\nRCPT TO:<nobody@example.net>\r\nRSET\r\nRCPT TO:<nobody@example.net>\r\nNOOP\r\n");
    smtp.send(&wire);
    let replies = smtp.expect(&[250, 250, 250, 250, 503, 250]);
    assert!(
        replies[0].lines[0].contains("queued as"),
        "{:?}",
        replies[0]
    );

    // A second, small message with the null sender, then QUIT: all in one write.
    let small = b"Subject: small\r\n\r\n.\r\n..\r\nend\r\n";
    let mut wire = b"MAIL FROM:<>\r\nRCPT TO:<postmaster@example.net>\r\nDATA\r\n".to_vec();
    wire.extend_from_slice(&dot_stuffed(small));
    wire.extend_from_slice(b"QUIT\r\n");
    smtp.send(&wire);
    smtp.expect(&[250, 250, 354, 250, 221]);
    let rest = read_to_close(smtp.reader.get_mut()).expect("read to the server's close");
    assert!(
        rest.is_empty() && smtp.reader.buffer().is_empty(),
        "bytes after 221: {rest:?}"
    );

    let (emls, others) = maildir(&mail);
    assert!(
        others.is_empty(),
        "files besides .eml in the maildir: {others:?}"
    );
    assert_eq!(
        emls.len(),
        2,
        "stored messages: {:?}",
        emls.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    let want_big = stored(SENDER, &RECIPIENTS, &text);
    let want_small = stored("", &["postmaster@example.net"], small);
    // Names sort by time; both may share a second, so match by content.
    let (big, small_eml) = if emls[0].1.len() > emls[1].1.len() {
        (&emls[0], &emls[1])
    } else {
        (&emls[1], &emls[0])
    };
    assert_same_bytes(&big.0.display().to_string(), &big.1, &want_big);
    assert_same_bytes(
        &small_eml.0.display().to_string(),
        &small_eml.1,
        &want_small,
    );

    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "pier serve exited with {status} after SIGTERM; output:\n{output}"
    );
    // The session's replies (SMTP_TRACE) came from both workers: its transaction really travelled
    // between processes in the connection state.
    let answered = |line: &str| line.split("smtp trace: worker ").nth(1).map(str::to_owned);
    let traces: Vec<String> = output.lines().filter_map(answered).collect();
    let session = traces
        .iter()
        .find(|t| t.contains(" answered 221 on "))
        .and_then(|t| t.split(" on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no trace of the QUIT reply; output:\n{output}"));
    let mut workers: Vec<&str> = traces
        .iter()
        .filter(|t| t.contains(session))
        .filter_map(|t| t.split(' ').next())
        .collect();
    workers.sort_unstable();
    workers.dedup();
    assert!(
        workers.len() >= 2,
        "one session's replies came from workers {workers:?}; traces: {traces:#?}"
    );
    std::fs::remove_dir_all(&mail).ok();
}

/// A client that disconnects in the middle of DATA: the CLOSE event carries the transaction, the
/// worker deletes the spool file, and no `.eml` appears.
fn abandoned_data(worker: WorkerImpl) {
    let mail = fresh_dir("abandoned").expect("create a maildir");
    let tls = smtp_tls_env(&fresh_dir("tls").expect("a scratch dir")).expect("make the TLS files");
    let mut env: Vec<(&str, &OsStr)> = tls.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    env.push(("SMTP_MAILDIR", mail.as_os_str()));
    let pier = Pier::start("examples/smtp/.rr.yaml", &SERVERS, worker, &env)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut smtp = Client::connect(&pier);
    smtp.expect(&[220]);
    smtp.send(
        b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
    );
    smtp.expect(&[250, 250, 250, 354]);
    smtp.send(b"Subject: never finished\r\n\r\nsome text\r\n");
    // NOOP is message text now; QUIT too. Neither gets a reply; the spool file exists meanwhile.
    smtp.send(b"NOOP\r\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while maildir(&mail).1.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (emls, spooled) = maildir(&mail);
    assert!(
        emls.is_empty() && spooled.len() == 1,
        "during DATA: {emls:?} {spooled:?}"
    );
    drop(smtp);

    let deadline = Instant::now() + Duration::from_secs(30);
    while !maildir(&mail).1.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (emls, others) = maildir(&mail);
    assert!(
        emls.is_empty() && others.is_empty(),
        "left after the client vanished: {emls:?} {others:?}"
    );

    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "pier serve exited with {status} after SIGTERM; output:\n{output}"
    );
    std::fs::remove_dir_all(&mail).ok();
}

pier_e2e::on_each_worker!(
    smtp_session_with_the_extension,
    smtp_session_with_the_package,
    smtp_session
);

pier_e2e::on_each_worker!(
    smtp_abandoned_data_with_the_extension,
    smtp_abandoned_data_with_the_package,
    abandoned_data
);
