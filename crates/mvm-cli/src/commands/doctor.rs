//! `mvm doctor`: one line per prerequisite, and which backend `auto` picks.

use std::io::Write;

use anyhow::Result;
use mvm_core::backend::{BackendChoice, kvm_usable};
use mvm_runtime::host::{Check, tool_checks};
use mvm_runtime::resources::backend::select;

use crate::cli::DoctorArgs;
use crate::commands::runtime;

pub async fn run(a: DoctorArgs) -> Result<u8> {
    let rt = runtime()?;
    let mut checks: Vec<Check> = tool_checks();
    let kvm = kvm_usable();
    checks.push(Check {
        name: "kvm".into(),
        ok: kvm.usable,
        detail: kvm.reason.clone(),
        fix: (!kvm.usable).then(|| {
            "none needed: QEMU runs guests with TCG (slower); for Firecracker use a host with hardware virtualization".into()
        }),
        package: None,
    });
    let fc = mvm_firecracker::doctor(rt.config(), rt.home());
    checks.push(match (&fc.binary, &fc.version) {
        (Some(p), Some(v)) => Check {
            name: "firecracker".into(),
            ok: true,
            detail: if *v == fc.expected_version {
                format!("{} ({v})", p.display())
            } else {
                format!(
                    "{} ({v}; mvm is tested with {})",
                    p.display(),
                    fc.expected_version
                )
            },
            fix: None,
            package: None,
        },
        (Some(p), None) => Check {
            name: "firecracker".into(),
            ok: false,
            detail: format!(
                "{}: {}",
                p.display(),
                fc.problem.as_deref().unwrap_or("does not run")
            ),
            fix: Some("mvm setup --backend firecracker --firecracker-bin PATH".into()),
            package: None,
        },
        (None, _) => Check {
            name: "firecracker".into(),
            ok: false,
            detail: "no firecracker binary".into(),
            fix: Some("mvm setup --backend firecracker (or --firecracker-bin PATH)".into()),
            package: None,
        },
    });
    let jail = mvm_runtime::resources::jail::status(rt.config(), rt.home());
    checks.push(Check {
        name: "isolation".into(),
        ok: jail.active,
        detail: jail.detail,
        fix: jail.fix,
        package: None,
    });
    let images = mvm_image::list(rt.home()).unwrap_or_default();
    let has_default = images.iter().any(|i| i.name == "default");
    checks.push(Check {
        name: "default image".into(),
        ok: has_default,
        detail: if has_default {
            "built".into()
        } else {
            "not built yet (built on first use)".into()
        },
        fix: (!has_default).then(|| "mvm setup".into()),
        package: None,
    });
    match mvm_runtime::ops::gc::leftovers(&rt) {
        Ok(l) => checks.push(Check {
            name: "leftovers".into(),
            ok: l.is_empty(),
            detail: if l.is_empty() {
                "none".into()
            } else {
                l.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            fix: (!l.is_empty()).then(|| "mvm gc".into()),
            package: None,
        }),
        Err(e) => checks.push(Check {
            name: "leftovers".into(),
            ok: false,
            detail: format!("cannot check: {e}"),
            fix: None,
            package: None,
        }),
    }
    let sel = select(BackendChoice::Auto, rt.config(), rt.home());
    let mut out = std::io::stdout().lock();
    if a.json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            checks: &'a [Check],
            auto_backend: &'a mvm_runtime::resources::backend::Selection,
            home: String,
        }
        serde_json::to_writer_pretty(
            &mut out,
            &Report {
                checks: &checks,
                auto_backend: &sel,
                home: rt.home().root().display().to_string(),
            },
        )?;
        writeln!(out)?;
    } else {
        for c in &checks {
            let status = if c.ok { "ok" } else { "missing" };
            write!(out, "{status:<8} {:<18} {}", c.name, c.detail)?;
            if let Some(f) = &c.fix {
                write!(out, "  (fix: {f})")?;
            }
            writeln!(out)?;
        }
        writeln!(out, "backend  auto picks {}: {}", sel.kind, sel.reason)?;
    }
    Ok(0)
}
