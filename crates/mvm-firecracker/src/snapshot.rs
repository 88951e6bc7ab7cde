//! Snapshot and restore with Firecracker's API.
//!
//! # Snapshot ([`FirecrackerBackend::snapshot`])
//!
//! `PATCH /vm {"state": "Paused"}`, then `PUT /snapshot/create` with
//! `snapshot_type: Full`, `snapshot_path` = `vmstate` and `mem_file_path` =
//! `memory` of the snapshot directory; both files are fsynced and
//! `snapshot.json` is written last. The VM stays paused and may be resumed
//! (Firecracker wrote a copy of the RAM).
//!
//! # Restore ([`FirecrackerBackend::restore`])
//!
//! A fresh Firecracker process (the only kind that accepts a load):
//! `PUT /logger`, then `PUT /snapshot/load` with a `File` memory backend
//! (Firecracker maps it `MAP_PRIVATE`: clones share its pages and never
//! write it), `resume_vm: false`, `network_overrides` (the clone's own
//! TAP) and `vsock_override` (the clone's `guest.sock`); then
//! `PATCH /drives/{id}` for every drive whose file differs from the
//! snapshot's (the clone's copy-on-write disk), and `PATCH /vm Resumed`.
//!
//! Firecracker's snapshot refers to the drive files the template had open
//! and opens them again while loading, before the `PATCH` points the
//! drives elsewhere: those files must still exist (the template store keeps
//! them at a path that never moves); nothing is written to them, the vCPUs
//! being paused until the drives are switched.
//!
//! # The agent link
//!
//! Firecracker resets every vsock connection when it snapshots; the guest
//! agent's listening socket survives (Firecracker's snapshot-support.md),
//! so the host of the clone simply connects again (`CONNECT 1024` on the
//! new `guest.sock`).
//!
//! # Checks
//!
//! Before spawning: the metadata, the machine's shape, the files' sizes and
//! the drive files the snapshot refers to. After spawning, before loading:
//! `GET /version` must equal the version that wrote the snapshot. A load
//! Firecracker refuses (a damaged state file, ...) becomes
//! [`SnapshotError::Load`] with Firecracker's `fault_message`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_core::backend::{BackendError, BackendKind, RestoredVmm, RunningVmm, VmSpec};
use mvm_core::paths::InstanceDir;
use mvm_core::snapshot::{
    MemoryMode, RestoreInfo, SNAPSHOT_FORMAT, SnapshotDir, SnapshotDrive, SnapshotError,
    SnapshotInfo, SnapshotMeta, allocated_bytes, now_rfc3339,
};
use mvm_core::vmm_child::VmmChild;

use crate::api::{
    MemoryBackend, MemoryBackendType, NetworkOverride, PartialDrive, SnapshotCreateParams,
    SnapshotLoadParams, SnapshotType, VsockOverride,
};
use crate::backend::FirecrackerBackend;
use crate::launch::{BootConfig, IFACE_ID};
use crate::process;

fn err(message: impl Into<String>) -> BackendError {
    BackendError::new(BackendKind::Firecracker, message)
}

/// A restore refused because of the snapshot (the cause says why; a
/// caller finds it with [`BackendError::snapshot_error`]).
fn snap_err(e: SnapshotError) -> BackendError {
    err("cannot restore from the snapshot").with_source(e)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn fsync(path: &std::path::Path) -> Result<(), BackendError> {
    fs_err::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| err("cannot make a snapshot file durable").with_source(e))
}

/// The `PUT /snapshot/load` body restoring `from` for `spec` in `dir`.
pub fn load_params(spec: &VmSpec, dir: &InstanceDir, from: &SnapshotDir) -> SnapshotLoadParams {
    load_body(spec, from.memory(), from.state(), dir.guest_socket())
}

/// A `PUT /snapshot/load` body: RAM from `memory` (mapped privately),
/// state from `state`, the vsock socket at `uds_path`, `spec`'s TAP, not
/// resumed.
fn load_body(
    spec: &VmSpec,
    memory: PathBuf,
    state: PathBuf,
    uds_path: PathBuf,
) -> SnapshotLoadParams {
    SnapshotLoadParams {
        enable_diff_snapshots: None,
        track_dirty_pages: None,
        mem_file_path: None,
        mem_backend: Some(MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: memory,
        }),
        snapshot_path: state,
        resume_vm: Some(false),
        network_overrides: spec.net.as_ref().map(|n| {
            vec![NetworkOverride {
                iface_id: IFACE_ID.into(),
                host_dev_name: n.tap.clone(),
            }]
        }),
        vsock_override: Some(VsockOverride { uds_path }),
        clock_realtime: None,
    }
}

/// The `PUT /snapshot/create` body writing into `dest`.
pub fn create_params(dest: &SnapshotDir) -> SnapshotCreateParams {
    SnapshotCreateParams {
        mem_file_path: dest.memory(),
        snapshot_path: dest.state(),
        snapshot_type: Some(SnapshotType::Full),
    }
}

/// `PATCH /drives/{id}` bodies switching the snapshot's drive files to
/// `spec`'s (only where they differ).
pub fn drive_patches(meta: &SnapshotMeta, spec: &VmSpec) -> Vec<PartialDrive> {
    meta.drives
        .iter()
        .zip(&spec.drives)
        .filter(|(s, d)| s.path != d.path)
        .map(|(_, d)| PartialDrive {
            drive_id: d.id.clone(),
            path_on_host: Some(d.path.clone()),
            rate_limiter: None,
        })
        .collect()
}

/// Where a jailed VMM writes a snapshot, inside its chroot.
const JAIL_SNAPSHOT_DIR: &str = "/snapshot";
const STATE_NAME: &str = "vmstate";
const MEMORY_NAME: &str = "memory";

/// The chroot's snapshot directory of jailed machine `spec` on the host,
/// made empty and owned by the machine's uid/gid.
fn jailed_snapshot_dir(
    binary: &Path,
    spec: &VmSpec,
    dir: &InstanceDir,
    owner: (u32, u32),
) -> Result<PathBuf, BackendError> {
    let layout = crate::jailer::JailLayout::new(dir, binary, &spec.name)
        .map_err(|e| err("cannot lay out the jail").with_source(e))?;
    let chroot = layout.chroot();
    let host = chroot.host_path(JAIL_SNAPSHOT_DIR);
    for name in [STATE_NAME, MEMORY_NAME] {
        mvm_core::files::remove_if_exists(&host.join(name))
            .map_err(|e| err("cannot clear the jail's snapshot directory").with_source(e))?;
    }
    chroot
        .mkdir(JAIL_SNAPSHOT_DIR, Some(owner))
        .map_err(|e| err("cannot make the jail's snapshot directory").with_source(e))
}

/// Move a snapshot file the jailed VMM wrote to `dest` (a rename on one
/// filesystem, else a copy), owned by root like the rest of the store.
fn take_from_jail(from: &Path, dest: &Path) -> Result<(), BackendError> {
    let fail =
        |e: std::io::Error| err("cannot move a snapshot file out of the jail").with_source(e);
    if fs_err::rename(from, dest).is_err() {
        fs_err::copy(from, dest).map_err(fail)?;
        fs_err::remove_file(from).map_err(fail)?;
    }
    std::os::unix::fs::chown(dest, Some(0), Some(0)).map_err(fail)
}

/// The `PUT /snapshot/load` body for a jailed VMM: the snapshot files
/// [`place_snapshot`] put in its chroot, its vsock socket and TAP.
pub fn jailed_load_params(spec: &VmSpec) -> SnapshotLoadParams {
    load_body(
        spec,
        Path::new(JAIL_SNAPSHOT_DIR).join(MEMORY_NAME),
        Path::new(JAIL_SNAPSHOT_DIR).join(STATE_NAME),
        crate::jailer::inner::GUEST_SOCKET.into(),
    )
}

/// Put snapshot `from` into the chroot of a clone run by `owner`:
/// - `vmstate` copied (a few KB), given to the clone;
/// - `memory` hard-linked (or bind-mounted) read-only: Firecracker maps it
///   privately and never writes it. It must be readable by the clone's
///   uid, so the template's file is made world-readable; the template
///   store (0700) and the instance's jail directory (0700, see
///   [`crate::jailer::prepare`]) keep
///   every other host user from reaching it by path;
/// - each of the clone's drives also at the path the snapshot's state
///   names it by (an unjailed template's host paths), so the load opens
///   the clone's own files and never the template's.
fn place_snapshot(
    c: &mvm_jail::chroot::Chroot,
    from: &SnapshotDir,
    meta: &SnapshotMeta,
    spec: &VmSpec,
    (uid, gid): (u32, u32),
) -> Result<(), BackendError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| {
            err(format!("cannot put the snapshot into the jail: {what}")).with_source(e)
        }
    };
    let chroot_err = |e: mvm_jail::chroot::ChrootError| {
        err("cannot put the snapshot into the jail").with_source(e)
    };
    c.mkdir(JAIL_SNAPSHOT_DIR, Some((uid, gid)))
        .map_err(chroot_err)?;
    let state = c.host_path(&format!("{JAIL_SNAPSHOT_DIR}/{STATE_NAME}"));
    fs_err::copy(from.state(), &state).map_err(fail("vmstate"))?;
    mvm_jail::chroot::give(&state, uid, gid).map_err(chroot_err)?;
    let memory = from.memory();
    let mode = fs_err::metadata(&memory)
        .map_err(fail("memory"))?
        .permissions()
        .mode();
    if mode & 0o004 == 0 {
        fs_err::set_permissions(
            &memory,
            std::fs::Permissions::from_mode((mode & 0o777) | 0o444),
        )
        .map_err(fail("memory mode"))?;
    }
    c.place(&memory, &format!("{JAIL_SNAPSHOT_DIR}/{MEMORY_NAME}"), true)
        .map_err(chroot_err)?;
    if !meta.jailed {
        for (m, d) in meta.drives.iter().zip(&spec.drives) {
            let Some(inner) = m.path.to_str() else {
                return Err(err(format!(
                    "snapshot drive path {} is not UTF-8",
                    m.path.display()
                )));
            };
            c.place(&d.path, inner, d.read_only).map_err(chroot_err)?;
        }
    }
    Ok(())
}

fn release_jail_after_failure(dir: &InstanceDir, iso: &mvm_core::isolation::Isolation) {
    if let Err(e) = crate::backend::release_jail(dir, iso) {
        tracing::warn!(error = %e, "releasing the jail of a failed restore");
    }
}

impl FirecrackerBackend {
    pub(crate) async fn snapshot_impl(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        dest: &SnapshotDir,
        deadline: Instant,
    ) -> Result<SnapshotInfo, BackendError> {
        let t0 = Instant::now();
        let name = dir.name();
        // Writing the RAM takes a while for big guests: the API deadline is
        // the caller's.
        let client = self
            .client(dir)
            .with_timeout(deadline.saturating_duration_since(Instant::now()));
        let vmm_version = client
            .version()
            .await
            .map_err(|e| err(format!("snapshot of {name}: GET /version failed")).with_source(e))?
            .firecracker_version;
        client
            .pause()
            .await
            .map_err(|e| err(format!("snapshot of {name}: pausing failed")).with_source(e))?;
        let pause_ms = ms(t0.elapsed());
        let t_save = Instant::now();
        // A jailed VMM sees only its chroot: it writes the snapshot there,
        // and the files are moved to `dest` afterwards.
        let jailed = match &spec.isolation {
            Some(iso) if self.jailer().is_some() => Some(jailed_snapshot_dir(
                &self.binary,
                spec,
                dir,
                (iso.uid, iso.gid),
            )?),
            _ => None,
        };
        let params = match &jailed {
            Some(_) => SnapshotCreateParams {
                mem_file_path: Path::new(JAIL_SNAPSHOT_DIR).join(MEMORY_NAME),
                snapshot_path: Path::new(JAIL_SNAPSHOT_DIR).join(STATE_NAME),
                snapshot_type: Some(SnapshotType::Full),
            },
            None => create_params(dest),
        };
        client.create_snapshot(&params).await.map_err(|e| {
            err(format!("snapshot of {name}: PUT /snapshot/create failed"))
                .with_source(e)
                .with_logs(dir)
        })?;
        let save_ms = ms(t_save.elapsed());
        if let Some(inner) = &jailed {
            take_from_jail(&inner.join(STATE_NAME), &dest.state())?;
            take_from_jail(&inner.join(MEMORY_NAME), &dest.memory())?;
        }
        let t_sync = Instant::now();
        fsync(&dest.state())?;
        fsync(&dest.memory())?;
        let len = |p: std::path::PathBuf| {
            fs_err::metadata(p)
                .map(|m| m.len())
                .map_err(|e| err("cannot stat a snapshot file").with_source(e))
        };
        let meta = SnapshotMeta {
            format: SNAPSHOT_FORMAT,
            backend: BackendKind::Firecracker,
            vmm_version,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            memory: MemoryMode::MemoryFile,
            drives: spec
                .drives
                .iter()
                .map(|d| SnapshotDrive {
                    id: d.id.clone(),
                    read_only: d.read_only,
                    path: d.path.clone(),
                })
                .collect(),
            net: spec.net.is_some(),
            state_bytes: len(dest.state())?,
            memory_bytes: len(dest.memory())?,
            created: now_rfc3339(),
            jailed: jailed.is_some(),
        };
        dest.write_meta(&meta)
            .map_err(|e| err("cannot write the snapshot metadata").with_source(e))?;
        Ok(SnapshotInfo {
            memory_allocated_bytes: allocated_bytes(&dest.memory()),
            meta,
            pause_ms,
            save_ms,
            sync_ms: ms(t_sync.elapsed()),
            total_ms: ms(t0.elapsed()),
            may_resume: true,
        })
    }

    pub(crate) async fn restore_impl(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        from: &SnapshotDir,
        deadline: Instant,
    ) -> Result<RestoredVmm, BackendError> {
        let t0 = Instant::now();
        let meta = from.read_meta().map_err(snap_err)?;
        // The version is checked against the fresh process below; the rest
        // before anything is spawned.
        meta.check_restorable(from, BackendKind::Firecracker, &meta.vmm_version, spec)
            .map_err(snap_err)?;
        let jailed = match (&spec.isolation, self.jailer()) {
            (Some(iso), Some(jailer)) => Some((iso.clone(), jailer.to_owned())),
            _ => None,
        };
        if meta.jailed && jailed.is_none() {
            // Its state names the drives inside the template machine's
            // chroot: a cold boot, or an error with --require-snapshot.
            return Err(snap_err(SnapshotError::Mismatch {
                what: "confinement",
                snapshot: "jailed (its drives are named inside a chroot)".into(),
                requested: "an unjailed restore (--no-jailer)".into(),
            }));
        }
        for d in &meta.drives {
            if !d.path.exists() {
                return Err(snap_err(SnapshotError::Missing {
                    path: d.path.clone(),
                }));
            }
        }
        for s in [dir.api_socket(), dir.guest_socket()] {
            process::clear_stale_socket(&s)
                .map_err(|e| err("cannot prepare the instance sockets").with_source(e))?;
        }
        let mut guard = Guard(None);
        let (logger, load) = match &jailed {
            Some((iso, jailer)) => {
                let owner = (iso.uid, iso.gid);
                let place =
                    |c: &mvm_jail::chroot::Chroot| place_snapshot(c, from, &meta, spec, owner);
                let spawned = self
                    .spawn_jailed(
                        spec,
                        dir,
                        iso,
                        jailer,
                        deadline,
                        &mut guard.0,
                        false,
                        Some(&place),
                    )
                    .await;
                if let Err(e) = spawned {
                    guard.kill().await;
                    release_jail_after_failure(dir, iso);
                    return Err(e);
                }
                (
                    crate::jailer::boot_config(spec).logger,
                    jailed_load_params(spec),
                )
            }
            None => {
                let args = self.args(spec, dir);
                guard.0 = Some(
                    process::spawn(&args, &dir.console_log(), &dir.vmm_log(), spec.transient)
                        .map_err(|e| err("cannot start firecracker").with_source(e))?
                        .into(),
                );
                (
                    BootConfig::new(spec, dir).logger,
                    load_params(spec, dir, from),
                )
            }
        };
        let result = self
            .load_into(
                spec,
                dir,
                &meta,
                &mut guard,
                logger,
                load,
                jailed.is_none(),
                t0,
                deadline,
            )
            .await;
        if result.is_err() {
            guard.kill().await;
            if let Some((iso, _)) = &jailed {
                release_jail_after_failure(dir, iso);
            }
        }
        result
    }

    /// Load the snapshot into the spawned VMM of `guard`, switch its drives
    /// to the clone's (`patch_drives`: unjailed; a jailed VMM finds the
    /// clone's files at the snapshot's paths), resume it.
    #[allow(clippy::too_many_arguments)]
    async fn load_into(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        meta: &SnapshotMeta,
        guard: &mut Guard,
        logger: crate::api::Logger,
        load: SnapshotLoadParams,
        patch_drives: bool,
        t0: Instant,
        deadline: Instant,
    ) -> Result<RestoredVmm, BackendError> {
        let client = self.client(dir);
        process::wait_ready(guard.child(), &client, deadline)
            .await
            .map_err(|e| err("firecracker did not start").with_source(e))?;
        let spawn_ms = ms(t0.elapsed());

        let t_load = Instant::now();
        let client = client.with_timeout(deadline.saturating_duration_since(Instant::now()));
        let running = client
            .version()
            .await
            .map_err(|e| err("GET /version failed").with_source(e))?
            .firecracker_version;
        if running != meta.vmm_version {
            return Err(snap_err(SnapshotError::VmmVersion {
                snapshot: meta.vmm_version.clone(),
                running,
            }));
        }
        client
            .put_logger(&logger)
            .await
            .map_err(|e| err("configuring the logger failed").with_source(e))?;
        if let Err(e) = client.load_snapshot(&load).await {
            let detail = match &e {
                crate::api::ApiError::Fault { fault_message, .. } => fault_message.clone(),
                other => other.to_string(),
            };
            return Err(snap_err(SnapshotError::Load { detail }).with_logs(dir));
        }
        let patches = if patch_drives {
            drive_patches(meta, spec)
        } else {
            Vec::new()
        };
        for patch in patches {
            client.patch_drive(&patch).await.map_err(|e| {
                err(format!(
                    "switching drive {} to the clone's file failed",
                    patch.drive_id
                ))
                .with_source(e)
                .with_logs(dir)
            })?;
        }
        let load_ms = ms(t_load.elapsed());
        let t_resume = Instant::now();
        client.resume().await.map_err(|e| {
            err("resuming the restored VM failed")
                .with_source(e)
                .with_logs(dir)
        })?;
        let child = guard.0.take().expect("spawned before the load");
        Ok(RestoredVmm {
            vmm: RunningVmm { child, guest: None },
            info: RestoreInfo {
                spawn_ms,
                load_ms,
                resume_ms: ms(t_resume.elapsed()),
                total_ms: ms(t0.elapsed()),
            },
        })
    }
}

/// Kills the restored VMM unless disarmed (also when the restore future
/// is dropped half-way).
struct Guard(Option<VmmChild>);

impl Guard {
    fn child(&mut self) -> &mut VmmChild {
        self.0.as_mut().expect("armed until disarmed")
    }
    async fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_core::backend::{DriveSpec, KernelPaths, NetSpec};

    #[test]
    fn bodies_point_at_the_clone() {
        let dir = InstanceDir::new("/h/instances/c");
        let from = SnapshotDir::new("/h/templates/t/snapshot");
        let spec = VmSpec {
            name: "c".into(),
            cpus: 1,
            memory_mib: 128,
            kernel: KernelPaths {
                bzimage: "/k".into(),
                vmlinux: "/v".into(),
            },
            initrd: None,
            kernel_args: vec![],
            drives: vec![
                DriveSpec {
                    id: "root".into(),
                    path: "/h/instances/c/disk.ext4".into(),
                    read_only: false,
                },
                DriveSpec {
                    id: "ro".into(),
                    path: "/img/rootfs".into(),
                    read_only: true,
                },
            ],
            net: Some(NetSpec {
                tap: "mvm-c".into(),
                mac: "06:00:00:00:00:01".into(),
            }),
            vsock_cid: 3,
            transient: false,
            isolation: None,
        };
        let p = load_params(&spec, &dir, &from);
        assert_eq!(p.resume_vm, Some(false));
        assert_eq!(p.mem_backend.as_ref().unwrap().backend_path, from.memory());
        assert_eq!(p.vsock_override.unwrap().uds_path, dir.guest_socket());
        assert_eq!(p.network_overrides.unwrap()[0].host_dev_name, "mvm-c");
        let meta = SnapshotMeta {
            format: SNAPSHOT_FORMAT,
            backend: BackendKind::Firecracker,
            vmm_version: "1.16.1".into(),
            cpus: 1,
            memory_mib: 128,
            memory: MemoryMode::MemoryFile,
            drives: vec![
                SnapshotDrive {
                    id: "root".into(),
                    read_only: false,
                    path: "/h/templates/t/disk.ext4".into(),
                },
                SnapshotDrive {
                    id: "ro".into(),
                    read_only: true,
                    path: "/img/rootfs".into(),
                },
            ],
            net: true,
            state_bytes: 1,
            memory_bytes: 1,
            created: String::new(),
            jailed: false,
        };
        let patches = drive_patches(&meta, &spec);
        assert_eq!(patches.len(), 1);
        assert_eq!(patches[0].drive_id, "root");
        assert_eq!(create_params(&from).snapshot_type, Some(SnapshotType::Full));
    }
}
