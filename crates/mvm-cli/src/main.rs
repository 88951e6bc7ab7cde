//! `mvm`: run Linux microVMs the way Docker runs containers.
//!
//! This binary is thin: clap structs in [`cli`], one file per subcommand in
//! `commands/`, all behaviour in the library crates.

mod cli;
mod commands;
mod complete;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `COMPLETE=<shell> mvm -- WORDS`: the shell completing (names from
    // `complete`); prints the candidates and exits. See `mvm completion`.
    clap_complete::CompleteEnv::with_factory(<cli::Cli as clap::CommandFactory>::command)
        .complete();
    let cli = cli::Cli::parse();
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MVM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    // A current-thread runtime: the VMM is spawned from this (main) thread,
    // which matters for PR_SET_PDEATHSIG (it fires when the spawning
    // *thread* exits).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mvm: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let failure_code = commands::failure_code(&cli.command);
    match rt.block_on(commands::dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("mvm: error: {e:#}");
            ExitCode::from(failure_code)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
    }
}
