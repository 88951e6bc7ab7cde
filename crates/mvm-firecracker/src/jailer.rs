//! Jailed Firecracker: the jailer's argv, the chroot's layout and its
//! preparation.
//!
//! # Process
//!
//! `jailer --id <name> --exec-file <firecracker> --uid U --gid G
//! --chroot-base-dir <instance>/jail --cgroup-version 1|2 --new-pid-ns --
//! --api-sock /run/fc.sock [--id <name>] [--config-file /fc-config.json]`
//! ([`JailerArgs`]). The jailer is given no cgroup to make: mvm creates
//! the machine's cgroup with its limits (`mvm_jail::cgroup`, v1 or v2) and
//! moves the jailer into it between fork and exec, so the VMM is born in
//! it (and the jailer's own cgroup code, which cannot use this host's v2
//! hierarchy, is not involved). The jailer copies the Firecracker binary
//! into the chroot (its own choice: it will not exec a hard link another
//! uid could have changed), unshares a mount namespace and `pivot_root`s into
//! `<instance>/jail/firecracker/<name>/root`, creates `/dev/kvm`,
//! `/dev/net/tun`, `/dev/urandom` there, drops to U:G, clones the VMM
//! into a new PID namespace (where it is PID 1), writes its pid to
//! `/firecracker.pid` and exits. Firecracker installs its default seccomp
//! filters (none of `--no-seccomp`/`--seccomp-filter` is passed).
//!
//! The spawner is a child subreaper, so the VMM is reparented to it and
//! supervised through a pidfd ([`mvm_core::vmm_child`]).
//!
//! # Chroot layout (paths inside; [`inner`])
//!
//! ```text
//! /vmlinux            kernel         hard link (or read-only bind mount)
//! /initrd             initramfs      hard link (or read-only bind mount)
//! /drives/<id>        each drive     hard link (or bind mount)
//! /vmm.log            Firecracker's logger: a hard link of <instance>/vmm.log
//! /fc-config.json     --config-file (StartMode::ConfigFile only)
//! /run/fc.sock        API socket     <instance>/fc.sock is a symlink to it
//! /run/guest.sock     hybrid vsock   <instance>/guest.sock is a symlink to it
//! /firecracker        the jailer's copy of the binary
//! /firecracker.pid    the VMM's pid (outer namespace), written by the jailer
//! ```
//!
//! Ownership: per-machine files (everything inside the instance directory)
//! and writable drives are given to the machine's uid; shared read-only
//! image files stay root's and world-readable. The console is the VMM's
//! stdout, an inherited descriptor.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use mvm_core::backend::{DriveSpec, VmSpec};
use mvm_core::isolation::Isolation;
use mvm_core::paths::InstanceDir;
use mvm_jail::chroot::{self, Chroot, ChrootError};
use tokio::process::Command;

/// Memory a Firecracker process needs beside the guest's (its own heap
/// and the page cache of its drives, charged to the cgroup), MiB: the
/// runtime adds it to the guest memory for the cgroup limit.
pub const FIRECRACKER_OVERHEAD_MIB: u32 = 64;

/// Environment variable naming the jailer binary.
pub const JAILER_BIN_ENV: &str = mvm_core::env::MVM_JAILER_BIN;

/// Paths inside the chroot.
pub mod inner {
    /// The API socket.
    pub const API_SOCKET: &str = "/run/fc.sock";
    /// The hybrid vsock socket.
    pub const GUEST_SOCKET: &str = "/run/guest.sock";
    /// The kernel.
    pub const KERNEL: &str = "/vmlinux";
    /// The initramfs.
    pub const INITRD: &str = "/initrd";
    /// Firecracker's logger file.
    pub const VMM_LOG: &str = "/vmm.log";
    /// The `--config-file`.
    pub const CONFIG_FILE: &str = "/fc-config.json";

    /// Drive `id`.
    pub fn drive(id: &str) -> String {
        format!("/drives/{id}")
    }
}

/// Errors of jail preparation.
#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    /// The chroot could not be prepared.
    #[error("cannot prepare the chroot")]
    Chroot(#[from] ChrootError),
    /// A file or link of the instance directory could not be made.
    #[error("cannot prepare {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The machine name is not a valid jailer `--id`.
    #[error("{0:?} is not a valid jailer id (1-64 of [A-Za-z0-9-])")]
    BadId(String),
}

/// The argv of one jailer process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerArgs {
    /// The jailer binary.
    pub jailer: PathBuf,
    /// `--exec-file`: the Firecracker binary.
    pub exec_file: PathBuf,
    /// `--id`.
    pub id: String,
    /// `--uid`.
    pub uid: u32,
    /// `--gid`.
    pub gid: u32,
    /// `--chroot-base-dir`.
    pub chroot_base: PathBuf,
    /// `--cgroup-version`.
    pub cgroup_version: u8,
    /// `--parent-cgroup`.
    pub parent_cgroup: Option<String>,
    /// `--cgroup FILE=VALUE`, in order.
    pub cgroups: Vec<String>,
    /// `--new-pid-ns`.
    pub new_pid_ns: bool,
    /// Firecracker's own arguments (after `--`).
    pub firecracker: Vec<OsString>,
}

impl JailerArgs {
    /// The jailer arguments for `iso`, running `exec_file` with
    /// `firecracker` arguments, chroot under `dir`'s jail directory.
    pub fn new(
        jailer: &Path,
        exec_file: &Path,
        id: &str,
        iso: &Isolation,
        dir: &InstanceDir,
        firecracker: Vec<OsString>,
    ) -> Self {
        // The cgroup is mvm's (created with its limits, the jailer moved
        // into it before exec): nothing for the jailer to do.
        let (cgroup_version, parent_cgroup, cgroups) = (
            iso.cgroup.as_ref().map_or(1, |cg| cg.version.number()),
            None,
            Vec::new(),
        );
        Self {
            jailer: jailer.to_owned(),
            exec_file: exec_file.to_owned(),
            id: id.to_owned(),
            uid: iso.uid,
            gid: iso.gid,
            chroot_base: dir.jail_dir(),
            cgroup_version,
            parent_cgroup,
            cgroups,
            new_pid_ns: true,
            firecracker,
        }
    }

    /// The arguments after the program name.
    pub fn argv(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "--id".into(),
            self.id.clone().into(),
            "--exec-file".into(),
            self.exec_file.clone().into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--chroot-base-dir".into(),
            self.chroot_base.clone().into(),
            "--cgroup-version".into(),
            self.cgroup_version.to_string().into(),
        ];
        if let Some(p) = &self.parent_cgroup {
            v.push("--parent-cgroup".into());
            v.push(p.into());
        }
        for c in &self.cgroups {
            v.push("--cgroup".into());
            v.push(c.into());
        }
        if self.new_pid_ns {
            v.push("--new-pid-ns".into());
        }
        v.push("--".into());
        v.extend(self.firecracker.iter().cloned());
        v
    }

    /// A command with this argv and null stdio (the caller wires stdio).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.jailer);
        c.args(self.argv())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(false);
        c
    }
}

/// Where the jailer puts a machine's chroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailLayout {
    /// `--chroot-base-dir` (the instance's jail directory).
    pub base: PathBuf,
    /// The file name of the exec file (`firecracker`).
    pub exec_name: String,
    /// The jailer id (the machine name).
    pub id: String,
}

impl JailLayout {
    /// The layout for machine `id` in `dir` running `exec_file`.
    pub fn new(dir: &InstanceDir, exec_file: &Path, id: &str) -> Result<Self, JailerError> {
        if !crate::process::valid_instance_id(id) {
            return Err(JailerError::BadId(id.to_owned()));
        }
        // The jailer names the directory after the canonical exec file.
        let canon = fs_err::canonicalize(exec_file).unwrap_or_else(|_| exec_file.to_owned());
        let exec_name = canon
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "firecracker".into());
        Ok(Self {
            base: dir.jail_dir(),
            exec_name,
            id: id.to_owned(),
        })
    }

    /// The chroot's root on the host.
    pub fn root(&self) -> PathBuf {
        self.base.join(&self.exec_name).join(&self.id).join("root")
    }

    /// The pid file the jailer writes (the VMM's pid).
    pub fn pid_file(&self) -> PathBuf {
        self.root().join(format!("{}.pid", self.exec_name))
    }

    /// The chroot.
    pub fn chroot(&self) -> Chroot {
        Chroot::new(self.root())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JailerError + '_ {
    move |source| JailerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Replace `link` (a symlink, a stale socket or nothing) with a relative
/// symlink to `target`.
fn relink(link: &Path, target: &Path) -> Result<(), JailerError> {
    mvm_core::files::remove_if_exists(link).map_err(io_err(link))?;
    std::os::unix::fs::symlink(target, link).map_err(io_err(link))
}

/// `spec` as a jailed VMM sees it: the kernel, initramfs and drives at
/// their paths inside the chroot ([`inner`]). Pure; [`prepare`] puts the
/// files there.
pub fn inner_spec(spec: &VmSpec) -> VmSpec {
    let mut inner_spec = spec.clone();
    inner_spec.kernel.vmlinux = inner::KERNEL.into();
    if spec.initrd.is_some() {
        inner_spec.initrd = Some(inner::INITRD.into());
    }
    inner_spec.drives = spec
        .drives
        .iter()
        .map(|d| DriveSpec {
            path: inner::drive(&d.id).into(),
            ..d.clone()
        })
        .collect();
    inner_spec
}

/// The boot configuration of a jailed VMM for `spec` (paths inside the
/// chroot: kernel, drives, logger, vsock).
pub fn boot_config(spec: &VmSpec) -> crate::launch::BootConfig {
    crate::launch::BootConfig::with_paths(
        &inner_spec(spec),
        Path::new(inner::VMM_LOG),
        Path::new(inner::GUEST_SOCKET),
    )
}

/// Prepare the chroot of `spec` for the jailer: remove a stale jail, link
/// in the kernel, initramfs and drives, give per-machine files to the
/// machine's uid, and point the instance's stable socket paths into the
/// chroot. Returns `spec` as the VMM sees it (paths inside the chroot).
pub fn prepare(
    spec: &VmSpec,
    dir: &InstanceDir,
    layout: &JailLayout,
    iso: &Isolation,
) -> Result<VmSpec, JailerError> {
    chroot::release(&layout.base)?;
    let c = layout.chroot();
    c.create()?;
    // Only root passes the jail directory (the jailer enters the chroot as
    // root, the VMM never sees above it): what is linked into a chroot —
    // a template's memory for a clone — is not reachable by other users.
    {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(&layout.base, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(&layout.base)(e))?;
    }
    let owner = (iso.uid, iso.gid);
    let inner_spec = inner_spec(spec);
    c.place(&spec.kernel.vmlinux, inner::KERNEL, true)?;
    if let Some(initrd) = &spec.initrd {
        c.place(initrd, inner::INITRD, true)?;
    }
    c.mkdir("/drives", Some(owner))?;
    for d in &spec.drives {
        // Writable drives and the machine's own files become the
        // machine's; shared read-only image files stay root's.
        if !d.read_only || d.path.starts_with(dir.root()) {
            chroot::give(&d.path, iso.uid, iso.gid)?;
        }
        c.place(&d.path, &inner::drive(&d.id), d.read_only)?;
    }
    // Firecracker's log: the instance's vmm.log, shared by hard link.
    let log = dir.vmm_log();
    fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| io_err(&log)(e))?;
    chroot::give(&log, iso.uid, iso.gid)?;
    c.place(&log, inner::VMM_LOG, false)?;
    let rel_root = layout
        .root()
        .strip_prefix(dir.root())
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| layout.root());
    relink(
        &dir.api_socket(),
        &rel_root.join(inner::API_SOCKET.trim_start_matches('/')),
    )?;
    relink(
        &dir.guest_socket(),
        &rel_root.join(inner::GUEST_SOCKET.trim_start_matches('/')),
    )?;
    Ok(inner_spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_core::isolation::{CgroupSpec, CgroupVersion};

    #[test]
    fn jailer_argv_carries_uid_chroot_cgroups_and_pid_namespace() {
        let dir = InstanceDir::new("/h/instances/web");
        let iso = Isolation {
            uid: 1_000_000_007,
            gid: 1_000_000_007,
            cgroup: Some(CgroupSpec {
                version: CgroupVersion::V1,
                parent: "mvm/abcd1234".into(),
                name: "web".into(),
                limits: mvm_jail::cgroup::limits_for(2, 256, 64, None),
            }),
        };
        let a = JailerArgs::new(
            Path::new("/bin/jailer"),
            Path::new("/bin/firecracker"),
            "web",
            &iso,
            &dir,
            vec!["--api-sock".into(), inner::API_SOCKET.into()],
        );
        let v: Vec<String> = a
            .argv()
            .iter()
            .map(|s| s.to_string_lossy().into())
            .collect();
        let s = v.join(" ");
        assert!(s.starts_with("--id web --exec-file /bin/firecracker --uid 1000000007 --gid 1000000007 --chroot-base-dir /h/instances/web/jail --cgroup-version 1 --new-pid-ns"), "{s}");
        // mvm makes the cgroup and places the jailer in it.
        assert!(
            !s.contains("--cgroup ") && !s.contains("--parent-cgroup"),
            "{s}"
        );
        assert!(
            s.ends_with("--new-pid-ns -- --api-sock /run/fc.sock"),
            "{s}"
        );
        assert!(!s.contains("seccomp"), "default filters: {s}");
        let l = JailLayout {
            base: dir.jail_dir(),
            exec_name: "firecracker".into(),
            id: "web".into(),
        };
        assert_eq!(
            l.root(),
            Path::new("/h/instances/web/jail/firecracker/web/root")
        );
        assert_eq!(
            l.pid_file(),
            Path::new("/h/instances/web/jail/firecracker/web/root/firecracker.pid")
        );
    }
}
