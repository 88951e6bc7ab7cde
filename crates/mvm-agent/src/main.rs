//! mvm's guest agent.
//!
//! As PID 1 (`/init` of the initramfs) it sets the guest up (see [`init`])
//! and serves the host on the virtio-serial port `org.mvm.agent` and on
//! AF_VSOCK port 1024. Otherwise it serves one Unix socket
//! (`--listen-unix PATH`) or stdin/stdout (`--stdio`), with no init duties —
//! that is how the host-side tests run it.
//!
//! ## Why a current-thread tokio runtime
//!
//! Sessions are I/O-bound (pipes, one stream), and a single thread makes the
//! reaper's invariant structural: no `waitpid(-1)` can run between a spawn
//! and the registration of its pid (see [`reaper`]). Blocking file I/O goes
//! to tokio's blocking pool, which never waits on children. Flow control
//! then falls out of `async` waits on credit.
//!
//! ## Panics
//!
//! PID 1 must never exit: a panic hook logs to the console; a panicking
//! session task is contained by tokio; a panic escaping the runtime is
//! caught and the guest powers off cleanly.

mod channel;
mod cmdline;
mod exec;
mod files;
mod identity;
mod init;
mod log;
mod main_process;
mod modules;
mod mounts;
mod pty;
mod reaper;
mod serve;
mod shutdown;
mod user;

use std::path::PathBuf;
use std::time::Instant;

use mvm_agent_proto::error_chain;
use serve::Ctx;

enum Mode {
    Unix(PathBuf),
    Stdio,
}

const USAGE: &str = "usage: mvm-agent (--listen-unix PATH | --stdio) [--config CONFIG_JSON] | --version\n(as PID 1 it needs no arguments; --config names the config.json whose `main` it starts)";

fn parse_args(args: &[String]) -> Result<(Mode, Option<PathBuf>), String> {
    let (args, config) = match args {
        [rest @ .., flag, file] if flag == "--config" => (rest, Some(PathBuf::from(file))),
        _ => (args, None),
    };
    let mode = match args {
        [flag, path] if flag == "--listen-unix" => Mode::Unix(PathBuf::from(path)),
        [flag] if flag == "--stdio" => Mode::Stdio,
        _ => return Err(USAGE.to_owned()),
    };
    Ok((mode, config))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        log!("PANIC: {info}");
    }));
    if nix::unistd::getpid().as_raw() == 1 {
        pid1();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--version") {
        println!("mvm-agent {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let (mode, config) = match parse_args(&args) {
        Ok(m) => m,
        Err(u) => {
            eprintln!("{u}");
            std::process::exit(2);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            log!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        let ctx = match reaper::Reaper::start() {
            Ok(reaper) => Ctx {
                reaper,
                pid1: false,
            },
            Err(e) => {
                log!("cannot install the SIGCHLD handler: {e}");
                return 1;
            }
        };
        if let Some(spec) = config.as_deref().and_then(main_process::load) {
            main_process::start(&ctx, spec);
        }
        match mode {
            Mode::Unix(path) => {
                let listener = match tokio::net::UnixListener::bind(&path) {
                    Ok(l) => l,
                    Err(e) => {
                        log!("cannot listen on {}: {e}", path.display());
                        return 1;
                    }
                };
                log!("ready");
                channel::serve_unix(listener, ctx).await;
                0
            }
            Mode::Stdio => {
                log!("ready");
                let stream = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
                match serve::serve_stream(stream, ctx).await {
                    Ok(()) => 0,
                    Err(e) => {
                        log!("{}", error_chain(&e));
                        1
                    }
                }
            }
        }
    });
    std::process::exit(code);
}

/// PID 1: never returns.
fn pid1() -> ! {
    let r = std::panic::catch_unwind(|| {
        init::boot();
        let rt = runtime().map_err(|e| format!("cannot start the runtime: {e}"))?;
        rt.block_on(serve_guest())
    });
    match r {
        Ok(Err(e)) => log!("{e}"),
        Ok(Ok(())) => log!("serving ended"),
        Err(_) => log!("the agent panicked (see above)"),
    }
    shutdown::final_steps()
}

async fn serve_guest() -> Result<(), String> {
    let reaper =
        reaper::Reaper::start().map_err(|e| format!("cannot install the SIGCHLD handler: {e}"))?;
    let ctx = Ctx { reaper, pid1: true };
    let mut tasks = tokio::task::JoinSet::new();
    let vsock = match channel::vsock_listener() {
        Ok(l) => {
            log!("listening on vsock port {}", channel::VSOCK_PORT);
            tasks.spawn(channel::serve_vsock(l, ctx.clone()));
            true
        }
        Err(e) => {
            log!("vsock unavailable: {e}");
            false
        }
    };
    // The virtio port (QEMU) is looked for in the background when vsock
    // (Firecracker) already serves, so readiness is not delayed by a port
    // that will never appear.
    let port_ctx = ctx.clone();
    let port = async move {
        let deadline = Instant::now() + init::PORT_TIMEOUT;
        match channel::wait_for_port(deadline).await {
            Some(dev) => {
                log!("serving on {}", dev.display());
                channel::serve_port(dev, port_ctx).await;
            }
            None => log!(
                "no virtio port named {} within {:?}",
                channel::PORT_NAME,
                init::PORT_TIMEOUT
            ),
        }
    };
    if vsock {
        tasks.spawn(port);
    } else {
        let deadline = Instant::now() + init::PORT_TIMEOUT;
        let dev = channel::wait_for_port(deadline).await.ok_or_else(|| {
            format!(
                "no channel to the host: no vsock, and no virtio port named {} within {:?}",
                channel::PORT_NAME,
                init::PORT_TIMEOUT
            )
        })?;
        log!("serving on {}", dev.display());
        tasks.spawn(channel::serve_port(dev, ctx.clone()));
    }
    log!("ready");
    // The config drive was mounted during boot.
    if let Some(spec) = main_process::load(std::path::Path::new(
        mvm_agent_proto::main_process::CONFIG_JSON_PATH,
    )) {
        main_process::start(&ctx, spec);
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            log!("a serving task ended: {e}");
        }
    }
    Err("every channel to the host stopped".into())
}
