//! Applying an image's layers, in order, to a directory: the OCI image
//! spec's "applying changesets", without mounting anything.
//!
//! Each layer is a tar archive (plain, gzip or zstd: recognised by its
//! magic bytes, whatever the media type says) streamed from the blob cache
//! through a decompressor and a sha256 of the uncompressed bytes, which
//! must equal the layer's `diff_id` from the image config. Entries:
//!
//! - `DIR/.wh.NAME` (whiteout) removes `DIR/NAME` of the layers below;
//! - `DIR/.wh..wh..opq` (opaque directory) removes every entry of `DIR`
//!   that the layers below put there;
//!   both only touch lower layers: what this layer adds stays, whatever the
//!   order of the entries in the archive;
//! - other `.wh..wh.*` names (aufs metadata) are skipped;
//! - regular files, directories, symlinks, hard links (also to files of
//!   lower layers), fifos and device nodes are created with their mode
//!   (setuid/setgid/sticky included), owner (numeric uid/gid, PAX
//!   overrides honoured; as root only), mtime and PAX `SCHILY.xattr.*`
//!   extended attributes. An entry replaces whatever was at its path (a
//!   directory only by a non-directory).
//!
//! # Safety against hostile layers
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)` relative to the
//! tree's directory fd, so `..` and symlinks (`etc -> /`) can never lead
//! outside the tree: a symlink in a parent is followed the way it would be
//! inside the guest, with the tree as `/`. The last component is never
//! followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, and files are created with
//! `O_EXCL` after removing what was there). Entries whose path contains
//! `..` are refused.
//!
//! Directory modes and times are applied when the layer ends (creating
//! entries in a directory changes its mtime, and a read-only directory
//! mode would stop a non-root unpacker from filling it).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::blobs::Digest;

/// One layer to apply.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Its blob digest (for messages).
    pub digest: String,
    /// The blob file.
    pub blob: PathBuf,
    /// The expected sha256 of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: Option<String>,
}

/// Counts of what was applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Layers applied.
    pub layers: u64,
    /// Archive entries read.
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Bytes of regular files written.
    pub bytes: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Hard links.
    pub hardlinks: u64,
    /// Whiteouts and opaque directories applied.
    pub whiteouts: u64,
    /// Device nodes that could not be made (not root); the guest's `/dev`
    /// is a devtmpfs anyway.
    pub skipped_devices: u64,
    /// Extended attributes the host refused (e.g. `security.*` as non-root).
    pub skipped_xattrs: u64,
}

/// What is wrong with one archive entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// A system call failed.
    #[error("{op}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The path contains `..`.
    #[error("path contains '..'")]
    DotDot,
    /// A parent of the path exists and is not a directory.
    #[error("a parent of the path is not a directory")]
    ParentNotDir,
    /// A hard link names a file that does not exist.
    #[error("hard link to {target:?}, which does not exist")]
    MissingLinkTarget {
        /// The link's target.
        target: String,
    },
    /// An entry type mvm does not know.
    #[error("unsupported tar entry type {0:?}")]
    Unsupported(tar::EntryType),
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> EntryError {
    move |e| EntryError::Sys {
        op,
        source: e.into(),
    }
}

/// Applying a layer failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The blob could not be read.
    #[error("layer {layer}: cannot read its blob")]
    Open {
        /// The layer digest.
        layer: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The layer is compressed in a way mvm does not read.
    #[error("layer {layer}: unsupported compression ({what}); mvm reads tar, gzip and zstd layers")]
    Compression {
        /// The layer digest.
        layer: String,
        /// What it looks like.
        what: &'static str,
    },
    /// The archive is not a readable tar stream.
    #[error("layer {layer}: corrupt or truncated archive")]
    Tar {
        /// The layer digest.
        layer: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// One entry could not be applied.
    #[error("layer {layer}: entry {path:?}")]
    Entry {
        /// The layer digest.
        layer: String,
        /// The entry's path as written in the archive.
        path: String,
        /// Why.
        #[source]
        source: EntryError,
    },
    /// The uncompressed layer does not match the image config.
    #[error(
        "layer {layer}: its uncompressed content is {actual}, but the image config says {expected} (corrupt layer)"
    )]
    DiffId {
        /// The layer digest.
        layer: String,
        /// `rootfs.diff_ids` entry.
        expected: String,
        /// What it hashed to.
        actual: String,
    },
    /// The tree directory could not be opened.
    #[error("cannot open the tree {path}")]
    Root {
        /// The tree.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Stopped on request (Ctrl-C).
    #[error("interrupted")]
    Cancelled,
}

/// Apply `layers`, bottom first, to the (empty) directory `tree`.
/// `on_layer(i, digest)` is called before each; `cancel` is polled between
/// entries.
pub fn apply_layers(
    tree: &Path,
    layers: &[Layer],
    on_layer: &dyn Fn(usize, &str),
    cancel: &AtomicBool,
) -> Result<UnpackStats, UnpackError> {
    let root = rustix::fs::open(
        tree,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Root {
        path: tree.to_owned(),
        source: e.into(),
    })?;
    let mut u = Unpacker {
        root,
        as_root: rustix::process::geteuid().is_root(),
        stats: UnpackStats::default(),
        cached_parent: None,
    };
    for (i, layer) in layers.iter().enumerate() {
        on_layer(i, &layer.digest);
        u.apply(layer, cancel)?;
        u.stats.layers += 1;
    }
    Ok(u.stats)
}

/// Reads through to `inner`, hashing what passes.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// How a blob is compressed, from its first bytes.
fn sniff(magic: &[u8]) -> Result<Compression, &'static str> {
    match magic {
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
        [0xfd, b'7', b'z', b'X', ..] => Err("xz"),
        [b'B', b'Z', b'h', ..] => Err("bzip2"),
        _ => Ok(Compression::None),
    }
}

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Find out how the blob at `path` is compressed.
pub fn compression_of(path: &Path) -> std::io::Result<Result<Compression, &'static str>> {
    let mut f = fs_err::File::open(path)?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        let k = f.read(&mut magic[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(sniff(&magic[..n]))
}

/// Split an archive path into components (`./a//b/` -> `a`, `b`).
fn components(path: &[u8]) -> Result<Vec<&[u8]>, EntryError> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(EntryError::DotDot),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

struct Unpacker {
    root: OwnedFd,
    as_root: bool,
    stats: UnpackStats,
    /// The last parent directory resolved (entries come grouped by
    /// directory); dropped whenever anything is removed.
    cached_parent: Option<(Vec<u8>, OwnedFd)>,
}

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn times(&self) -> Timestamps {
        let t = Timespec {
            tv_sec: self.mtime,
            tv_nsec: 0,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }
}

fn meta_of<R: Read>(e: &mut tar::Entry<'_, R>) -> std::io::Result<Meta> {
    let h = e.header();
    let mut m = Meta {
        mode: h.mode()? & 0o7777,
        uid: u32::try_from(h.uid()?).unwrap_or(u32::MAX),
        gid: u32::try_from(h.gid()?).unwrap_or(u32::MAX),
        mtime: i64::try_from(h.mtime()?).unwrap_or(0),
        xattrs: Vec::new(),
    };
    if let Some(pax) = e.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let num = || {
                std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
            };
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                m.xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            } else if key == b"uid" {
                m.uid = num().unwrap_or(m.uid);
            } else if key == b"gid" {
                m.gid = num().unwrap_or(m.gid);
            }
        }
    }
    Ok(m)
}

impl Unpacker {
    fn apply(&mut self, layer: &Layer, cancel: &AtomicBool) -> Result<(), UnpackError> {
        let lname = || layer.digest.clone();
        let open_err = |source| UnpackError::Open {
            layer: lname(),
            source,
        };
        let compression = compression_of(&layer.blob)
            .map_err(open_err)?
            .map_err(|what| UnpackError::Compression {
                layer: lname(),
                what,
            })?;
        let f =
            BufReader::with_capacity(1 << 17, fs_err::File::open(&layer.blob).map_err(open_err)?);
        let decoded: Box<dyn Read> = match compression {
            Compression::None => Box::new(f),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(f)),
            Compression::Zstd => Box::new(zstd::Decoder::with_buffer(f).map_err(open_err)?),
        };
        let mut reader = HashingReader {
            inner: decoded,
            hash: Sha256::new(),
        };
        let tar_err = |source| UnpackError::Tar {
            layer: lname(),
            source,
        };
        let mut ours: HashSet<Vec<u8>> = HashSet::new();
        let mut dirs: Vec<(Vec<u8>, Meta)> = Vec::new();
        {
            let mut ar = tar::Archive::new(&mut reader);
            for entry in ar.entries().map_err(tar_err)? {
                if cancel.load(Ordering::Relaxed) {
                    return Err(UnpackError::Cancelled);
                }
                let mut entry = entry.map_err(tar_err)?;
                self.stats.entries += 1;
                let raw = entry.path_bytes().into_owned();
                let r = self.entry(&mut entry, &raw, &mut ours, &mut dirs);
                match r {
                    Ok(()) => {}
                    // Reading the content failed: the stream is bad.
                    Err(EntryError::Sys { op: "read", source }) => return Err(tar_err(source)),
                    Err(source) => {
                        return Err(UnpackError::Entry {
                            layer: lname(),
                            path: String::from_utf8_lossy(&raw).into_owned(),
                            source,
                        });
                    }
                }
            }
        }
        // Directory modes and times last, deepest first.
        for (rel, m) in dirs.iter().rev() {
            if let Err(source) = self.finish_dir(rel, m) {
                return Err(UnpackError::Entry {
                    layer: lname(),
                    path: String::from_utf8_lossy(rel).into_owned(),
                    source,
                });
            }
        }
        // Whatever follows the end-of-archive blocks is part of the diff.
        std::io::copy(&mut reader, &mut std::io::sink()).map_err(tar_err)?;
        if let Some(expected) = &layer.diff_id {
            let actual = Digest::of(reader.hash).to_string();
            if actual != *expected {
                return Err(UnpackError::DiffId {
                    layer: lname(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        raw: &[u8],
        ours: &mut HashSet<Vec<u8>>,
        dirs: &mut Vec<(Vec<u8>, Meta)>,
    ) -> Result<(), EntryError> {
        let comps = components(raw)?;
        let Some((&name, parent)) = comps.split_last() else {
            return Ok(()); // the root itself
        };
        let kind = e.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        if let Some(target) = name.strip_prefix(b".wh.") {
            self.stats.whiteouts += 1;
            if target == b".wh..opq" {
                return self.opaque(parent, ours);
            }
            if target.starts_with(b".wh.") {
                return Ok(()); // aufs metadata
            }
            let mut path = parent.to_vec();
            path.push(target);
            if ours.contains(&join(&path)) {
                return Ok(()); // only lower layers are whited out
            }
            let Some(dir) = self.find_dir(parent)? else {
                return Ok(());
            };
            self.cached_parent = None;
            return remove_at(dir.as_fd(), os(target)).map_err(sys("remove (whiteout)"));
        }
        let meta = meta_of(e).map_err(|source| EntryError::Sys { op: "read", source })?;
        let dir = self.make_dir(parent, ours)?;
        let dir = dir.as_fd();
        let name = os(name);
        ours.insert(join(&comps));
        match kind {
            tar::EntryType::Directory => {
                self.dir(dir, name, &meta)?;
                dirs.push((join(&comps), meta));
                self.stats.dirs += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(dir, name, &meta, e)?;
                self.stats.files += 1;
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| EntryError::Sys {
                        op: "read",
                        source: std::io::Error::other("symlink without a target"),
                    })?
                    .into_owned();
                self.symlink(dir, name, &target, &meta)?;
                self.stats.symlinks += 1;
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| EntryError::Sys {
                        op: "read",
                        source: std::io::Error::other("hard link without a target"),
                    })?
                    .into_owned();
                self.hardlink(dir, name, &target)?;
                self.stats.hardlinks += 1;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let h = e.header();
                let dev = rustix::fs::makedev(
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                self.node(dir, name, ft, dev, &meta)?;
            }
            other => return Err(EntryError::Unsupported(other)),
        }
        Ok(())
    }

    /// The directory `comps` if it exists (symlinks followed inside the
    /// tree).
    fn find_dir(&mut self, comps: &[&[u8]]) -> Result<Option<OwnedFd>, EntryError> {
        match self.open_in_root(&join(comps)) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::NOTDIR) => Err(EntryError::ParentNotDir),
            Err(e) => Err(sys("open parent directory")(e)),
        }
    }

    fn open_in_root(&self, rel: &[u8]) -> Result<OwnedFd, Errno> {
        let path = if rel.is_empty() { &b"."[..] } else { rel };
        rustix::fs::openat2(
            &self.root,
            os(path),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The directory `comps`, created (0755, root) where missing.
    fn make_dir(
        &mut self,
        comps: &[&[u8]],
        ours: &mut HashSet<Vec<u8>>,
    ) -> Result<OwnedFd, EntryError> {
        let rel = join(comps);
        if let Some((p, fd)) = &self.cached_parent
            && *p == rel
        {
            return fd
                .try_clone()
                .map_err(|source| EntryError::Sys { op: "dup", source });
        }
        let fd = match self.open_in_root(&rel) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                let mut cur = self.open_in_root(b"").map_err(sys("open the tree"))?;
                for i in 1..=comps.len() {
                    let prefix = join(&comps[..i]);
                    cur = match self.open_in_root(&prefix) {
                        Ok(fd) => fd,
                        Err(Errno::NOENT) => {
                            match rustix::fs::mkdirat(&cur, os(comps[i - 1]), Mode::from(0o755)) {
                                Ok(()) | Err(Errno::EXIST) => {}
                                Err(e) => return Err(sys("create parent directory")(e)),
                            }
                            ours.insert(prefix.clone());
                            self.open_in_root(&prefix)
                                .map_err(sys("open parent directory"))?
                        }
                        Err(Errno::NOTDIR) => return Err(EntryError::ParentNotDir),
                        Err(e) => return Err(sys("open parent directory")(e)),
                    };
                }
                cur
            }
            Err(Errno::NOTDIR) => return Err(EntryError::ParentNotDir),
            Err(e) => return Err(sys("open parent directory")(e)),
        };
        let copy = fd
            .try_clone()
            .map_err(|source| EntryError::Sys { op: "dup", source })?;
        self.cached_parent = Some((rel, copy));
        Ok(fd)
    }

    /// Remove what is at `dir/name` unless it is a directory.
    fn clear_non_dir(&mut self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, EntryError> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Ok(true),
            Ok(_) => {
                self.cached_parent = None;
                remove_at(dir, name).map_err(sys("remove"))?;
                Ok(false)
            }
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(sys("stat")(e)),
        }
    }

    /// Remove whatever is at `dir/name` (a directory recursively).
    fn clear(&mut self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), EntryError> {
        self.cached_parent = None;
        remove_at(dir, name).map_err(sys("remove"))
    }

    fn chown_fd(&self, fd: BorrowedFd<'_>, m: &Meta) -> Result<(), EntryError> {
        if self.as_root {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(m.uid)),
                Some(rustix::fs::Gid::from_raw(m.gid)),
            )
            .map_err(sys("chown"))?;
        }
        Ok(())
    }

    fn xattrs_fd(&mut self, fd: BorrowedFd<'_>, m: &Meta) {
        for (k, v) in &m.xattrs {
            if rustix::fs::fsetxattr(fd, os(k), v, rustix::fs::XattrFlags::empty()).is_err() {
                self.stats.skipped_xattrs += 1;
            }
        }
    }

    fn dir(&mut self, parent: BorrowedFd<'_>, name: &OsStr, m: &Meta) -> Result<(), EntryError> {
        if !self.clear_non_dir(parent, name)? {
            rustix::fs::mkdirat(parent, name, Mode::from(0o700)).map_err(sys("mkdir"))?;
        }
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("open directory"))?;
        self.chown_fd(fd.as_fd(), m)?;
        self.xattrs_fd(fd.as_fd(), m);
        Ok(())
    }

    fn finish_dir(&self, rel: &[u8], m: &Meta) -> Result<(), EntryError> {
        let fd = match rustix::fs::openat2(
            &self.root,
            os(rel),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            // Removed or replaced later in the same layer.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(()),
            Err(e) => return Err(sys("open directory")(e)),
        };
        rustix::fs::fchmod(&fd, Mode::from(m.mode)).map_err(sys("chmod"))?;
        rustix::fs::futimens(&fd, &m.times()).map_err(sys("set times"))?;
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        m: &Meta,
        content: &mut tar::Entry<'_, R>,
    ) -> Result<(), EntryError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(parent, name, flags, Mode::from(0o600)) {
            Err(Errno::EXIST) => {
                self.clear(parent, name)?;
                rustix::fs::openat(parent, name, flags, Mode::from(0o600))
            }
            r => r,
        }
        .map_err(sys("create file"))?;
        let mut out = std::fs::File::from(fd);
        let mut buf = vec![0u8; 1 << 17];
        loop {
            let n = content
                .read(&mut buf)
                .map_err(|source| EntryError::Sys { op: "read", source })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(|source| EntryError::Sys {
                op: "write",
                source,
            })?;
            self.stats.bytes += n as u64;
        }
        // Owner before mode: chown clears setuid/setgid.
        self.chown_fd(out.as_fd(), m)?;
        rustix::fs::fchmod(&out, Mode::from(m.mode)).map_err(sys("chmod"))?;
        self.xattrs_fd(out.as_fd(), m);
        rustix::fs::futimens(&out, &m.times()).map_err(sys("set times"))?;
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &[u8],
        m: &Meta,
    ) -> Result<(), EntryError> {
        match rustix::fs::symlinkat(os(target), parent, name) {
            Err(Errno::EXIST) => {
                self.clear(parent, name)?;
                rustix::fs::symlinkat(os(target), parent, name)
            }
            r => r,
        }
        .map_err(sys("symlink"))?;
        if self.as_root {
            rustix::fs::chownat(
                parent,
                name,
                Some(rustix::fs::Uid::from_raw(m.uid)),
                Some(rustix::fs::Gid::from_raw(m.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(sys("chown"))?;
        }
        rustix::fs::utimensat(parent, name, &m.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(sys("set times"))?;
        if !m.xattrs.is_empty() {
            // No fd-based call for a symlink's own xattrs: go through the
            // parent's fd in /proc (the last component is not followed).
            let path = PathBuf::from(format!("/proc/self/fd/{}", parent_raw(parent))).join(name);
            for (k, v) in &m.xattrs {
                if rustix::fs::lsetxattr(&path, os(k), v, rustix::fs::XattrFlags::empty()).is_err()
                {
                    self.stats.skipped_xattrs += 1;
                }
            }
        }
        Ok(())
    }

    fn hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &[u8],
    ) -> Result<(), EntryError> {
        let missing = || EntryError::MissingLinkTarget {
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let tcomps = components(target)?;
        let Some((&tname, tparent)) = tcomps.split_last() else {
            return Err(missing());
        };
        let Some(tdir) = self.find_dir(tparent)? else {
            return Err(missing());
        };
        let tname = os(tname);
        let link = || rustix::fs::linkat(&tdir, tname, parent, name, AtFlags::empty());
        match link() {
            Ok(()) => Ok(()),
            Err(Errno::NOENT) => Err(missing()),
            Err(Errno::EXIST) => {
                let a = rustix::fs::statat(&tdir, tname, AtFlags::SYMLINK_NOFOLLOW);
                let b = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW);
                if let (Ok(a), Ok(b)) = (a, b)
                    && (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
                {
                    return Ok(());
                }
                self.clear(parent, name)?;
                link().map_err(sys("link"))
            }
            Err(e) => Err(sys("link")(e)),
        }
    }

    fn node(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        ft: FileType,
        dev: rustix::fs::Dev,
        m: &Meta,
    ) -> Result<(), EntryError> {
        let mode = Mode::from(m.mode);
        let r = match rustix::fs::mknodat(parent, name, ft, mode, dev) {
            Err(Errno::EXIST) => {
                self.clear(parent, name)?;
                rustix::fs::mknodat(parent, name, ft, mode, dev)
            }
            r => r,
        };
        match r {
            Ok(()) => {}
            Err(Errno::PERM) if ft != FileType::Fifo => {
                self.stats.skipped_devices += 1;
                return Ok(());
            }
            Err(e) => return Err(sys("mknod")(e)),
        }
        if self.as_root {
            rustix::fs::chownat(
                parent,
                name,
                Some(rustix::fs::Uid::from_raw(m.uid)),
                Some(rustix::fs::Gid::from_raw(m.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(sys("chown"))?;
        }
        rustix::fs::chmodat(parent, name, mode, AtFlags::empty()).map_err(sys("chmod"))?;
        rustix::fs::utimensat(parent, name, &m.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(sys("set times"))?;
        Ok(())
    }

    /// `.wh..wh..opq` in `comps`: remove what lower layers put there.
    fn opaque(&mut self, comps: &[&[u8]], ours: &HashSet<Vec<u8>>) -> Result<(), EntryError> {
        let Some(dir) = self.find_dir(comps)? else {
            return Ok(());
        };
        let fd = rustix::fs::openat(
            &dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("open directory"))?;
        let mut names = Vec::new();
        for e in rustix::fs::Dir::read_from(&fd).map_err(sys("read directory"))? {
            let e = e.map_err(sys("read directory"))?;
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            let mut p = comps.to_vec();
            p.push(n);
            if !ours.contains(&join(&p)) {
                names.push(n.to_vec());
            }
        }
        for n in names {
            self.clear(fd.as_fd(), os(&n))?;
        }
        Ok(())
    }
}

fn parent_raw(fd: BorrowedFd<'_>) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// Remove `dir/name`, recursively if it is a directory; absent is fine.
fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => {
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut names = Vec::new();
            for e in rustix::fs::Dir::read_from(&fd)? {
                let e = e?;
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            for n in names {
                remove_at(fd.as_fd(), os(&n))?;
            }
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A layer tar built in memory.
    struct T(tar::Builder<Vec<u8>>);

    impl T {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }
        fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            h
        }
        fn dir(mut self, p: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Directory, 0o755);
            self.0.append_data(&mut h, p, &[][..]).unwrap();
            self
        }
        fn file(mut self, p: &str, data: &[u8], mode: u32) -> Self {
            let mut h = Self::header(tar::EntryType::Regular, mode);
            h.set_size(data.len() as u64);
            self.0.append_data(&mut h, p, data).unwrap();
            self
        }
        fn symlink(mut self, p: &str, target: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Symlink, 0o777);
            self.0.append_link(&mut h, p, target).unwrap();
            self
        }
        fn hardlink(mut self, p: &str, target: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Link, 0o644);
            self.0.append_link(&mut h, p, target).unwrap();
            self
        }
        fn raw_path(mut self, p: &[u8]) -> Self {
            // Bypass the builder's path checks (for '..' entries).
            let mut h = Self::header(tar::EntryType::Regular, 0o644);
            h.as_old_mut().name[..p.len()].copy_from_slice(p);
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
            self
        }
        fn write(self, dir: &Path, n: usize) -> Layer {
            let bytes = self.0.into_inner().unwrap();
            let blob = dir.join(format!("layer{n}"));
            fs_err::write(&blob, &bytes).unwrap();
            Layer {
                digest: format!("layer{n}"),
                blob,
                diff_id: Some(Digest::of_bytes(&bytes).to_string()),
            }
        }
    }

    fn apply(layers: &[Layer]) -> Result<(tempfile::TempDir, UnpackStats), UnpackError> {
        let tree = tempfile::tempdir().unwrap();
        let stats = apply_layers(tree.path(), layers, &|_, _| {}, &AtomicBool::new(false))?;
        Ok((tree, stats))
    }

    #[test]
    fn whiteouts_opaque_dirs_and_links() {
        let d = tempfile::tempdir().unwrap();
        let l1 = T::new()
            .dir("etc")
            .file("etc/gone", b"x", 0o644)
            .dir("opq")
            .file("opq/lower", b"l", 0o644)
            .file("data/orig", b"shared", 0o4755)
            .symlink("etc/resolv.conf", "../run/resolv.conf")
            .write(d.path(), 1);
        let l2 = T::new()
            .file("opq/upper", b"u", 0o644) // before the marker: still kept
            .file("opq/.wh..wh..opq", b"", 0o644)
            .file("etc/.wh.gone", b"", 0o644)
            .file("etc/new", b"n", 0o600)
            .file("etc/.wh.new", b"", 0o644) // same layer: no effect
            .hardlink("data/link", "data/orig")
            .write(d.path(), 2);
        let (tree, stats) = apply(&[l1, l2]).unwrap();
        let t = tree.path();
        assert!(!t.join("etc/gone").exists());
        assert!(t.join("etc/new").exists());
        assert!(!t.join("opq/lower").exists());
        assert_eq!(fs_err::read(t.join("opq/upper")).unwrap(), b"u");
        let a = fs_err::metadata(t.join("data/orig")).unwrap();
        let b = fs_err::metadata(t.join("data/link")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.nlink(), 2);
        assert_eq!(a.mode() & 0o7777, 0o4755);
        assert_eq!(
            fs_err::read_link(t.join("etc/resolv.conf")).unwrap(),
            Path::new("../run/resolv.conf")
        );
        assert_eq!(a.mtime(), 1_700_000_000);
        assert_eq!(stats.layers, 2);
        assert_eq!(stats.hardlinks, 1);
    }

    #[test]
    fn symlinks_never_lead_out_of_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let out = outside.path().to_str().unwrap().trim_start_matches('/');
        let l1 = T::new()
            .dir(out)
            .symlink("escape", outside.path().to_str().unwrap())
            .symlink("up", "../../../../..")
            .write(d.path(), 1);
        let l2 = T::new()
            .file("escape/pwned", b"x", 0o644)
            .file(&format!("up/{out}/pwned2"), b"x", 0o644)
            .write(d.path(), 2);
        let (tree, _) = apply(&[l1, l2]).unwrap();
        assert!(fs_err::read_dir(outside.path()).unwrap().next().is_none());
        // Followed inside the tree, as the guest would see them.
        assert!(tree.path().join(format!("{out}/pwned")).is_file());
        assert!(tree.path().join(format!("{out}/pwned2")).is_file());

        let l3 = T::new().raw_path(b"../evil").write(d.path(), 3);
        let e = apply(&[l3]).unwrap_err();
        assert!(e.to_string().contains("../evil"), "{e}");

        // Through a dangling symlink: an error, never a write outside.
        let l4 = T::new()
            .symlink("dangling", "/nonexistent/dir")
            .write(d.path(), 4);
        let l5 = T::new().file("dangling/x", b"x", 0o644).write(d.path(), 5);
        assert!(apply(&[l4, l5]).is_err());
    }

    #[test]
    fn files_replace_dirs_and_dirs_replace_files() {
        let d = tempfile::tempdir().unwrap();
        let l1 = T::new()
            .file("a/b/c", b"1", 0o644)
            .file("f", b"1", 0o644)
            .write(d.path(), 1);
        let l2 = T::new()
            .file("a", b"now a file", 0o644)
            .dir("f")
            .file("f/inner", b"2", 0o644)
            .write(d.path(), 2);
        let (tree, _) = apply(&[l1, l2]).unwrap();
        assert_eq!(fs_err::read(tree.path().join("a")).unwrap(), b"now a file");
        assert_eq!(fs_err::read(tree.path().join("f/inner")).unwrap(), b"2");
        let mode = fs_err::metadata(tree.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn compressed_layers_and_diff_id_checks() {
        let d = tempfile::tempdir().unwrap();
        let plain = T::new().file("x", b"hello", 0o644).write(d.path(), 1);
        let bytes = fs_err::read(&plain.blob).unwrap();
        let gz = d.path().join("gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        fs_err::write(&gz, enc.finish().unwrap()).unwrap();
        let zst = d.path().join("zst");
        fs_err::write(&zst, zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
        for blob in [gz, zst] {
            let l = Layer {
                blob,
                ..plain.clone()
            };
            let (tree, _) = apply(std::slice::from_ref(&l)).unwrap();
            assert_eq!(fs_err::read(tree.path().join("x")).unwrap(), b"hello");
        }
        let wrong = Layer {
            diff_id: Some(Digest::of_bytes(b"other").to_string()),
            ..plain
        };
        let e = apply(&[wrong]).unwrap_err();
        assert!(matches!(e, UnpackError::DiffId { .. }), "{e}");
        assert!(e.to_string().contains("layer1"), "{e}");
    }

    #[test]
    fn truncated_layers_fail_naming_the_layer() {
        let d = tempfile::tempdir().unwrap();
        let l = T::new()
            .file("x", &vec![7u8; 100_000], 0o644)
            .write(d.path(), 1);
        let bytes = fs_err::read(&l.blob).unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        let gz = enc.finish().unwrap();
        fs_err::write(&l.blob, &gz[..gz.len() / 2]).unwrap();
        let e = apply(&[l]).unwrap_err();
        assert!(e.to_string().starts_with("layer layer1"), "{e}");
    }

    proptest::proptest! {
        /// Archive paths cross a trust boundary: a path with `..` is
        /// refused, every other one yields plain components.
        #[test]
        fn components_never_escape(path in "[a-z./]{0,24}") {
            match components(path.as_bytes()) {
                Ok(c) => {
                    for part in c {
                        proptest::prop_assert!(!part.is_empty() && part != b"." && part != b"..");
                        proptest::prop_assert!(!part.contains(&b'/'));
                    }
                }
                Err(EntryError::DotDot) => proptest::prop_assert!(path.split('/').any(|p| p == "..")),
                Err(e) => proptest::prop_assert!(false, "{e}"),
            }
        }

        /// Arbitrary bytes as a layer: an error or an (empty) tree, never a
        /// panic or a write outside the tree.
        #[test]
        fn any_layer_bytes_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let d = tempfile::tempdir().unwrap();
            let blob = d.path().join("blob");
            fs_err::write(&blob, &bytes).unwrap();
            let tree = d.path().join("tree");
            fs_err::create_dir(&tree).unwrap();
            let layer = Layer { digest: "x".into(), blob, diff_id: None };
            let _ = apply_layers(&tree, &[layer], &|_, _| {}, &AtomicBool::new(false));
            let mut names: Vec<_> = fs_err::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            proptest::prop_assert_eq!(names, vec![std::ffi::OsString::from("blob"), "tree".into()]);
        }
    }

    #[test]
    fn cancel_stops_between_entries() {
        let d = tempfile::tempdir().unwrap();
        let l = T::new().file("x", b"1", 0o644).write(d.path(), 1);
        let tree = tempfile::tempdir().unwrap();
        let e = apply_layers(tree.path(), &[l], &|_, _| {}, &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(e, UnpackError::Cancelled));
    }

    #[test]
    fn missing_hard_link_target_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let l = T::new().hardlink("a", "nope").write(d.path(), 1);
        let e = apply(&[l]).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("\"a\"") && chain.contains("nope"), "{chain}");
    }
}
