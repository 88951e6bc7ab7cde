//! Data in and out of machines: the config drive, the secrets drive, named
//! volumes, host directories (`run -v`) and added directories (`exec
//! --add-dir`).
//!
//! # Drives and mounts
//!
//! Every data source becomes an ext4 image attached as a virtio block
//! device after the root disk (which stays `/dev/vda`). The guest finds
//! each drive by its ext4 **label**, told by one kernel parameter per
//! mount: `mvm.mount=LABEL,ro|rw,PATH` (only the label and the guest path
//! go on the kernel command line, never content). The drives are recorded
//! in [`InstanceRecord::drives`] (typed [`DriveRole`]s); the mounts (label, guest path, mode,
//! host directory) in `<instance>/mounts.json` ([`MOUNTS_FILE`]), owned by
//! this module.
//!
//! - **config** (`mvm-config`, ro, `/mnt/config`): `config.json` with the
//!   machine's id, name and network identity, and its main process (key
//!   `main`, read by the guest agent after boot). Built once per content:
//!   at creation when the machine's address is already known (none, or
//!   user networking), else at its first start, and again only when the
//!   content changes (a new address); [`CONFIG_DRIVE_SOURCE`] keeps what
//!   it was built from.
//! - **secrets** (`mvm-secrets`, `/mnt/secrets`): the guest copies the
//!   files into a tmpfs (0400 root) and unmounts the drive. The image (mode
//!   0600) stays in the instance directory so `mvm start` can boot again;
//!   `mvm rm` deletes it with the directory. The record holds only keys and
//!   host paths, never values.
//! - **named volumes** (`-v NAME:/guest`): images under
//!   `$MVM_HOME/volumes`, created on first use, kept after `rm`. A volume
//!   attached to a running machine cannot be attached to another.
//! - **host directories** (`-v /host:/guest`, `--add-dir`): **copied in at
//!   start and written back on stop** (rw only). The image is rebuilt from
//!   the host directory at each start; after the VMM has exited, the
//!   guest's changes are mirrored back (new, changed and deleted files). A
//!   marker file ([`WRITEBACK_PENDING`]) exists while a write-back is owed,
//!   so whoever sees the VMM gone first (the supervisor, or `mvm stop`/`rm
//!   -f` when the supervisor is gone) does it exactly once, and a failed
//!   write-back is retried before the image is rebuilt.

use std::path::{Path, PathBuf};

use mvm_core::instance::{DriveRecord, DriveRole, InstanceRecord};
use mvm_core::registry::Registry;
use mvm_core::{InstanceDir, MvmHome};
use mvm_data::drive::{ConfigDrive, ConfigJson, DriveError, DriveSize, SecretsDrive};
use mvm_data::spec::{AddDir, GuestMount, Mode, Secret, Volume};
use mvm_data::sync::{Changes, MirrorOptions, SyncError};
use mvm_data::volume::{Attachment, VolumeError, VolumeStore, volume_label};
use serde::{Deserialize, Serialize};

/// The mounts of a machine, in its instance directory.
pub const MOUNTS_FILE: &str = "mounts.json";
/// The `config.json` the config drive was last built from (the drive is
/// rebuilt only when the record's view of it changes, e.g. the address).
pub const CONFIG_DRIVE_SOURCE: &str = "config-drive.json";
/// Present while host directories owe a write-back.
pub const WRITEBACK_PENDING: &str = "writeback.pending";
/// How long the write-back of host directories may take (a stop waits this
/// much longer when one is owed).
pub const WRITE_BACK_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);
/// Free space added to host-directory images for the guest to write into
/// (sparse: costs nothing until used).
pub const HOSTDIR_EXTRA_MIB: u64 = 1024;

/// A data operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DrivesError {
    /// Building a drive image failed.
    #[error("cannot build the {what} drive")]
    Drive {
        /// Which drive.
        what: String,
        /// Why.
        #[source]
        source: Box<DriveError>,
    },
    /// A volume operation failed.
    #[error(transparent)]
    Volume(#[from] Box<VolumeError>),
    /// Writing guest changes back to a host directory failed.
    #[error(
        "cannot write back to {host} (the image {image} is kept; the next stop or start retries)"
    )]
    WriteBack {
        /// The host directory.
        host: PathBuf,
        /// The image holding the guest's data.
        image: PathBuf,
        /// Why.
        #[source]
        source: Box<SyncError>,
    },
    /// The mounts file could not be read or written.
    #[error("cannot {action} {path}")]
    Io {
        /// What we tried.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Two mounts at one guest path, or a kernel parameter that cannot be
    /// encoded.
    #[error("{0}")]
    Invalid(String),
}

/// What data a new machine gets besides its config drive.
#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    /// `run -v`.
    pub volumes: Vec<Volume>,
    /// `run --secret`.
    pub secrets: Vec<Secret>,
    /// `exec --add-dir`.
    pub add_dirs: Vec<AddDir>,
}

/// One guest mount of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// The drive's id in [`InstanceRecord::drives`].
    pub drive_id: String,
    /// ext4 label.
    pub label: String,
    /// Guest path.
    pub guest: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
    /// The host directory copied in (and written back when rw).
    #[serde(default)]
    pub host_dir: Option<PathBuf>,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DrivesError + use<> {
    let path = path.to_owned();
    move |source| DrivesError::Io {
        action,
        path,
        source,
    }
}

fn mounts_path(dir: &InstanceDir) -> PathBuf {
    dir.root().join(MOUNTS_FILE)
}

/// The mounts recorded for a machine (none when the file is absent).
pub fn mounts(dir: &InstanceDir) -> Result<Vec<MountEntry>, DrivesError> {
    let p = mounts_path(dir);
    match fs_err::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| io("parse", &p)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("read", &p)(e)),
    }
}

/// Volumes attached to running machines (other than `except`).
pub fn attached_volumes(registry: &Registry, except: Option<&str>) -> Vec<Attachment> {
    volume_users(registry, true)
        .into_iter()
        .filter(|a| Some(a.machine.as_str()) != except)
        .collect()
}

/// Which machine records which named volume: all machines, or only those
/// that run (their owner is alive and a VMM is expected).
pub fn volume_users(registry: &Registry, running_only: bool) -> Vec<Attachment> {
    let Ok(list) = registry.list() else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|l| l.record.ok())
        .filter(|r| !running_only || (r.status().expects_vmm() && registry.owner_alive(&r.name)))
        .flat_map(|r| {
            r.drives
                .iter()
                .filter_map(|d| d.role.volume())
                .map(|v| Attachment {
                    machine: r.name.clone(),
                    volume: v.to_owned(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Check what can be checked before anything is created: volumes in use by
/// running machines, duplicate guest paths.
pub fn check(
    registry: &Registry,
    name: Option<&str>,
    data: &DataOptions,
) -> Result<(), DrivesError> {
    let attached = attached_volumes(registry, name);
    for v in &data.volumes {
        if let Volume::Named { name, .. } = v {
            VolumeStore::check_not_in_use(name, &attached).map_err(Box::new)?;
        }
    }
    let mut guests: Vec<&Path> = vec![Path::new(mvm_data::drive::CONFIG_MOUNT)];
    if !data.secrets.is_empty() {
        guests.push(Path::new(mvm_data::drive::SECRETS_MOUNT));
    }
    let all = data
        .volumes
        .iter()
        .map(|v| v.guest())
        .chain(data.add_dirs.iter().map(|a| a.guest.as_path()));
    for g in all {
        if guests.contains(&g) {
            return Err(DrivesError::Invalid(format!(
                "two mounts at the guest path {}",
                g.display()
            )));
        }
        guests.push(g);
    }
    Ok(())
}

/// An error if a named volume of `rec` is attached to another running
/// machine (checked again at each start).
pub fn check_volumes_free(registry: &Registry, rec: &InstanceRecord) -> Result<(), DrivesError> {
    let attached = attached_volumes(registry, Some(&rec.name));
    for d in &rec.drives {
        if let Some(v) = d.role.volume() {
            VolumeStore::check_not_in_use(v, &attached).map_err(Box::new)?;
        }
    }
    Ok(())
}

fn drive_err(what: impl Into<String>) -> impl FnOnce(DriveError) -> DrivesError {
    let what = what.into();
    move |source| DrivesError::Drive {
        what,
        source: Box::new(source),
    }
}

/// Build the drives of a new machine (its directory exists, its record is
/// not saved yet), add them to `rec.drives` and write [`MOUNTS_FILE`].
pub fn attach(
    home: &MvmHome,
    rec: &mut InstanceRecord,
    dir: &InstanceDir,
    data: &DataOptions,
) -> Result<(), DrivesError> {
    let mut mounts = Vec::new();
    let mut push = |rec: &mut InstanceRecord, m: MountEntry, path: PathBuf, role: DriveRole| {
        rec.drives.push(DriveRecord {
            id: m.drive_id.clone(),
            path,
            read_only: m.read_only,
            role,
        });
        mounts.push(m);
    };

    // A machine that gets its address at start builds the drive then.
    if !(rec.network == mvm_core::instance::NetworkMode::Nat
        && crate::resources::network::use_tap())
    {
        write_config_drive(home, rec, dir)?;
    }
    push(
        rec,
        MountEntry {
            drive_id: "config".into(),
            label: mvm_data::drive::CONFIG_LABEL.into(),
            guest: mvm_data::drive::CONFIG_MOUNT.into(),
            read_only: true,
            host_dir: None,
        },
        dir.config_drive(),
        DriveRole::Config,
    );

    if !data.secrets.is_empty() {
        SecretsDrive::build_from(&dir.secrets_drive(), &data.secrets)
            .map_err(drive_err("secrets"))?;
        push(
            rec,
            MountEntry {
                drive_id: "secrets".into(),
                label: mvm_data::drive::SECRETS_LABEL.into(),
                guest: mvm_data::drive::SECRETS_MOUNT.into(),
                read_only: true,
                host_dir: None,
            },
            dir.secrets_drive(),
            DriveRole::Secrets,
        );
    }

    let store = VolumeStore::new(home);
    let dirs = data
        .volumes
        .iter()
        .filter_map(|v| match v {
            Volume::HostDir { host, guest, mode } => Some((host, guest, *mode)),
            Volume::Named { .. } => None,
        })
        .chain(data.add_dirs.iter().map(|a| (&a.host, &a.guest, a.mode)));
    for (i, (host, guest, mode)) in dirs.enumerate() {
        let label = format!("mvmdir-{i}");
        let path = host_dir_image(dir, &format!("dir{i}"));
        build_host_dir_image(host, &path, &label, mode)?;
        push(
            rec,
            MountEntry {
                drive_id: format!("dir{i}"),
                label,
                guest: guest.clone(),
                read_only: mode.read_only(),
                host_dir: Some(host.clone()),
            },
            path,
            DriveRole::HostDir(host.clone()),
        );
    }
    for (i, v) in data.volumes.iter().enumerate() {
        if let Volume::Named { name, guest, mode } = v {
            let (path, created) = store.ensure(name, None).map_err(Box::new)?;
            if created {
                tracing::info!("created volume {name:?}");
            }
            push(
                rec,
                MountEntry {
                    drive_id: format!("vol{i}"),
                    label: volume_label(name),
                    guest: guest.clone(),
                    read_only: mode.read_only(),
                    host_dir: None,
                },
                path,
                DriveRole::Volume(name.clone()),
            );
        }
    }
    let p = mounts_path(dir);
    let json = serde_json::to_vec_pretty(&mounts).expect("plain data serialises");
    fs_err::write(&p, &json).map_err(io("write", &p))?;
    Ok(())
}

fn build_host_dir_image(
    host: &Path,
    image: &Path,
    label: &str,
    mode: Mode,
) -> Result<(), DrivesError> {
    let size = if mode.read_only() {
        DriveSize::Auto
    } else {
        DriveSize::AutoPlus {
            extra_mib: HOSTDIR_EXTRA_MIB,
        }
    };
    mvm_data::drive::build_ext4_from_dir(host, image, label, size, mode.read_only())
        .map_err(drive_err(format!("host directory {}", host.display())))?;
    Ok(())
}

/// The image of host-directory drive `drive_id` (`dirN` → `dir-N.ext4`).
fn host_dir_image(dir: &InstanceDir, drive_id: &str) -> PathBuf {
    let n = drive_id.strip_prefix("dir").unwrap_or(drive_id);
    dir.root().join(format!("dir-{n}.ext4"))
}

/// The `mvm.mount=` kernel parameters of a machine.
pub fn kernel_args(dir: &InstanceDir) -> Result<Vec<String>, DrivesError> {
    mounts(dir)?
        .into_iter()
        .map(|m| {
            GuestMount {
                source_drive_label: m.label,
                guest_path: m.guest,
                read_only: m.read_only,
            }
            .to_kernel_arg()
            .map_err(|e| DrivesError::Invalid(e.to_string()))
        })
        .collect()
}

/// (Re)build the config drive from the record, unless it was built from
/// the same content already (the address can change between starts: a
/// stopped machine holds none). Returns whether it was built.
pub fn write_config_drive(
    home: &MvmHome,
    rec: &InstanceRecord,
    dir: &InstanceDir,
) -> Result<bool, DrivesError> {
    let mut cfg = ConfigJson::new(rec.id.clone(), rec.name.clone());
    if let Some(n) = &rec.net {
        cfg.ip = Some(n.ip);
        cfg.prefix_len = Some(n.prefix);
        cfg.gateway = Some(n.gateway);
    }
    cfg.main = rec.main.as_ref().map(|m| mvm_agent_proto::MainSpec {
        argv: m.argv.clone(),
        env: m.process.env.clone(),
        cwd: m.process.cwd.clone(),
        user: m.process.user.clone(),
        poweroff_grace_ms: None,
    });
    let source = dir.root().join(CONFIG_DRIVE_SOURCE);
    let json = serde_json::to_vec(&cfg).expect("plain data serialises");
    if dir.config_drive().is_file() && fs_err::read(&source).is_ok_and(|old| old == json) {
        return Ok(false);
    }
    // Forget the old content first: a crash between the two writes then
    // means a rebuild, never a stale drive taken as current.
    mvm_core::files::remove_if_exists(&source).map_err(io("remove", &source))?;
    let dest = dir.config_drive();
    let templated =
        crate::resources::config_template::write(home, &dest, &cfg).map_err(io("write", &dest))?;
    if !templated {
        ConfigDrive::build(&dest, &cfg, &[]).map_err(drive_err("config"))?;
    }
    // Not atomic on purpose: a torn file never equals the content, so it
    // only means one more build.
    fs_err::write(&source, &json).map_err(io("write", &source))?;
    Ok(true)
}

/// Before a (re)start: bring the config drive up to date (built only when
/// its content changed), finish a write-back still owed, refresh the
/// host-directory images from the host (not on the first start: `attach`
/// just built them), and mark rw host directories as owing a write-back.
pub fn prepare_start(
    home: &MvmHome,
    rec: &InstanceRecord,
    dir: &InstanceDir,
) -> Result<(), DrivesError> {
    // Only the machine's own drive: a template's machine uses one moved to
    // the template store, which never changes.
    if rec
        .drives
        .iter()
        .any(|d| d.role == DriveRole::Config && d.path == dir.config_drive())
    {
        write_config_drive(home, rec, dir)?;
    }
    let mounts = mounts(dir)?;
    if mounts.iter().all(|m| m.host_dir.is_none()) {
        return Ok(());
    }
    write_back_all(dir)?;
    let first_start = rec.started_at.is_none();
    for m in &mounts {
        let (Some(host), false) = (&m.host_dir, first_start) else {
            continue;
        };
        let Some(d) = rec.drives.iter().find(|d| d.id == m.drive_id) else {
            continue;
        };
        let mode = if m.read_only { Mode::Ro } else { Mode::Rw };
        build_host_dir_image(host, &d.path, &m.label, mode)?;
    }
    if mounts.iter().any(|m| m.host_dir.is_some() && !m.read_only) {
        let p = dir.root().join(WRITEBACK_PENDING);
        fs_err::write(&p, b"").map_err(io("write", &p))?;
    }
    Ok(())
}

/// After the VMM has exited: mirror every rw host directory's image back
/// to the host, once (see [`WRITEBACK_PENDING`]). Returns what changed per
/// host directory.
pub fn write_back_all(dir: &InstanceDir) -> Result<Vec<(PathBuf, Changes)>, DrivesError> {
    let marker = dir.root().join(WRITEBACK_PENDING);
    if !marker.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for m in mounts(dir)? {
        let (Some(host), false) = (m.host_dir, m.read_only) else {
            continue;
        };
        let image = host_dir_image(dir, &m.drive_id);
        let wb = |source| DrivesError::WriteBack {
            host: host.clone(),
            image: image.clone(),
            source: Box::new(source),
        };
        let opts = MirrorOptions::owner_of(&host).map_err(wb)?;
        let changes = mvm_data::sync::write_back(&image, &host, &opts).map_err(wb)?;
        tracing::info!("{}: {changes}", host.display());
        out.push((host, changes));
    }
    fs_err::remove_file(&marker).map_err(io("remove", &marker))?;
    Ok(out)
}
