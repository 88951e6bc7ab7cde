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
//! - [`ensure`]: images on first use (`mvm run REF`, `--pull`).
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
pub mod ensure;
pub mod model;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod unpack;

use mvm_core::MvmHome;
use mvm_image::{Image, ImageError};

pub use archive::{ImportError, ImportReport, import};
pub use auth::Credentials;
pub use blobs::{BlobLeftover, BlobStore, GcReport};
pub use ensure::{EnsureError, Ensured, PullPolicy, ensure};
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

pub(crate) fn is_local_tag(home: &MvmHome, name: &str) -> bool {
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

/// Remove every blob no image in the store was made from, downloads
/// nobody resumes, and the temporary directories of image builds that died
/// (`images/.tmp-*`, older than [`mvm_image::STALE_BUILD_AGE`]).
pub fn gc(home: &MvmHome) -> Result<Option<GcReport>, RemoveError> {
    let keep = mvm_image::referenced_blobs(home)?;
    let report = BlobStore::new(home).gc(&keep)?;
    let builds = mvm_image::remove_stale_temps(home) as u64;
    Ok(report.map(|r| GcReport { builds, ..r }))
}

/// Something a pull, an import or an image build left in the image store
/// that no image needs: what [`gc`] removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// A blob, partial download or import file (see [`BlobLeftover`]).
    Blob(BlobLeftover),
    /// The temporary directory of an image build (or removal) that died.
    Build(std::path::PathBuf),
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: &u64| format!("{:.1} MB", *b as f64 / 1e6);
        match self {
            Leftover::Blob(BlobLeftover::Unused { digest, bytes }) => {
                write!(f, "unused image blob {digest} ({})", mb(bytes))
            }
            Leftover::Blob(BlobLeftover::Partial { digest, bytes }) => write!(
                f,
                "interrupted download of blob {digest} ({} so far)",
                mb(bytes)
            ),
            Leftover::Blob(BlobLeftover::Incoming { path, bytes }) => {
                write!(f, "import file {} ({})", path.display(), mb(bytes))
            }
            Leftover::Build(p) => write!(f, "unfinished image build {}", p.display()),
        }
    }
}

/// Everything [`gc`] would remove, without removing anything.
pub fn leftovers(home: &MvmHome) -> Result<Vec<Leftover>, RemoveError> {
    let keep = mvm_image::referenced_blobs(home)?;
    let mut out: Vec<Leftover> = BlobStore::new(home)
        .leftovers(&keep)?
        .into_iter()
        .map(Leftover::Blob)
        .collect();
    out.extend(
        mvm_image::stale_temps(home)
            .into_iter()
            .map(Leftover::Build),
    );
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob nobody needs, an abandoned download, an import's temporary
    /// file and a build directory older than an hour: listed, then
    /// collected, then gone; a fresh build directory is never touched.
    #[test]
    fn leftovers_are_listed_then_collected() {
        let dir = tempfile::tempdir().unwrap();
        let home = MvmHome::new(dir.path());
        let blobs = home.blobs_dir();
        for d in ["sha256", "partial", "incoming"] {
            fs_err::create_dir_all(blobs.join(d)).unwrap();
        }
        let hex = "ab".repeat(32);
        fs_err::write(blobs.join("sha256").join(&hex), b"unused").unwrap();
        fs_err::write(blobs.join("partial").join("cd".repeat(32)), b"half").unwrap();
        fs_err::write(blobs.join("incoming/tmp1"), b"x").unwrap();
        let old = home.images_dir().join(".tmp-dead");
        let fresh = home.images_dir().join(".tmp-live");
        fs_err::create_dir_all(&old).unwrap();
        fs_err::create_dir_all(&fresh).unwrap();
        let two_hours_ago = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    - 7200) as i64,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &old,
            &two_hours_ago,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();

        let l = leftovers(&home).unwrap();
        let text: Vec<String> = l.iter().map(ToString::to_string).collect();
        assert_eq!(l.len(), 4, "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.contains(&format!("unused image blob sha256:{hex}")))
        );
        assert!(text.iter().any(|t| t.starts_with("interrupted download")));
        assert!(text.iter().any(|t| t.starts_with("import file")));
        assert!(text.iter().any(|t| t.contains(".tmp-dead")));

        let g = gc(&home).unwrap().expect("no pull runs");
        assert_eq!((g.blobs, g.partials, g.builds), (1, 1, 1));
        assert!(leftovers(&home).unwrap().is_empty());
        assert!(fresh.exists(), "a live build is never collected");
        // Twice in a row: nothing left to do.
        let g = gc(&home).unwrap().unwrap();
        assert_eq!((g.blobs, g.partials, g.builds), (0, 0, 0));
    }

    #[test]
    fn a_running_pull_hides_and_keeps_its_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let home = MvmHome::new(dir.path());
        let store = BlobStore::new(&home);
        let _pull = store.lock_shared().unwrap();
        fs_err::write(home.blobs_dir().join("incoming/tmp1"), b"x").unwrap();
        assert!(leftovers(&home).unwrap().is_empty());
        assert!(gc(&home).unwrap().is_none());
        assert!(home.blobs_dir().join("incoming/tmp1").exists());
    }
}
