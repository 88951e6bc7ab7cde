//! One module per subcommand; each calls into the library crates.

mod completion;
mod cp;
mod doctor;
mod exec;
mod image;
mod logs;
mod machines;
mod setup;
mod tty;
mod volume;

use anyhow::Result;
use mvm_core::MvmHome;
use mvm_runtime::Runtime;

use crate::cli::{Cli, Command};

/// The exit status when a command fails inside mvm (CLI.md: `exec` uses
/// 125 so it cannot be confused with the guest command's own status).
pub fn failure_code(cmd: &Command) -> u8 {
    match cmd {
        Command::Exec(_) | Command::Shell(_) => mvm_runtime::exec::EXIT_MVM_FAILED as u8,
        _ => 1,
    }
}

/// Open the runtime for `$MVM_HOME`.
pub fn runtime() -> Result<Runtime> {
    Ok(Runtime::open(MvmHome::from_env())?)
}

/// Run the parsed command; the returned value is the process exit status.
pub async fn dispatch(cli: Cli) -> Result<u8> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Setup(a) => setup::run(a, quiet).await,
        Command::Doctor(a) => doctor::run(a).await,
        Command::Image(c) => image::run(c, quiet).await,
        Command::Run(a) => machines::run(a, quiet).await,
        Command::Start(a) => machines::start(a).await,
        Command::Stop(a) => machines::stop(a).await,
        Command::Rm(a) => machines::rm(a).await,
        Command::Ps(a) => machines::ps(a),
        Command::Inspect(a) => machines::inspect(a),
        Command::Logs(a) => logs::run(a).await,
        Command::Exec(a) => exec::run(a, quiet).await,
        Command::Pause(a) => machines::pause(a, true).await,
        Command::Resume(a) => machines::pause(a, false).await,
        Command::Gc => machines::gc().await,
        Command::Volume(c) => volume::run(c),
        Command::Cp(a) => cp::run(a).await,
        Command::Shell(a) => tty::shell(a).await,
        Command::Completion(a) => completion::run(a),
        Command::Supervise(a) => machines::supervise(a).await,
    }
}
