//! Pause and resume a running machine's vCPUs (a VMM-level operation that
//! does not change who owns the machine).

use mvm_core::Status;

use crate::resources::backend::AnyBackend;
use crate::{Runtime, RuntimeError};

/// Pause (`pause = true`) or resume a machine.
pub async fn pause(rt: &Runtime, name: &str, pause: bool) -> Result<(), RuntimeError> {
    let (from, to) = if pause {
        (Status::Running, Status::Paused)
    } else {
        (Status::Paused, Status::Running)
    };
    let registry = rt.registry();
    // Under the record lock, so a concurrent stop sees a consistent state.
    let _l = registry.lock(name)?;
    let mut rec = registry.load(name)?;
    let status = rec.observe(registry.owner_alive(name)).status;
    if status != from {
        return Err(RuntimeError::WrongState {
            name: name.to_owned(),
            status,
            hint: None,
        });
    }
    let backend = AnyBackend::open(rec.backend, rt.config(), rt.home())?;
    let dir = rt.dir(name);
    if pause {
        backend.pause(&dir).await?;
    } else {
        backend.resume(&dir).await?;
    }
    rec.transition(to)?;
    registry.save(&rec)?;
    Ok(())
}
