//! TLS facts of a connection (Pier extension `tls`): the `tls` key of an event's context. See
//! "`tls`: TLS and STARTTLS" in `PROTOCOL.md`.

use std::borrow::Cow;

use crate::tcp::push_json_string;

/// What a TLS connection negotiated, as a worker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
pub struct TlsFacts<'a> {
    /// Protocol version, `TLSv1.2` or `TLSv1.3`.
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    /// Cipher suite, IANA name (`TLS13_AES_256_GCM_SHA384`).
    #[serde(borrow, default)]
    pub cipher: Cow<'a, str>,
    /// The server name the client asked for (SNI), when it sent one.
    #[serde(borrow, default)]
    pub sni: Option<Cow<'a, str>>,
    /// The client certificate's subject (RFC 4514 text), when the client presented one.
    #[serde(borrow, default)]
    pub client_subject: Option<Cow<'a, str>>,
    /// SHA-256 of the client certificate's DER bytes, lower-case hex, when it presented one.
    #[serde(borrow, default)]
    pub client_sha256: Option<Cow<'a, str>>,
}

impl TlsFacts<'_> {
    /// The context fragment `,"tls":{…}` that follows `"event"` in an event's context. Absent
    /// optional facts are left out. The server computes it once per connection (after the handshake)
    /// and hands it to every event, see [`crate::tcp::encode_event_with_context`].
    pub fn context_fragment(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(br#","tls":{"version":"#);
        push_json_string(&mut out, &self.version);
        out.extend_from_slice(br#","cipher":"#);
        push_json_string(&mut out, &self.cipher);
        let optional = [
            ("sni", &self.sni),
            ("client_subject", &self.client_subject),
            ("client_sha256", &self.client_sha256),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                push_json_string(&mut out, value);
            }
        }
        out.extend_from_slice(b"}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_leaves_out_absent_facts_and_escapes() {
        let facts = TlsFacts {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            sni: Some("mail.example".into()),
            client_subject: Some("CN=a<b>,O=\"x\"".into()),
            client_sha256: None,
        };
        assert_eq!(
            String::from_utf8(facts.context_fragment()).unwrap(),
            r#","tls":{"version":"TLSv1.3","cipher":"TLS13_AES_128_GCM_SHA256","sni":"mail.example","client_subject":"CN=a\u003cb\u003e,O=\"x\""}"#
        );
        let bare = TlsFacts {
            version: "TLSv1.2".into(),
            cipher: "c".into(),
            ..TlsFacts::default()
        };
        assert_eq!(
            bare.context_fragment(),
            br#","tls":{"version":"TLSv1.2","cipher":"c"}"#
        );
    }
}
