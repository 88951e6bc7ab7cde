//! How a VMM is confined: the inputs the runtime gives a backend
//! ([`Isolation`], part of [`crate::backend::VmSpec`]) and persists in the
//! machine's record, so that every resource can be released later from the
//! instance directory and the record alone.
//!
//! The mechanics (uid allocation, cgroups v1/v2, chroot preparation and
//! release) live in the `mvm-jail` crate; the backends apply them:
//!
//! - Firecracker runs under its `jailer` (chroot under the instance
//!   directory, the machine's uid/gid, a new PID and mount namespace, the
//!   machine's cgroup, Firecracker's default seccomp filters).
//! - QEMU is spawned directly as the machine's uid/gid, with every file and
//!   socket it needs opened by mvm beforehand and passed as a file
//!   descriptor, `-sandbox on,...` (seccomp) and the machine's cgroup.

use serde::{Deserialize, Serialize};

/// A cgroup hierarchy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// One hierarchy per controller (`/sys/fs/cgroup/<controller>`).
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// `1` or `2` (the jailer's `--cgroup-version`).
    pub fn number(self) -> u8 {
        match self {
            CgroupVersion::V1 => 1,
            CgroupVersion::V2 => 2,
        }
    }
}

/// Resource limits of one machine's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLimits {
    /// Hard memory limit of everything in the cgroup (guest memory plus the
    /// VMM's own overhead), bytes.
    pub memory_bytes: u64,
    /// CPU bandwidth: at most this much CPU time ...
    pub cpu_quota_us: u64,
    /// ... per this period.
    pub cpu_period_us: u64,
    /// Relative CPU weight on the cgroup v2 scale (1..=10000, default 100);
    /// v1 `cpu.shares` is derived from it.
    pub cpu_weight: u32,
}

/// Where one machine's cgroup lives and what it limits.
///
/// The cgroup is `<hierarchy root>/<parent>/<name>` in every hierarchy mvm
/// uses (v1: `memory` and `cpu`; v2: the unified one) — the same layout the
/// Firecracker jailer uses for `--parent-cgroup` and `--id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// Which hierarchy.
    pub version: CgroupVersion,
    /// Relative parent path, `mvm/<home tag>` (no `.`/`..` components).
    pub parent: String,
    /// The machine's leaf cgroup (the machine name: `[a-z0-9-]`).
    pub name: String,
    /// The limits written when the cgroup is created.
    pub limits: CgroupLimits,
}

/// How one VMM is confined. `None` in a [`crate::backend::VmSpec`] means
/// the VMM runs with mvm's own privileges (non-root mvm, `--no-jailer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// The uid the VMM runs as: the machine's own, never 0.
    pub uid: u32,
    /// The gid the VMM runs as.
    pub gid: u32,
    /// The machine's cgroup, when the host offers memory and cpu
    /// controllers.
    pub cgroup: Option<CgroupSpec>,
}
