//! Recovery: what happens to a machine whose owner died without finishing
//! its work (SIGKILL, crash, power loss).
//!
//! The kernel released the dead owner's lock, so any mvm process can take
//! it; with the lock it runs the supervisor's own teardown
//! ([`crate::supervisor::teardown::release`]): kill a VMM left behind, delete
//! the TAP (and the bridge and NAT rules if it was the last machine), write
//! back host directories, and record the machine `Stopped` — or remove it,
//! when it was transient or its creation never finished. Every command that
//! reads the registry calls [`reap`] first, so nothing is left for a human.

use mvm_core::Status;
use mvm_core::registry::{OwnerLock, RegistryError};

use crate::{Runtime, RuntimeError};

/// Recover machine `name`, which the caller owns through `lock`, if a
/// previous owner left runtime state behind. Returns whether it did.
pub fn recover_owned(rt: &Runtime, name: &str, lock: &OwnerLock) -> Result<bool, RuntimeError> {
    let _ = lock; // proof of ownership
    let rec = match rt.registry().load(name) {
        Ok(r) => r,
        Err(RegistryError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let observed = rec.observe(false);
    if !observed.needs_recovery {
        return Ok(false);
    }
    let why = observed.note.unwrap_or_else(|| "its owner died".into());
    tracing::info!("recovering machine {name:?}: {why}");
    if rec.status() == Status::Creating {
        // Never finished: it never existed for the user.
        crate::resources::network::release(rt.config(), rt.registry(), &rec)?;
        match rt.registry().remove(name) {
            Ok(()) | Err(RegistryError::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
    let last_exit = if rec.status().expects_vmm() {
        Some(format!("killed: {why}"))
    } else {
        None
    };
    crate::supervisor::teardown::release(rt, &rec, last_exit, None)?;
    Ok(true)
}

/// One machine recovered by [`reap`].
#[derive(Debug)]
pub struct Reaped {
    /// The machine.
    pub name: String,
    /// How the recovery went.
    pub result: Result<(), RuntimeError>,
}

/// Recover every machine whose owner died, and remove staging directories
/// of creations that never claimed their name. Machines owned by a live
/// process are never touched.
pub fn reap(rt: &Runtime) -> Vec<Reaped> {
    let registry = rt.registry();
    registry.remove_stale_staging();
    let Ok(list) = registry.list() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for l in list {
        let Ok(rec) = l.record else { continue };
        if !rec.observe(registry.owner_alive(&l.name)).needs_recovery {
            continue;
        }
        let Ok(Some(lock)) = registry.try_own(&l.name) else {
            continue; // someone else owns it now
        };
        let result = recover_owned(rt, &l.name, &lock).map(|_| ());
        if let Err(e) = &result {
            tracing::warn!("recovering machine {:?}: {}", l.name, crate::error_chain(e));
        }
        out.push(Reaped {
            name: l.name,
            result,
        });
    }
    out
}
