//! The Firecracker backend through the `mvm` binary, against a real
//! Firecracker (`MVM_FIRECRACKER_BIN`). Guests cannot boot under KVM on the
//! development machines (ENVIRONMENT.md), so these tests check what can be
//! checked: the configuration Firecracker received, pause/resume, stop and
//! cleanup, and the failure report of a guest that never answers. Setup and
//! doctor tests that need no binary always run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mvm_core::MvmHome;
use mvm_firecracker::launch::BootConfig;
use serde_json::Value;

use crate::common::{
    MachineGuard, can_boot, curl_get, e2e_home, empty_home, ensure_image, fc_get, firecracker_bin,
    mvm, mvm_std, status_of, unique, vmms_under, wait_until,
};

/// `mvm inspect NAME --json`.
fn inspect(home: &Path, name: &str) -> Value {
    let out = mvm(home)
        .args(["inspect", name, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The configuration mvm means to give Firecracker for machine `name`,
/// computed from mvm's own record (not from literals): with the paths the
/// VMM sees (inside its chroot when it is jailed).
fn intended(home: &Path, name: &str) -> BootConfig {
    let rt = mvm_runtime::Runtime::open(MvmHome::new(home)).unwrap();
    let rec = rt.registry().load(name).unwrap();
    let spec = mvm_runtime::supervisor::spec::for_record(&rt, &rec).unwrap();
    match &spec.isolation {
        Some(_) => mvm_firecracker::jailer::boot_config(&spec),
        None => BootConfig::new(&spec, &rt.dir(name)),
    }
}

/// [`intended`] with host paths (for a VMM started by hand).
fn intended_on_host(home: &Path, name: &str) -> BootConfig {
    let rt = mvm_runtime::Runtime::open(MvmHome::new(home)).unwrap();
    let rec = rt.registry().load(name).unwrap();
    let spec = mvm_runtime::supervisor::spec::for_record(&rt, &rec).unwrap();
    BootConfig::new(&spec, &rt.dir(name))
}

/// Every field `want` sets has the same value in `got`.
fn assert_fields(what: &str, want: &Value, got: &Value) {
    let want = want.as_object().unwrap();
    assert!(!want.is_empty(), "{what}: nothing intended");
    for (k, v) in want {
        assert_eq!(&got[k], v, "{what}.{k}: got {got}");
    }
}

fn assert_config_matches(home: &Path, name: &str, actual: &Value) {
    let want = intended(home, name);
    assert_fields("boot-source", &j(&want.boot_source), &actual["boot-source"]);
    assert_fields(
        "machine-config",
        &j(&want.machine),
        &actual["machine-config"],
    );
    assert_fields("vsock", &j(&want.vsock), &actual["vsock"]);
    let ifaces = actual["network-interfaces"].as_array().cloned();
    match &want.net {
        Some(n) => {
            let ifaces = ifaces.expect("network-interfaces");
            assert_eq!(ifaces.len(), 1, "{ifaces:?}");
            assert_fields("network-interfaces[0]", &j(n), &ifaces[0]);
        }
        None => assert!(ifaces.unwrap_or_default().is_empty()),
    }
    let drives = actual["drives"].as_array().expect("drives");
    assert_eq!(drives.len(), want.drives.len(), "drives: {drives:?}");
    // GET /vm/config does not keep the PUT order: match drives by id.
    for d in &want.drives {
        let got = drives
            .iter()
            .find(|g| g["drive_id"] == d.drive_id.as_str())
            .unwrap_or_else(|| panic!("drive {} missing: {drives:?}", d.drive_id));
        assert_fields(&format!("drives[{}]", d.drive_id), &j(d), got);
    }
    // The kernel command line carries mvm's own parameters.
    let args = actual["boot-source"]["boot_args"].as_str().unwrap();
    assert!(args.contains(&format!("mvm.hostname={name}")), "{args}");
}

fn j<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

fn state(socket: &Path) -> String {
    fc_get(socket, "/")["state"].as_str().unwrap().to_owned()
}

/// A firecracker started by hand (not by mvm), killed when dropped.
struct Bystander {
    child: std::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bystander {
    fn start(bin: &Path) -> Self {
        let dir = tempfile::Builder::new().prefix("fcby").tempdir().unwrap();
        let socket = dir.path().join("x.sock");
        let child = std::process::Command::new(bin)
            .arg("--api-sock")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        assert!(up, "hand-started firecracker did not serve {socket:?}");
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn machine_files_gone(dir: &Path) -> Vec<PathBuf> {
    ["fc.sock", "guest.sock", "agent.sock"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn firecracker_run_no_wait_config_pause_resume_stop() {
    let Some(_bin) = firecracker_bin("firecracker_run_no_wait_config_pause_resume_stop") else {
        return;
    };
    let bin = _bin;
    if !can_boot("firecracker_run_no_wait_config_pause_resume_stop") {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let name = unique("f1");
    let _g = MachineGuard {
        home,
        name: name.clone(),
    };
    let idir = home.join("instances").join(&name);

    // run --no-wait returns once InstanceStart was accepted.
    let t = Instant::now();
    mvm(home)
        .args([
            "run",
            "--backend",
            "firecracker",
            "--no-wait",
            "--name",
            &name,
        ])
        .assert()
        .success()
        .stdout(format!("{name}\n"));
    eprintln!("mvm run --backend firecracker --no-wait: {:?}", t.elapsed());

    // inspect shows the VMM pid and the API socket.
    let v = inspect(home, &name);
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["record"]["backend"], "firecracker");
    let pid = v["vmm_pid"].as_u64().expect("vmm_pid") as u32;
    let socket = PathBuf::from(v["api_socket"].as_str().expect("api_socket"));
    assert_eq!(socket, idir.join("fc.sock"));
    assert_eq!(vmms_under(&idir), vec![pid]);
    let cmdline = fs_err::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if v["isolation"].is_null() {
        assert!(cmdline.contains(&socket.display().to_string()), "{cmdline}");
    } else {
        // Jailed (root): the VMM names its socket inside its chroot, and
        // `fc.sock` is the stable link to it.
        assert!(
            cmdline.contains(mvm_firecracker::jailer::inner::API_SOCKET),
            "{cmdline}"
        );
    }

    // GET /vm/config shows exactly what mvm intended.
    let actual = fc_get(&socket, "/vm/config");
    assert_config_matches(home, &name, &actual);
    if let Some(raw) = curl_get(&socket, "/vm/config") {
        assert_config_matches(home, &name, &raw);
    }
    assert_eq!(state(&socket), "Running");

    // pause / resume, seen through GET / and mvm ps.
    mvm(home).args(["pause", &name]).assert().success();
    assert_eq!(state(&socket), "Paused");
    assert_eq!(status_of(home, &name).as_deref(), Some("paused"));
    mvm(home).args(["resume", &name]).assert().success();
    assert_eq!(state(&socket), "Running");
    assert_eq!(status_of(home, &name).as_deref(), Some("running"));
    if let Some(raw) = curl_get(&socket, "/") {
        assert_eq!(raw["state"], "Running");
    }

    // The TAP, when the machine has one (NAT as root), goes with the VMM.
    let tap = inspect(home, &name)["record"]["net"]["tap"]
        .as_str()
        .map(str::to_owned);
    if let Some(t) = &tap {
        assert!(Path::new("/sys/class/net").join(t).exists(), "no TAP {t}");
    }

    // stop --timeout 1 ends this VMM (the guest does not answer
    // Ctrl-Alt-Del) and leaves a hand-started firecracker alone.
    let mut other = Bystander::start(&bin);
    let t = Instant::now();
    mvm(home)
        .args(["stop", &name, "--timeout", "1"])
        .assert()
        .success();
    let took = t.elapsed();
    eprintln!("mvm stop --timeout 1 (guest ignores Ctrl-Alt-Del): {took:?}");
    assert!(
        took < Duration::from_millis(2500),
        "mvm stop --timeout 1 took {took:?}"
    );
    assert!(vmms_under(&idir).is_empty());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || !vmms_under(&idir).contains(&pid),
        "VMM {pid} still there"
    );
    assert_eq!(machine_files_gone(&idir), Vec::<PathBuf>::new());
    if let Some(t) = &tap {
        let gone = wait_until(Duration::from_secs(5), || {
            !Path::new("/sys/class/net").join(t).exists()
        });
        assert!(gone, "TAP {t} left behind");
    }
    assert_eq!(status_of(home, &name).as_deref(), Some("stopped"));
    // A requested stop is not recorded as a failure.
    let v = inspect(home, &name);
    assert!(v["status_note"].is_null(), "{}", v["status_note"]);
    assert!(other.alive(), "the hand-started firecracker was killed");
    assert_eq!(fc_get(&other.socket, "/")["state"], "Not started");

    mvm(home).args(["rm", &name]).assert().success();
    assert!(!idir.exists());
}

#[test]
fn firecracker_run_waiting_for_the_agent_fails_with_the_logs() {
    if firecracker_bin("firecracker_run_waiting_for_the_agent_fails_with_the_logs").is_none()
        || !can_boot("firecracker_run_waiting_for_the_agent_fails_with_the_logs")
    {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let name = unique("f2");
    let _g = MachineGuard {
        home,
        name: name.clone(),
    };
    let idir = home.join("instances").join(&name);
    let boot_timeout = 4;
    let t = Instant::now();
    let out = mvm_std(home)
        .args(["run", "--backend", "firecracker", "--name", &name])
        .env("MVM_BOOT_TIMEOUT", boot_timeout.to_string())
        .output()
        .unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("failed run took {took:?}:\n{err}");
    assert!(!out.status.success(), "{err}");
    // Launch (well under a few seconds here) plus the boot deadline.
    assert!(
        took < Duration::from_secs(boot_timeout + 10),
        "took {took:?}"
    );
    assert!(err.contains(&name), "{err}");
    assert!(
        err.contains("--- last lines of the VMM log ---")
            || err.contains("--- last lines of the guest console ---"),
        "no log tail in: {err}"
    );
    assert!(vmms_under(&idir).is_empty());
    assert_eq!(machine_files_gone(&idir), Vec::<PathBuf>::new());
    assert_eq!(status_of(home, &name).as_deref(), Some("stopped"));
    mvm(home).args(["rm", &name]).assert().success();
}

/// Restores a home's config.toml when dropped.
struct ConfigRestore {
    path: PathBuf,
    old: Option<Vec<u8>>,
}

impl Drop for ConfigRestore {
    fn drop(&mut self) {
        match &self.old {
            Some(b) => fs_err::write(&self.path, b).unwrap(),
            None => {
                let _ = fs_err::remove_file(&self.path);
            }
        }
    }
}

#[test]
fn setup_with_firecracker_bin_records_it() {
    let Some(bin) = firecracker_bin("setup_with_firecracker_bin_records_it") else {
        return;
    };
    if !can_boot("setup_with_firecracker_bin_records_it") {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let path = home.join("config.toml");
    let _restore = ConfigRestore {
        old: fs_err::read(&path).ok(),
        path: path.clone(),
    };
    let version = mvm_firecracker::install::check_binary(&bin).unwrap();
    mvm(home)
        .args(["setup", "--backend", "firecracker", "--firecracker-bin"])
        .arg(&bin)
        .env_remove("MVM_FIRECRACKER_BIN")
        .assert()
        .success();
    let cfg: toml::Table = fs_err::read_to_string(&path).unwrap().parse().unwrap();
    assert_eq!(
        cfg["firecracker_bin"].as_str(),
        Some(&*bin.to_string_lossy())
    );
    assert_eq!(cfg["firecracker_version"].as_str(), Some(version.as_str()));

    // A binary that is not firecracker is refused and not recorded.
    let before = fs_err::read(&path).unwrap();
    mvm(home)
        .args([
            "setup",
            "--backend",
            "firecracker",
            "--firecracker-bin",
            "/bin/true",
        ])
        .env_remove("MVM_FIRECRACKER_BIN")
        .assert()
        .failure()
        .stderr(predicates::str::contains("/bin/true"));
    assert_eq!(fs_err::read(&path).unwrap(), before);
}

/// A TCP port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn setup_firecracker_without_network_names_the_flag() {
    if !can_boot("setup_firecracker_without_network_names_the_flag") {
        return;
    }
    let home = empty_home();
    let path_without_fc: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .filter(|d| !d.join("firecracker").exists())
        .collect();
    let t = Instant::now();
    let out = mvm_std(home.path())
        .args(["setup", "--backend", "firecracker"])
        .env_remove("MVM_FIRECRACKER_BIN")
        .env("PATH", std::env::join_paths(path_without_fc).unwrap())
        .env(
            "MVM_FIRECRACKER_RELEASE_URL",
            format!("http://127.0.0.1:{}/releases", closed_port()),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--firecracker-bin PATH"), "{err}");
    assert!(
        err.contains("127.0.0.1"),
        "the URL tried is not named: {err}"
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(!home.path().join("bin/firecracker").exists());
}

#[test]
fn doctor_reports_firecracker_kvm_and_the_auto_choice() {
    let home = empty_home();
    let bin = std::env::var_os("MVM_FIRECRACKER_BIN").filter(|v| !v.is_empty());
    let mut cmd = mvm(home.path());
    if bin.is_none() {
        cmd.env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin");
    }
    let out = cmd.args(["doctor", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = |n: &str| crate::common::doctor_check(&v, n);
    let fc = check("firecracker");
    let kvm = check("kvm");
    let kvm_usable = mvm_core::backend::kvm_usable();
    assert_eq!(kvm["ok"], kvm_usable.usable, "{kvm}");
    assert_eq!(kvm["detail"], kvm_usable.reason.as_str());
    let auto = &v["auto_backend"];
    assert!(!auto["reason"].as_str().unwrap().is_empty(), "{auto}");
    match bin {
        Some(bin) => {
            let version = mvm_firecracker::install::check_binary(Path::new(&bin)).unwrap();
            assert_eq!(fc["ok"], true, "{fc}");
            let detail = fc["detail"].as_str().unwrap();
            assert!(detail.contains(&*bin.to_string_lossy()), "{detail}");
            assert!(detail.contains(&version), "{detail}");
            let want = if kvm_usable.usable {
                "firecracker"
            } else {
                "qemu"
            };
            assert_eq!(auto["kind"], want, "{auto}");
        }
        None => {
            assert_eq!(fc["ok"], false, "{fc}");
            assert!(
                fc["fix"]
                    .as_str()
                    .unwrap()
                    .contains("--firecracker-bin PATH"),
                "{fc}"
            );
            assert_eq!(auto["kind"], "qemu", "{auto}");
        }
    }
    // The text form says which backend auto picks and why.
    let out = mvm(home.path()).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("auto picks"), "{text}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Wall time of `mvm run --backend firecracker --no-wait` (process start to
/// return, i.e. after InstanceStart) against `firecracker --config-file`
/// of the same configuration started directly (spawn to `GET /` answering
/// `Running`). Run with
/// `MVM_FIRECRACKER_BIN=... cargo test -p mvm-cli --test integration -- --ignored --nocapture bench_firecracker_start`.
#[test]
#[ignore = "benchmark"]
fn bench_firecracker_start() {
    let Some(bin) = firecracker_bin("bench_firecracker_start") else {
        return;
    };
    if !can_boot("bench_firecracker_start") {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let runs = 10;
    let mut via_mvm = Vec::new();
    let mut config = None;
    for i in 0..runs {
        let name = unique(&format!("bench{i}"));
        let _g = MachineGuard {
            home,
            name: name.clone(),
        };
        let t = Instant::now();
        mvm(home)
            .args([
                "run",
                "--backend",
                "firecracker",
                "--no-wait",
                "--name",
                &name,
            ])
            .assert()
            .success();
        via_mvm.push(t.elapsed());
        if config.is_none() {
            config = Some(intended_on_host(home, &name));
        }
        mvm(home).args(["rm", "-f", &name]).assert().success();
    }
    let config = config.unwrap();
    let mut direct = Vec::new();
    for i in 0..runs {
        let dir = tempfile::Builder::new().prefix("fcb").tempdir().unwrap();
        let mut c = config.clone();
        c.vsock.uds_path = dir.path().join("v.sock");
        c.logger.log_path = Some(dir.path().join("log"));
        // The drives are the machine's own disks, removed with it: use
        // scratch files of the same size.
        for d in &mut c.drives {
            let p = dir.path().join(format!("{}.img", d.drive_id));
            fs_err::File::create(&p)
                .unwrap()
                .set_len(mvm_runtime::resources::disk::DEFAULT_DISK_MIB << 20)
                .unwrap();
            d.path_on_host = Some(p);
        }
        let file = dir.path().join("config.json");
        fs_err::write(&file, serde_json::to_vec(&c.to_config_file()).unwrap()).unwrap();
        let socket = dir.path().join("api.sock");
        let t = Instant::now();
        let mut child = std::process::Command::new(&bin)
            .arg("--api-sock")
            .arg(&socket)
            .arg("--config-file")
            .arg(&file)
            .arg("--id")
            .arg(format!("bench{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A tight bounded poll: the backoff of wait_until would blur the
        // measurement.
        let deadline = t + Duration::from_secs(10);
        let mut up = false;
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok()
                && state(&socket) == "Running"
            {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        direct.push(t.elapsed());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(up);
    }
    eprintln!(
        "BENCH {runs} runs: mvm run --backend firecracker --no-wait median {:?} (all {:?}); firecracker --config-file median {:?} (all {:?})",
        median(via_mvm.clone()),
        via_mvm,
        median(direct.clone()),
        direct
    );
}
