//! Leftovers and their removal (`mvm doctor` lists them, `mvm gc` removes
//! them): machines whose owner died (recovered as every command does),
//! unreadable records nobody owns, mvm processes that belong to no
//! registered machine of this home, network objects (TAPs, `mvm:`
//! rules) that no running machine owns, VMM confinement (cgroups, chroot
//! mounts, jail directories) of no machine with a live owner, and what
//! pulls, imports and image builds left in the image store
//! (`mvm_oci::leftovers`: blobs no image needs, interrupted downloads,
//! `images/.tmp-*`).
//!
//! Processes are found by the machine tag mvm puts in the environment of
//! every supervisor and VMM it spawns ([`mvm_core::env::MVM_MACHINE_TAG`]),
//! never by name, and are signalled only after their pid and start time
//! are verified again.

use mvm_core::process::{TaggedProcess, find_tagged};
use mvm_core::registry::RegistryError;
use serde::Serialize;

use crate::resources::{jail, network};
use crate::{Runtime, RuntimeError};

/// Something mvm left behind.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Leftover {
    /// An instance directory without a readable record, and no owner.
    UnreadableMachine {
        /// Its name.
        name: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// An mvm process (supervisor or VMM) of no registered machine, or not
    /// the machine's owner or VMM.
    Process {
        /// The process.
        process: TaggedProcess,
    },
    /// A TAP or `mvm:` rule that no running machine owns.
    Network {
        /// What it is.
        what: String,
    },
    /// A cgroup, chroot mount or jail directory of no machine with a live
    /// owner.
    Jail {
        /// What it is.
        leftover: jail::JailLeftover,
    },
    /// An unfinished template, or a template reference of a machine that
    /// does not run.
    Template {
        /// What it is.
        what: String,
    },
    /// A blob, download or build directory no image needs.
    Image {
        /// What it is.
        what: String,
    },
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leftover::UnreadableMachine { name, reason } => {
                write!(f, "machine directory {name:?} ({reason})")
            }
            Leftover::Process { process } => write!(
                f,
                "process {} ({}) of {}",
                process.process.pid,
                process.cmdline,
                process.instance_dir.display()
            ),
            Leftover::Network { what } | Leftover::Image { what } | Leftover::Template { what } => {
                f.write_str(what)
            }
            Leftover::Jail { leftover } => leftover.fmt(f),
        }
    }
}

/// Whether tagged process `p` is a legitimate part of a machine of this
/// home: the machine exists with the tag's record id, is owned, and `p` is
/// its owner, its recorded VMM, or a child of its owner (a VMM being
/// spawned). Evaluated under the machine's record lock, so a hand-over or
/// a VMM launch in progress is seen complete.
fn legitimate(rt: &Runtime, p: &TaggedProcess) -> bool {
    let Some(name) = p.instance_dir.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let registry = rt.registry();
    let Ok(_l) = registry.lock(name) else {
        return false;
    };
    let Ok(rec) = registry.load(name) else {
        return false;
    };
    if rec.id != p.record_id || !registry.owner_alive(name) {
        return false;
    }
    let is = |id: Option<mvm_core::process::ProcessIdentity>| id == Some(p.process);
    let parent = p.process.parent_pid();
    is(rec.owner) || is(rec.vmm) || (parent.is_some() && parent == rec.owner.map(|o| o.pid))
}

/// Everything left behind, without changing anything (but recovering
/// machines whose owner died, as every command does).
pub fn leftovers(rt: &Runtime) -> Result<Vec<Leftover>, RuntimeError> {
    crate::ops::recover::reap(rt);
    let registry = rt.registry();
    let mut out = Vec::new();
    for l in registry.list()? {
        if let Err(e) = l.record
            && !registry.owner_alive(&l.name)
        {
            out.push(Leftover::UnreadableMachine {
                name: l.name,
                reason: e.to_string(),
            });
        }
    }
    for p in find_tagged(&rt.home().instances_dir()) {
        if !legitimate(rt, &p) {
            out.push(Leftover::Process { process: p });
        }
    }
    if network::use_tap() {
        for l in network::leftovers(rt.config(), registry)? {
            out.push(Leftover::Network {
                what: l.to_string(),
            });
        }
    }
    for leftover in jail::leftovers(rt) {
        out.push(Leftover::Jail { leftover });
    }
    for what in crate::ops::template::leftovers(rt)? {
        out.push(Leftover::Template { what });
    }
    match mvm_oci::leftovers(rt.home()) {
        Ok(l) => out.extend(l.into_iter().map(|l| Leftover::Image {
            what: l.to_string(),
        })),
        Err(e) => tracing::warn!("cannot list image store leftovers: {e}"),
    }
    Ok(out)
}

/// What [`gc`] did.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Machines recovered (their owner had died).
    pub recovered: Vec<String>,
    /// What was removed or stopped.
    pub removed: Vec<String>,
    /// What was left alone, and why.
    pub kept: Vec<String>,
}

/// Remove every leftover.
pub async fn gc(rt: &Runtime) -> Result<GcReport, RuntimeError> {
    let mut report = GcReport::default();
    for r in crate::ops::recover::reap(rt) {
        match r.result {
            Ok(()) => report.recovered.push(r.name),
            Err(e) => report
                .kept
                .push(format!("machine {}: {}", r.name, crate::error_chain(&e))),
        }
    }
    // Confinement first: an unreadable machine's directory cannot be
    // removed while a chroot mount is inside it, and a cgroup kill ends
    // processes that no tag finds (the jailer clears the environment).
    let (removed, kept) = jail::gc(rt);
    report.removed.extend(removed);
    report.kept.extend(kept);
    let registry = rt.registry();
    for l in registry.list()? {
        if l.record.is_err()
            && let Some(lock) = registry.try_own(&l.name)?
        {
            match registry.remove(&l.name) {
                Ok(()) | Err(RegistryError::NotFound { .. }) => report
                    .removed
                    .push(format!("unreadable machine {}", l.name)),
                Err(e) => report.kept.push(format!("machine {}: {e}", l.name)),
            }
            drop(lock);
        }
    }
    for p in find_tagged(&rt.home().instances_dir()) {
        if legitimate(rt, &p) {
            continue;
        }
        match p.process.signal(rustix::process::Signal::KILL) {
            Ok(_) => {
                let _ = p.process.wait_exit(std::time::Duration::from_secs(5));
                report
                    .removed
                    .push(Leftover::Process { process: p }.to_string());
            }
            Err(e) => report.kept.push(format!("process {}: {e}", p.process.pid)),
        }
    }
    if network::use_tap() {
        let net = network::gc(rt.config(), registry)?;
        report
            .removed
            .extend(net.removed.iter().map(|l| l.to_string()));
        report.kept.extend(net.kept.iter().map(|l| l.to_string()));
    }
    report.removed.extend(crate::ops::template::gc(rt)?);
    match mvm_oci::gc(rt.home()) {
        Ok(Some(g)) => {
            let n = g.blobs + g.partials + g.builds;
            if n > 0 {
                report.removed.push(format!(
                    "{} unused image blob(s), {} interrupted download(s), {} unfinished image build(s): {:.1} MB",
                    g.blobs,
                    g.partials,
                    g.builds,
                    g.bytes as f64 / 1e6
                ));
            }
        }
        Ok(None) => report
            .kept
            .push("image blobs: a pull or import is running; run `mvm gc` again later".into()),
        Err(e) => report
            .kept
            .push(format!("image blobs: {}", crate::error_chain(&e))),
    }
    Ok(report)
}
