//! Who this instance is in a cluster, who the others are, and which one owns a connection id.
//!
//! Every node has an id (`cluster.node`, or generated) and a 32-bit **tag** derived from it
//! (FNV-1a of the id). Each connection uuid a node creates carries its tag in its first 8 hex
//! digits; the other 90 bits stay random and the version/variant bits stay those of a v4 uuid, so
//! the id is still an ordinary RoadRunner-style uuid to workers. An operation on a uuid therefore
//! knows its owner without any lookup: the tag names the owner's bus channel
//! (`<prefix>.node.<tag>`), and one bus message reaches exactly that node.
//!
//! The other nodes ([`Peers`]) are known from their messages (every node says hello on the
//! `All` channel each [`HEARTBEAT`]); a node silent for [`PEER_TTL`] is gone. Cluster-wide
//! queries wait for the nodes known when they start, and name those that did not answer.
//!
//! The table is bounded (`cluster.max_nodes`): every id heard on the bus takes an entry for at
//! least [`PEER_TTL`], so a process on the bus saying hello under ever new ids would otherwise
//! grow it without limit. When it is full a new id is refused ([`Seen::Refused`]) and the nodes
//! already in it keep working; a slot frees when a node says bye or falls silent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How often a node says hello on the bus.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard from for this long has left (or its bus link is down).
pub const PEER_TTL: Duration = Duration::from_secs(4);

/// This node's identity.
#[derive(Debug, Clone)]
pub struct Node {
    /// `cluster.node`, or generated (`<host>-<8 hex digits>`).
    pub id: String,
    /// [`tag`] of `id`: the first 32 bits of every uuid this node creates.
    pub tag: u32,
    /// Random per process: tells two processes with the same id apart (a config mistake), and
    /// this process's own `All` messages from those of an earlier run.
    pub instance: u64,
}

impl Node {
    /// The node `id`, or a generated one.
    pub fn new(id: Option<&str>) -> Node {
        let id = match id {
            Some(id) => id.to_owned(),
            None => generated_id(),
        };
        Node {
            tag: tag(&id),
            instance: random_u64(),
            id,
        }
    }

    /// A new connection id owned by this node.
    pub fn new_uuid(&self) -> Uuid {
        tagged_uuid(self.tag)
    }

    /// The last part of this node's own channel name.
    pub fn channel(&self) -> String {
        channel(self.tag)
    }
}

/// A node's tag: FNV-1a (32-bit) of its id. Stable across versions and platforms: nodes of
/// different builds must agree on it.
pub fn tag(id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The channel name part for a node tag: 8 lowercase hex digits, as the tag appears in uuids.
pub fn channel(tag: u32) -> String {
    format!("{tag:08x}")
}

/// The owner tag carried by a uuid in text form; `None` when it is not a uuid.
pub fn owner(uuid: &str) -> Option<u32> {
    let uuid = Uuid::try_parse(uuid).ok()?;
    Some(owner_of(&uuid))
}

/// The owner tag carried by a uuid.
pub fn owner_of(uuid: &Uuid) -> u32 {
    let b = uuid.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A v4 uuid whose first 32 bits are `tag`.
pub fn tagged_uuid(tag: u32) -> Uuid {
    let mut bytes = *Uuid::new_v4().as_bytes();
    // Bytes 0..4 hold neither the version (byte 6) nor the variant (byte 8).
    bytes[..4].copy_from_slice(&tag.to_be_bytes());
    Uuid::from_bytes(bytes)
}

fn random_u64() -> u64 {
    // 64 random bits from the v4 generator the server already uses (no second RNG crate).
    let r = Uuid::new_v4().as_u128();
    (r >> 64) as u64 ^ r as u64
}

/// `<host>-<8 hex digits>`: readable in logs, unique per process. A restarted instance gets a new
/// id and tag, which is right: the uuids of its old connections are gone with them.
fn generated_id() -> String {
    let host = hostname();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let host = if host.is_empty() { "pier".into() } else { host };
    format!("{host}-{:08x}", random_u64() as u32)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    // The short name: the domain adds length, not distinction, within one cluster.
    String::from_utf8_lossy(&buf[..end])
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// One other node.
#[derive(Debug, Clone)]
struct Peer {
    /// Its tag (of its id).
    tag: u32,
    /// Its process (see [`Node::instance`]).
    instance: u64,
    /// When a message of it last arrived.
    seen: Instant,
}

/// What [`Peers::seen`] learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A node not known before (or known again after it had expired).
    New,
    /// A known node.
    Known,
    /// A known id from another process: the node restarted with the same id, or two processes
    /// share an id.
    OtherInstance,
    /// A new id while the table holds its maximum: not added.
    Refused,
}

/// The other nodes, by id; at most `max`.
#[derive(Debug)]
pub struct Peers {
    /// Id → what is known.
    nodes: HashMap<String, Peer>,
    /// `cluster.max_nodes`: most entries in `nodes`.
    max: usize,
}

impl Peers {
    /// An empty table that holds at most `max` nodes.
    pub fn new(max: usize) -> Peers {
        Peers {
            nodes: HashMap::new(),
            max,
        }
    }

    /// The most nodes the table holds.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A message from node `id` (process `instance`) arrived at `now`. A new id is
    /// [`Seen::Refused`] (and not remembered) while the table is full.
    pub fn seen(&mut self, id: &str, instance: u64, now: Instant) -> Seen {
        let full = self.nodes.len() >= self.max;
        match self.nodes.get_mut(id) {
            Some(peer) => {
                peer.seen = now;
                if peer.instance == instance {
                    Seen::Known
                } else {
                    peer.instance = instance;
                    Seen::OtherInstance
                }
            }
            None if full => Seen::Refused,
            None => {
                self.nodes.insert(
                    id.to_owned(),
                    Peer {
                        tag: tag(id),
                        instance,
                        seen: now,
                    },
                );
                Seen::New
            }
        }
    }

    /// Node `id` said it is leaving.
    pub fn remove(&mut self, id: &str) -> bool {
        self.nodes.remove(id).is_some()
    }

    /// Forgets the nodes not heard from since `now - PEER_TTL`; returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.seen) >= PEER_TTL)
            .map(|(id, _)| id.clone())
            .collect();
        gone.sort_unstable();
        for id in &gone {
            self.nodes.remove(id);
        }
        gone
    }

    /// The ids of the live nodes, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.nodes.keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// The live node with tag `tag`, if any.
    pub fn by_tag(&self, tag: u32) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(_, p)| p.tag == tag)
            .map(|(id, _)| id.as_str())
    }

    /// How many nodes are known.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no other node is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_fnv1a_and_stable() {
        // FNV-1a reference values: nodes of every build must agree.
        assert_eq!(tag(""), 0x811c_9dc5);
        assert_eq!(tag("a"), 0xe40c_292c);
        assert_eq!(tag("foobar"), 0xbf9c_f968);
        assert_eq!(channel(0xbf9c_f968), "bf9cf968");
        assert_eq!(channel(7), "00000007");
    }

    #[test]
    fn a_nodes_uuids_carry_its_tag_and_stay_v4() {
        let node = Node::new(Some("eu-1"));
        assert_eq!(node.id, "eu-1");
        assert_eq!(node.tag, tag("eu-1"));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let uuid = node.new_uuid();
            assert_eq!(uuid.get_version_num(), 4);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            let text = uuid.to_string();
            assert!(text.starts_with(&node.channel()), "{text}");
            assert_eq!(owner(&text), Some(node.tag));
            assert!(seen.insert(uuid));
        }
        assert_eq!(owner("not a uuid"), None);
    }

    #[test]
    fn generated_ids_are_valid_node_ids_and_differ() {
        let a = Node::new(None);
        let b = Node::new(None);
        assert_ne!(a.id, b.id);
        assert_ne!(a.instance, b.instance);
        for id in [&a.id, &b.id] {
            assert!(id.len() <= crate::config::MAX_NODE_ID, "{id}");
            assert!(
                id.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)),
                "{id}"
            );
        }
    }

    #[test]
    fn peers_join_restart_and_expire() {
        let t0 = Instant::now();
        let mut peers = Peers::new(8);
        assert_eq!(peers.seen("b", 1, t0), Seen::New);
        assert_eq!(peers.seen("c", 2, t0), Seen::New);
        assert_eq!(peers.seen("b", 1, t0 + HEARTBEAT), Seen::Known);
        assert_eq!(peers.seen("b", 9, t0 + HEARTBEAT), Seen::OtherInstance);
        assert_eq!(peers.by_tag(tag("c")), Some("c"));
        assert_eq!(peers.by_tag(tag("zz")), None);
        assert_eq!(peers.ids(), ["b", "c"]);
        // c is silent: gone after PEER_TTL; b was heard later.
        assert_eq!(peers.expire(t0 + PEER_TTL), ["c"]);
        assert_eq!(peers.ids(), ["b"]);
        assert!(peers.remove("b"));
        assert!(peers.is_empty());
    }

    #[test]
    fn a_full_table_refuses_new_ids_and_keeps_the_known_ones() {
        let t0 = Instant::now();
        let mut peers = Peers::new(3);
        for id in ["a", "b", "c"] {
            assert_eq!(peers.seen(id, 1, t0), Seen::New);
        }
        for i in 0..1000 {
            assert_eq!(peers.seen(&format!("x{i}"), 1, t0), Seen::Refused);
        }
        assert_eq!(peers.len(), 3);
        assert_eq!(peers.by_tag(tag("x7")), None);
        // The known ones go on: seen again, restarted, found by tag.
        assert_eq!(peers.seen("a", 1, t0 + HEARTBEAT), Seen::Known);
        assert_eq!(peers.seen("b", 2, t0 + HEARTBEAT), Seen::OtherInstance);
        assert_eq!(peers.by_tag(tag("c")), Some("c"));
        // A slot frees when a node leaves, or falls silent.
        assert!(peers.remove("a"));
        assert_eq!(peers.seen("x1", 1, t0 + HEARTBEAT), Seen::New);
        assert_eq!(peers.seen("x2", 1, t0 + HEARTBEAT), Seen::Refused);
        assert_eq!(peers.expire(t0 + PEER_TTL), ["c"]);
        assert_eq!(peers.seen("x2", 1, t0 + PEER_TTL), Seen::New);
        assert_eq!(peers.ids(), ["b", "x1", "x2"]);
    }
}
