//! Protocol v2 on the host-run agent: a second `Hello` on a live stream
//! (what a restored clone's new host sends), and `Reidentify` in a sandbox
//! of its own (UTS + network namespaces, a stand-in `/etc`), so the host is
//! never renamed or re-addressed.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mvm_agent_proto::client::{AgentClient, ClientError};
use mvm_agent_proto::handshake;
use mvm_agent_proto::identity::{ReidentifyNet, ReidentifyRequest};
use mvm_agent_proto::io::{FrameReader, write_frame};
use mvm_agent_proto::{Frame, Message, Request, Response, Role};

use crate::common::{Agent, deadline, raw_sleeper, req, run, wait_gone};

#[tokio::test]
async fn a_second_hello_starts_a_new_connection_on_the_same_stream() {
    let agent = Agent::start();
    // A host with a running command, as the template's host at snapshot time.
    let (pid, mut s) = raw_sleeper(&agent.socket).await;
    let (r, mut w) = s.split();
    let mut r = FrameReader::new(r);
    // The "restored" host opens with a fresh Hello on the same stream.
    let ours = handshake::hello(Role::Host, "new-host");
    let n = handshake::initiate(&mut r, &mut w, &ours, deadline(5))
        .await
        .unwrap();
    assert_eq!(n.version, mvm_agent_proto::PROTOCOL_VERSION);
    assert_eq!(n.peer.role, Role::Agent);
    // The old host's command is gone...
    assert!(
        wait_gone(pid, Duration::from_secs(5)).await,
        "{pid} survived"
    );
    // ...and the stream serves the new host (session ids may be reused).
    write_frame(&mut w, &Frame::new(5, Message::Request(Request::Ping)))
        .await
        .unwrap();
    loop {
        let f = tokio::time::timeout(Duration::from_secs(5), r.read_frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Frames of the old session (its final Exit/Error) may come first.
        if f.message == Message::Response(Response::Pong) {
            assert_eq!(f.session, 5);
            break;
        }
    }
}

#[tokio::test]
async fn an_unknown_request_gets_an_error_and_the_link_survives() {
    let agent = Agent::start();
    let s = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
    let (r, mut w) = tokio::io::split(s);
    let mut r = FrameReader::new(r);
    handshake::initiate(
        &mut r,
        &mut w,
        &handshake::hello(Role::Host, "future"),
        deadline(5),
    )
    .await
    .unwrap();
    // A request from a newer host, written by hand (this crate cannot
    // encode a request it does not know).
    let body = br#"{"Teleport":{"to":"mars"}}"#;
    let mut raw = ((body.len() + 5) as u32).to_le_bytes().to_vec();
    raw.extend_from_slice(&3u32.to_le_bytes());
    raw.push(2);
    raw.extend_from_slice(body);
    tokio::io::AsyncWriteExt::write_all(&mut w, &raw)
        .await
        .unwrap();
    let f = tokio::time::timeout(Duration::from_secs(5), r.read_frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match f {
        Frame {
            session: 3,
            message: Message::Error(e),
        } => {
            assert_eq!(e.kind, mvm_agent_proto::ErrorKind::InvalidRequest);
            assert!(
                e.message.contains("unknown request \"Teleport\""),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    write_frame(&mut w, &Frame::new(4, Message::Request(Request::Ping)))
        .await
        .unwrap();
    let f = tokio::time::timeout(Duration::from_secs(5), r.read_frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f, Frame::new(4, Message::Response(Response::Pong)));
}

#[tokio::test]
async fn reidentify_outside_a_sandbox_is_refused_and_the_session_survives() {
    let agent = Agent::start();
    let c = agent.client().await;
    let e = c.reidentify(request("x", None)).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent { message, .. } if message.contains("MVM_AGENT_ETC")),
        "{e}"
    );
    c.ping().await.unwrap();
}

fn request(hostname: &str, net: Option<ReidentifyNet>) -> ReidentifyRequest {
    let mut entropy = vec![0u8; 32];
    fs_err::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy))
        .unwrap();
    ReidentifyRequest {
        hostname: hostname.into(),
        entropy,
        unix_time_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        net,
        remount: vec![],
    }
}

/// The agent in new UTS and network namespaces, with `etc` as its `/etc`.
struct Sandboxed {
    child: Child,
    socket: PathBuf,
    etc: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sandboxed {
    fn start() -> Option<Sandboxed> {
        if !rustix::process::geteuid().is_root() {
            mvm_core::testing::skip("SKIPPED: reidentify sandbox: needs root for namespaces");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        fs_err::create_dir_all(&etc).unwrap();
        fs_err::write(etc.join("machine-id"), "ffffffffffffffffffffffffffffffff\n").unwrap();
        fs_err::write(
            etc.join("hosts"),
            "127.0.0.1\tlocalhost\n127.0.1.1\ttemplate\n",
        )
        .unwrap();
        let socket = dir.path().join("agent.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvm-agent"));
        cmd.arg("--listen-unix")
            .arg(&socket)
            .env("MVM_AGENT_ETC", &etc)
            .stdin(Stdio::null());
        // SAFETY: unshare is a raw syscall, async-signal-safe; nothing is
        // allocated between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::thread::unshare_unsafe(
                    rustix::thread::UnshareFlags::NEWUTS | rustix::thread::UnshareFlags::NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().unwrap();
        Some(Sandboxed {
            child,
            socket,
            etc,
            _dir: dir,
        })
    }

    async fn client(&self) -> AgentClient {
        // Readiness: the socket accepts a handshake (deadline-bounded retry).
        let end = deadline(10);
        loop {
            match AgentClient::connect_unix(&self.socket, end).await {
                Ok(c) => return c,
                Err(e) if std::time::Instant::now() < end => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("sandboxed agent not ready: {e}"),
            }
        }
    }

    /// Run `f` in the agent's network namespace, on a thread of its own.
    fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = fs_err::File::open(format!("/proc/{}/ns/net", self.child.id())).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn net(last: u8) -> ReidentifyNet {
    ReidentifyNet {
        iface: "eth0".into(),
        mac: format!("06:00:ac:1f:00:{last:02x}"),
        ip: Ipv4Addr::new(172, 31, 0, last),
        prefix: 24,
        gateway: Ipv4Addr::new(172, 31, 0, 1),
        dns: vec![Ipv4Addr::new(172, 31, 0, 1)],
    }
}

#[tokio::test]
async fn reidentify_in_a_sandbox_sets_every_identity() {
    let Some(sb) = Sandboxed::start() else {
        return;
    };
    let c = sb.client().await;
    // A stand-in eth0 (a bridge accepts addresses and MAC changes).
    sb.in_netns(|| {
        let mut nl = mvm_net::netlink::Netlink::open().unwrap();
        nl.add_bridge("eth0").unwrap();
    });

    let r = c
        .reidentify(request("clone-7", Some(net(7))))
        .await
        .unwrap();
    eprintln!("report: {r:?}");
    assert_eq!(r.hostname, "clone-7");
    assert_eq!(r.entropy_bits, 256);
    assert!(r.crng_reseeded);
    assert!(!r.clock_set, "the host clock must never be set");
    assert!(r.clock_step_ms.abs() < 5_000, "{}", r.clock_step_ms);
    assert_eq!(
        r.machine_id.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(r.net.as_deref(), Some("172.31.0.7/24 06:00:ac:1f:00:07"));

    let out = run(&c, req(&["hostname"])).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "clone-7");
    // (The host's /sys shows the host's namespace: ask netlink instead.)
    let mac = sb.in_netns(|| {
        let mut nl = mvm_net::netlink::Netlink::open().unwrap();
        nl.require_link("eth0").unwrap().mac
    });
    assert_eq!(mac, Some([0x06, 0, 0xac, 0x1f, 0, 0x07]));
    let read = |f: &str| fs_err::read_to_string(sb.etc.join(f)).unwrap();
    assert_eq!(read("hostname"), "clone-7\n");
    assert_eq!(read("machine-id"), "0123456789abcdef0123456789abcdef\n");
    assert!(
        read("hosts").contains("172.31.0.7\tclone-7"),
        "{}",
        read("hosts")
    );
    assert!(read("resolv.conf").contains("nameserver 172.31.0.1"));

    // Again with another address: the old one is replaced, not added to.
    let mut second = request("clone-8", Some(net(8)));
    second.machine_id = None;
    c.reidentify(second).await.unwrap();
    let (addrs, routes) = sb.in_netns(|| {
        let mut nl = mvm_net::netlink::Netlink::open().unwrap();
        let l = nl.require_link("eth0").unwrap();
        (nl.addresses(l.index).unwrap(), nl.routes().unwrap())
    });
    assert_eq!(addrs, vec![(Ipv4Addr::new(172, 31, 0, 8), 24)]);
    assert!(
        routes
            .iter()
            .any(|r| r.destination.is_none() && r.gateway == Some(Ipv4Addr::new(172, 31, 0, 1))),
        "{routes:?}"
    );
    assert_eq!(read("machine-id"), "0123456789abcdef0123456789abcdef\n");

    // Bad input is an error on that session only.
    let mut bad = request("clone-9", None);
    bad.entropy.truncate(8);
    let e = c.reidentify(bad).await.unwrap_err();
    assert!(e.to_string().contains("entropy"), "{e}");
    let e = c
        .reidentify(request(
            "clone-9",
            Some(ReidentifyNet {
                iface: "nope0".into(),
                ..net(9)
            }),
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope0"), "{e}");
    c.ping().await.unwrap();
}

#[tokio::test]
async fn a_version_1_host_cannot_send_reidentify() {
    // A host that speaks only v1: the client refuses before sending.
    let agent = Agent::start();
    let s = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
    let (r, mut w) = tokio::io::split(s);
    let mut r = FrameReader::new(r);
    let mut v1 = handshake::hello(Role::Host, "old-host");
    v1.max_version = 1;
    let n = handshake::initiate(&mut r, &mut w, &v1, deadline(5))
        .await
        .unwrap();
    assert_eq!(n.version, 1);
    drop((r, w));
    // The same check, through the client API against a v1-negotiated link
    // (a server that answers Hello 1..=1).
    let e = old_agent_client()
        .await
        .reidentify(request("x", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Unsupported {
                version: 1,
                needed: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("rebuild the machine's image"), "{e}");
}

/// A client connected to a fake agent that speaks only version 1.
async fn old_agent_client() -> AgentClient {
    let (a, b) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        let (r, mut w) = tokio::io::split(b);
        let mut r = FrameReader::new(r);
        let mut v1 = handshake::hello(Role::Agent, "old-agent");
        v1.max_version = 1;
        let _ = handshake::respond(&mut r, &mut w, &v1, deadline(5)).await;
        // Anything after the handshake: drain until the client goes.
        while let Ok(Some(_)) = r.read_frame().await {}
    });
    AgentClient::handshake(a, deadline(5)).await.unwrap()
}
