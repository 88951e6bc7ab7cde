//! `mvm image pull|import|ls|inspect|rm` against a real registry
//! (docker-registry) with images built by umoci and pushed by skopeo, and a
//! converted image booted with `mvm exec --image`.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{can_boot, e2e_home, ensure_image, mvm, mvm_std};

#[path = "../../mvm-oci/tests/common.rs"]
mod oci;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn image_ls(home: &Path) -> Vec<serde_json::Value> {
    let out = mvm(home).args(["image", "ls", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn pull_ls_inspect_rm_and_import() {
    if oci::missing("pull_ls_inspect_rm_and_import") {
        return;
    }
    let layout = oci::build_layout();
    let reg = oci::Registry::start(None);
    oci::push(&layout.path, "app", &reg, "test/app:1", None, false);
    oci::push(&layout.path, "app2", &reg, "test/app:2", None, false);
    let (_d, home) = oci::temp_home();
    let home = home.root();
    let r1 = format!("{}/test/app:1", reg.host());

    let out = mvm(home)
        .args(["image", "pull", "--insecure", &r1])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r1);
    let err = stderr(&out);
    assert!(err.contains("2 downloaded"), "{err}");
    // One line per layer without a terminal.
    assert_eq!(err.matches(": downloaded (").count(), 2, "{err}");

    let ls = image_ls(home);
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["name"], r1.as_str());
    assert_eq!(ls[0]["source"], "registry");
    assert_eq!(ls[0]["kind"], "oci");
    assert!(
        ls[0]["manifest_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let text = mvm(home).args(["image", "ls"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("registry") && text.contains(&r1), "{text}");

    let out = mvm(home)
        .args(["image", "inspect", &r1, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["config"]["user"], "app");
    assert_eq!(doc["config"]["working_dir"], "/work");
    assert_eq!(doc["config"]["entrypoint"][0], "/bin/sh");
    assert_eq!(doc["layers"].as_array().unwrap().len(), 2);
    assert_eq!(doc["source"], "registry");

    // The second tag shares two layers: one download.
    let r2 = format!("{}/test/app:2", reg.host());
    let out = mvm(home)
        .args(["image", "pull", "--insecure", &r2])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(err.contains("3 layer(s), 1 downloaded"), "{err}");
    assert_eq!(err.matches("already cached").count(), 2, "{err}");

    // Import a docker-archive of the same image under another name.
    let archive = layout.dir.path().join("app.tar");
    oci::skopeo_copy(
        &format!("oci:{}:app", layout.path.display()),
        &format!("docker-archive:{}:test/app:1", archive.display()),
        &[],
    );
    let out = mvm(home)
        .args(["image", "import"])
        .arg(&archive)
        .args(["--name", "imported:v1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "docker.io/library/imported:v1"
    );
    assert!(
        stderr(&out).contains("already converted"),
        "{}",
        stderr(&out)
    );
    let ls = image_ls(home);
    assert!(
        ls.iter().any(
            |i| i["name"] == "docker.io/library/imported:v1" && i["source"] == "docker-archive"
        )
    );

    // rm by the short name; blobs go with the last image that needs them.
    for name in ["imported:v1", r1.as_str(), r2.as_str()] {
        let out = mvm(home).args(["image", "rm", name]).output().unwrap();
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    assert!(image_ls(home).is_empty());
    assert_eq!(
        fs_err::read_dir(home.join("images/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    let out = mvm(home).args(["image", "rm", &r1]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&r1), "{}", stderr(&out));
}

#[test]
fn pull_errors_name_the_reference() {
    if oci::missing("pull_errors_name_the_reference") {
        return;
    }
    let layout = oci::build_layout();
    let reg = oci::Registry::start(Some(("mvm", "s3cret")));
    oci::push(
        &layout.path,
        "app",
        &reg,
        "test/app:1",
        Some("mvm:s3cret"),
        false,
    );
    let (_d, home) = oci::temp_home();
    let home = home.root();
    let r = format!("{}/test/app:1", reg.host());

    let pull_with_password = |password: &str| {
        let mut child = mvm_std(home)
            .args([
                "image",
                "pull",
                "--insecure",
                "--username",
                "mvm",
                "--password-stdin",
                &r,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = pull_with_password("bad-pw-zz9");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&r) && err.contains("refused the credentials"),
        "{err}"
    );
    assert!(!err.contains("zz9"), "the password never shows: {err}");
    assert!(image_ls(home).is_empty());
    let out = pull_with_password("s3cret");
    assert!(out.status.success(), "{}", stderr(&out));

    let nope = format!("{}/test/app:nope", reg.host());
    let out = mvm(home)
        .args(["image", "pull", "--insecure", &nope])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&nope), "{}", stderr(&out));

    // Usage errors exit 2.
    let out = mvm(home)
        .args(["image", "pull", "--username", "u", &r])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = mvm(home)
        .args(["image", "pull", "Bad:Ref:x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid image reference"),
        "{}",
        stderr(&out)
    );
}

/// Run `cmd`, sampling its peak RSS (`VmHWM`, KiB) until it exits.
/// (Not `wait4`'s `ru_maxrss`: a child forked from this big test process
/// inherits its high-water mark across `exec`.)
fn run_sampling_hwm(cmd: &mut std::process::Command) -> (std::process::ExitStatus, u64, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err_pipe, &mut s);
        s
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut hwm = 0u64;
    let mut status = None;
    let done = oci::wait_until(Duration::from_secs(900), || {
        if let Some(kib) = fs_err::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            hwm = hwm.max(kib);
        }
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert!(done, "mvm did not finish within 15 minutes");
    (status.unwrap(), hwm, reader.join().unwrap())
}

#[test]
fn large_layer_streams_and_ctrl_c_leaves_a_resumable_cache() {
    if oci::missing("large_layer_streams_and_ctrl_c_leaves_a_resumable_cache") {
        return;
    }
    const BIG: usize = 160 << 20;
    const MID: usize = 64 << 20;
    let layout = oci::build_layout();
    oci::add_big_image(&layout.path, "big", BIG);
    oci::add_big_image(&layout.path, "mid", MID);
    let reg = oci::Registry::start(None);
    oci::push(&layout.path, "big", &reg, "test/big:1", None, false);
    oci::push(&layout.path, "mid", &reg, "test/mid:1", None, false);

    // A whole pull of a 256 MiB layer, its memory sampled.
    let (_d, home) = oci::temp_home();
    let r = format!("{}/test/big:1", reg.host());
    let t = Instant::now();
    let (status, hwm_kib, err) =
        run_sampling_hwm(mvm_std(home.root()).args(["image", "pull", "--insecure", &r]));
    let took = t.elapsed();
    assert!(status.success(), "{err}");
    eprintln!(
        "pull+convert of a {} MiB layer: {took:?}, peak RSS of mvm {} MiB\n{err}",
        BIG >> 20,
        hwm_kib / 1024
    );
    // Streaming: the layer never sits in memory (the ~50 MiB baseline is
    // the initramfs assembly, the same for a 1 MiB image).
    assert!(
        hwm_kib < 100 * 1024,
        "peak RSS {hwm_kib} KiB for a {} MiB layer",
        BIG >> 20
    );

    // Ctrl-C in the middle of a download: a clear error, nothing in the
    // store, the bytes so far kept; the next pull resumes.
    let mid = oci::registry_manifest(&reg, "test/mid:1");
    let layer = mid["layers"][0]["digest"].as_str().unwrap().to_owned();
    let proxy = oci::CutProxy::start(reg.port);
    *proxy.cut.lock().unwrap() = Some((layer.clone(), 16 << 20));
    proxy.stall.store(true, std::sync::atomic::Ordering::SeqCst);
    let (_d2, home2) = oci::temp_home();
    let via = format!("127.0.0.1:{}/test/mid:1", proxy.port);
    let child = mvm_std(home2.root())
        .args(["image", "pull", "--insecure", &via])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = home2
        .root()
        .join("images/blobs/partial")
        .join(layer.trim_start_matches("sha256:"));
    let mut child = child;
    if !oci::wait_until(Duration::from_secs(60), || {
        fs_err::metadata(&partial).is_ok_and(|m| m.len() >= 8 << 20)
    }) {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let ls = std::process::Command::new("ls")
            .args(["-laR"])
            .arg(home2.root().join("images"))
            .output()
            .unwrap();
        panic!(
            "the download never got going: {}\n{}",
            stderr(&out),
            String::from_utf8_lossy(&ls.stdout)
        );
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert!(image_ls(home2.root()).is_empty());
    let kept = fs_err::metadata(&partial).unwrap().len();
    assert!(kept > 0);
    proxy
        .stall
        .store(false, std::sync::atomic::Ordering::SeqCst);
    *proxy.cut.lock().unwrap() = None;
    let out = mvm(home2.root())
        .args(["image", "pull", "--insecure", &via])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resumed after"), "{}", stderr(&out));
    assert!(!partial.exists());
}

#[test]
fn exec_image_boots_a_converted_oci_image() {
    if oci::missing("exec_image_boots_a_converted_oci_image")
        || !can_boot("exec_image_boots_a_converted_oci_image")
    {
        return;
    }
    ensure_image();
    let layout = oci::build_layout();
    // No shell, no /etc at all: only /bin/busybox (and a data file).
    oci::add_big_image(&layout.path, "bare", 4096);
    let reg = oci::Registry::start(None);
    oci::push(&layout.path, "app", &reg, "test/app:1", None, false);
    oci::push(&layout.path, "bare", &reg, "test/bare:1", None, false);
    let home = e2e_home();
    let r = format!("{}/test/app:1", reg.host());
    let bare = format!("{}/test/bare:1", reg.host());
    struct Rm<'a>(&'a Path, String);
    impl Drop for Rm<'_> {
        fn drop(&mut self) {
            let _ = mvm_std(self.0).args(["image", "rm", &self.1]).output();
        }
    }
    let _rm = Rm(home, r.clone());
    let _rm_bare = Rm(home, bare.clone());
    let out = mvm(home)
        .args(["image", "pull", "--insecure", &r])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let t = Instant::now();
    let script = "stat -c '%A %u' /usr/bin/suid; stat -c %h /data/link; ls /opq; ls /old; \
                  stat -c '%U %u' /home/app/own; readlink /etc/resolv.conf; cat /etc/hostname >/dev/null && echo hostname-ok; \
                  grep -c 127.0.1.1 /etc/hosts";
    let out = mvm(home)
        .env("MVM_NETWORK", "none")
        .args(["exec", "--image", &r, "--", "/bin/sh", "-c", script])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("first boot + command of {r}: {took:?}\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "-rwsr-xr-x 0", "setuid bit survives");
    assert_eq!(lines[1], "2", "hard link survives");
    assert_eq!(lines[2], "upper", "opaque directory");
    assert_eq!(lines[3], "kept.txt", "whiteout");
    assert_eq!(
        lines[4], "app 1000",
        "owner from the layer, named by the image's passwd"
    );
    assert_eq!(lines[5], "../run/systemd/resolve/stub-resolv.conf");
    assert_eq!(lines[6], "hostname-ok");
    assert_eq!(
        lines[7], "1",
        "/etc/hosts written although the image has none"
    );

    // An image without a shell or /etc boots; the agent creates /etc/hosts.
    let out = mvm(home)
        .args(["image", "pull", "--insecure", &bare])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = mvm(home)
        .env("MVM_NETWORK", "none")
        .args([
            "exec",
            "--image",
            &bare,
            "--",
            "/bin/busybox",
            "ls",
            "/bin",
            "/etc",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("busybox") && text.contains("hosts"), "{text}");
    assert!(
        !text.contains("mvm-agent"),
        "nothing of mvm's on the disk: {text}"
    );
}
