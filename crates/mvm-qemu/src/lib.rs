//! The QEMU `microvm` backend of mvm.
//!
//! - [`argv`]: the typed QEMU command line (never a shell).
//! - [`isolate`]: launching QEMU as the machine's uid, with inherited
//!   descriptors, in its cgroup, under `-sandbox`.
//! - [`qmp`]: a small typed async client for the QEMU Machine Protocol.
//! - [`snapshot`]: snapshot/restore through QEMU's migration (file-backed
//!   guest RAM mapped privately by clones).
//! - [`version`]: the QEMU version, cached per binary.
//! - [`backend`]: [`QemuBackend`], discovery of the binary, choice of
//!   accelerator (KVM when usable, TCG otherwise) and the
//!   [`mvm_core::VmBackend`] implementation.
//!
//! The guest agent channel is a virtio-serial port
//! ([`argv::AGENT_PORT_NAME`]) on a Unix-socket chardev at
//! `InstanceDir::guest_socket()`. QEMU holds the guest until that socket has
//! a client; [`QemuBackend`]'s launch connects it and hands the stream to
//! the caller in `RunningVmm::guest`. The chardev serves one client, so
//! `connect_guest` always fails with an explanation.
#![warn(missing_docs)]

pub mod argv;
pub mod backend;
pub mod isolate;
pub mod qmp;
pub mod snapshot;
pub mod version;

pub use argv::{Accel, FwdProto, HostForward, MemoryFileArgs, NetArgs, QemuArgs};
pub use backend::{Discovery, DoctorReport, QemuBackend};
pub use qmp::{Qmp, QmpError, RunState, StatusInfo};
