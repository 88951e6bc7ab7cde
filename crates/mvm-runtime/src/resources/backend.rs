//! Backend selection and static dispatch over the [`VmBackend`]
//! implementations (an enum rather than a trait object: the trait's async
//! methods are not object-safe, and there are exactly two backends).

use std::path::PathBuf;
use std::time::Instant;

use mvm_core::backend::{
    BackendChoice, BackendError, BackendKind, Capabilities, RestoredVmm, RunningVmm, VmBackend,
    VmSpec, kvm_usable,
};
use mvm_core::config::Config;
use mvm_core::snapshot::{MemoryBacking, SnapshotDir, SnapshotInfo};
use mvm_core::{InstanceDir, MvmHome};
use tokio::net::UnixStream;

use crate::RuntimeError;

/// One of the backends.
pub enum AnyBackend {
    /// QEMU microvm.
    Qemu(mvm_qemu::QemuBackend),
    /// Firecracker.
    Firecracker(mvm_firecracker::FirecrackerBackend),
}

/// Why `auto` chose what it chose.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Selection {
    /// The backend.
    pub kind: BackendKind,
    /// The reason, in words.
    pub reason: String,
}

/// Resolve `auto`: Firecracker when its binary is present and KVM is usable,
/// else QEMU.
pub fn select(choice: BackendChoice, config: &Config, home: &MvmHome) -> Selection {
    match choice {
        BackendChoice::Qemu => Selection {
            kind: BackendKind::Qemu,
            reason: "requested".into(),
        },
        BackendChoice::Firecracker => Selection {
            kind: BackendKind::Firecracker,
            reason: "requested".into(),
        },
        BackendChoice::Auto => {
            let kvm = kvm_usable();
            let fc = firecracker_binary(config, home);
            match (kvm.usable, fc) {
                (true, Some(bin)) => Selection {
                    kind: BackendKind::Firecracker,
                    reason: format!("KVM is usable and firecracker is at {}", bin.display()),
                },
                (false, _) => Selection {
                    kind: BackendKind::Qemu,
                    reason: format!(
                        "KVM is not usable ({}); QEMU runs guests with TCG",
                        kvm.reason
                    ),
                },
                (true, None) => Selection {
                    kind: BackendKind::Qemu,
                    reason: "no firecracker binary (run `mvm setup --backend firecracker`)".into(),
                },
            }
        }
    }
}

/// The QEMU backend as the settings describe it (`qemu_bin`,
/// `qemu_accel`).
pub fn qemu(config: &Config) -> Result<mvm_qemu::QemuBackend, RuntimeError> {
    qemu_cached(config, None)
}

/// [`qemu`], with its version cached under `home` (see `mvm_qemu::version`:
/// asking QEMU costs more than restoring a clone).
fn qemu_cached(
    config: &Config,
    home: Option<&MvmHome>,
) -> Result<mvm_qemu::QemuBackend, RuntimeError> {
    use mvm_core::config::QemuAccel;
    Ok(mvm_qemu::QemuBackend::detect_with(&mvm_qemu::Discovery {
        binary: config.qemu_bin.clone(),
        accel: config.qemu_accel.map(|a| match a {
            QemuAccel::Kvm => mvm_qemu::Accel::Kvm,
            QemuAccel::Tcg => mvm_qemu::Accel::Tcg,
        }),
        version_cache: home.map(|h| h.cache_dir().join("qemu-version.json")),
    })?)
}

/// Where the firecracker binary is, if anywhere.
pub fn firecracker_binary(config: &Config, home: &MvmHome) -> Option<PathBuf> {
    mvm_firecracker::install::find_binary(config, home).ok()
}

impl AnyBackend {
    /// Instantiate the backend of `kind`.
    pub fn open(kind: BackendKind, config: &Config, home: &MvmHome) -> Result<Self, RuntimeError> {
        match kind {
            BackendKind::Qemu => Ok(Self::Qemu(qemu_cached(config, Some(home))?)),
            BackendKind::Firecracker => {
                let bin =
                    firecracker_binary(config, home).ok_or_else(|| RuntimeError::Missing {
                        what: "the firecracker binary".into(),
                        fix: "mvm setup --backend firecracker (or --firecracker-bin PATH)".into(),
                    })?;
                Ok(Self::Firecracker(mvm_firecracker::FirecrackerBackend::new(
                    bin, false,
                )))
            }
        }
    }

    /// The backend of machine `rec`: Firecracker under its jailer when the
    /// machine is confined (`rec.isolation`; QEMU confines itself from the
    /// spec), QEMU with user-mode networking (and its port forwards) when
    /// the machine has NAT networking without a TAP.
    pub fn for_record(
        rec: &mvm_core::InstanceRecord,
        config: &Config,
        home: &MvmHome,
    ) -> Result<Self, RuntimeError> {
        let backend = match Self::open(rec.backend, config, home)? {
            // A confined Firecracker runs under its jailer.
            Self::Firecracker(fc) if rec.isolation.is_some() => {
                let jailer = crate::resources::jail::jailer_binary(config, fc.binary())?;
                Self::Firecracker(fc.with_jailer(jailer))
            }
            other => other,
        };
        Ok(match backend {
            Self::Qemu(q)
                if crate::resources::network::Attachment::of(rec)
                    == crate::resources::network::Attachment::UserMode =>
            {
                let forwards = rec
                    .ports
                    .iter()
                    .map(|p| mvm_qemu::argv::HostForward {
                        proto: mvm_qemu::argv::FwdProto::Tcp,
                        host_addr: p.host_ip.into(),
                        host_port: p.host_port,
                        guest_port: p.guest_port,
                    })
                    .collect();
                Self::Qemu(
                    q.with_user_net(forwards)
                        .restrict_user_net(crate::resources::egress::user_mode_restrict(rec)),
                )
            }
            other => other,
        }
        .with_clone_drives(rec))
    }

    /// A clone whose root drive is its template's disk (QEMU transient
    /// clones) attaches it with a throwaway copy-on-write layer.
    fn with_clone_drives(self, rec: &mvm_core::InstanceRecord) -> Self {
        let volatile = rec
            .template
            .as_ref()
            .and_then(|t| t.clone_of.as_ref())
            .is_some_and(|c| c.volatile_root);
        match self {
            Self::Qemu(q) if volatile => Self::Qemu(q.with_volatile_drives(vec!["root".into()])),
            other => other,
        }
    }

    /// Which backend.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Qemu(b) => b.kind(),
            Self::Firecracker(b) => b.kind(),
        }
    }

    /// Capabilities.
    pub fn capabilities(&self) -> Capabilities {
        match self {
            Self::Qemu(b) => b.capabilities(),
            Self::Firecracker(b) => b.capabilities(),
        }
    }

    /// See [`VmBackend::launch`].
    pub async fn launch(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        deadline: Instant,
    ) -> Result<RunningVmm, BackendError> {
        match self {
            Self::Qemu(b) => b.launch(spec, dir, deadline).await,
            Self::Firecracker(b) => b.launch(spec, dir, deadline).await,
        }
    }

    /// See [`VmBackend::launch_with_memory`].
    pub async fn launch_with_memory(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        memory: &MemoryBacking,
        deadline: Instant,
    ) -> Result<RunningVmm, BackendError> {
        match self {
            Self::Qemu(b) => b.launch_with_memory(spec, dir, memory, deadline).await,
            Self::Firecracker(b) => b.launch_with_memory(spec, dir, memory, deadline).await,
        }
    }

    /// See [`VmBackend::snapshot`].
    pub async fn snapshot(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        dest: &SnapshotDir,
        deadline: Instant,
    ) -> Result<SnapshotInfo, BackendError> {
        match self {
            Self::Qemu(b) => b.snapshot(spec, dir, dest, deadline).await,
            Self::Firecracker(b) => b.snapshot(spec, dir, dest, deadline).await,
        }
    }

    /// See [`VmBackend::restore`].
    pub async fn restore(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        from: &SnapshotDir,
        deadline: Instant,
    ) -> Result<RestoredVmm, BackendError> {
        match self {
            Self::Qemu(b) => b.restore(spec, dir, from, deadline).await,
            Self::Firecracker(b) => b.restore(spec, dir, from, deadline).await,
        }
    }

    /// See [`VmBackend::connect_guest`].
    pub async fn connect_guest(
        &self,
        dir: &InstanceDir,
        deadline: Instant,
    ) -> Result<UnixStream, BackendError> {
        match self {
            Self::Qemu(b) => b.connect_guest(dir, deadline).await,
            Self::Firecracker(b) => b.connect_guest(dir, deadline).await,
        }
    }

    /// See [`VmBackend::pause`].
    pub async fn pause(&self, dir: &InstanceDir) -> Result<(), BackendError> {
        match self {
            Self::Qemu(b) => b.pause(dir).await,
            Self::Firecracker(b) => b.pause(dir).await,
        }
    }

    /// See [`VmBackend::resume`].
    pub async fn resume(&self, dir: &InstanceDir) -> Result<(), BackendError> {
        match self {
            Self::Qemu(b) => b.resume(dir).await,
            Self::Firecracker(b) => b.resume(dir).await,
        }
    }

    /// See [`VmBackend::request_shutdown`].
    pub async fn request_shutdown(&self, dir: &InstanceDir) -> Result<(), BackendError> {
        match self {
            Self::Qemu(b) => b.request_shutdown(dir).await,
            Self::Firecracker(b) => b.request_shutdown(dir).await,
        }
    }
}
