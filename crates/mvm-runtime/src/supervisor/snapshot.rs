//! Snapshots of a running machine, taken by its supervisor on request
//! (`mvm template create`, also `--from MACHINE`).
//!
//! The supervisor is the only process that may touch its VMM, so a
//! snapshot is asked of it: the requester records a
//! [`SnapshotRequest`] in the machine's record (`template.snapshot_request`,
//! with the request's id and where the files go), then sends the
//! supervisor SIGUSR2 ([`request`]). The supervisor ([`serve`]) pauses the
//! VM, has the backend save it, copies the root disk and the config drive
//! while the VM is still paused (so the disk and the memory agree), resumes
//! the VM when it may (a VM whose RAM *is* the snapshot's memory file must
//! not run on), and answers in `template.snapshot_done` with the same id.
//! The requester waits for that record change, or for the supervisor's
//! death.

use std::time::{Duration, Instant};

use mvm_core::InstanceDir;
use mvm_core::backend::VmSpec;
use mvm_core::process::ProcessIdentity;
use mvm_core::snapshot::{SnapshotDir, SnapshotDone, SnapshotRequest, TemplateUse};

use crate::resources::backend::AnyBackend;
use crate::{Runtime, RuntimeError};

/// How long a snapshot may take (writing the RAM of a big guest with
/// Firecracker, or the migration stream of a machine with anonymous RAM).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The supervisor's side: serve the request recorded for machine `name`,
/// if any, and record the answer.
pub async fn serve(
    rt: &Runtime,
    name: &str,
    dir: &InstanceDir,
    backend: &AnyBackend,
    spec: &VmSpec,
) {
    let req = match rt.registry().load(name) {
        Ok(r) => r.template.and_then(|t| t.snapshot_request),
        Err(e) => {
            tracing::warn!("snapshot request: {}", crate::error_chain(&e));
            return;
        }
    };
    let Some(req) = req else { return };
    let t0 = Instant::now();
    let done = match take(dir, backend, spec, &req).await {
        Ok((total_ms, resumed)) => SnapshotDone {
            id: req.id,
            total_ms,
            resumed,
            error: None,
        },
        Err(e) => SnapshotDone {
            id: req.id,
            total_ms: t0.elapsed().as_millis() as u64,
            resumed: true,
            error: Some(crate::error_chain(&e)),
        },
    };
    let answered = rt.registry().update(name, |r| {
        let t = r.template.get_or_insert_with(TemplateUse::default);
        if t.snapshot_request.as_ref().is_some_and(|q| q.id == req.id) {
            t.snapshot_request = None;
        }
        t.snapshot_done = Some(done.clone());
        Ok(())
    });
    if let Err(e) = answered {
        tracing::warn!("snapshot answer: {}", crate::error_chain(&e));
    }
}

/// Pause, save, copy the drives, resume (when allowed): (ms, resumed).
async fn take(
    dir: &InstanceDir,
    backend: &AnyBackend,
    spec: &VmSpec,
    req: &SnapshotRequest,
) -> Result<(u64, bool), RuntimeError> {
    crate::fault::point("tmpl.snapshot", None)?;
    let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
    let dest = SnapshotDir::new(&req.dest);
    let info = match backend.snapshot(spec, dir, &dest, deadline).await {
        Ok(i) => i,
        Err(e) => {
            // It may have paused before failing: the machine runs on.
            let _ = backend.resume(dir).await;
            return Err(e.into());
        }
    };
    let copied = (|| {
        let drive = |id: &str| spec.drives.iter().find(|d| d.id == id).map(|d| &d.path);
        if let (Some(dst), Some(src)) = (&req.disk, drive("root")) {
            mvm_template::cow::clone_disk(src, dst).map_err(std::io::Error::other)?;
        }
        if let (Some(dst), Some(src)) = (&req.config, drive("config")) {
            mvm_core::snapshot::copy_sparse(src, dst)?;
        }
        Ok::<_, std::io::Error>(())
    })();
    let resumed = info.may_resume;
    if resumed {
        backend.resume(dir).await?;
    }
    copied?;
    crate::fault::point("tmpl.snapshotted", None)?;
    Ok((info.total_ms, resumed))
}

/// The requester's side: ask the supervisor of machine `name` for `req`
/// and wait for its answer (or its death, or the timeout).
pub async fn request(
    rt: &Runtime,
    name: &str,
    req: SnapshotRequest,
) -> Result<SnapshotDone, RuntimeError> {
    let registry = rt.registry().clone();
    let id = req.id;
    let (rec, ()) = registry.update(name, |r| {
        let t = r.template.get_or_insert_with(TemplateUse::default);
        t.snapshot_request = Some(req.clone());
        t.snapshot_done = None;
        Ok(())
    })?;
    let owner: ProcessIdentity = rec.owner.ok_or_else(|| RuntimeError::WrongState {
        name: name.to_owned(),
        status: rec.status(),
        hint: Some("it has no supervisor to take the snapshot".into()),
    })?;
    owner.signal(rustix::process::Signal::USR2)?;
    let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
    loop {
        let rec = registry.load(name)?;
        if let Some(done) = rec
            .template
            .and_then(|t| t.snapshot_done)
            .filter(|d| d.id == id)
        {
            return Ok(done);
        }
        if !owner.is_alive() {
            return Err(RuntimeError::StartFailed {
                name: name.to_owned(),
                message: "its supervisor ended before the snapshot was taken".into(),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RuntimeError::Timeout {
                what: format!("the snapshot of machine {name:?}"),
                after: SNAPSHOT_TIMEOUT,
            });
        }
        let (r, n) = (registry.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || {
            r.wait_for_change(&n, Some(owner), left.min(Duration::from_secs(1)))
        })
        .await
        .map_err(std::io::Error::other)??;
    }
}
