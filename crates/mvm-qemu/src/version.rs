//! The QEMU version, cached per binary.
//!
//! Snapshots are tagged with the first line of `qemu-system-x86_64
//! --version`, and every launch needs it to check a restore. Running it
//! costs 40–70 ms here (QEMU links ~100 shared libraries before it prints a
//! line) — more than the whole restore of a clone. So the answer is kept in
//! a small JSON file with the binary's identity (path, size, mtime, inode):
//! a replaced or upgraded binary has another identity and is asked again.

use std::path::{Path, PathBuf};

use mvm_core::backend::BackendError;
use serde::{Deserialize, Serialize};

/// What identifies one build of the binary on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BinaryId {
    path: PathBuf,
    bytes: u64,
    mtime_ns: i64,
    ino: u64,
}

impl BinaryId {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let path = fs_err::canonicalize(path).ok()?;
        let m = fs_err::metadata(&path).ok()?;
        Some(Self {
            path,
            bytes: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ino: m.ino(),
        })
    }
}

/// The cache file's content.
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    binary: BinaryId,
    version: String,
}

/// The version of `binary`, from `cache` when it names this very binary,
/// else by running it (and then remembered in `cache`; a cache that cannot
/// be written is only a missed optimisation).
pub fn cached_version(binary: &Path, cache: &Path) -> Result<String, BackendError> {
    let id = BinaryId::of(binary);
    if let Some(id) = &id
        && let Ok(bytes) = fs_err::read(cache)
        && let Ok(c) = serde_json::from_slice::<Cached>(&bytes)
        && &c.binary == id
    {
        return Ok(c.version);
    }
    let version = crate::backend::binary_version(binary)?;
    if let Some(binary) = id {
        let json = serde_json::to_vec(&Cached {
            binary,
            version: version.clone(),
        })
        .expect("plain data serialises");
        if let Some(dir) = cache.parent() {
            let _ = fs_err::create_dir_all(dir);
        }
        if let Err(e) = mvm_core::atomic::write_atomic(cache, &json, 0o644) {
            tracing::debug!("cannot cache the QEMU version: {e}");
        }
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_used_only_for_the_same_binary() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("qemu");
        let script = "#!/bin/sh\necho \"QEMU emulator version $(cat $0.v)\"\n";
        fs_err::write(&bin, script).unwrap();
        fs_err::write(t.path().join("qemu.v"), "1").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = t.path().join("cache/v.json");
        assert_eq!(
            cached_version(&bin, &cache).unwrap(),
            "QEMU emulator version 1"
        );
        // Cached: the binary is not asked again.
        fs_err::write(t.path().join("qemu.v"), "2").unwrap();
        assert_eq!(
            cached_version(&bin, &cache).unwrap(),
            "QEMU emulator version 1"
        );
        // Another binary at the same path: asked again.
        fs_err::remove_file(&bin).unwrap();
        fs_err::write(&bin, format!("{script}\n")).unwrap();
        fs_err::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            cached_version(&bin, &cache).unwrap(),
            "QEMU emulator version 2"
        );
    }
}
