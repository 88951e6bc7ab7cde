//! Dropping a forked child to the machine's uid/gid before `exec`.
//!
//! Used for VMMs that are not started through a jailer (QEMU): the child
//! is moved into the machine's cgroup while still root, then switches to
//! the machine's uid/gid with only the supplementary groups it needs
//! (e.g. the group of `/dev/kvm`), so the VMM never runs a single
//! instruction as root. Setting the credentials clears the parent-death
//! signal, so a death signal must be set *after* [`switch_to`].

use std::os::unix::fs::MetadataExt;

use rustix::fs::{Gid, Uid};

/// Switch the calling process to `uid:gid` with exactly `groups` as its
/// supplementary groups (real, effective and saved ids alike).
///
/// Async-signal-safe (three raw syscalls, no allocation): meant for a
/// `pre_exec` closure, where the forked child has a single thread, so the
/// per-thread syscalls apply to the whole process.
pub fn switch_to(uid: u32, gid: u32, groups: &[Gid]) -> std::io::Result<()> {
    rustix::thread::set_thread_groups(groups)?;
    let g = Gid::from_raw(gid);
    rustix::thread::set_thread_res_gid(g, g, g)?;
    let u = Uid::from_raw(uid);
    rustix::thread::set_thread_res_uid(u, u, u)?;
    Ok(())
}

/// The group that may read and write `/dev/kvm`, if its mode grants the
/// group read-write access (to be kept as a supplementary group).
pub fn kvm_group() -> Option<Gid> {
    let m = fs_err::metadata("/dev/kvm").ok()?;
    (m.mode() & 0o060 == 0o060).then(|| Gid::from_raw(m.gid()))
}
