//! Stop a machine by asking its owner.
//!
//! 1. Record a stop request (with the timeout) under the record lock: an
//!    owner that is still creating or starting the machine reads it when it
//!    hands the machine over and does not start it.
//! 2. SIGTERM the owner if it is a supervisor (it powers the guest off
//!    gracefully, kills the VMM when the timeout passes, tears down).
//! 3. Wait, on the owner's pidfd and on changes of the record (inotify),
//!    until nobody owns the machine.
//! 4. Then make sure the record tells the truth: if the owner died without
//!    finishing (or was never there), take the free lock and recover.
//!
//! Only when the owner does not finish in time (timeout plus a grace) is the
//! forcible path taken: SIGKILL the owner and its VMM by verified pid, then
//! recover as in step 4.

use std::time::{Duration, Instant};

use mvm_core::instance::{OwnerRole, StopRequest};
use mvm_core::process::ProcessIdentity;

use crate::{Runtime, RuntimeError};

/// What the owner may take beyond the stop timeout (teardown, network).
const OWNER_GRACE: Duration = Duration::from_secs(15);
/// ... and when a write-back of host directories is owed.
const WRITE_BACK_GRACE: Duration = Duration::from_secs(300);

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The machine was running (or starting) and is stopped now.
    Stopped,
    /// Nothing ran: the machine was already stopped (or never started).
    NotRunning,
    /// The owner did not stop in time and was killed.
    Forced,
}

/// Stop machine `name`, giving the guest `timeout` to power off.
pub async fn stop(
    rt: &Runtime,
    name: &str,
    timeout: Duration,
) -> Result<StopOutcome, RuntimeError> {
    let registry = rt.registry();
    let dir = rt.dir(name);
    let grace = if dir
        .root()
        .join(crate::resources::drives::WRITEBACK_PENDING)
        .exists()
    {
        WRITE_BACK_GRACE
    } else {
        OWNER_GRACE
    };
    let deadline = Instant::now() + timeout + grace;
    let mut asked = false;
    let mut signalled: Option<ProcessIdentity> = None;
    let mut forced = false;
    loop {
        if !registry.owner_alive(name) {
            let owned = match registry.try_own(name) {
                // A transient machine removes itself when it stops.
                Err(mvm_core::registry::RegistryError::NotFound { .. }) if asked => {
                    return Ok(StopOutcome::Stopped);
                }
                r => r?,
            };
            if let Some(lock) = owned {
                let recovered = crate::ops::recover::recover_owned(rt, name, &lock)?;
                // A request nobody will read any more.
                let cleared = registry.update(name, |r| {
                    r.stop_request = None;
                    Ok(())
                });
                match cleared {
                    Err(mvm_core::registry::RegistryError::NotFound { .. })
                        if asked || recovered => {}
                    r => {
                        r?;
                    }
                }
                drop(lock);
                return Ok(if forced {
                    StopOutcome::Forced
                } else if asked || recovered {
                    StopOutcome::Stopped
                } else {
                    StopOutcome::NotRunning
                });
            }
            continue; // someone took it this instant: ask them
        }
        let updated = registry.update(name, |r| {
            if r.stop_request.is_none() {
                r.stop_request = Some(StopRequest {
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            Ok(())
        });
        let rec = match updated {
            Ok((rec, ())) => rec,
            Err(mvm_core::registry::RegistryError::NotFound { .. }) if asked => {
                return Ok(StopOutcome::Stopped);
            }
            Err(e) => return Err(e.into()),
        };
        asked = true;
        crate::fault::point("stop.requested", None)?;
        if rec.owner_role == OwnerRole::Supervisor
            && let Some(owner) = rec.owner
            && signalled != Some(owner)
        {
            owner.signal(rustix::process::Signal::TERM)?;
            signalled = Some(owner);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // The owner does not answer: the forcible path.
            tracing::warn!("the owner of machine {name:?} did not stop it in time: killing it");
            if let Some(owner) = rec.owner {
                owner.signal(rustix::process::Signal::KILL)?;
                let _ = owner.wait_exit(Duration::from_secs(5));
            }
            if let Some(vmm) = rec.vmm {
                vmm.signal(rustix::process::Signal::KILL)?;
            }
            forced = true;
            continue;
        }
        let owner = rec.owner;
        let registry = registry.clone();
        let n = name.to_owned();
        // Wake up when the owner exits or the record changes (hand-over).
        tokio::task::spawn_blocking(move || {
            registry.wait_for_change(&n, owner, left.min(Duration::from_secs(1)))
        })
        .await
        .map_err(std::io::Error::other)??;
    }
}
