//! Copy-on-write views of a template's disk for its clones.
//!
//! A clone must never write to the template's disk, and a file written in
//! one clone must not appear in another. Three ways to get there, cheapest
//! first:
//!
//! - **reflink** (`FICLONE`): the new file shares every extent with the
//!   template's until either is written; instant and no space, but only on
//!   filesystems with shared extents (btrfs, XFS with `reflink=1`, bcachefs;
//!   not ext4).
//! - **qcow2 overlay** (QEMU only): a small qcow2 file whose backing file is
//!   the template's raw disk (`qemu-img create -f qcow2 -F raw -b ...`);
//!   instant and small on any filesystem, but the clone then depends on the
//!   template's file for as long as it exists, and the drive must be opened
//!   as `format=qcow2` (Firecracker cannot).
//! - **sparse copy**: only the data extents are copied (`SEEK_DATA` /
//!   `SEEK_HOLE` + `copy_file_range`, which the kernel may itself turn into
//!   a server-side or reflink copy); works everywhere, costs the disk's
//!   allocated size in time and space.
//!
//! [`clone_disk`] tries reflink and falls back to a sparse copy, so the
//! result is always a plain raw file owned by the clone alone (measured
//! figures: docs/decisions.md).

use std::path::Path;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a clone's disk was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloneMethod {
    /// Shared extents (`FICLONE`).
    Reflink,
    /// Data extents copied, holes kept.
    SparseCopy,
    /// A qcow2 file backed by the template's raw disk.
    Qcow2Overlay,
}

impl std::fmt::Display for CloneMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloneMethod::Reflink => "reflink",
            CloneMethod::SparseCopy => "sparse copy",
            CloneMethod::Qcow2Overlay => "qcow2 overlay",
        })
    }
}

/// Copying a disk failed.
#[derive(Debug, thiserror::Error)]
pub enum CowError {
    /// An I/O step failed (the message names the file).
    #[error("cannot copy {src} to {dst}")]
    Io {
        /// Source.
        src: std::path::PathBuf,
        /// Destination.
        dst: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `qemu-img` failed or is missing.
    #[error("qemu-img create of {dst} failed: {detail}")]
    QemuImg {
        /// Destination.
        dst: std::path::PathBuf,
        /// Its stderr, or why it did not run.
        detail: String,
    },
}

impl CowError {
    /// Whether the filesystem ran out of space.
    pub fn is_no_space(&self) -> bool {
        matches!(self, CowError::Io { source, .. } if crate::is_enospc(source))
    }
}

/// Make `dst` (which must not exist) a copy-on-write view of `src`:
/// reflink where the filesystem supports it, else a sparse copy. On error
/// `dst` is removed.
pub fn clone_disk(src: &Path, dst: &Path) -> Result<CloneMethod, CowError> {
    let io = |source| CowError::Io {
        src: src.to_owned(),
        dst: dst.to_owned(),
        source,
    };
    if fs_err::symlink_metadata(dst).is_ok() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} already exists", dst.display()),
        )));
    }
    let r = (|| {
        match reflink(src, dst) {
            Ok(()) => return Ok(CloneMethod::Reflink),
            Err(e) if reflink_unsupported(&e) => {
                tracing::debug!(src = %src.display(), "no reflink here ({e}); sparse copy");
                let _ = fs_err::remove_file(dst);
            }
            Err(e) => return Err(io(e)),
        }
        copy_sparse(src, dst).map_err(io)?;
        Ok(CloneMethod::SparseCopy)
    })();
    if r.is_err() {
        let _ = fs_err::remove_file(dst);
    }
    r
}

fn reflink_unsupported(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::NOSYS)
    )
}

/// `dst` (new) shares all extents of `src` (`ioctl(FICLONE)`).
pub fn reflink(src: &Path, dst: &Path) -> std::io::Result<()> {
    let from = fs_err::File::open(src)?;
    let to = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    rustix::fs::ioctl_ficlone(&to, &from).map_err(std::io::Error::from)
}

pub use mvm_core::snapshot::copy_sparse;

/// How long `qemu-img` may take.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(30);

/// Create `dst`, a qcow2 overlay whose backing file is the raw `backing`
/// (`qemu-img create -f qcow2 -F raw -b BACKING DST`).
pub fn qcow2_overlay(backing: &Path, dst: &Path) -> Result<(), CowError> {
    let fail = |detail: String| CowError::QemuImg {
        dst: dst.to_owned(),
        detail,
    };
    let mut cmd = mvm_core::tools::QEMU_IMG
        .command()
        .map_err(|e| fail(e.to_string()))?;
    cmd.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(backing)
        .arg(dst);
    mvm_core::tools::run(cmd, QEMU_IMG_TIMEOUT).map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn sparse_file(p: &Path) {
        let mut f = fs_err::File::create(p).unwrap();
        f.set_len(32 << 20).unwrap();
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(&[1; 8192]).unwrap();
        f.seek(SeekFrom::Start((32 << 20) - 4096)).unwrap();
        f.write_all(&[2; 4096]).unwrap();
    }

    #[test]
    fn clone_is_identical_independent_and_sparse() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sparse_file(&src);
        let dst = t.path().join("dst");
        let how = clone_disk(&src, &dst).unwrap();
        eprintln!("clone method here: {how}");
        assert_eq!(fs_err::read(&src).unwrap(), fs_err::read(&dst).unwrap());
        assert!(mvm_core::snapshot::allocated_bytes(&dst) < 1 << 20);
        // Writing the clone leaves the source alone.
        let mut f = fs_err::OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all(b"changed").unwrap();
        drop(f);
        assert_eq!(fs_err::read(&src).unwrap()[..7], [0u8; 7]);
        // The destination must be new.
        assert!(clone_disk(&src, &dst).is_err());
        assert!(dst.exists(), "an existing file is never removed");
        // A missing source names it, and leaves nothing.
        let e = clone_disk(&t.path().join("nope"), &t.path().join("d2")).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(!t.path().join("d2").exists());
    }
}
