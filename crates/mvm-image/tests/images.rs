//! Builds real images in a temporary `$MVM_HOME`.
//!
//! The kernel package download is shared between runs through a cache in
//! cargo's test tmpdir (symlinked as `$MVM_HOME/cache/kernel`), so only the
//! first run pays for the ~27 MB download.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mvm_core::MvmHome;
use mvm_image::{ImageKind, ImageSource, NoProgress, initramfs};

/// Why this machine cannot build images, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let tools = mvm_image::host_tools();
    let bad: Vec<String> = tools
        .iter()
        .filter(|t| !t.ok && t.tool != "apt-get")
        .map(|t| format!("{} ({})", t.tool, t.fix))
        .collect();
    if !bad.is_empty() {
        return Some(format!("missing host tools: {}", bad.join(", ")));
    }
    if mvm_image::kernel::resolve_debian_package(mvm_image::kernel::DEBIAN_METAPACKAGE).is_err()
        && !shared_kernel_cache()
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    {
        return Some("apt cannot resolve linux-image-cloud-amd64 (run apt-get update)".into());
    }
    None
}

fn shared_kernel_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mvm-image-kernel-cache")
}

/// A temporary `$MVM_HOME` whose kernel cache is the shared one.
fn temp_home() -> (tempfile::TempDir, MvmHome) {
    let dir = tempfile::tempdir().unwrap();
    let home = MvmHome::new(dir.path());
    fs_err::create_dir_all(home.cache_dir()).unwrap();
    fs_err::create_dir_all(shared_kernel_cache()).unwrap();
    std::os::unix::fs::symlink(shared_kernel_cache(), home.cache_dir().join("kernel")).unwrap();
    (dir, home)
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn default_image_builds_is_cached_and_boots() {
    if let Some(why) = missing_prerequisite() {
        mvm_core::testing::skip(&format!("SKIPPED: {why}"));
        return;
    }
    let (_dir, home) = temp_home();
    let t = Instant::now();
    let img = mvm_image::ensure_default(&home, &NoProgress).unwrap();
    let cold = t.elapsed();
    eprintln!("default image built in {cold:?} ({})", img.dir.display());
    assert_eq!(img.kind, ImageKind::Default);
    assert!(!img.kernel_release.is_empty());

    // The vmlinux is ELF; the bzImage is a bzImage.
    let mut head = [0u8; 4];
    fs_err::File::open(&img.kernel.vmlinux)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head, b"\x7fELF");

    // The initramfs has /init, the console node, busybox applets, modules.
    let entries = initramfs::list(&img.initramfs).unwrap();
    let find = |n: &str| {
        entries
            .iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("{n} not in the initramfs"))
    };
    assert_eq!(find("init").mode & 0o170_000, 0o100_000);
    assert_eq!(find("init").size as usize, mvm_image::AGENT_BINARY.len());
    find("sbin/mvm-agent");
    let console = find("dev/console");
    assert_eq!(
        (console.mode & 0o170_000, console.rdev),
        (0o020_000, (5, 1))
    );
    assert_eq!(find("dev/null").rdev, (1, 3));
    assert_eq!(find("bin/sh").mode & 0o170_000, 0o120_000);
    assert_eq!(find("bin/busybox").mode & 0o777, 0o755);
    for f in [
        "etc/passwd",
        "etc/group",
        "etc/hostname",
        "etc/hosts",
        "root",
        "tmp",
        "proc",
        "sys",
        "run",
        "mnt",
    ] {
        find(f);
    }
    let order = fs_err::read_to_string(img.tree().join("etc/mvm/modules.order")).unwrap();
    let order: Vec<&str> = order.lines().collect();
    let prefix = format!("lib/modules/{}/", img.kernel_release);
    for m in &order {
        assert!(m.ends_with(".ko"), "{m}");
        find(&format!("{prefix}{m}"));
    }
    for want in [
        "virtio_blk.ko",
        "virtio_net.ko",
        "vsock.ko",
        "vmw_vsock_virtio_transport.ko",
        "overlay.ko",
    ] {
        assert!(
            order.iter().any(|m| m.ends_with(&format!("/{want}"))),
            "{want} not in {order:?}"
        );
    }
    let pos = |n: &str| {
        order
            .iter()
            .position(|m| m.ends_with(&format!("/{n}")))
            .unwrap()
    };
    assert!(pos("vsock.ko") < pos("vmw_vsock_virtio_transport.ko"));

    // The rootfs is ext4 with the tree in it.
    assert!(debugfs(&img.rootfs, "stat /init").contains("Type: regular"));

    // A second build is a cache hit.
    let t = Instant::now();
    let again = mvm_image::ensure_default(&home, &NoProgress).unwrap();
    let warm = t.elapsed();
    eprintln!("cache hit in {warm:?}");
    assert_eq!(again, img);
    assert!(warm < Duration::from_secs(10), "a cache hit took {warm:?}");
    assert_eq!(mvm_image::get(&home, "default").unwrap(), img);
    let listed = mvm_image::list(&home).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, img.digest);
    let m: serde_json::Value =
        serde_json::from_slice(&fs_err::read(img.dir.join("manifest.json")).unwrap()).unwrap();
    eprintln!("manifest sizes: {}", m["sizes"]);

    // A machine disk.
    let disk = home.root().join("disk.ext4");
    let t = Instant::now();
    mvm_image::create_machine_disk(&img, &disk, 512).unwrap();
    eprintln!("machine disk (512 MiB) created in {:?}", t.elapsed());
    assert_eq!(fs_err::metadata(&disk).unwrap().len(), 512 << 20);
    assert!(debugfs(&disk, "stat /bin/busybox").contains("Type: regular"));

    boot_under_qemu(&img, home.root());
}

/// Boot the image once under QEMU/TCG and wait for the agent's ready line.
fn boot_under_qemu(img: &mvm_image::Image, dir: &Path) {
    let Some(qemu) = [
        "/usr/bin/qemu-system-x86_64",
        "/usr/local/bin/qemu-system-x86_64",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists()) else {
        mvm_core::testing::skip("SKIPPED (boot): qemu-system-x86_64 is not installed");
        return;
    };
    let log = dir.join("console.log");
    let child = Command::new(qemu)
        .args([
            "-M",
            "microvm",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&img.kernel.bzimage)
        .arg("-initrd")
        .arg(&img.initramfs)
        .args(["-append", "console=ttyS0 tsc_early_khz=2000000 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut guard = Kill(child);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(90);
    let mut delay = Duration::from_millis(50);
    // The console is a plain file: no readiness event exists, so poll it
    // with a bounded backoff until the deadline.
    let text = loop {
        let text = fs_err::read_to_string(&log).unwrap_or_default();
        let exited = guard.0.try_wait().unwrap().is_some();
        if text.contains("mvm-agent: ready")
            || text.contains("Kernel panic")
            || exited
            || Instant::now() >= deadline
        {
            break text;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(500));
    };
    drop(guard);
    let tail: String = text
        .lines()
        .rev()
        .take(25)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    if text.contains("mvm-agent: ready") {
        eprintln!("booted to `mvm-agent: ready` in {:?}", t.elapsed());
        return;
    }
    // The kernel must at least have reached our /init.
    assert!(
        text.contains("Run /init as init process"),
        "the guest never ran /init:\n{tail}"
    );
    panic!(
        "the kernel ran /init but the agent never printed `mvm-agent: ready`; console tail:\n{tail}"
    );
}

#[test]
fn custom_images_race_and_remove() {
    if let Some(why) = missing_prerequisite() {
        mvm_core::testing::skip(&format!("SKIPPED: {why}"));
        return;
    }
    let (_dir, home) = temp_home();
    let src = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(src.path().join("usr/bin")).unwrap();
    fs_err::write(src.path().join("usr/bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
    fs_err::create_dir_all(src.path().join("etc")).unwrap();
    fs_err::write(src.path().join("etc/os-release"), b"ID=test\n").unwrap();

    // Two builders of the same image at once: both succeed with one result.
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    mvm_image::build(
                        &home,
                        "mine",
                        ImageSource::FromDir(src.path().to_owned()),
                        64,
                        &NoProgress,
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert_eq!(results[0], results[1]);
    let img = &results[0];
    assert_eq!(img.kind, ImageKind::Custom);
    let leftovers: Vec<_> = fs_err::read_dir(home.images_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The rootfs is the user's tree plus the agent and modules; the
    // initramfs is mvm's.
    assert!(debugfs(&img.rootfs, "stat /usr/bin/hello").contains("Type: regular"));
    assert!(debugfs(&img.rootfs, "stat /sbin/mvm-agent").contains("Type: regular"));
    assert!(debugfs(&img.rootfs, "stat /etc/mvm/modules.order").contains("Type: regular"));
    assert!(debugfs(&img.rootfs, "stat /init").contains("not found"));
    let entries = initramfs::list(&img.initramfs).unwrap();
    assert!(entries.iter().any(|e| e.name == "init"));
    assert!(!entries.iter().any(|e| e.name == "usr/bin/hello"));

    // From a tarball of the same tree: another custom image.
    let tarf = home.root().join("t.tar");
    {
        let mut b = tar::Builder::new(fs_err::File::create(&tarf).unwrap());
        b.append_dir_all(".", src.path()).unwrap();
        b.finish().unwrap();
    }
    let t_img = mvm_image::build(
        &home,
        "fromtar",
        ImageSource::FromTar(tarf),
        64,
        &NoProgress,
    )
    .unwrap();
    assert!(debugfs(&t_img.rootfs, "stat /usr/bin/hello").contains("Type: regular"));
    assert_eq!(t_img.kernel, img.kernel.clone().with_dir(&t_img.dir));

    // Remove: the tag and the files go.
    mvm_image::remove(&home, "mine").unwrap();
    assert!(matches!(
        mvm_image::get(&home, "mine"),
        Err(mvm_image::ImageError::NotFound { .. })
    ));
    assert!(!img.dir.exists());
    assert_eq!(mvm_image::list(&home).unwrap().len(), 1);

    // Errors name their input.
    let err = mvm_image::build(
        &home,
        "x",
        ImageSource::FromDir("/no/such/dir".into()),
        64,
        &NoProgress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
}

trait WithDir {
    fn with_dir(self, dir: &Path) -> Self;
}
impl WithDir for mvm_core::backend::KernelPaths {
    fn with_dir(self, dir: &Path) -> Self {
        Self {
            bzimage: dir.join("bzImage"),
            vmlinux: dir.join("vmlinux"),
        }
    }
}
