//! The hybrid vsock connector against in-test peers that play
//! Firecracker's side of the handshake.

use std::time::{Duration, Instant};

use mvm_firecracker::vsock::{AGENT_PORT, VsockError, connect};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// What the peer does with the n-th connection.
#[derive(Clone, Copy)]
enum Answer {
    /// Close without a reply (guest port not listening yet).
    Close,
    /// `OK 1073741824\n`, then echo one line with a prefix.
    Accept,
    /// Something that is not the protocol.
    Garbage,
}

fn peer(listener: UnixListener, script: Vec<Answer>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut lines = Vec::new();
        for answer in script {
            let (s, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            lines.push(line);
            let mut s = r.into_inner();
            match answer {
                Answer::Close => drop(s),
                Answer::Garbage => {
                    s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                        .await
                        .unwrap();
                }
                Answer::Accept => {
                    // The reply and the first guest bytes arrive together:
                    // the connector must not swallow the latter.
                    s.write_all(b"OK 1073741824\nhello\n").await.unwrap();
                    // Echo four bytes if the client sends them (tests that
                    // only check the handshake close the stream instead).
                    let mut buf = [0u8; 4];
                    if s.read_exact(&mut buf).await.is_ok() {
                        s.write_all(&buf).await.unwrap();
                    }
                }
            }
        }
        lines
    })
}

#[tokio::test]
async fn handshake_succeeds_and_keeps_following_bytes() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("guest.sock");
    let h = peer(UnixListener::bind(&sock).unwrap(), vec![Answer::Accept]);
    let mut s = connect(&sock, AGENT_PORT, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    let mut first = [0u8; 6];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"hello\n");
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    assert_eq!(h.await.unwrap(), vec!["CONNECT 1024\n".to_string()]);
}

#[tokio::test]
async fn retries_while_the_guest_is_not_listening() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("guest.sock");
    let h = peer(
        UnixListener::bind(&sock).unwrap(),
        vec![Answer::Close, Answer::Close, Answer::Accept],
    );
    connect(&sock, AGENT_PORT, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(h.await.unwrap().len(), 3);
}

#[tokio::test]
async fn waits_for_the_socket_to_appear() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("guest.sock");
    let sock2 = sock.clone();
    // The peer appears only after the connector has started trying.
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let h = peer(UnixListener::bind(&sock2).unwrap(), vec![Answer::Accept]);
        h.await.unwrap()
    });
    connect(&sock, AGENT_PORT, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(late.await.unwrap().len(), 1);
}

#[tokio::test]
async fn garbage_is_a_protocol_error() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("guest.sock");
    let _h = peer(UnixListener::bind(&sock).unwrap(), vec![Answer::Garbage]);
    let e = connect(&sock, AGENT_PORT, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, VsockError::BadReply { .. }), "{e:?}");
    assert!(e.to_string().contains("HTTP/1.1 400"), "{e}");
}

#[tokio::test]
async fn gives_up_at_the_deadline() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("guest.sock");
    let _h = peer(
        UnixListener::bind(&sock).unwrap(),
        vec![Answer::Close; 1000],
    );
    let start = Instant::now();
    let e = connect(&sock, AGENT_PORT, start + Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, VsockError::Timeout { .. }), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(e.to_string().contains("1024"), "{e}");
}
