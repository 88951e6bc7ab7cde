//! Builds the guest agent (`crates/mvm-agent`) as a static x86_64 binary with
//! a nested cargo and hands it to `src/agent.rs` for `include_bytes!`.
//!
//! The nested cargo gets its own target directory (beside the outer one, so
//! it never waits on the outer build's lock) and an environment cleaned of
//! everything cargo sets for build scripts: flags, wrappers (clippy sets
//! `RUSTC_WORKSPACE_WRAPPER`), the outer target and profile settings.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Embed this prebuilt static agent instead of building one (for packaging,
/// or to work on mvm-image while the agent does not compile).
const PREBUILT_ENV: &str = "MVM_AGENT_PREBUILT";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("crates/mvm-image sits two levels below the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env("OUT_DIR"));
    // OUT_DIR = <target>/<profile>/build/mvm-image-<hash>/out (or with a
    // <triple>/ level after <target>); the profile directory is nth(3).
    let agent_target_dir = out_dir
        .ancestors()
        .nth(3)
        .expect("OUT_DIR has the shape <target>/<profile>/build/<pkg>/out")
        .join("mvm-agent-nested");

    for p in [
        "crates/mvm-agent/src",
        "crates/mvm-agent/Cargo.toml",
        "crates/mvm-agent-proto/src",
        "crates/mvm-agent-proto/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_HOME");
    println!("cargo:rerun-if-env-changed={PREBUILT_ENV}");

    let bytes = match std::env::var_os(PREBUILT_ENV).filter(|v| !v.is_empty()) {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", Path::new(&path).display());
            fs_err::read(&path).unwrap_or_else(|e| panic!("{PREBUILT_ENV}: {e}"))
        }
        None => build_agent(&workspace, &agent_target_dir),
    };
    if let Err(why) = check_static_elf(&bytes) {
        panic!("the guest agent is not usable: {why}");
    }
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    write_if_changed(&out_dir.join("mvm-agent"), &bytes);
    write_if_changed(&out_dir.join("mvm-agent.sha256"), sha.as_bytes());
}

/// Run the nested cargo and return the agent's bytes.
fn build_agent(workspace: &Path, agent_target_dir: &Path) -> Vec<u8> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("-p")
        .arg("mvm-agent")
        .arg("--release")
        .arg("--target")
        .arg(AGENT_TARGET)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(agent_target_dir);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if leaks_into_nested_cargo(key) {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the nested cargo for mvm-agent: {e}"));
    if !output.status.success() {
        let _ = std::io::stderr().write_all(&output.stdout);
        let _ = std::io::stderr().write_all(&output.stderr);
        panic!(
            "building the guest agent (cargo build -p mvm-agent --release --target {AGENT_TARGET}) failed with {}; its output is above",
            output.status
        );
    }
    let built = agent_target_dir
        .join(AGENT_TARGET)
        .join("release")
        .join("mvm-agent");
    fs_err::read(&built).unwrap_or_else(|e| panic!("cannot read the built agent: {e}"))
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("cargo did not set {key}"))
}

/// Variables cargo sets for build scripts (or the user set for the outer
/// build) that must not reach the nested cargo.
fn leaks_into_nested_cargo(key: &str) -> bool {
    const KEEP: &[&str] = &["CARGO_HOME", "CARGO_NET_OFFLINE", "CARGO_TERM_COLOR"];
    if KEEP.contains(&key)
        || key.starts_with("CARGO_HTTP_")
        || key.starts_with("CARGO_NET_")
        || key.starts_with("CARGO_REGISTRIES_")
        || key.starts_with("CARGO_REGISTRY_")
    {
        return false;
    }
    key.starts_with("CARGO_")
        || matches!(
            key,
            "RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "RUSTC_WRAPPER"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "RUSTC_LINKER"
                | "RUSTDOC"
                | "OUT_DIR"
                | "TARGET"
                | "HOST"
                | "NUM_JOBS"
                | "OPT_LEVEL"
                | "DEBUG"
                | "PROFILE"
                | "MAKEFLAGS"
                | "MFLAGS"
                | "CLIPPY_ARGS"
                | "CLIPPY_CONF_DIR"
                | "__CARGO_DEFAULT_LIB_METADATA"
                | "__CARGO_FIX_PLZ"
        )
}

/// A 64-bit little-endian x86_64 ELF without a `PT_INTERP` program header
/// (a static or static-pie executable needs no dynamic loader in the guest).
fn check_static_elf(b: &[u8]) -> Result<(), String> {
    let elf = goblin::elf::Elf::parse(b).map_err(|e| format!("not an ELF file: {e}"))?;
    if !elf.is_64 || !elf.little_endian {
        return Err("not a 64-bit little-endian ELF".into());
    }
    if elf.header.e_machine != goblin::elf::header::EM_X86_64 {
        return Err(format!(
            "e_machine is {}, not x86_64 (62)",
            elf.header.e_machine
        ));
    }
    if elf.interpreter.is_some() {
        return Err("it is dynamically linked (has PT_INTERP); crt-static did not apply".into());
    }
    Ok(())
}

fn write_if_changed(path: &Path, bytes: &[u8]) {
    if fs_err::read(path).is_ok_and(|old| old == bytes) {
        return;
    }
    fs_err::write(path, bytes).unwrap_or_else(|e| panic!("{e}"));
}
