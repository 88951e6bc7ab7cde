//! A machine's confinement, between the registry and `mvm-jail`.
//!
//! - **create** (under the registry's global lock, with the vsock CID):
//!   when mvm runs as root and isolation is on (config `jailer`, default
//!   true; `--no-jailer` turns it off per machine), the machine gets a
//!   uid/gid of its own — the lowest of `jail_uid_range` that no record
//!   holds — and a cgroup spec whose limits come from its vCPUs, its
//!   memory plus the VMM's own overhead, and `--cpu-quota`/`cpu_quota`
//!   ([`allocate`]). Both are persisted in `InstanceRecord::isolation` and
//!   handed to the backend as `VmSpec::isolation`.
//! - **start**: the backend creates the cgroup; Firecracker runs under its
//!   jailer (chroot under the instance directory, PID and mount
//!   namespaces, default seccomp filters), QEMU is spawned as the
//!   machine's uid with `-sandbox` and every file as a descriptor. The
//!   TAP is given to the machine's uid/gid ([`tap_owner`]): a jailed
//!   Firecracker opens it by name as that uid.
//! - **teardown**: [`release`] kills whatever is left in the cgroup (the
//!   jailed VMM lives in its own PID namespace and survives a SIGKILLed
//!   supervisor: the cgroup is how it is found), removes the cgroup,
//!   unmounts and removes the chroot and the socket links into it.
//!   Idempotent; needs only the instance directory and the record.
//! - **gc / doctor**: cgroups, chroot mounts and jail directories that no
//!   live machine owns ([`leftovers`], [`gc`]); whether new machines are
//!   confined, and why not ([`status`]).

use std::path::{Path, PathBuf};

use mvm_core::backend::BackendKind;
use mvm_core::config::Config;
use mvm_core::instance::InstanceRecord;
use mvm_core::isolation::{CpuQuota, Isolation};
use mvm_core::registry::Registry;
use mvm_core::{InstanceDir, MvmHome};
use serde::Serialize;

use crate::{Runtime, RuntimeError};

/// Whether a new machine's VMM is confined, and why (not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// New machines get a uid, cgroup (and, for Firecracker, a chroot).
    pub enabled: bool,
    /// Why, in words.
    pub reason: String,
}

/// The policy for a new machine: root, and not turned off by `no_jailer`
/// (`--no-jailer`) or the config (`jailer = false`, `MVM_JAILER=0`).
pub fn policy(config: &Config, no_jailer: bool) -> Policy {
    let off = |reason: &str| Policy {
        enabled: false,
        reason: reason.into(),
    };
    if no_jailer {
        off("--no-jailer")
    } else if !config.jailer {
        off("turned off in the configuration (jailer = false or MVM_JAILER=0)")
    } else if !crate::host::is_root() {
        off("mvm is not root: VMMs run as the calling user (switching uids and jailing need root)")
    } else {
        Policy {
            enabled: true,
            reason: "mvm runs as root and jailer = true".into(),
        }
    }
}

/// The jailer binary for a machine run by `firecracker`: `jailer_bin`
/// (or `MVM_JAILER_BIN`), else `jailer` beside `firecracker`, else on
/// `PATH`.
pub fn jailer_binary(config: &Config, firecracker: &Path) -> Result<PathBuf, RuntimeError> {
    mvm_firecracker::install::find_jailer(config.jailer_bin.as_deref(), firecracker).map_err(|e| {
        RuntimeError::Missing {
            what: format!("the Firecracker jailer ({e})"),
            fix: "mvm setup --backend firecracker (installs firecracker and jailer), set jailer_bin / MVM_JAILER_BIN, or run without it: --no-jailer".into(),
        }
    })
}

/// Memory the VMM of `backend` needs beside the guest's, MiB (charged to
/// the machine's cgroup).
pub fn overhead_mib(backend: BackendKind) -> u32 {
    match backend {
        BackendKind::Firecracker => mvm_firecracker::jailer::FIRECRACKER_OVERHEAD_MIB,
        BackendKind::Qemu => mvm_qemu::isolate::QEMU_OVERHEAD_MIB,
    }
}

/// The confinement of new machine `rec` (its name, backend, vCPUs and
/// memory are set): the lowest uid of the configured range that no record
/// of `registry` holds (gid = uid), and its cgroup (none when the host
/// mounts no memory+cpu hierarchy). Call under the registry's global lock.
pub fn allocate(
    registry: &Registry,
    config: &Config,
    home: &MvmHome,
    rec: &InstanceRecord,
    cpu_quota: Option<CpuQuota>,
) -> Result<Isolation, RuntimeError> {
    let taken: Vec<u32> = registry
        .list()?
        .into_iter()
        .filter_map(|l| l.record.ok())
        .filter(|r| r.name != rec.name)
        .filter_map(|r| r.isolation.map(|i| i.uid))
        .collect();
    let uid = mvm_jail::uid::allocate(config.jail_uid_range, taken).map_err(|e| {
        RuntimeError::Invalid(format!("cannot give machine {:?} a uid: {e}", rec.name))
    })?;
    let limits = mvm_jail::cgroup::limits_for(
        rec.cpus,
        rec.memory_mib,
        overhead_mib(rec.backend),
        cpu_quota.or(config.cpu_quota).map(CpuQuota::millis),
    );
    Ok(Isolation {
        uid,
        gid: uid,
        cgroup: mvm_jail::cgroup_spec(home, &rec.name, limits),
    })
}

/// Who owns the TAP of machine `rec`: its VMM's uid/gid when confined (a
/// jailed Firecracker opens the TAP by name as that uid), else root.
pub fn tap_owner(rec: &InstanceRecord) -> Option<(u32, u32)> {
    rec.isolation.as_ref().map(|i| (i.uid, i.gid))
}

/// Release everything the confinement of `rec` holds: kill what is left in
/// its cgroup and remove it, unmount and remove its chroot, remove the
/// socket links into it. Idempotent; needs only `dir` and the record.
pub fn release(dir: &InstanceDir, rec: &InstanceRecord) -> Result<(), mvm_jail::JailError> {
    mvm_jail::release(dir, rec.isolation.as_ref())
}

/// One piece of confinement that no live machine owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JailLeftover {
    /// A machine cgroup under `mvm/<home tag>`.
    Cgroup {
        /// The machine name (the leaf cgroup).
        name: String,
    },
    /// A mount under the instances directory (a chroot's bind mount).
    Mount {
        /// The mount point.
        path: PathBuf,
    },
    /// A machine's jail directory (chroot).
    Jail {
        /// The directory.
        path: PathBuf,
    },
}

impl std::fmt::Display for JailLeftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JailLeftover::Cgroup { name } => write!(f, "cgroup of machine {name}"),
            JailLeftover::Mount { path } => write!(f, "mount {}", path.display()),
            JailLeftover::Jail { path } => write!(f, "jail directory {}", path.display()),
        }
    }
}

/// The machine of the instance directory that `path` lies in, if any.
fn machine_of(home: &MvmHome, path: &Path) -> Option<String> {
    path.strip_prefix(home.instances_dir())
        .ok()?
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
}

/// Confinement of `rt`'s home that no machine with a live owner holds
/// (the owner — creator, supervisor or a recovery — releases its own).
pub fn leftovers(rt: &Runtime) -> Vec<JailLeftover> {
    let registry = rt.registry();
    let found = mvm_jail::leftovers(rt.home());
    let free = |name: &str| !registry.owner_alive(name);
    let mut out = Vec::new();
    for name in found.cgroups {
        if free(&name) {
            out.push(JailLeftover::Cgroup { name });
        }
    }
    for path in found.mounts {
        if machine_of(rt.home(), &path).is_none_or(|m| free(&m)) {
            out.push(JailLeftover::Mount { path });
        }
    }
    for path in found.jails {
        if machine_of(rt.home(), &path).is_none_or(|m| free(&m)) {
            out.push(JailLeftover::Jail { path });
        }
    }
    out
}

/// Remove [`leftovers`]; what was removed and what was kept (with why).
pub fn gc(rt: &Runtime) -> (Vec<String>, Vec<String>) {
    let (mut removed, mut kept) = (Vec::new(), Vec::new());
    let hierarchy = mvm_jail::Hierarchy::detect();
    for l in leftovers(rt) {
        let result = match &l {
            JailLeftover::Cgroup { name } => match &hierarchy {
                Some(h) => {
                    let spec = mvm_core::isolation::CgroupSpec {
                        version: h.version(),
                        parent: mvm_jail::cgroup_parent(rt.home()),
                        name: name.clone(),
                        limits: mvm_jail::cgroup::limits_for(1, 0, 0, None),
                    };
                    mvm_jail::cgroup::release_at(h, &spec).map_err(|e| e.to_string())
                }
                None => Ok(()),
            },
            JailLeftover::Mount { path } | JailLeftover::Jail { path } => {
                // A mount is released with the jail directory it lies in.
                let jail = match machine_of(rt.home(), path) {
                    Some(m) => rt.dir(&m).jail_dir(),
                    None => path.clone(),
                };
                mvm_jail::chroot::release(&jail).map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(()) => removed.push(l.to_string()),
            Err(e) => kept.push(format!("{l}: {e}")),
        }
    }
    (removed, kept)
}

/// What `mvm doctor` says about confinement on this host.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// New machines are confined.
    pub active: bool,
    /// How (uid range, cgroup version, jailer) or why not.
    pub detail: String,
    /// What would turn it on, when it is off for a reason one can fix.
    pub fix: Option<String>,
}

/// Whether new machines of this host and configuration are confined, and
/// how, or why not.
pub fn status(config: &Config, home: &MvmHome) -> Status {
    let p = policy(config, false);
    if !p.enabled {
        let fix = if config.jailer {
            Some("run mvm as root".into())
        } else {
            Some("set jailer = true in config.toml (or unset MVM_JAILER)".into())
        };
        return Status {
            active: false,
            detail: format!("off: {}", p.reason),
            fix,
        };
    }
    let host = mvm_jail::doctor();
    let cgroup = match host.cgroup {
        Some(v) => format!("cgroup v{}", v.number()),
        None => "no cgroup (no memory+cpu hierarchy mounted: no resource limits)".into(),
    };
    let fc = crate::resources::backend::firecracker_binary(config, home);
    let jailer = match fc.as_deref().map(|f| jailer_binary(config, f)) {
        None => "Firecracker: no binary".to_owned(),
        Some(Ok(j)) => format!("Firecracker: jailer {}", j.display()),
        Some(Err(e)) => format!("Firecracker: {e}"),
    };
    Status {
        active: true,
        detail: format!(
            "on: uids {}, {cgroup}, seccomp {}; QEMU sandboxed; {jailer}",
            config.jail_uid_range,
            if host.seccomp { "available" } else { "missing" },
        ),
        fix: None,
    }
}
