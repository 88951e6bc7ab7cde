//! Integration tests of mvm-data against the real e2fsprogs tools (one test
//! binary; modules per area).

mod drives;
mod helpers;
mod sync;
mod volumes;
