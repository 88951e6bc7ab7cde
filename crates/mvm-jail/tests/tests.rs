//! Integration tests of mvm-jail against the host's real cgroups and
//! mounts (root only; SKIPPED otherwise).

mod real;
