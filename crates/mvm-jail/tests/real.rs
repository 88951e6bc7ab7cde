//! Real cgroups, real bind mounts. Every cgroup is created under a parent
//! unique to this test process and removed also when a test fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mvm_core::isolation::{CgroupSpec, CgroupVersion};
use mvm_jail::cgroup::{self, Cgroup, Hierarchy, limits_for};
use mvm_jail::chroot::{self, Chroot, Placement};

fn root(test: &str) -> bool {
    let ok = rustix::process::geteuid().is_root();
    if !ok {
        mvm_core::testing::skip(&format!("SKIPPED: {test}: needs root"));
    }
    ok
}

/// A parent cgroup unique to this process and test.
fn parent(test: &str) -> String {
    format!("mvm-test-jail-{}/{test}", std::process::id())
}

/// Removes a test's cgroups (leaf first, then the parents) when dropped.
struct CgGuard {
    h: Hierarchy,
    spec: CgroupSpec,
}

impl Drop for CgGuard {
    fn drop(&mut self) {
        let _ = cgroup::release_at(&self.h, &self.spec);
        for r in self.h.roots() {
            let top = self.spec.parent.split('/').next().unwrap();
            let _ = fs_err::remove_dir(r.join(&self.spec.parent));
            let _ = fs_err::remove_dir(r.join(top));
        }
    }
}

fn alive(pid: u32) -> bool {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
}

/// `sleep 600` placed into `cg` between fork and exec.
fn sleeper_in(cg: &Cgroup) -> std::process::Child {
    let fds = cg.attach_fds().unwrap();
    let mut c = Command::new("sleep");
    c.arg("600").stdin(Stdio::null());
    // SAFETY: attach_self only calls write(2) on descriptors that stay
    // open in the child until exec; no allocation, no locks.
    unsafe {
        c.pre_exec(move || mvm_jail::cgroup::attach_self(&fds));
    }
    c.spawn().unwrap()
}

#[test]
fn v1_or_v2_machine_cgroup_limits_kill_and_removal() {
    if !root("machine_cgroup_limits_kill_and_removal") {
        return;
    }
    let Some(h) = Hierarchy::detect() else {
        mvm_core::testing::skip(
            "SKIPPED: machine_cgroup_limits_kill_and_removal: no memory+cpu cgroup hierarchy",
        );
        return;
    };
    let spec = CgroupSpec {
        version: h.version(),
        parent: parent("limits"),
        name: "m1".into(),
        limits: limits_for(2, 64, 32, Some(1500)),
    };
    let _g = CgGuard {
        h: h.clone(),
        spec: spec.clone(),
    };
    let cg = Cgroup::create(&h, &spec).unwrap();
    for d in cg.dirs() {
        assert!(d.is_dir(), "{d:?}");
    }
    match h.version() {
        CgroupVersion::V1 => {
            assert_eq!(
                cg.read("memory.limit_in_bytes").unwrap(),
                (96u64 << 20).to_string()
            );
            assert_eq!(cg.read("cpu.cfs_quota_us").unwrap(), "150000");
            assert_eq!(cg.read("cpu.cfs_period_us").unwrap(), "100000");
            assert_eq!(cg.read("cpu.shares").unwrap(), "2048");
        }
        CgroupVersion::V2 => {
            assert_eq!(cg.read("memory.max").unwrap(), (96u64 << 20).to_string());
            assert_eq!(cg.read("cpu.max").unwrap(), "150000 100000");
        }
    }
    // Creating again (a leftover of a dead run) is fine.
    let cg = Cgroup::create(&h, &spec).unwrap();

    let mut a = sleeper_in(&cg);
    let mut b = sleeper_in(&cg);
    let pids = cg.pids();
    assert_eq!(pids, {
        let mut v = vec![a.id(), b.id()];
        v.sort();
        v
    });
    // The process's own view agrees.
    let own = fs_err::read_to_string(format!("/proc/{}/cgroup", a.id())).unwrap();
    assert!(own.contains(&format!("{}/m1", spec.parent)), "{own}");
    assert_eq!(
        cgroup::leftovers(&h, &spec.parent).unwrap(),
        vec!["m1".to_string()]
    );

    cgroup::release_at(&h, &spec).unwrap();
    a.wait().unwrap();
    b.wait().unwrap();
    assert!(!alive(a.id()) && !alive(b.id()));
    for d in cg.dirs() {
        assert!(!d.exists(), "{d:?} left behind");
    }
    assert!(cgroup::leftovers(&h, &spec.parent).unwrap().is_empty());
    // Twice in a row.
    cgroup::release_at(&h, &spec).unwrap();
    // Through the record alone (host detection).
    cgroup::release(&spec).unwrap();
}

#[test]
fn v2_release_kills_and_removes_on_the_real_unified_hierarchy() {
    if !root("v2_release_kills_and_removes") {
        return;
    }
    // Any cgroup2 mount (here the controller-less one beside v1).
    let mountinfo = fs_err::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(mount) = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        post.starts_with("cgroup2 ")
            .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap()))
    }) else {
        mvm_core::testing::skip("SKIPPED: v2_release_kills_and_removes: no cgroup2 mount");
        return;
    };
    let h = Hierarchy::V2 {
        root: mount.clone(),
    };
    let spec = CgroupSpec {
        version: CgroupVersion::V2,
        parent: parent("v2"),
        name: "m2".into(),
        limits: limits_for(1, 64, 0, None),
    };
    let _g = CgGuard {
        h: h.clone(),
        spec: spec.clone(),
    };
    // Without controllers here: make the directories by hand, as a jailer
    // would, and check kill + removal.
    let leaf = mount.join(&spec.parent).join(&spec.name);
    fs_err::create_dir_all(&leaf).unwrap();
    let cg = Cgroup::open(&h, &spec).unwrap();
    let mut a = sleeper_in(&cg);
    assert_eq!(cg.pids(), vec![a.id()]);
    cgroup::release_at(&h, &spec).unwrap();
    a.wait().unwrap();
    assert!(!leaf.exists());
    cgroup::release_at(&h, &spec).unwrap();
}

#[test]
fn bind_mounted_files_are_unmounted_and_the_chroot_removed() {
    if !root("bind_mounted_files_are_unmounted") {
        return;
    }
    // A source on another filesystem (tmpfs) cannot be hard-linked.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        mvm_core::testing::skip("SKIPPED: bind_mounted_files_are_unmounted: no /dev/shm");
        return;
    }
    let src_dir = tempfile::Builder::new()
        .prefix("mvm-jail-test")
        .tempdir_in(shm)
        .unwrap();
    let src = src_dir.path().join("kernel");
    fs_err::write(&src, b"kernel bytes").unwrap();
    let t = tempfile::tempdir().unwrap();
    let jail = t.path().join("jail");
    struct Release(PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = chroot::release(&self.0);
        }
    }
    let _r = Release(jail.clone());
    let c = Chroot::new(jail.join("firecracker/m/root"));
    c.create().unwrap();
    assert_eq!(
        c.place(&src, "/vmlinux", true).unwrap(),
        Placement::BindMount
    );
    let inside = c.host_path("/vmlinux");
    assert_eq!(fs_err::read(&inside).unwrap(), b"kernel bytes");
    // Read-only: even root cannot write through it.
    let w = fs_err::OpenOptions::new().write(true).open(&inside);
    assert!(w.is_err(), "read-only bind mount is writable");
    assert_eq!(chroot::mounts_under(&jail), vec![inside.clone()]);

    chroot::release(&jail).unwrap();
    assert!(chroot::mounts_under(&jail).is_empty());
    assert!(!jail.exists());
    assert_eq!(fs_err::read(&src).unwrap(), b"kernel bytes");
    chroot::release(&jail).unwrap();
}
