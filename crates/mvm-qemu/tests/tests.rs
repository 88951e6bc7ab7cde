//! Integration tests of the QEMU backend against a real `qemu-system-x86_64`.
//! Tests that need something absent print `SKIPPED: <reason>` and return.

mod boot;
mod isolated;
mod launch;
mod qmp;
mod snapshot;
mod util;
