//! Remove a machine: stop it through its owner when `--force` says so,
//! then, as its owner, release whatever it still holds and delete its
//! directory. Named volumes are kept.

use std::time::Duration;

use mvm_core::Status;
use mvm_core::registry::RegistryError;

use crate::{Runtime, RuntimeError};

/// How often `rm -f` stops a machine that another command keeps starting.
const ATTEMPTS: usize = 3;

/// Remove machine `name`. A running one needs `force` (it is stopped at
/// once: no graceful power-off).
pub async fn remove(rt: &Runtime, name: &str, force: bool) -> Result<(), RuntimeError> {
    let registry = rt.registry();
    for _ in 0..ATTEMPTS {
        let owned = registry.owner_alive(name);
        let (status, busy) = match registry.load(name) {
            Ok(rec) => {
                let s = rec.observe(owned).status;
                (s, owned || s.is_active())
            }
            // Nothing can run without a readable record but its owner.
            Err(RegistryError::Corrupt { .. }) => (Status::Broken, owned),
            Err(e) => return Err(e.into()),
        };
        // A machine whose VMM already exited is being torn down by its
        // owner: wait for that (as a stop does) rather than refuse.
        if busy && !force && status == Status::Stopping {
            crate::ops::stop::stop(rt, name, Duration::from_secs(10)).await?;
            continue;
        }
        if busy && !force {
            return Err(RuntimeError::WrongState {
                name: name.to_owned(),
                status,
                hint: Some(format!("stop it first or use `mvm rm -f {name}`")),
            });
        }
        if busy && registry.owner_alive(name) {
            match crate::ops::stop::stop(rt, name, Duration::ZERO).await {
                Ok(_) => {}
                Err(RuntimeError::Registry(RegistryError::NotFound { .. })) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        crate::fault::point("rm.stopped", None)?;
        let Some(lock) = (match registry.try_own(name) {
            Err(RegistryError::NotFound { .. }) => return Ok(()),
            r => r?,
        }) else {
            continue; // started again meanwhile: stop it again
        };
        match registry.load(name) {
            Ok(rec) => {
                crate::supervisor::teardown::release(rt, &rec, None, None)?;
                crate::fault::point("rm.released", None)?;
            }
            Err(RegistryError::Corrupt { .. }) => {}
            Err(RegistryError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        match registry.remove(name) {
            Ok(()) | Err(RegistryError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        drop(lock);
        return Ok(());
    }
    Err(RuntimeError::WrongState {
        name: name.to_owned(),
        status: registry.load(name)?.status(),
        hint: Some("another mvm command keeps starting it".into()),
    })
}
