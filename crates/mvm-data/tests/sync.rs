//! Write-back of a guest-modified image to a host directory.

use crate::helpers::*;
use mvm_data::drive::{self, DriveSize};
use mvm_data::sync::{self, MirrorOptions, SyncError};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A host directory with files, subdirectories, symlinks and an exec bit.
fn make_host_tree(root: &Path) {
    put(&root.join("README"), b"hello\n", 0o644);
    put(&root.join("bin/tool"), b"#!/bin/sh\necho hi\n", 0o755);
    put(&root.join("src/lib/a.rs"), b"fn a() {}\n", 0o644);
    put(&root.join("src/lib/b.rs"), b"fn b() {}\n", 0o600);
    put(&root.join("old/gone.txt"), b"bye", 0o644);
    put(&root.join("same-size"), b"AAAA", 0o644);
    put(&root.join("becomes-dir"), b"file", 0o644);
    fs_err::create_dir_all(root.join("empty")).unwrap();
    symlink("bin/tool", root.join("tool-link")).unwrap();
    symlink("/etc/hostname", root.join("abs-link")).unwrap();
    symlink("README", root.join("retarget")).unwrap();
}

/// What a guest might do to it.
fn guest_changes(root: &Path) {
    put(&root.join("NEW"), b"new file\n", 0o640);
    put(&root.join("src/lib/a.rs"), b"fn a() { changed() }\n", 0o644);
    put(&root.join("same-size"), b"BBBB", 0o644);
    fs_err::set_permissions(
        root.join("src/lib/b.rs"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    fs_err::remove_dir_all(root.join("old")).unwrap();
    fs_err::remove_file(root.join("README")).unwrap();
    fs_err::remove_file(root.join("retarget")).unwrap();
    symlink("bin/tool", root.join("retarget")).unwrap();
    fs_err::remove_file(root.join("becomes-dir")).unwrap();
    put(&root.join("becomes-dir/inner"), b"x", 0o700);
    put(&root.join("newdir/deep/f"), b"deep", 0o755);
    symlink("../NEW", root.join("newdir/up")).unwrap();
}

#[test]
fn round_trip_new_changed_deleted_modes_symlinks() {
    if !have_e2fsprogs("round_trip") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    make_host_tree(&host);
    let img = dir.path().join("rw.ext4");
    drive::build_ext4_from_dir(
        &host,
        &img,
        "mvm-rw0",
        DriveSize::AutoPlus { extra_mib: 16 },
        false,
    )
    .unwrap();

    // Simulate the guest: rebuild the image from a modified copy.
    let guest = dir.path().join("guest");
    copy_tree(&host, &guest);
    guest_changes(&guest);
    drive::build_ext4_from_dir(
        &guest,
        &img,
        "mvm-rw0",
        DriveSize::AutoPlus { extra_mib: 16 },
        false,
    )
    .unwrap();

    let scratch = tempfile::tempdir().unwrap();
    sync::extract_image(&img, scratch.path()).unwrap();
    assert_eq!(
        snapshot(scratch.path()),
        snapshot(&guest),
        "extraction differs"
    );

    let dry = sync::diff(scratch.path(), &host).unwrap();
    let before = snapshot(&host);
    assert_eq!(before, snapshot(&host), "diff changed something");
    let changes = sync::mirror(scratch.path(), &host, &MirrorOptions::default()).unwrap();
    assert_eq!(changes, dry, "dry run and real run disagree");
    assert_eq!(
        snapshot(&host),
        snapshot(&guest),
        "host differs from the guest's tree"
    );

    let sorted = |v: &[PathBuf]| {
        let mut v: Vec<String> = v.iter().map(|p| p.display().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted(&changes.added),
        [
            "NEW",
            "becomes-dir/inner",
            "newdir",
            "newdir/deep",
            "newdir/deep/f",
            "newdir/up"
        ]
    );
    assert_eq!(
        sorted(&changes.changed),
        [
            "becomes-dir",
            "retarget",
            "same-size",
            "src/lib/a.rs",
            "src/lib/b.rs"
        ]
    );
    assert_eq!(sorted(&changes.deleted), ["README", "old", "old/gone.txt"]);
    assert_eq!(changes.to_string(), "6 added, 5 changed, 3 deleted");
    // Idempotent.
    assert!(sync::diff(scratch.path(), &host).unwrap().is_empty());
    assert!(
        sync::mirror(scratch.path(), &host, &MirrorOptions::default())
            .unwrap()
            .is_empty()
    );
    // The one-call form agrees, and leaves no scratch directory beside the image.
    assert!(
        sync::write_back(&img, &host, &MirrorOptions::default())
            .unwrap()
            .is_empty()
    );
    let beside: Vec<_> = fs_err::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".writeback-"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    // No temporary files are left.
    assert!(
        !snapshot(&host)
            .keys()
            .any(|p| p.to_string_lossy().contains(".mvm-sync-"))
    );
}

#[test]
fn never_follows_symlinks_out_of_the_host_dir() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    put(&outside.join("precious"), b"keep me", 0o644);
    let host = dir.path().join("host");
    fs_err::create_dir_all(&host).unwrap();
    // Host symlinks pointing outside, to a directory and to a file.
    symlink(&outside, host.join("escape-dir")).unwrap();
    symlink(outside.join("precious"), host.join("escape-file")).unwrap();
    symlink(&outside, host.join("doomed")).unwrap();

    // The new tree wants real entries under those names.
    let src = dir.path().join("src");
    put(&src.join("escape-dir/precious"), b"overwritten?", 0o644);
    put(&src.join("escape-file"), b"overwritten?", 0o644);
    symlink("/", src.join("root-link")).unwrap();

    let changes = sync::mirror(&src, &host, &MirrorOptions::default()).unwrap();
    assert_eq!(fs_err::read(outside.join("precious")).unwrap(), b"keep me");
    assert_eq!(snapshot(&outside).len(), 1);
    assert_eq!(snapshot(&host), snapshot(&src));
    assert!(changes.deleted.contains(&PathBuf::from("doomed")));
    // The symlink to / was created as a link, and nothing was written through it.
    assert_eq!(
        fs_err::read_link(host.join("root-link")).unwrap(),
        Path::new("/")
    );

    // A host dir that is itself a symlink is resolved once, then used via fds.
    let alias = dir.path().join("alias");
    symlink(&host, &alias).unwrap();
    assert!(sync::diff(&src, &alias).unwrap().is_empty());
}

#[test]
fn set_id_bits_are_not_written_back_and_owner_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    put(&src.join("suid"), b"x", 0o4755);
    let host = dir.path().join("host");
    fs_err::create_dir_all(&host).unwrap();
    let opts = if is_root() {
        MirrorOptions {
            owner: Some((4321, 4321)),
        }
    } else {
        MirrorOptions::owner_of(&host).unwrap()
    };
    sync::mirror(&src, &host, &opts).unwrap();
    assert_eq!(mode_of(&host.join("suid")), 0o755);
    assert_eq!(uid_of(&host.join("suid")), opts.owner.unwrap().0);
}

#[test]
fn damaged_image_is_an_error_and_extraction_needs_an_empty_dir() {
    if !have_e2fsprogs("damaged_image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("junk.ext4");
    fs_err::write(&img, vec![0u8; 1 << 20]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = sync::extract_image(&img, out.path()).unwrap_err();
    assert!(matches!(e, SyncError::Damaged { .. }), "{e}");

    let empty = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.ext4");
    drive::build_ext4_from_dir(empty.path(), &good, "g", DriveSize::Auto, true).unwrap();
    put(&out.path().join("x"), b"", 0o644);
    let e = sync::extract_image(&good, out.path()).unwrap_err();
    assert!(matches!(e, SyncError::NotEmpty { .. }), "{e}");
}

/// Timings for the report: a 50 MB directory through image build, extract
/// and mirror. Run with `cargo test -p mvm-data -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check"]
fn measure_50mb_round_trip() {
    if !have_e2fsprogs("measure") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    let mut seed = 0x1234_5678u64;
    for i in 0..50 {
        let mut data = vec![0u8; 1 << 20];
        for chunk in data.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        put(&host.join(format!("d{}/f{i}", i % 5)), &data, 0o644);
    }
    for i in 0..500 {
        put(
            &host.join(format!("small/s{i}")),
            format!("{i}").as_bytes(),
            0o644,
        );
    }
    let img = dir.path().join("rw.ext4");
    let t = Instant::now();
    let built = drive::build_ext4_from_dir(&host, &img, "rw", DriveSize::Auto, false).unwrap();
    eprintln!(
        "build 50 MB (+500 small files): {:?}, image {} MiB",
        t.elapsed(),
        built.size_bytes >> 20
    );
    let t = Instant::now();
    let built = drive::build_ext4_from_dir(
        &host,
        &img,
        "rw",
        DriveSize::AutoPlus { extra_mib: 1024 },
        false,
    )
    .unwrap();
    eprintln!(
        "build with +1 GiB headroom: {:?}, image {} MiB",
        t.elapsed(),
        built.size_bytes >> 20
    );
    let scratch = tempfile::tempdir().unwrap();
    let t = Instant::now();
    sync::extract_image(&img, scratch.path()).unwrap();
    eprintln!("e2fsck + rdump: {:?}", t.elapsed());
    let t = Instant::now();
    let c = sync::mirror(scratch.path(), &host, &MirrorOptions::default()).unwrap();
    eprintln!("mirror (unchanged, full compare): {:?} ({c})", t.elapsed());
    fs_err::remove_dir_all(host.join("d0")).unwrap();
    let t = Instant::now();
    let c = sync::mirror(scratch.path(), &host, &MirrorOptions::default()).unwrap();
    eprintln!("mirror (10 MB to rewrite): {:?} ({c})", t.elapsed());
    let t = Instant::now();
    let c = sync::write_back(&img, &host, &MirrorOptions::default()).unwrap();
    eprintln!("write_back total (unchanged): {:?} ({c})", t.elapsed());
}
