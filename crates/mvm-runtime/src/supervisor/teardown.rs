//! The one teardown of a machine's runtime, run by its supervisor when the
//! VMM has exited, and by a recovery when the supervisor died without
//! running it.
//!
//! [`release`] needs only the persisted record and the instance directory,
//! is idempotent, and runs every step even when an earlier one failed (the
//! first error is returned after all steps ran). Its caller must hold the
//! machine's owner lock.

use std::time::Duration;

use mvm_core::instance::InstanceRecord;

use crate::resources::{drives, jail, network};
use crate::{Runtime, RuntimeError};

/// How long a killed VMM may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Release everything machine `rec` holds on the host, in reverse order of
/// acquisition, and record the outcome:
///
/// 1. its VMM, if one still runs (by verified pid: the forcible path,
///    needed only when its supervisor died);
/// 2. its confinement: whatever is left in its cgroup is killed (a jailed
///    VMM lives in its own PID namespace and outlives a SIGKILLed
///    supervisor, possibly unrecorded: the cgroup is how it is found), the
///    cgroup removed, the chroot unmounted and removed;
/// 3. its sockets;
/// 4. its network: the TAP and its egress tables, and the bridge and NAT
///    rules when it was the last machine holding an address; the egress
///    state file;
/// 5. the write-back of rw host directories, when one is owed;
/// 6. its reference to the template it was restored from, if any;
/// 7. the record: a transient machine is removed; any other is `Stopped`
///    with `last_exit` (and `error`, or the write-back's failure).
pub fn release(
    rt: &Runtime,
    rec: &InstanceRecord,
    last_exit: Option<String>,
    error: Option<String>,
) -> Result<(), RuntimeError> {
    let dir = rt.dir(&rec.name);
    let mut first_error: Option<RuntimeError> = None;
    let mut note = |e: RuntimeError| {
        tracing::warn!("teardown of {:?}: {}", rec.name, crate::error_chain(&e));
        if first_error.is_none() {
            first_error = Some(e);
        }
    };

    if let Some(vmm) = rec.vmm.filter(|v| v.is_alive()) {
        tracing::info!("killing VMM pid {} of machine {:?}", vmm.pid, rec.name);
        match vmm.signal(rustix::process::Signal::KILL) {
            Ok(_) => {
                if let Err(e) = vmm.wait_exit(KILL_WAIT) {
                    note(e.into());
                }
            }
            Err(e) => note(e.into()),
        }
    }
    if let Err(e) = jail::release(&dir, rec) {
        note(RuntimeError::Jail(Box::new(e)));
    }
    super::remove_sockets(&dir);
    if let Err(e) = network::release(rt.config(), rt.registry(), rec) {
        note(e.into());
    }
    crate::resources::egress::release(&dir);
    let write_back = drives::write_back_all(&dir).err().map(|e| {
        let msg = crate::error_chain(&e);
        note(e.into());
        msg
    });
    if let Err(e) = super::restore::release(rt, rec) {
        note(e);
    }
    let recorded = if rec.transient {
        match rt.registry().remove(&rec.name) {
            Err(mvm_core::registry::RegistryError::NotFound { .. }) => Ok(()),
            r => r,
        }
    } else {
        rt.registry()
            .update(&rec.name, |r| {
                r.mark_stopped(last_exit.clone());
                if let Some(e) = error.clone().or(write_back.clone()) {
                    r.error = Some(e);
                }
                Ok(())
            })
            .map(|_| ())
    };
    if let Err(e) = recorded {
        note(e.into());
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
