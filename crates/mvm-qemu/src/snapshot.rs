//! Snapshot and restore with QEMU 7.2 (`-M microvm`), through its
//! migration machinery.
//!
//! # Mechanism: file-backed RAM, mapped privately by clones
//!
//! A machine that will become a template runs with its RAM on a file,
//! mapped **shared** ([`QemuBackend::launch_with_memory`] →
//! `-object memory-backend-file,share=on,mem-path=F` and
//! `-M ...,memory-backend=mem0`): every guest write lands in the page cache
//! of `F`. To snapshot it ([`QemuBackend::snapshot`]):
//!
//! 1. `stop` (vCPUs paused; nothing writes RAM any more);
//! 2. `migrate-set-capabilities` `x-ignore-shared` (RAM blocks mapped
//!    shared are *not* put in the stream) and `events`;
//! 3. the state file is handed to QEMU over the QMP socket (`getfd`,
//!    `SCM_RIGHTS`) and `migrate uri=fd:NAME` writes the device state into
//!    it — about 60 KB for the default image, in milliseconds;
//! 4. the `MIGRATION` event says `completed`; then `F` and the state file
//!    are fsynced. `F` *is* the snapshot's memory when it was launched at
//!    `dest.memory()` (the VM must then never run again: it would change
//!    the snapshot); otherwise it is copied (sparse) while the VM is paused,
//!    and the VM may be resumed.
//!
//! A machine started with anonymous RAM is snapshotted the ordinary way:
//! the whole RAM goes into the stream ([`MemoryMode::InStream`]).
//!
//! A restore ([`QemuBackend::restore`]) starts a new QEMU with the same
//! devices, its RAM the snapshot's memory file mapped **privately**
//! (`share=off`: the guest's writes go to copy-on-write pages of this
//! process; the file is never written), and `-incoming defer`; then
//! `x-ignore-shared` + `events`, `getfd` of the state file,
//! `migrate-incoming uri=fd:NAME`, wait for `completed`, `cont`. RAM is
//! not read at all up front: pages fault in from the page cache as the
//! guest touches them, and clones of one template share the unmodified
//! ones. (Why this and not the plain migration stream: docs/decisions.md.)
//!
//! # The agent link
//!
//! The new QEMU's agent chardev is connected before the guest runs (as at
//! boot), and the guest agent resumes inside the template's connection:
//! the new host opens with a fresh `Hello`, which the agent takes as a new
//! connection on the same stream (see `mvm_agent_proto`).
//!
//! # Checks
//!
//! Before anything is spawned: `snapshot.json` exists and is this format,
//! written by this backend and this QEMU version (`qemu --version`), for
//! the same vCPUs, memory and devices, and the files have their recorded
//! sizes — a memory file of the wrong size would even be *extended* by
//! QEMU, so this check also protects the template. Damage inside the state
//! stream is caught by QEMU while loading (its error, from the VMM log,
//! becomes [`SnapshotError::Load`]); damage inside the memory file is for
//! the template store's checksums.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_core::InstanceDir;
use mvm_core::backend::{BackendError, BackendKind, RestoredVmm, RunningVmm, VmSpec};
use mvm_core::snapshot::{
    MemoryBacking, MemoryMode, RestoreInfo, SNAPSHOT_FORMAT, SnapshotDir, SnapshotDrive,
    SnapshotError, SnapshotInfo, SnapshotMeta, allocated_bytes, copy_sparse, now_rfc3339,
};
use serde::{Deserialize, Serialize};

use crate::argv::{MEMORY_BACKEND_ID, MemoryFileArgs};
use crate::backend::QemuBackend;
use crate::qmp::{Empty, Event, Qmp, QmpCommand, QmpError, RunState};

/// The name the state file's descriptor gets in QEMU (`getfd`).
const STATE_FD_NAME: &str = "mvm-vmstate";

fn err(message: impl Into<String>) -> BackendError {
    BackendError::new(BackendKind::Qemu, message)
}

/// A restore refused because of the snapshot (the cause says why; a
/// caller finds it with [`BackendError::snapshot_error`]).
fn snap_err(e: SnapshotError) -> BackendError {
    err("cannot restore from the snapshot").with_source(e)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// One migration capability.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationCapability {
    /// Its name (`x-ignore-shared`, `events`).
    pub capability: &'static str,
    /// On or off.
    pub state: bool,
}

/// `migrate-set-capabilities`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateSetCapabilities {
    /// The capabilities to set.
    pub capabilities: Vec<MigrationCapability>,
}
impl QmpCommand for MigrateSetCapabilities {
    const NAME: &'static str = "migrate-set-capabilities";
    type Reply = Empty;
    const NO_ARGS: bool = false;
}

/// `getfd`: store the descriptor sent with this request under `fdname`.
#[derive(Debug, Clone, Serialize)]
pub struct GetFd {
    /// The name.
    pub fdname: String,
}
impl QmpCommand for GetFd {
    const NAME: &'static str = "getfd";
    type Reply = Empty;
    const NO_ARGS: bool = false;
}

/// `migrate`: save the VM to `uri`.
#[derive(Debug, Clone, Serialize)]
pub struct Migrate {
    /// `fd:NAME`.
    pub uri: String,
}
impl QmpCommand for Migrate {
    const NAME: &'static str = "migrate";
    type Reply = Empty;
    const NO_ARGS: bool = false;
}

/// `migrate-incoming`: load the VM from `uri` (after `-incoming defer`).
#[derive(Debug, Clone, Serialize)]
pub struct MigrateIncoming {
    /// `fd:NAME`.
    pub uri: String,
}
impl QmpCommand for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    type Reply = Empty;
    const NO_ARGS: bool = false;
}

/// `query-migrate`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryMigrate;
impl QmpCommand for QueryMigrate {
    const NAME: &'static str = "query-migrate";
    type Reply = MigrationInfo;
}

/// Reply of `query-migrate` (the fields mvm reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MigrationInfo {
    /// `setup`, `active`, `completed`, `failed`, ...
    #[serde(default)]
    pub status: Option<String>,
    /// Why it failed.
    #[serde(default, rename = "error-desc")]
    pub error_desc: Option<String>,
    /// RAM statistics.
    #[serde(default)]
    pub ram: Option<RamStats>,
}

/// RAM part of [`MigrationInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RamStats {
    /// Bytes put in the stream.
    #[serde(default)]
    pub transferred: u64,
    /// Bytes of RAM considered.
    #[serde(default)]
    pub total: u64,
}

/// `qom-get`.
#[derive(Debug, Clone, Serialize)]
pub struct QomGet {
    /// Object path.
    pub path: String,
    /// Property.
    pub property: String,
}
impl QmpCommand for QomGet {
    const NAME: &'static str = "qom-get";
    type Reply = serde_json::Value;
    const NO_ARGS: bool = false;
}

/// A `MIGRATION` event's status, if `e` is one.
fn migration_status(e: &Event) -> Option<&str> {
    (e.event == "MIGRATION")
        .then(|| e.data.get("status").and_then(|s| s.as_str()))
        .flatten()
}

fn is_migration_end(e: &Event) -> bool {
    matches!(
        migration_status(e),
        Some("completed" | "failed" | "cancelled")
    )
}

/// Create `path` (mode 0600) as a sparse file of `bytes`, or check an
/// existing one has that size.
fn prepare_memory_file(path: &Path, bytes: u64) -> Result<(), BackendError> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    let f = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| err("cannot create the guest memory file").with_source(e))?;
    let len = f
        .metadata()
        .map_err(|e| err("cannot stat the guest memory file").with_source(e))?
        .len();
    if len == 0 {
        f.set_len(bytes)
            .map_err(|e| err("cannot size the guest memory file").with_source(e))?;
    } else if len != bytes {
        return Err(err(format!(
            "guest memory file {} has {len} bytes, expected {bytes}",
            path.display()
        )));
    }
    Ok(())
}

fn fsync(path: &Path) -> Result<(), BackendError> {
    fs_err::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| err("cannot make a snapshot file durable").with_source(e))
}

impl QemuBackend {
    /// The QEMU version string snapshots are tagged with.
    pub fn vmm_version(&self) -> Result<String, BackendError> {
        if !self.version_str().is_empty() {
            return Ok(self.version_str().to_owned());
        }
        crate::backend::binary_version(self.binary())
    }

    pub(crate) async fn launch_with_memory_impl(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        memory: &MemoryBacking,
        deadline: Instant,
    ) -> Result<RunningVmm, BackendError> {
        let mut args = self.args(spec, dir);
        if let MemoryBacking::SharedFile(path) = memory {
            prepare_memory_file(path, u64::from(spec.memory_mib) << 20)?;
            args.memory = Some(MemoryFileArgs {
                path: path.clone(),
                share: true,
            });
        }
        self.launch_args(spec, args, dir, deadline, RunState::Running)
            .await
            .map(|(vmm, _qmp)| vmm)
    }

    /// The shared memory file of the running VM, if its RAM is one.
    async fn shared_memory_file(
        qmp: &mut Qmp,
        deadline: Instant,
    ) -> Result<Option<PathBuf>, QmpError> {
        let path = format!("/objects/{MEMORY_BACKEND_ID}");
        let get = |property: &str| QomGet {
            path: path.clone(),
            property: property.to_owned(),
        };
        let mem_path = match qmp.execute(&get("mem-path"), deadline).await {
            Ok(v) => v,
            // No such object: anonymous RAM.
            Err(QmpError::Command { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let share = qmp.execute(&get("share"), deadline).await?;
        match (mem_path.as_str(), share.as_bool()) {
            (Some(p), Some(true)) => Ok(Some(PathBuf::from(p))),
            _ => Ok(None),
        }
    }

    pub(crate) async fn snapshot_impl(
        &self,
        spec: &VmSpec,
        dir: &InstanceDir,
        dest: &SnapshotDir,
        deadline: Instant,
    ) -> Result<SnapshotInfo, BackendError> {
        let t0 = Instant::now();
        let vmm_version = self.vmm_version()?;
        let name = dir.name();
        let fail = |what: &str| {
            let what = what.to_owned();
            let name = name.clone();
            move |e: QmpError| err(format!("snapshot of {name}: {what}")).with_source(e)
        };
        let mut qmp = Qmp::connect(&dir.qmp_socket(), deadline)
            .await
            .map_err(fail("QMP unavailable"))?;
        let shared = Self::shared_memory_file(&mut qmp, deadline)
            .await
            .map_err(fail("cannot inspect the guest memory"))?;

        // 1. Pause.
        qmp.stop(deadline).await.map_err(fail("stop"))?;
        let pause_ms = ms(t0.elapsed());

        // 2.-4. Save the device state (and, without a shared file, the RAM).
        let t_save = Instant::now();
        let mode = if shared.is_some() {
            MemoryMode::MemoryFile
        } else {
            MemoryMode::InStream
        };
        qmp.execute(
            &MigrateSetCapabilities {
                capabilities: vec![
                    MigrationCapability {
                        capability: "x-ignore-shared",
                        state: mode == MemoryMode::MemoryFile,
                    },
                    MigrationCapability {
                        capability: "events",
                        state: true,
                    },
                ],
            },
            deadline,
        )
        .await
        .map_err(fail("migrate-set-capabilities"))?;
        let state = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest.state())
            .map_err(|e| err("cannot create the snapshot state file").with_source(e))?;
        qmp.execute_with_fd(
            &GetFd {
                fdname: STATE_FD_NAME.into(),
            },
            state.file().as_fd(),
            deadline,
        )
        .await
        .map_err(fail("getfd"))?;
        qmp.execute(
            &Migrate {
                uri: format!("fd:{STATE_FD_NAME}"),
            },
            deadline,
        )
        .await
        .map_err(fail("migrate"))?;
        let end = qmp
            .wait_event(is_migration_end, deadline)
            .await
            .map_err(fail("waiting for the migration to end"))?;
        if migration_status(&end) != Some("completed") {
            let info = qmp
                .execute(&QueryMigrate, deadline)
                .await
                .unwrap_or_default();
            return Err(err(format!(
                "snapshot of {name}: saving the state {}: {}",
                migration_status(&end).unwrap_or("failed"),
                info.error_desc.unwrap_or_else(|| "no reason given".into())
            ))
            .with_logs(dir));
        }
        drop(state);
        let save_ms = ms(t_save.elapsed());

        // The RAM: the VM's own file, or a copy of it, or nothing.
        let t_sync = Instant::now();
        let mut may_resume = true;
        let memory_bytes = match &shared {
            Some(p) if p == &dest.memory() => {
                may_resume = false;
                u64::from(spec.memory_mib) << 20
            }
            Some(p) => {
                copy_sparse(p, &dest.memory())
                    .map_err(|e| err("cannot copy the guest memory file").with_source(e))?;
                u64::from(spec.memory_mib) << 20
            }
            None => 0,
        };
        fsync(&dest.state())?;
        if mode == MemoryMode::MemoryFile {
            fsync(&dest.memory())?;
        }
        let state_bytes = fs_err::metadata(dest.state())
            .map_err(|e| err("cannot stat the snapshot state").with_source(e))?
            .len();
        let meta = SnapshotMeta {
            format: SNAPSHOT_FORMAT,
            backend: BackendKind::Qemu,
            vmm_version,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            memory: mode,
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
            state_bytes,
            memory_bytes,
            created: now_rfc3339(),
            jailed: false,
        };
        dest.write_meta(&meta)
            .map_err(|e| err("cannot write the snapshot metadata").with_source(e))?;
        let sync_ms = ms(t_sync.elapsed());
        Ok(SnapshotInfo {
            memory_allocated_bytes: if mode == MemoryMode::MemoryFile {
                allocated_bytes(&dest.memory())
            } else {
                0
            },
            meta,
            pause_ms,
            save_ms,
            sync_ms,
            total_ms: ms(t0.elapsed()),
            may_resume,
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
        let version = self.vmm_version()?;
        meta.check_restorable(from, BackendKind::Qemu, &version, spec)
            .map_err(snap_err)?;
        // Opened before spawning: a file that vanished now is reported as
        // missing, not as a QEMU failure.
        let state = fs_err::File::open(from.state()).map_err(|e| {
            snap_err(SnapshotError::Io {
                path: from.state(),
                source: e,
            })
        })?;
        let mut args = self.args(spec, dir);
        args.incoming = true;
        if meta.memory == MemoryMode::MemoryFile {
            args.memory = Some(MemoryFileArgs {
                path: from.memory(),
                share: false,
            });
        }
        let (vmm, qmp) = self
            .launch_args(spec, args, dir, deadline, RunState::Inmigrate)
            .await?;
        let spawn_ms = ms(t0.elapsed());
        let mut guard = Guard(Some(vmm));

        let t_load = Instant::now();
        let load = async {
            let mut qmp = qmp;
            qmp.execute(
                &MigrateSetCapabilities {
                    capabilities: vec![
                        MigrationCapability {
                            capability: "x-ignore-shared",
                            state: meta.memory == MemoryMode::MemoryFile,
                        },
                        MigrationCapability {
                            capability: "events",
                            state: true,
                        },
                    ],
                },
                deadline,
            )
            .await?;
            qmp.execute_with_fd(
                &GetFd {
                    fdname: STATE_FD_NAME.into(),
                },
                state.file().as_fd(),
                deadline,
            )
            .await?;
            qmp.execute(
                &MigrateIncoming {
                    uri: format!("fd:{STATE_FD_NAME}"),
                },
                deadline,
            )
            .await?;
            let end = qmp.wait_event(is_migration_end, deadline).await?;
            Ok::<_, QmpError>((qmp, migration_status(&end) == Some("completed")))
        };
        let (mut qmp, completed) = match load.await {
            Ok(r) => r,
            Err(e) => {
                let detail = guard.failure_detail(dir, &e.to_string()).await;
                return Err(snap_err(SnapshotError::Load { detail }).with_logs(dir));
            }
        };
        if !completed {
            let detail = guard
                .failure_detail(dir, "the incoming migration failed")
                .await;
            return Err(snap_err(SnapshotError::Load { detail }).with_logs(dir));
        }
        let load_ms = ms(t_load.elapsed());

        let t_resume = Instant::now();
        let resumed = async {
            // A snapshot taken from a paused VM restores paused; one taken
            // by `migrate` from a running VM would already run.
            if !qmp.query_status(deadline).await?.running {
                qmp.cont(deadline).await?;
            }
            qmp.query_status(deadline).await
        }
        .await;
        match resumed {
            Ok(s) if s.running => {}
            Ok(s) => {
                guard.kill().await;
                return Err(err(format!(
                    "the restored VM did not run (status {:?})",
                    s.status
                ))
                .with_logs(dir));
            }
            Err(e) => {
                guard.kill().await;
                return Err(err("cannot resume the restored VM")
                    .with_source(e)
                    .with_logs(dir));
            }
        }
        let resume_ms = ms(t_resume.elapsed());
        Ok(RestoredVmm {
            vmm: guard.disarm(),
            info: RestoreInfo {
                spawn_ms,
                load_ms,
                resume_ms,
                total_ms: ms(t0.elapsed()),
            },
        })
    }
}

/// Kills the restored QEMU unless disarmed (also when the restore future
/// is dropped half-way).
struct Guard(Option<RunningVmm>);

impl Guard {
    fn disarm(mut self) -> RunningVmm {
        self.0.take().expect("armed until disarmed")
    }

    async fn kill(&mut self) {
        if let Some(mut v) = self.0.take() {
            let _ = v.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), v.child.wait()).await;
        }
    }

    /// Why the load failed: QEMU's own last words (it exits when a load
    /// fails), else `fallback`. Kills and reaps QEMU.
    async fn failure_detail(&mut self, dir: &InstanceDir, fallback: &str) -> String {
        if let Some(v) = self.0.as_mut() {
            // QEMU exits by itself after a failed load; give it a moment
            // so its log is complete, then make sure it is gone.
            let _ = tokio::time::timeout(Duration::from_secs(2), v.child.wait()).await;
        }
        self.kill().await;
        let log = mvm_core::backend::tail_lines(&dir.vmm_log(), 5).unwrap_or_default();
        let words: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("waiting for connection"))
            .map(|l| l.trim_start_matches("qemu-system-x86_64: "))
            .collect();
        if words.is_empty() {
            fallback.to_owned()
        } else {
            words.join("; ")
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(v) = self.0.as_mut() {
            let _ = v.child.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_events_are_recognised() {
        let e: Event = serde_json::from_str(
            r#"{"event": "MIGRATION", "data": {"status": "completed"}, "timestamp": {"seconds": 1, "microseconds": 0}}"#,
        )
        .unwrap();
        assert!(is_migration_end(&e));
        let e: Event =
            serde_json::from_str(r#"{"event": "MIGRATION", "data": {"status": "active"}}"#)
                .unwrap();
        assert!(!is_migration_end(&e));
        let e: Event = serde_json::from_str(r#"{"event": "STOP"}"#).unwrap();
        assert!(!is_migration_end(&e));
    }
}
