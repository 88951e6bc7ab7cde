//! The initramfs: an uncompressed newc cpio archive of a tree.
//!
//! # Format
//!
//! "newc" (`070701`) entries, each a 110-byte ASCII-hex header, the NUL
//! terminated name and the data, both padded to 4 bytes, closed by a
//! `TRAILER!!!` entry (the kernel's `Documentation/driver-api/early-userspace/
//! buffer-format.rst`). Written with the `cpio` crate.
//!
//! The output is deterministic so that its digest is stable: entries sorted
//! by path (parents before children), owner 0:0, mtime 0, inode numbers
//! assigned in order, each file stored once (no hard links).
//!
//! Device nodes are not in the host tree (creating them needs root): the
//! writer adds `/dev/console` (char 5:1, without it PID 1 has no stdout) and
//! `/dev/null` (char 1:3).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Writing the archive failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write initramfs {path}")]
pub struct InitramfsError {
    /// The archive (or the tree file being read).
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: std::io::Error,
}

enum Entry {
    Dir(u32),
    File(u32, PathBuf),
    Symlink(Vec<u8>),
    CharDev(u32, u32, u32),
}

/// Write `tree` (plus the console and null device nodes) as a newc cpio
/// archive at `dest`. Returns the archive's size in bytes.
pub fn write_cpio(tree: &Path, dest: &Path) -> Result<u64, InitramfsError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| InitramfsError { path, source }
    };
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for (rel, meta) in crate::tree::walk(tree).map_err(err(tree))? {
        let name = rel.to_string_lossy().into_owned();
        let ft = meta.file_type();
        let e = if ft.is_dir() {
            Entry::Dir(meta.mode() & 0o7777)
        } else if ft.is_symlink() {
            let target = fs_err::read_link(tree.join(&rel)).map_err(err(tree))?;
            Entry::Symlink(target.into_os_string().into_encoded_bytes())
        } else if ft.is_file() {
            Entry::File(meta.mode() & 0o7777, tree.join(&rel))
        } else {
            continue;
        };
        entries.insert(name, e);
    }
    entries.insert("dev/console".into(), Entry::CharDev(0o600, 5, 1));
    entries.insert("dev/null".into(), Entry::CharDev(0o666, 1, 3));
    // A path's parents sort before it only if '/' sorts first: order by
    // components instead of by raw string.
    let mut names: Vec<&String> = entries.keys().collect();
    names.sort_by(|a, b| a.split('/').cmp(b.split('/')));

    let file = fs_err::File::create(dest).map_err(err(dest))?;
    let mut w = std::io::BufWriter::new(file);
    for (i, name) in names.into_iter().enumerate() {
        let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let b = cpio::newc::Builder::new(name)
            .ino(ino)
            .uid(0)
            .gid(0)
            .mtime(0);
        match &entries[name] {
            Entry::Dir(perm) => {
                b.mode(0o040_000 | perm)
                    .nlink(2)
                    .write(&mut w, 0)
                    .finish()
                    .map_err(err(dest))?;
            }
            Entry::Symlink(target) => {
                let mut cw = b
                    .mode(0o120_777)
                    .nlink(1)
                    .write(&mut w, u32::try_from(target.len()).unwrap_or(u32::MAX));
                cw.write_all(target).map_err(err(dest))?;
                cw.finish().map_err(err(dest))?;
            }
            Entry::CharDev(perm, major, minor) => {
                b.mode(0o020_000 | perm)
                    .nlink(1)
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .write(&mut w, 0)
                    .finish()
                    .map_err(err(dest))?;
            }
            Entry::File(perm, src) => {
                let bytes = fs_err::read(src).map_err(err(src))?;
                let len = u32::try_from(bytes.len())
                    .map_err(|_| std::io::Error::other("file larger than 4 GiB"))
                    .map_err(err(src))?;
                let mut cw = b.mode(0o100_000 | perm).nlink(1).write(&mut w, len);
                cw.write_all(&bytes).map_err(err(dest))?;
                cw.finish().map_err(err(dest))?;
            }
        }
    }
    let mut w = cpio::newc::trailer(w).map_err(err(dest))?;
    w.flush().map_err(err(dest))?;
    w.get_ref().sync_all().map_err(err(dest))?;
    Ok(fs_err::metadata(dest).map_err(err(dest))?.len())
}

/// One entry of an archive as read back (for tests and checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    /// The path inside the archive.
    pub name: String,
    /// The full mode (type and permission bits).
    pub mode: u32,
    /// Device major/minor for device nodes.
    pub rdev: (u32, u32),
    /// Data size.
    pub size: u32,
}

/// List a newc archive's entries.
pub fn list(archive: &Path) -> Result<Vec<ListedEntry>, InitramfsError> {
    let err = |source| InitramfsError {
        path: archive.to_owned(),
        source,
    };
    let mut r = std::io::BufReader::new(fs_err::File::open(archive).map_err(err)?);
    let mut out = Vec::new();
    loop {
        let reader = cpio::newc::Reader::new(r).map_err(err)?;
        let e = reader.entry();
        if e.is_trailer() {
            break;
        }
        out.push(ListedEntry {
            name: e.name().to_owned(),
            mode: e.mode(),
            rdev: (e.rdev_major(), e.rdev_minor()),
            size: e.file_size(),
        });
        r = reader.finish().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_sorted_deterministic_archive_with_devices() {
        let t = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(t.path().join("dev")).unwrap();
        fs_err::create_dir_all(t.path().join("a-b/c")).unwrap();
        fs_err::write(t.path().join("a-b/c/f"), b"hello").unwrap();
        fs_err::create_dir_all(t.path().join("a")).unwrap();
        fs_err::os::unix::fs::symlink("/bin/busybox", t.path().join("a/sh")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let one = out.path().join("1.cpio");
        let two = out.path().join("2.cpio");
        write_cpio(t.path(), &one).unwrap();
        // Touch a file's mtime: output must not change.
        fs_err::write(t.path().join("a-b/c/f"), b"hello").unwrap();
        write_cpio(t.path(), &two).unwrap();
        assert_eq!(fs_err::read(&one).unwrap(), fs_err::read(&two).unwrap());

        let entries = list(&one).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "a/sh",
                "a-b",
                "a-b/c",
                "a-b/c/f",
                "dev",
                "dev/console",
                "dev/null"
            ]
        );
        let console = &entries[6];
        assert_eq!(console.mode & 0o170_000, 0o020_000);
        assert_eq!(console.rdev, (5, 1));
        assert_eq!(entries[1].mode & 0o170_000, 0o120_000);
        assert_eq!(entries[4].size, 5);
    }
}
