//! A jailed Firecracker started through the backend, checked from
//! `/proc/<vmm pid>/` (needs root, `MVM_FIRECRACKER_BIN` and
//! `MVM_JAILER_BIN`; SKIPPED otherwise).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use mvm_core::VmBackend;
use mvm_core::backend::{DriveSpec, KernelPaths, VmSpec};
use mvm_core::isolation::{CgroupSpec, CgroupVersion, Isolation};
use mvm_core::paths::InstanceDir;
use mvm_firecracker::api::{Client, InstanceState, PartialDrive};
use mvm_firecracker::backend::release_jail;
use mvm_firecracker::{FirecrackerBackend, StartMode};
use mvm_jail::cgroup::{Hierarchy, limits_for};

use crate::common::{deadline, firecracker_bin, tiny_elf};

/// The jailer (`MVM_JAILER_BIN`), or `None` after `SKIPPED`.
fn jailer_bin(test: &str) -> Option<PathBuf> {
    mvm_core::testing::path_from_env("MVM_JAILER_BIN", test)
}

fn status_field(pid: u32, field: &str) -> String {
    let s = fs_err::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The cgroup directory of `pid` for v1 controller `ctrl` (or v2).
fn cgroup_dir_of(pid: u32, h: &Hierarchy, ctrl: &str) -> PathBuf {
    let text = fs_err::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let (root, want) = match h {
        Hierarchy::V1 { memory, cpu } => (
            if ctrl == "memory" { memory } else { cpu },
            format!(":{ctrl}:"),
        ),
        Hierarchy::V2 { root } => (root, "0::".to_string()),
    };
    let line = text
        .lines()
        .find(|l| {
            l.contains(&want)
                && (want == "0::"
                    || l.split(':')
                        .nth(1)
                        .is_some_and(|c| c.split(',').any(|x| x == ctrl)))
        })
        .unwrap_or_else(|| panic!("{ctrl} not in {text}"));
    let rel = line.rsplit(':').next().unwrap().trim_start_matches('/');
    root.join(rel)
}

fn dev_ino(p: &Path) -> (u64, u64) {
    let m = fs_err::metadata(p).unwrap();
    (m.dev(), m.ino())
}

/// Releases the jail when dropped (the test may fail half-way).
struct JailGuard {
    dir: InstanceDir,
    iso: Isolation,
}

impl Drop for JailGuard {
    fn drop(&mut self) {
        let _ = release_jail(&self.dir, &self.iso);
        if let Some(cg) = &self.iso.cgroup
            && let Some(h) = Hierarchy::detect()
        {
            for r in h.roots() {
                let _ = fs_err::remove_dir(r.join(&cg.parent));
                let _ = fs_err::remove_dir(r.join(cg.parent.split('/').next().unwrap()));
            }
        }
    }
}

fn spec(root: &Path, name: &str, iso: Isolation) -> VmSpec {
    let kernel = root.join("vmlinux");
    fs_err::write(&kernel, tiny_elf()).unwrap();
    let file = |n: &str, len: u64| {
        let p = root.join(n);
        fs_err::File::create(&p).unwrap().set_len(len).unwrap();
        p
    };
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory_mib: 64,
        kernel: KernelPaths {
            bzimage: "/nonexistent/bzImage".into(),
            vmlinux: kernel,
        },
        initrd: Some(file("initrd.cpio", 4096)),
        kernel_args: vec!["mvm.test=1".into()],
        drives: vec![
            DriveSpec {
                id: "rootfs".into(),
                path: file("image-root.img", 1 << 20),
                read_only: true,
            },
            DriveSpec {
                id: "disk".into(),
                path: root.join(name).join("disk.img"),
                read_only: false,
            },
        ],
        net: None,
        vsock_cid: 3,
        transient: true,
        isolation: Some(iso),
    }
}

#[tokio::test]
async fn jailed_firecracker_runs_confined_and_leaves_nothing_behind() {
    const T: &str = "jailed_firecracker_runs_confined";
    let (Some(fc), Some(jailer)) = (firecracker_bin(T), jailer_bin(T)) else {
        return;
    };
    if !rustix::process::geteuid().is_root() {
        mvm_core::testing::skip(&format!("SKIPPED: {T}: the jailer needs root"));
        return;
    }
    let h = Hierarchy::detect();
    for mode in [StartMode::Api, StartMode::ConfigFile] {
        let tmp = tempfile::Builder::new().prefix("mvmfj").tempdir().unwrap();
        let name = format!("j{}", if mode == StartMode::Api { "a" } else { "f" });
        let dir = InstanceDir::new(tmp.path().join(&name));
        fs_err::create_dir_all(dir.root()).unwrap();
        // A uid no other test process uses at the same time.
        let uid = 1_000_000_000 + std::process::id() % 60_000 + u32::from(mode == StartMode::Api);
        let cgroup = h.as_ref().map(|h| CgroupSpec {
            version: h.version(),
            parent: format!("mvm-test-fc-{}", std::process::id()),
            name: name.clone(),
            limits: limits_for(1, 64, 32, Some(500)),
        });
        let iso = Isolation {
            uid,
            gid: uid,
            cgroup: cgroup.clone(),
        };
        let _guard = JailGuard {
            dir: dir.clone(),
            iso: iso.clone(),
        };
        let spec = spec(tmp.path(), &name, iso.clone());
        fs_err::File::create(&spec.drives[1].path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let b = FirecrackerBackend::new(fc.clone(), false)
            .with_jailer(jailer.clone())
            .with_start_mode(mode);
        let mut vmm = b
            .launch(&spec, &dir, deadline(20))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let pid = vmm.child.id().expect("VMM pid");

        // uid/gid are the machine's, on every id.
        for f in ["Uid", "Gid"] {
            let ids: Vec<u32> = status_field(pid, f)
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            assert_eq!(ids, vec![uid; 4], "{f} of {pid}");
        }
        // Every thread runs under a seccomp filter.
        for t in fs_err::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let t = t.unwrap().file_name();
            let s =
                fs_err::read_to_string(format!("/proc/{pid}/task/{}/status", t.to_string_lossy()))
                    .unwrap();
            assert!(s.contains("Seccomp:\t2"), "thread {t:?}: {s}");
        }
        // Its root is the chroot under the instance directory.
        let chroot = dir.jail_dir().join("firecracker").join(&name).join("root");
        assert_eq!(
            dev_ino(Path::new(&format!("/proc/{pid}/root"))),
            dev_ino(&chroot)
        );
        assert_ne!(
            dev_ino(Path::new(&format!("/proc/{pid}/root"))),
            dev_ino(Path::new("/"))
        );
        // PID 1 of its own PID namespace.
        let nspid = status_field(pid, "NSpid");
        assert!(
            nspid.ends_with("\t1") || nspid.ends_with(" 1"),
            "NSpid {nspid}"
        );
        // The cgroup holds the limits.
        if let (Some(h), Some(cg)) = (&h, &cgroup) {
            match h.version() {
                CgroupVersion::V1 => {
                    let mem = cgroup_dir_of(pid, h, "memory");
                    assert!(mem.ends_with(format!("{}/{name}", cg.parent)), "{mem:?}");
                    assert_eq!(
                        fs_err::read_to_string(mem.join("memory.limit_in_bytes"))
                            .unwrap()
                            .trim(),
                        (96u64 << 20).to_string()
                    );
                    let cpu = cgroup_dir_of(pid, h, "cpu");
                    assert_eq!(
                        fs_err::read_to_string(cpu.join("cpu.cfs_quota_us"))
                            .unwrap()
                            .trim(),
                        "50000"
                    );
                }
                CgroupVersion::V2 => {
                    let d = cgroup_dir_of(pid, h, "");
                    assert_eq!(
                        fs_err::read_to_string(d.join("memory.max")).unwrap().trim(),
                        (96u64 << 20).to_string()
                    );
                    assert_eq!(
                        fs_err::read_to_string(d.join("cpu.max")).unwrap().trim(),
                        "50000 100000"
                    );
                }
            }
        } else {
            mvm_core::testing::skip(&format!(
                "SKIPPED: {T}: cgroup limits not checked (no memory+cpu hierarchy)"
            ));
        }
        // The API answers at the instance's stable path.
        let client = Client::new(dir.api_socket());
        assert_eq!(
            client.describe_instance().await.unwrap().state,
            InstanceState::Running
        );
        // The writable disk is the machine's; the shared image file is not.
        assert_eq!(fs_err::metadata(&spec.drives[1].path).unwrap().uid(), uid);
        assert_eq!(fs_err::metadata(&spec.drives[0].path).unwrap().uid(), 0);

        // A host file root could open is out of reach.
        let e = client
            .patch_drive(&PartialDrive {
                drive_id: "rootfs".into(),
                path_on_host: Some("/etc/shadow".into()),
                rate_limiter: None,
            })
            .await
            .expect_err("the jailed VMM attached /etc/shadow");
        let msg = e.to_string();
        eprintln!("jailed PATCH /drives /etc/shadow: {msg}");
        assert!(
            msg.contains("No such file") || msg.contains("Permission denied"),
            "{msg}"
        );

        if mode == StartMode::Api {
            // The normal end: the VMM exits, then the teardown releases.
            vmm.child.start_kill().unwrap();
            let st = vmm.child.wait().await.unwrap();
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
        }
        // (ConfigFile: release with the VMM still running, as after a
        // SIGKILL of its supervisor: the cgroup kill ends it.)
        release_jail(&dir, &iso).unwrap();
        if mode == StartMode::ConfigFile {
            if cgroup.is_some() {
                let st = tokio::time::timeout(std::time::Duration::from_secs(5), vmm.child.wait())
                    .await
                    .expect("the release did not kill the VMM")
                    .unwrap();
                assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
            } else {
                vmm.child.start_kill().unwrap();
                vmm.child.wait().await.unwrap();
            }
        }
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "VMM {pid} left"
        );
        assert!(!dir.jail_dir().exists(), "chroot left");
        assert!(mvm_jail::chroot::mounts_under(dir.root()).is_empty());
        assert!(fs_err::symlink_metadata(dir.api_socket()).is_err());
        if let (Some(h), Some(cg)) = (&h, &cgroup) {
            for d in h.dirs(&cg.parent, &cg.name).unwrap() {
                assert!(!d.exists(), "cgroup {d:?} left");
            }
        }
        // Idempotent.
        release_jail(&dir, &iso).unwrap();
    }
}

#[tokio::test]
async fn an_unjailed_root_firecracker_can_attach_etc_shadow() {
    // The control for the jailed check above: the same request succeeds
    // for a VMM running as root without a chroot.
    const T: &str = "an_unjailed_root_firecracker_can_attach_etc_shadow";
    let Some(fc) = firecracker_bin(T) else {
        return;
    };
    if !rustix::process::geteuid().is_root() {
        mvm_core::testing::skip(&format!("SKIPPED: {T}: needs root to read /etc/shadow"));
        return;
    }
    let tmp = tempfile::Builder::new().prefix("mvmfu").tempdir().unwrap();
    let dir = InstanceDir::new(tmp.path().join("u"));
    fs_err::create_dir_all(dir.root()).unwrap();
    let mut spec = spec(
        tmp.path(),
        "u",
        Isolation {
            uid: 1,
            gid: 1,
            cgroup: None,
        },
    );
    spec.isolation = None;
    spec.drives.truncate(1);
    let b = FirecrackerBackend::new(fc, false);
    let mut vmm = b.launch(&spec, &dir, deadline(20)).await.unwrap();
    let r = b
        .client(&dir)
        .patch_drive(&PartialDrive {
            drive_id: "rootfs".into(),
            path_on_host: Some("/etc/shadow".into()),
            rate_limiter: None,
        })
        .await;
    vmm.child.start_kill().unwrap();
    vmm.child.wait().await.unwrap();
    r.unwrap();
}
