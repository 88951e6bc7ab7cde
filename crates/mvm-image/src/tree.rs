//! The guest's file tree, assembled in a host directory before it becomes
//! a cpio archive or an ext4 image.
//!
//! The base tree (what mvm's initramfs and the default rootfs hold):
//!
//! ```text
//! /init, /sbin/mvm-agent     the agent (PID 1)
//! /bin/busybox + symlinks    one per applet, as `busybox --list-full` names them
//! /etc/{passwd,group,hostname,hosts}
//! /etc/mvm/modules.order     kernel modules to load, dependencies first
//! /lib/modules/<release>/    those modules, uncompressed
//! /root /tmp /proc /sys /dev /run /mnt   (empty; /dev nodes come from the
//!                            cpio writer and from devtmpfs at boot)
//! ```
//!
//! A custom tree is the user's directory or tarball, plus `/sbin/mvm-agent`,
//! the modules and the empty mount points.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cmd::{self, CommandError};

/// Where the static busybox of Debian's `busybox-static` lives.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Assembling a tree failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A file could not be read or written.
    #[error("file error in the image tree")]
    Io(#[from] std::io::Error),
    /// busybox is missing or not static.
    #[error("{path} is {why}; install it with `apt-get install -y busybox-static`")]
    Busybox {
        /// The file checked.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Asking busybox for its applets failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A user tarball could not be unpacked.
    #[error("cannot unpack {path}")]
    Tar {
        /// The tarball.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The user's source is not a directory/file as expected.
    #[error("{path} is not a {expected}")]
    BadSource {
        /// The path given.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
    },
}

/// A static busybox. Its applets are listed only when asked
/// ([`Busybox::applets`]): a cached image needs just the digest, and
/// running `busybox --list-full` cost ~50 ms of every `mvm run`.
#[derive(Debug, Clone)]
pub struct Busybox {
    /// The binary.
    pub bytes: Vec<u8>,
    /// Its sha256, hex.
    pub sha256: String,
}

/// Load the host's static busybox.
pub fn host_busybox() -> Result<Busybox, TreeError> {
    let bytes = read_host_busybox()?;
    Ok(Busybox {
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes,
    })
}

/// Whether the host's busybox is a static 64-bit build (read and parsed,
/// not hashed: cheap enough for every `mvm run`).
pub fn check_host_busybox() -> Result<(), TreeError> {
    read_host_busybox().map(drop)
}

fn read_host_busybox() -> Result<Vec<u8>, TreeError> {
    let path = Path::new(HOST_BUSYBOX);
    let bytes = fs_err::read(path).map_err(|e| TreeError::Busybox {
        path: path.to_owned(),
        why: format!("not readable ({e})"),
    })?;
    if let Err(why) = check_static_elf(&bytes) {
        return Err(TreeError::Busybox {
            path: path.to_owned(),
            why,
        });
    }
    Ok(bytes)
}

impl Busybox {
    /// Applet paths, relative (`usr/bin/[`), sorted (`busybox
    /// --list-full` of the host's busybox).
    pub fn applets(&self) -> Result<Vec<String>, TreeError> {
        let out = cmd::run(
            Path::new(HOST_BUSYBOX),
            &["--list-full".as_ref()],
            None,
            Duration::from_secs(30),
        )?;
        let mut applets: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| l.trim().trim_start_matches('/').to_owned())
            .filter(|l| !l.is_empty() && l != "bin/busybox" && !l.contains(".."))
            .collect();
        applets.sort();
        applets.dedup();
        Ok(applets)
    }
}

/// `Ok` for an x86_64 ELF with no `PT_INTERP` (static or static-pie).
pub fn check_static_elf(b: &[u8]) -> Result<(), String> {
    let elf = goblin::elf::Elf::parse(b).map_err(|e| format!("not an ELF file: {e}"))?;
    if !elf.is_64 || !elf.little_endian {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    if elf.interpreter.is_some()
        || elf
            .program_headers
            .iter()
            .any(|ph| ph.p_type == goblin::elf::program_header::PT_INTERP)
    {
        return Err("dynamically linked (it has an ELF interpreter)".into());
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(p) = path.parent() {
        fs_err::create_dir_all(p)?;
    }
    fs_err::write(path, bytes)?;
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Add the agent and the empty mount points every mvm guest needs.
pub fn add_agent_and_mountpoints(tree: &Path, agent: &[u8], as_init: bool) -> std::io::Result<()> {
    for (d, mode) in [
        ("proc", 0o755),
        ("sys", 0o755),
        ("dev", 0o755),
        ("run", 0o755),
        ("mnt", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("sbin", 0o755),
        ("etc/mvm", 0o755),
    ] {
        let p = tree.join(d);
        if !p.exists() {
            fs_err::create_dir_all(&p)?;
            fs_err::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        }
    }
    write_file(&tree.join("sbin/mvm-agent"), agent, 0o755)?;
    if as_init {
        // One file, two names: a disk made from the tree stores the agent
        // once (`mkfs.ext4 -d` keeps hard links), and a machine's copy of
        // it is 5 MB smaller (formats before 2 had two copies).
        let init = tree.join("init");
        mvm_core::files::remove_if_exists(&init)?;
        fs_err::hard_link(tree.join("sbin/mvm-agent"), &init)?;
    }
    Ok(())
}

/// Build the base tree (see the module docs) into the empty directory `tree`;
/// modules are added separately.
pub fn build_base(tree: &Path, agent: &[u8], busybox: &Busybox) -> Result<(), TreeError> {
    fs_err::create_dir_all(tree)?;
    add_agent_and_mountpoints(tree, agent, true)?;
    write_file(&tree.join("bin/busybox"), &busybox.bytes, 0o755)?;
    for applet in &busybox.applets()? {
        let link = tree.join(applet);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(p) = link.parent() {
            fs_err::create_dir_all(p)?;
        }
        fs_err::os::unix::fs::symlink("/bin/busybox", &link)?;
    }
    for (name, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/hostname", "mvm\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
    ] {
        write_file(&tree.join(name), text.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Copy the user's directory `src` into `dst` (files, directories, symlinks,
/// with their permission bits). Device nodes, fifos and sockets are skipped:
/// the guest's `/dev` is a devtmpfs.
pub fn copy_dir(src: &Path, dst: &Path) -> Result<(), TreeError> {
    if !src.is_dir() {
        return Err(TreeError::BadSource {
            path: src.to_owned(),
            expected: "directory",
        });
    }
    for (rel, meta) in walk(src)? {
        let from = src.join(&rel);
        let to = dst.join(&rel);
        let ft = meta.file_type();
        if ft.is_dir() {
            fs_err::create_dir_all(&to)?;
            fs_err::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if ft.is_symlink() {
            fs_err::os::unix::fs::symlink(fs_err::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            fs_err::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// Make a user tree safe to write into from the host: top-level symlinks
/// with absolute targets (`sbin -> /usr/sbin` in merged-/usr trees) would
/// lead host writes out of the tree, so they become the equivalent relative
/// links (`sbin -> usr/sbin`). Then the directories mvm writes into
/// (`sbin`, `etc/mvm`, `lib/modules`) are created and checked to resolve
/// inside the tree.
pub fn confine(tree: &Path) -> Result<(), TreeError> {
    for e in fs_err::read_dir(tree)? {
        let e = e?;
        let path = e.path();
        if !fs_err::symlink_metadata(&path)?.file_type().is_symlink() {
            continue;
        }
        let target = fs_err::read_link(&path)?;
        if let Ok(rel) = target.strip_prefix("/") {
            let rel = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel
            };
            fs_err::remove_file(&path)?;
            fs_err::os::unix::fs::symlink(rel, &path)?;
        }
    }
    let root = fs_err::canonicalize(tree)?;
    for d in ["sbin", "etc/mvm", "lib/modules"] {
        let mut p = root.clone();
        // Create one component at a time, checking each resolves inside.
        for c in Path::new(d).components() {
            p.push(c);
            if !p.exists() {
                if p.symlink_metadata().is_ok() {
                    // A dangling symlink: replace it with a directory.
                    fs_err::remove_file(&p)?;
                }
                fs_err::create_dir(&p)?;
            }
            let real = fs_err::canonicalize(&p)?;
            if !real.starts_with(&root) {
                return Err(TreeError::BadSource {
                    path: p,
                    expected: "path inside the image tree (it is a symlink leading out)",
                });
            }
            p = real;
        }
    }
    Ok(())
}

/// Unpack a `.tar` or `.tar.gz` (recognised by content) into `dst`.
pub fn unpack_tar(src: &Path, dst: &Path) -> Result<(), TreeError> {
    let terr = |source| TreeError::Tar {
        path: src.to_owned(),
        source,
    };
    let mut f = fs_err::File::open(src)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(terr)?;
    drop(f);
    let f = fs_err::File::open(src)?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    ar.unpack(dst).map_err(terr)
}

/// Every entry below `root` (not `root` itself), by relative path, sorted.
pub fn walk(root: &Path) -> std::io::Result<BTreeMap<PathBuf, std::fs::Metadata>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs_err::read_dir(root.join(&rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            let meta = fs_err::symlink_metadata(e.path())?;
            if meta.is_dir() {
                stack.push(r.clone());
            }
            out.insert(r, meta);
        }
    }
    Ok(out)
}

/// What a tree takes, for sizing the ext4 that holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of regular files, each inode counted once.
    pub bytes: u64,
    /// Bytes of 4 KiB blocks the entries need (files rounded up, one
    /// block per directory and per long symlink).
    pub block_bytes: u64,
    /// Entries (the root included).
    pub entries: u64,
}

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;
/// mkfs.ext4's default bytes-per-inode ratio.
const INODE_RATIO: u64 = 16384;

impl Usage {
    /// The size (MiB) of an ext4 that holds the tree with room to spare
    /// (a quarter more, plus 96 MiB for the journal, metadata and the
    /// reserved blocks), and an inode count for `mkfs.ext4 -N` when the
    /// default ratio would give too few.
    pub fn ext4_size(&self) -> (u64, Option<u64>) {
        let inodes = self.entries + self.entries / 4 + 1024;
        let bytes = self.block_bytes + self.block_bytes / 4 + inodes * 256 + 96 * MIB;
        let mib = bytes.div_ceil(MIB);
        let default_inodes = mib * MIB / INODE_RATIO;
        (mib, (inodes > default_inodes).then_some(inodes))
    }
}

/// Measure the tree at `root` (see [`Usage`]).
pub fn usage(root: &Path) -> std::io::Result<Usage> {
    let mut seen = std::collections::BTreeSet::new();
    let mut u = Usage {
        entries: 1,
        block_bytes: BLOCK,
        ..Usage::default()
    };
    for meta in walk(root)?.values() {
        u.entries += 1;
        let ft = meta.file_type();
        if ft.is_file() {
            if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            u.bytes += meta.len();
            u.block_bytes += meta.len().div_ceil(BLOCK) * BLOCK;
        } else if ft.is_dir() || (ft.is_symlink() && meta.len() > 59) {
            u.block_bytes += BLOCK;
        }
    }
    Ok(u)
}

/// A digest of a directory's content: paths, types, modes, file bytes and
/// symlink targets (not owners or times).
pub fn dir_digest(root: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for (rel, meta) in walk(root)? {
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(meta.mode().to_le_bytes());
        if meta.is_file() {
            let mut f = fs_err::File::open(root.join(&rel))?;
            std::io::copy(&mut f, &mut h)?;
        } else if meta.file_type().is_symlink() {
            h.update(
                fs_err::read_link(root.join(&rel))?
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        }
        h.update([0xff]);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    std::io::copy(&mut fs_err::File::open(path)?, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_digest_sees_content_and_mode() {
        let d = tempfile::tempdir().unwrap();
        write_file(&d.path().join("a/b"), b"x", 0o644).unwrap();
        let one = dir_digest(d.path()).unwrap();
        assert_eq!(one, dir_digest(d.path()).unwrap());
        write_file(&d.path().join("a/b"), b"y", 0o644).unwrap();
        let two = dir_digest(d.path()).unwrap();
        assert_ne!(one, two);
        fs_err::set_permissions(d.path().join("a/b"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert_ne!(two, dir_digest(d.path()).unwrap());
    }

    #[test]
    fn copy_dir_and_tar_keep_symlinks_and_modes() {
        let src = tempfile::tempdir().unwrap();
        write_file(&src.path().join("usr/bin/tool"), b"#!x", 0o755).unwrap();
        fs_err::os::unix::fs::symlink("usr/bin/tool", src.path().join("tool")).unwrap();
        let dst = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dst.path()).unwrap();
        assert_eq!(
            dir_digest(src.path()).unwrap(),
            dir_digest(dst.path()).unwrap()
        );

        let tarf = tempfile::NamedTempFile::new().unwrap();
        let mut enc = flate2::write::GzEncoder::new(
            fs_err::File::create(tarf.path()).unwrap(),
            flate2::Compression::fast(),
        );
        {
            let mut b = tar::Builder::new(&mut enc);
            b.follow_symlinks(false);
            b.append_dir_all(".", src.path()).unwrap();
            b.finish().unwrap();
        }
        enc.finish().unwrap();
        let dst2 = tempfile::tempdir().unwrap();
        unpack_tar(tarf.path(), dst2.path()).unwrap();
        assert_eq!(
            fs_err::read_link(dst2.path().join("tool")).unwrap(),
            Path::new("usr/bin/tool")
        );
        let mode = fs_err::metadata(dst2.path().join("usr/bin/tool"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn confine_relativizes_absolute_top_level_links() {
        let d = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(d.path().join("usr/sbin")).unwrap();
        fs_err::create_dir_all(d.path().join("usr/lib")).unwrap();
        fs_err::os::unix::fs::symlink("/usr/sbin", d.path().join("sbin")).unwrap();
        fs_err::os::unix::fs::symlink("usr/lib", d.path().join("lib")).unwrap();
        confine(d.path()).unwrap();
        assert_eq!(
            fs_err::read_link(d.path().join("sbin")).unwrap(),
            Path::new("usr/sbin")
        );
        add_agent_and_mountpoints(d.path(), b"agent", false).unwrap();
        assert_eq!(
            fs_err::read(d.path().join("usr/sbin/mvm-agent")).unwrap(),
            b"agent"
        );
        assert!(d.path().join("usr/lib/modules").is_dir());

        // A deeper link out of the tree is refused.
        let e = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(e.path().join("etc")).unwrap();
        fs_err::os::unix::fs::symlink(outside.path(), e.path().join("etc/mvm")).unwrap();
        assert!(confine(e.path()).is_err());
    }

    #[test]
    fn usage_counts_hard_links_once_and_sizes_ext4() {
        let d = tempfile::tempdir().unwrap();
        write_file(&d.path().join("a/big"), &vec![1u8; 10_000], 0o644).unwrap();
        fs_err::hard_link(d.path().join("a/big"), d.path().join("a/link")).unwrap();
        fs_err::os::unix::fs::symlink("big", d.path().join("a/sym")).unwrap();
        let u = usage(d.path()).unwrap();
        assert_eq!(u.bytes, 10_000);
        assert_eq!(u.entries, 5);
        // root + a + 3 blocks of big
        assert_eq!(u.block_bytes, 5 * 4096);
        let (mib, inodes) = u.ext4_size();
        assert!((96..200).contains(&mib), "{mib}");
        assert_eq!(inodes, None);
        // Many small files need more inodes than the default ratio gives.
        let many = Usage {
            bytes: 0,
            block_bytes: 100_000 * 4096,
            entries: 100_000,
        };
        let (mib, inodes) = many.ext4_size();
        assert!(inodes.unwrap() > mib * MIB / INODE_RATIO);
    }

    #[test]
    fn static_check_rejects_dynamic_binaries() {
        let ls = fs_err::read("/bin/ls").unwrap();
        assert!(check_static_elf(&ls).is_err());
        assert!(check_static_elf(b"#!/bin/sh").is_err());
    }
}
