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
//!   (SIGKILL), stops the session task and forgets the session.
//!
//! When the stream ends, every session is cancelled the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mvm_agent_proto::flow::Credit;
use mvm_agent_proto::handshake::{self, HandshakeError};
use mvm_agent_proto::io::{FrameReader, FrameSender, StreamError, spawn_writer};
use mvm_agent_proto::{AgentInfo, ErrorKind, ErrorMsg, Frame, Message, Request, Response, Role};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::exec::{self, StdinMsg};
use crate::files::{self, FileMsg};
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
                pid, credit, task, ..
            } => {
                exec::signal_group(pid, Signal::SIGKILL as i32);
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
            Ok(Some(f)) => dispatch(&ctx, &table, &out, f).await,
            Ok(None) => break Ok(()),
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
        Message::Signal(sig) => {
            if let Some(Ctl::Exec { pid, .. }) = lock(table).get(&sid) {
                exec::signal_group(*pid, sig);
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
