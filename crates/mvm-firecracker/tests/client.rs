//! The API client against an in-test HTTP server on a Unix socket.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mvm_firecracker::api::*;
use tokio::net::UnixListener;

type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// Serve `reply(method, path, body) -> (status, body)` on `path`.
fn serve(
    path: &Path,
    reply: impl Fn(&str, &str, &str) -> (StatusCode, String) + Send + Sync + 'static,
) -> Seen {
    let listener = UnixListener::bind(path).unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            let reply = reply.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    let reply = reply.clone();
                    async move {
                        let method = req.method().to_string();
                        let uri = req.uri().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body = String::from_utf8(body.to_vec()).unwrap();
                        let (status, out) = reply(&method, &uri, &body);
                        seen.lock().unwrap().push((method, uri, body));
                        let mut r = Response::new(Full::new(Bytes::from(out)));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    seen
}

#[tokio::test]
async fn requests_carry_typed_bodies_and_responses_decode() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("api.sock");
    let seen = serve(&sock, |m, p, _| match (m, p) {
        ("GET", "/") => (
            StatusCode::OK,
            r#"{"app_name":"Firecracker","id":"x","state":"Paused","vmm_version":"1.16.1"}"#.into(),
        ),
        ("GET", "/version") => (StatusCode::OK, r#"{"firecracker_version":"1.16.1"}"#.into()),
        _ => (StatusCode::NO_CONTENT, String::new()),
    });
    let c = Client::new(&sock);
    let info = c.describe_instance().await.unwrap();
    assert_eq!(info.state, InstanceState::Paused);
    assert_eq!(c.version().await.unwrap().firecracker_version, "1.16.1");
    c.put_drive(&Drive {
        drive_id: "rootfs".into(),
        partuuid: None,
        is_root_device: false,
        cache_type: None,
        is_read_only: Some(true),
        path_on_host: Some("/r".into()),
        rate_limiter: None,
        io_engine: None,
        socket: None,
    })
    .await
    .unwrap();
    c.pause().await.unwrap();
    c.instance_start().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[2].0, "PUT");
    assert_eq!(seen[2].1, "/drives/rootfs");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&seen[2].2).unwrap(),
        serde_json::json!({"drive_id":"rootfs","is_root_device":false,"is_read_only":true,"path_on_host":"/r"})
    );
    assert_eq!(
        seen[3],
        ("PATCH".into(), "/vm".into(), r#"{"state":"Paused"}"#.into())
    );
    assert_eq!(
        seen[4],
        (
            "PUT".into(),
            "/actions".into(),
            r#"{"action_type":"InstanceStart"}"#.into()
        )
    );
}

#[tokio::test]
async fn faults_are_typed_and_name_socket_and_endpoint() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("api.sock");
    serve(&sock, |_, _, _| {
        (
            StatusCode::BAD_REQUEST,
            r#"{"fault_message":"Invalid vsock guest CID"}"#.into(),
        )
    });
    let e = Client::new(&sock)
        .put_vsock(&Vsock {
            guest_cid: 3,
            uds_path: "/v".into(),
            vsock_id: None,
        })
        .await
        .unwrap_err();
    match &e {
        ApiError::Fault {
            status,
            fault_message,
            endpoint,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(fault_message, "Invalid vsock guest CID");
            assert_eq!(endpoint, "PUT /vsock");
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&sock.display().to_string()) && msg.contains("PUT /vsock"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_silent_server_hits_the_deadline() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("api.sock");
    // Accepts connections and never answers.
    let listener = UnixListener::bind(&sock).unwrap();
    let holder = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            keep.push(s);
        }
    });
    let start = Instant::now();
    let e = Client::new(&sock)
        .with_timeout(Duration::from_millis(200))
        .describe_instance()
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Timeout { .. }), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(e.to_string().contains("GET /"), "{e}");
    holder.abort();
}

#[tokio::test]
async fn refused_and_missing_sockets_are_told_apart() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("api.sock");
    let e = Client::new(&sock).version().await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let e = Client::new(&sock).version().await.unwrap_err();
    assert!(e.is_connection_refused(), "{e:?}");
}
