//! Connection-level behaviour of the agent.

use std::time::Duration;

use mvm_agent_proto::client::{ClientError, ExecEvent};
use mvm_agent_proto::handshake;
use mvm_agent_proto::io::FrameReader;
use mvm_agent_proto::{Frame, Message, Role};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::common::{Agent, deadline, raw_sleeper, req, wait_gone};

#[tokio::test]
async fn ping_and_info() {
    let agent = Agent::start();
    let c = agent.client().await;
    c.ping().await.unwrap();
    let info = c.info().await.unwrap();
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!info.kernel_release.is_empty());
    assert!(info.uptime_ms > 0);
    assert_eq!(c.negotiated().version, mvm_agent_proto::PROTOCOL_VERSION);
}

#[tokio::test]
async fn oversize_frame_is_rejected_and_the_connection_closed() {
    let agent = Agent::start();
    let s = UnixStream::connect(&agent.socket).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = FrameReader::new(r);
    let ours = handshake::hello(Role::Host, "test");
    handshake::initiate(&mut r, &mut w, &ours, deadline(5))
        .await
        .unwrap();
    // A 2 MiB length prefix, with no body at all: rejected from the header.
    let mut bad = (2u32 * 1024 * 1024).to_le_bytes().to_vec();
    bad.extend_from_slice(&[1, 0, 0, 0, 2]);
    w.write_all(&bad).await.unwrap();
    let f = tokio::time::timeout(Duration::from_secs(5), r.read_frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match f {
        Frame {
            session: 0,
            message: Message::Error(e),
        } => assert!(e.message.contains("exceeds"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(5), r.read_frame())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none());
    // The agent itself is fine.
    agent.client().await.ping().await.unwrap();
}

#[tokio::test]
async fn disconnect_kills_running_commands() {
    let agent = Agent::start();
    let (pid, conn) = raw_sleeper(&agent.socket).await;
    drop(conn);
    assert!(
        wait_gone(pid, Duration::from_secs(5)).await,
        "pid {pid} survived"
    );
}

#[tokio::test]
async fn dropping_a_session_cancels_it() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut s = c
        .exec(req(&["sh", "-c", "echo $$; exec sleep 60"]))
        .await
        .unwrap();
    let pid: i32 = match s.next_event().await.unwrap().unwrap() {
        ExecEvent::Stdout(b) => String::from_utf8_lossy(&b).trim().parse().unwrap(),
        other => panic!("{other:?}"),
    };
    drop(s);
    assert!(
        wait_gone(pid, Duration::from_secs(5)).await,
        "pid {pid} survived"
    );
    c.ping().await.unwrap();
}

#[tokio::test]
async fn shutdown_replies_then_exits_when_not_pid1() {
    let mut agent = Agent::start();
    let c = agent.client().await;
    c.shutdown().await.unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(std::time::Instant::now() < end, "agent still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match c.ping().await {
        Err(ClientError::ConnectionLost { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stdio_mode_serves_one_stream() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mvm-agent"))
        .arg("--stdio")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let c = mvm_agent_proto::client::AgentClient::handshake(stream, deadline(5))
        .await
        .unwrap();
    let o = crate::common::run(&c, req(&["echo", "via-stdio"])).await;
    assert_eq!(o.stdout, b"via-stdio\n");
    drop(c);
    let st = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "{st:?}");
}
