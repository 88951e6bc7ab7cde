//! Shared helpers: the real guest agent (the static binary mvm puts in its
//! images) served on a Unix socket, and a real terminal driven with tmux.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `mvm-tty` client of this crate.
pub const MVM_TTY: &str = env!("CARGO_BIN_EXE_mvm-tty");

/// The guest agent, run on the host with `--listen-unix`; killed on drop.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut cmd = Command::new(agent_binary());
        cmd.arg("--listen-unix")
            .arg(&socket)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        // Another test's fork may still hold the binary's write descriptor
        // for an instant (ETXTBSY): try again until a deadline.
        let end = Instant::now() + Duration::from_secs(5);
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    assert!(Instant::now() < end, "agent binary busy: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => break r.unwrap(),
            }
        };
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
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
            _dir: dir,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The static agent that goes into guest images, written once per test
/// process to a file of its own.
fn agent_binary() -> &'static Path {
    static BIN: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, path) = BIN.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mvm-agent");
        fs_err::write(&path, mvm_image::AGENT_BINARY).unwrap();
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, path)
    });
    path
}

/// Whether tmux is installed; otherwise the test reports a skip.
pub fn have_tmux(test: &str) -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        mvm_core::testing::skip(&format!(
            "SKIPPED: {test}: tmux is not installed (apt-get install tmux)"
        ));
    }
    ok
}

/// A tmux server of our own (private socket) with one 80x24 window running
/// a host shell whose prompt is `host$ `.
pub struct Tmux {
    socket: String,
    pub dir: tempfile::TempDir,
}

impl Tmux {
    pub fn start() -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        // In the test's own directory: private, and gone with it.
        let socket = dir.path().join("tmux.sock").display().to_string();
        let t = Tmux { socket, dir };
        t.run(&[
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-s",
            "t",
            "env",
            "PS1=host$ ",
            "sh",
        ]);
        t.wait_for("host prompt", |s| s.contains("host$"));
        t
    }

    pub fn run(&self, args: &[&str]) -> String {
        let o = Command::new("tmux")
            .args(["-S", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Type `text` and press Enter.
    pub fn line(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", text]);
        self.run(&["send-keys", "-t", "t", "Enter"]);
    }

    /// Press keys by tmux name (`C-c`, `C-d`, ...).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    pub fn screen(&self) -> String {
        // -J: wrapped lines joined, so messages can be matched whole.
        self.run(&["capture-pane", "-p", "-J", "-t", "t"])
    }

    /// Wait (10 s at most) until the screen satisfies `pred`; returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < end, "no {what} within 10 s; screen:\n{s}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Wait until the last non-empty line of the screen ends with `prompt`.
    pub fn wait_prompt(&self, prompt: &str) -> String {
        self.wait_for(&format!("prompt {prompt:?}"), |s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim_end().ends_with(prompt.trim_end()))
        })
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        self.run(&[
            "resize-window",
            "-t",
            "t",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
        ]);
    }

    /// The pid of the pane's shell.
    pub fn pane_pid(&self) -> i32 {
        self.run(&["display-message", "-p", "-t", "t", "#{pane_pid}"])
            .trim()
            .parse()
            .unwrap()
    }

    /// A path in this test's directory, for the host shell to write to.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-S", &self.socket, "kill-server"])
            .output();
    }
}

/// The child processes of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    fs_err::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Wait until `pid` no longer exists (or is a zombie).
pub fn wait_gone(pid: i32, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Wait until the file at `path` exists and is not empty; its contents.
pub fn wait_file(path: &Path) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = fs_err::read_to_string(path)
            && !s.is_empty()
        {
            return s;
        }
        assert!(Instant::now() < end, "{} never written", path.display());
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `NAME=digits` on the screen (the last one, so not the echo of the
/// command that printed it).
pub fn number(screen: &str, name: &str) -> Option<i32> {
    screen.lines().rev().find_map(|l| {
        let i = l.find(&format!("{name}="))?;
        let rest = &l[i + name.len() + 1..];
        let d: String = rest.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    })
}
