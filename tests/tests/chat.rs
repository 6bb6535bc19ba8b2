//! The chat example (examples/chat) through the real `pier serve`, on both worker implementations:
//! several real clients, rooms, private messages, in-order room delivery, `announce.php` over RPC.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Duration;

use pier_devkit::bus;
use pier_e2e::{repo_root, Pier, StartOptions, WorkerImpl};

const PROMPT: &str = "Welcome to Pier chat. Your nickname: ";
const HELP: &str =
    "Commands: /join <room>, /msg <nick> <text>, /who, /quit; anything else is said to the room.\n";

/// One chat client: a socket read line by line.
struct Client {
    /// What this client calls itself (for messages).
    name: String,
    /// Reads.
    reader: BufReader<TcpStream>,
    /// Writes.
    writer: TcpStream,
}

impl Client {
    /// Connects and picks `nick` (answering the prompt).
    fn join(pier: &Pier, nick: &str) -> Client {
        let stream = pier.connect("chat").expect("connect to the chat server");
        let mut client = Client {
            name: nick.to_owned(),
            writer: stream.try_clone().expect("clone the socket"),
            reader: BufReader::new(stream),
        };
        client.expect_bytes(PROMPT);
        client.send(nick);
        client.expect(&format!("Hi {nick}, you are in lobby. {HELP}"));
        client
    }

    fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("{}: could not send {line:?}: {e}", self.name));
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{}: no line came: {e}", self.name));
        line
    }

    fn expect(&mut self, line: &str) {
        assert_eq!(self.line(), line, "what {} got", self.name);
    }

    fn expect_bytes(&mut self, text: &str) {
        let mut got = vec![0u8; text.len()];
        self.reader
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{}: {text:?} did not come: {e}", self.name));
        assert_eq!(
            String::from_utf8_lossy(&got),
            text,
            "what {} got",
            self.name
        );
    }

    /// Reads until the server closes the connection; returns what came.
    fn rest(&mut self) -> String {
        let mut rest = String::new();
        self.reader
            .read_to_string(&mut rest)
            .unwrap_or_else(|e| panic!("{}: the connection was not closed: {e}", self.name));
        rest
    }
}

/// The chat example on `worker`, RPC on a free port, `overrides` applied; returns once a worker
/// said it runs.
fn start(worker: WorkerImpl, overrides: &[&str]) -> Pier {
    let options = StartOptions {
        rpc: true,
        overrides,
    };
    let pier = Pier::start_with("examples/chat/.rr.yaml", &["chat"], worker, &[], options)
        .unwrap_or_else(|e| panic!("{e}"));
    pier.assert_served_by(worker);
    pier
}

/// `php` with the extension loaded or not, as `worker` says, and no ini directory inherited.
fn php(worker: WorkerImpl) -> Command {
    let mut php = Command::new("php");
    php.current_dir(repo_root()).env_remove("PHP_INI_SCAN_DIR");
    if worker == WorkerImpl::Extension {
        let ext = repo_root().join("target/release/libpier.so");
        php.arg("-d").arg(format!("extension={}", ext.display()));
    }
    php
}

/// Stops `pier` and checks it exited cleanly.
fn stop(pier: Pier) {
    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "pier serve exited with {status}; output:\n{output}"
    );
}

/// What people see in the chat, with alice and carol on instance `one` and bob and dave on `two`
/// (the same instance alone, or two instances joined by a bus): joining, a nickname taken on
/// either instance, two people talking at once (each speaker's lines in order, everywhere), /who,
/// /msg (only the addressee hears it) and an unknown nickname, /join (the old room hears the
/// leave, the new room is separate), `announce.php` over `one`'s RPC with this run's worker
/// implementation (every connection hears it), /quit and a client hanging up (the room hears the
/// leave, from its CLOSE event).
fn scenario(worker: WorkerImpl, one: &Pier, two: &Pier) {
    let mut alice = Client::join(one, "alice");
    let mut bob = Client::join(two, "bob");
    alice.expect("* bob joined lobby\n");
    let mut carol = Client::join(one, "carol");
    alice.expect("* carol joined lobby\n");
    bob.expect("* carol joined lobby\n");

    // A nickname in use (on either instance) is refused; the prompt comes again.
    let stream = two.connect("chat").unwrap();
    let mut dave = Client {
        name: "dave".into(),
        writer: stream.try_clone().unwrap(),
        reader: BufReader::new(stream),
    };
    dave.expect_bytes(PROMPT);
    dave.send("alice");
    dave.expect_bytes("alice is taken. Your nickname: ");
    dave.send("dave");
    dave.expect(&format!("Hi dave, you are in lobby. {HELP}"));
    for c in [&mut alice, &mut bob, &mut carol] {
        c.expect("* dave joined lobby\n");
    }

    // alice and bob talk at once, 40 lines each, pipelined: every member, senders included, gets
    // all 80 lines, each sender's in the order sent.
    const LINES: usize = 40;
    let a: String = (0..LINES).map(|i| format!("a{i}\n")).collect();
    let b: String = (0..LINES).map(|i| format!("b{i}\n")).collect();
    let (mut aw, mut bw) = (
        alice.writer.try_clone().unwrap(),
        bob.writer.try_clone().unwrap(),
    );
    let ta = thread::spawn(move || aw.write_all(a.as_bytes()).unwrap());
    let tb = thread::spawn(move || bw.write_all(b.as_bytes()).unwrap());
    ta.join().unwrap();
    tb.join().unwrap();
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        let got: Vec<String> = (0..2 * LINES).map(|_| c.line()).collect();
        for (who, sender) in [("a", "alice"), ("b", "bob")] {
            let mine: Vec<&String> = got
                .iter()
                .filter(|l| l.starts_with(&format!("[lobby] {sender}: ")))
                .collect();
            let want: Vec<String> = (0..LINES)
                .map(|i| format!("[lobby] {sender}: {who}{i}\n"))
                .collect();
            assert_eq!(
                mine,
                want.iter().collect::<Vec<_>>(),
                "{}'s view of {sender} (all: {got:?})",
                c.name
            );
        }
    }

    // /who lists the room (across instances); /msg reaches only the addressee, wherever it is.
    bob.send("/who");
    bob.expect("In lobby: alice, bob, carol, dave\n");
    alice.send("/msg bob psst");
    alice.expect("[you -> bob] psst\n");
    bob.expect("[alice -> you] psst\n");
    dave.send("/msg carol hi from two");
    dave.expect("[you -> carol] hi from two\n");
    carol.expect("[dave -> you] hi from two\n");
    alice.send("/msg zed hello");
    alice.expect("No one is called zed.\n");

    // /join: the old room hears the leave, the new room is separate.
    dave.send("/join dev");
    dave.expect("You are in dev.\n");
    for c in [&mut alice, &mut bob, &mut carol] {
        c.expect("* dave left lobby\n");
    }
    dave.send("/who");
    dave.expect("In dev: dave\n");
    carol.send("only lobby");
    for c in [&mut alice, &mut bob, &mut carol] {
        c.expect("[lobby] carol: only lobby\n");
    }

    // announce.php over instance one's RPC (RR_RPC): every connection of every instance hears it,
    // dave in dev too (and nothing from the lobby before it). It counts the connections of the
    // instance it asked.
    let out = php(worker)
        .arg("examples/chat/announce.php")
        .arg("maintenance at noon")
        .env("RR_RPC", one.rpc_address())
        .output()
        .expect("run announce.php");
    assert!(
        out.status.success(),
        "announce.php failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_one = if std::ptr::eq(one, two) { 4 } else { 2 };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("announced to {on_one} connection(s)\n")
    );
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        c.expect("*** maintenance at noon\n");
    }

    // /quit: bye, closed by the server; the room hears the leave (from bob's CLOSE event).
    bob.send("/quit");
    assert_eq!(bob.rest(), "Bye, bob.\n");
    alice.expect("* bob left lobby\n");
    carol.expect("* bob left lobby\n");
    // A client that just hangs up: its CLOSE event still tells the room.
    drop(alice);
    carol.expect("* alice left lobby\n");
    carol.send("/who");
    carol.expect("In lobby: carol\n");
}

fn chat(worker: WorkerImpl) {
    let pier = start(worker, &[]);
    scenario(worker, &pier, &pier);
    stop(pier);
}

pier_e2e::on_each_worker!(chat_with_the_extension, chat_with_the_package, chat);

/// One chat instance of a two-instance cluster on `bus_url`.
fn cluster_node(worker: WorkerImpl, bus_url: &str, node: &str) -> Pier {
    let overrides = [
        format!("cluster.bus={bus_url}"),
        format!("cluster.node={node}"),
    ];
    let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
    start(worker, &overrides)
}

/// The chat example on two instances joined by a bus: people on different instances share the
/// lobby and everything [`scenario`] checks.
fn chat_across_two_instances(kind: bus::BusKind) {
    // The pure-PHP package (the extension's chat runs in the single-instance tests above).
    let worker = WorkerImpl::Package;
    let server = bus::BusServer::start(kind);
    let one = cluster_node(worker, &server.url(), "one");
    let two = cluster_node(worker, &server.url(), "two");
    for (pier, other) in [(&one, "two"), (&two, "one")] {
        assert!(
            pier.wait_for_output(
                &format!("cluster: node joined node={other}"),
                Duration::from_secs(30)
            ),
            "the instances did not see each other over {}; output:\n{}",
            kind.name(),
            pier.output()
        );
    }
    scenario(worker, &one, &two);
    stop(one);
    stop(two);
}

#[test]
fn chat_across_two_instances_over_redis() {
    chat_across_two_instances(bus::BusKind::Redis);
}

#[test]
fn chat_across_two_instances_over_nats() {
    chat_across_two_instances(bus::BusKind::Nats);
}
