//! `mvm update NAME --egress ...`: change a machine's egress policy.
//!
//! The policy is recorded under the record lock. A machine that is not
//! running gets it at its next start. A running one has an owner (its
//! supervisor, or the process of a transient `mvm exec`) that holds the
//! DNS filter and the rules, so the owner applies it: this operation
//! signals it (SIGUSR1) and waits, with a deadline, for the owner's
//! acknowledgement, a state file (`<instance>/egress.json`) with a newer
//! generation that names this policy (applied, in one nftables
//! transaction) or says why it failed (the previous policy then stays
//! enforced, and is recorded again).

use std::time::{Duration, Instant};

use mvm_core::Status;
use mvm_core::egress::EgressPolicy;
use mvm_core::instance::{NetworkMode, OwnerRole};

use crate::resources::egress::{self, EgressState};
use crate::resources::network;
use crate::{Runtime, RuntimeError};

/// How long the owner may take to apply a change (resolution and rules).
pub const UPDATE_TIMEOUT: Duration =
    Duration::from_secs(egress::RESOLVE_TIMEOUT.as_secs() + egress::APPLY_TIMEOUT.as_secs());

/// What to change.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// The new egress policy.
    pub egress: EgressPolicy,
}

/// How a change took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Enforced now by the running machine's owner.
    Live {
        /// How long applying took in the owner, ms.
        apply_ms: u64,
    },
    /// Recorded; it takes effect when the machine starts.
    Recorded {
        /// Why it is not enforced now.
        reason: String,
    },
}

/// Change machine `name` as `opts` says (see the module docs).
pub async fn update(
    rt: &Runtime,
    name: &str,
    opts: &UpdateOptions,
) -> Result<Applied, RuntimeError> {
    let registry = rt.registry();
    let dir = rt.dir(name);
    let new = opts.egress.clone();
    let rec = registry.load(name)?;
    egress::check(rec.network, &new)?;
    let (rec, (previous, seen)) = registry.update(name, |r| {
        let previous = std::mem::replace(&mut r.egress, new.clone());
        Ok((
            previous,
            egress::read_state(&dir).map_or(0, |s| s.generation),
        ))
    })?;
    let owned = registry.owner_alive(name);
    let status = rec.observe(owned).status;
    let recorded = |reason: &str| {
        Ok(Applied::Recorded {
            reason: reason.to_owned(),
        })
    };
    if rec.network == NetworkMode::None {
        return recorded("the machine has no network");
    }
    if !matches!(status, Status::Starting | Status::Running | Status::Paused) {
        return recorded(&format!(
            "the machine is {status}; the policy applies when it starts"
        ));
    }
    if !network::use_tap() {
        return recorded(
            "user-mode networking is set when the VMM starts: the policy applies at the next start",
        );
    }
    let owner = match (rec.owner, rec.owner_role) {
        (Some(o), OwnerRole::Supervisor) => o,
        _ => return recorded("the machine is being created; the policy applies when it starts"),
    };
    // SIGUSR1 kills a process that neither handles nor blocks it: an owner
    // started by an mvm from before live changes.
    if !takes_usr1(owner.pid) {
        return recorded(
            "its owner cannot take live changes (started by an older mvm): the policy applies at the next start",
        );
    }
    if !owner.signal(rustix::process::Signal::USR1)? {
        return recorded("its owner has exited; the policy applies at the next start");
    }

    // Wait for the owner's acknowledgement.
    let deadline = Instant::now() + UPDATE_TIMEOUT;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(st) = egress::read_state(&dir).filter(|s| s.generation > seen) {
            match outcome(&st, &new) {
                Some(Ok(apply_ms)) => return Ok(Applied::Live { apply_ms }),
                Some(Err(message)) => {
                    // Record what is enforced: the previous policy.
                    let _ = registry.update(name, |r| {
                        if r.egress == new {
                            r.egress = previous.clone();
                        }
                        Ok(())
                    });
                    return Err(RuntimeError::Invalid(format!(
                        "machine {name:?} refused egress policy `{new}` (it keeps `{previous}`): {message}"
                    )));
                }
                None => {
                    // An older change, or another one came after ours.
                    let now = registry.load(name)?.egress;
                    if now != new {
                        return Err(RuntimeError::Invalid(format!(
                            "another update changed the egress policy of machine {name:?} to `{now}` meanwhile"
                        )));
                    }
                }
            }
        }
        if !registry.owner_alive(name) {
            return recorded("the machine stopped; the policy applies at its next start");
        }
        if Instant::now() >= deadline {
            return Err(RuntimeError::Timeout {
                what: format!(
                    "applying egress policy `{new}` to machine {name:?} (its supervisor did not acknowledge; the policy is recorded)"
                ),
                after: UPDATE_TIMEOUT,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Whether process `pid` handles SIGUSR1 or has it blocked (a new
/// supervisor blocks it from its first instruction until its handler is
/// installed), per `/proc/PID/status`.
fn takes_usr1(pid: u32) -> bool {
    let Ok(status) = fs_err::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    sig_mask_has_usr1(&status)
}

fn sig_mask_has_usr1(status: &str) -> bool {
    const USR1: u64 = 1 << (10 - 1);
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigCgt:")
                .or_else(|| l.strip_prefix("SigBlk:"))
        })
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .any(|m| m & USR1 != 0)
}

/// What state `st` (newer than the change) says about policy `new`:
/// applied (with its cost), failed (why), or nothing yet.
fn outcome(st: &EgressState, new: &EgressPolicy) -> Option<Result<u64, String>> {
    if st.failed_policy.as_ref() == Some(new) {
        return Some(Err(st.error.clone().unwrap_or_default()));
    }
    (st.policy == *new && st.error.is_none()).then_some(Ok(st.apply_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usr1_is_found_in_the_caught_or_blocked_masks() {
        assert!(sig_mask_has_usr1(
            "SigBlk:\t0000000000000200\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\n"
        ));
        assert!(sig_mask_has_usr1(
            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000180004203\n"
        ));
        assert!(!sig_mask_has_usr1(
            "SigBlk:\t0000000000004000\nSigIgn:\t0000000000000200\nSigCgt:\t0000000180004003\n"
        ));
        // A process with the default disposition would be killed.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(!takes_usr1(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn outcome_reads_the_acknowledgement() {
        let new: EgressPolicy = "deny-all".parse().unwrap();
        let mut st = EgressState {
            generation: 2,
            policy: EgressPolicy::allow_all(),
            apply_ms: 7,
            ..Default::default()
        };
        assert_eq!(outcome(&st, &new), None);
        st.policy = new.clone();
        assert_eq!(outcome(&st, &new), Some(Ok(7)));
        st.policy = EgressPolicy::allow_all();
        st.failed_policy = Some(new.clone());
        st.error = Some("nft failed".into());
        assert_eq!(outcome(&st, &new), Some(Err("nft failed".into())));
    }
}
