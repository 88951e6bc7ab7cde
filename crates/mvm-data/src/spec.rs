//! Parsers for the data-related command-line arguments, and the encoding of
//! guest mounts on the kernel command line.
//!
//! | flag | syntax | default mode |
//! | --- | --- | --- |
//! | `-e` | `KEY=VAL` (`KEY` is `[A-Za-z_][A-Za-z0-9_]*`; `VAL` may be empty or contain `=`) | |
//! | `--add-dir` | `HOST:GUEST[:ro\|rw]` | `ro` |
//! | `-v` | `HOST_DIR:GUEST[:ro\|rw]` or `NAME:GUEST[:ro\|rw]` | `rw` |
//! | `--secret` | `KEY=FILE` (`KEY` is `[A-Za-z0-9_.-]+`, not `.` or `..`) | |
//!
//! Splitting rules for `HOST:GUEST[:MODE]` (shared by `--add-dir` and `-v`):
//! the **first** `:` separates the host side from the rest; if the rest
//! still contains a `:`, the text after the **last** `:` is the mode token,
//! which must be `ro` or `rw` (anything else is an error naming the token).
//! So a host path may not contain `:`, and neither may a guest path.
//!
//! Host paths: `~` and `~/...` are expanded with the given home directory
//! (`~user` is refused), relative paths are taken from the current
//! directory, and the result is canonicalised (symlinks resolved) and must
//! be an existing directory. Guest paths must be absolute, must not be `/`,
//! and must not contain `.` or `..` components; repeated and trailing
//! slashes are removed.
//!
//! A `-v` source is a **host path** when it contains `/` or starts with `.`
//! or `~`; otherwise it is a **volume name**, `[a-z0-9][a-z0-9_.-]*`, at most
//! 63 bytes.
//!
//! Guest mounts travel on the kernel command line as
//! `mvm.mount=LABEL,ro|rw,PATH` (one parameter per mount), where `PATH` is
//! percent-encoded (`%XX`) for every byte outside `[A-Za-z0-9/_.-]`; see
//! [`GuestMount::to_kernel_arg`]. No secret value ever goes there: only drive
//! labels and guest paths.

use std::path::{Component, Path, PathBuf};

/// A data argument was malformed. Every variant names the offending token.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `-e` without `=`.
    #[error("invalid environment variable {arg:?}: expected KEY=VALUE")]
    EnvMissingEquals {
        /// The whole argument (it has no value part).
        arg: String,
    },
    /// An environment variable name broke the rules.
    #[error(
        "invalid environment variable name {key:?}: names are letters, digits and '_', not starting with a digit"
    )]
    EnvBadKey {
        /// The rejected name.
        key: String,
    },
    /// `HOST:GUEST` without the `:`.
    #[error("invalid {flag} {arg:?}: expected HOST:GUEST[:ro|rw]")]
    MissingGuest {
        /// `--add-dir` or `-v`.
        flag: &'static str,
        /// The argument.
        arg: String,
    },
    /// The host side is empty.
    #[error("invalid {flag} {arg:?}: the host side is empty")]
    EmptyHost {
        /// `--add-dir` or `-v`.
        flag: &'static str,
        /// The argument.
        arg: String,
    },
    /// The mode token is neither `ro` nor `rw`.
    #[error("invalid {flag} {arg:?}: unknown mode {mode:?} (expected ro or rw)")]
    UnknownMode {
        /// `--add-dir` or `-v`.
        flag: &'static str,
        /// The argument.
        arg: String,
        /// The rejected token.
        mode: String,
    },
    /// A guest path broke the rules.
    #[error("invalid guest path {path:?}: {reason}")]
    BadGuestPath {
        /// The rejected path.
        path: String,
        /// Which rule.
        reason: &'static str,
    },
    /// `~user/...` is not supported.
    #[error("cannot expand {path:?}: only ~ and ~/... are supported")]
    TildeUser {
        /// The path.
        path: String,
    },
    /// `~` was used but no home directory is known.
    #[error("cannot expand {path:?}: no home directory is known")]
    NoHome {
        /// The path.
        path: String,
    },
    /// The host directory does not exist or cannot be resolved.
    #[error("host directory {path} does not exist or is not accessible")]
    HostMissing {
        /// The path (after `~` expansion).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host path is not a directory.
    #[error("host path {path} is not a directory")]
    HostNotDir {
        /// The path (resolved).
        path: PathBuf,
    },
    /// A volume name broke the rules.
    #[error(
        "invalid volume name {name:?}: names are 1-63 characters of a-z, 0-9, '_', '.' and '-', starting with a letter or digit (use a path with '/' for a host directory)"
    )]
    BadVolumeName {
        /// The rejected name.
        name: String,
    },
    /// `--secret` without `=`.
    #[error("invalid secret {arg:?}: expected KEY=FILE")]
    SecretMissingEquals {
        /// The argument.
        arg: String,
    },
    /// A secret key broke the rules.
    #[error(
        "invalid secret key {key:?}: keys are 1-255 characters of A-Z, a-z, 0-9, '_', '.' and '-', and not '.' or '..'"
    )]
    SecretBadKey {
        /// The rejected key.
        key: String,
    },
    /// The secret file cannot be read.
    #[error("secret {key:?}: cannot read {path}")]
    SecretUnreadable {
        /// The key.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The secret file is not a regular file.
    #[error("secret {key:?}: {path} is not a regular file")]
    SecretNotFile {
        /// The key.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// A drive label broke the ext4 rules.
    #[error(
        "invalid drive label {label:?}: labels are 1-16 bytes of A-Z, a-z, 0-9, '_', '.', '+' and '-'"
    )]
    BadLabel {
        /// The rejected label.
        label: String,
    },
    /// A `mvm.mount=` kernel parameter could not be decoded.
    #[error("invalid mount parameter {arg:?}: {reason}")]
    BadMountArg {
        /// The parameter value.
        arg: String,
        /// Which rule.
        reason: &'static str,
    },
}

/// Read-only or read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `ro`.
    Ro,
    /// `rw`.
    Rw,
}

impl Mode {
    /// `true` for [`Mode::Ro`].
    pub fn read_only(self) -> bool {
        self == Mode::Ro
    }
    /// `"ro"` or `"rw"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ro => "ro",
            Mode::Rw => "rw",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `-e KEY=VAL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The name.
    pub key: String,
    /// The value (may be empty, may contain `=`).
    pub value: String,
}

/// Whether `key` is a valid environment variable name.
pub fn is_env_key(key: &str) -> bool {
    let mut b = key.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl EnvVar {
    /// Parse `KEY=VAL`. `KEY` alone is an error (the value is never taken
    /// from mvm's own environment).
    pub fn parse(arg: &str) -> Result<Self, SpecError> {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(SpecError::EnvMissingEquals { arg: arg.into() });
        };
        if !is_env_key(key) {
            return Err(SpecError::EnvBadKey { key: key.into() });
        }
        Ok(Self {
            key: key.into(),
            value: value.into(),
        })
    }
}

/// Split `HOST:GUEST[:MODE]` per the module rules, without validating the
/// parts. Returns `(host, guest, mode token)`.
pub fn split_host_guest(
    flag: &'static str,
    arg: &str,
) -> Result<(String, String, Option<Mode>), SpecError> {
    let Some((host, rest)) = arg.split_once(':') else {
        return Err(SpecError::MissingGuest {
            flag,
            arg: arg.into(),
        });
    };
    if host.is_empty() {
        return Err(SpecError::EmptyHost {
            flag,
            arg: arg.into(),
        });
    }
    let (guest, mode) = match rest.rsplit_once(':') {
        None => (rest, None),
        Some((guest, token)) => {
            let mode = match token {
                "ro" => Mode::Ro,
                "rw" => Mode::Rw,
                other => {
                    return Err(SpecError::UnknownMode {
                        flag,
                        arg: arg.into(),
                        mode: other.into(),
                    });
                }
            };
            (guest, Some(mode))
        }
    };
    if guest.contains(':') {
        return Err(SpecError::BadGuestPath {
            path: guest.into(),
            reason: "guest paths cannot contain ':'",
        });
    }
    Ok((host.into(), guest.into(), mode))
}

/// Validate and normalise a guest path (see the module rules).
pub fn guest_path(raw: &str) -> Result<PathBuf, SpecError> {
    let bad = |reason| SpecError::BadGuestPath {
        path: raw.into(),
        reason,
    };
    if raw.is_empty() {
        return Err(bad("the guest path is empty"));
    }
    if !raw.starts_with('/') {
        return Err(bad("guest paths must be absolute"));
    }
    if raw.bytes().any(|b| b == 0) {
        return Err(bad("guest paths cannot contain NUL"));
    }
    let mut out = PathBuf::from("/");
    for part in raw.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(bad("guest paths cannot contain '.' or '..' components"));
        }
        out.push(part);
    }
    if out == Path::new("/") {
        return Err(bad("cannot mount over the guest's root directory"));
    }
    Ok(out)
}

/// Expand `~` and `~/...` with `home`; other paths are returned unchanged.
pub fn expand_tilde(raw: &str, home: Option<&Path>) -> Result<PathBuf, SpecError> {
    let Some(rest) = raw.strip_prefix('~') else {
        return Ok(PathBuf::from(raw));
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(SpecError::TildeUser { path: raw.into() });
    }
    let home = home.ok_or_else(|| SpecError::NoHome { path: raw.into() })?;
    Ok(home.join(rest.trim_start_matches('/')))
}

/// Expand, resolve and check a host directory.
pub fn host_dir(raw: &str, home: Option<&Path>) -> Result<PathBuf, SpecError> {
    let expanded = expand_tilde(raw, home)?;
    let resolved = std::fs::canonicalize(&expanded).map_err(|source| SpecError::HostMissing {
        path: expanded.clone(),
        source,
    })?;
    if !resolved.is_dir() {
        return Err(SpecError::HostNotDir { path: resolved });
    }
    Ok(resolved)
}

/// One `--add-dir HOST:GUEST[:ro|rw]` (transient `mvm exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddDir {
    /// The host directory, canonicalised.
    pub host: PathBuf,
    /// The absolute guest path.
    pub guest: PathBuf,
    /// `ro` (the default) or `rw` (written back after the command).
    pub mode: Mode,
}

impl AddDir {
    /// Parse and check (the host directory must exist). `home` expands `~`.
    pub fn parse(arg: &str, home: Option<&Path>) -> Result<Self, SpecError> {
        let (host, guest, mode) = split_host_guest("--add-dir", arg)?;
        let guest = guest_path(&guest)?;
        let host = host_dir(&host, home)?;
        Ok(Self {
            host,
            guest,
            mode: mode.unwrap_or(Mode::Ro),
        })
    }
}

/// Whether `name` is a valid volume name.
pub fn is_volume_name(name: &str) -> bool {
    let mut b = name.bytes();
    name.len() <= 63
        && matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'.' || c == b'-'
        })
}

/// One `-v SRC:GUEST[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// A host directory, copied into an image at start and written back at
    /// stop when `rw`.
    HostDir {
        /// The host directory, canonicalised.
        host: PathBuf,
        /// The absolute guest path.
        guest: PathBuf,
        /// Default `rw`.
        mode: Mode,
    },
    /// A named persistent volume under `$MVM_HOME/volumes`.
    Named {
        /// The volume name.
        name: String,
        /// The absolute guest path.
        guest: PathBuf,
        /// Default `rw`.
        mode: Mode,
    },
}

impl Volume {
    /// Parse and check (a host directory must exist). `home` expands `~`.
    pub fn parse(arg: &str, home: Option<&Path>) -> Result<Self, SpecError> {
        let (src, guest, mode) = split_host_guest("-v", arg)?;
        let guest = guest_path(&guest)?;
        let mode = mode.unwrap_or(Mode::Rw);
        if src.contains('/') || src.starts_with('.') || src.starts_with('~') {
            Ok(Self::HostDir {
                host: host_dir(&src, home)?,
                guest,
                mode,
            })
        } else if is_volume_name(&src) {
            Ok(Self::Named {
                name: src,
                guest,
                mode,
            })
        } else {
            Err(SpecError::BadVolumeName { name: src })
        }
    }

    /// The guest path.
    pub fn guest(&self) -> &Path {
        match self {
            Self::HostDir { guest, .. } | Self::Named { guest, .. } => guest,
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        match self {
            Self::HostDir { mode, .. } | Self::Named { mode, .. } => *mode,
        }
    }
}

/// Whether `key` is a valid secret key (it becomes a file name).
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 255
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// One `--secret KEY=FILE`. Holds the path only, never the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// The key (file name under `/mnt/secrets`).
    pub key: String,
    /// The host file holding the value.
    pub file: PathBuf,
}

impl Secret {
    /// Parse and check that the file is a readable regular file (it is
    /// opened, not read). `home` expands `~`.
    pub fn parse(arg: &str, home: Option<&Path>) -> Result<Self, SpecError> {
        let Some((key, file)) = arg.split_once('=') else {
            return Err(SpecError::SecretMissingEquals { arg: arg.into() });
        };
        if !is_secret_key(key) {
            return Err(SpecError::SecretBadKey { key: key.into() });
        }
        let file = expand_tilde(file, home)?;
        check_readable_file(key, &file)?;
        Ok(Self {
            key: key.into(),
            file,
        })
    }
}

pub(crate) fn check_readable_file(key: &str, file: &Path) -> Result<(), SpecError> {
    let unreadable = |source: std::io::Error| SpecError::SecretUnreadable {
        key: key.into(),
        path: file.into(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .open(file)
        .map_err(unreadable)?;
    let meta = f.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(SpecError::SecretNotFile {
            key: key.into(),
            path: file.into(),
        });
    }
    Ok(())
}

/// Whether `label` is usable as an ext4 label and in a `mvm.mount=`
/// parameter.
pub fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 16
        && label
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'+' | b'-'))
}

/// The kernel parameter name that carries one [`GuestMount`].
pub const MOUNT_PARAM: &str = "mvm.mount";

/// A mount the guest agent performs at boot: the ext4 drive labelled
/// `source_drive_label` at `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    /// The ext4 label of the drive (≤ 16 bytes).
    pub source_drive_label: String,
    /// The absolute guest directory.
    pub guest_path: PathBuf,
    /// Mount read-only.
    pub read_only: bool,
}

fn keep_raw(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'-')
}

impl GuestMount {
    /// `mvm.mount=LABEL,ro|rw,PATH` (percent-encoded path).
    pub fn to_kernel_arg(&self) -> Result<String, SpecError> {
        use std::os::unix::ffi::OsStrExt;
        if !is_label(&self.source_drive_label) {
            return Err(SpecError::BadLabel {
                label: self.source_drive_label.clone(),
            });
        }
        let mut path = String::new();
        for &b in self.guest_path.as_os_str().as_bytes() {
            if keep_raw(b) {
                path.push(b as char);
            } else {
                path.push_str(&format!("%{b:02X}"));
            }
        }
        let mode = if self.read_only { "ro" } else { "rw" };
        Ok(format!(
            "{MOUNT_PARAM}={},{mode},{path}",
            self.source_drive_label
        ))
    }

    /// Decode the value of one `mvm.mount=` parameter (without the
    /// `mvm.mount=` prefix).
    pub fn from_kernel_value(value: &str) -> Result<Self, SpecError> {
        use std::os::unix::ffi::OsStringExt;
        let bad = |reason| SpecError::BadMountArg {
            arg: value.into(),
            reason,
        };
        let mut parts = value.splitn(3, ',');
        let (Some(label), Some(mode), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected LABEL,ro|rw,PATH"));
        };
        if !is_label(label) {
            return Err(bad("bad label"));
        }
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            _ => return Err(bad("mode must be ro or rw")),
        };
        let raw = path.as_bytes();
        let mut bytes = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'%' {
                let hex = raw.get(i + 1..i + 3).ok_or_else(|| bad("truncated %XX"))?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad("bad %XX"))?;
                bytes.push(u8::from_str_radix(hex, 16).map_err(|_| bad("bad %XX"))?);
                i += 3;
            } else if keep_raw(raw[i]) {
                bytes.push(raw[i]);
                i += 1;
            } else {
                return Err(bad("unencoded byte in path"));
            }
        }
        let guest_path = PathBuf::from(std::ffi::OsString::from_vec(bytes));
        if !guest_path.is_absolute()
            || guest_path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(bad("path must be absolute, without '.' or '..'"));
        }
        Ok(Self {
            source_drive_label: label.into(),
            guest_path,
            read_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn env_vars() {
        let e = EnvVar::parse("A_1=x=y").unwrap();
        assert_eq!((e.key.as_str(), e.value.as_str()), ("A_1", "x=y"));
        assert_eq!(EnvVar::parse("_=").unwrap().value, "");
        assert!(matches!(
            EnvVar::parse("KEY"),
            Err(SpecError::EnvMissingEquals { arg }) if arg == "KEY"
        ));
        for bad in ["=v", "1A=v", "A-B=v", "A B=v", "É=v"] {
            let err = EnvVar::parse(bad).unwrap_err();
            let key = bad.split_once('=').unwrap().0;
            assert!(
                matches!(&err, SpecError::EnvBadKey { key: k } if k == key),
                "{bad}: {err}"
            );
        }
        // The value never appears in the error for a bad key.
        let err = EnvVar::parse("1X=supersecret").unwrap_err().to_string();
        assert!(!err.contains("supersecret"), "{err}");
    }

    #[test]
    fn add_dir_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().canonicalize().unwrap();
        fs_err::create_dir(home.join("proj")).unwrap();
        fs_err::write(home.join("file"), "x").unwrap();

        let a = AddDir::parse("~/proj:/work", Some(&home)).unwrap();
        assert_eq!(a.host, home.join("proj"));
        assert_eq!(a.guest, Path::new("/work"));
        assert_eq!(a.mode, Mode::Ro);
        let a = AddDir::parse("~:/w//x/:rw", Some(&home)).unwrap();
        assert_eq!(
            (a.host, a.guest, a.mode),
            (home.clone(), "/w/x".into(), Mode::Rw)
        );
        let a = AddDir::parse(&format!("{}:/w:ro", home.display()), None).unwrap();
        assert_eq!(a.mode, Mode::Ro);

        let err = AddDir::parse("~/proj:/w:rx", Some(&home)).unwrap_err();
        assert!(
            matches!(&err, SpecError::UnknownMode { mode, .. } if mode == "rx"),
            "{err}"
        );
        assert!(err.to_string().contains("\"rx\""), "{err}");
        let err = AddDir::parse("~/nope:/w", Some(&home)).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(matches!(err, SpecError::HostMissing { .. }));
        let err = AddDir::parse("~/file:/w", Some(&home)).unwrap_err();
        assert!(matches!(err, SpecError::HostNotDir { .. }), "{err}");
        for (arg, reason) in [
            ("~/proj:w", "absolute"),
            ("~/proj:", "empty"),
            ("~/proj:/", "root"),
            ("~/proj:/a/../b", ".."),
        ] {
            let err = AddDir::parse(arg, Some(&home)).unwrap_err().to_string();
            assert!(err.contains(reason), "{arg}: {err}");
        }
        assert!(matches!(
            AddDir::parse("~/proj", Some(&home)),
            Err(SpecError::MissingGuest { .. })
        ));
        assert!(matches!(
            AddDir::parse(":/w", Some(&home)),
            Err(SpecError::EmptyHost { .. })
        ));
        assert!(matches!(
            AddDir::parse("~bob/x:/w", Some(&home)),
            Err(SpecError::TildeUser { .. })
        ));
        assert!(matches!(
            AddDir::parse("~/x:/w", None),
            Err(SpecError::NoHome { .. })
        ));
    }

    #[test]
    fn volume_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let v = Volume::parse(&format!("{}:/data", dir.display()), None).unwrap();
        assert_eq!(
            v,
            Volume::HostDir {
                host: dir.clone(),
                guest: "/data".into(),
                mode: Mode::Rw
            }
        );
        let v = Volume::parse("db-1.x:/var/lib/db:ro", None).unwrap();
        assert_eq!(
            v,
            Volume::Named {
                name: "db-1.x".into(),
                guest: "/var/lib/db".into(),
                mode: Mode::Ro
            }
        );
        assert_eq!(v.mode(), Mode::Ro);
        assert_eq!(v.guest(), Path::new("/var/lib/db"));
        // '.'-prefixed and '~'-prefixed are paths, not names.
        assert!(matches!(
            Volume::parse(".nothere:/d", None),
            Err(SpecError::HostMissing { .. })
        ));
        let err = Volume::parse("Data:/d", None).unwrap_err();
        assert!(matches!(&err, SpecError::BadVolumeName { name } if name == "Data"));
        assert!(matches!(
            Volume::parse("_x:/d", None),
            Err(SpecError::BadVolumeName { .. })
        ));
        assert!(matches!(
            Volume::parse("x:/d:rwx", None),
            Err(SpecError::UnknownMode { .. })
        ));
    }

    #[test]
    fn secrets() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("tok");
        fs_err::write(&f, "hunter2").unwrap();
        let s = Secret::parse(&format!("API_KEY.v1={}", f.display()), None).unwrap();
        assert_eq!(s.key, "API_KEY.v1");
        assert_eq!(s.file, f);
        let s = Secret::parse("k=~/tok", Some(tmp.path())).unwrap();
        assert_eq!(s.file, f);
        for bad in ["a/b", ".", "..", "", "a b", "a+b"] {
            let err = Secret::parse(&format!("{bad}={}", f.display()), None).unwrap_err();
            assert!(
                matches!(&err, SpecError::SecretBadKey { key } if key == bad),
                "{err}"
            );
        }
        let err = Secret::parse("k=/nonexistent/x", None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x"), "{err}");
        let err = Secret::parse(&format!("k={}", tmp.path().display()), None).unwrap_err();
        assert!(matches!(err, SpecError::SecretNotFile { .. }), "{err}");
        assert!(matches!(
            Secret::parse("k", None),
            Err(SpecError::SecretMissingEquals { .. })
        ));
    }

    #[test]
    fn mount_arg_roundtrip() {
        let m = GuestMount {
            source_drive_label: "mvm-config".into(),
            guest_path: "/mnt/my dir,x%".into(),
            read_only: true,
        };
        let arg = m.to_kernel_arg().unwrap();
        assert_eq!(arg, "mvm.mount=mvm-config,ro,/mnt/my%20dir%2Cx%25");
        let value = arg.strip_prefix("mvm.mount=").unwrap();
        assert_eq!(GuestMount::from_kernel_value(value).unwrap(), m);
        assert!(GuestMount::from_kernel_value("x,rw,/a/../b").is_err());
        assert!(GuestMount::from_kernel_value("x,rx,/a").is_err());
        assert!(GuestMount::from_kernel_value("x,rw,/a b").is_err());
        assert!(GuestMount::from_kernel_value("x,rw,/a%2").is_err());
        let long = GuestMount {
            source_drive_label: "x".repeat(17),
            ..m
        };
        assert!(long.to_kernel_arg().is_err());
    }

    proptest! {
        #[test]
        fn splitter_roundtrip(
            host in "[^:]{1,20}",
            guest in "[^:]{0,20}",
            mode in proptest::option::of(prop_oneof![Just(Mode::Ro), Just(Mode::Rw)]),
        ) {
            let arg = match mode {
                Some(m) => format!("{host}:{guest}:{m}"),
                None => format!("{host}:{guest}"),
            };
            let (h, g, m) = split_host_guest("--add-dir", &arg).unwrap();
            prop_assert_eq!(h, host);
            prop_assert_eq!(g, guest);
            prop_assert_eq!(m, mode);
        }

        #[test]
        fn splitter_never_panics_and_is_consistent(arg in ".{0,40}") {
            if let Ok((h, g, m)) = split_host_guest("--add-dir", &arg) {
                prop_assert!(!h.is_empty() && !h.contains(':'));
                let joined = match m {
                    Some(m) => format!("{h}:{g}:{m}"),
                    None => format!("{h}:{g}"),
                };
                prop_assert_eq!(joined, arg);
                prop_assert!(!g.contains(':'));
            }
        }

        #[test]
        fn mount_arg_roundtrips(path in "/[^\\x00]{1,30}", ro in any::<bool>()) {
            let m = GuestMount {
                source_drive_label: "mvmvol-x".into(),
                guest_path: path.into(),
                read_only: ro,
            };
            let arg = m.to_kernel_arg().unwrap();
            prop_assert!(!arg.contains(' ') && !arg.contains('"'));
            let value = arg.strip_prefix("mvm.mount=").unwrap();
            prop_assert_eq!(GuestMount::from_kernel_value(value).ok().map(|g| g.guest_path), Some(m.guest_path).filter(|p| !p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir))));
        }

        #[test]
        fn mount_value_parser_never_panics(value in ".{0,40}") {
            let _ = GuestMount::from_kernel_value(&value);
        }

        #[test]
        fn guest_path_is_normalised(parts in proptest::collection::vec("[a-z .]{1,5}", 1..5)) {
            let raw = format!("/{}/", parts.join("//"));
            match guest_path(&raw) {
                Ok(p) => {
                    prop_assert!(p.is_absolute());
                    prop_assert!(p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
                    let s = p.to_str().unwrap();
                    prop_assert!(!s.contains("//") && !s.ends_with('/'));
                }
                Err(_) => prop_assert!(parts.iter().any(|p| p == "." || p == "..")),
            }
        }
    }
}
