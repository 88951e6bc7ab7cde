//! The detached supervisor process, `mvm __supervise NAME`: how `mvm
//! start` hands a machine to it, and what it does first.
//!
//! The hand-over has no gap in ownership: the starting process holds the
//! machine's owner lock and passes a duplicate of that very descriptor to
//! the child as fd 3 ([`OWNER_FD`]); the child shares the lock from the
//! moment it is forked. The child starts with SIGTERM, SIGINT, SIGHUP and
//! SIGUSR1 (`mvm update`) blocked (the mask is inherited across `exec`),
//! installs its handlers, then unblocks them: a stop (or change) sent at
//! any moment of its life is handled, none kills it half-way. It runs in its own session (`setsid`), so the
//! CLI's terminal, Ctrl-C and hangup do not reach it.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;

use mvm_core::MvmHome;
use mvm_core::registry::OwnerLock;
use tokio::io::AsyncBufReadExt;

use super::{Ended, Event};
use crate::{Runtime, RuntimeError};

/// The descriptor number of the inherited owner lock in the supervisor.
pub const OWNER_FD: i32 = 3;

/// The signals a supervisor handles (as stop requests; USR1 as an egress
/// reload; ignores: HUP).
fn handled_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGUSR1);
    set
}

/// A supervisor just spawned: its process and its event stream.
pub struct Spawned {
    /// The supervisor process (not killed on drop: it outlives us).
    pub child: tokio::process::Child,
    /// Its [`Event`]s, one JSON document per line.
    pub events: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Spawned {
    /// The next event, `None` when the supervisor closed its stdout (it
    /// exited). Lines that are not events are logged and skipped.
    pub async fn next_event(&mut self) -> Result<Option<Event>, RuntimeError> {
        while let Some(line) = self.events.next_line().await? {
            match serde_json::from_str::<Event>(&line) {
                Ok(ev) => return Ok(Some(ev)),
                Err(_) => tracing::debug!("supervisor: {line}"),
            }
        }
        Ok(None)
    }
}

/// Spawn the supervisor of machine `name`, sharing `lock` with it. The
/// caller records the child as the machine's owner; drop `lock` after that.
pub fn spawn(
    rt: &Runtime,
    name: &str,
    lock: &OwnerLock,
    record_id: &str,
) -> Result<Spawned, RuntimeError> {
    use std::os::unix::process::CommandExt;
    let dir = rt.dir(name);
    let log = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.supervisor_log())?
        .into_parts()
        .0;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("__supervise")
        .arg(name)
        .env(mvm_core::env::MVM_HOME, rt.home().root())
        .env(mvm_core::env::MVM_OWNER_FD, OWNER_FD.to_string())
        .env(
            mvm_core::env::MVM_MACHINE_TAG,
            mvm_core::process::machine_tag(&dir, record_id),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let blocked = handled_signals();
    // SAFETY: the closure runs in the forked child before exec; setsid(2)
    // and sigprocmask(2) are async-signal-safe and touch no memory of the
    // parent. The mask survives exec; the supervisor unblocks the signals
    // once its handlers are installed.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_BLOCK,
                Some(&blocked),
                None,
            )
            .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    lock.pass_to(&mut cmd, OWNER_FD)?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    let mut child = cmd.spawn()?;
    drop(cmd); // its pre_exec closure holds a duplicate of the lock
    let stdout = child.stdout.take().expect("piped");
    Ok(Spawned {
        child,
        events: tokio::io::BufReader::new(stdout).lines(),
    })
}

/// The body of `mvm __supervise NAME`: install the stop handlers, adopt the
/// owner lock, run the supervisor, report events as JSON lines on stdout.
pub async fn main(home: MvmHome, name: &str) -> Result<Ended, RuntimeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Registered and never polled: SIGHUP is ignored.
    let _hup = signal(SignalKind::hangup())?;
    // Installs the handler before the signal is unblocked (its default
    // action would kill us); `supervise` listens for it.
    let _usr1 = signal(SignalKind::user_defined1())?;
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_UNBLOCK,
        Some(&handled_signals()),
        None,
    )
    .map_err(std::io::Error::from)?;

    let rt = Runtime::open(home)?;
    let fd: i32 = std::env::var(mvm_core::env::MVM_OWNER_FD)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            RuntimeError::Invalid(format!(
                "{} is not set: `mvm __supervise` is started by `mvm start`",
                mvm_core::env::MVM_OWNER_FD
            ))
        })?;
    // SAFETY: by contract with `spawn`, descriptor `fd` is the inherited
    // owner lock and nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let lock = OwnerLock::adopt(owned, &rt.dir(name).owner_lock())?;

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    super::supervise(&rt, name, lock, rx, |ev| {
        // The spawner may be gone (its stdout pipe closed): ignore.
        let mut out = std::io::stdout().lock();
        if let Ok(line) = serde_json::to_string(&ev) {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    })
    .await
}
