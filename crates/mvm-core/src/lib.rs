//! mvm's domain model, with no printing and no command-line parsing.
//!
//! - [`paths`]: every file and directory mvm owns, named once.
//! - [`name`]: machine name rules and generated names.
//! - [`instance`]: the persisted machine record and its status machine.
//! - [`registry`]: the crash-safe store of machine records, reconciled with
//!   the processes that really run.
//! - [`config`]: `$MVM_HOME/config.toml` and `MVM_*` environment overrides.
//! - [`egress`]: a machine's egress policy (`--egress`), parsed and printed.
//! - [`backend`]: the one trait every hypervisor backend implements.
//! - [`isolation`]: how a VMM is confined (uid, cgroup), as the runtime
//!   tells a backend and persists in the record.
//! - [`vmm_child`]: the VMM process a backend hands over (spawned, or
//!   adopted through a pidfd when a jailer forked it).
//! - [`process`]: pid identity (pid + start time) and liveness checks.
//! - [`tools`]: every external program mvm runs, and the one way to run it.
//! - [`env`]: every `MVM_*` environment variable, named once.
//! - [`snapshot`]: the files of a VM snapshot, their metadata and checks.
//! - [`main_process`]: a machine's process defaults (an OCI image's Env,
//!   WorkingDir, User) and its main process (Entrypoint + Cmd).
#![warn(missing_docs)]

pub mod atomic;
pub mod backend;
pub mod config;
pub mod egress;
pub mod env;
pub mod files;
pub mod instance;
pub mod isolation;
pub mod main_process;
pub mod name;
pub mod paths;
pub mod process;
pub mod registry;
pub mod snapshot;
pub mod testing;
pub mod tools;
pub mod vmm_child;

pub use backend::{BackendKind, VmBackend};
pub use instance::{InstanceRecord, Status};
pub use paths::{InstanceDir, MvmHome};
pub use registry::Registry;
