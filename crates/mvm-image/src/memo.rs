//! Values computed from host files, remembered across runs while the files
//! are unchanged (git's index does the same with `stat` data).
//!
//! Every `mvm run` of the default image computes the image's digest from
//! its inputs: the sha256 of the host's busybox and the kernel modules
//! resolved from `modules.dep` (together ~6 ms per run). Each value is kept
//! in `$MVM_HOME/cache/memo-<name>.json` with the fingerprint of the files
//! it came from (device, inode, size, mtime and ctime in nanoseconds); a
//! different fingerprint — any write, replacement or metadata change of one
//! of the files — recomputes it. An unreadable or corrupt memo is
//! recomputed and rewritten.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The stat fingerprint of `files` (`-` for a missing one).
fn fingerprint(files: &[&Path]) -> String {
    files
        .iter()
        .map(|f| match fs_err::metadata(f) {
            Ok(m) => format!(
                "{}:{}:{}:{}.{}:{}.{}",
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ),
            Err(_) => "-".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `compute()`, or the value remembered as `name` in `cache` when `files`
/// are unchanged since it was computed.
pub(crate) fn remember<T, E>(
    cache: &Path,
    name: &str,
    files: &[&Path],
    compute: impl FnOnce() -> Result<T, E>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
{
    #[derive(serde::Deserialize)]
    struct Stored<T> {
        fingerprint: String,
        value: T,
    }
    #[derive(Serialize)]
    struct Storing<'a, T> {
        fingerprint: &'a str,
        value: &'a T,
    }
    let path = cache.join(format!("memo-{name}.json"));
    let fp = fingerprint(files);
    if let Ok(bytes) = fs_err::read(&path)
        && let Ok(s) = serde_json::from_slice::<Stored<T>>(&bytes)
        && s.fingerprint == fp
    {
        return Ok(s.value);
    }
    let value = compute()?;
    // A fingerprint taken before the computation: a file changed meanwhile
    // never matches it again. Failing to remember is not an error.
    if let Ok(json) = serde_json::to_vec(&Storing {
        fingerprint: &fp,
        value: &value,
    }) && fs_err::create_dir_all(cache).is_ok()
    {
        let _ = mvm_core::atomic::write_atomic(&path, &json, 0o644);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_recomputed_only_when_a_file_changes() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("input");
        fs_err::write(&f, "one").unwrap();
        let calls = std::cell::Cell::new(0);
        let get = || {
            remember(t.path(), "x", &[&f], || {
                calls.set(calls.get() + 1);
                fs_err::read_to_string(&f)
            })
            .unwrap()
        };
        assert_eq!(get(), "one");
        assert_eq!(get(), "one");
        assert_eq!(calls.get(), 1);
        fs_err::write(&f, "two").unwrap();
        assert_eq!(get(), "two");
        assert_eq!(calls.get(), 2);
        // A corrupt memo is recomputed.
        fs_err::write(t.path().join("memo-x.json"), "{").unwrap();
        assert_eq!(get(), "two");
        assert_eq!(calls.get(), 3);
    }
}
