//! Launching QEMU as the machine's unprivileged uid.
//!
//! QEMU 7.2's `-runas` switches uid after QEMU has set up its devices, but
//! `-sandbox ...,elevateprivileges=deny` forbids the very `setuid` calls
//! `-runas` makes (QEMU dies with SIGSYS). So mvm switches before `exec`
//! instead and QEMU never runs as root:
//!
//! 1. as root, mvm creates the machine's cgroup (if any), binds the QMP
//!    and agent sockets at their stable paths in the instance directory
//!    (root-owned: only root connects), opens the kernel, initramfs,
//!    console log and drives, and attaches the TAP ([`Opened`]);
//! 2. in the forked child: join the cgroup, switch to the machine's
//!    uid/gid keeping only the group of `/dev/kvm` when KVM is used, set
//!    the death signal of a transient VMM (after the switch, which clears
//!    it), and let exactly the opened descriptors survive `exec`;
//! 3. the parent closes its copies (a dead QEMU must leave sockets nobody
//!    serves, so that they are recognised as stale).
//!
//! QEMU therefore reaches only what it was handed; files it must reach
//! need no particular owner, and mvm reaches its sockets as before.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use mvm_core::backend::{BackendError, BackendKind, VmSpec};
use mvm_core::isolation::Isolation;
use mvm_jail::cgroup::{Cgroup, Hierarchy};
use rustix::fs::Gid;

use crate::argv::{Accel, NetArgs, PassedFds, QemuArgs};

fn err(message: impl Into<String>) -> BackendError {
    BackendError::new(BackendKind::Qemu, message)
}

/// Memory a QEMU process needs beside the guest's (TCG translation cache,
/// device emulation, the page cache of its disk images), MiB: the
/// runtime adds it to the guest memory for the cgroup limit.
pub const QEMU_OVERHEAD_MIB: u32 = 256;

/// Everything an isolated QEMU inherits, held open until it is spawned.
#[derive(Debug)]
pub struct Opened {
    /// Kept open until `self` is dropped (after the spawn).
    _owned: Vec<OwnedFd>,
    cgroup: Vec<OwnedFd>,
    /// The numbers for the argv.
    pub passed: PassedFds,
    /// Supplementary groups to keep.
    pub groups: Vec<Gid>,
    /// The uid/gid to run as; `None`: QEMU keeps root's uid (see
    /// [`switches_uid`]), confined by the sandbox and its cgroup only.
    pub run_as: Option<(u32, u32)>,
}

/// Whether a QEMU of `args` drops to the machine's uid. Not when its guest
/// RAM is a template's memory file: QEMU 7.2 opens `mem-path` read-write
/// by path (no descriptor can be handed over), so the uid would need write
/// access to the template's RAM — which every clone maps and which must
/// never change. Such a VMM (a template being built, a clone restored
/// from one) keeps the seccomp sandbox (no `setuid`, `exec`, or resource
/// changes) and its cgroup, but runs as root.
pub fn switches_uid(args: &QemuArgs) -> bool {
    args.memory.is_none()
}

fn open_ro(p: &Path) -> Result<OwnedFd, BackendError> {
    fs_err::File::open(p)
        .map(|f| OwnedFd::from(f.into_parts().0))
        .map_err(|e| err(format!("cannot open {}", p.display())).with_source(e))
}

fn bind(p: &Path) -> Result<OwnedFd, BackendError> {
    UnixListener::bind(p)
        .map(OwnedFd::from)
        .map_err(|e| err(format!("cannot listen on {}", p.display())).with_source(e))
}

/// Open and bind everything `args` needs for the machine of `spec`, and
/// create its cgroup. Stale sockets must have been cleared.
pub fn open(spec: &VmSpec, iso: &Isolation, args: &QemuArgs) -> Result<Opened, BackendError> {
    if !rustix::process::geteuid().is_root() {
        return Err(err(
            "an isolated QEMU needs root (to switch to the machine's uid); run mvm as root or without isolation",
        ));
    }
    let cgroup = match &iso.cgroup {
        Some(cs) => {
            let h = Hierarchy::detect().ok_or_else(|| {
                err("the machine has a cgroup but this host mounts no usable hierarchy")
            })?;
            Cgroup::create(&h, cs)
                .and_then(|c| c.attach_fds())
                .map_err(|e| err("cannot create the machine's cgroup").with_source(e))?
        }
        None => Vec::new(),
    };
    let mut fds = Vec::new();
    let mut keep = |fd: OwnedFd| {
        let n = fd.as_raw_fd();
        fds.push(fd);
        n
    };
    let kernel = keep(open_ro(&args.kernel)?);
    let initrd = match &args.initrd {
        Some(p) => Some(keep(open_ro(p)?)),
        None => None,
    };
    let console = keep(
        fs_err::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&args.console_log)
            .map(|f| OwnedFd::from(f.into_parts().0))
            .map_err(|e| err("cannot open the console log").with_source(e))?,
    );
    let qmp = keep(bind(&args.qmp_socket)?);
    let guest = keep(bind(&args.guest_socket)?);
    let mut drives = Vec::new();
    for d in &spec.drives {
        let open = |write: bool| {
            fs_err::OpenOptions::new()
                .read(true)
                .write(write)
                .open(&d.path)
                .map(|f| OwnedFd::from(f.into_parts().0))
                .map_err(|e| err(format!("cannot open drive {}", d.id)).with_source(e))
        };
        let mut set = vec![keep(open(false)?)];
        if !d.read_only {
            set.push(keep(open(true)?));
        }
        drives.push(set);
    }
    let tap = match &args.net {
        Some(NetArgs::Tap { tap, .. }) => Some(keep(
            mvm_net::link::open_tap(tap)
                .map(OwnedFd::from)
                .map_err(|e| err(format!("cannot attach TAP {tap}")).with_source(e))?,
        )),
        _ => None,
    };
    let groups = match args.accel {
        Accel::Kvm => mvm_jail::creds::kvm_group().into_iter().collect(),
        Accel::Tcg => Vec::new(),
    };
    Ok(Opened {
        _owned: fds,
        cgroup,
        passed: PassedFds {
            kernel,
            initrd,
            console,
            qmp,
            guest,
            drives,
            tap,
        },
        groups,
        run_as: switches_uid(args).then_some((iso.uid, iso.gid)),
    })
}

impl Opened {
    /// Install the child-side steps on `cmd` (cgroup, credentials, death
    /// signal, descriptors to inherit). `self` must stay alive until the
    /// command is spawned, and be dropped right after.
    pub fn prepare(&self, cmd: &mut tokio::process::Command, die_with_parent: bool) {
        let cgroup: Vec<i32> = self.cgroup.iter().map(|f| f.as_raw_fd()).collect();
        let inherit = self.passed.all();
        let groups = self.groups.clone();
        let run_as = self.run_as;
        let parent = rustix::process::getpid();
        // SAFETY: the closure runs in the forked, single-threaded child
        // before exec. It only makes raw syscalls (write, setgroups,
        // setresgid, setresuid, prctl, getppid, fcntl) on values captured
        // beforehand; it allocates nothing and takes no lock, so it is
        // async-signal-safe. The descriptors it names are owned by `self`,
        // which outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &cgroup {
                    let fd = std::os::fd::BorrowedFd::borrow_raw(*fd);
                    rustix::io::write(fd, b"0")?;
                }
                if let Some((uid, gid)) = run_as {
                    mvm_jail::creds::switch_to(uid, gid, &groups)?;
                }
                if die_with_parent {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::KILL,
                    ))?;
                    if rustix::process::getppid() != Some(parent) {
                        return Err(rustix::io::Errno::SRCH.into());
                    }
                }
                for fd in &inherit {
                    let fd = std::os::fd::BorrowedFd::borrow_raw(*fd);
                    rustix::io::fcntl_setfd(fd.as_fd(), rustix::io::FdFlags::empty())?;
                }
                Ok(())
            });
        }
    }
}
