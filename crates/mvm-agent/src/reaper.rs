//! The one place that calls `waitpid`.
//!
//! As PID 1 the agent inherits every orphan and must reap it, but it must not
//! steal the exit status of a command it runs for a session. So nothing else
//! waits on children: a single task reaps with `waitpid(-1, WNOHANG)` each
//! time SIGCHLD arrives and hands each status to the session that registered
//! the pid; statuses of unregistered pids (orphans) are dropped.
//!
//! The runtime is single-threaded, so a `spawn` + `register` can never
//! interleave with a reaping pass (std's `Command::spawn` itself calls
//! `waitpid` on a child whose `exec` failed; that must not race us either).
//! The map is still behind a mutex so the invariant does not hinge on that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mvm_agent_proto::ExitStatus;
use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// Handle to the reaper; cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    waiters: Arc<Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>>,
}

impl Reaper {
    /// Install the SIGCHLD handler and start the reaping task. Must run
    /// inside the (current-thread) runtime.
    pub fn start() -> std::io::Result<Reaper> {
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawn `cmd` and register its pid; the receiver gets its status.
    pub fn spawn(
        &self,
        cmd: &mut std::process::Command,
    ) -> std::io::Result<(std::process::Child, oneshot::Receiver<ExitStatus>)> {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        w.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    fn reap_all(&self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (
                    pid,
                    ExitStatus {
                        code: Some(code),
                        ..Default::default()
                    },
                ),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    pid,
                    ExitStatus {
                        signal: Some(sig as i32),
                        ..Default::default()
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    crate::log!("waitpid failed: {e}");
                    return;
                }
            };
            let tx = self
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pid.as_raw());
            if let Some(tx) = tx {
                let _ = tx.send(status);
            }
        }
    }
}
