//! Real guests (the default image, QEMU/TCG) made into templates through
//! the store and restored as clones through the backend: the agent link
//! after a restore, `Reidentify` in a real guest (hostname, RNG, clock,
//! machine-id, eth0, remount), copy-on-write disks, and the template's
//! files never written.

use std::time::{Duration, Instant};

use mvm_agent_proto::client::AgentClient;
use mvm_agent_proto::identity::ReidentifyNet;
use mvm_core::backend::{DriveSpec, NetSpec, VmBackend};
use mvm_core::snapshot::MemoryBacking;
use mvm_template::{CloneMethod, Provenance, Store, Verify};

use crate::util::*;

fn host_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One template (initramfs, user-mode network), three clones: each a
/// machine of its own, none seeing another's files, the template's files
/// unchanged.
#[tokio::test]
async fn clones_of_one_template_are_distinct_machines() {
    let Some((img, backend)) = prerequisites("clones_of_one_template_are_distinct_machines") else {
        return;
    };
    // User-mode networking: eth0 exists without root or a TAP.
    let backend = backend.with_user_net(vec![]);
    let tmp = short_tempdir();
    let store = Store::at(tmp.path().join("templates")).unwrap();
    let staging = store.begin("t1").unwrap();

    let tdir = instance(tmp.path(), "tmpl");
    let mut tspec = spec(&img, "tmpl", 256);
    tspec.net = Some(NetSpec {
        tap: String::new(),
        mac: "52:54:00:12:34:56".into(),
    });
    tspec
        .kernel_args
        .push(mvm_net::GuestNet::qemu_user().to_cmdline());
    let t0 = Instant::now();
    let mut vm = Vm(Some(
        backend
            .launch_with_memory(
                &tspec,
                &tdir,
                &MemoryBacking::SharedFile(staging.snapshot().memory()),
                deadline(BOOT),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    ));
    let c = agent(vm.take_guest(), &tdir, BOOT).await;
    let boot = t0.elapsed();
    // The "warm-up": give the image a machine-id, leave a marker.
    sh(
        &c,
        "echo 00000000000000000000000000000001 > /etc/machine-id && echo from-template > /tmp/marker",
    )
    .await;
    // The host stays connected through the snapshot (see mvm_qemu::snapshot).
    let info = backend
        .snapshot(
            &tspec,
            &tdir,
            &staging.snapshot(),
            deadline(Duration::from_secs(60)),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    vm.kill().await;
    drop(c);
    let tmpl = staging
        .commit(Provenance {
            image: "default".into(),
            image_digest: img.digest.clone(),
            kernel_release: img.kernel_release.clone(),
            boot_ms: boot.as_millis() as u64,
            snapshot_ms: info.total_ms,
            ..Default::default()
        })
        .unwrap();
    eprintln!(
        "template: boot to agent {boot:?}; snapshot {} ms (pause {}, save {}, sync {}); state {} B; memory {} MiB, {} MiB allocated",
        info.total_ms,
        info.pause_ms,
        info.save_ms,
        info.sync_ms,
        info.meta.state_bytes,
        info.meta.memory_bytes >> 20,
        info.memory_allocated_bytes >> 20
    );
    tmpl.verify(Verify::Full).unwrap();
    let memory_before = fnv(&tmpl.snapshot().memory());

    let mut clones: Vec<(String, Vm, AgentClient)> = Vec::new();
    let mut randoms = Vec::new();
    for (i, name) in ["c1", "c2"].into_iter().enumerate() {
        let dir = instance(tmp.path(), name);
        let mut cspec = spec(&img, name, 256);
        let mac = format!("52:54:00:00:00:{:02x}", 0xc1 + i);
        cspec.net = Some(NetSpec {
            tap: String::new(),
            mac: mac.clone(),
        });
        tmpl.verify(Verify::Quick).unwrap();
        store.add_ref(&tmpl, name).unwrap();
        let t = Instant::now();
        let r = backend
            .restore(
                &cspec,
                &dir,
                &tmpl.snapshot(),
                deadline(Duration::from_secs(60)),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut vm = Vm(Some(r.vmm));
        let c = agent(vm.take_guest(), &dir, Duration::from_secs(30)).await;
        let ready = t.elapsed();
        let mut req = identity(name);
        req.net = Some(ReidentifyNet {
            iface: "eth0".into(),
            mac: mac.clone(),
            ip: std::net::Ipv4Addr::new(10, 0, 2, 20 + i as u8),
            prefix: 24,
            gateway: std::net::Ipv4Addr::new(10, 0, 2, 2),
            dns: vec![std::net::Ipv4Addr::new(10, 0, 2, 3)],
        });
        let want_id = req.machine_id.clone();
        let report = c.reidentify(req).await.unwrap_or_else(|e| {
            panic!(
                "{e}\nconsole:\n{}",
                mvm_core::backend::tail_lines(&dir.console_log(), 20).unwrap_or_default()
            )
        });
        let distinct = t.elapsed();
        eprintln!(
            "{name}: restore {:?} (spawn {} ms, load {} ms, resume {} ms); agent ready after {ready:?}; reidentified after {distinct:?} (guest {} µs, clock stepped {} ms)",
            r.info,
            r.info.spawn_ms,
            r.info.load_ms,
            r.info.resume_ms,
            report.elapsed_us,
            report.clock_step_ms
        );
        let console = fs_err::read_to_string(dir.console_log()).unwrap_or_default();
        for l in console
            .lines()
            .filter(|l| l.contains("reidentified") || l.contains("new host"))
        {
            eprintln!("{name} console: {l}");
        }
        assert!(report.clock_set && report.crng_reseeded);
        assert_eq!(report.machine_id, want_id);

        assert_eq!(sh(&c, "hostname").await.trim(), name);
        assert_eq!(sh(&c, "cat /etc/hostname").await.trim(), name);
        assert_eq!(sh(&c, "cat /tmp/marker").await.trim(), "from-template");
        assert_eq!(
            sh(&c, "cat /etc/machine-id").await.trim(),
            want_id.as_deref().unwrap()
        );
        let guest_now: i64 = sh(&c, "date +%s").await.trim().parse().unwrap();
        assert!(
            (guest_now - host_now()).abs() <= 2,
            "guest clock {guest_now}, host {}",
            host_now()
        );
        assert_eq!(sh(&c, "cat /sys/class/net/eth0/address").await.trim(), mac);
        let addrs = sh(&c, "ip -4 -o addr show dev eth0").await;
        assert!(
            addrs.contains(&format!("10.0.2.{}/24", 20 + i)) && !addrs.contains("10.0.2.15/"),
            "{addrs}"
        );
        assert!(
            sh(&c, "ip route").await.contains("default via 10.0.2.2"),
            "default route"
        );
        assert!(
            sh(&c, "cat /etc/hosts")
                .await
                .contains(&format!("\t{name}"))
        );
        // The same work again, now that TCG has translated its code.
        let t2 = Instant::now();
        let again = c.reidentify(identity(name)).await.unwrap();
        let t3 = Instant::now();
        let first = run(&c, &["true"]).await;
        let t4 = Instant::now();
        run(&c, &["true"]).await;
        eprintln!(
            "{name}: second reidentify {:?} (guest {} µs); first `true` {:?}, second {:?}",
            t3 - t2,
            again.elapsed_us,
            t4 - t3,
            t4.elapsed()
        );
        assert_eq!(first.code, Some(0));
        randoms.push((
            sh(&c, "head -c 32 /dev/urandom | od -An -tx1").await,
            sh(&c, "cat /proc/sys/kernel/random/uuid").await,
        ));
        clones.push((name.to_owned(), vm, c));
    }
    assert_ne!(
        randoms[0].0, randoms[1].0,
        "two clones read the same random bytes"
    );
    assert_ne!(randoms[0].1, randoms[1].1);

    // A file written in one clone is not seen by another, nor by a clone
    // restored afterwards.
    sh(&clones[0].2, "echo mine > /tmp/only-c1").await;
    let o = run(&clones[1].2, &["cat", "/tmp/only-c1"]).await;
    assert_ne!(o.code, Some(0), "c2 sees c1's file: {o:?}");
    let dir = instance(tmp.path(), "c3");
    let mut cspec = spec(&img, "c3", 256);
    cspec.net = tspec.net.clone();
    let r = backend
        .restore(
            &cspec,
            &dir,
            &tmpl.snapshot(),
            deadline(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let mut vm3 = Vm(Some(r.vmm));
    let c3 = agent(vm3.take_guest(), &dir, Duration::from_secs(30)).await;
    assert_ne!(run(&c3, &["cat", "/tmp/only-c1"]).await.code, Some(0));
    assert_eq!(sh(&c3, "cat /tmp/marker").await.trim(), "from-template");

    // Memory of three clones of one template.
    let mut total_rss = 0;
    let mut total_pss = 0;
    for (name, vm, _) in &clones {
        let (rss, pss, shared, private) = memory_kib(vm.pid());
        eprintln!(
            "{name}: VMM RSS {rss} KiB, PSS {pss} KiB, shared {shared} KiB, private dirty {private} KiB"
        );
        total_rss += rss;
        total_pss += pss;
    }
    eprintln!("two clones: RSS sum {total_rss} KiB, PSS sum {total_pss} KiB");

    drop(c3);
    vm3.kill().await;
    for (name, vm, c) in clones {
        drop(c);
        vm.kill().await;
        store.release(tmpl.id(), &name).unwrap();
    }
    assert_eq!(
        fnv(&tmpl.snapshot().memory()),
        memory_before,
        "a clone wrote to the template's memory file"
    );
    tmpl.verify(Verify::Full).unwrap();
    store.remove("t1", false, |_| true).unwrap();
}

/// A template with a root disk and a config drive: clones get their own
/// copy-on-write disk and their own config drive (remounted on reidentify).
#[tokio::test]
async fn clones_get_their_own_disk_and_config_drive() {
    let Some((img, backend)) = prerequisites("clones_get_their_own_disk_and_config_drive") else {
        return;
    };
    let vmm_version = backend.vmm_version().unwrap();
    let tmp = short_tempdir();
    let store = Store::at(tmp.path().join("templates")).unwrap();
    let staging = store.begin("disk").unwrap();
    mvm_image::create_machine_disk(&img, &staging.disk(), 256).unwrap();
    let config = |name: &str| {
        let p = tmp.path().join(format!("{name}-config.ext4"));
        ext4_with(&p, "mvm-config", &[("name", name)]);
        p
    };
    let with_drives = |name: &str, root: std::path::PathBuf| {
        let mut s = spec(&img, name, 256);
        s.kernel_args.push("mvm.root=/dev/vda".into());
        s.kernel_args
            .push("mvm.mount=mvm-config,ro,/mnt/config".into());
        s.drives = vec![
            DriveSpec {
                id: "root".into(),
                path: root,
                read_only: false,
            },
            DriveSpec {
                id: "config".into(),
                path: config(name),
                read_only: true,
            },
        ];
        s
    };
    let tdir = instance(tmp.path(), "tmpl");
    let tspec = with_drives("tmpl", staging.disk());
    let mut vm = Vm(Some(
        backend
            .launch_with_memory(
                &tspec,
                &tdir,
                &MemoryBacking::SharedFile(staging.snapshot().memory()),
                deadline(BOOT),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    ));
    let c = agent(vm.take_guest(), &tdir, BOOT).await;
    assert_eq!(sh(&c, "cat /mnt/config/name").await, "tmpl");
    sh(&c, "echo template > /root/from-template && sync").await;
    let info = backend
        .snapshot(
            &tspec,
            &tdir,
            &staging.snapshot(),
            deadline(Duration::from_secs(60)),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    vm.kill().await;
    drop(c);
    let tmpl = staging
        .commit(Provenance {
            image: "default".into(),
            image_digest: img.digest.clone(),
            kernel_release: img.kernel_release.clone(),
            snapshot_ms: info.total_ms,
            disk_drive: Some("root".into()),
            ..Default::default()
        })
        .unwrap();
    let disk_before = fnv(&tmpl.disk().unwrap());
    eprintln!("template sizes: {:?}", tmpl.manifest.sizes);

    let mut clones = Vec::new();
    for name in ["d1", "d2"] {
        let dir = instance(tmp.path(), name);
        let disk = dir.root().join("disk.ext4");
        let t = Instant::now();
        let wanted = mvm_template::Wanted {
            backend: mvm_core::BackendKind::Qemu,
            vmm_version: &vmm_version,
            kernel_release: &img.kernel_release,
            image_digest: &img.digest,
        };
        let prepared = store
            .prepare_clone("disk", name, &wanted, Some(&disk))
            .unwrap();
        let how = prepared.disk.as_ref().unwrap().1;
        eprintln!(
            "{name}: disk by {how} in {:?} ({} MiB allocated)",
            t.elapsed(),
            mvm_core::snapshot::allocated_bytes(&disk) >> 20
        );
        assert!(matches!(
            how,
            CloneMethod::Reflink | CloneMethod::SparseCopy
        ));
        let cspec = with_drives(name, disk);
        let r = backend
            .restore(
                &cspec,
                &dir,
                &tmpl.snapshot(),
                deadline(Duration::from_secs(60)),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut vm = Vm(Some(r.vmm));
        let c = agent(vm.take_guest(), &dir, Duration::from_secs(30)).await;
        let mut req = identity(name);
        req.remount = vec!["/mnt/config".into()];
        let rep = c.reidentify(req).await.unwrap();
        assert_eq!(rep.remounted, ["/mnt/config"]);
        assert_eq!(
            sh(&c, "cat /mnt/config/name").await,
            name,
            "the clone's own config drive"
        );
        assert_eq!(sh(&c, "cat /root/from-template").await.trim(), "template");
        sh(&c, &format!("echo {name} > /root/{name}-file && sync")).await;
        clones.push((name, vm, c));
    }
    let o = run(&clones[1].2, &["cat", "/root/d1-file"]).await;
    assert_ne!(o.code, Some(0), "d2 sees d1's file: {o:?}");
    for (_, vm, c) in clones {
        drop(c);
        vm.kill().await;
    }
    assert_eq!(
        fnv(&tmpl.disk().unwrap()),
        disk_before,
        "a clone wrote the template's disk"
    );
    tmpl.verify(Verify::Full).unwrap();
}
