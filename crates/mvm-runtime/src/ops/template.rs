//! Templates: make one (`mvm template create`, also `--from MACHINE`),
//! list, inspect and remove them, and turn `exec/run/shell --template`
//! into a clone (or, when the snapshot cannot serve the request, a cold
//! boot of the template's image, with the reason).
//!
//! # Making a template
//!
//! The template machine is an ordinary, transient machine with an owner
//! (this process, running its supervisor in-process as a transient `exec`
//! does), built so that its files need no copy: its root disk and config
//! drive are created in the template's staging directory (where they stay,
//! at paths that never move — Firecracker's snapshot refers to them), and
//! its guest RAM is the staging directory's memory file, mapped shared
//! (QEMU). Once the agent answered and the warm-up command (if any)
//! exited 0, the supervisor is asked for a snapshot (the same request
//! `--from` sends to a running machine's supervisor; see
//! [`crate::supervisor::snapshot`]); then the VMM is killed (its RAM *is*
//! the template's memory now), the machine torn down, and the template
//! committed (fsync, digests, one symlink). Ctrl-C, an error or a crash at
//! any step leaves no template: the staging directory is removed by this
//! process, or — after a SIGKILL — by the next `template` command or `mvm
//! gc` (its creator is dead); the machine is reaped like any other.
//!
//! # Clones
//!
//! [`plan_clone`] decides, before anything is created, whether the
//! template's snapshot can serve the request: the same vCPUs, memory,
//! backend and network interface, no extra drives (`--add-dir`, `-v`) or
//! secrets, the same image and kernel, intact files. If so, the machine is
//! created with [`TemplateDrives::Clone`] and its supervisor restores it
//! ([`crate::supervisor::restore`]); if not, the caller cold-boots the
//! template's image and says why (`--require-snapshot`: an error).
//!
//! A clone's drives ([`attach_drives`]): a **transient** clone on QEMU needs
//! no disk file at all — its root drive is the template's disk attached
//! with `snapshot=on` (QEMU keeps the clone's writes in an unlinked
//! temporary file) — and it shares the template's config drive read-only;
//! a **persistent** clone (or any Firecracker clone) gets a copy-on-write
//! copy of the template's disk (reflink, else a sparse copy) and a config
//! drive of its own, remounted in the guest after the restore. Either way
//! the template's files are never written.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mvm_core::InstanceDir;
use mvm_core::Status;
use mvm_core::backend::{BackendChoice, BackendKind};
use mvm_core::instance::{DriveRecord, DriveRole, InstanceRecord, NetworkMode, OwnerRole};
use mvm_core::snapshot::{CloneOf, SnapshotRequest, TemplateUse};
use mvm_template::{Provenance, Store, Template, TemplateError, Verify};
use serde::Serialize;

use crate::ops::create::{CreateOptions, create};
use crate::ops::exec::{ExecOptions, ExecOutcome, Interrupts};
use crate::resources::backend::select;
use crate::resources::{disk, drives};
use crate::supervisor::{Event, supervise};
use crate::{Runtime, RuntimeError};

/// Where a template-related machine's drives come from (see the module
/// docs); part of [`CreateOptions`].
#[derive(Debug, Clone)]
pub enum TemplateDrives {
    /// The machine that becomes a template.
    Build {
        /// Its root disk (the template's, created here), if it has one.
        disk: Option<PathBuf>,
        /// Its config drive (the template's).
        config: PathBuf,
        /// Its guest RAM file, mapped shared (QEMU); `None`: anonymous RAM
        /// (Firecracker writes the RAM into the snapshot).
        memory_file: Option<PathBuf>,
    },
    /// A clone.
    Clone {
        /// The template.
        template: Box<Template>,
        /// A failed restore is an error, not a cold boot.
        require_snapshot: bool,
    },
}

/// Build the drives of a machine created with `t` (called by
/// [`crate::ops::create::create`]; the record is not saved yet).
pub fn attach_drives(
    rt: &Runtime,
    rec: &mut InstanceRecord,
    dir: &InstanceDir,
    image: &mvm_image::Image,
    t: &TemplateDrives,
) -> Result<(), RuntimeError> {
    let root = |path: PathBuf| DriveRecord {
        id: "root".into(),
        path,
        read_only: false,
        role: DriveRole::Root,
    };
    match t {
        TemplateDrives::Build {
            disk: disk_path,
            config,
            memory_file,
        } => {
            if let Some(disk_path) = disk_path {
                crate::fault::point("create.disk", None)?;
                mvm_image::create_machine_disk(image, disk_path, disk::DEFAULT_DISK_MIB)?;
                rec.drives.push(root(disk_path.clone()));
            }
            crate::fault::point("create.drives", None)?;
            drives::attach(rt.home(), rec, dir, &drives::DataOptions::default())?;
            // `attach` leaves a NAT machine's drive to its first start (its
            // address is allocated then); the template's is built now, and
            // a clone gets its identity after the restore.
            if !dir.config_drive().is_file() {
                drives::write_config_drive(rt.home(), rec, dir)?;
            }
            fs_err::rename(dir.config_drive(), config)?;
            for d in &mut rec.drives {
                if d.role == DriveRole::Config {
                    d.path = config.clone();
                }
            }
            rec.template = Some(TemplateUse {
                memory_file: memory_file.clone(),
                ..Default::default()
            });
        }
        TemplateDrives::Clone {
            template,
            require_snapshot,
        } => {
            let shared = |path: PathBuf| DriveRecord {
                id: "config".into(),
                path,
                read_only: true,
                role: DriveRole::Config,
            };
            // A transient QEMU clone writes nothing of its own: the
            // diskless snapshot where the template has one, else the
            // template's disk behind a throwaway layer; and the template's
            // config drive.
            let volatile = rec.transient && rec.backend == BackendKind::Qemu;
            let ram = volatile.then(|| template.ram_snapshot()).flatten();
            match (&ram, template.disk()) {
                (Some(_), _) | (None, None) => {}
                (None, Some(src)) if volatile => rec.drives.push(root(src)),
                (None, Some(_)) => {
                    template.clone_disk(&dir.disk())?;
                    rec.drives.push(root(dir.disk()));
                }
            }
            crate::fault::point("create.drives", None)?;
            let config = match &ram {
                Some((_, config)) => Some(config.clone()),
                None => template.config(),
            };
            match config {
                Some(config) if rec.transient => {
                    rec.drives.push(shared(config));
                    write_config_mount(dir)?;
                }
                _ => drives::attach(rt.home(), rec, dir, &drives::DataOptions::default())?,
            }
            rec.template = Some(TemplateUse {
                clone_of: Some(CloneOf {
                    template: template.name.clone(),
                    id: template.id().to_owned(),
                    restore: true,
                    require_snapshot: *require_snapshot,
                    volatile_root: volatile && ram.is_none() && template.disk().is_some(),
                    ram: ram.is_some(),
                    cold_boot: None,
                }),
                ..Default::default()
            });
        }
    }
    Ok(())
}

/// `mounts.json` with the config drive's mount (what `drives::attach`
/// writes), for a clone that shares its template's config drive.
fn write_config_mount(dir: &InstanceDir) -> Result<(), RuntimeError> {
    let mounts = vec![drives::MountEntry {
        drive_id: "config".into(),
        label: mvm_data::drive::CONFIG_LABEL.into(),
        guest: mvm_data::drive::CONFIG_MOUNT.into(),
        read_only: true,
        host_dir: None,
    }];
    let json = serde_json::to_vec(&mounts).expect("plain data serialises");
    fs_err::write(dir.root().join(drives::MOUNTS_FILE), json)?;
    Ok(())
}

/// Whether `template` can be restored by `backend` into a machine of
/// `image` (the VMM version is the backend's own check at restore).
pub fn check_fits(
    template: &Template,
    backend: BackendKind,
    image: &mvm_image::Image,
) -> Result<(), RuntimeError> {
    let m = &template.manifest;
    let bad = |what, t: &str, r: &str| {
        RuntimeError::from(TemplateError::Incompatible {
            name: template.name.clone(),
            what,
            template: t.to_owned(),
            requested: r.to_owned(),
        })
    };
    if m.backend != backend {
        return Err(bad("backend", m.backend.as_str(), backend.as_str()));
    }
    if m.provenance.image_digest != image.digest {
        return Err(bad(
            "image",
            &m.provenance.image_digest,
            &format!("{} (image {:?} was rebuilt)", image.digest, image.name),
        ));
    }
    if m.provenance.kernel_release != image.kernel_release {
        return Err(bad(
            "kernel",
            &m.provenance.kernel_release,
            &image.kernel_release,
        ));
    }
    Ok(())
}

/// What a clone is asked for.
#[derive(Debug, Clone, Default)]
pub struct CloneRequest {
    /// The template's name.
    pub template: String,
    /// `--require-snapshot`.
    pub require_snapshot: bool,
    /// An explicit `--backend` (else the template's).
    pub backend: Option<BackendChoice>,
}

/// How a clone will start.
#[derive(Debug)]
pub enum ClonePlan {
    /// Restored from the template.
    Restore {
        /// The template's image.
        image: mvm_image::Image,
        /// The options to create it with (template drives set).
        opts: CreateOptions,
    },
    /// A cold boot of the template's image.
    Cold {
        /// The template's image.
        image: mvm_image::Image,
        /// The options to create it with.
        opts: CreateOptions,
        /// Why not a restore (one line).
        reason: String,
    },
}

fn describe_data(d: &drives::DataOptions) -> Option<String> {
    let mut what = Vec::new();
    if !d.add_dirs.is_empty() {
        what.push("--add-dir");
    }
    if !d.volumes.is_empty() {
        what.push("-v/--volume");
    }
    if !d.secrets.is_empty() {
        what.push("--secret");
    }
    (!what.is_empty()).then(|| {
        format!(
            "{} adds drives the snapshot does not have",
            what.join(" and ")
        )
    })
}

/// Decide whether the template's snapshot can serve a machine asked for
/// with `opts` (see the module docs). Unset vCPUs and memory take the
/// template's values. An error when the template does not exist or its
/// image is gone (nothing to cold-boot either), or when a cold boot would
/// be needed and `--require-snapshot` was given.
pub fn plan_clone(
    rt: &Runtime,
    req: &CloneRequest,
    mut opts: CreateOptions,
) -> Result<ClonePlan, RuntimeError> {
    let store = Store::open(rt.home())?;
    reap_store(&store);
    let template = store.get(&req.template)?;
    let m = &template.manifest;
    let image = mvm_image::get(rt.home(), &m.provenance.image)?;
    let config = rt.config();
    let backend_kind = match req.backend {
        Some(b) => select(b, config, rt.home()).kind,
        None => m.backend,
    };
    let network = opts.network.unwrap_or(config.network.mode);
    let mut reasons: Vec<String> = Vec::new();
    let mut refuse = |r: String| reasons.push(r);
    if let Some(c) = opts.cpus.filter(|c| *c != m.cpus) {
        refuse(format!("--cpus {c} differs from the template's {}", m.cpus));
    }
    if let Some(mem) = opts.memory_mib.filter(|v| *v != m.memory_mib) {
        refuse(format!(
            "--memory {mem} differs from the template's {} MiB",
            m.memory_mib
        ));
    }
    if backend_kind != m.backend {
        refuse(format!(
            "the {backend_kind} backend cannot restore a {} snapshot",
            m.backend
        ));
    }
    if let Some(d) = describe_data(&opts.data) {
        refuse(d);
    }
    match template.snapshot().read_meta() {
        Ok(meta) if meta.net != (network != NetworkMode::None) => refuse(format!(
            "the template has {} network interface, the machine would have {}",
            if meta.net { "a" } else { "no" },
            if network == NetworkMode::None {
                "none"
            } else {
                "one"
            },
        )),
        Ok(_) => {}
        Err(e) => refuse(crate::error_chain(&RuntimeError::from(
            TemplateError::Snapshot {
                name: template.name.clone(),
                source: e,
            },
        ))),
    }
    if reasons.is_empty()
        && let Err(e) = check_fits(&template, backend_kind, &image)
            .and_then(|()| template.verify(Verify::Quick).map_err(RuntimeError::from))
    {
        reasons.push(crate::error_chain(&e));
    }
    let why = reasons.into_iter().next();
    opts.cpus = Some(opts.cpus.unwrap_or(m.cpus));
    opts.memory_mib = Some(opts.memory_mib.unwrap_or(m.memory_mib));
    opts.backend = req.backend.unwrap_or(match m.backend {
        BackendKind::Qemu => BackendChoice::Qemu,
        BackendKind::Firecracker => BackendChoice::Firecracker,
    });
    match why {
        Some(reason) if req.require_snapshot => Err(RuntimeError::SnapshotRequired {
            template: template.name.clone(),
            reason,
        }),
        Some(reason) => Ok(ClonePlan::Cold {
            image,
            opts,
            reason: crate::supervisor::restore::cold_boot_notice(&template.name, &reason),
        }),
        None => {
            opts.template = Some(TemplateDrives::Clone {
                template: Box::new(template),
                require_snapshot: req.require_snapshot,
            });
            Ok(ClonePlan::Restore { image, opts })
        }
    }
}

/// Remove what killed template creations left (staging directories whose
/// creator is dead); cheap, run by every template command.
fn reap_store(store: &Store) {
    match store.gc() {
        Ok(removed) => {
            for l in removed {
                tracing::info!("removed template leftover {l:?}");
            }
        }
        Err(e) => tracing::warn!("template store: {e}"),
    }
}

/// What `mvm template create` makes.
#[derive(Debug, Clone)]
pub struct TemplateOptions {
    /// The template's name.
    pub name: String,
    /// Backend choice.
    pub backend: BackendChoice,
    /// vCPUs (config default when `None`).
    pub cpus: Option<u8>,
    /// Memory MiB (config default when `None`).
    pub memory_mib: Option<u32>,
    /// Network mode (config default when `None`).
    pub network: Option<NetworkMode>,
    /// Environment of the warm-up command.
    pub env: Vec<(String, String)>,
    /// The warm-up command (none: snapshot right after the agent answered).
    pub warmup: Vec<String>,
}

/// How long each step of making a template took, and what was made.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    /// The template's name.
    pub name: String,
    /// Its store id.
    pub id: String,
    /// Snapshots taken (2: also a diskless one for transient clones).
    pub snapshots: u32,
    /// Creating the template machines (disk, config drive), ms.
    pub create_ms: u64,
    /// Launch to agent-ready, ms.
    pub boot_ms: u64,
    /// The warm-up command, ms.
    pub warmup_ms: u64,
    /// The snapshot (pause, save, sync), ms.
    pub snapshot_ms: u64,
    /// Stopping the machine and committing the template (fsync, digests), ms.
    pub commit_ms: u64,
    /// Everything, ms.
    pub total_ms: u64,
    /// Bytes the template takes on disk.
    pub size_bytes: u64,
}

fn machine_name(template: &str, id: &str) -> String {
    let short: String = template.chars().take(44).collect();
    let short = short.trim_end_matches('-');
    format!("tmpl-{short}-{}", &id[..6])
}

fn new_request_id() -> u64 {
    rand::random()
}

/// How long stopping the template machine may take.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// `mvm template create NAME`: boot a machine of `image`, run the warm-up,
/// snapshot, commit (see the module docs). For an image whose transient
/// machines boot from their initramfs (the default image), the same is
/// done a second time without a root disk: transient QEMU clones restore
/// that snapshot and never touch ext4 (about 40 ms less per clone under
/// TCG: see docs/decisions.md).
pub async fn create_template(
    rt: &Runtime,
    opts: &TemplateOptions,
    image: &mvm_image::Image,
) -> Result<Created, RuntimeError> {
    let mut interrupt = Interrupts::new()?;
    let t0 = Instant::now();
    let store = Store::open(rt.home())?;
    reap_store(&store);
    let staging = store.begin(&opts.name)?;
    crate::fault::point("tmpl.staged", None)?;
    let qemu = select(opts.backend, rt.config(), rt.home()).kind == BackendKind::Qemu;
    let name = machine_name(&opts.name, staging.id());
    let made = build_snapshot(
        rt,
        opts,
        image,
        &name,
        TemplateDrives::Build {
            disk: Some(staging.disk()),
            config: staging.config(),
            memory_file: qemu.then(|| staging.snapshot().memory()),
        },
        &staging.snapshot(),
        &mut interrupt,
    )
    .await?;
    let mut steps = vec![made];
    if qemu && !disk::needed(image, true) {
        let ram = staging.ram_snapshot();
        fs_err::create_dir(ram.root())?;
        let made = build_snapshot(
            rt,
            opts,
            image,
            &format!("{name}-ram"),
            TemplateDrives::Build {
                disk: None,
                config: staging.ram_config(),
                memory_file: Some(ram.memory()),
            },
            &ram,
            &mut interrupt,
        )
        .await?;
        steps.push(made);
    }
    let t_commit = Instant::now();
    crate::fault::point("tmpl.commit", None)?;
    let template = staging.commit(Provenance {
        image: image.name.clone(),
        image_digest: image.digest.clone(),
        kernel_release: image.kernel_release.clone(),
        from_machine: None,
        warmup: opts.warmup.clone(),
        env: opts.env.clone(),
        boot_ms: steps[0].boot_ms,
        snapshot_ms: steps[0].snapshot_ms,
        disk_drive: Some("root".into()),
    })?;
    let sum = |f: fn(&Built) -> u64| steps.iter().map(f).sum::<u64>();
    Ok(Created {
        name: template.name.clone(),
        id: template.id().to_owned(),
        snapshots: steps.len() as u32,
        create_ms: sum(|b| b.create_ms),
        boot_ms: sum(|b| b.boot_ms),
        warmup_ms: sum(|b| b.warmup_ms),
        snapshot_ms: sum(|b| b.snapshot_ms),
        commit_ms: sum(|b| b.stop_ms) + t_commit.elapsed().as_millis() as u64,
        total_ms: t0.elapsed().as_millis() as u64,
        size_bytes: template.manifest.sizes.total_allocated,
    })
}

/// How long [`settle`] waits at most.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Before the snapshot, wait until the guest finished what its kernel
/// defers after boot, so that no clone replays it: eth0 has its carrier
/// (the kernel reports a carrier change up to a second late, and a clone
/// restored before that has no working network for that long), and the
/// clocksource is the final one (not `tsc-early` or `jiffies`, replaced
/// about a second after boot; a clone would otherwise time everything in
/// 4 ms ticks). Gives up after [`SETTLE_LIMIT`] with a warning: the
/// template still works.
async fn settle(dir: &InstanceDir) {
    const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
    const CARRIER: &str = "/sys/class/net/eth0/operstate";
    let Ok(client) = crate::resources::agent::connect(dir).await else {
        return;
    };
    let read = |path: &'static str| {
        let client = &client;
        async move {
            let mut buf = Vec::new();
            client
                .read_file(path, &mut buf)
                .await
                .ok()
                .map(|_| String::from_utf8_lossy(&buf).trim().to_owned())
        }
    };
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut pause = Duration::from_millis(20);
    loop {
        let clock = read(CLOCKSOURCE).await;
        let carrier = read(CARRIER).await;
        let clock_ok = clock
            .as_deref()
            .is_none_or(|c| !matches!(c, "tsc-early" | "jiffies" | "refined-jiffies"));
        // No eth0 (no network): nothing to wait for.
        let net_ok = carrier.as_deref().is_none_or(|c| c == "up");
        if clock_ok && net_ok {
            return;
        }
        if Instant::now() + pause > deadline {
            tracing::warn!(
                "the template machine did not settle within {SETTLE_LIMIT:?} (clocksource {clock:?}, eth0 {carrier:?}); snapshotting it anyway"
            );
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// What one template machine took.
struct Built {
    create_ms: u64,
    boot_ms: u64,
    warmup_ms: u64,
    snapshot_ms: u64,
    stop_ms: u64,
}

/// Create template machine `name` with `drives`, boot it, run the warm-up,
/// snapshot it into `dest`, kill it and tear it down (in-process, as its
/// owner).
async fn build_snapshot(
    rt: &Runtime,
    opts: &TemplateOptions,
    image: &mvm_image::Image,
    name: &str,
    drives: TemplateDrives,
    dest: &mvm_core::snapshot::SnapshotDir,
    interrupt: &mut Interrupts,
) -> Result<Built, RuntimeError> {
    let t0 = Instant::now();
    let created = create(
        rt,
        &CreateOptions {
            name: Some(name.to_owned()),
            backend: opts.backend,
            cpus: opts.cpus,
            memory_mib: opts.memory_mib,
            transient: true,
            network: opts.network,
            template: Some(drives),
            ..Default::default()
        },
        image,
    )?;
    let create_ms = t0.elapsed().as_millis() as u64;
    let dir = rt.dir(name);
    rt.registry().update(name, |r| {
        r.transition(Status::Starting)?;
        r.owner_role = OwnerRole::Supervisor;
        Ok(())
    })?;
    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let supervise = supervise(rt, name, created.lock, stop_rx, move |ev| {
        let _ = tx.send(ev);
    });
    let drive = async {
        let t = Instant::now();
        loop {
            match rx.recv().await {
                Some(Event::Ready { .. }) => break,
                Some(Event::Notice { message }) => eprintln!("mvm: {message}"),
                Some(Event::Started { .. }) => {}
                Some(Event::Failed { message }) => {
                    return Err(RuntimeError::StartFailed {
                        name: name.to_owned(),
                        message,
                    });
                }
                Some(Event::Stopped { .. }) | None => {
                    return Err(RuntimeError::StoppedWhileStarting {
                        name: name.to_owned(),
                    });
                }
            }
        }
        let boot_ms = t.elapsed().as_millis() as u64;
        let t = Instant::now();
        if !opts.warmup.is_empty() {
            let outcome = crate::ops::exec::exec_in(
                &dir,
                &ExecOptions {
                    argv: opts.warmup.clone(),
                    env: opts.env.clone(),
                    ..Default::default()
                },
            )
            .await?;
            if outcome != ExecOutcome::Exited(0) {
                return Err(RuntimeError::Invalid(format!(
                    "the warm-up command {:?} failed (exit status {}); no template was made",
                    opts.warmup,
                    outcome.exit_code()
                )));
            }
        }
        settle(&dir).await;
        let warmup_ms = t.elapsed().as_millis() as u64;
        let done = crate::supervisor::snapshot::request(
            rt,
            name,
            SnapshotRequest {
                id: new_request_id(),
                dest: dest.root().to_owned(),
                disk: None,
                config: None,
            },
        )
        .await?;
        if let Some(e) = done.error {
            return Err(RuntimeError::StartFailed {
                name: name.to_owned(),
                message: format!("the snapshot failed: {e}"),
            });
        }
        Ok((boot_ms, warmup_ms, done.total_ms))
    };
    tokio::pin!(supervise);
    tokio::pin!(drive);
    let mut ended = None;
    let result = tokio::select! {
        r = &mut drive => r,
        r = &mut supervise => {
            let message = match &r {
                Ok(e) => format!("the VMM {} before the snapshot", e.description),
                Err(e) => crate::error_chain(e),
            };
            ended = Some(r);
            Err(RuntimeError::StartFailed { name: name.to_owned(), message })
        }
        _ = interrupt.recv() => Err(RuntimeError::Invalid(
            "interrupted: no template was made".into(),
        )),
    };
    let t_stop = Instant::now();
    if ended.is_none() {
        // The template machine never runs on after its snapshot: kill it.
        let _ = rt.registry().update(name, |r| {
            r.stop_request = Some(mvm_core::instance::StopRequest { timeout_ms: 0 });
            Ok(())
        });
        let _ = stop_tx.send(());
        ended = tokio::select! {
            r = tokio::time::timeout(STOP_LIMIT, &mut supervise) => r.ok(),
            _ = interrupt.recv() => None,
        };
    }
    let (boot_ms, warmup_ms, snapshot_ms) = result?;
    match ended {
        Some(Ok(_)) => Ok(Built {
            create_ms,
            boot_ms,
            warmup_ms,
            snapshot_ms,
            stop_ms: t_stop.elapsed().as_millis() as u64,
        }),
        Some(Err(e)) => Err(e),
        None => Err(RuntimeError::Timeout {
            what: format!("stopping template machine {name:?}"),
            after: STOP_LIMIT,
        }),
    }
}

/// `mvm template create NAME --from MACHINE`: snapshot a running machine
/// through its supervisor (pause, save, copy its disk and config drive,
/// resume: the machine keeps running).
pub async fn create_from(rt: &Runtime, name: &str, machine: &str) -> Result<Created, RuntimeError> {
    let mut interrupt = Interrupts::new()?;
    let t0 = Instant::now();
    let registry = rt.registry();
    let rec = registry.load(machine)?;
    let observed = rec.observe(registry.owner_alive(machine));
    if observed.status != Status::Running {
        return Err(RuntimeError::WrongState {
            name: machine.to_owned(),
            status: observed.status,
            hint: Some("a template is taken from a running machine".into()),
        });
    }
    if let Some(d) = rec
        .drives
        .iter()
        .find(|d| !matches!(d.role, DriveRole::Root | DriveRole::Config))
    {
        return Err(RuntimeError::Invalid(format!(
            "machine {machine:?} has the drive {:?} ({}): a template carries only a root disk and the config drive",
            d.id,
            String::from(d.role.clone())
        )));
    }
    if rec
        .template
        .as_ref()
        .and_then(|t| t.clone_of.as_ref())
        .is_some_and(|c| c.volatile_root)
    {
        return Err(RuntimeError::Invalid(format!(
            "machine {machine:?} runs on its template's disk (a transient clone): make the template from a persistent machine"
        )));
    }
    let image = mvm_image::get(rt.home(), &rec.image)?;
    let store = Store::open(rt.home())?;
    reap_store(&store);
    let staging = store.begin(name)?;
    crate::fault::point("tmpl.staged", None)?;
    let has = |role: DriveRole| rec.drives.iter().any(|d| d.role == role);
    let req = SnapshotRequest {
        id: new_request_id(),
        dest: staging.snapshot().root().to_owned(),
        disk: has(DriveRole::Root).then(|| staging.disk()),
        config: has(DriveRole::Config).then(|| staging.config()),
    };
    let done = tokio::select! {
        r = crate::supervisor::snapshot::request(rt, machine, req) => r?,
        _ = interrupt.recv() => {
            return Err(RuntimeError::Invalid("interrupted: no template was made".into()));
        }
    };
    if let Some(e) = done.error {
        return Err(RuntimeError::Invalid(format!(
            "the snapshot of machine {machine:?} failed: {e}"
        )));
    }
    let t_commit = Instant::now();
    crate::fault::point("tmpl.commit", None)?;
    let template = staging.commit(Provenance {
        image: rec.image.clone(),
        image_digest: rec.image_digest.clone(),
        kernel_release: image.kernel_release.clone(),
        from_machine: Some(machine.to_owned()),
        snapshot_ms: done.total_ms,
        disk_drive: has(DriveRole::Root).then(|| "root".to_owned()),
        ..Default::default()
    })?;
    Ok(Created {
        name: template.name.clone(),
        id: template.id().to_owned(),
        snapshots: 1,
        create_ms: 0,
        boot_ms: 0,
        warmup_ms: 0,
        snapshot_ms: done.total_ms,
        commit_ms: t_commit.elapsed().as_millis() as u64,
        total_ms: t0.elapsed().as_millis() as u64,
        size_bytes: template.manifest.sizes.total_allocated,
    })
}

/// One template as `ls`/`inspect` show it.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateInfo {
    /// Its name.
    pub name: String,
    /// Its manifest (absent when unreadable).
    #[serde(flatten)]
    pub manifest: Option<mvm_template::Manifest>,
    /// Running machines that need its files.
    pub users: Vec<String>,
    /// Its directory.
    pub dir: Option<PathBuf>,
    /// Why it cannot be read, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn info(
    rt: &Runtime,
    store: &Store,
    name: &str,
    t: Result<Template, TemplateError>,
) -> TemplateInfo {
    match t {
        Ok(t) => TemplateInfo {
            name: name.to_owned(),
            users: live_users(rt, store, &t),
            dir: Some(t.dir.clone()),
            manifest: Some(t.manifest),
            error: None,
        },
        Err(e) => TemplateInfo {
            name: name.to_owned(),
            manifest: None,
            users: Vec::new(),
            dir: None,
            error: Some(crate::error_chain(&e)),
        },
    }
}

fn live_users(rt: &Runtime, store: &Store, t: &Template) -> Vec<String> {
    store
        .users(t)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| rt.registry().owner_alive(m))
        .collect()
}

/// Every template.
pub fn list(rt: &Runtime) -> Result<Vec<TemplateInfo>, RuntimeError> {
    let store = Store::open(rt.home())?;
    reap_store(&store);
    Ok(store
        .list()?
        .into_iter()
        .map(|l| info(rt, &store, &l.name, l.template))
        .collect())
}

/// Template `name`.
pub fn inspect(rt: &Runtime, name: &str) -> Result<TemplateInfo, RuntimeError> {
    let store = Store::open(rt.home())?;
    let t = store.get(name)?;
    Ok(info(rt, &store, name, Ok(t)))
}

/// Remove template `name`: refused while a running machine needs its
/// files, unless `force`.
pub fn remove(
    rt: &Runtime,
    name: &str,
    force: bool,
) -> Result<mvm_template::Removed, RuntimeError> {
    let store = Store::open(rt.home())?;
    reap_store(&store);
    Ok(store.remove(name, force, |m| rt.registry().owner_alive(m))?)
}

/// Template leftovers for `doctor`/`gc`: staging directories of dead
/// creators, dangling names, references of machines that are not running.
pub fn leftovers(rt: &Runtime) -> Result<Vec<String>, RuntimeError> {
    let store = Store::open(rt.home())?;
    let mut out: Vec<String> = store
        .leftovers()?
        .into_iter()
        .map(|l| describe_leftover(&l))
        .collect();
    for (t, m) in store.stale_refs(|m| rt.registry().owner_alive(m), false)? {
        out.push(format!(
            "reference of machine {m} (not running) to template {t}"
        ));
    }
    Ok(out)
}

/// Remove [`leftovers`]; what was removed.
pub fn gc(rt: &Runtime) -> Result<Vec<String>, RuntimeError> {
    let store = Store::open(rt.home())?;
    let mut out: Vec<String> = store.gc()?.iter().map(describe_leftover).collect();
    for (t, m) in store.stale_refs(|m| rt.registry().owner_alive(m), true)? {
        out.push(format!(
            "reference of machine {m} (not running) to template {t}"
        ));
    }
    Ok(out)
}

fn describe_leftover(l: &mvm_template::Leftover) -> String {
    match l {
        mvm_template::Leftover::Unlinked(p) => {
            format!("unfinished template {}", p.display())
        }
        mvm_template::Leftover::DanglingName(p) => {
            format!("template name without files {}", p.display())
        }
    }
}
