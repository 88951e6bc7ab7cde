//! One module per subcommand: parse what clap gave, call one operation of
//! `mvm-runtime`, print the result.

mod completion;
mod cp;
mod doctor;
mod exec;
mod gc;
mod image;
mod inspect;
mod logs;
mod pause;
mod ps;
mod rm;
mod run;
mod setup;
mod shell;
mod start;
mod stop;
mod supervise;
mod template;
mod update;
mod volume;

use anyhow::Result;
use mvm_core::MvmHome;
use mvm_runtime::Runtime;

use crate::cli::{Cli, Command};

/// The exit status when a command fails inside mvm (CLI.md: `exec` uses
/// 125 so it cannot be confused with the guest command's own status).
pub fn failure_code(cmd: &Command) -> u8 {
    match cmd {
        Command::Exec(_) | Command::Shell(_) => mvm_runtime::ops::exec::EXIT_MVM_FAILED as u8,
        _ => 1,
    }
}

/// Open the runtime for `$MVM_HOME` and recover machines whose owner died
/// (every command that reads the registry does, so nothing is left for a
/// human to clean up).
pub fn runtime() -> Result<Runtime> {
    let rt = Runtime::open(MvmHome::from_env())?;
    tracing::debug!("runtime opened");
    mvm_runtime::ops::recover::reap(&rt);
    tracing::debug!("machines reaped");
    Ok(rt)
}

/// Parse `KEY=VAL` arguments.
pub fn parse_env(items: &[String]) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| {
            let v = mvm_data::spec::EnvVar::parse(s)?;
            Ok((v.key, v.value))
        })
        .collect()
}

/// The egress policy of `--egress` flags: `None` without flags (the
/// configured default applies).
pub fn parse_egress(flags: &[String]) -> Result<Option<mvm_core::egress::EgressPolicy>> {
    if flags.is_empty() {
        return Ok(None);
    }
    Ok(Some(mvm_core::egress::EgressPolicy::from_flags(flags)?))
}

/// Tell the user what user-mode networking (no root) enforces of the
/// egress policy of a new machine, when they chose one (`asked`, or a
/// configured default other than allow-all).
pub fn egress_note(
    rt: &Runtime,
    asked: Option<&mvm_core::egress::EgressPolicy>,
    network: Option<mvm_core::instance::NetworkMode>,
    quiet: bool,
) {
    let default = &rt.config().network.egress;
    let chosen = asked.is_some() || *default != mvm_core::egress::EgressPolicy::default();
    let network = network.unwrap_or(rt.config().network.mode);
    let policy = asked.unwrap_or(default);
    if mvm_runtime::resources::egress::check(network, policy).is_err() {
        return; // creating the machine fails, saying why
    }
    let note = mvm_runtime::resources::egress::user_mode_note(network, policy);
    if let Some(note) = note.filter(|_| chosen && !quiet) {
        eprintln!("mvm: note: {note}");
    }
}

/// Print `name` (and `note`) for a machine that succeeded, the error of
/// one that failed; `true` when it failed.
pub fn report<T>(
    name: &str,
    r: Result<T, mvm_runtime::RuntimeError>,
    note: impl Fn(&T) -> String,
) -> bool {
    match r {
        Ok(v) => {
            println!("{name}{}", note(&v));
            false
        }
        Err(e) => {
            eprintln!("mvm: error: {:#}", anyhow::Error::from(e));
            true
        }
    }
}

/// Run the parsed command; the returned value is the process exit status.
pub async fn dispatch(cli: Cli) -> Result<u8> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Setup(a) => setup::run(a, quiet).await,
        Command::Doctor(a) => doctor::run(a).await,
        Command::Image(c) => image::run(c, quiet).await,
        Command::Run(a) => run::run(a, quiet).await,
        Command::Start(a) => start::run(a).await,
        Command::Stop(a) => stop::run(a).await,
        Command::Rm(a) => rm::run(a).await,
        Command::Ps(a) => ps::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Logs(a) => logs::run(a).await,
        Command::Exec(a) => exec::run(a, quiet).await,
        Command::Pause(a) => pause::run(a, true).await,
        Command::Resume(a) => pause::run(a, false).await,
        Command::Update(a) => update::run(a).await,
        Command::Gc => gc::run().await,
        Command::Volume(c) => volume::run(c),
        Command::Template(c) => template::run(c, quiet).await,
        Command::Cp(a) => cp::run(a).await,
        Command::Shell(a) => shell::run(a, quiet).await,
        Command::Completion(a) => completion::run(a),
        Command::Supervise(a) => supervise::run(a).await,
    }
}
