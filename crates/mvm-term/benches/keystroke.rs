//! Keystroke echo latency: the time from a key pressed on the host terminal
//! to its echo drawn on it, through the whole interactive path.
//!
//! The host terminal is a real pseudo-terminal pair; [`mvm_term::run_tty`]
//! serves its slave side exactly as `mvm exec -it` serves the user's
//! terminal (raw mode, input thread, protocol, flow control); the command is
//! `cat` on a terminal in the real (static, release) guest agent, run on the
//! host with `--listen-unix`, whose line discipline echoes each key. The
//! bench writes one key to the master and waits for its echo there, 200
//! times after 20 warm-up keys, and prints p50/p99/max. A second line
//! measures the protocol alone (the agent client, no host terminal).
//!
//! `cargo bench -p mvm-term --bench keystroke`
//!
//! Against a real guest (QEMU/TCG or Firecracker, agent reached through the
//! supervisor's multiplexer): point it at a machine's `agent.sock`
//! (`MVM_BENCH_AGENT_SOCKET`). The whole user path — a terminal, the `mvm`
//! binary, `exec -it` — is measured by `scripts/bench 1 keystroke`.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mvm_agent_proto::ExecRequest;
use mvm_agent_proto::WinSize;
use mvm_agent_proto::client::{AgentClient, ExecEvent};

const KEYS: usize = 200;
const WARMUP: usize = 20;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{what}: {} keystrokes, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        v.len(),
        percentile(&v, 0.50).as_secs_f64() * 1e6,
        percentile(&v, 0.99).as_secs_f64() * 1e6,
        v.last().unwrap().as_secs_f64() * 1e6,
    );
}

fn cat_request() -> ExecRequest {
    ExecRequest {
        argv: vec!["cat".into()],
        stdin: true,
        ..Default::default()
    }
}

/// Through a host terminal and `run_tty`.
async fn via_terminal(client: &AgentClient) -> Vec<Duration> {
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .unwrap();
    let slave: OwnedFd = pty.slave;
    let term = mvm_term::Terminal::new(slave.try_clone().unwrap(), slave).unwrap();
    let c = client.clone();
    let session = tokio::spawn(async move { mvm_term::run_tty(&c, cat_request(), term).await });
    let master = pty.master;
    // The reader of the master runs in a thread: blocking reads, measured
    // as a person's terminal would see them.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let m2 = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = nix::unistd::read(&m2, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let keys = tokio::task::spawn_blocking(move || {
        let mut times = Vec::new();
        for i in 0..WARMUP + KEYS {
            let key = b'a' + (i % 26) as u8;
            let t = Instant::now();
            nix::unistd::write(&master, &[key]).unwrap();
            loop {
                let got = rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("no echo within 10 s");
                if got.contains(&key) {
                    break;
                }
            }
            if i >= WARMUP {
                times.push(t.elapsed());
            }
        }
        // End cat: a newline, then Ctrl-D on an empty line.
        nix::unistd::write(&master, b"\n\x04").unwrap();
        // The master stays open until the session ended (closing it would
        // hang the host terminal up under run_tty).
        (times, master)
    })
    .await
    .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("cat did not end")
        .unwrap()
        .unwrap();
    assert_eq!(outcome.exit_code(), 0);
    keys.0
}

/// The protocol alone: the agent client writes a key, waits for the echo.
async fn via_protocol(client: &AgentClient) -> Vec<Duration> {
    let mut req = cat_request();
    req.tty = Some(WinSize { rows: 24, cols: 80 });
    let mut s = client.exec(req).await.unwrap();
    let mut times = Vec::new();
    for i in 0..WARMUP + KEYS {
        let key = b'a' + (i % 26) as u8;
        let t = Instant::now();
        s.write_stdin(&[key]).await.unwrap();
        loop {
            match s.next_event().await.unwrap().unwrap() {
                ExecEvent::Stdout(b) if b.contains(&key) => break,
                ExecEvent::Exit(st) => panic!("cat exited: {st:?}"),
                _ => {}
            }
        }
        if i >= WARMUP {
            times.push(t.elapsed());
        }
    }
    times
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter here.
    let dir = tempfile::tempdir().unwrap();
    let (socket, _agent) = match std::env::var_os("MVM_BENCH_AGENT_SOCKET") {
        Some(s) => (std::path::PathBuf::from(s), None),
        None => {
            let bin = dir.path().join("mvm-agent");
            fs_err::write(&bin, mvm_image::AGENT_BINARY).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            let socket = dir.path().join("agent.sock");
            let mut child = Command::new(&bin)
                .arg("--listen-unix")
                .arg(&socket)
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            // Readiness: the agent says so once listening.
            assert!(
                lines.any(|l| l.is_ok_and(|l| l.contains("mvm-agent: ready"))),
                "agent did not start"
            );
            (socket, Some(KillOnDrop(child)))
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = AgentClient::connect_unix(&socket, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        println!("agent: {}", client.negotiated().peer.software);
        report(
            "keystroke echo, host terminal -> run_tty -> agent PTY -> back",
            via_terminal(&client).await,
        );
        report(
            "keystroke echo, agent client -> agent PTY -> back (no host terminal)",
            via_protocol(&client).await,
        );
    });
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
