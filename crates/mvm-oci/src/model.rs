//! The OCI documents mvm reads (image spec v1.1 and their Docker
//! equivalents), and what an image is made of once they are resolved.
//!
//! | document | media types |
//! |---|---|
//! | image manifest | `application/vnd.oci.image.manifest.v1+json`, `application/vnd.docker.distribution.manifest.v2+json` (Docker v2 schema 2) |
//! | image index | `application/vnd.oci.image.index.v1+json`, `application/vnd.docker.distribution.manifest.list.v2+json` |
//! | image config | `application/vnd.oci.image.config.v1+json`, `application/vnd.docker.container.image.v1+json` |
//! | layers | `...layer.v1.tar[+gzip\|+zstd]`, `...rootfs.diff.tar[.gzip]`, and their non-distributable variants |
//!
//! Manifests and indexes are parsed with oci-client's serde types; the
//! config with a small tolerant struct of the fields mvm uses (Docker
//! writes `null` where OCI omits). Docker v2 schema 1 manifests are refused
//! with a clear error. An index is resolved to its `linux/amd64` entry;
//! without one the error lists the platforms it offers.

use std::collections::BTreeMap;

use mvm_image::{ImageConfig, LayerInfo};
use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciImageManifest};
use oci_spec::image::{Arch, Os};
use serde::Deserialize;

/// Manifest media types mvm asks registries for.
pub const ACCEPTED_MANIFESTS: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A document that is not what mvm can use.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Not valid JSON of the expected shape.
    #[error("cannot parse the {what}")]
    Parse {
        /// Which document.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest of a kind mvm does not read.
    #[error("unsupported manifest type {0:?} (mvm reads OCI and Docker v2 schema 2 images)")]
    MediaType(String),
    /// An index without a linux/amd64 image.
    #[error("no linux/amd64 image in the index; it offers: {0}")]
    NoPlatform(String),
    /// A single-platform image for another platform.
    #[error("the image is {0}; mvm runs linux/amd64 images")]
    WrongPlatform(String),
    /// The config's layer list does not match the manifest's.
    #[error("the manifest has {layers} layers but the config lists {diff_ids} diff_ids")]
    LayerCount {
        /// Layers in the manifest.
        layers: usize,
        /// `rootfs.diff_ids` in the config.
        diff_ids: usize,
    },
    /// A layer of a type mvm cannot unpack (encrypted, artifact, ...).
    #[error("layer {digest} has media type {media_type:?}, which is not a filesystem layer")]
    LayerType {
        /// The layer.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// A digest mvm cannot use.
    #[error(transparent)]
    Digest(#[from] crate::blobs::DigestError),
}

/// What a manifest document turned out to be.
#[derive(Debug)]
pub enum Document {
    /// An image manifest.
    Manifest(Box<OciImageManifest>),
    /// An index (manifest list).
    Index(OciImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Versioned {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// Parse a manifest or index, by its `mediaType` (or shape, for OCI
/// documents that omit it).
pub fn parse_document(bytes: &[u8]) -> Result<Document, ModelError> {
    let v: Versioned = serde_json::from_slice(bytes).map_err(|source| ModelError::Parse {
        what: "manifest",
        source,
    })?;
    if v.schema_version == Some(1) {
        return Err(ModelError::MediaType(
            "application/vnd.docker.distribution.manifest.v1+json (schema 1)".into(),
        ));
    }
    let index = match v.media_type.as_deref() {
        Some(ACCEPTED_INDEX_OCI | ACCEPTED_INDEX_DOCKER) => true,
        Some(ACCEPTED_MANIFEST_OCI | ACCEPTED_MANIFEST_DOCKER) => false,
        None => v.manifests.is_some(),
        Some(other) => return Err(ModelError::MediaType(other.to_owned())),
    };
    if index {
        serde_json::from_slice(bytes)
            .map(Document::Index)
            .map_err(|source| ModelError::Parse {
                what: "image index",
                source,
            })
    } else {
        serde_json::from_slice(bytes)
            .map(|m| Document::Manifest(Box::new(m)))
            .map_err(|source| ModelError::Parse {
                what: "image manifest",
                source,
            })
    }
}

const ACCEPTED_MANIFEST_OCI: &str = ACCEPTED_MANIFESTS[0];
const ACCEPTED_MANIFEST_DOCKER: &str = ACCEPTED_MANIFESTS[1];
const ACCEPTED_INDEX_OCI: &str = ACCEPTED_MANIFESTS[2];
const ACCEPTED_INDEX_DOCKER: &str = ACCEPTED_MANIFESTS[3];

fn platform_name(e: &ImageIndexEntry) -> String {
    match &e.platform {
        Some(p) => match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        },
        None => "unknown".to_owned(),
    }
}

/// The `linux/amd64` entry of an index (attestation manifests, which
/// carry platform `unknown/unknown`, are never chosen).
pub fn select_platform(index: &OciImageIndex) -> Result<&ImageIndexEntry, ModelError> {
    index
        .manifests
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == Os::Linux && p.architecture == Arch::Amd64)
        })
        .ok_or_else(|| {
            let mut names: Vec<String> = index
                .manifests
                .iter()
                .filter(|e| {
                    e.annotations
                        .as_ref()
                        .is_none_or(|a| !a.contains_key("vnd.docker.reference.type"))
                })
                .map(platform_name)
                .collect();
            names.dedup();
            ModelError::NoPlatform(if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            })
        })
}

/// The fields of an image configuration mvm uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigFile {
    /// `architecture`.
    #[serde(default)]
    pub architecture: String,
    /// `os`.
    #[serde(default)]
    pub os: String,
    /// `config` (absent or `null` in minimal images).
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// `rootfs`.
    pub rootfs: RootFs,
}

/// `config` of an image configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

/// `rootfs` of an image configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    /// The uncompressed digests of the layers, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    /// Parse an image configuration blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, ModelError> {
        serde_json::from_slice(bytes).map_err(|source| ModelError::Parse {
            what: "image config",
            source,
        })
    }

    /// Refuse anything but linux/amd64.
    pub fn check_platform(&self) -> Result<(), ModelError> {
        if self.os == "linux" && self.architecture == "amd64" {
            Ok(())
        } else {
            Err(ModelError::WrongPlatform(format!(
                "{}/{}",
                self.os, self.architecture
            )))
        }
    }

    /// mvm's view of the runtime configuration.
    pub fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageConfig {
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: c.labels.unwrap_or_default(),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
            os: self.os.clone(),
            architecture: self.architecture.clone(),
        }
    }
}

/// Whether a layer media type is a filesystem changeset mvm can apply
/// (compression is recognised from the bytes themselves).
pub fn is_layer_type(media_type: &str) -> bool {
    media_type.is_empty()
        || media_type.starts_with("application/vnd.oci.image.layer.")
            && !media_type.contains("encrypted")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

/// The layers of `manifest` with their diff_ids from `config`.
pub fn layers(
    manifest: &OciImageManifest,
    config: &ConfigFile,
) -> Result<Vec<LayerInfo>, ModelError> {
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return Err(ModelError::LayerCount {
            layers: manifest.layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }
    manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(l, diff_id)| {
            crate::blobs::Digest::parse(&l.digest)?;
            if !is_layer_type(&l.media_type) {
                return Err(ModelError::LayerType {
                    digest: l.digest.clone(),
                    media_type: l.media_type.clone(),
                });
            }
            Ok(LayerInfo {
                digest: l.digest.clone(),
                size: u64::try_from(l.size).unwrap_or(0),
                media_type: l.media_type.clone(),
                diff_id: diff_id.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> serde_json::Value {
        let mut p = serde_json::json!({"os": os, "architecture": arch});
        if let Some(v) = variant {
            p["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": ACCEPTED_MANIFEST_OCI,
            "digest": format!("sha256:{}", "1".repeat(64)),
            "size": 10,
            "platform": p,
        })
    }

    #[test]
    fn index_selects_linux_amd64_or_lists_platforms() {
        let idx = |entries: Vec<serde_json::Value>| {
            let doc = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": ACCEPTED_INDEX_DOCKER,
                "manifests": entries,
            });
            match parse_document(doc.to_string().as_bytes()).unwrap() {
                Document::Index(i) => i,
                Document::Manifest(_) => panic!("not an index"),
            }
        };
        let i = idx(vec![
            entry("linux", "arm64", Some("v8")),
            entry("linux", "amd64", None),
        ]);
        assert_eq!(
            select_platform(&i)
                .unwrap()
                .platform
                .as_ref()
                .unwrap()
                .architecture,
            Arch::Amd64
        );
        let i = idx(vec![
            entry("linux", "arm64", Some("v8")),
            entry("linux", "arm", Some("v7")),
            entry("windows", "amd64", None),
        ]);
        let e = select_platform(&i).unwrap_err().to_string();
        assert!(
            e.contains("linux/arm64/v8, linux/arm/v7, windows/amd64"),
            "{e}"
        );
    }

    #[test]
    fn schema1_and_unknown_types_are_refused() {
        let e = parse_document(br#"{"schemaVersion": 1, "name": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
        let e =
            parse_document(br#"{"schemaVersion": 2, "mediaType": "application/x"}"#).unwrap_err();
        assert!(e.to_string().contains("application/x"), "{e}");
    }

    #[test]
    fn docker_config_with_nulls() {
        let c = ConfigFile::parse(
            br#"{"architecture":"amd64","os":"linux",
                 "config":{"Env":["PATH=/bin","A=b"],"Cmd":null,"Entrypoint":["/ep"],
                           "WorkingDir":"","User":"app","ExposedPorts":{"80/tcp":{}},
                           "Labels":null},
                 "rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#,
        )
        .unwrap();
        c.check_platform().unwrap();
        let ic = c.image_config();
        assert_eq!(ic.entrypoint.as_deref(), Some(&["/ep".to_owned()][..]));
        assert_eq!(ic.cmd, None);
        assert_eq!(ic.working_dir, None);
        assert_eq!(ic.user.as_deref(), Some("app"));
        assert_eq!(ic.exposed_ports, ["80/tcp"]);
        let arm =
            ConfigFile::parse(br#"{"architecture":"arm64","os":"linux","rootfs":{"diff_ids":[]}}"#)
                .unwrap();
        assert!(
            arm.check_platform()
                .unwrap_err()
                .to_string()
                .contains("linux/arm64")
        );
    }

    proptest::proptest! {
        /// Registry documents cross a trust boundary: any bytes give a
        /// document or an error, never a panic.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_document(&bytes);
            let _ = ConfigFile::parse(&bytes);
        }

        #[test]
        fn any_index_selects_or_lists(os in "[a-z]{1,8}", arch in "[a-z0-9]{1,8}") {
            let doc = serde_json::json!({"manifests": [entry(&os, &arch, None)]});
            if let Ok(Document::Index(i)) = parse_document(doc.to_string().as_bytes()) {
                let want = platform_name(&i.manifests[0]);
                match select_platform(&i) {
                    Ok(_) => proptest::prop_assert!(os == "linux" && arch == "amd64"),
                    Err(e) => proptest::prop_assert!(e.to_string().contains(&want)),
                }
            }
        }
    }

    #[test]
    fn layer_types() {
        for ok in [
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ] {
            assert!(is_layer_type(ok), "{ok}");
        }
        for bad in [
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        ] {
            assert!(!is_layer_type(bad), "{bad}");
        }
    }
}
