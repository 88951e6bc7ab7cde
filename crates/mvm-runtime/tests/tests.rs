//! Integration tests of the runtime that need no guest.

mod concurrent_alloc;
mod host_tools;
