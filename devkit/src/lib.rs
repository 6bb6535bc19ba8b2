//! Helpers shared by pier's integration tests (`server/tests`, `tests/`) and the bench
//! (`bench/`): the same real components, started the same way, in one place.
//!
//! # Layout
//! - [`bus`]: a real `redis-server` or `nats-server` on a free loopback port, waited for until it
//!   answers, stopped like a crash, restarted on the same port.
//! - [`tls`]: a self-signed localhost certificate made with `openssl req`.
//! - [`procs`]: the processes of this machine with their parents and states, from `/proc`.
//!
//! A crate of its own rather than a file included by `#[path]` or a dependency of the bench on the
//! test crates: the bench is a tool users run, and it should depend on a small library with a
//! stable API, not on test code. Every fallible call returns a `Result` (the bench reports the
//! error); the tests use the panicking forms, whose messages carry the server's log.

pub mod bus;
pub mod procs;
pub mod tls;
