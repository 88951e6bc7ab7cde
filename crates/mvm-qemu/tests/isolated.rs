//! An isolated QEMU (the machine's uid, `-sandbox`, its cgroup, every file
//! handed over as a descriptor) boots mvm's default image under TCG and its
//! guest agent answers. Needs root and QEMU; the image is built on first
//! use in the shared test home (SKIPPED when that cannot be done here).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use mvm_core::InstanceDir;
use mvm_core::backend::{DriveSpec, NetSpec, VmBackend};
use mvm_core::isolation::{CgroupSpec, Isolation};
use mvm_core::paths::MvmHome;
use mvm_jail::cgroup::{Hierarchy, limits_for};
use mvm_qemu::QemuBackend;
use mvm_qemu::isolate::QEMU_OVERHEAD_MIB;

use crate::util::{deadline, short_tempdir, spec};

fn status_field(pid: u32, field: &str) -> String {
    let s = fs_err::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// Releases the machine's cgroup (and the test's parent) when dropped.
struct Release {
    dir: InstanceDir,
    iso: Isolation,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = mvm_jail::release(&self.dir, Some(&self.iso));
        if let (Some(cg), Some(h)) = (&self.iso.cgroup, Hierarchy::detect()) {
            for r in h.roots() {
                let _ = fs_err::remove_dir(r.join(&cg.parent));
            }
        }
    }
}

#[tokio::test]
async fn isolated_qemu_runs_as_the_machines_uid_with_seccomp_and_the_agent_answers() {
    boot_isolated("isolated_qemu_boots_and_the_agent_answers", "iso", None).await;
}

#[test]
fn isolated_qemu_gets_its_tap_as_a_descriptor() {
    const T: &str = "isolated_qemu_gets_its_tap_as_a_descriptor";
    if !rustix::process::geteuid().is_root() {
        mvm_core::testing::skip(&format!("SKIPPED: {T}: needs root"));
        return;
    }
    // In a network namespace of this thread's own (gone with the thread and
    // its QEMU): a persistent TAP, as mvm-net makes it.
    std::thread::spawn(|| {
        // SAFETY: CLONE_NEWNET only changes this thread's network
        // namespace; nothing else of the process is unshared.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
            .expect("unshare(CLONE_NEWNET)");
        let mut nl = mvm_net::netlink::Netlink::open().unwrap();
        assert_eq!(nl.links().unwrap().len(), 1, "not a fresh namespace");
        mvm_net::link::create_tap(&mut nl, "fcqtap0").unwrap();
        let net = NetSpec {
            tap: "fcqtap0".into(),
            mac: "06:00:ac:10:00:09".into(),
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(boot_isolated(T, "isotap", Some(net)));
    })
    .join()
    .map_err(std::panic::resume_unwind)
    .unwrap();
}

/// Boot the default image isolated, with `net` if given, check the VMM's
/// confinement from /proc and talk to the agent.
async fn boot_isolated(test: &str, name: &str, net: Option<NetSpec>) {
    if !rustix::process::geteuid().is_root() {
        mvm_core::testing::skip(&format!("SKIPPED: {test}: needs root"));
        return;
    }
    let backend = match QemuBackend::detect() {
        Ok(b) => b,
        Err(e) => {
            mvm_core::testing::skip(&format!("SKIPPED: {test}: {e}"));
            return;
        }
    };
    let home = MvmHome::new(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mvm-e2e"));
    let image = match mvm_image::ensure_default(&home, &mvm_image::NoProgress) {
        Ok(i) => i,
        Err(e) => {
            mvm_core::testing::skip(&format!(
                "SKIPPED: {test}: cannot build the default image: {e}"
            ));
            return;
        }
    };
    let tmp = short_tempdir();
    let dir = InstanceDir::new(tmp.path());
    let disk = tmp.path().join("disk.img");
    fs_err::File::create(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    // Only root may read the disk: QEMU gets it as a descriptor.
    fs_err::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let uid = 1_000_100_000 + std::process::id() % 60_000 + u32::from(net.is_some());
    let cgroup = Hierarchy::detect().map(|h| CgroupSpec {
        version: h.version(),
        parent: format!("mvm-test-qemu-{}", std::process::id()),
        name: name.into(),
        limits: limits_for(1, 256, QEMU_OVERHEAD_MIB, None),
    });
    let iso = Isolation {
        uid,
        gid: uid,
        cgroup: cgroup.clone(),
    };
    let _release = Release {
        dir: dir.clone(),
        iso: iso.clone(),
    };
    let mut s = spec(&image.kernel.bzimage, Some(&image.initramfs));
    s.kernel_args = vec!["mvm.hostname=iso".into()];
    s.drives = vec![DriveSpec {
        id: "disk".into(),
        path: disk.clone(),
        read_only: false,
    }];
    s.isolation = Some(iso.clone());
    s.net = net.clone();

    let mut vmm = backend
        .launch(&s, &dir, deadline(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = vmm.child.id().unwrap();
    for f in ["Uid", "Gid"] {
        let ids: Vec<u32> = status_field(pid, f)
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(ids, vec![uid; 4], "{f}");
    }
    assert_eq!(status_field(pid, "Groups"), "");
    for t in fs_err::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().file_name();
        let st = fs_err::read_to_string(format!("/proc/{pid}/task/{}/status", t.to_string_lossy()))
            .unwrap();
        assert!(
            st.contains("Seccomp:\t2"),
            "thread {t:?} has no seccomp filter"
        );
    }
    let cmdline = String::from_utf8(fs_err::read(format!("/proc/{pid}/cmdline")).unwrap())
        .unwrap()
        .replace('\0', " ");
    assert!(cmdline.contains("-sandbox on,"), "{cmdline}");
    assert!(
        !cmdline.contains(&tmp.path().display().to_string()),
        "QEMU was given an instance path: {cmdline}"
    );
    if let Some(cg) = &cgroup {
        let own = fs_err::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(own.contains(&format!("/{}/{name}", cg.parent)), "{own}");
    }
    // The sockets stay root's, at their stable paths.
    assert_eq!(fs_err::metadata(dir.qmp_socket()).unwrap().uid(), 0);

    let guest = vmm.guest.take().expect("the agent stream");
    let client = mvm_agent_proto::client::AgentClient::handshake(guest, deadline(90))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no agent: {e}\nconsole:\n{}",
                fs_err::read_to_string(dir.console_log()).unwrap_or_default()
            )
        });
    let out = run(&client, &["cat", "/sys/block/vda/size"]).await;
    // The drive handed over as a descriptor is the guest's /dev/vda.
    assert_eq!(out.trim(), (8u64 << 20 >> 9).to_string());
    if let Some(n) = &net {
        // The TAP handed over as a descriptor is the guest's eth0, and
        // QEMU holds it (carrier).
        let mac = run(&client, &["cat", "/sys/class/net/eth0/address"]).await;
        assert_eq!(mac.trim(), n.mac);
        // (This thread's namespace, through netlink: /sys shows the host's.)
        let links = mvm_net::netlink::Netlink::open().unwrap().links().unwrap();
        let tap = links.iter().find(|l| l.name == n.tap).expect("the TAP");
        assert!(tap.carrier, "the TAP has no carrier: no process holds it");
    }
    if let Some(cg) = &cgroup
        && let Some(h) = Hierarchy::detect()
    {
        let c = mvm_jail::Cgroup::open(&h, cg).unwrap();
        for f in ["memory.max_usage_in_bytes", "memory.peak"] {
            if let Ok(v) = c.read(f) {
                eprintln!("isolated QEMU (TCG, 256 MiB guest, booted): {f} = {v}");
            }
        }
    }

    let _ = client.shutdown().await;
    let st = tokio::time::timeout(Duration::from_secs(30), vmm.child.wait()).await;
    if st.is_err() {
        vmm.child.start_kill().unwrap();
        vmm.child.wait().await.unwrap();
    }
    mvm_jail::release(&dir, Some(&iso)).unwrap();
    mvm_jail::release(&dir, Some(&iso)).unwrap();
    if let (Some(cg), Some(h)) = (&cgroup, Hierarchy::detect()) {
        for d in h.dirs(&cg.parent, &cg.name).unwrap() {
            assert!(!d.exists(), "{d:?} left");
        }
    }
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// Run `argv` in the guest; its stdout.
async fn run(client: &mvm_agent_proto::client::AgentClient, argv: &[&str]) -> String {
    let mut exec = client
        .exec(mvm_agent_proto::ExecRequest {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            cwd: None,
            stdin: false,
            timeout_ms: Some(30_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), exec.next_event())
        .await
        .unwrap()
        .unwrap()
    {
        match ev {
            mvm_agent_proto::client::ExecEvent::Stdout(b) => out.extend_from_slice(&b),
            mvm_agent_proto::client::ExecEvent::Stderr(_) => {}
            mvm_agent_proto::client::ExecEvent::Exit(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
