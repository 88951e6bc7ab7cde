//! File transfer sessions.

use std::os::unix::fs::PermissionsExt;

use mvm_agent_proto::ErrorKind;
use mvm_agent_proto::client::ClientError;

use crate::common::Agent;

#[tokio::test]
async fn write_then_read_round_trip() {
    let agent = Agent::start();
    let c = agent.client().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/file.bin");
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
    let n = c
        .write_file(path.to_str().unwrap(), 0o640, &data[..])
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(fs_err::read(&path).unwrap(), data);
    assert_eq!(
        fs_err::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o640
    );

    let mut back = Vec::new();
    let meta = c
        .read_file(path.to_str().unwrap(), &mut back)
        .await
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.mode, 0o640);
    assert_eq!(back, data);

    // Empty file.
    let empty = dir.path().join("empty");
    c.write_file(empty.to_str().unwrap(), 0o600, &b""[..])
        .await
        .unwrap();
    let mut back = Vec::new();
    assert_eq!(
        c.read_file(empty.to_str().unwrap(), &mut back)
            .await
            .unwrap()
            .size,
        0
    );
}

#[tokio::test]
async fn errors_name_the_path() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut sink = Vec::new();
    match c.read_file("/no/such/file", &mut sink).await {
        Err(ClientError::Agent { kind, message }) => {
            assert_eq!(kind, ErrorKind::NotFound);
            assert!(message.contains("/no/such/file"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let big = vec![1u8; 1_000_000];
    match c.write_file("/proc/version/x", 0o644, &big[..]).await {
        Err(ClientError::Agent { message, .. }) => {
            assert!(message.contains("/proc/version/x"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    c.ping().await.unwrap();
}
