//! `mvm exec -t` and `mvm shell`: terminal sessions through `mvm_term`.
//!
//! Phase 1: in running machines, over the machine's agent socket. In a
//! transient machine they come with the runtime's exec operation.

use anyhow::{Result, bail};
use mvm_agent_proto::ErrorKind;
use mvm_agent_proto::client::ClientError;
use mvm_core::{InstanceDir, Status};
use mvm_runtime::exec::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, ExecOptions};
use mvm_term::shell::{ShellOptions, login_shell_request};
use mvm_term::{TermError, Terminal, run_tty};

use crate::cli::ShellArgs;
use crate::commands::machines::parse_env;
use crate::commands::runtime;

/// `-t` needs a terminal on stdin (Docker's rule and message; exit 125),
/// checked before anything is started.
pub fn check(running_machine: bool) -> Result<()> {
    if !mvm_term::stdin_is_tty() {
        bail!(
            "{}: drop -t (and keep -i to forward piped input), or run from a terminal",
            TermError::NotATty
        );
    }
    if !running_machine {
        bail!(
            "-t in a transient machine is not available yet; \
             use a running one: mvm run --name NAME, then mvm exec -it NAME -- CMD"
        );
    }
    Ok(())
}

/// Run `opts` on a terminal in the running machine of `dir`.
pub async fn exec_in(dir: &InstanceDir, opts: &ExecOptions) -> Result<u8> {
    let req = mvm_agent_proto::ExecRequest {
        argv: opts.argv.clone(),
        env: opts.env.clone(),
        cwd: opts.cwd.clone(),
        stdin: opts.stdin,
        timeout_ms: opts.timeout.map(|t| t.as_millis() as u64),
        tty: None,
    };
    session(dir, req).await
}

async fn session(dir: &InstanceDir, req: mvm_agent_proto::ExecRequest) -> Result<u8> {
    let term = Terminal::stdio()?;
    let client = mvm_runtime::exec::connect(dir).await?;
    match run_tty(&client, req, term).await {
        Ok(outcome) => Ok(outcome.exit_code() as u8),
        Err(TermError::Session(ClientError::Agent { kind, message }))
            if matches!(kind, ErrorKind::NotFound | ErrorKind::PermissionDenied) =>
        {
            eprintln!("mvm: {message}");
            Ok(if kind == ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXECUTE
            } as u8)
        }
        Err(e) => Err(e.into()),
    }
}

/// `mvm shell [NAME]`.
pub async fn shell(a: ShellArgs) -> Result<u8> {
    check(a.name.is_some())?;
    let Some(name) = &a.name else {
        bail!("mvm shell needs a NAME for now");
    };
    let rt = runtime()?;
    let (rec, obs) = rt.observe(name)?;
    if obs.status != Status::Running {
        bail!(
            "machine {name:?} is {}; start it with `mvm start {name}`",
            obs.status
        );
    }
    let mut env = rec.env.clone();
    env.extend(parse_env(&a.env)?);
    let req = login_shell_request(&ShellOptions {
        env,
        ..Default::default()
    });
    session(&rt.registry.dir(name), req).await
}
