//! Images on first use: what `mvm run IMAGE`, `mvm exec --image IMAGE` and
//! `mvm shell --image IMAGE` do before booting, as `docker run` does
//! (`--pull never|missing|always`, default `missing`).
//!
//! A name that is a local tag (`mvm image build NAME`) is used as it is
//! and never pulled. Anything else is a reference, normalised as Docker
//! does (`alpine` → `docker.io/library/alpine:latest`), looked up in the
//! store and pulled according to the [`PullPolicy`].

use std::sync::Arc;

use mvm_core::MvmHome;
use mvm_image::{Image, ImageError};
use tokio_util::sync::CancellationToken;

use crate::progress::PullProgress;
use crate::reference::{ImageRef, ReferenceError};
use crate::registry::{PullError, PullOptions, PullReport, pull};

/// When to pull an image that a machine is about to boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Never: the image must be in the store.
    Never,
    /// When the store does not have it (the default).
    #[default]
    Missing,
    /// Always ask the registry; an unchanged image is not converted again.
    Always,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "never" => Ok(Self::Never),
            "missing" => Ok(Self::Missing),
            "always" => Ok(Self::Always),
            other => Err(format!(
                "invalid pull policy {other:?} (never, missing or always)"
            )),
        }
    }
}

/// The image to boot, and the pull that fetched it (if one ran).
#[derive(Debug)]
pub struct Ensured {
    /// The image, ready to boot; its `name` is the normalised reference
    /// (or the local tag).
    pub image: Image,
    /// What the pull did, when the policy made one.
    pub pulled: Option<PullReport>,
}

/// The image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    /// `--pull never` and the store does not have it.
    #[error(
        "no image {reference:?} in the store (`--pull never`); pull it with `mvm image pull {name}`"
    )]
    NotPresent {
        /// As given.
        name: String,
        /// Normalised.
        reference: String,
    },
    /// The name is neither a local image nor a valid reference.
    #[error("no local image named {name:?} (see `mvm image ls`), and it is not an image reference")]
    BadName {
        /// As given.
        name: String,
        /// Why it is not a reference.
        #[source]
        source: ReferenceError,
    },
    /// The pull failed.
    #[error(transparent)]
    Pull(Box<PullError>),
    /// The pull of a bare name (`mine`), which may have been meant as a
    /// local image, failed.
    #[error("no local image named {name:?} (see `mvm image ls`), and pulling {reference} failed")]
    PullBareName {
        /// As given.
        name: String,
        /// What was pulled.
        reference: String,
        /// Why.
        #[source]
        source: Box<PullError>,
    },
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// The image `name` names, pulled first when `policy` says so (see the
/// module docs). Progress goes to `progress`; `cancel` interrupts a pull
/// (nothing is added to the store then).
pub async fn ensure(
    home: &MvmHome,
    name: &str,
    policy: PullPolicy,
    opts: &PullOptions,
    progress: Arc<dyn PullProgress>,
    cancel: CancellationToken,
) -> Result<Ensured, EnsureError> {
    if crate::is_local_tag(home, name) {
        let image = mvm_image::get(home, name)?;
        return Ok(Ensured {
            image,
            pulled: None,
        });
    }
    let reference = ImageRef::parse(name)
        .map_err(|source| EnsureError::BadName {
            name: name.to_owned(),
            source,
        })?
        .canonical();
    if policy != PullPolicy::Always
        && let Some(image) = crate::find(home, &reference)?
    {
        return Ok(Ensured {
            image,
            pulled: None,
        });
    }
    if policy == PullPolicy::Never {
        return Err(EnsureError::NotPresent {
            name: name.to_owned(),
            reference,
        });
    }
    let report = pull(home, &reference, opts, progress, cancel)
        .await
        .map_err(|e| {
            if name.contains(['/', ':', '@']) {
                EnsureError::Pull(Box::new(e))
            } else {
                EnsureError::PullBareName {
                    name: name.to_owned(),
                    reference: reference.clone(),
                    source: Box::new(e),
                }
            }
        })?;
    Ok(Ensured {
        image: report.image.clone(),
        pulled: Some(report),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        assert_eq!("never".parse(), Ok(PullPolicy::Never));
        assert_eq!("missing".parse(), Ok(PullPolicy::Missing));
        assert_eq!("always".parse(), Ok(PullPolicy::Always));
        assert!("sometimes".parse::<PullPolicy>().is_err());
        assert_eq!(PullPolicy::default(), PullPolicy::Missing);
    }

    #[test]
    fn never_names_the_normalised_reference_and_a_bad_name_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let home = MvmHome::new(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let run = |name: &str| {
            rt.block_on(ensure(
                &home,
                name,
                PullPolicy::Never,
                &PullOptions::default(),
                Arc::new(crate::Quiet),
                CancellationToken::new(),
            ))
        };
        let e = run("alpine").unwrap_err();
        assert!(
            e.to_string().contains("docker.io/library/alpine:latest"),
            "{e}"
        );
        let e = run("Bad:Ref:x").unwrap_err();
        assert!(matches!(e, EnsureError::BadName { .. }), "{e}");
    }
}
