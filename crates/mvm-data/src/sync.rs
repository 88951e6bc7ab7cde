//! Writing a guest-written ext4 image back to a host directory, after the VM
//! is gone.
//!
//! A read-write host directory (`--add-dir HOST:GUEST:rw`, `-v HOST:GUEST`)
//! reaches the guest as an ext4 image built from it
//! ([`crate::drive::build_ext4_from_dir`]). When the machine has stopped
//! (command finished, failed, timed out, or the guest crashed), the image is
//! written back in two steps:
//!
//! 1. [`extract_image`]: `e2fsck -f -y IMAGE` (replays the journal of a
//!    guest that crashed, repairs damage, and renames entries with illegal
//!    names such as ones containing `/`, which a hostile guest could craft),
//!    then `debugfs -R "rdump / DIR" IMAGE` into an empty scratch directory.
//!    rdump keeps permission bits (including setuid/setgid/sticky),
//!    timestamps, symlinks (as symlinks, targets verbatim) and, when run as
//!    root, owners; it skips device nodes, FIFOs and sockets, and turns hard
//!    links into separate copies. The top-level `lost+found` is dropped
//!    (e2fsck may have parked orphaned guest files there).
//! 2. [`mirror`]: make the host directory equal to the scratch tree: new
//!    and changed files and symlinks written, deleted ones removed, modes
//!    kept. Every operation goes through directory file descriptors opened
//!    with `O_NOFOLLOW`, relative to the host directory, so nothing outside
//!    it is ever touched — a symlink in the host directory (or one the guest
//!    created) is replaced or removed as a link, never followed. Files are
//!    replaced atomically (temporary file + `renameat`). The guest wins: a
//!    host-side edit made while the machine ran is overwritten.
//!
//! Security choices: set-uid and set-gid bits on **files** are dropped when a
//! file is written (a guest must not be able to plant a set-uid binary on
//! the host); directories keep all their bits. Entries created are owned by
//! [`MirrorOptions::owner`] when given (e.g. the owner of the host
//! directory, when mvm runs as root), replaced entries keep their previous
//! owner when possible. A top-level `lost+found` in the host directory is
//! left alone.
//!
//! [`diff`] computes the same summary without changing anything, for
//! reporting ("3 added, 1 changed, 2 deleted").
//!
//! Why not stream a tar from the guest agent instead: reading the image
//! after the VM is gone needs nothing from the guest, works when the
//! command failed, timed out or the guest kernel crashed, and cannot race
//! with guest processes still writing.

use crate::tool::{self, ToolError};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the ext4 metadata directory skipped at the top level.
pub const LOST_AND_FOUND: &str = "lost+found";

/// Writing back failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// e2fsck or debugfs failed.
    #[error("cannot read back {image}")]
    Tool {
        /// The image.
        image: PathBuf,
        /// Why.
        #[source]
        source: ToolError,
    },
    /// e2fsck left errors uncorrected.
    #[error("{image} is damaged beyond repair (e2fsck exit code {code}): {output}")]
    Damaged {
        /// The image.
        image: PathBuf,
        /// e2fsck's exit code.
        code: i32,
        /// The tail of e2fsck's output.
        output: String,
    },
    /// The extraction directory is not empty.
    #[error("extraction directory {path} is not empty")]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// The destination is not a directory (or is `/`).
    #[error("refusing to mirror into {path}: {reason}")]
    BadDestination {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A file operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path (for the host side: host directory + relative path).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Check and extract `image` into the empty directory `dest` (see the
/// module docs). The image is repaired in place by e2fsck: call this only
/// once no VM uses it.
pub fn extract_image(image: &Path, dest: &Path) -> Result<(), SyncError> {
    let tool_err = |source| SyncError::Tool {
        image: image.into(),
        source,
    };
    let size = fs_err::metadata(image)
        .map_err(|source| SyncError::Io {
            action: "stat",
            path: image.into(),
            source,
        })?
        .len();
    let args: [&std::ffi::OsStr; 3] = ["-f".as_ref(), "-y".as_ref(), image.as_os_str()];
    let out =
        tool::run(&mvm_core::tools::E2FSCK, args, tool::deadline_for(size)).map_err(tool_err)?;
    let code = out.status.code().unwrap_or(-1);
    match code {
        0 => {}
        1 | 2 => {
            tracing::info!(image = %image.display(), "e2fsck repaired the image: {}", out.stdout.trim())
        }
        _ => {
            return Err(SyncError::Damaged {
                image: image.into(),
                code,
                output: format!("{}{}", out.stdout.trim(), out.stderr.trim()),
            });
        }
    }
    let mut entries = fs_err::read_dir(dest).map_err(|source| SyncError::Io {
        action: "read",
        path: dest.into(),
        source,
    })?;
    if entries.next().is_some() {
        return Err(SyncError::NotEmpty { path: dest.into() });
    }
    let dest_arg = dest.as_os_str().as_bytes();
    if dest_arg.contains(&b'"') || dest_arg.contains(&b'\n') {
        return Err(SyncError::BadDestination {
            path: dest.into(),
            reason: "the extraction path cannot contain '\"' or a newline",
        });
    }
    let mut cmd = OsString::from("rdump / \"");
    cmd.push(dest.as_os_str());
    cmd.push("\"");
    // rdump restores owners too; a non-root user cannot, and the owners
    // of the scratch copy do not matter (see MirrorOptions::owner).
    let root = rustix::process::geteuid().is_root();
    tool::debugfs_tolerating(
        &["-R".as_ref(), cmd.as_os_str(), image.as_os_str()],
        tool::deadline_for(size),
        |line| !root && line.contains("while changing ownership of"),
    )
    .map_err(tool_err)?;
    let lf = dest.join(LOST_AND_FOUND);
    if fs_err::symlink_metadata(&lf).is_ok_and(|m| m.is_dir()) {
        fs_err::remove_dir_all(&lf).map_err(|source| SyncError::Io {
            action: "remove",
            path: lf,
            source,
        })?;
    }
    Ok(())
}

/// Options for [`mirror`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorOptions {
    /// uid and gid for entries created (not replaced); `None` leaves them
    /// owned by the running user.
    pub owner: Option<(u32, u32)>,
}

impl MirrorOptions {
    /// Options that give new entries the owner of `host_dir` (useful when
    /// mvm runs as root on a user's directory).
    pub fn owner_of(host_dir: &Path) -> Result<Self, SyncError> {
        let m = fs_err::metadata(host_dir).map_err(|source| SyncError::Io {
            action: "stat",
            path: host_dir.into(),
            source,
        })?;
        Ok(Self {
            owner: Some((m.uid(), m.gid())),
        })
    }
}

/// What changed (or would change), by relative path, each list sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Entries that did not exist.
    pub added: Vec<PathBuf>,
    /// Entries whose content, mode or link target changed (or whose type
    /// changed: counted here, not as deleted + added).
    pub changed: Vec<PathBuf>,
    /// Entries removed (each entry of a removed directory counts).
    pub deleted: Vec<PathBuf>,
}

impl Changes {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.deleted.is_empty()
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added, {} changed, {} deleted",
            self.added.len(),
            self.changed.len(),
            self.deleted.len()
        )
    }
}

/// Make `host_dir` equal to `src_tree` (see the module docs).
pub fn mirror(
    src_tree: &Path,
    host_dir: &Path,
    opts: &MirrorOptions,
) -> Result<Changes, SyncError> {
    run(src_tree, host_dir, opts, false)
}

/// What [`mirror`] would change, without changing anything.
pub fn diff(src_tree: &Path, host_dir: &Path) -> Result<Changes, SyncError> {
    run(src_tree, host_dir, &MirrorOptions::default(), true)
}

/// [`extract_image`] into a scratch directory beside the image (the
/// instance directory: same disk, not a possibly RAM-backed `/tmp`), then
/// [`mirror`] into `host_dir`; the scratch copy is removed either way.
///
/// On error the host directory may be partly updated; keep the image so the
/// write-back can be retried (it is idempotent).
pub fn write_back(
    image: &Path,
    host_dir: &Path,
    opts: &MirrorOptions,
) -> Result<Changes, SyncError> {
    let parent = image
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch = tempfile::Builder::new()
        .prefix(".writeback-")
        .tempdir_in(parent)
        .map_err(|source| SyncError::Io {
            action: "create a scratch directory in",
            path: parent.into(),
            source,
        })?;
    extract_image(image, scratch.path())?;
    mirror(scratch.path(), host_dir, opts)
}

struct Walk<'a> {
    host_dir: &'a Path,
    opts: &'a MirrorOptions,
    dry: bool,
    changes: Changes,
}

fn cstr(name: &OsStr) -> CString {
    // Names come from readdir and never contain NUL.
    CString::new(name.as_bytes()).expect("directory entry names contain no NUL")
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn run(
    src_tree: &Path,
    host_dir: &Path,
    opts: &MirrorOptions,
    dry: bool,
) -> Result<Changes, SyncError> {
    let resolved = std::fs::canonicalize(host_dir).map_err(|source| SyncError::Io {
        action: "resolve",
        path: host_dir.into(),
        source,
    })?;
    if resolved == Path::new("/") {
        return Err(SyncError::BadDestination {
            path: host_dir.into(),
            reason: "it is the root directory",
        });
    }
    let root = rustix::fs::open(
        &resolved,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SyncError::Io {
        action: "open directory",
        path: resolved.clone(),
        source: e.into(),
    })?;
    let mut walk = Walk {
        host_dir: &resolved,
        opts,
        dry,
        changes: Changes::default(),
    };
    walk.dir(src_tree, root.as_fd(), Path::new(""))?;
    let mut changes = walk.changes;
    changes.added.sort();
    changes.changed.sort();
    changes.deleted.sort();
    Ok(changes)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

fn kind_of_std(m: &std::fs::Metadata) -> Kind {
    let t = m.file_type();
    if t.is_symlink() {
        Kind::Symlink
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else {
        Kind::Other
    }
}

fn kind_of_stat(st: &rustix::fs::Stat) -> Kind {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => Kind::Symlink,
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        _ => Kind::Other,
    }
}

/// The mode bits written for an entry: files lose set-uid/set-gid.
fn wanted_mode(kind: Kind, mode: u32) -> u32 {
    match kind {
        Kind::File => mode & 0o1777,
        _ => mode & 0o7777,
    }
}

impl Walk<'_> {
    fn err(
        &self,
        action: &'static str,
        rel: &Path,
    ) -> impl FnOnce(rustix::io::Errno) -> SyncError + use<'_> {
        let path = self.host_dir.join(rel);
        move |e| SyncError::Io {
            action,
            path,
            source: e.into(),
        }
    }

    fn src_err<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> SyncError + 'a {
        move |source| SyncError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The entries of a host directory (by fd), with their lstat.
    fn host_entries(
        &self,
        fd: BorrowedFd<'_>,
        rel: &Path,
    ) -> Result<Vec<(OsString, rustix::fs::Stat)>, SyncError> {
        let mut dir = rustix::fs::Dir::read_from(fd).map_err(self.err("read directory", rel))?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(self.err("read directory", rel))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsString::from_vec(name.to_vec());
            let st = rustix::fs::statat(fd, cstr(&name).as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(self.err("stat", &rel.join(&name)))?;
            out.push((name, st));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn dir(&mut self, src: &Path, dst: BorrowedFd<'_>, rel: &Path) -> Result<(), SyncError> {
        let mut src_entries: Vec<(OsString, std::fs::Metadata)> = Vec::new();
        for entry in fs_err::read_dir(src).map_err(Self::src_err("read directory", src))? {
            let entry = entry.map_err(Self::src_err("read directory", src))?;
            let path = entry.path();
            let meta = fs_err::symlink_metadata(&path).map_err(Self::src_err("stat", &path))?;
            src_entries.push((entry.file_name(), meta));
        }
        src_entries.sort_by(|a, b| a.0.cmp(&b.0));
        let top = rel.as_os_str().is_empty();
        if top {
            src_entries.retain(|(n, _)| n != LOST_AND_FOUND);
        }
        let host = self.host_entries(dst, rel)?;

        // Deletions (and type changes, which are removed first).
        for (name, st) in &host {
            if top && name == LOST_AND_FOUND {
                continue;
            }
            let src_kind = src_entries
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, m)| kind_of_std(m))
                .filter(|k| *k != Kind::Other);
            let host_kind = kind_of_stat(st);
            match src_kind {
                Some(k) if k == host_kind => {}
                Some(_) => {
                    // Type change: recorded as changed, old entry removed.
                    let mut sink = Vec::new();
                    self.remove(dst, name, host_kind, &rel.join(name), &mut sink)?;
                }
                None => {
                    let mut removed = Vec::new();
                    self.remove(dst, name, host_kind, &rel.join(name), &mut removed)?;
                    self.changes.deleted.extend(removed);
                }
            }
        }

        for (name, meta) in &src_entries {
            let rel_path = rel.join(name);
            let src_path = src.join(name);
            let kind = kind_of_std(meta);
            let existing = host.iter().find(|(n, _)| n == name).map(|(_, st)| st);
            // Type changes were removed above; report them as changed.
            let (existing, type_changed) = match existing {
                Some(st) if kind_of_stat(st) != kind => (None, true),
                other => (other, false),
            };
            let record = |changes: &mut Changes, changed: bool| {
                if type_changed || (changed && existing.is_some()) {
                    changes.changed.push(rel_path.clone());
                } else if changed {
                    changes.added.push(rel_path.clone());
                }
            };
            let c_name = cstr(name);
            match kind {
                Kind::Other => {
                    tracing::warn!(path = %src_path.display(), "skipping a special file");
                }
                Kind::Dir => {
                    let mode = wanted_mode(kind, meta.permissions().mode());
                    let mode_changed = existing.is_none_or(|st| st.st_mode & 0o7777 != mode);
                    record(&mut self.changes, mode_changed);
                    if existing.is_none() {
                        if self.dry {
                            self.count_added(&src_path, &rel_path)?;
                            continue;
                        }
                        rustix::fs::mkdirat(dst, c_name.as_c_str(), Mode::from_raw_mode(0o700))
                            .map_err(self.err("create directory", &rel_path))?;
                        self.chown_new(dst, &c_name, &rel_path)?;
                    }
                    if self.dry {
                        let fd = open_dir_at(dst, &c_name)
                            .map_err(self.err("open directory", &rel_path))?;
                        self.dir(&src_path, fd.as_fd(), &rel_path)?;
                        continue;
                    }
                    let fd =
                        open_dir_at(dst, &c_name).map_err(self.err("open directory", &rel_path))?;
                    // A directory we cannot write into (0555) is opened up
                    // while its content is synced, then given its mode.
                    let locked = existing.is_some_and(|st| st.st_mode & 0o700 != 0o700);
                    if locked {
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
                            .map_err(self.err("set the mode of", &rel_path))?;
                    }
                    self.dir(&src_path, fd.as_fd(), &rel_path)?;
                    if mode_changed || locked {
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                            .map_err(self.err("set the mode of", &rel_path))?;
                    }
                }
                Kind::Symlink => {
                    let target = fs_err::read_link(&src_path)
                        .map_err(Self::src_err("read link", &src_path))?;
                    let same = match existing {
                        Some(_) => {
                            let cur = rustix::fs::readlinkat(dst, c_name.as_c_str(), Vec::new())
                                .map_err(self.err("read link", &rel_path))?;
                            cur.as_bytes() == target.as_os_str().as_bytes()
                        }
                        None => false,
                    };
                    record(&mut self.changes, !same);
                    if same || self.dry {
                        continue;
                    }
                    let old_owner = existing.map(|st| (st.st_uid, st.st_gid));
                    if existing.is_some() {
                        rustix::fs::unlinkat(dst, c_name.as_c_str(), AtFlags::empty())
                            .map_err(self.err("remove", &rel_path))?;
                    }
                    rustix::fs::symlinkat(target.as_os_str(), dst, c_name.as_c_str())
                        .map_err(self.err("create symlink", &rel_path))?;
                    match old_owner {
                        Some((u, g)) => {
                            let _ = rustix::fs::chownat(
                                dst,
                                c_name.as_c_str(),
                                Some(rustix::fs::Uid::from_raw(u)),
                                Some(rustix::fs::Gid::from_raw(g)),
                                AtFlags::SYMLINK_NOFOLLOW,
                            );
                        }
                        None => self.chown_new(dst, &c_name, &rel_path)?,
                    }
                }
                Kind::File => {
                    let mode = wanted_mode(kind, meta.permissions().mode());
                    let (content_same, mode_same) = match existing {
                        Some(st) => {
                            let same_len = st.st_size as u64 == meta.len();
                            let same = same_len
                                && self.same_content(dst, &c_name, &rel_path, &src_path)?;
                            (same, wanted_mode(kind, st.st_mode) == mode)
                        }
                        None => (false, false),
                    };
                    record(&mut self.changes, !(content_same && mode_same));
                    if (content_same && mode_same) || self.dry {
                        continue;
                    }
                    if content_same {
                        let fd = rustix::fs::openat(
                            dst,
                            c_name.as_c_str(),
                            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .map_err(self.err("open", &rel_path))?;
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                            .map_err(self.err("set the mode of", &rel_path))?;
                        continue;
                    }
                    self.replace_file(dst, &c_name, &rel_path, &src_path, meta, mode, existing)?;
                }
            }
        }
        Ok(())
    }

    fn chown_new(&self, dst: BorrowedFd<'_>, name: &CStr, rel: &Path) -> Result<(), SyncError> {
        if let Some((u, g)) = self.opts.owner {
            rustix::fs::chownat(
                dst,
                name,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(self.err("change the owner of", rel))?;
        }
        Ok(())
    }

    fn count_added(&mut self, src: &Path, rel: &Path) -> Result<(), SyncError> {
        for entry in fs_err::read_dir(src).map_err(Self::src_err("read directory", src))? {
            let entry = entry.map_err(Self::src_err("read directory", src))?;
            let path = entry.path();
            let meta = fs_err::symlink_metadata(&path).map_err(Self::src_err("stat", &path))?;
            let r = rel.join(entry.file_name());
            match kind_of_std(&meta) {
                Kind::Other => {}
                Kind::Dir => {
                    self.changes.added.push(r.clone());
                    self.count_added(&path, &r)?;
                }
                _ => self.changes.added.push(r),
            }
        }
        Ok(())
    }

    fn same_content(
        &self,
        dst: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
        src: &Path,
    ) -> Result<bool, SyncError> {
        let fd = rustix::fs::openat(
            dst,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.err("open", rel))?;
        let mut a = std::fs::File::from(fd);
        let mut b = fs_err::File::open(src).map_err(Self::src_err("open", src))?;
        let mut ba = vec![0u8; 64 * 1024];
        let mut bb = vec![0u8; 64 * 1024];
        loop {
            let na = read_full(&mut a, &mut ba).map_err(|source| SyncError::Io {
                action: "read",
                path: self.host_dir.join(rel),
                source,
            })?;
            let nb = read_full(&mut b, &mut bb).map_err(Self::src_err("read", src))?;
            if na != nb || ba[..na] != bb[..nb] {
                return Ok(false);
            }
            if na == 0 {
                return Ok(true);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn replace_file(
        &self,
        dst: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
        src: &Path,
        meta: &std::fs::Metadata,
        mode: u32,
        existing: Option<&rustix::fs::Stat>,
    ) -> Result<(), SyncError> {
        let tmp_name = CString::new(format!(".mvm-sync-{}.tmp", rand_suffix())).expect("no NUL");
        let fd = rustix::fs::openat(
            dst,
            tmp_name.as_c_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(self.err(
            "create a temporary file in",
            rel.parent().unwrap_or(Path::new("")),
        ))?;
        let cleanup = |e: SyncError| {
            let _ = rustix::fs::unlinkat(dst, tmp_name.as_c_str(), AtFlags::empty());
            e
        };
        let mut out = std::fs::File::from(fd);
        let mut input = fs_err::File::open(src)
            .map_err(Self::src_err("open", src))
            .map_err(cleanup)?;
        std::io::copy(&mut input, &mut out)
            .map_err(|source| SyncError::Io {
                action: "write",
                path: self.host_dir.join(rel),
                source,
            })
            .map_err(cleanup)?;
        let owner = existing
            .map(|st| (st.st_uid, st.st_gid))
            .or(self.opts.owner);
        if let Some((u, g)) = owner {
            let r = rustix::fs::fchown(
                &out,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
            );
            // A non-root user cannot give a file away; keeping the previous
            // owner is then best effort, the configured owner is not.
            if existing.is_none() {
                r.map_err(self.err("change the owner of", rel))
                    .map_err(cleanup)?;
            }
        }
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(&out, Mode::from_raw_mode(mode))
            .map_err(self.err("set the mode of", rel))
            .map_err(cleanup)?;
        let mtime = rustix::fs::Timespec {
            tv_sec: meta.mtime() as _,
            tv_nsec: meta.mtime_nsec() as _,
        };
        let _ = rustix::fs::futimens(
            &out,
            &rustix::fs::Timestamps {
                last_access: mtime,
                last_modification: mtime,
            },
        );
        drop(out);
        rustix::fs::renameat(dst, tmp_name.as_c_str(), dst, name)
            .map_err(self.err("replace", rel))
            .map_err(cleanup)?;
        Ok(())
    }

    /// Remove a host entry (recursively for a directory, never following
    /// symlinks), recording every removed path.
    fn remove(
        &self,
        dst: BorrowedFd<'_>,
        name: &OsStr,
        kind: Kind,
        rel: &Path,
        removed: &mut Vec<PathBuf>,
    ) -> Result<(), SyncError> {
        let c_name = cstr(name);
        if kind == Kind::Dir {
            let fd = open_dir_at(dst, &c_name).map_err(self.err("open directory", rel))?;
            for (child, st) in self.host_entries(fd.as_fd(), rel)? {
                self.remove(
                    fd.as_fd(),
                    &child,
                    kind_of_stat(&st),
                    &rel.join(&child),
                    removed,
                )?;
            }
            if !self.dry {
                rustix::fs::unlinkat(dst, c_name.as_c_str(), AtFlags::REMOVEDIR)
                    .map_err(self.err("remove directory", rel))?;
            }
        } else if !self.dry {
            rustix::fs::unlinkat(dst, c_name.as_c_str(), AtFlags::empty())
                .map_err(self.err("remove", rel))?;
        }
        removed.push(rel.into());
        Ok(())
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A name unique within this process (and, with the pid, across
/// processes); `O_EXCL` catches any collision.
fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_id_bits_are_dropped_on_files_only() {
        assert_eq!(wanted_mode(Kind::File, 0o104755), 0o755);
        assert_eq!(wanted_mode(Kind::File, 0o1755), 0o1755);
        assert_eq!(wanted_mode(Kind::Dir, 0o42775), 0o2775);
    }

    #[test]
    fn refuses_root() {
        let src = tempfile::tempdir().unwrap();
        let e = diff(src.path(), Path::new("/")).unwrap_err();
        assert!(matches!(e, SyncError::BadDestination { .. }), "{e}");
    }
}
