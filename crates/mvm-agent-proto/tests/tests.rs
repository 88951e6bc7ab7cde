//! Integration tests of mvm-agent-proto (one test binary).

mod codec;
// Needs the async half of the crate: `cargo test -p mvm-agent-proto --all-features`.
#[cfg(feature = "tokio")]
mod handshake;
#[cfg(feature = "tokio")]
mod v2;
