//! Named volumes: persistent ext4 images under `$MVM_HOME/volumes`.
//!
//! ```text
//! $MVM_HOME/volumes/<name>.ext4     mode 0600, sparse, label volume_label(name)
//! ```
//!
//! A volume is created empty on first use (`-v NAME:/guest`) with
//! [`DEFAULT_SIZE_MIB`] (sparse: only written blocks take space), survives
//! `mvm rm`, and is removed only by `mvm volume rm`, which refuses while a
//! machine has it attached. Which machines have which volumes attached is
//! the caller's knowledge (the machine registry's drive records); this
//! module takes it as a list of [`Attachment`]s.
//!
//! ext4 labels hold at most 16 bytes: the label is `mvmvol-<name>` when that
//! fits, else `mvmvol-` followed by the first 9 hex digits of the SHA-256 of
//! the name (so distinct long names get distinct labels in practice).

use crate::drive::{self, DriveError, DriveSize};
use crate::spec::is_volume_name;
use mvm_core::MvmHome;
use sha2::Digest;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The size of a new volume.
pub const DEFAULT_SIZE_MIB: u64 = 1024;
/// The suffix of volume image files.
pub const EXTENSION: &str = "ext4";

/// A volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name broke the rules.
    #[error(
        "invalid volume name {name:?}: names are 1-63 characters of a-z, 0-9, '_', '.' and '-', starting with a letter or digit"
    )]
    BadName {
        /// The name.
        name: String,
    },
    /// No such volume.
    #[error("no volume named {name:?}")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The volume is attached to machines.
    #[error("volume {name:?} is in use by {}", machines.join(", "))]
    InUse {
        /// The name.
        name: String,
        /// The machines using it.
        machines: Vec<String>,
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
    /// Creating the image failed.
    #[error("cannot create volume {name:?}")]
    Create {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: DriveError,
    },
}

/// A machine that has a volume attached (from the machine records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The machine's name.
    pub machine: String,
    /// The volume's name.
    pub volume: String,
}

/// One volume, as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VolumeInfo {
    /// The name.
    pub name: String,
    /// The image file.
    pub path: PathBuf,
    /// The image's size (what the guest sees).
    pub size_bytes: u64,
    /// The space it takes on the host (sparse files take less).
    pub used_bytes: u64,
}

/// The ext4 label of volume `name` (≤ 16 bytes).
pub fn volume_label(name: &str) -> String {
    let plain = format!("mvmvol-{name}");
    if plain.len() <= 16 {
        return plain;
    }
    let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    format!("mvmvol-{}", &digest[..9])
}

/// The named-volume store.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    dir: PathBuf,
}

impl VolumeStore {
    /// The store of `home` (`$MVM_HOME/volumes`).
    pub fn new(home: &MvmHome) -> Self {
        Self {
            dir: home.volumes_dir(),
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image path of `name` (whether or not it exists).
    pub fn path(&self, name: &str) -> Result<PathBuf, VolumeError> {
        if !is_volume_name(name) {
            return Err(VolumeError::BadName { name: name.into() });
        }
        Ok(self.dir.join(format!("{name}.{EXTENSION}")))
    }

    /// Whether volume `name` exists.
    pub fn exists(&self, name: &str) -> Result<bool, VolumeError> {
        Ok(self.path(name)?.is_file())
    }

    /// The image of `name`, created empty with `size_mib` (default
    /// [`DEFAULT_SIZE_MIB`]) when missing. Returns the path and whether it
    /// was created now. Safe against a concurrent creation of the same name.
    pub fn ensure(
        &self,
        name: &str,
        size_mib: Option<u64>,
    ) -> Result<(PathBuf, bool), VolumeError> {
        let path = self.path(name)?;
        if path.is_file() {
            return Ok((path, false));
        }
        fs_err::create_dir_all(&self.dir).map_err(|source| VolumeError::Io {
            action: "create",
            path: self.dir.clone(),
            source,
        })?;
        let empty = tempfile::tempdir().map_err(|source| VolumeError::Io {
            action: "create a temporary directory for",
            path: path.clone(),
            source,
        })?;
        let size = DriveSize::Mib(size_mib.unwrap_or(DEFAULT_SIZE_MIB));
        match drive::build_ext4_new(empty.path(), &path, &volume_label(name), size, false) {
            Ok(_) => Ok((path, true)),
            Err(DriveError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok((path, false))
            }
            Err(source) => Err(VolumeError::Create {
                name: name.into(),
                source,
            }),
        }
    }

    /// All volumes, sorted by name. A missing store is empty.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let io = |source| VolumeError::Io {
            action: "list",
            path: self.dir.clone(),
            source,
        };
        let entries = match fs_err::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(&format!(".{EXTENSION}")))
                .filter(|n| is_volume_name(n))
                .map(str::to_owned)
            else {
                continue;
            };
            let meta = fs_err::symlink_metadata(&path).map_err(io)?;
            if !meta.is_file() {
                continue;
            }
            out.push(VolumeInfo {
                name,
                size_bytes: meta.len(),
                used_bytes: meta.blocks() * 512,
                path,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// An error if `name` is attached to any machine in `attached`
    /// (use before attaching it to another running machine, and before
    /// removing it).
    pub fn check_not_in_use(name: &str, attached: &[Attachment]) -> Result<(), VolumeError> {
        let mut machines: Vec<String> = attached
            .iter()
            .filter(|a| a.volume == name)
            .map(|a| a.machine.clone())
            .collect();
        if machines.is_empty() {
            return Ok(());
        }
        machines.sort();
        machines.dedup();
        Err(VolumeError::InUse {
            name: name.into(),
            machines,
        })
    }

    /// Delete volume `name`, unless it is attached (per `attached`).
    pub fn remove(&self, name: &str, attached: &[Attachment]) -> Result<(), VolumeError> {
        let path = self.path(name)?;
        Self::check_not_in_use(name, attached)?;
        match fs_err::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(VolumeError::NotFound { name: name.into() })
            }
            Err(source) => Err(VolumeError::Io {
                action: "remove",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fit() {
        assert_eq!(volume_label("db"), "mvmvol-db");
        assert_eq!(volume_label("123456789"), "mvmvol-123456789");
        let a = volume_label("1234567890");
        let b = volume_label("1234567891");
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(crate::spec::is_label(&a));
        assert!(crate::spec::is_label(&volume_label(&"a.b_c-".repeat(9))));
    }

    #[test]
    fn in_use() {
        let att = [
            Attachment {
                machine: "b".into(),
                volume: "db".into(),
            },
            Attachment {
                machine: "a".into(),
                volume: "db".into(),
            },
        ];
        assert!(VolumeStore::check_not_in_use("other", &att).is_ok());
        let e = VolumeStore::check_not_in_use("db", &att).unwrap_err();
        assert_eq!(e.to_string(), "volume \"db\" is in use by a, b");
    }

    #[test]
    fn rejects_bad_names() {
        let s = VolumeStore::new(&MvmHome::new("/x"));
        assert!(matches!(s.path("../x"), Err(VolumeError::BadName { .. })));
        assert_eq!(s.path("db").unwrap(), Path::new("/x/volumes/db.ext4"));
    }
}
