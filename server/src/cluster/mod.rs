//! Several Pier instances acting as one over a message bus (Redis or NATS): `cluster.*` config.
//!
//! - [`node`]: this node's id and uuid tag, the owner of a uuid, the other nodes.
//! - [`envelope`]: the messages nodes exchange (MessagePack).

pub mod envelope;
pub mod node;
