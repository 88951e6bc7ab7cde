//! mvm's machine life cycle, shared by the CLI and the supervisor.
//!
//! # Processes
//!
//! ```text
//!  mvm run a ──spawns──▶ mvm __supervise a  (own session, outlives the CLI)
//!                          ├─ child: the VMM (qemu-system-x86_64 / firecracker)
//!                          ├─ owns the one guest agent stream (virtio-serial / vsock)
//!                          ├─ serves <instance>/agent.sock, multiplexing every
//!                          │  `mvm exec` client onto that stream
//!                          └─ waits for the VMM and records how it ended
//!  mvm exec a ──connects──▶ <instance>/agent.sock
//! ```
//!
//! The supervisor reports its progress to the process that spawned it as
//! JSON lines on its stdout ([`supervisor::Event`]): `started` once the VMM
//! accepted the configuration, `ready` once the guest agent answered, or
//! `failed` with the reason. A transient `mvm exec -- CMD` runs the same
//! supervisor code inside the CLI process, so the VMM is the CLI's child and
//! dies with it.
#![warn(missing_docs)]

pub mod backends;
pub mod data;
pub mod error;
pub mod exec;
pub mod host;
pub mod machine;
pub mod net;
pub mod supervisor;

pub use error::RuntimeError;
pub use machine::Runtime;

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
