//! Building blocks that confine one machine's VMM.
//!
//! - [`uid`]: per-machine uid/gid from a configured range (a pure
//!   allocator the runtime calls under its global lock).
//! - [`cgroup`]: the machine's cgroup on v1 or v2: create with memory and
//!   CPU limits, place processes, kill everything in it, remove; find
//!   leftovers.
//! - [`chroot`]: the VMM's chroot under the instance directory (hard links
//!   or bind mounts, never copies), and its release (unmount, remove).
//! - [`creds`]: switching a forked VMM to the machine's uid/gid before
//!   `exec`.
//!
//! The types the runtime persists ([`mvm_core::isolation::Isolation`]) live
//! in `mvm-core`; the backends (`mvm-firecracker`'s jailer launch,
//! `mvm-qemu`'s sandboxed launch) use these blocks.
//!
//! # Resource rule
//!
//! Every block has an acquire step that runs before the VMM's first
//! instruction and a release that is idempotent and needs only the instance
//! directory and the record ([`release`]): after a SIGKILL of the
//! supervisor, any later mvm process can run it.
#![warn(missing_docs)]

pub mod cgroup;
pub mod chroot;
pub mod creds;
pub mod uid;

use mvm_core::isolation::{CgroupSpec, CgroupVersion, Isolation};
use mvm_core::paths::{InstanceDir, MvmHome};
use serde::Serialize;

pub use cgroup::{Cgroup, CgroupError, Hierarchy};
pub use chroot::{Chroot, ChrootError};
pub use uid::{UidError, UidRange};

/// The top-level cgroup every mvm machine cgroup lives under.
pub const CGROUP_TOP: &str = "mvm";

/// Errors of [`release`].
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The cgroup could not be released.
    #[error("releasing the machine's cgroup")]
    Cgroup(#[from] CgroupError),
    /// The chroot could not be released.
    #[error("releasing the machine's chroot")]
    Chroot(#[from] ChrootError),
}

/// A short stable tag of an mvm home (FNV-1a of its path, 8 hex digits),
/// so that two homes on one host never share a cgroup.
pub fn home_tag(home: &MvmHome) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in home.root().as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", (h >> 32) as u32 ^ h as u32)
}

/// The cgroup parent of every machine of `home`: `mvm/<home tag>`.
pub fn cgroup_parent(home: &MvmHome) -> String {
    format!("{CGROUP_TOP}/{}", home_tag(home))
}

/// Release everything of the machine in `dir` that its isolation holds:
/// kill and remove its cgroup, unmount and remove its chroot. Idempotent;
/// needs only the instance directory and the record's isolation. Both
/// parts are attempted; the first error is returned.
pub fn release(dir: &InstanceDir, isolation: Option<&Isolation>) -> Result<(), JailError> {
    // Kill first: nothing may run from the chroot while it is removed.
    let cg = match isolation.and_then(|i| i.cgroup.as_ref()) {
        Some(spec) => cgroup::release(spec).map_err(JailError::from),
        None => Ok(()),
    };
    if let Err(e) = &cg {
        tracing::warn!(machine = %dir.name(), error = %e, "jail release: cgroup");
    }
    unlink_jail_symlinks(dir);
    let ch = chroot::release(&dir.jail_dir()).map_err(JailError::from);
    if let Err(e) = &ch {
        tracing::warn!(machine = %dir.name(), error = %e, "jail release: chroot");
    }
    cg.and(ch)
}

/// Remove the symlinks of the instance directory that point into its jail
/// (the stable socket paths of a jailed VMM). Idempotent.
pub fn unlink_jail_symlinks(dir: &InstanceDir) {
    let Ok(entries) = fs_err::read_dir(dir.root()) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let into_jail = fs_err::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink())
            && fs_err::read_link(&p)
                .is_ok_and(|t| t.starts_with("jail") || t.starts_with(dir.jail_dir()));
        if into_jail {
            let _ = fs_err::remove_file(&p);
        }
    }
}

/// The cgroup spec of machine `name` of `home`, limits included, on the
/// host's hierarchy (`None` when the host mounts no usable one).
pub fn cgroup_spec(
    home: &MvmHome,
    name: &str,
    limits: mvm_core::isolation::CgroupLimits,
) -> Option<CgroupSpec> {
    let h = Hierarchy::detect()?;
    Some(CgroupSpec {
        version: h.version(),
        parent: cgroup_parent(home),
        name: name.to_owned(),
        limits,
    })
}

/// What `mvm inspect` shows of a machine's confinement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IsolationView {
    /// The VMM's uid.
    pub uid: u32,
    /// The VMM's gid.
    pub gid: u32,
    /// The chroot on the host, while one exists (a jailed VMM).
    pub chroot: Option<std::path::PathBuf>,
    /// The cgroup's hierarchy version.
    pub cgroup_version: Option<CgroupVersion>,
    /// The cgroup's directories (v1: memory, cpu; v2: one).
    pub cgroup: Vec<std::path::PathBuf>,
}

/// The confinement of the machine in `dir`, as its record says and the
/// host shows.
pub fn view(dir: &InstanceDir, isolation: &Isolation) -> IsolationView {
    // The jailer's chroot is <jail>/<exec name>/<machine>/root.
    let chroot = fs_err::read_dir(dir.jail_dir()).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path().join(dir.name()).join("root"))
            .find(|p| p.is_dir())
    });
    let cgroup = isolation
        .cgroup
        .as_ref()
        .and_then(|c| Some((c, Hierarchy::detect()?)))
        .and_then(|(c, h)| h.dirs(&c.parent, &c.name).ok())
        .unwrap_or_default();
    IsolationView {
        uid: isolation.uid,
        gid: isolation.gid,
        chroot,
        cgroup_version: isolation.cgroup.as_ref().map(|c| c.version),
        cgroup,
    }
}

/// What of mvm's confinement exists on the host for `home`, whoever owns
/// it; `gc` releases what no running machine owns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Leftovers {
    /// Machine cgroups under `mvm/<home tag>` (machine names).
    pub cgroups: Vec<String>,
    /// Mounts under `$MVM_HOME/instances` (chroot bind mounts).
    pub mounts: Vec<std::path::PathBuf>,
    /// Instance directories that hold a `jail/` directory.
    pub jails: Vec<std::path::PathBuf>,
}

/// Find [`Leftovers`] of `home`.
pub fn leftovers(home: &MvmHome) -> Leftovers {
    let cgroups = Hierarchy::detect()
        .and_then(|h| cgroup::leftovers(&h, &cgroup_parent(home)).ok())
        .unwrap_or_default();
    let mounts = chroot::mounts_under(&home.instances_dir());
    let jails = fs_err::read_dir(home.instances_dir())
        .map(|d| {
            d.flatten()
                .map(|e| InstanceDir::new(e.path()))
                .filter(|i| i.jail_dir().is_dir())
                .map(|i| i.jail_dir())
                .collect()
        })
        .unwrap_or_default();
    Leftovers {
        cgroups,
        mounts,
        jails,
    }
}

/// What `mvm doctor` reports about VMM confinement on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorInfo {
    /// mvm runs as root (needed to change uid and to jail).
    pub root: bool,
    /// The cgroup hierarchy found (`None`: no memory/cpu controllers).
    pub cgroup: Option<CgroupVersion>,
    /// Whether the kernel offers seccomp filters.
    pub seccomp: bool,
    /// What prevents confinement, in words (None = all available).
    pub problem: Option<String>,
}

/// Inspect this host's confinement prerequisites.
pub fn doctor() -> DoctorInfo {
    let root = rustix::process::geteuid().is_root();
    let cgroup = Hierarchy::detect().map(|h| h.version());
    let status = fs_err::read_to_string("/proc/self/status").unwrap_or_default();
    let seccomp = status.lines().any(|l| l.starts_with("Seccomp:"));
    let problem = if !root {
        Some("mvm is not root: VMMs run as the calling user, without a chroot or cgroup".into())
    } else if cgroup.is_none() {
        Some(
            "no cgroup hierarchy with memory and cpu controllers: VMMs run without resource limits"
                .into(),
        )
    } else if !seccomp {
        Some("the kernel has no seccomp support".into())
    } else {
        None
    };
    DoctorInfo {
        root,
        cgroup,
        seccomp,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_tags_differ_per_home_and_are_stable() {
        let a = home_tag(&MvmHome::new("/var/lib/mvm"));
        assert_eq!(a.len(), 8);
        assert_eq!(a, home_tag(&MvmHome::new("/var/lib/mvm")));
        assert_ne!(a, home_tag(&MvmHome::new("/var/lib/mvm2")));
        assert_eq!(
            cgroup_parent(&MvmHome::new("/var/lib/mvm")),
            format!("mvm/{a}")
        );
    }

    #[test]
    fn view_and_leftovers_see_a_jail_directory() {
        let t = tempfile::tempdir().unwrap();
        let home = MvmHome::new(t.path());
        let dir = home.instance("web");
        assert_eq!(leftovers(&home).jails, Vec::<std::path::PathBuf>::new());
        fs_err::create_dir_all(dir.jail_dir().join("firecracker/web/root")).unwrap();
        let iso = Isolation {
            uid: 7,
            gid: 8,
            cgroup: None,
        };
        let v = view(&dir, &iso);
        assert_eq!(v.chroot, Some(dir.jail_dir().join("firecracker/web/root")));
        assert_eq!((v.uid, v.gid), (7, 8));
        assert_eq!(leftovers(&home).jails, vec![dir.jail_dir()]);
        release(&dir, Some(&iso)).unwrap();
        assert!(leftovers(&home).jails.is_empty());
    }

    #[test]
    fn release_of_a_machine_that_holds_nothing_is_a_no_op() {
        let t = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(t.path().join("m"));
        release(&dir, None).unwrap();
        release(&dir, None).unwrap();
    }
}
