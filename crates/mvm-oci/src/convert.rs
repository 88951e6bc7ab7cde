//! An OCI image as a [`mvm_image::TreeSource`]: its layers, from the blob
//! cache, applied in order ([`crate::unpack`]) into the image's tree; then
//! mvm-image makes the ext4 (`mkfs.ext4 -d`) and keeps the config.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use mvm_core::MvmHome;
use mvm_image::{Image, ImageConfig, ImageError, KernelSource, LayerInfo, OciInfo, Progress};

use crate::blobs::{BlobStore, Digest};
use crate::unpack::{self, Layer, UnpackStats};

/// Bump when the unpacker's output for the same layers changes: images
/// are then converted again.
pub const UNPACK_VERSION: u32 = 1;

/// An image's layers, ready to be unpacked.
pub struct OciTree {
    /// The reference or file, for messages.
    pub describe: String,
    /// Where the blobs are.
    pub store: BlobStore,
    /// Manifest digest.
    pub manifest_digest: String,
    /// Config digest.
    pub config_digest: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Runtime configuration.
    pub config: ImageConfig,
    /// Set to stop the unpacking.
    pub cancel: Arc<AtomicBool>,
    /// Filled in by the unpacking (`None` when the image was cached).
    pub stats: Mutex<Option<UnpackStats>>,
}

impl mvm_image::TreeSource for OciTree {
    fn key(&self) -> String {
        // The config covers the uncompressed layers (diff_ids), so the
        // same image with other compression converts once.
        format!("oci-config {} unpack {UNPACK_VERSION}", self.config_digest)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn fill(
        &self,
        tree: &std::path::Path,
        progress: &dyn Progress,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let layers: Vec<Layer> = self
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    blob: self.store.path(&Digest::parse(&l.digest)?),
                    digest: l.digest.clone(),
                    diff_id: Some(l.diff_id.clone()),
                })
            })
            .collect::<Result<_, crate::blobs::DigestError>>()?;
        let n = layers.len();
        let stats = unpack::apply_layers(
            tree,
            &layers,
            &|i, d| {
                progress.step(&format!(
                    "applying layer {}/{n} ({})",
                    i + 1,
                    d.trim_start_matches("sha256:").get(..12).unwrap_or(d)
                ))
            },
            &self.cancel,
        )?;
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
        Ok(())
    }

    fn oci_info(&self, unpacked_bytes: u64, unpacked_entries: u64) -> Option<OciInfo> {
        Some(OciInfo {
            manifest_digest: self.manifest_digest.clone(),
            config_digest: self.config_digest.clone(),
            layers: self.layers.clone(),
            config: self.config.clone(),
            unpacked_bytes,
            unpacked_entries,
        })
    }
}

/// Convert layers that are in the cache into an image (or find it
/// converted already): blocking work. Returns the unpacking's counts, or
/// `None` on a conversion cache hit.
#[allow(clippy::too_many_arguments)]
pub fn build(
    home: &MvmHome,
    describe: &str,
    store: &BlobStore,
    manifest_digest: &str,
    config_digest: &str,
    layers: Vec<LayerInfo>,
    config: ImageConfig,
    kernel: &KernelSource,
    progress: &dyn Progress,
    cancel: Arc<AtomicBool>,
) -> Result<(Image, Option<UnpackStats>), ImageError> {
    let tree = OciTree {
        describe: describe.to_owned(),
        store: store.clone(),
        manifest_digest: manifest_digest.to_owned(),
        config_digest: config_digest.to_owned(),
        layers,
        config,
        cancel,
        stats: Mutex::default(),
    };
    let image = mvm_image::build_tree_image(home, &tree, kernel, progress)?;
    let stats = tree.stats.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok((image, stats))
}
