//! Egress policies checked from real guests (QEMU/TCG), end to end. mvm,
//! its guests and every server run inside network namespaces this test
//! creates (and deletes): no packet leaves this machine, and a test that
//! cannot create its namespaces fails.
//!
//! ```text
//!  "host" ns: mvm (bridge mvmbr0 172.16.0.1, NAT, nft tables, DNS filters)
//!     eg-i0 198.51.100.1 ──veth── "internet" ns 198.51.100.2 :80 :81 :5001 (sink)
//!                                              198.51.100.3 :80  (other.example)
//!                                              198.51.100.53 :53 (test DNS server)
//!     eg-m0 169.254.169.1 ──veth── "metadata" ns 169.254.169.254 :80
//! ```
//!
//! The host namespace's resolver is the test DNS server
//! (`/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts over
//! `/etc/resolv.conf`), so the machines' DNS filters forward to it.
//! Busybox's `wget -T` crashes in the guest: `timeout N wget` instead.

use std::io::{BufRead, BufReader};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{can_boot, e2e_home, ensure_image, wait_until};

const INET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
const DNS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// A named network namespace (`ip netns add`), deleted on drop with
/// everything in it, and its resolv.conf for `ip netns exec`.
struct Ns {
    name: String,
}

impl Ns {
    fn new(role: &str) -> Self {
        let name = format!("mvmeg-{role}-{}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(st.success(), "cannot create network namespace {name}");
        let ns = Ns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    fn run(&self, argv: &[&str]) -> String {
        let out = self.cmd(argv).output().unwrap();
        assert!(
            out.status.success(),
            "{argv:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn resolv_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Bind a socket inside the namespace (it stays there when used from
    /// other threads).
    fn bind<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let fd = fs_err::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                fd.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns(CLONE_NEWNET)");
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = fs_err::remove_dir_all(self.resolv_dir());
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A server thread, stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    wake: Box<dyn Fn() + Send>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        (self.wake)();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// HTTP: answers every request with `tag`; a connection that starts with
/// `SINK` is read to its end and answered with the byte count.
fn http(ns: &Ns, addr: SocketAddr, tag: &'static str) -> Server {
    let l = ns.bind(move || TcpListener::bind(addr).unwrap());
    let wake = l.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        for c in l.incoming() {
            if s.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut c) = c else {
                // A shut-down listener fails every accept.
                if s.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            };
            std::thread::spawn(move || {
                let mut first = [0u8; 4];
                if c.read_exact(&mut first).is_err() {
                    return;
                }
                if &first == b"SINK" {
                    let n = std::io::copy(&mut c, &mut std::io::sink()).unwrap_or(0);
                    let _ = c.write_all(format!("{n}\n").as_bytes());
                    return;
                }
                // Read the whole request first: closing with unread data
                // would send a reset instead of the answer.
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = first.to_vec();
                let mut b = [0u8; 512];
                while !req.ends_with(b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => req.extend_from_slice(&b[..k]),
                    }
                }
                let _ = c.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{tag}\n").as_bytes());
            });
        }
    });
    Server {
        stop,
        // Shutting the listening socket down wakes the blocked accept.
        wake: Box::new(move || {
            let _ = rustix::net::shutdown(&wake, rustix::net::Shutdown::Both);
        }),
        thread: Some(thread),
    }
}

/// A tiny authoritative DNS server (UDP): A records of `zone`, NXDOMAIN
/// for other names.
fn dns(ns: &Ns, addr: SocketAddr, zone: Vec<(&'static str, Ipv4Addr)>) -> Server {
    let sock = ns.bind(move || UdpSocket::bind(addr).unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !s.load(Ordering::Relaxed) {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if let Some(r) = dns_answer(&buf[..n], &zone) {
                let _ = sock.send_to(&r, peer);
            }
        }
    });
    Server {
        stop,
        wake: Box::new(|| {}),
        thread: Some(thread),
    }
}

fn dns_answer(q: &[u8], zone: &[(&str, Ipv4Addr)]) -> Option<Vec<u8>> {
    let mut i = 12;
    let mut labels = Vec::new();
    while *q.get(i)? != 0 {
        let l = usize::from(q[i]);
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + l)?).to_ascii_lowercase());
        i += 1 + l;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let qend = i + 5;
    q.get(..qend)?;
    let name = labels.join(".");
    let ip = zone.iter().find(|(n, _)| *n == name).map(|(_, ip)| *ip);
    let answer = ip.filter(|_| qtype == 1);
    let flags: u16 = if ip.is_some() { 0x8580 } else { 0x8583 };
    let mut r = q[..2].to_vec();
    r.extend(flags.to_be_bytes());
    r.extend(1u16.to_be_bytes());
    r.extend(u16::from(answer.is_some()).to_be_bytes());
    r.extend([0, 0, 0, 0]);
    r.extend_from_slice(&q[12..qend]);
    if let Some(ip) = answer {
        r.extend([0xc0, 0x0c, 0, 1, 0, 1]);
        r.extend(300u32.to_be_bytes());
        r.extend(4u16.to_be_bytes());
        r.extend(ip.octets());
    }
    Some(r)
}

/// The namespaces and servers of the test, and mvm running in "host".
/// (Fields drop in order: the servers before their namespaces.)
struct World {
    _servers: Vec<Server>,
    host: Ns,
    _inet: Ns,
    _meta: Ns,
    home: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let host = Ns::new("h");
        let inet = Ns::new("i");
        let meta = Ns::new("m");
        for (a, b, ns, host_ip, far, gw) in [
            (
                "eg-i0",
                "eg-i1",
                &inet,
                "198.51.100.1/24",
                vec!["198.51.100.2/24", "198.51.100.3/24", "198.51.100.53/24"],
                "198.51.100.1",
            ),
            (
                "eg-m0",
                "eg-m1",
                &meta,
                "169.254.169.1/24",
                vec!["169.254.169.254/24"],
                "169.254.169.1",
            ),
        ] {
            host.run(&[
                "ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", &ns.name,
            ]);
            host.run(&["ip", "addr", "add", host_ip, "dev", a]);
            host.run(&["ip", "link", "set", a, "up"]);
            for f in far {
                ns.run(&["ip", "addr", "add", f, "dev", b]);
            }
            ns.run(&["ip", "link", "set", b, "up"]);
            ns.run(&["ip", "route", "add", "default", "via", gw]);
        }
        fs_err::create_dir_all(host.resolv_dir()).unwrap();
        fs_err::write(
            host.resolv_dir().join("resolv.conf"),
            format!("nameserver {DNS}\n"),
        )
        .unwrap();
        let servers = vec![
            http(&inet, (INET, 80).into(), "internet:80"),
            http(&inet, (INET, 81).into(), "internet:81"),
            http(&inet, (INET, 5001).into(), "sink"),
            http(&inet, (OTHER, 80).into(), "other:80"),
            http(&meta, (METADATA, 80).into(), "metadata"),
            dns(
                &inet,
                (DNS, 53).into(),
                vec![("test-host.example", INET), ("other.example", OTHER)],
            ),
        ];
        // A registry of its own, sharing the built image and cache.
        let home = tempfile::Builder::new().prefix("mvm-eg").tempdir().unwrap();
        for shared in ["images", "cache"] {
            std::os::unix::fs::symlink(e2e_home().join(shared), home.path().join(shared)).unwrap();
        }
        World {
            host,
            _inet: inet,
            _meta: meta,
            home,
            _servers: servers,
        }
    }

    fn mvm(&self, args: &[&str]) -> std::process::Output {
        let mut c = self
            .host
            .cmd(&[assert_cmd::cargo::cargo_bin("mvm").to_str().unwrap()]);
        c.args(args)
            .env("MVM_HOME", self.home.path())
            .env("MVM_NETWORK", "nat")
            .env_remove("MVM_EGRESS")
            .env_remove("MVM_BACKEND");
        c.output().unwrap()
    }

    fn mvm_ok(&self, args: &[&str]) -> String {
        let out = self.mvm(args);
        assert!(
            out.status.success(),
            "mvm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sh -c SCRIPT` in machine `m`: its exit status and output.
    fn sh(&self, m: &str, script: &str) -> (i32, String) {
        let out = self.mvm(&["exec", m, "--", "sh", "-c", script]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// `GET url` from machine `m`: the body, or the failure.
    fn get(&self, m: &str, url: &str) -> Result<String, String> {
        match self.sh(m, &format!("timeout 5 wget -q -O- {url}")) {
            (0, body) => Ok(body.trim().to_owned()),
            (c, text) => Err(format!("exit {c}: {}", text.trim())),
        }
    }

    fn reach(&self, m: &str, url: &str, tag: &str) {
        assert_eq!(
            self.get(m, url).as_deref(),
            Ok(tag),
            "{m} should reach {url}"
        );
    }

    /// `wget url` in machine `m` fails in the guest (refused, or no
    /// address for the name): not because mvm could not run it.
    fn refused(&self, m: &str, url: &str) {
        let (code, text) = self.sh(m, &format!("timeout 5 wget -q -O- {url}"));
        assert!(
            code == 1 && text.contains("wget:") || code == 143,
            "{m} should not reach {url}, got exit {code}: {text}"
        );
    }

    fn update(&self, m: &str, policy: &[&str]) {
        let mut args = vec!["update", m];
        for p in policy {
            args.extend(["--egress", p]);
        }
        let out = self.mvm_ok(&args);
        assert!(out.contains("enforced"), "{out}");
    }

    fn inspect(&self, m: &str) -> serde_json::Value {
        serde_json::from_str(&self.mvm_ok(&["inspect", m, "--json"])).unwrap()
    }

    /// The host namespace's nftables ruleset and iptables rules.
    fn rules(&self) -> String {
        self.host.run(&["nft", "list", "ruleset"]) + &self.host.run(&["iptables-save"])
    }
}

/// Whether process `pid` has exited (gone, or a zombie).
fn exited(pid: i32) -> bool {
    match fs_err::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(st) => st
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => true,
    }
}

fn ping(w: &World, from: &str, to: &str) -> bool {
    // Two probes: the first may wait for ARP.
    w.sh(from, &format!("ping -c2 -W2 {to}")).0 == 0
}

#[test]
fn egress_policies_from_real_guests() {
    if !can_boot("egress_policies_from_real_guests") {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        mvm_core::testing::skip(
            "SKIPPED: egress_policies_from_real_guests: needs root (network namespaces, TAP, nftables)",
        );
        return;
    }
    ensure_image();
    let w = World::new();
    let pid = std::process::id();
    let (a, b) = (format!("ega-{pid}"), format!("egb-{pid}"));
    let _cleanup = Cleanup {
        w: &w,
        names: vec![a.clone(), b.clone()],
    };
    let inet = format!("http://{INET}/");
    let inet81 = format!("http://{INET}:81/");
    let metadata = format!("http://{METADATA}/");

    // Transient exec, applied at start: the address and port rule; then
    // changed live (`mvm update` signals the exec process, which owns the
    // machine): the guest waits for :81 to open.
    let mut exec = w
        .host
        .cmd(&[assert_cmd::cargo::cargo_bin("mvm").to_str().unwrap()]);
    exec.args([
        "exec",
        "--egress",
        &format!("allow={INET}:80"),
        "--",
        "sh",
        "-c",
        &format!(
            "timeout 5 wget -q -O- {inet} && ! timeout 5 wget -q -O- {inet81} && ! timeout 5 wget -q -O- {metadata} && echo phase1 && \
             for i in $(seq 60); do timeout 5 wget -q -O- {inet81} && exit 0; sleep 0.5; done; exit 9"
        ),
    ])
    .env("MVM_HOME", w.home.path())
    .env("MVM_NETWORK", "nat")
    .env_remove("MVM_EGRESS")
    .env_remove("MVM_BACKEND")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut exec = exec.spawn().unwrap();
    let mut lines = BufReader::new(exec.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        seen.push(l.clone());
        if l == "phase1" {
            break;
        }
    }
    assert_eq!(
        seen,
        ["internet:80", "phase1"],
        "transient exec before the update"
    );
    let ps: Vec<serde_json::Value> = serde_json::from_str(&w.mvm_ok(&["ps", "--json"])).unwrap();
    let transient = ps
        .iter()
        .find(|m| m["transient"] == true)
        .expect("the transient machine")["name"]
        .as_str()
        .unwrap()
        .to_owned();
    w.update(&transient, &[&format!("allow={INET}:80,{INET}:81")]);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let st = exec.wait().unwrap();
    let mut err = String::new();
    exec.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        st.success() && rest == ["internet:81"],
        "transient exec after the update: {st}, {rest:?}, {err}"
    );

    // deny-all at start: nothing, not even DNS; refusals are counted.
    w.mvm_ok(&["run", "--name", &a, "--egress", "deny-all"]);
    w.mvm_ok(&["run", "--name", &b, "--egress", "deny-all"]);
    let (_, conf) = w.sh(&a, "cat /etc/resolv.conf");
    assert!(conf.contains("nameserver 172.16.0.1"), "{conf}");
    w.refused(&a, &inet);
    w.refused(&a, &metadata);
    w.refused(&a, "http://test-host.example/");
    let ip_b = w.inspect(&b)["record"]["net"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!ping(&w, &a, &ip_b), "deny-all machines reached each other");
    let eg = &w.inspect(&a)["egress"];
    assert_eq!(eg["policy"], "deny-all", "{eg}");
    assert_eq!(eg["enforcement"], "nftables", "{eg}");
    assert!(eg["refused"]["packets"].as_u64().unwrap() > 0, "{eg}");
    assert!(eg["refused"]["dns_queries"].as_u64().unwrap() > 0, "{eg}");
    eprintln!("egress apply at start (deny-all): {} ms", eg["apply_ms"]);

    // Live changes (mvm update): an address and port ...
    w.update(&a, &[&format!("allow={INET}:80")]);
    w.reach(&a, &inet, "internet:80");
    w.refused(&a, &inet81);
    w.refused(&a, &metadata);
    // ... allow-all: everything but the metadata service and the others ...
    w.update(&a, &["allow-all"]);
    w.reach(&a, &inet81, "internet:81");
    w.refused(&a, &metadata);
    assert!(!ping(&w, &a, &ip_b), "allow-all reached another machine");
    // ... the metadata service only when named by address ...
    w.update(&a, &["allow=169.254.169.254"]);
    w.reach(&a, &metadata, "metadata");
    w.refused(&a, &inet);
    // ... a host name, resolved through the test DNS server ...
    w.update(&a, &["allow=test-host.example:80"]);
    w.reach(&a, "http://test-host.example/", "internet:80");
    w.refused(&a, "http://other.example/");
    w.refused(&a, &format!("http://{OTHER}/"));
    let (_, lookup) = w.sh(&a, "nslookup other.example");
    assert!(lookup.contains("REFUSED"), "{lookup}");
    let eg = &w.inspect(&a)["egress"];
    assert_eq!(eg["policy"], "allow=test-host.example:80", "{eg}");
    assert_eq!(
        eg["resolved"]["test-host.example"]["addrs"],
        serde_json::json!([INET.to_string()]),
        "{eg}"
    );
    assert!(eg["refused"]["packets"].as_u64().unwrap() > 0, "{eg}");
    // ... and the machine subnet, on both sides.
    w.update(&a, &["allow=172.16.0.0/24"]);
    w.update(&b, &["allow=172.16.0.0/24"]);
    assert!(
        ping(&w, &a, &ip_b),
        "machines allowing the subnet cannot ping"
    );

    // rm -f: nothing of b is left.
    let tap_b = w.inspect(&b)["record"]["net"]["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    let tap_a = w.inspect(&a)["record"]["net"]["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(w.rules().contains(&tap_b));
    w.mvm_ok(&["rm", "-f", &b]);
    let rules = w.rules();
    assert!(!rules.contains(&tap_b), "rules of {b} left:\n{rules}");
    assert!(
        rules.contains(&tap_a),
        "rules of {a} gone with {b}:\n{rules}"
    );

    // kill -9 of a's supervisor: the next mvm command (gc) recovers the
    // machine and nothing of it is left.
    let sup = w.inspect(&a)["supervisor_pid"].as_u64().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(sup).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || exited(sup)));
    w.mvm_ok(&["gc"]);
    let rules = w.rules();
    assert!(!rules.contains("mvm-eg-"), "egress tables left:\n{rules}");
    assert!(!rules.contains(&tap_a), "rules of {a} left:\n{rules}");
    let eg = &w.inspect(&a)["egress"];
    assert_eq!(eg["enforcement"], "none", "{eg}");
    assert_eq!(eg["policy"], "allow=172.16.0.0/24", "{eg}");
}

/// Throughput from a real guest through NAT and through the `-p`
/// forwarder, with no allowlist (allow-all) and with a 20-entry one.
/// Prints the figures; run by hand (TCG makes the guest the bottleneck):
/// `cargo test -p mvm-cli --test integration e2e_egress::throughput -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: prints figures"]
fn throughput_with_and_without_an_allowlist() {
    if !can_boot("throughput_with_and_without_an_allowlist")
        || !rustix::process::geteuid().is_root()
    {
        mvm_core::testing::skip("SKIPPED: throughput: needs root and QEMU");
        return;
    }
    ensure_image();
    let w = World::new();
    let m = format!("egt-{}", std::process::id());
    let _cleanup = Cleanup {
        w: &w,
        names: vec![m.clone()],
    };
    w.mvm_ok(&["run", "--name", &m, "-p", "18081:8081"]);
    let mut list: Vec<String> = (1..=18).map(|i| format!("203.0.113.{i}:443")).collect();
    list.push("test-host.example:443".into());
    list.push(format!("{INET}:5001"));
    let list20 = format!("allow={}", list.join(","));
    const MIB: u64 = 32;
    let nat = |w: &World| -> f64 {
        let t = Instant::now();
        let (c, out) = w.sh(
            &m,
            &format!(
                "(printf SINK; dd if=/dev/zero bs=64k count={} 2>/dev/null) | nc {INET} 5001",
                MIB * 16
            ),
        );
        assert_eq!(c, 0, "{out}");
        assert_eq!(out.trim(), (MIB << 20).to_string(), "bytes lost: {out}");
        MIB as f64 / t.elapsed().as_secs_f64()
    };
    let forward = |w: &World| -> f64 {
        w.sh(
            &m,
            &format!(
                "(dd if=/dev/zero bs=64k count={} 2>/dev/null | nc -l -p 8081 >/dev/null) >/dev/null 2>&1 &",
                MIB * 16
            ),
        );
        let addr: SocketAddr = "127.0.0.1:18081".parse().unwrap();
        w.host.bind(move || {
            // The guest's listener may need a moment: retry on a reset.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let t = Instant::now();
                let mut s = TcpStream::connect(addr).unwrap();
                let mut buf = vec![0u8; 256 << 10];
                let mut n = 0u64;
                while let Ok(k) = s.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                let _ = s.shutdown(Shutdown::Both);
                if n == MIB << 20 {
                    return MIB as f64 / t.elapsed().as_secs_f64();
                }
                assert!(Instant::now() < deadline, "only {n} bytes through -p");
            }
        })
    };
    // Interleaved rounds, so drift on the shared machine hits both.
    let policies = [
        ("allow-all", "allow-all"),
        ("20-entry allowlist", list20.as_str()),
    ];
    let mut nat_v = [Vec::new(), Vec::new()];
    let mut fwd_v = [Vec::new(), Vec::new()];
    for _ in 0..3 {
        for (i, (_, policy)) in policies.iter().enumerate() {
            w.update(&m, &[policy]);
            nat_v[i].push(nat(&w));
            fwd_v[i].push(forward(&w));
        }
    }
    let show = |v: &[f64]| {
        let best = v.iter().copied().fold(0.0, f64::max);
        let all: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        format!("{best:.1} MiB/s (runs {})", all.join(", "))
    };
    for (i, (label, _)) in policies.iter().enumerate() {
        eprintln!(
            "{label}: NAT guest->internet {}; -p host->guest {}",
            show(&nat_v[i]),
            show(&fwd_v[i])
        );
    }
}

/// `mvm rm -f` of the test's machines, also when the test fails.
struct Cleanup<'a> {
    w: &'a World,
    names: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let mut args = vec!["rm", "-f"];
        args.extend(self.names.iter().map(String::as_str));
        let _ = self.w.mvm(&args);
    }
}
