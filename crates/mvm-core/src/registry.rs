//! The machine registry: one directory per machine under
//! `$MVM_HOME/instances`, holding an atomically written `instance.json`.
//!
//! - **Names are claimed with `mkdir`**, which is atomic: of two concurrent
//!   `mvm run --name x`, exactly one creates the directory; the other gets
//!   [`RegistryError::NameTaken`].
//! - **Changes happen under a per-instance `flock`** ([`InstanceLock`]), so a
//!   read-modify-write of the record never loses another process's update.
//! - **Allocation of shared resources** (vsock CIDs, addresses) happens under
//!   the global lock ([`Registry::global_lock`]).
//! - A directory without a readable record is listed as broken, never
//!   silently skipped, and `rm` can remove it.

use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::atomic::{AtomicWriteError, write_atomic};
use crate::instance::{InstanceRecord, Status};
use crate::name::{InvalidName, validate};
use crate::paths::{InstanceDir, MvmHome};

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The name is not valid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// Another machine already has the name.
    #[error("a machine named {name:?} already exists")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// No such machine.
    #[error("no machine named {name:?}")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The record exists but cannot be parsed.
    #[error("the record of machine {name:?} at {path} is unreadable")]
    Corrupt {
        /// The name.
        name: String,
        /// The record path.
        path: PathBuf,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A status change that the state machine forbids.
    #[error("machine {name:?} cannot go from {from} to {to}")]
    BadTransition {
        /// The name.
        name: String,
        /// Current status.
        from: Status,
        /// Requested status.
        to: Status,
    },
    /// Writing the record failed.
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
    /// Other IO failure (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// An exclusive `flock` on a lock file; released on drop.
#[derive(Debug)]
pub struct InstanceLock {
    _file: fs_err::File,
}

fn lock_file(path: PathBuf) -> Result<InstanceLock, RegistryError> {
    let file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    rustix::fs::flock(
        file.file().as_fd(),
        rustix::fs::FlockOperation::LockExclusive,
    )
    .map_err(|e| std::io::Error::other(format!("cannot lock {}: {e}", path.display())))?;
    Ok(InstanceLock { _file: file })
}

/// One entry of [`Registry::list`].
#[derive(Debug)]
pub struct Listed {
    /// The machine name (directory name).
    pub name: String,
    /// The record, or why it could not be read.
    pub record: Result<InstanceRecord, RegistryError>,
}

/// The registry of machines under one [`MvmHome`].
#[derive(Debug, Clone)]
pub struct Registry {
    home: MvmHome,
}

impl Registry {
    /// Open (and create if needed) the registry of `home`.
    pub fn open(home: &MvmHome) -> Result<Self, RegistryError> {
        fs_err::create_dir_all(home.instances_dir())?;
        Ok(Self { home: home.clone() })
    }

    /// The home this registry lives in.
    pub fn home(&self) -> &MvmHome {
        &self.home
    }

    /// The instance directory of `name`.
    pub fn dir(&self, name: &str) -> InstanceDir {
        self.home.instance(name)
    }

    /// Take the global lock (allocation of CIDs, addresses, TAP names).
    pub fn global_lock(&self) -> Result<InstanceLock, RegistryError> {
        lock_file(self.home.lock_file())
    }

    /// Take the lock of one machine.
    pub fn lock(&self, name: &str) -> Result<InstanceLock, RegistryError> {
        let dir = self.dir(name);
        if !dir.root().is_dir() {
            return Err(RegistryError::NotFound {
                name: name.to_owned(),
            });
        }
        lock_file(dir.lock_file())
    }

    /// Claim `record.name` and persist the record. Fails with
    /// [`RegistryError::NameTaken`] if the name exists, also when another
    /// process creates it at the same moment.
    pub fn create(&self, record: &InstanceRecord) -> Result<InstanceDir, RegistryError> {
        validate(&record.name)?;
        let dir = self.dir(&record.name);
        match std::fs::create_dir(dir.root()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RegistryError::NameTaken {
                    name: record.name.clone(),
                });
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", dir.root().display()),
                )
                .into());
            }
        }
        self.save(record)?;
        Ok(dir)
    }

    /// Read the record of `name`.
    pub fn load(&self, name: &str) -> Result<InstanceRecord, RegistryError> {
        validate(name)?;
        let dir = self.dir(name);
        let path = dir.record();
        let text = match fs_err::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if dir.root().is_dir() {
                    RegistryError::Corrupt {
                        name: name.to_owned(),
                        path,
                        source: serde::de::Error::custom("the record file is missing"),
                    }
                } else {
                    RegistryError::NotFound {
                        name: name.to_owned(),
                    }
                });
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot read {}: {e}", path.display()),
                )
                .into());
            }
        };
        serde_json::from_str(&text).map_err(|source| RegistryError::Corrupt {
            name: name.to_owned(),
            path,
            source,
        })
    }

    /// Write the record atomically (temp file + rename).
    pub fn save(&self, record: &InstanceRecord) -> Result<(), RegistryError> {
        let dir = self.dir(&record.name);
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        write_atomic(&dir.record(), &json, 0o644)?;
        Ok(())
    }

    /// Load, modify and save a record under the machine's lock.
    pub fn update<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut InstanceRecord) -> Result<T, RegistryError>,
    ) -> Result<(InstanceRecord, T), RegistryError> {
        let _lock = self.lock(name)?;
        let mut record = self.load(name)?;
        let out = f(&mut record)?;
        self.save(&record)?;
        Ok((record, out))
    }

    /// Change the status, enforcing the state machine.
    pub fn set_status(record: &mut InstanceRecord, to: Status) -> Result<(), RegistryError> {
        if !record.status.can_become(to) {
            return Err(RegistryError::BadTransition {
                name: record.name.clone(),
                from: record.status,
                to,
            });
        }
        record.status = to;
        Ok(())
    }

    /// Every machine directory, sorted by name, with its record or the error
    /// that prevents reading it.
    pub fn list(&self) -> Result<Vec<Listed>, RegistryError> {
        let mut out = Vec::new();
        for entry in fs_err::read_dir(self.home.instances_dir())? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate(&name).is_err() {
                continue;
            }
            let record = self.load(&name);
            out.push(Listed { name, record });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Delete the machine's directory and everything in it.
    pub fn remove(&self, name: &str) -> Result<(), RegistryError> {
        validate(name)?;
        let dir = self.dir(name);
        match fs_err::remove_dir_all(dir.root()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RegistryError::NotFound {
                name: name.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;

    fn reg() -> (tempfile::TempDir, Registry) {
        let t = tempfile::tempdir().unwrap();
        let r = Registry::open(&MvmHome::new(t.path())).unwrap();
        (t, r)
    }

    #[test]
    fn create_load_update_remove() {
        let (_t, r) = reg();
        let rec = InstanceRecord::new("a", "default", "d", BackendKind::Qemu);
        r.create(&rec).unwrap();
        assert_eq!(r.load("a").unwrap(), rec);
        let (after, ()) = r
            .update("a", |rec| Registry::set_status(rec, Status::Starting))
            .unwrap();
        assert_eq!(after.status, Status::Starting);
        assert_eq!(r.load("a").unwrap().status, Status::Starting);
        r.remove("a").unwrap();
        assert!(matches!(r.load("a"), Err(RegistryError::NotFound { .. })));
    }

    #[test]
    fn taken_name_is_an_error_and_keeps_the_first_record() {
        let (_t, r) = reg();
        let first = InstanceRecord::new("a", "one", "d", BackendKind::Qemu);
        r.create(&first).unwrap();
        let second = InstanceRecord::new("a", "two", "d", BackendKind::Qemu);
        let err = r.create(&second).unwrap_err();
        assert!(matches!(err, RegistryError::NameTaken { .. }), "{err}");
        assert_eq!(r.load("a").unwrap().image, "one");
    }

    #[test]
    fn concurrent_creates_have_exactly_one_winner() {
        let (_t, r) = reg();
        let wins: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|i| {
                    let r = r.clone();
                    s.spawn(move || {
                        let rec =
                            InstanceRecord::new("same", &format!("img{i}"), "d", BackendKind::Qemu);
                        r.create(&rec).is_ok() as usize
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
    }

    #[test]
    fn forbidden_transition_is_rejected() {
        let (_t, r) = reg();
        r.create(&InstanceRecord::new("a", "d", "d", BackendKind::Qemu))
            .unwrap();
        let err = r
            .update("a", |rec| Registry::set_status(rec, Status::Paused))
            .unwrap_err();
        assert!(matches!(err, RegistryError::BadTransition { .. }));
        assert_eq!(r.load("a").unwrap().status, Status::Created);
    }

    #[test]
    fn directory_without_record_is_listed_as_corrupt() {
        let (_t, r) = reg();
        fs_err::create_dir(r.dir("ghost").root()).unwrap();
        let l = r.list().unwrap();
        assert_eq!(l.len(), 1);
        assert!(matches!(l[0].record, Err(RegistryError::Corrupt { .. })));
        r.remove("ghost").unwrap();
        assert!(r.list().unwrap().is_empty());
    }
}
