//! How the supervisor brings a machine's VMM up: a cold boot, a boot with
//! guest RAM on a file (a machine being made into a template), or a
//! restore from a template's snapshot — and what a restored clone needs
//! before it is ready.
//!
//! # The restore path
//!
//! 1. [`plan`] (in `prepare`, before the VMM exists): a clone whose record
//!    says `restore` looks its template up by name and checks it is still
//!    the same one (store id), that it fits (backend, kernel, image), and
//!    that its files are intact (stat fingerprints; a hash only for a file
//!    whose fingerprint changed); then it records the machine's reference
//!    to the template (`refs/<machine>`, released by [`release`] in the
//!    teardown). Any failure is a reason for a cold boot.
//! 2. [`launch`]: the backend restores (spawn, load the device state, map
//!    the memory file privately, resume). A snapshot the VMM refuses
//!    (a damaged state stream, another VMM version, a missing file) is,
//!    again, a reason for a cold boot.
//! 3. After the agent's handshake, and before the machine is reported
//!    ready, [`reidentify`] sends `Reidentify` on the fresh link: hostname,
//!    fresh entropy + CRNG reseed, the host's clock, a new machine-id, the
//!    clone's own address on eth0 when it has a TAP (user-mode networking
//!    is the same for every clone: nothing to change), and a remount of
//!    the config drive when the clone has its own. Nothing else happens in
//!    between: the first client request follows at once.
//!
//! A cold boot instead of a restore is reported as an
//! [`Event::Notice`](super::Event::Notice) naming the reason; with
//! `--require-snapshot` (recorded in the clone's record) it is an error.
//! The cold boot runs the same [`VmSpec`]: the template's image and the
//! clone's own drives (or, for a QEMU transient clone, the template's disk
//! behind a throwaway layer).

use std::path::PathBuf;
use std::time::Instant;

use mvm_agent_proto::identity::{REIDENTIFY_MIN_VERSION, ReidentifyNet, ReidentifyRequest};
use mvm_agent_proto::mux::GuestLink;
use mvm_agent_proto::{Message, Request, Response};
use mvm_core::InstanceDir;
use mvm_core::backend::{BackendError, RunningVmm, VmSpec};
use mvm_core::instance::InstanceRecord;
use mvm_core::snapshot::{MemoryBacking, RestoreInfo};
use mvm_template::{Store, Template, Verify};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Event;
use crate::resources::backend::AnyBackend;
use crate::resources::network;
use crate::{Runtime, RuntimeError};

/// The guest session the supervisor's own `Reidentify` goes on (never one
/// the multiplexer hands out before it has served this many sessions).
const REIDENTIFY_SESSION: u32 = u32::MAX;
/// Host entropy sent to each clone.
const ENTROPY_BYTES: usize = 64;
/// The config drive's mount point in the guest.
const CONFIG_MOUNT: &str = "/mnt/config";

/// How the VMM comes up.
pub enum Launch {
    /// Boot the kernel; `notice` says why this is not a restore, if the
    /// machine is a clone that could not be restored.
    Boot {
        /// Why a clone boots instead of restoring.
        notice: Option<String>,
    },
    /// Boot with guest RAM on this file, mapped shared.
    OnMemoryFile(PathBuf),
    /// Restore from a template.
    Restore(Box<Restore>),
}

/// A restore about to happen.
pub struct Restore {
    template: Template,
    require: bool,
    /// The snapshot to restore (the template's own, or its diskless one).
    snapshot: mvm_core::snapshot::SnapshotDir,
    /// The clone has a config drive of its own (remount it).
    own_config: bool,
    /// DNS servers for a clone with a TAP.
    dns: Vec<std::net::Ipv4Addr>,
}

/// What [`launch`] started.
pub struct Launched {
    /// The VMM.
    pub vmm: RunningVmm,
    /// Make the guest distinct before it is ready (restored clones).
    pub reidentify: Option<ReidentifyRequest>,
    /// The restore's timings, if it was one.
    pub restored: Option<RestoreInfo>,
    /// Why a clone was cold-booted, if it was.
    pub cold_boot: Option<String>,
}

fn clone_of(rec: &InstanceRecord) -> Option<&mvm_core::snapshot::CloneOf> {
    rec.template.as_ref().and_then(|t| t.clone_of.as_ref())
}

/// Decide how `rec` comes up (step 1 of the module docs). Errors only when
/// a restore is required and impossible.
pub fn plan(rt: &Runtime, rec: &InstanceRecord) -> Result<Launch, RuntimeError> {
    let Some(t) = &rec.template else {
        return Ok(Launch::Boot { notice: None });
    };
    if let Some(f) = &t.memory_file {
        return Ok(Launch::OnMemoryFile(f.clone()));
    }
    let Some(c) = t.clone_of.as_ref().filter(|c| c.restore) else {
        return Ok(Launch::Boot { notice: None });
    };
    let prepared = (|| {
        let store = Store::open(rt.home())?;
        let template = store.get(&c.template)?;
        if template.id() != c.id {
            return Err(RuntimeError::Invalid(format!(
                "template {:?} was replaced after machine {:?} was made from it",
                c.template, rec.name
            )));
        }
        let image = mvm_image::get(rt.home(), &rec.image)?;
        crate::ops::template::check_fits(&template, rec.backend, &image)?;
        template.verify(Verify::Quick)?;
        let snapshot = match (c.ram, template.ram_snapshot()) {
            (false, _) => template.snapshot(),
            (true, Some((s, _))) => s,
            (true, None) => {
                return Err(RuntimeError::Invalid(format!(
                    "template {:?} has no diskless snapshot",
                    c.template
                )));
            }
        };
        store.add_ref(&template, &rec.name)?;
        Ok::<_, RuntimeError>((template, snapshot))
    })();
    match prepared {
        Ok((template, snapshot)) => Ok(Launch::Restore(Box::new(Restore {
            template,
            snapshot,
            require: c.require_snapshot,
            own_config: rec.drives.iter().any(|d| {
                d.role == mvm_core::instance::DriveRole::Config
                    && d.path.starts_with(rt.dir(&rec.name).root())
            }),
            dns: crate::resources::egress::guest_dns(rt.config()),
        }))),
        Err(e) => cold_or_fail(&c.template, c.require_snapshot, &e),
    }
}

fn cold_or_fail(template: &str, require: bool, e: &RuntimeError) -> Result<Launch, RuntimeError> {
    let reason = crate::error_chain(e);
    if require {
        return Err(RuntimeError::SnapshotRequired {
            template: template.to_owned(),
            reason,
        });
    }
    Ok(Launch::Boot {
        notice: Some(cold_boot_notice(template, &reason)),
    })
}

/// The one-line notice of a cold boot instead of a restore.
pub fn cold_boot_notice(template: &str, reason: &str) -> String {
    format!("warning: not restoring template {template:?} ({reason}): cold boot instead")
}

/// Step 2 of the module docs: start the VMM as `launch` says. A snapshot
/// the VMM refuses becomes a cold boot (with a notice), unless required.
pub async fn launch(
    backend: &AnyBackend,
    spec: &VmSpec,
    dir: &InstanceDir,
    rec: &InstanceRecord,
    launch: Launch,
    deadline: Instant,
    notify: &mut impl FnMut(Event),
) -> Result<Launched, RuntimeError> {
    let booted = |vmm, cold_boot| Launched {
        vmm,
        reidentify: None,
        restored: None,
        cold_boot,
    };
    match launch {
        Launch::Boot { notice } => {
            if let Some(n) = &notice {
                notify(Event::Notice { message: n.clone() });
            }
            Ok(booted(backend.launch(spec, dir, deadline).await?, notice))
        }
        Launch::OnMemoryFile(f) => Ok(booted(
            backend
                .launch_with_memory(spec, dir, &MemoryBacking::SharedFile(f), deadline)
                .await?,
            None,
        )),
        Launch::Restore(r) => match backend.restore(spec, dir, &r.snapshot, deadline).await {
            Ok(restored) => {
                tracing::debug!("restored: {:?}", restored.info);
                crate::fault::point("sup.restored", restored.vmm.child.id())?;
                Ok(Launched {
                    vmm: restored.vmm,
                    reidentify: Some(request_for(rec, r.own_config, r.dns.clone())),
                    restored: Some(restored.info),
                    cold_boot: None,
                })
            }
            Err(e) if e.snapshot_error().is_some() => {
                let Launch::Boot { notice } =
                    cold_or_fail(&r.template.name, r.require, &RuntimeError::from(e))?
                else {
                    unreachable!("cold_or_fail boots or fails")
                };
                if let Some(n) = &notice {
                    notify(Event::Notice { message: n.clone() });
                }
                Ok(booted(backend.launch(spec, dir, deadline).await?, notice))
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// Record what [`launch`] did (in the record update that marks the
/// machine running): a clone restores only once; later starts cold-boot
/// its own disk.
pub fn mark_launched(r: &mut InstanceRecord, cold_boot: Option<String>) {
    if let Some(c) = r.template.as_mut().and_then(|t| t.clone_of.as_mut()) {
        c.restore = false;
        c.cold_boot = cold_boot;
    }
}

/// The `Reidentify` request of clone `rec` (its clock is set when sent).
fn request_for(
    rec: &InstanceRecord,
    own_config: bool,
    dns: Vec<std::net::Ipv4Addr>,
) -> ReidentifyRequest {
    use rand::RngCore;
    let mut entropy = vec![0u8; ENTROPY_BYTES];
    rand::rng().fill_bytes(&mut entropy);
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    id[0] |= 1; // never all zero
    let net = match network::Attachment::of(rec) {
        network::Attachment::Tap(a) => Some(ReidentifyNet {
            iface: "eth0".into(),
            mac: a.mac.clone(),
            ip: a.ip,
            prefix: a.prefix,
            gateway: a.gateway,
            dns,
        }),
        // User-mode networking gives every clone the same address in its
        // own network: nothing to change.
        network::Attachment::UserMode | network::Attachment::None => None,
    };
    ReidentifyRequest {
        hostname: rec.name.clone(),
        entropy,
        unix_time_ns: 0,
        machine_id: Some(hex::encode(id)),
        net,
        remount: if own_config {
            vec![CONFIG_MOUNT.into()]
        } else {
            Vec::new()
        },
    }
}

fn unix_time_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// Step 3 of the module docs: make the restored guest a machine of its own
/// on the fresh link, before any client is served.
pub async fn reidentify<S>(
    link: &mut GuestLink<S>,
    mut req: ReidentifyRequest,
    backend: &AnyBackend,
    dir: &InstanceDir,
    deadline: Instant,
) -> Result<(), RuntimeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let fail = |what: String| {
        RuntimeError::from(
            BackendError::new(backend.kind(), format!("the restored guest {what}")).with_logs(dir),
        )
    };
    let version = link.negotiated().version;
    if version < REIDENTIFY_MIN_VERSION {
        return Err(fail(format!(
            "speaks agent protocol {version}, and making a clone distinct needs {REIDENTIFY_MIN_VERSION}: rebuild the image (`mvm image build`) and the template"
        )));
    }
    req.unix_time_ns = unix_time_ns();
    let answer = link
        .call(REIDENTIFY_SESSION, Request::Reidentify(req), deadline)
        .await
        .map_err(|e| fail(format!("did not take its new identity: {e}")))?;
    match answer {
        Message::Response(Response::Reidentified(report)) => {
            tracing::info!(
                "reidentified as {:?} in {} µs (clock stepped {} ms{})",
                report.hostname,
                report.elapsed_us,
                report.clock_step_ms,
                report
                    .net
                    .map(|n| format!(", eth0 {n}"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Message::Error(e) => Err(fail(format!("refused its new identity: {}", e.message))),
        other => Err(fail(format!("answered its new identity with {other:?}"))),
    }
}

/// Drop `rec`'s reference to its template, if it holds one. Idempotent;
/// needs only the record (the teardown and recoveries run it).
pub fn release(rt: &Runtime, rec: &InstanceRecord) -> Result<(), RuntimeError> {
    let Some(c) = clone_of(rec) else {
        return Ok(());
    };
    let store = Store::open(rt.home())?;
    store.release(&c.id, &rec.name)?;
    Ok(())
}
