//! Integration tests of mvm-net (one binary). Tests that change network
//! state run inside a fresh network namespace owned by a dedicated thread
//! (see `util::in_netns`); they never touch the host's interfaces or
//! tables.

mod util;

mod alloc_concurrency;
mod egress;
mod forward;
#[cfg(feature = "guest")]
mod guest;
mod host;
