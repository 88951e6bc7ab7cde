//! The VMM process a backend hands to the supervisor ([`VmmChild`]):
//! either a child it spawned, or a process it *adopted*.
//!
//! Adoption is how a jailed Firecracker is supervised: with `--new-pid-ns`
//! the jailer clones the VMM into a new PID namespace and exits, so the VMM
//! is the spawner's grandchild. The spawning process marks itself a *child
//! subreaper* ([`become_subreaper`]); when the jailer exits the kernel
//! reparents the VMM to it, and it waits on the VMM through a pidfd and
//! reaps it with `waitid(P_PIDFD)`, learning its real exit status.
//!
//! `PR_SET_PDEATHSIG` does not survive the jailer (it is cleared when the
//! jailer changes its credentials, and does not cross its fork), so a
//! jailed VMM does not die by itself with its supervisor: the supervisor's
//! teardown kills the machine's cgroup, and after a SIGKILL of the
//! supervisor the next mvm process that takes the machine's owner lock
//! runs the same idempotent release (kill the cgroup, remove it).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use rustix::process::{Pid, PidfdFlags, Signal, WaitIdOptions, WaitIdStatus};
use tokio::io::unix::AsyncFd;

/// Make the calling process a child subreaper (`PR_SET_CHILD_SUBREAPER`):
/// orphaned descendants are reparented to it instead of to init.
/// Process-wide and idempotent.
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// A process waited on through a pidfd (a reparented descendant).
#[derive(Debug)]
pub struct AdoptedChild {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

fn to_exit_status(s: &WaitIdStatus) -> ExitStatus {
    if let Some(code) = s.exit_status() {
        ExitStatus::from_raw((code & 0xff) << 8)
    } else if let Some(sig) = s.terminating_signal() {
        ExitStatus::from_raw(sig & 0x7f)
    } else {
        ExitStatus::from_raw(0)
    }
}

impl AdoptedChild {
    /// Open a pidfd on `pid` (which must be alive or a zombie). Needs a
    /// tokio runtime with IO enabled.
    pub fn adopt(pid: u32) -> io::Result<Self> {
        let p = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
        let fd = rustix::process::pidfd_open(p, PidfdFlags::NONBLOCK)?;
        // SAFETY: the OwnedFd is owned by the AsyncFd until it is dropped,
        // so the descriptor stays open and unchanged while registered.
        let pidfd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self {
            pid,
            pidfd,
            status: None,
        })
    }

    /// The pid.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Reap it if it has exited (it must be our child by then: see
    /// [`become_subreaper`]).
    fn reap(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let r = rustix::process::waitid(
            rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(self.pidfd.get_ref())),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        );
        match r {
            Ok(Some(s)) => {
                let st = to_exit_status(&s);
                self.status = Some(st);
                Ok(Some(st))
            }
            Ok(None) => Ok(None),
            Err(rustix::io::Errno::CHILD) => Err(io::Error::other(format!(
                "process {} exited but is not a child of this process (no subreaper?): its status is unknown",
                self.pid
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Wait until it exits; its exit status.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.reap()? {
                return Ok(s);
            }
            // A pidfd becomes readable when the process exits.
            let mut guard = self.pidfd.readable().await?;
            guard.clear_ready();
            drop(guard);
            if let Some(s) = self.reap()? {
                return Ok(s);
            }
        }
    }

    /// Its status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.reap()
    }

    /// Send SIGKILL (through the pidfd: never a reused pid).
    pub fn start_kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        match rustix::process::pidfd_send_signal(self.pidfd.get_ref(), Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The VMM process of a [`crate::backend::RunningVmm`], with the methods of
/// `tokio::process::Child` the supervisor uses.
#[derive(Debug)]
pub enum VmmChild {
    /// Spawned directly by the backend.
    Spawned(tokio::process::Child),
    /// Reparented to us (a jailed VMM in its own PID namespace).
    Adopted(AdoptedChild),
}

impl From<tokio::process::Child> for VmmChild {
    fn from(c: tokio::process::Child) -> Self {
        Self::Spawned(c)
    }
}

impl VmmChild {
    /// Its pid (`None` once a spawned child was reaped).
    pub fn id(&self) -> Option<u32> {
        match self {
            Self::Spawned(c) => c.id(),
            Self::Adopted(a) => a.status.is_none().then_some(a.pid),
        }
    }

    /// Wait for it to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Self::Spawned(c) => c.wait().await,
            Self::Adopted(a) => a.wait().await,
        }
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            Self::Spawned(c) => c.try_wait(),
            Self::Adopted(a) => a.try_wait(),
        }
    }

    /// Send SIGKILL.
    pub fn start_kill(&mut self) -> io::Result<()> {
        match self {
            Self::Spawned(c) => c.start_kill(),
            Self::Adopted(a) => a.start_kill(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_adopted_orphan_is_waited_for_with_its_exit_status() {
        become_subreaper().unwrap();
        // `sh` forks a grandchild that outlives it, reading the pipe
        // until EOF, then exiting with 7.
        let (r, w) = std::io::pipe().unwrap();
        let mut sh = std::process::Command::new("/bin/sh")
            // (A background job's stdin is /dev/null: hand it the pipe as fd 3.)
            .args([
                "-c",
                "exec 3<&0; sh -c 'read x <&3; exit 7' >/dev/null & echo $!",
            ])
            .stdin(r)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pid = String::new();
        std::io::Read::read_to_string(sh.stdout.as_mut().unwrap(), &mut pid).unwrap();
        sh.wait().unwrap();
        let pid: u32 = pid.trim().parse().unwrap();
        let mut a = VmmChild::Adopted(AdoptedChild::adopt(pid).unwrap());
        assert_eq!(a.id(), Some(pid));
        assert!(a.try_wait().unwrap().is_none());
        drop(w); // the grandchild reads EOF and exits 7
        let st = a.wait().await.unwrap();
        assert_eq!(st.code(), Some(7));
        assert_eq!(a.id(), None);
        a.start_kill().unwrap();
    }
}
