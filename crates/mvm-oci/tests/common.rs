//! Real parts for the OCI tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on a random 127.0.0.1 port in a temporary
//! directory, optionally with htpasswd auth; test images built with
//! `umoci` from busybox-based trees and pushed with `skopeo`; a TCP proxy
//! that cuts one blob download short (fault injection in front of the real
//! registry, not a mock of it).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mvm_core::MvmHome;

/// Why these tests cannot run here, if they cannot.
pub fn missing(test: &str) -> bool {
    let tools = [
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("umoci", "umoci"),
        ("htpasswd", "apache2-utils"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
    ];
    let absent: Vec<String> = tools
        .iter()
        .filter(|(t, _)| mvm_image::which(t).is_none())
        .map(|(t, p)| format!("{t} ({p})"))
        .collect();
    let mut why = Vec::new();
    if !absent.is_empty() {
        why.push(format!("missing {}", absent.join(", ")));
    }
    if !Path::new("/bin/busybox").exists() {
        why.push("missing /bin/busybox (busybox-static)".into());
    }
    if mvm_image::kernel::resolve_debian_package(mvm_image::kernel::DEBIAN_METAPACKAGE).is_err()
        && !kernel_cache()
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    {
        why.push("apt cannot resolve linux-image-cloud-amd64".into());
    }
    if why.is_empty() {
        return false;
    }
    mvm_core::testing::skip(&format!("SKIPPED: {test}: {}", why.join("; ")));
    true
}

/// The kernel package cache shared with mvm-image's tests.
fn kernel_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mvm-image-kernel-cache")
}

/// A temporary `$MVM_HOME` sharing the kernel download.
pub fn temp_home() -> (tempfile::TempDir, MvmHome) {
    let dir = tempfile::Builder::new()
        .prefix("mvm-oci-")
        .tempdir()
        .unwrap();
    let home = MvmHome::new(dir.path());
    fs_err::create_dir_all(home.cache_dir()).unwrap();
    fs_err::create_dir_all(kernel_cache()).unwrap();
    std::os::unix::fs::symlink(kernel_cache(), home.cache_dir().join("kernel")).unwrap();
    (dir, home)
}

/// Poll `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Run a tool, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The HTTP status of `GET /v2/` on `port`, if it answers.
fn v2_status(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A docker-registry process; killed and reaped on drop.
pub struct Registry {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its storage directory.
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Start a registry; with `auth`, htpasswd (bcrypt) auth for that user.
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("mvm-oci-reg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        fs_err::create_dir_all(&data).unwrap();
        let mut auth_yaml = String::new();
        if let Some((user, pass)) = auth {
            let line = run(Command::new("htpasswd").args(["-Bbn", user, pass]));
            let file = dir.path().join("htpasswd");
            fs_err::write(&file, line.trim_end().to_owned() + "\n").unwrap();
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: mvm-test\n    path: {}\n",
                file.display()
            );
        }
        // A free port: bind, read it, release; a lost race shows as the
        // registry exiting, and we try another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.path().join("config.yml");
            fs_err::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                    data.display()
                ),
            )
            .unwrap();
            let log = fs_err::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap().into_parent())
                .stderr(log.into_parent())
                .spawn()
                .expect("docker-registry runs");
            let mut exited = false;
            let ready = wait_until(Duration::from_secs(30), || {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    return true;
                }
                matches!(v2_status(port), Some(200 | 401))
            });
            if ready && !exited {
                return Registry {
                    child,
                    port,
                    data,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            if !exited {
                panic!(
                    "docker-registry did not answer on port {port} within 30 s: {}",
                    fs_err::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
                );
            }
        }
        panic!("docker-registry could not start on a free port");
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file the registry stores blob `digest` in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.data
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

trait IntoParent {
    fn into_parent(self) -> Stdio;
}

impl IntoParent for fs_err::File {
    fn into_parent(self) -> Stdio {
        Stdio::from(self.into_parts().0)
    }
}

/// `skopeo copy` from an OCI layout to a registry.
pub fn push(layout: &Path, tag: &str, reg: &Registry, dest: &str, creds: Option<&str>, all: bool) {
    let mut c = Command::new("skopeo");
    c.args(["--insecure-policy", "copy", "--dest-tls-verify=false", "-q"]);
    if all {
        c.arg("--all");
    }
    if let Some(cr) = creds {
        c.args(["--dest-creds", cr]);
    }
    c.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{dest}", reg.host()));
    run(&mut c);
}

/// The manifest the registry serves for `repo:tag` (skopeo may have
/// recompressed layers on push, so layout digests can differ).
pub fn registry_manifest(reg: &Registry, repo_tag: &str) -> serde_json::Value {
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/{repo_tag}", reg.host()),
    ]));
    serde_json::from_str(&out).unwrap()
}

/// `skopeo copy` between local transports (e.g. to `docker-archive:`).
pub fn skopeo_copy(src: &str, dst: &str, extra: &[&str]) {
    let mut c = Command::new("skopeo");
    c.args(["--insecure-policy", "copy", "-q"])
        .args(extra)
        .arg(src)
        .arg(dst);
    run(&mut c);
}

/// A layer tar built in memory.
pub struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    pub fn new() -> Self {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Complete);
        Self(b)
    }
    fn header(kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h
    }
    pub fn dir(mut self, p: &str, mode: u32, uid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, uid);
        self.0.append_data(&mut h, p, &[][..]).unwrap();
        self
    }
    pub fn file(mut self, p: &str, data: &[u8], mode: u32, uid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, p, data).unwrap();
        self
    }
    pub fn file_with_xattr(mut self, p: &str, data: &[u8], key: &str, value: &[u8]) -> Self {
        self.0
            .append_pax_extensions([(format!("SCHILY.xattr.{key}").as_str(), value)])
            .unwrap();
        self.file(p, data, 0o644, 0)
    }
    pub fn symlink(mut self, p: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, p, target).unwrap();
        self
    }
    pub fn hardlink(mut self, p: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, p, target).unwrap();
        self
    }
    pub fn write(self, path: &Path) {
        fs_err::write(path, self.0.into_inner().unwrap()).unwrap();
    }
}

/// The busybox applets the test images have (as symlinks).
const APPLETS: [&str; 14] = [
    "grep", "head", "sh", "id", "ls", "cat", "stat", "echo", "pwd", "env", "test", "readlink",
    "getfattr", "true",
];

/// An OCI image layout built with umoci, holding:
///
/// - `app`: busybox base layer + a layer with a whiteout, an opaque
///   directory, a hard link to a file of the layer below, a setuid file,
///   a file with an xattr; `/etc/resolv.conf` is a dangling symlink and
///   `/etc/hosts` is missing; Entrypoint/Cmd/Env/WorkingDir/User set;
/// - `app2`: `app` plus one more layer (shares `app`'s layers);
/// - `arm`: `app`'s layers with architecture arm64;
/// - `multi`: an index of `app` (linux/amd64) and `arm` (linux/arm64);
/// - `armonly`: an index of `arm` alone.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn umoci(args: &[&str]) {
    run(Command::new("umoci").args(args));
}

pub fn build_layout() -> Layout {
    let dir = tempfile::Builder::new()
        .prefix("mvm-oci-layout-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("layout");
    let l = path.to_str().unwrap().to_owned();
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &format!("{l}:app")]);

    let busybox = fs_err::read("/bin/busybox").unwrap();
    let mut base = Tar::new()
        .dir("bin", 0o755, 0)
        .file("bin/busybox", &busybox, 0o755, 0)
        .dir("etc", 0o755, 0)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            0o644,
            0,
        )
        .file(
            "etc/group",
            b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
            0o644,
            0,
        )
        .symlink("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf")
        .dir("old", 0o755, 0)
        .file("old/gone.txt", b"deleted by the upper layer\n", 0o644, 0)
        .file("old/kept.txt", b"kept\n", 0o644, 0)
        .dir("opq", 0o755, 0)
        .file("opq/lower1", b"1", 0o644, 0)
        .file("opq/lower2", b"2", 0o644, 0)
        .dir("data", 0o755, 0)
        .file("data/original", b"shared content\n", 0o644, 0)
        .dir("home", 0o755, 0)
        .dir("home/app", 0o750, 1000)
        .dir("work", 0o755, 1000);
    for a in APPLETS {
        base = base.symlink(&format!("bin/{a}"), "busybox");
    }
    let l1 = dir.path().join("l1.tar");
    base.write(&l1);
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &format!("{l}:app"),
        l1.to_str().unwrap(),
    ]);

    let l2 = dir.path().join("l2.tar");
    Tar::new()
        .dir("old", 0o755, 0)
        .file("old/.wh.gone.txt", b"", 0o644, 0)
        .dir("opq", 0o755, 0)
        .file("opq/.wh..wh..opq", b"", 0o644, 0)
        .file("opq/upper", b"upper\n", 0o644, 0)
        .hardlink("data/link", "data/original")
        .dir("usr", 0o755, 0)
        .dir("usr/bin", 0o755, 0)
        .file("usr/bin/suid", b"#!/bin/sh\nid\n", 0o4755, 0)
        .file("home/app/own", b"mine\n", 0o640, 1000)
        .file_with_xattr("data/xattr", b"x\n", "user.mvm", b"yes")
        .write(&l2);
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &format!("{l}:app"),
        l2.to_str().unwrap(),
    ]);
    umoci(&[
        "config",
        "--image",
        &format!("{l}:app"),
        "--config.entrypoint",
        "/bin/sh",
        "--config.entrypoint",
        "-c",
        "--config.cmd",
        "echo hello from $GREETING; id -u",
        "--config.env",
        "GREETING=hello",
        "--config.env",
        "PATH=/usr/bin:/bin",
        "--config.workingdir",
        "/work",
        "--config.user",
        "app",
        "--config.exposedports",
        "8080/tcp",
        "--config.label",
        "org.example.test=mvm",
    ]);

    let l3 = dir.path().join("l3.tar");
    Tar::new()
        .file("v2.txt", b"second tag\n", 0o644, 0)
        .write(&l3);
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &format!("{l}:app"),
        "--tag",
        "app2",
        l3.to_str().unwrap(),
    ]);
    umoci(&[
        "config",
        "--image",
        &format!("{l}:app"),
        "--tag",
        "arm",
        "--architecture",
        "arm64",
    ]);
    add_index(&path, "multi", &["app", "arm"]);
    add_index(&path, "armonly", &["arm"]);
    Layout { dir, path }
}

fn index_json(layout: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap()
}

/// The manifest descriptor of `tag` in a layout.
pub fn descriptor(layout: &Path, tag: &str) -> serde_json::Value {
    index_json(layout)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag}"))
        .clone()
}

/// A blob of a layout, parsed.
pub fn blob_json(layout: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.trim_start_matches("sha256:");
    serde_json::from_slice(&fs_err::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

fn write_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let d = mvm_oci::blobs::Digest::of_bytes(bytes);
    fs_err::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    (d.to_string(), bytes.len())
}

/// Add an image index tagged `tag` listing the manifests of `tags`, each
/// with the platform of its config.
fn add_index(layout: &Path, tag: &str, tags: &[&str]) {
    let manifests: Vec<serde_json::Value> = tags
        .iter()
        .map(|t| {
            let mut d = descriptor(layout, t);
            let m = blob_json(layout, d["digest"].as_str().unwrap());
            let c = blob_json(layout, m["config"]["digest"].as_str().unwrap());
            d.as_object_mut().unwrap().remove("annotations");
            d["platform"] = serde_json::json!({"os": c["os"], "architecture": c["architecture"]});
            d
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let (digest, size) = write_blob(layout, &serde_json::to_vec(&index).unwrap());
    let mut top = index_json(layout);
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    fs_err::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

/// Add an image tagged `tag` whose only layer is an uncompressed tar with
/// one `size`-byte file of incompressible bytes (for streaming checks).
pub fn add_big_image(layout: &Path, tag: &str, size: usize) {
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let mut t = Tar::new().file("big.bin", &data, 0o644, 0);
    drop(data);
    // A shell so the image can run something.
    t = t.file(
        "bin/busybox",
        &fs_err::read("/bin/busybox").unwrap(),
        0o755,
        0,
    );
    let layer = t.0.into_inner().unwrap();
    let diff_id = mvm_oci::blobs::Digest::of_bytes(&layer).to_string();
    let (ldigest, lsize) = write_blob(layout, &layer);
    drop(layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (cdigest, csize) = write_blob(layout, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ldigest, "size": lsize}],
    });
    let (mdigest, msize) = write_blob(layout, &serde_json::to_vec(&manifest).unwrap());
    let mut top = index_json(layout);
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": mdigest, "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    fs_err::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

/// `debugfs -R REQUEST IMAGE` output.
pub fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TCP proxy in front of the registry that, while armed, cuts the
/// connection after `after` response bytes of a request whose first line
/// contains `needle` — or, with `stall` set, stops forwarding there (the
/// connection stays open) until `stall` is cleared.
pub struct CutProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub cut: Arc<Mutex<Option<(String, u64)>>>,
    pub stall: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl CutProxy {
    pub fn start(upstream: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let cut: Arc<Mutex<Option<(String, u64)>>> = Arc::default();
        let stall = Arc::new(AtomicBool::new(false));
        let (s, c, st) = (stop.clone(), cut.clone(), stall.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let armed = Arc::new(AtomicBool::new(false));
                let rule = c.lock().unwrap().clone();
                let (mut c_in, mut u_out) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                let (a1, needle) = (armed.clone(), rule.as_ref().map(|r| r.0.clone()));
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if let Some(nd) = &needle
                            && String::from_utf8_lossy(&buf[..n]).contains(nd.as_str())
                        {
                            a1.store(true, Ordering::SeqCst);
                        }
                        if u_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = u_out.shutdown(Shutdown::Write);
                });
                let (mut u_in, mut c_out) = (up, client);
                let after = rule.map(|r| r.1);
                let (stall, stop) = (st.clone(), s.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let mut sent = 0u64;
                    while let Ok(n) = u_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut n = n;
                        if let Some(limit) = after
                            && armed.load(Ordering::SeqCst)
                        {
                            if sent + n as u64 > limit {
                                n = (limit - sent) as usize;
                                let _ = c_out.write_all(&buf[..n]);
                                // Hold the connection, silent, while stalled.
                                while stall.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                                    std::thread::park_timeout(Duration::from_millis(50));
                                }
                                let _ = c_out.shutdown(Shutdown::Both);
                                let _ = u_in.shutdown(Shutdown::Both);
                                return;
                            }
                            sent += n as u64;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Write);
                });
            }
        });
        CutProxy {
            port,
            stop,
            cut,
            stall,
            accept: Some(accept),
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// A tokio runtime for the async pull API.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
