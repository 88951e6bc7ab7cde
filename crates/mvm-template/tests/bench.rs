//! Measurements at the backend level (no CLI, no supervisor): cold boot to
//! agent-ready against restore to agent-ready, file-backed RAM against the
//! plain migration stream, memory of clones, copy-on-write disks.
//!
//! Run explicitly: `cargo test -p mvm-template --test tests bench --
//! --ignored --nocapture` (`MVM_BENCH_RUNS`, default 10).

use std::time::{Duration, Instant};

use mvm_core::backend::{VmBackend, VmSpec};
use mvm_core::paths::InstanceDir;
use mvm_core::snapshot::{MemoryBacking, SnapshotDir, SnapshotInfo};
use mvm_qemu::QemuBackend;

use crate::util::*;

fn runs() -> usize {
    std::env::var("MVM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(10)
}

/// Boot `spec` (anonymous RAM): time to the agent's handshake, and to a
/// first command (`true`) done.
async fn cold(backend: &QemuBackend, spec: &VmSpec, dir: &InstanceDir) -> (Duration, Duration) {
    let t = Instant::now();
    let mut vm = Vm(Some(
        backend.launch(spec, dir, deadline(BOOT)).await.unwrap(),
    ));
    let c = agent(vm.take_guest(), dir, BOOT).await;
    let ready = t.elapsed();
    assert_eq!(run(&c, &["true"]).await.code, Some(0));
    let done = t.elapsed();
    drop(c);
    vm.kill().await;
    (ready, done)
}

/// Restore `snap` to the agent's handshake; the VM is returned running.
async fn restore(
    backend: &QemuBackend,
    spec: &VmSpec,
    dir: &InstanceDir,
    snap: &SnapshotDir,
) -> (Duration, Vm, mvm_agent_proto::client::AgentClient) {
    let t = Instant::now();
    let r = backend
        .restore(spec, dir, snap, deadline(Duration::from_secs(60)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut vm = Vm(Some(r.vmm));
    let c = agent(vm.take_guest(), dir, Duration::from_secs(30)).await;
    (t.elapsed(), vm, c)
}

/// Boot a template machine and snapshot it into `snap`.
async fn make_template(
    backend: &QemuBackend,
    spec: &VmSpec,
    dir: &InstanceDir,
    snap: &SnapshotDir,
    file_backed: bool,
) -> SnapshotInfo {
    let memory = if file_backed {
        MemoryBacking::SharedFile(snap.memory())
    } else {
        MemoryBacking::Anonymous
    };
    let mut vm = Vm(Some(
        backend
            .launch_with_memory(spec, dir, &memory, deadline(BOOT))
            .await
            .unwrap(),
    ));
    let c = agent(vm.take_guest(), dir, BOOT).await;
    let info = backend
        .snapshot(spec, dir, snap, deadline(Duration::from_secs(120)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    vm.kill().await;
    drop(c);
    info
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::test]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
async fn bench_restore_against_cold_boot() {
    let Some((img, backend)) = prerequisites("bench_restore_against_cold_boot") else {
        return;
    };
    let n = runs();
    let tmp = short_tempdir();
    let mem = 512;
    let spec = spec(&img, "bench", mem);

    // Templates: file-backed RAM, and the plain stream.
    let fsnap = SnapshotDir::new(tmp.path().join("file"));
    let nsnap = SnapshotDir::new(tmp.path().join("naive"));
    fs_err::create_dir_all(fsnap.root()).unwrap();
    fs_err::create_dir_all(nsnap.root()).unwrap();
    let finfo = make_template(&backend, &spec, &instance(tmp.path(), "tf"), &fsnap, true).await;
    let ninfo = make_template(&backend, &spec, &instance(tmp.path(), "tn"), &nsnap, false).await;

    // Alternate: cold, file-backed restore, in-stream restore.
    let (mut c, mut ct, mut f, mut ft, mut s) = (vec![], vec![], vec![], vec![], vec![]);
    let mut phases = Vec::new();
    for i in 0..n {
        let (ready, done) = cold(&backend, &spec, &instance(tmp.path(), &format!("cold{i}"))).await;
        c.push(ready);
        ct.push(done);
        let dir = instance(tmp.path(), &format!("f{i}"));
        let t = Instant::now();
        let r = backend
            .restore(&spec, &dir, &fsnap, deadline(Duration::from_secs(60)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let restored = t.elapsed();
        let info = r.info.clone();
        let mut vm = Vm(Some(r.vmm));
        let client = agent(vm.take_guest(), &dir, Duration::from_secs(30)).await;
        f.push(t.elapsed());
        // Reidentify and the first command, pipelined: the agent finishes
        // the reidentify before it reads the next request.
        let (rep, out) = tokio::join!(
            client.reidentify(identity(&format!("f{i}"))),
            run(&client, &["true"])
        );
        rep.unwrap();
        assert_eq!(out.code, Some(0));
        ft.push(t.elapsed());
        phases.push((info, restored, f[i] - restored, ft[i] - f[i]));
        drop(client);
        vm.kill().await;
        let dir = instance(tmp.path(), &format!("n{i}"));
        let (d, vm, client) = restore(&backend, &spec, &dir, &nsnap).await;
        s.push(d);
        drop(client);
        vm.kill().await;
    }
    let (cm, ctm, fm, ftm, sm) = (
        median(&mut c),
        median(&mut ct),
        median(&mut f),
        median(&mut ft),
        median(&mut s),
    );
    eprintln!(
        "\nBENCH backend level, {} TCG, default image, {mem} MiB, 1 vCPU, medians of {n} runs (alternated):",
        backend.vmm_version().unwrap()
    );
    eprintln!("| what | median | min | max | cold / this |");
    eprintln!("|---|---|---|---|---|");
    for (name, v, m, base) in [
        ("cold boot → agent ready", &c, cm, cm),
        ("cold boot → `true` done", &ct, ctm, ctm),
        ("restore (file-backed RAM) → agent ready", &f, fm, cm),
        (
            "restore (file-backed) → reidentified + `true` done",
            &ft,
            ftm,
            ctm,
        ),
        ("restore (RAM in stream) → agent ready", &s, sm, cm),
    ] {
        eprintln!(
            "| {name} | {} | {} | {} | {:.1}× |",
            ms(m),
            ms(v[0]),
            ms(v[v.len() - 1]),
            base.as_secs_f64() / m.as_secs_f64()
        );
    }
    phases.sort_by_key(|p| p.1);
    let (info, restored, handshake, work) = &phases[phases.len() / 2];
    eprintln!(
        "file-backed restore, median run: spawn→QMP+chardev {} ms, load {} ms, cont {} ms (backend total {}); agent handshake {}; reidentify + `true` {}",
        info.spawn_ms,
        info.load_ms,
        info.resume_ms,
        ms(*restored),
        ms(*handshake),
        ms(*work)
    );
    for (name, i) in [("file-backed", &finfo), ("in-stream", &ninfo)] {
        eprintln!(
            "snapshot {name}: state {} KiB, memory file {} MiB ({} MiB allocated); pause {} ms, save {} ms, fsync {} ms, total {} ms",
            i.meta.state_bytes >> 10,
            i.meta.memory_bytes >> 20,
            i.memory_allocated_bytes >> 20,
            i.pause_ms,
            i.save_ms,
            i.sync_ms,
            i.total_ms
        );
    }

    // Memory: three clones at once, of each kind.
    for (name, snap) in [("file-backed", &fsnap), ("in-stream", &nsnap)] {
        let mut vms = Vec::new();
        for i in 0..3 {
            let dir = instance(tmp.path(), &format!("m{name}{i}"));
            let (_, vm, client) = restore(&backend, &spec, &dir, snap).await;
            // Some work in each, so each has its own dirty pages.
            sh(&client, "ls -R / >/dev/null 2>&1; true").await;
            vms.push((vm, client));
        }
        let mut sums = (0, 0, 0, 0);
        for (vm, _) in &vms {
            let (rss, pss, shared, private) = memory_kib(vm.pid());
            sums = (
                sums.0 + rss,
                sums.1 + pss,
                sums.2 + shared,
                sums.3 + private,
            );
        }
        eprintln!(
            "3 clones {name}: RSS {} MiB, PSS {} MiB, shared {} MiB, private dirty {} MiB (sums over the VMMs)",
            sums.0 >> 10,
            sums.1 >> 10,
            sums.2 >> 10,
            sums.3 >> 10
        );
        for (vm, client) in vms {
            drop(client);
            vm.kill().await;
        }
    }
}

/// Copy-on-write disks: a 512 MiB machine disk of the default image.
#[tokio::test]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
async fn bench_clone_disk_methods() {
    let Some((img, _)) = prerequisites("bench_clone_disk_methods") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.ext4");
    mvm_image::create_machine_disk(&img, &disk, 512).unwrap();
    fs_err::File::open(&disk).unwrap().sync_all().unwrap();
    let alloc = |p: &std::path::Path| mvm_core::snapshot::allocated_bytes(p) >> 10;
    eprintln!(
        "\nBENCH clone disks: 512 MiB ext4 machine disk, {} KiB allocated",
        alloc(&disk)
    );
    let timed = |name: &str, f: &dyn Fn(&std::path::Path) -> Result<(), String>| {
        let dst = tmp.path().join(name.replace(' ', "-"));
        let t = Instant::now();
        match f(&dst) {
            Ok(()) => eprintln!(
                "| {name} | {:.1} ms | {} KiB |",
                t.elapsed().as_secs_f64() * 1000.0,
                alloc(&dst)
            ),
            Err(e) => eprintln!("| {name} | unavailable: {e} | |"),
        }
    };
    eprintln!("| method | time | allocated |");
    eprintln!("|---|---|---|");
    timed("full copy", &|d| {
        fs_err::copy(&disk, d).map(drop).map_err(|e| e.to_string())
    });
    timed("sparse copy", &|d| {
        mvm_template::cow::copy_sparse(&disk, d)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    timed("reflink (ext4)", &|d| {
        mvm_template::cow::reflink(&disk, d).map_err(|e| e.to_string())
    });
    timed("qcow2 overlay", &|d| {
        mvm_template::cow::qcow2_overlay(&disk, d).map_err(|e| e.to_string())
    });
    timed("clone_disk (auto)", &|d| {
        mvm_template::cow::clone_disk(&disk, d)
            .map(|m| eprintln!("  clone_disk chose {m}"))
            .map_err(|e| e.to_string())
    });
    if let Some(xfs) = XfsLoop::mount(tmp.path()) {
        let src = xfs.dir.join("disk.ext4");
        mvm_template::cow::copy_sparse(&disk, &src).unwrap();
        // A template's disk is fsynced at commit; FICLONE of dirty data
        // would first write it back.
        fs_err::File::open(&src).unwrap().sync_all().unwrap();
        let dst = xfs.dir.join("reflinked");
        let t = Instant::now();
        let how = mvm_template::cow::clone_disk(&src, &dst).unwrap();
        eprintln!(
            "| reflink (XFS, reflink=1, loop device) | {:.1} ms | {} KiB ({how}; shared extents) |",
            t.elapsed().as_secs_f64() * 1000.0,
            alloc(&dst)
        );
    }
}

/// An XFS filesystem with reflink on a loop device, mounted for one
/// measurement; unmounted (and the loop device freed) on drop.
struct XfsLoop {
    dir: std::path::PathBuf,
}

impl XfsLoop {
    fn mount(tmp: &std::path::Path) -> Option<XfsLoop> {
        let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        if !rustix::process::geteuid().is_root() || !run("mkfs.xfs", &["-V".as_ref()]) {
            eprintln!("| reflink (XFS) | skipped: needs root and mkfs.xfs | |");
            return None;
        }
        let image = tmp.join("xfs.img");
        fs_err::File::create(&image)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let dir = tmp.join("xfs");
        fs_err::create_dir_all(&dir).unwrap();
        let ok = run(
            "mkfs.xfs",
            &[
                "-q".as_ref(),
                "-m".as_ref(),
                "reflink=1".as_ref(),
                image.as_os_str(),
            ],
        ) && run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                dir.as_os_str(),
            ],
        );
        if !ok {
            eprintln!("| reflink (XFS) | skipped: cannot make or mount an XFS loop | |");
            return None;
        }
        Some(XfsLoop { dir })
    }
}

impl Drop for XfsLoop {
    fn drop(&mut self) {
        // `umount` of a loop mount made with `-o loop` frees the device.
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
    }
}
