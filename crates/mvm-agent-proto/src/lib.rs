//! The one protocol mvm's host and its guest agent speak, over any byte
//! stream (QEMU: a virtio-serial port; Firecracker: a hybrid-vsock
//! connection; tests: a Unix socket).
//!
//! # Wire format (protocol versions 1 and 2)
//!
//! The stream is a sequence of frames:
//!
//! ```text
//! +----------------+------------------+---------+-----------------------+
//! | len: u32 LE    | session: u32 LE  | kind: u8| payload: len - 5 bytes|
//! +----------------+------------------+---------+-----------------------+
//! ```
//!
//! `len` counts everything after the length field (so `len >= 5`). A `len`
//! above [`MAX_FRAME_LEN`] (1 MiB) is a protocol error detected from the four
//! length bytes alone, before anything is allocated; the connection is then
//! closed. Session `0` is the connection itself (handshake, connection-level
//! errors); every other id is a session the host opened.
//!
//! | kind | message     | payload                                   | direction |
//! |------|-------------|-------------------------------------------|-----------|
//! | 1    | `Hello`     | JSON [`Hello`]                            | both, session 0 |
//! | 2    | `Request`   | JSON [`Request`]                          | host → agent, opens a session |
//! | 3    | `Response`  | JSON [`Response`]                         | agent → host |
//! | 4    | `Stdin`     | raw bytes (≤ 64 KiB)                      | host → agent |
//! | 5    | `StdinEof`  | empty                                     | host → agent |
//! | 6    | `Stdout`    | raw bytes (≤ 64 KiB)                      | agent → host |
//! | 7    | `Stderr`    | raw bytes (≤ 64 KiB)                      | agent → host |
//! | 8    | `Exit`      | JSON [`ExitStatus`]                       | agent → host, ends an exec |
//! | 9    | `Signal`    | i32 LE                                    | host → agent |
//! | 10   | `Error`     | JSON [`ErrorMsg`]                         | both, ends a session (or, on session 0, the connection) |
//! | 11   | `Window`    | u32 LE                                    | both: flow-control credit |
//! | 12   | `Data`      | raw bytes (≤ 64 KiB)                      | file contents, either way |
//! | 13   | `DataEnd`   | empty                                     | end of file contents |
//! | 14   | `Cancel`    | empty                                     | host → agent: abandon the session |
//! | 15   | `Resize`    | rows: u16 LE, cols: u16 LE (v2)           | host → agent: the terminal's new size |
//!
//! # Handshake
//!
//! The host (initiator) sends `Hello { min_version, max_version, role: Host,
//! software }` on session 0; the agent (responder) answers with its own
//! `Hello` (role `Agent`). Both pick the highest version in both ranges. If the
//! ranges do not meet, the side that notices sends an `Error` on session 0
//! naming both ranges and closes. The initiator speaks first because a guest
//! cannot tell when the host end of a virtio-serial port connects; the host's
//! `Hello` waits in the port until the agent reads it.
//!
//! A `Hello` on session 0 *after* the handshake means the host end was
//! replaced without the guest seeing a disconnect — a VM restored from a
//! snapshot resumes in the middle of the template's connection, and its
//! new VMM's host opens with a fresh `Hello`. The agent then cancels every
//! session of the old connection, answers with its `Hello`, and serves the
//! new host on the same stream.
//!
//! # Sessions
//!
//! The host opens a session by sending a [`Request`] on an unused non-zero id:
//!
//! - `Ping` → `Response::Pong`; `Info` → `Response::Info`;
//!   `Shutdown` → `Response::Done`, then the guest powers off.
//! - `Exec` → `Stdout`/`Stderr` as produced, then `Exit` (or `Error`, e.g.
//!   command not found, with [`ErrorKind::NotFound`]). The host may send
//!   `Stdin`, `StdinEof`, `Signal` (delivered to the command's process group).
//! - `Exec` with `tty` (version 2): the command runs on a new pseudo-terminal
//!   of that size, as session leader and controlling process (job control
//!   works). `Stdin` is typed into the terminal (Ctrl-C, Ctrl-Z, Ctrl-\ are
//!   bytes the terminal's line discipline turns into signals); its output is
//!   the single stream `Stdout`; `StdinEof` is ignored (Ctrl-D is a byte);
//!   `Resize` sets the terminal's size (the foreground job gets SIGWINCH);
//!   `Signal` goes to the terminal's foreground process group. When the
//!   command exits, or the session is cancelled or its stream lost, every
//!   process left in its session is killed. `Exit` carries the command's
//!   own status.
//!
//! # Versions
//!
//! Version 2 added `ExecRequest::tty` and `Resize`. Both sides speak 1..=2;
//! the host uses a version-2 feature only when 2 was negotiated, otherwise
//! it fails with an error naming the feature and the fix (rebuild the
//! image). A frame whose header is fine but whose payload a peer cannot
//! decode (an unknown kind or request, bad JSON) does not break the
//! connection: the agent answers `Error(InvalidRequest, "unknown request
//! ...")` on that session, cancelling it if it was open.
//! - `WriteFile { path, mode }` → the host sends `Data` chunks then `DataEnd`;
//!   the agent answers `Response::Done` or `Error`.
//! - `ReadFile { path }` → `Response::FileMeta`, `Data` chunks, `DataEnd`; or
//!   `Error`.
//! - (v2) `Reidentify` → `Response::Reidentified` or `Error`
//!   (see [`identity`]).
//! - `WaitMain` (version 2) → `Response::MainExited` once the guest's main
//!   process (see [`main_process`]) has exited, then the guest powers off;
//!   `Error` when the guest has no main process.
//!
//! Version 2 also adds `user` to `Exec`. A host sends version-2 requests and
//! fields only when the negotiated version is >= 2 (the client refuses
//! otherwise, naming the feature and the fix: rebuild the image).
//!
//! `Cancel` makes the agent kill the session's process group (SIGKILL), stop
//! any transfer and forget the session; it sends nothing more for it.
//!
//! # Flow control
//!
//! Per session and per direction, the sender of data frames (`Stdout`,
//! `Stderr`, `Data` from the agent; `Stdin`, `Data` from the host) starts with
//! [`INITIAL_WINDOW`] bytes of credit and never has more unacknowledged data
//! bytes outstanding than its credit. The receiver sends `Window(n)` on the
//! session after it has *consumed* n bytes (written them out), which adds n to
//! the sender's credit. Memory held for a session is therefore bounded by the
//! window, and a slow session never blocks the others.
//!
//! # Crate layout
//!
//! - [`frame`]: [`Frame`], [`Message`], [`encode`], limits.
//! - [`message`]: the typed payloads (serde JSON).
//! - [`decoder`]: the sans-IO [`FrameDecoder`] and [`ProtoError`].
//! - [`handshake`]: version negotiation (plus async helpers with `tokio`).
//! - [`identity`]: (v2) making a clone restored from a snapshot distinct.
//! - with feature `tokio`: [`io`] (async frame reader/writer), [`flow`]
//!   (credit), [`client`] ([`client::AgentClient`]) and [`mux`] (the host
//!   multiplexer run by the per-VM supervisor).
#![warn(missing_docs)]

pub mod decoder;
pub mod frame;
pub mod handshake;
pub mod identity;
pub mod main_process;
pub mod message;

#[cfg(feature = "tokio")]
pub mod client;
#[cfg(feature = "tokio")]
pub mod flow;
#[cfg(feature = "tokio")]
pub mod io;
#[cfg(feature = "tokio")]
pub mod mux;

pub use decoder::{FrameDecoder, ProtoError};
pub use frame::{
    DATA_CHUNK_MAX, Frame, HEADER_LEN, INITIAL_WINDOW, MAX_FRAME_LEN, Message, encode,
};
pub use handshake::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, TTY_VERSION, negotiate};
pub use main_process::MainSpec;
pub use message::{
    AgentInfo, ErrorKind, ErrorMsg, ExecRequest, ExitStatus, FileMeta, Hello, Request, Response,
    Role, WinSize,
};

/// An error and its causes on one line (`a: b: c`), for logs and for
/// `Error` frames sent to the peer.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
