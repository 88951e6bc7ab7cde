//! Atomic file writes: write a temporary file beside the target, fsync it,
//! then rename it over the target (uv's `write_atomic_sync`). A crash leaves
//! either the old or the new content, never a torn file.
//!
//! The directory is fsynced only when the write creates the name: a
//! replacement needs its data on disk before the rename (so the name never
//! points at unwritten data) but not the rename itself, since after a
//! power loss the name holds the old content or the new, both whole and
//! the old one durable already. (Records are rewritten several times per
//! start; each directory fsync cost 0.1–0.4 ms.)

use std::io::Write;
use std::path::{Path, PathBuf};

/// An atomic write failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path} atomically")]
pub struct AtomicWriteError {
    /// The file that was to be written.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: std::io::Error,
}

/// Replace `path` with `contents` atomically, with file mode `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| AtomicWriteError {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    tmp.write_all(contents).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    let replaces = std::fs::symlink_metadata(path).is_ok();
    tmp.persist(path).map_err(|e| err(e.error))?;
    if !replaces {
        // Make the new name durable.
        if let Ok(d) = fs_err::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// [`write_atomic`] without the fsyncs: readers still see the old or the
/// new content, never a torn file, but after a power loss the file may be
/// empty or missing. For state that does not outlive its process anyway
/// (the record of a transient machine), where the two fsyncs would be on
/// the critical path of every command.
pub fn write_atomic_volatile(
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), AtomicWriteError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| AtomicWriteError {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    tmp.write_all(contents).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs_err::read_to_string(&p).unwrap(), "two");
        let mode = fs_err::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary files are left beside it.
        let names: Vec<_> = fs_err::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
