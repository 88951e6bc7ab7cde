//! Integration tests of mvm-oci against real parts: a docker-registry
//! process per test, images built with umoci and pushed with skopeo, the
//! Debian kernel and mkfs.ext4 for the conversion.

mod common;
mod import;
mod pull;
