//! One cgroup per machine, on cgroup v1 or v2.
//!
//! # Layout
//!
//! The machine's cgroup is `<root>/<parent>/<name>` (parent `mvm/<home
//! tag>`, name the machine name) in every hierarchy used: on v1 the `memory`
//! and `cpu` hierarchies (each mounted at its own root), on v2 the unified
//! one. This is the layout the Firecracker jailer builds from
//! `--parent-cgroup` and `--id`, so a jailed VMM joins the very cgroup mvm
//! created. Parents sit at the root of the hierarchy (on v2 the root is the
//! only cgroup exempt from the "no internal processes" rule, so controllers
//! can always be delegated down to the machine).
//!
//! # Files written
//!
//! | limit | v1 | v2 |
//! |---|---|---|
//! | memory | `memory.limit_in_bytes` | `memory.max` (+ `memory.swap.max = 0`) |
//! | CPU cap | `cpu.cfs_period_us`, `cpu.cfs_quota_us` | `cpu.max` = `"QUOTA PERIOD"` |
//! | CPU weight | `cpu.shares` = weight·1024/100 | `cpu.weight` |
//!
//! On v2 the parents get `+memory +cpu` in `cgroup.subtree_control`.
//!
//! # Life cycle
//!
//! [`Cgroup::create`] (idempotent: a leftover of a dead run is emptied and
//! recreated) → place processes ([`Cgroup::attach_fds`] before `exec`, or
//! [`Cgroup::add_pid`]) → [`release`] (kill everything in it, wait until it
//! is empty, remove it; idempotent, needs only the [`CgroupSpec`] from the
//! record). [`leftovers`] lists machine cgroups under a parent for `gc`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_core::isolation::{CgroupLimits, CgroupSpec, CgroupVersion};

/// The v1 controllers a machine's cgroup uses, in this order.
pub const V1_CONTROLLERS: [&str; 2] = ["memory", "cpu"];

/// Default CPU accounting period (100 ms, the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// How long [`release`] waits for a killed cgroup to become empty.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The host mounts no hierarchy with the memory and cpu controllers.
    #[error(
        "no cgroup hierarchy with the memory and cpu controllers is mounted (cgroup v2 with them enabled, or the v1 memory and cpu hierarchies)"
    )]
    Unavailable,
    /// A hierarchy of another version than the spec's is mounted.
    #[error("the machine's cgroup is v{wanted} but this host mounts v{found}")]
    VersionMismatch {
        /// The record's version.
        wanted: u8,
        /// The host's.
        found: u8,
    },
    /// A parent or name that would leave the hierarchy.
    #[error("invalid cgroup path component {0:?}")]
    BadName(String),
    /// A cgroup file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup file could not be written.
    #[error("cannot write {value:?} to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup directory could not be created.
    #[error("cannot create cgroup {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup directory could not be removed.
    #[error("cannot remove cgroup {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Processes survived SIGKILL for [`KILL_TIMEOUT`].
    #[error("processes {pids:?} are still in cgroup {path} {waited:?} after SIGKILL")]
    StillPopulated {
        /// The directory.
        path: PathBuf,
        /// Who is left.
        pids: Vec<u32>,
        /// How long we waited.
        waited: Duration,
    },
}

/// The mounted hierarchies mvm can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: the `memory` and `cpu` hierarchies.
    V1 {
        /// Mount point of the memory controller.
        memory: PathBuf,
        /// Mount point of the cpu controller.
        cpu: PathBuf,
    },
    /// cgroup v2 with memory and cpu available at its root.
    V2 {
        /// Mount point of the unified hierarchy.
        root: PathBuf,
    },
}

/// Warm the kernel's cgroup migration lock in the background, so that a
/// VMM moved into its cgroup shortly after (within a few ms of this call)
/// does not wait for it. Only cgroup v2 needs it: on v1 a VMM joins its
/// cgroup through `tasks` ([`attach_self`]), which takes no global lock.
///
/// A write to `cgroup.procs` takes the global `cgroup_threadgroup_rwsem`
/// for writing, and the first writer after a quiet period waits for an RCU
/// grace period (measured here: 6–14 ms; the next one within ~10 ms: 0.1
/// ms). This writes this process's own pid into the cgroup it is already
/// in — a migration that changes nothing — on a thread of its own, so the
/// grace period passes while the caller prepares the machine. Best effort:
/// without root or a cgroup hierarchy it does nothing. (cgroup v2 hosts
/// could instead create the VMM in its cgroup with
/// `clone3(CLONE_INTO_CGROUP)`.)
pub fn prewarm_migration() {
    // The host's hierarchy, read once per process (v1 hosts stop here).
    static HIERARCHY: std::sync::OnceLock<Option<Hierarchy>> = std::sync::OnceLock::new();
    let Some(h @ Hierarchy::V2 { .. }) = HIERARCHY.get_or_init(Hierarchy::detect) else {
        return;
    };
    // One warm-up serves the callers of the next few ms (an operation
    // checks its options twice, then starts).
    static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(5)) {
            return;
        }
        *last = Some(Instant::now());
    }
    let Ok(own) = fs_err::read_to_string("/proc/self/cgroup") else {
        return;
    };
    let Some(rel) = own_cgroup(&own, h.version()) else {
        return;
    };
    let Some(root) = h.roots().into_iter().next() else {
        return;
    };
    let procs = root.join(rel.trim_start_matches('/')).join("cgroup.procs");
    let pid = std::process::id().to_string();
    let _ = std::thread::Builder::new()
        .name("cgroup-warm".into())
        .spawn(move || {
            let t = std::time::Instant::now();
            let r = fs_err::write(&procs, &pid);
            tracing::debug!(took = ?t.elapsed(), ok = r.is_ok(), "cgroup migration lock warmed");
        });
}

/// This process's cgroup (from `/proc/self/cgroup`) in the hierarchy of
/// `version`: v1 the `memory` controller's (the first root of
/// [`Hierarchy::roots`]), v2 the unified one.
fn own_cgroup(proc_self_cgroup: &str, version: CgroupVersion) -> Option<String> {
    proc_self_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let hit = match version {
            CgroupVersion::V1 => controllers.split(',').any(|c| c == "memory"),
            CgroupVersion::V2 => id == "0" && controllers.is_empty(),
        };
        hit.then(|| path.to_owned())
    })
}

impl Hierarchy {
    /// The host's hierarchy: v2 when its root offers `memory` and `cpu`,
    /// else v1 when both controllers are mounted, else `None`. (Hosts with
    /// the v1 controllers and an empty v2 beside them, like the CI
    /// machines, get v1.)
    pub fn detect() -> Option<Self> {
        let text = fs_err::read_to_string("/proc/self/mountinfo").ok()?;
        Self::from_mountinfo(&text, |root| {
            fs_err::read_to_string(root.join("cgroup.controllers")).ok()
        })
    }

    /// [`Hierarchy::detect`] from the text of a `mountinfo` file and a way
    /// to read a v2 root's `cgroup.controllers`.
    pub fn from_mountinfo(
        mountinfo: &str,
        v2_controllers: impl Fn(&Path) -> Option<String>,
    ) -> Option<Self> {
        let mut memory = None;
        let mut cpu = None;
        let mut v2 = None;
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = pre.split_whitespace().nth(4) else {
                continue;
            };
            let mut post = post.split_whitespace();
            let (fstype, _source, opts) = (post.next(), post.next(), post.next());
            match fstype {
                Some("cgroup2") => {
                    let root = PathBuf::from(mount_point);
                    let ctrls = v2_controllers(&root).unwrap_or_default();
                    let has = |c| ctrls.split_whitespace().any(|x| x == c);
                    if v2.is_none() && has("memory") && has("cpu") {
                        v2 = Some(root);
                    }
                }
                Some("cgroup") => {
                    let opts = opts.unwrap_or_default();
                    for o in opts.split(',') {
                        match o {
                            "memory" if memory.is_none() => memory = Some(mount_point.into()),
                            "cpu" if cpu.is_none() => cpu = Some(mount_point.into()),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = v2 {
            return Some(Self::V2 { root });
        }
        Some(Self::V1 {
            memory: memory?,
            cpu: cpu?,
        })
    }

    /// v1 or v2.
    pub fn version(&self) -> CgroupVersion {
        match self {
            Self::V1 { .. } => CgroupVersion::V1,
            Self::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// The roots a machine's cgroup is created under (v1: memory, cpu).
    pub fn roots(&self) -> Vec<PathBuf> {
        match self {
            Self::V1 { memory, cpu } => vec![memory.clone(), cpu.clone()],
            Self::V2 { root } => vec![root.clone()],
        }
    }

    /// The directories of cgroup `<parent>/<name>`, one per root.
    pub fn dirs(&self, parent: &str, name: &str) -> Result<Vec<PathBuf>, CgroupError> {
        check_rel(parent)?;
        check_rel(name)?;
        Ok(self
            .roots()
            .into_iter()
            .map(|r| r.join(parent).join(name))
            .collect())
    }

    fn check_version(&self, spec: &CgroupSpec) -> Result<(), CgroupError> {
        if self.version() == spec.version {
            Ok(())
        } else {
            Err(CgroupError::VersionMismatch {
                wanted: spec.version.number(),
                found: self.version().number(),
            })
        }
    }
}

/// A relative path of plain components.
fn check_rel(p: &str) -> Result<(), CgroupError> {
    let ok = !p.is_empty()
        && p.split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if ok {
        Ok(())
    } else {
        Err(CgroupError::BadName(p.to_owned()))
    }
}

/// Limits for a machine of `cpus` vCPUs and `memory_mib` of guest memory,
/// with `overhead_mib` for the VMM itself. The CPU cap is `cpus` whole
/// CPUs unless `cpu_quota_millis` (thousandths of a CPU, e.g. 1500 = one
/// and a half CPUs) says otherwise; the weight grows with `cpus`.
pub fn limits_for(
    cpus: u8,
    memory_mib: u32,
    overhead_mib: u32,
    cpu_quota_millis: Option<u32>,
) -> CgroupLimits {
    let cpus = u64::from(cpus.max(1));
    let millis = cpu_quota_millis.map_or(cpus * 1000, |m| u64::from(m.max(1)));
    CgroupLimits {
        memory_bytes: (u64::from(memory_mib) + u64::from(overhead_mib)) << 20,
        // The kernel's minimum quota is 1 ms.
        cpu_quota_us: (millis * CPU_PERIOD_US / 1000).max(1000),
        cpu_period_us: CPU_PERIOD_US,
        cpu_weight: (100 * cpus).min(10_000) as u32,
    }
}

/// The `(file, value)` pairs that express `limits` on `version`, in the
/// order they must be written. Also the jailer's `--cgroup FILE=VALUE`.
pub fn limit_files(version: CgroupVersion, limits: &CgroupLimits) -> Vec<(&'static str, String)> {
    match version {
        CgroupVersion::V1 => vec![
            ("memory.limit_in_bytes", limits.memory_bytes.to_string()),
            ("cpu.cfs_period_us", limits.cpu_period_us.to_string()),
            ("cpu.cfs_quota_us", limits.cpu_quota_us.to_string()),
            (
                "cpu.shares",
                (u64::from(limits.cpu_weight) * 1024 / 100)
                    .max(2)
                    .to_string(),
            ),
        ],
        CgroupVersion::V2 => vec![
            ("memory.max", limits.memory_bytes.to_string()),
            (
                "cpu.max",
                format!("{} {}", limits.cpu_quota_us, limits.cpu_period_us),
            ),
            ("cpu.weight", limits.cpu_weight.clamp(1, 10_000).to_string()),
        ],
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs_err::write(path, value).map_err(|e| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source: e,
    })
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs_err::read_to_string(path).map_err(|e| CgroupError::Read {
        path: path.to_owned(),
        source: e,
    })
}

/// The file that lists (and accepts) a cgroup's processes.
fn procs_file(dir: &Path) -> PathBuf {
    dir.join("cgroup.procs")
}

/// One machine's cgroup (its directory in each hierarchy used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Create the cgroup of `spec` in `h` and write its limits. A leftover
    /// of the same name (a run that died) is emptied and recreated first.
    pub fn create(h: &Hierarchy, spec: &CgroupSpec) -> Result<Self, CgroupError> {
        h.check_version(spec)?;
        release_in(h, spec)?;
        let cg = Self {
            version: spec.version,
            dirs: h.dirs(&spec.parent, &spec.name)?,
        };
        let result = cg.populate(h, spec);
        if result.is_err() {
            // Leave nothing half-made behind.
            let _ = release_in(h, spec);
        }
        result.map(|()| cg)
    }

    fn populate(&self, h: &Hierarchy, spec: &CgroupSpec) -> Result<(), CgroupError> {
        for root in h.roots() {
            let mut chain = Vec::new();
            // The parents are removed by the release of the home's last
            // machine (`release_in`): one may vanish between our mkdirs,
            // then the chain is made again.
            for attempt in 0.. {
                let mut at = root.clone();
                chain = vec![root.clone()];
                let mut vanished = false;
                for c in spec.parent.split('/').chain([spec.name.as_str()]) {
                    at.push(c);
                    chain.push(at.clone());
                    match fs_err::create_dir(&at) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 5 => {
                            vanished = true;
                            break;
                        }
                        Err(e) => {
                            return Err(CgroupError::Create {
                                path: at,
                                source: e,
                            });
                        }
                    }
                }
                if !vanished {
                    break;
                }
            }
            if self.version == CgroupVersion::V2 {
                // Every ancestor of the leaf hands memory and cpu down.
                for dir in &chain[..chain.len() - 1] {
                    enable_controllers(dir, &["memory", "cpu"])?;
                }
            }
        }
        for (file, value) in limit_files(self.version, &spec.limits) {
            let dir = self.dir_for(file);
            write(&dir.join(file), &value)?;
        }
        // Swap would let a guest exceed its memory limit (v2). On v1,
        // memory.memsw.limit_in_bytes is left alone: the jailer first
        // copies the parent's (unlimited) memory.limit_in_bytes into the
        // cgroup, which the kernel refuses above a set memsw limit.
        if self.version == CgroupVersion::V2 {
            let f = self.dirs[0].join("memory.swap.max");
            if f.exists() {
                write(&f, "0")?;
            }
        }
        Ok(())
    }

    /// The cgroup of `spec` as it is (no check that it exists).
    pub fn open(h: &Hierarchy, spec: &CgroupSpec) -> Result<Self, CgroupError> {
        h.check_version(spec)?;
        Ok(Self {
            version: spec.version,
            dirs: h.dirs(&spec.parent, &spec.name)?,
        })
    }

    /// Its directories (v1: memory, cpu; v2: one).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The directory holding `file` (`memory.*` or `cpu.*` on v1).
    pub fn dir_for(&self, file: &str) -> &Path {
        match self.version {
            CgroupVersion::V2 => &self.dirs[0],
            CgroupVersion::V1 => {
                let i = V1_CONTROLLERS
                    .iter()
                    .position(|c| file.starts_with(&format!("{c}.")) || file == *c)
                    .unwrap_or(0);
                &self.dirs[i]
            }
        }
    }

    /// Read one of its files (e.g. `memory.limit_in_bytes`), trimmed.
    pub fn read(&self, file: &str) -> Result<String, CgroupError> {
        read(&self.dir_for(file).join(file)).map(|s| s.trim().to_owned())
    }

    /// Move process `pid` into the cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(&procs_file(d), &pid.to_string())?;
        }
        Ok(())
    }

    /// Open, for writing (close-on-exec), the file of each directory
    /// through which the calling thread joins it, to be passed to
    /// [`attach_self`] in a child between `fork` and `exec`: v1 `tasks`, v2
    /// `cgroup.procs`.
    ///
    /// On v1 the child moves its one thread (a forked child has one), which
    /// moves the process, and the kernel then takes no global lock: moving
    /// the current thread by writing `0` to `tasks` skips
    /// `cgroup_threadgroup_rwsem` ("cgroup: Optimize single thread
    /// migration": Linux 6.0, and the 5.4+ stable kernels since 2022;
    /// older kernels take the lock as for `cgroup.procs`), whose first
    /// writer after a quiet period waits
    /// for an RCU grace period (`cgroup.procs`: 5–8 ms here, measured in a
    /// forked child 0.15 s after the last migration; `tasks`: 0.1 ms). On
    /// v2, `cgroup.threads` cannot leave a threaded domain, so
    /// `cgroup.procs` it is (see [`prewarm_migration`]).
    pub fn attach_fds(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.dirs
            .iter()
            .map(|d| {
                let p = match self.version {
                    CgroupVersion::V1 => d.join("tasks"),
                    CgroupVersion::V2 => procs_file(d),
                };
                fs_err::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map(|f| OwnedFd::from(f.into_parts().0))
                    .map_err(|e| CgroupError::Write {
                        path: p,
                        value: "0".into(),
                        source: e,
                    })
            })
            .collect()
    }

    /// The processes in it (union over its directories).
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.dirs)
    }
}

/// Move the calling process, which must have a single thread (a child
/// between `fork` and `exec`), into the cgroups whose files are `fds`
/// (from [`Cgroup::attach_fds`]), by writing `0` ("myself").
///
/// Async-signal-safe (one `write(2)` per fd, no allocation): meant for a
/// `pre_exec` closure.
pub fn attach_self(fds: &[OwnedFd]) -> std::io::Result<()> {
    for fd in fds {
        rustix::io::write(fd.as_fd(), b"0")?;
    }
    Ok(())
}

fn enable_controllers(dir: &Path, ctrls: &[&str]) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let have = read(&file)?;
    for c in ctrls {
        if !have.split_whitespace().any(|x| x == *c) {
            write(&file, &format!("+{c}"))?;
        }
    }
    Ok(())
}

fn pids_in(dirs: &[PathBuf]) -> Vec<u32> {
    let mut pids: Vec<u32> = dirs
        .iter()
        .filter_map(|d| fs_err::read_to_string(procs_file(d)).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Kill every process in `dirs` and wait until none is left.
fn kill_all(version: CgroupVersion, dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if version == CgroupVersion::V2 {
            // cgroup.kill (Linux 5.14+) kills atomically, including
            // processes forked while we look.
            let kill = dirs[0].join("cgroup.kill");
            if kill.exists() && !pids_in(dirs).is_empty() {
                let _ = fs_err::write(&kill, "1");
            }
        }
        let pids = pids_in(dirs);
        if pids.is_empty() {
            return Ok(());
        }
        for p in &pids {
            // A pid listed in the cgroup is in it now: never a reused pid.
            if let Some(pid) = rustix::process::Pid::from_raw(*p as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if start.elapsed() >= KILL_TIMEOUT {
            return Err(CgroupError::StillPopulated {
                path: dirs[0].clone(),
                pids,
                waited: start.elapsed(),
            });
        }
        // No event tells when a killed process has left the cgroup on v1:
        // poll with a bounded backoff.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn rmdir_if_exists(dir: &Path) -> Result<(), CgroupError> {
    match fs_err::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CgroupError::Remove {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

fn release_in(h: &Hierarchy, spec: &CgroupSpec) -> Result<(), CgroupError> {
    let dirs: Vec<PathBuf> = h
        .dirs(&spec.parent, &spec.name)?
        .into_iter()
        .filter(|d| d.is_dir())
        .collect();
    if dirs.is_empty() {
        return Ok(());
    }
    kill_all(spec.version, &dirs)?;
    let mut first_err = None;
    for d in &dirs {
        if let Err(e) = rmdir_if_exists(d) {
            tracing::warn!(error = %e, "cgroup release");
            first_err.get_or_insert(e);
        }
    }
    if first_err.is_none() {
        remove_empty_parents(h, &spec.parent);
    }
    first_err.map_or(Ok(()), Err)
}

/// Remove the parent cgroups of a released machine (`mvm/<home tag>`,
/// then `mvm`) when nothing else is in them, so that a home leaves no
/// cgroup behind once its last machine is gone. A parent that still holds
/// a machine (or was just recreated) cannot be removed, and stays.
fn remove_empty_parents(h: &Hierarchy, parent: &str) {
    let comps: Vec<&str> = parent.split('/').collect();
    for root in h.roots() {
        for n in (1..=comps.len()).rev() {
            let dir = comps[..n].iter().fold(root.clone(), |p, c| p.join(c));
            if fs_err::remove_dir(&dir).is_err() {
                break;
            }
        }
    }
}

/// Kill everything in the machine cgroup of `spec`, wait until it is empty
/// and remove it. Idempotent: a cgroup that does not exist is released.
/// Needs only the spec (from the machine's record).
pub fn release(spec: &CgroupSpec) -> Result<(), CgroupError> {
    match Hierarchy::detect() {
        Some(h) if h.version() == spec.version => release_in(&h, spec),
        // Nothing of ours can exist in a hierarchy that is not mounted.
        _ => Ok(()),
    }
}

/// [`release`] in an explicit hierarchy.
pub fn release_at(h: &Hierarchy, spec: &CgroupSpec) -> Result<(), CgroupError> {
    if h.version() != spec.version {
        return Ok(());
    }
    release_in(h, spec)
}

/// Names of the machine cgroups under `parent` in `h` (for `gc`/`doctor`:
/// those no registered machine owns are leftovers, removed with
/// [`release_at`]).
pub fn leftovers(h: &Hierarchy, parent: &str) -> Result<Vec<String>, CgroupError> {
    check_rel(parent)?;
    let mut names = std::collections::BTreeSet::new();
    for root in h.roots() {
        let dir = root.join(parent);
        let Ok(entries) = fs_err::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                names.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn own_cgroup_is_read_from_the_memory_line_or_the_unified_one() {
        let text = "9:name=systemd:/\n4:memory:/process_api/ef6e\n1:cpu,cpuacct:/x\n0::/u/v\n";
        assert_eq!(
            own_cgroup(text, CgroupVersion::V1).as_deref(),
            Some("/process_api/ef6e")
        );
        assert_eq!(own_cgroup(text, CgroupVersion::V2).as_deref(), Some("/u/v"));
        assert_eq!(own_cgroup("1:cpu:/x\n", CgroupVersion::V1), None);
    }

    #[test]
    fn v1_is_chosen_when_v2_has_no_controllers() {
        let h = Hierarchy::from_mountinfo(MOUNTINFO_V1, |_| Some("hugetlb\n".into())).unwrap();
        assert_eq!(
            h,
            Hierarchy::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu".into()
            }
        );
        let h = Hierarchy::from_mountinfo(MOUNTINFO_V1, |p| {
            (p == Path::new("/sys/fs/cgroup/unified")).then(|| "cpu io memory pids".into())
        })
        .unwrap();
        assert_eq!(
            h,
            Hierarchy::V2 {
                root: "/sys/fs/cgroup/unified".into()
            }
        );
        let combined = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                        35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let h = Hierarchy::from_mountinfo(combined, |_| None).unwrap();
        assert_eq!(h.roots()[1], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            Hierarchy::from_mountinfo("32 31 0:29 / /x rw - cgroup cgroup rw,cpu\n", |_| None),
            None
        );
    }

    #[test]
    fn limits_follow_cpus_memory_and_the_quota_knob() {
        let l = limits_for(2, 256, 64, None);
        assert_eq!(l.memory_bytes, 320 << 20);
        assert_eq!((l.cpu_quota_us, l.cpu_period_us), (200_000, 100_000));
        assert_eq!(l.cpu_weight, 200);
        let l = limits_for(2, 256, 0, Some(500));
        assert_eq!(l.cpu_quota_us, 50_000);
        assert_eq!(limits_for(1, 1, 0, Some(1)).cpu_quota_us, 1000);
        let v1 = limit_files(CgroupVersion::V1, &limits_for(1, 128, 0, None));
        assert!(v1.contains(&("memory.limit_in_bytes", (128u64 << 20).to_string())));
        assert!(v1.contains(&("cpu.cfs_quota_us", "100000".into())));
        assert!(v1.contains(&("cpu.shares", "1024".into())));
        let v2 = limit_files(CgroupVersion::V2, &limits_for(1, 128, 0, None));
        assert!(v2.contains(&("cpu.max", "100000 100000".into())));
        assert!(v2.contains(&("cpu.weight", "100".into())));
    }

    #[test]
    fn paths_cannot_leave_the_hierarchy() {
        let h = Hierarchy::V2 { root: "/cg".into() };
        assert_eq!(
            h.dirs("mvm/abc", "web").unwrap(),
            vec![PathBuf::from("/cg/mvm/abc/web")]
        );
        for bad in ["", "..", "a/../b", "/abs", "a//b", "a/."] {
            assert!(h.dirs(bad, "x").is_err(), "{bad}");
            assert!(h.dirs("mvm", bad).is_err(), "{bad}");
        }
    }
}
