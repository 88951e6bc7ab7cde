//! Process management, and (with `MVM_FIRECRACKER_BIN`) a real Firecracker.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_core::VmBackend;
use mvm_core::backend::{DriveSpec, KernelPaths, NetSpec, VmSpec};
use mvm_core::paths::InstanceDir;
use mvm_core::vmm_child::VmmChild;
use mvm_firecracker::api::{Client, InstanceState};
use mvm_firecracker::launch::BootConfig;
use mvm_firecracker::process::{self, FirecrackerArgs};
use mvm_firecracker::{FirecrackerBackend, StartMode};

use crate::common::{deadline, firecracker_bin, tiny_elf};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("mvmfc").tempdir().unwrap();
        let root = tmp.path().to_owned();
        Self { _tmp: tmp, root }
    }

    fn dir(&self, name: &str) -> InstanceDir {
        let d = InstanceDir::new(self.root.join(name));
        fs_err::create_dir_all(d.root()).unwrap();
        d
    }

    fn kernel(&self) -> PathBuf {
        if let Some(k) = std::env::var_os("MVM_TEST_VMLINUX").filter(|v| !v.is_empty()) {
            return k.into();
        }
        let p = self.root.join("vmlinux");
        if !p.exists() {
            fs_err::write(&p, tiny_elf()).unwrap();
        }
        p
    }

    fn file(&self, name: &str, len: u64) -> PathBuf {
        let p = self.root.join(name);
        let f = fs_err::File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }

    fn spec(&self, name: &str, net: Option<NetSpec>) -> VmSpec {
        VmSpec {
            name: name.into(),
            cpus: 1,
            memory_mib: 64,
            kernel: KernelPaths {
                bzimage: "/nonexistent/bzImage".into(),
                vmlinux: self.kernel(),
            },
            initrd: Some(self.file("initrd.cpio", 4096)),
            kernel_args: vec!["mvm.test=1".into()],
            drives: vec![
                DriveSpec {
                    id: "rootfs".into(),
                    path: self.file(&format!("{name}-root.img"), 1 << 20),
                    read_only: true,
                },
                DriveSpec {
                    id: "disk".into(),
                    path: self.file(&format!("{name}-disk.img"), 1 << 20),
                    read_only: false,
                },
            ],
            net,
            vsock_cid: 3,
            transient: true,
            isolation: None,
        }
    }
}

/// Every field of `sent` is in `got` with the same value.
fn assert_subset(what: &str, sent: &serde_json::Value, got: &serde_json::Value) {
    match (sent, got) {
        (serde_json::Value::Object(s), serde_json::Value::Object(g)) => {
            for (k, v) in s {
                let gv = g.get(k).unwrap_or_else(|| {
                    panic!("{what}.{k}: sent {v}, missing in GET /vm/config {got}")
                });
                assert_subset(&format!("{what}.{k}"), v, gv);
            }
        }
        (serde_json::Value::Array(s), serde_json::Value::Array(g)) => {
            assert_eq!(s.len(), g.len(), "{what}: {sent} vs {got}");
            for (i, (a, b)) in s.iter().zip(g).enumerate() {
                assert_subset(&format!("{what}[{i}]"), a, b);
            }
        }
        _ => assert_eq!(sent, got, "{what}"),
    }
}

fn tail(p: &Path) -> String {
    mvm_core::backend::tail_lines(p, 20).unwrap_or_default()
}

#[tokio::test]
async fn early_exit_is_reported_with_the_vmm_log() {
    // `cat` rejects `--api-sock` and exits: a VMM that dies at start-up.
    let f = Fixture::new();
    let dir = f.dir("early");
    let b = FirecrackerBackend::new("/bin/cat".into(), false);
    let start = Instant::now();
    let e = b
        .launch(&f.spec("early", None), &dir, deadline(10))
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    let chain = format!("{e} / {}", std::error::Error::source(&e).unwrap());
    assert!(chain.contains("exited during start-up"), "{chain}");
    let log = e.vmm_log_tail.clone().unwrap_or_default();
    assert!(log.contains("api-sock"), "vmm log tail: {log:?}");
    assert!(e.to_string().contains("last lines of the VMM log"), "{e}");
}

#[tokio::test]
async fn a_live_api_socket_is_never_touched() {
    let f = Fixture::new();
    let dir = f.dir("busy");
    let listener = std::os::unix::net::UnixListener::bind(dir.api_socket()).unwrap();
    let b = FirecrackerBackend::new("/bin/cat".into(), false);
    let e = b
        .launch(&f.spec("busy", None), &dir, deadline(5))
        .await
        .unwrap_err();
    let src = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(src.contains("in use"), "{e}: {src}");
    assert!(dir.api_socket().exists());
    drop(std::os::unix::net::UnixStream::connect(dir.api_socket()).unwrap());
    drop(listener);
}

#[tokio::test]
async fn a_missing_binary_is_reported() {
    let f = Fixture::new();
    let dir = f.dir("nobin");
    let b = FirecrackerBackend::new(f.root.join("no-such-firecracker"), false);
    let e = b
        .launch(&f.spec("nobin", None), &dir, deadline(5))
        .await
        .unwrap_err();
    let src = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(src.contains("no-such-firecracker"), "{e}: {src}");
}

#[tokio::test]
async fn real_firecracker_configuration_round_trips_and_lifecycle_works() {
    let Some(bin) = firecracker_bin("real_firecracker_configuration_round_trips") else {
        return;
    };
    let version = mvm_firecracker::install::check_binary(&bin).unwrap();
    assert!(
        version.starts_with("1.16."),
        "tested with 1.16.x, got {version}"
    );
    let f = Fixture::new();
    let dir = f.dir("vm1");
    let other = f.dir("vm2");
    let tap = format!("mvmt{}", std::process::id() % 100_000);
    let net = Some(NetSpec {
        tap: tap.clone(),
        mac: "06:00:ac:10:00:02".into(),
    });
    let spec = f.spec("vm1", net);

    // A neighbour that must survive everything done to vm1.
    let mut neighbour = VmmChild::from(
        process::spawn(
            &FirecrackerArgs::new(&bin, other.api_socket()),
            &other.console_log(),
            &other.vmm_log(),
            true,
        )
        .unwrap(),
    );
    let nclient = Client::new(other.api_socket());
    process::wait_ready(&mut neighbour, &nclient, deadline(10))
        .await
        .unwrap();

    let mut args = FirecrackerArgs::new(&bin, dir.api_socket());
    args.id = Some("vm1".into());
    let mut child =
        VmmChild::from(process::spawn(&args, &dir.console_log(), &dir.vmm_log(), true).unwrap());
    let client = Client::new(dir.api_socket());
    let info = process::wait_ready(&mut child, &client, deadline(10))
        .await
        .unwrap();
    assert_eq!(info.state, InstanceState::NotStarted);
    assert_eq!(info.id, "vm1");
    assert!(
        client
            .version()
            .await
            .unwrap()
            .firecracker_version
            .starts_with("1.16")
    );

    let config = BootConfig::new(&spec, &dir);
    if let Err(e) = config.apply(&client).await {
        panic!("{e}\nvmm log:\n{}", tail(&dir.vmm_log()));
    }
    let got = serde_json::to_value(client.vm_config().await.unwrap()).unwrap();
    let sent = serde_json::to_value(config.to_config_file()).unwrap();
    for key in [
        "boot-source",
        "machine-config",
        "drives",
        "vsock",
        "entropy",
        "network-interfaces",
    ] {
        assert_subset(key, &sent[key], &got[key]);
    }

    let started = client.instance_start().await;
    if let Err(e) = started {
        panic!("{e}\nvmm log:\n{}", tail(&dir.vmm_log()));
    }
    assert_eq!(
        client.describe_instance().await.unwrap().state,
        InstanceState::Running
    );
    client.pause().await.unwrap();
    assert_eq!(
        client.describe_instance().await.unwrap().state,
        InstanceState::Paused
    );
    client.resume().await.unwrap();
    assert_eq!(
        client.describe_instance().await.unwrap().state,
        InstanceState::Running
    );
    client.send_ctrl_alt_del().await.unwrap();
    client.flush_metrics().await.err(); // no metrics configured: a fault is fine, a hang is not

    child.start_kill().unwrap();
    tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    // The dead VMM's socket is stale: refused, then cleaned up.
    let e = client.describe_instance().await.unwrap_err();
    assert!(e.is_connection_refused(), "{e:?}");
    process::clear_stale_socket(&dir.api_socket()).unwrap();
    assert!(!dir.api_socket().exists());

    // The neighbour is untouched.
    assert_eq!(
        nclient.describe_instance().await.unwrap().state,
        InstanceState::NotStarted
    );
    assert!(neighbour.try_wait().unwrap().is_none());
    neighbour.start_kill().unwrap();
    neighbour.wait().await.unwrap();
}

#[tokio::test]
async fn real_firecracker_backend_launches_in_both_modes() {
    let Some(bin) = firecracker_bin("real_firecracker_backend_launches_in_both_modes") else {
        return;
    };
    let f = Fixture::new();
    for (i, mode) in [StartMode::Api, StartMode::ConfigFile]
        .into_iter()
        .enumerate()
    {
        let name = format!("b{i}");
        let dir = f.dir(&name);
        // A stale socket from a "dead VMM" is cleaned up.
        drop(std::os::unix::net::UnixListener::bind(dir.api_socket()).unwrap());
        let b = FirecrackerBackend::new(bin.clone(), false).with_start_mode(mode);
        let mut vmm = b
            .launch(&f.spec(&name, None), &dir, deadline(15))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let st = b.client(&dir).describe_instance().await.unwrap().state;
        assert_eq!(st, InstanceState::Running, "{mode:?}");
        b.pause(&dir).await.unwrap();
        b.resume(&dir).await.unwrap();
        b.request_shutdown(&dir).await.unwrap();
        vmm.child.start_kill().unwrap();
        vmm.child.wait().await.unwrap();
    }
}

#[tokio::test]
async fn real_firecracker_bad_kernel_fails_with_its_fault_and_is_reaped() {
    let Some(bin) = firecracker_bin("real_firecracker_bad_kernel_fails") else {
        return;
    };
    let f = Fixture::new();
    let dir = f.dir("bad");
    let mut spec = f.spec("bad", None);
    spec.kernel.vmlinux = f.file("not-an-elf", 4096);
    let b = FirecrackerBackend::new(bin, false);
    let e = b.launch(&spec, &dir, deadline(15)).await.unwrap_err();
    let src = std::error::Error::source(&e).unwrap().to_string();
    eprintln!("bad kernel: {e}\ncaused by: {src}");
    assert!(e.to_string().contains("starting the VM failed"), "{e}");
    assert!(
        src.contains("PUT /actions") && src.contains("HTTP 400"),
        "{src}"
    );
    // Reaped: the API socket no longer answers.
    let r = b.client(&dir).describe_instance().await;
    assert!(r.is_err(), "VMM still serving after a failed launch");
}

/// Spawn → `InstanceStart` accepted, via API calls vs via `--config-file`.
/// Run with `--ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement; run explicitly"]
async fn measure_start_api_vs_config_file() {
    let Some(bin) = firecracker_bin("measure_start_api_vs_config_file") else {
        return;
    };
    let runs: usize = std::env::var("MVM_MEASURE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let f = Fixture::new();
    let mut api = Vec::new();
    let mut file = Vec::new();
    for i in 0..runs {
        for mode in [StartMode::Api, StartMode::ConfigFile] {
            let name = format!("m{i}{}", if mode == StartMode::Api { "a" } else { "f" });
            let dir = f.dir(&name);
            let spec = f.spec(&name, None);
            let b = FirecrackerBackend::new(bin.clone(), false).with_start_mode(mode);
            let t0 = Instant::now();
            let mut vmm = b.launch(&spec, &dir, deadline(15)).await.unwrap();
            let dt = t0.elapsed();
            vmm.child.start_kill().unwrap();
            vmm.child.wait().await.unwrap();
            if mode == StartMode::Api {
                api.push(dt)
            } else {
                file.push(dt)
            }
        }
    }
    api.sort();
    file.sort();
    eprintln!(
        "MEASURE spawn->InstanceStart accepted, {runs} runs each: API median {:?} (min {:?}, max {:?}); --config-file median {:?} (min {:?}, max {:?})",
        api[runs / 2],
        api[0],
        api[runs - 1],
        file[runs / 2],
        file[0],
        file[runs - 1]
    );
}
