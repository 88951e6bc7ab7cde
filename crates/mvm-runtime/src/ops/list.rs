//! `mvm ps` and `mvm inspect`: every machine with its reconciled status.

use std::path::PathBuf;

use mvm_core::backend::BackendKind;
use mvm_core::instance::InstanceRecord;
use mvm_core::{InstanceDir, Status};
use serde::Serialize;

use crate::{Runtime, RuntimeError};

/// One row of `mvm ps`.
#[derive(Debug, Clone, Serialize)]
pub struct MachineView {
    /// Name.
    pub name: String,
    /// True status (reconciled with the owner lock and the processes).
    pub status: Status,
    /// Why the status differs from the record, why it is broken, or how
    /// the VMM last ended.
    pub note: Option<String>,
    /// Backend.
    pub backend: Option<BackendKind>,
    /// vCPUs.
    pub cpus: Option<u8>,
    /// Memory MiB.
    pub memory_mib: Option<u32>,
    /// Guest IP (only while the machine holds one: a stopped machine has
    /// none).
    pub ip: Option<String>,
    /// Published ports, `HOST_IP:HOST_PORT->GUEST_PORT/tcp`.
    pub ports: Vec<String>,
    /// Creation time (RFC 3339).
    pub created: Option<String>,
    /// Image name.
    pub image: Option<String>,
    /// Transient machine of a running `mvm exec`.
    pub transient: bool,
}

/// Everything known about a machine (`mvm inspect`).
#[derive(Debug, Clone, Serialize)]
pub struct InspectView {
    /// Reconciled status.
    pub status: Status,
    /// Why it differs from the record.
    pub status_note: Option<String>,
    /// The instance directory.
    pub instance_dir: PathBuf,
    /// VMM pid, while it runs.
    pub vmm_pid: Option<u32>,
    /// The owner's pid (the supervisor), while the machine is owned.
    pub supervisor_pid: Option<u32>,
    /// Firecracker API socket or QEMU QMP socket.
    pub api_socket: PathBuf,
    /// Socket `mvm exec` connects to.
    pub agent_socket: PathBuf,
    /// Guest console log.
    pub console_log: PathBuf,
    /// VMM log.
    pub vmm_log: PathBuf,
    /// Supervisor log.
    pub supervisor_log: PathBuf,
    /// The egress policy: recorded, enforced, resolved names, refusals.
    pub egress: crate::resources::egress::EgressView,
    /// The persisted record.
    pub record: InstanceRecord,
}

/// The record of `name` and its reconciled status.
pub fn observe(
    rt: &Runtime,
    name: &str,
) -> Result<(InstanceRecord, mvm_core::instance::Observed), RuntimeError> {
    let rec = rt.registry().load(name)?;
    let obs = rec.observe(rt.registry().owner_alive(name));
    Ok((rec, obs))
}

/// Every machine with its reconciled status, sorted by name.
pub fn list(rt: &Runtime) -> Result<Vec<MachineView>, RuntimeError> {
    let registry = rt.registry();
    Ok(registry
        .list()?
        .into_iter()
        .map(|l| match l.record {
            Ok(rec) => view(&rec, registry.owner_alive(&rec.name)),
            Err(e) => MachineView {
                name: l.name,
                status: Status::Broken,
                note: Some(e.to_string()),
                backend: None,
                cpus: None,
                memory_mib: None,
                ip: None,
                ports: vec![],
                created: None,
                image: None,
                transient: false,
            },
        })
        .collect())
}

/// Everything known about one machine.
pub fn inspect(rt: &Runtime, name: &str) -> Result<InspectView, RuntimeError> {
    let registry = rt.registry();
    let rec = registry.load(name)?;
    let owned = registry.owner_alive(name);
    let obs = rec.observe(owned);
    let dir: InstanceDir = rt.dir(name);
    Ok(InspectView {
        status: obs.status,
        status_note: obs.note.or(rec.error.clone()),
        instance_dir: dir.root().to_owned(),
        vmm_pid: rec.vmm.filter(|v| v.is_alive()).map(|p| p.pid),
        supervisor_pid: rec.owner.filter(|_| owned).map(|p| p.pid),
        api_socket: match rec.backend {
            BackendKind::Firecracker => dir.api_socket(),
            BackendKind::Qemu => dir.qmp_socket(),
        },
        agent_socket: dir.agent_socket(),
        console_log: dir.console_log(),
        vmm_log: dir.vmm_log(),
        supervisor_log: dir.supervisor_log(),
        egress: crate::resources::egress::view(&rec, &dir, owned),
        record: rec,
    })
}

fn view(rec: &InstanceRecord, owned: bool) -> MachineView {
    let obs = rec.observe(owned);
    MachineView {
        name: rec.name.clone(),
        status: obs.status,
        note: obs.note.or_else(|| {
            rec.last_exit
                .clone()
                .filter(|_| obs.status == Status::Stopped)
        }),
        backend: Some(rec.backend),
        cpus: Some(rec.cpus),
        memory_mib: Some(rec.memory_mib),
        ip: rec
            .net
            .as_ref()
            .filter(|_| obs.status.expects_vmm())
            .map(|n| n.ip.to_string()),
        ports: rec
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{}:{}->{}/{}",
                    p.host_ip, p.host_port, p.guest_port, p.protocol
                )
            })
            .collect(),
        created: rec
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .ok(),
        image: Some(rec.image.clone()),
        transient: rec.transient,
    }
}
