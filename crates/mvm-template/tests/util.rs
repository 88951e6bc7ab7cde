//! Shared helpers: the default image (built once per run, cached across
//! runs), the QEMU backend, machines owned by the test, agent sessions.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mvm_agent_proto::client::{AgentClient, ExecEvent};
use mvm_agent_proto::identity::ReidentifyRequest;
use mvm_core::backend::{RunningVmm, VmSpec};
use mvm_core::paths::{InstanceDir, MvmHome};
use mvm_image::Image;
use mvm_qemu::QemuBackend;

/// The deadline for a cold boot under TCG on a busy 2-core machine.
pub const BOOT: Duration = Duration::from_secs(180);

pub fn deadline(d: Duration) -> Instant {
    Instant::now() + d
}

/// The default image and QEMU, or `None` after reporting why the test is
/// skipped.
pub fn prerequisites(test: &str) -> Option<(Image, QemuBackend)> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    let backend = match QemuBackend::detect() {
        Ok(b) => b,
        Err(e) => {
            mvm_core::testing::skip(&format!("SKIPPED: {test}: no QEMU ({e})"));
            return None;
        }
    };
    let img = IMAGE.get_or_init(|| {
        let bad: Vec<String> = mvm_image::host_tools()
            .into_iter()
            .filter(|t| !t.ok && t.tool != "apt-get")
            .map(|t| format!("{} ({})", t.tool, t.fix))
            .collect();
        if !bad.is_empty() {
            return Err(format!("missing host tools: {}", bad.join(", ")));
        }
        // Persistent across runs: a rebuild of an unchanged image is a
        // cache hit.
        let home = MvmHome::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("mvm-template-home"));
        fs_err::create_dir_all(home.root()).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let img = mvm_image::ensure_default(&home, &mvm_image::NoProgress)
            .map_err(|e| format!("cannot build the default image: {e}"))?;
        eprintln!("default image ready in {:?}", t.elapsed());
        Ok(img)
    });
    match img {
        Ok(i) => Some((i.clone(), backend)),
        Err(e) => {
            mvm_core::testing::skip(&format!("SKIPPED: {test}: {e}"));
            None
        }
    }
}

/// A temporary directory with a short path (Unix socket paths are limited).
pub fn short_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mvmt")
        .tempdir_in("/tmp")
        .unwrap()
}

/// An instance directory `name` under `root`.
pub fn instance(root: &Path, name: &str) -> InstanceDir {
    let d = InstanceDir::new(root.join(name));
    fs_err::create_dir_all(d.root()).unwrap();
    d
}

/// A machine of the default image running from its initramfs.
pub fn spec(img: &Image, name: &str, memory_mib: u32) -> VmSpec {
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory_mib,
        kernel: img.kernel.clone(),
        initrd: Some(img.initramfs.clone()),
        kernel_args: vec![format!("mvm.hostname={name}")],
        drives: vec![],
        net: None,
        vsock_cid: 3,
        transient: true,
        isolation: None,
    }
}

/// A VMM the test owns: killed and reaped on drop.
pub struct Vm(pub Option<RunningVmm>);

impl Vm {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().child.id().unwrap()
    }
    pub fn take_guest(&mut self) -> tokio::net::UnixStream {
        self.0.as_mut().unwrap().guest.take().expect("guest stream")
    }
    pub async fn kill(mut self) {
        if let Some(mut v) = self.0.take() {
            let _ = v.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), v.child.wait()).await;
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(v) = self.0.as_mut() {
            let _ = v.child.start_kill();
        }
    }
}

/// Handshake with the agent on `stream` by `deadline`; panics with the
/// console tail of `dir` otherwise.
pub async fn agent(
    stream: tokio::net::UnixStream,
    dir: &InstanceDir,
    within: Duration,
) -> AgentClient {
    match AgentClient::handshake(stream, deadline(within)).await {
        Ok(c) => c,
        Err(e) => panic!(
            "agent of {} not ready: {e}\nconsole:\n{}",
            dir.name(),
            mvm_core::backend::tail_lines(&dir.console_log(), 30).unwrap_or_default()
        ),
    }
}

/// Output of a command.
#[derive(Debug, Default)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `argv` in the guest and collect its output.
pub async fn run(c: &AgentClient, argv: &[&str]) -> Out {
    let mut s = c
        .exec(mvm_agent_proto::ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Out::default();
    while let Some(ev) = s.next_event().await.unwrap() {
        match ev {
            ExecEvent::Stdout(b) => out.stdout.push_str(&String::from_utf8_lossy(&b)),
            ExecEvent::Stderr(b) => out.stderr.push_str(&String::from_utf8_lossy(&b)),
            ExecEvent::Exit(st) => out.code = st.code,
        }
    }
    out
}

/// `sh -c SCRIPT` in the guest; panics unless it exits 0. Returns stdout.
pub async fn sh(c: &AgentClient, script: &str) -> String {
    let o = run(c, &["sh", "-c", script]).await;
    assert_eq!(o.code, Some(0), "{script}: {o:?}");
    o.stdout
}

/// A reidentify request with fresh host entropy and the host's time.
pub fn identity(hostname: &str) -> ReidentifyRequest {
    let mut entropy = vec![0u8; 64];
    fs_err::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy))
        .unwrap();
    let mut id = [0u8; 16];
    fs_err::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .unwrap();
    ReidentifyRequest {
        hostname: hostname.into(),
        entropy,
        unix_time_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        machine_id: Some(id.iter().map(|b| format!("{b:02x}")).collect()),
        net: None,
        remount: vec![],
    }
}

/// A content fingerprint of a file (FNV-1a, std only).
pub fn fnv(path: &Path) -> u64 {
    use std::io::Read;
    let mut f = fs_err::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut h: u64 = 0xcbf29ce484222325;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h;
        }
        for b in &buf[..n] {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
    }
}

/// `Rss`, `Pss`, `Shared_Clean + Shared_Dirty` and `Private_Dirty` of
/// `pid`, in KiB, from `/proc/<pid>/smaps_rollup`.
pub fn memory_kib(pid: u32) -> (u64, u64, u64, u64) {
    let text = fs_err::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("Rss:"),
        field("Pss:"),
        field("Shared_Clean:") + field("Shared_Dirty:"),
        field("Private_Dirty:"),
    )
}

/// Make a small ext4 image at `path` labelled `label` holding `files`.
pub fn ext4_with(path: &Path, label: &str, files: &[(&str, &str)]) {
    let src = tempfile::tempdir().unwrap();
    for (name, content) in files {
        fs_err::write(src.path().join(name), content).unwrap();
    }
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-d"])
        .arg(src.path())
        .arg(path)
        .arg("4M")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Median of durations.
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// An error and its causes on one line, as the CLI prints them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
