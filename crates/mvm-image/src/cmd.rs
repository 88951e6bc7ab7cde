//! Running host tools (`apt-get`, `dpkg-deb`, `mkfs.ext4`, `busybox`) with
//! an argv (never a shell), captured output and a deadline.
//!
//! The wait is an event wait: a pidfd becomes readable when the child exits,
//! and `poll` on it carries the deadline. A child past its deadline is killed
//! and reaped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Running a host tool failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The tool is not installed.
    #[error("`{tool}` is not installed; install it with `apt-get install -y {package}`")]
    Missing {
        /// The program name.
        tool: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// The tool could not be started or waited for.
    #[error("cannot run `{tool}`")]
    Spawn {
        /// The program.
        tool: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The tool did not finish in time and was killed.
    #[error("`{argv}` did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The whole command line, for the message.
        argv: String,
        /// The deadline it had.
        timeout: Duration,
    },
    /// The tool exited unsuccessfully.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        /// The whole command line, for the message.
        argv: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// The tail of its standard error (and output).
        stderr: String,
    },
}

/// Find `tool` in `$PATH` and the sbin directories (which a non-root `$PATH`
/// often lacks).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolve `tool` or say which package provides it.
pub fn require(tool: &str, package: &str) -> Result<PathBuf, CommandError> {
    which(tool).ok_or_else(|| CommandError::Missing {
        tool: tool.to_owned(),
        package: package.to_owned(),
    })
}

/// Run `program args...` in `cwd` (if given), wait at most `timeout`, and
/// return its standard output.
pub fn run(
    program: &Path,
    args: &[&std::ffi::OsStr],
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<Vec<u8>, CommandError> {
    let tool = program.display().to_string();
    let argv = std::iter::once(tool.clone())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_err = |source| CommandError::Spawn {
        tool: tool.clone(),
        source,
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let exited = wait_exit(&child, timeout).map_err(spawn_err)?;
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        let _ = out_thread.join();
        let _ = err_thread.join();
        return Err(CommandError::Timeout { argv, timeout });
    }
    let status = child.wait().map_err(spawn_err)?;
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    if !status.success() {
        let mut text = String::from_utf8_lossy(&stderr).into_owned();
        if text.trim().is_empty() {
            text = String::from_utf8_lossy(&stdout).into_owned();
        }
        return Err(CommandError::Failed {
            argv,
            status,
            stderr: tail(&text, 2000),
        });
    }
    Ok(stdout)
}

/// Wait for `child` to exit, at most `timeout`; `false` on timeout.
fn wait_exit(child: &std::process::Child, timeout: Duration) -> std::io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(std::io::Error::other)?)
        .ok_or_else(|| std::io::Error::other("child has pid 0"))?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty())?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ts = Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_captures_and_reports_failure() {
        let out = run(
            &which("echo").unwrap(),
            &["hi".as_ref()],
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out, b"hi\n");
        let err = run(&which("false").unwrap(), &[], None, Duration::from_secs(10)).unwrap_err();
        assert!(matches!(err, CommandError::Failed { .. }), "{err}");
    }

    #[test]
    fn kills_at_deadline() {
        let t = Instant::now();
        let err = run(
            &which("sleep").unwrap(),
            &["30".as_ref()],
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_tool_names_package() {
        let err = require("no-such-tool-mvm", "some-pkg").unwrap_err();
        assert!(err.to_string().contains("apt-get install -y some-pkg"));
    }
}
