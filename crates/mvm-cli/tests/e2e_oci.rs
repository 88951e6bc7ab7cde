//! `mvm image pull|import|ls|inspect|rm` against a real registry
//! (docker-registry) with images built by umoci and pushed by skopeo, and a
//! converted image booted with `mvm exec --image`.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{
    MachineGuard, can_boot, e2e_home, ensure_image, mvm, mvm_std, ps, unique, wait_until,
};

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

    // A corrupted blob in the registry: the pull fails naming the layer,
    // and nothing changes in the store.
    let r2 = format!("{}/test/app:2", reg.host());
    let m2 = oci::registry_manifest(&reg, "test/app:2");
    let sizes: Vec<u64> = m2["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .collect();
    let new_layer = m2["layers"][2]["digest"].as_str().unwrap().to_owned();
    let blob = reg.blob_file(&new_layer);
    let good = fs_err::read(&blob).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs_err::write(&blob, &bad).unwrap();
    let before = image_ls(home);
    let out = mvm(home)
        .args(["image", "pull", "--insecure", &r2])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("layer {new_layer}")) && err.contains("does not match"),
        "{err}"
    );
    assert_eq!(image_ls(home), before, "image ls unchanged");

    // Fixed: the second tag shares two layers, so one layer is downloaded,
    // byte for byte, and the other two come from the cache.
    fs_err::write(&blob, &good).unwrap();
    let out = mvm(home)
        .args(["image", "pull", "--insecure", "--json", &r2])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(err.contains("3 layer(s), 1 downloaded"), "{err}");
    assert_eq!(err.matches("already cached").count(), 2, "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("cache hit: {report}");
    assert_eq!(report["reference"], r2.as_str());
    assert_eq!(report["layers"], 3);
    assert_eq!(report["layers_downloaded"], 1);
    assert_eq!(report["downloaded_bytes"], sizes[2]);
    assert_eq!(report["resumed_bytes"], 0);
    assert_eq!(report["cached_bytes"], sizes[0] + sizes[1]);

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
    // Streaming: the layer never sits in memory. Alone the peak is ~54 MiB
    // (the same for a 1 MiB image); on a loaded 2-core machine, with the
    // other tests running beside it, up to ~121 MiB was seen. A buffered
    // layer would put the peak above the layer's own size.
    assert!(
        hwm_kib < (BIG as u64) >> 10,
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

/// Removes an image reference when dropped.
struct RmImage<'a>(&'a Path, String);

impl Drop for RmImage<'_> {
    fn drop(&mut self) {
        let _ = mvm_std(self.0).args(["image", "rm", &self.1]).output();
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Wait until machine `name` has stopped; its `mvm ps` row.
fn wait_stopped(home: &Path, name: &str) -> serde_json::Value {
    let mut row = serde_json::Value::Null;
    let stopped = wait_until(Duration::from_secs(180), || {
        row = ps(home)
            .into_iter()
            .find(|m| m["name"] == name)
            .unwrap_or_default();
        row["status"] == "stopped"
    });
    assert!(stopped, "machine {name} did not stop: {row}");
    row
}

/// The acceptance, against a real registry and real guests: the
/// image's User, WorkingDir and Env in `exec --image`; its layers as the
/// guest sees them; Entrypoint + Cmd as `mvm run`'s main process with its
/// output in `mvm logs` and the machine stopping when it exits; the
/// precedence image < machine < exec; pulling on first use.
#[test]
fn acceptance_exec_and_run_an_oci_image() {
    if oci::missing("acceptance_exec_and_run_an_oci_image")
        || !can_boot("acceptance_exec_and_run_an_oci_image")
    {
        return;
    }
    ensure_image();
    let layout = oci::build_layout();
    // No shell, no /etc at all: only /bin/busybox (and a data file).
    oci::add_big_image(&layout.path, "bare", 4096);
    let reg = oci::Registry::start(None);
    oci::push(&layout.path, "app", &reg, "test/app:1", None, false);
    oci::push(&layout.path, "app2", &reg, "test/app:2", None, false);
    oci::push(&layout.path, "bare", &reg, "test/bare:1", None, false);
    let home = e2e_home();
    let r = format!("localhost:{}/test/app:1", reg.port);
    let r2 = format!("localhost:{}/test/app:2", reg.port);
    let bare = format!("localhost:{}/test/bare:1", reg.port);
    let _rm = [&r, &r2, &bare].map(|i| RmImage(home, i.to_string()));
    let mvm_none = || {
        let mut c = mvm(home);
        c.env("MVM_NETWORK", "none");
        c
    };

    let out = mvm(home)
        .args(["image", "pull", "--insecure", &r])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // 1. exec --image: the image's user, working directory and env; its
    //    layers as the guest sees them.
    let t = Instant::now();
    let script = "id; pwd; echo $GREETING; \
                  stat -c '%A %u' /usr/bin/suid; stat -c %h /data/link; ls /opq; ls /old; \
                  stat -c '%U %u' /home/app/own; readlink /etc/resolv.conf; \
                  cat /etc/hostname >/dev/null && echo hostname-ok; grep -c 127.0.1.1 /etc/hosts";
    let out = mvm_none()
        .args(["exec", "--image", &r, "--", "sh", "-c", script])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    eprintln!("first boot + command of {r}: {took:?}\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("uid=1000(app) gid=1000(app)"),
        "the image's User: {text}"
    );
    assert_eq!(lines[1], "/work", "the image's WorkingDir");
    assert_eq!(lines[2], "hello", "the image's Env");
    assert_eq!(lines[3], "-rwsr-xr-x 0", "setuid bit survives");
    assert_eq!(lines[4], "2", "hard link survives");
    assert_eq!(
        lines[5], "upper",
        "opaque directory holds only the upper files"
    );
    assert_eq!(lines[6], "kept.txt", "whiteout-deleted file is absent");
    assert_eq!(
        lines[7], "app 1000",
        "owner from the layer, named by the image's passwd"
    );
    assert_eq!(lines[8], "../run/systemd/resolve/stub-resolv.conf");
    assert_eq!(lines[9], "hostname-ok");
    assert_eq!(
        lines[10], "1",
        "/etc/hosts written although the image has none"
    );

    // 2. `mvm run` with no command: Entrypoint + Cmd is the main process,
    //    its output in `mvm logs`, and the machine stops when it exits.
    //    Meanwhile a second machine overrides Cmd, and its main process
    //    stays up until the test ends it.
    let app = unique("app");
    let _g = MachineGuard {
        home,
        name: app.clone(),
    };
    let app2 = unique("app2");
    let _g2 = MachineGuard {
        home,
        name: app2.clone(),
    };
    let out = mvm_none()
        .args(["run", "--name", &app, &r])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), app);
    let main2 =
        "echo main says $GREETING; /bin/busybox sleep 600 & echo $! >/work/sleep.pid; wait; exit 3";
    let out = mvm_none()
        .args([
            "run",
            "--name",
            &app2,
            "-e",
            "GREETING=machine",
            "--user",
            "0",
            &r,
            "--",
            main2,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let row = wait_stopped(home, &app);
    assert_eq!(row["note"], "main process exited with code 0", "{row}");
    let logs = mvm(home).args(["logs", &app]).output().unwrap();
    let logs = stdout(&logs);
    assert!(logs.contains("hello from hello"), "{logs}");
    assert!(logs.lines().any(|l| l.trim() == "1000"), "{logs}");
    let ps_text = stdout(&mvm(home).args(["ps", "-a"]).output().unwrap());
    assert!(
        ps_text.contains("stopped (main process exited with code 0)"),
        "{ps_text}"
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&mvm(home).args(["inspect", &app]).output().unwrap().stdout)
            .unwrap();
    assert_eq!(
        doc["record"]["image"],
        r.as_str(),
        "the normalised reference"
    );
    assert_eq!(doc["record"]["main"]["argv"][0], "/bin/sh");
    assert_eq!(doc["record"]["main_exit"]["code"], 0);

    // 3. Precedence in a running machine: image < machine (`run -e/--user`)
    //    < exec (`-e/-w/--user`).
    let exec_in = |args: &[&str]| {
        let out = mvm(home).args(["exec", &app2]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let text = exec_in(&["--", "sh", "-c", "id -u; pwd; echo $GREETING"]);
    assert_eq!(
        text, "0\n/work\nmachine\n",
        "run --user and -e over the image"
    );
    let text = exec_in(&[
        "-u",
        "app",
        "-w",
        "/tmp",
        "-e",
        "GREETING=exec",
        "--",
        "sh",
        "-c",
        "id -un; pwd; echo $GREETING",
    ]);
    assert_eq!(text, "app\n/tmp\nexec\n", "exec flags over everything");
    // End the main process: the machine stops with its status (the guest
    // may power off before this exec's own status reaches the host, or kill
    // this exec's shell on the way down: then its status is the shell's).
    // One CI run in six saw the machine still running 180 s after this
    // exec, which had exited non-zero without a word (cause not found): the
    // kill is tried again, and what each try saw is kept for the failure.
    let mut tries = Vec::new();
    for _ in 0..3 {
        let out = mvm(home)
            .args([
                "exec",
                &app2,
                "--",
                "sh",
                "-c",
                "kill $(cat /work/sleep.pid)",
            ])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(
            out.status.success()
                || err.contains("connection to the agent lost")
                || !err.contains("mvm: error"),
            "{:?}: {err}",
            out.status
        );
        tries.push(format!(
            "{:?} out {:?} err {err:?}",
            out.status,
            stdout(&out)
        ));
        let stopped = wait_until(Duration::from_secs(60), || {
            ps(home)
                .into_iter()
                .find(|m| m["name"] == app2.as_str())
                .is_some_and(|m| m["status"] == "stopped")
        });
        if stopped {
            break;
        }
    }
    if tries.len() > 1 {
        eprintln!("the main process needed {} kills: {tries:?}", tries.len());
    }
    let row = wait_stopped(home, &app2);
    assert_eq!(
        row["note"], "main process exited with code 3",
        "{row}: {tries:?}"
    );
    let logs = stdout(&mvm(home).args(["logs", &app2]).output().unwrap());
    assert!(logs.contains("main says machine"), "{logs}");

    // 4. `exec --image` without a command runs Entrypoint + Cmd once, like
    //    `docker run --rm`, pulling the image on first use.
    let out = mvm_none()
        .args(["exec", "--insecure", "--image", &r2])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from hello\n1000\n");
    assert!(
        stderr(&out).contains(&format!("mvm: pulled {r2}")),
        "{}",
        stderr(&out)
    );
    // `--pull never` for an image that is not there: nothing boots.
    let out = mvm_none()
        .args(["exec", "--pull", "never", "--image", &bare, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--pull never") && stderr(&out).contains(&bare),
        "{}",
        stderr(&out)
    );

    // 5. An image without a shell or /etc boots; the agent creates
    //    /etc/hosts.
    let out = mvm_none()
        .args([
            "exec",
            "--insecure",
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
    let text = stdout(&out);
    assert!(text.contains("busybox") && text.contains("hosts"), "{text}");
    assert!(
        !text.contains("mvm-agent"),
        "nothing of mvm's on the disk: {text}"
    );
}

/// `mvm doctor` lists what pulls, imports and builds left in the image
/// store; `mvm gc` removes it (through `mvm_oci::gc`).
#[test]
fn doctor_lists_and_gc_removes_image_store_leftovers() {
    let dir = crate::common::empty_home();
    let home = dir.path();
    let blobs = home.join("images/blobs");
    for d in ["sha256", "partial", "incoming"] {
        fs_err::create_dir_all(blobs.join(d)).unwrap();
    }
    let unused = "ab".repeat(32);
    fs_err::write(blobs.join("sha256").join(&unused), b"unused").unwrap();
    fs_err::write(blobs.join("partial").join("cd".repeat(32)), b"half").unwrap();
    let leftovers = |home: &Path| {
        let out = mvm(home).args(["doctor", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "leftovers")
            .unwrap()
            .clone()
    };
    let l = leftovers(home);
    let detail = l["detail"].as_str().unwrap();
    assert_eq!(l["ok"], false, "{l}");
    assert!(
        detail.contains(&format!("unused image blob sha256:{unused}"))
            && detail.contains("interrupted download of blob sha256:cdcd"),
        "{detail}"
    );
    let out = mvm(home).arg("gc").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 unused image blob(s), 1 interrupted download(s)"),
        "{text}"
    );
    assert_eq!(leftovers(home)["ok"], true);
    assert!(
        fs_err::read_dir(blobs.join("sha256"))
            .unwrap()
            .next()
            .is_none()
    );
}
