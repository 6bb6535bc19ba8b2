//! Several Pier instances acting as one over a message bus (Redis or NATS): `cluster.*` config.
//!
//! - [`node`]: this node's id and uuid tag, the owner of a uuid, the other nodes.
//! - [`envelope`]: the messages nodes exchange (MessagePack).
//! - [`bus`]: the transport ([`Bus`]): publish to one node's channel or to all, the stream of
//!   what this node receives, reconnection; `redis.rs` and `nats.rs` are its two transports.

pub mod bus;
pub mod envelope;
mod nats;
pub mod node;
mod redis;

pub use bus::{Bus, BusError, BusStats, Channel};
