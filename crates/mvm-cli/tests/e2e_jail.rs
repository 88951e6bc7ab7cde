//! Confined VMMs through the `mvm` binary (issue 12), checked from
//! `/proc/<vmm pid>/` as a user would: as root every VMM runs as the
//! machine's own uid in the machine's cgroup — Firecracker under its
//! jailer (chroot, PID namespace, default seccomp filters), QEMU with
//! `-sandbox` — and `mvm rm -f` leaves no process, cgroup, mount or chroot.
//!
//! Each test runs mvm in a network namespace of its own (`nsenter --net`,
//! so the host's cgroup hierarchies stay visible) with NAT networking, in
//! a home of its own (so its cgroups are `mvm/<unique home tag>/...`).
//! Needs root; the Firecracker tests need `MVM_FIRECRACKER_BIN` and
//! `MVM_JAILER_BIN` (SKIPPED otherwise).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::common::{
    assert_nothing_left, can_boot, curl_get, ensure_image, fc_get, firecracker_bin, jail_leftovers,
    mvm, own_home, wait_until,
};
use crate::e2e_net::{NetNs, is_root};

/// `MVM_JAILER_BIN`, or `None` after `SKIPPED`.
fn jailer_bin(test: &str) -> Option<PathBuf> {
    mvm_core::testing::path_from_env("MVM_JAILER_BIN", test)
}

fn needs_root(test: &str) -> bool {
    if !is_root() {
        mvm_core::testing::skip(&format!(
            "SKIPPED: {test}: confining VMMs needs root (uids, cgroups, jailer)"
        ));
    }
    is_root()
}

/// A home and a network namespace for one test.
struct Place {
    home: tempfile::TempDir,
    ns: NetNs,
}

impl Place {
    fn new(tag: &str) -> Self {
        ensure_image();
        Self {
            home: own_home(&format!("mvm-{tag}")),
            ns: NetNs::named(&format!("mvm{tag}-{}", std::process::id())),
        }
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    fn mvm(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let bin = assert_cmd::cargo::cargo_bin("mvm");
        let mut c = self.ns.cmd_net_only(&[bin.to_str().unwrap()]);
        c.args(args)
            .env("MVM_HOME", self.home())
            .env("MVM_NETWORK", "nat")
            .env_remove("MVM_BACKEND")
            .env_remove("MVM_JAILER");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.mvm(args, &[]);
        assert!(
            out.status.success(),
            "mvm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn inspect(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["inspect", name])).unwrap()
    }

    /// Links of the namespace whose name contains `mvm-` (TAPs).
    fn taps(&self) -> Vec<String> {
        self.ns
            .run(&["ip", "-o", "link"])
            .lines()
            .filter(|l| l.contains("mvm-"))
            .map(|l| l.trim().to_owned())
            .collect()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // A failed test still removes its machines (their cgroups too).
        if let Ok(list) = fs_err::read_dir(self.home().join("instances")) {
            for e in list.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let _ = self.mvm(&["rm", "-f", &name], &[]);
            }
        }
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let s = fs_err::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn dev_ino(p: &Path) -> (u64, u64) {
    let m = fs_err::metadata(p).unwrap();
    (m.dev(), m.ino())
}

/// What `inspect` says of the confinement, checked against `/proc/<pid>`:
/// uid/gid (never 0), seccomp mode 2, the cgroup directories holding the
/// VMM with `memory_mib` + overhead and `quota_us` per 100 ms. Returns the
/// uid and the cgroup directories.
fn check_confined(v: &Value, pid: u32, memory_mib: u64, quota_us: u64) -> (u32, Vec<PathBuf>) {
    let iso = &v["isolation"];
    assert!(iso.is_object(), "no isolation in inspect: {v}");
    let uid = iso["uid"].as_u64().unwrap() as u32;
    let gid = iso["gid"].as_u64().unwrap() as u32;
    assert_ne!(uid, 0);
    assert_ne!(gid, 0);
    assert_eq!(status_field(pid, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status_field(pid, "Gid"), format!("{gid} {gid} {gid} {gid}"));
    assert_eq!(
        status_field(pid, "Seccomp"),
        "2",
        "VMM {pid} has no seccomp filter"
    );
    let dirs: Vec<PathBuf> = iso["cgroup"]
        .as_array()
        .expect("cgroup directories")
        .iter()
        .map(|d| PathBuf::from(d.as_str().unwrap()))
        .collect();
    assert!(!dirs.is_empty(), "no cgroup: {v}");
    let read = |f: &str| -> String {
        let d = dirs
            .iter()
            .find(|d| d.join(f).exists())
            .unwrap_or_else(|| panic!("no {f} in {dirs:?}"));
        fs_err::read_to_string(d.join(f)).unwrap().trim().to_owned()
    };
    let backend = v["record"]["backend"].as_str().unwrap();
    let overhead: u64 = match backend {
        "firecracker" => mvm_firecracker::jailer::FIRECRACKER_OVERHEAD_MIB.into(),
        _ => mvm_qemu::isolate::QEMU_OVERHEAD_MIB.into(),
    };
    let bytes = ((memory_mib + overhead) << 20).to_string();
    match iso["cgroup_version"].as_str().unwrap() {
        "v1" => {
            assert_eq!(read("memory.limit_in_bytes"), bytes);
            assert_eq!(read("cpu.cfs_quota_us"), quota_us.to_string());
            assert_eq!(read("cpu.cfs_period_us"), "100000");
        }
        _ => {
            assert_eq!(read("memory.max"), bytes);
            assert_eq!(read("cpu.max"), format!("{quota_us} 100000"));
        }
    }
    for d in &dirs {
        let procs = fs_err::read_to_string(d.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "VMM {pid} is not in {}: {procs}",
            d.display()
        );
    }
    (uid, dirs)
}

/// The VMM `pid` is gone (or the pid names another process now).
fn gone(pid: u32, started: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        fs_err::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(21).unwrap_or_default() != started)
            .unwrap_or(true)
    })
}

fn start_time(pid: u32) -> String {
    fs_err::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_owned()
}

/// Ask the Firecracker behind `socket` to back drive `id` with `path`.
fn patch_drive(socket: &Path, id: &str, path: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = mvm_firecracker::api::Client::new(socket);
    rt.block_on(client.patch_drive(&mvm_firecracker::api::PartialDrive {
        drive_id: id.into(),
        path_on_host: Some(path.into()),
        rate_limiter: None,
    }))
    .map_err(|e| e.to_string())
}

#[test]
fn jailed_firecracker_run_is_confined_and_rm_leaves_nothing() {
    const T: &str = "jailed_firecracker_run_is_confined_and_rm_leaves_nothing";
    let (Some(_), Some(_)) = (firecracker_bin(T), jailer_bin(T)) else {
        return;
    };
    if !needs_root(T) || !can_boot(T) {
        return;
    }
    let p = Place::new("j");
    let name = "jfc";
    p.ok(&[
        "run",
        "--backend",
        "firecracker",
        "--no-wait",
        "--name",
        name,
        "--cpus",
        "2",
        "--memory",
        "256",
        "--cpu-quota",
        "1.5",
    ]);
    let idir = p.home().join("instances").join(name);
    let v = p.inspect(name);
    let pid = v["vmm_pid"].as_u64().expect("vmm_pid") as u32;
    let started = start_time(pid);

    // uid/gid, seccomp, cgroup limits (256 MiB + overhead, 1.5 CPUs).
    let (uid, cgroups) = check_confined(&v, pid, 256, 150_000);

    // Its root is the chroot under the instance directory, which holds no
    // host file beyond what the VMM needs.
    let chroot = PathBuf::from(v["isolation"]["chroot"].as_str().expect("chroot"));
    assert!(chroot.starts_with(&idir), "{}", chroot.display());
    assert_eq!(
        dev_ino(Path::new(&format!("/proc/{pid}/root"))),
        dev_ino(&chroot),
        "/proc/{pid}/root is not the chroot"
    );
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(root.join("vmlinux").exists() && root.join("drives/root").exists());
    assert!(!root.join("etc").exists() && !root.join("home").exists());

    // A PID namespace of its own: it is PID 1 there.
    let nspid = status_field(pid, "NSpid");
    assert!(nspid.ends_with(" 1"), "NSpid: {nspid}");

    // The instance's API socket (a stable link into the chroot) answers.
    let socket = idir.join("fc.sock");
    assert_eq!(fc_get(&socket, "/")["state"], "Running");
    if let Some(raw) = curl_get(&socket, "/") {
        assert_eq!(raw["state"], "Running");
    }

    // The TAP belongs to the machine's uid (a jailed VMM opens it by name).
    let tap = v["record"]["net"]["tap"]
        .as_str()
        .expect("a TAP")
        .to_owned();
    let owner = p.ns.run(&["cat", &format!("/sys/class/net/{tap}/owner")]);
    assert_eq!(owner.trim(), uid.to_string());

    // A host file that root could open is out of the jailed VMM's reach.
    let e = patch_drive(&socket, "config", "/etc/shadow")
        .expect_err("the jailed VMM attached /etc/shadow");
    assert!(
        e.contains("No such file") || e.contains("Permission denied"),
        "{e}"
    );

    // rm -f: no process, cgroup (nor the home's parent cgroups), mount,
    // chroot, TAP or instance directory remains.
    p.ok(&["rm", "-f", name]);
    assert!(gone(pid, &started), "VMM {pid} is still running");
    for d in &cgroups {
        assert!(!d.exists(), "cgroup {} left", d.display());
        assert!(
            !d.parent().unwrap().exists(),
            "parent cgroup of {} left",
            d.display()
        );
    }
    assert!(!chroot.exists());
    assert_eq!(p.taps(), Vec::<String>::new());
    assert_nothing_left(p.home(), T);

    // The control: without the jailer the same request from a root VMM
    // opens /etc/shadow.
    p.ok(&[
        "run",
        "--backend",
        "firecracker",
        "--no-wait",
        "--name",
        "plain",
        "--no-jailer",
    ]);
    let v = p.inspect("plain");
    assert!(v["isolation"].is_null(), "{v}");
    let pid = v["vmm_pid"].as_u64().unwrap() as u32;
    assert_eq!(status_field(pid, "Uid"), "0 0 0 0");
    let socket = p.home().join("instances/plain/fc.sock");
    patch_drive(&socket, "config", "/etc/shadow").expect("an unjailed root VMM opens /etc/shadow");
    p.ok(&["rm", "-f", "plain"]);
    assert_nothing_left(p.home(), T);
}

#[test]
fn qemu_vmm_runs_as_its_own_uid_with_seccomp_and_leaves_nothing() {
    const T: &str = "qemu_vmm_runs_as_its_own_uid_with_seccomp_and_leaves_nothing";
    if !needs_root(T) || !can_boot(T) {
        return;
    }
    let p = Place::new("q");
    let name = "jq";
    p.ok(&[
        "run",
        "--backend",
        "qemu",
        "--name",
        name,
        "--memory",
        "256",
    ]);
    let v = p.inspect(name);
    let pid = v["vmm_pid"].as_u64().expect("vmm_pid") as u32;
    let started = start_time(pid);
    let (uid, cgroups) = check_confined(&v, pid, 256, 100_000);
    // The machine works: commands, its network address, files that
    // survive a stop and start.
    assert_eq!(p.ok(&["exec", name, "--", "echo", "hi"]), "hi\n");
    let ip = v["record"]["net"]["ip"].as_str().expect("an address");
    let addrs = p.ok(&["exec", name, "--", "ip", "-4", "-o", "addr"]);
    assert!(addrs.contains(ip), "{addrs}");
    p.ok(&[
        "exec",
        name,
        "--",
        "sh",
        "-c",
        "echo kept > /root/f && sync",
    ]);
    p.ok(&["stop", name]);
    assert!(gone(pid, &started), "VMM {pid} is still running after stop");
    assert!(
        cgroups.iter().all(|d| !d.exists()),
        "cgroup left after stop"
    );
    p.ok(&["start", name]);
    assert_eq!(p.ok(&["exec", name, "--", "cat", "/root/f"]), "kept\n");
    let v = p.inspect(name);
    let pid = v["vmm_pid"].as_u64().unwrap() as u32;
    let started = start_time(pid);
    let (uid2, _) = check_confined(&v, pid, 256, 100_000);
    assert_eq!(uid, uid2, "a machine keeps its uid across starts");
    p.ok(&["rm", "-f", name]);
    assert!(
        gone(pid, &started),
        "VMM {pid} is still running after rm -f"
    );
    assert_eq!(p.taps(), Vec::<String>::new());
    assert_nothing_left(p.home(), T);
}

/// Unmounts a bind mount when dropped (the test may fail half-way).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn doctor_reports_confinement_and_gc_removes_jail_leftovers() {
    const T: &str = "doctor_reports_confinement_and_gc_removes_jail_leftovers";
    if !needs_root(T) {
        return;
    }
    let home = crate::common::empty_home();
    let doctor = |env: &[(&str, &str)]| -> Value {
        let mut c = mvm(home.path());
        c.args(["doctor", "--json"]).env_remove("MVM_JAILER");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let check = crate::common::doctor_check;
    let on = check(&doctor(&[]), "isolation");
    assert_eq!(on["ok"], true, "{on}");
    assert!(on["detail"].as_str().unwrap().starts_with("on:"), "{on}");
    let off = check(&doctor(&[("MVM_JAILER", "0")]), "isolation");
    assert_eq!(off["ok"], false, "{off}");
    assert!(
        off["detail"].as_str().unwrap().contains("jailer = false"),
        "{off}"
    );
    assert!(off["fix"].as_str().is_some(), "{off}");

    // Leftovers of no machine: a cgroup with a process in it, and a jail
    // directory holding a bind mount.
    let mhome = mvm_core::MvmHome::new(home.path());
    let mut sleeper = None;
    if let Some(h) = mvm_jail::Hierarchy::detect() {
        let spec = mvm_core::isolation::CgroupSpec {
            version: h.version(),
            parent: mvm_jail::cgroup_parent(&mhome),
            name: "ghost".into(),
            limits: mvm_jail::cgroup::limits_for(1, 64, 0, None),
        };
        let cg = mvm_jail::Cgroup::create(&h, &spec).unwrap();
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        cg.add_pid(child.id()).unwrap();
        sleeper = Some(child);
    } else {
        mvm_core::testing::skip(&format!(
            "SKIPPED: {T} (cgroup part): no memory+cpu hierarchy"
        ));
    }
    let jail = mhome.instance("ghost2").jail_dir();
    let target = jail.join("firecracker/ghost2/root/drives");
    fs_err::create_dir_all(&target).unwrap();
    let source = home.path().join("src");
    fs_err::create_dir_all(&source).unwrap();
    rustix::mount::mount_bind(&source, &target).unwrap();
    let _unmount = Unmount(target.clone());

    let leftovers = check(&doctor(&[]), "leftovers");
    let detail = leftovers["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("mount {}", target.display())),
        "{detail}"
    );
    assert!(
        detail.contains(&format!("jail directory {}", jail.display())),
        "{detail}"
    );
    if sleeper.is_some() {
        assert!(detail.contains("cgroup of machine ghost"), "{detail}");
    }
    let out = mvm(home.path()).arg("gc").output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("removed"), "{said}");
    assert!(!jail.exists(), "{said}");
    if let Some(mut child) = sleeper {
        let ended = wait_until(Duration::from_secs(10), || {
            child.try_wait().unwrap().is_some()
        });
        assert!(ended, "the process in the leftover cgroup still runs");
    }
    assert_eq!(jail_leftovers(home.path()), Vec::<String>::new());
    // gc again: nothing of the jail kind is left (the instance directory
    // of the unregistered machine is, and is removed as unreadable).
    let out = mvm(home.path()).arg("gc").output().unwrap();
    assert!(out.status.success());
    let again = String::from_utf8_lossy(&out.stdout);
    assert!(
        !again.contains("cgroup") && !again.contains("jail"),
        "{again}"
    );
}

#[test]
fn jailed_firecracker_faults_leave_no_jail_behind() {
    // The fault-injection test (e2e_faults) runs QEMU machines; this runs
    // the steps where a jailed Firecracker exists or is being made: the
    // supervisor SIGKILLed with the VMM running in its own PID namespace
    // (it outlives the supervisor: the recovery finds it by its cgroup and
    // record), the VMM killed, the CLI killed, a failed spawn.
    const T: &str = "jailed_firecracker_faults_leave_no_jail_behind";
    let (Some(_), Some(_)) = (firecracker_bin(T), jailer_bin(T)) else {
        return;
    };
    if !needs_root(T) || !can_boot(T) {
        return;
    }
    let p = Place::new("jf");
    for (i, fault) in [
        "sup.vmm_spawned=kill",
        "sup.vmm_spawned=kill-vmm",
        "start.started=kill",
        "sup.vmm_spawn=fail",
        "sup.network=kill",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("jf{i}");
        let reached = p.home().join(format!("reached{i}"));
        let out = p.mvm(
            &[
                "run",
                "--backend",
                "firecracker",
                "--no-wait",
                "--name",
                &name,
            ],
            &[
                (mvm_core::env::MVM_FAULT, fault),
                (mvm_core::env::MVM_FAULT_REACHED, reached.to_str().unwrap()),
            ],
        );
        let point = fault.split('=').next().unwrap();
        // With --no-wait the CLI returns once the VMM started, which the
        // supervisor reports before it reaches `sup.vmm_spawned`.
        let was_reached = wait_until(Duration::from_secs(10), || {
            fs_err::read_to_string(&reached).is_ok_and(|t| t.lines().any(|l| l == point))
        });
        assert!(
            was_reached,
            "{fault}: not reached: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The next commands tell the truth: a VMM only for a machine shown
        // running or starting, none for a stopped one (a VMM killed a
        // moment ago may still be seen once: its supervisor is reaping it).
        let mut last = String::new();
        let mut exists = false;
        let truthful = wait_until(Duration::from_secs(10), || {
            let ps: Vec<Value> = serde_json::from_str(&p.ok(&["ps", "-a", "--json"])).unwrap();
            let m = ps.iter().find(|m| m["name"] == name.as_str());
            exists = m.is_some();
            let vmms = crate::common::vmms_under(&p.home().join("instances").join(&name));
            last = format!("{m:?} with VMMs {vmms:?}");
            match m.map(|m| m["status"].as_str().unwrap()) {
                Some("running" | "starting") => vmms.len() == 1,
                _ => vmms.is_empty(),
            }
        });
        assert!(truthful, "{fault}: {last}");
        if exists {
            p.ok(&["rm", "-f", &name]);
        }
        assert_eq!(p.taps(), Vec::<String>::new(), "{fault}");
        assert_nothing_left(p.home(), fault);
        let gc = p.mvm(&["gc"], &[]);
        assert!(gc.status.success());
        assert!(
            String::from_utf8_lossy(&gc.stdout).trim().is_empty(),
            "{fault}: gc found {}",
            String::from_utf8_lossy(&gc.stdout)
        );
    }
}
