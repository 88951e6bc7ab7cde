//! File operations every crate needs the same way.

use std::path::Path;

/// Remove the file (or symlink, or socket) at `path`; one that is not
/// there is fine (releases are idempotent). Other errors name the path
/// (`fs_err`).
pub fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match fs_err::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_a_file_and_accepts_its_absence_but_not_other_errors() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs_err::write(&f, b"x").unwrap();
        remove_if_exists(&f).unwrap();
        assert!(!f.exists());
        remove_if_exists(&f).unwrap();
        // A directory is not a file: that error is kept.
        let e = remove_if_exists(t.path()).unwrap_err();
        assert!(
            e.to_string().contains(&t.path().display().to_string()),
            "{e}"
        );
    }
}
