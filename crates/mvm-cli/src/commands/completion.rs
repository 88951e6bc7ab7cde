//! `mvm completion SHELL`: print the shell code that registers mvm's
//! completion (clap_complete's dynamic completion, `CompleteEnv`).
//!
//! The registered function calls `COMPLETE=<shell> mvm -- WORDS` back on
//! every Tab (handled at the top of `main`), so subcommands, flags,
//! enumerated values and the names that exist right now — machines, images,
//! templates (`crate::complete`) — all complete. The script names this
//! binary by its absolute path; load it from the shell's startup file
//! (`source <(mvm completion bash)`) rather than saving it, so it follows
//! upgrades. Same as `COMPLETE=bash mvm`.

use anyhow::{Context, Result};

use crate::cli::CompletionArgs;

/// Write the script for `a.shell` to stdout (a closed stdout, as with
/// `| head`, is not an error).
pub fn run(a: CompletionArgs) -> Result<u8> {
    use std::io::Write;
    let exe = std::env::current_exe().context("cannot find the mvm binary's path")?;
    let mut script = Vec::new();
    write(a.shell, &exe.to_string_lossy(), &mut script)?;
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

/// The registration for `shell`, calling `completer` back.
fn write(shell: clap_complete::Shell, completer: &str, out: &mut dyn std::io::Write) -> Result<()> {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let env = shells
        .completer(&name)
        .with_context(|| format!("no dynamic completion for {name}"))?;
    env.write_registration("COMPLETE", "mvm", "mvm", completer, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;
    use clap_complete::Shell;

    /// Every shell `mvm completion` accepts has a registration that calls
    /// the given binary back (the completions themselves are tested on the
    /// real binary, tests/completion.rs).
    #[test]
    fn every_shell_registers_a_callback() {
        for shell in Shell::value_variants() {
            let mut v = Vec::new();
            write(*shell, "/opt/x/mvm", &mut v).unwrap();
            let s = String::from_utf8(v).unwrap();
            assert!(s.contains("/opt/x/mvm"), "{shell}: {s}");
            assert!(s.contains("COMPLETE"), "{shell}: {s}");
        }
    }
}
