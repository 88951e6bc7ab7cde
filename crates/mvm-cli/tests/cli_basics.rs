//! CLI behaviour that needs no guest.

use predicates::prelude::*;

use std::time::Duration;

use crate::common::{empty_home, mvm};

#[test]
fn usage_errors_exit_2() {
    let h = empty_home();
    mvm(h.path()).arg("frobnicate").assert().code(2);
    mvm(h.path()).args(["stop"]).assert().code(2);
}

#[test]
fn ps_on_an_empty_home_prints_the_header() {
    let h = empty_home();
    mvm(h.path())
        .args(["ps", "-a"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("NAME"));
    let out = mvm(h.path()).args(["ps", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!([]));
}

#[test]
fn exec_in_a_missing_machine_fails_with_125_naming_it() {
    let h = empty_home();
    mvm(h.path())
        .args(["exec", "nosuch", "--", "true"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("nosuch"));
}

#[test]
fn invalid_names_are_rejected_before_anything_happens() {
    let h = empty_home();
    mvm(h.path())
        .args(["run", "--name", "Bad_Name"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("Bad_Name"));
    assert!(!h.path().join("instances/Bad_Name").exists());
}

#[test]
fn inspect_and_rm_of_missing_machine_name_it() {
    let h = empty_home();
    mvm(h.path())
        .args(["inspect", "ghost"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("ghost"));
    mvm(h.path())
        .args(["rm", "ghost"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("ghost"));
}

#[test]
fn broken_record_is_listed_and_removable() {
    let h = empty_home();
    fs_err::create_dir_all(h.path().join("instances/wreck")).unwrap();
    fs_err::write(h.path().join("instances/wreck/instance.json"), b"{not json").unwrap();
    let out = mvm(h.path()).args(["ps", "-a", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "wreck");
    assert_eq!(v[0]["status"], "broken");
    mvm(h.path()).args(["rm", "wreck"]).assert().success();
    assert!(!h.path().join("instances/wreck").exists());
}

#[test]
fn doctor_reports_the_auto_backend() {
    let h = empty_home();
    let out = mvm(h.path()).args(["doctor", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kind = v["auto_backend"]["kind"].as_str().unwrap();
    assert!(kind == "qemu" || kind == "firecracker", "{kind}");
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "kvm")
    );
}

#[test]
fn doctor_reports_and_gc_stops_processes_of_no_machine() {
    let home = empty_home();
    let instances = home.path().join("instances");
    fs_err::create_dir_all(&instances).unwrap();
    // A process tagged for a machine of this home that does not exist (as a
    // supervisor or VMM whose record was removed under it would be).
    let ghost = mvm_core::InstanceDir::new(instances.join("ghost"));
    let mut orphan = std::process::Command::new("sleep")
        .arg("300")
        .env(
            mvm_core::env::MVM_MACHINE_TAG,
            mvm_core::process::machine_tag(&ghost, "0123456789abcdef"),
        )
        .spawn()
        .unwrap();
    let pid = orphan.id();
    // Its environment is readable once exec has finished.
    assert!(crate::common::wait_until(Duration::from_secs(5), || {
        !mvm_core::process::find_tagged(&instances).is_empty()
    }));
    let out = mvm(home.path())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let leftovers = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "leftovers")
        .unwrap();
    assert_eq!(leftovers["ok"], false, "{leftovers}");
    assert!(
        leftovers["detail"]
            .as_str()
            .unwrap()
            .contains(&pid.to_string()),
        "{leftovers}"
    );
    let out = mvm(home.path()).arg("gc").output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("process {pid}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let status = orphan.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    // An unrelated process with no tag is never touched.
    assert!(mvm_core::process::find_tagged(&instances).is_empty());
}
