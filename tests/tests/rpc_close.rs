//! RoadRunner's `tcp.Close` from the pure-PHP package's RPC client, and `pier.Close` through its
//! `Connections::close`, against the real `pier serve`: the connection is closed, and its CLOSE event
//! follows; a closed or unknown uuid still answers true (`tcp.Close`).

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use pier_e2e::{read_exactly, read_to_close, repo_root, Pier, StartOptions, WorkerImpl};

#[test]
fn tcp_close_from_the_package_rpc_client() {
    let rpc = StartOptions {
        rpc: true,
        ..StartOptions::default()
    };
    let pier = Pier::start_with(
        "tests/php/rpc_close.rr.yaml",
        &["lines"],
        WorkerImpl::Package,
        &[],
        rpc,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = pier.connect("lines").expect("connect to the server");
        // An answered line: the connection is registered and its CONNECTED was handled.
        c.write_all(b"hi\n").unwrap();
        assert_eq!(read_exactly(&mut c, 3).unwrap(), b"hi\n");
        clients.push(c);
    }
    let ports: Vec<String> = clients
        .iter()
        .map(|c| c.local_addr().unwrap().port().to_string())
        .collect();

    let out = Command::new("php")
        .current_dir(repo_root())
        .env_remove("PHP_INI_SCAN_DIR")
        .arg("tests/php/rpc_close.php")
        .arg(pier.rpc_address())
        .args(&ports)
        .output()
        .expect("run tests/php/rpc_close.php");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rpc_close.php failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // {"first":"<uuid>","second":"<uuid>",…}: the uuids are 36 characters.
    let first = &stdout[10..46];
    let second = &stdout[58..94];
    assert_eq!(
        stdout,
        format!(
            r#"{{"first":"{first}","second":"{second}","info_server":"lines","tcp_close":true,"tcp_close_again":true,"tcp_close_unknown":true,"pier_close":true}}"#
        ) + "\n"
    );

    // Both clients see the server close the connection, and each CLOSE event reached a worker.
    for (c, (uuid, port)) in clients
        .iter_mut()
        .zip([first, second].into_iter().zip(&ports))
    {
        assert_eq!(read_to_close(c).unwrap(), b"", "nothing after the close");
        let line = format!("close event {uuid} 127.0.0.1:{port}");
        assert!(
            pier.wait_for_output(&line, Duration::from_secs(30)),
            "no \"{line}\" in pier's output:\n{}",
            pier.output()
        );
    }

    let (status, output) = pier.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "pier serve exited with {status}; output:\n{output}"
    );
}
