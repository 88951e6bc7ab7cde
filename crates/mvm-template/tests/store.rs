//! The store: atomic creation, immutability checks, references, removal,
//! leftovers, a full disk — with fake snapshots (no VMM needed).

use std::path::Path;

use mvm_core::backend::BackendKind;
use mvm_core::snapshot::{MemoryMode, SNAPSHOT_FORMAT, SnapshotDir, SnapshotError, SnapshotMeta};
use mvm_template::{Leftover, Provenance, Store, TemplateError, Verify, Wanted};

/// What a backend would have written into `snap`.
fn fake_snapshot(snap: &SnapshotDir, memory_mib: u32) {
    fs_err::write(snap.state(), b"device state").unwrap();
    let f = fs_err::File::create(snap.memory()).unwrap();
    f.set_len(u64::from(memory_mib) << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(f.file(), b"guest page", 4096).unwrap();
    snap.write_meta(&SnapshotMeta {
        format: SNAPSHOT_FORMAT,
        backend: BackendKind::Qemu,
        vmm_version: "QEMU 7.2".into(),
        cpus: 1,
        memory_mib,
        memory: MemoryMode::MemoryFile,
        drives: vec![],
        net: false,
        state_bytes: 12,
        memory_bytes: u64::from(memory_mib) << 20,
        created: "now".into(),
        jailed: false,
    })
    .unwrap();
}

fn provenance() -> Provenance {
    Provenance {
        image: "default".into(),
        image_digest: "abc".into(),
        kernel_release: "6.1.0".into(),
        snapshot_ms: 5,
        ..Default::default()
    }
}

fn make(store: &Store, name: &str) -> mvm_template::Template {
    let s = store.begin(name).unwrap();
    fake_snapshot(&s.snapshot(), 4);
    fs_err::write(s.disk(), vec![7u8; 1 << 16]).unwrap();
    s.commit(Provenance {
        disk_drive: Some("root".into()),
        ..provenance()
    })
    .unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs_err::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn commit_publishes_a_complete_template_once() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::at(t.path().join("templates")).unwrap();
    let tmpl = make(&store, "py");
    assert_eq!(store.get("py").unwrap(), tmpl);
    let m = &tmpl.manifest;
    assert_eq!((m.cpus, m.memory_mib, m.backend), (1, 4, BackendKind::Qemu));
    assert_eq!(m.files.len(), 4, "{:?}", m.files);
    assert_eq!(m.sizes.memory, 4 << 20);
    assert!(m.sizes.memory_allocated < 1 << 20, "sparse: {:?}", m.sizes);
    assert!(!tmpl.dir.join("creator").exists());
    tmpl.verify(Verify::Full).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "py");

    // The name is taken: early at begin, and for good at commit.
    assert!(matches!(
        store.begin("py"),
        Err(TemplateError::Exists { .. })
    ));
    let a = store.begin("race").unwrap();
    let b = store.begin("race").unwrap();
    fake_snapshot(&a.snapshot(), 4);
    fake_snapshot(&b.snapshot(), 4);
    let (bdir, adir) = (b.dir().to_owned(), a.dir().to_owned());
    a.commit(provenance()).unwrap();
    let e = b.commit(provenance()).unwrap_err();
    assert!(matches!(e, TemplateError::Exists { .. }), "{e}");
    assert!(!bdir.exists(), "the loser's files are removed");
    assert!(adir.exists());

    // Bad names, missing names.
    assert!(matches!(
        store.begin("Bad_Name"),
        Err(TemplateError::InvalidName { .. })
    ));
    let e = store.get("nope").unwrap_err();
    assert!(e.to_string().contains("mvm template ls"), "{e}");

    // Incompatible requests name what differs.
    let w = Wanted {
        backend: BackendKind::Qemu,
        vmm_version: "QEMU 7.2",
        kernel_release: "6.1.0",
        image_digest: "abc",
    };
    tmpl.check_compatible(&w).unwrap();
    let e = tmpl
        .check_compatible(&Wanted {
            image_digest: "def",
            ..w.clone()
        })
        .unwrap_err();
    assert!(e.to_string().contains("image abc"), "{e}");
    let e = tmpl
        .check_compatible(&Wanted {
            kernel_release: "6.2",
            ..w.clone()
        })
        .unwrap_err();
    assert!(e.to_string().contains("kernel"), "{e}");
    let e = tmpl
        .check_compatible(&Wanted {
            backend: BackendKind::Firecracker,
            ..w
        })
        .unwrap_err();
    assert!(e.to_string().contains("backend qemu"), "{e}");
}

#[test]
fn damaged_files_are_found_and_named() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::at(t.path().join("templates")).unwrap();
    let tmpl = make(&store, "d");
    let mem = tmpl.snapshot().memory();

    // A copy elsewhere changes fingerprints but not content: still fine.
    let mut other = tmpl.clone();
    other.dir = t.path().join("copy");
    fs_err::create_dir_all(other.dir.join("snapshot")).unwrap();
    for f in &tmpl.manifest.files {
        mvm_core::snapshot::copy_sparse(&tmpl.dir.join(&f.path), &other.dir.join(&f.path)).unwrap();
    }
    other.verify(Verify::Quick).unwrap();

    // One byte changed in place (same size): found by the hash.
    let f = fs_err::OpenOptions::new().write(true).open(&mem).unwrap();
    std::os::unix::fs::FileExt::write_at(f.file(), b"X", 4096).unwrap();
    drop(f);
    let e = tmpl.verify(Verify::Quick).unwrap_err();
    assert!(
        matches!(&e, TemplateError::Snapshot { source: SnapshotError::Corrupt { path, .. }, .. } if path == &mem),
        "{e}"
    );
    assert!(e.to_string().contains("\"d\""), "names the template: {e}");

    // Truncated, then missing.
    fs_err::OpenOptions::new()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let e = tmpl.verify(Verify::Quick).unwrap_err();
    assert!(crate::util::chain(&e).contains("truncated"), "{e}");
    fs_err::remove_file(&mem).unwrap();
    let e = tmpl.verify(Verify::Quick).unwrap_err();
    assert!(crate::util::chain(&e).contains("missing"), "{e}");
    // A damaged template can still be removed.
    store.remove("d", false, |_| true).unwrap();
}

#[test]
fn prepare_clone_checks_refers_and_copies_or_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::at(t.path().join("templates")).unwrap();
    let tmpl = make(&store, "py");
    let w = Wanted {
        backend: BackendKind::Qemu,
        vmm_version: "QEMU 7.2",
        kernel_release: "6.1.0",
        image_digest: "abc",
    };
    let disk = t.path().join("c1.ext4");
    let p = store.prepare_clone("py", "c1", &w, Some(&disk)).unwrap();
    assert_eq!(p.template, tmpl);
    assert_eq!(p.snapshot, tmpl.snapshot());
    assert_eq!(p.disk.as_ref().unwrap().0, disk);
    assert_eq!(
        fs_err::read(&disk).unwrap(),
        fs_err::read(tmpl.disk().unwrap()).unwrap()
    );
    assert_eq!(store.users(&tmpl).unwrap(), ["c1"]);

    // Refused: another image. Nothing recorded, nothing made.
    let d2 = t.path().join("c2.ext4");
    let e = store
        .prepare_clone(
            "py",
            "c2",
            &Wanted {
                image_digest: "zzz",
                ..w.clone()
            },
            Some(&d2),
        )
        .unwrap_err();
    assert!(matches!(e, TemplateError::Incompatible { .. }), "{e}");
    // The disk cannot be made (its directory is missing): the reference
    // is dropped again.
    let e = store
        .prepare_clone("py", "c3", &w, Some(&t.path().join("no/such/dir/d.ext4")))
        .unwrap_err();
    assert!(e.to_string().contains("no/such/dir"), "{e}");
    assert_eq!(store.users(&tmpl).unwrap(), ["c1"]);
    assert!(!d2.exists());
}

#[test]
fn references_block_removal_until_released() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::at(t.path().join("templates")).unwrap();
    let tmpl = make(&store, "py");
    store.add_ref(&tmpl, "c1").unwrap();
    store.add_ref(&tmpl, "c2").unwrap();
    assert_eq!(store.users(&tmpl).unwrap(), ["c1", "c2"]);

    // What gc/doctor would report if c2's machine were gone.
    assert_eq!(
        store.stale_refs(|m| m != "c2", false).unwrap(),
        [("py".to_owned(), "c2".to_owned())]
    );
    assert_eq!(store.users(&tmpl).unwrap(), ["c1", "c2"], "only listed");
    let e = store.remove("py", false, |_| true).unwrap_err();
    assert!(
        matches!(&e, TemplateError::InUse { machines, .. } if machines == &["c1", "c2"]),
        "{e}"
    );
    assert!(e.to_string().contains("--force"), "{e}");
    // Released twice: idempotent (crash recovery runs it again).
    store.release(tmpl.id(), "c1").unwrap();
    store.release(tmpl.id(), "c1").unwrap();
    // c2's machine no longer exists: its stale reference is pruned.
    let r = store.remove("py", false, |m| m == "c1").unwrap();
    assert_eq!(r.pruned, ["c2"]);
    assert!(!tmpl.dir.exists());
    assert_eq!(names(store.root()), [".lock", ".store"]);
    assert!(names(&store.root().join(".store")).is_empty());
    // Releasing after removal is still fine; adding is refused.
    store.release(tmpl.id(), "c2").unwrap();
    assert!(matches!(
        store.add_ref(&tmpl, "c3"),
        Err(TemplateError::NotFound { .. })
    ));

    // --force removes past live users.
    let t2 = make(&store, "py");
    store.add_ref(&t2, "c9").unwrap();
    let r = store.remove("py", true, |_| true).unwrap();
    assert_eq!(r.forced_past, ["c9"]);
    assert!(matches!(
        store.get("py"),
        Err(TemplateError::NotFound { .. })
    ));
}

#[test]
fn unfinished_templates_leave_nothing_or_a_collectable_leftover() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::at(t.path().join("templates")).unwrap();
    // Dropped (error, Ctrl-C unwinding): removed at once.
    {
        let s = store.begin("gone").unwrap();
        fake_snapshot(&s.snapshot(), 4);
    }
    assert!(names(&store.root().join(".store")).is_empty());
    assert!(store.get("gone").is_err());

    // Killed mid-create (no destructor ran): the creator is dead.
    let s = store.begin("killed").unwrap();
    let dir = s.dir().to_owned();
    std::mem::forget(s);
    // While "its creator" (this process) lives, it is not a leftover.
    assert!(store.leftovers().unwrap().is_empty());
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    let id = mvm_core::process::ProcessIdentity::of(pid);
    dead.wait().unwrap();
    let identity = id.unwrap_or(mvm_core::process::ProcessIdentity { pid, start_time: 1 });
    fs_err::write(dir.join("creator"), serde_json::to_vec(&identity).unwrap()).unwrap();
    assert_eq!(
        store.leftovers().unwrap(),
        [Leftover::Unlinked(dir.clone())]
    );
    assert!(
        store.list().unwrap().is_empty(),
        "never listed as a template"
    );
    let removed = store.gc().unwrap();
    assert_eq!(removed.len(), 1);
    assert!(!dir.exists());
    assert!(store.leftovers().unwrap().is_empty());

    // A dangling name.
    std::os::unix::fs::symlink(".store/0000", store.root().join("dangling")).unwrap();
    assert!(matches!(
        store.leftovers().unwrap().as_slice(),
        [Leftover::DanglingName(_)]
    ));
    store.gc().unwrap();
    assert_eq!(names(store.root()), [".lock", ".store"]);
}

/// A filesystem that fills up: a 4 MiB tmpfs mounted in a temporary
/// directory for this test alone.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount() -> Option<SmallFs> {
        if !rustix::process::geteuid().is_root() {
            mvm_core::testing::skip("SKIPPED: disk full test: needs root to mount a small tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("mvm-tmpl-test"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=4m"),
        )
        .unwrap();
        Some(SmallFs { dir })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_no_template() {
    let Some(fs) = SmallFs::mount() else {
        return;
    };
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("disk.ext4");
    fs_err::write(&src, vec![0x55u8; 8 << 20]).unwrap();
    let store = Store::at(fs.dir.path().join("templates")).unwrap();
    let s = store.begin("big").unwrap();
    let e = s.import_disk(&src).unwrap_err();
    eprintln!("{e}");
    assert!(
        matches!(&e, TemplateError::NoSpace { name, path } if name == "big" && path.ends_with("disk.ext4")),
        "{e:?}"
    );
    assert!(e.to_string().contains("no space left"), "{e}");
    drop(s);
    assert!(names(&store.root().join(".store")).is_empty());
    assert!(store.list().unwrap().is_empty());
}
