//! Host prerequisites: what `mvm doctor` reports and `mvm setup` installs.
//!
//! On Debian/Ubuntu as root, missing packages are installed with
//! `apt-get install` (argv, no shell). Elsewhere the check names the exact
//! command that fixes it.

use std::process::{Command, Stdio};

use serde::Serialize;

use crate::RuntimeError;

/// One prerequisite.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Present and usable.
    pub ok: bool,
    /// What was found (path, version) or what is wrong.
    pub detail: String,
    /// The command that fixes it (when not ok).
    pub fix: Option<String>,
    /// Debian package that provides it, if any.
    #[serde(skip)]
    pub package: Option<&'static str>,
}

/// Find an executable on PATH or in the sbin directories (the image
/// builder's lookup, so both agree on what is installed).
pub use mvm_image::which;

fn tool(name: &str, bin: &str, package: &'static str) -> Check {
    match which(bin) {
        Some(p) => Check {
            name: name.into(),
            ok: true,
            detail: p.display().to_string(),
            fix: None,
            package: Some(package),
        },
        None => Check {
            name: name.into(),
            ok: false,
            detail: format!("{bin} not found"),
            fix: Some(format!("apt-get install -y {package}")),
            package: Some(package),
        },
    }
}

/// The tools the QEMU backend and the image builder need.
pub fn base_checks() -> Vec<Check> {
    let mut v = vec![
        tool("qemu", "qemu-system-x86_64", "qemu-system-x86"),
        tool("mkfs.ext4", "mkfs.ext4", "e2fsprogs"),
        tool("debugfs", "debugfs", "e2fsprogs"),
        tool("dpkg-deb", "dpkg-deb", "dpkg"),
        tool("apt-get", "apt-get", "apt"),
    ];
    // busybox must be the static build: it runs inside the guest. The
    // image builder knows how to tell (it reads the ELF program headers).
    let bb = mvm_image::host_tools()
        .into_iter()
        .find(|t| t.tool == "busybox");
    let (ok, detail) = bb.map_or((false, "unknown".into()), |t| (t.ok, t.detail));
    v.push(Check {
        name: "busybox (static)".into(),
        ok,
        detail,
        fix: (!ok).then(|| "apt-get install -y busybox-static".into()),
        package: Some("busybox-static"),
    });
    v
}

/// Whether we may install packages here: root, with apt-get.
pub fn can_apt_install() -> bool {
    rustix::process::geteuid().is_root() && which("apt-get").is_some()
}

/// Install the packages of the failed `checks` with apt-get. Output goes to
/// our stderr so the user sees progress.
pub fn apt_install(checks: &[Check]) -> Result<(), RuntimeError> {
    let mut pkgs: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok)
        .filter_map(|c| c.package)
        .collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    if pkgs.is_empty() {
        return Ok(());
    }
    if !can_apt_install() {
        return Err(RuntimeError::Missing {
            what: pkgs.join(", "),
            fix: format!("sudo apt-get install -y {}", pkgs.join(" ")),
        });
    }
    eprintln!("mvm: installing {} with apt-get", pkgs.join(" "));
    let run = |args: &[&str]| -> Result<bool, RuntimeError> {
        let st = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()?;
        Ok(st.success())
    };
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&pkgs);
    if !run(&install)? {
        // A fresh machine may have no package lists yet.
        if !run(&["update", "-q"])? || !run(&install)? {
            return Err(RuntimeError::Missing {
                what: pkgs.join(", "),
                fix: format!("apt-get update && apt-get install -y {}", pkgs.join(" ")),
            });
        }
    }
    Ok(())
}

/// Make sure the base tools exist, installing them when allowed.
pub fn ensure_base(auto_install: bool) -> Result<(), RuntimeError> {
    let checks = base_checks();
    let missing: Vec<Check> = checks.into_iter().filter(|c| !c.ok).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if auto_install && can_apt_install() {
        apt_install(&missing)?;
        let still: Vec<String> = base_checks()
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect();
        if still.is_empty() {
            return Ok(());
        }
        return Err(RuntimeError::Missing {
            what: still.join(", "),
            fix: "mvm doctor".into(),
        });
    }
    let fixes: Vec<String> = missing.iter().filter_map(|c| c.fix.clone()).collect();
    Err(RuntimeError::Missing {
        what: missing
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
        fix: format!("mvm setup (or: {})", fixes.join("; ")),
    })
}
