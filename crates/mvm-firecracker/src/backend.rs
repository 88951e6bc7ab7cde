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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_core::backend::{
    BackendError, BackendKind, Capabilities, RestoredVmm, RunningVmm, VmBackend, VmSpec, kvm_usable,
};
use mvm_core::paths::InstanceDir;
use mvm_core::snapshot::{SnapshotDir, SnapshotInfo};
use tokio::net::UnixStream;
use tokio::process::Child;

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
    binary: PathBuf,
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
            enable_pci,
            start_mode: StartMode::Api,
            api_timeout: crate::api::DEFAULT_TIMEOUT,
        }
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
        child_slot: &mut Option<Child>,
    ) -> Result<(), BackendError> {
        for s in [dir.api_socket(), dir.guest_socket()] {
            process::clear_stale_socket(&s)
                .map_err(|e| err("cannot prepare the instance sockets").with_source(e))?;
        }
        let config = BootConfig::new(spec, dir);
        let args = self.args(spec, dir);
        if let Some(path) = &args.config_file {
            let json = serde_json::to_vec_pretty(&config.to_config_file())
                .map_err(|e| err("cannot encode the Firecracker configuration").with_source(e))?;
            mvm_core::atomic::write_atomic(path, &json, 0o600)
                .map_err(|e| err("cannot write the Firecracker configuration").with_source(e))?;
        }
        let child = child_slot.insert(
            process::spawn(&args, &dir.console_log(), &dir.vmm_log(), spec.transient)
                .map_err(|e| err("cannot start firecracker").with_source(e))?,
        );
        let client = self.client(dir);
        let info = process::wait_ready(child, &client, deadline)
            .await
            .map_err(|e| err("firecracker did not start").with_source(e))?;
        match self.start_mode {
            StartMode::Api => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let client = client.with_timeout(remaining.min(self.api_timeout));
                config
                    .apply(&client)
                    .await
                    .map_err(|e| err("configuring the VM failed").with_source(e))?;
                client
                    .instance_start()
                    .await
                    .map_err(|e| err("starting the VM failed").with_source(e))?;
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

/// Owns the child during launch: if the launch future is dropped midway
/// (cancelled), the VMM is killed rather than orphaned (tokio reaps a
/// dropped child in the background).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// Kill and reap a child we gave up on.
async fn reap(mut child: Child) {
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
