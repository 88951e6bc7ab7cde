//! End-to-end tests of the `mvm` binary. Those that boot guests use QEMU
//! (TCG here) with the real default image; they share one `MVM_HOME` under
//! the target directory so the image is built once per checkout.

mod cli_basics;
mod common;
mod completion;
mod e2e_data;
mod e2e_egress;
mod e2e_faults;
mod e2e_firecracker;
mod e2e_jail;
mod e2e_lifecycle;
mod e2e_machines;
mod e2e_net;
mod e2e_oci;
mod e2e_templates;
mod e2e_transient;
mod e2e_tty;
