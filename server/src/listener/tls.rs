//! TLS of one server: certificates (several, chosen by SNI), client certificates, minimum version,
//! reload without dropping connections, and the handshake with its timeout.
//!
//! The rustls config lives behind a lock that a reload swaps; a handshake takes the config of the
//! moment it starts, so connections made before a reload keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use pier_protocol::TlsFacts;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{CertFiles, ClientAuth, TlsConfig};

use super::proxy::Rewind;
use super::stream::TlsIo;

/// What failed in TLS: loading a server's configuration (the config's fault; those variants name
/// the config key and the file), or a connection's handshake (the client's doing; logged at debug
/// and counted).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read (missing, unreadable).
    #[error("could not read {key} file {}", file.display())]
    Read {
        /// The config key naming the file.
        key: String,
        /// The file.
        file: PathBuf,
        /// What failed.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("could not find a PEM certificate in {key} file {}", file.display())]
    NoCertificate {
        /// The config key naming the file.
        key: String,
        /// The file.
        file: PathBuf,
    },
    /// The key does not fit its certificate, or is of an unsupported kind.
    #[error("could not use the private key of {key} file {} with its certificate", file.display())]
    Key {
        /// The config key naming the key file.
        key: String,
        /// The file.
        file: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// A certificate could not be parsed (for its DNS names).
    #[error("could not parse the certificate in {key} file {}: {problem}", file.display())]
    Certificate {
        /// The config key naming the file.
        key: String,
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The client CA file holds no usable CA certificate.
    #[error("could not use the CA certificates of {key} file {}", file.display())]
    ClientCa {
        /// The config key naming the file.
        key: String,
        /// The file.
        file: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the combination (e.g. versions).
    #[error("could not build the TLS configuration of {key}")]
    Build {
        /// The `tls` key.
        key: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// A connection's handshake failed: the client sent something that is not a valid TLS
    /// handshake, an unknown SNI name, a bad client certificate, or closed the connection.
    #[error("could not complete the TLS handshake")]
    Handshake(#[source] std::io::Error),
    /// A connection's handshake did not finish within `handshake_timeout`.
    #[error("could not complete the TLS handshake within {0:?}")]
    HandshakeTimedOut(std::time::Duration),
}

/// One server's TLS: its config (file names) and the rustls config built from the files.
#[derive(Debug)]
pub(crate) struct Tls {
    /// The `tls` section, kept to re-read the files at reload.
    pub(crate) config: TlsConfig,
    /// The config key of the section (`tcp.servers.<name>.tls`), for messages.
    key: String,
    /// What handshakes use; swapped whole by [`Tls::reload`].
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    /// Reads every file; any problem is an error naming its key and file.
    pub(crate) fn load(server: &str, config: TlsConfig) -> Result<Tls, TlsError> {
        let key = format!("tcp.servers.{server}.tls");
        let acceptor = build(&key, &config)?;
        Ok(Tls {
            config,
            key,
            current: RwLock::new(acceptor),
        })
    }

    /// Re-reads the files; on any error the current certificates stay in use.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let acceptor = build(&self.key, &self.config)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
        Ok(())
    }

    /// The acceptor of the moment.
    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Runs the server side of a handshake on `io`, bounded by `handshake_timeout`.
    pub(crate) async fn handshake(
        &self,
        io: Rewind<TcpStream>,
    ) -> Result<(TlsIo, TlsFacts<'static>), TlsError> {
        let timeout = self.config.handshake_timeout;
        let stream = tokio::time::timeout(timeout, self.acceptor().accept(io))
            .await
            .map_err(|_| TlsError::HandshakeTimedOut(timeout))?
            .map_err(TlsError::Handshake)?;
        let facts = facts(stream.get_ref().1);
        Ok((stream, facts))
    }
}

/// The crypto provider: ring (see Cargo.toml for why).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(key: &str, config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let default = certified(&provider, &config.default)?;
    let mut by_name = Vec::new();
    for files in &config.sni {
        by_name.push(certified(&provider, files)?);
    }
    let resolver = Arc::new(SniResolver { default, by_name });
    let versions: &[&rustls::SupportedProtocolVersion] = if config.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|source| TlsError::Build {
            key: key.to_owned(),
            source,
        })?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(file) => {
            let ca_key = format!("{key}.client_ca");
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(&ca_key, file)? {
                // Unusable entries surface below as "no root anchors" when none is left.
                let _ = roots.add(cert);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match config.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|source| TlsError::ClientCa {
                key: ca_key,
                file: file.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let server = builder.with_cert_resolver(resolver);
    Ok(Arc::new(server))
}

fn read_certs(key: &str, file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source| TlsError::Read {
        key: key.to_owned(),
        file: file.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key: key.to_owned(),
            file: file.to_owned(),
        });
    }
    Ok(certs)
}

/// A certificate chain with its key and the DNS names it serves.
#[derive(Debug)]
struct Named {
    /// Lower-case DNS names from the leaf's subjectAltName (`*.example.com` allowed).
    names: Vec<String>,
    /// What rustls presents.
    key: Arc<CertifiedKey>,
}

fn certified(provider: &CryptoProvider, files: &CertFiles) -> Result<Named, TlsError> {
    let cert_key = format!("{}.cert", files.origin);
    let key_key = format!("{}.key", files.origin);
    let chain = read_certs(&cert_key, &files.cert)?;
    let names = dns_names(&chain[0]).map_err(|problem| TlsError::Certificate {
        key: cert_key.clone(),
        file: files.cert.clone(),
        problem,
    })?;
    let private = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Read {
        key: key_key.clone(),
        file: files.key.clone(),
        source,
    })?;
    let key = CertifiedKey::from_der(chain, private, provider).map_err(|source| TlsError::Key {
        key: key_key,
        file: files.key.clone(),
        source,
    })?;
    Ok(Named {
        names,
        key: Arc::new(key),
    })
}

/// The DNS names of a leaf certificate (subjectAltName).
fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// Picks the certificate for the client's SNI name: the first `sni` entry naming it (exactly or
/// by a `*.` wildcard), else the default one if it names it. A client without SNI (connecting by
/// IP address) gets the default; an SNI name no certificate covers is refused.
#[derive(Debug)]
struct SniResolver {
    /// `cert` + `key`.
    default: Named,
    /// The `sni` entries, in config order.
    by_name: Vec<Named>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.key.clone());
        };
        let name = name.to_ascii_lowercase();
        self.by_name
            .iter()
            .chain(std::iter::once(&self.default))
            .find(|c| c.names.iter().any(|n| covers(n, &name)))
            .map(|c| c.key.clone())
    }
}

/// Whether certificate name `pattern` covers `name` (a wildcard covers exactly one label).
fn covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

/// What the worker learns about a finished handshake.
fn facts(conn: &rustls::ServerConnection) -> TlsFacts<'static> {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let suite = s.suite();
            suite
                .as_str()
                .map_or_else(|| format!("{suite:?}"), str::to_owned)
        })
        .unwrap_or_default();
    let client = conn.peer_certificates().and_then(|c| c.first());
    TlsFacts {
        version: version.into(),
        cipher: cipher.into(),
        sni: conn.server_name().map(|s| s.to_owned().into()),
        client_subject: client.and_then(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            Some(cert.subject().to_string().into())
        }),
        client_sha256: client.map(|der| {
            let digest = ring::digest::digest(&ring::digest::SHA256, der);
            hex(digest.as_ref()).into()
        }),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(covers("mail.example.com", "mail.example.com"));
        assert!(covers("*.example.com", "mail.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.mail.example.com"));
        assert!(!covers("*.example.com", ".example.com"));
        assert!(!covers("mail.example.com", "smtp.example.com"));
    }
}
