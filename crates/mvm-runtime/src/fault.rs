//! Fault injection for tests: named points at the step boundaries of `run`,
//! `start`, `stop`, `rm`, transient `exec`, `template create`, restores
//! and the supervisor, where a test
//! can SIGKILL the process that reaches the point, SIGKILL the machine's VMM,
//! or make the step fail.
//!
//! A test sets `MVM_FAULT=POINT=ACTION` (ACTION: `kill`, `kill-vmm`,
//! `fail`) in the environment of the `mvm` it runs; supervisors inherit it.
//! With `MVM_FAULT_REACHED=FILE`, the point's name is appended to FILE when
//! it is reached, so the test knows the fault happened.
//! The hook exists only in builds with the `fault-injection` feature, which
//! only the test suite enables (`mvm-cli`'s dev-dependency): in a release
//! build every point is an empty inline function.

use crate::RuntimeError;

/// What to do at a fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL the process that reaches the point.
    Kill,
    /// SIGKILL the machine's VMM (points where one exists).
    KillVmm,
    /// Make the step fail with [`RuntimeError::Injected`].
    Fail,
}

impl Action {
    /// The spelling in `MVM_FAULT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::KillVmm => "kill-vmm",
            Action::Fail => "fail",
        }
    }
}

use Action::{Fail, Kill, KillVmm};

/// Every fault point, with the actions that make sense there. The
/// fault-injection test walks this table, so a new point is covered the
/// moment it is listed. One point is left out because only a machine with
/// a main process reaches it, which the walk does not run:
/// `sup.main_wait` (the supervisor's first `WaitMain`; `fail` there is
/// `e2e_lifecycle::a_lost_main_process_wait_is_asked_again`).
pub const POINTS: &[(&str, &[Action])] = &[
    // create (run and transient exec)
    ("create.claimed", &[Kill, Fail]),
    ("create.disk", &[Kill, Fail]),
    ("create.drives", &[Kill, Fail]),
    // start (run and start), in the CLI
    ("start.owned", &[Kill]),
    ("start.handed_over", &[Kill]),
    ("start.started", &[Kill]),
    // supervisor (detached, or in-process for a transient exec)
    ("sup.adopted", &[Kill]),
    ("sup.network", &[Kill, Fail]),
    ("sup.vmm_spawn", &[Fail]),
    ("sup.vmm_spawned", &[Kill, KillVmm]),
    ("sup.ready", &[Kill, KillVmm]),
    ("sup.stopping", &[Kill, KillVmm]),
    ("sup.vmm_gone", &[Kill]),
    ("sup.network_released", &[Kill]),
    // stop, in the CLI
    ("stop.requested", &[Kill]),
    // rm, in the CLI
    ("rm.stopped", &[Kill]),
    ("rm.released", &[Kill]),
    // transient exec, in the CLI
    ("exec.ready", &[Kill, KillVmm]),
    ("exec.command_done", &[Kill, KillVmm]),
    // a clone restored from a template (supervisor)
    ("sup.restored", &[Kill, KillVmm]),
    // template create: staging begun, the snapshot (in the supervisor of
    // the template machine), before the commit
    ("tmpl.staged", &[Kill, Fail]),
    ("tmpl.snapshot", &[Kill, Fail]),
    ("tmpl.snapshotted", &[Kill]),
    ("tmpl.commit", &[Kill, Fail]),
];

#[cfg(feature = "fault-injection")]
fn wanted(point: &str) -> Option<Action> {
    let spec = std::env::var(mvm_core::env::MVM_FAULT).ok()?;
    let (p, a) = spec.split_once('=')?;
    if p != point {
        return None;
    }
    match a {
        "kill" => Some(Kill),
        "kill-vmm" => Some(KillVmm),
        "fail" => Some(Fail),
        _ => None,
    }
}

/// A fault point. `vmm` is the machine's VMM pid where one exists.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str, vmm: Option<u32>) -> Result<(), RuntimeError> {
    let Some(action) = wanted(name) else {
        return Ok(());
    };
    tracing::warn!("fault injection: {} at {name}", action.as_str());
    // Tell the test the point was reached (before acting: `kill` ends us).
    if let Some(path) = std::env::var_os(mvm_core::env::MVM_FAULT_REACHED)
        && let Ok(mut f) = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        use std::io::Write;
        let _ = writeln!(f, "{name}");
        let _ = f.sync_all();
    }
    match action {
        Kill => {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            unreachable!("SIGKILL of ourselves returned");
        }
        KillVmm => {
            if let Some(pid) = vmm.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            Ok(())
        }
        Fail => Err(RuntimeError::Injected {
            point: name.to_owned(),
        }),
    }
}

/// A fault point (no-op: built without `fault-injection`).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str, _vmm: Option<u32>) -> Result<(), RuntimeError> {
    Ok(())
}
