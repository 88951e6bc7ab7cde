//! Typed payloads of the structured frames, serialized as JSON (serde).
//!
//! Enums are externally tagged (`{"Exec":{...}}`, `"Ping"`), field names are
//! snake_case as written here. Unknown fields are ignored, so a later
//! version may add optional fields without a version bump.

use serde::{Deserialize, Serialize};

use crate::frame::Message;

/// Which end of the protocol a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The host (mvm, or the multiplexer toward the guest).
    Host,
    /// The guest agent (or the multiplexer toward its clients).
    Agent,
}

/// The first frame each side sends, on session 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest protocol version this side speaks.
    pub min_version: u32,
    /// Highest protocol version this side speaks.
    pub max_version: u32,
    /// What this side is.
    pub role: Role,
    /// Free-form software name and version, for diagnostics.
    pub software: String,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WinSize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A command to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; run directly, no shell.
    pub argv: Vec<String>,
    /// Environment added to (and overriding) the agent's defaults.
    pub env: Vec<(String, String)>,
    /// Working directory (default `/`).
    pub cwd: Option<String>,
    /// Whether the host will send stdin; otherwise stdin is `/dev/null`.
    pub stdin: bool,
    /// Kill the command's process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Protocol >= 2: run the command on a new pseudo-terminal of this
    /// initial size, as its session leader and controlling process. Output
    /// is then the terminal's single stream (`Stdout` only). Absent: no
    /// terminal is ever allocated. A version-1 agent would ignore the field,
    /// so the client refuses to send it unless version 2 was negotiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<WinSize>,
    /// Run as this user (protocol 2): `user`, `uid`, `user:group` or
    /// `uid:gid`, names resolved from the guest's `/etc/passwd` and
    /// `/etc/group`. `None`: root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A request; it opens the session it is sent on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; answered by [`Response::Pong`].
    Ping,
    /// Agent facts; answered by [`Response::Info`].
    Info,
    /// Run a command.
    Exec(ExecRequest),
    /// Power the guest off (after answering [`Response::Done`]).
    Shutdown,
    /// Create or truncate `path` with `mode` and fill it with the `Data`
    /// frames that follow, up to `DataEnd`.
    WriteFile {
        /// Absolute guest path.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Send the contents of `path`.
    ReadFile {
        /// Absolute guest path.
        path: String,
    },
    /// (v2) Make a restored clone a distinct machine; answered by
    /// [`Response::Reidentified`]. See [`crate::identity`].
    Reidentify(crate::identity::ReidentifyRequest),
    /// What the decoder makes of a well-formed request it does not know (a
    /// newer peer's), so that the agent can answer
    /// `Error(InvalidRequest, "unknown request ...")` on that session
    /// instead of dropping the connection. Holds the request's name; it is
    /// encoded as that bare name (so a multiplexer can forward it).
    #[serde(skip)]
    Unknown(String),
    /// Wait for the guest's main process to exit (protocol 2); answered by
    /// [`Response::MainExited`], after which the guest powers off.
    WaitMain,
}

impl Request {
    /// Whether `msg`, sent by the agent on a session opened by this request,
    /// is the last frame of that session.
    pub fn is_final(&self, msg: &Message) -> bool {
        match (self, msg) {
            (_, Message::Error(_)) => true,
            (Request::Exec(_), m) => matches!(m, Message::Exit(_)),
            (Request::ReadFile { .. }, m) => matches!(m, Message::DataEnd),
            (_, m) => matches!(m, Message::Response(_)),
        }
    }
}

/// Facts about the guest, answer to [`Request::Info`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent's version.
    pub agent_version: String,
    /// The guest hostname.
    pub hostname: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Guest uptime in milliseconds.
    pub uptime_ms: u64,
}

/// Metadata of a file being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes when the read started.
    pub size: u64,
}

/// A reply to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Ping`.
    Pong,
    /// Answer to `Info`.
    Info(AgentInfo),
    /// `Shutdown` accepted, or `WriteFile` complete.
    Done,
    /// Start of a `ReadFile` answer.
    FileMeta(FileMeta),
    /// (v2) Answer to `Reidentify`.
    Reidentified(crate::identity::ReidentifyReport),
    /// Answer to `WaitMain`: how the main process ended.
    MainExited(ExitStatus),
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
    /// Whether the agent killed it because `timeout_ms` passed.
    pub timed_out: bool,
}

/// What kind of failure an [`ErrorMsg`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The command or file does not exist (a host maps this to exit 127).
    NotFound,
    /// Permission denied / not executable (a host maps this to exit 126).
    PermissionDenied,
    /// The request was malformed or arrived in the wrong state.
    InvalidRequest,
    /// The two sides share no protocol version.
    Version,
    /// Anything else.
    #[default]
    Other,
}

/// An error report; ends the session it is sent on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Human-readable message, naming the command/path concerned.
    pub message: String,
    /// Classification.
    #[serde(default)]
    pub kind: ErrorKind,
}

impl ErrorMsg {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind,
        }
    }
}
