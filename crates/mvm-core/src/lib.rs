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
//! - [`process`]: pid identity (pid + start time) and liveness checks.
//! - [`tools`]: every external program mvm runs, and the one way to run it.
//! - [`env`]: every `MVM_*` environment variable, named once.
//! - [`snapshot`]: the files of a VM snapshot, their metadata and checks.
#![warn(missing_docs)]

pub mod atomic;
pub mod backend;
pub mod config;
pub mod egress;
pub mod env;
pub mod instance;
pub mod name;
pub mod paths;
pub mod process;
pub mod registry;
pub mod snapshot;
pub mod testing;
pub mod tools;

pub use backend::{BackendKind, VmBackend};
pub use instance::{InstanceRecord, Status};
pub use paths::{InstanceDir, MvmHome};
pub use registry::Registry;
