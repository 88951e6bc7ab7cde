//! What a machine holds besides its VMM, one module per kind of resource.
//! Each takes only what it needs (paths, settings, the registry for
//! allocation) and each release is idempotent and works from the instance
//! directory and the persisted record alone, so that a recovery after the
//! owner's death can run it.
//!
//! - [`disk`]: the machine's own writable root disk;
//! - [`drives`]: config and secrets drives, named volumes, host directories
//!   (copy in at start, write back after the VMM exits);
//! - [`network`]: address allocation, TAP + bridge + NAT, port forwarders;
//! - [`egress`]: the egress policy's rules, DNS filter and state file;
//! - [`backend`]: which hypervisor backend runs a machine;
//! - [`agent`]: the way in to a running machine's guest agent;
//! - [`process`]: the defaults of every command run in a machine (an OCI
//!   image's Env, WorkingDir, User) and its main process.

pub mod agent;
pub mod backend;
pub mod disk;
pub mod drives;
pub mod egress;
pub mod network;
pub mod process;
