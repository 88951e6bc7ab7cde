//! Snapshots of a running VM, as the backends write and read them.
//!
//! A snapshot is one directory ([`SnapshotDir`]) with three files, named
//! here and nowhere else:
//!
//! ```text
//! <snapshot>/snapshot.json   SnapshotMeta: who wrote it, for which machine shape
//! <snapshot>/vmstate         device + vCPU state (QEMU migration stream, or
//!                            Firecracker's snapshot file)
//! <snapshot>/memory          guest RAM, byte for byte (absent when QEMU put
//!                            the RAM in the migration stream)
//! ```
//!
//! The backend writes `vmstate` and `memory`, fsyncs them, then writes
//! `snapshot.json` atomically; a directory without `snapshot.json` is not a
//! snapshot. At restore the backend maps `memory` **privately** (writes of
//! the restored guest go to its own copy-on-write pages, never to the
//! file), so one snapshot serves any number of clones at once and its
//! unmodified pages are shared between them in the host page cache.
//!
//! [`SnapshotMeta::check_restorable`] is what every backend runs before it
//! spawns anything: the files exist and have the recorded sizes, the VMM is
//! the one that wrote them, and the machine asked for has the same shape
//! (vCPUs, memory, devices) — each failure is a [`SnapshotError`] naming
//! the file or the field, so a caller can fall back to a cold boot and say
//! why.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{BackendKind, VmSpec};

/// Version of the `snapshot.json` format.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// The directory of one snapshot and every file in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDir {
    root: PathBuf,
}

impl SnapshotDir {
    /// Wrap a snapshot directory path.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// [`SnapshotMeta`] as JSON; written last.
    pub fn meta(&self) -> PathBuf {
        self.root.join("snapshot.json")
    }
    /// Device and vCPU state.
    pub fn state(&self) -> PathBuf {
        self.root.join("vmstate")
    }
    /// Guest RAM.
    pub fn memory(&self) -> PathBuf {
        self.root.join("memory")
    }

    /// Read and parse `snapshot.json`.
    pub fn read_meta(&self) -> Result<SnapshotMeta, SnapshotError> {
        let path = self.meta();
        let bytes = match fs_err::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::Missing { path });
            }
            Err(e) => {
                return Err(SnapshotError::Io { path, source: e });
            }
        };
        let meta: SnapshotMeta =
            serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if meta.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format {
                path,
                found: meta.format,
                supported: SNAPSHOT_FORMAT,
            });
        }
        Ok(meta)
    }

    /// Write `snapshot.json` atomically (after the data files are durable).
    pub fn write_meta(&self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        let json = serde_json::to_vec_pretty(meta).expect("snapshot metadata serializes");
        crate::atomic::write_atomic(&self.meta(), &json, 0o644).map_err(|e| SnapshotError::Io {
            path: e.path,
            source: e.source,
        })
    }
}

/// Where the guest RAM of a snapshot lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryMode {
    /// In `memory`, mapped privately at restore (QEMU file-backed RAM with
    /// `x-ignore-shared`; Firecracker's memory file).
    MemoryFile,
    /// Inside `vmstate` (QEMU's ordinary migration stream): each restore
    /// reads every page into anonymous memory of its own.
    InStream,
}

/// How guest RAM is backed while a VM runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Anonymous private memory (what [`crate::VmBackend::launch`] does).
    #[default]
    Anonymous,
    /// This file, mapped shared: the guest's RAM *is* the file, so a later
    /// snapshot needs to save only device state, and the file becomes the
    /// snapshot's `memory` without a copy (QEMU). The file is created (sparse)
    /// if missing; it must not be used by anything else while the VM runs.
    SharedFile(PathBuf),
}

/// A block device as the snapshot saw it (devices must match at restore;
/// the backing file may differ).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDrive {
    /// Drive id.
    pub id: String,
    /// Read-only.
    pub read_only: bool,
    /// The host path the VMM had open (Firecracker's snapshot refers to it).
    pub path: PathBuf,
}

/// `snapshot.json`: what was saved, by what, for which machine shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// Backend that wrote it.
    pub backend: BackendKind,
    /// The VMM's version string (`QEMU emulator version 7.2.22 ...`,
    /// `1.16.1`); a restore by another version is refused.
    pub vmm_version: String,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Where the RAM is.
    pub memory: MemoryMode,
    /// Block devices, in guest order.
    pub drives: Vec<SnapshotDrive>,
    /// Whether the machine had a network interface.
    pub net: bool,
    /// Size of `vmstate` in bytes.
    pub state_bytes: u64,
    /// Size of `memory` in bytes (0 with [`MemoryMode::InStream`]).
    pub memory_bytes: u64,
    /// When it was taken (RFC 3339, UTC).
    pub created: String,
    /// Taken by a jailed VMM: the state names the drives by their paths
    /// inside the chroot, so only a jailed VMM can load it.
    #[serde(default)]
    pub jailed: bool,
}

/// What [`crate::VmBackend::snapshot`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// The metadata written.
    pub meta: SnapshotMeta,
    /// Blocks really allocated by `memory` (it is sparse), in bytes.
    pub memory_allocated_bytes: u64,
    /// Pausing the vCPUs, in ms.
    pub pause_ms: u64,
    /// Saving the state (and, Firecracker/in-stream, the RAM), in ms.
    pub save_ms: u64,
    /// Making the files durable (fsync), in ms.
    pub sync_ms: u64,
    /// Everything, in ms.
    pub total_ms: u64,
    /// Whether the VM may be resumed afterwards. `false` when its RAM *is*
    /// the snapshot's memory file: running on would change the snapshot, so
    /// the caller must stop it (kill the VMM) instead.
    pub may_resume: bool,
}

/// What a restore did, and how long each step took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreInfo {
    /// Spawn until the VMM's control API answered, in ms.
    pub spawn_ms: u64,
    /// Loading the state (and mapping the memory), in ms.
    pub load_ms: u64,
    /// Resuming the vCPUs, in ms.
    pub resume_ms: u64,
    /// Everything, in ms.
    pub total_ms: u64,
}

/// A snapshot cannot be written or restored. Every variant names the file
/// or the field, so the message says what to fix (or why a cold boot
/// happens instead).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file of the snapshot does not exist.
    #[error("snapshot file {path} is missing")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file is shorter (or longer) than recorded.
    #[error("snapshot file {path} is truncated or damaged: {actual} bytes, expected {expected}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Recorded size.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// A file's content is not what was written.
    #[error("snapshot file {path} is corrupted: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// `snapshot.json` has another format version.
    #[error("snapshot {path} has format {found}; this mvm reads format {supported}")]
    Format {
        /// The metadata file.
        path: PathBuf,
        /// Format found.
        found: u32,
        /// Format this build reads.
        supported: u32,
    },
    /// Taken by another backend.
    #[error("the snapshot was taken by {snapshot}, not {requested}")]
    Backend {
        /// Writer.
        snapshot: BackendKind,
        /// Reader.
        requested: BackendKind,
    },
    /// Taken by another VMM version.
    #[error("the snapshot was taken by {snapshot:?}, but this host runs {running:?}")]
    VmmVersion {
        /// Writer's version.
        snapshot: String,
        /// Running version.
        running: String,
    },
    /// The machine asked for has another shape than the snapshot.
    #[error("the snapshot has {what} {snapshot}, the machine asks for {requested}")]
    Mismatch {
        /// The field (`vCPUs`, `memory (MiB)`, `drives`, `network interface`).
        what: &'static str,
        /// The snapshot's value.
        snapshot: String,
        /// The requested value.
        requested: String,
    },
    /// The VMM refused or failed to load the snapshot.
    #[error("the VMM could not load the snapshot: {detail}")]
    Load {
        /// The VMM's own words.
        detail: String,
    },
    /// Reading or writing a file failed.
    #[error("snapshot file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn file_len(path: &Path) -> Result<u64, SnapshotError> {
    match fs_err::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SnapshotError::Missing {
            path: path.to_owned(),
        }),
        Err(e) => Err(SnapshotError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Check that `path` exists with exactly `expected` bytes.
pub fn check_size(path: &Path, expected: u64) -> Result<(), SnapshotError> {
    let actual = file_len(path)?;
    if actual != expected {
        return Err(SnapshotError::Truncated {
            path: path.to_owned(),
            expected,
            actual,
        });
    }
    Ok(())
}

impl SnapshotMeta {
    /// Whether `dir` holds a snapshot this backend/version can restore into
    /// a machine shaped like `spec` (see the module docs). Cheap: metadata
    /// and file sizes only; content damage is caught by the VMM's own
    /// stream checks at load (and by the template store's checksums).
    pub fn check_restorable(
        &self,
        dir: &SnapshotDir,
        backend: BackendKind,
        vmm_version: &str,
        spec: &VmSpec,
    ) -> Result<(), SnapshotError> {
        if self.backend != backend {
            return Err(SnapshotError::Backend {
                snapshot: self.backend,
                requested: backend,
            });
        }
        if self.vmm_version != vmm_version {
            return Err(SnapshotError::VmmVersion {
                snapshot: self.vmm_version.clone(),
                running: vmm_version.to_owned(),
            });
        }
        self.check_shape(spec)?;
        check_size(&dir.state(), self.state_bytes)?;
        if self.memory == MemoryMode::MemoryFile {
            check_size(&dir.memory(), self.memory_bytes)?;
        }
        Ok(())
    }

    /// Whether `spec` has the snapshot's vCPUs, memory and devices.
    pub fn check_shape(&self, spec: &VmSpec) -> Result<(), SnapshotError> {
        let mismatch = |what, s: String, r: String| SnapshotError::Mismatch {
            what,
            snapshot: s,
            requested: r,
        };
        if self.cpus != spec.cpus {
            return Err(mismatch(
                "vCPUs",
                self.cpus.to_string(),
                spec.cpus.to_string(),
            ));
        }
        if self.memory_mib != spec.memory_mib {
            return Err(mismatch(
                "memory (MiB)",
                self.memory_mib.to_string(),
                spec.memory_mib.to_string(),
            ));
        }
        let ours: Vec<(&str, bool)> = self
            .drives
            .iter()
            .map(|d| (d.id.as_str(), d.read_only))
            .collect();
        let theirs: Vec<(&str, bool)> = spec
            .drives
            .iter()
            .map(|d| (d.id.as_str(), d.read_only))
            .collect();
        if ours != theirs {
            let show = |v: &[(&str, bool)]| {
                let items: Vec<String> = v
                    .iter()
                    .map(|(id, ro)| format!("{id}{}", if *ro { ":ro" } else { "" }))
                    .collect();
                format!("[{}]", items.join(", "))
            };
            return Err(mismatch("drives", show(&ours), show(&theirs)));
        }
        if self.net != spec.net.is_some() {
            let yn = |b: bool| if b { "one" } else { "none" }.to_owned();
            return Err(mismatch(
                "network interface",
                yn(self.net),
                yn(spec.net.is_some()),
            ));
        }
        Ok(())
    }
}

/// A machine's relation to templates: the `template` field of its record
/// (`InstanceRecord::template`). Every part is optional; a machine that
/// never met a template has none of this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateUse {
    /// The machine is a clone of a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<CloneOf>,
    /// The machine is being made into a template: its RAM is on this file,
    /// mapped shared (QEMU), so that its snapshot needs no copy of the RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file: Option<PathBuf>,
    /// A snapshot its supervisor is asked to take (`mvm template create
    /// --from`, or the template machine of `mvm template create`), set by
    /// the asking process before it signals the supervisor (SIGUSR2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_request: Option<SnapshotRequest>,
    /// The supervisor's answer to [`TemplateUse::snapshot_request`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_done: Option<SnapshotDone>,
}

/// Which template a clone came from, and how it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneOf {
    /// The template's name when the clone was made.
    pub template: String,
    /// The template's store id (what its reference is filed under).
    pub id: String,
    /// The next start restores the snapshot (cleared once the clone ran:
    /// later starts cold-boot its own disk).
    pub restore: bool,
    /// A restore that fails is an error, not a cold boot.
    #[serde(default)]
    pub require_snapshot: bool,
    /// The root drive is the template's own disk behind a throwaway
    /// copy-on-write layer of the VMM (QEMU `snapshot=on`): a transient
    /// clone needs no disk file of its own.
    #[serde(default)]
    pub volatile_root: bool,
    /// Restores the template's diskless snapshot (a transient QEMU clone
    /// of an image that boots from its initramfs): no root drive at all.
    #[serde(default)]
    pub ram: bool,
    /// Why the clone was cold-booted instead, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_boot: Option<String>,
}

/// A snapshot asked of a running machine's supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// Tells requests apart (the answer repeats it).
    pub id: u64,
    /// The (existing, empty) snapshot directory to write.
    pub dest: PathBuf,
    /// Where to copy the root disk while the VM is paused (`None`: the
    /// machine runs on its final disk already, or has none).
    #[serde(default)]
    pub disk: Option<PathBuf>,
    /// Where to copy the config drive while the VM is paused.
    #[serde(default)]
    pub config: Option<PathBuf>,
}

/// How a [`SnapshotRequest`] went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDone {
    /// The request's id.
    pub id: u64,
    /// Pause + save + sync, in ms (when it worked).
    #[serde(default)]
    pub total_ms: u64,
    /// Whether the VM runs on after the snapshot.
    #[serde(default)]
    pub resumed: bool,
    /// Why it failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// The current time as RFC 3339 (UTC), for [`SnapshotMeta::created`].
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Bytes really allocated on disk by `path` (sparse files use less than
/// their length).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs_err::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Copy `src` to `dst` (new file), keeping holes: only the data extents
/// are copied (`SEEK_DATA`/`SEEK_HOLE` + `copy_file_range`).
pub fn copy_sparse(src: &Path, dst: &Path) -> std::io::Result<u64> {
    use rustix::fs::{SeekFrom, copy_file_range, seek};
    let from = fs_err::File::open(src)?;
    let to = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let mut pos: u64 = 0;
    let mut copied = 0u64;
    while pos < len {
        let data = match seek(&from, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let hole = seek(&from, SeekFrom::Hole(data)).map_err(std::io::Error::from)?;
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let want = (hole - off_in).min(1 << 30) as usize;
            let n = match copy_file_range(&from, Some(&mut off_in), &to, Some(&mut off_out), want) {
                Ok(n) => n,
                // Across filesystems (or where unsupported): copy by hand.
                Err(
                    rustix::io::Errno::XDEV
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::INVAL,
                ) => {
                    let n = copy_range(from.file(), to.file(), off_in, want)?;
                    off_in += n as u64;
                    off_out += n as u64;
                    n
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while being copied", src.display()),
                ));
            }
            copied += n as u64;
        }
        pos = hole;
    }
    Ok(copied)
}

/// Copy up to `len` bytes at `off` from `from` to the same offset of `to`
/// with `pread`/`pwrite`; returns the bytes copied (0 at end of file).
fn copy_range(
    from: &std::fs::File,
    to: &std::fs::File,
    off: u64,
    len: usize,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(1 << 20)];
    let n = from.read_at(&mut buf, off)?;
    to.write_all_at(&buf[..n], off)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{DriveSpec, KernelPaths, NetSpec};

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        use std::io::{Seek, SeekFrom, Write};
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let mut f = fs_err::File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&[0xab; 4096]).unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 4096)).unwrap();
        f.write_all(&[0xcd; 4096]).unwrap();
        drop(f);
        let dst = t.path().join("dst");
        let n = copy_sparse(&src, &dst).unwrap();
        assert!(n >= 8192, "{n}");
        assert_eq!(fs_err::read(&src).unwrap(), fs_err::read(&dst).unwrap());
        assert!(allocated_bytes(&dst) < 4 << 20, "{}", allocated_bytes(&dst));
        // The destination must not exist yet.
        assert!(copy_sparse(&src, &dst).is_err());
    }

    fn spec() -> VmSpec {
        VmSpec {
            name: "c".into(),
            cpus: 1,
            memory_mib: 4,
            kernel: KernelPaths {
                bzimage: "/k".into(),
                vmlinux: "/v".into(),
            },
            initrd: None,
            kernel_args: vec![],
            drives: vec![DriveSpec {
                id: "root".into(),
                path: "/clone/disk".into(),
                read_only: false,
            }],
            net: None,
            vsock_cid: 3,
            transient: true,
            isolation: None,
        }
    }

    fn meta(dir: &SnapshotDir) -> SnapshotMeta {
        fs_err::write(dir.state(), b"state").unwrap();
        fs_err::write(dir.memory(), vec![0u8; 4 << 20]).unwrap();
        SnapshotMeta {
            format: SNAPSHOT_FORMAT,
            backend: BackendKind::Qemu,
            vmm_version: "QEMU 7.2".into(),
            cpus: 1,
            memory_mib: 4,
            memory: MemoryMode::MemoryFile,
            drives: vec![SnapshotDrive {
                id: "root".into(),
                read_only: false,
                path: "/template/disk".into(),
            }],
            net: false,
            state_bytes: 5,
            memory_bytes: 4 << 20,
            created: now_rfc3339(),
            jailed: false,
        }
    }

    #[test]
    fn restorable_and_each_refusal_names_its_cause() {
        let t = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(t.path());
        let m = meta(&dir);
        dir.write_meta(&m).unwrap();
        assert_eq!(dir.read_meta().unwrap(), m);
        m.check_restorable(&dir, BackendKind::Qemu, "QEMU 7.2", &spec())
            .unwrap();

        let e = m
            .check_restorable(&dir, BackendKind::Firecracker, "QEMU 7.2", &spec())
            .unwrap_err();
        assert!(matches!(e, SnapshotError::Backend { .. }), "{e}");
        let e = m
            .check_restorable(&dir, BackendKind::Qemu, "QEMU 8.0", &spec())
            .unwrap_err();
        assert!(e.to_string().contains("QEMU 8.0"), "{e}");
        let mut s = spec();
        s.memory_mib = 8;
        let e = m
            .check_restorable(&dir, BackendKind::Qemu, "QEMU 7.2", &s)
            .unwrap_err();
        assert!(e.to_string().contains("memory (MiB) 4"), "{e}");
        let mut s = spec();
        s.drives[0].read_only = true;
        let e = m.check_shape(&s).unwrap_err();
        assert!(e.to_string().contains("[root]"), "{e}");
        let mut s = spec();
        s.net = Some(NetSpec {
            tap: "t".into(),
            mac: "m".into(),
        });
        assert!(m.check_shape(&s).is_err());

        // Truncated memory, then missing state.
        let f = fs_err::OpenOptions::new()
            .write(true)
            .open(dir.memory())
            .unwrap();
        f.set_len(1 << 20).unwrap();
        let e = m
            .check_restorable(&dir, BackendKind::Qemu, "QEMU 7.2", &spec())
            .unwrap_err();
        assert!(
            matches!(e, SnapshotError::Truncated { actual, .. } if actual == 1 << 20),
            "{e}"
        );
        fs_err::remove_file(dir.state()).unwrap();
        let e = m
            .check_restorable(&dir, BackendKind::Qemu, "QEMU 7.2", &spec())
            .unwrap_err();
        assert!(
            matches!(e, SnapshotError::Missing { ref path } if path.ends_with("vmstate")),
            "{e}"
        );
    }

    #[test]
    fn bad_metadata_is_typed() {
        let t = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(t.path());
        assert!(matches!(
            dir.read_meta(),
            Err(SnapshotError::Missing { .. })
        ));
        fs_err::write(dir.meta(), b"{\"format\": 1").unwrap();
        assert!(matches!(
            dir.read_meta(),
            Err(SnapshotError::Corrupt { .. })
        ));
        let mut m = meta(&dir);
        m.format = 99;
        fs_err::write(dir.meta(), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = dir.read_meta().unwrap_err();
        assert!(matches!(e, SnapshotError::Format { found: 99, .. }), "{e}");
    }
}
