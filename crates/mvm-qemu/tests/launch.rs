//! `VmBackend::launch` failure paths with a real QEMU (no guest needed).

use std::time::{Duration, Instant};

use mvm_core::InstanceDir;
use mvm_core::backend::VmBackend;
use mvm_qemu::{Accel, QemuBackend};

use crate::util::{deadline, processes_mentioning, qemu_or_skip, short_tempdir, spec};

#[tokio::test]
async fn missing_kernel_fails_fast_with_qemus_message() {
    let Some(qemu) = qemu_or_skip("missing_kernel_fails_fast_with_qemus_message") else {
        return;
    };
    let tmp = short_tempdir();
    let dir = InstanceDir::new(tmp.path());
    let kernel = tmp.path().join("no-such-vmlinuz");
    let backend = QemuBackend::new(&qemu, Accel::Tcg);
    let t0 = Instant::now();
    let e = backend
        .launch(&spec(&kernel, None), &dir, deadline(30))
        .await
        .unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert!(msg.contains("exited during startup"), "{msg}");
    // QEMU's own words, from vmm.log.
    assert!(msg.contains("could not open kernel file"), "{msg}");
    assert!(
        e.vmm_log_tail
            .as_deref()
            .unwrap_or("")
            .contains("no-such-vmlinuz")
    );
    let left = processes_mentioning(&tmp.path().to_string_lossy());
    assert!(left.is_empty(), "processes left running: {left:?}");
}

#[tokio::test]
async fn vmm_exiting_immediately_is_noticed_before_the_deadline() {
    let tmp = short_tempdir();
    let dir = InstanceDir::new(tmp.path());
    let backend = QemuBackend::new("/bin/false", Accel::Tcg);
    let t0 = Instant::now();
    let e = backend
        .launch(&spec(&tmp.path().join("k"), None), &dir, deadline(30))
        .await
        .unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    let msg = e.to_string();
    assert!(
        msg.contains("exited during startup (exit status: 1)"),
        "{msg}"
    );
}

#[tokio::test]
async fn vmm_that_never_listens_hits_the_deadline_and_is_killed() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = short_tempdir();
    let dir = InstanceDir::new(tmp.path());
    // A fake VMM that ignores its arguments, records its pid and never
    // creates any socket (fixed content, no interpolation).
    let fake = tmp.path().join("fake-qemu");
    fs_err::write(
        &fake,
        "#!/bin/sh\necho $$ > \"$(dirname \"$0\")/fake.pid\"\nexec sleep 600\n",
    )
    .unwrap();
    fs_err::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let backend = QemuBackend::new(&fake, Accel::Tcg);
    let t0 = Instant::now();
    let e = backend
        .launch(
            &spec(&tmp.path().join("k"), None),
            &dir,
            Instant::now() + Duration::from_millis(1500),
        )
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert!(e.to_string().contains("guest agent socket"), "{e}");
    let pid = fs_err::read_to_string(tmp.path().join("fake.pid")).unwrap();
    let proc = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
    assert!(!proc.exists(), "the fake VMM {} is still there", pid.trim());
}

#[tokio::test]
async fn stale_sockets_are_removed_and_live_ones_refused() {
    let tmp = short_tempdir();
    let dir = InstanceDir::new(tmp.path());
    // Stale: bound then closed, the file remains and refuses connections.
    for p in [dir.qmp_socket(), dir.guest_socket()] {
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        assert!(p.exists());
    }
    let backend = QemuBackend::new("/bin/false", Accel::Tcg);
    let e = backend
        .launch(&spec(&tmp.path().join("k"), None), &dir, deadline(30))
        .await
        .unwrap_err();
    // It got as far as spawning, so the stale files were cleared first.
    assert!(e.to_string().contains("exited during startup"), "{e}");
    assert!(!dir.qmp_socket().exists());
    assert!(!dir.guest_socket().exists());

    fs_err::remove_file(dir.vmm_log()).unwrap();

    // Live: someone listens on qmp.sock.
    let live = std::os::unix::net::UnixListener::bind(dir.qmp_socket()).unwrap();
    let e = backend
        .launch(&spec(&tmp.path().join("k"), None), &dir, deadline(30))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("served by a running process"), "{e}");
    assert!(
        dir.qmp_socket().exists(),
        "a live socket must not be removed"
    );
    assert!(!dir.vmm_log().exists(), "nothing may be spawned");
    drop(live);
}

/// A launch with every device (drives, user-mode net, agent port, rng)
/// reaches "running" and the control operations work. The "kernel" is 64 KiB
/// of zeros: QEMU loads it as a flat image and the vCPU spins on it, which
/// is enough to exercise QEMU's whole configuration without a guest.
#[tokio::test]
async fn launch_with_every_device_then_pause_resume_shutdown() {
    let Some(qemu) = qemu_or_skip("launch_with_every_device_then_pause_resume_shutdown") else {
        return;
    };
    let tmp = short_tempdir();
    let dir = InstanceDir::new(tmp.path());
    let kernel = tmp.path().join("zero-kernel");
    fs_err::write(&kernel, vec![0u8; 64 * 1024]).unwrap();
    let mut s = spec(&kernel, None);
    for (id, ro) in [("root", true), ("data", false)] {
        // A comma in the path checks the escaping against QEMU itself.
        let path = tmp.path().join(format!("{id},x.img"));
        fs_err::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        s.drives.push(mvm_core::backend::DriveSpec {
            id: id.into(),
            path,
            read_only: ro,
        });
    }
    s.net = Some(mvm_core::backend::NetSpec {
        tap: "unused".into(),
        mac: "06:00:0a:00:00:02".into(),
    });
    let backend = QemuBackend::new(&qemu, Accel::Tcg).with_user_net(vec![mvm_qemu::HostForward {
        proto: mvm_qemu::FwdProto::Tcp,
        host_addr: "127.0.0.1".parse().unwrap(),
        host_port: 0,
        guest_port: 22,
    }]);
    let t0 = Instant::now();
    let mut vmm = match backend.launch(&s, &dir, deadline(30)).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    eprintln!("launch (spawn to QMP running): {:?}", t0.elapsed());
    assert!(vmm.guest.is_some());

    let t = Instant::now();
    backend.pause(&dir).await.unwrap();
    backend.resume(&dir).await.unwrap();
    eprintln!("pause + resume: {:?}", t.elapsed());
    backend.request_shutdown(&dir).await.unwrap();

    // A second launch into the same directory must refuse: QEMU is live.
    let e = backend.launch(&s, &dir, deadline(30)).await.unwrap_err();
    assert!(e.to_string().contains("served by a running process"), "{e}");

    let q = mvm_qemu::Qmp::connect(&dir.qmp_socket(), deadline(10))
        .await
        .unwrap();
    q.quit(deadline(10)).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), vmm.child.wait())
        .await
        .expect("QEMU did not exit after quit")
        .unwrap();
    assert!(status.success(), "{status}");
}
