//! `pier --version`: this server's version, the relay protocol it speaks, the Pier extensions it
//! offers ([`crate::FEATURES`]), and the `pier` PHP extension that PHP would use beside it, so a
//! mismatch between server and extension shows at a glance.
//!
//! The extension is asked through PHP itself: its version and features are what
//! `phpversion('pier')` and `Pier\features()` return where PHP really loads it. Two places are
//! asked: a `libpier.so` next to the `pier` binary (the build tree's `target/release/`), loaded
//! alone with `php -n`, and the `php` on the PATH with its own ini files (an installed extension).

use std::fmt::Write as _;
use std::process::Command;

use crate::pool::RR_VERSION;

/// Prints the loaded extension's version and features on two lines, nothing when it is not
/// loaded. `function_exists` keeps the probe working with extensions older than `Pier\features()`.
const PROBE: &str = r#"if (extension_loaded('pier')) { echo phpversion('pier'), "\n", implode(',', function_exists('Pier\features') ? \Pier\features() : []), "\n"; }"#;

/// What asking one PHP about the extension found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extension {
    /// PHP loaded it.
    Loaded {
        /// `phpversion('pier')`.
        version: String,
        /// `Pier\features()`.
        features: Vec<String>,
    },
    /// PHP ran without it.
    NotLoaded,
    /// PHP could not be run, or could not load the file: what went wrong, in one line.
    Failed(String),
}

/// One place the extension was looked for, and what was found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Where, for the reader: "next to pier (PATH)" or "in php (PATH's php)".
    pub place: String,
    /// What was found.
    pub found: Extension,
}

/// The server's own line and feature list, and the extension probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `CARGO_PKG_VERSION` of the server.
    pub version: String,
    /// The Pier extensions the server offers.
    pub features: Vec<String>,
    /// Extension probes, in the order shown.
    pub extensions: Vec<Probe>,
}

impl Report {
    /// The report for the running binary: probes a `libpier.so` beside it and `php` on the PATH.
    pub fn gather() -> Report {
        let mut extensions = Vec::new();
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("libpier.so")));
        if let Some(so) = beside.filter(|so| so.is_file()) {
            extensions.push(Probe {
                place: format!("next to pier ({})", so.display()),
                found: ask_php(&["-n", "-d", &format!("extension={}", so.display())]),
            });
        }
        extensions.push(Probe {
            place: "in php (the php on PATH, with its ini files)".to_owned(),
            found: ask_php(&[]),
        });
        Report {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            features: crate::FEATURES.iter().map(|f| (*f).to_owned()).collect(),
            extensions,
        }
    }
}

/// Runs `php ARGS -r PROBE` and reads its answer.
fn ask_php(args: &[&str]) -> Extension {
    let output = match Command::new("php").args(args).args(["-r", PROBE]).output() {
        Ok(output) => output,
        Err(e) => return Extension::Failed(format!("could not run php: {e}")),
    };
    parse_probe(
        &String::from_utf8_lossy(&output.stdout),
        &String::from_utf8_lossy(&output.stderr),
    )
}

/// Turns the probe's output into an [`Extension`]. PHP reports a library it cannot load as a
/// startup warning (on stdout or stderr, depending on its ini) and goes on without it.
fn parse_probe(stdout: &str, stderr: &str) -> Extension {
    let complaint = stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .find(|line| line.contains("Unable to load") || line.starts_with("PHP Warning"))
        .or_else(|| stderr.lines().map(str::trim).find(|l| !l.is_empty()));
    let mut lines = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("Warning"));
    match (lines.next(), complaint) {
        (Some(version), _) => Extension::Loaded {
            version: version.to_owned(),
            features: lines
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect(),
        },
        (None, Some(complaint)) => Extension::Failed(complaint.to_owned()),
        (None, None) => Extension::NotLoaded,
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "pier {}", self.version)?;
        writeln!(
            f,
            "relay protocol: goridge frames version {}, RoadRunner TCP as of {RR_VERSION}",
            pier_protocol::frame::VERSION
        )?;
        writeln!(f, "features: {}", self.features.join(","))?;
        for probe in &self.extensions {
            match &probe.found {
                Extension::Loaded { version, features } => {
                    let mut line = format!(
                        "extension {}: pier {version}, features: {}",
                        probe.place,
                        features.join(",")
                    );
                    let mut differs = Vec::new();
                    if *version != self.version {
                        differs.push(format!("version {version} is not the server's"));
                    }
                    let missing: Vec<&str> = self
                        .features
                        .iter()
                        .filter(|f| !features.contains(f))
                        .map(String::as_str)
                        .collect();
                    if !missing.is_empty() {
                        differs.push(format!("lacks {}", missing.join(",")));
                    }
                    if !differs.is_empty() {
                        let _ = write!(line, " (MISMATCH: {})", differs.join("; "));
                    }
                    writeln!(f, "{line}")?;
                }
                Extension::NotLoaded => writeln!(f, "extension {}: not loaded", probe.place)?,
                Extension::Failed(why) => writeln!(f, "extension {}: {why}", probe.place)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(extensions: Vec<Probe>) -> Report {
        Report {
            version: "0.3.0".into(),
            features: vec!["state".into(), "push".into()],
            extensions,
        }
    }

    #[test]
    fn probe_output_is_read_as_php_prints_it() {
        let cases = [
            (
                "0.3.0\nstate,push\n",
                "",
                Extension::Loaded {
                    version: "0.3.0".into(),
                    features: vec!["state".into(), "push".into()],
                },
            ),
            (
                "0.2.0\n\n",
                "",
                Extension::Loaded {
                    version: "0.2.0".into(),
                    features: vec![],
                },
            ),
            ("", "", Extension::NotLoaded),
            (
                "\nWarning: PHP Startup: Unable to load dynamic library '/x/libpier.so' (tried: \
                 /x/libpier.so (/x/libpier.so: undefined symbol: zend_ce_exception)) in Unknown \
                 on line 0\n",
                "",
                Extension::Failed(
                    "Warning: PHP Startup: Unable to load dynamic library '/x/libpier.so' (tried: \
                     /x/libpier.so (/x/libpier.so: undefined symbol: zend_ce_exception)) in \
                     Unknown on line 0"
                        .into(),
                ),
            ),
            (
                "",
                "PHP Warning:  PHP Startup: Unable to load dynamic library 'x'\n",
                Extension::Failed(
                    "PHP Warning:  PHP Startup: Unable to load dynamic library 'x'".into(),
                ),
            ),
        ];
        for (stdout, stderr, want) in cases {
            assert_eq!(parse_probe(stdout, stderr), want, "{stdout:?} {stderr:?}");
        }
    }

    #[test]
    fn report_names_versions_features_and_mismatches() {
        let text = report(vec![
            Probe {
                place: "next to pier (/t/libpier.so)".into(),
                found: Extension::Loaded {
                    version: "0.3.0".into(),
                    features: vec!["state".into(), "push".into()],
                },
            },
            Probe {
                place: "in php".into(),
                found: Extension::Loaded {
                    version: "0.2.0".into(),
                    features: vec!["state".into()],
                },
            },
        ])
        .to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "pier 0.3.0");
        assert_eq!(
            lines[1],
            format!("relay protocol: goridge frames version 1, RoadRunner TCP as of {RR_VERSION}")
        );
        assert_eq!(lines[2], "features: state,push");
        assert_eq!(
            lines[3],
            "extension next to pier (/t/libpier.so): pier 0.3.0, features: state,push"
        );
        assert_eq!(
            lines[4],
            "extension in php: pier 0.2.0, features: state (MISMATCH: version 0.2.0 is not the \
             server's; lacks push)"
        );
    }

    #[test]
    fn report_says_when_php_has_no_extension_or_fails() {
        let text = report(vec![
            Probe {
                place: "in php".into(),
                found: Extension::NotLoaded,
            },
            Probe {
                place: "elsewhere".into(),
                found: Extension::Failed("could not run php: not found".into()),
            },
        ])
        .to_string();
        assert!(text.contains("extension in php: not loaded\n"), "{text}");
        assert!(
            text.contains("extension elsewhere: could not run php: not found\n"),
            "{text}"
        );
    }
}
