//! [`QemuBackend`]: discovery of `qemu-system-x86_64`, choice of
//! accelerator, and the [`VmBackend`] implementation (launch, pause,
//! resume, shutdown request).
//!
//! # Launch sequence
//!
//! 1. Stale sockets: `qmp.sock` / `guest.sock` left by a dead VMM are
//!    removed; if one accepts a connection a live VMM owns the directory and
//!    the launch fails without touching it.
//! 2. QEMU is spawned with the argv of [`crate::argv`], stdin from
//!    `/dev/null`, stdout and stderr into `vmm.log` (truncated), in the
//!    caller's session (the supervisor is already a session leader). With
//!    `spec.transient` the child gets `PR_SET_PDEATHSIG=SIGKILL`. The kernel
//!    sends that signal when the *thread* that forked exits, so call
//!    `launch` from a runtime worker or the main thread, never from
//!    `spawn_blocking` (whose threads exit when idle).
//! 3. While watching the child for an early exit, mvm connects to the agent
//!    chardev (QEMU waits for that client before it runs the guest), then to
//!    QMP, negotiates capabilities and checks `query-status` says `running`.
//! 4. On any failure the child is killed and reaped and the error carries
//!    the tails of `vmm.log` and `console.log`. If the launch future is
//!    dropped half-way, the child is killed (tokio reaps it).
//!
//! An isolated machine (`spec.isolation`) runs as its own uid in its cgroup
//! under `-sandbox`, with every file and socket handed over as a
//! descriptor ([`crate::isolate`]); a failed launch releases its cgroup,
//! and the caller's teardown calls [`mvm_jail::release`] once it exited.
//!
//! Control operations (pause, resume, shutdown request) each open a fresh
//! QMP session with a 10 s deadline; the QMP monitor serves one client at
//! a time, so concurrent callers queue.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mvm_core::InstanceDir;
use mvm_core::backend::{
    BackendError, BackendKind, Capabilities, RestoredVmm, RunningVmm, VmBackend, VmSpec, kvm_usable,
};
use mvm_core::snapshot::{MemoryBacking, SnapshotDir, SnapshotInfo};
use tokio::net::UnixStream;

use crate::argv::{Accel, HostForward, QemuArgs};
use crate::qmp::{Qmp, QmpError, RunState, connect_unix_retry};

/// The binary name looked up on `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// What the caller's settings say about QEMU (mvm reads them from its
/// configuration: `qemu_bin`, `qemu_accel`, `MVM_QEMU_BIN`,
/// `MVM_QEMU_ACCEL`); nothing is read from the environment here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Use this binary instead of `qemu-system-x86_64` on `PATH`.
    pub binary: Option<PathBuf>,
    /// Force this accelerator instead of probing KVM.
    pub accel: Option<Accel>,
    /// Keep the version in this file, per binary (see [`crate::version`]).
    pub version_cache: Option<PathBuf>,
}

/// How long a control operation (pause, resume, shutdown) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `qemu --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reaping a killed child may take.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed launch waits for QEMU to exit on its own before
/// killing it (to report its exit status and complete log).
const EXIT_GRACE: Duration = Duration::from_millis(500);

const KIND: BackendKind = BackendKind::Qemu;

fn err(message: impl Into<String>) -> BackendError {
    BackendError::new(KIND, message)
}

/// The QEMU `microvm` backend.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    binary: PathBuf,
    version: String,
    accel: Accel,
    accel_reason: String,
    user_net: Option<Vec<HostForward>>,
    volatile: Vec<String>,
    user_restrict: bool,
}

/// What [`QemuBackend::doctor`] reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DoctorReport {
    /// The QEMU binary.
    pub binary: PathBuf,
    /// First line of `qemu-system-x86_64 --version`.
    pub version: String,
    /// The accelerator mvm will use.
    pub accel: Accel,
    /// Why this accelerator.
    pub accel_reason: String,
}

impl std::fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "qemu binary:  {}", self.binary.display())?;
        writeln!(f, "qemu version: {}", self.version)?;
        write!(f, "accelerator:  {} ({})", self.accel, self.accel_reason)
    }
}

impl QemuBackend {
    /// Find `qemu-system-x86_64` on `PATH`, read its version and choose
    /// the accelerator: KVM when [`kvm_usable`] says so, TCG otherwise.
    pub fn detect() -> Result<Self, BackendError> {
        Self::detect_with(&Discovery::default())
    }

    /// [`QemuBackend::detect`], with the binary and accelerator the
    /// caller's settings name (when they do).
    pub fn detect_with(d: &Discovery) -> Result<Self, BackendError> {
        let binary = find_binary(d.binary.as_deref())?;
        let version = match &d.version_cache {
            Some(cache) => crate::version::cached_version(&binary, cache)?,
            None => binary_version(&binary)?,
        };
        let (accel, accel_reason) = match d.accel {
            Some(a) => (a, format!("forced by the configuration ({a})")),
            None => {
                let kvm = kvm_usable();
                if kvm.usable {
                    (Accel::Kvm, kvm.reason)
                } else {
                    (Accel::Tcg, format!("software emulation: {}", kvm.reason))
                }
            }
        };
        Ok(Self {
            binary,
            version,
            accel,
            accel_reason,
            user_net: None,
            volatile: Vec::new(),
            user_restrict: false,
        })
    }

    /// A backend with an explicit binary and accelerator (no probing).
    pub fn new(binary: impl Into<PathBuf>, accel: Accel) -> Self {
        Self {
            binary: binary.into(),
            version: String::new(),
            accel,
            accel_reason: "chosen by the caller".into(),
            user_net: None,
            volatile: Vec::new(),
            user_restrict: false,
        }
    }

    /// Use QEMU user-mode networking (no root, no TAP) with these port
    /// forwards instead of the spec's TAP device. The spec's `net` must
    /// still be `Some` (its MAC is used; its TAP name is ignored).
    pub fn with_user_net(mut self, forwards: Vec<HostForward>) -> Self {
        self.user_net = Some(forwards);
        self
    }

    /// Attach the drives with these ids with `snapshot=on` (see
    /// [`QemuArgs::volatile`]): a clone runs on its template's disk without
    /// a disk file of its own, and nothing it writes survives it.
    pub fn with_volatile_drives(mut self, ids: Vec<String>) -> Self {
        self.volatile = ids;
        self
    }

    /// With user-mode networking, isolate the guest (`restrict=on`: it
    /// reaches neither the host nor the outside; forwards still work).
    pub fn restrict_user_net(mut self, on: bool) -> Self {
        self.user_restrict = on;
        self
    }

    /// The QEMU binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The accelerator.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The version found by [`QemuBackend::detect`] (empty after `new`).
    pub(crate) fn version_str(&self) -> &str {
        &self.version
    }

    /// Binary, version and accelerator, with the reason for the choice.
    pub fn doctor(&self) -> DoctorReport {
        DoctorReport {
            binary: self.binary.clone(),
            version: self.version.clone(),
            accel: self.accel,
            accel_reason: self.accel_reason.clone(),
        }
    }

    /// The QEMU command line for `spec` in `dir` (without the program).
    pub fn args(&self, spec: &VmSpec, dir: &InstanceDir) -> QemuArgs {
        let mut a = QemuArgs::from_spec(spec, dir, self.accel, self.user_net.as_deref());
        if let Some(crate::argv::NetArgs::User { restrict, .. }) = &mut a.net {
            *restrict = self.user_restrict;
        }
        a.volatile = self.volatile.clone();
        a
    }

    /// A fresh QMP session for a control operation on `dir`.
    async fn qmp(&self, dir: &InstanceDir, what: &str) -> Result<(Qmp, Instant), BackendError> {
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        let qmp = Qmp::connect(&dir.qmp_socket(), deadline)
            .await
            .map_err(|e| {
                err(format!("cannot {what} {}: QMP unavailable", dir.name())).with_source(e)
            })?;
        Ok((qmp, deadline))
    }

    /// Run `stop`/`cont` and check `query-status` reports `running`.
    async fn set_running(&self, dir: &InstanceDir, running: bool) -> Result<(), BackendError> {
        let what = if running { "resume" } else { "pause" };
        let (mut q, d) = self.qmp(dir, what).await?;
        let fail = |e: QmpError| err(format!("cannot {what} {}", dir.name())).with_source(e);
        if running {
            q.cont(d).await.map_err(fail)?;
        } else {
            q.stop(d).await.map_err(fail)?;
        }
        let s = q.query_status(d).await.map_err(fail)?;
        if s.running != running {
            return Err(err(format!(
                "cannot {what} {}: the VM is {:?} after the command",
                dir.name(),
                s.status
            )));
        }
        Ok(())
    }
}

fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, BackendError> {
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_owned())
        } else {
            Err(err(format!(
                "the configured QEMU binary {} is not an executable file",
                p.display()
            )))
        };
    }
    mvm_core::tools::QEMU
        .require()
        .map_err(|e| err(e.to_string()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs_err::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// First line of `<binary> --version`, within [`VERSION_TIMEOUT`].
pub(crate) fn binary_version(binary: &Path) -> Result<String, BackendError> {
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("--version").stdin(Stdio::null());
    let out = mvm_core::tools::run(cmd, VERSION_TIMEOUT).map_err(|e| {
        err(format!("cannot read the version of {}", binary.display())).with_source(e)
    })?;
    Ok(out
        .stdout_text()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// Remove `path` if it is a socket nobody serves; fail if someone does.
fn clear_stale_socket(path: &Path) -> Result<(), BackendError> {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(err(format!(
            "{} is served by a running process (another VMM for this machine?); not starting a second one",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::debug!(path = %path.display(), "removing stale socket");
            fs_err::remove_file(path)
                .map_err(|e| err("cannot remove a stale socket").with_source(e))
        }
        Err(e) => Err(err(format!("cannot check socket {}", path.display())).with_source(e)),
    }
}

/// Owns the spawned child until launch succeeds: dropped (launch future
/// cancelled) it kills QEMU; tokio reaps the orphan in the background.
struct ChildGuard(Option<tokio::process::Child>);

impl ChildGuard {
    fn child(&mut self) -> &mut tokio::process::Child {
        self.0.as_mut().expect("child present until disarmed")
    }
    fn disarm(mut self) -> tokio::process::Child {
        self.0.take().expect("child present until disarmed")
    }
    /// Kill and reap (bounded).
    async fn kill(mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(REAP_TIMEOUT, c.wait()).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.start_kill();
        }
    }
}

impl QemuBackend {
    fn command(
        &self,
        argv: Vec<OsString>,
        log: std::fs::File,
        transient: bool,
    ) -> io::Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false);
        if transient {
            let parent = rustix::process::getpid();
            // SAFETY: the closure runs in the forked child before exec; it
            // only makes raw syscalls (prctl, getppid) and builds errors
            // from raw errno values — no allocation, no locks — which is
            // async-signal-safe. `parent` is a plain integer copied in.
            unsafe {
                cmd.pre_exec(move || {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::KILL,
                    ))?;
                    // The parent may have died before prctl took effect.
                    if rustix::process::getppid() != Some(parent) {
                        return Err(rustix::io::Errno::SRCH.into());
                    }
                    Ok(())
                });
            }
        }
        Ok(cmd)
    }

    async fn launch_inner(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        deadline: Instant,
    ) -> Result<RunningVmm, BackendError> {
        let args = self.args(spec, dir);
        self.launch_args(spec, args, dir, deadline, RunState::Running)
            .await
            .map(|(vmm, _qmp)| vmm)
    }

    /// Spawn QEMU with `args`, connect the agent chardev and QMP, and check
    /// the run state is `expect` (`Running` for a boot, `Inmigrate` for a
    /// restore waiting for its state). The launch sequence of the module
    /// docs; shared by boot, template boot and restore. Returns the QMP
    /// session too (a restore goes on with it).
    pub(crate) async fn launch_args(
        &self,
        spec: &VmSpec,
        args: QemuArgs,
        dir: &InstanceDir,
        deadline: Instant,
        expect: RunState,
    ) -> Result<(RunningVmm, Qmp), BackendError> {
        clear_stale_socket(&dir.qmp_socket())?;
        clear_stale_socket(&dir.guest_socket())?;
        let log = fs_err::File::create(dir.vmm_log())
            .map_err(|e| err("cannot create the VMM log").with_source(e))?;
        let mut args = args;
        let opened = match &spec.isolation {
            Some(iso) => {
                let o = crate::isolate::open(spec, iso, &args)?;
                args.fds = Some(o.passed.clone());
                Some(o)
            }
            None => None,
        };
        let argv = args.to_argv();
        tracing::debug!(binary = %self.binary.display(), ?argv, "spawning QEMU");
        // An isolated child sets its own death signal, after its uid switch.
        let transient = spec.transient && opened.is_none();
        let child = self
            .command(argv, log.into_parts().0, transient)
            .and_then(|mut c| {
                if let Some(o) = &opened {
                    o.prepare(&mut c, spec.transient);
                }
                // Temporary files (the layer of `snapshot=on` drives) go
                // with the machine's other files.
                c.env("TMPDIR", dir.root());
                c.spawn()
            })
            .map_err(|e| err(format!("cannot start {}", self.binary.display())).with_source(e));
        // Close our copies: the sockets must be served by QEMU alone.
        drop(opened);
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                if let Some(iso) = &spec.isolation {
                    let _ = mvm_jail::release(dir, Some(iso));
                }
                return Err(e);
            }
        };
        let mut guard = ChildGuard(Some(child));
        let started = Instant::now();

        let ready = async {
            let guest = connect_unix_retry(&dir.guest_socket(), deadline)
                .await
                .map_err(|e| {
                    err(format!(
                        "QEMU did not open the guest agent socket {}",
                        dir.guest_socket().display()
                    ))
                    .with_source(e)
                })?;
            let mut qmp = Qmp::connect_retry(&dir.qmp_socket(), deadline)
                .await
                .map_err(|e| err("QEMU's QMP monitor did not become ready").with_source(e))?;
            let status = qmp
                .query_status(deadline)
                .await
                .map_err(|e| err("query-status failed").with_source(e))?;
            if status.status != expect || status.running != (expect == RunState::Running) {
                return Err(err(format!(
                    "QEMU started but the VM is {:?}, expected {expect:?}",
                    status.status
                )));
            }
            Ok::<_, BackendError>((guest, qmp))
        };

        let failure = tokio::select! {
            r = ready => match r {
                Ok((guest, qmp)) => {
                    tracing::debug!(elapsed = ?started.elapsed(), "QEMU running, QMP ready");
                    return Ok((
                        RunningVmm {
                            child: guard.disarm().into(),
                            guest: Some(guest),
                        },
                        qmp,
                    ));
                }
                Err(e) => e,
            },
            status = guard.child().wait() => {
                let e = match status {
                    Ok(s) => err(format!("QEMU exited during startup ({s})")),
                    Err(e) => err("cannot wait for QEMU").with_source(e),
                };
                guard.kill().await;
                if let Some(iso) = &spec.isolation {
                    let _ = mvm_jail::release(dir, Some(iso));
                }
                return Err(e.with_logs(dir));
            }
        };
        // A socket that closes early usually means QEMU is exiting: unless
        // the deadline passed, give it a moment to finish so the error
        // shows its exit status and its complete log.
        let mut e = failure;
        if Instant::now() < deadline {
            if let Ok(Ok(s)) = tokio::time::timeout(EXIT_GRACE, guard.child().wait()).await {
                e.message = format!("QEMU exited during startup ({s}); {}", e.message);
            }
        }
        guard.kill().await;
        if let Some(iso) = &spec.isolation {
            let _ = mvm_jail::release(dir, Some(iso));
        }
        Err(e.with_logs(dir))
    }
}

impl VmBackend for QemuBackend {
    fn kind(&self) -> BackendKind {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause: true,
            snapshot: true,
            accelerated: self.accel == Accel::Kvm,
        }
    }

    async fn launch(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        deadline: Instant,
    ) -> Result<RunningVmm, BackendError> {
        self.launch_inner(spec, dir, deadline).await
    }

    async fn launch_with_memory(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        memory: &MemoryBacking,
        deadline: Instant,
    ) -> Result<RunningVmm, BackendError> {
        self.launch_with_memory_impl(spec, dir, memory, deadline)
            .await
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
        _deadline: Instant,
    ) -> Result<UnixStream, BackendError> {
        Err(err(format!(
            "the QEMU agent chardev {} accepts a single client, which the supervisor of {} already holds (use RunningVmm.guest, or connect to {})",
            dir.guest_socket().display(),
            dir.name(),
            dir.agent_socket().display()
        )))
    }

    async fn pause(&self, dir: &InstanceDir) -> Result<(), BackendError> {
        self.set_running(dir, false).await
    }

    async fn resume(&self, dir: &InstanceDir) -> Result<(), BackendError> {
        self.set_running(dir, true).await
    }

    async fn request_shutdown(&self, dir: &InstanceDir) -> Result<(), BackendError> {
        let (mut q, d) = self.qmp(dir, "request shutdown of").await?;
        q.system_powerdown(d)
            .await
            .map_err(|e| err(format!("cannot request shutdown of {}", dir.name())).with_source(e))
    }
}
