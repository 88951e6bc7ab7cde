//! File integrity: a SHA-256 of the whole content (what `sha256sum`
//! prints) taken once when a template is committed, and a cheap stat
//! fingerprint checked on every use.
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
}
