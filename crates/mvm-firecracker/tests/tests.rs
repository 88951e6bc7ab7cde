//! Integration tests of mvm-firecracker (one test binary).

mod client;
mod common;
mod contract;
mod install;
mod jailed;
mod real;
mod snapshot;
mod vsock;
