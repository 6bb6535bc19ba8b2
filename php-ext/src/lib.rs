//! The `pier` PHP extension: `Pier\Worker`, `Pier\Tcp\*` and `Pier\Exception\*`, with every frame
//! read, decoded and encoded in Rust (`pier-protocol`), never in PHP userland.
//!
//! - [`relay`]: the transport (pipes / TCP / Unix socket) and its read buffer.
//! - [`session`]: handshakes, events, answer discipline, state: plain Rust, unit-tested. It keeps
//!   `pier_protocol`'s memos (checked headers, each connection's decoded context with the PHP
//!   strings made from it, stock reply heads), so the per-event work is what changes between
//!   events.
//! - [`push`]: the server-push commands a worker sends during a request (checks and encoding).
//! - [`rpc`]: the goridge RPC client behind `Pier\Tcp\Connections` (socket I/O and JSON codec).
//! - [`php`]: the PHP classes, thin wrappers over [`session`].
//!
//! `get_module` only registers.

pub mod php;
pub mod push;
pub mod relay;
pub mod rpc;
pub mod session;

use ext_php_rs::prelude::*;

#[php_module]
pub fn get_module(module: ModuleBuilder<'_>) -> ModuleBuilder<'_> {
    php::register(module)
}
