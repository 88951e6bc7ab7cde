//! What the image store keeps about images that come from OCI container
//! images (pulled from a registry or imported from a `docker save` tarball
//! or an OCI image layout): their configuration and the blobs they were
//! made from, and the references that name them.
//!
//! # Files
//!
//! ```text
//! images/<digest>/manifest.json     Manifest, with `oci` set (OciInfo)
//! images/refs/<sha256 of reference> RefRecord (JSON), written atomically
//! ```
//!
//! A reference (`docker.io/library/python:3.12`) cannot be a file name, so
//! its record lives in a file named by the sha256 of the reference string
//! and holds the reference itself. References are stored normalised (the
//! caller, mvm-oci, normalises them); lookups are by exact string.
//!
//! The image digest of an OCI image is derived from its **config digest**
//! (which covers the uncompressed layer digests, `rootfs.diff_ids`), so the
//! same image pulled with gzip layers and imported with uncompressed ones
//! converts once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mvm_core::MvmHome;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ImageError;

/// The runtime configuration of an OCI image (the `config` object of the
/// image configuration), as mvm uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Env`: `KEY=VALUE` entries, in order.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `User`: `user`, `uid`, `user:group` or `uid:gid`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `Entrypoint`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `ExposedPorts`: `80/tcp`, ...
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// The image's operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// The image's architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
}

impl ImageConfig {
    /// `Env` as pairs (an entry without `=` is a name with an empty value).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (e.clone(), String::new()),
            })
            .collect()
    }

    /// The argv of the image's main process as `docker run IMAGE [CMD...]`
    /// builds it: `Entrypoint` followed by `cmd` when given, else by the
    /// image's `Cmd`. Empty when the image defines neither.
    pub fn main_argv(&self, cmd: Option<&[String]>) -> Vec<String> {
        let mut argv = self.entrypoint.clone().unwrap_or_default();
        match cmd {
            Some(c) if !c.is_empty() => argv.extend(c.iter().cloned()),
            _ => argv.extend(self.cmd.clone().unwrap_or_default()),
        }
        argv
    }
}

/// One layer of an OCI image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The blob digest (`sha256:...`), as stored in the blob cache.
    pub digest: String,
    /// The blob size in bytes.
    pub size: u64,
    /// The media type the manifest gave (or the compression found, for
    /// archives that give none).
    pub media_type: String,
    /// The digest of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: String,
}

/// Where an OCI image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Pulled from a registry (`mvm image pull`).
    Registry,
    /// Imported from a `docker save` tarball or directory.
    DockerArchive,
    /// Imported from an OCI image layout (directory or tarball).
    OciLayout,
}

impl SourceKind {
    /// The name `mvm image ls` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Registry => "registry",
            SourceKind::DockerArchive => "docker-archive",
            SourceKind::OciLayout => "oci-layout",
        }
    }
}

/// What the store keeps about an image made from an OCI image (in its
/// `manifest.json`, field `oci`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciInfo {
    /// Digest of the image manifest the image was made from.
    pub manifest_digest: String,
    /// Digest of the image configuration blob.
    pub config_digest: String,
    /// The layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// The runtime configuration.
    pub config: ImageConfig,
    /// Bytes of the unpacked tree (files counted once per inode).
    pub unpacked_bytes: u64,
    /// Entries in the unpacked tree.
    pub unpacked_entries: u64,
}

impl OciInfo {
    /// Every blob the image needs: manifest, config, layers.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        [self.manifest_digest.as_str(), self.config_digest.as_str()]
            .into_iter()
            .chain(self.layers.iter().map(|l| l.digest.as_str()))
    }
}

/// `images/refs/<sha256>`: a reference and the image it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    /// The normalised reference (`docker.io/library/python:3.12`).
    pub reference: String,
    /// The image digest (directory under `images/`).
    pub image_digest: String,
    /// The manifest digest the reference resolved to.
    pub manifest_digest: String,
    /// The digest of the image index it was selected from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// Where it came from.
    pub source: SourceKind,
    /// The file or directory it was imported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<PathBuf>,
    /// When it was pulled or imported (RFC 3339).
    pub created: String,
}

fn ref_file(home: &MvmHome, reference: &str) -> PathBuf {
    home.image_refs_dir()
        .join(hex::encode(Sha256::digest(reference.as_bytes())))
}

/// Record that `rec.reference` names `rec.image_digest` (replacing what it
/// named before).
pub fn write_ref(home: &MvmHome, rec: &RefRecord) -> Result<(), ImageError> {
    let dir = home.image_refs_dir();
    fs_err::create_dir_all(&dir)?;
    let path = ref_file(home, &rec.reference);
    let json = serde_json::to_vec_pretty(rec).map_err(|source| ImageError::Manifest {
        path: path.clone(),
        source,
    })?;
    mvm_core::atomic::write_atomic(&path, &json, 0o644)?;
    Ok(())
}

/// The record of `reference`, if there is one.
pub fn read_ref(home: &MvmHome, reference: &str) -> Result<Option<RefRecord>, ImageError> {
    read_ref_file(&ref_file(home, reference)).map(|r| r.filter(|r| r.reference == reference))
}

fn read_ref_file(path: &Path) -> Result<Option<RefRecord>, ImageError> {
    match fs_err::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| ImageError::Manifest {
                path: path.to_owned(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every reference record, sorted by reference. Unreadable records are
/// skipped (and logged).
pub fn list_refs(home: &MvmHome) -> Result<Vec<RefRecord>, ImageError> {
    let dir = home.image_refs_dir();
    let entries = match fs_err::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue; // temporary files of atomic writes
        }
        match read_ref_file(&e.path()) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(err) => tracing::warn!("skipping {}: {err}", e.path().display()),
        }
    }
    out.sort_by(|a, b| a.reference.cmp(&b.reference));
    Ok(out)
}

/// Remove the record of `reference`; `Ok(None)` when there was none.
pub fn remove_ref(home: &MvmHome, reference: &str) -> Result<Option<RefRecord>, ImageError> {
    let Some(rec) = read_ref(home, reference)? else {
        return Ok(None);
    };
    fs_err::remove_file(ref_file(home, reference))?;
    Ok(Some(rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_argv_follows_docker() {
        let mut c = ImageConfig {
            entrypoint: Some(vec!["/bin/ep".into(), "-x".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        assert_eq!(c.main_argv(None), ["/bin/ep", "-x", "default"]);
        assert_eq!(c.main_argv(Some(&["a".into()])), ["/bin/ep", "-x", "a"]);
        c.entrypoint = None;
        assert_eq!(c.main_argv(None), ["default"]);
        assert_eq!(c.main_argv(Some(&["sh".into()])), ["sh"]);
        c.cmd = None;
        assert!(c.main_argv(None).is_empty());
    }

    #[test]
    fn env_pairs_split_on_first_equals() {
        let c = ImageConfig {
            env: vec!["A=1=2".into(), "B=".into(), "C".into()],
            ..Default::default()
        };
        assert_eq!(
            c.env_pairs(),
            [
                ("A".to_owned(), "1=2".to_owned()),
                ("B".to_owned(), String::new()),
                ("C".to_owned(), String::new())
            ]
        );
    }

    #[test]
    fn refs_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let home = MvmHome::new(d.path());
        assert!(list_refs(&home).unwrap().is_empty());
        let rec = RefRecord {
            reference: "docker.io/library/python:3.12".into(),
            image_digest: "ab".repeat(32),
            manifest_digest: format!("sha256:{}", "cd".repeat(32)),
            index_digest: None,
            source: SourceKind::Registry,
            imported_from: None,
            created: "2026-01-01T00:00:00Z".into(),
        };
        write_ref(&home, &rec).unwrap();
        assert_eq!(read_ref(&home, &rec.reference).unwrap(), Some(rec.clone()));
        assert_eq!(read_ref(&home, "python:3.12").unwrap(), None);
        assert_eq!(list_refs(&home).unwrap(), std::slice::from_ref(&rec));
        assert_eq!(remove_ref(&home, &rec.reference).unwrap(), Some(rec));
        assert!(list_refs(&home).unwrap().is_empty());
    }
}
