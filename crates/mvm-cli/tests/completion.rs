//! Shell completion through the real binary (no guest): the script of
//! `mvm completion bash` loaded in bash, and `COMPLETE=bash mvm -- WORDS`
//! listing names without side effects. Names of running machines are
//! checked against a real guest in `e2e_tty`.

use std::path::Path;
use std::process::Command;

use crate::common::{empty_home, mvm};

/// `COMPLETE=bash mvm -- WORDS...` (completing the last word): the
/// candidates that are not flags.
pub fn complete(home: &Path, words: &[&str]) -> Vec<String> {
    let out = mvm(home)
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
        .env("_CLAP_IFS", "\n")
        .arg("--")
        .args(words)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|c| !c.starts_with('-'))
        .map(str::to_owned)
        .collect()
}

/// What bash offers for `LINE<Tab>` with `mvm completion bash` loaded
/// (`None` when bash is missing: SKIPPED).
fn bash_offers(home: &Path, line: &str) -> Option<Vec<String>> {
    let script = mvm(home).args(["completion", "bash"]).output().unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mvm.bash");
    fs_err::write(&path, &script.stdout).unwrap();
    let probe = format!(
        "source {script}; read -ra COMP_WORDS <<< \"$LINE\"; \
         [[ $LINE == *' ' ]] && COMP_WORDS+=(''); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
         COMP_LINE=$LINE; COMP_POINT=${{#LINE}}; \
         _clap_complete_mvm mvm \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script = path.display()
    );
    let out = match Command::new("bash")
        .args(["-c", &probe])
        .env("MVM_HOME", home)
        .env("LINE", line)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            mvm_core::testing::skip("SKIPPED: bash completion: no bash");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn bash_completes_subcommands_and_flags_through_the_binary() {
    let h = empty_home();
    let Some(got) = bash_offers(h.path(), "mvm ex") else {
        return;
    };
    assert_eq!(got, ["exec"]);
    let got = bash_offers(h.path(), "mvm exec --t").unwrap();
    assert!(got.contains(&"--tty".to_owned()), "{got:?}");
    assert!(got.contains(&"--timeout".to_owned()), "{got:?}");
}

/// A machine whose owner died is offered by name (with its status) but not
/// recovered by completing — `mvm ps` does that — and a home that does not
/// exist is not created.
#[test]
fn names_are_listed_without_side_effects() {
    let h = empty_home();
    let home = mvm_core::MvmHome::new(h.path());
    let registry = mvm_core::registry::Registry::open(&home).unwrap();
    let rec = mvm_core::instance::InstanceRecord::new(
        "half",
        "default",
        "0",
        mvm_core::BackendKind::Qemu,
    );
    // Created, then its owner "dies" (the lock is released).
    let (dir, lock) = registry.create(&rec).unwrap();
    drop(lock);
    let record = fs_err::read(dir.record()).unwrap();

    assert_eq!(complete(h.path(), &["mvm", "rm", ""]), ["half"]);
    assert_eq!(complete(h.path(), &["mvm", "inspect", "h"]), ["half"]);
    if let Some(got) = bash_offers(h.path(), "mvm rm h") {
        assert_eq!(got, ["half"]);
    }
    // Only running machines for exec, shell and cp; no images here.
    assert!(!complete(h.path(), &["mvm", "exec", ""]).contains(&"half".to_owned()));
    assert!(!complete(h.path(), &["mvm", "cp", "ha"]).contains(&"half:".to_owned()));
    assert!(complete(h.path(), &["mvm", "run", ""]).is_empty());
    // Templates: the store's names, not its own hidden files.
    let templates = home.templates_dir();
    fs_err::create_dir_all(templates.join(".store/abc")).unwrap();
    std::os::unix::fs::symlink(".store/abc", templates.join("web-tpl")).unwrap();
    assert_eq!(
        complete(h.path(), &["mvm", "shell", "--template", ""]),
        ["web-tpl"]
    );
    // Untouched by completion ...
    assert_eq!(fs_err::read(dir.record()).unwrap(), record);
    // ... and recovered by the next ordinary command (so the check above
    // could fail).
    mvm(h.path()).args(["ps", "-a"]).assert().success();
    assert!(!dir.root().exists(), "`mvm ps` did not recover it");

    let missing = h.path().join("not-yet");
    assert!(complete(&missing, &["mvm", "rm", ""]).is_empty());
    assert!(complete(&missing, &["mvm", "run", ""]).is_empty());
    assert!(
        !missing.exists(),
        "completion created {}",
        missing.display()
    );
}
