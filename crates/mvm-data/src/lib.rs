//! Host-side building blocks for moving data into and out of microVMs.
//!
//! - [`spec`]: parsers for `-e KEY=VAL`, `--add-dir HOST:GUEST[:ro|rw]`,
//!   `-v SRC:GUEST[:ro|rw]`, `--secret KEY=FILE`, and the [`spec::GuestMount`]
//!   kernel-argument encoding the guest agent reads.
//! - [`plan`]: `launch.json` launch plans resolved to argv, working directory
//!   and environment.
//! - [`drive`]: ext4 images built from a directory with `mkfs.ext4 -d`
//!   (never mounting anything): the config drive and the secrets drive.
//! - [`volume`]: the named-volume store under `$MVM_HOME/volumes`.
//! - [`sync`]: writing the contents of a guest-written ext4 image back to a
//!   host directory after the VM is gone (`e2fsck` + `debugfs rdump` + a
//!   symlink-safe mirror).
//!
//! Nothing in this crate mounts a filesystem on the host.
#![warn(missing_docs)]

pub mod drive;
pub mod plan;
pub mod spec;
pub mod sync;
pub mod volume;

pub mod tool;
