//! Data in and out (issue 5): config drive, secrets, named volumes, added
//! directories with write-back, launch plans, `mvm cp`, and bad input.

use std::path::Path;
use std::time::Instant;

use crate::common::{
    MachineGuard, can_boot, e2e_home, empty_home, ensure_image, mvm, status_of, unique,
};

fn out_ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in fs_err::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_file() {
            let data = fs_err::read(&p).unwrap_or_default();
            if data.windows(needle.len()).any(|w| w == needle) {
                hits.push(p.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    hits
}

#[test]
fn config_secrets_and_named_volume() {
    if !can_boot("config_secrets_and_named_volume") {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let a = unique("data-a");
    let b = unique("data-b");
    let vol = unique("vol");
    let _ga = MachineGuard {
        home,
        name: a.clone(),
    };
    let _gb = MachineGuard {
        home,
        name: b.clone(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let canary = format!("cnry{nanos:x}q{}", std::process::id());
    let secret = tmp.path().join("token");
    fs_err::write(&secret, &canary).unwrap();

    out_ok(
        &mvm(home)
            .args(["run", "--name", &a, "--network", "none"])
            .arg("--secret")
            .arg(format!("TOKEN={}", secret.display()))
            .args(["-v", &format!("{vol}:/data")])
            .output()
            .unwrap(),
    );
    let out = out_ok(
        &mvm(home)
            .args(["exec", &a, "--", "sh", "-c"])
            .arg(
                "cat /mnt/config/config.json; echo; echo SECRET=$(cat /mnt/secrets/TOKEN); \
                 stat -c '%a %U' /mnt/secrets/TOKEN; echo persisted > /data/p.txt; \
                 touch /mnt/config/x 2>/dev/null && echo CONFIG-WRITABLE; true",
            )
            .output()
            .unwrap(),
    );
    assert!(out.contains(&format!("\"name\": \"{a}\"")), "{out}");
    assert!(out.contains(&format!("SECRET={canary}\n")), "{out}");
    assert!(out.contains("400 root\n"), "{out}");
    assert!(!out.contains("CONFIG-WRITABLE"), "{out}");

    // The secret value is nowhere but in the secrets image.
    let inspect = out_ok(&mvm(home).args(["inspect", "--json", &a]).output().unwrap());
    assert!(!inspect.contains(&canary), "inspect shows the secret");
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let dir = Path::new(v["instance_dir"].as_str().unwrap()).to_owned();
    let pid = v["vmm_pid"].as_u64().unwrap();
    let cmdline = fs_err::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&canary),
        "VMM command line shows the secret"
    );
    let hits = files_containing(&dir, canary.as_bytes());
    assert_eq!(hits, ["secrets.ext4"], "secret found in {hits:?}");
    let mode = fs_err::metadata(dir.join("secrets.ext4")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // The volume is in use by the running machine.
    let busy = mvm(home)
        .args(["run", "--name", &b, "--network", "none", "-v"])
        .arg(format!("{vol}:/data"))
        .output()
        .unwrap();
    assert!(!busy.status.success());
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(err.contains(&a) && err.contains(&vol), "{err}");
    assert_eq!(status_of(home, &b), None, "a machine was created: {err}");

    // It survives `rm` and shows up in the next machine.
    out_ok(&mvm(home).args(["rm", "-f", &a]).output().unwrap());
    assert!(
        !dir.exists(),
        "rm left the instance directory (and secrets)"
    );
    out_ok(
        &mvm(home)
            .args(["run", "--name", &b, "--network", "none", "-v"])
            .arg(format!("{vol}:/data:ro"))
            .output()
            .unwrap(),
    );
    let out = out_ok(
        &mvm(home)
            .args(["exec", &b, "--", "cat", "/data/p.txt"])
            .output()
            .unwrap(),
    );
    assert_eq!(out, "persisted\n");
    let ls = out_ok(&mvm(home).args(["volume", "ls", "--json"]).output().unwrap());
    assert!(ls.contains(&vol), "{ls}");
    let rm_busy = mvm(home).args(["volume", "rm", &vol]).output().unwrap();
    assert!(!rm_busy.status.success());
    out_ok(&mvm(home).args(["rm", "-f", &b]).output().unwrap());
    out_ok(&mvm(home).args(["volume", "rm", &vol]).output().unwrap());
}

#[test]
fn add_dir_rw_is_written_back_and_ro_is_not_writable() {
    if !can_boot("add_dir_rw_is_written_back") {
        return;
    }
    ensure_image();
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("proj");
    let ro = tmp.path().join("ro");
    fs_err::create_dir_all(proj.join("sub")).unwrap();
    fs_err::create_dir_all(&ro).unwrap();
    fs_err::write(proj.join("old.txt"), "old").unwrap();
    fs_err::write(proj.join("sub/keep.txt"), "keep").unwrap();
    fs_err::write(ro.join("a.txt"), "a").unwrap();
    let t = Instant::now();
    let out = mvm(e2e_home())
        .args(["-v", "exec", "--add-dir"])
        .arg(format!("{}:/work:rw", proj.display()))
        .arg("--add-dir")
        .arg(format!("{}:/ro", ro.display()))
        .args(["--", "sh", "-c"])
        .arg(
            "echo new > /work/out.txt; rm /work/old.txt; cat /ro/a.txt; \
             if echo x > /ro/b.txt; then echo RO-WRITABLE; fi; exit 3",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {err}");
    eprintln!("add-dir exec took {:?}", t.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with('a') && !stdout.contains("RO-WRITABLE"),
        "{stdout}"
    );
    assert!(err.contains("1 added, 0 changed, 1 deleted"), "{err}");
    assert_eq!(
        fs_err::read_to_string(proj.join("out.txt")).unwrap(),
        "new\n"
    );
    assert!(!proj.join("old.txt").exists());
    assert_eq!(
        fs_err::read_to_string(proj.join("sub/keep.txt")).unwrap(),
        "keep"
    );
    assert!(!proj.join("lost+found").exists());
    let ro_names: Vec<_> = fs_err::read_dir(&ro).unwrap().flatten().collect();
    assert_eq!(ro_names.len(), 1, "the ro dir changed");
}

#[test]
fn launch_plan_sets_argv_workdir_and_env() {
    if !can_boot("launch_plan_sets_argv_workdir_and_env") {
        return;
    }
    ensure_image();
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("launch.json");
    fs_err::write(
        &plan,
        r#"{"apps":[{"name":"t","env":{"A":"app","B":"app","X":"app"},
            "entrypoint":{"command":["/bin/sh","-c","pwd; echo $A $B $X"],
            "working_dir":"/mnt/config","env":{"B":"entry","X":"entry"}}}]}"#,
    )
    .unwrap();
    let out = mvm(e2e_home())
        .args(["exec", "-e", "X=cli", "--launch-plan"])
        .arg(&plan)
        .output()
        .unwrap();
    assert_eq!(out_ok(&out), "/mnt/config\napp entry cli\n");
}

#[test]
fn cp_round_trips_a_200_mib_file() {
    if !can_boot("cp_round_trips_a_200_mib_file") {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let name = unique("data-cp");
    let _g = MachineGuard {
        home,
        name: name.clone(),
    };
    out_ok(
        &mvm(home)
            .args(["run", "--name", &name, "--network", "none"])
            .output()
            .unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big.bin");
    {
        // Pseudo-random, so nothing can compress or dedupe it.
        use std::io::Write;
        let mut f = std::io::BufWriter::new(fs_err::File::create(&src).unwrap());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..200 {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    fs_err::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let t = Instant::now();
    out_ok(
        &mvm(home)
            .args(["cp"])
            .arg(&src)
            .arg(format!("{name}:/root/big.bin"))
            .output()
            .unwrap(),
    );
    let up = t.elapsed();
    let back = tmp.path().join("back.bin");
    let t = Instant::now();
    out_ok(
        &mvm(home)
            .args(["cp", &format!("{name}:/root/big.bin")])
            .arg(&back)
            .output()
            .unwrap(),
    );
    let down = t.elapsed();
    eprintln!("mvm cp 200 MiB: host->guest {up:?}, guest->host {down:?}");
    let sum = |p: &Path| {
        let o = std::process::Command::new("sha256sum")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(sum(&src), sum(&back));
    let mode = fs_err::metadata(&back).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o640
    );
    let dir = mvm(home)
        .args(["cp"])
        .arg(tmp.path())
        .arg(format!("{name}:/root/"))
        .output()
        .unwrap();
    assert!(!dir.status.success());
    assert!(String::from_utf8_lossy(&dir.stderr).contains("directories not supported"));
}

#[test]
fn bad_data_input_is_refused_before_anything_is_created() {
    let home = empty_home();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                "--name".into(),
                "bad1".into(),
                "-v".into(),
                "/no/such/dir:/data".into(),
            ],
            "/no/such/dir",
        ),
        (
            vec![
                "run".into(),
                "--name".into(),
                "bad2".into(),
                "-v".into(),
                format!("{dir}:relative"),
            ],
            "relative",
        ),
        (
            vec![
                "run".into(),
                "--name".into(),
                "bad3".into(),
                "-v".into(),
                format!("{dir}:/data:rx"),
            ],
            "rx",
        ),
        (
            vec![
                "run".into(),
                "--name".into(),
                "bad4".into(),
                "--secret".into(),
                "K=/no/such/secret".into(),
            ],
            "/no/such/secret",
        ),
        (
            vec![
                "run".into(),
                "--name".into(),
                "bad5".into(),
                "-e".into(),
                "1X=y".into(),
            ],
            "1X",
        ),
        (
            vec![
                "exec".into(),
                "--add-dir".into(),
                "/no/such/add:/w".into(),
                "--".into(),
                "true".into(),
            ],
            "/no/such/add",
        ),
    ];
    for (args, needle) in cases {
        let out = mvm(home.path()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(needle),
            "{args:?}: error does not name {needle:?}: {err}"
        );
    }
    let instances = home.path().join("instances");
    let left: Vec<_> = fs_err::read_dir(&instances)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "created {left:?}");
    assert!(!home.path().join("volumes").exists());
}
