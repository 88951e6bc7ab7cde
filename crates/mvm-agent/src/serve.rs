//! Serving the protocol on one byte stream.
//!
//! Each stream (a virtio-serial port, each accepted vsock or Unix
//! connection, stdio) gets its own handshake (the agent responds) and its
//! own session table. One writer task owns the write half; every session
//! task queues frames to it. The reader loop dispatches frames:
//!
//! - a `Request` on a free session id starts a session task;
//! - `Stdin`/`StdinEof`/`Data`/`DataEnd` go to the session's queue (bounded
//!   by the host's credit);
//! - `Window` adds credit to the session's output;
//! - `Signal` goes to the command's process group; `Cancel` kills the group
//!   (SIGKILL), stops the session task and forgets the session;
//! - on a terminal session (see [`crate::pty`]) `Resize` sets the size,
//!   `Signal` goes to the foreground group and `Cancel` kills the session;
//! - a frame that cannot be decoded (a newer host's request) is answered
//!   with `Error(InvalidRequest, "unknown request ...")` on its session,
//!   which is cancelled if open; the connection goes on.
//!
//! When the stream ends, every session is cancelled the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mvm_agent_proto::flow::Credit;
use mvm_agent_proto::handshake::{self, HandshakeError};
use mvm_agent_proto::io::{FrameReader, FrameSender, StreamError, spawn_writer};
use mvm_agent_proto::{
    AgentInfo, ErrorKind, ErrorMsg, Frame, Hello, Message, Request, Response, Role,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::exec::{self, StdinMsg};
use crate::files::{self, FileMsg};
use crate::pty;
use crate::reaper::Reaper;

/// How long a peer has to send its `Hello` after the stream opened.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the writer may take to drain when a stream ends.
pub const WRITER_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared state of the agent.
#[derive(Clone)]
pub struct Ctx {
    /// The reaper every spawn goes through.
    pub reaper: Reaper,
    /// Whether the agent is PID 1 (shutdown powers the machine off).
    pub pid1: bool,
}

/// Why serving a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The handshake failed.
    #[error("handshake failed")]
    Handshake(#[source] HandshakeError),
    /// The stream failed.
    #[error("stream failed")]
    Stream(#[source] StreamError),
}

enum Ctl {
    Exec {
        pid: Pid,
        credit: Arc<Credit>,
        stdin: mpsc::UnboundedSender<StdinMsg>,
        task: AbortHandle,
        /// The terminal of a `tty` session.
        pty: Option<Arc<pty::Master>>,
    },
    WriteFile {
        data: mpsc::UnboundedSender<FileMsg>,
        task: AbortHandle,
    },
    ReadFile {
        credit: Arc<Credit>,
        task: AbortHandle,
    },
    WaitMain {
        task: AbortHandle,
    },
}

impl Ctl {
    fn cancel(self) {
        match self {
            Ctl::Exec {
                pid,
                credit,
                task,
                pty,
                ..
            } => {
                if pty.is_some() {
                    pty::hang_up(pid);
                } else {
                    exec::signal_group(pid, Signal::SIGKILL as i32);
                }
                credit.close();
                task.abort();
            }
            Ctl::WriteFile { task, .. } => task.abort(),
            Ctl::ReadFile { credit, task } => {
                credit.close();
                task.abort();
            }
            Ctl::WaitMain { task } => task.abort(),
        }
    }
}

type Table = Arc<Mutex<HashMap<u32, Ctl>>>;

fn lock(t: &Table) -> std::sync::MutexGuard<'_, HashMap<u32, Ctl>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serve one stream until it ends. Returns `Ok` on a clean end of stream.
pub async fn serve_stream<S>(stream: S, ctx: Ctx) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let ours = handshake::hello(
        Role::Agent,
        concat!("mvm-agent/", env!("CARGO_PKG_VERSION")),
    );
    handshake::respond(
        &mut reader,
        &mut w,
        &ours,
        Instant::now() + HANDSHAKE_TIMEOUT,
    )
    .await
    .map_err(ServeError::Handshake)?;
    let (out, mut writer) = spawn_writer(w);
    let table: Table = Arc::default();
    let result = loop {
        match reader.read_frame().await {
            Ok(Some(Frame {
                session: 0,
                message: Message::Hello(peer),
            })) => rehandshake(&table, &out, &ours, peer).await,
            Ok(Some(f)) => dispatch(&ctx, &table, &out, f).await,
            Ok(None) => break Ok(()),
            Err(e) if matches!(e.undecodable(), Some((sid, _)) if sid != 0) => {
                let Some((sid, kind)) = e.undecodable() else {
                    continue;
                };
                let open = lock(&table).remove(&sid);
                if let Some(c) = open {
                    c.cancel();
                }
                out.send(Frame::new(
                    sid,
                    Message::Error(ErrorMsg::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "unknown request or frame (kind {kind}) on session {sid}: {}; \
                             this agent is mvm-agent {} speaking protocol {}..={}",
                            mvm_agent_proto::error_chain(&e),
                            env!("CARGO_PKG_VERSION"),
                            mvm_agent_proto::MIN_PROTOCOL_VERSION,
                            mvm_agent_proto::PROTOCOL_VERSION,
                        ),
                    )),
                ));
            }
            Err(e) => {
                // Tell the host why, then close.
                out.send(Frame::new(
                    0,
                    Message::Error(ErrorMsg::new(
                        ErrorKind::InvalidRequest,
                        mvm_agent_proto::error_chain(&e),
                    )),
                ));
                out.flush().await;
                break Err(ServeError::Stream(e));
            }
        }
    };
    let sessions: Vec<Ctl> = lock(&table).drain().map(|(_, c)| c).collect();
    for c in sessions {
        c.cancel();
    }
    // Let the writer drain what is queued, then stop it, so that nothing of
    // this connection is written after the host reconnects (virtio-serial
    // reuses the same port for the next connection).
    drop(out);
    if tokio::time::timeout(WRITER_DRAIN_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    result
}

/// A `Hello` after the handshake: the host end was replaced without the
/// guest seeing a disconnect (a VM restored from a snapshot resumes inside
/// the template's connection). Forget the old host's sessions, answer with
/// our `Hello`, and serve the new host on the same stream.
async fn rehandshake(table: &Table, out: &FrameSender, ours: &Hello, peer: Hello) {
    let sessions: Vec<Ctl> = lock(table).drain().map(|(_, c)| c).collect();
    let n = sessions.len();
    for c in sessions {
        c.cancel();
    }
    match handshake::negotiate(ours, &peer) {
        Ok(v) => {
            crate::log!(
                "new host {:?} on the same stream (protocol {v}); {n} old sessions cancelled",
                peer.software
            );
            out.send(Frame::new(0, Message::Hello(ours.clone())));
        }
        Err(e) => {
            crate::log!("new host refused: {}", e.message);
            out.send(Frame::new(0, Message::Hello(ours.clone())));
            out.send(Frame::new(0, Message::Error(e)));
        }
    }
    out.flush().await;
}

async fn dispatch(ctx: &Ctx, table: &Table, out: &FrameSender, f: Frame) {
    let sid = f.session;
    if sid == 0 {
        return; // nothing but the handshake lives on session 0
    }
    match f.message {
        Message::Request(req) => {
            if lock(table).contains_key(&sid) {
                out.send(Frame::new(
                    sid,
                    Message::Error(ErrorMsg::new(
                        ErrorKind::InvalidRequest,
                        format!("session {sid} is already open"),
                    )),
                ));
                return;
            }
            start(ctx, table, out, sid, req).await;
        }
        Message::Window(n) => {
            if let Some(Ctl::Exec { credit, .. } | Ctl::ReadFile { credit, .. }) =
                lock(table).get(&sid)
            {
                credit.grant(n);
            }
        }
        Message::Stdin(b) => {
            if let Some(Ctl::Exec { stdin, .. }) = lock(table).get(&sid) {
                let _ = stdin.send(StdinMsg::Data(b));
            }
        }
        Message::StdinEof => {
            if let Some(Ctl::Exec { stdin, .. }) = lock(table).get(&sid) {
                let _ = stdin.send(StdinMsg::Eof);
            }
        }
        Message::Signal(sig) => match lock(table).get(&sid) {
            Some(Ctl::Exec {
                pid, pty: Some(m), ..
            }) => m.signal(*pid, sig),
            Some(Ctl::Exec { pid, .. }) => exec::signal_group(*pid, sig),
            _ => {}
        },
        Message::Resize(size) => {
            if let Some(Ctl::Exec { pty: Some(m), .. }) = lock(table).get(&sid) {
                m.resize(size);
            }
        }
        Message::Data(b) => {
            if let Some(Ctl::WriteFile { data, .. }) = lock(table).get(&sid) {
                let _ = data.send(FileMsg::Data(b));
            }
        }
        Message::DataEnd => {
            if let Some(Ctl::WriteFile { data, .. }) = lock(table).get(&sid) {
                let _ = data.send(FileMsg::End);
            }
        }
        Message::Cancel => {
            let c = lock(table).remove(&sid);
            if let Some(c) = c {
                c.cancel();
            }
        }
        // Frames only the agent sends, or errors from the host: ignore.
        _ => {}
    }
}

/// Spawn `fut` as the task of session `sid`; it removes itself when done.
fn session_task(
    table: &Table,
    sid: u32,
    fut: impl std::future::Future<Output = ()> + Send + 'static,
) -> AbortHandle {
    let t = table.clone();
    tokio::spawn(async move {
        fut.await;
        lock(&t).remove(&sid);
    })
    .abort_handle()
}

async fn start(ctx: &Ctx, table: &Table, out: &FrameSender, sid: u32, req: Request) {
    let reply = |m: Message| {
        out.send(Frame::new(sid, m));
    };
    match req {
        Request::Ping => reply(Message::Response(Response::Pong)),
        Request::Info => reply(Message::Response(Response::Info(info()))),
        Request::Shutdown => {
            reply(Message::Response(Response::Done));
            out.flush().await;
            crate::log!("shutdown requested by the host");
            crate::shutdown::power_off(ctx.pid1).await;
        }
        Request::Exec(req) if req.tty.is_some() => {
            let size = req.tty.unwrap_or_default();
            let sp = match pty::spawn(&ctx.reaper, &req, size) {
                Ok(sp) => sp,
                Err(e) => return reply(Message::Error(e)),
            };
            let (pid, master) = (sp.pid, sp.master.clone());
            let credit = Arc::new(Credit::default());
            let (stdin, stdin_rx) = mpsc::unbounded_channel();
            // As below: the table lock is held across spawn + insert.
            let mut t = lock(table);
            let task = session_task(
                table,
                sid,
                pty::drive(
                    sid,
                    sp,
                    req.timeout_ms.map(Duration::from_millis),
                    credit.clone(),
                    stdin_rx,
                    out.clone(),
                ),
            );
            t.insert(
                sid,
                Ctl::Exec {
                    pid,
                    credit,
                    stdin,
                    task,
                    pty: Some(master),
                },
            );
        }
        Request::Unknown(name) => reply(Message::Error(ErrorMsg::new(
            ErrorKind::InvalidRequest,
            format!(
                "unknown request {name:?} (or one this agent cannot parse): mvm-agent {} speaks protocol versions {}..={} (rebuild the image to update its agent)",
                env!("CARGO_PKG_VERSION"),
                mvm_agent_proto::MIN_PROTOCOL_VERSION,
                mvm_agent_proto::PROTOCOL_VERSION
            ),
        ))),
        Request::Reidentify(req) => {
            // On this thread, not the blocking pool: it takes milliseconds,
            // comes before any other session of a just-restored guest, and
            // a new thread there costs more than the work (every code path
            // is translated again under TCG).
            let r = crate::identity::Target::current(ctx.pid1)
                .and_then(|t| crate::identity::reidentify(&req, &t));
            match r {
                Ok(report) => reply(Message::Response(Response::Reidentified(report))),
                Err(e) => {
                    crate::log!("reidentify failed: {e}");
                    reply(Message::Error(ErrorMsg::new(
                        ErrorKind::Other,
                        format!("reidentify: {e}"),
                    )))
                }
            }
        }
        Request::Exec(req) => {
            let sp = match exec::spawn(&ctx.reaper, &req) {
                Ok(sp) => sp,
                Err(e) => return reply(Message::Error(e)),
            };
            let pid = sp.pid;
            let credit = Arc::new(Credit::default());
            let (stdin, stdin_rx) = mpsc::unbounded_channel();
            // Hold the table lock across spawn + insert so the task cannot
            // remove its entry before it exists.
            let mut t = lock(table);
            let task = session_task(
                table,
                sid,
                exec::drive(
                    sid,
                    sp,
                    req.timeout_ms.map(Duration::from_millis),
                    credit.clone(),
                    stdin_rx,
                    out.clone(),
                ),
            );
            t.insert(
                sid,
                Ctl::Exec {
                    pid,
                    credit,
                    stdin,
                    task,
                    pty: None,
                },
            );
        }
        Request::WriteFile { path, mode } => {
            let (data, rx) = mpsc::unbounded_channel();
            let mut t = lock(table);
            let task = session_task(
                table,
                sid,
                files::write_file(sid, path, mode, rx, out.clone()),
            );
            t.insert(sid, Ctl::WriteFile { data, task });
        }
        Request::WaitMain => {
            let mut t = lock(table);
            let task = session_task(
                table,
                sid,
                crate::main_process::wait(sid, out.clone(), ctx.pid1),
            );
            t.insert(sid, Ctl::WaitMain { task });
        }
        Request::ReadFile { path } => {
            let credit = Arc::new(Credit::default());
            let mut t = lock(table);
            let task = session_task(
                table,
                sid,
                files::read_file(sid, path, credit.clone(), out.clone()),
            );
            t.insert(sid, Ctl::ReadFile { credit, task });
        }
    }
}

fn read_trimmed(path: &str) -> String {
    fs_err::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn info() -> AgentInfo {
    let uptime_ms = read_trimmed("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0);
    AgentInfo {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        kernel_release: read_trimmed("/proc/sys/kernel/osrelease"),
        uptime_ms,
    }
}
