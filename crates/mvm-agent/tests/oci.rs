//! Protocol 2 features for OCI images: exec as another user, and the
//! main process (started from config.json, output on the console, its
//! status answered to `WaitMain`, then power-off).

use std::time::Duration;

use mvm_agent_proto::client::{AgentClient, ClientError};
use mvm_agent_proto::handshake;
use mvm_agent_proto::{ErrorKind, ExecRequest, Hello, Role};

use crate::common::{Agent, deadline, req, run, wait_gone};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[tokio::test]
async fn exec_as_numeric_and_named_users() {
    if !is_root() {
        mvm_core::testing::skip("SKIPPED: exec_as_numeric_and_named_users: needs root (setuid)");
        return;
    }
    let agent = Agent::start();
    let c = agent.client().await;
    let as_user = |argv: &[&str], user: &str| ExecRequest {
        user: Some(user.into()),
        ..req(argv)
    };
    // A uid no passwd entry has: gid as given, HOME /.
    let o = run(
        &c,
        as_user(&["sh", "-c", "id -u; id -g; echo $HOME"], "4242:4343"),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&o.stdout), "4242\n4343\n/\n");
    // A name from the (host's, here) /etc/passwd: Debian's nobody.
    let o = run(&c, as_user(&["sh", "-c", "id -un; echo $HOME"], "nobody")).await;
    assert_eq!(String::from_utf8_lossy(&o.stdout), "nobody\n/nonexistent\n");
    // The request's env still wins over the passwd home.
    let mut r = as_user(&["sh", "-c", "echo $HOME"], "nobody");
    r.env.push(("HOME".into(), "/tmp".into()));
    assert_eq!(String::from_utf8_lossy(&run(&c, r).await.stdout), "/tmp\n");
    // Root by default.
    assert_eq!(
        String::from_utf8_lossy(&run(&c, req(&["id", "-u"])).await.stdout),
        "0\n"
    );
    // An unknown user is refused, naming it.
    let e = c
        .exec(as_user(&["true"], "no-such-user-mvm"))
        .await
        .unwrap()
        .next_event()
        .await
        .unwrap_err();
    match e {
        ClientError::Agent { kind, message } => {
            assert_eq!(kind, ErrorKind::InvalidRequest);
            assert!(message.contains("no-such-user-mvm"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// A fake peer that speaks only protocol 1: the client refuses protocol-2
/// features instead of sending them (an old agent would ignore `user` and
/// run the command as root).
#[tokio::test]
async fn version_1_agents_are_refused_protocol_2_features() {
    let (host, guest) = tokio::net::UnixStream::pair().unwrap();
    let peer = tokio::spawn(async move {
        let (r, mut w) = guest.into_split();
        let mut r = mvm_agent_proto::io::FrameReader::new(r);
        let old = Hello {
            min_version: 1,
            max_version: 1,
            role: Role::Agent,
            software: "mvm-agent/old".into(),
        };
        handshake::respond(&mut r, &mut w, &old, deadline(5))
            .await
            .unwrap();
        // Keep the stream open until the test ends.
        while let Ok(Some(_)) = r.read_frame().await {}
    });
    let c = AgentClient::handshake(host, deadline(5)).await.unwrap();
    assert_eq!(c.negotiated().version, 1);
    let e = c
        .exec(ExecRequest {
            user: Some("app".into()),
            ..req(&["id"])
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Unsupported {
                version: 1,
                needed: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("rebuild the machine's image"), "{e}");
    assert!(matches!(
        c.wait_main().await.unwrap_err(),
        ClientError::Unsupported { .. }
    ));
    drop(c);
    peer.abort();
}

fn config_with_main(dir: &std::path::Path, main: serde_json::Value) -> std::path::PathBuf {
    let p = dir.join("config.json");
    let doc = serde_json::json!({"version": 1, "id": "x", "name": "m", "main": main});
    fs_err::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
    p
}

#[tokio::test]
async fn main_process_status_is_answered_then_the_agent_stops() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    fs_err::create_dir_all(&work).unwrap();
    let cfg = config_with_main(
        dir.path(),
        serde_json::json!({
            "argv": ["sh", "-c", "echo main-out $GREETING $(pwd); echo main-err >&2; exit 3"],
            "env": [["GREETING", "hello"]],
            "cwd": work,
            "poweroff_grace_ms": 600000,
        }),
    );
    let mut agent = Agent::start_with(&["--config".as_ref(), cfg.as_os_str()]);
    let c = agent.client().await;
    let st = tokio::time::timeout(Duration::from_secs(30), c.wait_main())
        .await
        .expect("the main process ends")
        .unwrap();
    assert_eq!(st.code, Some(3));
    // The agent powers off ("exits" when not PID 1) after answering.
    let pid = agent.pid();
    assert!(
        wait_gone(pid, Duration::from_secs(10)).await,
        "agent still running"
    );
    let _ = agent.child.wait();
    // The test's reader thread may still be draining the agent's stderr.
    let want = format!("main-out hello {}", work.display());
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = agent.log.lock().unwrap().join("\n");
        let complete = log.contains(&want)
            && log.contains("main-err")
            && log.contains("main process exited with status 3");
        if complete || std::time::Instant::now() > end {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(log.contains(&want), "{log}");
    assert!(log.contains("main-err"), "{log}");
    assert!(log.contains("main process exited with status 3"), "{log}");
}

#[tokio::test]
async fn main_process_powers_off_by_itself_when_no_host_asks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_main(
        dir.path(),
        serde_json::json!({"argv": ["true"], "poweroff_grace_ms": 100}),
    );
    let mut agent = Agent::start_with(&["--config".as_ref(), cfg.as_os_str()]);
    assert!(
        wait_gone(agent.pid(), Duration::from_secs(20)).await,
        "agent did not power off"
    );
    let _ = agent.child.wait();
}

#[tokio::test]
async fn main_process_that_cannot_start_reports_127() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_main(
        dir.path(),
        serde_json::json!({"argv": ["/no/such/program"], "poweroff_grace_ms": 600000}),
    );
    let agent = Agent::start_with(&["--config".as_ref(), cfg.as_os_str()]);
    let c = agent.client().await;
    let st = tokio::time::timeout(Duration::from_secs(30), c.wait_main())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.code, Some(127));
}

#[tokio::test]
async fn wait_main_without_a_main_process_is_an_error() {
    let agent = Agent::start();
    let c = agent.client().await;
    match c.wait_main().await.unwrap_err() {
        ClientError::Agent { kind, message } => {
            assert_eq!(kind, ErrorKind::InvalidRequest);
            assert!(message.contains("no main process"), "{message}");
        }
        other => panic!("{other}"),
    }
    c.ping().await.unwrap();
}
