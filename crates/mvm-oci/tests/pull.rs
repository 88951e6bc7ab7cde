//! Pulls from a real registry (docker-registry) of images built with
//! umoci and pushed with skopeo.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mvm_core::MvmHome;
use mvm_oci::{PullError, PullOptions, PullReport, Quiet};

use crate::common::{self, Registry};

fn opts() -> PullOptions {
    PullOptions {
        insecure: true,
        docker_config: None,
        ..PullOptions::default()
    }
}

fn pull(home: &MvmHome, reference: &str, o: &PullOptions) -> Result<PullReport, PullError> {
    common::rt().block_on(mvm_oci::pull(
        home,
        reference,
        o,
        Arc::new(Quiet),
        mvm_oci::CancellationToken::new(),
    ))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The converted tree and ext4 of the `app` image hold what its layers say.
fn check_app_tree(tree: &Path, rootfs: &Path) {
    assert!(!tree.join("old/gone.txt").exists(), "whiteout applied");
    assert!(tree.join("old/kept.txt").is_file());
    let mut opq: Vec<String> = fs_err::read_dir(tree.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    opq.sort();
    assert_eq!(
        opq,
        ["upper"],
        "opaque directory holds only the upper layer"
    );
    let a = fs_err::metadata(tree.join("data/original")).unwrap();
    let b = fs_err::metadata(tree.join("data/link")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link across layers");
    let suid = fs_err::metadata(tree.join("usr/bin/suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(
        fs_err::read_link(tree.join("etc/resolv.conf")).unwrap(),
        Path::new("../run/systemd/resolve/stub-resolv.conf")
    );
    assert!(!tree.join("etc/hosts").exists());
    // Only mvm (root) can reach the image's setuid files on the host.
    assert_eq!(fs_err::metadata(tree).unwrap().mode() & 0o777, 0o700);
    // Nothing of mvm's in the tree.
    assert!(!tree.join("sbin/mvm-agent").exists());
    assert!(!tree.join("etc/mvm").exists());
    if rustix::process::geteuid().is_root() {
        let own = fs_err::metadata(tree.join("home/app/own")).unwrap();
        assert_eq!((own.uid(), own.gid()), (1000, 1000));
        assert_eq!(fs_err::metadata(tree.join("home/app")).unwrap().uid(), 1000);
        let x = rustix::fs::lgetxattr(tree.join("data/xattr"), "user.mvm", &mut [0u8; 16]);
        assert_eq!(x.ok(), Some(3), "user xattr kept");
    }
    // The ext4 has the same (mkfs.ext4 -d).
    let st = common::debugfs(rootfs, "stat /usr/bin/suid");
    assert!(st.contains("Mode:  04755"), "{st}");
    let st = common::debugfs(rootfs, "stat /data/link");
    assert!(st.contains("Links: 2"), "{st}");
    let ls = common::debugfs(rootfs, "ls /opq");
    assert!(ls.contains("upper") && !ls.contains("lower1"), "{ls}");
    assert!(common::debugfs(rootfs, "stat /old/gone.txt").contains("File not found"));
    if rustix::process::geteuid().is_root() {
        let st = common::debugfs(rootfs, "stat /home/app/own");
        assert!(st.contains("User:  1000"), "{st}");
        let ea = common::debugfs(rootfs, "ea_list /data/xattr");
        assert!(ea.contains("user.mvm"), "{ea}");
    }
}

#[test]
fn pull_converts_caches_and_shares_layers() {
    if common::missing("pull_converts_caches_and_shares_layers") {
        return;
    }
    let layout = common::build_layout();
    let reg = Registry::start(None);
    common::push(&layout.path, "app", &reg, "test/app:1", None, false);
    common::push(&layout.path, "app2", &reg, "test/app:2", None, false);
    let (_d, home) = common::temp_home();

    let reference = format!("{}/test/app:1", reg.host());
    let t = Instant::now();
    let r = pull(&home, &reference, &opts()).unwrap();
    eprintln!(
        "pull+convert {reference}: {:?} (download {:?}, convert {:?}), {} layers, {} bytes downloaded",
        t.elapsed(),
        r.download_time,
        r.convert_time,
        r.layers,
        r.downloaded_bytes
    );
    assert_eq!(r.reference, reference);
    assert_eq!(r.layers, 2);
    assert_eq!(r.layers_downloaded, 2);
    assert_eq!(r.cached_bytes, 0);
    assert!(r.unpacked.is_some());
    assert_eq!(r.image.kind, mvm_image::ImageKind::Oci);
    let want_manifest = common::descriptor(&layout.path, "app")["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(r.manifest_digest, want_manifest);
    check_app_tree(&r.image.tree(), &r.image.rootfs);

    // The config is stored with the image.
    let oci = r.image.oci().unwrap().unwrap();
    let c = &oci.config;
    assert_eq!(c.user.as_deref(), Some("app"));
    assert_eq!(c.working_dir.as_deref(), Some("/work"));
    assert!(c.env.contains(&"GREETING=hello".to_owned()));
    assert_eq!(
        c.entrypoint.as_deref(),
        Some(&["/bin/sh".to_owned(), "-c".to_owned()][..])
    );
    assert_eq!(c.exposed_ports, ["8080/tcp"]);
    assert_eq!(c.labels["org.example.test"], "mvm");
    // And found by the reference, also in its short forms.
    let got = mvm_oci::find(&home, &reference).unwrap().unwrap();
    assert_eq!(got.digest, r.image.digest);
    let listed = mvm_image::list(&home).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, reference);
    assert_eq!(listed[0].source, "registry");
    assert_eq!(
        listed[0].manifest_digest.as_deref(),
        Some(want_manifest.as_str())
    );

    // Pulling again downloads nothing and converts nothing.
    let again = pull(&home, &reference, &opts()).unwrap();
    assert_eq!((again.layers_downloaded, again.downloaded_bytes), (0, 0));
    assert!(again.unpacked.is_none());
    assert_eq!(again.image.digest, r.image.digest);

    // A second tag sharing two layers downloads only the new one.
    let r2 = pull(&home, &format!("{}/test/app:2", reg.host()), &opts()).unwrap();
    eprintln!(
        "second tag: {} of {} layers downloaded ({} bytes), {} bytes from the cache",
        r2.layers_downloaded, r2.layers, r2.downloaded_bytes, r2.cached_bytes
    );
    assert_eq!(r2.layers, 3);
    assert_eq!(r2.layers_downloaded, 1);
    assert_eq!(r2.cached_bytes, r.downloaded_bytes);
    assert!(r2.image.tree().join("v2.txt").is_file());

    // Removing one keeps the shared blobs; removing both frees them all.
    let rm = mvm_oci::remove(&home, &reference).unwrap();
    assert!(rm.image_removed);
    let gc = rm.gc.unwrap();
    assert_eq!(
        gc.blobs, 2,
        "the manifest and config of :1 go, shared layers stay"
    );
    let rm2 = mvm_oci::remove(&home, &format!("{}/test/app:2", reg.host())).unwrap();
    assert_eq!(rm2.gc.unwrap().blobs, 5);
    assert!(mvm_image::list(&home).unwrap().is_empty());
    let left = fs_err::read_dir(home.blobs_dir().join("sha256"))
        .unwrap()
        .count();
    assert_eq!(left, 0);
}

#[test]
fn docker_v2s2_zstd_and_multi_platform_indexes() {
    if common::missing("docker_v2s2_zstd_and_multi_platform_indexes") {
        return;
    }
    let layout = common::build_layout();
    let reg = Registry::start(None);
    // Docker v2 schema 2 manifest.
    let mut c = std::process::Command::new("skopeo");
    c.args([
        "--insecure-policy",
        "copy",
        "-q",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
    ])
    .arg(format!("oci:{}:app", layout.path.display()))
    .arg(format!("docker://{}/test/v2:1", reg.host()));
    common::run(&mut c);
    // zstd layers (recompressed into another layout first, so skopeo
    // does not reuse the gzip blobs).
    let z = layout.dir.path().join("zstd");
    common::skopeo_copy(
        &format!("oci:{}:app", layout.path.display()),
        &format!("oci:{}:app", z.display()),
        &["--dest-compress", "--dest-compress-format", "zstd"],
    );
    let zm = common::descriptor(&z, "app");
    let zman = common::blob_json(&z, zm["digest"].as_str().unwrap());
    assert!(
        zman["layers"][0]["mediaType"]
            .as_str()
            .unwrap()
            .ends_with("zstd")
    );
    common::push(&z, "app", &reg, "test/zstd:1", None, false);
    common::push(&layout.path, "multi", &reg, "test/multi:1", None, true);
    common::push(&layout.path, "armonly", &reg, "test/arm:1", None, true);
    let (_d, home) = common::temp_home();

    let v2 = pull(&home, &format!("{}/test/v2:1", reg.host()), &opts()).unwrap();
    check_app_tree(&v2.image.tree(), &v2.image.rootfs);
    // zstd: other blobs, same config, so the converted image is reused;
    // the zstd layers are still fetched and unpacked into a fresh home.
    let zs = pull(&home, &format!("{}/test/zstd:1", reg.host()), &opts()).unwrap();
    assert_eq!(zs.layers_downloaded, 2);
    assert!(
        zs.unpacked.is_none(),
        "same config digest: conversion cache hit"
    );
    assert_eq!(zs.image.digest, v2.image.digest);
    let (_d2, home2) = common::temp_home();
    let zs2 = pull(&home2, &format!("{}/test/zstd:1", reg.host()), &opts()).unwrap();
    assert!(zs2.unpacked.is_some());
    check_app_tree(&zs2.image.tree(), &zs2.image.rootfs);

    // A two-platform index resolves to linux/amd64.
    let m = pull(&home, &format!("{}/test/multi:1", reg.host()), &opts()).unwrap();
    assert!(m.index_digest.is_some());
    assert_eq!(
        m.manifest_digest,
        common::descriptor(&layout.path, "app")["digest"]
            .as_str()
            .unwrap()
    );
    // An index without linux/amd64 names what it has.
    let e = pull(&home, &format!("{}/test/arm:1", reg.host()), &opts()).unwrap_err();
    let msg = chain(&e);
    assert!(
        msg.contains("linux/arm64") && msg.contains("test/arm:1"),
        "{msg}"
    );
    // So does a single-platform image of another architecture.
    common::push(&layout.path, "arm", &reg, "test/armsingle:1", None, false);
    let e = pull(&home, &format!("{}/test/armsingle:1", reg.host()), &opts()).unwrap_err();
    assert!(chain(&e).contains("linux/arm64"), "{}", chain(&e));
}

#[test]
fn credentials_basic_auth_registry() {
    if common::missing("credentials_basic_auth_registry") {
        return;
    }
    let layout = common::build_layout();
    let reg = Registry::start(Some(("mvm", "s3cret")));
    common::push(
        &layout.path,
        "app",
        &reg,
        "test/app:1",
        Some("mvm:s3cret"),
        false,
    );
    let (_d, home) = common::temp_home();
    let reference = format!("{}/test/app:1", reg.host());

    let e = pull(&home, &reference, &opts()).unwrap_err();
    assert!(matches!(e, PullError::AuthRequired { .. }), "{}", chain(&e));
    assert!(e.to_string().contains("--password-stdin"), "{e}");

    let wrong = PullOptions {
        credentials: Some(mvm_oci::Credentials {
            username: "mvm".into(),
            password: "nope".into(),
        }),
        ..opts()
    };
    let e = pull(&home, &reference, &wrong).unwrap_err();
    assert!(
        matches!(e, PullError::BadCredentials { .. }),
        "{}",
        chain(&e)
    );
    assert!(e.to_string().contains(&reference), "{e}");
    assert!(!chain(&e).contains("nope"), "the password never shows");
    assert!(mvm_image::list(&home).unwrap().is_empty());

    let right = PullOptions {
        credentials: Some(mvm_oci::Credentials {
            username: "mvm".into(),
            password: "s3cret".into(),
        }),
        ..opts()
    };
    pull(&home, &reference, &right).unwrap();

    // From a Docker config file.
    let (_d2, home2) = common::temp_home();
    let cfg = home2.root().join("docker-config.json");
    fs_err::write(
        &cfg,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "bXZtOnMzY3JldA=="}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    let from_file = PullOptions {
        docker_config: Some(cfg),
        ..opts()
    };
    pull(&home2, &reference, &from_file).unwrap();
}

#[test]
fn bad_input_names_the_reference_and_leaves_the_store_alone() {
    if common::missing("bad_input_names_the_reference_and_leaves_the_store_alone") {
        return;
    }
    let layout = common::build_layout();
    let reg = Registry::start(None);
    common::push(&layout.path, "app", &reg, "test/app:1", None, false);
    common::push(&layout.path, "app2", &reg, "test/app:2", None, false);
    let (_d, home) = common::temp_home();
    pull(&home, &format!("{}/test/app:1", reg.host()), &opts()).unwrap();
    let before = mvm_image::list(&home).unwrap();

    // Unknown tag and repository.
    for missing in ["test/app:nope", "test/nothing:1"] {
        let reference = format!("{}/{missing}", reg.host());
        let e = pull(&home, &reference, &opts()).unwrap_err();
        assert!(matches!(e, PullError::NotFound { .. }), "{}", chain(&e));
        assert!(e.to_string().contains(&reference), "{e}");
    }
    // A registry that is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = pull(&home, &format!("127.0.0.1:{port}/test/app:1"), &opts()).unwrap_err();
    assert!(matches!(e, PullError::Unreachable { .. }), "{}", chain(&e));
    // A plain-HTTP registry without --insecure: the hint says so.
    let e = pull(
        &home,
        &format!("{}/test/app:1", reg.host()),
        &PullOptions {
            insecure: false,
            ..opts()
        },
    )
    .unwrap_err();
    assert!(chain(&e).contains("--insecure"), "{}", chain(&e));

    // A corrupted layer in the registry: the pull fails naming the layer.
    let l3 = common::blob_json(
        &layout.path,
        common::descriptor(&layout.path, "app2")["digest"]
            .as_str()
            .unwrap(),
    )["layers"][2]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = reg.blob_file(&l3);
    let good = fs_err::read(&file).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs_err::write(&file, &bad).unwrap();
    let reference = format!("{}/test/app:2", reg.host());
    let e = pull(&home, &reference, &opts()).unwrap_err();
    let msg = chain(&e);
    assert!(
        msg.contains(&reference) && msg.contains(&l3) && msg.contains("does not match"),
        "{msg}"
    );
    assert_eq!(mvm_image::list(&home).unwrap(), before, "store unchanged");
    assert!(mvm_oci::find(&home, &reference).unwrap().is_none());
    // Fixed: the re-pull succeeds (and needs only that layer).
    fs_err::write(&file, &good).unwrap();
    let r = pull(&home, &reference, &opts()).unwrap();
    assert_eq!(r.layers_downloaded, 1);
}

#[test]
fn truncated_download_fails_then_resumes() {
    if common::missing("truncated_download_fails_then_resumes") {
        return;
    }
    let layout = common::build_layout();
    let reg = Registry::start(None);
    common::push(&layout.path, "app", &reg, "test/app:1", None, false);
    let manifest = common::blob_json(
        &layout.path,
        common::descriptor(&layout.path, "app")["digest"]
            .as_str()
            .unwrap(),
    );
    // The busybox layer (the big one).
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    let proxy = common::CutProxy::start(reg.port);
    *proxy.cut.lock().unwrap() = Some((layer.clone(), size / 2));
    let (_d, home) = common::temp_home();
    let reference = format!("127.0.0.1:{}/test/app:1", proxy.port);

    let e = pull(&home, &reference, &opts()).unwrap_err();
    let msg = chain(&e);
    assert!(
        msg.contains(&reference) && msg.contains(&layer) && msg.contains("interrupted"),
        "{msg}"
    );
    assert!(mvm_image::list(&home).unwrap().is_empty());
    let partial = home
        .blobs_dir()
        .join("partial")
        .join(layer.trim_start_matches("sha256:"));
    let kept = fs_err::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < size, "{kept} of {size}");
    let kept_all: u64 = fs_err::read_dir(partial.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();

    *proxy.cut.lock().unwrap() = None;
    let r = pull(&home, &reference, &opts()).unwrap();
    eprintln!(
        "resumed: {} bytes were there, {} downloaded",
        r.resumed_bytes, r.downloaded_bytes
    );
    // Every partial blob is resumed: the cut layer's, and another layer's
    // when it had arrived whole but was not committed yet as the cut ended
    // the first pull (its download is then dropped half-way or complete).
    assert_eq!(r.resumed_bytes, kept_all, "{kept} of the cut layer");
    assert!(!partial.exists());
    check_app_tree(&r.image.tree(), &r.image.rootfs);
}
