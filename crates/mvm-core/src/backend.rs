//! The one trait every hypervisor backend implements ([`VmBackend`]), and
//! the backend-neutral description of a VM ([`VmSpec`]).
//!
//! Division of labour:
//! - the *runtime* (crate `mvm-runtime`) decides what to run: it allocates
//!   resources, prepares drives and writes the record;
//! - the *backend* turns a [`VmSpec`] into a running VMM process (argv,
//!   API calls), reports how to reach the guest agent's byte stream, and
//!   performs VMM-level control (pause, resume, graceful shutdown request).
//!
//! The VMM is spawned as a child of the calling process (the mvm
//! supervisor), which waits for it and records its exit.

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::paths::InstanceDir;
use crate::snapshot::{MemoryBacking, RestoreInfo, SnapshotDir, SnapshotError, SnapshotInfo};

/// A hypervisor backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// QEMU `-M microvm` (KVM when usable, TCG otherwise).
    Qemu,
    /// Firecracker.
    Firecracker,
}

impl BackendKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for: a backend, or `auto`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Firecracker when its binary is present and KVM is usable, else QEMU.
    #[default]
    Auto,
    /// Always QEMU.
    Qemu,
    /// Always Firecracker.
    Firecracker,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "qemu" => Ok(Self::Qemu),
            "firecracker" => Ok(Self::Firecracker),
            other => Err(format!(
                "unknown backend {other:?} (expected auto, firecracker or qemu)"
            )),
        }
    }
}

/// Kernel artefacts of an image; each backend picks the format it boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPaths {
    /// The distribution's compressed kernel (QEMU boots it directly).
    pub bzimage: PathBuf,
    /// The uncompressed ELF kernel (Firecracker on x86_64 needs it).
    pub vmlinux: PathBuf,
}

/// A block device for the guest. Drives appear in the guest in order:
/// the first is `/dev/vda`, the second `/dev/vdb`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// Identifier (`[a-z0-9_]+`), used as Firecracker drive id / QEMU node name.
    pub id: String,
    /// Host path of the raw image.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}

/// A TAP-backed network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// Host TAP device name (exists before launch).
    pub tap: String,
    /// Guest MAC address.
    pub mac: String,
}

/// Everything a backend needs to launch one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Machine name.
    pub name: String,
    /// vCPUs.
    pub cpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Kernel.
    pub kernel: KernelPaths,
    /// Initramfs (cpio, possibly compressed).
    pub initrd: Option<PathBuf>,
    /// Kernel parameters mvm needs (`mvm.*`); the backend appends its own
    /// console and platform parameters.
    pub kernel_args: Vec<String>,
    /// Block devices, in guest order.
    pub drives: Vec<DriveSpec>,
    /// Network interface, if any.
    pub net: Option<NetSpec>,
    /// vsock guest CID (Firecracker; unused by QEMU here).
    pub vsock_cid: u32,
    /// The VM belongs to one command: the VMM should die with its parent.
    pub transient: bool,
    /// How the VMM is confined (uid/gid, cgroup); `None`: it runs with
    /// mvm's own privileges.
    pub isolation: Option<crate::isolation::Isolation>,
}

/// What a backend can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Pause/resume vCPUs.
    pub pause: bool,
    /// Snapshot/restore.
    pub snapshot: bool,
    /// Hardware acceleration in use (KVM).
    pub accelerated: bool,
}

/// A backend operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{backend}: {message}{}", tails(.vmm_log_tail, .console_tail))]
pub struct BackendError {
    /// Which backend.
    pub backend: BackendKind,
    /// What failed, in words a user can act on.
    pub message: String,
    /// Underlying cause.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// Last lines of the VMM's own log, when relevant.
    pub vmm_log_tail: Option<String>,
    /// Last lines of the guest console, when relevant.
    pub console_tail: Option<String>,
}

fn tails(vmm: &Option<String>, console: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(t) = vmm.as_deref().filter(|t| !t.trim().is_empty()) {
        s.push_str("\n--- last lines of the VMM log ---\n");
        s.push_str(t.trim_end());
    }
    if let Some(t) = console.as_deref().filter(|t| !t.trim().is_empty()) {
        s.push_str("\n--- last lines of the guest console ---\n");
        s.push_str(t.trim_end());
    }
    s
}

impl BackendError {
    /// An error with a message and no cause.
    pub fn new(backend: BackendKind, message: impl Into<String>) -> Self {
        Self {
            backend,
            message: message.into(),
            source: None,
            vmm_log_tail: None,
            console_tail: None,
        }
    }

    /// Attach a cause.
    pub fn with_source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    /// The [`SnapshotError`] behind this error, if a snapshot was the
    /// problem (a caller falls back to a cold boot on these).
    pub fn snapshot_error(&self) -> Option<&SnapshotError> {
        self.source.as_deref()?.downcast_ref::<SnapshotError>()
    }

    /// Attach the last lines of the VMM log and guest console of `dir`.
    pub fn with_logs(mut self, dir: &InstanceDir) -> Self {
        self.vmm_log_tail = tail_lines(&dir.vmm_log(), 20);
        self.console_tail = tail_lines(&dir.console_log(), 20);
        self
    }
}

/// The last `n` lines of a text file (lossy UTF-8), if it can be read.
pub fn tail_lines(path: &std::path::Path, n: usize) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs_err::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    Some(lines[from..].join("\n"))
}

/// A VMM launched by [`VmBackend::launch`].
#[derive(Debug)]
pub struct RunningVmm {
    /// The VMM process: a child of the caller, or a descendant adopted as
    /// its subreaper (a jailed Firecracker).
    pub child: crate::vmm_child::VmmChild,
    /// The guest agent stream, if the backend had to connect it while
    /// launching (QEMU waits for the chardev client before it boots).
    pub guest: Option<UnixStream>,
}

/// A VMM restored from a snapshot by [`VmBackend::restore`].
#[derive(Debug)]
pub struct RestoredVmm {
    /// The VMM, running the restored guest.
    pub vmm: RunningVmm,
    /// How long each step took.
    pub info: RestoreInfo,
}

fn unsupported(kind: BackendKind, what: &str) -> BackendError {
    BackendError::new(
        kind,
        format!("{what} is not supported by the {kind} backend"),
    )
}

/// A hypervisor backend. Implemented by `mvm-qemu` and `mvm-firecracker`.
pub trait VmBackend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// What it supports on this host.
    fn capabilities(&self) -> Capabilities;

    /// Spawn the VMM for `spec` with its files in `dir`, configure it and
    /// start the guest. Returns once the VMM reports the instance started,
    /// or fails by `deadline` with the tail of the VMM log and console.
    /// On error nothing is left running.
    fn launch(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        deadline: Instant,
    ) -> impl Future<Output = Result<RunningVmm, BackendError>> + Send;

    /// [`VmBackend::launch`] with guest RAM backed as `memory` says (a
    /// machine that will become a template runs on a shared memory file, so
    /// that its snapshot needs no copy of the RAM). The default supports
    /// only [`MemoryBacking::Anonymous`].
    fn launch_with_memory(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        memory: &MemoryBacking,
        deadline: Instant,
    ) -> impl Future<Output = Result<RunningVmm, BackendError>> + Send {
        async move {
            match memory {
                MemoryBacking::Anonymous => self.launch(spec, dir, deadline).await,
                MemoryBacking::SharedFile(_) => {
                    Err(unsupported(self.kind(), "file-backed guest memory"))
                }
            }
        }
    }

    /// Snapshot the running VM of `dir`, launched from `spec`, into `dest`
    /// (an existing empty directory): pause the vCPUs, save device state
    /// and memory, make the files durable, write the metadata last. The VM
    /// is left **paused**; resume it (if [`SnapshotInfo::may_resume`]) or
    /// stop its VMM.
    fn snapshot(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        dest: &SnapshotDir,
        deadline: Instant,
    ) -> impl Future<Output = Result<SnapshotInfo, BackendError>> + Send {
        let _ = (spec, dir, dest, deadline);
        async move { Err(unsupported(self.kind(), "snapshotting")) }
    }

    /// Start a VMM for `spec` in `dir` from the snapshot `from` instead of
    /// booting: check the snapshot fits (a [`SnapshotError`] otherwise,
    /// before anything is spawned), spawn, load, resume. `spec` must have
    /// the snapshot's shape (vCPUs, memory, drives in order, network or
    /// not); its drive *files* and TAP may differ (the clone's own). The
    /// snapshot's files are never written. On error nothing is left
    /// running.
    fn restore(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        from: &SnapshotDir,
        deadline: Instant,
    ) -> impl Future<Output = Result<RestoredVmm, BackendError>> + Send {
        let _ = (spec, dir, from, deadline);
        async move { Err(unsupported(self.kind(), "restoring a snapshot")) }
    }

    /// Open a new byte stream to the guest agent (retrying until the guest
    /// listens, up to `deadline`).
    fn connect_guest(
        &self,
        dir: &InstanceDir,
        deadline: Instant,
    ) -> impl Future<Output = Result<UnixStream, BackendError>> + Send;

    /// Pause the vCPUs.
    fn pause(&self, dir: &InstanceDir) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Resume the vCPUs.
    fn resume(&self, dir: &InstanceDir) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Ask the guest to shut down at the VMM level (ACPI power button,
    /// Ctrl-Alt-Del). Returns once the request was delivered.
    fn request_shutdown(
        &self,
        dir: &InstanceDir,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// Whether KVM can run real guests here: `/dev/kvm` opens read-write and the
/// CPU advertises `vmx` or `svm`. (Nested PVM hosts expose `/dev/kvm`
/// without those flags and cannot boot a standard kernel; see
/// ENVIRONMENT.md.)
pub fn kvm_usable() -> KvmStatus {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = dev {
        return KvmStatus {
            usable: false,
            reason: format!("/dev/kvm cannot be opened: {e}"),
        };
    }
    let cpuinfo = fs_err::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    if has("vmx") || has("svm") {
        KvmStatus {
            usable: true,
            reason: "/dev/kvm opens and the CPU has hardware virtualization".into(),
        }
    } else {
        KvmStatus {
            usable: false,
            reason: "/dev/kvm exists but the CPU has neither vmx nor svm (nested/paravirtual KVM cannot boot standard guests)".into(),
        }
    }
}

/// Result of [`kvm_usable`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmStatus {
    /// KVM can boot real guests.
    pub usable: bool,
    /// Why (or why not).
    pub reason: String,
}
