//! Names for dynamic shell completion (clap_complete's `CompleteEnv`): the
//! shell calls `COMPLETE=<shell> mvm -- <words>` while completing, and
//! these functions list what exists in `$MVM_HOME`.
//!
//! They only read: no runtime is opened when the home or its machines
//! directory does not exist (opening one creates them), dead machines are
//! not reaped (every other command does that), nothing is printed on
//! failure (a broken home completes nothing). Machines are listed with
//! `ops::list::list` (records and owner-lock tests), images with
//! `mvm_image::list`, templates as the names in the template store.

use clap_complete::engine::{CompletionCandidate, PathCompleter, ValueCompleter};
use mvm_core::{MvmHome, Status};
use mvm_runtime::ops::list::MachineView;

/// Machines of `$MVM_HOME` (transient ones of a running `mvm exec` left
/// out), when any can be listed.
fn machine_views() -> Vec<MachineView> {
    let home = MvmHome::from_env();
    if !home.instances_dir().is_dir() {
        return Vec::new();
    }
    let Ok(rt) = mvm_runtime::Runtime::open(home) else {
        return Vec::new();
    };
    mvm_runtime::ops::list::list(&rt)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !m.transient)
        .collect()
}

fn candidate(m: &MachineView) -> CompletionCandidate {
    CompletionCandidate::new(&m.name).help(Some(m.status.to_string().into()))
}

/// Every machine, with its status as the help.
pub fn machines() -> Vec<CompletionCandidate> {
    machine_views().iter().map(candidate).collect()
}

/// Running machines (`exec`, `shell`, `stop`, `pause`).
pub fn running_machines() -> Vec<CompletionCandidate> {
    machine_views()
        .iter()
        .filter(|m| m.status == Status::Running)
        .map(candidate)
        .collect()
}

/// Images, with their kind as the help.
pub fn images() -> Vec<CompletionCandidate> {
    mvm_image::list(&MvmHome::from_env())
        .unwrap_or_default()
        .into_iter()
        .map(|i| {
            let kind = format!("{:?}", i.kind).to_lowercase();
            CompletionCandidate::new(i.name).help(Some(kind.into()))
        })
        .collect()
}

/// Templates: the names in the template store (`$MVM_HOME/templates`; its
/// hidden entries are the store's own files). Read directly:
/// `mvm_template::Store::open` would create the store.
pub fn templates() -> Vec<CompletionCandidate> {
    let dir = MvmHome::from_env().templates_dir();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && mvm_core::name::validate(n).is_ok())
        .collect();
    names.sort();
    names.into_iter().map(CompletionCandidate::new).collect()
}

/// `mvm cp` operands: `NAME:` of running machines, and host paths.
pub struct CpOperand;

impl ValueCompleter for CpOperand {
    fn complete(&self, current: &std::ffi::OsStr) -> Vec<CompletionCandidate> {
        let current_str = current.to_string_lossy();
        let mut out = Vec::new();
        if !current_str.contains(':') {
            out.extend(
                running_machines()
                    .into_iter()
                    .map(|c| format!("{}:", c.get_value().to_string_lossy()))
                    .filter(|v| v.starts_with(&*current_str))
                    .map(CompletionCandidate::new),
            );
        }
        out.extend(PathCompleter::any().complete(current));
        out
    }
}
