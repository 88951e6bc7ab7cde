//! The machine registry: one directory per machine under
//! `$MVM_HOME/instances`, holding an atomically written `instance.json`.
//!
//! - **Names are claimed with `mkdir`**, which is atomic: of two concurrent
//!   `mvm run --name x`, exactly one creates the directory; the other gets
//!   [`RegistryError::NameTaken`].
//! - **Changes happen under a per-instance `flock`** ([`InstanceLock`]), so a
//!   read-modify-write of the record never loses another process's update.
//! - **Allocation of shared resources** (vsock CIDs, addresses) happens under
//!   the global lock ([`Registry::global_lock`]), and nothing else does: no
//!   image copy, `mkfs` or guest I/O runs under it.
//! - **One owner per machine** ([`OwnerLock`]): the process that creates,
//!   starts, runs and stops a machine holds an open-file-description lock on
//!   `<instance>/owner.lock` for as long as it owns it (the creating CLI,
//!   then the supervisor, which inherits the very same lock across `exec`).
//!   The kernel drops the lock when the owner dies, however it dies, so
//!   liveness is observable without trusting pids
//!   ([`Registry::owner_alive`], which tests the lock without taking it).
//!   Lock order: global lock, then a machine's record lock; owner locks are
//!   only ever *tried*, never waited for, so they cannot deadlock.
//! - A directory without a readable record is listed as broken, never
//!   silently skipped, and `rm` can remove it.

use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::atomic::{AtomicWriteError, write_atomic, write_atomic_volatile};
use crate::instance::InstanceRecord;
use crate::name::{InvalidName, validate};
use crate::paths::{InstanceDir, MvmHome};

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The name is not valid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// Another machine already has the name.
    #[error("a machine named {name:?} already exists")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// No such machine.
    #[error("no machine named {name:?}")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The record exists but cannot be parsed.
    #[error("the record of machine {name:?} at {path} is unreadable")]
    Corrupt {
        /// The name.
        name: String,
        /// The record path.
        path: PathBuf,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A status change that the state machine forbids.
    #[error(transparent)]
    BadTransition(#[from] crate::instance::BadTransition),
    /// Writing the record failed.
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
    /// Other IO failure (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// An exclusive `flock` on a lock file; released on drop.
#[derive(Debug)]
pub struct InstanceLock {
    _file: fs_err::File,
}

fn lock_file(path: PathBuf) -> Result<InstanceLock, RegistryError> {
    let file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    rustix::fs::flock(
        file.file().as_fd(),
        rustix::fs::FlockOperation::LockExclusive,
    )
    .map_err(|e| std::io::Error::other(format!("cannot lock {}: {e}", path.display())))?;
    Ok(InstanceLock { _file: file })
}

/// The owner lock of one machine: an open-file-description (OFD) write lock
/// on `<instance>/owner.lock`, held for as long as this value (or a process
/// that inherited its descriptor) lives.
///
/// OFD locks belong to the open file description, not to the process: they
/// are shared by a child that inherits the descriptor (the hand-over from
/// the creating CLI to the supervisor), conflict with every other open of
/// the file, including in the same process, and are released by the kernel
/// when the last descriptor closes, also on SIGKILL. `F_OFD_GETLK` tests for
/// a holder without taking the lock, so observers never disturb owners.
#[derive(Debug)]
pub struct OwnerLock {
    file: std::fs::File,
}

fn ofd_lock(fd: std::os::fd::BorrowedFd<'_>, cmd: OfdCmd) -> std::io::Result<bool> {
    use nix::fcntl::{FcntlArg, fcntl};
    use nix::libc;
    // SAFETY: `flock` is a plain C struct for which all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 0; // the whole file
    fl.l_type = libc::F_WRLCK as _;
    let r = match cmd {
        OfdCmd::TryLock => fcntl(fd, FcntlArg::F_OFD_SETLK(&fl)),
        OfdCmd::Test => fcntl(fd, FcntlArg::F_OFD_GETLK(&mut fl)),
    };
    match (cmd, r) {
        (OfdCmd::TryLock, Ok(_)) => Ok(true),
        (OfdCmd::TryLock, Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES)) => Ok(false),
        // GETLK: F_UNLCK means nobody holds a conflicting lock.
        (OfdCmd::Test, Ok(_)) => Ok(i32::from(fl.l_type) != libc::F_UNLCK),
        (_, Err(e)) => Err(std::io::Error::from(e)),
    }
}

#[derive(Clone, Copy)]
enum OfdCmd {
    TryLock,
    Test,
}

fn open_owner_file(path: &std::path::Path) -> Result<std::fs::File, RegistryError> {
    Ok(fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)?
        .into_parts()
        .0)
}

impl OwnerLock {
    /// Adopt an owner lock inherited as file descriptor `fd` (the
    /// supervisor, from the process that spawned it). The descriptor is
    /// checked to really hold the lock and is marked close-on-exec so the
    /// VMM never inherits it.
    pub fn adopt(fd: std::os::fd::OwnedFd, path: &std::path::Path) -> Result<Self, RegistryError> {
        use std::os::fd::AsFd;
        let file = std::fs::File::from(fd);
        nix::fcntl::fcntl(
            file.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(std::io::Error::from)?;
        // Re-taking an OFD lock we hold through this description succeeds;
        // if the description holds none (wrong fd), it either takes it (the
        // owner had died) or fails because someone else owns the machine.
        if !ofd_lock(file.as_fd(), OfdCmd::TryLock)? {
            return Err(std::io::Error::other(format!(
                "the inherited descriptor does not hold the owner lock {}",
                path.display()
            ))
            .into());
        }
        Ok(Self { file })
    }

    /// A duplicate of the locked descriptor (close-on-exec; the lock is
    /// shared with it).
    pub fn duplicate(&self) -> Result<std::os::fd::OwnedFd, RegistryError> {
        use std::os::fd::AsFd;
        Ok(self.file.as_fd().try_clone_to_owned()?)
    }

    /// Make `cmd`'s child inherit this lock as descriptor `target` (for
    /// [`OwnerLock::adopt`] in the child). The child shares the lock from
    /// the moment it is forked, so ownership passes without a gap. `cmd`
    /// keeps a duplicate until it is dropped: drop it after spawning.
    pub fn pass_to(
        &self,
        cmd: &mut std::process::Command,
        target: i32,
    ) -> Result<(), RegistryError> {
        use std::os::fd::{AsRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let fd: OwnedFd = self.duplicate()?;
        let raw = fd.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // calls dup2(2) (async-signal-safe); dup2 clears close-on-exec on
        // `target`. `fd` is moved in so it stays open until the fork.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &fd;
                if nix::libc::dup2(raw, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl std::os::fd::AsFd for OwnerLock {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Prefix of the hidden directories machines are built in before their
/// name is claimed.
const STAGING_PREFIX: &str = ".creating-";

/// One entry of [`Registry::list`].
#[derive(Debug)]
pub struct Listed {
    /// The machine name (directory name).
    pub name: String,
    /// The record, or why it could not be read.
    pub record: Result<InstanceRecord, RegistryError>,
}

/// The registry of machines under one [`MvmHome`].
#[derive(Debug, Clone)]
pub struct Registry {
    home: MvmHome,
}

impl Registry {
    /// Open (and create if needed) the registry of `home`.
    pub fn open(home: &MvmHome) -> Result<Self, RegistryError> {
        fs_err::create_dir_all(home.instances_dir())?;
        Ok(Self { home: home.clone() })
    }

    /// The home this registry lives in.
    pub fn home(&self) -> &MvmHome {
        &self.home
    }

    /// The instance directory of `name`.
    pub fn dir(&self, name: &str) -> InstanceDir {
        self.home.instance(name)
    }

    /// Take the global lock (allocation of CIDs, addresses, TAP names).
    pub fn global_lock(&self) -> Result<InstanceLock, RegistryError> {
        lock_file(self.home.lock_file())
    }

    /// Take the lock of one machine.
    pub fn lock(&self, name: &str) -> Result<InstanceLock, RegistryError> {
        let dir = self.dir(name);
        if !dir.root().is_dir() {
            return Err(RegistryError::NotFound {
                name: name.to_owned(),
            });
        }
        lock_file(dir.lock_file())
    }

    /// Become the owner of machine `name`, if nobody is: `Ok(None)` when
    /// another process owns it.
    pub fn try_own(&self, name: &str) -> Result<Option<OwnerLock>, RegistryError> {
        let dir = self.dir(name);
        if !dir.root().is_dir() {
            return Err(RegistryError::NotFound {
                name: name.to_owned(),
            });
        }
        let file = open_owner_file(&dir.owner_lock())?;
        Ok(ofd_lock(file.as_fd(), OfdCmd::TryLock)?.then_some(OwnerLock { file }))
    }

    /// Whether some process owns machine `name` (holds its owner lock).
    /// Tests the lock without taking it.
    pub fn owner_alive(&self, name: &str) -> bool {
        let path = self.dir(name).owner_lock();
        match fs_err::File::open(&path) {
            // A write lock can be tested through a read-only descriptor.
            Ok(f) => ofd_lock(f.as_fd(), OfdCmd::Test).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Wait until `owner` exits, the record of `name` is rewritten or the
    /// machine is removed — whichever comes first — or `timeout` passes.
    /// Event-driven: a pidfd for the owner and inotify on the instance
    /// directory (records are replaced by rename), polled together.
    pub fn wait_for_change(
        &self,
        name: &str,
        owner: Option<crate::process::ProcessIdentity>,
        timeout: std::time::Duration,
    ) -> std::io::Result<()> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        use rustix::fs::inotify;
        let dir = self.dir(name);
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        if inotify::add_watch(
            &ino,
            dir.root(),
            inotify::WatchFlags::MOVED_TO
                | inotify::WatchFlags::CLOSE_WRITE
                | inotify::WatchFlags::DELETE_SELF,
        )
        .is_err()
        {
            return Ok(()); // gone already
        }
        let pidfd = owner.filter(|o| o.is_alive()).and_then(|o| {
            rustix::process::Pid::from_raw(o.pid as i32).and_then(|pid| {
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
            })
        });
        if owner.is_some_and(|o| !o.is_alive()) {
            return Ok(());
        }
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = vec![PollFd::new(&ino, PollFlags::IN)];
        if let Some(p) = &pidfd {
            fds.push(PollFd::new(p, PollFlags::IN));
        }
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Claim `record.name`, become its owner and persist the record. Fails
    /// with [`RegistryError::NameTaken`] if the name exists, also when
    /// another process creates it at the same moment.
    pub fn create(
        &self,
        record: &InstanceRecord,
    ) -> Result<(InstanceDir, OwnerLock), RegistryError> {
        validate(&record.name)?;
        let dir = self.dir(&record.name);
        if dir.root().exists() {
            return Err(RegistryError::NameTaken {
                name: record.name.clone(),
            });
        }
        // Build the machine's directory — owner lock taken, record written —
        // under a hidden name, then claim the name with one atomic
        // rename(2) that never replaces: no process ever sees the name
        // without its record and its owner.
        let staging = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(self.home.instances_dir())?;
        let staged = InstanceDir::new(staging.path());
        let file = open_owner_file(&staged.owner_lock())?;
        if !ofd_lock(file.as_fd(), OfdCmd::TryLock)? {
            return Err(std::io::Error::other(format!(
                "cannot lock the new machine's {}",
                staged.owner_lock().display()
            ))
            .into());
        }
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        write_record(&staged.record(), record, &json)?;
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            staging.path(),
            rustix::fs::CWD,
            dir.root(),
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {
                // The directory lives on under its new name.
                let _ = staging.keep();
            }
            Err(rustix::io::Errno::EXIST) => {
                return Err(RegistryError::NameTaken {
                    name: record.name.clone(),
                });
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::Error::from(e).kind(),
                    format!("cannot create {}: {e}", dir.root().display()),
                )
                .into());
            }
        }
        Ok((dir, OwnerLock { file }))
    }

    /// Remove staging directories of creations whose process died before
    /// claiming the name (their owner lock is free). Returns how many.
    pub fn remove_stale_staging(&self) -> usize {
        let Ok(entries) = fs_err::read_dir(self.home.instances_dir()) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().starts_with(STAGING_PREFIX) {
                continue;
            }
            let d = InstanceDir::new(e.path());
            let held = fs_err::File::open(d.owner_lock())
                .ok()
                .is_some_and(|f| ofd_lock(f.as_fd(), OfdCmd::Test).unwrap_or(false));
            if !held && fs_err::remove_dir_all(d.root()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Read the record of `name`.
    pub fn load(&self, name: &str) -> Result<InstanceRecord, RegistryError> {
        validate(name)?;
        let dir = self.dir(name);
        let path = dir.record();
        let text = match fs_err::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if dir.root().is_dir() {
                    RegistryError::Corrupt {
                        name: name.to_owned(),
                        path,
                        source: serde::de::Error::custom("the record file is missing"),
                    }
                } else {
                    RegistryError::NotFound {
                        name: name.to_owned(),
                    }
                });
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot read {}: {e}", path.display()),
                )
                .into());
            }
        };
        serde_json::from_str(&text).map_err(|source| RegistryError::Corrupt {
            name: name.to_owned(),
            path,
            source,
        })
    }

    /// Write the record atomically (temp file + rename).
    pub fn save(&self, record: &InstanceRecord) -> Result<(), RegistryError> {
        let dir = self.dir(&record.name);
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        write_record(&dir.record(), record, &json)?;
        Ok(())
    }

    /// Load, modify and save a record under the machine's lock.
    pub fn update<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut InstanceRecord) -> Result<T, RegistryError>,
    ) -> Result<(InstanceRecord, T), RegistryError> {
        let _lock = self.lock(name)?;
        let mut record = self.load(name)?;
        let out = f(&mut record)?;
        self.save(&record)?;
        Ok((record, out))
    }

    /// Every machine directory, sorted by name, with its record or the error
    /// that prevents reading it.
    pub fn list(&self) -> Result<Vec<Listed>, RegistryError> {
        let mut out = Vec::new();
        for entry in fs_err::read_dir(self.home.instances_dir())? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate(&name).is_err() {
                continue;
            }
            let record = self.load(&name);
            out.push(Listed { name, record });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Delete the machine's directory and everything in it.
    pub fn remove(&self, name: &str) -> Result<(), RegistryError> {
        validate(name)?;
        let dir = self.dir(name);
        match fs_err::remove_dir_all(dir.root()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RegistryError::NotFound {
                name: name.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// Write a record file: durably (fsync), unless the machine is transient —
/// its record never outlives its owner, and a lost or empty one after a
/// power loss is reaped like any unreadable record — so the fsyncs stay
/// off the path of every transient `mvm exec`.
fn write_record(
    path: &std::path::Path,
    record: &InstanceRecord,
    json: &[u8],
) -> Result<(), AtomicWriteError> {
    if record.transient {
        write_atomic_volatile(path, json, 0o644)
    } else {
        write_atomic(path, json, 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::instance::Status;

    /// A released lock can stay held for a moment by a child another test
    /// thread is forking (fork copies every descriptor until exec closes the
    /// close-on-exec ones), so "released" is checked with a deadline.
    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !f() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    fn reg() -> (tempfile::TempDir, Registry) {
        let t = tempfile::tempdir().unwrap();
        let r = Registry::open(&MvmHome::new(t.path())).unwrap();
        (t, r)
    }

    #[test]
    fn create_load_update_remove() {
        let (_t, r) = reg();
        let rec = InstanceRecord::new("a", "default", "d", BackendKind::Qemu);
        let (_dir, _owner) = r.create(&rec).unwrap();
        assert_eq!(r.load("a").unwrap(), rec);
        let (after, ()) = r
            .update("a", |rec| Ok(rec.transition(Status::Created)?))
            .unwrap();
        assert_eq!(after.status(), Status::Created);
        assert_eq!(r.load("a").unwrap().status(), Status::Created);
        r.remove("a").unwrap();
        assert!(matches!(r.load("a"), Err(RegistryError::NotFound { .. })));
    }

    #[test]
    fn taken_name_is_an_error_and_keeps_the_first_record() {
        let (_t, r) = reg();
        let first = InstanceRecord::new("a", "one", "d", BackendKind::Qemu);
        let _owned = r.create(&first).unwrap();
        let second = InstanceRecord::new("a", "two", "d", BackendKind::Qemu);
        let err = r.create(&second).unwrap_err();
        assert!(matches!(err, RegistryError::NameTaken { .. }), "{err}");
        assert_eq!(r.load("a").unwrap().image, "one");
    }

    #[test]
    fn concurrent_creates_have_exactly_one_winner() {
        let (_t, r) = reg();
        let wins: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|i| {
                    let r = r.clone();
                    s.spawn(move || {
                        let rec =
                            InstanceRecord::new("same", &format!("img{i}"), "d", BackendKind::Qemu);
                        r.create(&rec).is_ok() as usize
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
    }

    #[test]
    fn forbidden_transition_is_rejected_and_nothing_is_saved() {
        let (_t, r) = reg();
        let _owned = r
            .create(&InstanceRecord::new("a", "d", "d", BackendKind::Qemu))
            .unwrap();
        let err = r
            .update("a", |rec| Ok(rec.transition(Status::Paused)?))
            .unwrap_err();
        assert!(matches!(err, RegistryError::BadTransition(_)), "{err}");
        assert_eq!(r.load("a").unwrap().status(), Status::Creating);
    }

    #[test]
    fn directory_without_record_is_listed_as_corrupt() {
        let (_t, r) = reg();
        fs_err::create_dir(r.dir("ghost").root()).unwrap();
        let l = r.list().unwrap();
        assert_eq!(l.len(), 1);
        assert!(matches!(l[0].record, Err(RegistryError::Corrupt { .. })));
        r.remove("ghost").unwrap();
        assert!(r.list().unwrap().is_empty());
    }

    #[test]
    fn the_owner_lock_has_one_holder_and_probing_does_not_take_it() {
        let (_t, r) = reg();
        let (_dir, owner) = r
            .create(&InstanceRecord::new("a", "d", "d", BackendKind::Qemu))
            .unwrap();
        assert!(r.owner_alive("a"));
        // Another open of the file, even in this process, cannot take it.
        assert!(r.try_own("a").unwrap().is_none());
        // Probing many times never makes a later take fail.
        for _ in 0..100 {
            assert!(r.owner_alive("a"));
        }
        drop(owner);
        assert!(eventually(|| !r.owner_alive("a")));
        let again = r.try_own("a").unwrap().expect("free after the owner went");
        assert!(r.owner_alive("a"));
        assert!(r.try_own("a").unwrap().is_none());
        drop(again);
        assert!(eventually(|| !r.owner_alive("a")));
    }

    #[test]
    fn an_inherited_descriptor_keeps_the_lock_after_the_original_closes() {
        let (_t, r) = reg();
        let (dir, owner) = r
            .create(&InstanceRecord::new("a", "d", "d", BackendKind::Qemu))
            .unwrap();
        let fd = owner.duplicate().unwrap();
        drop(owner);
        assert!(r.owner_alive("a"), "the duplicate still holds it");
        let adopted = OwnerLock::adopt(fd, &dir.owner_lock()).unwrap();
        assert!(r.try_own("a").unwrap().is_none());
        drop(adopted);
        assert!(eventually(|| !r.owner_alive("a")));
    }

    #[test]
    fn the_lock_dies_with_its_process() {
        let (t, r) = reg();
        let (_dir, owner) = r
            .create(&InstanceRecord::new("a", "d", "d", BackendKind::Qemu))
            .unwrap();
        // Hand the lock to a child process, as `mvm start` hands it to the
        // supervisor, then let go of ours.
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        owner.pass_to(&mut cmd, 3).unwrap();
        let mut child = cmd.spawn().unwrap();
        drop(cmd);
        drop(owner);
        assert!(r.owner_alive("a"), "held by the child");
        assert!(r.try_own("a").unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            eventually(|| !r.owner_alive("a")),
            "released when the holder died"
        );
        drop(t);
    }
}
