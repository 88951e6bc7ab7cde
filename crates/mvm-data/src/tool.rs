//! The e2fsprogs tools (`mkfs.ext4`, `debugfs`, `e2fsck`), run through
//! `mvm_core::tools` (argv, captured output, a deadline on a pidfd), plus
//! what is particular to them: `debugfs` exits 0 even when its command
//! failed, so its stderr is read for complaints.

use std::process::ExitStatus;
use std::time::Duration;

use mvm_core::tools::{DEBUGFS, HostTool};

/// Running an external tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The tool is missing, could not be run or timed out.
    #[error(transparent)]
    Run(#[from] mvm_core::tools::ToolError),
    /// A temporary file for the tool could not be written.
    #[error("cannot prepare the input of {program}")]
    Input {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program exited unsuccessfully, or complained.
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
            stderr: mvm_core::tools::tail(text, 8 * 1024),
        }
    }
}

/// Run `tool` with `args` and wait at most `limit` for it; a non-zero exit
/// is returned, not an error (e2fsck's exit codes carry meaning).
pub(crate) fn run<I, S>(tool: &HostTool, args: I, limit: Duration) -> Result<Output, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = tool.command()?;
    cmd.args(args);
    tracing::debug!(?cmd, "running");
    let o = mvm_core::tools::run_status(cmd, limit)?;
    Ok(Output {
        status: o.status,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
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
    let o = run(&DEBUGFS, args, limit)?.check("debugfs")?;
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
    use mvm_core::tools::MKFS_EXT4;

    #[test]
    fn runs_and_reports_failure() {
        let o = run(&MKFS_EXT4, ["-V"], Duration::from_secs(10)).unwrap();
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
}
