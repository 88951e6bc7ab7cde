//! Running host tools for image builds (`apt-get`, `dpkg-deb`,
//! `mkfs.ext4`, `busybox`): a thin layer over `mvm_core::tools`, the one
//! subprocess-with-deadline of the workspace (argv, never a shell; captured
//! output; a pidfd wait with a deadline; killed and reaped past it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub use mvm_core::tools::{ToolError as CommandError, which};

/// Run `program args...` in `cwd` (if given), wait at most `timeout`, and
/// return its standard output.
pub fn run(
    program: &Path,
    args: &[&std::ffi::OsStr],
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<Vec<u8>, CommandError> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).env("LC_ALL", "C");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    Ok(mvm_core::tools::run(cmd, timeout)?.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_captures_and_fails_with_stderr() {
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
        let err = run(
            &which("sleep").unwrap(),
            &["30".as_ref()],
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
    }
}
