//! Every external program mvm runs on the host, named once, with the Debian
//! package that provides it — and the one way to run such a program: an
//! argv (never a shell), captured output, and a deadline.
//!
//! `mvm setup` installs the packages of [`HOST_TOOLS`], `mvm doctor` checks
//! every entry, and a test keeps the programs the code invokes in this list
//! (so the three lists cannot drift apart: the first command on a fresh
//! machine must not fail on a program nobody installed).
//!
//! The wait is an event wait: a pidfd becomes readable when the child exits
//! and `poll(2)` carries the deadline; a child past its deadline is killed
//! and reaped. Both output pipes are drained on threads so a chatty child
//! never blocks on a full pipe.

use std::ffi::OsStr;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// An external program mvm runs on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HostTool {
    /// The program name looked up on `PATH` (and the sbin directories).
    pub program: &'static str,
    /// The Debian/Ubuntu package that provides it.
    pub package: &'static str,
    /// What mvm uses it for.
    pub purpose: &'static str,
    /// Needed only when running as root (networking).
    pub root_only: bool,
}

/// `qemu-system-x86_64`: the QEMU microvm backend.
pub const QEMU: HostTool = HostTool {
    program: "qemu-system-x86_64",
    package: "qemu-system-x86",
    purpose: "runs machines with the QEMU microvm backend",
    root_only: false,
};
/// `qemu-img`: copy-on-write overlays of template disks.
pub const QEMU_IMG: HostTool = HostTool {
    program: "qemu-img",
    package: "qemu-utils",
    purpose: "makes copy-on-write overlays of template disks",
    root_only: false,
};
/// `mkfs.ext4`: root disks, drives, volumes.
pub const MKFS_EXT4: HostTool = HostTool {
    program: "mkfs.ext4",
    package: "e2fsprogs",
    purpose: "builds root disks, config/secrets drives and volumes",
    root_only: false,
};
/// `debugfs`: reading guest changes back out of an ext4 image.
pub const DEBUGFS: HostTool = HostTool {
    program: "debugfs",
    package: "e2fsprogs",
    purpose: "writes guest changes back to host directories",
    root_only: false,
};
/// `e2fsck`: checking an image before writing it back.
pub const E2FSCK: HostTool = HostTool {
    program: "e2fsck",
    package: "e2fsprogs",
    purpose: "checks host-directory images before the write-back",
    root_only: false,
};
/// `apt-get`: installing packages and fetching the guest kernel.
pub const APT_GET: HostTool = HostTool {
    program: "apt-get",
    package: "apt",
    purpose: "installs prerequisites and downloads the guest kernel package",
    root_only: false,
};
/// `apt-cache`: finding the kernel package version.
pub const APT_CACHE: HostTool = HostTool {
    program: "apt-cache",
    package: "apt",
    purpose: "resolves the guest kernel package",
    root_only: false,
};
/// `dpkg-deb`: unpacking the kernel package.
pub const DPKG_DEB: HostTool = HostTool {
    program: "dpkg-deb",
    package: "dpkg",
    purpose: "unpacks the guest kernel package",
    root_only: false,
};
/// `busybox` (static): the guest's userland in the default image.
pub const BUSYBOX: HostTool = HostTool {
    program: "busybox",
    package: "busybox-static",
    purpose: "the default image's userland (must be the static build)",
    root_only: false,
};
/// `iptables`: NAT and forwarding rules.
pub const IPTABLES: HostTool = HostTool {
    program: "iptables",
    package: "iptables",
    purpose: "NAT and forwarding rules for machine networks",
    root_only: true,
};
/// `iptables-save`: finding mvm's rules.
pub const IPTABLES_SAVE: HostTool = HostTool {
    program: "iptables-save",
    package: "iptables",
    purpose: "lists mvm's rules for cleanup",
    root_only: true,
};

/// `nft`: per-machine egress policies.
pub const NFT: HostTool = HostTool {
    program: "nft",
    package: "nftables",
    purpose: "enforces machines' egress policies",
    root_only: true,
};

/// Every external program mvm runs on the host.
pub const HOST_TOOLS: &[HostTool] = &[
    QEMU,
    QEMU_IMG,
    MKFS_EXT4,
    DEBUGFS,
    E2FSCK,
    APT_GET,
    APT_CACHE,
    DPKG_DEB,
    BUSYBOX,
    IPTABLES,
    IPTABLES_SAVE,
    NFT,
];

/// The tools this host needs: all of them as root, the non-networking ones
/// otherwise.
pub fn needed(as_root: bool) -> impl Iterator<Item = &'static HostTool> {
    HOST_TOOLS.iter().filter(move |t| as_root || !t.root_only)
}

/// Running an external program failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not installed.
    #[error(
        "`{program}` is not installed; install it with `apt-get install -y {package}` (or run `mvm setup`)"
    )]
    Missing {
        /// The program.
        program: String,
        /// The package that provides it.
        package: String,
    },
    /// The program could not be started or waited for.
    #[error("cannot run `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program ran past its deadline and was killed.
    #[error("`{argv}` did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The command line.
        argv: String,
        /// Its deadline.
        timeout: Duration,
    },
    /// The program exited unsuccessfully.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        argv: String,
        /// How it ended.
        status: ExitStatus,
        /// The tail of its stderr (its stdout when stderr was empty).
        stderr: String,
    },
}

impl HostTool {
    /// Where the program is, if installed.
    pub fn find(&self) -> Option<PathBuf> {
        which(self.program)
    }

    /// The program's path, or an error naming the package to install.
    pub fn require(&self) -> Result<PathBuf, ToolError> {
        self.find().ok_or_else(|| ToolError::Missing {
            program: self.program.to_owned(),
            package: self.package.to_owned(),
        })
    }

    /// A command for the program (resolved on `PATH` and the sbin
    /// directories), with stdin from `/dev/null` and `LC_ALL=C`.
    pub fn command(&self) -> Result<Command, ToolError> {
        let mut c = Command::new(self.require()?);
        c.stdin(Stdio::null()).env("LC_ALL", "C");
        Ok(c)
    }

    /// Run the program with `args`, at most `timeout`; its stdout on success.
    pub fn run<I, S>(&self, args: I, timeout: Duration) -> Result<Output, ToolError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command()?;
        c.args(args);
        run(c, timeout)
    }
}

/// Find `program` on `PATH`, then in the sbin directories a non-root `PATH`
/// often lacks (the `which` crate does the executable checks).
pub fn which(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(d));
    }
    let path = std::env::join_paths(dirs).ok()?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    which::which_in(program, Some(path), cwd).ok()
}

/// What a finished program printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// How it ended (always success from [`run`]).
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Standard output as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// How much of a failed program's output goes into the error.
const TAIL_BYTES: usize = 4000;

/// Run `cmd` (stdout and stderr are captured), wait at most `timeout`, and
/// fail with the tail of its stderr when it exits unsuccessfully. A child
/// past its deadline is killed and reaped.
pub fn run(cmd: Command, timeout: Duration) -> Result<Output, ToolError> {
    let out = run_unchecked(cmd, None, timeout)?;
    if !out.0.status.success() {
        let mut text = String::from_utf8_lossy(&out.0.stderr).into_owned();
        if text.trim().is_empty() {
            text = String::from_utf8_lossy(&out.0.stdout).into_owned();
        }
        return Err(ToolError::Failed {
            argv: out.1,
            status: out.0.status,
            stderr: tail(&text, TAIL_BYTES),
        });
    }
    Ok(out.0)
}

/// Like [`run`], but an unsuccessful exit is returned, not an error.
pub fn run_status(cmd: Command, timeout: Duration) -> Result<Output, ToolError> {
    run_unchecked(cmd, None, timeout).map(|o| o.0)
}

/// Like [`run_status`], writing `input` to the program's standard input
/// (on a thread, so neither side can block the other).
pub fn run_with_input(
    cmd: Command,
    input: Vec<u8>,
    timeout: Duration,
) -> Result<Output, ToolError> {
    run_unchecked(cmd, Some(input), timeout).map(|o| o.0)
}

fn run_unchecked(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(Output, String), ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let argv = std::iter::once(program.clone())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            let package = HOST_TOOLS
                .iter()
                .find(|t| program.ends_with(t.program))
                .map_or("?", |t| t.package);
            ToolError::Missing {
                program: program.clone(),
                package: package.into(),
            }
        } else {
            ToolError::Spawn {
                program: program.clone(),
                source,
            }
        }
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        std::thread::spawn(move || {
            use std::io::Write;
            // A child that exits early closes the pipe: its status says why.
            let _ = stdin.write_all(&data);
        });
    }
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
    let exited = wait_child(&child, timeout).map_err(|source| ToolError::Spawn {
        program: program.clone(),
        source,
    })?;
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        let _ = out_thread.join();
        let _ = err_thread.join();
        return Err(ToolError::Timeout { argv, timeout });
    }
    let status = child.wait().map_err(|source| ToolError::Spawn {
        program: program.clone(),
        source,
    })?;
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    Ok((
        Output {
            status,
            stdout,
            stderr,
        },
        argv,
    ))
}

/// Wait for `child` to exit, at most `timeout`; `false` on timeout.
fn wait_child(child: &std::process::Child, timeout: Duration) -> std::io::Result<bool> {
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

/// The last `max` bytes of `s` (on a character boundary), trimmed.
pub fn tail(s: &str, max: usize) -> String {
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
    fn runs_with_output_failure_and_deadline() {
        let mut c = Command::new("echo");
        c.arg("hi");
        assert_eq!(
            run(c, Duration::from_secs(10)).unwrap().stdout_text(),
            "hi\n"
        );

        let mut c = Command::new("sh");
        c.args(["-c", "echo oops >&2; exit 3"]);
        let e = run(c, Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("oops"), "{e}");

        let mut c = Command::new("sleep");
        c.arg("30");
        let t = Instant::now();
        let e = run(c, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ToolError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));

        let e = run(Command::new("mvm-no-such-program"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ToolError::Missing { .. }), "{e}");
    }

    #[test]
    fn every_tool_names_a_package_and_missing_ones_say_which() {
        for t in HOST_TOOLS {
            assert!(!t.package.is_empty() && !t.program.is_empty());
        }
        let fake = HostTool {
            program: "mvm-no-such-program",
            package: "mvm-pkg",
            purpose: "test",
            root_only: false,
        };
        let e = fake.require().unwrap_err();
        assert!(e.to_string().contains("apt-get install -y mvm-pkg"), "{e}");
        assert!(which("sh").is_some());
    }
}
