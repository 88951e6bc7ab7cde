//! mvm's Firecracker backend.
//!
//! - [`api`]: typed HTTP/1.1 client for Firecracker's API socket, with serde
//!   models mirroring the OpenAPI file (`shared/firecracker/`).
//! - [`process`]: argv builder, spawning, readiness, stale sockets.
//! - [`launch`]: how a [`mvm_core::backend::VmSpec`] becomes API calls (or a
//!   `--config-file`).
//! - [`jailer`]: the jailer's argv and the chroot of a jailed VMM.
//! - [`vsock`]: the host side of Firecracker's hybrid vsock (`CONNECT <port>`).
//! - [`snapshot`]: pause → `/snapshot/create`; a fresh process →
//!   `/snapshot/load` (memory file mapped privately) → drives → resume.
//! - [`install`]: finding, checking and installing release binaries.
//! - [`backend`]: [`FirecrackerBackend`], the [`mvm_core::VmBackend`] impl.
#![warn(missing_docs)]

pub mod api;
pub mod backend;
pub mod install;
pub mod jailer;
pub mod launch;
pub mod process;
pub mod snapshot;
pub mod vsock;

use std::path::PathBuf;

pub use backend::{FirecrackerBackend, StartMode};
use mvm_core::backend::{KvmStatus, kvm_usable};
use mvm_core::config::Config;
use mvm_core::paths::MvmHome;
use serde::Serialize;

/// What `mvm doctor` reports about Firecracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorInfo {
    /// The binary found, if any.
    pub binary: Option<PathBuf>,
    /// Its version (`1.16.1`), if it ran.
    pub version: Option<String>,
    /// The version mvm is tested with (from the configuration).
    pub expected_version: String,
    /// Whether KVM can boot guests here.
    pub kvm: KvmStatus,
    /// What prevents using Firecracker, in words (None = usable).
    pub problem: Option<String>,
    /// The jailer found, if any.
    pub jailer: Option<PathBuf>,
    /// Whether VMMs would run jailed here (root, a jailer, cgroups).
    pub jailed: bool,
    /// Why they would not, in words (None = jailed).
    pub jail_problem: Option<String>,
}

/// Inspect this host's Firecracker setup.
pub fn doctor(config: &Config, home: &MvmHome) -> DoctorInfo {
    let kvm = kvm_usable();
    let expected_version = config.firecracker_version.clone();
    let (binary, version, mut problem) = match install::find_binary(config, home) {
        Err(e) => (None, None, Some(e.to_string())),
        Ok(p) => match install::check_binary(&p) {
            Ok(v) => {
                let problem = (v != expected_version).then(|| {
                    format!(
                        "{} is version {v}; mvm is tested with {expected_version}",
                        p.display()
                    )
                });
                (Some(p), Some(v), problem)
            }
            Err(e) => (Some(p), None, Some(e.to_string())),
        },
    };
    if problem.is_none() && !kvm.usable {
        problem = Some(format!("KVM: {}", kvm.reason));
    }
    let jailer = binary.as_deref().map(install::find_jailer);
    let host = mvm_jail::doctor();
    let jail_problem = match &jailer {
        None => Some("no firecracker binary".to_owned()),
        Some(Err(e)) => Some(format!("no jailer: {e}")),
        Some(Ok(_)) if !host.root => Some("mvm is not root: the jailer needs root".to_owned()),
        Some(Ok(_)) => host.problem.clone(),
    };
    let jailer = jailer.and_then(Result::ok);
    DoctorInfo {
        jailed: jail_problem.is_none(),
        jail_problem,
        jailer,
        binary,
        version,
        expected_version,
        kvm,
        problem,
    }
}
