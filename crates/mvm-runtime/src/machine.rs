//! Machine life cycle: create, start, stop, remove, pause, resume, list.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mvm_core::backend::{BackendChoice, BackendKind, DriveSpec, VmSpec};
use mvm_core::config::Config;
use mvm_core::instance::{DriveRecord, InstanceRecord, NetworkMode, Observed};
use mvm_core::registry::{Registry, RegistryError};
use mvm_core::{InstanceDir, MvmHome, Status};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;

use crate::RuntimeError;
use crate::backends::{AnyBackend, select};
use crate::supervisor::{self, Event, LAUNCH_TIMEOUT, boot_timeout};

/// Size of a machine's own disk, MiB (sparse: costs only what is written).
pub const DEFAULT_DISK_MIB: u64 = 1024;

/// The library's entry point: home, configuration and registry.
pub struct Runtime {
    /// State root.
    pub home: MvmHome,
    /// Effective configuration (file + environment).
    pub config: Config,
    /// Machine registry.
    pub registry: Registry,
}

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Name (generated when `None`).
    pub name: Option<String>,
    /// Image name.
    pub image: String,
    /// Backend choice.
    pub backend: BackendChoice,
    /// vCPUs (config default when `None`).
    pub cpus: Option<u8>,
    /// Memory MiB (config default when `None`).
    pub memory_mib: Option<u32>,
    /// Removed after its one command.
    pub transient: bool,
    /// Environment applied to every exec.
    pub env: Vec<(String, String)>,
    /// Network mode.
    pub network: NetworkMode,
    /// Published ports.
    pub ports: Vec<mvm_core::instance::PortMapping>,
    /// Volumes, secrets and added directories.
    pub data: crate::data::DataOptions,
}

/// How far `start` waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// Until the VMM reports the instance started.
    Started,
    /// Until the guest agent answers.
    Ready,
}

/// What `start` observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StartReport {
    /// Milliseconds to spawn and configure the VMM.
    pub launch_ms: u64,
    /// Milliseconds from VMM start to agent handshake (when waited for).
    pub boot_ms: Option<u64>,
    /// VMM pid.
    pub vmm_pid: u32,
}

/// One row of `mvm ps`.
#[derive(Debug, Clone, Serialize)]
pub struct MachineView {
    /// Name.
    pub name: String,
    /// True status (reconciled with the processes).
    pub status: Status,
    /// Why the status differs from the record, or why it is broken.
    pub note: Option<String>,
    /// Backend.
    pub backend: Option<BackendKind>,
    /// vCPUs.
    pub cpus: Option<u8>,
    /// Memory MiB.
    pub memory_mib: Option<u32>,
    /// Guest IP.
    pub ip: Option<String>,
    /// Published ports, `HOST_IP:HOST_PORT->GUEST_PORT/tcp`.
    pub ports: Vec<String>,
    /// Creation time (RFC 3339).
    pub created: Option<String>,
    /// Image name.
    pub image: Option<String>,
    /// Transient machine of a running `mvm exec`.
    pub transient: bool,
}

/// Everything known about a machine (`mvm inspect`).
#[derive(Debug, Clone, Serialize)]
pub struct InspectView {
    /// Reconciled status.
    pub status: Status,
    /// Why it differs from the record.
    pub status_note: Option<String>,
    /// The instance directory.
    pub instance_dir: PathBuf,
    /// VMM pid, while it runs.
    pub vmm_pid: Option<u32>,
    /// Supervisor pid, while it runs.
    pub supervisor_pid: Option<u32>,
    /// Firecracker API socket or QEMU QMP socket.
    pub api_socket: PathBuf,
    /// Socket `mvm exec` connects to.
    pub agent_socket: PathBuf,
    /// Guest console log.
    pub console_log: PathBuf,
    /// VMM log.
    pub vmm_log: PathBuf,
    /// Supervisor log.
    pub supervisor_log: PathBuf,
    /// The persisted record.
    pub record: InstanceRecord,
}

impl Runtime {
    /// Open the runtime for `home`, reading its configuration.
    pub fn open(home: MvmHome) -> Result<Self, RuntimeError> {
        fs_err::create_dir_all(home.root())?;
        let config = Config::load(&home.config_file())?;
        let registry = Registry::open(&home)?;
        Ok(Self {
            home,
            config,
            registry,
        })
    }

    /// Create a machine record (and its disk) without starting it.
    pub fn create(
        &self,
        opts: &CreateOptions,
        image: &mvm_image::Image,
    ) -> Result<InstanceRecord, RuntimeError> {
        let name = opts.name.clone().unwrap_or_else(mvm_core::name::generate);
        mvm_core::name::validate(&name).map_err(RegistryError::from)?;
        let backend = select(opts.backend, &self.config, &self.home).kind;
        let mut rec = InstanceRecord::new(&name, &image.name, &image.digest, backend);
        rec.cpus = opts.cpus.unwrap_or(self.config.cpus);
        rec.memory_mib = opts.memory_mib.unwrap_or(self.config.memory_mib);
        if rec.cpus == 0 {
            return Err(RuntimeError::Invalid("--cpus must be at least 1".into()));
        }
        if rec.memory_mib < 64 {
            return Err(RuntimeError::Invalid(format!(
                "--memory {} MiB is too small (at least 64)",
                rec.memory_mib
            )));
        }
        rec.transient = opts.transient;
        rec.env = opts.env.clone();
        rec.network = opts.network;
        // Bad data input fails before anything is created.
        crate::data::check(self, Some(&name), &opts.data)?;
        // A transient machine of the default image runs from its initramfs
        // (RAM); everything else gets a writable disk of its own.
        let needs_disk = !(opts.transient && image.kind == mvm_image::ImageKind::Default);
        rec.ports = opts.ports.clone();
        if rec.network == NetworkMode::None && !rec.ports.is_empty() {
            return Err(RuntimeError::Invalid(
                "-p/--publish needs a network; it cannot be used with --network none".into(),
            ));
        }
        let tap = rec.network == NetworkMode::Nat && crate::net::use_tap();
        if rec.network == NetworkMode::Nat && !tap && backend == BackendKind::Firecracker {
            return Err(RuntimeError::Missing {
                what: "root (CAP_NET_ADMIN) for the Firecracker machine's TAP device".into(),
                fix: "run mvm as root, or use --network none".into(),
            });
        }
        let net_cfg = if tap {
            Some(crate::net::config(&self.config)?)
        } else {
            None
        };
        {
            let _g = self.registry.global_lock()?;
            rec.vsock_cid = Some(self.next_cid()?);
            if let Some(cfg) = &net_cfg {
                rec.net = Some(crate::net::allocate(&self.registry, cfg, &name)?);
            }
            let dir = self.registry.create(&rec)?;
            if needs_disk {
                let disk = dir.disk();
                if let Err(e) = mvm_image::create_machine_disk(image, &disk, DEFAULT_DISK_MIB) {
                    let _ = self.registry.remove(&name);
                    return Err(e.into());
                }
                rec.drives.push(DriveRecord {
                    id: "root".into(),
                    path: disk,
                    read_only: false,
                    role: "root".into(),
                });
                self.registry.save(&rec)?;
            }
            if let Err(e) = crate::data::attach(self, &mut rec, &dir, &opts.data) {
                let _ = self.registry.remove(&name);
                return Err(e.into());
            }
            self.registry.save(&rec)?;
        }
        Ok(rec)
    }

    /// The lowest vsock CID >= 3 that no registered machine holds. Call
    /// under the global lock.
    fn next_cid(&self) -> Result<u32, RuntimeError> {
        let used: std::collections::BTreeSet<u32> = self
            .registry
            .list()?
            .into_iter()
            .filter_map(|l| l.record.ok().and_then(|r| r.vsock_cid))
            .collect();
        Ok((3..).find(|c| !used.contains(c)).expect("u32 range"))
    }

    /// The backend-neutral VM description of a machine.
    pub fn spec_for(&self, rec: &InstanceRecord) -> Result<VmSpec, RuntimeError> {
        let image = mvm_image::get(&self.home, &rec.image)?;
        if image.digest != rec.image_digest {
            tracing::warn!(
                "image {:?} changed since machine {:?} was created; booting the new kernel/initramfs",
                rec.image,
                rec.name
            );
        }
        let mut kernel_args = vec![format!("mvm.hostname={}", rec.name)];
        let drives: Vec<DriveSpec> = rec
            .drives
            .iter()
            .map(|d| DriveSpec {
                id: d.id.clone(),
                path: d.path.clone(),
                read_only: d.read_only,
            })
            .collect();
        if rec.drives.first().is_some_and(|d| d.role == "root") {
            kernel_args.push("mvm.root=/dev/vda".into());
        }
        let net = if let Some(alloc) = &rec.net {
            kernel_args.push(mvm_net::cmdline::format_cmdline(
                alloc,
                &crate::net::guest_dns(),
            ));
            Some(mvm_core::backend::NetSpec {
                tap: alloc.tap.clone(),
                mac: alloc.mac.clone(),
            })
        } else if crate::net::uses_user_net(rec) {
            kernel_args.push(mvm_net::GuestNet::qemu_user().to_cmdline());
            Some(mvm_core::backend::NetSpec {
                tap: String::new(),
                mac: "52:54:00:12:34:56".into(),
            })
        } else {
            None
        };
        kernel_args.extend(crate::data::kernel_args(&self.registry.dir(&rec.name))?);
        Ok(VmSpec {
            name: rec.name.clone(),
            cpus: rec.cpus,
            memory_mib: rec.memory_mib,
            kernel: image.kernel.clone(),
            initrd: Some(image.initramfs.clone()),
            kernel_args,
            drives,
            net,
            vsock_cid: rec.vsock_cid.unwrap_or(3),
            transient: rec.transient,
            isolation: None,
        })
    }

    /// Load a record and reconcile it with reality.
    pub fn observe(&self, name: &str) -> Result<(InstanceRecord, Observed), RuntimeError> {
        let rec = self.registry.load(name)?;
        let obs = rec.observe();
        Ok((rec, obs))
    }

    /// Move a machine to `Starting`, refusing if it is running.
    fn begin_start(&self, name: &str) -> Result<InstanceRecord, RuntimeError> {
        // The global lock (taken before the machine's own lock, as
        // everywhere) covers allocating an address and saving it.
        let net_cfg = if crate::net::use_tap() {
            Some(crate::net::config(&self.config)?)
        } else {
            None
        };
        let _g = self.registry.global_lock()?;
        let mut alloc_err = None;
        let (rec, ()) = self
            .registry
            .update(name, |r| {
                let obs = r.observe();
                match obs.status {
                    Status::Created | Status::Stopped => {
                        r.status = obs.status;
                        Registry::set_status(r, Status::Starting)?;
                        r.vmm = None;
                        r.supervisor = None;
                        if let Some(cfg) = &net_cfg
                            && r.network == NetworkMode::Nat
                            && r.net.is_none()
                        {
                            match crate::net::allocate(&self.registry, cfg, name) {
                                Ok(a) => r.net = Some(a),
                                Err(e) => {
                                    alloc_err = Some(e);
                                    r.status = Status::Stopped;
                                }
                            }
                        }
                        Ok(())
                    }
                    s => Err(RegistryError::BadTransition {
                        name: name.to_owned(),
                        from: s,
                        to: Status::Starting,
                    }),
                }
            })
            .map_err(|e| match e {
                RegistryError::BadTransition { from, .. } => RuntimeError::WrongState {
                    name: name.to_owned(),
                    status: from,
                    hint: Some(match from {
                        Status::Broken => format!("run `mvm rm -f {name}`"),
                        _ => "it is already running".into(),
                    }),
                },
                e => e.into(),
            })?;
        if let Some(e) = alloc_err {
            return Err(e);
        }
        Ok(rec)
    }

    /// Start a created or stopped machine through a detached supervisor.
    pub async fn start(&self, name: &str, wait: WaitFor) -> Result<StartReport, RuntimeError> {
        self.begin_start(name)?;
        let dir = self.registry.dir(name);
        let exe = std::env::current_exe()?;
        let log = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.supervisor_log())?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("__supervise")
            .arg(name)
            .env("MVM_HOME", self.home.root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.into_parts().0))
            .kill_on_drop(false);
        // SAFETY: setsid() is async-signal-safe and touches no memory of
        // the parent; it detaches the supervisor from the terminal's
        // session so Ctrl-C and hangups of the CLI do not reach it.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                supervisor::record_stopped(&self.registry, name, None, Some(e.to_string()))?;
                return Err(e.into());
            }
        };
        let stdout = child.stdout.take().expect("piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut report = StartReport::default();
        let deadline = tokio::time::Instant::now() + LAUNCH_TIMEOUT + boot_timeout();
        loop {
            let line = tokio::select! {
                l = lines.next_line() => l?,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(RuntimeError::Timeout { what: format!("start of machine {name:?}"), after: LAUNCH_TIMEOUT + boot_timeout() });
                }
            };
            let Some(line) = line else {
                // The supervisor ended without a verdict.
                let status = child.wait().await?;
                let (rec, _) = self.observe(name)?;
                return Err(RuntimeError::StartFailed {
                    name: name.to_owned(),
                    message: rec.error.unwrap_or_else(|| {
                        format!(
                            "the supervisor exited ({status}); see {}",
                            dir.supervisor_log().display()
                        )
                    }),
                });
            };
            match serde_json::from_str::<Event>(&line) {
                Ok(Event::Started { vmm_pid, launch_ms }) => {
                    report.vmm_pid = vmm_pid;
                    report.launch_ms = launch_ms;
                    if wait == WaitFor::Started {
                        return Ok(report);
                    }
                }
                Ok(Event::Ready { boot_ms }) => {
                    report.boot_ms = Some(boot_ms);
                    return Ok(report);
                }
                Ok(Event::Failed { message }) => {
                    let _ = child.wait().await;
                    return Err(RuntimeError::StartFailed {
                        name: name.to_owned(),
                        message,
                    });
                }
                Err(_) => tracing::debug!("supervisor: {line}"),
            }
        }
    }

    /// Stop a machine: ask the guest to power off, wait up to `timeout`,
    /// then SIGKILL that machine's own VMM process. Idempotent.
    pub async fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let (rec, obs) = self.observe(name)?;
        let dir = self.registry.dir(name);
        if !obs.status.expects_vmm() && obs.status != Status::Broken {
            if rec.status != obs.status || rec.vmm.is_some() {
                supervisor::record_stopped(&self.registry, name, None, None)?;
            }
            return Ok(());
        }
        let _ = self.registry.update(name, |r| {
            if r.status.can_become(Status::Stopping) {
                r.status = Status::Stopping;
            }
            Ok(())
        });
        let deadline = Instant::now() + timeout;
        let vmm = rec.vmm;
        if let Some(vmm) = vmm.filter(|v| v.is_alive()) {
            if !timeout.is_zero() {
                if let Ok(backend) = AnyBackend::open(rec.backend, &self.config, &self.home) {
                    if rec.status == Status::Paused {
                        let _ = backend.resume(&dir).await;
                    }
                    // Graceful: the agent syncs and powers off; else the
                    // VMM-level request (ACPI button / Ctrl-Alt-Del).
                    let graceful = tokio::time::timeout(
                        timeout.min(Duration::from_secs(2)),
                        crate::exec::request_shutdown(&dir),
                    )
                    .await;
                    if !matches!(graceful, Ok(Ok(()))) {
                        let _ = tokio::time::timeout(
                            deadline.saturating_duration_since(Instant::now()),
                            backend.request_shutdown(&dir),
                        )
                        .await;
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::task::spawn_blocking(move || vmm.wait_exit(left)).await;
            }
            if vmm.is_alive() {
                tracing::info!("killing VMM pid {} of machine {name:?}", vmm.pid);
                vmm.signal(rustix::process::Signal::KILL)?;
                tokio::task::spawn_blocking(move || vmm.wait_exit(Duration::from_secs(10)))
                    .await
                    .map_err(std::io::Error::other)??;
            }
        }
        // The supervisor records the exit itself; give it a moment, then
        // make sure the record tells the truth even if it is gone.
        if let Some(sup) = rec.supervisor.filter(|s| s.is_alive()) {
            // Longer when it owes a write-back of host directories.
            let grace = if dir.root().join(crate::data::WRITEBACK_PENDING).exists() {
                Duration::from_secs(120)
            } else {
                Duration::from_secs(5)
            };
            let waited = tokio::task::spawn_blocking(move || sup.wait_exit(grace)).await;
            if !matches!(waited, Ok(Ok(()))) {
                sup.signal(rustix::process::Signal::KILL)?;
            }
        }
        supervisor::remove_sockets(&dir);
        crate::net::release_tap(&rec);
        // The supervisor was gone (or killed): write back ourselves.
        let wb = crate::data::write_back_all(&dir);
        supervisor::record_stopped(&self.registry, name, None, None)?;
        wb?;
        Ok(())
    }

    /// Remove a machine. A running one needs `force` (it is killed first).
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), RuntimeError> {
        let obs = match self.observe(name) {
            Ok((_, obs)) => obs,
            Err(RuntimeError::Registry(RegistryError::Corrupt { .. })) => {
                // A directory without a usable record: nothing to stop.
                self.registry.remove(name)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if obs.status.expects_vmm() || obs.status == Status::Broken {
            if !force {
                return Err(RuntimeError::WrongState {
                    name: name.to_owned(),
                    status: obs.status,
                    hint: Some(format!("stop it first or use `mvm rm -f {name}`")),
                });
            }
            self.stop(name, Duration::ZERO).await?;
        }
        if let Ok(rec) = self.registry.load(name) {
            crate::net::release(&self.config, &self.registry, &rec)?;
        }
        self.registry.remove(name)?;
        Ok(())
    }

    /// Pause a running machine.
    pub async fn pause(&self, name: &str) -> Result<(), RuntimeError> {
        self.pause_resume(name, true).await
    }

    /// Resume a paused machine.
    pub async fn resume(&self, name: &str) -> Result<(), RuntimeError> {
        self.pause_resume(name, false).await
    }

    async fn pause_resume(&self, name: &str, pause: bool) -> Result<(), RuntimeError> {
        let (rec, obs) = self.observe(name)?;
        let (from, to) = if pause {
            (Status::Running, Status::Paused)
        } else {
            (Status::Paused, Status::Running)
        };
        if obs.status != from {
            return Err(RuntimeError::WrongState {
                name: name.to_owned(),
                status: obs.status,
                hint: None,
            });
        }
        let _lock = self.registry.lock(name)?;
        let backend = AnyBackend::open(rec.backend, &self.config, &self.home)?;
        let dir = self.registry.dir(name);
        if pause {
            backend.pause(&dir).await?;
        } else {
            backend.resume(&dir).await?;
        }
        drop(_lock);
        self.registry
            .update(name, |r| Registry::set_status(r, to))?;
        Ok(())
    }

    /// Every machine with its reconciled status.
    pub fn list(&self) -> Result<Vec<MachineView>, RuntimeError> {
        Ok(self
            .registry
            .list()?
            .into_iter()
            .map(|l| match l.record {
                Ok(rec) => view(&rec),
                Err(e) => MachineView {
                    name: l.name,
                    status: Status::Broken,
                    note: Some(e.to_string()),
                    backend: None,
                    cpus: None,
                    memory_mib: None,
                    ip: None,
                    ports: vec![],
                    created: None,
                    image: None,
                    transient: false,
                },
            })
            .collect())
    }

    /// Everything known about one machine.
    pub fn inspect(&self, name: &str) -> Result<InspectView, RuntimeError> {
        let (rec, obs) = self.observe(name)?;
        let dir: InstanceDir = self.registry.dir(name);
        let running = obs.status.expects_vmm() || obs.status == Status::Broken;
        Ok(InspectView {
            status: obs.status,
            status_note: obs.note.or(rec.error.clone()),
            instance_dir: dir.root().to_owned(),
            vmm_pid: rec.vmm.filter(|_| running).map(|p| p.pid),
            supervisor_pid: rec.supervisor.filter(|_| running).map(|p| p.pid),
            api_socket: match rec.backend {
                BackendKind::Firecracker => dir.api_socket(),
                BackendKind::Qemu => dir.qmp_socket(),
            },
            agent_socket: dir.agent_socket(),
            console_log: dir.console_log(),
            vmm_log: dir.vmm_log(),
            supervisor_log: dir.supervisor_log(),
            record: rec,
        })
    }
}

fn view(rec: &InstanceRecord) -> MachineView {
    let obs = rec.observe();
    MachineView {
        name: rec.name.clone(),
        status: obs.status,
        note: obs.note.or_else(|| {
            rec.last_exit
                .clone()
                .filter(|_| obs.status == Status::Stopped)
        }),
        backend: Some(rec.backend),
        cpus: Some(rec.cpus),
        memory_mib: Some(rec.memory_mib),
        ip: rec.net.as_ref().map(|n| n.ip.to_string()),
        ports: rec
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{}:{}->{}/{}",
                    p.host_ip, p.host_port, p.guest_port, p.protocol
                )
            })
            .collect(),
        created: rec
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .ok(),
        image: Some(rec.image.clone()),
        transient: rec.transient,
    }
}
