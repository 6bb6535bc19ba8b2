//! `pier --version` of the release build: the server and the `libpier.so` built next to it agree
//! (same version, the extension supports every feature the server offers), as a user checking for
//! a server/extension mismatch would see it.

use std::process::Command;

use pier_e2e::repo_root;

#[test]
fn release_pier_reports_the_extension_beside_it_with_the_same_version_and_features() {
    let root = repo_root();
    let binary = root.join("target/release/pier");
    let so = root.join("target/release/libpier.so");
    assert!(
        binary.is_file() && so.is_file(),
        "build first: ./dev.sh build"
    );
    // From another directory: nothing in the report depends on the working directory.
    let out = Command::new(&binary)
        .arg("--version")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run pier --version");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let version = env!("CARGO_PKG_VERSION");
    let features = stdout
        .lines()
        .find_map(|l| l.strip_prefix("features: "))
        .unwrap_or_else(|| panic!("no features line:\n{stdout}"));
    assert!(stdout.starts_with(&format!("pier {version}\n")), "{stdout}");
    assert!(
        features.split(',').any(|f| f == "state"),
        "server features: {features}"
    );
    // The extension built beside it: the same version, and every feature the server offers (it
    // may support more, e.g. the client side of one the server does not offer yet).
    let prefix = format!("extension next to pier ({}): ", so.display());
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{stdout}"));
    let (ext_version, ext_features) = line
        .split_once(", features: ")
        .unwrap_or_else(|| panic!("not loaded? {line}"));
    assert_eq!(ext_version, format!("pier {version}"), "{stdout}");
    for feature in features.split(',') {
        assert!(
            ext_features.split(',').any(|f| f == feature),
            "the extension lacks the server's feature {feature}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
}
