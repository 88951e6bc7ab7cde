//! Fast per-machine root disks: one template per image, cloned per machine.
//!
//! Building a machine's disk with `mkfs.ext4 -d <tree>` costs 120–280 ms
//! here (it writes every file and a 32 MiB journal of zeros), the largest
//! step of `mvm run`. Instead, the first machine of an image builds
//! `images/<digest>/machine-<size>M.ext4` once (the same `mkfs.ext4 -d`,
//! then every all-zero 4 KiB block punched out so that only data is
//! allocated), and every machine gets a copy of it:
//!
//! 1. `FICLONE` (a reflink: instant, copy-on-write) where the filesystem
//!    offers it (btrfs, XFS);
//! 2. else a sparse copy: only the template's data extents (`SEEK_DATA` /
//!    `SEEK_HOLE`) are copied with `copy_file_range` (~13 MiB for the
//!    default image), the holes stay holes.
//!
//! The copy is written to a temporary file beside `dest` and renamed over
//! it, so a crash never leaves a half-copied disk at `dest`.
//!
//! **Spare disks.** The copy (~4 ms for the default image on ext4, which
//! has no reflinks) is made ahead of need: [`refill_spare`] keeps one
//! finished copy per image and size, `machine-<size>M.spare.ext4`, which
//! [`machine_disk`] takes with a `rename` (tens of µs) and the machine's
//! supervisor replaces in the background once its VMM runs. A spare is a
//! copy of the template like any other, made into
//! `.machine-<size>M.spare.partial` under an `flock` (one refill at a time;
//! a partial left by a crash is rewritten by the next refill) and renamed
//! into place when complete, so a taker only ever sees whole spares. Racing
//! takers: one rename wins, the other copies. Spares are kept only for
//! templates of at most [`SPARE_MAX_BYTES`] of data (a large OCI image
//! would double its disk use for a gain its boot dwarfs); they live and
//! die with the image's directory. Each machine
//! owns its copy outright (stop/start keeps it; `rm` deletes it), exactly
//! like a disk made by `mkfs`: a full, writable ext4 with label
//! [`crate::ROOT_LABEL`]. All disks of one image share the template's
//! filesystem UUID; find the root disk by label or by position, never by
//! UUID.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::{Image, ImageError};

/// Templates with more data than this get no spare disk.
pub const SPARE_MAX_BYTES: u64 = 64 << 20;

/// How a machine disk was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskCopy {
    /// The image's spare disk, taken by a rename (see [`refill_spare`]).
    Spare,
    /// A reflink of the template (shared extents, copy-on-write).
    Reflink,
    /// A copy of the template's data extents.
    Sparse {
        /// Bytes copied.
        bytes: u64,
    },
}

/// The template file of `image` for disks of `size_mib`.
pub fn template_path(image: &Image, size_mib: u64) -> PathBuf {
    image.dir.join(format!("machine-{size_mib}M.ext4"))
}

/// The ready-made spare disk of `image` for `size_mib` (see [`refill_spare`]).
pub fn spare_path(image: &Image, size_mib: u64) -> PathBuf {
    image.dir.join(format!("machine-{size_mib}M.spare.ext4"))
}

/// Where [`refill_spare`] writes a spare before it is complete.
fn spare_partial_path(image: &Image, size_mib: u64) -> PathBuf {
    image
        .dir
        .join(format!(".machine-{size_mib}M.spare.partial"))
}

/// Build the template of `image` for `size_mib` if it is missing: `mkfs`
/// from the image's tree into a temporary file, zero blocks punched out,
/// renamed into place (racing builders each produce a valid template; the
/// last rename wins).
pub fn ensure_template(image: &Image, size_mib: u64) -> Result<PathBuf, ImageError> {
    let path = template_path(image, size_mib);
    if path.is_file() {
        return Ok(path);
    }
    let tmp = tempfile::Builder::new()
        .prefix(".machine-")
        .suffix(".ext4")
        .tempfile_in(&image.dir)?;
    // At least the image's own size and inode count (OCI images can be big).
    let m = image.manifest()?;
    crate::mkfs_ext4(
        &image.tree(),
        tmp.path(),
        size_mib.max(m.rootfs_mib),
        m.inodes,
    )?;
    punch_zero_blocks(tmp.path())?;
    // A spare of a former template of this image holds the same tree, but
    // spares are copies of the template in place: drop it.
    mvm_core::files::remove_if_exists(&spare_path(image, size_mib))?;
    tmp.persist(&path).map_err(|e| ImageError::from(e.error))?;
    Ok(path)
}

/// Deallocate every all-zero 4 KiB block of `path` (its content is
/// unchanged: holes read as zeros).
fn punch_zero_blocks(path: &Path) -> std::io::Result<()> {
    use rustix::fs::SeekFrom;
    const BLOCK: usize = 4096;
    let f = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let fd = f.file().as_fd();
    let len = f.metadata()?.len();
    let punch = |start: u64, end: u64| {
        rustix::fs::fallocate(
            fd,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            start,
            end - start,
        )
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    // Only the data extents need a look: holes are holes already.
    while pos < len {
        let data = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(fd, SeekFrom::Hole(data))?.min(len);
        let mut run: Option<u64> = None; // start of the current zero run
        let mut at = data;
        while at < hole {
            let want = ((hole - at) as usize).min(buf.len());
            let n = rustix::io::pread(fd, &mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
                let off = at + (i * BLOCK) as u64;
                if block.iter().all(|b| *b == 0) {
                    run.get_or_insert(off);
                } else if let Some(start) = run.take() {
                    punch(start, off)?;
                }
            }
            at += n as u64;
        }
        if let Some(start) = run {
            punch(start, at)?;
        }
        pos = hole.max(at);
    }
    Ok(())
}

/// Copy the data extents of `src` into `dst` (same length, holes kept).
fn sparse_copy(src: &fs_err::File, dst: &fs_err::File, len: u64) -> std::io::Result<u64> {
    use rustix::fs::SeekFrom;
    let (s, d) = (src.file().as_fd(), dst.file().as_fd());
    dst.set_len(len)?;
    let mut copied = 0;
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(s, SeekFrom::Data(pos)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break, // no data after pos
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(s, SeekFrom::Hole(data))?.min(len);
        let mut at = data;
        while at < hole {
            let mut so = at;
            let mut doff = at;
            let n = rustix::fs::copy_file_range(
                s,
                Some(&mut so),
                d,
                Some(&mut doff),
                (hole - at) as usize,
            )?;
            if n == 0 {
                return Err(std::io::Error::other("copy_file_range copied nothing"));
            }
            at += n as u64;
            copied += n as u64;
        }
        pos = hole;
    }
    Ok(copied)
}

const FICLONE: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<i32>(0x94, 9);

/// Reflink `src` into `dst` (`FICLONE`).
fn reflink(src: &fs_err::File, dst: &fs_err::File) -> std::io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor by value as its argument
    // and reads no memory of ours.
    unsafe {
        rustix::ioctl::ioctl(
            dst.file().as_fd(),
            rustix::ioctl::IntegerSetter::<FICLONE>::new_usize(std::os::fd::AsRawFd::as_raw_fd(
                src.file(),
            ) as usize),
        )
    }
    .map_err(Into::into)
}

/// Make `dest` a fresh writable root disk of `size_mib` holding `image`'s
/// tree (label [`crate::ROOT_LABEL`]), by cloning the image's template
/// (built on first use). `dest` is replaced atomically.
///
/// The image's spare disk is taken when there is one (a rename; see
/// [`refill_spare`]), else the template is copied.
pub fn machine_disk(image: &Image, dest: &Path, size_mib: u64) -> Result<DiskCopy, ImageError> {
    let template = ensure_template(image, size_mib)?;
    if take_spare(image, size_mib, dest)? {
        return Ok(DiskCopy::Spare);
    }
    clone_file(&template, dest)
}

/// Move the spare disk of `image` to `dest`; false when there is none (or
/// it is on another filesystem than `dest`).
fn take_spare(image: &Image, size_mib: u64, dest: &Path) -> Result<bool, ImageError> {
    match fs_err::rename(spare_path(image, size_mib), dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        // (`fs_err` keeps the kind, not the errno.)
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Make the spare disk of `image` for `size_mib` if there is none and the
/// template exists, so that the next [`machine_disk`] is a rename. Returns
/// whether a spare was made; false also when another refill is under way
/// or the template holds more than [`SPARE_MAX_BYTES`]. Runs off the
/// critical path (a machine's supervisor calls it once its VMM runs).
pub fn refill_spare(image: &Image, size_mib: u64) -> Result<bool, ImageError> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::MetadataExt;
    let spare = spare_path(image, size_mib);
    let template = template_path(image, size_mib);
    let Ok(src) = fs_err::File::open(&template) else {
        return Ok(false);
    };
    let meta = src.metadata()?;
    if spare.exists() || meta.blocks() * 512 > SPARE_MAX_BYTES {
        return Ok(false);
    }
    let partial = spare_partial_path(image, size_mib);
    let dst = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&partial)?;
    match rustix::fs::flock(
        dst.file(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    ) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
        Err(e) => {
            return Err(
                std::io::Error::other(format!("cannot lock {}: {e}", partial.display())).into(),
            );
        }
    }
    // The file locked must still be the one at `partial`: a refill that
    // finished meanwhile renamed it to the spare before unlocking.
    let here = fs_err::symlink_metadata(&partial).ok();
    let ours = dst.metadata()?;
    if here.is_none_or(|h| (h.dev(), h.ino()) != (ours.dev(), ours.ino())) || spare.exists() {
        return Ok(false);
    }
    dst.set_len(0)?;
    if reflink(&src, &dst).is_err() {
        sparse_copy(&src, &dst, meta.len())?;
    }
    // Renamed while the lock is held (see above).
    fs_err::rename(&partial, &spare)?;
    Ok(true)
}

/// Make `dest` a copy of `template` that shares nothing with it: a reflink
/// where the filesystem offers one, else a copy of its data extents (holes
/// stay holes). `dest` is replaced atomically (mode 0600).
pub fn clone_file(template: &Path, dest: &Path) -> Result<DiskCopy, ImageError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".disk-").tempfile_in(dir)?;
    let src = fs_err::File::open(template)?;
    let len = src.metadata()?.len();
    let dst = fs_err::OpenOptions::new().write(true).open(tmp.path())?;
    let how = match reflink(&src, &dst) {
        Ok(()) => DiskCopy::Reflink,
        Err(_) => DiskCopy::Sparse {
            bytes: sparse_copy(&src, &dst, len)?,
        },
    };
    drop(dst);
    tmp.persist(dest).map_err(|e| ImageError::from(e.error))?;
    Ok(how)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_on_another_filesystem_is_left_and_copied_instead() {
        use std::os::unix::fs::MetadataExt;
        let shm = Path::new("/dev/shm");
        let (Ok(a), Ok(b)) = (
            fs_err::metadata(shm),
            fs_err::metadata(std::env::temp_dir()),
        ) else {
            mvm_core::testing::skip("SKIPPED: a_spare_on_another_filesystem: no /dev/shm");
            return;
        };
        if a.dev() == b.dev() {
            mvm_core::testing::skip(
                "SKIPPED: a_spare_on_another_filesystem: /dev/shm and the temp dir share a filesystem",
            );
            return;
        }
        let images = tempfile::tempdir_in(shm).unwrap();
        let machines = tempfile::tempdir().unwrap();
        let image = Image {
            name: "t".into(),
            digest: "d".into(),
            kind: crate::ImageKind::Custom,
            kernel: mvm_core::backend::KernelPaths {
                bzimage: images.path().join("bzImage"),
                vmlinux: images.path().join("vmlinux"),
            },
            initramfs: images.path().join("initramfs.cpio"),
            rootfs: images.path().join("rootfs.ext4"),
            kernel_release: "0".into(),
            dir: images.path().to_owned(),
        };
        fs_err::write(spare_path(&image, 8), b"spare").unwrap();
        let dest = machines.path().join("disk.ext4");
        assert!(!take_spare(&image, 8, &dest).unwrap(), "EXDEV is no error");
        assert!(spare_path(&image, 8).exists() && !dest.exists());
    }

    #[test]
    fn zero_blocks_are_punched_and_sparse_copies_are_identical() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let mut content = vec![0u8; 64 << 10];
        content[5000] = 1; // block 1
        content[40_000] = 2; // block 9
        fs_err::write(&a, &content).unwrap();
        punch_zero_blocks(&a).unwrap();
        assert_eq!(fs_err::read(&a).unwrap(), content);
        let m = fs_err::metadata(&a).unwrap();
        assert!(
            m.blocks() * 512 <= 3 * 4096,
            "{} bytes allocated",
            m.blocks() * 512
        );
        let b = t.path().join("b");
        let src = fs_err::File::open(&a).unwrap();
        let dst = fs_err::File::create(&b).unwrap();
        let n = sparse_copy(&src, &dst, content.len() as u64).unwrap();
        assert!(n <= 2 * 4096, "{n}");
        assert_eq!(fs_err::read(&b).unwrap(), content);
    }
}
