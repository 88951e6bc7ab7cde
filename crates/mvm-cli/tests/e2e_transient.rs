//! Transient `mvm exec -- CMD`: boot, run, tear down.

use std::time::{Duration, Instant};

use crate::common::{can_boot, e2e_home, ensure_image, mvm, mvm_std, vmms_under, wait_until};

#[test]
fn transient_exec_separates_streams_and_returns_the_exit_code() {
    if !can_boot("transient_exec_separates_streams") {
        return;
    }
    ensure_image();
    let out = mvm(e2e_home())
        .args(["exec", "--", "sh", "-c", "echo out; echo err >&2; exit 7"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("err\n"), "{err}");
    assert!(!err.contains("out"), "{err}");
}

#[test]
fn transient_exec_runs_the_guest_kernel() {
    if !can_boot("transient_exec_runs_the_guest_kernel") {
        return;
    }
    ensure_image();
    let out = mvm(e2e_home())
        .args(["exec", "--", "uname", "-r"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let host = fs_err::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(guest, host.trim(), "the command ran on the host kernel");
    assert!(
        guest.contains("cloud"),
        "expected the Debian cloud kernel, got {guest}"
    );
}

#[test]
fn transient_exec_timeout_exits_124_and_leaves_nothing() {
    if !can_boot("transient_exec_timeout") {
        return;
    }
    ensure_image();
    let t = Instant::now();
    let out = mvm(e2e_home())
        .args(["exec", "--timeout", "2", "--", "sleep", "30"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Boot (~5 s under TCG, more under load) + 2 s: far less than 30 s.
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "took {:?}",
        t.elapsed()
    );
}

/// The instance directory whose owner is process `pid` (a transient
/// `mvm exec` owns and supervises its own machine).
fn instance_supervised_by(home: &std::path::Path, pid: u32) -> Option<std::path::PathBuf> {
    let rd = std::fs::read_dir(home.join("instances")).ok()?;
    rd.flatten().map(|e| e.path()).find(|p| {
        fs_err::read_to_string(p.join("instance.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["owner"]["pid"] == pid)
    })
}

#[test]
fn sigint_during_transient_exec_leaves_no_vmm_and_no_instance() {
    if !can_boot("sigint_during_transient_exec") {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let mut child = mvm_std(home)
        .args(["exec", "--", "sleep", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until its VMM exists, then interrupt.
    let mut dir = None;
    let started = wait_until(Duration::from_secs(120), || {
        dir = instance_supervised_by(home, pid);
        dir.as_ref().is_some_and(|d| !vmms_under(d).is_empty())
    });
    assert!(started, "no transient VMM appeared");
    let dir = dir.unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(!dir.exists(), "left behind: {}", dir.display());
    assert!(vmms_under(&dir).is_empty(), "VMM left behind");
}
