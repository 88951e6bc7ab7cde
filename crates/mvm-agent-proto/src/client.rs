//! The host-side client: [`AgentClient`] speaks the protocol over any byte
//! stream (the guest channel itself, or the per-VM multiplexer's socket).
//!
//! A background reader task demultiplexes incoming frames to sessions; a
//! writer task owns the write half. The handle is cheap to clone and may be
//! used from many tasks at once; each request opens its own session.
//! Flow control is automatic: data the caller receives is granted back to
//! the agent once the caller asks for the next event (it has consumed the
//! previous one), and stdin/file uploads wait for credit.
//!
//! When the connection is lost, every open session ends with
//! [`ClientError::ConnectionLost`] carrying the reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::flow::{Credit, Grants};
use crate::frame::{DATA_CHUNK_MAX, Frame, Message};
use crate::handshake::{self, HandshakeError, Negotiated, TTY_VERSION};
use crate::io::{FrameReader, FrameSender, spawn_writer};
use crate::message::{
    AgentInfo, ErrorKind, ExecRequest, ExitStatus, FileMeta, Request, Response, Role, WinSize,
};

/// Default deadline for request/response calls and for transfer progress.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failure seen by the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the Unix socket failed.
    #[error("cannot connect to agent socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting did not finish before the deadline.
    #[error("connecting to agent socket {path} timed out")]
    ConnectTimeout {
        /// The socket path.
        path: PathBuf,
    },
    /// The handshake failed.
    #[error("agent handshake failed")]
    Handshake(#[source] HandshakeError),
    /// The connection ended; every open session gets this.
    #[error("connection to the agent lost: {reason}")]
    ConnectionLost {
        /// Why (peer closed, I/O error, malformed frame, ...).
        reason: String,
    },
    /// The session already ended (e.g. writing stdin after the exit).
    #[error("the session already ended")]
    SessionEnded,
    /// The agent did not answer in time.
    #[error("agent did not answer {what} within {timeout:?}")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The agent reported an error for this session.
    #[error("agent: {message}")]
    Agent {
        /// Classification (e.g. `NotFound` → exit 127).
        kind: ErrorKind,
        /// The agent's message.
        message: String,
    },
    /// The agent answered with something that makes no sense here.
    #[error("unexpected frame kind {kind} from the agent during {what}")]
    Unexpected {
        /// The operation.
        what: &'static str,
        /// The kind byte received.
        kind: u8,
    },
    /// The agent speaks a protocol version without this feature.
    #[error(
        "the guest agent speaks protocol version {version}, but {feature} needs version {needed}: \
         rebuild the machine's image with this mvm (`mvm image build`, or pull/import it again) and recreate the machine"
    )]
    Unsupported {
        /// What was asked for.
        feature: &'static str,
        /// The negotiated version.
        version: u32,
        /// The version the feature needs.
        needed: u32,
    },
    /// Reading the local source or writing the local destination failed.
    #[error("local I/O failed during {what}")]
    LocalIo {
        /// The operation.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

enum Incoming {
    Msg(Message),
    Lost(String),
}

struct Slot {
    tx: mpsc::UnboundedSender<Incoming>,
    credit: Arc<Credit>,
}

#[derive(Default)]
struct Sessions {
    map: HashMap<u32, Slot>,
    lost: Option<String>,
}

struct Inner {
    out: FrameSender,
    sessions: Arc<Mutex<Sessions>>,
    next_id: AtomicU32,
    request_timeout: Duration,
    negotiated: Negotiated,
    reader: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A connection to a guest agent (directly or through the multiplexer).
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("peer", &self.inner.negotiated.peer)
            .field("version", &self.inner.negotiated.version)
            .finish()
    }
}

fn lock(s: &Mutex<Sessions>) -> std::sync::MutexGuard<'_, Sessions> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentClient {
    /// Handshake (as host) over `stream` before `deadline`, then start the
    /// reader and writer tasks. Must be called inside a tokio runtime.
    pub async fn handshake<S>(stream: S, deadline: Instant) -> Result<AgentClient, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (r, mut w) = tokio::io::split(stream);
        let mut reader = FrameReader::new(r);
        let ours = handshake::hello(
            Role::Host,
            concat!("mvm-agent-proto/", env!("CARGO_PKG_VERSION")),
        );
        let negotiated = handshake::initiate(&mut reader, &mut w, &ours, deadline)
            .await
            .map_err(ClientError::Handshake)?;
        let (out, _writer) = spawn_writer(w);
        let sessions = Arc::new(Mutex::new(Sessions::default()));
        let reader = tokio::spawn(read_loop(reader, sessions.clone())).abort_handle();
        Ok(AgentClient {
            inner: Arc::new(Inner {
                out,
                sessions,
                next_id: AtomicU32::new(1),
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                negotiated,
                reader,
            }),
        })
    }

    /// Connect to a Unix socket (the multiplexer's, or a test agent's) and
    /// handshake, all before `deadline`.
    pub async fn connect_unix(path: &Path, deadline: Instant) -> Result<AgentClient, ClientError> {
        let stream =
            tokio::time::timeout_at(deadline.into(), tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| ClientError::ConnectTimeout {
                    path: path.to_owned(),
                })?
                .map_err(|source| ClientError::Connect {
                    path: path.to_owned(),
                    source,
                })?;
        Self::handshake(stream, deadline).await
    }

    /// A client whose request/response calls and transfer progress use
    /// `timeout` instead of [`DEFAULT_REQUEST_TIMEOUT`]. Must be called
    /// before the handle is cloned; otherwise returns `self` unchanged.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.request_timeout = timeout;
        }
        self
    }

    /// The negotiated version and the peer's `Hello`.
    pub fn negotiated(&self) -> &Negotiated {
        &self.inner.negotiated
    }

    /// `Ok` when the negotiated version is at least `needed`, otherwise
    /// [`ClientError::Unsupported`] naming `feature` and the fix.
    pub fn require(&self, needed: u32, feature: &'static str) -> Result<(), ClientError> {
        let version = self.inner.negotiated.version;
        if version >= needed {
            Ok(())
        } else {
            Err(ClientError::Unsupported {
                feature,
                version,
                needed,
            })
        }
    }

    /// Wait until every frame queued so far was written to the stream
    /// (`false` if the connection is gone). Useful before exiting right
    /// after dropping a session, so its `Cancel` leaves.
    pub async fn flush(&self) -> bool {
        self.inner.out.flush().await
    }

    /// Whether the connection has been lost.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.sessions).lost.is_some()
    }

    fn open(&self, req: Request) -> Result<Session, ClientError> {
        let credit = Arc::new(Credit::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut s = lock(&self.inner.sessions);
            if let Some(reason) = &s.lost {
                return Err(ClientError::ConnectionLost {
                    reason: reason.clone(),
                });
            }
            let id = loop {
                let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                if id != 0 && !s.map.contains_key(&id) {
                    break id;
                }
            };
            s.map.insert(
                id,
                Slot {
                    tx,
                    credit: credit.clone(),
                },
            );
            id
        };
        let session = Session {
            client: self.clone(),
            id,
            rx,
            credit,
            finished: false,
        };
        session.send(Message::Request(req))?;
        Ok(session)
    }

    fn lost_error(&self) -> ClientError {
        ClientError::ConnectionLost {
            reason: lock(&self.inner.sessions)
                .lost
                .clone()
                .unwrap_or_else(|| "writer stopped".into()),
        }
    }

    async fn call(&self, req: Request, what: &'static str) -> Result<Response, ClientError> {
        let mut s = self.open(req)?;
        let t = self.inner.request_timeout;
        let msg = tokio::time::timeout(t, s.recv())
            .await
            .map_err(|_| ClientError::Timeout { what, timeout: t })??;
        s.finished = true;
        match msg {
            Message::Response(r) => Ok(r),
            m => Err(ClientError::Unexpected {
                what,
                kind: m.kind(),
            }),
        }
    }

    /// Round trip to the agent.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.call(Request::Ping, "ping").await? {
            Response::Pong => Ok(()),
            _ => Err(ClientError::Unexpected {
                what: "ping",
                kind: 3,
            }),
        }
    }

    /// Agent version, hostname, kernel release, uptime.
    pub async fn info(&self) -> Result<AgentInfo, ClientError> {
        match self.call(Request::Info, "info").await? {
            Response::Info(i) => Ok(i),
            _ => Err(ClientError::Unexpected {
                what: "info",
                kind: 3,
            }),
        }
    }

    /// Wait (without a deadline) until the guest's main process exits and
    /// return how it ended; the guest then powers off. Protocol 2.
    pub async fn wait_main(&self) -> Result<ExitStatus, ClientError> {
        self.require(
            crate::handshake::USER_VERSION,
            "waiting for the main process",
        )?;
        let mut s = self.open(Request::WaitMain)?;
        let msg = s.recv().await?;
        s.finished = true;
        match msg {
            Message::Response(Response::MainExited(st)) => Ok(st),
            m => Err(ClientError::Unexpected {
                what: "wait_main",
                kind: m.kind(),
            }),
        }
    }

    /// Ask the guest to power off; returns once the agent accepted.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        match self.call(Request::Shutdown, "shutdown").await? {
            Response::Done => Ok(()),
            _ => Err(ClientError::Unexpected {
                what: "shutdown",
                kind: 3,
            }),
        }
    }

    /// (v2) Make a restored clone a distinct machine (see
    /// [`crate::identity`]). Fails with [`ClientError::Unsupported`] if the
    /// agent speaks only version 1.
    pub async fn reidentify(
        &self,
        req: crate::identity::ReidentifyRequest,
    ) -> Result<crate::identity::ReidentifyReport, ClientError> {
        self.require(
            crate::identity::REIDENTIFY_MIN_VERSION,
            "reidentifying a restored clone",
        )?;
        match self.call(Request::Reidentify(req), "reidentify").await? {
            Response::Reidentified(r) => Ok(r),
            _ => Err(ClientError::Unexpected {
                what: "reidentify",
                kind: 3,
            }),
        }
    }

    /// Start a command. Dropping the returned session before its exit
    /// cancels it (the agent SIGKILLs its process group). With `req.tty`
    /// the agent must speak version 2 ([`ClientError::Unsupported`]
    /// otherwise, and nothing is sent).
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecSession, ClientError> {
        if req.tty.is_some() {
            self.require(TTY_VERSION, "a terminal (exec -t)")?;
        }
        if req.user.is_some() {
            self.require(
                crate::handshake::USER_VERSION,
                "running a command as another user",
            )?;
        }
        let s = self.open(Request::Exec(req))?;
        Ok(ExecSession {
            stdin: ExecStdin {
                client: self.clone(),
                id: s.id,
                credit: s.credit.clone(),
            },
            s,
            grants: Grants::default(),
            unconsumed: 0,
        })
    }

    /// Create/truncate `guest_path` with `mode` and fill it from `src`.
    /// Returns the number of bytes written.
    pub async fn write_file<R>(
        &self,
        guest_path: &str,
        mode: u32,
        mut src: R,
    ) -> Result<u64, ClientError>
    where
        R: AsyncRead + Unpin,
    {
        let what = "write_file";
        let t = self.inner.request_timeout;
        let mut s = self.open(Request::WriteFile {
            path: guest_path.to_owned(),
            mode,
        })?;
        let mut buf = vec![0u8; DATA_CHUNK_MAX];
        let mut total = 0u64;
        loop {
            let n = src
                .read(&mut buf)
                .await
                .map_err(|source| ClientError::LocalIo { what, source })?;
            if n == 0 {
                break;
            }
            let mut off = 0;
            while off < n {
                let k = match tokio::time::timeout(t, s.credit.take(n - off)).await {
                    Err(_) => return Err(ClientError::Timeout { what, timeout: t }),
                    Ok(Ok(k)) => k,
                    // Credit closes when the agent reported an error or the
                    // connection died: surface that.
                    Ok(Err(_)) => return Err(s.final_error(what).await),
                };
                s.send(Message::Data(Bytes::copy_from_slice(&buf[off..off + k])))?;
                off += k;
            }
            total += n as u64;
        }
        s.send(Message::DataEnd)?;
        let msg = tokio::time::timeout(t, s.recv())
            .await
            .map_err(|_| ClientError::Timeout { what, timeout: t })??;
        s.finished = true;
        match msg {
            Message::Response(Response::Done) => Ok(total),
            m => Err(ClientError::Unexpected {
                what,
                kind: m.kind(),
            }),
        }
    }

    /// Copy `guest_path` into `dst`; returns its metadata.
    pub async fn read_file<W>(&self, guest_path: &str, mut dst: W) -> Result<FileMeta, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        let what = "read_file";
        let t = self.inner.request_timeout;
        let mut s = self.open(Request::ReadFile {
            path: guest_path.to_owned(),
        })?;
        let mut grants = Grants::default();
        let meta = match tokio::time::timeout(t, s.recv())
            .await
            .map_err(|_| ClientError::Timeout { what, timeout: t })??
        {
            Message::Response(Response::FileMeta(m)) => m,
            m => {
                s.finished = true;
                return Err(ClientError::Unexpected {
                    what,
                    kind: m.kind(),
                });
            }
        };
        loop {
            match tokio::time::timeout(t, s.recv())
                .await
                .map_err(|_| ClientError::Timeout { what, timeout: t })??
            {
                Message::Data(b) => {
                    dst.write_all(&b)
                        .await
                        .map_err(|source| ClientError::LocalIo { what, source })?;
                    if let Some(n) = grants.consumed(b.len()) {
                        s.send(Message::Window(n))?;
                    }
                }
                Message::DataEnd => {
                    s.finished = true;
                    dst.flush()
                        .await
                        .map_err(|source| ClientError::LocalIo { what, source })?;
                    return Ok(meta);
                }
                m => {
                    return Err(ClientError::Unexpected {
                        what,
                        kind: m.kind(),
                    });
                }
            }
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    sessions: Arc<Mutex<Sessions>>,
) {
    let reason = loop {
        match reader.read_frame().await {
            Ok(Some(Frame {
                session: 0,
                message,
            })) => {
                if let Message::Error(e) = message {
                    break format!("agent closed the connection: {}", e.message);
                }
            }
            Ok(Some(Frame { session, message })) => {
                let s = lock(&sessions);
                let Some(slot) = s.map.get(&session) else {
                    continue;
                };
                match message {
                    Message::Window(n) => slot.credit.grant(n),
                    m => {
                        if matches!(m, Message::Error(_)) {
                            slot.credit.close();
                        }
                        let _ = slot.tx.send(Incoming::Msg(m));
                    }
                }
            }
            Ok(None) => break "the agent closed the stream".to_owned(),
            Err(e) => break crate::error_chain(&e),
        }
    };
    let mut s = lock(&sessions);
    s.lost = Some(reason.clone());
    for (_, slot) in s.map.drain() {
        slot.credit.close();
        let _ = slot.tx.send(Incoming::Lost(reason.clone()));
    }
}

struct Session {
    client: AgentClient,
    id: u32,
    rx: mpsc::UnboundedReceiver<Incoming>,
    credit: Arc<Credit>,
    finished: bool,
}

impl Session {
    fn send(&self, m: Message) -> Result<(), ClientError> {
        if self.client.inner.out.send(Frame::new(self.id, m)) {
            Ok(())
        } else {
            Err(self.client.lost_error())
        }
    }

    /// The next message; agent errors and connection loss become `Err`.
    async fn recv(&mut self) -> Result<Message, ClientError> {
        match self.rx.recv().await {
            Some(Incoming::Msg(Message::Error(e))) => {
                self.finished = true;
                Err(ClientError::Agent {
                    kind: e.kind,
                    message: e.message,
                })
            }
            Some(Incoming::Msg(m)) => Ok(m),
            Some(Incoming::Lost(reason)) => {
                self.finished = true;
                Err(ClientError::ConnectionLost { reason })
            }
            None => {
                self.finished = true;
                Err(self.client.lost_error())
            }
        }
    }

    /// After credit closed: the error that closed it.
    async fn final_error(&mut self, what: &'static str) -> ClientError {
        loop {
            match self.recv().await {
                Err(e) => return e,
                Ok(m) if matches!(m, Message::Response(_)) => {
                    return ClientError::Unexpected {
                        what,
                        kind: m.kind(),
                    };
                }
                Ok(_) => {}
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.credit.close();
        let mut s = lock(&self.client.inner.sessions);
        s.map.remove(&self.id);
        drop(s);
        if !self.finished {
            let _ = self
                .client
                .inner
                .out
                .send(Frame::new(self.id, Message::Cancel));
        }
    }
}

/// What a running command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes on the command's stdout.
    Stdout(Bytes),
    /// Bytes on the command's stderr.
    Stderr(Bytes),
    /// The command ended; no events follow.
    Exit(ExitStatus),
}

/// A running command.
pub struct ExecSession {
    s: Session,
    stdin: ExecStdin,
    grants: Grants,
    unconsumed: usize,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("id", &self.s.id)
            .finish()
    }
}

impl ExecSession {
    /// The session id on this connection.
    pub fn id(&self) -> u32 {
        self.s.id
    }

    /// The next output or the exit; `Ok(None)` after the exit. Calling this
    /// again means the previous event was consumed: its bytes are granted
    /// back to the agent. An agent error (e.g. command not found, kind
    /// `NotFound`) or connection loss is an `Err`.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        if self.unconsumed > 0
            && let Some(n) = self.grants.consumed(std::mem::take(&mut self.unconsumed))
        {
            // If the connection is gone, recv() below reports it.
            let _ = self.s.send(Message::Window(n));
        }
        if self.s.finished {
            return Ok(None);
        }
        loop {
            match self.s.recv().await? {
                Message::Stdout(b) => {
                    self.unconsumed = b.len();
                    return Ok(Some(ExecEvent::Stdout(b)));
                }
                Message::Stderr(b) => {
                    self.unconsumed = b.len();
                    return Ok(Some(ExecEvent::Stderr(b)));
                }
                Message::Exit(st) => {
                    self.s.finished = true;
                    self.s.credit.close();
                    return Ok(Some(ExecEvent::Exit(st)));
                }
                _ => {}
            }
        }
    }

    /// A handle to feed stdin from another task.
    pub fn stdin(&self) -> ExecStdin {
        self.stdin.clone()
    }

    /// Send bytes to the command's stdin (waits for credit).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        self.stdin.write(data).await
    }

    /// Close the command's stdin.
    pub fn close_stdin(&self) -> Result<(), ClientError> {
        self.stdin.close()
    }

    /// Deliver `signal` to the command's process group (on a terminal: to
    /// its foreground process group).
    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.stdin.signal(signal)
    }

    /// Tell the agent the terminal's new size (a session started with
    /// `tty`; needs protocol version 2).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.stdin.resize(WinSize { rows, cols })
    }
}

/// Cloneable handle to a command's stdin and signals.
#[derive(Clone)]
pub struct ExecStdin {
    client: AgentClient,
    id: u32,
    credit: Arc<Credit>,
}

impl std::fmt::Debug for ExecStdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecStdin").field("id", &self.id).finish()
    }
}

impl ExecStdin {
    fn send(&self, m: Message) -> Result<(), ClientError> {
        if self.client.inner.out.send(Frame::new(self.id, m)) {
            Ok(())
        } else {
            Err(self.client.lost_error())
        }
    }

    /// Send bytes to stdin, waiting for credit. Fails once the session ended.
    pub async fn write(&self, mut data: &[u8]) -> Result<(), ClientError> {
        while !data.is_empty() {
            let k = self
                .credit
                .take(data.len().min(DATA_CHUNK_MAX))
                .await
                .map_err(|_| ClientError::SessionEnded)?;
            self.send(Message::Stdin(Bytes::copy_from_slice(&data[..k])))?;
            data = &data[k..];
        }
        Ok(())
    }

    /// Close stdin.
    pub fn close(&self) -> Result<(), ClientError> {
        self.send(Message::StdinEof)
    }

    /// Deliver a signal to the command's process group (on a terminal: to
    /// its foreground process group).
    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.send(Message::Signal(signal))
    }

    /// Tell the agent the terminal's new size (needs protocol version 2).
    pub fn resize(&self, size: WinSize) -> Result<(), ClientError> {
        self.client.require(TTY_VERSION, "resizing a terminal")?;
        self.send(Message::Resize(size))
    }
}
