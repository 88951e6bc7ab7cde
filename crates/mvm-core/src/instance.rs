//! The persisted record of a machine and its status machine
//! (youki `ContainerStatus`, lima `store/instance.go`).
//!
//! The record says what mvm last did; [`InstanceRecord::observe`] compares
//! it with the processes that really exist and reports the truth, including
//! [`Status::Broken`] when the two disagree in a way mvm cannot explain.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::backend::BackendKind;
use crate::process::ProcessIdentity;

/// Version of the on-disk record format.
pub const RECORD_VERSION: u32 = 1;

/// The life-cycle state of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded, never started.
    Created,
    /// The VMM is being launched.
    Starting,
    /// The VMM runs.
    Running,
    /// The VMM runs with its vCPUs paused.
    Paused,
    /// A stop was requested and is under way.
    Stopping,
    /// No VMM runs.
    Stopped,
    /// Record and reality disagree (e.g. VMM alive without its supervisor, or
    /// an instance directory without a readable record).
    Broken,
}

impl Status {
    /// Whether moving from `self` to `next` is a legal transition.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Created, Starting)
                | (Stopped, Starting)
                | (Broken, Starting)
                | (Starting, Running)
                | (Starting, Stopped)
                | (Starting, Broken)
                | (Running, Paused)
                | (Paused, Running)
                | (Running, Stopping)
                | (Paused, Stopping)
                | (Stopping, Stopped)
                | (Running, Stopped)
                | (Paused, Stopped)
                | (Starting, Stopping)
                | (Stopping, Broken)
                | (Running, Broken)
                | (Paused, Broken)
                | (Broken, Stopped)
        ) || self == next
    }

    /// A VMM is supposed to exist in this state.
    pub fn expects_vmm(self) -> bool {
        matches!(
            self,
            Status::Starting | Status::Running | Status::Paused | Status::Stopping
        )
    }

    /// Lower-case name, as shown by `mvm ps`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Broken => "broken",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Networking mode of a machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Bridge + TAP + NAT (or user-mode networking without root on QEMU).
    #[default]
    Nat,
    /// No network interface at all.
    None,
}

/// The network identity allocated to a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAllocation {
    /// Guest IPv4 address.
    pub ip: std::net::Ipv4Addr,
    /// Prefix length of the subnet.
    pub prefix: u8,
    /// Gateway (the bridge address).
    pub gateway: std::net::Ipv4Addr,
    /// Guest MAC address, `aa:bb:...` form.
    pub mac: String,
    /// Host TAP device name (at most 15 bytes).
    pub tap: String,
}

/// A published port, `-p [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Host address to listen on.
    pub host_ip: std::net::Ipv4Addr,
    /// Host port.
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
    /// Protocol (only "tcp" today).
    pub protocol: String,
}

/// A drive attached to a machine, as recorded (host paths only, no content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveRecord {
    /// Drive id (also the Firecracker drive id).
    pub id: String,
    /// Host path of the image file.
    pub path: std::path::PathBuf,
    /// Attached read-only.
    pub read_only: bool,
    /// What it is for (root, config, secrets, volume:NAME, ...).
    pub role: String,
}

/// Everything mvm persists about one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Record format version.
    pub version: u32,
    /// Unique id (hex), distinct from the name.
    pub id: String,
    /// Machine name.
    pub name: String,
    /// Image name the machine was created from.
    pub image: String,
    /// Content digest of that image.
    pub image_digest: String,
    /// The backend that runs it.
    pub backend: BackendKind,
    /// vCPUs.
    pub cpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Recorded status (see [`InstanceRecord::observe`] for the truth).
    pub status: Status,
    /// Deleted after its one command (transient `mvm exec`).
    #[serde(default)]
    pub transient: bool,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last start time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// The mvm supervisor process that owns the VMM, while one runs.
    #[serde(default)]
    pub supervisor: Option<ProcessIdentity>,
    /// The VMM process, while one runs.
    #[serde(default)]
    pub vmm: Option<ProcessIdentity>,
    /// How the VMM last ended, e.g. "exited with code 0" or "killed by signal 9".
    #[serde(default)]
    pub last_exit: Option<String>,
    /// Why the machine is broken or why its last start failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Network mode.
    #[serde(default)]
    pub network: NetworkMode,
    /// Allocated network identity, when the machine has a NIC.
    #[serde(default)]
    pub net: Option<NetAllocation>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Drives attached at boot.
    #[serde(default)]
    pub drives: Vec<DriveRecord>,
    /// vsock context id (Firecracker).
    #[serde(default)]
    pub vsock_cid: Option<u32>,
    /// Environment variables given with `-e` on `run` (applied to every exec).
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// The reconciled view of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The true status.
    pub status: Status,
    /// Why it differs from the record, if it does.
    pub note: Option<String>,
}

impl InstanceRecord {
    /// A new record in [`Status::Created`].
    pub fn new(name: &str, image: &str, image_digest: &str, backend: BackendKind) -> Self {
        let id: u64 = rand::random();
        Self {
            version: RECORD_VERSION,
            id: format!("{id:016x}"),
            name: name.to_owned(),
            image: image.to_owned(),
            image_digest: image_digest.to_owned(),
            backend,
            cpus: 1,
            memory_mib: 512,
            status: Status::Created,
            transient: false,
            created_at: OffsetDateTime::now_utc(),
            started_at: None,
            supervisor: None,
            vmm: None,
            last_exit: None,
            error: None,
            network: NetworkMode::Nat,
            net: None,
            ports: Vec::new(),
            drives: Vec::new(),
            vsock_cid: None,
            env: Vec::new(),
        }
    }

    /// Compare the record with the live processes.
    ///
    /// - a VMM-bearing status whose VMM is gone is really `Stopped`;
    /// - a live VMM whose supervisor is gone is `Broken` (nobody serves its
    ///   agent socket or records its exit);
    /// - a live VMM while the record says it is stopped is `Broken`.
    pub fn observe(&self) -> Observed {
        let vmm_alive = self.vmm.is_some_and(|p| p.is_alive());
        let sup_alive = self.supervisor.is_some_and(|p| p.is_alive());
        let same = |status| Observed { status, note: None };
        match self.status {
            Status::Starting if !vmm_alive && sup_alive => same(Status::Starting),
            s if s.expects_vmm() => {
                if !vmm_alive {
                    Observed {
                        status: Status::Stopped,
                        note: Some("the VMM process is gone".into()),
                    }
                } else if !sup_alive {
                    Observed {
                        status: Status::Broken,
                        note: Some("the VMM runs but its mvm supervisor is gone".into()),
                    }
                } else {
                    same(s)
                }
            }
            s => {
                if vmm_alive {
                    Observed {
                        status: Status::Broken,
                        note: Some(format!("recorded as {s} but its VMM still runs")),
                    }
                } else {
                    same(s)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead() -> ProcessIdentity {
        let me = ProcessIdentity::current();
        ProcessIdentity {
            pid: me.pid,
            start_time: me.start_time + 12345,
        }
    }

    #[test]
    fn transitions() {
        assert!(Status::Created.can_become(Status::Starting));
        assert!(Status::Running.can_become(Status::Stopping));
        assert!(!Status::Created.can_become(Status::Running));
        assert!(!Status::Stopped.can_become(Status::Paused));
        assert!(!Status::Stopped.can_become(Status::Running));
    }

    #[test]
    fn running_with_dead_vmm_is_stopped() {
        let mut r = InstanceRecord::new("a", "default", "d", BackendKind::Qemu);
        r.status = Status::Running;
        r.vmm = Some(dead());
        r.supervisor = Some(ProcessIdentity::current());
        assert_eq!(r.observe().status, Status::Stopped);
    }

    #[test]
    fn running_with_live_vmm_but_dead_supervisor_is_broken() {
        let mut r = InstanceRecord::new("a", "default", "d", BackendKind::Qemu);
        r.status = Status::Running;
        r.vmm = Some(ProcessIdentity::current());
        r.supervisor = Some(dead());
        assert_eq!(r.observe().status, Status::Broken);
    }

    #[test]
    fn stopped_with_live_vmm_is_broken() {
        let mut r = InstanceRecord::new("a", "default", "d", BackendKind::Qemu);
        r.status = Status::Stopped;
        r.vmm = Some(ProcessIdentity::current());
        assert_eq!(r.observe().status, Status::Broken);
    }

    #[test]
    fn record_round_trips_through_json() {
        let r = InstanceRecord::new("a", "default", "d", BackendKind::Firecracker);
        let s = serde_json::to_string(&r).unwrap();
        let back: InstanceRecord = serde_json::from_str(&s).unwrap();
        assert_eq!(r, back);
    }
}
