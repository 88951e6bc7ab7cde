//! Shared test helpers.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the e2fsprogs tools are present; prints SKIPPED otherwise.
pub fn have_e2fsprogs(test: &str) -> bool {
    for tool in ["mkfs.ext4", "debugfs", "e2fsck", "e2label"] {
        let found = Command::new(tool).arg("-V").output().is_ok();
        if !found {
            mvm_core::testing::skip(&format!(
                "SKIPPED: {test}: {tool} is not installed (apt-get install e2fsprogs)"
            ));
            return false;
        }
    }
    true
}

/// Whether we run as root (chown tests need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `cp -a SRC/. DST` (DST created).
pub fn copy_tree(src: &Path, dst: &Path) {
    fs_err::create_dir_all(dst).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(src.join("."))
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
}

/// One entry of a tree, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Directory with mode.
    Dir(u32),
    /// File with mode and content.
    File(u32, Vec<u8>),
    /// Symlink with target.
    Link(PathBuf),
}

/// Every entry below `root` (not following symlinks), by relative path,
/// without the top-level lost+found.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs_err::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            if rel == Path::new("lost+found") {
                continue;
            }
            let m = fs_err::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            let entry = if m.file_type().is_symlink() {
                Entry::Link(fs_err::read_link(&p).unwrap())
            } else if m.is_dir() {
                stack.push(p.clone());
                Entry::Dir(mode)
            } else {
                Entry::File(mode, fs_err::read(&p).unwrap())
            };
            out.insert(rel, entry);
        }
    }
    out
}

/// The uid of `path` (not following symlinks).
pub fn uid_of(path: &Path) -> u32 {
    fs_err::symlink_metadata(path).unwrap().uid()
}

/// Write `content` to `path` with `mode`, creating parents.
pub fn put(path: &Path, content: &[u8], mode: u32) {
    if let Some(p) = path.parent() {
        fs_err::create_dir_all(p).unwrap();
    }
    fs_err::write(path, content).unwrap();
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The mode bits of a file on the host.
pub fn mode_of(path: &Path) -> u32 {
    fs_err::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The label of an ext4 image.
pub fn label_of(image: &Path) -> String {
    let out = Command::new("e2label").arg(image).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
