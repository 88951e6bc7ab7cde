//! mvm's machine life cycle, in layers:
//!
//! ```text
//!  ops/          create, start, stop, rm, exec, cp, pause, list, gc, recover,
//!                update
//!    │             (one file per operation; the CLI calls exactly one)
//!    ▼
//!  supervisor/   the one owner of a running machine and its one teardown
//!    │
//!    ▼
//!  resources/    root disk, drives, network, backend — each takes only what
//!    │             it needs (paths, settings), never the whole runtime
//!    ▼
//!  mvm-core      store: records with private status + checked transitions,
//!                owner locks, the registry
//! ```
//!
//! # One owner per machine
//!
//! Every machine has exactly one owner process at a time, the holder of its
//! owner lock (`<instance>/owner.lock`, see `mvm_core::registry::OwnerLock`):
//!
//! - `mvm run` / `mvm exec` create the machine and own it while its drives
//!   are built (role *creator*);
//! - `mvm start` (and `run`) hands the lock to `mvm __supervise NAME`, which
//!   inherits the very same lock and holds it until the machine has stopped
//!   and everything it held on the host is released (role *supervisor*); a
//!   transient `mvm exec` runs the supervisor in-process;
//! - the supervisor spawns the VMM as its child with a death signal, owns the
//!   guest agent stream, the TAP and port forwarders, and is the only process
//!   that tears the machine down, through [`supervisor::teardown::release`];
//! - `mvm stop` records a stop request and asks the owner (SIGTERM), then
//!   waits on the owner's pidfd. Killing a VMM directly is the forcible path,
//!   used only when the owner is dead or does not answer in time;
//! - when an owner dies without cleaning up (SIGKILL, crash), the kernel
//!   releases its lock; the next mvm command that reads the registry takes
//!   the free lock and runs the same release ([`ops::recover`]).
//!
//! The supervisor reports its progress to the process that spawned it as
//! JSON lines on its stdout ([`supervisor::Event`]).
#![warn(missing_docs)]

pub mod error;
pub mod fault;
pub mod host;
pub mod ops;
pub mod resources;
pub mod supervisor;

mod context;

pub use context::Runtime;
pub use error::RuntimeError;

/// An error and all its causes, one per line segment (`a: b: c`). Log
/// tails that an error carries (`\n--- last lines of ...`) go after the
/// whole chain, so the causes stay on the first line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    const TAILS: &str = "\n--- last lines of ";
    let split = |t: String| match t.find(TAILS) {
        Some(i) => (t[..i].to_owned(), t[i..].to_owned()),
        None => (t, String::new()),
    };
    let (mut s, mut tails) = split(e.to_string());
    let mut cur = e.source();
    while let Some(c) = cur {
        let (cs, ct) = split(c.to_string());
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        if !tails.contains(&ct) {
            tails.push_str(&ct);
        }
        cur = c.source();
    }
    s.push_str(&tails);
    s
}

#[cfg(test)]
mod tests {
    use mvm_core::backend::{BackendError, BackendKind};

    #[test]
    fn error_chain_puts_causes_before_log_tails() {
        let mut e = BackendError::new(BackendKind::Firecracker, "cannot reach the guest agent")
            .with_source(std::io::Error::other("no answer within 4s"));
        e.vmm_log_tail = Some("vmm line".into());
        e.console_tail = Some("console line".into());
        let s = super::error_chain(&e);
        assert_eq!(
            s,
            "firecracker: cannot reach the guest agent: no answer within 4s\n\
             --- last lines of the VMM log ---\nvmm line\n\
             --- last lines of the guest console ---\nconsole line"
        );
    }
}
