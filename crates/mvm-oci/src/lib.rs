//! OCI container images as mvm images.
//!
//! ```text
//! mvm image pull REF ──▶ registry ──▶ blob cache ──▶ unpack ──▶ mkfs.ext4 -d ──▶ image store
//! mvm image import F ──▶ archive  ──┘   (images/blobs)  (tree)   (mvm-image)      (+ config, ref)
//! ```
//!
//! - [`reference`]: Docker's reference normalisation.
//! - [`registry`]: pulls over the OCI distribution API (oci-client), with
//!   credentials from [`auth`], manifests and configs read by [`model`].
//! - [`archive`]: imports of `docker save` archives and OCI layouts.
//! - [`blobs`]: the content-addressed blob cache shared by all images.
//! - [`unpack`]: layers applied to a directory (whiteouts, hard links,
//!   owners, xattrs) without mounting; [`convert`] hands the result to
//!   mvm-image, which makes the ext4 and stores the image config.
//!
//! Nothing is added to the image store unless the whole pull or import
//! succeeded: the image directory is built in a temporary directory and
//! renamed into place, and the reference is written last. A failed or
//! interrupted pull leaves only verified blobs (and resumable partial
//! downloads) in the cache.
#![warn(missing_docs)]

pub mod archive;
pub mod auth;
pub mod blobs;
pub mod convert;
pub mod model;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod unpack;

use mvm_core::MvmHome;
use mvm_image::{Image, ImageError};

pub use archive::{ImportError, ImportReport, import};
pub use auth::Credentials;
pub use blobs::{BlobStore, GcReport};
pub use progress::{LayerEvent, PullProgress, Quiet};
pub use reference::{ImageRef, ReferenceError};
pub use registry::{PullError, PullOptions, PullReport, pull};
pub use tokio_util::sync::CancellationToken;

/// The name under which `name` is stored: a tag of `mvm image build`
/// (`default`, `mine`) as given, else the normalised reference
/// (`python:3.12` -> `docker.io/library/python:3.12`).
pub fn store_name(home: &MvmHome, name: &str) -> Result<String, ReferenceError> {
    if is_local_tag(home, name) {
        return Ok(name.to_owned());
    }
    Ok(ImageRef::parse(name)?.canonical())
}

fn is_local_tag(home: &MvmHome, name: &str) -> bool {
    !name.contains(['/', ':', '@']) && home.images_dir().join("tags").join(name).is_file()
}

/// The image `name` names, if it is in the store: a local tag, or a
/// reference (normalised first).
pub fn find(home: &MvmHome, name: &str) -> Result<Option<Image>, ImageError> {
    let stored = match store_name(home, name) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    match mvm_image::get(home, &stored) {
        Ok(i) => Ok(Some(i)),
        Err(ImageError::NotFound { .. } | ImageError::BadName { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What [`remove`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// The image's files went too (nothing else named them).
    pub image_removed: bool,
    /// Blobs collected; `None` when a pull or import was running (the
    /// blobs are collected by a later `rm`).
    pub gc: Option<GcReport>,
}

/// Remove the tag or reference `name` (normalised like [`find`]), the
/// image files nothing else names, and the blobs no image needs.
pub fn remove(home: &MvmHome, name: &str) -> Result<RemoveReport, RemoveError> {
    let stored = store_name(home, name).map_err(|_| ImageError::NotFound {
        name: name.to_owned(),
    })?;
    let image_removed = mvm_image::remove(home, &stored)?;
    let gc = gc(home)?;
    Ok(RemoveReport { image_removed, gc })
}

/// Remove every blob no image in the store was made from.
pub fn gc(home: &MvmHome) -> Result<Option<GcReport>, RemoveError> {
    let keep = mvm_image::referenced_blobs(home)?;
    Ok(BlobStore::new(home).gc(&keep)?)
}

/// Removing an image failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// The image store failed (or has no such image).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Collecting blobs failed.
    #[error("collecting unused blobs")]
    Blobs(#[from] blobs::BlobError),
}
