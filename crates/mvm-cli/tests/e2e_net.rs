//! Networking, end to end, inside a network namespace the test creates and
//! removes: bridge, TAPs, NAT rules and forwarders never touch the host's
//! real interfaces or tables.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{can_boot, e2e_home, ensure_image, wait_until};

/// A network namespace, deleted on drop (with everything in it).
pub(crate) struct NetNs {
    pub(crate) name: String,
}

impl NetNs {
    pub(crate) fn new() -> Self {
        Self::named(&format!("mvmt-{}", std::process::id()))
    }

    /// A namespace named `name` (unique per test).
    pub(crate) fn named(name: &str) -> Self {
        let name = name.to_owned();
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        let ns = NetNs { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace.
    pub(crate) fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    pub(crate) fn run(&self, argv: &[&str]) -> String {
        let out = self.cmd(argv).output().unwrap();
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `mvm` inside the namespace, with NAT networking.
    pub(crate) fn mvm(&self, home: &Path, args: &[&str]) -> std::process::Output {
        let mut c = self.cmd(&[assert_cmd::cargo::cargo_bin("mvm").to_str().unwrap()]);
        c.args(args)
            .env("MVM_HOME", home)
            .env("MVM_NETWORK", "nat")
            .env_remove("MVM_BACKEND");
        c.output().unwrap()
    }

    pub(crate) fn mvm_ok(&self, home: &Path, args: &[&str]) -> String {
        let out = self.mvm(home, args);
        assert!(
            out.status.success(),
            "mvm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn nat_ports_isolation_and_cleanup() {
    if !can_boot("nat_ports_isolation_and_cleanup") {
        return;
    }
    if !is_root() {
        mvm_core::testing::skip(
            "SKIPPED: nat_ports_isolation_and_cleanup: needs root (network namespaces, TAP)",
        );
        return;
    }
    for tool in ["/usr/bin/curl", "/usr/sbin/iptables", "/usr/bin/python3"] {
        if !Path::new(tool).exists() && which(tool).is_none() {
            mvm_core::testing::skip(&format!(
                "SKIPPED: nat_ports_isolation_and_cleanup: needs {tool}"
            ));
            return;
        }
    }
    ensure_image();
    // A registry of its own (machines of other tests live in the host's
    // network namespace, not in ours), sharing the built image and cache.
    let own_home = tempfile::Builder::new().prefix("mvm-n").tempdir().unwrap();
    for shared in ["images", "cache"] {
        std::os::unix::fs::symlink(e2e_home().join(shared), own_home.path().join(shared)).unwrap();
    }
    let home = own_home.path();
    let ns = NetNs::new();
    let pid = std::process::id();
    let (a, b, n) = (
        format!("na-{pid}"),
        format!("nb-{pid}"),
        format!("nn-{pid}"),
    );
    let cleanup = Cleanup {
        ns: &ns,
        home,
        names: vec![a.clone(), b.clone(), n.clone()],
    };

    // Machines reach each other and the host's services only when their
    // egress policy names them by address (even under allow-all; see
    // e2e_egress for the policies themselves).
    ns.mvm_ok(
        home,
        &[
            "run",
            "--name",
            &a,
            "-p",
            "18080:8080",
            "--egress",
            "allow-all",
            "--egress",
            "allow=172.16.0.0/24,172.16.0.1:19999",
        ],
    );
    ns.mvm_ok(
        home,
        &[
            "run",
            "--name",
            &b,
            "--egress",
            "allow-all",
            "--egress",
            "allow=172.16.0.0/24",
        ],
    );
    ns.mvm_ok(home, &["run", "--name", &n, "--network", "none"]);

    // Distinct addresses from the subnet.
    let ps: Vec<serde_json::Value> =
        serde_json::from_str(&ns.mvm_ok(home, &["ps", "--json"])).unwrap();
    let ip_of = |name: &str| -> String {
        ps.iter().find(|m| m["name"] == name).unwrap()["ip"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (ip_a, ip_b) = (ip_of(&a), ip_of(&b));
    assert!(
        ip_a.starts_with("172.16.0.") && ip_b.starts_with("172.16.0."),
        "{ip_a} {ip_b}"
    );
    assert_ne!(ip_a, ip_b);
    assert_eq!(ip_of(&n), "");

    // Machine to machine.
    ns.mvm_ok(home, &["exec", &a, "--", "ping", "-c1", "-W2", &ip_b]);

    // Machine to a TCP server on the bridge gateway.
    let mut server = ns
        .cmd(&[
            "python3",
            "-c",
            "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);\
             s.bind(('172.16.0.1',19999));s.listen();print('ready',flush=True);\
             c,_=s.accept();c.sendall(b'hello-from-gateway');c.close()",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let got = ns.mvm_ok(home, &["exec", &a, "--", "nc", "172.16.0.1", "19999"]);
    assert_eq!(got, "hello-from-gateway");
    server.wait().unwrap();

    // -p: from the host's loopback to a server in the guest.
    ns.mvm_ok(
        home,
        &[
            "exec",
            &a,
            "--",
            "sh",
            "-c",
            "mkdir -p /www && echo hello-through-p > /www/index.html && httpd -p 8080 -h /www",
        ],
    );
    let body = ns.run(&["curl", "-s", "-m", "10", "http://127.0.0.1:18080/"]);
    assert_eq!(body, "hello-through-p\n");

    // --network none: only lo.
    let ifs = ns.mvm_ok(home, &["exec", &n, "--", "ls", "/sys/class/net"]);
    assert_eq!(ifs.split_whitespace().collect::<Vec<_>>(), ["lo"]);

    // kill -9 of a VMM: its TAP goes (the supervisor tears it down), gc is clean.
    let inspect: serde_json::Value =
        serde_json::from_str(&ns.mvm_ok(home, &["inspect", &b])).unwrap();
    let tap_b = inspect["record"]["net"]["tap"].as_str().unwrap().to_owned();
    let vmm = inspect["vmm_pid"].as_u64().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(vmm).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(15), || !ns
        .run(&["ip", "-o", "link"])
        .contains(&tap_b)));
    // The TAP goes first; the supervisor then releases the rest and
    // records the stop.
    assert!(wait_until(Duration::from_secs(15), || {
        let v: serde_json::Value =
            serde_json::from_str(&ns.mvm_ok(home, &["inspect", &b])).unwrap();
        v["status"] == "stopped"
    }));
    ns.mvm_ok(home, &["gc"]);
    // Its address is free again (a stopped machine holds none) ...
    let inspect: serde_json::Value =
        serde_json::from_str(&ns.mvm_ok(home, &["inspect", &b])).unwrap();
    assert_eq!(inspect["status"], "stopped");
    assert!(
        inspect["record"]["net"].is_null(),
        "{}",
        inspect["record"]["net"]
    );
    // ... and a restart allocates one again, with a working TAP.
    ns.mvm_ok(home, &["start", &b]);
    let inspect: serde_json::Value =
        serde_json::from_str(&ns.mvm_ok(home, &["inspect", &b])).unwrap();
    let ip_b2 = inspect["record"]["net"]["ip"].as_str().unwrap().to_owned();
    ns.mvm_ok(home, &["exec", &a, "--", "ping", "-c1", "-W2", &ip_b2]);

    // rm -f of everything: no TAP, no rule, no supervisor left.
    drop(cleanup);
    let links = ns.run(&["ip", "-o", "link"]);
    assert!(!links.contains("mvm-"), "TAPs left: {links}");
    let rules = ns.run(&["iptables-save"]);
    assert!(!rules.contains("mvm:"), "rules left: {rules}");
    let procs = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let procs = String::from_utf8_lossy(&procs.stdout);
    assert!(
        !procs.contains(&format!("__supervise {a}")),
        "supervisor left"
    );
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let name = Path::new(tool).file_name()?;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

/// `mvm rm -f` of the test's machines, also when the test fails.
struct Cleanup<'a> {
    ns: &'a NetNs,
    home: &'a Path,
    names: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let mut args = vec!["rm", "-f"];
        args.extend(self.names.iter().map(String::as_str));
        let _ = self.ns.mvm(self.home, &args);
    }
}
