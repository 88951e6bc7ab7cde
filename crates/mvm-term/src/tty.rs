//! [`run_tty`]: one terminal session, from the request to the exit status.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use mvm_agent_proto::client::{AgentClient, ExecEvent};
use mvm_agent_proto::{ExecRequest, ExitStatus, WinSize};
use rustix::process::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::TermError;
use crate::input::Input;
use crate::raw::RawMode;

/// How long queued frames (the session's `Cancel`) may take to leave when a
/// session is abandoned.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether this process's stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    rustix::termios::isatty(std::io::stdin())
}

/// The user's side of a session: the terminal keys are read from (and whose
/// size the guest terminal follows), and where the guest's output goes.
#[derive(Debug)]
pub struct Terminal {
    input: OwnedFd,
    output: std::fs::File,
}

impl Terminal {
    /// This process's stdin (which must be a terminal, otherwise
    /// [`TermError::NotATty`]) and stdout.
    pub fn stdio() -> Result<Terminal, TermError> {
        let dup = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|source| TermError::Terminal {
                    what: "duplicate",
                    source,
                })
        };
        Self::new(
            dup(std::io::stdin().as_fd())?,
            dup(std::io::stdout().as_fd())?,
        )
    }

    /// `input` (a terminal, otherwise [`TermError::NotATty`]) and `output`.
    pub fn new(input: OwnedFd, output: OwnedFd) -> Result<Terminal, TermError> {
        if !rustix::termios::isatty(&input) {
            return Err(TermError::NotATty);
        }
        Ok(Terminal {
            input,
            output: std::fs::File::from(output),
        })
    }

    /// The terminal's current size.
    pub fn size(&self) -> Result<WinSize, TermError> {
        let w = rustix::termios::tcgetwinsize(&self.input).map_err(|e| TermError::Terminal {
            what: "read the size of",
            source: e.into(),
        })?;
        Ok(WinSize {
            rows: w.ws_row,
            cols: w.ws_col,
        })
    }
}

/// How a terminal session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtyOutcome {
    /// The guest command ended (its status).
    Exited(ExitStatus),
    /// mvm got this signal (SIGTERM, SIGHUP) and ended the session; the
    /// agent killed the guest session's processes.
    HostSignal(i32),
}

impl TtyOutcome {
    /// The exit status for mvm: the command's code, 128 + a signal number,
    /// 124 when the command's timeout fired.
    pub fn exit_code(&self) -> i32 {
        match *self {
            TtyOutcome::Exited(st) if st.timed_out => 124,
            TtyOutcome::Exited(ExitStatus { code: Some(c), .. }) => c,
            TtyOutcome::Exited(ExitStatus {
                signal: Some(s), ..
            }) => 128 + s,
            TtyOutcome::Exited(_) => 125,
            TtyOutcome::HostSignal(s) => 128 + s,
        }
    }
}

/// Run `req` on a new terminal in the guest, connected to `term`.
///
/// The size of `term` and, unless `req.env` has one, the host's `TERM` are
/// added to the request. With `req.stdin`, `term` is put in raw mode and
/// keystrokes are forwarded; without it, only output flows (and SIGINT to
/// mvm is forwarded). The terminal is restored before this returns, on
/// every path (see the crate docs).
///
/// Errors: [`TermError::Session`] when the agent refused the command
/// (`ClientError::Agent` with kind `NotFound`/`PermissionDenied`: exit 127 /
/// 126), does not speak protocol 2 (`ClientError::Unsupported`), or the link
/// was lost (the guest or its VMM died).
pub async fn run_tty(
    client: &AgentClient,
    mut req: ExecRequest,
    mut term: Terminal,
) -> Result<TtyOutcome, TermError> {
    req.tty = Some(term.size()?);
    if !req.env.iter().any(|(k, _)| k == "TERM") {
        req.env.push(("TERM".into(), host_term()));
    }
    let forward = req.stdin;
    // Signals are registered before anything can need them.
    let sig = |k| {
        signal(k).map_err(|source| TermError::Terminal {
            what: "watch signals for",
            source,
        })
    };
    let mut winch = sig(SignalKind::window_change())?;
    let mut sigterm = sig(SignalKind::terminate())?;
    let mut sighup = sig(SignalKind::hangup())?;
    let mut sigint = sig(SignalKind::interrupt())?;

    let mut session = client.exec(req).await.map_err(TermError::Session)?;
    // From here on, every return path drops `_raw` (restoring the terminal)
    // and `session` (cancelling it in the guest unless it exited).
    let _raw = if forward {
        Some(RawMode::enter(&term.input)?)
    } else {
        None
    };
    let (input, keys) = if forward {
        let fd = term
            .input
            .try_clone()
            .map_err(|source| TermError::Terminal {
                what: "duplicate",
                source,
            })?;
        let (input, keys) = Input::spawn(fd).map_err(|source| TermError::Terminal {
            what: "read",
            source,
        })?;
        (Some(input), Some(keys))
    } else {
        (None, None)
    };
    let stdin = session.stdin();
    let typing = keys.map(|mut keys| {
        tokio::spawn(async move {
            while let Some(k) = keys.recv().await {
                if stdin.write(&k).await.is_err() {
                    break;
                }
            }
        })
    });

    // The last byte drawn, to end a half-written line before mvm's own
    // message when the session is cut short.
    let mut last = None;
    let result = loop {
        tokio::select! {
            ev = session.next_event() => match ev {
                Ok(Some(ExecEvent::Stdout(b) | ExecEvent::Stderr(b))) => {
                    if let Err(e) = term.output.write_all(&b).and_then(|()| term.output.flush()) {
                        break Err(TermError::Output(e));
                    }
                    last = b.last().copied().or(last);
                }
                Ok(Some(ExecEvent::Exit(st))) => break Ok(TtyOutcome::Exited(st)),
                Ok(None) => break Err(TermError::NoExit),
                Err(e) => break Err(TermError::Session(e)),
            },
            Some(()) = winch.recv() => {
                if let Ok(size) = term.size() {
                    let _ = session.resize(size.rows, size.cols);
                }
            }
            Some(()) = sigterm.recv() => break Ok(TtyOutcome::HostSignal(Signal::TERM.as_raw())),
            Some(()) = sighup.recv() => break Ok(TtyOutcome::HostSignal(Signal::HUP.as_raw())),
            Some(()) = sigint.recv() => {
                let _ = session.signal(Signal::INT.as_raw());
            }
        }
    };
    if let Some(t) = typing {
        t.abort();
    }
    let cut_short = !matches!(
        result,
        Ok(TtyOutcome::Exited(_)) | Err(TermError::Output(_))
    );
    if cut_short && last.is_some_and(|b| b != b'\n') {
        let _ = term
            .output
            .write_all(b"\r\n")
            .and_then(|()| term.output.flush());
    }
    drop(input);
    // Not exited: this sends `Cancel`; make sure it leaves before we return
    // (the process may exit right after). Losing it is harmless: the agent
    // cancels every session of a connection that closes.
    drop(session);
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await;
    result
}

/// The host's `TERM` (what the guest's programs should draw for), or
/// `xterm` when unset.
pub fn host_term() -> String {
    std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "xterm".into())
}
