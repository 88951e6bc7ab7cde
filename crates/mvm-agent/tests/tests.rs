//! Host-side integration tests: the real agent binary, served on a Unix
//! socket (`--listen-unix`), driven by the real `AgentClient` and mux.

mod common;
mod exec;
mod files;
mod identity;
mod mux;
mod oci;
mod protocol;
mod pty;
