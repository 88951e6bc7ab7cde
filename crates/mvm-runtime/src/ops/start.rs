//! Start a machine: become its owner (or find that someone else is), move
//! it to `Starting`, hand it to a detached supervisor, and wait for the
//! supervisor's verdict.
//!
//! Of two concurrent `mvm start a`, exactly one takes the owner lock; the
//! other reports that the machine is already starting or running (like
//! `docker start`, that is not an error).

use std::time::Duration;

use mvm_core::Status;
use mvm_core::instance::OwnerRole;
use mvm_core::process::ProcessIdentity;
use mvm_core::registry::OwnerLock;
use serde::Serialize;

use crate::supervisor::{Event, LAUNCH_TIMEOUT, detached};
use crate::{Runtime, RuntimeError};

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

/// How a start ended.
#[derive(Debug, Clone)]
pub enum StartOutcome {
    /// This call started the machine.
    Started(StartReport),
    /// Another process owns the machine and it is starting or running.
    AlreadyRunning(Status),
}

/// How long `start` waits for another command that holds the machine (a
/// concurrent start about to record `Starting`, a recovery, a stop).
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// Start a created or stopped machine. If another process owns it, wait
/// (on record changes) until it is visibly starting or running — then it is
/// [`StartOutcome::AlreadyRunning`] — or free again, then take it.
pub async fn start(rt: &Runtime, name: &str, wait: WaitFor) -> Result<StartOutcome, RuntimeError> {
    let registry = rt.registry();
    let deadline = std::time::Instant::now() + BUSY_WAIT;
    loop {
        if let Some(lock) = registry.try_own(name)? {
            return start_owned(rt, name, lock, wait).await;
        }
        let rec = registry.load(name)?;
        let status = rec.status();
        if matches!(status, Status::Starting | Status::Running | Status::Paused) {
            return Ok(StartOutcome::AlreadyRunning(status));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(RuntimeError::WrongState {
                name: name.to_owned(),
                status,
                hint: Some(
                    "another mvm command is working on it; try again when it is done".into(),
                ),
            });
        }
        let (registry, n, owner) = (registry.clone(), name.to_owned(), rec.owner);
        tokio::task::spawn_blocking(move || {
            registry.wait_for_change(&n, owner, left.min(Duration::from_secs(1)))
        })
        .await
        .map_err(std::io::Error::other)??;
    }
}

/// Start machine `name`, which the caller owns through `lock` (as `mvm run`
/// does right after creating it).
pub async fn start_owned(
    rt: &Runtime,
    name: &str,
    lock: OwnerLock,
    wait: WaitFor,
) -> Result<StartOutcome, RuntimeError> {
    crate::fault::point("start.owned", None)?;
    // A previous owner may have died leaving state behind.
    crate::ops::recover::recover_owned(rt, name, &lock)?;
    let registry = rt.registry();
    let mut sup = {
        // The hand-over happens under the record lock: whoever reads the
        // record next sees the supervisor as the owner.
        let _record_lock = registry.lock(name)?;
        let mut r = registry.load(name)?;
        match r.status() {
            Status::Created | Status::Stopped => {}
            s => {
                return Err(RuntimeError::WrongState {
                    name: name.to_owned(),
                    status: s,
                    hint: None,
                });
            }
        }
        r.transition(Status::Starting)?;
        if r.stop_request.take().is_some() {
            // Stopped while it was being created (`mvm run` then `mvm stop`).
            r.mark_stopped(Some("stopped before it started".into()));
            registry.save(&r)?;
            return Err(RuntimeError::StoppedWhileStarting {
                name: name.to_owned(),
            });
        }
        r.error = None;
        r.vmm = None;
        if r.isolation.as_ref().is_some_and(|i| i.cgroup.is_some()) {
            // See `ops::create`: the supervisor moves the VMM into its
            // cgroup a few ms from now (v2 only).
            mvm_jail::cgroup::prewarm_migration();
        }
        let s = detached::spawn(rt, name, &lock, &r.id)?;
        r.owner = s.child.id().and_then(ProcessIdentity::of);
        r.owner_role = OwnerRole::Supervisor;
        registry.save(&r)?;
        s
    };
    drop(lock);
    tracing::debug!("timing: supervisor spawned");
    crate::fault::point("start.handed_over", None)?;

    let mut report = StartReport::default();
    let limit = LAUNCH_TIMEOUT + rt.config().boot_timeout() + Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ev = tokio::select! {
            ev = sup.next_event() => ev?,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(RuntimeError::Timeout { what: format!("start of machine {name:?}"), after: limit });
            }
        };
        match ev {
            Some(Event::Started { vmm_pid, launch_ms }) => {
                tracing::debug!("timing: the supervisor reported the VMM started");
                report.vmm_pid = vmm_pid;
                report.launch_ms = launch_ms;
                crate::fault::point("start.started", Some(vmm_pid))?;
                if wait == WaitFor::Started {
                    return Ok(StartOutcome::Started(report));
                }
            }
            Some(Event::Notice { message }) => eprintln!("mvm: {message}"),
            Some(Event::Ready { boot_ms }) => {
                report.boot_ms = Some(boot_ms);
                return Ok(StartOutcome::Started(report));
            }
            Some(Event::Failed { message }) => {
                let _ = sup.child.wait().await;
                return Err(RuntimeError::StartFailed {
                    name: name.to_owned(),
                    message,
                });
            }
            Some(Event::Stopped { .. }) => {
                let _ = sup.child.wait().await;
                return Err(RuntimeError::StoppedWhileStarting {
                    name: name.to_owned(),
                });
            }
            None => {
                // The supervisor ended without a verdict (it was killed).
                let status = sup.child.wait().await?;
                let error = registry.load(name).ok().and_then(|r| r.error);
                return Err(RuntimeError::StartFailed {
                    name: name.to_owned(),
                    message: error.unwrap_or_else(|| {
                        format!(
                            "its supervisor exited ({status}); see {}",
                            rt.dir(name).supervisor_log().display()
                        )
                    }),
                });
            }
        }
    }
}
