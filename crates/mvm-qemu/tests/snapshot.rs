//! Snapshot and restore through the backend with a real QEMU, no guest
//! kernel needed: the "kernel" is 64 KiB of zeros that the vCPU spins on,
//! which exercises QEMU's whole save/load path (devices, file-backed RAM,
//! the migration stream) and every refusal. The agent side of a restore is
//! tested with real guests in `mvm-template`.

use std::time::{Duration, Instant};

use mvm_core::InstanceDir;
use mvm_core::backend::{BackendKind, VmBackend, VmSpec};
use mvm_core::snapshot::{MemoryBacking, MemoryMode, SnapshotDir, SnapshotError};
use mvm_qemu::{Accel, QemuBackend, RunState};

use crate::util::{chain, deadline, processes_mentioning, qemu_or_skip, short_tempdir, spec};

struct Fixture {
    tmp: tempfile::TempDir,
    spec: VmSpec,
}

impl Fixture {
    fn new() -> Self {
        let tmp = short_tempdir();
        let kernel = tmp.path().join("zero-kernel");
        fs_err::write(&kernel, vec![0u8; 64 * 1024]).unwrap();
        let mut spec = spec(&kernel, None);
        spec.memory_mib = 64;
        let disk = tmp.path().join("disk.img");
        fs_err::File::create(&disk)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        spec.drives.push(mvm_core::backend::DriveSpec {
            id: "root".into(),
            path: disk,
            read_only: false,
        });
        Self { tmp, spec }
    }

    fn dir(&self, name: &str) -> InstanceDir {
        let d = InstanceDir::new(self.tmp.path().join(name));
        fs_err::create_dir_all(d.root()).unwrap();
        d
    }

    fn snapshot_dir(&self, name: &str) -> SnapshotDir {
        let d = SnapshotDir::new(self.tmp.path().join(name));
        fs_err::create_dir_all(d.root()).unwrap();
        d
    }
}

fn sha256(path: &std::path::Path) -> Vec<u8> {
    use std::io::Read;
    // A cheap content fingerprint (std only): FNV-1a over 64 KiB blocks.
    let mut f = fs_err::File::open(path).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut h: u64 = 0xcbf29ce484222325;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
    }
    h.to_le_bytes().to_vec()
}

async fn status(dir: &InstanceDir) -> RunState {
    let mut q = mvm_qemu::Qmp::connect(&dir.qmp_socket(), deadline(10))
        .await
        .unwrap();
    q.query_status(deadline(10)).await.unwrap().status
}

async fn stop(mut v: mvm_core::backend::RunningVmm) {
    v.child.start_kill().unwrap();
    tokio::time::timeout(Duration::from_secs(10), v.child.wait())
        .await
        .expect("QEMU did not die")
        .unwrap();
}

/// File-backed template → snapshot (state only) → two restores at once,
/// each mapping the memory privately: the template's files never change.
#[tokio::test]
async fn file_backed_snapshot_restores_twice_without_touching_the_template() {
    let Some(qemu) = qemu_or_skip("file_backed_snapshot_restores_twice") else {
        return;
    };
    let f = Fixture::new();
    let backend = QemuBackend::new(&qemu, Accel::Tcg);
    let tdir = f.dir("tmpl");
    let snap = f.snapshot_dir("snap");
    let vm = backend
        .launch_with_memory(
            &f.spec,
            &tdir,
            &MemoryBacking::SharedFile(snap.memory()),
            deadline(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let info = backend
        .snapshot(&f.spec, &tdir, &snap, deadline(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "snapshot: state {} B, memory {} B ({} allocated), pause {} ms, save {} ms, sync {} ms, total {} ms",
        info.meta.state_bytes,
        info.meta.memory_bytes,
        info.memory_allocated_bytes,
        info.pause_ms,
        info.save_ms,
        info.sync_ms,
        info.total_ms
    );
    assert_eq!(info.meta.memory, MemoryMode::MemoryFile);
    assert!(!info.may_resume, "its RAM is the snapshot");
    assert_eq!(info.meta.memory_bytes, 64 << 20);
    assert!(
        info.meta.state_bytes < 1 << 20,
        "the RAM must not be in the stream: {} bytes",
        info.meta.state_bytes
    );
    assert_eq!(status(&tdir).await, RunState::Postmigrate);
    stop(vm).await;
    let meta = snap.read_meta().unwrap();
    assert_eq!(meta, info.meta);
    assert!(
        meta.vmm_version.starts_with("QEMU emulator version"),
        "{meta:?}"
    );
    let before = (sha256(&snap.memory()), sha256(&snap.state()));

    // Two clones at once, each with a disk of its own.
    let mut clones = Vec::new();
    for name in ["c1", "c2"] {
        let dir = f.dir(name);
        let mut spec = f.spec.clone();
        spec.drives[0].path = dir.root().join("disk.img");
        fs_err::copy(&f.spec.drives[0].path, &spec.drives[0].path).unwrap();
        let t = Instant::now();
        let r = backend
            .restore(&spec, &dir, &snap, deadline(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("restore {name}: {:?} in {:?}", r.info, t.elapsed());
        assert!(r.vmm.guest.is_some(), "the agent chardev is connected");
        assert_eq!(status(&dir).await, RunState::Running);
        clones.push(r.vmm);
    }
    for c in clones {
        stop(c).await;
    }
    assert_eq!(
        (sha256(&snap.memory()), sha256(&snap.state())),
        before,
        "a restore wrote to the snapshot"
    );
    let left = processes_mentioning(&f.tmp.path().to_string_lossy());
    assert!(left.is_empty(), "processes left running: {left:?}");
}

/// Anonymous RAM: the whole RAM goes into the stream; the VM may resume.
#[tokio::test]
async fn in_stream_snapshot_of_a_running_machine_then_resume() {
    let Some(qemu) = qemu_or_skip("in_stream_snapshot_of_a_running_machine") else {
        return;
    };
    let f = Fixture::new();
    let backend = QemuBackend::new(&qemu, Accel::Tcg);
    let dir = f.dir("run");
    let snap = f.snapshot_dir("snap");
    let vm = backend.launch(&f.spec, &dir, deadline(30)).await.unwrap();
    let info = backend
        .snapshot(&f.spec, &dir, &snap, deadline(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "in-stream snapshot: state {} B in {} ms",
        info.meta.state_bytes, info.total_ms
    );
    assert_eq!(info.meta.memory, MemoryMode::InStream);
    assert!(info.may_resume);
    assert!(!snap.memory().exists());
    backend.resume(&dir).await.unwrap();
    assert_eq!(status(&dir).await, RunState::Running);
    stop(vm).await;

    let cdir = f.dir("clone");
    let r = backend
        .restore(&f.spec, &cdir, &snap, deadline(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("in-stream restore: {:?}", r.info);
    assert_eq!(status(&cdir).await, RunState::Running);
    stop(r.vmm).await;
}

/// Every bad snapshot is a typed error naming the problem, and leaves no
/// process behind.
#[tokio::test]
async fn bad_snapshots_are_refused_with_typed_errors() {
    let Some(qemu) = qemu_or_skip("bad_snapshots_are_refused_with_typed_errors") else {
        return;
    };
    let f = Fixture::new();
    let backend = QemuBackend::new(&qemu, Accel::Tcg);
    let tdir = f.dir("tmpl");
    let snap = f.snapshot_dir("snap");
    let vm = backend
        .launch_with_memory(
            &f.spec,
            &tdir,
            &MemoryBacking::SharedFile(snap.memory()),
            deadline(30),
        )
        .await
        .unwrap();
    backend
        .snapshot(&f.spec, &tdir, &snap, deadline(30))
        .await
        .unwrap();
    stop(vm).await;
    let meta = snap.read_meta().unwrap();

    // A copy of the snapshot to damage, one way per case.
    let case = |name: &str| {
        let d = f.snapshot_dir(name);
        for p in [snap.meta(), snap.state(), snap.memory()] {
            fs_err::copy(&p, d.root().join(p.file_name().unwrap())).unwrap();
        }
        d
    };
    let restore = |d: SnapshotDir, spec: VmSpec| {
        let dir = f.dir(&format!(
            "r-{}",
            d.root().file_name().unwrap().to_string_lossy()
        ));
        let backend = backend.clone();
        async move { backend.restore(&spec, &dir, &d, deadline(30)).await }
    };

    // Missing memory file.
    let d = case("nomem");
    fs_err::remove_file(d.memory()).unwrap();
    let e = restore(d, f.spec.clone()).await.unwrap_err();
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::Missing { path }) if path.ends_with("memory")),
        "{e}"
    );

    // Truncated memory file: refused before QEMU could extend it.
    let d = case("short");
    fs_err::OpenOptions::new()
        .write(true)
        .open(d.memory())
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let e = restore(d.clone(), f.spec.clone()).await.unwrap_err();
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::Truncated { .. })),
        "{e}"
    );
    assert_eq!(fs_err::metadata(d.memory()).unwrap().len(), 1 << 20);

    // Another QEMU version wrote it.
    let d = case("version");
    let mut m = meta.clone();
    m.vmm_version = "QEMU emulator version 9.9.9".into();
    d.write_meta(&m).unwrap();
    let e = restore(d, f.spec.clone()).await.unwrap_err();
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::VmmVersion { .. })),
        "{e}"
    );
    assert!(chain(&e).contains("9.9.9"), "{}", chain(&e));

    // Another backend wrote it.
    let d = case("backend");
    let mut m = meta.clone();
    m.backend = BackendKind::Firecracker;
    d.write_meta(&m).unwrap();
    let e = restore(d, f.spec.clone()).await.unwrap_err();
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::Backend { .. })),
        "{e}"
    );

    // A machine of another shape.
    let mut bigger = f.spec.clone();
    bigger.memory_mib = 128;
    let e = restore(case("shape"), bigger).await.unwrap_err();
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::Mismatch { .. })),
        "{e}"
    );

    // A corrupted state stream (same size): QEMU refuses it while loading.
    let d = case("corrupt");
    let mut bytes = fs_err::read(d.state()).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n / 4..n / 2] {
        *b ^= 0x5a;
    }
    fs_err::write(d.state(), &bytes).unwrap();
    let t = Instant::now();
    let e = restore(d, f.spec.clone()).await.unwrap_err();
    eprintln!("corrupt state: {}", chain(&e));
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::Load { .. })),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());

    // A truncated state stream (size recorded in the metadata fixed up,
    // as if the file had been cut and the metadata rewritten).
    let d = case("cut");
    let bytes = fs_err::read(d.state()).unwrap();
    fs_err::write(d.state(), &bytes[..bytes.len() / 2]).unwrap();
    let mut m = meta.clone();
    m.state_bytes = (bytes.len() / 2) as u64;
    d.write_meta(&m).unwrap();
    let e = restore(d, f.spec.clone()).await.unwrap_err();
    eprintln!("cut state: {}", chain(&e));
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::Load { .. })),
        "{e}"
    );

    // No metadata at all.
    let d = case("nometa");
    fs_err::remove_file(d.meta()).unwrap();
    let e = restore(d, f.spec.clone()).await.unwrap_err();
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::Missing { .. })),
        "{e}"
    );

    let left = processes_mentioning(&f.tmp.path().to_string_lossy());
    assert!(left.is_empty(), "processes left running: {left:?}");
}
