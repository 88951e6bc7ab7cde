//! Terminal sessions (`ExecRequest::tty`) against the real agent: a real
//! pseudo-terminal, a real shell with job control, the kernel's line
//! discipline turning control bytes into signals.

use std::time::{Duration, Instant};

use mvm_agent_proto::client::{AgentClient, ExecEvent, ExecSession};
use mvm_agent_proto::{ErrorKind, ExitStatus, WinSize};

use crate::common::{Agent, deadline, req, run, wait_gone};

const ROWS: u16 = 24;
const COLS: u16 = 80;

/// A terminal session and everything it printed so far.
struct Tty {
    s: ExecSession,
    screen: String,
    /// Where the next `expect` starts looking.
    mark: usize,
    exit: Option<ExitStatus>,
}

impl Tty {
    async fn start(c: &AgentClient, argv: &[&str]) -> Tty {
        let mut r = req(argv);
        r.stdin = true;
        r.tty = Some(WinSize {
            rows: ROWS,
            cols: COLS,
        });
        // A prompt the test can wait for, whichever shell this is.
        r.env = vec![("PS1".into(), "PROMPT> ".into())];
        let s = c.exec(r).await.unwrap();
        Tty {
            s,
            screen: String::new(),
            mark: 0,
            exit: None,
        }
    }

    async fn type_(&self, keys: &str) {
        self.s.write_stdin(keys.as_bytes()).await.unwrap();
    }

    /// Wait (5 s at most) until `what` appears after the mark; move the mark
    /// past it and return what came before it.
    async fn expect(&mut self, what: &str) -> String {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(i) = self.screen[self.mark..].find(what) {
                let before = self.screen[self.mark..self.mark + i].to_owned();
                self.mark += i + what.len();
                return before;
            }
            assert!(
                self.exit.is_none(),
                "the session ended ({:?}) without {what:?}; output: {:?}",
                self.exit,
                self.screen
            );
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.s.next_event()).await {
                Err(_) => panic!("no {what:?} within 5 s; output: {:?}", self.screen),
                Ok(Ok(Some(ExecEvent::Stdout(b)))) => {
                    self.screen.push_str(&String::from_utf8_lossy(&b))
                }
                Ok(Ok(Some(ExecEvent::Stderr(b)))) => {
                    panic!("stderr on a terminal session: {b:?}")
                }
                Ok(Ok(Some(ExecEvent::Exit(st)))) => self.exit = Some(st),
                Ok(Ok(None)) => panic!("session over; output: {:?}", self.screen),
                Ok(Err(e)) => panic!("{e}; output: {:?}", self.screen),
            }
        }
    }

    /// Wait (5 s at most) for the exit status, collecting the output.
    async fn exit(&mut self) -> ExitStatus {
        let end = Instant::now() + Duration::from_secs(5);
        while self.exit.is_none() {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.s.next_event()).await {
                Err(_) => panic!("no exit within 5 s; output: {:?}", self.screen),
                Ok(Ok(Some(ExecEvent::Stdout(b)))) => {
                    self.screen.push_str(&String::from_utf8_lossy(&b))
                }
                Ok(Ok(Some(ExecEvent::Exit(st)))) => self.exit = Some(st),
                other => panic!("{other:?}; output: {:?}", self.screen),
            }
        }
        self.exit.unwrap()
    }
}

/// A number printed as `NAME=123` (after the mark; the terminal's echo of
/// the command line that prints it is skipped).
async fn number(t: &mut Tty, name: &str) -> i32 {
    loop {
        t.expect(&format!("{name}=")).await;
        let rest = &t.screen[t.mark..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && rest[digits.len()..].starts_with("\r\n") {
            t.mark += digits.len();
            return digits.parse().unwrap();
        }
        if !rest.contains("\r\n") {
            // The rest of the line has not arrived yet: look again.
            t.mark -= name.len() + 1;
            t.expect("\r\n").await;
            t.mark = t.screen[..t.mark - 2].rfind(&format!("{name}=")).unwrap();
        }
    }
}

/// Wait (5 s at most) until session `sid` runs `n` `sleep` processes.
async fn wait_sleeps(sid: i32, n: usize) {
    let running = async {
        while sleeps_in_session(sid) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap_or_else(|_| panic!("session {sid}: {n} sleep processes did not start"));
}

/// Fields after the command name of `/proc/PID/stat` (state first).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    Some(
        stat[close + 1..]
            .split_whitespace()
            .map(String::from)
            .collect(),
    )
}

/// Wait until shell `sh` gave its terminal to another process group (the
/// terminal's foreground group, `tpgid`, is not the shell's) and no `sleep`
/// of its session is stopped any more.
async fn wait_foreground_job(sh: i32) {
    let handed_over = || {
        let Some(f) = stat_fields(sh) else {
            return false;
        };
        // f[2] = pgrp, f[5] = tpgid
        f[5] != f[2] && stopped_sleeps_in_session(sh) == 0
    };
    let waiting = async {
        while !handed_over() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap_or_else(|_| panic!("shell {sh} did not continue its job in the foreground"));
}

/// How many stopped (`T`) `sleep` processes session `sid` has.
fn stopped_sleeps_in_session(sid: i32) -> usize {
    sleeps_in_session_where(sid, |state| state == "T")
}

#[tokio::test]
async fn tty_runs_on_a_terminal_of_the_requested_size_and_no_tty_on_none() {
    let agent = Agent::start();
    let c = agent.client().await;
    assert_eq!(c.negotiated().version, 2);
    let mut t = Tty::start(&c, &["sh", "-c", "tty; stty size; echo err >&2; exit 4"]).await;
    t.expect("/dev/pts/").await;
    t.expect(&format!("{ROWS} {COLS}\r\n")).await;
    // stderr is the terminal too: one stream, in order.
    t.expect("err\r\n").await;
    assert_eq!(t.exit().await.code, Some(4));

    // Without tty: no terminal anywhere, stdout and stderr apart.
    let o = run(&c, req(&["sh", "-c", "tty; tty <&2; echo err >&2"])).await;
    assert_eq!(String::from_utf8_lossy(&o.stdout), "not a tty\nnot a tty\n");
    assert_eq!(o.stderr, b"err\n");
    assert_eq!(o.status.code, Some(0));
}

#[tokio::test]
async fn binary_stdio_passes_unchanged_without_tty() {
    let agent = Agent::start();
    let c = agent.client().await;
    let data: Vec<u8> = (0..=255u8).cycle().take(256 * 64).collect();
    let mut r = req(&["cat"]);
    r.stdin = true;
    let mut s = c.exec(r).await.unwrap();
    s.write_stdin(&data).await.unwrap();
    s.close_stdin().unwrap();
    let mut got = Vec::new();
    loop {
        match s.next_event().await.unwrap().unwrap() {
            ExecEvent::Stdout(b) => got.extend_from_slice(&b),
            ExecEvent::Stderr(b) => panic!("stderr {b:?}"),
            ExecEvent::Exit(st) => {
                assert_eq!(st.code, Some(0));
                break;
            }
        }
    }
    // No \n -> \r\n, no ^C or ^D interpreted: byte for byte.
    assert!(got == data, "{} bytes back, differing", got.len());
}

#[tokio::test]
async fn resize_changes_stty_size_and_sends_sigwinch() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut t = Tty::start(
        &c,
        &[
            "sh",
            "-c",
            "trap 'echo WINCH; stty size' WINCH; echo ready; while :; do sleep 1 & wait $!; done",
        ],
    )
    .await;
    t.expect("ready").await;
    t.s.resize(30, 100).unwrap();
    t.expect("WINCH").await;
    t.expect("30 100").await;
    t.s.resize(10, 40).unwrap();
    t.expect("10 40").await;
}

#[tokio::test]
async fn ctrl_c_stops_the_foreground_job_and_the_shell_lives_on() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut t = Tty::start(&c, &["sh", "-i"]).await;
    t.expect("PROMPT> ").await;
    t.type_("echo SH=$$\n").await;
    let sh = number(&mut t, "SH").await;
    t.expect("PROMPT> ").await;
    t.type_("sleep 100\n").await;
    wait_sleeps(sh, 1).await;
    let pressed = Instant::now();
    t.type_("\x03").await;
    t.expect("PROMPT> ").await;
    let back = pressed.elapsed();
    assert!(back < Duration::from_secs(1), "prompt back after {back:?}");
    t.type_("echo alive $((6*7))\n").await;
    t.expect("alive 42").await;
    // The Signal frame reaches the foreground job too, not the shell.
    t.type_("sleep 100\n").await;
    wait_sleeps(sh, 1).await;
    t.s.signal(2).unwrap();
    t.expect("PROMPT> ").await;
    t.type_("echo still $((6*7))\n").await;
    t.expect("still 42").await;
    t.type_("exit 3\n").await;
    assert_eq!(t.exit().await.code, Some(3));
}

#[tokio::test]
async fn ctrl_d_ends_cat_and_ctrl_backslash_quits_it() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut t = Tty::start(&c, &["cat"]).await;
    t.type_("hello\n").await;
    // The terminal echoes the line, then cat prints it.
    t.expect("hello\r\nhello\r\n").await;
    t.type_("\x04").await;
    assert_eq!(t.exit().await.code, Some(0));

    let mut t = Tty::start(&c, &["sh", "-i"]).await;
    t.expect("PROMPT> ").await;
    t.type_("cat\n").await;
    t.type_("x\n").await;
    t.expect("x\r\nx\r\n").await;
    t.type_("\x1c").await;
    t.expect("PROMPT> ").await;
    t.type_("echo status=$?\n").await;
    // 128 + SIGQUIT
    t.expect("status=131").await;
}

#[tokio::test]
async fn job_control_works_and_session_end_leaves_no_process() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut t = Tty::start(&c, &["sh", "-i"]).await;
    t.expect("PROMPT> ").await;
    t.type_("echo SH=$$; sleep 100 & echo BG=$!\n").await;
    let sh = number(&mut t, "SH").await;
    let bg = number(&mut t, "BG").await;
    t.expect("PROMPT> ").await;
    t.type_("sleep 50\n").await;
    // Ctrl-Z only once sleep 50 runs in the foreground (before that, the
    // shell itself is the foreground job and ignores it).
    wait_sleeps(sh, 2).await;
    t.type_("\x1a").await;
    t.expect("Stopped").await;
    t.expect("PROMPT> ").await;
    t.type_("jobs; echo JOBS_$((6*7))\n").await;
    t.expect("\r\n").await; // the echo of the command line
    let jobs = t.expect("JOBS_42\r\n").await;
    assert!(
        jobs.contains("sleep 50") && jobs.contains("sleep 100"),
        "{jobs:?}"
    );
    // Bring the stopped job back and interrupt it.
    t.type_("fg %2\n").await;
    t.expect("sleep 50").await;
    // The shell prints the job before it hands it the terminal and
    // continues it: Ctrl-C only once the job is the running foreground.
    wait_foreground_job(sh).await;
    t.type_("\x03").await;
    t.expect("PROMPT> ").await;
    // The background job is still there when the shell exits.
    t.type_("exit 7\n").await;
    assert_eq!(t.exit().await.code, Some(7));
    assert!(
        wait_gone(bg, Duration::from_secs(5)).await,
        "background job {bg} survived the session"
    );
    assert_eq!(sleeps_in_session(sh), 0);
}

/// How many live `sleep` processes session `sid` has.
fn sleeps_in_session(sid: i32) -> usize {
    sleeps_in_session_where(sid, |state| state != "Z")
}

/// How many `sleep` processes of session `sid` are in a state `keep` takes.
fn sleeps_in_session_where(sid: i32, keep: impl Fn(&str) -> bool) -> usize {
    let mut n = 0;
    for e in fs_err::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs_err::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if &stat[open + 1..close] == "sleep" && keep(f[0]) && f[3] == sid.to_string() {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn cancel_kills_the_whole_session() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut t = Tty::start(&c, &["sh", "-i"]).await;
    t.expect("PROMPT> ").await;
    t.type_("echo SH=$$; sleep 100 & echo BG=$!\n").await;
    let sh = number(&mut t, "SH").await;
    let bg = number(&mut t, "BG").await;
    drop(t);
    for pid in [bg, sh] {
        assert!(
            wait_gone(pid, Duration::from_secs(5)).await,
            "pid {pid} survived"
        );
    }
    c.ping().await.unwrap();
}

/// The host end goes away without cancelling anything (a killed `mvm`, a
/// lost link): the session's processes go too.
#[tokio::test]
async fn disconnect_kills_the_whole_session() {
    use mvm_agent_proto::io::{FrameReader, write_frame};
    use mvm_agent_proto::{Frame, Message, Request, Role, handshake};

    let agent = Agent::start();
    let mut s = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
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
    let mut exec = req(&["sh", "-c", "sleep 100 & echo BG=$! SH=$$; wait"]);
    exec.tty = Some(WinSize { rows: 5, cols: 40 });
    write_frame(
        &mut w,
        &Frame::new(1, Message::Request(Request::Exec(exec))),
    )
    .await
    .unwrap();
    let mut out = String::new();
    while !out.contains("\r\n") {
        match r.read_frame().await.unwrap().unwrap().message {
            Message::Stdout(b) => out.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("{other:?}"),
        }
    }
    let pids: Vec<i32> = out
        .split_whitespace()
        .filter_map(|w| w.split_once('=').and_then(|(_, n)| n.parse().ok()))
        .collect();
    assert_eq!(pids.len(), 2, "{out:?}");
    drop(r);
    drop(s);
    for pid in pids {
        assert!(
            wait_gone(pid, Duration::from_secs(5)).await,
            "pid {pid} survived the disconnect"
        );
    }
}

#[tokio::test]
async fn exit_status_and_timeout_are_the_commands() {
    let agent = Agent::start();
    let c = agent.client().await;
    let mut t = Tty::start(&c, &["sh", "-c", "kill -TERM $$"]).await;
    let st = t.exit().await;
    assert_eq!((st.code, st.signal), (None, Some(15)));

    let mut r = req(&["sh", "-c", "echo SH=$$; sleep 100"]);
    r.tty = Some(WinSize { rows: 5, cols: 5 });
    r.timeout_ms = Some(300);
    let s = c.exec(r).await.unwrap();
    let mut t = Tty {
        s,
        screen: String::new(),
        mark: 0,
        exit: None,
    };
    let sh = number(&mut t, "SH").await;
    let st = t.exit().await;
    assert!(st.timed_out, "{st:?}");
    assert!(wait_gone(sh, Duration::from_secs(5)).await);

    // A missing command is NotFound, as without a terminal.
    let mut r = req(&["definitely-not-a-command-xyz"]);
    r.tty = Some(WinSize { rows: 5, cols: 5 });
    let mut s = c.exec(r).await.unwrap();
    match s.next_event().await {
        Err(mvm_agent_proto::client::ClientError::Agent { kind, .. }) => {
            assert_eq!(kind, ErrorKind::NotFound)
        }
        other => panic!("{other:?}"),
    }
}

/// A request this agent cannot decode gets an error on its session; the
/// connection and other sessions go on.
#[tokio::test]
async fn an_unknown_request_is_answered_on_its_session() {
    use mvm_agent_proto::io::{FrameReader, write_frame};
    use mvm_agent_proto::{Frame, Message, Request, Response, Role, handshake};
    use tokio::io::AsyncWriteExt;

    let agent = Agent::start();
    let mut s = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
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
    let future = br#"{"Snapshot":{"path":"/x"}}"#;
    let mut wire = (5 + future.len() as u32).to_le_bytes().to_vec();
    wire.extend_from_slice(&3u32.to_le_bytes());
    wire.push(2);
    wire.extend_from_slice(future);
    // And a frame kind nobody knows, on session 4.
    wire.extend_from_slice(&[5, 0, 0, 0, 4, 0, 0, 0, 99]);
    w.write_all(&wire).await.unwrap();
    for sid in [3, 4] {
        let f = tokio::time::timeout(Duration::from_secs(5), r.read_frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match f {
            Frame {
                session,
                message: Message::Error(e),
            } if session == sid => {
                assert_eq!(e.kind, ErrorKind::InvalidRequest);
                assert!(e.message.starts_with("unknown request"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
    }
    write_frame(&mut w, &Frame::new(5, Message::Request(Request::Ping)))
        .await
        .unwrap();
    let f = r.read_frame().await.unwrap().unwrap();
    assert_eq!(f, Frame::new(5, Message::Response(Response::Pong)));
}
