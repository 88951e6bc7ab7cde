//! The programs mvm invokes, installs and checks are one list: every
//! external program in the host-side code is run through
//! `mvm_core::tools` (whose `HOST_TOOLS` table `mvm setup` installs and
//! `mvm doctor` checks), never spawned by a literal name.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs_err::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_host_program_is_spawned_by_a_literal_name() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for c in fs_err::read_dir(&crates).unwrap().flatten() {
        // The guest agent runs inside the guest: its programs are the image's.
        if c.file_name() == "mvm-agent" {
            continue;
        }
        let src = c.path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 50, "scanned only {} files", files.len());
    let mut offenders = Vec::new();
    for f in &files {
        let text = fs_err::read_to_string(f).unwrap();
        // Unit tests may spawn `sleep`, `sh`... to exercise process code.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, line) in code.lines().enumerate() {
            let l = line.split("//").next().unwrap_or_default();
            if l.contains("Command::new(\"") {
                offenders.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "spawn these through mvm_core::tools (and list them in HOST_TOOLS):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn every_tool_has_a_package_setup_can_install() {
    for t in mvm_core::tools::HOST_TOOLS {
        assert!(
            !t.package.is_empty() && !t.package.contains(' '),
            "{}: package {:?}",
            t.program,
            t.package
        );
    }
}

#[test]
fn every_mvm_variable_the_code_reads_is_named_in_mvm_core_env() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    let mut unknown = std::collections::BTreeSet::new();
    for f in &files {
        let text = fs_err::read_to_string(f).unwrap();
        for part in text.split("\"MVM_").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let var = format!("MVM_{name}");
            if !name.is_empty()
                && part[name.len()..].starts_with('"')
                && !mvm_core::env::ALL.contains(&var.as_str())
            {
                unknown.insert(format!("{var} ({})", f.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "name these in mvm_core::env (and read settings only in the config):\n{}",
        unknown.into_iter().collect::<Vec<_>>().join("\n")
    );
}
