//! Registry credentials: given on the command line (`--username` +
//! `--password-stdin`), or found in the user's Docker configuration
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`):
//!
//! - `auths.<registry>.auth` (base64 `user:password`) or
//!   `auths.<registry>.username`/`password`;
//! - `credHelpers.<registry>` or `credsStore`: the helper program
//!   `docker-credential-<name> get`, given the registry on stdin, answers
//!   `{"Username": ..., "Secret": ...}` (run with an argv and a deadline).
//!
//! Registry keys are compared by host: `https://index.docker.io/v1/`,
//! `index.docker.io`, `registry-1.docker.io` and `docker.io` all mean
//! Docker Hub. Without credentials, pulls are anonymous (registries hand
//! out anonymous bearer tokens; oci-client does that exchange).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

/// How long a credential helper may take.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Reading the Docker configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read the Docker configuration")]
    Io(#[from] std::io::Error),
    /// The file is not valid JSON of the expected shape.
    #[error("{path} is not a valid Docker configuration")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An `auth` entry is not base64 `user:password`.
    #[error("{path}: the auth entry for {registry} is not base64 \"user:password\"")]
    BadAuth {
        /// The file.
        path: PathBuf,
        /// The registry key.
        registry: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} failed for {registry}: {why}")]
    Helper {
        /// The helper name.
        helper: String,
        /// The registry.
        registry: String,
        /// What went wrong.
        why: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

const DOCKER_HUB: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// The host a config key names (`https://index.docker.io/v1/` ->
/// `index.docker.io`), with Docker Hub's aliases folded to `docker.io`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    if DOCKER_HUB.contains(&host) {
        "docker.io"
    } else {
        host
    }
}

/// The Docker configuration file: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials for `registry` (as in a reference: `docker.io`,
/// `localhost:5000`) from the Docker configuration at `path`, if any.
pub fn from_docker_config(path: &Path, registry: &str) -> Result<Option<Credentials>, AuthError> {
    let bytes = match fs_err::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let cfg: DockerConfig = serde_json::from_slice(&bytes).map_err(|source| AuthError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let want = key_host(registry);
    let helper_key = |m: &BTreeMap<String, String>| {
        m.iter()
            .find(|(k, _)| key_host(k) == want)
            .map(|(_, v)| v.clone())
    };
    if let Some(helper) = helper_key(&cfg.cred_helpers) {
        return run_helper(&helper, registry);
    }
    if let Some((key, entry)) = cfg.auths.iter().find(|(k, _)| key_host(k) == want) {
        if let Some(a) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = || AuthError::BadAuth {
                path: path.to_owned(),
                registry: key.clone(),
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| bad())?;
            let text = String::from_utf8(raw).map_err(|_| bad())?;
            let (u, p) = text.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credentials {
                username: u.to_owned(),
                password: p.to_owned(),
            }));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }));
        }
    }
    if let Some(store) = &cfg.creds_store {
        return run_helper(store, registry);
    }
    Ok(None)
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// `docker-credential-<helper> get` with `registry` on stdin.
fn run_helper(helper: &str, registry: &str) -> Result<Option<Credentials>, AuthError> {
    let fail = |why: String| AuthError::Helper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        why,
    };
    if helper.is_empty() || helper.contains('/') {
        return Err(fail("invalid helper name".into()));
    }
    let program = format!("docker-credential-{helper}");
    let server = if key_host(registry) == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let _ = stderr.read_to_end(&mut err);
        let _ = tx.send((out, err));
    });
    let Ok((out, err)) = rx.recv_timeout(HELPER_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail(format!("no answer within {HELPER_TIMEOUT:?}")));
    };
    let status = child
        .wait()
        .map_err(|e| fail(format!("cannot wait for {program}: {e}")))?;
    if !status.success() {
        let text = String::from_utf8_lossy(if err.is_empty() { &out } else { &err }).into_owned();
        // The helper protocol's way of saying "no credentials stored".
        if text.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("{status}: {}", text.trim())));
    }
    let a: HelperAnswer =
        serde_json::from_slice(&out).map_err(|e| fail(format!("unreadable answer: {e}")))?;
    Ok(Some(Credentials {
        username: a.username,
        password: a.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_keys() {
        assert_eq!(key_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(key_host("registry-1.docker.io"), "docker.io");
        assert_eq!(key_host("http://localhost:5000"), "localhost:5000");
        assert_eq!(key_host("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn reads_auths_entries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        fs_err::write(
            &p,
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{b64}"}},
                    "localhost:5000": {{"username": "bob", "password": "pw"}},
                    "bad.example": {{"auth": "!!!"}}}}}}"#
            ),
        )
        .unwrap();
        let hub = from_docker_config(&p, "docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cr:et")
        );
        let local = from_docker_config(&p, "localhost:5000").unwrap().unwrap();
        assert_eq!(local.username, "bob");
        assert!(from_docker_config(&p, "ghcr.io").unwrap().is_none());
        assert!(from_docker_config(&p, "bad.example").is_err());
        assert!(
            from_docker_config(&d.path().join("absent.json"), "docker.io")
                .unwrap()
                .is_none()
        );
        assert!(!format!("{hub:?}").contains("s3cr"));
    }

    #[test]
    fn missing_helper_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        fs_err::write(
            &p,
            r#"{"credHelpers": {"ghcr.io": "mvm-test-no-such-helper"}}"#,
        )
        .unwrap();
        let e = from_docker_config(&p, "ghcr.io").unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-credential-mvm-test-no-such-helper"),
            "{e}"
        );
    }
}
