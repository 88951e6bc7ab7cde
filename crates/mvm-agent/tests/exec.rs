//! Exec sessions against the real agent.

use std::time::{Duration, Instant};

use mvm_agent_proto::client::{ClientError, ExecEvent};
use mvm_agent_proto::{ErrorKind, ExecRequest};

use crate::common::{Agent, req, run};

#[tokio::test]
async fn output_is_streamed_as_produced() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut s = c
        .exec(req(&["sh", "-c", "echo 1; sleep 1; echo 2"]))
        .await
        .unwrap();
    let mut chunks = Vec::new();
    loop {
        match s.next_event().await.unwrap().unwrap() {
            ExecEvent::Stdout(b) => chunks.push((Instant::now(), b)),
            ExecEvent::Stderr(b) => panic!("stderr {b:?}"),
            ExecEvent::Exit(st) => {
                assert_eq!(st.code, Some(0));
                break;
            }
        }
    }
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(&chunks[0].1[..], b"1\n");
    assert_eq!(&chunks[1].1[..], b"2\n");
    let gap = chunks[1].0 - chunks[0].0;
    assert!(
        gap >= Duration::from_millis(800),
        "chunks arrived {gap:?} apart"
    );
    assert!(s.next_event().await.unwrap().is_none());
}

#[tokio::test]
async fn exit_codes_stderr_env_and_cwd() {
    let agent = Agent::start();
    let c = agent.client().await;
    let o = run(&c, req(&["sh", "-c", "echo out; echo err >&2; exit 3"])).await;
    assert_eq!(o.stdout, b"out\n");
    assert_eq!(o.stderr, b"err\n");
    assert_eq!(o.status.code, Some(3));
    assert_eq!(o.status.signal, None);
    assert!(!o.status.timed_out);

    let mut r = req(&["sh", "-c", "echo $FOO:$HOME:$TERM; pwd"]);
    r.env = vec![("FOO".into(), "bar".into()), ("HOME".into(), "/tmp".into())];
    r.cwd = Some("/usr".into());
    let o = run(&c, r).await;
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bar:/tmp:linux\n/usr\n");
}

#[tokio::test]
async fn missing_command_is_a_not_found_error() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut s = c
        .exec(req(&["definitely-not-a-command-xyz"]))
        .await
        .unwrap();
    match s.next_event().await {
        Err(ClientError::Agent { kind, message }) => {
            assert_eq!(kind, ErrorKind::NotFound);
            assert!(
                message.contains("definitely-not-a-command-xyz"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let mut s = c.exec(req(&["/etc/passwd"])).await.unwrap();
    match s.next_event().await {
        Err(ClientError::Agent { kind, .. }) => assert_eq!(kind, ErrorKind::PermissionDenied),
        other => panic!("{other:?}"),
    }
    // The connection still works.
    c.ping().await.unwrap();
}

#[tokio::test]
async fn signal_reaches_the_process_group() {
    let agent = Agent::start();
    let c = agent.client().await;
    // The shell waits on a child; both are in the command's group.
    let mut s = c
        .exec(req(&[
            "sh",
            "-c",
            "echo started; sleep 30; echo not-reached",
        ]))
        .await
        .unwrap();
    assert!(matches!(
        s.next_event().await.unwrap(),
        Some(ExecEvent::Stdout(_))
    ));
    s.signal(15).unwrap();
    let t = Instant::now();
    let st = loop {
        if let ExecEvent::Exit(st) = s.next_event().await.unwrap().unwrap() {
            break st;
        }
    };
    assert_eq!(st.signal, Some(15), "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn timeout_kills_the_group_and_is_reported() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut r = req(&["sh", "-c", "sleep 30 & sleep 30"]);
    r.timeout_ms = Some(300);
    let t = Instant::now();
    let o = run(&c, r).await;
    assert!(o.status.timed_out, "{:?}", o.status);
    assert_eq!(o.status.signal, Some(9));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn stdin_is_forwarded_with_flow_control() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut r = req(&["sha256sum"]);
    r.stdin = true;
    let mut s = c.exec(r).await.unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let stdin = s.stdin();
    let d2 = data.clone();
    let writer = tokio::spawn(async move {
        stdin.write(&d2).await.unwrap();
        stdin.close().unwrap();
    });
    let mut out = Vec::new();
    while let Some(ev) = s.next_event().await.unwrap() {
        if let ExecEvent::Stdout(b) = ev {
            out.extend_from_slice(&b);
        }
    }
    writer.await.unwrap();
    let expected = {
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&data).unwrap();
        child.wait_with_output().unwrap().stdout
    };
    assert_eq!(out, expected);
}

#[tokio::test]
async fn twenty_megabytes_through_a_slow_reader_keep_memory_bounded() {
    let agent = Agent::start();
    let c = agent.client().await;
    let before = agent.peak_rss_kib();
    let mut s = c
        .exec(req(&["head", "-c", "20000000", "/dev/zero"]))
        .await
        .unwrap();
    let mut total = 0usize;
    let mut events = 0usize;
    let t = Instant::now();
    loop {
        match s.next_event().await.unwrap().unwrap() {
            ExecEvent::Stdout(b) => {
                total += b.len();
                events += 1;
                // A slow consumer: the agent must wait for credit.
                if events.is_multiple_of(16) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            ExecEvent::Stderr(_) => {}
            ExecEvent::Exit(st) => {
                assert_eq!(st.code, Some(0));
                break;
            }
        }
    }
    assert_eq!(total, 20_000_000);
    let after = agent.peak_rss_kib();
    eprintln!(
        "20 MB in {:?} ({events} events); agent peak RSS {before} KiB -> {after} KiB",
        t.elapsed()
    );
    assert!(
        after < before + 8 * 1024,
        "agent grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test]
async fn a_stalled_session_does_not_block_others() {
    let agent = Agent::start();
    let c = agent.client().await;
    // Never read: it fills its window and then waits.
    let _stalled = c
        .exec(req(&["head", "-c", "50000000", "/dev/zero"]))
        .await
        .unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..10 {
        let c = c.clone();
        set.spawn(async move {
            let o = run(&c, req(&["echo", &format!("n{i}")])).await;
            assert_eq!(o.stdout, format!("n{i}\n").into_bytes());
        });
    }
    let t = Instant::now();
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    c.ping().await.unwrap();
}

#[tokio::test]
async fn empty_argv_and_missing_cwd_are_invalid() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut s = c.exec(ExecRequest::default()).await.unwrap();
    assert!(matches!(
        s.next_event().await,
        Err(ClientError::Agent {
            kind: ErrorKind::InvalidRequest,
            ..
        })
    ));
    let mut r = req(&["true"]);
    r.cwd = Some("/no/such/dir".into());
    let mut s = c.exec(r).await.unwrap();
    assert!(matches!(
        s.next_event().await,
        Err(ClientError::Agent {
            kind: ErrorKind::InvalidRequest,
            ..
        })
    ));
}
