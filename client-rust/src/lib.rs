//! Client for [Inferential](https://github.com/), an inference orchestration server for
//! robot fleets: a robot sends observations (tensors + metadata) to a model over ZeroMQ
//! and reads the model's replies, speaking wire protocol version 2 (`docs/protocol.md`).
//!
//! ```no_run
//! use std::time::Duration;
//! use inferential::{Connection, Observation};
//!
//! # fn main() -> Result<(), inferential::Error> {
//! let conn = Connection::builder("tcp://127.0.0.1:5555").client_id("arm-01").connect()?;
//! let policy = conn.model("policy")?.latency_budget_ms(20.0);
//! let joints = [0.0f32; 7];
//! policy.observe(&Observation::new().tensor("joints", &joints, &[7]))?;
//! if let Some(reply) = policy.get_result(Duration::from_millis(50))? {
//!     let actions = reply.tensor("actions").map(|t| t.try_as::<f32>());
//!     println!("{actions:?}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The crate never panics on bytes from the network: a malformed, unknown, duplicate or
//! stale reply is dropped and counted in [`Connection::stats`].
#![warn(missing_docs)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
// Only `aio` (registering a descriptor with tokio) and `liveness` (ZMQ_TCP_MAXRT, which
// the zmq crate has no setter for, and stopping a monitor) have unsafe code.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

// Typed views reinterpret little-endian wire bytes in place; a big-endian host would need
// a byte swap on every access, which this crate does not implement.
#[cfg(target_endian = "big")]
compile_error!("inferential supports little-endian targets only");

#[cfg(feature = "tokio")]
mod aio;
pub mod chunks;
pub mod codec;
mod connection;
pub mod control;
mod error;
mod liveness;
mod matching;
mod options;
mod reply;
#[cfg(test)]
mod test_support;
pub mod wire;

#[allow(missing_docs, clippy::all)]
mod generated {
    include!("generated/inferential.rs");
}
pub(crate) use generated as pb;

#[cfg(feature = "tokio")]
pub use aio::{AsyncConnection, AsyncModel};
pub use connection::{Connection, Model, ServerInfo, SocketOptions, Stats};
pub use error::{Error, ErrorKind, Result};
pub use options::{curve_supported, ConnectionBuilder};
pub use reply::{Reply, Tensor, Timing};
pub use wire::dtype::{DType, Element};
pub use wire::limits::Limits;
pub use wire::status::Status;
pub use wire::tensor::Observation;

/// This crate's version (`"2.0.0"`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The wire protocol version this crate speaks (sent in every observation).
pub const PROTOCOL_VERSION: u32 = 2;

/// A request id: assigned by the connection, unique per connection, starting at 1 and
/// strictly increasing in send order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl RequestId {
    /// The id as the number on the wire.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
