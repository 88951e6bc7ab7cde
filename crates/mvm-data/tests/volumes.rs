//! The named-volume store.

use crate::helpers::*;
use mvm_core::MvmHome;
use mvm_data::volume::{Attachment, VolumeError, VolumeStore, volume_label};
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

#[test]
fn create_list_in_use_remove() {
    if !have_e2fsprogs("volumes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::new(&MvmHome::new(dir.path()));
    assert!(store.list().unwrap().is_empty());
    let t = Instant::now();
    let (path, created) = store.ensure("db", None).unwrap();
    eprintln!("1 GiB volume created in {:?}", t.elapsed());
    assert!(created);
    assert_eq!(path, dir.path().join("volumes/db.ext4"));
    assert_eq!(label_of(&path), "mvmvol-db");
    assert_eq!(mode_of(&path), 0o600);
    let meta = fs_err::metadata(&path).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        meta.blocks() * 512 < 128 << 20,
        "not sparse: {}",
        meta.blocks() * 512
    );
    // Second use: the same image, untouched.
    let mtime = meta.modified().unwrap();
    assert_eq!(store.ensure("db", None).unwrap(), (path.clone(), false));
    assert_eq!(fs_err::metadata(&path).unwrap().modified().unwrap(), mtime);

    let long = "a-very-long-volume-name";
    let (p2, _) = store.ensure(long, Some(32)).unwrap();
    assert_eq!(label_of(&p2), volume_label(long));
    assert_eq!(label_of(&p2).len(), 16);

    let names: Vec<String> = store.list().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, [long, "db"]);

    let att = [Attachment {
        machine: "web".into(),
        volume: "db".into(),
    }];
    let e = store.remove("db", &att).unwrap_err();
    assert!(matches!(e, VolumeError::InUse { .. }), "{e}");
    assert!(path.exists());
    store.remove("db", &[]).unwrap();
    assert!(!path.exists());
    assert!(matches!(
        store.remove("db", &[]),
        Err(VolumeError::NotFound { .. })
    ));
    assert!(matches!(
        store.ensure("../etc", None),
        Err(VolumeError::BadName { .. })
    ));
}
