//! Shared helpers: the `mvm` command, a shared test home, process checks,
//! `wait_until` with a deadline.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use assert_cmd::Command;

/// The shared state directory of guest-booting tests.
pub fn e2e_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let p = std::env::var_os("MVM_TEST_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mvm-e2e"));
        fs_err::create_dir_all(&p).unwrap();
        p
    })
}

/// A fresh, empty home for tests that need isolation and boot nothing.
pub fn empty_home() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("mvm-t").tempdir().unwrap()
}

/// `mvm` with `MVM_HOME` set.
pub fn mvm(home: &Path) -> Command {
    let mut c = Command::cargo_bin("mvm").unwrap();
    c.env("MVM_HOME", home)
        .env_remove("MVM_BACKEND")
        .timeout(Duration::from_secs(600));
    c
}

/// A std Command for `mvm` (for spawning in the background).
pub fn mvm_std(home: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("mvm"));
    c.env("MVM_HOME", home)
        .env_remove("MVM_BACKEND")
        .env("MVM_NETWORK", "none");
    c
}

/// Whether guests can boot here; prints SKIPPED when not.
pub fn can_boot(test: &str) -> bool {
    let ok = [
        "/usr/bin/qemu-system-x86_64",
        "/usr/sbin/mkfs.ext4",
        "/bin/busybox",
    ]
    .iter()
    .all(|p| Path::new(p).exists());
    if !ok {
        mvm_core::testing::skip(&format!(
            "SKIPPED: {test}: needs qemu-system-x86, e2fsprogs and busybox-static (run .ci/run or `mvm setup`)"
        ));
    }
    ok
}

/// Build the default image once per test binary (serialised).
pub fn ensure_image() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        mvm(e2e_home()).args(["image", "build"]).assert().success();
    });
}

/// A machine name unique to this test process.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// Pids of VMM processes (qemu/firecracker) of machines under `dir`. A
/// confined VMM names no instance path on its command line (a jailed
/// Firecracker sees only its chroot, a sandboxed QEMU gets descriptors),
/// so a VMM is one of `dir`'s when its command line, its root, one of its
/// open files or its machine tag (`MVM_MACHINE`) lies under `dir`.
pub fn vmms_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = fs_err::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let state = fs_err::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let program = cmd.split(' ').next().unwrap_or_default();
        let vmm = program.contains("qemu-system") || program.ends_with("firecracker");
        if zombie || !vmm {
            continue;
        }
        let under = |p: PathBuf| p.starts_with(dir);
        let mine = cmd.contains(&needle)
            || fs_err::read_link(format!("/proc/{pid}/root")).is_ok_and(under)
            || fs_err::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|f| fs_err::read_link(f.path()).is_ok_and(under))
            })
            || fs_err::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0).any(|v| {
                    String::from_utf8_lossy(v)
                        .strip_prefix("MVM_MACHINE=")
                        .is_some_and(|t| {
                            Path::new(t.split('#').next().unwrap_or_default()).starts_with(dir)
                        })
                })
            });
        if mine {
            out.push(pid);
        }
    }
    out
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// `mvm ps -a --json` as JSON values.
pub fn ps(home: &Path) -> Vec<serde_json::Value> {
    let out = mvm(home).args(["ps", "-a", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Status of machine `name` per `mvm ps -a --json`.
pub fn status_of(home: &Path, name: &str) -> Option<String> {
    ps(home)
        .into_iter()
        .find(|m| m["name"] == name)
        .map(|m| m["status"].as_str().unwrap().to_owned())
}

/// Removes a machine when dropped (tests clean up also when they fail).
pub struct MachineGuard<'a> {
    pub home: &'a Path,
    pub name: String,
}

impl Drop for MachineGuard<'_> {
    fn drop(&mut self) {
        let _ = mvm_std(self.home).args(["rm", "-f", &self.name]).output();
    }
}

/// The real Firecracker binary to test against (`MVM_FIRECRACKER_BIN`), or
/// `None` after printing `SKIPPED: ...`.
pub fn firecracker_bin(test: &str) -> Option<PathBuf> {
    mvm_core::testing::path_from_env("MVM_FIRECRACKER_BIN", test)
}

/// A `GET` on a Firecracker API socket, as JSON.
pub fn fc_get(socket: &Path, path: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = mvm_firecracker::api::Client::new(socket);
    rt.block_on(async {
        match path {
            "/" => serde_json::to_value(client.describe_instance().await.unwrap()).unwrap(),
            "/vm/config" => serde_json::to_value(client.vm_config().await.unwrap()).unwrap(),
            other => panic!("fc_get: unsupported path {other}"),
        }
    })
}

/// `curl --unix-socket SOCKET http://localhost/PATH` as JSON, when curl is
/// installed (the acceptance check as a user would run it).
pub fn curl_get(socket: &Path, path: &str) -> Option<serde_json::Value> {
    if !Path::new("/usr/bin/curl").exists() {
        return None;
    }
    let out = std::process::Command::new("/usr/bin/curl")
        .args(["-sS", "--max-time", "5", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost{path}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// A fresh home of its own for a test that boots guests, sharing the
/// built image and kernel cache of [`e2e_home`] (call [`ensure_image`]
/// first).
pub fn own_home(prefix: &str) -> tempfile::TempDir {
    let own = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    for shared in ["images", "cache"] {
        std::os::unix::fs::symlink(e2e_home().join(shared), own.path().join(shared)).unwrap();
    }
    own
}

/// Live processes mvm spawned for machines of `home` (supervisors, VMMs),
/// found by their machine tag.
pub fn tagged_processes(home: &Path) -> Vec<mvm_core::process::TaggedProcess> {
    mvm_core::process::find_tagged(&home.join("instances"))
}

/// Instance directories of `home` (including hidden staging ones).
pub fn instance_dirs(home: &Path) -> Vec<PathBuf> {
    match fs_err::read_dir(home.join("instances")) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// VMM confinement of `home`'s machines left on the host: machine cgroups
/// under `mvm/<home tag>`, mounts under its instances (in this mount
/// namespace), jail directories.
pub fn jail_leftovers(home: &Path) -> Vec<String> {
    let l = mvm_jail::leftovers(&mvm_core::MvmHome::new(home));
    l.cgroups
        .iter()
        .map(|c| format!("cgroup {c}"))
        .chain(l.mounts.iter().map(|m| format!("mount {}", m.display())))
        .chain(l.jails.iter().map(|j| format!("jail {}", j.display())))
        .collect()
}

/// Nothing of `home` runs or remains: no tagged process, no VMM under its
/// instances, no instance directory, no cgroup, mount or chroot.
pub fn assert_nothing_left(home: &Path, what: &str) {
    let jail = jail_leftovers(home);
    assert!(jail.is_empty(), "{what}: confinement left: {jail:?}");
    let procs = tagged_processes(home);
    assert!(procs.is_empty(), "{what}: processes left: {procs:?}");
    let vmms = vmms_under(&home.join("instances"));
    assert!(vmms.is_empty(), "{what}: VMMs left: {vmms:?}");
    let dirs = instance_dirs(home);
    assert!(
        dirs.is_empty(),
        "{what}: instance directories left: {dirs:?}"
    );
}

/// Check `name` of the output of `mvm doctor --json`.
pub fn doctor_check(doctor: &serde_json::Value, name: &str) -> serde_json::Value {
    doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {doctor}"))
        .clone()
}
