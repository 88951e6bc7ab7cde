//! Protocol version 2 (terminals) against peers of both versions, directly
//! and through the multiplexer.

use std::time::{Duration, Instant};

use mvm_agent_proto::client::{AgentClient, ClientError};
use mvm_agent_proto::handshake;
use mvm_agent_proto::io::{FrameReader, write_frame};
use mvm_agent_proto::mux;
use mvm_agent_proto::{ExecRequest, Frame, Message, Request, Response, Role, WinSize};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// A scripted agent speaking `1..=max`: answers the handshake, then hands
/// back its halves for the test to drive.
async fn fake_agent(
    stream: DuplexStream,
    max: u32,
) -> (FrameReader<ReadHalf<DuplexStream>>, WriteHalf<DuplexStream>) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = FrameReader::new(r);
    let ours = handshake::hello_up_to(Role::Agent, "fake", max);
    handshake::respond(&mut r, &mut w, &ours, deadline())
        .await
        .unwrap();
    (r, w)
}

async fn next<R: AsyncRead + Unpin>(r: &mut FrameReader<R>) -> Frame {
    tokio::time::timeout(Duration::from_secs(5), r.read_frame())
        .await
        .expect("a frame within 5 s")
        .unwrap()
        .expect("not the end of the stream")
}

async fn answer_ping<R, W>(r: &mut FrameReader<R>, w: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let f = next(r).await;
    assert_eq!(f.message, Message::Request(Request::Ping), "{f:?}");
    write_frame(w, &Frame::new(f.session, Message::Response(Response::Pong)))
        .await
        .unwrap();
}

fn tty_req() -> ExecRequest {
    ExecRequest {
        argv: vec!["sh".into()],
        stdin: true,
        tty: Some(WinSize { rows: 24, cols: 80 }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_version_1_agent_gets_no_terminal_request_and_the_error_names_the_fix() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let agent = tokio::spawn(async move {
        let (mut r, mut w) = fake_agent(b, 1).await;
        // The refused exec sent nothing: the first request is the ping.
        answer_ping(&mut r, &mut w).await;
    });
    let c = AgentClient::handshake(a, deadline()).await.unwrap();
    assert_eq!(c.negotiated().version, 1);
    let err = c.exec(tty_req()).await.unwrap_err();
    match &err {
        ClientError::Unsupported {
            version: 1,
            needed: 2,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("terminal") && msg.contains("mvm image build"),
        "{msg}"
    );
    c.ping().await.unwrap();
    agent.await.unwrap();

    // Without a terminal, a version-1 agent is used as before.
    let (a, b) = tokio::io::duplex(64 * 1024);
    let agent = tokio::spawn(async move {
        let (mut r, _w) = fake_agent(b, 1).await;
        next(&mut r).await
    });
    let c = AgentClient::handshake(a, deadline()).await.unwrap();
    let s = c
        .exec(ExecRequest {
            argv: vec!["true".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let f = agent.await.unwrap();
    assert!(
        matches!(&f.message, Message::Request(Request::Exec(r)) if r.tty.is_none()),
        "{f:?}"
    );
    drop(s);
}

#[tokio::test]
async fn both_at_version_2_send_the_terminal_and_resizes() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let agent = tokio::spawn(async move {
        let (mut r, _w) = fake_agent(b, 2).await;
        let open = next(&mut r).await;
        let resize = next(&mut r).await;
        (open, resize)
    });
    let c = AgentClient::handshake(a, deadline()).await.unwrap();
    assert_eq!(c.negotiated().version, 2);
    let s = c.exec(tty_req()).await.unwrap();
    s.resize(30, 100).unwrap();
    let (open, resize) = agent.await.unwrap();
    assert_eq!(open.message, Message::Request(Request::Exec(tty_req())));
    assert_eq!(
        resize,
        Frame::new(
            open.session,
            Message::Resize(WinSize {
                rows: 30,
                cols: 100
            })
        )
    );
}

/// The multiplexer offers its clients the guest's version, so a client
/// behind the mux of a version-1 guest refuses terminals too; with a
/// version-2 guest, `Resize` passes through with the session rewritten.
#[tokio::test]
async fn the_mux_offers_its_clients_the_guest_version() {
    for guest_version in [1u32, 2] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let (host_end, guest_end) = tokio::io::duplex(64 * 1024);
        let guest = tokio::spawn(async move {
            let (mut r, mut w) = fake_agent(guest_end, guest_version).await;
            answer_ping(&mut r, &mut w).await;
            let mut seen = Vec::new();
            if guest_version == 2 {
                seen.push(next(&mut r).await);
                seen.push(next(&mut r).await);
            }
            seen
        });
        let link = mux::wait_guest_ready(host_end, deadline()).await.unwrap();
        assert_eq!(link.negotiated().version, guest_version);
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(mux::serve(link, listener, async move {
            let _ = stop_rx.await;
        }));
        let c = AgentClient::connect_unix(&sock, deadline()).await.unwrap();
        assert_eq!(c.negotiated().version, guest_version);
        c.ping().await.unwrap();
        if guest_version == 1 {
            assert!(matches!(
                c.exec(tty_req()).await,
                Err(ClientError::Unsupported { version: 1, .. })
            ));
            assert!(guest.await.unwrap().is_empty());
        } else {
            let s = c.exec(tty_req()).await.unwrap();
            s.resize(30, 100).unwrap();
            let seen = guest.await.unwrap();
            assert!(
                matches!(&seen[0].message, Message::Request(Request::Exec(r)) if r.tty == tty_req().tty),
                "{seen:?}"
            );
            assert_eq!(
                seen[1],
                Frame::new(
                    seen[0].session,
                    Message::Resize(WinSize {
                        rows: 30,
                        cols: 100
                    })
                )
            );
            drop(s);
        }
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    }
}

/// A client that sends something the mux cannot decode gets an error on
/// that session, and the connection stays usable.
#[tokio::test]
async fn the_mux_answers_an_undecodable_client_frame_on_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let (host_end, guest_end) = tokio::io::duplex(64 * 1024);
    let guest = tokio::spawn(async move {
        let (mut r, mut w) = fake_agent(guest_end, 2).await;
        answer_ping(&mut r, &mut w).await;
    });
    let link = mux::wait_guest_ready(host_end, deadline()).await.unwrap();
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let serving = tokio::spawn(mux::serve(link, listener, std::future::pending::<()>()));
    let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = FrameReader::new(r);
    handshake::initiate(
        &mut r,
        &mut w,
        &handshake::hello(Role::Host, "raw"),
        deadline(),
    )
    .await
    .unwrap();
    // Kind 99 on session 7: unknown to everyone.
    tokio::io::AsyncWriteExt::write_all(&mut w, &[5, 0, 0, 0, 7, 0, 0, 0, 99])
        .await
        .unwrap();
    match next(&mut r).await {
        Frame {
            session: 7,
            message: Message::Error(e),
        } => assert!(e.message.contains("unknown request"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    write_frame(&mut w, &Frame::new(8, Message::Request(Request::Ping)))
        .await
        .unwrap();
    assert_eq!(
        next(&mut r).await,
        Frame::new(8, Message::Response(Response::Pong))
    );
    guest.await.unwrap();
    serving.abort();
}
