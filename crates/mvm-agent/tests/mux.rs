//! The host multiplexer between clients and one guest stream.

use std::time::{Duration, Instant};

use mvm_agent_proto::client::{AgentClient, ClientError, ExecEvent};
use mvm_agent_proto::mux::{self, MuxError};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::common::{Agent, deadline, raw_sleeper, req, run, wait_gone};

struct Mux {
    socket: std::path::PathBuf,
    task: JoinHandle<Result<(), MuxError>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

async fn start_mux(agent: &Agent) -> Mux {
    let guest = UnixStream::connect(&agent.socket).await.unwrap();
    let t = Instant::now();
    let link = mux::wait_guest_ready(guest, deadline(5)).await.unwrap();
    eprintln!(
        "guest ready after {:?}: {:?}",
        t.elapsed(),
        link.negotiated()
    );
    assert!(link.negotiated().peer.software.starts_with("mvm-agent/"));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("mux.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(mux::serve(link, listener, async move {
        let _ = rx.await;
    }));
    Mux {
        socket,
        task,
        stop: Some(stop),
        _dir: dir,
    }
}

impl Mux {
    async fn client(&self) -> AgentClient {
        AgentClient::connect_unix(&self.socket, deadline(5))
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn two_clients_run_concurrently_through_one_guest_stream() {
    let agent = Agent::start();
    let mut m = start_mux(&agent).await;
    let a = m.client().await;
    let b = m.client().await;
    assert!(a.negotiated().peer.software.contains("mvm-mux"));
    let t = Instant::now();
    let (oa, ob) = tokio::join!(
        run(&a, req(&["sh", "-c", "sleep 1; echo from-a"])),
        run(&b, req(&["sh", "-c", "sleep 1; echo from-b >&2; exit 4"])),
    );
    assert_eq!(oa.stdout, b"from-a\n");
    assert_eq!(oa.status.code, Some(0));
    assert_eq!(ob.stderr, b"from-b\n");
    assert_eq!(ob.status.code, Some(4));
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "not concurrent: {:?}",
        t.elapsed()
    );
    // Many sessions per client, and flow control through the mux.
    let mut s = a
        .exec(req(&["head", "-c", "5000000", "/dev/zero"]))
        .await
        .unwrap();
    let mut total = 0;
    while let Some(ev) = s.next_event().await.unwrap() {
        if let ExecEvent::Stdout(x) = ev {
            total += x.len();
        }
    }
    assert_eq!(total, 5_000_000);
    b.ping().await.unwrap();
    let _ = m.stop.take().unwrap().send(());
    m.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn client_disconnect_kills_its_command() {
    let agent = Agent::start();
    let m = start_mux(&agent).await;
    let (pid, conn) = raw_sleeper(&m.socket).await;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(conn);
    assert!(
        wait_gone(pid, Duration::from_secs(5)).await,
        "pid {pid} survived its client"
    );
    // Other clients are unaffected.
    m.client().await.ping().await.unwrap();
}

#[tokio::test]
async fn guest_loss_closes_clients_and_ends_serve() {
    let mut agent = Agent::start();
    let m = start_mux(&agent).await;
    let a = m.client().await;
    let mut s = a.exec(req(&["sleep", "60"])).await.unwrap();
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), m.task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(MuxError::GuestLost { .. })), "{r:?}");
    match tokio::time::timeout(Duration::from_secs(5), s.next_event())
        .await
        .unwrap()
    {
        Err(ClientError::ConnectionLost { reason }) => {
            assert!(reason.contains("guest"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(a.ping().await.is_err());
}
