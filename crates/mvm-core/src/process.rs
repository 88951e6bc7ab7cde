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
    ppid: u32,
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
        ppid: fields.get(1)?.parse().ok()?,
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

    /// The parent pid of this process, while it lives.
    pub fn parent_pid(&self) -> Option<u32> {
        read_stat(self.pid)
            .filter(|st| st.start_time == self.start_time)
            .map(|st| st.ppid)
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

/// The tag mvm puts in the environment ([`crate::env::MVM_MACHINE_TAG`])
/// of every process it spawns for a machine: `<instance dir>#<record id>`.
pub fn machine_tag(dir: &crate::InstanceDir, record_id: &str) -> String {
    format!("{}#{record_id}", dir.root().display())
}

/// A live process that carries a machine tag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaggedProcess {
    /// Which process.
    pub process: ProcessIdentity,
    /// The instance directory of the tag.
    pub instance_dir: std::path::PathBuf,
    /// The record id of the tag.
    pub record_id: String,
    /// Its command line (for reports).
    pub cmdline: String,
}

/// Every live process whose machine tag names an instance directory under
/// `instances_dir`. Reads `/proc/<pid>/environ`, which needs root for other
/// users' processes; processes that cannot be read are skipped, and so is a
/// process in the middle of `exec` (its environment is not there yet) —
/// callers use this to find leftovers, which are never that young.
pub fn find_tagged(instances_dir: &std::path::Path) -> Vec<TaggedProcess> {
    let prefix = format!("{}=", crate::env::MVM_MACHINE_TAG);
    let mut out = Vec::new();
    let Ok(entries) = fs_err::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(environ) = fs_err::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let Some(tag) = environ
            .split(|b| *b == 0)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .find_map(|v| v.strip_prefix(&prefix))
        else {
            continue;
        };
        let Some((dir, id)) = tag.rsplit_once('#') else {
            continue;
        };
        let dir = std::path::PathBuf::from(dir);
        if dir.parent() != Some(instances_dir) {
            continue;
        }
        let Some(process) = ProcessIdentity::of(pid).filter(|p| p.is_alive()) else {
            continue;
        };
        let cmdline = fs_err::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default();
        out.push(TaggedProcess {
            process,
            instance_dir: dir,
            record_id: id.to_owned(),
            cmdline,
        });
    }
    out
}

/// Make `cmd`'s child receive SIGKILL when the calling *thread* exits
/// (`PR_SET_PDEATHSIG`), and refuse to start if the parent died before the
/// setting took effect. Spawn from a thread that lives as long as the
/// parent process (the main thread, or a current-thread runtime's).
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec; it makes
    // only raw syscalls (prctl, getppid) and builds errors from errno
    // values — no allocation, no locks — which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
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
        assert_eq!(st.ppid, 1);
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
    fn tagged_children_are_found_and_others_are_not() {
        let t = tempfile::tempdir().unwrap();
        let home = crate::MvmHome::new(t.path());
        let dir = home.instance("tagged");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(crate::env::MVM_MACHINE_TAG, machine_tag(&dir, "abc"))
            .spawn()
            .unwrap();
        // The kernel fills in a new program's environment a moment after
        // the spawning parent resumes: look until it is there (deadline).
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let found = find_tagged(&home.instances_dir());
            if !found.is_empty() || Instant::now() > deadline {
                break found;
            }
            std::thread::yield_now();
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].process.pid, child.id());
        assert_eq!(found[0].record_id, "abc");
        assert_eq!(found[0].instance_dir, dir.root());
        let other = crate::MvmHome::new(t.path().join("other"));
        assert!(find_tagged(&other.instances_dir()).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(find_tagged(&home.instances_dir()).is_empty());
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
