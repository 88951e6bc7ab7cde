//! Commands on a pseudo-terminal (`ExecRequest::tty`, protocol version 2).
//!
//! `openpty` (nix) gives a master/slave pair of the requested size. The
//! child gets the slave as stdin, stdout and stderr, then, between fork and
//! exec, calls `setsid()` and `TIOCSCTTY` (rustix) on it: the command is the
//! leader of a new session and the terminal's controlling process, so a shell
//! run this way has job control (`sleep 100 &`, `fg`, Ctrl-Z), and Ctrl-C,
//! Ctrl-Z and Ctrl-\ — plain bytes in `Stdin` — become SIGINT, SIGTSTP and
//! SIGQUIT for the terminal's foreground process group through the kernel's
//! line discipline, exactly as on a console.
//!
//! The agent keeps only the master (close-on-exec, non-blocking, on the
//! tokio reactor):
//! - output: one stream, read as it comes within the host's credit and sent
//!   as `Stdout`; a read fails with `EIO` once no process holds the slave;
//! - input: `Stdin` frames are written to the master, credit is granted back
//!   once written; `StdinEof` is ignored (Ctrl-D is the byte 0x04);
//! - `Resize` is `TIOCSWINSZ` on the master (the kernel sends SIGWINCH to the
//!   foreground job); `Signal` goes to the foreground process group
//!   (`TIOCGPGRP` on the master), falling back to the command's own group.
//!
//! ## End of a session
//!
//! A terminal session is over when its leader (the command) exits, when the
//! host cancels it, when its timeout fires or when the stream to the host is
//! lost. Then every process still in the session — background jobs, stopped
//! jobs, anything that kept the terminal open — is killed (SIGKILL, found by
//! its session id in `/proc/<pid>/stat`), the output still buffered in the
//! terminal is drained (bounded by [`DRAIN_TIMEOUT`]), and `Exit` carries the
//! leader's own status. No process of the session is left in the guest
//! (a process that called `setsid` itself has left the session and is not
//! touched, as with a real terminal hangup). After the leader was reaped its
//! pid names the session only until the pid is reused; Linux allocates pids
//! sequentially, so that needs the whole pid space to wrap first.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvm_agent_proto::flow::{Credit, Grants};
use mvm_agent_proto::io::FrameSender;
use mvm_agent_proto::{
    DATA_CHUNK_MAX, ErrorKind, ErrorMsg, ExecRequest, ExitStatus, Frame, Message, WinSize,
};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use crate::exec::{self, AbortOnDrop, StdinMsg};
use crate::reaper::Reaper;

/// How long the output left in the terminal may take to drain once the
/// session is over.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long killing the processes left in a session may take.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// The master side of a session's terminal.
pub struct Master {
    fd: AsyncFd<OwnedFd>,
}

impl Master {
    /// Set the terminal's size; the foreground job gets SIGWINCH.
    pub fn resize(&self, size: WinSize) {
        let _ = rustix::termios::tcsetwinsize(self.fd.get_ref(), winsize(size));
    }

    /// The terminal's foreground process group, if it has one.
    pub fn foreground_group(&self) -> Option<Pid> {
        rustix::termios::tcgetpgrp(self.fd.get_ref())
            .ok()
            .map(|p| Pid::from_raw(p.as_raw_nonzero().get()))
    }

    /// Deliver `sig` to the foreground process group, or to `leader`'s
    /// group when the terminal has none. Unknown signal numbers are ignored.
    pub fn signal(&self, leader: Pid, sig: i32) {
        let Ok(s) = Signal::try_from(sig) else { return };
        let group = self.foreground_group().unwrap_or(leader);
        let _ = killpg(group, s);
    }
}

fn winsize(size: WinSize) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A command started on a new terminal, before its pumps run.
pub struct Spawned {
    /// The command's pid: also its process group and session id.
    pub pid: Pid,
    /// The terminal's master side.
    pub master: Arc<Master>,
    status: oneshot::Receiver<ExitStatus>,
}

fn cloexec_nonblocking(fd: &OwnedFd, nonblocking: bool) -> io::Result<()> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    use rustix::io::{FdFlags, fcntl_setfd};
    fcntl_setfd(fd, FdFlags::CLOEXEC)?;
    if nonblocking {
        fcntl_setfl(fd, fcntl_getfl(fd)? | OFlags::NONBLOCK)?;
    }
    Ok(())
}

/// Spawn the command of `req` on a new terminal of `size`.
pub fn spawn(reaper: &Reaper, req: &ExecRequest, size: WinSize) -> Result<Spawned, ErrorMsg> {
    let mut cmd = exec::command(req)?;
    let argv0 = &req.argv[0];
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ErrorMsg::new(ErrorKind::Other, format!("{argv0}: {what}: {e}"))
    };
    let ws = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None)
        .map_err(|e| fail("cannot open a pseudo-terminal", &e))?;
    cloexec_nonblocking(&pty.master, true).map_err(|e| fail("pseudo-terminal setup", &e))?;
    cloexec_nonblocking(&pty.slave, false).map_err(|e| fail("pseudo-terminal setup", &e))?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| fail("pseudo-terminal setup", &e))
    };
    cmd.stdin(Stdio::from(dup(&pty.slave)?))
        .stdout(Stdio::from(dup(&pty.slave)?))
        .stderr(Stdio::from(pty.slave));
    // SAFETY: the closure runs in the forked child before exec; it only
    // makes system calls that are async-signal-safe (sigaction(2),
    // setsid(2), ioctl(2)) and touches no memory. fd 0 is the slave (stdio
    // is set up before the closure runs) and stays open for the whole call.
    unsafe {
        cmd.pre_exec(|| {
            // Job control needs the default actions: a SIGINT or SIGTSTP
            // ignored by whoever started the agent would otherwise be
            // ignored by every command on the terminal (ignored dispositions
            // survive exec).
            for sig in Signal::iterator() {
                if !matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
                    let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl);
                }
            }
            nix::unistd::setsid().map_err(io::Error::from)?;
            let stdin = BorrowedFd::borrow_raw(0);
            rustix::process::ioctl_tiocsctty(stdin)?;
            Ok(())
        });
    }
    let spawned = reaper.spawn(&mut cmd);
    // Our copies of the slave go now: the master reads EIO once the
    // session's processes have closed theirs.
    drop(cmd);
    let (child, status) = spawned.map_err(|e| exec::spawn_error(argv0, &e))?;
    let pid = Pid::from_raw(child.id() as i32);
    // SAFETY: the AsyncFd owns the descriptor until it is dropped, so it
    // stays open and unchanged while registered.
    let master = unsafe {
        AsyncFd::register_with_interest(pty.master, Interest::READABLE | Interest::WRITABLE)
    }
    .map_err(|e| {
        let _ = killpg(pid, Signal::SIGKILL);
        fail("pseudo-terminal setup", &e)
    })?;
    Ok(Spawned {
        pid,
        master: Arc::new(Master { fd: master }),
        status,
    })
}

/// Pump the terminal's output into `Stdout` frames within `credit`, until
/// no process holds the terminal any more.
async fn pump(session: u32, master: Arc<Master>, credit: Arc<Credit>, out: FrameSender) {
    let mut buf = vec![0u8; DATA_CHUNK_MAX];
    loop {
        let Ok(mut guard) = master.fd.readable().await else {
            return;
        };
        let Ok(k) = credit.take(DATA_CHUNK_MAX).await else {
            return;
        };
        let r = guard
            .try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf[..k]).map_err(io::Error::from));
        match r {
            Ok(Ok(0)) | Ok(Err(_)) => return, // EIO: the terminal is closed
            Ok(Ok(n)) => {
                if n < k {
                    credit.grant((k - n) as u32);
                }
                let data = bytes::Bytes::copy_from_slice(&buf[..n]);
                if !out.send(Frame::new(session, Message::Stdout(data))) {
                    return;
                }
            }
            Err(_would_block) => credit.grant(k as u32),
        }
    }
}

/// Write everything to the master, waiting while its input queue is full.
async fn write_all(master: &Master, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.fd.writable().await?;
        match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// Type `Stdin` frames into the terminal, granting credit as they are
/// written (or dropped, once the terminal is gone).
async fn feed(
    session: u32,
    master: Arc<Master>,
    mut rx: mpsc::UnboundedReceiver<StdinMsg>,
    out: FrameSender,
) {
    let mut grants = Grants::default();
    let mut open = true;
    while let Some(msg) = rx.recv().await {
        match msg {
            StdinMsg::Data(b) => {
                if open && write_all(&master, &b).await.is_err() {
                    open = false;
                }
                if let Some(n) = grants.consumed(b.len()) {
                    out.send(Frame::new(session, Message::Window(n)));
                }
            }
            // On a terminal, end of input is a keystroke (Ctrl-D), not the
            // end of the stream: closing the master would hang the session up.
            StdinMsg::Eof => {}
        }
    }
}

/// Run the session to its end (see the module docs), then send `Exit`.
pub async fn drive(
    session: u32,
    sp: Spawned,
    timeout: Option<Duration>,
    credit: Arc<Credit>,
    stdin_rx: mpsc::UnboundedReceiver<StdinMsg>,
    out: FrameSender,
) {
    let Spawned {
        pid,
        master,
        mut status,
    } = sp;
    let feeder = tokio::spawn(feed(session, master.clone(), stdin_rx, out.clone()));
    let mut output = tokio::spawn(pump(session, master.clone(), credit, out.clone()));
    // If this session is cancelled (this future dropped), stop the helpers.
    let _guard = AbortOnDrop(vec![feeder.abort_handle(), output.abort_handle()]);
    let mut timed_out = false;
    let result = match timeout {
        None => (&mut status).await,
        Some(t) => match tokio::time::timeout(t, &mut status).await {
            Ok(r) => r,
            Err(_) => {
                timed_out = true;
                kill_session(pid).await;
                (&mut status).await
            }
        },
    };
    // The leader is gone: the session is over.
    kill_session(pid).await;
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut output)
        .await
        .is_err()
    {
        output.abort();
    }
    feeder.abort();
    let mut st = result.unwrap_or_default();
    st.timed_out = timed_out;
    out.send(Frame::new(session, Message::Exit(st)));
}

/// The session id and state of `pid`, from `/proc/<pid>/stat`.
fn session_of(pid: i32) -> Option<(i32, char)> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain anything, so parse after its last ')':
    // state ppid pgrp session ...
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let _pgrp = f.next()?;
    let sid = f.next()?.parse().ok()?;
    Some((sid, state))
}

/// SIGKILL every live process of session `sid` once; returns how many.
pub fn kill_session_once(sid: Pid) -> usize {
    let me = std::process::id() as i32;
    let Ok(dir) = fs_err::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Some((s, state)) = session_of(pid)
            && s == sid.as_raw()
            && state != 'Z'
            && state != 'X'
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            n += 1;
        }
    }
    n
}

/// Kill every process left in session `sid`, repeating until none is
/// alive (a process forking while we scan is caught by the next pass), for
/// at most [`KILL_TIMEOUT`].
pub async fn kill_session(sid: Pid) {
    let end = Instant::now() + KILL_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    while kill_session_once(sid) > 0 && Instant::now() < end {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// For a cancelled session (sync context): one pass now, the rest in the
/// background.
pub fn hang_up(sid: Pid) {
    if kill_session_once(sid) > 0 {
        tokio::spawn(kill_session(sid));
    }
}
