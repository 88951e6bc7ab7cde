//! One owner per machine, seen from the outside (issue 8's acceptance):
//! concurrent starts, a stop or `rm -f` at any moment of a `run`, `kill -9`
//! of a transient exec, and starts that can never work.

use std::process::Stdio;
use std::time::Duration;

use crate::common::{
    assert_nothing_left, can_boot, ensure_image, mvm_std, own_home, status_of, tagged_processes,
    unique, vmms_under, wait_until,
};

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn concurrent_starts_have_exactly_one_winner() {
    if !can_boot("concurrent_starts_have_exactly_one_winner") {
        return;
    }
    ensure_image();
    let home = own_home("mvm-cs");
    let home = home.path();
    let a = unique("cs");
    let dir = home.join("instances").join(&a);
    ok(
        mvm_std(home).args(["run", "--name", &a]).output().unwrap(),
        "run",
    );
    ok(mvm_std(home).args(["stop", &a]).output().unwrap(), "stop");
    for round in 0..20 {
        let starts: Vec<_> = (0..2)
            .map(|_| {
                mvm_std(home)
                    .args(["start", &a])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<String> = starts
            .into_iter()
            .map(|c| ok(c.wait_with_output().unwrap(), "start"))
            .collect();
        let already = outs.iter().filter(|o| o.contains("already")).count();
        assert_eq!(
            already, 1,
            "round {round}: exactly one start reports the machine already up: {outs:?}"
        );
        let vmms = vmms_under(&dir);
        assert_eq!(
            vmms.len(),
            1,
            "round {round}: exactly one VMM runs: {vmms:?}"
        );
        ok(
            mvm_std(home)
                .args(["exec", &a, "--", "true"])
                .output()
                .unwrap(),
            "exec",
        );
        ok(mvm_std(home).args(["stop", &a]).output().unwrap(), "stop");
        assert!(
            vmms_under(&dir).is_empty(),
            "round {round}: VMM left after stop"
        );
        assert_eq!(status_of(home, &a).as_deref(), Some("stopped"));
    }
    // Three rounds of two racing starts, then `rm -f`: nothing of `a` remains.
    for _ in 0..3 {
        let starts: Vec<_> = (0..2)
            .map(|_| mvm_std(home).args(["start", &a]).output())
            .collect();
        for s in starts {
            ok(s.unwrap(), "start");
        }
    }
    ok(
        mvm_std(home).args(["rm", "-f", &a]).output().unwrap(),
        "rm -f",
    );
    assert_nothing_left(home, "after rm -f");
}

#[test]
fn stop_or_rm_at_any_moment_of_run_leaves_nothing_running() {
    if !can_boot("stop_or_rm_at_any_moment_of_run") {
        return;
    }
    ensure_image();
    let home = own_home("mvm-sr");
    let home = home.path();
    for remove in [false, true] {
        for delay_ms in [0u64, 50, 200, 500, 1000] {
            let c = unique(&format!("sr{delay_ms}"));
            let dir = home.join("instances").join(&c);
            let mut run = mvm_std(home)
                .args(["run", "--name", &c])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // The race under test: the delay is the scenario, not a wait.
            std::thread::sleep(Duration::from_millis(delay_ms));
            // A stop before the name is claimed has nothing to stop.
            assert!(
                wait_until(Duration::from_secs(60), || dir.exists()),
                "{c}: never created"
            );
            let verb: &[&str] = if remove { &["rm", "-f"] } else { &["stop"] };
            let out = mvm_std(home).args(verb).arg(&c).output().unwrap();
            ok(out, &format!("{verb:?} {c} after {delay_ms} ms"));
            let _ = run.wait().unwrap();
            if remove {
                assert_eq!(status_of(home, &c), None, "{c}: still listed after rm -f");
                assert!(!dir.exists(), "{c}: directory left");
            } else {
                assert_eq!(
                    status_of(home, &c).as_deref(),
                    Some("stopped"),
                    "{c}: after stop at {delay_ms} ms"
                );
            }
            assert!(vmms_under(&dir).is_empty(), "{c}: VMM left");
            assert!(tagged_processes(home).is_empty(), "{c}: processes left");
            if !remove {
                ok(mvm_std(home).args(["rm", &c]).output().unwrap(), "rm");
            }
        }
    }
    assert_nothing_left(home, "after all rounds");
}

#[test]
fn kill_9_of_a_transient_exec_is_cleaned_up_by_the_next_command() {
    if !can_boot("kill_9_of_a_transient_exec") {
        return;
    }
    ensure_image();
    let home = own_home("mvm-k9");
    let home = home.path();
    let root = crate::e2e_net::is_root();
    let ns = root.then(|| crate::e2e_net::NetNs::named(&format!("mvmk9-{}", std::process::id())));
    let mvm = |args: &[&str]| -> std::process::Command {
        match &ns {
            Some(ns) => {
                let mut c = ns.cmd(&[assert_cmd::cargo::cargo_bin("mvm").to_str().unwrap()]);
                c.args(args)
                    .env("MVM_HOME", home)
                    .env("MVM_NETWORK", "nat")
                    .env_remove("MVM_BACKEND");
                c
            }
            None => {
                let mut c = mvm_std(home);
                c.args(args);
                c
            }
        }
    };
    let mut exec = mvm(&["exec", "--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // `ip netns exec` execs mvm in place: the child is mvm itself.
    assert!(
        wait_until(Duration::from_secs(120), || !vmms_under(
            &home.join("instances")
        )
        .is_empty()),
        "no transient VMM appeared"
    );
    if let Some(ns) = &ns {
        assert!(
            wait_until(Duration::from_secs(30), || ns
                .run(&["ip", "-o", "link"])
                .contains("mvm-")),
            "no TAP appeared"
        );
    }
    exec.kill().unwrap();
    exec.wait().unwrap();
    // The next ordinary command lists nothing and leaves nothing.
    let out = ok(mvm(&["ps", "-a", "--json"]).output().unwrap(), "ps");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(list.is_empty(), "ps -a after kill -9: {list:?}");
    assert_nothing_left(home, "after kill -9 and ps");
    if let Some(ns) = &ns {
        let links = ns.run(&["ip", "-o", "link"]);
        assert!(!links.contains("mvm-"), "TAP left: {links}");
        let rules = ns.run(&["iptables-save"]);
        assert!(!rules.contains("mvm:"), "rules left: {rules}");
    } else {
        mvm_core::testing::skip(
            "SKIPPED: kill_9_of_a_transient_exec: TAP and rule checks need root (network namespace)",
        );
    }
}

#[test]
fn starts_that_can_never_work_create_no_record() {
    let home = crate::common::empty_home();
    let home = home.path();
    let out = mvm_std(home)
        .args(["run", "--name", "huge", "--memory", "99999999"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("99999999") && err.contains("MiB"), "{err}");
    let out = mvm_std(home)
        .args(["run", "--name", "ghost", "no-such-image"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-image"), "{err}");
    assert_eq!(status_of(home, "huge"), None);
    assert_eq!(status_of(home, "ghost"), None);
    assert!(crate::common::instance_dirs(home).is_empty());
}

/// A machine's main process ends it with its status (`mvm run -- CMD`),
/// also when the supervisor's first `WaitMain` to the agent fails (fault
/// point `sup.main_wait`): the supervisor asks again while the VMM runs.
/// (Left lost, the machine would run on until the agent's own 30 s grace
/// and stop without the main process's status.)
#[test]
fn a_lost_main_process_wait_is_asked_again() {
    if !can_boot("a_lost_main_process_wait_is_asked_again") {
        return;
    }
    ensure_image();
    let home = own_home("mvm-mw");
    let home = home.path();
    let reached = home.join("reached");
    for fault in [None, Some("sup.main_wait=fail")] {
        let name = unique("mw");
        let mut run = mvm_std(home);
        run.args(["run", "--name", &name, "--", "sh", "-c", "sleep 1; exit 3"]);
        if let Some(f) = fault {
            run.env(mvm_core::env::MVM_FAULT, f)
                .env(mvm_core::env::MVM_FAULT_REACHED, &reached);
        }
        ok(run.output().unwrap(), "run");
        // Boot, `sleep 1` and power-off take seconds alone; the suite's
        // parallel guests on 2 cores can make it a minute. (Without the
        // retry the machine also stops, ~30 s later, but without the main
        // process's status: the note below tells.)
        let stopped = wait_until(Duration::from_secs(120), || {
            status_of(home, &name).as_deref() == Some("stopped")
        });
        let row = crate::common::ps(home)
            .into_iter()
            .find(|m| m["name"] == name.as_str())
            .unwrap();
        assert!(stopped, "{fault:?}: not stopped 120 s after run: {row}");
        assert_eq!(
            row["note"], "main process exited with code 3",
            "{fault:?}: {row}"
        );
        ok(
            mvm_std(home).args(["rm", "-f", &name]).output().unwrap(),
            "rm",
        );
    }
    let points = fs_err::read_to_string(&reached).unwrap_or_default();
    assert_eq!(points.trim(), "sup.main_wait", "the fault was not injected");
    assert_nothing_left(home, "after the main-process machines");
}
