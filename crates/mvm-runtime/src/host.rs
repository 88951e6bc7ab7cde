//! Host prerequisites: what `mvm doctor` checks and `mvm setup` (or the
//! first `mvm exec`) installs — exactly the programs of
//! [`mvm_core::tools::HOST_TOOLS`], the list every invocation goes through.
//!
//! On Debian/Ubuntu as root, missing packages are installed with
//! `apt-get install` (argv, no shell), one progress step per command; apt's
//! own output goes to a log file that is quoted when it fails. Elsewhere
//! the check names the exact command that fixes it.

use std::path::PathBuf;
use std::time::Duration;

use mvm_core::tools::{self, APT_GET, BUSYBOX, HostTool};
use serde::Serialize;

use crate::RuntimeError;

/// How long one `apt-get` run may take.
const APT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

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

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn check_tool(t: &HostTool) -> Check {
    let fix = Some(format!("apt-get install -y {}", t.package));
    if *t == BUSYBOX {
        // It runs inside the guest: it must be the static build. The image
        // builder knows how to tell (it reads the ELF program headers).
        let bb = mvm_image::host_tools()
            .into_iter()
            .find(|c| c.tool == "busybox");
        let (ok, detail) = bb.map_or((false, "unknown".into()), |c| (c.ok, c.detail));
        return Check {
            name: "busybox (static)".into(),
            ok,
            detail,
            fix: (!ok).then_some(fix).flatten(),
            package: Some(t.package),
        };
    }
    match t.find() {
        Some(p) => Check {
            name: t.program.into(),
            ok: true,
            detail: p.display().to_string(),
            fix: None,
            package: Some(t.package),
        },
        None => Check {
            name: t.program.into(),
            ok: false,
            detail: format!("{} not found ({})", t.program, t.purpose),
            fix,
            package: Some(t.package),
        },
    }
}

/// One check per external program mvm runs on this host (networking tools
/// only as root, where mvm uses them).
pub fn tool_checks() -> Vec<Check> {
    tools::needed(is_root()).map(check_tool).collect()
}

/// Whether we may install packages here: root, with apt-get.
pub fn can_apt_install() -> bool {
    is_root() && APT_GET.find().is_some()
}

/// Where apt's output goes while mvm installs packages.
pub fn apt_log(home: &mvm_core::MvmHome) -> PathBuf {
    home.root().join("apt-get.log")
}

/// Install the packages of the failed `checks` with apt-get, one progress
/// step per command; apt's output is appended to `log`, and its tail is
/// quoted if it fails.
pub fn apt_install(
    checks: &[Check],
    log: &std::path::Path,
    progress: &dyn mvm_image::Progress,
) -> Result<(), RuntimeError> {
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
    let run = |args: &[&str]| -> Result<bool, RuntimeError> {
        let out = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?
            .into_parts()
            .0;
        let mut cmd = APT_GET.command()?;
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(out.try_clone()?)
            .stderr(out);
        let st = tools::run_status(cmd, APT_TIMEOUT)?;
        Ok(st.status.success())
    };
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&pkgs);
    progress.step(&format!("installing {} (apt-get)", pkgs.join(" ")));
    if !run(&install)? {
        // A fresh machine may have no package lists yet.
        progress.step("updating the package lists (apt-get update)");
        let ok = run(&["update", "-q"])?;
        progress.step(&format!("installing {} (apt-get)", pkgs.join(" ")));
        if !ok || !run(&install)? {
            let text = fs_err::read_to_string(log).unwrap_or_default();
            return Err(RuntimeError::Missing {
                what: format!(
                    "{} (apt-get failed; its log is {}):\n{}",
                    pkgs.join(", "),
                    log.display(),
                    tools::tail(&text, 2000)
                ),
                fix: format!("apt-get update && apt-get install -y {}", pkgs.join(" ")),
            });
        }
    }
    Ok(())
}

/// Make sure every program mvm runs is installed, installing the missing
/// ones when allowed (root on Debian/Ubuntu).
pub fn ensure_tools(
    home: &mvm_core::MvmHome,
    auto_install: bool,
    progress: &dyn mvm_image::Progress,
) -> Result<(), RuntimeError> {
    let missing: Vec<Check> = tool_checks().into_iter().filter(|c| !c.ok).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if auto_install && can_apt_install() {
        apt_install(&missing, &apt_log(home), progress)?;
        let still: Vec<String> = tool_checks()
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} ({})", c.name, c.detail))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctor_checks_and_setup_installs_every_tool_mvm_runs() {
        // As root every tool is checked; each check names its package, so
        // `apt_install` of the failed checks covers every missing program.
        let checked: Vec<&str> = tools::needed(true).map(|t| t.package).collect();
        let all: Vec<&str> = tools::HOST_TOOLS.iter().map(|t| t.package).collect();
        assert_eq!(checked, all);
        for t in tools::HOST_TOOLS {
            let c = check_tool(t);
            assert_eq!(c.package, Some(t.package), "{}", t.program);
            if !c.ok {
                assert!(
                    c.fix.as_deref().is_some_and(|f| f.contains(t.package)),
                    "{c:?}"
                );
            }
        }
        assert!(
            tools::HOST_TOOLS.iter().any(|t| t.package == "iptables"),
            "networking as root runs iptables: it must be installed by setup"
        );
    }
}
