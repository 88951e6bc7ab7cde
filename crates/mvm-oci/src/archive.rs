//! `mvm image import`: images from `docker save` archives and OCI image
//! layouts, as a directory or as a tarball (plain or gzip).
//!
//! - **docker-archive** (`docker save`, `skopeo copy ... docker-archive:`):
//!   `manifest.json` = `[{"Config": "<file>", "RepoTags": [...], "Layers":
//!   ["<file>", ...]}]`; layer files are tars (uncompressed in classic
//!   archives, so their digest is their diff_id) and may be symlinks to
//!   each other. mvm synthesises an OCI manifest for the record.
//! - **OCI image layout** (`skopeo copy ... oci:`, umoci, buildah):
//!   `oci-layout` + `index.json` + `blobs/<alg>/<hex>`. The entry is chosen
//!   by the tag of `--name` (`org.opencontainers.image.ref.name`), or is the
//!   only one; a nested index resolves to linux/amd64.
//!
//! A tarball is read once, as a stream: files under 4 MiB (metadata, small
//! layers) are kept in memory up to 64 MiB in all, larger ones go straight
//! into the blob cache while being hashed. Blobs from a layout are
//! verified against their names. Then the layers are converted like a
//! pulled image's, and the name is pointed at the result.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use mvm_core::MvmHome;
use mvm_image::{Image, KernelSource, LayerInfo, RefRecord, SourceKind};
use oci_client::manifest::OciImageManifest;
use serde::Deserialize;

use crate::blobs::{BlobError, BlobStore, Digest};
use crate::model::{self, ConfigFile, Document, ModelError};
use crate::reference::{ImageRef, ReferenceError};
use crate::unpack::{self, UnpackStats};

const SMALL_FILE: u64 = 4 << 20;
const SMALL_TOTAL: u64 = 64 << 20;

/// An import failed. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error("{path}: cannot read")]
    Io {
        /// The archive or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither format.
    #[error(
        "{path} is neither a docker-archive (manifest.json) nor an OCI image layout (oci-layout, index.json)"
    )]
    Format {
        /// The path given.
        path: PathBuf,
    },
    /// A file the format requires is missing.
    #[error("{path}: {member} is missing")]
    Missing {
        /// The archive or directory.
        path: PathBuf,
        /// What.
        member: String,
    },
    /// Several images and no way to choose.
    #[error("{path} holds several images ({names}); choose one with --name")]
    Ambiguous {
        /// The archive or directory.
        path: PathBuf,
        /// Their names.
        names: String,
    },
    /// No name given and none in the archive.
    #[error("{path} does not name its image; give one with --name NAME[:TAG]")]
    NoName {
        /// The archive or directory.
        path: PathBuf,
    },
    /// The name is not a reference.
    #[error(transparent)]
    Name(#[from] ReferenceError),
    /// A metadata document is unusable.
    #[error("{path}")]
    Model {
        /// The archive or directory.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ModelError,
    },
    /// `manifest.json` of a docker-archive is unreadable.
    #[error("{path}: manifest.json is not a docker-archive manifest")]
    DockerManifest {
        /// The archive or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A blob could not be stored or is corrupt.
    #[error("{path}: {member}")]
    Blob {
        /// The archive or directory.
        path: PathBuf,
        /// The member (file in the archive).
        member: String,
        /// Why.
        #[source]
        source: BlobError,
    },
    /// Conversion failed.
    #[error("{path}: cannot convert the image")]
    Convert {
        /// The archive or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: mvm_image::ImageError,
    },
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The name the image got (a normalised reference).
    pub reference: String,
    /// The format found.
    pub source: SourceKind,
    /// The manifest digest (synthesised for docker-archives).
    pub manifest_digest: String,
    /// The image.
    pub image: Image,
    /// Layers in the image.
    pub layers: usize,
    /// What the conversion did (`None`: already converted).
    pub unpacked: Option<UnpackStats>,
    /// Time for the whole import.
    pub time: Duration,
}

/// Where the members of an archive are.
enum Members {
    /// A directory.
    Dir(PathBuf),
    /// A tarball, read into memory (small files) and the cache (large).
    Tar {
        small: BTreeMap<String, Vec<u8>>,
        large: BTreeMap<String, (Digest, u64)>,
        links: BTreeMap<String, String>,
    },
}

fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

impl Members {
    /// Follow symlinks inside a tarball (docker dedups layers that way).
    fn resolve(&self, member: &str) -> String {
        let mut m = clean(member);
        if let Members::Tar { links, .. } = self {
            for _ in 0..16 {
                let Some(target) = links.get(&m) else { break };
                let base = m.rsplit_once('/').map_or("", |(d, _)| d);
                m = if target.starts_with('/') {
                    clean(target)
                } else {
                    clean(&format!("{base}/{target}"))
                };
            }
        }
        m
    }

    fn exists(&self, member: &str) -> bool {
        let m = self.resolve(member);
        match self {
            Members::Dir(d) => d.join(&m).exists(),
            Members::Tar { small, large, .. } => small.contains_key(&m) || large.contains_key(&m),
        }
    }

    fn read_small(&self, path: &Path, member: &str) -> Result<Vec<u8>, ImportError> {
        let m = self.resolve(member);
        let missing = || ImportError::Missing {
            path: path.to_owned(),
            member: member.to_owned(),
        };
        match self {
            Members::Dir(d) => match fs_err::read(d.join(&m)) {
                Ok(b) => Ok(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing()),
                Err(source) => Err(ImportError::Io {
                    path: path.to_owned(),
                    source,
                }),
            },
            Members::Tar { small, .. } => small.get(&m).cloned().ok_or_else(missing),
        }
    }

    /// Put `member` into the cache (verified against `expected` if given);
    /// returns its digest and size.
    fn store(
        &self,
        path: &Path,
        member: &str,
        expected: Option<&Digest>,
        store: &BlobStore,
    ) -> Result<(Digest, u64), ImportError> {
        let m = self.resolve(member);
        let blob_err = |source| ImportError::Blob {
            path: path.to_owned(),
            member: member.to_owned(),
            source,
        };
        let missing = || ImportError::Missing {
            path: path.to_owned(),
            member: member.to_owned(),
        };
        if let Some(d) = expected
            && let Some(n) = store.size(d)
        {
            return Ok((d.clone(), n));
        }
        match self {
            Members::Dir(dir) => {
                let mut f = match fs_err::File::open(dir.join(&m)) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
                    Err(source) => {
                        return Err(ImportError::Io {
                            path: path.to_owned(),
                            source,
                        });
                    }
                };
                store.insert(&mut f, expected).map_err(blob_err)
            }
            Members::Tar { small, large, .. } => {
                if let Some(b) = small.get(&m) {
                    return store.insert(&mut &b[..], expected).map_err(blob_err);
                }
                let (d, n) = large.get(&m).ok_or_else(missing)?;
                if let Some(e) = expected
                    && e != d
                {
                    return Err(blob_err(BlobError::DigestMismatch {
                        expected: e.clone(),
                        actual: d.clone(),
                    }));
                }
                Ok((d.clone(), *n))
            }
        }
    }
}

/// Read a tarball (plain or gzip) once.
fn read_tar(path: &Path, store: &BlobStore) -> Result<Members, ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_owned(),
        source,
    };
    let compression =
        unpack::compression_of(path)
            .map_err(io)?
            .map_err(|what| ImportError::Io {
                path: path.to_owned(),
                source: std::io::Error::other(format!(
                    "{what}-compressed archives are not supported"
                )),
            })?;
    let f = std::io::BufReader::new(fs_err::File::open(path).map_err(io)?);
    let reader: Box<dyn Read> = match compression {
        unpack::Compression::None => Box::new(f),
        unpack::Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(f)),
        unpack::Compression::Zstd => Box::new(zstd::Decoder::with_buffer(f).map_err(io)?),
    };
    let mut ar = tar::Archive::new(reader);
    let mut small = BTreeMap::new();
    let mut large = BTreeMap::new();
    let mut links = BTreeMap::new();
    let mut small_total = 0u64;
    for e in ar.entries().map_err(io)? {
        let mut e = e.map_err(io)?;
        let name = clean(&String::from_utf8_lossy(&e.path_bytes()));
        match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = e.size();
                if size < SMALL_FILE && small_total + size <= SMALL_TOTAL {
                    let mut b = Vec::with_capacity(size as usize);
                    e.read_to_end(&mut b).map_err(io)?;
                    small_total += size;
                    small.insert(name, b);
                } else {
                    let r = store
                        .insert(&mut e, None)
                        .map_err(|source| ImportError::Blob {
                            path: path.to_owned(),
                            member: name.clone(),
                            source,
                        })?;
                    large.insert(name, r);
                }
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Some(t) = e.link_name_bytes() {
                    let t = String::from_utf8_lossy(&t).into_owned();
                    // Hard link targets are archive paths; symlinks are
                    // relative to their directory (resolve() handles both
                    // as long as hard links are written with a leading '/').
                    let t = if e.header().entry_type() == tar::EntryType::Link {
                        format!("/{t}")
                    } else {
                        t
                    };
                    links.insert(name, t);
                }
            }
            _ => {}
        }
    }
    Ok(Members::Tar {
        small,
        large,
        links,
    })
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// What the archive resolves to.
struct Resolved {
    kind: SourceKind,
    name: String,
    manifest_digest: String,
    config_digest: Digest,
    config: ConfigFile,
    layers: Vec<LayerInfo>,
}

fn parse_name(s: &str) -> Result<ImageRef, ReferenceError> {
    ImageRef::parse(s)
}

fn layer_media_type(c: unpack::Compression) -> &'static str {
    match c {
        unpack::Compression::None => "application/vnd.oci.image.layer.v1.tar",
        unpack::Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        unpack::Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

fn docker_archive(
    path: &Path,
    m: &Members,
    name: Option<&ImageRef>,
    store: &BlobStore,
) -> Result<Resolved, ImportError> {
    let bytes = m.read_small(path, "manifest.json")?;
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&bytes).map_err(|source| ImportError::DockerManifest {
            path: path.to_owned(),
            source,
        })?;
    let tags_of = |e: &DockerEntry| e.repo_tags.clone().unwrap_or_default();
    let entry = match (entries.len(), name) {
        (0, _) => {
            return Err(ImportError::Missing {
                path: path.to_owned(),
                member: "an image in manifest.json".into(),
            });
        }
        (1, _) => &entries[0],
        (_, Some(n)) => entries
            .iter()
            .find(|e| {
                tags_of(e)
                    .iter()
                    .any(|t| parse_name(t).is_ok_and(|t| t.canonical() == n.canonical()))
            })
            .ok_or_else(|| ImportError::Ambiguous {
                path: path.to_owned(),
                names: entries
                    .iter()
                    .flat_map(tags_of)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
        (_, None) => {
            return Err(ImportError::Ambiguous {
                path: path.to_owned(),
                names: entries
                    .iter()
                    .flat_map(tags_of)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    };
    let the_name = match name {
        Some(n) => n.canonical(),
        None => match tags_of(entry).first() {
            Some(t) => parse_name(t)?.canonical(),
            None => {
                return Err(ImportError::NoName {
                    path: path.to_owned(),
                });
            }
        },
    };
    let (config_digest, config_size) = m.store(path, &entry.config, None, store)?;
    let config_bytes = store
        .read(&config_digest)
        .map_err(|source| ImportError::Blob {
            path: path.to_owned(),
            member: entry.config.clone(),
            source,
        })?;
    let config = ConfigFile::parse(&config_bytes).map_err(|source| ImportError::Model {
        path: path.to_owned(),
        source,
    })?;
    if config.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(ImportError::Model {
            path: path.to_owned(),
            source: ModelError::LayerCount {
                layers: entry.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            },
        });
    }
    let mut layers = Vec::new();
    let mut descs = Vec::new();
    for (member, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
        let (digest, size) = m.store(path, member, None, store)?;
        let compression = unpack::compression_of(&store.path(&digest))
            .map_err(|source| ImportError::Io {
                path: path.to_owned(),
                source,
            })?
            .map_err(|what| ImportError::Io {
                path: path.to_owned(),
                source: std::io::Error::other(format!("{member}: {what} layers are not supported")),
            })?;
        let media_type = layer_media_type(compression);
        descs.push(serde_json::json!({
            "mediaType": media_type, "digest": digest.as_str(), "size": size,
        }));
        layers.push(LayerInfo {
            digest: digest.to_string(),
            size,
            media_type: media_type.to_owned(),
            diff_id: diff_id.clone(),
        });
    }
    // An OCI manifest for the record (and `mvm image inspect`).
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.as_str(),
            "size": config_size,
        },
        "layers": descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("JSON value");
    let (manifest_digest, _) = store
        .insert(&mut &manifest_bytes[..], None)
        .map_err(|source| ImportError::Blob {
            path: path.to_owned(),
            member: "manifest".into(),
            source,
        })?;
    Ok(Resolved {
        kind: SourceKind::DockerArchive,
        name: the_name,
        manifest_digest: manifest_digest.to_string(),
        config_digest,
        config,
        layers,
    })
}

fn blob_member(d: &str) -> Result<String, crate::blobs::DigestError> {
    let d = Digest::parse(d)?;
    Ok(format!("blobs/sha256/{}", d.hex()))
}

fn oci_layout(
    path: &Path,
    m: &Members,
    name: Option<&ImageRef>,
    store: &BlobStore,
) -> Result<Resolved, ImportError> {
    let model_err = |source| ImportError::Model {
        path: path.to_owned(),
        source,
    };
    let index_bytes = m.read_small(path, "index.json")?;
    let index = match model::parse_document(&index_bytes).map_err(model_err)? {
        Document::Index(i) => i,
        Document::Manifest(_) => {
            return Err(model_err(ModelError::MediaType(
                "index.json holds a manifest, not an index".into(),
            )));
        }
    };
    const REF_NAME: &str = "org.opencontainers.image.ref.name";
    const CONTAINERD_NAME: &str = "io.containerd.image.name";
    let ann = |e: &oci_client::manifest::ImageIndexEntry, k: &str| {
        e.annotations.as_ref().and_then(|a| a.get(k)).cloned()
    };
    let names = || {
        index
            .manifests
            .iter()
            .map(|e| ann(e, REF_NAME).unwrap_or_else(|| e.digest.clone()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let entry = match (index.manifests.len(), name) {
        (0, _) => {
            return Err(ImportError::Missing {
                path: path.to_owned(),
                member: "an entry in index.json".into(),
            });
        }
        (1, _) => &index.manifests[0],
        (_, Some(n)) => index
            .manifests
            .iter()
            .find(|e| {
                let r = ann(e, REF_NAME);
                r.as_deref() == n.tag()
                    || r.is_some_and(|r| {
                        parse_name(&r).is_ok_and(|r| r.canonical() == n.canonical())
                    })
                    || ann(e, CONTAINERD_NAME).is_some_and(|r| {
                        parse_name(&r).is_ok_and(|r| r.canonical() == n.canonical())
                    })
            })
            .ok_or_else(|| ImportError::Ambiguous {
                path: path.to_owned(),
                names: names(),
            })?,
        (_, None) => {
            return Err(ImportError::Ambiguous {
                path: path.to_owned(),
                names: names(),
            });
        }
    };
    let the_name = match name {
        Some(n) => n.canonical(),
        None => {
            let full = ann(entry, CONTAINERD_NAME)
                .or_else(|| ann(entry, REF_NAME).filter(|r| r.contains('/')));
            match full {
                Some(f) => parse_name(&f)?.canonical(),
                None => {
                    return Err(ImportError::NoName {
                        path: path.to_owned(),
                    });
                }
            }
        }
    };
    let load = |digest: &str| -> Result<Vec<u8>, ImportError> {
        let d = Digest::parse(digest).map_err(|e| model_err(e.into()))?;
        let member = blob_member(digest).map_err(|e| model_err(e.into()))?;
        m.store(path, &member, Some(&d), store)?;
        store.read(&d).map_err(|source| ImportError::Blob {
            path: path.to_owned(),
            member,
            source,
        })
    };
    // The entry may be an index (a multi-platform image).
    let mut digest = entry.digest.clone();
    let mut bytes = load(&digest)?;
    let manifest: OciImageManifest = loop {
        match model::parse_document(&bytes).map_err(model_err)? {
            Document::Manifest(mf) => break *mf,
            Document::Index(i) => {
                digest = model::select_platform(&i)
                    .map_err(model_err)?
                    .digest
                    .clone();
                bytes = load(&digest)?;
            }
        }
    };
    let config_bytes = load(&manifest.config.digest)?;
    let config = ConfigFile::parse(&config_bytes).map_err(model_err)?;
    config.check_platform().map_err(model_err)?;
    let layers = model::layers(&manifest, &config).map_err(model_err)?;
    for l in &layers {
        let d = Digest::parse(&l.digest).map_err(|e| model_err(e.into()))?;
        let member = blob_member(&l.digest).map_err(|e| model_err(e.into()))?;
        m.store(path, &member, Some(&d), store)?;
    }
    Ok(Resolved {
        kind: SourceKind::OciLayout,
        name: the_name,
        manifest_digest: digest,
        config_digest: Digest::parse(&manifest.config.digest).map_err(|e| model_err(e.into()))?,
        config,
        layers,
    })
}

/// Import the image at `path` (see the module docs) under `name` (a
/// reference; default: the name the archive gives).
pub fn import(
    home: &MvmHome,
    path: &Path,
    name: Option<&str>,
    kernel: &KernelSource,
    progress: &dyn mvm_image::Progress,
    cancel: Arc<AtomicBool>,
) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    let name = name.map(parse_name).transpose()?;
    let store = BlobStore::new(home);
    let blob_err = |source| ImportError::Blob {
        path: path.to_owned(),
        member: "(lock)".into(),
        source,
    };
    let _lock = store.lock_shared().map_err(blob_err)?;
    let meta = fs_err::metadata(path).map_err(|source| ImportError::Io {
        path: path.to_owned(),
        source,
    })?;
    progress.step(&format!("reading {}", path.display()));
    let members = if meta.is_dir() {
        Members::Dir(path.to_owned())
    } else {
        read_tar(path, &store)?
    };
    let resolved = if members.exists("oci-layout") && members.exists("index.json") {
        if members.exists("manifest.json") {
            // docker >= 25 writes both; its manifest.json names the image.
            docker_archive(path, &members, name.as_ref(), &store)?
        } else {
            oci_layout(path, &members, name.as_ref(), &store)?
        }
    } else if members.exists("manifest.json") {
        docker_archive(path, &members, name.as_ref(), &store)?
    } else {
        return Err(ImportError::Format {
            path: path.to_owned(),
        });
    };
    resolved
        .config
        .check_platform()
        .map_err(|source| ImportError::Model {
            path: path.to_owned(),
            source,
        })?;
    let n = resolved.layers.len();
    let (image, unpacked) = crate::convert::build(
        home,
        &resolved.name,
        &store,
        &resolved.manifest_digest,
        resolved.config_digest.as_str(),
        resolved.layers,
        resolved.config.image_config(),
        kernel,
        progress,
        cancel,
    )
    .map_err(|source| ImportError::Convert {
        path: path.to_owned(),
        source,
    })?;
    mvm_image::oci::write_ref(
        home,
        &RefRecord {
            reference: resolved.name.clone(),
            image_digest: image.digest.clone(),
            manifest_digest: resolved.manifest_digest.clone(),
            index_digest: None,
            source: resolved.kind,
            imported_from: Some(fs_err::canonicalize(path).unwrap_or_else(|_| path.to_owned())),
            created: crate::registry::now_rfc3339(),
        },
    )
    .map_err(|source| ImportError::Convert {
        path: path.to_owned(),
        source,
    })?;
    Ok(ImportReport {
        reference: resolved.name,
        source: resolved.kind,
        manifest_digest: resolved.manifest_digest,
        image,
        layers: n,
        unpacked,
        time: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_resolve_symlinks() {
        let m = Members::Tar {
            small: BTreeMap::from([("a/layer.tar".to_owned(), b"x".to_vec())]),
            large: BTreeMap::new(),
            links: BTreeMap::from([
                ("b/layer.tar".to_owned(), "../a/layer.tar".to_owned()),
                ("c/layer.tar".to_owned(), "/b/layer.tar".to_owned()),
            ]),
        };
        assert_eq!(m.resolve("./b/layer.tar"), "a/layer.tar");
        assert_eq!(m.resolve("c/layer.tar"), "a/layer.tar");
        assert!(m.exists("c/layer.tar"));
        assert!(!m.exists("d"));
    }
}
