//! Egress policies enforced for real, in network namespaces this test
//! creates (nothing runs in, or is added to, the host's namespace):
//!
//! ```text
//!  machine ns (one per machine)      "host" ns (mvm's side)            "internet" ns
//!  eth: 172.16.0.N/24 ──veth──▶ <TAP name> ─ mvmbr0 172.16.0.1     198.51.100.2 :80 :81 :5001, udp :7
//!                                  NAT, nft tables, DNS filter ─veth─ 198.51.100.3 :80   ("other host")
//!                                  "other service" 0.0.0.0:8081       198.51.100.53 :53  (test DNS server)
//!                                                              ─veth─ "metadata" ns 169.254.169.254 :80
//! ```
//!
//! The machine end is a veth named like the machine's TAP (phase 1; real
//! guests come with the runtime wiring). The namespaces are anonymous,
//! held by fds and threads, and vanish with them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use mvm_core::egress::EgressPolicy;
use mvm_core::instance::NetAllocation;
use mvm_net::NetConfig;
use mvm_net::alloc::allocate;
use mvm_net::dns::{self, DnsFilter};
use mvm_net::egress::{self, EgressCounters, MachineEgress, Nft, ResolvedHosts};
use mvm_net::host;
use mvm_net::nat::Iptables;
use mvm_net::netlink::Netlink;

use crate::util::{Netns, is_root};

const INET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
const DNS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const INET_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const HOST_SERVICE_PORT: u16 = 8081;
const GW: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
/// Deadline of one connection attempt: a refused one fails at once
/// (TCP reset / ICMP admin-prohibited); only bridge drops run into it.
const CONNECT: Duration = Duration::from_secs(3);

fn skip(test: &str) -> bool {
    if !is_root() {
        mvm_core::testing::skip(&format!(
            "SKIPPED: {test}: needs root (network namespaces, nftables)"
        ));
        return true;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        mvm_core::testing::skip(&format!(
            "SKIPPED: {test}: `nft` not found (apt-get install nftables)"
        ));
        return true;
    }
    false
}

// ---------------------------------------------------------------- servers

/// A server thread, stopped (socket shut down, thread joined) on drop.
struct Server {
    sock: rustix::fd::OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Wakes a blocked accept()/recv() on Linux (UDP reports ENOTCONN
        // but still wakes the reader).
        let _ = rustix::net::shutdown(&self.sock, rustix::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TCP: answers any request with `HTTP/1.0 200 OK` and `tag`; a request
/// line starting with `SINK` reads to EOF and answers the byte count.
fn tcp_server(ns: &Netns, addr: SocketAddr, tag: &'static str) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = ns.spawn(move || {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(rustix::fd::OwnedFd::from(l.try_clone().unwrap()))
            .unwrap();
        while let Ok((mut s, _)) = l.accept() {
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut head = [0u8; 4];
                if s.read_exact(&mut head).is_err() {
                    return;
                }
                if &head == b"SINK" {
                    let mut n = 4u64;
                    let mut buf = vec![0u8; 256 * 1024];
                    while let Ok(k) = s.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        n += k as u64;
                    }
                    let _ = s.write_all(&n.to_be_bytes());
                    return;
                }
                // Read the whole request first: closing with unread data
                // would send a reset instead of the answer.
                let mut req = head.to_vec();
                let mut b = [0u8; 512];
                while !req.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => req.extend_from_slice(&b[..k]),
                    }
                }
                let _ = write!(s, "HTTP/1.0 200 OK\r\n\r\n{tag}");
            });
        }
    });
    Server {
        sock: rx.recv().unwrap(),
        thread: Some(thread),
    }
}

/// UDP echo.
fn udp_echo(ns: &Netns, addr: SocketAddr) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = ns.spawn(move || {
        let s = UdpSocket::bind(addr).unwrap();
        tx.send(rustix::fd::OwnedFd::from(s.try_clone().unwrap()))
            .unwrap();
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = s.recv_from(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = s.send_to(&buf[..n], peer);
        }
    });
    Server {
        sock: rx.recv().unwrap(),
        thread: Some(thread),
    }
}

/// A tiny authoritative DNS server (UDP): A records of `zone`, NXDOMAIN
/// for the rest; records every name asked in `asked`.
fn dns_server(
    ns: &Netns,
    addr: SocketAddr,
    zone: BTreeMap<&'static str, Ipv4Addr>,
    asked: Arc<Mutex<Vec<String>>>,
) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = ns.spawn(move || {
        let s = UdpSocket::bind(addr).unwrap();
        tx.send(rustix::fd::OwnedFd::from(s.try_clone().unwrap()))
            .unwrap();
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = s.recv_from(&mut buf) {
            if n == 0 {
                break;
            }
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(query) = q.queries.first().cloned() else {
                continue;
            };
            let name = query.name().to_ascii();
            asked.lock().unwrap().push(name.clone());
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.add_query(query.clone());
            match zone.get(name.trim_end_matches('.')) {
                Some(ip) if query.query_type() == RecordType::A => {
                    r.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A(A(*ip)),
                    ));
                }
                Some(_) => {}
                None => r.metadata.response_code = ResponseCode::NXDomain,
            }
            let _ = s.send_to(&r.to_vec().unwrap(), peer);
        }
    });
    Server {
        sock: rx.recv().unwrap(),
        thread: Some(thread),
    }
}

// ------------------------------------------------------------------ world

struct Machine {
    ns: Netns,
    alloc: NetAllocation,
    name: String,
}

/// The namespaces, links and servers of one test.
struct World {
    host: Netns,
    _inet: Netns,
    _meta: Netns,
    cfg: NetConfig,
    taken: Vec<NetAllocation>,
    asked: Arc<Mutex<Vec<String>>>,
    _servers: Vec<Server>,
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Connect `a` (in `a_ns`, address `a_ip/prefix`) to `b` moved into `b_ns`.
fn veth(host: &Netns, a: &'static str, b: &'static str, to: &Netns) {
    let to_fd = to.fd().try_clone_to_owned().unwrap();
    host.run(move || {
        let mut nl = Netlink::open().unwrap();
        nl.add_veth(a, b).unwrap();
        let l = nl.require_link(b).unwrap();
        nl.set_netns(l.index, std::os::fd::AsFd::as_fd(&to_fd), b)
            .unwrap();
    });
}

fn addr_up(ns: &Netns, link: &'static str, addrs: Vec<(Ipv4Addr, u8)>, gw: Option<Ipv4Addr>) {
    ns.run(move || {
        let mut nl = Netlink::open().unwrap();
        let l = nl.require_link(link).unwrap();
        for (ip, p) in addrs {
            nl.add_address(l.index, ip, p, link).unwrap();
        }
        nl.set_up(l.index, true, link).unwrap();
        if let Some(gw) = gw {
            nl.replace_default_route(gw, l.index).unwrap();
        }
    });
}

impl World {
    fn new() -> Self {
        let host = Netns::new();
        let inet = Netns::new();
        let meta = Netns::new();
        let cfg = NetConfig::default();
        let c = cfg.clone();
        host.run(move || host::ensure_host(&c).unwrap());
        veth(&host, "eg-inet0", "eg-inet1", &inet);
        veth(&host, "eg-md0", "eg-md1", &meta);
        addr_up(&host, "eg-inet0", vec![(INET_HOST_SIDE, 24)], None);
        addr_up(
            &host,
            "eg-md0",
            vec![(Ipv4Addr::new(169, 254, 169, 1), 24)],
            None,
        );
        addr_up(
            &inet,
            "eg-inet1",
            vec![(INET, 24), (OTHER, 24), (DNS, 24)],
            Some(INET_HOST_SIDE),
        );
        addr_up(
            &meta,
            "eg-md1",
            vec![(METADATA, 24)],
            Some(Ipv4Addr::new(169, 254, 169, 1)),
        );
        let asked = Arc::new(Mutex::new(Vec::new()));
        let zone = BTreeMap::from([("test-host.example", INET), ("other.example", OTHER)]);
        let servers = vec![
            tcp_server(&inet, (INET, 80).into(), "internet:80"),
            tcp_server(&inet, (INET, 81).into(), "internet:81"),
            tcp_server(&inet, (INET, 5001).into(), "sink"),
            tcp_server(&inet, (OTHER, 80).into(), "other:80"),
            udp_echo(&inet, (INET, 7).into()),
            dns_server(&inet, (DNS, 53).into(), zone, asked.clone()),
            tcp_server(&meta, (METADATA, 80).into(), "metadata"),
            tcp_server(
                &host,
                (Ipv4Addr::UNSPECIFIED, HOST_SERVICE_PORT).into(),
                "host-service",
            ),
        ];
        Self {
            host,
            _inet: inet,
            _meta: meta,
            cfg,
            taken: Vec::new(),
            asked,
            _servers: servers,
        }
    }

    /// A machine: its own namespace, a veth whose host end carries the
    /// allocated TAP name, attached to the bridge; MAC and IP as allocated.
    fn machine(&mut self, name: &str) -> Machine {
        let alloc = allocate(&self.taken, name, &self.cfg.subnet).unwrap();
        self.taken.push(alloc.clone());
        let ns = Netns::new();
        let (tap, bridge) = (alloc.tap.clone(), self.cfg.bridge.clone());
        let fd = ns.fd().try_clone_to_owned().unwrap();
        self.host.run(move || {
            let mut nl = Netlink::open().unwrap();
            nl.add_veth(&tap, "eg-guest").unwrap();
            let g = nl.require_link("eg-guest").unwrap();
            nl.set_netns(g.index, std::os::fd::AsFd::as_fd(&fd), "eg-guest")
                .unwrap();
            mvm_net::link::attach(&mut nl, &tap, &bridge).unwrap();
        });
        let (ip, prefix, gw, mac) = (alloc.ip, alloc.prefix, alloc.gateway, mac_bytes(&alloc.mac));
        ns.run(move || {
            let mut nl = Netlink::open().unwrap();
            let l = nl.require_link("eg-guest").unwrap();
            nl.set_mac(l.index, mac, "eg-guest").unwrap();
            nl.add_address(l.index, ip, prefix, "eg-guest").unwrap();
            nl.set_up(l.index, true, "eg-guest").unwrap();
            nl.replace_default_route(gw, l.index).unwrap();
        });
        Machine {
            ns,
            alloc,
            name: name.into(),
        }
    }

    fn spec(&self, m: &Machine, dns_port: Option<u16>) -> MachineEgress {
        MachineEgress::new(&self.cfg, &m.name, &m.alloc, dns_port)
    }

    /// Apply `policy` to `m`, returning how long it took.
    fn apply(
        &self,
        m: &Machine,
        policy: &str,
        hosts: ResolvedHosts,
        dns_port: Option<u16>,
    ) -> Duration {
        let spec = self.spec(m, dns_port);
        let policy: EgressPolicy = policy.parse().unwrap();
        self.host.run(move || {
            let t = Instant::now();
            egress::apply(&Nft::default(), &spec, &policy, &hosts).unwrap();
            t.elapsed()
        })
    }

    fn counters(&self, m: &Machine) -> Option<EgressCounters> {
        let tap = m.alloc.tap.clone();
        self.host
            .run(move || egress::counters(&Nft::default(), &tap).unwrap())
    }

    fn ruleset(&self) -> String {
        self.host.run(|| {
            let o = Command::new("nft")
                .args(["list", "ruleset"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
    }
}

/// `GET /` from inside `m`: the server's tag, or the error.
fn get(m: &Machine, to: SocketAddr) -> Result<String, String> {
    m.ns.run(move || {
        let mut s = TcpStream::connect_timeout(&to, CONNECT).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(CONNECT)).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
    })
}

fn udp(m: &Machine, to: SocketAddr) -> Result<String, String> {
    m.ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(CONNECT)).unwrap();
        s.send(b"ping").map_err(|e| e.to_string())?;
        let mut b = [0u8; 64];
        let n = s.recv(&mut b).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&b[..n]).into_owned())
    })
}

/// An A query for `name` to the gateway's port 53, from inside `m`.
fn lookup(m: &Machine, name: &str) -> Result<(ResponseCode, Vec<Ipv4Addr>), String> {
    let name = name.to_owned();
    m.ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect((GW, 53)).unwrap();
        s.set_read_timeout(Some(CONNECT)).unwrap();
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(
            Name::from_ascii(format!("{name}.")).unwrap(),
            RecordType::A,
        ));
        s.send(&q.to_vec().unwrap()).map_err(|e| e.to_string())?;
        let mut b = [0u8; 4096];
        let n = s.recv(&mut b).map_err(|e| e.to_string())?;
        let r = Message::from_vec(&b[..n]).map_err(|e| e.to_string())?;
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.id, q.metadata.id);
        let ips = r
            .answers
            .iter()
            .filter_map(|a| match &a.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        Ok((r.metadata.response_code, ips))
    })
}

fn ok(r: Result<String, String>, tag: &str) {
    assert_eq!(r.as_deref(), Ok(tag), "expected to reach {tag}");
}

fn refused(r: Result<String, String>, what: &str) {
    assert!(r.is_err(), "{what} should be refused, got {r:?}");
}

// ------------------------------------------------------------------ tests

#[test]
fn deny_all_refuses_everything_and_counts() {
    if skip("deny_all_refuses_everything_and_counts") {
        return;
    }
    let mut w = World::new();
    let m = w.machine("a");
    // Before any policy: today's behaviour, everything is reachable.
    ok(get(&m, (INET, 80).into()), "internet:80");
    ok(get(&m, (METADATA, 80).into()), "metadata");
    ok(get(&m, (GW, HOST_SERVICE_PORT).into()), "host-service");

    let took = w.apply(&m, "deny-all", ResolvedHosts::new(), None);
    eprintln!("apply deny-all: {:.1} ms", took.as_secs_f64() * 1e3);
    assert_eq!(w.counters(&m), Some(EgressCounters::default()));
    let t = Instant::now();
    refused(get(&m, (INET, 80).into()), "internet:80");
    // Refusals are answered (reset / admin-prohibited), not left to time out.
    assert!(t.elapsed() < CONNECT, "refusal took {:?}", t.elapsed());
    refused(udp(&m, (INET, 7).into()), "udp echo");
    refused(get(&m, (METADATA, 80).into()), "metadata");
    refused(
        get(&m, (GW, HOST_SERVICE_PORT).into()),
        "host service on the gateway",
    );
    refused(
        get(&m, (INET_HOST_SIDE, HOST_SERVICE_PORT).into()),
        "host service on another host address",
    );
    let c = w.counters(&m).unwrap();
    assert!(c.refused_packets >= 5, "{c:?}");
    assert!(c.refused_bytes > 0, "{c:?}");
    assert_eq!(c.spoofed_packets, 0, "{c:?}");

    // Connections made *to* the machine (the -p forwarder's) still work:
    // the guest's replies are accepted by conntrack direction.
    let _srv = tcp_server(&m.ns, (Ipv4Addr::UNSPECIFIED, 8000).into(), "guest:8000");
    let ip = m.alloc.ip;
    let r = w.host.run(move || {
        let mut s = TcpStream::connect_timeout(&(ip, 8000).into(), CONNECT).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(r.ends_with("guest:8000"), "{r}");
}

#[test]
fn port_and_udp_rules() {
    if skip("port_and_udp_rules") {
        return;
    }
    let mut w = World::new();
    let m = w.machine("a");
    w.apply(&m, "allow=198.51.100.2:80", ResolvedHosts::new(), None);
    ok(get(&m, (INET, 80).into()), "internet:80");
    refused(get(&m, (INET, 81).into()), "port 81");
    refused(udp(&m, (INET, 7).into()), "udp 7 (only tcp 80 allowed)");
    refused(get(&m, (OTHER, 80).into()), "another host");

    w.apply(&m, "allow=198.51.100.2:7/udp", ResolvedHosts::new(), None);
    assert_eq!(udp(&m, (INET, 7).into()).as_deref(), Ok("ping"));
    refused(get(&m, (INET, 80).into()), "tcp 80 after the update");

    w.apply(&m, "allow=198.51.100.0/24", ResolvedHosts::new(), None);
    ok(get(&m, (INET, 81).into()), "internet:81");
    ok(get(&m, (OTHER, 80).into()), "other:80");
    // ... but the host's own address in that range stays blocked.
    refused(
        get(&m, (INET_HOST_SIDE, HOST_SERVICE_PORT).into()),
        "the host's address inside an allowed range",
    );
    // Named by address (/32): allowed.
    w.apply(&m, "allow=198.51.100.1:8081", ResolvedHosts::new(), None);
    ok(
        get(&m, (INET_HOST_SIDE, HOST_SERVICE_PORT).into()),
        "host-service",
    );
}

#[test]
fn metadata_is_blocked_under_every_preset_unless_named() {
    if skip("metadata_is_blocked_under_every_preset_unless_named") {
        return;
    }
    let mut w = World::new();
    let m = w.machine("a");
    for p in [
        "allow-all",
        "deny-all",
        "allow=0.0.0.0/0",
        "allow=169.254.0.0/15",
        "allow=198.51.100.2",
    ] {
        w.apply(&m, p, ResolvedHosts::new(), None);
        refused(
            get(&m, (METADATA, 80).into()),
            &format!("metadata under {p}"),
        );
        refused(
            get(&m, (GW, HOST_SERVICE_PORT).into()),
            &format!("host under {p}"),
        );
    }
    w.apply(&m, "allow-all", ResolvedHosts::new(), None);
    ok(get(&m, (INET, 80).into()), "internet:80");
    for p in [
        "allow=169.254.169.254",
        "allow-all allow=169.254.169.254:80",
        "allow=169.254.0.0/16",
    ] {
        w.apply(&m, p, ResolvedHosts::new(), None);
        ok(get(&m, (METADATA, 80).into()), "metadata");
    }
}

#[test]
fn host_names_resolve_through_dns_and_the_filter_answers_only_them() {
    if skip("host_names_resolve_through_dns_and_the_filter_answers_only_them") {
        return;
    }
    let mut w = World::new();
    let m = w.machine("a");
    let policy: EgressPolicy = "allow=test-host.example:80".parse().unwrap();

    // Host-side resolution through the test DNS server.
    let names: Vec<String> = policy.host_names().iter().map(|s| s.to_string()).collect();
    let resolved = w.host.run(move || {
        let n: Vec<&str> = names.iter().map(String::as_str).collect();
        dns::resolve(&n, &[(DNS, 53).into()], Duration::from_secs(3))
    });
    assert_eq!(resolved["test-host.example"].addrs, [INET], "{resolved:?}");
    assert_eq!(resolved["test-host.example"].ttl, Duration::from_secs(60));
    assert_eq!(dns::min_ttl(&resolved), Duration::from_secs(60));

    // The machine's DNS filter, on the gateway, as the supervisor runs it.
    let (ptx, prx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (p2, client) = (policy.clone(), m.alloc.ip);
    let filter = w.host.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let f = DnsFilter::bind(GW, client, p2, vec![(DNS, 53).into()])
                .await
                .unwrap();
            ptx.send((f.port(), f.handle())).unwrap();
            f.run(async {
                let _ = stop_rx.await;
            })
            .await;
        })
    });
    let (port, handle) = prx.recv().unwrap();
    w.apply(
        &m,
        &policy.to_string(),
        dns::to_hosts(&resolved),
        Some(port),
    );

    assert_eq!(
        lookup(&m, "test-host.example"),
        Ok((ResponseCode::NoError, vec![INET]))
    );
    assert_eq!(
        lookup(&m, "other.example"),
        Ok((ResponseCode::Refused, vec![]))
    );
    assert_eq!(handle.refused(), 1);
    assert_eq!(handle.forwarded(), 1);
    // The refused name never reached the upstream.
    assert!(
        !w.asked
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("other"))
    );
    ok(get(&m, (INET, 80).into()), "internet:80");
    refused(get(&m, (INET, 81).into()), "port 81 of the named host");
    refused(get(&m, (OTHER, 80).into()), "the other name's address");
    // The filter's port is not reachable for anything but DNS redirected
    // from gateway:53 (e.g. directly).
    refused(get(&m, (GW, port).into()), "the filter's port directly");

    // inspect: the resolved addresses, read back from the kernel.
    let tap = m.alloc.tap.clone();
    let st = w
        .host
        .run(move || egress::status(&Nft::default(), &tap).unwrap())
        .unwrap();
    assert_eq!(st.resolved["test-host.example"], [INET]);

    // Re-resolution (the TTL task): the name now points elsewhere.
    let tap = m.alloc.tap.clone();
    let p3 = policy.clone();
    w.host.run(move || {
        let hosts = ResolvedHosts::from([("test-host.example".to_owned(), vec![OTHER])]);
        egress::update_hosts(&Nft::default(), &tap, &p3, &hosts).unwrap();
    });
    ok(get(&m, (OTHER, 80).into()), "other:80");
    refused(get(&m, (INET, 80).into()), "the old address");

    // deny-all: DNS refused too (no exfiltration through queries).
    handle.set_policy(EgressPolicy::deny_all());
    assert_eq!(
        lookup(&m, "test-host.example"),
        Ok((ResponseCode::Refused, vec![]))
    );
    stop_tx.send(()).unwrap();
    filter.join().unwrap();
}

#[test]
fn machines_reach_each_other_only_when_both_allow_the_subnet() {
    if skip("machines_reach_each_other_only_when_both_allow_the_subnet") {
        return;
    }
    let mut w = World::new();
    let a = w.machine("a");
    let b = w.machine("b");
    let _srv = tcp_server(&b.ns, (Ipv4Addr::UNSPECIFIED, 8000).into(), "b:8000");
    let to_b: SocketAddr = (b.alloc.ip, 8000).into();
    ok(get(&a, to_b), "b:8000"); // no policy yet
    for p in ["deny-all", "allow-all", "allow=0.0.0.0/0"] {
        w.apply(&a, p, ResolvedHosts::new(), None);
        w.apply(&b, p, ResolvedHosts::new(), None);
        refused(get(&a, to_b), &format!("a -> b under {p}"));
    }
    let before = w.counters(&a).unwrap();
    assert!(before.refused_packets > 0, "{before:?}");
    w.apply(&a, "allow=172.16.0.0/24", ResolvedHosts::new(), None);
    w.apply(&b, "allow=172.16.0.0/24", ResolvedHosts::new(), None);
    ok(get(&a, to_b), "b:8000");
    // Port-specific peer rules work too (ARP is allowed for the peer).
    w.apply(
        &a,
        &format!("allow={}:8000", b.alloc.ip),
        ResolvedHosts::new(),
        None,
    );
    ok(get(&a, to_b), "b:8000");
    // Counters survived the updates.
    assert!(w.counters(&a).unwrap().refused_packets >= before.refused_packets);
}

#[test]
fn spoofed_source_addresses_are_dropped() {
    if skip("spoofed_source_addresses_are_dropped") {
        return;
    }
    let mut w = World::new();
    let m = w.machine("a");
    w.apply(&m, "allow-all", ResolvedHosts::new(), None);
    ok(get(&m, (INET, 80).into()), "internet:80");
    // The guest takes another address: nothing it sends passes.
    m.ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        let l = nl.require_link("eg-guest").unwrap();
        nl.add_address(l.index, Ipv4Addr::new(172, 16, 0, 99), 24, "eg-guest")
            .unwrap();
    });
    let r = m.ns.run(|| {
        let s = UdpSocket::bind((Ipv4Addr::new(172, 16, 0, 99), 0)).unwrap();
        s.connect((INET, 7)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.send(b"spoof").unwrap();
        let mut b = [0u8; 16];
        s.recv(&mut b)
    });
    assert!(r.is_err(), "a spoofed source got an answer");
    assert!(w.counters(&m).unwrap().spoofed_packets > 0);
}

#[test]
fn release_is_idempotent_and_gc_finds_tables_of_crashed_machines() {
    if skip("release_is_idempotent_and_gc_finds_tables_of_crashed_machines") {
        return;
    }
    let mut w = World::new();
    let a = w.machine("a");
    let b = w.machine("b");
    w.apply(&a, "deny-all", ResolvedHosts::new(), None);
    w.apply(&b, "allow=198.51.100.2:80", ResolvedHosts::new(), None);
    let rs = w.ruleset();
    assert!(
        rs.contains(&format!("table bridge mvm-eg-{}", a.alloc.tap)),
        "{rs}"
    );
    assert!(
        rs.contains(&format!("table ip mvm-eg-{}", b.alloc.tap)),
        "{rs}"
    );
    assert!(rs.contains("comment \"mvm:egress machine a\""), "{rs}");

    // Release from the TAP name alone, twice.
    let tap = a.alloc.tap.clone();
    w.host.run(move || {
        egress::release(&Nft::default(), &tap).unwrap();
        egress::release(&Nft::default(), &tap).unwrap();
    });
    let rs = w.ruleset();
    assert!(!rs.contains(&a.alloc.tap), "{rs}");
    ok(get(&a, (INET, 80).into()), "internet:80");
    assert_eq!(w.counters(&a), None);

    // "Crash": b's owner is gone (its record released the allocation)
    // while its tables stay. gc finds them and only them.
    let (cfg, b_alloc) = (w.cfg.clone(), b.alloc.clone());
    let a_alloc = a.alloc.clone();
    w.host.run(move || {
        let nft = Nft::default();
        let ipt = Iptables::default();
        egress::apply(
            &nft,
            &MachineEgress::new(&cfg, "a", &a_alloc, None),
            &EgressPolicy::deny_all(),
            &ResolvedHosts::new(),
        )
        .unwrap();
        let left = egress::leftovers(&nft, std::slice::from_ref(&a_alloc)).unwrap();
        assert_eq!(
            left.iter()
                .map(|t| (t.family.as_str(), t.tap.as_str()))
                .collect::<Vec<_>>(),
            [
                ("bridge", b_alloc.tap.as_str()),
                ("ip", b_alloc.tap.as_str())
            ]
        );
        let all = host::leftovers(&cfg, std::slice::from_ref(&a_alloc), &ipt).unwrap();
        assert!(
            all.iter()
                .any(|l| matches!(l, host::Leftover::Egress(t) if t.tap == b_alloc.tap)),
            "{all:?}"
        );
        // a's TAP (a veth here) is not a tun device, so only the tables are
        // leftovers.
        let report = host::gc(&cfg, std::slice::from_ref(&a_alloc), &ipt).unwrap();
        assert_eq!(report.removed.len(), 2, "{report:?}");
        assert!(
            egress::leftovers(&nft, std::slice::from_ref(&a_alloc))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            egress::list_tables(&nft).unwrap().len(),
            2,
            "a's tables stay"
        );
        // teardown_machine removes a's tables with its TAP.
        host::teardown_machine(&a_alloc).unwrap();
        assert!(egress::list_tables(&nft).unwrap().is_empty());
    });
    let rs = w.ruleset();
    assert!(!rs.contains("mvm-eg-"), "{rs}");
}

#[test]
fn policy_updates_cut_existing_connections() {
    if skip("policy_updates_cut_existing_connections") {
        return;
    }
    let mut w = World::new();
    let m = w.machine("a");
    w.apply(
        &m,
        "allow=198.51.100.2:80,198.51.100.3",
        ResolvedHosts::new(),
        None,
    );

    // An open connection to a destination the new policy refuses is cut:
    // its next packet gets a reset.
    let r = m.ns.run(move || {
        let mut s = TcpStream::connect_timeout(&(INET, 5001).into(), CONNECT)
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"SINK").unwrap();
        Ok::<TcpStream, String>(s)
    });
    // 5001 is not in the list: refused.
    assert!(r.is_err());
    w.apply(&m, "allow=198.51.100.2", ResolvedHosts::new(), None);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let writer = m.ns.spawn(move || {
        let mut s = TcpStream::connect_timeout(&(INET, 5001).into(), CONNECT).unwrap();
        s.write_all(b"SINK").unwrap();
        done_tx.send(()).unwrap();
        rx.recv().unwrap();
        // Keep writing until the reset arrives (bounded).
        let buf = [0u8; 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Err(e) = s.write_all(&buf) {
                return Ok::<String, String>(e.to_string());
            }
        }
        let _ = s.shutdown(Shutdown::Both);
        Err("still writing after 10 s".into())
    });
    done_rx.recv().unwrap();
    w.apply(&m, "allow=198.51.100.2:80", ResolvedHosts::new(), None);
    tx.send(()).unwrap();
    let e = writer.join().unwrap().expect("connection cut");
    assert!(
        e.contains("reset") || e.contains("refused") || e.contains("Broken pipe"),
        "{e}"
    );
}

/// Cost of applying a policy and throughput through NAT with no policy,
/// `allow-all` and a 20-entry allowlist. Prints the figures.
#[test]
fn apply_cost_and_nat_throughput() {
    if skip("apply_cost_and_nat_throughput") {
        return;
    }
    let mut w = World::new();
    let m = w.machine("a");
    let mut list: Vec<String> = (1..=18).map(|i| format!("203.0.113.{i}:443")).collect();
    list.push("test-host.example:443".into());
    list.push("198.51.100.2:5001".into());
    let policy20 = format!("allow={}", list.join(","));
    let hosts = ResolvedHosts::from([("test-host.example".to_owned(), vec![INET])]);

    // A sink inside the machine, and a `-p` forwarder to it in the host
    // namespace (as the supervisor runs it).
    let _sink = tcp_server(&m.ns, (m.alloc.ip, 5002).into(), "sink");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_fwd, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let target = SocketAddr::from((m.alloc.ip, 5002));
    let forwarder = w.host.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let f = mvm_net::forward::Forwarder::bind("127.0.0.1:0".parse().unwrap(), target)
                .await
                .unwrap();
            addr_tx.send(f.local_addr()).unwrap();
            f.run(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        })
    });
    let fwd_addr = addr_rx.recv().unwrap();

    /// Send 128 MiB to a sink at `to` (which answers the byte count) from
    /// a thread in `ns`: MiB/s.
    fn blast(ns: &Netns, to: SocketAddr) -> f64 {
        const SIZE: u64 = 128 << 20;
        ns.run(move || {
            let t = Instant::now();
            let mut s = TcpStream::connect_timeout(&to, CONNECT).unwrap();
            s.write_all(b"SINK").unwrap();
            let buf = vec![0x5au8; 256 * 1024];
            let mut sent = 4u64;
            while sent < SIZE {
                s.write_all(&buf).unwrap();
                sent += buf.len() as u64;
            }
            s.shutdown(Shutdown::Write).unwrap();
            let mut n = [0u8; 8];
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s.read_exact(&mut n).unwrap();
            assert_eq!(u64::from_be_bytes(n), sent, "bytes lost");
            sent as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
        })
    }
    let best = |m: &Machine| {
        let nat = (0..3)
            .map(|_| blast(&m.ns, (INET, 5001).into()))
            .fold(0f64, f64::max);
        let fwd = (0..3)
            .map(|_| blast(&w.host, fwd_addr))
            .fold(0f64, f64::max);
        (nat, fwd)
    };

    let none = best(&m);
    // The same list with 5 entries moved to other addresses and ports.
    let changed = policy20
        .replacen("203.0.113.1:443", "192.0.2.1:8443", 1)
        .replacen("203.0.113.2:443", "192.0.2.2", 1)
        .replacen("203.0.113.3:443", "192.0.2.3:53/udp", 1)
        .replacen("203.0.113.4:443", "192.0.2.4:443", 1)
        .replacen("203.0.113.5:443", "192.0.2.0/28:22", 1);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut same = Vec::new();
    for _ in 0..5 {
        let tap = m.alloc.tap.clone();
        w.host
            .run(move || egress::release(&Nft::default(), &tap).unwrap());
        cold.push(w.apply(&m, &policy20, hosts.clone(), Some(5353)));
        warm.push(w.apply(&m, &changed, hosts.clone(), Some(5353)));
        same.push(w.apply(&m, &changed, hosts.clone(), Some(5353)));
    }
    let list20 = best(&m);
    w.apply(&m, "allow-all", ResolvedHosts::new(), None);
    let all = best(&m);
    let ms = |v: &[Duration]| {
        let mut v: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "egress apply (20 entries, median of 5): first {:.1} ms, change of 5 entries {:.1} ms, same policy again (no change) {:.1} ms",
        ms(&cold),
        ms(&warm),
        ms(&same)
    );
    eprintln!(
        "throughput, best of 3 x 128 MiB, NAT machine->internet / -p host->machine: no policy {:.0} / {:.0} MiB/s, allow-all {:.0} / {:.0} MiB/s, 20-entry allowlist {:.0} / {:.0} MiB/s",
        none.0, none.1, all.0, all.1, list20.0, list20.1
    );
    let _ = stop_fwd.send(());
    forwarder.join().unwrap();
    assert!(
        [none, all, list20]
            .iter()
            .all(|(a, b)| *a > 0.0 && *b > 0.0)
    );
}

/// While the policy flips between two lists that both allow :80, a
/// client in the machine never sees :80 refused. Before updates were made
/// in place (tables deleted and re-created in one transaction) about one
/// run in four of 20 flips saw one allowed handshake reset; `apply` now
/// touches only the rules and set elements that differ.
#[test]
fn policy_replacement_never_refuses_what_both_policies_allow() {
    if skip("policy_replacement_never_refuses_what_both_policies_allow") {
        return;
    }
    let mut w = World::new();
    let m = w.machine("a");
    w.apply(
        &m,
        "allow=198.51.100.2:80,198.51.100.3",
        ResolvedHosts::new(),
        None,
    );
    // While the policy flips between two lists that both allow :80, a
    // client in the machine never sees :80 refused (there is no moment
    // without rules or with a half-written table).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        m.ns.spawn(move || {
            let mut n = 0u32;
            let mut failures = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match TcpStream::connect_timeout(&(INET, 80).into(), CONNECT) {
                    Ok(_) => n += 1,
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (n, failures)
        })
    };
    let mut updates = 0;
    let t = Instant::now();
    for i in 0..60 {
        let p = if i % 2 == 0 {
            "allow=198.51.100.2:80,198.51.100.53:53/udp"
        } else {
            "allow=198.51.100.2:80,198.51.100.3"
        };
        w.apply(&m, p, ResolvedHosts::new(), None);
        updates += 1;
    }
    let per = t.elapsed() / updates;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, failures) = client.join().unwrap();
    eprintln!(
        "{updates} updates ({:.1} ms each) under {n} connections",
        per.as_secs_f64() * 1e3
    );
    assert!(n > 0);
    assert!(failures.is_empty(), "{failures:?}");
}
