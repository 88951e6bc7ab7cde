//! [`FirecrackerBackend`]: the [`VmBackend`] implementation.
//!
//! Launch sequence: clear stale sockets of a dead VMM (never a live one),
//! spawn `firecracker --api-sock dir/fc.sock`, wait for a real `GET /`
//! while watching the child, send the boot configuration
//! ([`crate::launch`]), `InstanceStart`. In [`StartMode::ConfigFile`] the
//! configuration is written to `dir/fc-config.json` and passed with
//! `--config-file` instead; Firecracker boots on its own and the API only
//! confirms the state. On any failure the child is killed and reaped, and
//! the error carries the tails of `vmm.log` and `console.log`.
//!
//! **Jailed** (a jailer configured with [`FirecrackerBackend::with_jailer`]
//! and `spec.isolation` set): the machine's cgroup is created with its
//! limits, the chroot prepared ([`crate::jailer::prepare`]), the jailer
//! spawned inside the cgroup; it exits once it has cloned the VMM into a
//! new PID namespace, and the VMM — reparented to this process, a child
//! subreaper — is adopted through a pidfd from the jailer's pid file. The
//! rest is as above, through `<dir>/fc.sock` (a symlink into the chroot).
//! On failure the VMM is killed and the jail released
//! ([`release_jail`]); on success the caller's teardown calls
//! [`release_jail`] once the VMM has exited.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_core::backend::{
    BackendError, BackendKind, Capabilities, RestoredVmm, RunningVmm, VmBackend, VmSpec, kvm_usable,
};
use mvm_core::isolation::Isolation;
use mvm_core::paths::InstanceDir;
use mvm_core::snapshot::{SnapshotDir, SnapshotInfo};
use mvm_core::vmm_child::{AdoptedChild, VmmChild, become_subreaper};
use mvm_jail::cgroup::{Cgroup, Hierarchy};
use tokio::net::UnixStream;

use crate::jailer::{self, JailLayout, JailerArgs};

use crate::api::{Client, InstanceState};
use crate::launch::BootConfig;
use crate::process::{self, FirecrackerArgs};
use crate::vsock;

/// The `--config-file` document in an instance directory (only written in
/// [`StartMode::ConfigFile`]).
pub const CONFIG_FILE_NAME: &str = "fc-config.json";

/// How the VM is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartMode {
    /// One API call per setting, then `InstanceStart` (default).
    #[default]
    Api,
    /// A `--config-file` read at start-up; the API stays available.
    ConfigFile,
}

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    pub(crate) binary: PathBuf,
    jailer: Option<PathBuf>,
    enable_pci: bool,
    start_mode: StartMode,
    api_timeout: Duration,
}

fn err(message: impl Into<String>) -> BackendError {
    BackendError::new(BackendKind::Firecracker, message)
}

impl FirecrackerBackend {
    /// A backend running `binary`, with `--enable-pci` if asked.
    pub fn new(binary: PathBuf, enable_pci: bool) -> Self {
        Self {
            binary,
            jailer: None,
            enable_pci,
            start_mode: StartMode::Api,
            api_timeout: crate::api::DEFAULT_TIMEOUT,
        }
    }

    /// Run VMMs whose spec has `isolation` under this jailer binary.
    pub fn with_jailer(mut self, jailer: PathBuf) -> Self {
        self.jailer = Some(jailer);
        self
    }

    /// The jailer, if configured.
    pub fn jailer(&self) -> Option<&Path> {
        self.jailer.as_deref()
    }

    /// Choose how the VM is configured.
    pub fn with_start_mode(mut self, mode: StartMode) -> Self {
        self.start_mode = mode;
        self
    }

    /// The per-call API deadline.
    pub fn with_api_timeout(mut self, timeout: Duration) -> Self {
        self.api_timeout = timeout;
        self
    }

    /// The binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// An API client for the VM in `dir`.
    pub fn client(&self, dir: &InstanceDir) -> Client {
        Client::new(dir.api_socket()).with_timeout(self.api_timeout)
    }

    /// The argv used for the VM in `dir`.
    pub fn args(&self, spec: &VmSpec, dir: &InstanceDir) -> FirecrackerArgs {
        let mut a = FirecrackerArgs::new(&self.binary, dir.api_socket());
        a.id = Some(spec.name.clone());
        a.enable_pci = self.enable_pci;
        if self.start_mode == StartMode::ConfigFile {
            a.config_file = Some(dir.root().join(CONFIG_FILE_NAME));
        }
        a
    }

    async fn start(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        deadline: Instant,
        child_slot: &mut Option<VmmChild>,
    ) -> Result<(), BackendError> {
        for s in [dir.api_socket(), dir.guest_socket()] {
            process::clear_stale_socket(&s)
                .map_err(|e| err("cannot prepare the instance sockets").with_source(e))?;
        }
        if let Some(iso) = &spec.isolation {
            let Some(jailer) = self.jailer.clone() else {
                return Err(err(
                    "the machine is to run isolated but no jailer binary is configured (install it beside firecracker, set MVM_JAILER_BIN, or run without the jailer)",
                ));
            };
            let config = self
                .spawn_jailed(spec, dir, iso, &jailer, deadline, child_slot, true, None)
                .await?;
            return self.configure(&config, dir, deadline, child_slot).await;
        }
        let config = BootConfig::new(spec, dir);
        let args = self.args(spec, dir);
        if let Some(path) = &args.config_file {
            let json = serde_json::to_vec_pretty(&config.to_config_file())
                .map_err(|e| err("cannot encode the Firecracker configuration").with_source(e))?;
            mvm_core::atomic::write_atomic(path, &json, 0o600)
                .map_err(|e| err("cannot write the Firecracker configuration").with_source(e))?;
        }
        *child_slot = Some(
            process::spawn(&args, &dir.console_log(), &dir.vmm_log(), spec.transient)
                .map_err(|e| err("cannot start firecracker").with_source(e))?
                .into(),
        );
        self.configure(&config, dir, deadline, child_slot).await
    }

    /// Wait for the API of the VMM in `child_slot`, then boot it.
    async fn configure(
        &self,
        config: &BootConfig,
        dir: &InstanceDir,
        deadline: Instant,
        child_slot: &mut Option<VmmChild>,
    ) -> Result<(), BackendError> {
        let child = child_slot
            .as_mut()
            .expect("the VMM was stored before configure");
        let client = self.client(dir);
        let info = process::wait_ready(child, &client, deadline)
            .await
            .map_err(|e| err("firecracker did not start").with_source(e))?;
        tracing::debug!("timing: API answers");
        match self.start_mode {
            StartMode::Api => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let client = client.with_timeout(remaining.min(self.api_timeout));
                config
                    .apply(&client)
                    .await
                    .map_err(|e| err("configuring the VM failed").with_source(e))?;
                tracing::debug!("timing: configured");
                client
                    .instance_start()
                    .await
                    .map_err(|e| err("starting the VM failed").with_source(e))?;
                tracing::debug!("timing: InstanceStart accepted");
            }
            StartMode::ConfigFile => {
                if info.state == InstanceState::NotStarted {
                    return Err(err(
                        "firecracker served its API but did not boot from its --config-file",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Puts more files into a prepared chroot before the jailer runs.
pub(crate) type PlaceMore<'a> =
    dyn Fn(&mvm_jail::chroot::Chroot) -> Result<(), BackendError> + Send + Sync + 'a;

impl FirecrackerBackend {
    /// Create the cgroup, prepare the chroot (then `place_more` puts
    /// further files in it, e.g. a snapshot), run the jailer and adopt the
    /// VMM it forks (stored in `child_slot`). Returns the boot
    /// configuration with paths inside the chroot; with `boot` and
    /// [`StartMode::ConfigFile`] the VMM boots from it by itself.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn spawn_jailed(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        iso: &Isolation,
        jailer: &Path,
        deadline: Instant,
        child_slot: &mut Option<VmmChild>,
        boot: bool,
        place_more: Option<&PlaceMore<'_>>,
    ) -> Result<BootConfig, BackendError> {
        become_subreaper().map_err(|e| err("cannot become a child subreaper").with_source(e))?;
        let layout = JailLayout::new(dir, &self.binary, &spec.name)
            .map_err(|e| err("cannot lay out the jail").with_source(e))?;
        let cgroup_fds = match &iso.cgroup {
            Some(cs) => {
                let h = Hierarchy::detect().ok_or_else(|| {
                    err("the machine has a cgroup but this host mounts no usable hierarchy")
                })?;
                let cg = Cgroup::create(&h, cs)
                    .map_err(|e| err("cannot create the machine's cgroup").with_source(e))?;
                cg.attach_fds()
                    .map_err(|e| err("cannot open the machine's cgroup").with_source(e))?
            }
            None => Vec::new(),
        };
        tracing::debug!("timing: cgroup created");
        jailer::prepare(spec, dir, &layout, iso)
            .map_err(|e| err("cannot prepare the jail").with_source(e))?;
        if let Some(place) = place_more {
            place(&layout.chroot())?;
        }
        tracing::debug!("timing: chroot prepared");
        let config = jailer::boot_config(spec);
        // The jailer passes its own --id on to Firecracker.
        let mut fc = FirecrackerArgs::new(&self.binary, jailer::inner::API_SOCKET);
        fc.enable_pci = self.enable_pci;
        if boot && self.start_mode == StartMode::ConfigFile {
            let host = layout.chroot().host_path(jailer::inner::CONFIG_FILE);
            let json = serde_json::to_vec_pretty(&config.to_config_file())
                .map_err(|e| err("cannot encode the Firecracker configuration").with_source(e))?;
            mvm_core::atomic::write_atomic(&host, &json, 0o600)
                .map_err(|e| err("cannot write the Firecracker configuration").with_source(e))?;
            mvm_jail::chroot::give(&host, iso.uid, iso.gid)
                .map_err(|e| err("cannot write the Firecracker configuration").with_source(e))?;
            fc.config_file = Some(jailer::inner::CONFIG_FILE.into());
        }
        let args = JailerArgs::new(jailer, &self.binary, &spec.name, iso, dir, fc.argv());
        let mut cmd = args.command();
        let open = |p: PathBuf| {
            fs_err::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(|f| f.into_parts().0)
                .map_err(|e| err("cannot open the machine's logs").with_source(e))
        };
        cmd.stdout(open(dir.console_log())?)
            .stderr(open(dir.vmm_log())?);
        // SAFETY: the closure runs in the forked child before exec and only
        // writes to descriptors opened beforehand (async-signal-safe, no
        // allocation, no lock).
        unsafe {
            cmd.pre_exec(move || mvm_jail::cgroup::attach_self(&cgroup_fds));
        }
        tracing::debug!(argv = ?args.argv(), "spawning the jailer");
        let mut jailer_child = cmd
            .spawn()
            .map_err(|e| err(format!("cannot start {}", jailer.display())).with_source(e))?;
        // The jailer exits as soon as the VMM is cloned.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let status = match tokio::time::timeout(remaining, jailer_child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(err("cannot wait for the jailer").with_source(e)),
            Err(_) => {
                let _ = jailer_child.start_kill();
                let _ = jailer_child.wait().await;
                return Err(err("the jailer did not start the VMM in time"));
            }
        };
        if !status.success() {
            return Err(err(format!("the jailer failed ({status})")));
        }
        tracing::debug!("timing: the jailer exited");
        let pid_file = layout.pid_file();
        let pid: u32 = fs_err::read_to_string(&pid_file)
            .map_err(|e| err("the jailer wrote no pid file").with_source(e))?
            .trim()
            .parse()
            .map_err(|e| err(format!("bad pid in {}", pid_file.display())).with_source(e))?;
        let adopted = AdoptedChild::adopt(pid)
            .map_err(|e| err(format!("cannot adopt the jailed VMM {pid}")).with_source(e))?;
        *child_slot = Some(VmmChild::Adopted(adopted));
        Ok(config)
    }
}

/// Release everything a jailed machine held: kill what is left in its
/// cgroup and remove it, unmount and remove its chroot, remove the socket
/// symlinks ([`mvm_jail::release`]). Idempotent; needs only the instance directory and the
/// record's isolation.
pub fn release_jail(dir: &InstanceDir, iso: &Isolation) -> Result<(), mvm_jail::JailError> {
    mvm_jail::release(dir, Some(iso))
}

/// Owns the child during launch: if the launch future is dropped midway
/// (cancelled), the VMM is killed rather than orphaned (tokio reaps a
/// dropped child in the background; an adopted one is reaped by the next
/// wait of its subreaper, or by init).
struct ChildGuard(Option<VmmChild>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// Kill and reap a child we gave up on.
async fn reap(mut child: VmmChild) {
    let _ = child.start_kill();
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        tracing::warn!(pid = ?child.id(), "firecracker did not exit after SIGKILL within 5s");
    }
}

impl VmBackend for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause: true,
            snapshot: true,
            accelerated: kvm_usable().usable,
        }
    }

    async fn launch(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        deadline: Instant,
    ) -> Result<RunningVmm, BackendError> {
        let mut guard = ChildGuard(None);
        match self.start(spec, dir, deadline, &mut guard.0).await {
            Ok(()) => Ok(RunningVmm {
                child: guard
                    .0
                    .take()
                    .expect("start() stores the child before succeeding"),
                guest: None,
            }),
            Err(e) => {
                if let Some(c) = guard.0.take() {
                    reap(c).await;
                }
                if let Some(iso) = &spec.isolation
                    && let Err(r) = release_jail(dir, iso)
                {
                    tracing::warn!(error = %r, "releasing the jail of a failed launch");
                }
                Err(e.with_logs(dir))
            }
        }
    }

    async fn snapshot(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        dest: &SnapshotDir,
        deadline: Instant,
    ) -> Result<SnapshotInfo, BackendError> {
        self.snapshot_impl(spec, dir, dest, deadline).await
    }

    async fn restore(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        from: &SnapshotDir,
        deadline: Instant,
    ) -> Result<RestoredVmm, BackendError> {
        self.restore_impl(spec, dir, from, deadline).await
    }

    async fn connect_guest(
        &self,
        dir: &InstanceDir,
        deadline: Instant,
    ) -> Result<UnixStream, BackendError> {
        vsock::connect(&dir.guest_socket(), vsock::AGENT_PORT, deadline)
            .await
            .map_err(|e| err("cannot reach the guest agent").with_source(e))
    }

    async fn pause(&self, dir: &InstanceDir) -> Result<(), BackendError> {
        self.client(dir)
            .pause()
            .await
            .map_err(|e| err("pausing the VM failed").with_source(e))
    }

    async fn resume(&self, dir: &InstanceDir) -> Result<(), BackendError> {
        self.client(dir)
            .resume()
            .await
            .map_err(|e| err("resuming the VM failed").with_source(e))
    }

    async fn request_shutdown(&self, dir: &InstanceDir) -> Result<(), BackendError> {
        self.client(dir)
            .send_ctrl_alt_del()
            .await
            .map_err(|e| err("sending Ctrl-Alt-Del failed").with_source(e))
    }
}
