//! Templates: a named image plus a snapshot of a machine booted from it,
//! from which new machines start by restoring instead of booting.
//!
//! # Layout
//!
//! ```text
//! $MVM_HOME/templates/
//!   .lock                  flock: create-commit, rm, refs and gc are serialized
//!   <name> -> .store/<id>  the template exists exactly when this link does
//!   .store/<id>/           everything of one template; never moves
//!     template.json        Manifest: what it is and the digest of every file
//!     snapshot/            the backend's snapshot (mvm_core::snapshot)
//!     disk.ext4            the template machine's root disk, if it had one
//!     config.ext4          its config drive (transient clones attach it as is)
//!     ram-snapshot/        images booting from their initramfs (the default
//!     ram-config.ext4        image): a second snapshot of the same machine
//!                            without a root disk, for transient clones
//!     refs/<machine>       one file per machine that still needs these files
//!     creator              only while being created: the creating process
//! ```
//!
//! # Immutability and atomic creation
//!
//! A template is built in a fresh `.store/<id>/` ([`Store::begin`]): the
//! template machine runs with its RAM file (QEMU) and root disk already
//! there, the backend writes the snapshot into `snapshot/`. [`Staging::commit`]
//! fsyncs every file, records its size, fingerprint and content digest in
//! `template.json` (written atomically), fsyncs the directory and only then
//! creates the symlink `<name>` — one `symlink(2)`, which fails if the name
//! is taken, so of two concurrent creates of one name exactly one wins and a
//! reader sees either no template or a complete one. A crash or Ctrl-C at
//! any earlier moment leaves only an unlinked `.store/<id>` whose creator is
//! dead: [`Store::leftovers`] lists it and [`Store::gc`] removes it (and a
//! [`Staging`] dropped without commit removes its directory at once).
//! Nothing in `.store/<id>` is written after the commit except `refs/`.
//! Paths inside a template never change, which Firecracker needs (its
//! snapshot names the drive files it reopens).
//!
//! # Use by clones
//!
//! A clone restores from [`Template::snapshot`] (the backend maps the memory
//! file privately and never writes it) and gets its own copy-on-write disk
//! ([`Template::clone_disk`], see [`cow`]). [`Template::verify`] runs before
//! each restore: cheap stat fingerprints, and a full hash only for a file
//! whose fingerprint changed (see [`digest`]); [`Template::check_compatible`]
//! refuses a template taken with another backend, VMM version, kernel or
//! image. Every refusal is a [`TemplateError`] naming the template and the
//! problem, for the caller to fall back to a cold boot and say why.
//!
//! # References and removal (crash recovery)
//!
//! A machine made from a template records the template's *id*; while it
//! exists, `refs/<machine>` exists ([`Store::add_ref`], acquired before its
//! VMM starts). [`Store::release`] removes it, idempotently, from the
//! template id and machine name alone (what a machine record holds), so
//! `rm` of the machine — or `gc` after its owner was killed — can run it.
//! [`Store::remove`] refuses while a live machine holds a reference unless
//! forced; references of machines that no longer exist are pruned.

#![warn(missing_docs)]

pub mod cow;
pub mod digest;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use mvm_core::backend::BackendKind;
use mvm_core::paths::MvmHome;
use mvm_core::process::ProcessIdentity;
use mvm_core::snapshot::{MemoryMode, SnapshotDir, SnapshotError, allocated_bytes, now_rfc3339};
use serde::{Deserialize, Serialize};

pub use cow::CloneMethod;
use digest::{Fingerprint, content_digest};

/// Version of the `template.json` format.
pub const MANIFEST_FORMAT: u32 = 1;

const STORE: &str = ".store";
const LOCK: &str = ".lock";
const MANIFEST: &str = "template.json";
const SNAPSHOT: &str = "snapshot";
const DISK: &str = "disk.ext4";
const CONFIG: &str = "config.ext4";
const RAM_SNAPSHOT: &str = "ram-snapshot";
const RAM_CONFIG: &str = "ram-config.ext4";
const REFS: &str = "refs";
const CREATOR: &str = "creator";

/// Errors of the template store. Each names the template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The name is not a valid template name.
    #[error("invalid template name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No template has this name.
    #[error("no template named {name:?} (see `mvm template ls`)")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The name is taken.
    #[error("a template named {name:?} already exists (remove it first: `mvm template rm {name}`)")]
    Exists {
        /// The name.
        name: String,
    },
    /// Machines still need the template's files.
    #[error("template {name:?} is used by {}: remove them first, or use --force", machines.join(", "))]
    InUse {
        /// The name.
        name: String,
        /// The machines.
        machines: Vec<String>,
    },
    /// The template's files are damaged or do not fit (the cause says how).
    #[error("template {name:?} cannot be used")]
    Snapshot {
        /// The name.
        name: String,
        /// What is wrong.
        #[source]
        source: SnapshotError,
    },
    /// The template was made for something else than what is asked.
    #[error(
        "template {name:?} was made with {what} {template}, but this machine would use {requested}"
    )]
    Incompatible {
        /// The name.
        name: String,
        /// `backend`, `VMM version`, `kernel`, `image`.
        what: &'static str,
        /// The template's value.
        template: String,
        /// The requested value.
        requested: String,
    },
    /// `template.json` cannot be read.
    #[error("template {name:?}: {path} is unreadable: {detail}")]
    Manifest {
        /// The name.
        name: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The filesystem is full.
    #[error("template {name:?}: no space left on the device writing {path}")]
    NoSpace {
        /// The name.
        name: String,
        /// The file being written.
        path: PathBuf,
    },
    /// Another I/O failure (the message names the file).
    #[error("template {name:?}: {path}")]
    Io {
        /// The name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Whether `e` says the filesystem is full (by its kind: ENOSPC maps to
/// `StorageFull`, and `fs_err`'s errors keep the kind but not the errno).
fn is_enospc(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
}

fn io_err(name: &str, path: &Path, source: std::io::Error) -> TemplateError {
    if is_enospc(&source) {
        TemplateError::NoSpace {
            name: name.to_owned(),
            path: path.to_owned(),
        }
    } else {
        TemplateError::Io {
            name: name.to_owned(),
            path: path.to_owned(),
            source,
        }
    }
}

/// Template names follow machine names: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), TemplateError> {
    mvm_core::name::validate(name).map_err(|e| TemplateError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// One file of a template, as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the template directory.
    pub path: String,
    /// Size, mtime, ctime, inode at commit.
    pub fingerprint: Fingerprint,
    /// Its content digest (`digest::content_digest`).
    pub digest: String,
}

/// Sizes of a template, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    /// Device state (`snapshot/vmstate`).
    pub state: u64,
    /// Guest RAM file (its length).
    pub memory: u64,
    /// Guest RAM file, blocks really allocated.
    pub memory_allocated: u64,
    /// Root disk (its length), if any.
    pub disk: u64,
    /// Root disk, blocks really allocated.
    pub disk_allocated: u64,
    /// Everything on disk.
    pub total_allocated: u64,
}

/// What the creator knows that the store cannot see (see [`Staging::commit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The image name or reference it was made from.
    pub image: String,
    /// That image's digest.
    pub image_digest: String,
    /// The guest kernel release.
    pub kernel_release: String,
    /// The machine it was snapshotted from (`--from`), if not booted for it.
    pub from_machine: Option<String>,
    /// The warm-up command run before the snapshot, if any.
    pub warmup: Vec<String>,
    /// Environment of the warm-up command.
    pub env: Vec<(String, String)>,
    /// Launch to agent-ready of the template machine, in ms.
    pub boot_ms: u64,
    /// How long the snapshot took (pause, save, sync), in ms.
    pub snapshot_ms: u64,
    /// Drive id of the root disk stored as `disk.ext4`, if any.
    pub disk_drive: Option<String>,
}

/// `template.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The template's name when it was created.
    pub name: String,
    /// Its store id (never reused).
    pub id: String,
    /// Backend that took the snapshot.
    pub backend: BackendKind,
    /// That backend's VMM version.
    pub vmm_version: String,
    /// vCPUs.
    pub cpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Where the RAM is.
    pub memory_mode: MemoryMode,
    /// When it was created (RFC 3339).
    pub created: String,
    /// Provenance and timings from the creator.
    #[serde(flatten)]
    pub provenance: Provenance,
    /// Sizes.
    pub sizes: Sizes,
    /// Every file, with its digest.
    pub files: Vec<FileRecord>,
}

/// What a restore will use, to be compared with the template
/// ([`Template::check_compatible`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted<'a> {
    /// The backend that will restore.
    pub backend: BackendKind,
    /// Its VMM version.
    pub vmm_version: &'a str,
    /// The kernel release of the image the machine is of.
    pub kernel_release: &'a str,
    /// That image's digest.
    pub image_digest: &'a str,
}

/// How thoroughly [`Template::verify`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Fingerprints; hash only files whose fingerprint changed.
    Quick,
    /// Hash every file.
    Full,
}

/// The template store under `$MVM_HOME/templates`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A committed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The name it was opened by.
    pub name: String,
    /// Its directory (`.store/<id>`).
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// One entry of [`Store::list`].
#[derive(Debug)]
pub struct Listed {
    /// The name.
    pub name: String,
    /// The template, or why it cannot be read.
    pub template: Result<Template, TemplateError>,
}

/// Something of the store no template owns (see [`Store::leftovers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// A `.store/<id>` no name links to and no live process is creating.
    Unlinked(PathBuf),
    /// A name whose target is gone.
    DanglingName(PathBuf),
}

/// What [`Store::remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The template's id.
    pub id: String,
    /// Live machines that still referenced it (only with `force`).
    pub forced_past: Vec<String>,
    /// References of machines that no longer exist, dropped.
    pub pruned: Vec<String>,
}

/// What a clone needs before its VMM starts ([`Store::prepare_clone`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The template (its id goes into the machine's record).
    pub template: Template,
    /// The snapshot to restore.
    pub snapshot: SnapshotDir,
    /// The clone's own disk and how it was made, if the template has one.
    pub disk: Option<(PathBuf, CloneMethod)>,
}

/// An exclusive `flock` on the store; released on drop.
struct StoreLock {
    _file: fs_err::File,
}

fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = fs_err::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Store {
    /// The store of `home` (created if missing, mode 0700: templates hold
    /// guest memory).
    pub fn open(home: &MvmHome) -> Result<Store, TemplateError> {
        Self::at(home.templates_dir())
    }

    /// A store at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Result<Store, TemplateError> {
        use std::os::unix::fs::PermissionsExt;
        let root = root.into();
        let store = root.join(STORE);
        fs_err::create_dir_all(&store).map_err(|e| io_err("-", &store, e))?;
        for d in [&root, &store] {
            let _ = fs_err::set_permissions(d, std::fs::Permissions::from_mode(0o700));
        }
        Ok(Store { root })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> Result<StoreLock, TemplateError> {
        let path = self.root.join(LOCK);
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("-", &path, e))?;
        rustix::fs::flock(
            file.file().as_fd(),
            rustix::fs::FlockOperation::LockExclusive,
        )
        .map_err(|e| io_err("-", &path, e.into()))?;
        Ok(StoreLock { _file: file })
    }

    fn link(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn store_dir(&self, id: &str) -> PathBuf {
        self.root.join(STORE).join(id)
    }

    /// Start creating template `name`: a fresh directory to build it in.
    /// Fails early if the name is taken (the commit decides for good).
    pub fn begin(&self, name: &str) -> Result<Staging, TemplateError> {
        validate_name(name)?;
        if fs_err::symlink_metadata(self.link(name)).is_ok() {
            return Err(TemplateError::Exists {
                name: name.to_owned(),
            });
        }
        let id = new_id();
        let dir = self.store_dir(&id);
        // The directory and its creator file appear together for `gc`.
        let _lock = self.lock()?;
        let e = |p: &Path| {
            let p = p.to_owned();
            let name = name.to_owned();
            move |err| io_err(&name, &p, err)
        };
        fs_err::create_dir(&dir).map_err(e(&dir))?;
        let staging = Staging {
            store: self.clone(),
            name: name.to_owned(),
            id,
            dir: dir.clone(),
            committed: false,
        };
        let creator = serde_json::to_vec(&ProcessIdentity::current()).expect("serializes");
        let path = dir.join(CREATOR);
        mvm_core::atomic::write_atomic(&path, &creator, 0o600)
            .map_err(|err| io_err(name, &path, err.source))?;
        let snap = dir.join(SNAPSHOT);
        fs_err::create_dir(&snap).map_err(e(&snap))?;
        Ok(staging)
    }

    /// The template named `name`.
    pub fn get(&self, name: &str) -> Result<Template, TemplateError> {
        validate_name(name)?;
        let link = self.link(name);
        let target = match fs_err::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TemplateError::NotFound {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(io_err(name, &link, e)),
        };
        let dir = self.root.join(target);
        let path = dir.join(MANIFEST);
        let bytes = fs_err::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TemplateError::Manifest {
                    name: name.to_owned(),
                    path: path.clone(),
                    detail: "missing".into(),
                }
            } else {
                io_err(name, &path, e)
            }
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| TemplateError::Manifest {
                name: name.to_owned(),
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(TemplateError::Manifest {
                name: name.to_owned(),
                path,
                detail: format!(
                    "format {} (this mvm reads {MANIFEST_FORMAT})",
                    manifest.format
                ),
            });
        }
        Ok(Template {
            name: name.to_owned(),
            dir,
            manifest,
        })
    }

    /// Every template, by name.
    pub fn list(&self) -> Result<Vec<Listed>, TemplateError> {
        let mut out = Vec::new();
        let entries = fs_err::read_dir(&self.root).map_err(|e| io_err("-", &self.root, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            out.push(Listed {
                template: self.get(&name),
                name,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Record that `machine` needs `template`'s files (before its VMM
    /// starts). Fails if the template was removed meanwhile.
    pub fn add_ref(&self, template: &Template, machine: &str) -> Result<(), TemplateError> {
        mvm_core::name::validate(machine).map_err(|e| TemplateError::InvalidName {
            name: machine.to_owned(),
            reason: e.to_string(),
        })?;
        let _lock = self.lock()?;
        if !template.dir.join(MANIFEST).exists() {
            return Err(TemplateError::NotFound {
                name: template.name.clone(),
            });
        }
        let refs = template.dir.join(REFS);
        fs_err::create_dir_all(&refs).map_err(|e| io_err(&template.name, &refs, e))?;
        let path = refs.join(machine);
        // Not durable: a reference matters only while its machine runs,
        // and nothing runs after a power loss.
        mvm_core::atomic::write_atomic_volatile(&path, now_rfc3339().as_bytes(), 0o600)
            .map_err(|e| io_err(&template.name, &path, e.source))?;
        Ok(())
    }

    /// Everything before a clone's VMM starts, in order: find template
    /// `name`, check it fits `wanted`, check its files (fingerprints; a hash
    /// where they changed), record `machine`'s reference, and make the
    /// clone's disk at `disk` (if the template has one). On error nothing
    /// is left (no reference, no disk) and the error names the problem —
    /// the caller's cue to cold-boot instead.
    pub fn prepare_clone(
        &self,
        name: &str,
        machine: &str,
        wanted: &Wanted<'_>,
        disk: Option<&Path>,
    ) -> Result<Prepared, TemplateError> {
        let template = self.get(name)?;
        template.check_compatible(wanted)?;
        template.verify(Verify::Quick)?;
        self.add_ref(&template, machine)?;
        let made = match (template.disk(), disk) {
            (Some(_), Some(dst)) => match template.clone_disk(dst) {
                Ok(how) => Some((dst.to_owned(), how)),
                Err(e) => {
                    let _ = self.release(template.id(), machine);
                    return Err(e);
                }
            },
            _ => None,
        };
        Ok(Prepared {
            snapshot: template.snapshot(),
            template,
            disk: made,
        })
    }

    /// Drop `machine`'s reference to template `id`. Idempotent; needs only
    /// what a machine record holds (template id, machine name), so it runs
    /// after a crash too.
    pub fn release(&self, id: &str, machine: &str) -> Result<(), TemplateError> {
        if id.is_empty() || id.contains('/') || machine.contains('/') || machine.is_empty() {
            return Ok(());
        }
        let path = self.store_dir(id).join(REFS).join(machine);
        match fs_err::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(id, &path, e)),
        }
    }

    /// Machines holding a reference to `template`.
    pub fn users(&self, template: &Template) -> Result<Vec<String>, TemplateError> {
        let refs = template.dir.join(REFS);
        let mut out = Vec::new();
        match fs_err::read_dir(&refs) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if !n.starts_with(".tmp") {
                        out.push(n);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&template.name, &refs, e)),
        }
        out.sort();
        Ok(out)
    }

    /// Remove template `name`: refused while a machine for which
    /// `is_live(machine)` holds a reference, unless `force`. References of
    /// machines that do not exist any more are pruned. The name disappears
    /// first (atomically), then the files.
    pub fn remove(
        &self,
        name: &str,
        force: bool,
        is_live: impl Fn(&str) -> bool,
    ) -> Result<Removed, TemplateError> {
        let _lock = self.lock()?;
        let t = match self.get(name) {
            Ok(t) => Some(t),
            // A damaged template can always be removed.
            Err(TemplateError::Manifest { .. }) => None,
            Err(e) => return Err(e),
        };
        let link = self.link(name);
        let dir = match &t {
            Some(t) => t.dir.clone(),
            None => self
                .root
                .join(fs_err::read_link(&link).map_err(|e| io_err(name, &link, e))?),
        };
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (mut live, mut pruned) = (Vec::new(), Vec::new());
        if let Some(t) = &t {
            for m in self.users(t)? {
                if is_live(&m) {
                    live.push(m)
                } else {
                    pruned.push(m)
                }
            }
        }
        if !live.is_empty() && !force {
            return Err(TemplateError::InUse {
                name: name.to_owned(),
                machines: live,
            });
        }
        fs_err::remove_file(&link).map_err(|e| io_err(name, &link, e))?;
        fsync_dir(&self.root);
        if dir.starts_with(self.root.join(STORE)) {
            fs_err::remove_dir_all(&dir).map_err(|e| io_err(name, &dir, e))?;
        }
        Ok(Removed {
            id,
            forced_past: live,
            pruned,
        })
    }

    /// What no template owns: store directories no name links to whose
    /// creator is gone, and names whose target is gone.
    pub fn leftovers(&self) -> Result<Vec<Leftover>, TemplateError> {
        let mut linked = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for e in fs_err::read_dir(&self.root)
            .map_err(|e| io_err("-", &self.root, e))?
            .flatten()
        {
            if !e.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            match fs_err::read_link(e.path()) {
                Ok(t) if self.root.join(&t).is_dir() => {
                    linked.insert(self.root.join(t));
                }
                _ => out.push(Leftover::DanglingName(e.path())),
            }
        }
        let store = self.root.join(STORE);
        for e in fs_err::read_dir(&store)
            .map_err(|e| io_err("-", &store, e))?
            .flatten()
        {
            let p = e.path();
            if linked.contains(&p) {
                continue;
            }
            let creating = fs_err::read(p.join(CREATOR))
                .ok()
                .and_then(|b| serde_json::from_slice::<ProcessIdentity>(&b).ok())
                .is_some_and(|c| c.is_alive());
            if !creating {
                out.push(Leftover::Unlinked(p));
            }
        }
        Ok(out)
    }

    /// References of machines for which `is_live` is false (their owner
    /// died before releasing), as `(template name, machine)`; with
    /// `remove`, they are dropped. For `mvm gc` / `mvm doctor`.
    pub fn stale_refs(
        &self,
        is_live: impl Fn(&str) -> bool,
        remove: bool,
    ) -> Result<Vec<(String, String)>, TemplateError> {
        let _lock = self.lock()?;
        let mut out = Vec::new();
        for l in self.list()? {
            let Ok(t) = l.template else { continue };
            for m in self.users(&t)? {
                if !is_live(&m) {
                    if remove {
                        self.release(t.id(), &m)?;
                    }
                    out.push((l.name.clone(), m));
                }
            }
        }
        Ok(out)
    }

    /// Remove [`Store::leftovers`]; returns what was removed.
    pub fn gc(&self) -> Result<Vec<Leftover>, TemplateError> {
        let _lock = self.lock()?;
        let found = self.leftovers()?;
        for l in &found {
            match l {
                Leftover::Unlinked(p) => {
                    fs_err::remove_dir_all(p).map_err(|e| io_err("-", p, e))?;
                }
                Leftover::DanglingName(p) => {
                    fs_err::remove_file(p).map_err(|e| io_err("-", p, e))?;
                }
            }
        }
        Ok(found)
    }
}

/// A template being created (see [`Store::begin`]). Dropped without
/// [`Staging::commit`], its directory is removed.
#[derive(Debug)]
pub struct Staging {
    store: Store,
    name: String,
    id: String,
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The store id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The directory being filled (its final place: it never moves).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Where the backend writes the snapshot. A QEMU template machine runs
    /// with its RAM on `snapshot().memory()` already.
    pub fn snapshot(&self) -> SnapshotDir {
        SnapshotDir::new(self.dir.join(SNAPSHOT))
    }
    /// Where the template machine's root disk lives (the machine runs on
    /// it; it is frozen by the commit).
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }

    /// Where the template machine's config drive lives.
    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG)
    }

    /// Where the second, diskless snapshot goes (created on first use);
    /// see the crate docs.
    pub fn ram_snapshot(&self) -> SnapshotDir {
        SnapshotDir::new(self.dir.join(RAM_SNAPSHOT))
    }

    /// The config drive of the diskless machine.
    pub fn ram_config(&self) -> PathBuf {
        self.dir.join(RAM_CONFIG)
    }

    /// Copy `src` (e.g. a running machine's disk, paused) to [`Staging::disk`]
    /// as a copy-on-write clone.
    pub fn import_disk(&self, src: &Path) -> Result<CloneMethod, TemplateError> {
        cow::clone_disk(src, &self.disk()).map_err(|e| match e {
            cow::CowError::Io { source, .. } => io_err(&self.name, &self.disk(), source),
            other => TemplateError::Io {
                name: self.name.clone(),
                path: self.disk(),
                source: std::io::Error::other(other.to_string()),
            },
        })
    }

    /// Freeze the template: fsync, digest and record every file, write
    /// `template.json`, then publish the name (see the crate docs). The
    /// snapshot must be complete (its `snapshot.json` written).
    pub fn commit(mut self, provenance: Provenance) -> Result<Template, TemplateError> {
        let name = self.name.clone();
        let snap = self.snapshot();
        let meta = snap.read_meta().map_err(|source| TemplateError::Snapshot {
            name: name.clone(),
            source,
        })?;
        let mut rels = vec![
            format!("{SNAPSHOT}/vmstate"),
            format!("{SNAPSHOT}/snapshot.json"),
        ];
        if meta.memory == MemoryMode::MemoryFile {
            rels.push(format!("{SNAPSHOT}/memory"));
        }
        if self.disk().exists() {
            rels.push(DISK.to_owned());
        }
        if self.config().exists() {
            rels.push(CONFIG.to_owned());
        }
        let ram = self.ram_snapshot();
        if ram.meta().exists() {
            let ram_meta = ram.read_meta().map_err(|source| TemplateError::Snapshot {
                name: name.clone(),
                source,
            })?;
            rels.push(format!("{RAM_SNAPSHOT}/vmstate"));
            rels.push(format!("{RAM_SNAPSHOT}/snapshot.json"));
            if ram_meta.memory == MemoryMode::MemoryFile {
                rels.push(format!("{RAM_SNAPSHOT}/memory"));
            }
            if self.ram_config().exists() {
                rels.push(RAM_CONFIG.to_owned());
            }
        }
        let mut files = Vec::new();
        for rel in rels {
            let path = self.dir.join(&rel);
            let f = fs_err::File::open(&path).map_err(|e| io_err(&name, &path, e))?;
            f.sync_all().map_err(|e| io_err(&name, &path, e))?;
            drop(f);
            let fingerprint = Fingerprint::of(&path).map_err(|e| io_err(&name, &path, e))?;
            let digest = content_digest(&path).map_err(|e| io_err(&name, &path, e))?;
            files.push(FileRecord {
                path: rel,
                fingerprint,
                digest,
            });
        }
        let sizes = Sizes {
            state: meta.state_bytes,
            memory: meta.memory_bytes,
            memory_allocated: allocated_bytes(&snap.memory()),
            disk: fs_err::metadata(self.disk()).map(|m| m.len()).unwrap_or(0),
            disk_allocated: allocated_bytes(&self.disk()),
            total_allocated: 0,
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: name.clone(),
            id: self.id.clone(),
            backend: meta.backend,
            vmm_version: meta.vmm_version.clone(),
            cpus: meta.cpus,
            memory_mib: meta.memory_mib,
            memory_mode: meta.memory,
            created: now_rfc3339(),
            provenance,
            sizes: Sizes {
                total_allocated: std::iter::once(MANIFEST.to_owned())
                    .chain(files.iter().map(|f| f.path.clone()))
                    .map(|rel| allocated_bytes(&self.dir.join(rel)))
                    .sum(),
                ..sizes
            },
            files,
        };
        let path = self.dir.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        mvm_core::atomic::write_atomic(&path, &json, 0o600)
            .map_err(|e| io_err(&name, &path, e.source))?;
        fsync_dir(&self.dir.join(SNAPSHOT));
        if ram.root().exists() {
            fsync_dir(ram.root());
        }
        fsync_dir(&self.dir);
        fsync_dir(&self.store.root.join(STORE));
        let _lock = self.store.lock()?;
        let link = self.store.link(&name);
        let target = Path::new(STORE).join(&self.id);
        match std::os::unix::fs::symlink(&target, &link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(TemplateError::Exists { name });
            }
            Err(e) => return Err(io_err(&name, &link, e)),
        }
        fsync_dir(&self.store.root);
        // Only now: until the name links to it, the creator file is what
        // tells `gc` the directory is not a leftover.
        let _ = fs_err::remove_file(self.dir.join(CREATOR));
        self.committed = true;
        Ok(Template {
            name,
            dir: self.dir.clone(),
            manifest,
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = fs_err::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove the unfinished template: {e}");
        }
    }
}

impl Template {
    /// The store id.
    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    /// The snapshot to restore from.
    pub fn snapshot(&self) -> SnapshotDir {
        SnapshotDir::new(self.dir.join(SNAPSHOT))
    }

    /// The template machine's root disk, if it had one.
    pub fn disk(&self) -> Option<PathBuf> {
        let d = self.dir.join(DISK);
        self.manifest
            .files
            .iter()
            .any(|f| f.path == DISK)
            .then_some(d)
    }

    /// The diskless snapshot, if the template has one (see the crate
    /// docs), and its config drive.
    pub fn ram_snapshot(&self) -> Option<(SnapshotDir, PathBuf)> {
        let meta = format!("{RAM_SNAPSHOT}/snapshot.json");
        self.manifest.files.iter().any(|f| f.path == meta).then(|| {
            (
                SnapshotDir::new(self.dir.join(RAM_SNAPSHOT)),
                self.dir.join(RAM_CONFIG),
            )
        })
    }

    /// The template machine's config drive, if it was kept.
    pub fn config(&self) -> Option<PathBuf> {
        let c = self.dir.join(CONFIG);
        self.manifest
            .files
            .iter()
            .any(|f| f.path == CONFIG)
            .then_some(c)
    }

    /// Make `dst` (new) a copy-on-write view of the template's disk.
    pub fn clone_disk(&self, dst: &Path) -> Result<CloneMethod, TemplateError> {
        let Some(src) = self.disk() else {
            return Err(TemplateError::Snapshot {
                name: self.name.clone(),
                source: SnapshotError::Missing {
                    path: self.dir.join(DISK),
                },
            });
        };
        cow::clone_disk(&src, dst).map_err(|e| match e {
            cow::CowError::Io { source, .. } => io_err(&self.name, dst, source),
            other => TemplateError::Io {
                name: self.name.clone(),
                path: dst.to_owned(),
                source: std::io::Error::other(other.to_string()),
            },
        })
    }

    /// Check that every file is the one committed (see [`digest`]).
    pub fn verify(&self, how: Verify) -> Result<(), TemplateError> {
        let snap_err = |source| TemplateError::Snapshot {
            name: self.name.clone(),
            source,
        };
        for f in &self.manifest.files {
            let path = self.dir.join(&f.path);
            let now = match Fingerprint::of(&path) {
                Ok(fp) => fp,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(snap_err(SnapshotError::Missing { path }));
                }
                Err(e) => return Err(io_err(&self.name, &path, e)),
            };
            if now.bytes != f.fingerprint.bytes {
                return Err(snap_err(SnapshotError::Truncated {
                    path,
                    expected: f.fingerprint.bytes,
                    actual: now.bytes,
                }));
            }
            if how == Verify::Quick && now == f.fingerprint {
                continue;
            }
            let sha = content_digest(&path).map_err(|e| io_err(&self.name, &path, e))?;
            if sha != f.digest {
                return Err(snap_err(SnapshotError::Corrupt {
                    path,
                    detail: format!(
                        "its content digest is {}..., it was {}... when the template was made",
                        &sha[..12],
                        &f.digest[..f.digest.len().min(12)]
                    ),
                }));
            }
        }
        Ok(())
    }

    /// Whether a machine of `wanted` may be restored from this template.
    pub fn check_compatible(&self, wanted: &Wanted<'_>) -> Result<(), TemplateError> {
        let m = &self.manifest;
        let bad = |what, t: &str, r: &str| TemplateError::Incompatible {
            name: self.name.clone(),
            what,
            template: t.to_owned(),
            requested: r.to_owned(),
        };
        if m.backend != wanted.backend {
            return Err(bad("backend", m.backend.as_str(), wanted.backend.as_str()));
        }
        if m.vmm_version != wanted.vmm_version {
            return Err(bad("VMM version", &m.vmm_version, wanted.vmm_version));
        }
        if m.provenance.kernel_release != wanted.kernel_release {
            return Err(bad(
                "kernel",
                &m.provenance.kernel_release,
                wanted.kernel_release,
            ));
        }
        if m.provenance.image_digest != wanted.image_digest {
            return Err(bad(
                "image",
                &m.provenance.image_digest,
                wanted.image_digest,
            ));
        }
        Ok(())
    }
}
