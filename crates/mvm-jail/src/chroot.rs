//! A VMM's chroot under the instance directory: preparation and release.
//!
//! Files enter the chroot by **hard link** when they are on the same
//! filesystem (the usual case: images, disks and logs all live under
//! `$MVM_HOME`), else by a **bind mount** of the file onto an empty file
//! (read-only when the drive is). Nothing is ever copied. A hard link
//! shares the inode, so ownership given to the machine's uid (a writable
//! disk) is visible from the instance directory too; read-only files keep
//! their owner (root) and mode.
//!
//! [`release`] unmounts every mount at or under the chroot (deepest first,
//! `MNT_DETACH`) and only then removes the tree; if a mount cannot be
//! removed the tree is left alone, so a bind mount can never lead
//! `remove_dir_all` into a host directory. It is idempotent and needs only
//! the path. [`mounts_under`] lets `gc` find mounts no machine owns.

use std::path::{Path, PathBuf};

use rustix::fs::{Gid, Uid};

/// Errors of chroot handling.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    /// A directory or file of the chroot could not be made.
    #[error("cannot prepare {path} in the chroot")]
    Prepare {
        /// What.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could be neither hard-linked nor bind-mounted.
    #[error("cannot place {src} at {dst} (hard link failed: {link}; bind mount failed)")]
    Place {
        /// The host file.
        src: PathBuf,
        /// Its place in the chroot.
        dst: PathBuf,
        /// Why the hard link failed.
        link: std::io::Error,
        /// Why the bind mount failed.
        #[source]
        source: std::io::Error,
    },
    /// Ownership could not be given.
    #[error("cannot give {path} to uid {uid}")]
    Chown {
        /// The file.
        path: PathBuf,
        /// The uid.
        uid: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A mount under the chroot could not be removed.
    #[error("cannot unmount {path}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The tree could not be removed.
    #[error("cannot remove {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How a file reached the chroot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hard link (same inode).
    HardLink,
    /// A bind mount onto an empty file.
    BindMount,
}

/// A chroot directory being prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chroot {
    root: PathBuf,
}

impl Chroot {
    /// The chroot at `root` (created by [`Chroot::create`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its root directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `inner` (an absolute path inside the chroot).
    pub fn host_path(&self, inner: &str) -> PathBuf {
        self.root.join(inner.trim_start_matches('/'))
    }

    /// Create the root directory (and its parents).
    pub fn create(&self) -> Result<(), ChrootError> {
        fs_err::create_dir_all(&self.root).map_err(|e| ChrootError::Prepare {
            path: self.root.clone(),
            source: e,
        })
    }

    /// Create directory `inner` in the chroot, owned by `owner` if given.
    pub fn mkdir(&self, inner: &str, owner: Option<(u32, u32)>) -> Result<PathBuf, ChrootError> {
        let p = self.host_path(inner);
        fs_err::create_dir_all(&p).map_err(|e| ChrootError::Prepare {
            path: p.clone(),
            source: e,
        })?;
        if let Some((u, g)) = owner {
            give(&p, u, g)?;
        }
        Ok(p)
    }

    /// Make host file `src` visible as `inner` in the chroot: a hard link,
    /// else a bind mount (read-only if `read_only`). Returns how.
    pub fn place(
        &self,
        src: &Path,
        inner: &str,
        read_only: bool,
    ) -> Result<Placement, ChrootError> {
        let dst = self.host_path(inner);
        if let Some(parent) = dst.parent() {
            fs_err::create_dir_all(parent).map_err(|e| ChrootError::Prepare {
                path: parent.to_owned(),
                source: e,
            })?;
        }
        let link = match fs_err::hard_link(src, &dst) {
            Ok(()) => return Ok(Placement::HardLink),
            Err(e) => e,
        };
        let bind = (|| -> std::io::Result<()> {
            fs_err::File::create(&dst)?;
            rustix::mount::mount_bind(src, &dst)?;
            if read_only {
                let flags = rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY;
                if let Err(e) = rustix::mount::mount_remount(&dst, flags, "") {
                    let _ = rustix::mount::unmount(&dst, rustix::mount::UnmountFlags::DETACH);
                    return Err(e.into());
                }
            }
            Ok(())
        })();
        match bind {
            Ok(()) => Ok(Placement::BindMount),
            Err(source) => Err(ChrootError::Place {
                src: src.to_owned(),
                dst,
                link,
                source,
            }),
        }
    }
}

/// Give `path` to `uid:gid` (not following a final symlink).
pub fn give(path: &Path, uid: u32, gid: u32) -> Result<(), ChrootError> {
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| ChrootError::Chown {
        path: path.to_owned(),
        uid,
        source: e.into(),
    })
}

/// Decode the octal escapes (`\040` for a space) of a mountinfo field.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out).into()
}

/// Mount points at or under `dir` in this process's mount namespace,
/// deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs_err::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Unmount everything at or under `dir`, then remove `dir`. Idempotent: a
/// missing `dir` is released. Logs and continues past a failed unmount,
/// but then leaves the tree in place and reports the first error.
pub fn release(dir: &Path) -> Result<(), ChrootError> {
    let mut first = None;
    // Stacked mounts need one unmount each: repeat while progress is made.
    for _ in 0..8 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        let mut progressed = false;
        for m in mounts {
            match rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH) {
                Ok(()) => progressed = true,
                Err(e) => {
                    tracing::warn!(mount = %m.display(), error = %e, "chroot release: unmount failed");
                    first.get_or_insert(ChrootError::Unmount {
                        path: m,
                        source: e.into(),
                    });
                }
            }
        }
        if !progressed {
            break;
        }
    }
    if !mounts_under(dir).is_empty() {
        return Err(first.expect("an unmount failed"));
    }
    match fs_err::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ChrootError::Remove {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape("/x\\04"), PathBuf::from("/x\\04"));
    }

    #[test]
    fn hard_links_share_the_inode_and_release_is_idempotent() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("disk.img");
        fs_err::write(&src, b"x").unwrap();
        let c = Chroot::new(t.path().join("jail/root"));
        c.create().unwrap();
        assert_eq!(
            c.place(&src, "/drives/disk", false).unwrap(),
            Placement::HardLink
        );
        let inside = c.host_path("/drives/disk");
        assert_eq!(
            fs_err::metadata(&inside).unwrap().ino(),
            fs_err::metadata(&src).unwrap().ino()
        );
        release(&t.path().join("jail")).unwrap();
        release(&t.path().join("jail")).unwrap();
        assert!(!t.path().join("jail").exists());
        assert!(src.exists(), "the original survives");
    }
}
