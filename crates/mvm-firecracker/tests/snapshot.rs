//! Snapshot and restore against the real Firecracker binary
//! (`MVM_FIRECRACKER_BIN`). The VM is configured and started, but its guest
//! never boots here (KVM cannot run guest kernels on this host; the
//! "kernel" is a tiny ELF that halts): what is checked is the VMM's answers
//! to pause → `/snapshot/create`, and to `/snapshot/load` (+ drive switch +
//! resume) in a fresh process, and every refusal. The guest half of a
//! restore (agent link, reidentify) is shared with QEMU and tested there.

use std::path::PathBuf;
use std::time::Instant;

use mvm_core::VmBackend;
use mvm_core::backend::{BackendKind, DriveSpec, KernelPaths, VmSpec};
use mvm_core::paths::InstanceDir;
use mvm_core::snapshot::{MemoryMode, SnapshotDir, SnapshotError};
use mvm_firecracker::FirecrackerBackend;
use mvm_firecracker::api::InstanceState;

use crate::common::{deadline, firecracker_bin, tiny_elf};

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            tmp: tempfile::Builder::new().prefix("mvmfs").tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn dir(&self, name: &str) -> InstanceDir {
        let d = InstanceDir::new(self.path(name));
        fs_err::create_dir_all(d.root()).unwrap();
        d
    }
    fn snapshot_dir(&self, name: &str) -> SnapshotDir {
        let d = SnapshotDir::new(self.path(name));
        fs_err::create_dir_all(d.root()).unwrap();
        d
    }
    fn file(&self, name: &str, len: u64) -> PathBuf {
        let p = self.path(name);
        fs_err::File::create(&p).unwrap().set_len(len).unwrap();
        p
    }
    fn spec(&self, name: &str, disk: PathBuf) -> VmSpec {
        let kernel = self.path("vmlinux");
        if !kernel.exists() {
            fs_err::write(&kernel, tiny_elf()).unwrap();
        }
        VmSpec {
            name: name.into(),
            cpus: 1,
            memory_mib: 64,
            kernel: KernelPaths {
                bzimage: "/nonexistent/bzImage".into(),
                vmlinux: kernel,
            },
            initrd: None,
            kernel_args: vec![],
            drives: vec![DriveSpec {
                id: "root".into(),
                path: disk,
                read_only: false,
            }],
            net: None,
            vsock_cid: 3,
            transient: true,
            isolation: None,
        }
    }
}

fn digest(p: &std::path::Path) -> (u64, u64) {
    use std::io::Read;
    let mut f = fs_err::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let (mut h, mut n) = (0xcbf29ce484222325u64, 0u64);
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break (h, n);
        }
        n += k as u64;
        for b in &buf[..k] {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
    }
}

#[tokio::test]
async fn real_firecracker_snapshot_create_then_load_in_a_fresh_process() {
    let Some(bin) = firecracker_bin("real_firecracker_snapshot_create_then_load") else {
        return;
    };
    let f = Fixture::new();
    let b = FirecrackerBackend::new(bin, false);
    let tdir = f.dir("tmpl");
    let tspec = f.spec("tmpl", f.file("tmpl-disk.img", 1 << 20));
    let mut vm = b
        .launch(&tspec, &tdir, deadline(15))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let snap = f.snapshot_dir("snap");
    let info = match b.snapshot(&tspec, &tdir, &snap, deadline(60)).await {
        Ok(i) => i,
        Err(e) => panic!(
            "{e}\ncaused by: {:?}",
            std::error::Error::source(&e).map(|s| s.to_string())
        ),
    };
    eprintln!(
        "firecracker snapshot: state {} B, memory {} B ({} allocated), pause {} ms, create {} ms, sync {} ms",
        info.meta.state_bytes,
        info.meta.memory_bytes,
        info.memory_allocated_bytes,
        info.pause_ms,
        info.save_ms,
        info.sync_ms
    );
    assert_eq!(info.meta.backend, BackendKind::Firecracker);
    assert_eq!(info.meta.memory, MemoryMode::MemoryFile);
    assert_eq!(info.meta.memory_bytes, 64 << 20);
    assert!(info.meta.vmm_version.starts_with("1.16"), "{:?}", info.meta);
    assert!(info.may_resume);
    assert_eq!(
        b.client(&tdir).describe_instance().await.unwrap().state,
        InstanceState::Paused,
        "the VM is left paused"
    );
    assert_eq!(snap.read_meta().unwrap(), info.meta);
    // The snapshotted VM can go on.
    b.resume(&tdir).await.unwrap();
    vm.child.start_kill().unwrap();
    vm.child.wait().await.unwrap();
    let before = digest(&snap.memory());

    // A clone in a fresh process, with a disk of its own.
    let cdir = f.dir("clone");
    let cdisk = f.file("clone-disk.img", 1 << 20);
    let cspec = f.spec("clone", cdisk.clone());
    let t = Instant::now();
    let mut r = b
        .restore(&cspec, &cdir, &snap, deadline(30))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\ncaused by: {:?}",
                std::error::Error::source(&e).map(|s| s.to_string())
            )
        });
    eprintln!("firecracker restore: {:?} in {:?}", r.info, t.elapsed());
    let client = b.client(&cdir);
    assert_eq!(
        client.describe_instance().await.unwrap().state,
        InstanceState::Running
    );
    // The drive now points at the clone's file; vsock at the clone's socket.
    let cfg = serde_json::to_value(client.vm_config().await.unwrap()).unwrap();
    eprintln!("GET /vm/config after restore: {cfg}");
    assert_eq!(
        cfg["drives"][0]["path_on_host"],
        serde_json::json!(cdisk),
        "{cfg}"
    );
    assert_eq!(
        cfg["vsock"]["uds_path"],
        serde_json::json!(cdir.guest_socket()),
        "{cfg}"
    );
    assert!(cdir.guest_socket().exists(), "the clone's vsock socket");
    r.vmm.child.start_kill().unwrap();
    r.vmm.child.wait().await.unwrap();
    assert_eq!(
        digest(&snap.memory()),
        before,
        "the clone wrote the memory file"
    );
}

#[tokio::test]
async fn real_firecracker_refuses_bad_snapshots_with_typed_errors() {
    let Some(bin) = firecracker_bin("real_firecracker_refuses_bad_snapshots") else {
        return;
    };
    let f = Fixture::new();
    let b = FirecrackerBackend::new(bin, false);
    let tdir = f.dir("tmpl");
    let tspec = f.spec("tmpl", f.file("tmpl-disk.img", 1 << 20));
    let mut vm = b.launch(&tspec, &tdir, deadline(15)).await.unwrap();
    let snap = f.snapshot_dir("snap");
    b.snapshot(&tspec, &tdir, &snap, deadline(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    vm.child.start_kill().unwrap();
    vm.child.wait().await.unwrap();
    let meta = snap.read_meta().unwrap();
    let case = |name: &str| {
        let d = f.snapshot_dir(name);
        for p in [snap.meta(), snap.state(), snap.memory()] {
            fs_err::copy(&p, d.root().join(p.file_name().unwrap())).unwrap();
        }
        d
    };
    let restore = |d: SnapshotDir| {
        let name = format!("r-{}", d.root().file_name().unwrap().to_string_lossy());
        let dir = f.dir(&name);
        let spec = f.spec(&name, f.file(&format!("{name}.img"), 1 << 20));
        let b = b.clone();
        async move { b.restore(&spec, &dir, &d, deadline(30)).await }
    };

    let d = case("short");
    fs_err::OpenOptions::new()
        .write(true)
        .open(d.memory())
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let e = restore(d).await.unwrap_err();
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::Truncated { .. })),
        "{e}"
    );

    let d = case("version");
    let mut m = meta.clone();
    m.vmm_version = "0.9.0".into();
    d.write_meta(&m).unwrap();
    let e = restore(d).await.unwrap_err();
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::VmmVersion { .. })),
        "{e}"
    );

    // A damaged state file (same size): Firecracker's own refusal.
    let d = case("corrupt");
    let mut bytes = fs_err::read(d.state()).unwrap();
    for b in bytes.iter_mut().take(64) {
        *b ^= 0xff;
    }
    fs_err::write(d.state(), &bytes).unwrap();
    let e = restore(d).await.unwrap_err();
    eprintln!(
        "damaged state: {e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::Load { .. })),
        "{e}"
    );

    // The drive file the snapshot refers to is gone.
    let d = case("nodisk");
    let mut m = meta.clone();
    m.drives[0].path = f.path("gone.img");
    d.write_meta(&m).unwrap();
    let e = restore(d).await.unwrap_err();
    assert!(
        matches!(e.snapshot_error(), Some(SnapshotError::Missing { path }) if path.ends_with("gone.img")),
        "{e}"
    );
    // Nothing of ours is left running.
    let mut left = Vec::new();
    for e in fs_err::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs_err::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(&*f.tmp.path().to_string_lossy())
        {
            left.push(e.file_name());
        }
    }
    assert!(left.is_empty(), "left running: {left:?}");
}
