//! The Firecracker process: argv, spawning, readiness and stale sockets.
//!
//! - argv: `firecracker --api-sock <dir/fc.sock> [--id <name>] [--enable-pci]
//!   [--config-file <file>]` built by [`FirecrackerArgs`], never a shell line.
//! - stdio: stdin is `/dev/null`; stdout is the guest serial console
//!   (`console.log`); stderr goes to `vmm.log`, the file the logger is also
//!   pointed at (Firecracker opens it itself, creating it if missing).
//! - transient VMs get `PR_SET_PDEATHSIG = SIGKILL`, so they die with the
//!   process that launched them.
//! - readiness: a real `GET /` answered before a deadline, while the child
//!   is watched for early exit; between connection attempts a short bounded
//!   backoff (there is no event to wait on for "socket bound").
//! - a socket file left by a dead VMM (connect gives `ECONNREFUSED`) is
//!   removed before spawning; a socket somebody still serves is never
//!   touched.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mvm_core::vmm_child::VmmChild;
use tokio::process::{Child, Command};

use crate::api::{ApiError, Client, InstanceInfo};

/// Errors of process management.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A log file could not be opened.
    #[error("cannot open {path}")]
    OpenLog {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The binary could not be started.
    #[error("cannot start {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Some process still serves this socket.
    #[error("socket {path} is in use by a running process; refusing to touch it")]
    SocketInUse {
        /// The socket.
        path: PathBuf,
    },
    /// A stale socket could not be probed or removed.
    #[error("cannot clean up socket {path}")]
    StaleSocket {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited before it served its API.
    #[error("firecracker exited during start-up ({status})")]
    EarlyExit {
        /// Exit status.
        status: std::process::ExitStatus,
    },
    /// Waiting on the child failed.
    #[error("cannot wait for the firecracker process")]
    Wait(#[source] std::io::Error),
    /// The API did not answer in time.
    #[error("the Firecracker API at {socket} did not become ready within {waited:?}")]
    NotReady {
        /// API socket.
        socket: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// The last error seen.
        #[source]
        last: Option<ApiError>,
    },
}

/// The argv of one Firecracker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerArgs {
    /// The binary.
    pub binary: PathBuf,
    /// `--api-sock`.
    pub api_socket: PathBuf,
    /// `--id` (only passed if Firecracker accepts it: 1..=64 of `[A-Za-z0-9-]`).
    pub id: Option<String>,
    /// `--enable-pci`.
    pub enable_pci: bool,
    /// `--config-file`: configure and boot from this JSON file at start.
    pub config_file: Option<PathBuf>,
}

/// Whether Firecracker accepts `id` for `--id`.
pub fn valid_instance_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c == '-' || c.is_ascii_alphanumeric())
}

impl FirecrackerArgs {
    /// Arguments for `binary` serving its API on `api_socket`.
    pub fn new(binary: impl Into<PathBuf>, api_socket: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            api_socket: api_socket.into(),
            id: None,
            enable_pci: false,
            config_file: None,
        }
    }

    /// The arguments after the program name.
    pub fn argv(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["--api-sock".into(), self.api_socket.clone().into()];
        if let Some(id) = self.id.as_deref().filter(|id| valid_instance_id(id)) {
            v.push("--id".into());
            v.push(id.into());
        }
        if self.enable_pci {
            v.push("--enable-pci".into());
        }
        if let Some(f) = &self.config_file {
            v.push("--config-file".into());
            v.push(f.clone().into());
        }
        v
    }

    /// A command with this argv and null stdio (the caller wires stdio).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(self.argv())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(false);
        c
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, ProcessError> {
    fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(fs_err::File::into_parts)
        .map(|(f, _)| f)
        .map_err(|source| ProcessError::OpenLog {
            path: path.to_owned(),
            source,
        })
}

/// Spawn Firecracker with stdout appended to `console_log` and stderr to
/// `vmm_log`. With `die_with_parent` the child gets `PR_SET_PDEATHSIG =
/// SIGKILL`.
///
/// The death signal fires when the *thread* that forked exits: call this
/// from a runtime worker or the `block_on` thread, not from
/// `spawn_blocking` (whose threads retire when idle).
pub fn spawn(
    args: &FirecrackerArgs,
    console_log: &Path,
    vmm_log: &Path,
    die_with_parent: bool,
) -> Result<Child, ProcessError> {
    let stdout = open_append(console_log)?;
    let stderr = open_append(vmm_log)?;
    let mut cmd = args.command();
    cmd.stdout(stdout).stderr(stderr);
    if die_with_parent {
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(PR_SET_PDEATHSIG), which is async-signal-safe, allocates
        // nothing and touches no lock.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
    }
    cmd.spawn().map_err(|source| ProcessError::Spawn {
        binary: args.binary.clone(),
        source,
    })
}

/// Remove the socket at `path` if it is stale (nobody accepts on it); fail
/// if some process still serves it; do nothing if it does not exist.
pub fn clear_stale_socket(path: &Path) -> Result<(), ProcessError> {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ProcessError::SocketInUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::debug!(socket = %path.display(), "removing stale socket");
            match fs_err::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ProcessError::StaleSocket {
                    path: path.to_owned(),
                    source,
                }),
            }
        }
        Err(source) => Err(ProcessError::StaleSocket {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Wait until the API at `client` answers `GET /`, the child exits, or
/// `deadline` passes. Returns the instance information.
pub async fn wait_ready(
    child: &mut VmmChild,
    client: &Client,
    deadline: Instant,
) -> Result<InstanceInfo, ProcessError> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(1);
    let mut last: Option<ApiError> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ProcessError::NotReady {
                socket: client.socket().to_owned(),
                waited: now - start,
                last,
            });
        }
        let remaining = deadline - now;
        let probe = client
            .clone()
            .with_timeout(remaining.min(Duration::from_secs(2)));
        tokio::select! {
            status = child.wait() => {
                return Err(match status {
                    Ok(status) => ProcessError::EarlyExit { status },
                    Err(e) => ProcessError::Wait(e),
                });
            }
            r = async {
                let r = probe.describe_instance().await;
                if r.is_err() {
                    tokio::time::sleep(backoff.min(remaining)).await;
                }
                r
            } => {
                match r {
                    Ok(info) => return Ok(info),
                    Err(e) => last = Some(e),
                }
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_built_from_options() {
        let mut a = FirecrackerArgs::new("/bin/fc", "/d/fc.sock");
        assert_eq!(
            a.argv(),
            vec![OsString::from("--api-sock"), "/d/fc.sock".into()]
        );
        a.id = Some("web-1".into());
        a.enable_pci = true;
        a.config_file = Some("/d/c.json".into());
        let v: Vec<String> = a
            .argv()
            .iter()
            .map(|s| s.to_string_lossy().into())
            .collect();
        assert_eq!(
            v,
            [
                "--api-sock",
                "/d/fc.sock",
                "--id",
                "web-1",
                "--enable-pci",
                "--config-file",
                "/d/c.json"
            ]
        );
        a.id = Some("under_score".into());
        assert!(!a.argv().contains(&OsString::from("--id")));
    }

    #[test]
    fn stale_socket_is_removed_live_one_is_kept() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.sock");
        clear_stale_socket(&p).unwrap();
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert!(matches!(
            clear_stale_socket(&p),
            Err(ProcessError::SocketInUse { .. })
        ));
        assert!(p.exists());
        drop(l);
        clear_stale_socket(&p).unwrap();
        assert!(!p.exists());
    }
}
