//! Imports of `docker save`-format archives and OCI layouts written by
//! skopeo and umoci.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use mvm_core::MvmHome;
use mvm_image::{KernelSource, NoProgress, SourceKind};
use mvm_oci::{ImportError, ImportReport};

use crate::common;

fn import(
    home: &MvmHome,
    path: &std::path::Path,
    name: Option<&str>,
) -> Result<ImportReport, ImportError> {
    mvm_oci::import(
        home,
        path,
        name,
        &KernelSource::Debian,
        &NoProgress,
        Arc::new(AtomicBool::new(false)),
    )
}

#[test]
fn docker_archive_and_oci_layout_imports() {
    if common::missing("docker_archive_and_oci_layout_imports") {
        return;
    }
    let layout = common::build_layout();
    let src = format!("oci:{}:app", layout.path.display());
    let archive = layout.dir.path().join("app.tar");
    common::skopeo_copy(
        &src,
        &format!("docker-archive:{}:test/app:1", archive.display()),
        &[],
    );
    let (_d, home) = common::temp_home();

    // docker-archive: named by its RepoTags.
    let r = import(&home, &archive, None).unwrap();
    assert_eq!(r.reference, "docker.io/test/app:1");
    assert_eq!(r.source, SourceKind::DockerArchive);
    assert_eq!(r.layers, 2);
    let tree = r.image.tree();
    assert!(!tree.join("old/gone.txt").exists());
    assert!(tree.join("usr/bin/suid").is_file());
    let cfg = r.image.oci().unwrap().unwrap().config;
    assert_eq!(cfg.user.as_deref(), Some("app"));
    // Found by its short name, as Docker would.
    assert!(mvm_oci::find(&home, "test/app:1").unwrap().is_some());

    // The same archive gzip-compressed (`docker save | gzip`), renamed.
    let gz = layout.dir.path().join("app.tar.gz");
    {
        let mut enc = flate2::write::GzEncoder::new(
            fs_err::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        std::io::copy(&mut fs_err::File::open(&archive).unwrap(), &mut enc).unwrap();
        enc.finish().unwrap();
    }
    let r2 = import(&home, &gz, Some("mine:v1")).unwrap();
    assert_eq!(r2.reference, "docker.io/library/mine:v1");
    assert_eq!(
        r2.image.digest, r.image.digest,
        "same content, converted once"
    );
    assert!(r2.unpacked.is_none());

    // An OCI layout directory with several images: chosen by the tag.
    let e = import(&home, &layout.path, None).unwrap_err();
    assert!(matches!(e, ImportError::Ambiguous { .. }), "{e}");
    assert!(e.to_string().contains("app2"), "{e}");
    let (_d2, home2) = common::temp_home();
    let r3 = import(&home2, &layout.path, Some("localhost/imp:app2")).unwrap();
    assert_eq!(r3.source, SourceKind::OciLayout);
    assert_eq!(r3.layers, 3);
    assert!(r3.image.tree().join("v2.txt").is_file());
    assert!(!r3.image.tree().join("old/gone.txt").exists());
    assert_eq!(
        r3.manifest_digest,
        common::descriptor(&layout.path, "app2")["digest"]
            .as_str()
            .unwrap()
    );
    // A multi-platform entry resolves to linux/amd64.
    let r4 = import(&home2, &layout.path, Some("localhost/imp:multi")).unwrap();
    assert_eq!(
        r4.manifest_digest,
        common::descriptor(&layout.path, "app")["digest"]
            .as_str()
            .unwrap()
    );
    let e = import(&home2, &layout.path, Some("localhost/imp:armonly")).unwrap_err();
    assert!(format!("{e:?}").contains("linux/arm64"), "{e:?}");

    // A single-image layout written by skopeo, as a directory.
    let single = layout.dir.path().join("single");
    common::skopeo_copy(&src, &format!("oci:{}:latest", single.display()), &[]);
    let e = import(&home2, &single, None).unwrap_err();
    assert!(matches!(e, ImportError::NoName { .. }), "{e}");
    let r5 = import(&home2, &single, Some("localhost/single")).unwrap();
    assert_eq!(r5.reference, "localhost/single:latest");

    // A corrupt blob in a layout is refused, naming it; nothing is added.
    let before = mvm_image::list(&home2).unwrap();
    let bad = layout.dir.path().join("bad");
    common::skopeo_copy(&src, &format!("oci:{}:x", bad.display()), &[]);
    let m = common::blob_json(
        &bad,
        common::descriptor(&bad, "x")["digest"].as_str().unwrap(),
    );
    let l0 = m["layers"][0]["digest"].as_str().unwrap();
    let f = bad
        .join("blobs/sha256")
        .join(l0.trim_start_matches("sha256:"));
    let mut bytes = fs_err::read(&f).unwrap();
    bytes[100] ^= 1;
    fs_err::write(&f, &bytes).unwrap();
    let (_d3, home3) = common::temp_home();
    let e = import(&home3, &bad, Some("localhost/bad:x")).unwrap_err();
    let msg = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(msg.contains(l0.trim_start_matches("sha256:")), "{msg}");
    assert!(mvm_image::list(&home3).unwrap().is_empty());
    assert_eq!(mvm_image::list(&home2).unwrap(), before);

    // Not an image at all.
    let e = import(&home3, layout.dir.path(), None).unwrap_err();
    assert!(matches!(e, ImportError::Format { .. }), "{e}");
}
