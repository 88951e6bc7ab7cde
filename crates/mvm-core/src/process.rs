//! Process identity and liveness.
//!
//! A pid alone is not an identity: pids are reused. mvm records the pid
//! together with the process start time (field 22 of `/proc/<pid>/stat`, in
//! clock ticks since boot) and treats a process as "ours" only when both
//! match. Signals are sent only to such verified processes, never by name
//! (no `pkill`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A process, identified by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// Errors of process operations.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The process could not be signalled.
    #[error("cannot signal process {pid}")]
    Signal {
        /// Target pid.
        pid: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The process did not exit in time.
    #[error("process {pid} did not exit within {timeout:?}")]
    Timeout {
        /// Target pid.
        pid: u32,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Parsed bits of `/proc/<pid>/stat`.
struct Stat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let s = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

fn parse_stat(s: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may contain spaces or
    // parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22 => index 19.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

impl ProcessIdentity {
    /// The identity of a live process, or `None` if it does not exist.
    pub fn of(pid: u32) -> Option<Self> {
        read_stat(pid).map(|st| Self {
            pid,
            start_time: st.start_time,
        })
    }

    /// The current process.
    pub fn current() -> Self {
        Self::of(std::process::id()).expect("/proc/self/stat is readable")
    }

    /// True while this very process exists and has not exited (zombies count
    /// as exited).
    pub fn is_alive(&self) -> bool {
        match read_stat(self.pid) {
            Some(st) => st.start_time == self.start_time && st.state != 'Z' && st.state != 'X',
            None => false,
        }
    }

    /// Send `signal` if this is still the same process. Returns `false` when
    /// the process is already gone.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<bool, ProcessError> {
        if !self.is_alive() {
            return Ok(false);
        }
        let pid = rustix::process::Pid::from_raw(self.pid as i32).expect("pid > 0");
        match rustix::process::kill_process(pid, signal) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(ProcessError::Signal {
                pid: self.pid,
                source: e.into(),
            }),
        }
    }

    /// Wait until the process has exited, up to `timeout`. Uses a pidfd, so
    /// it wakes up the moment the process exits (no polling loop).
    pub fn wait_exit(&self, timeout: Duration) -> Result<(), ProcessError> {
        let deadline = Instant::now() + timeout;
        let pid = rustix::process::Pid::from_raw(self.pid as i32).expect("pid > 0");
        let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(_) => return Ok(()), // already gone
        };
        // The pid may have been reused between our check and pidfd_open.
        if !self.is_alive() {
            return Ok(());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // A zombie child of ours makes the pidfd readable; so does exit.
            if !self.is_alive() {
                return Ok(());
            }
            if left.is_zero() {
                return Err(ProcessError::Timeout {
                    pid: self.pid,
                    timeout,
                });
            }
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let ts = rustix::event::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos() as i64,
            };
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) => {
                    if !fds[0].revents().is_empty() {
                        return Ok(());
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (we ird) (name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.start_time, 987654);
    }

    #[test]
    fn current_process_is_alive_and_a_fake_one_is_not() {
        let me = ProcessIdentity::current();
        assert!(me.is_alive());
        let fake = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!fake.is_alive());
    }

    #[test]
    fn wait_exit_returns_when_child_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let id = ProcessIdentity::of(child.id()).unwrap();
        let t = Instant::now();
        // sleep becomes a zombie (we have not reaped it): that counts as exited.
        id.wait_exit(Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(4));
        child.wait().unwrap();
        assert!(!id.is_alive());
    }

    #[test]
    fn wait_exit_times_out() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let id = ProcessIdentity::of(child.id()).unwrap();
        let r = id.wait_exit(Duration::from_millis(100));
        assert!(matches!(r, Err(ProcessError::Timeout { .. })), "{r:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
