//! The guest's main process (protocol 2; the contract is in
//! `mvm_agent_proto::main_process`): started once after boot from the
//! `main` key of the config drive's `config.json`, output on the console,
//! its exit status kept for `WaitMain`, then the guest powers off.

use std::os::unix::process::CommandExt;

use fs_err::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mvm_agent_proto::io::FrameSender;
use mvm_agent_proto::main_process::{ConfigMain, DEFAULT_POWEROFF_GRACE_MS};
use mvm_agent_proto::{ErrorKind, ErrorMsg, ExitStatus, Frame, MainSpec, Message, Response};
use tokio::sync::watch;

use crate::serve::Ctx;

#[derive(Debug, Clone, Copy)]
enum State {
    Running,
    Exited(ExitStatus),
}

/// The main process's state, once one was started.
static MAIN: OnceLock<watch::Sender<State>> = OnceLock::new();
/// Whether a host received the exit status.
static ANSWERED: AtomicBool = AtomicBool::new(false);

/// The main process spec in the `config.json` at `path`, if any.
pub fn load(path: &Path) -> Option<MainSpec> {
    let bytes = match fs_err::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            crate::log!("main process: {e}");
            return None;
        }
    };
    match serde_json::from_slice::<ConfigMain>(&bytes) {
        Ok(c) => c.main,
        Err(e) => {
            crate::log!("main process: {} is not valid: {e}", path.display());
            None
        }
    }
}

/// Where the main process's output (stdout and stderr) goes: the console
/// as PID 1, else the agent's own stderr (tests).
fn output(pid1: bool) -> std::io::Result<Stdio> {
    if pid1 {
        let f = fs_err::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open("/dev/console")?;
        Ok(Stdio::from(f.into_parts().0))
    } else {
        use std::os::fd::AsFd;
        Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
    }
}

fn spawn(ctx: &Ctx, spec: &MainSpec) -> Result<tokio::sync::oneshot::Receiver<ExitStatus>, String> {
    let req = spec.exec_request();
    let Some(argv0) = req.argv.first() else {
        return Err("empty argv".into());
    };
    let ids = crate::user::for_request(&req).map_err(|e| e.message)?;
    let cwd = req.cwd.as_deref().unwrap_or("/");
    let mut cmd = Command::new(argv0);
    cmd.args(&req.argv[1..])
        .env_clear()
        .envs(crate::exec::DEFAULT_ENV);
    if let Some(ids) = &ids {
        cmd.env("HOME", &ids.home);
    }
    let out = output(ctx.pid1).map_err(|e| format!("/dev/console: {e}"))?;
    let err = output(ctx.pid1).map_err(|e| format!("/dev/console: {e}"))?;
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setsid(2), which is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    if let Some(ids) = &ids {
        crate::user::apply(&mut cmd, ids);
    }
    let (child, status) = ctx
        .reaper
        .spawn(&mut cmd)
        .map_err(|e| format!("{argv0}: {e}"))?;
    crate::log!("main process started (pid {}): {:?}", child.id(), req.argv);
    Ok(status)
}

/// Start the main process (once) and watch it.
pub fn start(ctx: &Ctx, spec: MainSpec) {
    let (tx, _) = watch::channel(State::Running);
    if MAIN.set(tx).is_err() {
        crate::log!("main process: already started");
        return;
    }
    let tx = MAIN.get().expect("just set");
    let grace = Duration::from_millis(spec.poweroff_grace_ms.unwrap_or(DEFAULT_POWEROFF_GRACE_MS));
    let pid1 = ctx.pid1;
    let status = match spawn(ctx, &spec) {
        Ok(rx) => Some(rx),
        Err(e) => {
            crate::log!("main process: cannot start: {e}");
            None
        }
    };
    tokio::spawn(async move {
        let st = match status {
            Some(rx) => rx.await.unwrap_or_default(),
            // As a shell reports a command it cannot run.
            None => ExitStatus {
                code: Some(127),
                ..Default::default()
            },
        };
        match (st.code, st.signal) {
            (Some(c), _) => crate::log!("main process exited with status {c}"),
            (_, Some(s)) => crate::log!("main process killed by signal {s}"),
            _ => crate::log!("main process ended"),
        }
        tx.send_replace(State::Exited(st));
        tokio::time::sleep(grace).await;
        if !ANSWERED.load(Ordering::SeqCst) {
            crate::log!(
                "no host asked for the main process's status within {grace:?}; powering off"
            );
            crate::shutdown::power_off(pid1).await;
        }
    });
}

/// A `WaitMain` session: answer when the main process has exited, then
/// power off.
pub async fn wait(sid: u32, out: FrameSender, pid1: bool) {
    let Some(tx) = MAIN.get() else {
        out.send(Frame::new(
            sid,
            Message::Error(ErrorMsg::new(
                ErrorKind::InvalidRequest,
                "this machine has no main process",
            )),
        ));
        return;
    };
    let mut rx = tx.subscribe();
    let st = loop {
        if let State::Exited(st) = *rx.borrow_and_update() {
            break st;
        }
        if rx.changed().await.is_err() {
            return;
        }
    };
    out.send(Frame::new(sid, Message::Response(Response::MainExited(st))));
    out.flush().await;
    ANSWERED.store(true, Ordering::SeqCst);
    crate::log!("main process status sent to the host; powering off");
    crate::shutdown::power_off(pid1).await;
}
