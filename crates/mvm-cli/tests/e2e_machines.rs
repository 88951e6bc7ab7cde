//! Persistent machines: run, exec, ps, logs, stop, start, rm, kill -9.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use predicates::prelude::*;

use crate::common::{
    MachineGuard, can_boot, e2e_home, ensure_image, mvm, mvm_std, ps, status_of, unique, vmms_under,
};

#[test]
fn machine_life_cycle() {
    if !can_boot("machine_life_cycle") {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let name = unique("a");
    let _g = MachineGuard {
        home,
        name: name.clone(),
    };
    mvm(home)
        .args(["run", "--name", &name])
        .assert()
        .success()
        .stdout(format!("{name}\n"));
    // Hostname is the machine name.
    mvm(home)
        .args(["exec", &name, "--", "cat", "/etc/hostname"])
        .assert()
        .success()
        .stdout(format!("{name}\n"));
    // ps --json shows it running on qemu.
    let m = ps(home)
        .into_iter()
        .find(|m| m["name"] == name.as_str())
        .unwrap();
    assert_eq!(m["status"], "running");
    assert_eq!(m["backend"], "qemu");
    // The boot console is in the logs.
    mvm(home)
        .args(["logs", &name])
        .assert()
        .success()
        .stdout(predicate::str::contains("Linux version"));

    // A file survives stop/start (the machine has its own disk).
    mvm(home)
        .args([
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "echo keep > /root/f && sync",
        ])
        .assert()
        .success();
    // `logs -f` follows the console and ends when the machine stops.
    let mut follower = mvm_std(home)
        .args(["logs", "-f", &name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    mvm(home).args(["stop", &name]).assert().success();
    assert_eq!(status_of(home, &name).as_deref(), Some("stopped"));
    let ended = crate::common::wait_until(Duration::from_secs(10), || {
        follower.try_wait().unwrap().is_some()
    });
    assert!(ended, "logs -f did not end when the machine stopped");
    let followed = follower.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&followed.stdout).contains("powering off"),
        "logs -f missed the end of the console"
    );
    // `ps` without -a hides it.
    let out = mvm(home).args(["ps", "--json"]).output().unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!listed.iter().any(|m| m["name"] == name.as_str()));
    assert!(vmms_under(&home.join("instances").join(&name)).is_empty());
    mvm(home).args(["start", &name]).assert().success();
    mvm(home)
        .args(["exec", &name, "--", "true"])
        .assert()
        .success();
    mvm(home)
        .args(["exec", &name, "--", "cat", "/root/f"])
        .assert()
        .success()
        .stdout("keep\n");

    // Streamed, not buffered: "1" arrives while the command still runs —
    // it waits for a line on its stdin that is only sent once "1" was read
    // (buffered output would never arrive; the read has a deadline).
    let mut child = mvm_std(home)
        .args([
            "exec",
            "-i",
            &name,
            "--",
            "sh",
            "-c",
            "echo 1; read x; echo 2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), "1");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"go\n").unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), "2");
    assert!(child.wait().unwrap().success());

    // stdin with -i.
    mvm(home)
        .args(["exec", "-i", &name, "--", "cat"])
        .write_stdin("hi\n")
        .assert()
        .success()
        .stdout("hi\n");

    // Two execs at the same time both complete.
    let a = mvm_std(home)
        .args(["exec", &name, "--", "sh", "-c", "sleep 1; echo A"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let b = mvm_std(home)
        .args(["exec", &name, "--", "sh", "-c", "sleep 1; echo B"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(String::from_utf8_lossy(&a.stdout), "A\n");
    assert_eq!(String::from_utf8_lossy(&b.stdout), "B\n");

    // A big stream arrives whole.
    let out = mvm_std(home)
        .args(["exec", &name, "--", "head", "-c", "20000000", "/dev/zero"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 20_000_000);

    // rm leaves no process and no directory.
    mvm(home).args(["rm", "-f", &name]).assert().success();
    assert!(!home.join("instances").join(&name).exists());
    assert!(vmms_under(&home.join("instances").join(&name)).is_empty());
}

#[test]
fn concurrent_runs_with_the_same_name_have_one_winner() {
    if !can_boot("concurrent_runs_with_the_same_name") {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let name = unique("same");
    let _g = MachineGuard {
        home,
        name: name.clone(),
    };
    let spawn = || {
        mvm_std(home)
            .args(["run", "--no-wait", "--name", &name])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let wins = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(wins, 1, "a: {:?}\nb: {:?}", a, b);
    let loser = if a.status.success() { &b } else { &a };
    let msg = String::from_utf8_lossy(&loser.stderr);
    assert!(
        msg.contains("already exists") && msg.contains(&name),
        "{msg}"
    );
}

#[test]
fn killed_vmm_is_reported_and_rm_cleans_up() {
    if !can_boot("killed_vmm_is_reported") {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let name = unique("k9");
    let _g = MachineGuard {
        home,
        name: name.clone(),
    };
    mvm(home)
        .args(["run", "--no-wait", "--name", &name])
        .assert()
        .success();
    let out = mvm(home).args(["inspect", &name]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = v["vmm_pid"].as_u64().expect("vmm pid") as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let stopped = crate::common::wait_until(Duration::from_secs(10), || {
        status_of(home, &name).as_deref() != Some("running")
            && status_of(home, &name).as_deref() != Some("starting")
    });
    assert!(stopped, "status: {:?}", status_of(home, &name));
    mvm(home).args(["rm", &name]).assert().success();
    assert!(!home.join("instances").join(&name).exists());
}
