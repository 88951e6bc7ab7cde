//! Integration tests of mvm-template (one test binary): the store on real
//! filesystems, and real guests under QEMU/TCG restored from templates.
//! Tests whose prerequisites are missing print `SKIPPED: ...`.

mod bench;
mod guest;
mod store;
mod util;
