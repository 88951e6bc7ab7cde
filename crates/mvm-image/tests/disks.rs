//! Machine disks cloned from a per-image template: real ext4 checked with
//! e2fsprogs, and the time against `mkfs.ext4 -d` (printed).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use mvm_core::backend::KernelPaths;
use mvm_image::{DiskCopy, Image, ImageKind, machine_disk};

fn tool(name: &str) -> bool {
    mvm_image::which(name).is_some()
}

fn run(cmd: &str, args: &[&str], file: &Path) -> (bool, String) {
    let out = Command::new(cmd).args(args).arg(file).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An image whose tree holds a few files (no kernel needed for disks).
fn fake_image(dir: &Path) -> Image {
    let tree = dir.join("tree");
    fs_err::create_dir_all(tree.join("etc")).unwrap();
    fs_err::write(tree.join("etc/hostname"), "template\n").unwrap();
    fs_err::write(tree.join("big"), vec![7u8; 3 << 20]).unwrap();
    // The template's size and inode count come from the manifest.
    let manifest = mvm_image::Manifest::bare("d", ImageKind::Custom, 16);
    fs_err::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    Image {
        name: "t".into(),
        digest: "d".into(),
        kind: ImageKind::Custom,
        kernel: KernelPaths {
            bzimage: dir.join("bzImage"),
            vmlinux: dir.join("vmlinux"),
        },
        initramfs: dir.join("initramfs.cpio"),
        rootfs: dir.join("rootfs.ext4"),
        kernel_release: "0".into(),
        dir: dir.to_owned(),
    }
}

#[test]
fn machine_disks_are_independent_ext4_copies_of_the_template() {
    if !["mkfs.ext4", "e2fsck", "debugfs", "dumpe2fs"]
        .iter()
        .all(|t| tool(t))
    {
        mvm_core::testing::skip(
            "SKIPPED: machine_disks_are_independent_ext4_copies: needs e2fsprogs",
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let image = fake_image(t.path());
    let a = t.path().join("a.ext4");
    let b = t.path().join("b.ext4");
    let t0 = Instant::now();
    machine_disk(&image, &a, 1024).unwrap();
    let first = t0.elapsed();
    let t1 = Instant::now();
    let how = machine_disk(&image, &b, 1024).unwrap();
    let second = t1.elapsed();
    let t2 = Instant::now();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "mvm-root", "-E", "root_owner=0:0", "-d"])
        .arg(image.tree())
        .arg(t.path().join("m.ext4"))
        .arg("1024M")
        .status()
        .unwrap();
    assert!(status.success());
    let mkfs = t2.elapsed();
    eprintln!(
        "machine disk: first (template + copy) {first:?}, next ({how:?}) {second:?}; mkfs.ext4 -d {mkfs:?}"
    );
    assert!(matches!(how, DiskCopy::Reflink | DiskCopy::Sparse { .. }));
    for d in [&a, &b] {
        assert_eq!(fs_err::metadata(d).unwrap().len(), 1 << 30);
        let (ok, out) = run("e2fsck", &["-fn"], d);
        assert!(ok, "e2fsck {d:?}: {out}");
        let (_, out) = run("dumpe2fs", &["-h"], d);
        assert!(out.contains("Filesystem volume name:   mvm-root"), "{out}");
        let (_, out) = run("debugfs", &["-R", "cat /etc/hostname"], d);
        assert!(out.contains("template"), "{out}");
    }
    // Writing to one disk changes neither the other nor the template.
    let (ok, out) = run("debugfs", &["-w", "-R", "rm /etc/hostname"], &a);
    assert!(ok, "{out}");
    let (_, out) = run("debugfs", &["-R", "cat /etc/hostname"], &a);
    assert!(!out.contains("template"), "{out}");
    for d in [&b, &mvm_image::disk::template_path(&image, 1024)] {
        let (_, out) = run("debugfs", &["-R", "cat /etc/hostname"], d);
        assert!(out.contains("template"), "{d:?}: {out}");
    }
    // A copy allocates about what the tree holds, not the disk size.
    let alloc = std::os::unix::fs::MetadataExt::blocks(&fs_err::metadata(&b).unwrap()) * 512;
    assert!(alloc < 64 << 20, "{alloc} bytes allocated");
}

/// The data extents of `path`: (offset, bytes) pairs, to compare copies
/// without reading their holes.
fn data_of(path: &Path) -> Vec<(u64, Vec<u8>)> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsFd;
    let mut f = fs_err::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Ok(data) = rustix::fs::seek(f.file().as_fd(), rustix::fs::SeekFrom::Data(pos)) else {
            break;
        };
        let hole = rustix::fs::seek(f.file().as_fd(), rustix::fs::SeekFrom::Hole(data)).unwrap();
        let mut buf = vec![0; (hole - data) as usize];
        f.seek(SeekFrom::Start(data)).unwrap();
        f.read_exact(&mut buf).unwrap();
        // Runs of zeros may be data in one file and holes in the other.
        if buf.iter().any(|b| *b != 0) {
            out.push((data, buf));
        }
        pos = hole;
    }
    out
}

#[test]
fn spare_disks_are_taken_whole_and_refilled_once() {
    if !["mkfs.ext4", "e2fsck", "debugfs"].iter().all(|t| tool(t)) {
        mvm_core::testing::skip(
            "SKIPPED: spare_disks_are_taken_whole_and_refilled_once: needs e2fsprogs",
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let image = fake_image(t.path());
    let spare = mvm_image::disk::spare_path(&image, 1024);
    // No template yet: nothing to refill from.
    assert!(!mvm_image::disk::refill_spare(&image, 1024).unwrap());
    let a = t.path().join("a.ext4");
    let how = machine_disk(&image, &a, 1024).unwrap();
    assert!(
        matches!(how, DiskCopy::Reflink | DiskCopy::Sparse { .. }),
        "{how:?}"
    );
    // Racing refills make exactly one spare.
    let made: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| mvm_image::disk::refill_spare(&image, 1024).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(made.iter().filter(|m| **m).count(), 1, "{made:?}");
    assert!(spare.is_file());
    assert!(
        !mvm_image::disk::refill_spare(&image, 1024).unwrap(),
        "a second spare"
    );
    let template = mvm_image::disk::template_path(&image, 1024);
    assert_eq!(data_of(&spare), data_of(&template));
    // The next disk is the spare, whole; the spare is gone until refilled.
    let b = t.path().join("b.ext4");
    assert_eq!(machine_disk(&image, &b, 1024).unwrap(), DiskCopy::Spare);
    assert!(!spare.exists());
    assert_eq!(fs_err::metadata(&b).unwrap().len(), 1 << 30);
    let (ok, out) = run("e2fsck", &["-fn"], &b);
    assert!(ok, "e2fsck: {out}");
    let (_, out) = run("debugfs", &["-R", "cat /etc/hostname"], &b);
    assert!(out.contains("template"), "{out}");
    // A partial left by a crashed refill is rewritten, not trusted.
    let partial = t.path().join(".machine-1024M.spare.partial");
    fs_err::write(&partial, b"torn").unwrap();
    assert!(mvm_image::disk::refill_spare(&image, 1024).unwrap());
    assert!(!partial.exists());
    assert_eq!(data_of(&spare), data_of(&template));
    // Writes to the machine's disk do not reach the new spare.
    let (ok, out) = run("debugfs", &["-w", "-R", "rm /etc/hostname"], &b);
    assert!(ok, "{out}");
    let (_, out) = run("debugfs", &["-R", "cat /etc/hostname"], &spare);
    assert!(out.contains("template"), "{out}");
}
