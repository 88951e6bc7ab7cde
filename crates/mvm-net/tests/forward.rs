//! The TCP forwarder over loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mvm_net::forward::{ForwardError, Forwarder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server on 127.0.0.1:<ephemeral>.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_10_mib_through_the_forwarder() {
    let target = echo_server().await;
    let fwd = Forwarder::bind("127.0.0.1:0".parse().unwrap(), target)
        .await
        .unwrap();
    let listen = fwd.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fwd.run(async {
        let _ = stop_rx.await;
    }));

    const SIZE: usize = 10 * 1024 * 1024;
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let s = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(listen))
        .await
        .unwrap()
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(SIZE);
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
        .await
        .expect("echo within 60 s")
        .unwrap();
    writer.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(back.len(), SIZE);
    assert!(back == data, "data corrupted");
    eprintln!(
        "forwarder: 10 MiB each way in {:.3} s = {:.0} MiB/s per direction",
        secs,
        10.0 / secs
    );

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("forwarder stops on shutdown")
        .unwrap()
        .unwrap();
    // The port is released with the forwarder.
    assert!(TcpStream::connect(listen).await.is_err());
}

#[tokio::test]
async fn bind_error_names_the_port() {
    let busy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = busy.local_addr().unwrap();
    let e = Forwarder::bind(addr, addr).await.unwrap_err();
    assert!(matches!(e, ForwardError::Bind { .. }));
    assert!(e.to_string().contains(&addr.port().to_string()), "{e}");
}

#[tokio::test]
async fn unreachable_guest_closes_the_client_connection() {
    // A port with nothing behind it.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let fwd = Forwarder::bind("127.0.0.1:0".parse().unwrap(), dead)
        .await
        .unwrap()
        .with_connect_timeout(Duration::from_secs(2));
    let listen = fwd.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fwd.run(async {
        let _ = rx.await;
    }));
    let mut s = TcpStream::connect(listen).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed within the deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
