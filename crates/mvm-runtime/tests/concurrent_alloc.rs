//! 20 concurrent *processes* create machines in one registry and allocate
//! their network identity as a supervisor does at start: every one gets a
//! distinct name, vsock CID, IP, MAC and TAP name (allocation happens under
//! the registry's global lock; nothing is booted or configured on the host).

use std::process::Command;

const CHILD_ENV: &str = "MVM_ALLOC_TEST_CHILD";
const TEST_NAME: &str = "concurrent_alloc::twenty_processes_allocate_distinct_identities";

/// An image whose files do not exist (nothing boots), with the
/// `manifest.json` creation reads (no OCI configuration), written by the
/// parent into `dir`.
fn fake_image(dir: &std::path::Path) -> mvm_image::Image {
    mvm_image::Image {
        name: "default".into(),
        digest: "0".repeat(64),
        kind: mvm_image::ImageKind::Default,
        kernel: mvm_core::backend::KernelPaths {
            bzimage: "/nonexistent/bzImage".into(),
            vmlinux: "/nonexistent/vmlinux".into(),
        },
        initramfs: "/nonexistent/initramfs".into(),
        rootfs: "/nonexistent/rootfs.ext4".into(),
        kernel_release: "test".into(),
        dir: dir.to_owned(),
    }
}

fn write_manifest(dir: &std::path::Path) {
    let manifest = mvm_image::Manifest::bare(&"0".repeat(64), mvm_image::ImageKind::Default, 16);
    fs_err::create_dir_all(dir).unwrap();
    fs_err::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
}

/// In a child process: create one transient machine (no disk) with NAT and
/// print its record as JSON.
fn child(home: &str) {
    let rt = mvm_runtime::Runtime::open(mvm_core::MvmHome::new(home)).unwrap();
    let opts = mvm_runtime::ops::create::CreateOptions {
        backend: mvm_core::backend::BackendChoice::Qemu,
        transient: true,
        network: Some(mvm_core::instance::NetworkMode::Nat),
        ..Default::default()
    };
    let created = mvm_runtime::ops::create::create(
        &rt,
        &opts,
        &fake_image(&std::path::Path::new(home).join("image")),
    )
    .unwrap();
    let cfg = mvm_runtime::resources::network::settings(rt.config()).unwrap();
    let rec = mvm_runtime::resources::network::allocate_and_record(
        rt.registry(),
        &cfg,
        &created.record.name,
    )
    .unwrap();
    drop(created.lock);
    println!("RECORD {}", serde_json::to_string(&rec).unwrap());
}

#[test]
fn twenty_processes_allocate_distinct_identities() {
    if let Ok(home) = std::env::var(CHILD_ENV) {
        child(&home);
        return;
    }
    if !rustix::process::geteuid().is_root() {
        mvm_core::testing::skip(&format!(
            "SKIPPED: {TEST_NAME}: addresses are allocated only as root (TAP networking)"
        ));
        return;
    }
    let home = tempfile::tempdir().unwrap();
    write_manifest(&home.path().join("image"));
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..20)
        .map(|_| {
            Command::new(&exe)
                .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, home.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut recs = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.split_once("RECORD ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("child printed no record: {text}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        recs.push(v);
    }
    let distinct = |f: &dyn Fn(&serde_json::Value) -> String| {
        let mut v: Vec<String> = recs.iter().map(f).collect();
        v.sort();
        v.dedup();
        v.len()
    };
    assert_eq!(distinct(&|r| r["name"].to_string()), 20);
    assert_eq!(distinct(&|r| r["vsock_cid"].to_string()), 20);
    assert_eq!(distinct(&|r| r["net"]["ip"].to_string()), 20);
    assert_eq!(distinct(&|r| r["net"]["mac"].to_string()), 20);
    assert_eq!(distinct(&|r| r["net"]["tap"].to_string()), 20);
    for r in &recs {
        assert!(r["net"]["tap"].as_str().unwrap().len() <= 15);
    }
    // The registry agrees with what the processes were told.
    let rt = mvm_runtime::Runtime::open(mvm_core::MvmHome::new(home.path())).unwrap();
    assert_eq!(mvm_runtime::ops::list::list(&rt).unwrap().len(), 20);
}
