//! The SMTP example's TLS with the mail clients people use, through the real `pier serve`, on both
//! worker implementations: `swaks --tls` (STARTTLS) and `swaks --tlsc` (implicit TLS) with AUTH
//! PLAIN and LOGIN, Python's `smtplib` (`starttls()`, `login()`, `SMTP_SSL`), a command injected
//! behind STARTTLS that must not run, and the refusals: MAIL before AUTH (530), AUTH before TLS, a
//! wrong password.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pier_e2e::{fresh_dir, smtp_tls_env, Pier, WorkerImpl};

const SERVERS: [&str; 3] = ["smtp", "submission", "submissions"];

/// What a client program did.
struct Run {
    ok: bool,
    out: String,
}

fn run(command: &mut Command) -> Run {
    let out = command
        .output()
        .expect("the client runs (Debian packages swaks, python3)");
    Run {
        ok: out.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `swaks` to `server` with `args`; the message header names `subject`.
fn swaks(pier: &Pier, server: &str, subject: &str, args: &[&str]) -> Run {
    let addr = pier.addr(server);
    run(Command::new("swaks")
        .args(["--server", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string()])
        .args(["--from", "alice@example.org", "--to", "bob@example.net"])
        .args(["--header", &format!("Subject: {subject}")])
        .args(["--timeout", "20"])
        .args(args))
}

/// The `.eml` files whose text contains `needle`.
fn delivered(mail: &Path, needle: &str) -> usize {
    std::fs::read_dir(mail)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .filter(|e| {
                    std::fs::read_to_string(e.path()).is_ok_and(|text| text.contains(needle))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Python's smtplib, as an application sending mail would use it (Debian's python3).
const SMTPLIB: &str = r#"
import smtplib, socket, ssl, sys
host, smtp, sub, subs, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: %s\r\n\r\nhello\r\n"

with smtplib.SMTP(host, sub, local_hostname="client.example", timeout=20) as s:
    s.ehlo()
    assert s.has_extn("starttls") and not s.has_extn("auth"), s.esmtp_features
    code, _ = s.docmd("MAIL FROM:<alice@example.org>")
    assert code == 530, code
    s.starttls(context=ctx)
    s.ehlo()
    assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
    try:
        s.login("alice", "wrong")
        raise SystemExit("a wrong password was accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
    s.login("alice", "secret")
    s.sendmail("alice@example.org", ["bob@example.net"], msg % "smtplib-starttls")
print("starttls ok")

with smtplib.SMTP_SSL(host, subs, local_hostname="client.example", context=ctx, timeout=20) as s:
    s.login("alice", "secret")
    s.sendmail("alice@example.org", ["bob@example.net"], msg % "smtplib-implicit")
print("implicit ok")

with smtplib.SMTP(host, smtp, local_hostname="client.example", timeout=20) as s:
    s.starttls(context=ctx)
    s.sendmail("alice@example.org", ["bob@example.net"], msg % "smtplib-mta")
print("mta ok")

# CVE-2011-0411: a command pipelined behind STARTTLS must be discarded, not run after the
# handshake (where it would look like the client's).
raw = socket.create_connection((host, sub), timeout=20)
f = raw.makefile("rb")
assert f.readline().startswith(b"220")
raw.sendall(b"EHLO client.example\r\n")
while not f.readline().startswith(b"250 "):
    pass
raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
line = f.readline()
assert line.startswith(b"220"), line
tls = ctx.wrap_socket(raw, server_hostname="localhost")
g = tls.makefile("rb")
def ask(cmd):
    tls.sendall(cmd + b"\r\n")
    lines = []
    while True:
        l = g.readline()
        lines.append(l)
        if l[3:4] != b"-":
            return lines
assert ask(b"EHLO client.example")[-1].startswith(b"250 ")
import base64
assert ask(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret"))[0].startswith(b"235")
reply = ask(b"MAIL FROM:<alice@example.org>")
assert reply[0].startswith(b"250"), reply   # a run injected MAIL would make this "503 nested MAIL"
assert ask(b"QUIT")[0].startswith(b"221")
print("injection ok")
"#;

fn mail_clients(worker: WorkerImpl) {
    let mail = fresh_dir("tls-mail").expect("create a maildir");
    let tls = smtp_tls_env(&fresh_dir("tls").expect("a scratch dir")).expect("make the TLS files");
    let cafile = tls[0].1.clone();
    let mut env: Vec<(&str, &OsStr)> = tls.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    env.push(("SMTP_MAILDIR", mail.as_os_str()));
    let pier = Pier::start("examples/smtp/.rr.yaml", &SERVERS, worker, &env)
        .unwrap_or_else(|e| panic!("{e}"));
    let output = || pier.output();

    // swaks: STARTTLS + AUTH on submission (PLAIN and LOGIN), implicit TLS + AUTH on submissions,
    // STARTTLS without AUTH on the receiving MTA.
    let auth = ["--auth-user", "alice", "--auth-password", "secret"];
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "submission",
            "swaks-starttls-plain",
            &["--tls", "--auth", "PLAIN"],
        ),
        (
            "submission",
            "swaks-starttls-login",
            &["--tls", "--auth", "LOGIN"],
        ),
        (
            "submissions",
            "swaks-implicit",
            &["--tlsc", "--auth", "LOGIN"],
        ),
        ("smtp", "swaks-mta", &["--tls"]),
    ];
    for (server, subject, args) in cases {
        let mut args = args.to_vec();
        if server != "smtp" {
            args.extend(auth);
        }
        let r = swaks(&pier, server, subject, &args);
        assert!(
            r.ok,
            "{subject}: swaks failed:\n{}\npier:\n{}",
            r.out,
            output()
        );
        assert!(r.out.contains("TLS started"), "{subject}: {}", r.out);
    }
    // Refusals: MAIL before AUTH, AUTH without TLS, a wrong password.
    let r = swaks(&pier, "submission", "no-auth", &["--tls"]);
    assert!(!r.ok && r.out.contains("530 5.7.0"), "{}", r.out);
    let r = swaks(
        &pier,
        "submission",
        "auth-plaintext",
        &[
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "secret",
        ],
    );
    assert!(!r.ok, "AUTH without TLS must fail: {}", r.out);
    let r = swaks(
        &pier,
        "submission",
        "wrong-password",
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "nope",
        ],
    );
    assert!(!r.ok && r.out.contains("535 5.7.8"), "{}", r.out);

    // Python's smtplib, and the injection check.
    let py = run(Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SMTPLIB)
        .arg("127.0.0.1")
        .arg(pier.addr("smtp").port().to_string())
        .arg(pier.addr("submission").port().to_string())
        .arg(pier.addr("submissions").port().to_string())
        .arg(&cafile));
    assert!(py.ok, "smtplib:\n{}\npier:\n{}", py.out, output());
    assert!(py.out.contains("injection ok"), "{}", py.out);

    let deadline = Instant::now() + Duration::from_secs(10);
    let subjects = [
        "swaks-starttls-plain",
        "swaks-starttls-login",
        "swaks-implicit",
        "swaks-mta",
        "smtplib-starttls",
        "smtplib-implicit",
        "smtplib-mta",
    ];
    while subjects.iter().any(|s| delivered(&mail, s) == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for subject in subjects {
        assert_eq!(delivered(&mail, subject), 1, "{subject} delivered once");
    }
    for refused in ["no-auth", "auth-plaintext", "wrong-password", "injected@"] {
        assert_eq!(
            delivered(&mail, refused),
            0,
            "{refused} must not be delivered"
        );
    }
    pier.stop().unwrap_or_else(|e| panic!("{e}"));
}

pier_e2e::on_each_worker!(
    mail_clients_over_tls_with_the_extension,
    mail_clients_over_tls_with_the_package,
    mail_clients
);
