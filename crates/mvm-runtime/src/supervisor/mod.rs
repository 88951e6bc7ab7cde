//! The supervisor: the one owner of a running machine.
//!
//! One supervisor runs per started machine: `mvm __supervise NAME`, in its
//! own session so it outlives the CLI ([`detached`]), or in-process for a
//! transient `mvm exec`. It holds the machine's owner lock from its first
//! instruction to its last (the lock is inherited from the process that
//! spawned it, so there is no moment without an owner), and
//!
//! 1. prepares the machine's resources: volumes free, network address,
//!    config drive, TAP and port forwarders, egress rules and DNS filter;
//! 2. launches the VMM as its child (with a death signal: the VMM never
//!    outlives its supervisor) and records it;
//! 3. takes the one stream to the guest agent and waits for the agent's
//!    handshake (the machine is then *ready*);
//! 4. serves `<instance>/agent.sock`, multiplexing every client onto that
//!    stream, until the VMM exits or a stop is requested; a machine with a
//!    main process stops when it exits ([`main_process`]);
//! 5. on a stop request (SIGTERM/SIGINT, with the timeout recorded by
//!    `mvm stop`): while the guest boots, kills the VMM at once; once ready,
//!    asks the guest agent to power off, then the VMM (ACPI / Ctrl-Alt-Del),
//!    then kills the VMM when the timeout passes;
//! 6. runs the one idempotent teardown ([`teardown::release`]) and exits,
//!    which releases the lock.
//!
//! SIGUSR1 asks it to enforce the egress policy now in the record (`mvm
//! update`; see `resources::egress`), once the VMM runs.
//!
//! A clone of a template is restored instead of booted, and made a machine
//! of its own before it is ready ([`restore`]); SIGUSR2 asks for a snapshot
//! of the running machine ([`snapshot`], `mvm template create`).
//!
//! Progress goes to whoever started it as [`Event`]s (JSON lines on stdout
//! for the detached supervisor).

pub mod detached;
pub mod main_process;
pub mod restore;
pub mod snapshot;
pub mod spec;
pub mod teardown;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use mvm_core::instance::{InstanceRecord, OwnerRole};
use mvm_core::process::ProcessIdentity;
use mvm_core::registry::OwnerLock;
use mvm_core::{InstanceDir, Status};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;

use crate::resources::backend::AnyBackend;
use crate::resources::{disk, drives, egress, network};
use crate::{Runtime, RuntimeError};

/// How long the VMM may take to accept its configuration.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop may take when none was recorded (a plain
/// SIGTERM to the supervisor).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest agent's own power-off request may take before the
/// VMM-level request is tried.
const AGENT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long reaping a killed VMM may take.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the main process's status, already on its way, may take to
/// arrive after the VMM exited.
const MAIN_STATUS_GRACE: Duration = Duration::from_millis(500);

/// Progress of a supervisor, as seen by the process that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// The VMM accepted its configuration and started the guest.
    Started {
        /// VMM pid.
        vmm_pid: u32,
        /// Milliseconds from supervisor start to this moment.
        launch_ms: u64,
    },
    /// The guest agent answered.
    Ready {
        /// Milliseconds from `started` to the agent's handshake.
        boot_ms: u64,
    },
    /// Something the user should know that does not stop the start (a
    /// clone cold-booted instead of restored, and why).
    Notice {
        /// One line.
        message: String,
    },
    /// Start failed; nothing is left running.
    Failed {
        /// Why, with log tails.
        message: String,
    },
    /// The machine stopped (on request, or its VMM exited) before or after
    /// it was ready; nothing is left running.
    Stopped {
        /// How the VMM ended, or why it never ran.
        reason: String,
    },
}

/// How a supervised machine ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Human description ("exited with code 0", "killed by signal 9",
    /// "stopped before it started").
    pub description: String,
}

/// Stop requests delivered to a running supervisor: each message is one
/// request (SIGTERM, SIGINT, or the end of a transient exec's command). The
/// second one makes the stop immediate.
pub type StopRequests = tokio::sync::mpsc::UnboundedReceiver<()>;

/// A human description of a VMM's exit status.
pub fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".to_string(),
    }
}

/// Remove the machine's runtime sockets (never its data).
pub fn remove_sockets(dir: &InstanceDir) {
    for p in [
        dir.agent_socket(),
        dir.guest_socket(),
        dir.qmp_socket(),
        dir.api_socket(),
    ] {
        if let Err(e) = mvm_core::files::remove_if_exists(&p) {
            tracing::warn!("{e}");
        }
    }
}

/// Why the lifecycle ended.
enum Outcome {
    /// The VMM exited (or was stopped); how.
    Ended(String),
    /// The start failed.
    Failed(RuntimeError),
}

/// Who the supervisor supervises.
struct Supervisor<'a> {
    rt: &'a Runtime,
    name: String,
    dir: InstanceDir,
}

/// Everything the supervisor holds while the machine runs; released by
/// [`Supervisor::finish`] in reverse order of acquisition.
#[derive(Default)]
struct Held {
    network: Option<network::MachineNetwork>,
    egress: Option<egress::Egress>,
    child: Option<mvm_core::vmm_child::VmmChild>,
    /// The making of the image's next spare disk (joined at the end).
    spare_disk: Option<std::thread::JoinHandle<()>>,
}

/// Run the owner of machine `name`, whose record is `Starting` and whose
/// owner lock is `lock`, until the machine has stopped and everything it
/// held is released. `notify` receives [`Event`]s; `stop` delivers stop
/// requests.
pub async fn supervise(
    rt: &Runtime,
    name: &str,
    lock: OwnerLock,
    mut stop: StopRequests,
    mut notify: impl FnMut(Event),
) -> Result<Ended, RuntimeError> {
    let me = ProcessIdentity::current();
    let sup = Supervisor {
        rt,
        name: name.to_owned(),
        dir: rt.dir(name),
    };
    let mut held = Held::default();
    // Before the record is read: a change recorded from now on is either
    // in what `prepare` reads or signalled here.
    let mut reload = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    // Likewise for snapshot requests (`template.snapshot_request`).
    let mut snapshots =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    crate::fault::point("sup.adopted", None)?;
    tracing::debug!("timing: supervisor adopted the machine");
    let record = rt.registry().update(name, |r| {
        r.owner = Some(me);
        r.owner_role = OwnerRole::Supervisor;
        r.error = None;
        r.main_exit = None;
        Ok(())
    });
    let outcome = match record {
        Ok((rec, ())) => {
            sup.lifecycle(
                rec,
                &mut held,
                &mut stop,
                &mut reload,
                &mut snapshots,
                &mut notify,
            )
            .await
        }
        Err(e) => Outcome::Failed(e.into()),
    };
    let result = sup.finish(held, outcome, &mut notify).await;
    drop(lock);
    result
}

impl Supervisor<'_> {
    async fn lifecycle(
        &self,
        rec: InstanceRecord,
        held: &mut Held,
        stop: &mut StopRequests,
        reload: &mut tokio::signal::unix::Signal,
        snapshots: &mut tokio::signal::unix::Signal,
        notify: &mut impl FnMut(Event),
    ) -> Outcome {
        let t0 = Instant::now();
        if rec.stop_request.is_some() {
            return Outcome::Ended("stopped before it started".into());
        }
        let has_main = rec.main.is_some();
        // 1. Resources. Preparing is bounded (every step has a deadline) and
        // not cancelled half-way — work handed to blocking threads (nft,
        // name resolution) would finish after the teardown and leave rules
        // behind; a stop that arrives meanwhile is honoured right after, with
        // everything acquired in `held` for the teardown to release.
        let prepared = self.prepare(rec, held).await;
        let (backend, spec, rec, launch) = match prepared {
            Ok(x) => x,
            Err(e) => return Outcome::Failed(e),
        };
        if stop.try_recv().is_ok() {
            return Outcome::Ended("stopped before it started".into());
        }

        // 2. The VMM (booted, or restored from a template). Its launch is
        // bounded and not cancelled half-way: a stop that arrives meanwhile
        // is honoured right after, with the VMM in hand, so the teardown
        // kills *and reaps* it ("stopped" means no VMM process exists any
        // more).
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        let launched =
            restore::launch(&backend, &spec, &self.dir, &rec, launch, deadline, notify).await;
        let restore::Launched {
            vmm: mut running,
            reidentify,
            cold_boot,
            ..
        } = match launched {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e),
        };
        let vmm_pid = running.child.id().unwrap_or_default();
        held.child = Some(running.child);
        tracing::debug!("timing: VMM launched");
        if stop.try_recv().is_ok() {
            return Outcome::Ended("stopped before it started".into());
        }
        let recorded = self.rt.registry().update(&self.name, |r| {
            r.vmm = ProcessIdentity::of(vmm_pid);
            r.started_at = Some(time::OffsetDateTime::now_utc());
            restore::mark_launched(r, cold_boot.clone());
            // "running" means the VMM runs the guest (as Docker's "running"
            // means the process runs); readiness is the `ready` event.
            r.transition(Status::Running)?;
            Ok(())
        });
        if let Err(e) = recorded {
            return Outcome::Failed(e.into());
        }
        tracing::debug!("timing: recorded running");
        notify(Event::Started {
            vmm_pid,
            launch_ms: t0.elapsed().as_millis() as u64,
        });
        if let Err(e) = crate::fault::point("sup.vmm_spawned", Some(vmm_pid)) {
            return Outcome::Failed(e);
        }
        // The disk the next machine of this image takes (a few ms, on its
        // own thread, while the guest boots).
        held.spare_disk = disk::refill_spare(self.rt.home(), &rec);

        // 3. The guest agent, racing the VMM's exit, a stop and the deadline.
        let t_started = Instant::now();
        let boot_deadline = t_started + self.rt.config().boot_timeout();
        let dir = self.dir.clone();
        let child = held.child.as_mut().expect("just set");
        let ready = async {
            let guest = match running.guest.take() {
                Some(s) => s,
                None => backend
                    .connect_guest(&dir, boot_deadline)
                    .await
                    .map_err(|e| e.with_logs(&dir))?,
            };
            let mut link = mvm_agent_proto::mux::wait_guest_ready(guest, boot_deadline)
                .await
                .map_err(|e| {
                    mvm_core::backend::BackendError::new(
                        backend.kind(),
                        "the guest agent did not answer",
                    )
                    .with_source(e)
                    .with_logs(&dir)
                })?;
            tracing::debug!("guest agent handshake done");
            if let Some(req) = reidentify {
                restore::reidentify(&mut link, req, &backend, &dir, boot_deadline).await?;
            }
            let listener = UnixListener::bind(dir.agent_socket())?;
            Ok::<_, RuntimeError>((link, listener))
        };
        tokio::pin!(ready);
        let ready = loop {
            tokio::select! {
                r = &mut ready => break r,
                status = child.wait() => {
                    let desc = status.map(describe).unwrap_or_else(|e| e.to_string());
                    break Err(mvm_core::backend::BackendError::new(
                        backend.kind(),
                        format!("the VMM {desc} before the guest agent answered"),
                    )
                    .with_logs(&dir)
                    .into());
                }
                // A booting guest cannot power off in an orderly way: a stop
                // during the start cancels it.
                _ = stop.recv() => return Outcome::Ended("stopped while starting".into()),
                _ = reload.recv() => self.reload_egress(held.egress.as_ref()),
                _ = snapshots.recv() => {
                    snapshot::serve(self.rt, &self.name, &dir, &backend, &spec).await;
                }
            }
        };
        let (link, listener) = match ready {
            Ok(x) => x,
            Err(e) => return Outcome::Failed(e),
        };
        notify(Event::Ready {
            boot_ms: t_started.elapsed().as_millis() as u64,
        });
        if let Err(e) = crate::fault::point("sup.ready", Some(vmm_pid)) {
            return Outcome::Failed(e);
        }

        // 4. Serve until the VMM exits; 5. stop on request.
        let serve = mvm_agent_proto::mux::serve(link, listener, std::future::pending::<()>());
        tokio::pin!(serve);
        let mut serving = true;
        let mut stopping: Option<Pin<Box<dyn Future<Output = ()> + '_>>> = None;
        let main_wait = main_process::wait(&dir, has_main, Duration::ZERO);
        tokio::pin!(main_wait);
        let (mut main_waiting, mut main_ended) = (has_main, None);
        let mut main_retries = 0;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = reload.recv() => self.reload_egress(held.egress.as_ref()),
                _ = snapshots.recv() => {
                    snapshot::serve(self.rt, &self.name, &dir, &backend, &spec).await;
                }
                r = &mut main_wait, if main_waiting => {
                    main_waiting = false;
                    match main_process::ended(self.rt, &self.name, r) {
                        main_process::Ended::Lost if main_retries < main_process::WAIT_RETRIES => {
                            // Asked again (if the guest is going down, the
                            // VMM's exit ends this loop first).
                            main_retries += 1;
                            let delay = Duration::from_millis(100 << main_retries);
                            main_wait.set(main_process::wait(&dir, has_main, delay));
                            main_waiting = true;
                            continue;
                        }
                        main_process::Ended::Lost => continue,
                        main_process::Ended::Exited(d) => main_ended = Some(d),
                        // Recorded as the machine's error.
                        main_process::Ended::Unsupported(_) => {}
                    }
                    // The guest powers itself off; this backs it up.
                    if stopping.is_none() {
                        stopping = Some(Box::pin(graceful_stop(&backend, &dir, DEFAULT_STOP_TIMEOUT, false)));
                    }
                }
                r = &mut serve, if serving => {
                    serving = false;
                    // A lost guest stream does not end the machine (the
                    // guest may be rebooting or shutting down); the VMM's
                    // exit does.
                    if let Err(e) = r {
                        tracing::info!("guest agent stream ended: {e}");
                    }
                }
                _ = stop.recv() => {
                    if stopping.is_some() {
                        tracing::info!("second stop request: killing the VMM");
                        let _ = child.start_kill();
                        continue;
                    }
                    let (timeout, paused) = self.begin_stop();
                    if let Err(e) = crate::fault::point("sup.stopping", Some(vmm_pid)) {
                        tracing::warn!("{e}");
                    }
                    if timeout.is_zero() {
                        let _ = child.start_kill();
                    } else {
                        stopping = Some(Box::pin(graceful_stop(&backend, &dir, timeout, paused)));
                    }
                }
                () = async { stopping.as_mut().expect("guarded").await }, if stopping.is_some() => {
                    stopping = None;
                    tracing::info!("the guest did not power off in time: killing the VMM");
                    let _ = child.start_kill();
                }
            }
        };
        if main_waiting
            && main_retries == 0
            && let Ok(r) = tokio::time::timeout(MAIN_STATUS_GRACE, &mut main_wait).await
            && let main_process::Ended::Exited(d) = main_process::ended(self.rt, &self.name, r)
        {
            // The guest powered off right after answering.
            main_ended = Some(d);
        }
        Outcome::Ended(main_ended.unwrap_or_else(|| {
            status
                .map(describe)
                .unwrap_or_else(|e| format!("unknown ({e})"))
        }))
    }

    /// Volumes, address, config drive, network, backend, spec and how to
    /// launch (the record as prepared comes back too).
    async fn prepare(
        &self,
        rec: InstanceRecord,
        held: &mut Held,
    ) -> Result<
        (
            AnyBackend,
            mvm_core::backend::VmSpec,
            InstanceRecord,
            restore::Launch,
        ),
        RuntimeError,
    > {
        let rt = self.rt;
        let registry = rt.registry();
        // (`timing:` events: `MVM_LOG=debug` profiles a start step by step.)
        drives::check_volumes_free(registry, &rec)?;
        let rec = if network::wants_tap(&rec) && rec.net.is_none() {
            let cfg = network::settings(rt.config())?;
            network::allocate_and_record(registry, &cfg, &self.name)?
        } else {
            rec
        };
        tracing::debug!("timing: volumes checked, address allocated");
        let backend = AnyBackend::for_record(&rec, rt.config(), rt.home())?;
        tracing::debug!("timing: backend opened");
        drives::prepare_start(rt.home(), &rec, &self.dir)?;
        tracing::debug!("timing: drives prepared");
        crate::fault::point("sup.network", None)?;
        held.network = network::up(rt.config(), registry, &rec).await?;
        held.egress = egress::up(rt.config(), &rec, &self.dir).await?;
        tracing::debug!("timing: network up");
        let spec = spec::for_record(rt, &rec)?;
        tracing::debug!("resources prepared");
        let launch = restore::plan(rt, &rec)?;
        tracing::debug!("launch planned");
        remove_sockets(&self.dir);
        tracing::debug!("timing: spec built");
        crate::fault::point("sup.vmm_spawn", None)?;
        Ok((backend, spec, rec, launch))
    }

    /// Enforce the egress policy the record holds now (`mvm update`); the
    /// change runs in the background, owned by the [`egress::Egress`].
    fn reload_egress(&self, egress: Option<&egress::Egress>) {
        let Some(e) = egress else { return };
        match self.rt.registry().load(&self.name) {
            Ok(rec) => e.reload(rec.egress),
            Err(err) => tracing::warn!("egress reload: {}", crate::error_chain(&err)),
        }
    }

    /// Record `Stopping`; the stop's timeout (recorded by `mvm stop`, else
    /// the default) and whether the machine was paused.
    fn begin_stop(&self) -> (Duration, bool) {
        let r = self.rt.registry().update(&self.name, |r| {
            let paused = r.status() == Status::Paused;
            if r.status().can_become(Status::Stopping) {
                r.transition(Status::Stopping)?;
            }
            Ok((r.stop_request, paused))
        });
        match r {
            Ok((_, (Some(req), paused))) => (Duration::from_millis(req.timeout_ms), paused),
            Ok((_, (None, paused))) => (DEFAULT_STOP_TIMEOUT, paused),
            Err(e) => {
                tracing::warn!("{}", crate::error_chain(&e));
                (DEFAULT_STOP_TIMEOUT, false)
            }
        }
    }

    /// The one exit path: kill and reap the VMM, stop the forwarders and
    /// delete the TAP, then the idempotent release of everything recorded.
    async fn finish(
        self,
        mut held: Held,
        outcome: Outcome,
        notify: &mut impl FnMut(Event),
    ) -> Result<Ended, RuntimeError> {
        if let Some(mut child) = held.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.start_kill();
            }
            let _ = tokio::time::timeout(REAP_TIMEOUT, child.wait()).await;
        }
        let _ = crate::fault::point("sup.vmm_gone", None);
        drop(held.egress.take());
        drop(held.network.take());
        let _ = crate::fault::point("sup.network_released", None);
        if let Some(spare) = held.spare_disk.take() {
            // A copy of at most `SPARE_MAX_BYTES`; usually long finished.
            let _ = tokio::task::spawn_blocking(move || spare.join()).await;
        }
        let (last_exit, error) = match &outcome {
            Outcome::Ended(d) => (Some(d.clone()), None),
            Outcome::Failed(e) => (None, Some(crate::error_chain(e))),
        };
        let released = match self.rt.registry().load(&self.name) {
            Ok(rec) => teardown::release(self.rt, &rec, last_exit.clone(), error.clone()),
            Err(e) => Err(e.into()),
        };
        match outcome {
            Outcome::Ended(description) => {
                notify(Event::Stopped {
                    reason: description.clone(),
                });
                released?;
                Ok(Ended { description })
            }
            Outcome::Failed(e) => {
                let message = error.unwrap_or_default();
                notify(Event::Failed { message });
                if let Err(r) = released {
                    tracing::error!("{}", crate::error_chain(&r));
                }
                Err(e)
            }
        }
    }
}

/// The orderly part of a stop: the agent's power-off (it syncs first),
/// else the VMM's own request; then wait out the deadline. The caller races
/// this against the VMM's exit and kills the VMM when this returns.
async fn graceful_stop(backend: &AnyBackend, dir: &InstanceDir, timeout: Duration, paused: bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    if paused {
        let _ = backend.resume(dir).await;
    }
    let agent = tokio::time::timeout(
        timeout.min(AGENT_SHUTDOWN_TIMEOUT),
        crate::resources::agent::request_shutdown(dir),
    )
    .await;
    if !matches!(agent, Ok(Ok(()))) {
        let _ = tokio::time::timeout_at(deadline, backend.request_shutdown(dir)).await;
    }
    tokio::time::sleep_until(deadline).await;
}
