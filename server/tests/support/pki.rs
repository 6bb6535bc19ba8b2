//! Test certificates made at test time with rcgen (no private key is ever committed): a CA, server
//! certificates (ECDSA P-256, or RSA with a key from `openssl genpkey`), client certificates.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A CA and the directory its certificates are written to.
pub struct Pki {
    /// Where the PEM files go.
    pub dir: PathBuf,
    /// The CA certificate (PEM file), for clients' `-CAfile` and servers' `client_ca`.
    pub ca_file: PathBuf,
    /// The CA certificate, for signing.
    ca: Certificate,
    /// The CA key.
    ca_key: KeyPair,
}

/// A certificate and its key, as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate's DER bytes (for fingerprints).
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Pier test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            dir: dir.to_owned(),
            ca_file,
            ca,
            ca_key,
        }
    }

    /// A server certificate for `names` (DNS SANs), ECDSA P-256 or RSA 2048.
    pub fn server(&self, file: &str, names: &[&str], rsa: bool) -> Issued {
        let key = if rsa {
            let out = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .output()
                .expect("openssl (Debian package openssl) makes the RSA key");
            assert!(out.status.success());
            KeyPair::from_pem_and_sign_algo(
                std::str::from_utf8(&out.stdout).unwrap(),
                &rcgen::PKCS_RSA_SHA256,
            )
            .unwrap()
        } else {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
        };
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params, key)
    }

    /// A client certificate with `cn`; `expired` ones ended in 2021.
    pub fn client(&self, file: &str, cn: &str, expired: bool) -> Issued {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Pier tests");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.issue(file, params, key)
    }

    fn issue(&self, file: &str, params: CertificateParams, key: KeyPair) -> Issued {
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_file = self.dir.join(format!("{file}.crt"));
        let key_file = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Issued {
            cert: cert_file,
            key: key_file,
            der: cert.der().to_vec(),
        }
    }
}

/// Lower-case hex SHA-256, as Pier reports client certificates.
pub fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A TLS client over a real socket (rustls), trusting the test CA; `client` presents a certificate.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    ca_file: &Path,
    sni: &str,
    client: Option<&Issued>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tls_over(
        tokio::net::TcpStream::connect(addr).await?,
        ca_file,
        sni,
        client,
    )
    .await
}

/// The client side of a handshake over an existing stream (after STARTTLS, or through a proxy).
pub async fn tls_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    ca_file: &Path,
    sni: &str,
    client: Option<&Issued>,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&c.cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_file(&c.key).unwrap(),
            )
            .unwrap(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), stream)
        .await
}
