//! Running commands in machines: `mvm exec` in a running machine, and in a
//! fresh transient one (boot, run, tear down — also on Ctrl-C).
//!
//! Output is written to this process's stdout/stderr as it arrives, one
//! chunk at a time; the next chunk is requested only after the previous one
//! was written, so a slow reader (a pipe into `wc`) slows the guest command
//! down instead of growing memory here (flow control in the agent protocol).

use std::io::Write;
use std::time::{Duration, Instant};

use mvm_agent_proto::ErrorKind;
use mvm_agent_proto::client::{AgentClient, ClientError, ExecEvent};
use mvm_core::instance::OwnerRole;
use mvm_core::{InstanceDir, Status};
use tokio::io::AsyncReadExt;

use crate::ops::create::{CreateOptions, create};
use crate::supervisor::{Event, supervise};
use crate::{Runtime, RuntimeError};

pub use crate::resources::agent::{CONNECT_TIMEOUT, connect, request_shutdown};

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
    /// Run on a pseudo-terminal in the guest, connected to ours (raw mode,
    /// window size, signals through the line discipline): stdin must be a
    /// terminal ([`check_tty`]). Output is the terminal's single stream.
    pub tty: bool,
    /// Run as this user (`user`, `uid`, `user:group`, `uid:gid`; names
    /// from the guest's `/etc/passwd`), over the machine's default.
    pub user: Option<String>,
}

impl ExecOptions {
    /// `mvm shell`: a login shell (`bash -l`, else `sh -l`) on a terminal,
    /// with `TERM` from the host, `HOME`, and the hostname in the prompt;
    /// `env` goes last.
    pub fn login_shell(env: Vec<(String, String)>) -> Self {
        let req = mvm_term::shell::login_shell_request(&mvm_term::shell::ShellOptions {
            env,
            ..Default::default()
        });
        Self {
            argv: req.argv,
            // The agent sets HOME: /root, or the home of the user it runs
            // the shell as.
            env: req.env.into_iter().filter(|(k, _)| k != "HOME").collect(),
            cwd: req.cwd,
            timeout: None,
            stdin: req.stdin,
            tty: true,
            user: None,
        }
    }

    /// This command as machine `rec` runs it (see
    /// [`crate::resources::process`]): the environment is `defaults` (the
    /// image's) < the machine's (`mvm run -e`) < the command's; the
    /// working directory and the user are the command's, else the
    /// machine's defaults.
    pub fn in_machine(
        &self,
        defaults: &mvm_core::main_process::ProcessDefaults,
        machine_env: &[(String, String)],
    ) -> ExecOptions {
        let mut env = defaults.env.clone();
        env.extend(machine_env.iter().cloned());
        env.extend(self.env.iter().cloned());
        ExecOptions {
            env,
            cwd: self.cwd.clone().or_else(|| defaults.cwd.clone()),
            user: self.user.clone().or_else(|| defaults.user.clone()),
            ..self.clone()
        }
    }
}

/// `-t` needs a terminal on stdin (Docker's rule and message, exit 125):
/// checked before anything is started.
pub fn check_tty() -> Result<(), RuntimeError> {
    if mvm_term::stdin_is_tty() {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!(
            "{}: drop -t (and keep -i to forward piped input), or run from a terminal",
            mvm_term::TermError::NotATty
        )))
    }
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
    /// Interrupted by Ctrl-C (SIGINT) on the host. SIGTERM and SIGHUP to a
    /// transient exec end it as [`ExecOutcome::Signaled`] with their
    /// number (128 + N, as a terminal session does).
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

fn agent_err(name: &str, source: ClientError) -> RuntimeError {
    RuntimeError::Agent {
        name: name.to_owned(),
        source,
    }
}

/// Connect to the agent of running machine `name` (an error naming the
/// machine's status when it does not run).
pub async fn connect_running(rt: &Runtime, name: &str) -> Result<AgentClient, RuntimeError> {
    let rec = rt.registry().load(name)?;
    let obs = rec.observe(rt.registry().owner_alive(name));
    if obs.status != Status::Running {
        return Err(RuntimeError::WrongState {
            name: name.to_owned(),
            status: obs.status,
            hint: Some(match obs.note {
                Some(n) => format!("{n}; start it with `mvm start {name}`"),
                None => format!("start it with `mvm start {name}`"),
            }),
        });
    }
    connect(&rt.dir(name)).await
}

/// Run `opts` in running machine `name`, with the machine's environment
/// (`mvm run -e`) under the command's own (`exec -e` wins), streaming its
/// output to our stdout/stderr. The first Ctrl-C is forwarded to the
/// command as SIGINT; a second one gives up and returns
/// [`ExecOutcome::Interrupted`].
pub async fn exec(
    rt: &Runtime,
    name: &str,
    opts: &ExecOptions,
) -> Result<ExecOutcome, RuntimeError> {
    let client = connect_running(rt, name).await?;
    let rec = rt.registry().load(name)?;
    let defaults = crate::resources::process::load(&rt.dir(name))?;
    run_on(&client, name, &opts.in_machine(&defaults, &rec.env)).await
}

/// Run `opts` in the machine of `dir` (which must be serving its agent).
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
        tty: None,
        user: opts.user.clone(),
    };
    if opts.tty {
        return run_tty(client, name, req).await;
    }
    let mut session = client.exec(req).await.map_err(|e| agent_err(name, e))?;
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
                return Err(agent_err(
                    name,
                    ClientError::ConnectionLost {
                        reason: "the session ended without an exit status".into(),
                    },
                ));
            }
        }
    };
    if let Some(t) = stdin_task {
        t.abort();
    }
    Ok(outcome)
}

/// A terminal session (`-t`): the terminal is restored on every way out.
async fn run_tty(
    client: &AgentClient,
    name: &str,
    req: mvm_agent_proto::ExecRequest,
) -> Result<ExecOutcome, RuntimeError> {
    let term = mvm_term::Terminal::stdio().map_err(|e| RuntimeError::Invalid(e.to_string()))?;
    match mvm_term::run_tty(client, req, term).await {
        Ok(o) => Ok(ExecOutcome::Exited(o.exit_code())),
        Err(mvm_term::TermError::Session(ClientError::Agent { kind, message })) => {
            eprintln!("mvm: {message}");
            Ok(ExecOutcome::NotStarted(match kind {
                ErrorKind::NotFound => EXIT_NOT_FOUND,
                ErrorKind::PermissionDenied => EXIT_CANNOT_EXECUTE,
                _ => EXIT_MVM_FAILED,
            }))
        }
        Err(mvm_term::TermError::Session(e)) => Err(agent_err(name, e)),
        Err(e) => Err(RuntimeError::Invalid(format!(
            "terminal session in machine {name:?}: {e}"
        ))),
    }
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

/// How long the in-process supervisor may take to tear a transient machine
/// down after its command (power-off for a write-back, then the teardown).
const TEARDOWN_LIMIT: Duration = Duration::from_secs(30);

/// Boot a fresh machine, run one command, tear everything down (also on
/// Ctrl-C, SIGTERM, SIGHUP and errors). This process owns the machine for
/// its whole life and runs its supervisor in-process; if it is killed, the
/// VMM dies with it (death signal) and the next mvm command reaps the rest.
///
/// The command runs with the image's defaults (Env, WorkingDir, User) under
/// its own; without a command, the image's Entrypoint + Cmd run once, as
/// `docker run --rm IMAGE` does.
pub async fn exec_transient(
    rt: &Runtime,
    image: &mvm_image::Image,
    image_ms: u64,
    create_opts: CreateOptions,
    opts: &ExecOptions,
) -> Result<(ExecOutcome, TransientTimings), RuntimeError> {
    let config = crate::resources::process::image_config(image)?;
    let mut opts = opts.clone();
    if opts.argv.is_empty() {
        opts.argv = config
            .as_ref()
            .map(|c| c.main_argv(None))
            .unwrap_or_default();
        if opts.argv.is_empty() {
            return Err(RuntimeError::Invalid(format!(
                "no command given, and image {} defines no Entrypoint or Cmd \
                 (usage: mvm exec --image IMAGE -- CMD [ARG...])",
                image.name
            )));
        }
    }
    let defaults = crate::resources::process::defaults(
        config.as_ref(),
        create_opts.workdir.as_deref(),
        create_opts.user.as_deref(),
    );
    let opts = opts.in_machine(&defaults, &create_opts.env);
    // Register for SIGINT/SIGTERM/SIGHUP before anything exists, so no
    // signal can kill us between creating the machine and watching for it.
    let mut interrupt = Interrupts::new()?;
    let mut timings = TransientTimings {
        image_ms,
        ..Default::default()
    };
    let t = Instant::now();
    let created = create(
        rt,
        &CreateOptions {
            transient: true,
            // The command is the machine's only process.
            main: None,
            ..create_opts
        },
        image,
    )?;
    let name = created.record.name.clone();
    tracing::debug!("machine {name} created");
    // Hand-over to ourselves as the supervisor, unless a stop came first.
    let handed = rt.registry().update(&name, |r| {
        r.transition(Status::Starting)?;
        r.owner_role = OwnerRole::Supervisor;
        Ok(r.stop_request.is_some())
    });
    let stop_first = match handed {
        Ok((_, s)) => s,
        Err(e) => {
            drop(created.lock);
            let _ = rt.registry().remove(&name);
            return Err(e.into());
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    if stop_first {
        let _ = stop_tx.send(());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let supervise = supervise(rt, &name, created.lock, stop_rx, move |ev| {
        let _ = tx.send(ev);
    });
    let dir = rt.dir(&name);
    let launch_ms = std::cell::Cell::new(0u64);
    let boot_ms = std::cell::Cell::new(0u64);
    let command_ms = std::cell::Cell::new(0u64);
    let drive = async {
        let mut started_at = Instant::now();
        let mut vmm = None;
        loop {
            match rx.recv().await {
                Some(Event::Started { vmm_pid, .. }) => {
                    launch_ms.set(t.elapsed().as_millis() as u64);
                    started_at = Instant::now();
                    vmm = Some(vmm_pid);
                }
                Some(Event::Ready { .. }) => {
                    boot_ms.set(started_at.elapsed().as_millis() as u64);
                    break;
                }
                Some(Event::Notice { message }) => eprintln!("mvm: {message}"),
                Some(Event::Failed { message }) => {
                    return Err(RuntimeError::StartFailed {
                        name: name.clone(),
                        message,
                    });
                }
                Some(Event::Stopped { .. }) | None => {
                    return Err(RuntimeError::StoppedWhileStarting { name: name.clone() });
                }
            }
        }
        crate::fault::point("exec.ready", vmm)?;
        let tc = Instant::now();
        let out = exec_in(&dir, &opts).await;
        command_ms.set(tc.elapsed().as_millis() as u64);
        crate::fault::point("exec.command_done", vmm)?;
        out
    };
    // Run the supervisor and the command side by side in this task.
    tokio::pin!(supervise);
    tokio::pin!(drive);
    let mut sup_result = None;
    let mut interrupted = false;
    let result = tokio::select! {
        r = &mut drive => r,
        r = &mut supervise => {
            let e = match &r {
                Ok(ended) => RuntimeError::StartFailed {
                    name: name.clone(),
                    message: format!("the VMM {} before the command finished", ended.description),
                },
                Err(e) => RuntimeError::StartFailed { name: name.clone(), message: crate::error_chain(e) },
            };
            sup_result = Some(r);
            Err(e)
        },
        o = interrupt.recv() => {
            interrupted = true;
            Ok(o)
        }
    };
    let td = Instant::now();
    tracing::debug!("command done");
    let mut result = result;
    if sup_result.is_none() {
        // rw added directories: the guest powers off (syncing) before the
        // supervisor writes them back; otherwise there is nothing to save.
        let write_back = crate::resources::drives::mounts(&dir)
            .map(|m| m.iter().any(|m| m.host_dir.is_some() && !m.read_only))
            .unwrap_or(false);
        let timeout = if write_back && !interrupted {
            crate::supervisor::DEFAULT_STOP_TIMEOUT
        } else {
            Duration::ZERO
        };
        let _ = rt.registry().update(&name, |r| {
            r.stop_request = Some(mvm_core::instance::StopRequest {
                timeout_ms: timeout.as_millis() as u64,
            });
            Ok(())
        });
        let _ = stop_tx.send(());
        let limit = timeout + TEARDOWN_LIMIT + crate::resources::drives::WRITE_BACK_LIMIT;
        let ended = tokio::select! {
            r = tokio::time::timeout(limit, &mut supervise) => r.ok(),
            _ = interrupt.recv() => {
                // A second interrupt: stop waiting for a graceful power-off.
                let _ = stop_tx.send(());
                tokio::time::timeout(TEARDOWN_LIMIT, &mut supervise).await.ok()
            }
        };
        sup_result = ended;
    }
    match sup_result {
        Some(Err(e)) if result.is_ok() => {
            // The command ran, but the teardown (e.g. the write-back) failed.
            eprintln!("mvm: error: {}", crate::error_chain(&e));
            if matches!(result, Ok(ExecOutcome::Exited(0))) {
                result = Ok(ExecOutcome::Exited(EXIT_MVM_FAILED));
            }
        }
        None => tracing::warn!("the teardown of transient machine {name:?} did not finish in time"),
        _ => {}
    }
    timings.launch_ms = launch_ms.get();
    timings.boot_ms = boot_ms.get();
    timings.command_ms = command_ms.get();
    timings.teardown_ms = td.elapsed().as_millis() as u64;
    result.map(|o| (o, timings))
}

/// SIGINT, SIGTERM and SIGHUP, registered at once (unlike
/// `tokio::signal::ctrl_c()`, which registers only when first polled).
pub(crate) struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    /// `mvm update` signals a transient machine's owner (us): the handler
    /// is installed from the start (the in-process supervisor listens).
    _usr1: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub(crate) fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            _usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// The next of them, as the outcome of the exec it ends.
    pub(crate) async fn recv(&mut self) -> ExecOutcome {
        use rustix::process::Signal;
        tokio::select! {
            _ = self.int.recv() => ExecOutcome::Interrupted,
            _ = self.term.recv() => ExecOutcome::Signaled(Signal::TERM.as_raw()),
            _ = self.hup.recv() => ExecOutcome::Signaled(Signal::HUP.as_raw()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_core::main_process::ProcessDefaults;

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn image_then_machine_then_command() {
        let defaults = ProcessDefaults {
            env: vec![kv("GREETING", "image"), kv("PATH", "/usr/bin:/bin")],
            cwd: Some("/work".into()),
            user: Some("app".into()),
        };
        let machine = [kv("GREETING", "machine")];
        let plain = ExecOptions {
            argv: vec!["env".into()],
            ..Default::default()
        };
        let r = plain.in_machine(&defaults, &machine);
        // The agent applies entries in order: the last one wins.
        assert_eq!(
            r.env,
            [
                kv("GREETING", "image"),
                kv("PATH", "/usr/bin:/bin"),
                kv("GREETING", "machine")
            ]
        );
        assert_eq!(r.cwd.as_deref(), Some("/work"));
        assert_eq!(r.user.as_deref(), Some("app"));
        assert_eq!(r.argv, ["env"]);

        let own = ExecOptions {
            argv: vec!["env".into()],
            env: vec![kv("GREETING", "exec")],
            cwd: Some("/tmp".into()),
            user: Some("0".into()),
            ..Default::default()
        };
        let r = own.in_machine(&defaults, &machine);
        assert_eq!(r.env.last().unwrap(), &kv("GREETING", "exec"));
        assert_eq!(r.cwd.as_deref(), Some("/tmp"));
        assert_eq!(r.user.as_deref(), Some("0"));

        // No defaults: the command as given.
        let r = own.in_machine(&ProcessDefaults::default(), &[]);
        assert_eq!(r.env, own.env);
    }

    #[test]
    fn the_login_shell_leaves_home_to_the_agent() {
        let o = ExecOptions::login_shell(vec![kv("A", "b")]);
        assert!(o.env.iter().all(|(k, _)| k != "HOME"));
        assert!(o.env.contains(&kv("A", "b")));
        assert!(o.user.is_none());
    }
}
