//! The host side of mvm's interactive terminals (`mvm exec -t`, `mvm shell`).
//!
//! [`run_tty`] runs one command on a pseudo-terminal in the guest (protocol
//! version 2, `ExecRequest::tty`) and connects it to the user's terminal:
//!
//! - **Raw mode** while input is forwarded ([`RawMode`]): every keystroke,
//!   Ctrl-C, Ctrl-Z and Ctrl-\ included, goes to the guest as a byte, where
//!   the guest terminal's line discipline turns it into a signal for the
//!   foreground job. The saved settings are put back by `Drop` on every way
//!   out of [`run_tty`]: the command's exit, an error, the guest dying, the
//!   link dropping, SIGTERM/SIGHUP to mvm, and a panic (unwinding). Only
//!   SIGKILL of mvm cannot be handled (`stty sane` repairs the terminal).
//! - **Window size**: sent with the request, and again on every SIGWINCH.
//! - **Input**: a thread reads the terminal (it must be interruptible, so not
//!   tokio's stdin, whose blocking read cannot be cancelled) and feeds a
//!   bounded queue; a task writes the queue to the session within the
//!   agent's flow-control credit, so a guest that stops reading stops the
//!   reads here too.
//! - **Output**: the guest terminal's single stream, written to the output
//!   as it arrives; the next chunk is taken only after the previous one was
//!   written (credit again), so a slow terminal slows the guest down.
//! - **Signals to mvm**: SIGTERM and SIGHUP end the session (the agent kills
//!   every process of the guest session) and [`run_tty`] returns
//!   [`TtyOutcome::HostSignal`]; SIGINT (only possible without raw mode, or
//!   from `kill`) is forwarded to the guest's foreground job.
//!
//! `-t` without a terminal on stdin is refused ([`TermError::NotATty`], the
//! Docker message `the input device is not a TTY`; mvm exits 125): a
//! terminal session needs a terminal to read keys from and to size the guest
//! terminal by. See docs/decisions.md.
//!
//! [`shell`] builds the request of `mvm shell` (a login shell).
#![warn(missing_docs)]

mod input;
mod raw;
pub mod shell;
mod tty;

pub use raw::RawMode;
pub use tty::{Terminal, TtyOutcome, host_term, run_tty, stdin_is_tty};

use mvm_agent_proto::client::ClientError;

/// A failure of a terminal session.
#[derive(Debug, thiserror::Error)]
pub enum TermError {
    /// `-t` was given but stdin is not a terminal.
    #[error("the input device is not a TTY")]
    NotATty,
    /// Reading or changing the terminal's settings or size failed.
    #[error("cannot {what} the terminal")]
    Terminal {
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The agent refused or could not start the command, or the session
    /// failed (agent error, connection lost: the guest or its VMM died).
    #[error("terminal session in the guest failed")]
    Session(#[source] ClientError),
    /// The session ended without an exit status.
    #[error("the terminal session ended without an exit status")]
    NoExit,
    /// Writing the guest's output failed.
    #[error("cannot write the guest's output")]
    Output(#[source] std::io::Error),
}
