//! The release installer against a release served from 127.0.0.1.

use std::collections::HashMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mvm_core::paths::MvmHome;
use mvm_firecracker::install::{InstallError, NoProgress, install_release_from};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

const V: &str = "1.16.1";
const ARCH: &str = "x86_64";

fn tarball() -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in [
        (
            format!("release-v{V}-{ARCH}/firecracker-v{V}-{ARCH}"),
            &b"FC-BINARY"[..],
        ),
        (
            format!("release-v{V}-{ARCH}/jailer-v{V}-{ARCH}"),
            &b"JAILER"[..],
        ),
        (format!("release-v{V}-{ARCH}/LICENSE"), &b"license"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Serve `files` (path -> body) on 127.0.0.1; returns the base URL.
async fn serve(files: HashMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Arc::new(files);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let files = files.clone();
                    async move {
                        let r = match files.get(req.uri().path()) {
                            Some(b) => Response::new(Full::new(Bytes::from(b.clone()))),
                            None => {
                                let mut r = Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/download")
}

fn release(sum: String) -> HashMap<String, Vec<u8>> {
    let tgz = tarball();
    let name = format!("firecracker-v{V}-{ARCH}.tgz");
    let mut m = HashMap::new();
    m.insert(
        format!("/download/v{V}/{name}.sha256.txt"),
        format!("{sum}  {name}\n").into_bytes(),
    );
    m.insert(format!("/download/v{V}/{name}"), tgz);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_checksum_installs_both_binaries() {
    let sum = hex::encode(Sha256::digest(tarball()));
    let base = serve(release(sum)).await;
    let t = tempfile::tempdir().unwrap();
    let home = MvmHome::new(t.path());
    let h2 = home.clone();
    let path =
        tokio::task::spawn_blocking(move || install_release_from(&base, &h2, V, ARCH, &NoProgress))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(path, home.bin_dir().join("firecracker"));
    assert_eq!(fs_err::read(&path).unwrap(), b"FC-BINARY");
    assert_eq!(
        fs_err::read(home.bin_dir().join("jailer")).unwrap(),
        b"JAILER"
    );
    for f in ["firecracker", "jailer"] {
        let mode = fs_err::metadata(home.bin_dir().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{f}");
    }
    // Only the two binaries: no temp files left behind.
    assert_eq!(fs_err::read_dir(home.bin_dir()).unwrap().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checksum_installs_nothing_and_names_both_digests() {
    let wrong = "0".repeat(64);
    let actual = hex::encode(Sha256::digest(tarball()));
    let base = serve(release(wrong.clone())).await;
    let t = tempfile::tempdir().unwrap();
    let home = MvmHome::new(t.path());
    let h2 = home.clone();
    let e =
        tokio::task::spawn_blocking(move || install_release_from(&base, &h2, V, ARCH, &NoProgress))
            .await
            .unwrap()
            .unwrap_err();
    assert!(matches!(e, InstallError::ChecksumMismatch { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&wrong) && msg.contains(&actual), "{msg}");
    assert!(!home.bin_dir().join("firecracker").exists());
    let cache_left = fs_err::read_dir(home.cache_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cache_left, 0, "the rejected download is not kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_suggests_firecracker_bin() {
    // A port nobody listens on (bound, then closed).
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/download", l.local_addr().unwrap());
    drop(l);
    let t = tempfile::tempdir().unwrap();
    let home = MvmHome::new(t.path());
    let e = tokio::task::spawn_blocking(move || {
        install_release_from(&base, &home, V, ARCH, &NoProgress)
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(e, InstallError::Download { .. }), "{e:?}");
    assert!(e.to_string().contains("--firecracker-bin PATH"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_release_is_a_download_error() {
    let base = serve(HashMap::new()).await;
    let t = tempfile::tempdir().unwrap();
    let home = MvmHome::new(t.path());
    let e = tokio::task::spawn_blocking(move || {
        install_release_from(&base, &home, V, ARCH, &NoProgress)
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(e.to_string().contains("sha256.txt"), "{e}");
}
