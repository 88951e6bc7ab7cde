//! Running commands in machines: the client side of `mvm exec`.
//!
//! Output is written to this process's stdout/stderr as it arrives, one
//! chunk at a time; the next chunk is requested only after the previous one
//! was written, so a slow reader (a pipe into `wc`) slows the guest command
//! down instead of growing memory here (flow control in the agent protocol).

use std::io::Write;
use std::time::{Duration, Instant};

use mvm_agent_proto::ErrorKind;
use mvm_agent_proto::client::{AgentClient, ClientError, ExecEvent};
use mvm_core::InstanceDir;
use tokio::io::AsyncReadExt;

use crate::RuntimeError;
use crate::machine::{CreateOptions, Runtime};

/// How long connecting to a running machine's agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a transient guest may take to power off before its rw added
/// directories are written back.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the write-back of added directories may take.
pub const WRITE_BACK_TIMEOUT: Duration = Duration::from_secs(300);

/// Exit status for "the command timed out" (as coreutils `timeout`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status for "mvm failed before the command ran".
pub const EXIT_MVM_FAILED: i32 = 125;
/// Exit status for "the command could not be executed".
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit status for "the command was not found".
pub const EXIT_NOT_FOUND: i32 = 127;

/// A command to run.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory in the guest.
    pub cwd: Option<String>,
    /// Kill the command after this long.
    pub timeout: Option<Duration>,
    /// Forward our stdin.
    pub stdin: bool,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
    /// `--timeout` fired.
    TimedOut,
    /// The command could not be started (not found / not executable).
    NotStarted(i32),
    /// Interrupted by Ctrl-C on the host.
    Interrupted,
}

impl ExecOutcome {
    /// The exit status `mvm exec` returns.
    pub fn exit_code(self) -> i32 {
        match self {
            ExecOutcome::Exited(c) => c,
            ExecOutcome::Signaled(s) => 128 + s,
            ExecOutcome::TimedOut => EXIT_TIMEOUT,
            ExecOutcome::NotStarted(c) => c,
            ExecOutcome::Interrupted => 130,
        }
    }
}

fn exec_err(name: &str, e: ClientError) -> RuntimeError {
    agent_err(name, e)
}

fn agent_err(name: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Agent {
        name: name.to_owned(),
        message: e.to_string(),
    }
}

/// Connect to a running machine's agent socket.
pub async fn connect(dir: &InstanceDir) -> Result<AgentClient, RuntimeError> {
    AgentClient::connect_unix(&dir.agent_socket(), Instant::now() + CONNECT_TIMEOUT)
        .await
        .map_err(|e| agent_err(&dir.name(), e))
}

/// Ask the guest agent to power the machine off.
pub async fn request_shutdown(dir: &InstanceDir) -> Result<(), RuntimeError> {
    let client = connect(dir).await?;
    client
        .shutdown()
        .await
        .map_err(|e| agent_err(&dir.name(), e))
}

/// Run `opts` in the running machine of `dir`, streaming its output to our
/// stdout/stderr. The first Ctrl-C is forwarded to the command as SIGINT;
/// a second one gives up and returns [`ExecOutcome::Interrupted`].
pub async fn exec_in(dir: &InstanceDir, opts: &ExecOptions) -> Result<ExecOutcome, RuntimeError> {
    let name = dir.name();
    let client = connect(dir).await?;
    run_on(&client, &name, opts).await
}

async fn run_on(
    client: &AgentClient,
    name: &str,
    opts: &ExecOptions,
) -> Result<ExecOutcome, RuntimeError> {
    if opts.argv.is_empty() {
        return Err(RuntimeError::Invalid(
            "no command given (usage: mvm exec [NAME] -- CMD [ARG...])".into(),
        ));
    }
    let req = mvm_agent_proto::ExecRequest {
        argv: opts.argv.clone(),
        env: opts.env.clone(),
        cwd: opts.cwd.clone(),
        stdin: opts.stdin,
        timeout_ms: opts.timeout.map(|t| t.as_millis() as u64),
        // Protocol 2 (exec --user, image User): wired in by the OCI phase 2.
        user: None,
    };
    let mut session = client.exec(req).await.map_err(|e| exec_err(name, e))?;
    let stdin = session.stdin();

    // Forward stdin in its own task (it may block on a terminal).
    let stdin_task = opts.stdin.then(|| {
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdin.write(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = stdin.close();
        })
    });

    // The host-side deadline backs up the guest's own timeout.
    let host_deadline = opts
        .timeout
        .map(|t| tokio::time::Instant::now() + t + Duration::from_secs(5));
    let mut interrupts = 0u32;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let outcome = loop {
        let ev = tokio::select! {
            ev = session.next_event() => ev,
            _ = &mut ctrl_c => {
                interrupts += 1;
                ctrl_c.set(tokio::signal::ctrl_c());
                if interrupts > 1 {
                    break ExecOutcome::Interrupted;
                }
                let _ = session.signal(2);
                continue;
            }
            _ = async { tokio::time::sleep_until(host_deadline.expect("guarded")).await }, if host_deadline.is_some() => {
                let _ = session.signal(9);
                break ExecOutcome::TimedOut;
            }
        };
        match ev {
            Ok(Some(ExecEvent::Stdout(b))) => {
                let mut out = std::io::stdout().lock();
                if out.write_all(&b).and_then(|_| out.flush()).is_err() {
                    // Our stdout is closed (e.g. `| head`): stop the command.
                    let _ = session.signal(13);
                }
            }
            Ok(Some(ExecEvent::Stderr(b))) => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&b).and_then(|_| err.flush());
            }
            Ok(Some(ExecEvent::Exit(st))) => {
                break if st.timed_out {
                    ExecOutcome::TimedOut
                } else if let Some(c) = st.code {
                    ExecOutcome::Exited(c)
                } else if let Some(s) = st.signal {
                    ExecOutcome::Signaled(s)
                } else {
                    ExecOutcome::Exited(EXIT_MVM_FAILED)
                };
            }
            Err(ClientError::Agent { kind, message }) => {
                eprintln!("mvm: {message}");
                break ExecOutcome::NotStarted(match kind {
                    ErrorKind::NotFound => EXIT_NOT_FOUND,
                    ErrorKind::PermissionDenied => EXIT_CANNOT_EXECUTE,
                    _ => EXIT_MVM_FAILED,
                });
            }
            Err(e) => return Err(agent_err(name, e)),
            Ok(None) => {
                return Err(agent_err(name, "the session ended without an exit status"));
            }
        }
    };
    if let Some(t) = stdin_task {
        t.abort();
    }
    Ok(outcome)
}

/// Where the time of a transient exec went.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TransientTimings {
    /// Finding/building the image.
    pub image_ms: u64,
    /// Creating the record and spawning + configuring the VMM.
    pub launch_ms: u64,
    /// From VMM start to the agent's handshake.
    pub boot_ms: u64,
    /// The command itself.
    pub command_ms: u64,
    /// Stopping the VMM and removing the machine.
    pub teardown_ms: u64,
}

/// Boot a fresh machine, run one command, tear everything down (also on
/// Ctrl-C and on errors).
pub async fn exec_transient(
    rt: &Runtime,
    image: &mvm_image::Image,
    image_ms: u64,
    create: CreateOptions,
    opts: &ExecOptions,
) -> Result<(ExecOutcome, TransientTimings), RuntimeError> {
    // Register for SIGINT/SIGTERM/SIGHUP before anything exists, so no
    // signal can kill us between creating the machine and watching for it.
    let mut interrupt = Interrupts::new()?;
    let mut timings = TransientTimings {
        image_ms,
        ..Default::default()
    };
    let t = Instant::now();
    let rec = rt.create(
        &CreateOptions {
            transient: true,
            ..create
        },
        image,
    )?;
    let name = rec.name.clone();
    let guard = TransientGuard {
        rt,
        name: name.clone(),
    };
    rt.registry.update(&name, |r| {
        mvm_core::registry::Registry::set_status(r, mvm_core::Status::Starting)
    })?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let supervise = crate::supervisor::supervise(rt, &name, move |ev| {
        let _ = tx.send(ev);
    });
    let dir = rt.registry.dir(&name);
    let launch_ms = std::cell::Cell::new(0u64);
    let boot_ms = std::cell::Cell::new(0u64);
    let command_ms = std::cell::Cell::new(0u64);
    let drive = async {
        let mut started_at = Instant::now();
        loop {
            match rx.recv().await {
                Some(crate::supervisor::Event::Started { .. }) => {
                    launch_ms.set(t.elapsed().as_millis() as u64);
                    started_at = Instant::now();
                }
                Some(crate::supervisor::Event::Ready { .. }) => {
                    boot_ms.set(started_at.elapsed().as_millis() as u64);
                    break;
                }
                Some(crate::supervisor::Event::Failed { message }) => {
                    return Err(RuntimeError::StartFailed {
                        name: name.clone(),
                        message,
                    });
                }
                None => {
                    return Err(RuntimeError::StartFailed {
                        name: name.clone(),
                        message: "the supervisor ended".into(),
                    });
                }
            }
        }
        let tc = Instant::now();
        let out = exec_in(&dir, opts).await;
        command_ms.set(tc.elapsed().as_millis() as u64);
        out
    };
    // Run the supervisor and the command side by side in this task. When
    // the command is done, kill the VMM; the supervisor then returns.
    tokio::pin!(supervise);
    tokio::pin!(drive);
    let mut sup_done = false;
    let result = tokio::select! {
        r = &mut drive => r,
        r = &mut supervise => {
            sup_done = true;
            match r {
                Ok(ended) => Err(RuntimeError::StartFailed { name: name.clone(), message: format!("the VMM {} before the command finished", ended.description) }),
                Err(e) => Err(e),
            }
        },
        _ = interrupt.recv() => Ok(ExecOutcome::Interrupted),
    };
    let td = Instant::now();
    let mut result = result;
    // rw added directories: let the guest unmount and power off, then the
    // supervisor writes them back once the VMM is gone.
    let write_back = crate::data::mounts(&dir)
        .map(|m| m.iter().any(|m| m.host_dir.is_some() && !m.read_only))
        .unwrap_or(false);
    if write_back && !sup_done {
        // The in-process supervisor serves the agent socket: poll it while
        // the request is under way.
        let shutdown = async {
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, request_shutdown(&dir)).await;
            std::future::pending::<()>().await
        };
        let waited = tokio::select! {
            r = tokio::time::timeout(SHUTDOWN_TIMEOUT + WRITE_BACK_TIMEOUT, &mut supervise) => r.is_ok(),
            _ = shutdown => false,
            _ = interrupt.recv() => false,
        };
        sup_done = waited;
        if let Ok((rec, _)) = rt.observe(&name)
            && let Some(msg) = rec.error
        {
            eprintln!("mvm: error: {msg}");
            if matches!(result, Ok(ExecOutcome::Exited(0))) {
                result = Ok(ExecOutcome::Exited(EXIT_MVM_FAILED));
            }
        }
    }
    if let Ok((rec, _)) = rt.observe(&name)
        && let Some(vmm) = rec.vmm
    {
        let _ = vmm.signal(rustix::process::Signal::KILL);
    }
    // Let the supervisor observe the exit and clean up (bounded).
    if !sup_done {
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut supervise).await;
    }
    drop(guard);
    timings.launch_ms = launch_ms.get();
    timings.boot_ms = boot_ms.get();
    timings.command_ms = command_ms.get();
    timings.teardown_ms = td.elapsed().as_millis() as u64;
    result.map(|o| (o, timings))
}

/// SIGINT, SIGTERM and SIGHUP, registered at once (unlike
/// `tokio::signal::ctrl_c()`, which registers only when first polled).
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Removes a transient machine (killing its VMM if still alive) on drop,
/// including on early returns and panics.
struct TransientGuard<'a> {
    rt: &'a Runtime,
    name: String,
}

impl Drop for TransientGuard<'_> {
    fn drop(&mut self) {
        if let Ok(rec) = self.rt.registry.load(&self.name) {
            if let Some(vmm) = rec.vmm
                && vmm.signal(rustix::process::Signal::KILL).unwrap_or(false)
            {
                let _ = vmm.wait_exit(Duration::from_secs(5));
            }
            // Its TAP, and the bridge and NAT rules if it was the last user.
            if let Err(e) = crate::net::release(&self.rt.config, &self.rt.registry, &rec) {
                tracing::warn!("{}", crate::error_chain(&e));
            }
        }
        if let Err(e) = self.rt.registry.remove(&self.name) {
            tracing::warn!("cannot remove transient machine {:?}: {e}", self.name);
        }
    }
}
