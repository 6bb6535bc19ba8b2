//! What nodes say to each other on the bus: one [`Envelope`] per bus message, in MessagePack
//! (rmp-serde, with field names so that a node of a later version can add fields that an older
//! one skips during a rolling upgrade).
//!
//! The five push operations travel as the same plain arguments the registry takes (uuid, group,
//! server, except, the bytes), so the receiving node applies them with its local registry
//! exactly as if one of its own workers had asked. Decoding borrows from the received payload:
//! pushed bytes reach the connections' queues as slices of it, without a copy.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::registry::{ConnInfo, GroupInfo};

/// The envelope format; a node drops (and counts) envelopes of another version.
pub const VERSION: u8 = 1;

/// Rows or groups per [`Msg::Reply`] part are cut so that a part stays about this size: well under
/// NATS's default 1 MiB payload limit, and small enough not to hold the bus up for long.
pub const REPLY_PART_BYTES: usize = 256 * 1024;

/// One bus message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// [`VERSION`].
    pub v: u8,
    /// The sending node's id.
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    /// The sending process ([`super::node::Node::instance`]).
    pub instance: u64,
    /// What it says.
    #[serde(borrow)]
    pub msg: Msg<'a>,
}

/// What a node says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg<'a> {
    /// I am here (every heartbeat on `All`). `answer`: say hello to me now (a node that just
    /// started or whose bus link just came back wants to know the others at once).
    Hello {
        /// Whether the receivers should answer with their own hello, to the sender's channel.
        answer: bool,
    },
    /// I am shutting down: forget me now rather than after the peer timeout.
    Bye,
    /// Queue `data` on connection `uuid` (to its owner's channel).
    Send {
        /// The connection.
        #[serde(borrow)]
        uuid: Cow<'a, str>,
        /// The bytes.
        #[serde(borrow, with = "serde_bytes")]
        data: &'a [u8],
    },
    /// Close connection `uuid` once what is queued for it is written (to its owner's channel).
    Close {
        /// The connection.
        #[serde(borrow)]
        uuid: Cow<'a, str>,
    },
    /// Add connection `uuid` to `group` (to its owner's channel).
    Join {
        /// The connection.
        #[serde(borrow)]
        uuid: Cow<'a, str>,
        /// The group.
        #[serde(borrow)]
        group: Cow<'a, str>,
    },
    /// Remove connection `uuid` from `group` (to its owner's channel).
    Leave {
        /// The connection.
        #[serde(borrow)]
        uuid: Cow<'a, str>,
        /// The group.
        #[serde(borrow)]
        group: Cow<'a, str>,
    },
    /// Queue `data` on every local connection the filter selects but `except` (on `All`).
    Broadcast {
        /// Only this group's members.
        #[serde(borrow)]
        group: Option<Cow<'a, str>>,
        /// Only this server's connections.
        #[serde(borrow)]
        server: Option<Cow<'a, str>>,
        /// Left out (uuids of any node).
        #[serde(borrow)]
        except: Vec<Cow<'a, str>>,
        /// The bytes.
        #[serde(borrow, with = "serde_bytes")]
        data: &'a [u8],
    },
    /// Answer `query` to the sender's channel under `id` (on `All`, or to one node's channel).
    Query {
        /// The asker's request id.
        id: u64,
        /// The question.
        query: Query,
    },
    /// One part of the answer to request `id`; `last` ends this node's answer.
    Reply {
        /// The asker's request id.
        id: u64,
        /// This part.
        answer: Answer,
        /// Whether this is the node's last part.
        last: bool,
    },
}

impl Msg<'_> {
    /// The `op` label of the cluster metrics.
    pub fn op(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Bye => "bye",
            Msg::Send { .. } => "send",
            Msg::Close { .. } => "close",
            Msg::Join { .. } => "join",
            Msg::Leave { .. } => "leave",
            Msg::Broadcast { .. } => "broadcast",
            Msg::Query { .. } => "query",
            Msg::Reply { .. } => "reply",
        }
    }
}

/// A cluster-wide question (the RPC methods `pier.List`, `Count`, `Groups`, `Info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Query {
    /// The first `upto` connections the filter selects (in the registry's order), and how many
    /// there are.
    List {
        /// Only this server's connections.
        server: Option<String>,
        /// Only this group's members.
        group: Option<String>,
        /// offset + limit of the page asked for: no node needs to send more.
        upto: usize,
    },
    /// How many connections the filter selects.
    Count {
        /// Only this server's connections.
        server: Option<String>,
        /// Only this group's members.
        group: Option<String>,
    },
    /// The groups with their local member counts.
    Groups {
        /// Only members of this server.
        server: Option<String>,
    },
    /// One connection (asked of its owner only).
    Info {
        /// The connection.
        uuid: String,
    },
}

/// A node's answer (or one part of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// To [`Query::List`]: how many the filter selects there, and (some of) the rows.
    List {
        /// The node's total.
        total: usize,
        /// Rows, in the registry's order.
        rows: Vec<ConnInfo>,
    },
    /// To [`Query::Count`].
    Count(usize),
    /// To [`Query::Groups`]: (some of) the groups.
    Groups(Vec<GroupInfo>),
    /// To [`Query::Info`].
    Info(Option<ConnInfo>),
}

/// Why a payload is not an envelope this node reads.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not MessagePack of an envelope.
    #[error("could not decode a cluster message")]
    Decode(#[source] rmp_serde::decode::Error),
    /// Another envelope version.
    #[error("could not read a cluster message of version {0} (this node reads {VERSION})")]
    Version(u8),
}

/// Encodes an envelope. Encoding a value of these types cannot fail (every map key is a string
/// and every value has a MessagePack form), so a failure is a bug: it panics in debug builds and
/// yields an empty payload, which receivers drop as undecodable, in release builds.
pub fn encode(envelope: &Envelope<'_>) -> Vec<u8> {
    match rmp_serde::to_vec_named(envelope) {
        Ok(bytes) => bytes,
        Err(e) => {
            debug_assert!(false, "could not encode a cluster message: {e}");
            Vec::new()
        }
    }
}

/// Decodes an envelope, borrowing strings and bytes from `payload`.
pub fn decode(payload: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let envelope: Envelope<'_> = rmp_serde::from_slice(payload).map_err(EnvelopeError::Decode)?;
    if envelope.v != VERSION {
        return Err(EnvelopeError::Version(envelope.v));
    }
    Ok(envelope)
}

/// About how many bytes a row takes in a reply (for cutting parts, not exact).
pub fn row_size(row: &ConnInfo) -> usize {
    // Field names and numbers: about 110 bytes; then the strings.
    110 + row.uuid.len()
        + row.server.len()
        + row.remote_addr.len()
        + row.node.as_ref().map_or(0, String::len)
        + row.groups.iter().map(|g| g.len() + 2).sum::<usize>()
}

/// Cuts `items` into parts of about [`REPLY_PART_BYTES`] by `size`; always at least one part (an
/// empty one for no items), so that every answer has a last part.
pub fn parts<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        if !part.is_empty() && bytes + n > REPLY_PART_BYTES {
            out.push(std::mem::take(&mut part));
            bytes = 0;
        }
        bytes += n;
        part.push(item);
    }
    out.push(part);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(msg: Msg<'_>) -> Envelope<'_> {
        Envelope {
            v: VERSION,
            from: "node-a".into(),
            instance: 42,
            msg,
        }
    }

    fn row(uuid: &str, groups: usize) -> ConnInfo {
        ConnInfo {
            uuid: uuid.into(),
            server: "chat".into(),
            remote_addr: "127.0.0.1:5000".into(),
            connected_at: 1_764_430_000.25,
            bytes_in: 3,
            bytes_out: 4,
            groups: (0..groups).map(|i| format!("{i:0128}")).collect(),
            node: Some("node-a".into()),
        }
    }

    #[test]
    fn every_message_reads_back() {
        let binary = [0u8, 0xff, b'\n', 0x80];
        let messages = [
            Msg::Hello { answer: true },
            Msg::Bye,
            Msg::Send {
                uuid: "0a1b2c3d-0000-4000-8000-000000000000".into(),
                data: &binary,
            },
            Msg::Close { uuid: "u".into() },
            Msg::Join {
                uuid: "u".into(),
                group: "room".into(),
            },
            Msg::Leave {
                uuid: "u".into(),
                group: "room".into(),
            },
            Msg::Broadcast {
                group: Some("room".into()),
                server: None,
                except: vec!["u1".into(), "u2".into()],
                data: b"hi\n",
            },
            Msg::Query {
                id: 7,
                query: Query::List {
                    server: Some("chat".into()),
                    group: None,
                    upto: 100,
                },
            },
            Msg::Query {
                id: 8,
                query: Query::Info { uuid: "u".into() },
            },
            Msg::Reply {
                id: 7,
                answer: Answer::List {
                    total: 1,
                    rows: vec![row("u", 2)],
                },
                last: true,
            },
            Msg::Reply {
                id: 9,
                answer: Answer::Groups(vec![GroupInfo {
                    group: "room".into(),
                    members: 3,
                }]),
                last: false,
            },
            Msg::Reply {
                id: 8,
                answer: Answer::Info(None),
                last: true,
            },
            Msg::Reply {
                id: 10,
                answer: Answer::Count(12),
                last: true,
            },
        ];
        for msg in messages {
            let sent = envelope(msg);
            let bytes = encode(&sent);
            assert_eq!(decode(&bytes).unwrap(), sent);
        }
    }

    #[test]
    fn pushed_bytes_are_borrowed_from_the_payload() {
        let bytes = encode(&envelope(Msg::Send {
            uuid: "u".into(),
            data: b"payload",
        }));
        let Msg::Send { data, uuid } = decode(&bytes).unwrap().msg else {
            panic!("not a send");
        };
        let range = bytes.as_ptr_range();
        assert!(range.contains(&data.as_ptr()), "data was copied");
        assert!(matches!(uuid, Cow::Borrowed(_)), "uuid was copied");
    }

    #[test]
    fn garbage_and_other_versions_are_refused() {
        assert!(matches!(decode(b""), Err(EnvelopeError::Decode(_))));
        assert!(matches!(
            decode(b"\xc1garbage"),
            Err(EnvelopeError::Decode(_))
        ));
        let mut future = envelope(Msg::Bye);
        future.v = VERSION + 1;
        assert!(matches!(
            decode(&encode(&future)),
            Err(EnvelopeError::Version(v)) if v == VERSION + 1
        ));
    }

    #[test]
    fn replies_are_cut_into_parts_under_the_bound() {
        assert_eq!(parts(Vec::<ConnInfo>::new(), row_size).len(), 1);
        // Rows of 64 groups of 128 bytes: about 8.4 KB each.
        let rows: Vec<ConnInfo> = (0..100).map(|i| row(&format!("u{i}"), 64)).collect();
        let cut = parts(rows, row_size);
        assert!(cut.len() > 1);
        assert_eq!(cut.iter().map(Vec::len).sum::<usize>(), 100);
        for part in cut {
            let bytes = encode(&envelope(Msg::Reply {
                id: 1,
                answer: Answer::List {
                    total: 100,
                    rows: part,
                },
                last: false,
            }));
            assert!(
                bytes.len() <= REPLY_PART_BYTES + 16 * 1024,
                "{}",
                bytes.len()
            );
        }
    }
}
