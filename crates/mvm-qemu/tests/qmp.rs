//! The QMP client and the backend's control operations against a real QEMU
//! started with `-S` (no kernel needed).

use std::process::Stdio;
use std::time::{Duration, Instant};

use mvm_core::InstanceDir;
use mvm_core::backend::VmBackend;
use mvm_qemu::qmp::{Qmp, RunState};
use mvm_qemu::{Accel, QemuBackend};

use crate::util::{deadline, qemu_or_skip, short_tempdir};

fn spawn_prelaunch(qemu: &std::path::Path, qmp: &std::path::Path) -> tokio::process::Child {
    let mut arg = std::ffi::OsString::from("unix:");
    arg.push(qmp);
    arg.push(",server=on,wait=off");
    tokio::process::Command::new(qemu)
        .args([
            "-M",
            "microvm",
            "-S",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .arg("-qmp")
        .arg(arg)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn qmp_status_stop_cont_quit() {
    let Some(qemu) = qemu_or_skip("qmp_status_stop_cont_quit") else {
        return;
    };
    let dir = short_tempdir();
    let sock = dir.path().join("qmp.sock");
    let t0 = Instant::now();
    let mut child = spawn_prelaunch(&qemu, &sock);
    let d = deadline(20);
    let mut q = Qmp::connect_retry(&sock, d).await.unwrap();
    eprintln!("spawn-to-QMP-ready: {:?}", t0.elapsed());
    assert!(q.greeting().version.qemu.major >= 7);

    let s = q.query_status(d).await.unwrap();
    assert_eq!(s.status, RunState::Prelaunch);
    assert!(!s.running);

    q.cont(d).await.unwrap();
    let s = q.query_status(d).await.unwrap();
    assert_eq!(s.status, RunState::Running);
    assert!(s.running);

    q.stop(d).await.unwrap();
    let s = q.query_status(d).await.unwrap();
    assert_eq!(s.status, RunState::Paused);

    let names: Vec<String> = q.take_events().into_iter().map(|e| e.event).collect();
    assert!(names.contains(&"RESUME".to_owned()), "{names:?}");
    assert!(names.contains(&"STOP".to_owned()), "{names:?}");

    q.quit(d).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("QEMU did not exit after quit")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn qmp_unknown_command_is_a_typed_error() {
    let Some(qemu) = qemu_or_skip("qmp_unknown_command_is_a_typed_error") else {
        return;
    };
    #[derive(serde::Serialize)]
    struct Bogus;
    impl mvm_qemu::qmp::QmpCommand for Bogus {
        const NAME: &'static str = "no-such-command";
        type Reply = mvm_qemu::qmp::Empty;
    }
    let dir = short_tempdir();
    let sock = dir.path().join("qmp.sock");
    let mut child = spawn_prelaunch(&qemu, &sock);
    let d = deadline(20);
    let mut q = Qmp::connect_retry(&sock, d).await.unwrap();
    let e = q.execute(&Bogus, d).await.unwrap_err();
    assert!(
        matches!(e, mvm_qemu::QmpError::Command { ref class, .. } if class == "CommandNotFound"),
        "{e}"
    );
    // The session is still usable.
    assert_eq!(q.query_status(d).await.unwrap().status, RunState::Prelaunch);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn backend_pause_resume_and_powerdown() {
    let Some(qemu) = qemu_or_skip("backend_pause_resume_and_powerdown") else {
        return;
    };
    let tmp = short_tempdir();
    let dir = InstanceDir::new(tmp.path());
    let mut child = spawn_prelaunch(&qemu, &dir.qmp_socket());
    // Wait for QMP to listen, then close that first session.
    drop(
        Qmp::connect_retry(&dir.qmp_socket(), deadline(20))
            .await
            .unwrap(),
    );

    let backend = QemuBackend::new(&qemu, Accel::Tcg);
    backend.resume(&dir).await.unwrap();
    let mut q = Qmp::connect(&dir.qmp_socket(), deadline(10)).await.unwrap();
    assert_eq!(
        q.query_status(deadline(10)).await.unwrap().status,
        RunState::Running
    );
    drop(q);

    backend.pause(&dir).await.unwrap();
    let mut q = Qmp::connect(&dir.qmp_socket(), deadline(10)).await.unwrap();
    assert_eq!(
        q.query_status(deadline(10)).await.unwrap().status,
        RunState::Paused
    );
    drop(q);

    backend.request_shutdown(&dir).await.unwrap();

    let e = backend.connect_guest(&dir, deadline(1)).await.unwrap_err();
    assert!(e.to_string().contains("single client"), "{e}");

    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // With QEMU gone, control operations fail with a clear error.
    let e = backend.pause(&dir).await.unwrap_err();
    assert!(e.to_string().contains("QMP unavailable"), "{e}");
}
