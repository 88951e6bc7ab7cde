//! A small typed client for the QEMU Machine Protocol (QMP).
//!
//! # Protocol
//!
//! QMP is newline-delimited JSON over a stream socket (here a Unix socket
//! created by `-qmp unix:<path>,server=on,wait=off`):
//!
//! 1. on connect the server sends a greeting,
//!    `{"QMP": {"version": {...}, "capabilities": [...]}}`;
//! 2. the client must leave "capabilities negotiation" mode with
//!    `{"execute": "qmp_capabilities"}` before any other command;
//! 3. each command `{"execute": NAME, "arguments": {...}, "id": ID}` is
//!    answered by exactly one `{"return": VALUE, "id": ID}` or
//!    `{"error": {"class": ..., "desc": ...}, "id": ID}`;
//! 4. asynchronous events `{"event": NAME, "data": {...}, "timestamp":
//!    {...}}` (`STOP`, `RESUME`, `SHUTDOWN`, ...) may arrive at any time,
//!    also between a command and its reply. They are recorded in
//!    [`Qmp::events`] and otherwise skipped.
//!
//! The QMP monitor serves one client at a time: a second connection is
//! accepted by the kernel but gets its greeting only when the first closes.
//!
//! # Why not the `qapi` crate
//!
//! `qapi` (with `qmp` + `async-tokio-net`) generates bindings for the whole
//! QEMU schema — thousands of types — which costs a lot of compile time on
//! small CI machines, while mvm needs six commands. A typed client over
//! `tokio::net::UnixStream` with line framing and serde is about 150 lines.
//!
//! Every call takes a deadline; replies are matched by `id`, and one line is
//! bounded to [`MAX_LINE`] bytes because the peer is another process.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Longest accepted QMP message line, in bytes.
pub const MAX_LINE: usize = 1 << 20;

/// A QMP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Could not connect to the QMP socket.
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP socket {path}: I/O error")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// QEMU closed the connection.
    #[error("QMP socket {path}: QEMU closed the connection while waiting for {waiting_for}")]
    Closed {
        /// Socket path.
        path: PathBuf,
        /// What we were waiting for (greeting, a command's reply).
        waiting_for: String,
    },
    /// The deadline passed.
    #[error("QMP socket {path}: no answer to {waiting_for} before the deadline")]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// What we were waiting for.
        waiting_for: String,
    },
    /// A line was not valid QMP JSON.
    #[error("QMP socket {path}: malformed message {line:?}")]
    Malformed {
        /// Socket path.
        path: PathBuf,
        /// The offending line (truncated).
        line: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A line exceeded [`MAX_LINE`].
    #[error("QMP socket {path}: message longer than {MAX_LINE} bytes")]
    LineTooLong {
        /// Socket path.
        path: PathBuf,
    },
    /// The first message was not a greeting.
    #[error("QMP socket {path}: expected a greeting, got {line:?}")]
    NoGreeting {
        /// Socket path.
        path: PathBuf,
        /// What arrived instead (truncated).
        line: String,
    },
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: &'static str,
        /// QMP error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// Human-readable description from QEMU.
        desc: String,
    },
    /// A reply's `return` value did not have the expected shape.
    #[error("QMP command {command}: unexpected reply")]
    UnexpectedReply {
        /// The command.
        command: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// A QMP command: its wire name, arguments and reply type.
pub trait QmpCommand: Serialize {
    /// The `execute` name.
    const NAME: &'static str;
    /// The type of the `return` value.
    type Reply: DeserializeOwned;
    /// Whether the command takes no arguments (then `arguments` is omitted).
    const NO_ARGS: bool = true;
}

/// An empty `return` object (`{}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Empty {}

macro_rules! unit_command {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $reply:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, Serialize)]
        pub struct $ty;
        impl QmpCommand for $ty {
            const NAME: &'static str = $name;
            type Reply = $reply;
        }
    };
}

unit_command!(
    /// Leave capabilities negotiation mode.
    QmpCapabilities, "qmp_capabilities", Empty);
unit_command!(
    /// The run state of the VM.
    QueryStatus, "query-status", StatusInfo);
unit_command!(
    /// Pause all vCPUs.
    Stop, "stop", Empty);
unit_command!(
    /// Resume all vCPUs.
    Cont, "cont", Empty);
unit_command!(
    /// Press the ACPI power button.
    SystemPowerdown, "system_powerdown", Empty);
unit_command!(
    /// Terminate QEMU immediately.
    Quit, "quit", Empty);

/// Reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether vCPUs run.
    pub running: bool,
    /// Detailed run state.
    pub status: RunState,
}

/// QEMU's `RunState` (the values mvm cares about; others map to `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Started with `-S`, never run.
    Prelaunch,
    /// vCPUs run.
    Running,
    /// Stopped by `stop`.
    Paused,
    /// Waiting for (or receiving) an incoming migration.
    Inmigrate,
    /// Stopped after saving the state (`migrate` completed).
    Postmigrate,
    /// The guest shut down (with `-no-shutdown`).
    Shutdown,
    /// The guest panicked.
    GuestPanicked,
    /// An internal error stopped the VM.
    InternalError,
    /// An I/O error stopped the VM.
    IoError,
    /// Any other state.
    #[serde(other)]
    Other,
}

/// The server greeting.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Greeting {
    /// QEMU version (`major.minor.micro`).
    pub version: QemuVersion,
    /// Offered capabilities (e.g. `oob`).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// QEMU version from the greeting.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QemuVersion {
    /// Numeric version.
    pub qemu: VersionTriple,
    /// Distribution package string.
    #[serde(default)]
    pub package: String,
}

/// `major.minor.micro`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct VersionTriple {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

/// An asynchronous event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// Event name (`STOP`, `RESUME`, `SHUTDOWN`, ...).
    pub event: String,
    /// Event data, if any.
    #[serde(default)]
    pub data: serde_json::Value,
}

#[derive(Serialize)]
struct Request<'a, C> {
    execute: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a C>,
    id: u64,
}

/// Any server message.
#[derive(Deserialize)]
#[serde(untagged)]
enum Message {
    Return {
        #[serde(rename = "return")]
        value: serde_json::Value,
        id: Option<serde_json::Value>,
    },
    Error {
        error: ErrorBody,
        id: Option<serde_json::Value>,
    },
    Event(Event),
    Greeting {
        #[serde(rename = "QMP")]
        qmp: Greeting,
    },
}

#[derive(Deserialize)]
struct ErrorBody {
    class: String,
    desc: String,
}

/// A QMP session that has completed capabilities negotiation.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    greeting: Greeting,
    events: Vec<Event>,
}

impl Qmp {
    /// Connect once (no retry), read the greeting and negotiate
    /// capabilities, all before `deadline`.
    pub async fn connect(path: &Path, deadline: Instant) -> Result<Self, QmpError> {
        let stream = timeout(path, "connect", deadline, UnixStream::connect(path))
            .await?
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        Self::handshake(path, stream, deadline).await
    }

    /// Like [`Qmp::connect`], but while the socket does not exist yet or
    /// refuses connections (QEMU still starting), retry with a short
    /// bounded backoff until `deadline`.
    pub async fn connect_retry(path: &Path, deadline: Instant) -> Result<Self, QmpError> {
        let stream =
            connect_unix_retry(path, deadline)
                .await
                .map_err(|source| QmpError::Connect {
                    path: path.to_owned(),
                    source,
                })?;
        Self::handshake(path, stream, deadline).await
    }

    async fn handshake(
        path: &Path,
        stream: UnixStream,
        deadline: Instant,
    ) -> Result<Self, QmpError> {
        let (r, w) = stream.into_split();
        let mut reader = BufReader::new(r);
        let line = read_line(path, &mut reader, "the greeting", deadline).await?;
        let greeting = match serde_json::from_slice::<Message>(&line) {
            Ok(Message::Greeting { qmp }) => qmp,
            _ => {
                return Err(QmpError::NoGreeting {
                    path: path.to_owned(),
                    line: excerpt(&line),
                });
            }
        };
        let mut qmp = Self {
            path: path.to_owned(),
            reader,
            writer: w,
            next_id: 1,
            greeting,
            events: Vec::new(),
        };
        qmp.execute(&QmpCapabilities, deadline).await?;
        Ok(qmp)
    }

    /// The server greeting.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// Events received so far, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Remove and return the events received so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Run one command and return its typed reply.
    pub async fn execute<C: QmpCommand>(
        &mut self,
        cmd: &C,
        deadline: Instant,
    ) -> Result<C::Reply, QmpError> {
        self.execute_inner(cmd, None, deadline).await
    }

    /// Run one command whose request carries `fd` (`SCM_RIGHTS`), as
    /// `getfd` and `add-fd` need. QEMU keeps its own duplicate; the caller
    /// may close `fd` afterwards.
    pub async fn execute_with_fd<C: QmpCommand>(
        &mut self,
        cmd: &C,
        fd: std::os::fd::BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<C::Reply, QmpError> {
        self.execute_inner(cmd, Some(fd), deadline).await
    }

    /// Send `bytes`, the first of them with `fd` attached.
    async fn send_with_fd(
        &mut self,
        bytes: &[u8],
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<()> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
        let stream: &UnixStream = self.writer.as_ref();
        let sent = loop {
            stream.writable().await?;
            let fds = [fd];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut anc = SendAncillaryBuffer::new(&mut space);
            anc.push(SendAncillaryMessage::ScmRights(&fds));
            match stream.try_io(tokio::io::Interest::WRITABLE, || {
                sendmsg(
                    stream,
                    &[io::IoSlice::new(bytes)],
                    &mut anc,
                    SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        self.writer.write_all(&bytes[sent..]).await
    }

    async fn execute_inner<C: QmpCommand>(
        &mut self,
        cmd: &C,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
        deadline: Instant,
    ) -> Result<C::Reply, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request {
            execute: C::NAME,
            arguments: (!C::NO_ARGS).then_some(cmd),
            id,
        };
        let mut bytes = serde_json::to_vec(&req).expect("QMP requests serialize");
        bytes.push(b'\n');
        let what = format!("the reply to {}", C::NAME);
        let path = self.path.clone();
        let sent = match fd {
            None => timeout(&path, &what, deadline, self.writer.write_all(&bytes)).await?,
            Some(fd) => timeout(&path, &what, deadline, self.send_with_fd(&bytes, fd)).await?,
        };
        sent.map_err(|source| QmpError::Io {
            path: self.path.clone(),
            source,
        })?;
        loop {
            let line = read_line(&self.path, &mut self.reader, &what, deadline).await?;
            let msg: Message =
                serde_json::from_slice(&line).map_err(|source| QmpError::Malformed {
                    path: self.path.clone(),
                    line: excerpt(&line),
                    source,
                })?;
            let ours =
                |rid: &Option<serde_json::Value>| rid.as_ref().and_then(|v| v.as_u64()) == Some(id);
            match msg {
                Message::Event(e) => {
                    tracing::debug!(event = %e.event, "QMP event");
                    self.events.push(e);
                }
                Message::Return { value, id: rid } if ours(&rid) => {
                    return serde_json::from_value(value).map_err(|source| {
                        QmpError::UnexpectedReply {
                            command: C::NAME,
                            source,
                        }
                    });
                }
                Message::Error { error, id: rid } if ours(&rid) => {
                    return Err(QmpError::Command {
                        command: C::NAME,
                        class: error.class,
                        desc: error.desc,
                    });
                }
                // A reply to someone else's id (or a stray greeting): skip.
                _ => tracing::debug!(line = %excerpt(&line), "unmatched QMP message skipped"),
            }
        }
    }

    /// Wait for the first event `matches` accepts (also among the events
    /// received so far, which it removes), by `deadline`. Replies to other
    /// commands are skipped.
    pub async fn wait_event(
        &mut self,
        mut matches: impl FnMut(&Event) -> bool,
        deadline: Instant,
    ) -> Result<Event, QmpError> {
        if let Some(i) = self.events.iter().position(&mut matches) {
            return Ok(self.events.remove(i));
        }
        loop {
            let line = read_line(&self.path, &mut self.reader, "an event", deadline).await?;
            let msg: Message =
                serde_json::from_slice(&line).map_err(|source| QmpError::Malformed {
                    path: self.path.clone(),
                    line: excerpt(&line),
                    source,
                })?;
            if let Message::Event(e) = msg {
                tracing::debug!(event = %e.event, "QMP event");
                if matches(&e) {
                    return Ok(e);
                }
                self.events.push(e);
            }
        }
    }

    /// `query-status`.
    pub async fn query_status(&mut self, deadline: Instant) -> Result<StatusInfo, QmpError> {
        self.execute(&QueryStatus, deadline).await
    }

    /// `stop`: pause the vCPUs.
    pub async fn stop(&mut self, deadline: Instant) -> Result<(), QmpError> {
        self.execute(&Stop, deadline).await.map(drop)
    }

    /// `cont`: resume the vCPUs.
    pub async fn cont(&mut self, deadline: Instant) -> Result<(), QmpError> {
        self.execute(&Cont, deadline).await.map(drop)
    }

    /// `system_powerdown`: press the ACPI power button.
    pub async fn system_powerdown(&mut self, deadline: Instant) -> Result<(), QmpError> {
        self.execute(&SystemPowerdown, deadline).await.map(drop)
    }

    /// `quit`: terminate QEMU. Consumes the session (QEMU closes it).
    pub async fn quit(mut self, deadline: Instant) -> Result<(), QmpError> {
        self.execute(&Quit, deadline).await.map(drop)
    }
}

/// Connect to a Unix socket, retrying while it does not exist yet
/// (`ENOENT`) or nobody listens (`ECONNREFUSED`), with a backoff from 1 ms
/// doubling to 5 ms, until `deadline` (then `TimedOut`, or the last error).
/// The cap is low on purpose: QEMU listens ~30 ms after spawn, and a
/// restore takes about as long again, so a coarse backoff would add tens
/// of ms to every restore; a failed `connect` costs microseconds.
pub async fn connect_unix_retry(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let mut delay = Duration::from_millis(1);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(remaining, UnixStream::connect(path)).await;
        match attempt {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                if Instant::now() + delay >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("socket not ready before the deadline (last error: {e})"),
                    ));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(5));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect did not complete before the deadline",
                ));
            }
        }
    }
}

async fn timeout<F: std::future::Future>(
    path: &Path,
    what: &str,
    deadline: Instant,
    f: F,
) -> Result<F::Output, QmpError> {
    tokio::time::timeout_at(deadline.into(), f)
        .await
        .map_err(|_| QmpError::Timeout {
            path: path.to_owned(),
            waiting_for: what.to_owned(),
        })
}

/// Read one `\n`-terminated line (without the newline), bounded in size.
async fn read_line(
    path: &Path,
    reader: &mut BufReader<OwnedReadHalf>,
    what: &str,
    deadline: Instant,
) -> Result<Vec<u8>, QmpError> {
    let mut buf = Vec::new();
    let n = timeout(
        path,
        what,
        deadline,
        (&mut *reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf),
    )
    .await?
    .map_err(|source| QmpError::Io {
        path: path.to_owned(),
        source,
    })?;
    if n == 0 || buf.last() != Some(&b'\n') {
        if buf.len() > MAX_LINE {
            return Err(QmpError::LineTooLong {
                path: path.to_owned(),
            });
        }
        return Err(QmpError::Closed {
            path: path.to_owned(),
            waiting_for: what.to_owned(),
        });
    }
    buf.pop();
    Ok(buf)
}

fn excerpt(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let req = Request {
            execute: QueryStatus::NAME,
            arguments: None::<&QueryStatus>,
            id: 7,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"execute":"query-status","id":7}"#
        );
    }

    #[test]
    fn parses_messages() {
        let g: Message = serde_json::from_str(
            r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#,
        )
        .unwrap();
        assert!(matches!(g, Message::Greeting { qmp } if qmp.version.qemu.major == 7));
        let e: Message = serde_json::from_str(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#,
        )
        .unwrap();
        assert!(matches!(e, Message::Event(ev) if ev.event == "SHUTDOWN"));
        let r: Message = serde_json::from_str(
            r#"{"return": {"status": "prelaunch", "singlestep": false, "running": false}, "id": 3}"#,
        )
        .unwrap();
        let Message::Return { value, id } = r else {
            panic!("not a return")
        };
        assert_eq!(id, Some(serde_json::json!(3)));
        let s: StatusInfo = serde_json::from_value(value).unwrap();
        assert_eq!(s.status, RunState::Prelaunch);
        let err: Message = serde_json::from_str(
            r#"{"error": {"class": "CommandNotFound", "desc": "nope"}, "id": 4}"#,
        )
        .unwrap();
        assert!(matches!(err, Message::Error { error, .. } if error.class == "CommandNotFound"));
        let odd: StatusInfo =
            serde_json::from_str(r#"{"status": "colo", "running": false}"#).unwrap();
        assert_eq!(odd.status, RunState::Other);
    }

    #[tokio::test]
    async fn talks_to_a_scripted_server_with_interleaved_events() {
        use tokio::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": []}}\n").await.unwrap();
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            assert!(line.contains("qmp_capabilities"), "{line}");
            w.write_all(b"{\"return\": {}, \"id\": 1}\n").await.unwrap();
            line.clear();
            r.read_line(&mut line).await.unwrap();
            assert!(line.contains("\"stop\""), "{line}");
            w.write_all(b"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\n{\"return\": {}, \"id\": 999}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": 2}\n").await.unwrap();
            // Never answer anything else: the next call must time out.
            line.clear();
            r.read_line(&mut line).await.unwrap();
            r.read_line(&mut line).await.unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut q = Qmp::connect(&path, deadline).await.unwrap();
        assert_eq!(q.greeting().version.qemu.minor, 2);
        let err = q.stop(deadline).await.unwrap_err();
        assert!(
            matches!(err, QmpError::Command { ref class, .. } if class == "GenericError"),
            "{err}"
        );
        assert_eq!(q.events().len(), 1);
        let err = q
            .cont(Instant::now() + Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        drop(q);
        server.await.unwrap();
    }

    /// A server that sends `reply` after the greeting.
    async fn one_shot_server(reply: Vec<u8>) -> (tempfile::TempDir, PathBuf) {
        use tokio::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": []}}\n").await.unwrap();
            s.write_all(&reply).await.unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        });
        (dir, path)
    }

    #[tokio::test]
    async fn hostile_replies_are_errors_not_panics() {
        let d = Instant::now() + Duration::from_secs(5);
        let (_t, path) = one_shot_server(b"{\"return\": [1,2\n".to_vec()).await;
        let e = Qmp::connect(&path, d).await.unwrap_err();
        assert!(matches!(e, QmpError::Malformed { .. }), "{e}");

        let mut long = vec![b' '; MAX_LINE + 10];
        long.push(b'\n');
        let (_t, path) = one_shot_server(long).await;
        let e = Qmp::connect(&path, d).await.unwrap_err();
        assert!(matches!(e, QmpError::LineTooLong { .. }), "{e}");

        let (_t, path) = one_shot_server(b"{\"return\": {}}".to_vec()).await;
        let e = Qmp::connect(&path, Instant::now() + Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
    }
}
