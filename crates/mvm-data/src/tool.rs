//! Running the e2fsprogs tools (`mkfs.ext4`, `debugfs`, `e2fsck`) with a
//! deadline.
//!
//! The child's exit is awaited on a pidfd with `poll(2)` and a timeout, so a
//! wedged tool is killed at the deadline instead of hanging mvm; stdout and
//! stderr are drained by two threads (only their last few KiB are kept, for
//! error messages).

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How much of each output stream is kept.
const TAIL_BYTES: usize = 8 * 1024;

/// Running an external tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program could not be started (missing from `PATH`?).
    #[error("cannot run {program} (is e2fsprogs installed?)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the program failed.
    #[error("cannot wait for {program}")]
    Wait {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program ran past its deadline and was killed.
    #[error("{program} did not finish within {secs} s and was killed")]
    Timeout {
        /// The program.
        program: String,
        /// The deadline, in seconds.
        secs: u64,
    },
    /// The program exited unsuccessfully.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// How it ended.
        status: ExitStatus,
        /// The tail of its stderr (and stdout when stderr was empty).
        stderr: String,
    },
}

/// The result of a finished tool.
#[derive(Debug)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Turn a non-zero exit into [`ToolError::Failed`].
    pub(crate) fn check(self, program: &str) -> Result<Output, ToolError> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(self.failed(program))
        }
    }

    pub(crate) fn failed(&self, program: &str) -> ToolError {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        ToolError::Failed {
            program: program.to_owned(),
            status: self.status,
            stderr: text.trim().to_owned(),
        }
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > 2 * TAIL_BYTES {
                        tail.drain(..tail.len() - TAIL_BYTES);
                    }
                }
            }
        }
        if tail.len() > TAIL_BYTES {
            tail.drain(..tail.len() - TAIL_BYTES);
        }
        String::from_utf8_lossy(&tail).into_owned()
    })
}

/// Run `cmd` (stdin closed) and wait at most `limit` for it.
pub(crate) fn run(mut cmd: Command, limit: Duration) -> Result<Output, ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(?cmd, "running");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Spawn {
            program: program.clone(),
            source,
        })?;
    let out = drain(child.stdout.take().expect("piped"));
    let err = drain(child.stderr.take().expect("piped"));
    let wait_err = |source| ToolError::Wait {
        program: program.clone(),
        source,
    };
    let deadline = Instant::now() + limit;
    let pid = rustix::process::Pid::from_child(&child);
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| wait_err(e.into()))?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(wait_err)? {
            break status;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ToolError::Timeout {
                program,
                secs: limit.as_secs(),
            });
        }
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        };
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(wait_err(e.into())),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Run `debugfs` with `args`. debugfs exits 0 even when its command
/// failed, so any stderr line besides its version banner is a failure.
pub(crate) fn debugfs(args: &[&std::ffi::OsStr], limit: Duration) -> Result<Output, ToolError> {
    debugfs_tolerating(args, limit, |_| false)
}

/// [`debugfs`], ignoring stderr lines for which `tolerate` is true.
pub(crate) fn debugfs_tolerating(
    args: &[&std::ffi::OsStr],
    limit: Duration,
    tolerate: impl Fn(&str) -> bool,
) -> Result<Output, ToolError> {
    let mut c = Command::new("debugfs");
    c.args(args);
    let o = run(c, limit)?.check("debugfs")?;
    let complaints: Vec<&str> = o
        .stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_debugfs_banner(l) && !tolerate(l))
        .collect();
    if complaints.is_empty() {
        Ok(o)
    } else {
        Err(ToolError::Failed {
            program: "debugfs".into(),
            status: o.status,
            stderr: complaints.join("; "),
        })
    }
}

fn is_debugfs_banner(line: &str) -> bool {
    line.strip_prefix("debugfs ")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The default deadline for one tool run on an image of `bytes` bytes:
/// 60 s plus 10 s per GiB.
pub(crate) fn deadline_for(bytes: u64) -> Duration {
    Duration::from_secs(60 + 10 * bytes.div_ceil(1 << 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_reports_failure() {
        let mut c = Command::new("mkfs.ext4");
        c.arg("-V");
        let o = run(c, Duration::from_secs(10)).unwrap();
        assert!(o.status.success(), "{o:?}");
        let e = debugfs(
            &[
                "-R".as_ref(),
                "stat /".as_ref(),
                "/nonexistent/image".as_ref(),
            ],
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent"), "{e}");
    }

    #[test]
    fn kills_at_deadline() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let t = Instant::now();
        let e = run(c, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ToolError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let e = run(Command::new("mvm-no-such-program"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ToolError::Spawn { .. }), "{e}");
    }
}
