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
pub mod error;
pub mod exec;
pub mod host;
pub mod machine;
pub mod supervisor;

pub use error::RuntimeError;
pub use machine::Runtime;

/// An error and all its causes, one per line segment (`a: b: c`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}
