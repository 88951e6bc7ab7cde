//! The guest agent binary, built statically by `build.rs` and embedded here.

/// The static x86_64 guest agent (`crates/mvm-agent`), ELF bytes.
pub static AGENT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mvm-agent"));

/// Lower-case hex sha256 of [`AGENT_BINARY`].
pub const AGENT_SHA256: &str = include_str!(concat!(env!("OUT_DIR"), "/mvm-agent.sha256"));
