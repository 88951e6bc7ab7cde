//! File integrity: a content digest taken once when a template is
//! committed ([`content_digest`]), and a cheap stat fingerprint checked on
//! every use.
//!
//! The digest is a SHA-256 over the file's non-zero 64 KiB chunks, each
//! with its index, and the length: the same for a sparse file and for its
//! non-sparse copy, but it reads only the allocated extents (`SEEK_DATA`)
//! — a template's 512 MiB memory file has ~140 MiB of data, its 1 GiB disk
//! ~30 MiB.
//!
//! The fingerprint is size, mtime, ctime and inode number. Any write,
//! truncation, `chmod`, rename over the file or copy changes at least one
//! of them, and userland cannot set ctime back. So a matching fingerprint
//! means the file is the one that was hashed (fast path, microseconds);
//! a different one means "maybe changed": the content is hashed again and
//! only a different hash is corruption (a backup restored elsewhere keeps
//! working, at the cost of one full read).

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the fast check compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Length in bytes.
    pub bytes: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

impl Fingerprint {
    /// The fingerprint of `path` now.
    pub fn of(path: &Path) -> std::io::Result<Fingerprint> {
        use std::os::unix::fs::MetadataExt;
        let m = fs_err::metadata(path)?;
        Ok(Fingerprint {
            bytes: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
        })
    }
}

/// Size of the chunks [`content_digest`] hashes.
const CHUNK: u64 = 64 << 10;

/// The content digest of `path` (see the module docs), lowercase hex.
pub fn content_digest(path: &Path) -> std::io::Result<String> {
    use rustix::fs::{SeekFrom, seek};
    use std::os::unix::fs::FileExt;
    let f = fs_err::File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0u64;
    while pos < len {
        // The next data extent (a hole reads as zeros: skipped).
        let data = match seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = seek(&f, SeekFrom::Hole(data)).map_err(std::io::Error::from)?;
        let mut chunk = data / CHUNK;
        while chunk * CHUNK < hole {
            let off = chunk * CHUNK;
            let n = (len - off).min(CHUNK) as usize;
            f.file().read_exact_at(&mut buf[..n], off)?;
            if buf[..n].iter().any(|b| *b != 0) {
                h.update(chunk.to_le_bytes());
                h.update((n as u32).to_le_bytes());
                h.update(&buf[..n]);
            }
            chunk += 1;
        }
        pos = (chunk * CHUNK).max(hole);
    }
    h.update(len.to_le_bytes());
    Ok(hex::encode(h.finalize()))
}

/// SHA-256 of the content of `path`, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs_err::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_sha256sum_and_fingerprint_sees_writes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        fs_err::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let a = Fingerprint::of(&p).unwrap();
        assert_eq!(a, Fingerprint::of(&p).unwrap());
        fs_err::write(&p, b"abd").unwrap();
        assert_ne!(a, Fingerprint::of(&p).unwrap());
    }

    #[test]
    fn content_digest_ignores_sparseness_and_sees_every_byte() {
        use std::io::{Seek, SeekFrom, Write};
        let t = tempfile::tempdir().unwrap();
        let sparse = t.path().join("s");
        let mut f = fs_err::File::create(&sparse).unwrap();
        f.set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(&[7; 100_000]).unwrap();
        drop(f);
        let dense = t.path().join("d");
        fs_err::write(&dense, fs_err::read(&sparse).unwrap()).unwrap();
        let a = content_digest(&sparse).unwrap();
        assert_eq!(a, content_digest(&dense).unwrap());
        // One byte changed, in data or in a hole, or a different length.
        for (off, byte) in [(3 << 20, 8u8), (6 << 20, 1u8)] {
            let c = t.path().join(format!("c{off}"));
            let mut bytes = fs_err::read(&sparse).unwrap();
            bytes[off] = byte;
            fs_err::write(&c, bytes).unwrap();
            assert_ne!(a, content_digest(&c).unwrap(), "change at {off}");
        }
        let f = fs_err::OpenOptions::new().write(true).open(&dense).unwrap();
        f.set_len((8 << 20) + 1).unwrap();
        assert_ne!(a, content_digest(&dense).unwrap());
    }
}
