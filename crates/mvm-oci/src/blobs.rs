//! The content-addressed blob cache shared by every OCI image
//! (`$MVM_HOME/images/blobs`).
//!
//! ```text
//! blobs/sha256/<hex>     complete, verified blobs (manifests, configs, layers)
//! blobs/partial/<hex>    a download in progress or interrupted; flock'ed
//!                        (exclusive) by its writer, resumed by the next pull
//! blobs/incoming/        temporary files of imports (random names)
//! blobs/lock             flock: shared while a pull/import runs, exclusive
//!                        while garbage is collected
//! ```
//!
//! A blob enters `sha256/` only by `rename` after its sha256 and size were
//! checked against what the manifest promised and the file was fsync'ed,
//! so a file there is always whole and correct. A download writes into
//! `partial/<hex>` while hashing; an interrupted download leaves the
//! bytes it got, and the next pull hashes them and asks the registry for
//! the rest (an HTTP range). A digest mismatch deletes the partial file.
//!
//! Garbage collection ([`BlobStore::gc`]) keeps the blobs the image store
//! names (`mvm_image::referenced_blobs`) and removes the rest, under the
//! exclusive lock, so it never deletes what a running pull just fetched.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use mvm_core::MvmHome;
use sha2::{Digest as _, Sha256};

/// A `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// A digest string mvm cannot use.
#[derive(Debug, thiserror::Error)]
#[error("unsupported or malformed digest {0:?} (mvm handles sha256:<64 hex digits>)")]
pub struct DigestError(pub String);

impl Digest {
    /// Parse `sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        match s.split_once(':') {
            Some(("sha256", hex))
                if hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Self(s.to_owned()))
            }
            _ => Err(DigestError(s.to_owned())),
        }
    }

    /// The digest of a finished hash.
    pub fn of(h: Sha256) -> Self {
        Self(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::of(Sha256::new_with_prefix(bytes))
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The whole string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for messages and tables.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blob cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A file operation failed (fs-err names the path).
    #[error("blob cache file error")]
    Io(#[from] std::io::Error),
    /// The content does not hash to the digest it was promised as.
    #[error("content of {expected} does not match its digest (got {actual})")]
    DigestMismatch {
        /// The digest promised.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// The content has another size than promised.
    #[error("{digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size promised.
        expected: u64,
        /// What arrived (at least).
        actual: u64,
    },
}

/// An flock on `blobs/lock`; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: fs_err::File,
}

/// What [`BlobStore::gc`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs: u64,
    /// Bytes freed (blobs and stale partial downloads).
    pub bytes: u64,
    /// Partial downloads removed.
    pub partials: u64,
    /// Stale `images/.tmp-*` directories of builds that died (removed by
    /// [`crate::gc`], not by [`BlobStore::gc`]).
    pub builds: u64,
}

/// Something in the blob cache that no image needs (see
/// [`BlobStore::leftovers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLeftover {
    /// A complete blob no image in the store was made from.
    Unused {
        /// The blob.
        digest: String,
        /// Its size.
        bytes: u64,
    },
    /// A download nobody is writing (an interrupted pull; the next pull of
    /// an image with this blob resumes it).
    Partial {
        /// The blob being downloaded.
        digest: String,
        /// Bytes so far.
        bytes: u64,
    },
    /// A temporary file of an import that died.
    Incoming {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
}

/// The blob cache of one `$MVM_HOME`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// The cache of `home` (created on first write).
    pub fn new(home: &MvmHome) -> Self {
        Self {
            root: home.blobs_dir(),
        }
    }

    fn ensure_dirs(&self) -> std::io::Result<()> {
        for d in ["sha256", "partial", "incoming"] {
            fs_err::create_dir_all(self.root.join(d))?;
        }
        Ok(())
    }

    /// Where the complete blob `d` lives.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("sha256").join(d.hex())
    }

    fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root.join("partial").join(d.hex())
    }

    /// The size of blob `d` if the cache has it.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs_err::metadata(self.path(d)).ok().map(|m| m.len())
    }

    /// The bytes of a (small) blob.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, BlobError> {
        Ok(fs_err::read(self.path(d))?)
    }

    fn lock(&self, op: rustix::fs::FlockOperation) -> Result<Option<StoreLock>, BlobError> {
        self.ensure_dirs()?;
        let path = self.root.join("lock");
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match rustix::fs::flock(file.as_fd(), op) {
            Ok(()) => Ok(Some(StoreLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(std::io::Error::other(format!("flock {}: {e}", path.display())).into()),
        }
    }

    /// Hold the shared lock (pulls and imports, for their whole run).
    pub fn lock_shared(&self) -> Result<StoreLock, BlobError> {
        Ok(self
            .lock(rustix::fs::FlockOperation::LockShared)?
            .expect("blocking lock"))
    }

    /// Start (or resume) writing blob `d` of `size` bytes. Blocks while
    /// another process writes the same blob.
    pub fn begin(&self, d: &Digest, size: u64) -> Result<Partial, BlobError> {
        self.ensure_dirs()?;
        let path = self.partial_path(d);
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| std::io::Error::other(format!("flock {}: {e}", path.display())))?;
        let mut p = Partial {
            file,
            path,
            final_path: self.path(d),
            digest: d.clone(),
            hasher: Sha256::new(),
            len: 0,
            size,
        };
        // Hash what an earlier, interrupted download left.
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = p.file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            p.hasher.update(&buf[..n]);
            p.len += n as u64;
        }
        if p.len > size {
            p.restart()?;
        }
        Ok(p)
    }

    /// Copy `r` into the cache, hashing it; if `expected` is given the
    /// content must match it. Returns the digest and size; an existing
    /// identical blob is kept.
    pub fn insert(
        &self,
        r: &mut dyn Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), BlobError> {
        self.ensure_dirs()?;
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.root.join("incoming"))?;
        let mut h = Sha256::new();
        let mut out = std::io::BufWriter::new(tmp.as_file());
        let mut buf = vec![0u8; 1 << 16];
        let mut len = 0u64;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            len += n as u64;
        }
        out.flush()?;
        drop(out);
        let actual = Digest::of(h);
        if let Some(e) = expected
            && *e != actual
        {
            return Err(BlobError::DigestMismatch {
                expected: e.clone(),
                actual,
            });
        }
        let dest = self.path(&actual);
        if !dest.exists() {
            tmp.as_file().sync_all()?;
            tmp.persist(&dest).map_err(|e| e.error)?;
            sync_dir(&self.root.join("sha256"))?;
        }
        Ok((actual, len))
    }

    /// Remove every blob not in `keep` and every partial download no one
    /// is writing. Returns `None` (and removes nothing) while a pull or
    /// import holds the shared lock.
    pub fn gc(&self, keep: &BTreeSet<String>) -> Result<Option<GcReport>, BlobError> {
        let Some((_lock, found)) = self.unneeded(keep)? else {
            return Ok(None);
        };
        let mut report = GcReport::default();
        // `_probe` holds a partial download's lock until it is removed.
        for (what, path, _probe) in found {
            fs_err::remove_file(&path)?;
            match what {
                BlobLeftover::Unused { bytes, .. } => {
                    report.blobs += 1;
                    report.bytes += bytes;
                }
                BlobLeftover::Partial { bytes, .. } => {
                    report.partials += 1;
                    report.bytes += bytes;
                }
                BlobLeftover::Incoming { .. } => {}
            }
        }
        Ok(Some(report))
    }

    /// What [`BlobStore::gc`] would remove, without removing anything:
    /// blobs not in `keep`, partial downloads no pull is writing, and
    /// (when no pull or import runs) temporary files of imports. Empty
    /// while a pull or import runs, as `gc` would do nothing then either.
    pub fn leftovers(&self, keep: &BTreeSet<String>) -> Result<Vec<BlobLeftover>, BlobError> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        Ok(self
            .unneeded(keep)?
            .map(|(_, found)| found.into_iter().map(|(what, _, _)| what).collect())
            .unwrap_or_default())
    }

    /// The one scan behind [`BlobStore::gc`] and [`BlobStore::leftovers`],
    /// under the store's exclusive lock (returned; `None` while a pull or
    /// import runs): each entry no image needs, its path, and for a partial
    /// download the file whose probe `flock` keeps its writers out until
    /// it is dropped (imports hold the shared store lock, so nothing in
    /// `incoming/` is live).
    #[allow(clippy::type_complexity)]
    fn unneeded(
        &self,
        keep: &BTreeSet<String>,
    ) -> Result<
        Option<(
            StoreLock,
            Vec<(BlobLeftover, PathBuf, Option<fs_err::File>)>,
        )>,
        BlobError,
    > {
        let Some(lock) = self.lock(rustix::fs::FlockOperation::NonBlockingLockExclusive)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let len = |e: &fs_err::DirEntry| e.metadata().map(|m| m.len()).unwrap_or(0);
        for e in fs_err::read_dir(self.root.join("sha256"))? {
            let e = e?;
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            if !keep.contains(&digest) {
                let what = BlobLeftover::Unused {
                    bytes: len(&e),
                    digest,
                };
                out.push((what, e.path(), None));
            }
        }
        for e in fs_err::read_dir(self.root.join("partial"))? {
            let e = e?;
            let f = fs_err::OpenOptions::new().write(true).open(e.path())?;
            if rustix::fs::flock(
                f.as_fd(),
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
            )
            .is_ok()
            {
                let what = BlobLeftover::Partial {
                    digest: format!("sha256:{}", e.file_name().to_string_lossy()),
                    bytes: len(&e),
                };
                out.push((what, e.path(), Some(f)));
            }
        }
        for e in fs_err::read_dir(self.root.join("incoming"))? {
            let e = e?;
            let what = BlobLeftover::Incoming {
                bytes: len(&e),
                path: e.path(),
            };
            out.push((what, e.path(), None));
        }
        Ok(Some((lock, out)))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs_err::File::open(dir)?.sync_all()
}

/// A blob being downloaded into `partial/` (see the module docs).
#[derive(Debug)]
pub struct Partial {
    file: fs_err::File,
    path: PathBuf,
    final_path: PathBuf,
    digest: Digest,
    hasher: Sha256,
    len: u64,
    size: u64,
}

impl Partial {
    /// Bytes already there (where a resumed download continues).
    pub fn offset(&self) -> u64 {
        self.len
    }

    /// The blob being written.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Throw away what is there and start from byte 0 (the server did not
    /// honour the range, or the bytes were bad).
    pub fn restart(&mut self) -> Result<(), BlobError> {
        self.file.set_len(0)?;
        std::io::Seek::rewind(&mut self.file)?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Append `buf`; more bytes than promised is an error.
    pub fn write(&mut self, buf: &[u8]) -> Result<(), BlobError> {
        let new_len = self.len + buf.len() as u64;
        if new_len > self.size {
            return Err(BlobError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: new_len,
            });
        }
        self.file.write_all(buf)?;
        self.hasher.update(buf);
        self.len = new_len;
        Ok(())
    }

    /// Check size and digest, then move the blob into the cache. On a
    /// digest mismatch the partial file is deleted (the next pull starts
    /// over); on a short blob it is kept (the next pull resumes).
    pub fn commit(self) -> Result<u64, BlobError> {
        if self.len != self.size {
            return Err(BlobError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.len,
            });
        }
        let actual = Digest::of(self.hasher.clone());
        if actual != self.digest {
            let _ = fs_err::remove_file(&self.path);
            return Err(BlobError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        self.file.sync_all()?;
        fs_err::rename(&self.path, &self.final_path)?;
        if let Some(dir) = self.final_path.parent() {
            sync_dir(dir)?;
        }
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let d = tempfile::tempdir().unwrap();
        let s = BlobStore::new(&MvmHome::new(d.path()));
        (d, s)
    }

    #[test]
    fn digests_parse_strictly() {
        let ok = format!("sha256:{}", "0a".repeat(32));
        assert_eq!(Digest::parse(&ok).unwrap().hex(), "0a".repeat(32));
        for bad in [
            "sha256:abc".to_owned(),
            format!("sha512:{}", "0".repeat(128)),
            format!("sha256:{}", "A".repeat(64)),
            "0".repeat(64),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn download_resumes_and_verifies() {
        let (_d, s) = store();
        let data = b"hello blob world".repeat(1000);
        let d = Digest::of_bytes(&data);
        let mut p = s.begin(&d, data.len() as u64).unwrap();
        p.write(&data[..5000]).unwrap();
        drop(p); // interrupted
        let mut p = s.begin(&d, data.len() as u64).unwrap();
        assert_eq!(p.offset(), 5000);
        p.write(&data[5000..]).unwrap();
        assert_eq!(p.commit().unwrap(), data.len() as u64);
        assert_eq!(s.read(&d).unwrap(), data);
        assert!(!s.partial_path(&d).exists());
    }

    #[test]
    fn bad_content_is_refused_and_forgotten() {
        let (_d, s) = store();
        let d = Digest::of_bytes(b"good");
        let mut p = s.begin(&d, 4).unwrap();
        p.write(b"evil").unwrap();
        let e = p.commit().unwrap_err();
        assert!(matches!(e, BlobError::DigestMismatch { .. }), "{e}");
        assert!(s.size(&d).is_none());
        assert!(!s.partial_path(&d).exists());
        let mut p = s.begin(&d, 4).unwrap();
        assert_eq!(p.offset(), 0);
        assert!(matches!(
            p.write(b"toolong").unwrap_err(),
            BlobError::SizeMismatch { .. }
        ));
        drop(p); // releases its lock
        let mut p = s.begin(&d, 4).unwrap();
        p.write(b"go").unwrap();
        assert!(matches!(
            p.commit().unwrap_err(),
            BlobError::SizeMismatch { .. }
        ));
    }

    #[test]
    fn insert_and_gc() {
        let (_d, s) = store();
        let (a, n) = s.insert(&mut &b"aaa"[..], None).unwrap();
        assert_eq!(n, 3);
        let (b, _) = s
            .insert(&mut &b"bbb"[..], Some(&Digest::of_bytes(b"bbb")))
            .unwrap();
        assert!(
            s.insert(&mut &b"ccc"[..], Some(&Digest::of_bytes(b"xxx")))
                .is_err()
        );
        let keep = BTreeSet::from([a.to_string()]);
        let r = s.gc(&keep).unwrap().unwrap();
        assert_eq!((r.blobs, r.bytes), (1, 3));
        assert!(s.size(&a).is_some());
        assert!(s.size(&b).is_none());
        // A pull in progress blocks collection.
        let _shared = s.lock_shared().unwrap();
        assert_eq!(s.gc(&BTreeSet::new()).unwrap(), None);
        assert!(s.size(&a).is_some());
    }
}
