//! ext4 drive images built from a directory, without mounting anything.
//!
//! Every image is made by `mkfs.ext4 -d DIR` (e2fsprogs ≥ 1.43):
//!
//! ```text
//! mkfs.ext4 -q -F -L LABEL -m 0 -E root_owner=0:0 [-O ^has_journal] -d DIR IMAGE SIZEk
//! ```
//!
//! `-O ^has_journal` is used for drives the guest mounts read-only (no
//! journal is needed and the space goes to data). The image is first
//! created as a mode-0600 temporary file beside its destination, sized
//! (sparse), filled by mkfs, fixed up, and then renamed over the
//! destination, so a reader never sees a half-built image and secret bytes
//! are never in a file anybody else can read.
//!
//! Two drives have a fixed layout:
//!
//! - the **config drive** (label [`CONFIG_LABEL`], mounted read-only at
//!   `/mnt/config`): `config.json` (a [`ConfigJson`]) plus user files, all
//!   mode 0444, owner 0:0;
//! - the **secrets drive** (label [`SECRETS_LABEL`], mounted read-only at
//!   `/mnt/secrets`, copied by the agent to a tmpfs): one file per key, mode
//!   0400, owner 0:0. Values are copied to a 0700 staging directory beside
//!   the image (never in `/tmp`), which is overwritten with zeros and
//!   removed whether the build succeeds or not. Neither values nor their
//!   sizes are logged, and no error carries a value.
//!
//! Owners are forced to 0:0 inside the image with `debugfs -w` (`sif PATH
//! uid 0`), so the result is the same whether mvm runs as root or not.

use crate::spec::{SpecError, check_readable_file, is_label, is_secret_key};
use crate::tool::{self, ToolError};
use fs_err::os::unix::fs::OpenOptionsExt;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The config drive's ext4 label.
pub const CONFIG_LABEL: &str = "mvm-config";
/// Where the guest mounts the config drive.
pub const CONFIG_MOUNT: &str = "/mnt/config";
/// The secrets drive's ext4 label.
pub const SECRETS_LABEL: &str = "mvm-secrets";
/// Where the guest exposes the secrets (a tmpfs copy of the drive).
pub const SECRETS_MOUNT: &str = "/mnt/secrets";
/// The file name of the config document on the config drive.
pub const CONFIG_JSON: &str = "config.json";
/// The smallest image built.
pub const MIN_SIZE_MIB: u64 = 16;

const MIB: u64 = 1 << 20;

/// Building a drive failed.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The label is not a valid ext4 label.
    #[error("invalid drive label {label:?}: 1-16 bytes of A-Z, a-z, 0-9, '_', '.', '+', '-'")]
    BadLabel {
        /// The label.
        label: String,
    },
    /// A file operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// mkfs.ext4 or debugfs failed.
    #[error("cannot build {image}")]
    Tool {
        /// The image being built.
        image: PathBuf,
        /// Why.
        #[source]
        source: ToolError,
    },
    /// The content does not fit in the requested size.
    #[error("content of {src} (~{needed_mib} MiB) does not fit in {size_mib} MiB")]
    TooSmall {
        /// The source directory.
        src: PathBuf,
        /// Estimated need.
        needed_mib: u64,
        /// Requested size.
        size_mib: u64,
    },
    /// A file name for the drive broke the rules.
    #[error(
        "invalid file name {name:?} for the {drive} drive: 1-255 characters of A-Z, a-z, 0-9, '_', '.', '-', not '.' or '..' (nor {CONFIG_JSON:?} on the config drive)"
    )]
    BadFileName {
        /// Which drive.
        drive: &'static str,
        /// The name.
        name: String,
    },
    /// The same name was given twice.
    #[error("{name:?} is given twice for the {drive} drive")]
    Duplicate {
        /// Which drive.
        drive: &'static str,
        /// The name.
        name: String,
    },
    /// A secret file cannot be used.
    #[error("cannot use a secret")]
    Secret(#[source] SpecError),
    /// `config.json` could not be serialised.
    #[error("cannot serialise config.json")]
    Json(#[source] serde_json::Error),
    /// A `debugfs stat` answer could not be understood.
    #[error("cannot understand debugfs stat output for {path} in {image}")]
    Stat {
        /// The image.
        image: PathBuf,
        /// The path inside it.
        path: String,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DriveError + 'a {
    move |source| DriveError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// How large to make an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveSize {
    /// Content × 1.3 + margin (journal, inodes), at least [`MIN_SIZE_MIB`].
    Auto,
    /// [`DriveSize::Auto`] plus `extra_mib` of free space for the guest to
    /// write into (the file is sparse: unused space costs nothing).
    AutoPlus {
        /// Free space to add.
        extra_mib: u64,
    },
    /// Exactly this many MiB (an error if the content clearly does not fit).
    Mib(u64),
}

/// What [`build_ext4_from_dir`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The image.
    pub path: PathBuf,
    /// Its size (apparent; the file is sparse).
    pub size_bytes: u64,
    /// Its label.
    pub label: String,
}

/// The estimated space the tree under `dir` needs (not following symlinks):
/// file data rounded to 4 KiB blocks plus 4 KiB per entry.
pub fn tree_bytes(dir: &Path) -> Result<u64, DriveError> {
    let mut total = 4096;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs_err::read_dir(&d).map_err(io("read directory", &d))? {
            let entry = entry.map_err(io("read directory", &d))?;
            let path = entry.path();
            let meta = fs_err::symlink_metadata(&path).map_err(io("stat", &path))?;
            total += 4096;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                total += meta.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok(total)
}

/// The automatic size in MiB for `content` bytes.
pub fn auto_size_mib(content: u64, journal: bool) -> u64 {
    let journal_margin = if journal {
        (content / 8).clamp(4 * MIB, 64 * MIB)
    } else {
        0
    };
    let bytes = content * 13 / 10 + 8 * MIB + journal_margin;
    bytes.div_ceil(MIB).max(MIN_SIZE_MIB)
}

/// Build `dest` (replaced atomically, mode 0600) as an ext4 image holding a
/// copy of `src_dir` (modes, owners, symlinks and timestamps kept; the root
/// directory owned by 0:0). `read_only` drops the journal: use it only
/// for drives the guest mounts read-only.
pub fn build_ext4_from_dir(
    src_dir: &Path,
    dest: &Path,
    label: &str,
    size: DriveSize,
    read_only: bool,
) -> Result<BuiltImage, DriveError> {
    build_with(src_dir, dest, label, size, read_only, &[], true)
}

/// Like [`build_ext4_from_dir`], but never replaces an existing `dest`:
/// when `dest` appeared meanwhile (another mvm created it), the error is
/// [`DriveError::Io`] with kind `AlreadyExists`.
pub fn build_ext4_new(
    src_dir: &Path,
    dest: &Path,
    label: &str,
    size: DriveSize,
    read_only: bool,
) -> Result<BuiltImage, DriveError> {
    build_with(src_dir, dest, label, size, read_only, &[], false)
}

/// The mkfs.ext4 argv (without the program) for `build_ext4_from_dir`.
pub fn mkfs_args(
    src_dir: &Path,
    image: &Path,
    label: &str,
    size_mib: u64,
    read_only: bool,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        ["-q", "-F", "-L", label, "-m", "0", "-E", "root_owner=0:0"]
            .iter()
            .map(Into::into)
            .collect();
    if read_only {
        args.extend(["-O".into(), "^has_journal".into()]);
    }
    args.push("-d".into());
    args.push(src_dir.into());
    args.push(image.into());
    args.push(format!("{}k", size_mib * 1024).into());
    args
}

fn build_with(
    src_dir: &Path,
    dest: &Path,
    label: &str,
    size: DriveSize,
    read_only: bool,
    root_owned: &[&str],
    replace: bool,
) -> Result<BuiltImage, DriveError> {
    if !is_label(label) {
        return Err(DriveError::BadLabel {
            label: label.into(),
        });
    }
    let content = tree_bytes(src_dir)?;
    let auto = auto_size_mib(content, !read_only);
    let size_mib = match size {
        DriveSize::Auto => auto,
        DriveSize::AutoPlus { extra_mib } => auto + extra_mib,
        DriveSize::Mib(n) => {
            let needed_mib = content.div_ceil(MIB);
            if n < needed_mib.max(1) {
                return Err(DriveError::TooSmall {
                    src: src_dir.into(),
                    needed_mib,
                    size_mib: n,
                });
            }
            n
        }
    };
    let size_bytes = size_mib * MIB;
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // tempfile creates the file with mode 0600, before any data is written.
    let tmp = tempfile::Builder::new()
        .prefix(".mkfs-")
        .suffix(".ext4")
        .tempfile_in(dir)
        .map_err(io("create a temporary image in", dir))?;
    tmp.as_file()
        .set_len(size_bytes)
        .map_err(io("size", tmp.path()))?;
    let tool_err = |source| DriveError::Tool {
        image: dest.into(),
        source,
    };
    tool::run(
        &mvm_core::tools::MKFS_EXT4,
        mkfs_args(src_dir, tmp.path(), label, size_mib, read_only),
        tool::deadline_for(size_bytes),
    )
    .and_then(|o| o.check("mkfs.ext4"))
    .map_err(tool_err)?;
    if !root_owned.is_empty() {
        force_root_owner(tmp.path(), root_owned).map_err(tool_err)?;
    }
    tmp.as_file().sync_all().map_err(io("sync", tmp.path()))?;
    let persisted = if replace {
        tmp.persist(dest)
    } else {
        tmp.persist_noclobber(dest)
    };
    persisted.map_err(|e| DriveError::Io {
        action: "rename the new image to",
        path: dest.into(),
        source: e.error,
    })?;
    Ok(BuiltImage {
        path: dest.into(),
        size_bytes,
        label: label.into(),
    })
}

/// Set uid and gid 0 on `paths` (absolute in-image paths made of
/// [`is_secret_key`]-safe names) inside `image` with `debugfs -w`.
fn force_root_owner(image: &Path, paths: &[&str]) -> Result<(), ToolError> {
    let mut script = tempfile::NamedTempFile::new().map_err(|source| ToolError::Input {
        program: "debugfs".into(),
        source,
    })?;
    let mut text = String::new();
    for p in paths {
        debug_assert!(p.starts_with('/') && !p.contains(['"', ' ', '\n']));
        text.push_str(&format!("sif \"{p}\" uid 0\nsif \"{p}\" gid 0\n"));
    }
    script
        .write_all(text.as_bytes())
        .map_err(|source| ToolError::Input {
            program: "debugfs".into(),
            source,
        })?;
    tool::debugfs(
        &[
            "-w".as_ref(),
            "-f".as_ref(),
            script.path().as_os_str(),
            image.as_os_str(),
        ],
        tool::deadline_for(0),
    )?;
    Ok(())
}

/// What `debugfs stat` says about one inode of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageStat {
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Regular file, directory, symlink, ...
    pub kind: ImageFileKind,
}

/// The type of an inode in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else.
    Other,
}

/// Read an inode's mode, owner and size from `image` (read-only, with
/// `debugfs -R "stat PATH"`). `path` is absolute inside the image.
pub fn stat_in_image(image: &Path, path: &str) -> Result<ImageStat, DriveError> {
    let out = tool::debugfs(
        &[
            "-R".as_ref(),
            format!("stat \"{path}\"").as_ref(),
            image.as_os_str(),
        ],
        tool::deadline_for(0),
    )
    .map_err(|source| DriveError::Tool {
        image: image.into(),
        source,
    })?;
    parse_stat(&out.stdout).ok_or_else(|| DriveError::Stat {
        image: image.into(),
        path: path.into(),
    })
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let at = text.find(name)? + name.len();
    text[at..].split_whitespace().next()
}

fn parse_stat(text: &str) -> Option<ImageStat> {
    let kind = match field(text, "Type:")? {
        "regular" => ImageFileKind::File,
        "directory" => ImageFileKind::Dir,
        "symlink" => ImageFileKind::Symlink,
        _ => ImageFileKind::Other,
    };
    Some(ImageStat {
        mode: u32::from_str_radix(field(text, "Mode:")?, 8).ok()?,
        uid: field(text, "User:")?.parse().ok()?,
        gid: field(text, "Group:")?.parse().ok()?,
        size: field(text, "Size:")?.parse().ok()?,
        kind,
    })
}

/// `config.json` on the config drive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigJson {
    /// Format version (1).
    pub version: u32,
    /// The machine's unique id.
    pub id: String,
    /// The machine's name (also its hostname).
    pub name: String,
    /// Guest IPv4 address, when the machine has a NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Prefix length of `ip`'s network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    /// Default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Profile (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Role (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The machine's main process (an OCI image's Entrypoint + Cmd): the
    /// agent starts it after boot, with its output on the console, and
    /// powers the guest off when it exits (agent protocol 2; see
    /// `mvm_agent_proto::main_process`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<mvm_agent_proto::MainSpec>,
    /// Further keys, written at the top level as given.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ConfigJson {
    /// A version-1 document with only the id and the name set.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            version: 1,
            id: id.into(),
            name: name.into(),
            ip: None,
            prefix_len: None,
            gateway: None,
            profile: None,
            role: None,
            main: None,
            extra: serde_json::Map::new(),
        }
    }
}

/// A staging directory for drive content; its files are overwritten with
/// zeros (when `wipe`) and removed on drop.
struct Staging {
    dir: tempfile::TempDir,
    wipe: bool,
}

impl Staging {
    fn new(parent: &Path, wipe: bool) -> Result<Self, DriveError> {
        // TempDir is created with mode 0700.
        let dir = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(parent)
            .map_err(io("create a staging directory in", parent))?;
        Ok(Self { dir, wipe })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copy `src` to `name` in the staging dir, then set `mode`. Streams;
    /// the content is never held in memory as a whole.
    fn copy_in(&self, name: &str, src: &Path, mode: u32) -> Result<(), DriveError> {
        let dst = self.path().join(name);
        let mut from = fs_err::File::open(src).map_err(io("read", src))?;
        let mut to = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dst)
            .map_err(io("create", &dst))?;
        std::io::copy(&mut from, &mut to).map_err(io("copy into", &dst))?;
        fs_err::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
            .map_err(io("set the mode of", &dst))
    }

    fn write(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), DriveError> {
        let dst = self.path().join(name);
        fs_err::write(&dst, bytes).map_err(io("write", &dst))?;
        fs_err::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
            .map_err(io("set the mode of", &dst))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.wipe {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) {
                let zeros = [0u8; 8192];
                let mut left = meta.len();
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    if f.write_all(&zeros[..n]).is_err() {
                        break;
                    }
                    left -= n as u64;
                }
                let _ = f.sync_all();
            }
        }
        // TempDir's own drop removes the directory.
    }
}

fn check_drive_name(
    drive: &'static str,
    name: &str,
    seen: &mut Vec<String>,
) -> Result<(), DriveError> {
    if !is_secret_key(name) || (drive == "config" && name == CONFIG_JSON) {
        return Err(DriveError::BadFileName {
            drive,
            name: name.into(),
        });
    }
    if seen.iter().any(|s| s == name) {
        return Err(DriveError::Duplicate {
            drive,
            name: name.into(),
        });
    }
    seen.push(name.into());
    Ok(())
}

fn parent_of(dest: &Path) -> &Path {
    dest.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The config drive.
pub struct ConfigDrive;

impl ConfigDrive {
    /// Build the config drive at `dest` (usually
    /// [`mvm_core::InstanceDir::config_drive`]): `config.json` plus each
    /// `(name, host file)` of `extra_files`, all 0444 and owned by 0:0,
    /// read-only (no journal).
    pub fn build(
        dest: &Path,
        config: &ConfigJson,
        extra_files: &[(String, PathBuf)],
    ) -> Result<BuiltImage, DriveError> {
        let staging = Staging::new(parent_of(dest), false)?;
        let mut names = Vec::new();
        let json = serde_json::to_vec_pretty(config).map_err(DriveError::Json)?;
        staging.write(CONFIG_JSON, &json, 0o444)?;
        for (name, src) in extra_files {
            check_drive_name("config", name, &mut names)?;
            staging.copy_in(name, src, 0o444)?;
        }
        fs_err::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io("set the mode of", staging.path()))?;
        let owned: Vec<String> = std::iter::once(CONFIG_JSON.to_owned())
            .chain(names)
            .map(|n| format!("/{n}"))
            .collect();
        let owned: Vec<&str> = owned.iter().map(String::as_str).collect();
        build_with(
            staging.path(),
            dest,
            CONFIG_LABEL,
            DriveSize::Auto,
            true,
            &owned,
            true,
        )
    }
}

/// The secrets drive.
pub struct SecretsDrive;

impl SecretsDrive {
    /// Build the secrets drive at `dest` (usually
    /// [`mvm_core::InstanceDir::secrets_drive`]; mode 0600 from creation):
    /// one file per `(key, host file)`, mode 0400, owner 0:0, read-only (no
    /// journal). Each file is checked readable first; a failure leaves
    /// `dest` untouched.
    pub fn build(dest: &Path, secrets: &[(String, PathBuf)]) -> Result<BuiltImage, DriveError> {
        let mut names = Vec::new();
        for (key, file) in secrets {
            check_drive_name("secrets", key, &mut names)?;
            check_readable_file(key, file).map_err(DriveError::Secret)?;
        }
        let staging = Staging::new(parent_of(dest), true)?;
        for (key, file) in secrets {
            staging.copy_in(key, file, 0o400)?;
        }
        fs_err::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(io("set the mode of", staging.path()))?;
        let owned: Vec<String> = names.iter().map(|n| format!("/{n}")).collect();
        let owned: Vec<&str> = owned.iter().map(String::as_str).collect();
        let built = build_with(
            staging.path(),
            dest,
            SECRETS_LABEL,
            DriveSize::Auto,
            true,
            &owned,
            true,
        )?;
        drop(staging);
        Ok(built)
    }
}

impl SecretsDrive {
    /// [`SecretsDrive::build`] from parsed `--secret` arguments.
    pub fn build_from(
        dest: &Path,
        secrets: &[crate::spec::Secret],
    ) -> Result<BuiltImage, DriveError> {
        let pairs: Vec<(String, PathBuf)> = secrets
            .iter()
            .map(|s| (s.key.clone(), s.file.clone()))
            .collect();
        Self::build(dest, &pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_size() {
        assert_eq!(auto_size_mib(0, false), MIN_SIZE_MIB);
        assert_eq!(auto_size_mib(100 * MIB, false), 138);
        assert_eq!(auto_size_mib(100 * MIB, true), 138 + 13);
    }

    #[test]
    fn mkfs_argv() {
        let a = mkfs_args(Path::new("/s"), Path::new("/i"), "L", 16, true);
        let a: Vec<&str> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            a,
            [
                "-q",
                "-F",
                "-L",
                "L",
                "-m",
                "0",
                "-E",
                "root_owner=0:0",
                "-O",
                "^has_journal",
                "-d",
                "/s",
                "/i",
                "16384k"
            ]
        );
    }

    #[test]
    fn parses_debugfs_stat() {
        let text = "Inode: 12   Type: regular    Mode:  0754   Flags: 0x80000\n\
                    Generation: 0    Version: 0x00000000:00000000\n\
                    User:     0   Group:     7   Project:     0   Size: 3\n";
        assert_eq!(
            parse_stat(text),
            Some(ImageStat {
                mode: 0o754,
                uid: 0,
                gid: 7,
                size: 3,
                kind: ImageFileKind::File
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn config_json_shape() {
        let mut c = ConfigJson::new("abc", "web");
        c.ip = Some("10.0.0.2".parse().unwrap());
        c.extra.insert("k".into(), "v".into());
        let v: serde_json::Value = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version":1,"id":"abc","name":"web","ip":"10.0.0.2","k":"v"})
        );
        let back: ConfigJson = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn config_json_carries_the_main_process_where_the_agent_reads_it() {
        let mut c = ConfigJson::new("abc", "app");
        c.main = Some(mvm_agent_proto::MainSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("GREETING".into(), "hello".into())],
            cwd: Some("/work".into()),
            user: Some("app".into()),
            poweroff_grace_ms: None,
        });
        let json = serde_json::to_vec(&c).unwrap();
        let seen: mvm_agent_proto::main_process::ConfigMain =
            serde_json::from_slice(&json).unwrap();
        assert_eq!(seen.main, c.main);
        let back: ConfigJson = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            format!("{CONFIG_MOUNT}/{CONFIG_JSON}"),
            mvm_agent_proto::main_process::CONFIG_JSON_PATH
        );
    }
}
