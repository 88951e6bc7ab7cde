//! The machine's own writable root disk (`disk.ext4`, sparse): a copy of
//! its image's template disk ([`mvm_image::machine_disk`]: a reflink where
//! the filesystem offers one, else a copy of the template's data extents;
//! the template is built from the image's tree once, by the first machine).
//! The copy is the machine's own full ext4, kept across stop/start and
//! deleted with the machine. A transient machine of the default image runs
//! from its initramfs and has no disk.

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
    let how = mvm_image::machine_disk(image, &path, DEFAULT_DISK_MIB)?;
    tracing::debug!(?how, "root disk of {}", dir.name());
    Ok(DriveRecord {
        id: "root".into(),
        path,
        read_only: false,
        role: DriveRole::Root,
    })
}

/// Make the spare disk the next machine of `rec`'s image will take
/// ([`mvm_image::disk::refill_spare`]), on a thread of its own, when
/// `rec`'s own root disk came from that image's template. The supervisor
/// calls this once the VMM runs (off the start's critical path) and joins
/// the thread before it exits.
pub fn refill_spare(
    home: &mvm_core::MvmHome,
    rec: &mvm_core::instance::InstanceRecord,
) -> Option<std::thread::JoinHandle<()>> {
    if rec.template.is_some() || !rec.drives.iter().any(|d| d.role == DriveRole::Root) {
        return None;
    }
    let (home, image, digest) = (home.clone(), rec.image.clone(), rec.image_digest.clone());
    let work = move || {
        let image = match mvm_image::get(&home, &image) {
            Ok(i) if i.digest == digest => i,
            _ => return, // the image changed or went: its spare is of no use
        };
        match mvm_image::disk::refill_spare(&image, DEFAULT_DISK_MIB) {
            Ok(made) => tracing::debug!(made, "spare disk of image {:?}", image.name),
            Err(e) => tracing::warn!("cannot make a spare disk of image {:?}: {e}", image.name),
        }
    };
    std::thread::Builder::new()
        .name("spare-disk".into())
        .spawn(work)
        .ok()
}
