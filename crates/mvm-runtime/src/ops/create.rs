//! Create a machine: validate everything, claim the name (and become the
//! machine's owner), allocate its vsock CID and — when its VMM is to be
//! confined — its uid and cgroup under the global lock
//! ([`crate::resources::jail`]), build its root disk and drives (outside
//! any global lock), record it `Created`.
//! The image's config (an OCI image's Env, WorkingDir, User, Entrypoint,
//! Cmd) becomes the machine's process defaults and main process here
//! (`resources::process`).
//!
//! A creation that fails — bad input, a failing `mkfs`, an interrupt —
//! leaves nothing: the guard removes the half-made machine, and if the
//! creating process dies, the next mvm command finds a `Creating` record
//! without an owner and removes it.

use mvm_core::Status;
use mvm_core::backend::{BackendChoice, BackendKind};
use mvm_core::instance::{InstanceRecord, NetworkMode, OwnerRole, PortMapping};
use mvm_core::main_process::ProcessDefaults;
use mvm_core::process::ProcessIdentity;
use mvm_core::registry::OwnerLock;

use crate::resources::backend::select;
use crate::resources::{disk, drives, jail, network, process};
use crate::{Runtime, RuntimeError};

/// Smallest memory a machine may have, MiB.
pub const MIN_MEMORY_MIB: u32 = 64;

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Name (generated when `None`).
    pub name: Option<String>,
    /// Backend choice.
    pub backend: BackendChoice,
    /// vCPUs (config default when `None`).
    pub cpus: Option<u8>,
    /// Memory MiB (config default when `None`).
    pub memory_mib: Option<u32>,
    /// Removed after its one command.
    pub transient: bool,
    /// Environment applied to every exec.
    pub env: Vec<(String, String)>,
    /// Network mode (config default when `None`).
    pub network: Option<NetworkMode>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// What the machine may reach (`--egress`, combined with
    /// `EgressPolicy::from_flags`); the configured default
    /// (`network.egress`, `MVM_EGRESS`) when `None`. Every way of creating
    /// a machine sets it from its own `--egress` flags: `run`, transient
    /// `exec`, and `template create` (the machines it records and restores
    /// are created through these options too).
    pub egress: Option<mvm_core::egress::EgressPolicy>,
    /// Volumes, secrets and added directories.
    pub data: drives::DataOptions,
    /// `--no-jailer`: run this machine's VMM unconfined even as root.
    pub no_jailer: bool,
    /// `--cpu-quota`: the CPU cap of the machine's cgroup (config
    /// `cpu_quota` when `None`; else its vCPUs).
    pub cpu_quota: Option<mvm_core::isolation::CpuQuota>,
    /// A clone of a template, or the machine that becomes one: its drives
    /// come from [`crate::ops::template::attach_drives`].
    pub template: Option<crate::ops::template::TemplateDrives>,
    /// Run a main process (`mvm run`): the image's Entrypoint followed by
    /// this command, or by the image's Cmd when it is empty (see
    /// [`process`]). `None`: no main process (a transient exec).
    pub main: Option<Vec<String>>,
    /// Default user of every command (over the image's `User`).
    pub user: Option<String>,
    /// Default working directory of every command (over the image's
    /// `WorkingDir`).
    pub workdir: Option<String>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            name: None,
            backend: BackendChoice::Auto,
            cpus: None,
            memory_mib: None,
            transient: false,
            env: Vec::new(),
            network: None,
            ports: Vec::new(),
            egress: None,
            data: drives::DataOptions::default(),
            no_jailer: false,
            cpu_quota: None,
            template: None,
            main: None,
            user: None,
            workdir: None,
        }
    }
}

/// A machine just created, owned by the caller.
pub struct Created {
    /// Its record (`Created`).
    pub record: InstanceRecord,
    /// Its owner lock: pass it to `start` (or drop it to leave the machine
    /// created).
    pub lock: OwnerLock,
}

/// The host's memory, MiB (from `/proc/meminfo`).
fn host_memory_mib() -> Option<u64> {
    let text = fs_err::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Check the options of a new machine that do not depend on its image
/// (name, vCPUs, memory against the host's, network and ports, data
/// inputs): cheap, so callers run it before building or pulling an image.
/// For a confined machine on a cgroup v2 host it also warms the kernel's
/// cgroup migration lock in the background
/// ([`mvm_jail::cgroup::prewarm_migration`]; v1 needs no warming).
pub fn check(rt: &Runtime, opts: &CreateOptions) -> Result<(), RuntimeError> {
    let config = rt.config();
    if let Some(name) = &opts.name {
        mvm_core::name::validate(name).map_err(mvm_core::registry::RegistryError::from)?;
    }
    let cpus = opts.cpus.unwrap_or(config.cpus);
    let memory = opts.memory_mib.unwrap_or(config.memory_mib);
    if cpus == 0 {
        return Err(RuntimeError::Invalid("--cpus must be at least 1".into()));
    }
    if memory < MIN_MEMORY_MIB {
        return Err(RuntimeError::Invalid(format!(
            "--memory {memory} MiB is too small (at least {MIN_MEMORY_MIB})"
        )));
    }
    if let Some(host) = host_memory_mib()
        && u64::from(memory) > host
    {
        return Err(RuntimeError::Invalid(format!(
            "--memory {memory} MiB is more than this host has ({host} MiB)"
        )));
    }
    let network = opts.network.unwrap_or(config.network.mode);
    if network == NetworkMode::None && !opts.ports.is_empty() {
        return Err(RuntimeError::Invalid(
            "-p/--publish needs a network; it cannot be used with --network none".into(),
        ));
    }
    let backend = select(opts.backend, config, rt.home()).kind;
    if network == NetworkMode::Nat && !network::use_tap() && backend == BackendKind::Firecracker {
        return Err(network::NetworkError::NeedsRoot.into());
    }
    if network == NetworkMode::Nat && network::use_tap() {
        network::settings(config)?;
    }
    let confine = jail::policy(config, opts.no_jailer);
    if opts.cpu_quota.is_some() && !confine.enabled {
        return Err(RuntimeError::Invalid(format!(
            "--cpu-quota needs a confined VMM (a cgroup), which is off here: {}",
            confine.reason
        )));
    }
    if confine.enabled
        && backend == BackendKind::Firecracker
        && let Some(fc) = crate::resources::backend::firecracker_binary(config, rt.home())
    {
        jail::jailer_binary(config, &fc)?;
    }
    let egress = opts
        .egress
        .clone()
        .unwrap_or_else(|| config.network.egress.clone());
    crate::resources::egress::check(network, &egress)?;
    drives::check(rt.registry(), opts.name.as_deref(), &opts.data)?;
    if confine.enabled {
        // The VMM will be moved into its cgroup: on cgroup v2, start the
        // kernel's grace period now (see `prewarm_migration`; `start` warms
        // it again, closer to the move; a no-op on v1).
        mvm_jail::cgroup::prewarm_migration();
    }
    Ok(())
}

/// Check the options of a new machine; the record to create (not saved).
pub fn validate(
    rt: &Runtime,
    opts: &CreateOptions,
    image: &mvm_image::Image,
) -> Result<InstanceRecord, RuntimeError> {
    Ok(plan(rt, opts, image)?.0)
}

/// The record to create and the defaults of its commands.
fn plan(
    rt: &Runtime,
    opts: &CreateOptions,
    image: &mvm_image::Image,
) -> Result<(InstanceRecord, ProcessDefaults), RuntimeError> {
    check(rt, opts)?;
    let name = opts.name.clone().unwrap_or_else(mvm_core::name::generate);
    mvm_core::name::validate(&name).map_err(mvm_core::registry::RegistryError::from)?;
    let config = rt.config();
    let backend = select(opts.backend, config, rt.home()).kind;
    let mut rec = InstanceRecord::new(&name, &image.name, &image.digest, backend);
    rec.cpus = opts.cpus.unwrap_or(config.cpus);
    rec.memory_mib = opts.memory_mib.unwrap_or(config.memory_mib);
    rec.transient = opts.transient;
    rec.env = opts.env.clone();
    rec.network = opts.network.unwrap_or(config.network.mode);
    rec.ports = opts.ports.clone();
    rec.egress = opts
        .egress
        .clone()
        .unwrap_or_else(|| config.network.egress.clone());
    let image_config = process::image_config(image)?;
    let defaults = process::defaults(
        image_config.as_ref(),
        opts.workdir.as_deref(),
        opts.user.as_deref(),
    );
    rec.main = opts
        .main
        .as_ref()
        .and_then(|cmd| process::main_process(image_config.as_ref(), &defaults, &rec.env, cmd));
    Ok((rec, defaults))
}

/// Removes a machine whose creation did not finish (unless disarmed).
struct Unfinished<'a> {
    rt: &'a Runtime,
    name: Option<String>,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take()
            && let Err(e) = self.rt.registry().remove(&name)
        {
            tracing::warn!("cannot remove the unfinished machine {name:?}: {e}");
        }
    }
}

/// Create a machine (see the module docs).
pub fn create(
    rt: &Runtime,
    opts: &CreateOptions,
    image: &mvm_image::Image,
) -> Result<Created, RuntimeError> {
    // (`plan` checks the options, which warms the cgroup lock: v2 only.)
    let (mut rec, defaults) = plan(rt, opts, image)?;
    let name = rec.name.clone();
    let registry = rt.registry();
    rec.owner = Some(ProcessIdentity::current());
    rec.owner_role = OwnerRole::Creator;
    let (dir, lock) = registry.create(&rec)?;
    let mut unfinished = Unfinished {
        rt,
        name: Some(name.clone()),
    };
    crate::fault::point("create.claimed", None)?;
    {
        // Allocation only: the lowest free vsock CID, and the VMM's
        // confinement.
        let _g = registry.global_lock()?;
        let used: std::collections::BTreeSet<u32> = registry
            .list()?
            .into_iter()
            .filter_map(|l| l.record.ok().and_then(|r| r.vsock_cid))
            .collect();
        let cid = (3..).find(|c| !used.contains(c)).expect("u32 range");
        rec.vsock_cid = Some(cid);
        let isolation = if jail::policy(rt.config(), opts.no_jailer).enabled {
            Some(jail::allocate(
                registry,
                rt.config(),
                rt.home(),
                &rec,
                opts.cpu_quota,
            )?)
        } else {
            None
        };
        rec.isolation = isolation.clone();
        // Under the record lock, keeping what others recorded meanwhile
        // (a stop request).
        registry.update(&name, |r| {
            r.vsock_cid = Some(cid);
            r.isolation = isolation.clone();
            Ok(())
        })?;
    }
    tracing::debug!("timing: name claimed, CID and confinement allocated");
    match &opts.template {
        Some(t) => crate::ops::template::attach_drives(rt, &mut rec, &dir, image, t)?,
        None => {
            if disk::needed(image, opts.transient) {
                rec.drives.push(disk::create(image, &dir)?);
            }
            tracing::debug!("timing: root disk made");
            crate::fault::point("create.drives", None)?;
            drives::attach(rt.home(), &mut rec, &dir, &opts.data)?;
        }
    }
    process::save(&dir, &defaults)?;
    let (record, ()) = registry.update(&name, |r| {
        r.drives = rec.drives.clone();
        r.template = rec.template.clone();
        Ok(r.transition(Status::Created)?)
    })?;
    tracing::debug!("timing: drives built, machine created");
    unfinished.name = None;
    Ok(Created { record, lock })
}
