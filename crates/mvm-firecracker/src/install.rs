//! Finding, checking and installing the Firecracker binary.
//!
//! Release layout (GitHub releases of firecracker-microvm/firecracker):
//!
//! ```text
//! {base}/v{V}/firecracker-v{V}-{arch}.tgz
//! {base}/v{V}/firecracker-v{V}-{arch}.tgz.sha256.txt   "<hex>  firecracker-v{V}-{arch}.tgz"
//!   release-v{V}-{arch}/firecracker-v{V}-{arch}
//!   release-v{V}-{arch}/jailer-v{V}-{arch}
//! ```
//!
//! `{base}` is `https://github.com/firecracker-microvm/firecracker/releases/download`
//! unless the config's `firecracker_release_url` (or
//! `MVM_FIRECRACKER_RELEASE_URL`) names a mirror. The tarball is
//! downloaded into `$MVM_HOME/cache`, hashed while it streams, checked
//! against the published SHA-256, and only then are the binaries extracted
//! into `$MVM_HOME/bin` (temp file + rename, mode 0755). A mismatch installs
//! nothing.
//!
//! Lookup order of [`find_binary`]: the configured path (`firecracker_bin`
//! or `MVM_FIRECRACKER_BIN`), `$MVM_HOME/bin/firecracker`, then `PATH`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mvm_core::config::Config;
use mvm_core::paths::MvmHome;
use sha2::{Digest, Sha256};

/// Where releases are downloaded from by default.
pub const DEFAULT_RELEASE_URL: &str =
    "https://github.com/firecracker-microvm/firecracker/releases/download";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_DOWNLOAD: u64 = 512 * 1024 * 1024;
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of finding and installing Firecracker.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A download failed (often: no network).
    #[error(
        "cannot download {url}; without network access install Firecracker yourself and pass --firecracker-bin PATH"
    )]
    Download {
        /// The URL.
        url: String,
        /// Cause.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The checksum file is not `<64 hex digits>  <name>`.
    #[error("malformed checksum file {url}: {content:?}")]
    BadChecksumFile {
        /// Its URL.
        url: String,
        /// What it contained (truncated).
        content: String,
    },
    /// The tarball does not match its published digest.
    #[error("SHA-256 mismatch for {url}: expected {expected}, got {actual}; nothing was installed")]
    ChecksumMismatch {
        /// The tarball's URL.
        url: String,
        /// Published digest.
        expected: String,
        /// Digest of what was downloaded.
        actual: String,
    },
    /// The tarball lacks a member.
    #[error("{archive} does not contain {member}")]
    MissingMember {
        /// The tarball.
        archive: String,
        /// The missing path.
        member: String,
    },
    /// The tarball could not be read.
    #[error("cannot extract {archive}")]
    Extract {
        /// The tarball.
        archive: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Local file IO.
    #[error("cannot write {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No binary anywhere.
    #[error(
        "no firecracker binary found (looked at {looked}); run `mvm firecracker install` or pass --firecracker-bin PATH"
    )]
    NotFound {
        /// The places looked at.
        looked: String,
    },
    /// The binary could not be run.
    #[error("cannot run {path} --version")]
    Run {
        /// The binary.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The binary misbehaved.
    #[error("{path} --version: {reason}")]
    BadBinary {
        /// The binary.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Receives download progress.
pub trait Progress: Send + Sync {
    /// A transfer of `total` bytes (if known) begins.
    fn begin(&self, what: &str, total: Option<u64>);
    /// `n` more bytes arrived.
    fn advance(&self, n: u64);
    /// The transfer is over.
    fn end(&self);
}

/// Progress that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}

/// The base URL in effect: the configured mirror
/// (`firecracker_release_url`, or `MVM_FIRECRACKER_RELEASE_URL` through the
/// config), else [`DEFAULT_RELEASE_URL`].
pub fn release_base_url(config: &Config) -> String {
    config
        .firecracker_release_url
        .as_deref()
        .unwrap_or(DEFAULT_RELEASE_URL)
        .trim_end_matches('/')
        .to_string()
}

/// The tarball URL for `version` (without a leading `v`) and `arch`.
pub fn tarball_url(base: &str, version: &str, arch: &str) -> String {
    let v = version.trim_start_matches('v');
    format!("{base}/v{v}/firecracker-v{v}-{arch}.tgz")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .timeout_recv_body(Some(DOWNLOAD_TIMEOUT))
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .build()
        .into()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Download, verify and install Firecracker `version` for `arch`
/// (`x86_64`, `aarch64`) into `home.bin_dir()`. Returns the path of the
/// installed `firecracker`. Blocking: call it from a blocking thread.
pub fn install_release(
    config: &Config,
    home: &MvmHome,
    version: &str,
    arch: &str,
    progress: &dyn Progress,
) -> Result<PathBuf, InstallError> {
    install_release_from(&release_base_url(config), home, version, arch, progress)
}

/// [`install_release`] from an explicit base URL (tests serve releases
/// from a local server without touching the process environment).
pub fn install_release_from(
    base_url: &str,
    home: &MvmHome,
    version: &str,
    arch: &str,
    progress: &dyn Progress,
) -> Result<PathBuf, InstallError> {
    let v = version.trim_start_matches('v');
    let url = tarball_url(base_url.trim_end_matches('/'), v, arch);
    let sum_url = format!("{url}.sha256.txt");
    let agent = agent();
    let dl_err = |url: &str| {
        let url = url.to_string();
        move |e: ureq::Error| InstallError::Download {
            url,
            source: Box::new(e),
        }
    };

    let expected = {
        let mut resp = agent.get(&sum_url).call().map_err(dl_err(&sum_url))?;
        let text = resp.body_mut().read_to_string().map_err(dl_err(&sum_url))?;
        parse_checksum(&text).ok_or_else(|| InstallError::BadChecksumFile {
            url: sum_url.clone(),
            content: text.chars().take(200).collect(),
        })?
    };

    let cache = home.cache_dir();
    fs_err::create_dir_all(&cache).map_err(io_err(&cache))?;
    let mut tgz = tempfile::Builder::new()
        .prefix(".firecracker-")
        .suffix(".tgz")
        .tempfile_in(&cache)
        .map_err(io_err(&cache))?;
    let actual = {
        let mut resp = agent.get(&url).call().map_err(dl_err(&url))?;
        let total = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        progress.begin(&format!("firecracker-v{v}-{arch}.tgz"), total);
        let mut reader = resp.body_mut().with_config().limit(MAX_DOWNLOAD).reader();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    progress.end();
                    return Err(InstallError::Download {
                        url: url.clone(),
                        source: Box::new(ureq::Error::Io(e)),
                    });
                }
            };
            hasher.update(&buf[..n]);
            tgz.write_all(&buf[..n]).map_err(io_err(tgz.path()))?;
            progress.advance(n as u64);
        }
        progress.end();
        hex::encode(hasher.finalize())
    };
    if actual != expected {
        return Err(InstallError::ChecksumMismatch {
            url,
            expected,
            actual,
        });
    }
    tgz.flush().map_err(io_err(tgz.path()))?;

    let bin = home.bin_dir();
    fs_err::create_dir_all(&bin).map_err(io_err(&bin))?;
    let prefix = format!("release-v{v}-{arch}");
    let fc_member = format!("{prefix}/firecracker-v{v}-{arch}");
    let jailer_member = format!("{prefix}/jailer-v{v}-{arch}");
    let archive_name = format!("firecracker-v{v}-{arch}.tgz");
    let extract_err = |source| InstallError::Extract {
        archive: archive_name.clone(),
        source,
    };
    let file = fs_err::File::open(tgz.path()).map_err(io_err(tgz.path()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut fc_tmp = None;
    let mut jailer_tmp = None;
    for entry in archive.entries().map_err(extract_err)? {
        let mut entry = entry.map_err(extract_err)?;
        let path = entry
            .path()
            .map_err(extract_err)?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./");
        let slot = if path == fc_member {
            &mut fc_tmp
        } else if path == jailer_member {
            &mut jailer_tmp
        } else {
            continue;
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".install-")
            .tempfile_in(&bin)
            .map_err(io_err(&bin))?;
        std::io::copy(&mut entry, &mut tmp).map_err(extract_err)?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(tmp.path()))?;
        *slot = Some(tmp);
    }
    let fc_tmp = fc_tmp.ok_or_else(|| InstallError::MissingMember {
        archive: archive_name.clone(),
        member: fc_member.clone(),
    })?;
    let target = bin.join("firecracker");
    if let Some(j) = jailer_tmp {
        let jt = bin.join("jailer");
        j.persist(&jt).map_err(|e| InstallError::Io {
            path: jt.clone(),
            source: e.error,
        })?;
    }
    fc_tmp.persist(&target).map_err(|e| InstallError::Io {
        path: target.clone(),
        source: e.error,
    })?;
    Ok(target)
}

/// The hex digest of a `.sha256.txt` file (`<hex>  <name>` or just `<hex>`).
pub fn parse_checksum(text: &str) -> Option<String> {
    let d = text.split_whitespace().next()?.to_ascii_lowercase();
    (d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())).then_some(d)
}

/// Run `path --version` (with a deadline) and return the version
/// (`1.16.1`).
pub fn check_binary(path: &Path) -> Result<String, InstallError> {
    let run_err = |source| InstallError::Run {
        path: path.to_owned(),
        source,
    };
    let mut child = std::process::Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(run_err)?;
    // The output is a few lines, far below a pipe's capacity, so waiting
    // before reading cannot deadlock. There is no exit event for a std
    // child: poll with a bounded backoff up to the deadline.
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let mut backoff = Duration::from_millis(1);
    let status = loop {
        if let Some(s) = child.try_wait().map_err(run_err)? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(InstallError::BadBinary {
                path: path.to_owned(),
                reason: format!("did not exit within {VERSION_TIMEOUT:?}"),
            });
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(50));
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out).map_err(run_err)?;
    }
    if !status.success() {
        return Err(InstallError::BadBinary {
            path: path.to_owned(),
            reason: format!("exited with {status}"),
        });
    }
    parse_version(&out).ok_or_else(|| InstallError::BadBinary {
        path: path.to_owned(),
        reason: format!(
            "unexpected output {:?}",
            out.lines().next().unwrap_or_default()
        ),
    })
}

/// `Firecracker v1.16.1` → `1.16.1`.
pub fn parse_version(out: &str) -> Option<String> {
    let first = out.lines().next()?;
    let mut words = first.split_whitespace();
    if words.next()? != "Firecracker" {
        return None;
    }
    let v = words.next()?.trim_start_matches('v');
    (!v.is_empty() && v.starts_with(|c: char| c.is_ascii_digit())).then(|| v.to_string())
}

/// Locate the binary: `config.firecracker_bin` (or `MVM_FIRECRACKER_BIN`),
/// then `$MVM_HOME/bin/firecracker`, then `firecracker` on `PATH`. A path
/// named explicitly must exist; it is never silently skipped.
pub fn find_binary(config: &Config, home: &MvmHome) -> Result<PathBuf, InstallError> {
    if let Some(p) = config.firecracker_bin.clone() {
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(InstallError::NotFound {
                looked: format!("{} (configured, missing or not executable)", p.display()),
            })
        };
    }
    let installed = home.bin_dir().join("firecracker");
    if is_executable(&installed) {
        return Ok(installed);
    }
    let mut looked = vec![installed.display().to_string()];
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join("firecracker");
            if is_executable(&c) {
                return Ok(c);
            }
        }
        looked.push("PATH".into());
    }
    Err(InstallError::NotFound {
        looked: looked.join(", "),
    })
}

/// Find the jailer: `configured` (config `jailer_bin`, or
/// `MVM_JAILER_BIN` through the config), else `jailer` beside the
/// Firecracker binary `firecracker` (where `mvm setup` installs both from
/// the release tarball), else on `PATH`. A path named explicitly must
/// exist; it is never silently skipped.
pub fn find_jailer(configured: Option<&Path>, firecracker: &Path) -> Result<PathBuf, InstallError> {
    if let Some(p) = configured {
        return if is_executable(p) {
            Ok(p.to_owned())
        } else {
            Err(InstallError::NotFound {
                looked: format!(
                    "{} (configured as jailer_bin or {}, missing or not executable)",
                    p.display(),
                    crate::jailer::JAILER_BIN_ENV
                ),
            })
        };
    }
    let mut looked = Vec::new();
    if let Some(dir) = firecracker.parent() {
        let beside = dir.join("jailer");
        if is_executable(&beside) {
            return Ok(beside);
        }
        looked.push(beside.display().to_string());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join("jailer");
            if is_executable(&c) {
                return Ok(c);
            }
        }
        looked.push("PATH".into());
    }
    Err(InstallError::NotFound {
        looked: looked.join(", "),
    })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_checksums_parse() {
        assert_eq!(
            parse_version(
                "Firecracker v1.16.1\n\nSupported snapshot data format versions: v8.0.0\n"
            ),
            Some("1.16.1".into())
        );
        assert_eq!(parse_version("QEMU 7.2"), None);
        let d = "a".repeat(64);
        assert_eq!(
            parse_checksum(&format!("{d}  firecracker.tgz\n")),
            Some(d.clone())
        );
        assert_eq!(parse_checksum("xyz  f"), None);
        assert_eq!(
            tarball_url("http://h/d", "v1.16.1", "x86_64"),
            "http://h/d/v1.16.1/firecracker-v1.16.1-x86_64.tgz"
        );
    }

    #[test]
    fn configured_binary_must_exist() {
        let t = tempfile::tempdir().unwrap();
        let home = MvmHome::new(t.path());
        let cfg = Config {
            firecracker_bin: Some(t.path().join("nope")),
            ..Config::default()
        };
        let e = find_binary(&cfg, &home).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let bin = home.bin_dir();
        fs_err::create_dir_all(&bin).unwrap();
        let f = bin.join("firecracker");
        fs_err::write(&f, b"x").unwrap();
        fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = Config::default();
        assert_eq!(find_binary(&cfg, &home).unwrap(), f);
    }
}
