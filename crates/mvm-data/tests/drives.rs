//! Config and secrets drives, and the generic image builder.

use crate::helpers::*;
use mvm_data::drive::{
    self, ConfigDrive, ConfigJson, DriveError, DriveSize, ImageFileKind, SecretsDrive,
    stat_in_image,
};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

#[test]
fn config_drive_has_0444_root_owned_files_and_label() {
    if !have_e2fsprogs("config_drive") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("user.txt");
    put(&extra, b"hello", 0o600);
    let img = dir.path().join("inst").join("config.ext4");
    fs_err::create_dir_all(img.parent().unwrap()).unwrap();
    let mut cfg = ConfigJson::new("0123abcd", "web-1");
    cfg.ip = Some("10.77.0.2".parse().unwrap());
    cfg.prefix_len = Some(24);
    cfg.gateway = Some("10.77.0.1".parse().unwrap());
    cfg.role = Some("db".into());
    cfg.extra.insert("team".into(), "blue".into());
    let t = Instant::now();
    let built = ConfigDrive::build(&img, &cfg, &[("user.txt".into(), extra.clone())]).unwrap();
    eprintln!("config drive built in {:?}", t.elapsed());
    assert_eq!(built.label, "mvm-config");
    assert_eq!(label_of(&img), "mvm-config");
    assert_eq!(mode_of(&img), 0o600);
    for name in ["/config.json", "/user.txt"] {
        let st = stat_in_image(&img, name).unwrap();
        assert_eq!(
            (st.mode, st.uid, st.gid, st.kind),
            (0o444, 0, 0, ImageFileKind::File),
            "{name}"
        );
    }
    let root = stat_in_image(&img, "/").unwrap();
    assert_eq!((root.uid, root.gid, root.kind), (0, 0, ImageFileKind::Dir));
    // The content round-trips.
    let out = tempfile::tempdir().unwrap();
    mvm_data::sync::extract_image(&img, out.path()).unwrap();
    let back: ConfigJson =
        serde_json::from_slice(&fs_err::read(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(back, cfg);
    assert_eq!(fs_err::read(out.path().join("user.txt")).unwrap(), b"hello");
    // No staging directory is left beside the image.
    let left: Vec<_> = fs_err::read_dir(img.parent().unwrap()).unwrap().collect();
    assert_eq!(left.len(), 1);

    // Rebuilding replaces the image.
    cfg.name = "web-2".into();
    ConfigDrive::build(&img, &cfg, &[]).unwrap();
    assert!(matches!(
        stat_in_image(&img, "/user.txt"),
        Err(DriveError::Tool { .. })
    ));

    // Reserved and bad names are refused.
    for bad in ["config.json", "a/b", ".."] {
        let e = ConfigDrive::build(&img, &cfg, &[(bad.into(), extra.clone())]).unwrap_err();
        assert!(matches!(e, DriveError::BadFileName { .. }), "{bad}: {e}");
    }
}

#[test]
fn secrets_drive_is_0600_with_0400_root_files_and_no_leftovers() {
    if !have_e2fsprogs("secrets_drive") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let a = src.join("a");
    let b = src.join("b");
    put(&a, b"s3cr3t-value-A", 0o644);
    put(&b, b"s3cr3t-value-B\n", 0o600);
    if is_root() {
        // Source files owned by somebody else must still end up 0:0.
        rustix::fs::chown(
            &a,
            Some(rustix::fs::Uid::from_raw(1234)),
            Some(rustix::fs::Gid::from_raw(1234)),
        )
        .unwrap();
    }
    let inst = dir.path().join("inst");
    fs_err::create_dir_all(&inst).unwrap();
    let img = inst.join("secrets.ext4");
    let t = Instant::now();
    SecretsDrive::build(
        &img,
        &[("API_KEY".into(), a.clone()), ("db.pass".into(), b.clone())],
    )
    .unwrap();
    eprintln!("secrets drive built in {:?}", t.elapsed());
    assert_eq!(mode_of(&img), 0o600);
    assert_eq!(label_of(&img), "mvm-secrets");
    for name in ["/API_KEY", "/db.pass"] {
        let st = stat_in_image(&img, name).unwrap();
        assert_eq!((st.mode, st.uid, st.gid), (0o400, 0, 0), "{name}");
    }
    let names: Vec<_> = fs_err::read_dir(&inst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secrets.ext4"], "staging left behind");
    let out = tempfile::tempdir().unwrap();
    mvm_data::sync::extract_image(&img, out.path()).unwrap();
    assert_eq!(
        fs_err::read(out.path().join("db.pass")).unwrap(),
        b"s3cr3t-value-B\n"
    );

    // An unreadable or missing secret fails before anything changes, and
    // the error names the file but never the value.
    let before = fs_err::read(&img).unwrap();
    let missing = dir.path().join("missing");
    let e = SecretsDrive::build(
        &img,
        &[("A".into(), a.clone()), ("B".into(), missing.clone())],
    )
    .unwrap_err();
    let chain = error_chain(&e);
    assert!(chain.contains(&missing.display().to_string()), "{chain}");
    assert!(!chain.contains("s3cr3t"), "{chain}");
    assert_eq!(fs_err::read(&img).unwrap(), before, "image modified");
    if !is_root() {
        fs_err::set_permissions(&b, std::fs::Permissions::from_mode(0o000)).unwrap();
        let e = SecretsDrive::build(&img, &[("B".into(), b.clone())]).unwrap_err();
        assert!(error_chain(&e).contains("cannot read"), "{e}");
    }
    let e =
        SecretsDrive::build(&img, &[("A".into(), a.clone()), ("A".into(), b.clone())]).unwrap_err();
    assert!(matches!(e, DriveError::Duplicate { .. }), "{e}");
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn generic_image_keeps_modes_owners_and_symlinks() {
    if !have_e2fsprogs("generic_image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    put(&src.join("bin/run"), b"#!/bin/sh\n", 0o755);
    put(&src.join("priv"), b"p", 0o600);
    std::os::unix::fs::symlink("bin/run", src.join("link")).unwrap();
    if is_root() {
        rustix::fs::chown(
            src.join("priv"),
            Some(rustix::fs::Uid::from_raw(1000)),
            Some(rustix::fs::Gid::from_raw(1000)),
        )
        .unwrap();
    }
    let img = dir.path().join("x.ext4");
    let built = drive::build_ext4_from_dir(
        &src,
        &img,
        "data",
        DriveSize::AutoPlus { extra_mib: 64 },
        false,
    )
    .unwrap();
    assert_eq!(built.size_bytes, (16 + 64) << 20);
    assert_eq!(stat_in_image(&img, "/bin/run").unwrap().mode, 0o755);
    assert_eq!(
        stat_in_image(&img, "/link").unwrap().kind,
        ImageFileKind::Symlink
    );
    if is_root() {
        assert_eq!(stat_in_image(&img, "/priv").unwrap().uid, 1000);
    }
    // Too small an explicit size is refused up front.
    put(&src.join("big"), &vec![7u8; 3 << 20], 0o644);
    let e = drive::build_ext4_from_dir(
        &src,
        &dir.path().join("y.ext4"),
        "data",
        DriveSize::Mib(2),
        true,
    )
    .unwrap_err();
    assert!(matches!(e, DriveError::TooSmall { .. }), "{e}");
    // A bad label is refused.
    let e = drive::build_ext4_from_dir(&src, &img, "this-label-is-too-long", DriveSize::Auto, true)
        .unwrap_err();
    assert!(matches!(e, DriveError::BadLabel { .. }), "{e}");
    let _: PathBuf = built.path;
}
