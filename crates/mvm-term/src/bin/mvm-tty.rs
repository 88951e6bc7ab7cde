//! Debugging aid and test client: a terminal session against an agent
//! socket (a test agent's `--listen-unix` socket, or a machine's
//! `agent.sock`), through the same [`mvm_term::run_tty`] that `mvm exec -t`
//! uses.
//!
//! ```text
//! mvm-tty SOCKET [-e KEY=VAL]... [--no-stdin] -- CMD [ARG...]
//! mvm-tty SOCKET --shell
//! ```
//!
//! Exit status: the command's; 125 when the session could not run (e.g.
//! `the input device is not a TTY`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use mvm_agent_proto::ExecRequest;
use mvm_agent_proto::client::AgentClient;
use mvm_term::shell::{ShellOptions, login_shell_request};
use mvm_term::{Terminal, run_tty};

const USAGE: &str =
    "usage: mvm-tty SOCKET [-e KEY=VAL]... [--no-stdin] (--shell | -- CMD [ARG...])";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((socket, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut env = Vec::new();
    let mut shell = false;
    let mut stdin = true;
    let mut argv = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-e" => match it.next().and_then(|kv| kv.split_once('=')) {
                Some((k, v)) => env.push((k.to_owned(), v.to_owned())),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--shell" => shell = true,
            "--no-stdin" => stdin = false,
            "--" => {
                argv = it.cloned().collect();
                break;
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let req = if shell {
        login_shell_request(&ShellOptions {
            env,
            ..Default::default()
        })
    } else if argv.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    } else {
        ExecRequest {
            argv,
            env,
            stdin,
            ..Default::default()
        }
    };
    // Refuse before connecting, as `mvm exec -t` refuses before booting.
    let term = match Terminal::stdio() {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = match AgentClient::connect_unix(socket.as_ref(), deadline).await {
            Ok(c) => c,
            Err(e) => return fail(&e),
        };
        match run_tty(&client, req, term).await {
            Ok(outcome) => ExitCode::from(outcome.exit_code() as u8),
            Err(e) => fail(&e),
        }
    })
}

/// Print the error chain (the terminal is restored by now) and return 125.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("mvm-tty: error: {}", mvm_agent_proto::error_chain(e));
    ExitCode::from(125)
}
