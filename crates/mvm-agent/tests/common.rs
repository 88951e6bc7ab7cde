//! Shared helpers: a running agent process owned by the test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mvm_agent_proto::ExecRequest;
use mvm_agent_proto::client::{AgentClient, ExecEvent};

/// An agent process listening on a temporary Unix socket; killed on drop.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    /// Every line the agent wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start() -> Agent {
        Self::start_with(&[])
    }

    /// Start with extra arguments after `--listen-unix PATH`.
    pub fn start_with(extra: &[&std::ffi::OsStr]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_mvm-agent"))
            .arg("--listen-unix")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Readiness: the agent prints "mvm-agent: ready" once listening.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line.clone());
                if line.contains("mvm-agent: ready")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                eprintln!("[agent] {line}");
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("agent did not become ready");
        Agent {
            child,
            socket,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub async fn client(&self) -> AgentClient {
        AgentClient::connect_unix(&self.socket, deadline(5))
            .await
            .unwrap()
    }

    /// Peak resident memory of the agent process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = fs_err::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

pub fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Everything a command printed, and how it ended.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: mvm_agent_proto::ExitStatus,
}

pub async fn run(client: &AgentClient, r: ExecRequest) -> Output {
    let mut s = client.exec(r).await.unwrap();
    let mut out = Output::default();
    while let Some(ev) = s.next_event().await.unwrap() {
        match ev {
            ExecEvent::Stdout(b) => out.stdout.extend_from_slice(&b),
            ExecEvent::Stderr(b) => out.stderr.extend_from_slice(&b),
            ExecEvent::Exit(st) => out.status = st,
        }
    }
    out
}

/// Wait until `pid` no longer exists (or is a zombie nobody will see).
pub async fn wait_gone(pid: i32, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Over a raw connection (no `AgentClient`, so nothing sends `Cancel`):
/// handshake, start `sh -c 'echo $$; exec sleep 60'`, return its pid and
/// the connection. Dropping the connection is a bare disconnect.
pub async fn raw_sleeper(socket: &std::path::Path) -> (i32, tokio::net::UnixStream) {
    use mvm_agent_proto::io::{FrameReader, write_frame};
    use mvm_agent_proto::{Frame, Message, Request, Role, handshake};
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (r, mut w) = s.split();
    let mut r = FrameReader::new(r);
    handshake::initiate(
        &mut r,
        &mut w,
        &handshake::hello(Role::Host, "raw"),
        deadline(5),
    )
    .await
    .unwrap();
    let exec = req(&["sh", "-c", "echo $$; exec sleep 60"]);
    write_frame(
        &mut w,
        &Frame::new(5, Message::Request(Request::Exec(exec))),
    )
    .await
    .unwrap();
    let pid = match r.read_frame().await.unwrap().unwrap() {
        Frame {
            session: 5,
            message: Message::Stdout(b),
        } => String::from_utf8_lossy(&b).trim().parse().unwrap(),
        other => panic!("{other:?}"),
    };
    drop(r);
    (pid, s)
}
