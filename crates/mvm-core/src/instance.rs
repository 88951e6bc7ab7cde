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
///
/// ```text
///  Creating ──▶ Created ──▶ Starting ──▶ Running ◀──▶ Paused
///                              │  ▲          │           │
///                              │  └─ Stopped ◀── Stopping ◀┘
///                              └──────────────▶ Stopping / Stopped
/// ```
///
/// The recorded status changes only through [`InstanceRecord::transition`],
/// which refuses moves the machine cannot make. [`Status::Broken`] is never
/// recorded by this version: it is what [`InstanceRecord::observe`] reports
/// when record and reality disagree in a way no recovery can explain (and
/// what an unreadable record lists as).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The name is claimed and drives are being built; the creating process
    /// owns the machine.
    Creating,
    /// Recorded, never started.
    Created,
    /// The owner (the machine's supervisor) is launching the VMM or waiting
    /// for the guest agent.
    Starting,
    /// The VMM runs the guest.
    Running,
    /// The VMM runs with its vCPUs paused.
    Paused,
    /// A stop was requested and the owner is carrying it out.
    Stopping,
    /// No VMM runs and nothing of the machine's runtime is left on the host.
    Stopped,
    /// Record and reality disagree (only ever observed, never recorded).
    Broken,
}

impl Status {
    /// Whether moving from `self` to `next` is a legal transition.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        self == next
            || matches!(
                (self, next),
                (Creating, Created)
                    | (Created, Starting)
                    | (Stopped, Starting)
                    | (Starting, Running)
                    | (Starting, Stopping)
                    | (Starting, Stopped)
                    | (Running, Paused)
                    | (Paused, Running)
                    | (Running, Stopping)
                    | (Paused, Stopping)
                    | (Running, Stopped)
                    | (Paused, Stopped)
                    | (Stopping, Stopped)
                    // Records written by earlier versions.
                    | (Broken, Stopped)
            )
    }

    /// A VMM may exist in this state (its owner is launching, running or
    /// stopping it).
    pub fn expects_vmm(self) -> bool {
        matches!(
            self,
            Status::Starting | Status::Running | Status::Paused | Status::Stopping
        )
    }

    /// The machine is up or on its way up or down: `mvm ps` lists it
    /// without `-a`.
    pub fn is_active(self) -> bool {
        self.expects_vmm() || self == Status::Creating || self == Status::Broken
    }

    /// Lower-case name, as shown by `mvm ps`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
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

/// A status change the state machine forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("machine {name:?} cannot go from {from} to {to}")]
pub struct BadTransition {
    /// The machine.
    pub name: String,
    /// Its recorded status.
    pub from: Status,
    /// The requested status.
    pub to: Status,
}

/// What kind of process owns a machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerRole {
    /// The machine's supervisor: it runs (or is about to run) the VMM and
    /// stops it when asked (SIGTERM, after a [`StopRequest`] is recorded).
    #[default]
    Supervisor,
    /// The process creating the machine (`mvm run`, `mvm exec`): it reads
    /// the [`StopRequest`] when it hands the machine to a supervisor, and is
    /// never signalled.
    Creator,
}

/// A stop asked of the machine's owner (`mvm stop`, `mvm rm -f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// How long the guest may take to power off before its VMM is killed
    /// (0: kill at once).
    pub timeout_ms: u64,
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

/// What a drive is for. Serialized as a string (`root`, `config`,
/// `secrets`, `volume:NAME`, `hostdir:/path`), as records always were.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DriveRole {
    /// The machine's own writable root disk (`/dev/vda`).
    Root,
    /// The read-only config drive.
    Config,
    /// The secrets drive.
    Secrets,
    /// A named volume.
    Volume(String),
    /// A host directory copied in (and written back when rw).
    HostDir(std::path::PathBuf),
}

impl DriveRole {
    /// The named volume this drive is, if it is one.
    pub fn volume(&self) -> Option<&str> {
        match self {
            DriveRole::Volume(v) => Some(v),
            _ => None,
        }
    }
}

impl From<DriveRole> for String {
    fn from(r: DriveRole) -> String {
        match r {
            DriveRole::Root => "root".into(),
            DriveRole::Config => "config".into(),
            DriveRole::Secrets => "secrets".into(),
            DriveRole::Volume(v) => format!("volume:{v}"),
            DriveRole::HostDir(p) => format!("hostdir:{}", p.display()),
        }
    }
}

impl TryFrom<String> for DriveRole {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "root" => DriveRole::Root,
            "config" => DriveRole::Config,
            "secrets" => DriveRole::Secrets,
            _ => {
                if let Some(v) = s.strip_prefix("volume:") {
                    DriveRole::Volume(v.to_owned())
                } else if let Some(p) = s.strip_prefix("hostdir:") {
                    DriveRole::HostDir(p.into())
                } else {
                    return Err(format!("unknown drive role {s:?}"));
                }
            }
        })
    }
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
    /// What it is for.
    pub role: DriveRole,
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
    /// Recorded status; changed only through [`InstanceRecord::transition`]
    /// (see [`InstanceRecord::observe`] for the truth).
    status: Status,
    /// Removed after its one command (transient `mvm exec`); a transient
    /// machine whose owner died is reaped by the next mvm command.
    #[serde(default)]
    pub transient: bool,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last start time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// The process that owns the machine while it is created, started, runs
    /// or stops (the creating CLI, then the supervisor). Informational and
    /// for signalling: liveness is the owner lock, not this pid.
    #[serde(default, alias = "supervisor")]
    pub owner: Option<ProcessIdentity>,
    /// What [`InstanceRecord::owner`] is.
    #[serde(default)]
    pub owner_role: OwnerRole,
    /// The VMM process, while one runs.
    #[serde(default)]
    pub vmm: Option<ProcessIdentity>,
    /// A stop the owner must carry out (set by `mvm stop` / `rm -f`).
    #[serde(default)]
    pub stop_request: Option<StopRequest>,
    /// How the VMM last ended, e.g. "exited with code 0" or "killed by signal 9".
    #[serde(default)]
    pub last_exit: Option<String>,
    /// Why the last start failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Network mode.
    #[serde(default)]
    pub network: NetworkMode,
    /// Allocated network identity, while the machine holds one (from start
    /// to stop; a stopped machine holds no address).
    #[serde(default)]
    pub net: Option<NetAllocation>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// What the machine may reach (`--egress`); records written before
    /// policies existed read as `allow-all`.
    #[serde(default)]
    pub egress: crate::egress::EgressPolicy,
    /// Drives attached at boot.
    #[serde(default)]
    pub drives: Vec<DriveRecord>,
    /// vsock context id (Firecracker).
    #[serde(default)]
    pub vsock_cid: Option<u32>,
    /// Environment variables given with `-e` on `run` (applied to every exec).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// How the machine's VMM is confined (its uid/gid and cgroup), chosen
    /// at creation; `None`: it runs with mvm's own privileges (not root,
    /// `--no-jailer`, or a record of an earlier version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<crate::isolation::Isolation>,
    /// Templates: the one this machine is a clone of, or its part in
    /// making one (see `snapshot::TemplateUse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<crate::snapshot::TemplateUse>,
    /// The main process (an OCI image's Entrypoint + Cmd, `mvm run IMAGE`):
    /// the machine stops when it exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<crate::main_process::MainProcess>,
    /// How the main process last ended (cleared at each start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_exit: Option<crate::main_process::MainExit>,
}

/// The reconciled view of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The true status.
    pub status: Status,
    /// Why it differs from the record, if it does.
    pub note: Option<String>,
    /// The owner is gone but left runtime state behind (a VMM, an address,
    /// an unfinished creation, a transient machine): the next mvm command
    /// that can take the machine's owner lock recovers it.
    pub needs_recovery: bool,
}

impl InstanceRecord {
    /// A new record in [`Status::Creating`].
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
            status: Status::Creating,
            transient: false,
            created_at: OffsetDateTime::now_utc(),
            started_at: None,
            owner: None,
            owner_role: OwnerRole::Creator,
            vmm: None,
            stop_request: None,
            last_exit: None,
            error: None,
            network: NetworkMode::Nat,
            net: None,
            ports: Vec::new(),
            egress: crate::egress::EgressPolicy::default(),
            drives: Vec::new(),
            vsock_cid: None,
            env: Vec::new(),
            isolation: None,
            template: None,
            main: None,
            main_exit: None,
        }
    }

    /// The recorded status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Move to `to`, refusing transitions the state machine forbids.
    pub fn transition(&mut self, to: Status) -> Result<(), BadTransition> {
        if !self.status.can_become(to) {
            return Err(BadTransition {
                name: self.name.clone(),
                from: self.status,
                to,
            });
        }
        self.status = to;
        Ok(())
    }

    /// Record that nothing of the machine runs any more: no VMM, no owner,
    /// no address, no pending stop. Allowed from every state but
    /// `Creating`/`Created` (which stay as they are: nothing ever ran).
    pub fn mark_stopped(&mut self, last_exit: Option<String>) {
        if !matches!(self.status, Status::Creating | Status::Created) {
            self.status = Status::Stopped;
        }
        self.vmm = None;
        self.owner = None;
        self.stop_request = None;
        self.net = None;
        if last_exit.is_some() {
            self.last_exit = last_exit;
        }
    }

    /// Compare the record with reality. `owner_alive` says whether some
    /// process holds the machine's owner lock (see
    /// `Registry::owner_alive`); the VMM's liveness is checked by pid and
    /// start time.
    ///
    /// - With a live owner the recorded status is the truth (the owner keeps
    ///   it current).
    /// - With no owner, a machine that was being created, started, run or
    ///   stopped — or that still has a live VMM or holds an address, or is
    ///   transient — lost its owner: it is reported as stopped (or broken
    ///   while a VMM of it still runs) and marked for recovery.
    pub fn observe(&self, owner_alive: bool) -> Observed {
        let vmm_alive = self.vmm.is_some_and(|p| p.is_alive());
        if owner_alive {
            // The VMM just died and its owner is about to notice: say so
            // rather than "running".
            if matches!(self.status, Status::Running | Status::Paused)
                && self.vmm.is_some()
                && !vmm_alive
            {
                return Observed {
                    status: Status::Stopping,
                    note: Some("its VMM exited; the supervisor is tearing it down".into()),
                    needs_recovery: false,
                };
            }
            return Observed {
                status: self.status,
                note: None,
                needs_recovery: false,
            };
        }
        let lost = |status, note: &str| Observed {
            status,
            note: Some(note.to_owned()),
            needs_recovery: true,
        };
        match self.status {
            Status::Creating => lost(Status::Broken, "its creation was interrupted"),
            _ if vmm_alive => lost(
                Status::Broken,
                "its VMM runs but its owner (the mvm supervisor) is gone",
            ),
            s if s.expects_vmm() => lost(Status::Stopped, "its owner (the mvm supervisor) died"),
            _ if self.transient => lost(Status::Stopped, "transient machine of a finished exec"),
            _ if self.net.is_some() || self.vmm.is_some() => {
                lost(self.status, "runtime state left by a dead owner")
            }
            s => Observed {
                status: if s == Status::Broken {
                    Status::Stopped
                } else {
                    s
                },
                note: None,
                needs_recovery: false,
            },
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

    fn rec(status: Status) -> InstanceRecord {
        let mut r = InstanceRecord::new("a", "default", "d", BackendKind::Qemu);
        r.status = status;
        r
    }

    #[test]
    fn transitions() {
        assert!(Status::Creating.can_become(Status::Created));
        assert!(Status::Created.can_become(Status::Starting));
        assert!(Status::Running.can_become(Status::Stopping));
        assert!(Status::Starting.can_become(Status::Stopping));
        assert!(!Status::Created.can_become(Status::Running));
        assert!(!Status::Stopped.can_become(Status::Paused));
        assert!(!Status::Stopped.can_become(Status::Running));
        assert!(!Status::Running.can_become(Status::Starting));
        assert!(!Status::Stopping.can_become(Status::Running));
        let mut r = rec(Status::Stopped);
        let e = r.transition(Status::Running).unwrap_err();
        assert_eq!((e.from, e.to), (Status::Stopped, Status::Running));
        assert_eq!(r.status(), Status::Stopped);
    }

    #[test]
    fn a_live_owner_is_believed() {
        for s in [
            Status::Creating,
            Status::Starting,
            Status::Running,
            Status::Stopping,
        ] {
            let o = rec(s).observe(true);
            assert_eq!((o.status, o.needs_recovery), (s, false));
        }
    }

    #[test]
    fn a_dead_vmm_under_a_live_owner_shows_as_stopping() {
        let mut r = rec(Status::Running);
        r.vmm = Some(dead());
        assert_eq!(r.observe(true).status, Status::Stopping);
        r.vmm = Some(ProcessIdentity::current());
        assert_eq!(r.observe(true).status, Status::Running);
    }

    #[test]
    fn running_without_owner_is_stopped_and_recovered() {
        let mut r = rec(Status::Running);
        r.vmm = Some(dead());
        let o = r.observe(false);
        assert_eq!(o.status, Status::Stopped);
        assert!(o.needs_recovery);
    }

    #[test]
    fn live_vmm_without_owner_is_broken_until_recovered() {
        let mut r = rec(Status::Stopped);
        r.vmm = Some(ProcessIdentity::current());
        let o = r.observe(false);
        assert_eq!(o.status, Status::Broken);
        assert!(o.needs_recovery);
    }

    #[test]
    fn interrupted_creation_and_dead_transients_are_recovered() {
        assert!(rec(Status::Creating).observe(false).needs_recovery);
        let mut t = rec(Status::Created);
        t.transient = true;
        assert!(t.observe(false).needs_recovery);
        let quiet = rec(Status::Stopped).observe(false);
        assert_eq!(
            (quiet.status, quiet.needs_recovery),
            (Status::Stopped, false)
        );
    }

    #[test]
    fn mark_stopped_clears_runtime_state() {
        let mut r = rec(Status::Running);
        r.vmm = Some(dead());
        r.owner = Some(dead());
        r.stop_request = Some(StopRequest { timeout_ms: 1 });
        r.mark_stopped(Some("killed by signal 9".into()));
        assert_eq!(r.status(), Status::Stopped);
        assert!(r.vmm.is_none() && r.owner.is_none() && r.stop_request.is_none());
        assert_eq!(r.last_exit.as_deref(), Some("killed by signal 9"));
        let mut c = rec(Status::Created);
        c.mark_stopped(None);
        assert_eq!(c.status(), Status::Created);
    }

    #[test]
    fn drive_roles_keep_their_string_form() {
        for (role, text) in [
            (DriveRole::Root, "root"),
            (DriveRole::Volume("data".into()), "volume:data"),
            (DriveRole::HostDir("/srv/site".into()), "hostdir:/srv/site"),
        ] {
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("{text:?}"));
            let back: DriveRole = serde_json::from_str(&format!("{text:?}")).unwrap();
            assert_eq!(back, role);
        }
        assert!(serde_json::from_str::<DriveRole>("\"floppy\"").is_err());
    }

    #[test]
    fn record_round_trips_through_json_and_reads_old_field_names() {
        let r = InstanceRecord::new("a", "default", "d", BackendKind::Firecracker);
        let s = serde_json::to_string(&r).unwrap();
        let back: InstanceRecord = serde_json::from_str(&s).unwrap();
        assert_eq!(r, back);
        let mut v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let me = serde_json::to_value(ProcessIdentity::current()).unwrap();
        v.as_object_mut().unwrap().remove("owner");
        v["supervisor"] = me;
        let old: InstanceRecord = serde_json::from_value(v).unwrap();
        assert_eq!(old.owner, Some(ProcessIdentity::current()));
    }
}
