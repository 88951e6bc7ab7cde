//! The machine's own writable root disk (`disk.ext4`, sparse), made from the
//! image's tree when the machine is created. A transient machine of the
//! default image runs from its initramfs and has no disk.

use mvm_core::InstanceDir;
use mvm_core::instance::{DriveRecord, DriveRole};

use crate::RuntimeError;

/// Size of a machine's own disk, MiB (sparse: costs only what is written).
pub const DEFAULT_DISK_MIB: u64 = 1024;

/// Whether a machine of `image` needs a disk of its own.
pub fn needed(image: &mvm_image::Image, transient: bool) -> bool {
    !(transient && image.kind == mvm_image::ImageKind::Default)
}

/// Build the root disk of a new machine in `dir`; the drive to record.
pub fn create(image: &mvm_image::Image, dir: &InstanceDir) -> Result<DriveRecord, RuntimeError> {
    let path = dir.disk();
    crate::fault::point("create.disk", None)?;
    mvm_image::create_machine_disk(image, &path, DEFAULT_DISK_MIB)?;
    Ok(DriveRecord {
        id: "root".into(),
        path,
        read_only: false,
        role: DriveRole::Root,
    })
}
