//! Handshake over real in-memory streams.

use std::time::{Duration, Instant};

use mvm_agent_proto::client::{AgentClient, ClientError};
use mvm_agent_proto::handshake::{self, HandshakeError};
use mvm_agent_proto::io::FrameReader;
use mvm_agent_proto::{Hello, Role};

#[tokio::test]
async fn no_common_version_names_both_ranges_on_both_sides() {
    let (a, b) = tokio::io::duplex(4096);
    let agent = tokio::spawn(async move {
        let (r, mut w) = tokio::io::split(b);
        let mut r = FrameReader::new(r);
        let ours = Hello {
            min_version: 7,
            max_version: 9,
            role: Role::Agent,
            software: "future-agent".into(),
        };
        handshake::respond(
            &mut r,
            &mut w,
            &ours,
            Instant::now() + Duration::from_secs(5),
        )
        .await
    });
    let err = AgentClient::handshake(a, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap_err();
    let msg = format!("{err:?}");
    assert!(msg.contains("7..=9") && msg.contains("1..=2"), "{msg}");
    match agent.await.unwrap() {
        Err(HandshakeError::Version(m)) => {
            assert!(m.contains("7..=9") && m.contains("1..=2"), "{m}")
        }
        other => panic!("agent side: {other:?}"),
    }
}

#[tokio::test]
async fn handshake_deadline_is_enforced() {
    let (a, _b) = tokio::io::duplex(4096);
    let t = Instant::now();
    let err = AgentClient::handshake(a, Instant::now() + Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Handshake(HandshakeError::Timeout)),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn wrong_role_is_refused() {
    let (a, b) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        let (r, mut w) = tokio::io::split(b);
        let mut r = FrameReader::new(r);
        // Pretend to be a host answering a host.
        let ours = handshake::hello(Role::Host, "confused");
        let _ = handshake::initiate(
            &mut r,
            &mut w,
            &ours,
            Instant::now() + Duration::from_secs(5),
        )
        .await;
    });
    let err = AgentClient::handshake(a, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Handshake(HandshakeError::WrongRole { .. })
        ),
        "{err:?}"
    );
}
