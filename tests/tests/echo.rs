//! The echo example (examples/echo) through the real `pier serve`, on both worker implementations:
//! two servers with different delimiters, one worker pool routing by server name.

use std::io::Write;

use pier_e2e::{read_exactly, read_to_close, Pier, WorkerImpl};

fn echo_example(worker: WorkerImpl) {
    let pier = Pier::start("examples/echo/.rr.yaml", &["echo", "upper"], worker, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    pier.assert_served_by(worker);

    // echo: "\n"-delimited. Two lines pipelined in one write, then a line split mid-word, then a
    // delimiter arriving on its own: each line comes back whole, in order.
    let mut echo = pier.connect("echo").expect("connect to the echo server");
    echo.write_all(b"hello\nsecond line\nspl").unwrap();
    echo.flush().unwrap();
    echo.write_all(b"it\n").unwrap();
    echo.write_all(b"tail").unwrap();
    echo.write_all(b"\n").unwrap();
    let expected = b"hello\nsecond line\nsplit\ntail\n";
    assert_eq!(
        String::from_utf8_lossy(&read_exactly(&mut echo, expected.len()).unwrap()),
        String::from_utf8_lossy(expected)
    );

    // upper: "\r\n"-delimited, on another port, same workers. A lone "\n" is not its delimiter.
    let mut upper = pier.connect("upper").expect("connect to the upper server");
    upper.write_all(b"abc\r\nmixed Case\nstill\r").unwrap();
    upper.write_all(b"\n").unwrap();
    let expected = b"ABC\r\nMIXED CASE\nSTILL\r\n";
    assert_eq!(
        String::from_utf8_lossy(&read_exactly(&mut upper, expected.len()).unwrap()),
        String::from_utf8_lossy(expected)
    );

    // Both connections are still open and independent: "quit" ends only the echo one.
    echo.write_all(b"quit\n").unwrap();
    assert_eq!(read_to_close(&mut echo).unwrap(), b"bye\n");
    upper.write_all(b"after\r\n").unwrap();
    assert_eq!(read_exactly(&mut upper, 7).unwrap(), b"AFTER\r\n");
    drop(upper);

    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "pier serve exited with {status} after SIGTERM; output:\n{output}"
    );
    let other = WorkerImpl::ALL
        .into_iter()
        .find(|&w| w != worker)
        .map(WorkerImpl::banner);
    assert!(
        other.is_some_and(|banner| !output.contains(banner)),
        "a worker ran on the other implementation; output:\n{output}"
    );
}

pier_e2e::on_each_worker!(echo_with_the_extension, echo_with_the_package, echo_example);
