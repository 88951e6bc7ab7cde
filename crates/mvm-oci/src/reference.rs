//! Image references with Docker's normalisation.
//!
//! `python:3.12` means `docker.io/library/python:3.12`; a name without a
//! tag or digest means `:latest`; the first component is a registry host
//! only if it contains a `.` or a `:` or is `localhost`; a digest
//! (`@sha256:<64 hex>`) pins the manifest (a tag beside it is kept for
//! display but the digest decides). Parsing is `oci-spec`'s port of
//! distribution's `reference` package; this module adds the canonical
//! string mvm stores and the registry host credentials are looked up by.

use std::fmt;

use oci_spec::distribution::Reference;

/// A reference that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    /// What was given.
    pub input: String,
    /// Why it is invalid.
    pub reason: String,
}

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    /// Parse and normalise `input` (`python:3.12`, `localhost:5000/a/b:1`,
    /// `ghcr.io/x/y@sha256:...`).
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: String| ReferenceError {
            input: input.to_owned(),
            reason,
        };
        if input.trim() != input || input.is_empty() {
            return Err(err("empty, or has surrounding white space".into()));
        }
        let inner = Reference::try_from(input).map_err(|e| {
            let mut reason = e.to_string();
            if input.bytes().any(|b| b.is_ascii_uppercase()) {
                reason.push_str(" (repository names must be lower case)");
            }
            err(reason)
        })?;
        Ok(Self { inner })
    }

    /// The registry host (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository (`library/python`).
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The canonical string (`docker.io/library/python:3.12`), as stored
    /// in the image store.
    pub fn canonical(&self) -> String {
        self.inner.whole()
    }

    /// The same repository pinned to `digest` (no tag).
    pub fn with_digest(&self, digest: &str) -> Self {
        Self {
            inner: self.inner.clone_with_digest(digest.to_owned()),
        }
    }

    /// The `oci-client` form.
    pub fn as_oci(&self) -> &Reference {
        &self.inner
    }

    /// The host name the registry is reached at (Docker Hub's API lives at
    /// `index.docker.io`).
    pub fn api_host(&self) -> &str {
        self.inner.resolve_registry()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        ImageRef::parse(s).unwrap().canonical()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(canon("python:3.12"), "docker.io/library/python:3.12");
        assert_eq!(canon("python"), "docker.io/library/python:latest");
        assert_eq!(canon("library/python"), "docker.io/library/python:latest");
        assert_eq!(canon("docker.io/python"), "docker.io/library/python:latest");
        assert_eq!(
            canon("index.docker.io/library/python:3"),
            "docker.io/library/python:3"
        );
        assert_eq!(canon("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(canon("ghcr.io/o/r/x:1"), "ghcr.io/o/r/x:1");
        assert_eq!(
            canon("localhost:5000/test/app:1"),
            "localhost:5000/test/app:1"
        );
        assert_eq!(canon("localhost/app"), "localhost/app:latest");
        assert_eq!(canon("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("alpine@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.tag(), None);
        assert_eq!(r.canonical(), format!("docker.io/library/alpine@{d}"));
        let r = ImageRef::parse(&format!("alpine:3@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.canonical(), format!("docker.io/library/alpine:3@{d}"));
        assert!(ImageRef::parse("alpine@sha256:abc").is_err());
        assert_eq!(
            ImageRef::parse("localhost:5000/a:1")
                .unwrap()
                .with_digest(&d)
                .canonical(),
            format!("localhost:5000/a@{d}")
        );
    }

    #[test]
    fn invalid_references_are_named() {
        for bad in ["", " a", "Python:3", "a b", "a:b:c:d", "-x"] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(
            ImageRef::parse("Python")
                .unwrap_err()
                .to_string()
                .contains("lower case")
        );
    }

    #[test]
    fn api_host_of_docker_hub() {
        assert_eq!(
            ImageRef::parse("alpine").unwrap().api_host(),
            "index.docker.io"
        );
        assert_eq!(
            ImageRef::parse("localhost:5000/a").unwrap().api_host(),
            "localhost:5000"
        );
    }
}
