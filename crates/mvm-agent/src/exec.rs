//! Running one command for an `Exec` session.
//!
//! The command is spawned directly from its argv (no shell), with a default
//! environment overridden by the request, in a new session and process
//! group (`setsid`) so that `Signal`, `Cancel` and the timeout reach
//! everything it started. stdout and stderr are pipes pumped as data arrives
//! (no buffering until exit); each pump waits for the pipe to be readable,
//! then for flow-control credit, then reads at most that much. stdin is a
//! pipe fed from `Stdin` frames (credit is granted back once written), or
//! `/dev/null`. `Exit` is sent after the process was reaped and both output
//! pipes reached end of file, so it is always the session's last frame.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mvm_agent_proto::flow::{Credit, Grants};
use mvm_agent_proto::io::FrameSender;
use mvm_agent_proto::{
    DATA_CHUNK_MAX, ErrorKind, ErrorMsg, ExecRequest, ExitStatus, Frame, Message,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use crate::reaper::Reaper;

/// The environment every command starts with.
pub const DEFAULT_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("TERM", "linux"),
];

/// What the host sends toward a running command's stdin.
#[derive(Debug)]
pub enum StdinMsg {
    /// Bytes to write.
    Data(Bytes),
    /// Close stdin.
    Eof,
}

/// A spawned command, before its pumps run.
pub struct Spawned {
    /// Its pid, which is also its process group and session id.
    pub pid: Pid,
    status: oneshot::Receiver<ExitStatus>,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    stdin: Option<pipe::Sender>,
}

pub fn spawn_error(argv0: &str, e: &std::io::Error) -> ErrorMsg {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            ErrorMsg::new(ErrorKind::NotFound, format!("{argv0}: command not found"))
        }
        std::io::ErrorKind::PermissionDenied => ErrorMsg::new(
            ErrorKind::PermissionDenied,
            format!("{argv0}: permission denied"),
        ),
        _ => ErrorMsg::new(ErrorKind::Other, format!("{argv0}: cannot run: {e}")),
    }
}

/// The command of `req` (argv, environment, working directory), without
/// its stdio and session setup; also used for commands on a terminal.
pub fn command(req: &ExecRequest) -> Result<Command, ErrorMsg> {
    let Some(argv0) = req.argv.first() else {
        return Err(ErrorMsg::new(ErrorKind::InvalidRequest, "exec: empty argv"));
    };
    let cwd = req.cwd.as_deref().unwrap_or("/");
    if !std::path::Path::new(cwd).is_dir() {
        return Err(ErrorMsg::new(
            ErrorKind::InvalidRequest,
            format!("{cwd}: working directory does not exist"),
        ));
    }
    let ids = crate::user::for_request(req)?;
    let mut cmd = Command::new(argv0);
    cmd.args(&req.argv[1..]).env_clear().envs(DEFAULT_ENV);
    if let Some(ids) = &ids {
        cmd.env("HOME", &ids.home);
    }
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd);
    if let Some(ids) = &ids {
        crate::user::apply(&mut cmd, ids);
    }
    Ok(cmd)
}

/// Spawn the command of `req`.
pub fn spawn(reaper: &Reaper, req: &ExecRequest) -> Result<Spawned, ErrorMsg> {
    let mut cmd = command(req)?;
    let argv0 = &req.argv[0];
    cmd.stdin(if req.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setsid(2), which is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let (mut child, status) = reaper.spawn(&mut cmd).map_err(|e| spawn_error(argv0, &e))?;
    let pid = Pid::from_raw(child.id() as i32);
    let io_err = |what: &str, e: std::io::Error| {
        let _ = killpg(pid, Signal::SIGKILL);
        ErrorMsg::new(ErrorKind::Other, format!("{argv0}: {what} pipe: {e}"))
    };
    let take = |o: Option<OwnedFd>| o.ok_or_else(|| std::io::Error::other("missing"));
    let stdout = take(child.stdout.take().map(OwnedFd::from))
        .and_then(pipe::Receiver::from_owned_fd)
        .map_err(|e| io_err("stdout", e))?;
    let stderr = take(child.stderr.take().map(OwnedFd::from))
        .and_then(pipe::Receiver::from_owned_fd)
        .map_err(|e| io_err("stderr", e))?;
    let stdin = match child.stdin.take() {
        Some(s) => {
            Some(pipe::Sender::from_owned_fd(OwnedFd::from(s)).map_err(|e| io_err("stdin", e))?)
        }
        None => None,
    };
    Ok(Spawned {
        pid,
        status,
        stdout,
        stderr,
        stdin,
    })
}

/// Pump one output pipe into `Stdout`/`Stderr` frames within `credit`.
async fn pump(
    session: u32,
    pipe: pipe::Receiver,
    credit: Arc<Credit>,
    out: FrameSender,
    wrap: fn(Bytes) -> Message,
) {
    let mut buf = vec![0u8; DATA_CHUNK_MAX];
    loop {
        if pipe.readable().await.is_err() {
            return;
        }
        let Ok(k) = credit.take(DATA_CHUNK_MAX).await else {
            return;
        };
        match pipe.try_read(&mut buf[..k]) {
            Ok(0) => return,
            Ok(n) => {
                if n < k {
                    credit.grant((k - n) as u32);
                }
                if !out.send(Frame::new(session, wrap(Bytes::copy_from_slice(&buf[..n])))) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => credit.grant(k as u32),
            Err(_) => return,
        }
    }
}

/// Feed stdin frames into the command, granting credit as bytes are
/// written (or discarded once the command closed its stdin).
async fn feed_stdin(
    session: u32,
    mut pipe: Option<pipe::Sender>,
    mut rx: mpsc::UnboundedReceiver<StdinMsg>,
    out: FrameSender,
) {
    let mut grants = Grants::default();
    while let Some(msg) = rx.recv().await {
        match msg {
            StdinMsg::Data(b) => {
                if let Some(p) = pipe.as_mut()
                    && p.write_all(&b).await.is_err()
                {
                    pipe = None;
                }
                if let Some(n) = grants.consumed(b.len()) {
                    out.send(Frame::new(session, Message::Window(n)));
                }
            }
            StdinMsg::Eof => pipe = None,
        }
    }
}

/// Run the session to its end: pumps, stdin, timeout; then send `Exit`.
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
        mut status,
        stdout,
        stderr,
        stdin,
    } = sp;
    let stdin_task = tokio::spawn(feed_stdin(session, stdin, stdin_rx, out.clone()));
    let o = tokio::spawn(pump(
        session,
        stdout,
        credit.clone(),
        out.clone(),
        Message::Stdout,
    ));
    let e = tokio::spawn(pump(
        session,
        stderr,
        credit.clone(),
        out.clone(),
        Message::Stderr,
    ));
    // If this session is cancelled (this future dropped), stop its helpers.
    let _guard = AbortOnDrop(vec![
        stdin_task.abort_handle(),
        o.abort_handle(),
        e.abort_handle(),
    ]);
    let mut timed_out = false;
    let result = match timeout {
        None => (&mut status).await,
        Some(t) => match tokio::time::timeout(t, &mut status).await {
            Ok(r) => r,
            Err(_) => {
                timed_out = true;
                let _ = killpg(pid, Signal::SIGKILL);
                (&mut status).await
            }
        },
    };
    let _ = o.await;
    let _ = e.await;
    let mut st = result.unwrap_or_default();
    st.timed_out = timed_out;
    out.send(Frame::new(session, Message::Exit(st)));
}

/// Aborts tasks when dropped.
pub struct AbortOnDrop(pub Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Deliver `sig` to the process group `pid`. Unknown signal numbers are
/// ignored.
pub fn signal_group(pid: Pid, sig: i32) {
    if let Ok(s) = Signal::try_from(sig) {
        let _ = killpg(pid, s);
    }
}
