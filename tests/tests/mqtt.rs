//! The MQTT example (examples/mqtt) through the real `pier serve` on both worker implementations,
//! driven by clients nobody here wrote: `mosquitto_sub`/`mosquitto_pub` (Debian mosquitto-clients)
//! for publish/subscribe across clients, wildcards, retained messages and QoS 1, and Eclipse Paho
//! (Debian python3-paho-mqtt, tests/mqtt/paho_check.py) for binary payloads, unsubscribe, the will,
//! the keep-alive and QoS grants. Raw sockets check that a malformed or oversized packet closes only
//! its own connection.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;

use pier_e2e::{fresh_dir, read_exactly, read_to_close, repo_root, Pier, WorkerImpl, IO_TIMEOUT};

/// Kills a client process the test started if the test fails before it exits.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn mosquitto_pub(pier: &Pier, args: &[&str]) {
    let port = pier.addr("mqtt").port().to_string();
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv311"])
        .args(args)
        .output()
        .expect("run mosquitto_pub (Debian package mosquitto-clients; ./dev.sh setup installs it)");
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed: {}\npier's output:\n{}",
        String::from_utf8_lossy(&out.stderr),
        pier.output()
    );
}

/// A raw MQTT CONNECT for `client_id` (clean session, keep-alive 60 s).
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4];
    body.extend_from_slice(b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

fn mqtt_example(worker: WorkerImpl) {
    let dir = fresh_dir("mqtt").expect("scratch dir");
    let store = dir.join("broker.sqlite");
    let pier = Pier::start(
        "examples/mqtt/.rr.yaml",
        &["mqtt"],
        worker,
        &[("MQTT_STORE", OsStr::new(&store))],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    pier.assert_served_by(worker);
    let port = pier.addr("mqtt").port().to_string();

    // A retained message before anyone subscribes; the subscriber's first line proves both that
    // retained messages are kept and that its subscription is in place.
    mosquitto_pub(
        &pier,
        &["-t", "alerts/ready", "-m", "ready", "-r", "-q", "1"],
    );
    let mut sub = Reaped(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                "mqttv311",
                "-i",
                "mosq-sub",
            ])
            .args(["-t", "sensors/+/temp", "-t", "alerts/#", "-q", "1"])
            .args(["-F", "%t|%p|%q|%r", "-C", "4", "-W", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mosquitto_sub"),
    );
    let (lines_tx, lines) = mpsc::channel();
    let stdout = sub.0.stdout.take().expect("mosquitto_sub's stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        lines
            .recv_timeout(IO_TIMEOUT)
            .unwrap_or_else(|_| panic!("mosquitto_sub did not print {what}"))
    };
    assert_eq!(next("the retained message"), "alerts/ready|ready|1|1");

    // Across clients: QoS 1 to a `+` filter arrives at QoS 1; a topic no filter matches does not
    // arrive; QoS 0 to a `#` filter arrives at QoS 0; a retained message published now reaches the
    // current subscriber without RETAIN.
    mosquitto_pub(
        &pier,
        &["-t", "sensors/kitchen/temp", "-m", "21.5", "-q", "1"],
    );
    mosquitto_pub(
        &pier,
        &["-t", "sensors/kitchen/humidity", "-m", "40", "-q", "1"],
    );
    mosquitto_pub(&pier, &["-t", "alerts/fire/floor2", "-m", "smoke"]);
    mosquitto_pub(
        &pier,
        &["-t", "alerts/state", "-m", "armed", "-r", "-q", "1"],
    );
    // Messages of different publishers have no order in MQTT (a QoS 0 publisher does not wait
    // for the broker before the next one starts): compare as a set.
    let mut got: Vec<String> = (0..3).map(|_| next("a published message")).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "alerts/fire/floor2|smoke|0|0",
            "alerts/state|armed|1|0",
            "sensors/kitchen/temp|21.5|1|0",
        ]
    );
    let status = sub.0.wait().expect("mosquitto_sub exits after 4 messages");
    assert!(status.success(), "mosquitto_sub: {status}");

    // A malformed packet (SUBSCRIBE with reserved flags 0000) closes that connection only, after
    // its CONNACK; an announced packet over max_packet_size is refused by Pier's framing.
    let mut bad = pier.connect("mqtt").expect("connect");
    bad.write_all(&connect_packet("bad-client")).unwrap();
    assert_eq!(read_exactly(&mut bad, 4).unwrap(), b"\x20\x02\x00\x00");
    bad.write_all(b"\x80\x06\x00\x01\x00\x01a\x00").unwrap();
    assert_eq!(
        read_to_close(&mut bad).unwrap(),
        b"",
        "closed without a reply"
    );
    let mut huge = pier.connect("mqtt").expect("connect");
    huge.write_all(&connect_packet("huge-client")).unwrap();
    assert_eq!(read_exactly(&mut huge, 4).unwrap(), b"\x20\x02\x00\x00");
    huge.write_all(b"\x30\xff\xff\xff\x7f").unwrap();
    assert_eq!(read_to_close(&mut huge).unwrap(), b"");

    // The second client library.
    // Debian's interpreter, which python3-paho-mqtt installs into (a python3 earlier on the PATH,
    // pyenv's for one, would not see it).
    let paho = Command::new("/usr/bin/python3")
        .arg(repo_root().join("tests/mqtt/paho_check.py"))
        .arg(&port)
        .output()
        .expect("run /usr/bin/python3 (Debian packages python3 and python3-paho-mqtt)");
    let printed = String::from_utf8_lossy(&paho.stdout);
    assert!(
        paho.status.success() && printed.ends_with("done\n"),
        "paho_check.py failed ({}):\n{printed}\n{}\npier's output:\n{}",
        paho.status,
        String::from_utf8_lossy(&paho.stderr),
        pier.output()
    );

    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "pier serve: {status}\n{output}");
    assert!(
        output.contains("closing") && output.contains("SUBSCRIBE flags must be 0010"),
        "the malformed packet was logged with its reason:\n{output}"
    );
    assert!(
        output.contains("over max_packet_size 262144"),
        "pier logged the oversized packet:\n{output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

pier_e2e::on_each_worker!(mqtt_with_the_extension, mqtt_with_the_package, mqtt_example);
