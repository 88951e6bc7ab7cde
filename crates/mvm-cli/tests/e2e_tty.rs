//! Interactive terminals against real guests, used as a person would: tmux
//! (a private server) runs a host shell, types, resizes and reads the
//! screen (issue 10's acceptance). One running machine serves every check;
//! one transient machine is booted for `exec -it` without a name. Waits are
//! on screen contents or guest state, each with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    MachineGuard, can_boot, e2e_home, ensure_image, mvm_std, unique, vmms_under, wait_until,
};

/// Deadline for screens that follow a keystroke in a running guest.
const SCREEN: Duration = Duration::from_secs(20);
/// Deadline for a screen that needs a transient machine to boot first.
const BOOT: Duration = Duration::from_secs(180);

#[test]
fn terminals_in_running_and_transient_machines() {
    let test = "terminals_in_running_and_transient_machines";
    if !can_boot(test) || !have_tmux(test) {
        return;
    }
    ensure_image();
    let home = e2e_home();
    let name = unique("tty");
    let _guard = MachineGuard {
        home,
        name: name.clone(),
    };
    let out = mvm_std(home)
        .args(["run", "--name", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mvm run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    completes_names(home, &name);
    let t = Tmux::start(home);

    exec_it_sh(&t, home, &name);
    sigterm_to_exec_it(&t, home, &name);
    shell_and_vi(&t, &name);
    without_a_terminal(home, &name);
    transient_exec_it_and_sigterm(&t, home);
    vmm_death(&t, home, &name);
}

/// Tab completion offers the running machine and the image.
fn completes_names(home: &Path, name: &str) {
    use crate::completion::complete;
    for cmd in ["exec", "shell", "stop", "rm"] {
        let got = complete(home, &["mvm", cmd, ""]);
        assert!(got.iter().any(|c| c == name), "mvm {cmd}: {got:?}");
    }
    let got = complete(home, &["mvm", "cp", ""]);
    assert!(got.contains(&format!("{name}:")), "mvm cp: {got:?}");
    let got = complete(home, &["mvm", "exec", "--image", ""]);
    assert!(got.iter().any(|c| c == "default"), "--image: {got:?}");
}

/// `exec -it NAME -- sh`: arithmetic, size, resize, Ctrl-C, Ctrl-D, exit 3,
/// the host terminal restored.
fn exec_it_sh(t: &Tmux, home: &Path, name: &str) {
    t.launch(&format!("exec -it -e 'PS1=guest$ ' {name} -- sh"));
    t.wait_prompt("guest$", SCREEN);

    t.line("echo $((6*7))");
    t.wait_for("42", SCREEN, |s| has_line(s, "42"));
    t.wait_prompt("guest$", SCREEN);
    t.line("tty");
    let s = t.wait_for("/dev/pts/N", SCREEN, |s| pts(s).is_some());
    let pts = pts(&s).unwrap();
    t.wait_prompt("guest$", SCREEN);
    t.line("stty size");
    t.wait_for("24 80", SCREEN, |s| has_line(s, "24 80"));
    t.wait_prompt("guest$", SCREEN);
    // The new size reaches the guest terminal (seen from outside the
    // session), then the shell in it reports it.
    t.resize(100, 30);
    let mut size = String::new();
    let resized = wait_until(SCREEN, || {
        size = guest(home, name, &["stty", "-F", &pts, "size"]);
        size.trim() == "30 100"
    });
    assert!(resized, "{pts} is {size:?}, not 30 100");
    t.line("stty size");
    t.wait_for("30 100", SCREEN, |s| has_line(s, "30 100"));
    t.wait_prompt("guest$", SCREEN);

    // Ctrl-C reaches the guest's foreground job (sleep), not mvm.
    t.line("sleep 100");
    wait_guest_command(home, name, "sleep 100");
    let pressed = Instant::now();
    t.keys(&["C-c"]);
    t.wait_prompt("guest$", SCREEN);
    let back = pressed.elapsed();
    assert!(back < Duration::from_secs(1), "prompt back after {back:?}");
    t.line("echo alive");
    t.wait_for("alive", SCREEN, |s| has_line(s, "alive"));
    t.wait_prompt("guest$", SCREEN);

    // Ctrl-D ends cat, not the shell. (Keys typed before cat runs would
    // arrive while the shell's line editor has echo off: wait for it.)
    t.line("cat");
    wait_guest_command(home, name, "cat");
    t.line("abc123");
    t.wait_for("abc123 twice", SCREEN, |s| {
        s.lines().filter(|l| l.trim_end() == "abc123").count() == 2
    });
    t.keys(&["C-d"]);
    t.wait_prompt("guest$", SCREEN);

    t.line("exit 3");
    t.wait_for("EXIT=3", SCREEN, |s| exited(s, 3));
    t.assert_restored();
}

/// SIGTERM to `mvm exec -it`: exit 143, the terminal restored, the guest
/// shell and its background job gone.
fn sigterm_to_exec_it(t: &Tmux, home: &Path, name: &str) {
    t.launch(&format!("exec -it -e 'PS1=guest$ ' {name} -- sh"));
    t.wait_prompt("guest$", SCREEN);
    t.line("sleep 1000 & echo BG=$! SH=$$");
    let s = t.wait_for("BG= SH=", SCREEN, |s| number(s, "SH").is_some());
    let (bg, sh) = (number(&s, "BG").unwrap(), number(&s, "SH").unwrap());
    kill(t.mvm_pid(), rustix::process::Signal::TERM);
    t.wait_for("EXIT=143", SCREEN, |s| exited(s, 143));
    t.assert_restored();
    let probe = format!(
        "for p in {bg} {sh}; do [ -e /proc/$p/stat ] && ! grep -q ') Z ' /proc/$p/stat && echo alive $p; done; true"
    );
    let mut left = String::new();
    let gone = wait_until(SCREEN, || {
        left = guest(home, name, &["sh", "-c", &probe]);
        left.trim().is_empty()
    });
    assert!(gone, "guest processes survived: {left}");
}

/// `mvm shell NAME`: a prompt with the machine's name; busybox vi draws
/// full-screen and `:wq` writes the file.
fn shell_and_vi(t: &Tmux, name: &str) {
    t.launch(&format!("shell {name}"));
    let prompt = format!("root@{name}:/root#");
    t.wait_prompt(&prompt, SCREEN);
    t.line("vi /tmp/x");
    let vi_ready = |mode: &'static str| {
        move |s: &str| {
            let tildes = s.lines().filter(|l| l.starts_with('~')).count();
            let status = s.lines().rev().find(|l| !l.trim().is_empty());
            // 30 rows: the text, 28 empty-line markers, the status line.
            tildes >= 25 && status.is_some_and(|l| l.starts_with(mode) && l.contains("/tmp/x"))
        }
    };
    t.wait_for("vi, full-screen", SCREEN, vi_ready("- "));
    t.type_text("ihello from vi");
    t.wait_for("insert mode", SCREEN, |s| {
        has_line(s, "hello from vi") && vi_ready("I ")(s)
    });
    // vi takes Escape followed at once by `:` for an Alt key sequence:
    // wait until it is back in command mode.
    t.keys(&["Escape"]);
    t.wait_for("command mode", SCREEN, vi_ready("- "));
    t.line(":wq");
    t.wait_prompt(&prompt, SCREEN);
    t.line("cat /tmp/x");
    t.wait_for("the file vi wrote", SCREEN, |s| {
        s.lines()
            .filter(|l| l.trim_end() == "hello from vi")
            .count()
            == 1
            && s.lines().any(|l| l.ends_with("cat /tmp/x"))
    });
    t.line("exit");
    t.wait_for("EXIT=0", SCREEN, |s| exited(s, 0));
    t.assert_restored();
}

/// No `-t`: no terminal in the guest. `-t` with piped stdin: refused with
/// Docker's message and 125, nothing run.
fn without_a_terminal(home: &Path, name: &str) {
    let out = mvm_std(home)
        .args(["exec", name, "--", "sh", "-c", "tty"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "not a tty\n");
    assert_eq!(out.status.code(), Some(1));

    let mut child = mvm_std(home)
        .args(["exec", "-t", name, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        // mvm may have refused (and exited) before this is written.
        let _ = child.stdin.take().unwrap().write_all(b"hi\n");
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("the input device is not a TTY"), "{err}");
    assert!(out.stdout.is_empty());
}

/// `exec -it` without a name: a terminal in a fresh machine; SIGTERM to mvm
/// restores the terminal, exits 143 and leaves no machine and no VMM.
fn transient_exec_it_and_sigterm(t: &Tmux, home: &Path) {
    t.launch("exec -it -- sh -c 'tty; exec sleep 1000'");
    t.wait_for("a /dev/pts/N line", BOOT, |s| pts(s).is_some());
    let pid = t.mvm_pid();
    let dir = instance_supervised_by(home, pid as u32).expect("no instance owned by the mvm exec");
    assert!(
        !vmms_under(&dir).is_empty(),
        "no VMM of the transient machine"
    );
    kill(pid, rustix::process::Signal::TERM);
    t.wait_for("EXIT=143", SCREEN, |s| exited(s, 143));
    t.assert_restored();
    assert!(!dir.exists(), "left behind: {}", dir.display());
    assert!(vmms_under(&dir).is_empty(), "VMM left behind");
}

/// Wait until `ps` in the guest lists a process whose command line is
/// `command`.
fn wait_guest_command(home: &Path, name: &str, command: &str) {
    let running = wait_until(SCREEN, || {
        guest(home, name, &["ps"])
            .lines()
            .any(|l| l.trim_end().ends_with(&format!(" {command}")))
    });
    assert!(running, "no `{command}` in the guest");
}

/// The `/dev/pts/N` line on the screen.
fn pts(screen: &str) -> Option<String> {
    screen.lines().find_map(|l| {
        let l = l.trim_end();
        let n = l.strip_prefix("/dev/pts/")?;
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| l.to_owned())
    })
}

/// The machine's VMM dies under `exec -it`: 125 with the reason, the
/// terminal restored. (Last: the machine is gone afterwards.)
fn vmm_death(t: &Tmux, home: &Path, name: &str) {
    t.launch(&format!("exec -it -e 'PS1=guest$ ' {name} -- sh"));
    t.wait_prompt("guest$", SCREEN);
    let out = mvm_std(home).args(["inspect", name]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vmm = v["vmm_pid"].as_i64().expect("no VMM pid") as i32;
    kill(vmm, rustix::process::Signal::KILL);
    let s = t.wait_for("EXIT=125", SCREEN, |s| exited(s, 125));
    assert!(s.contains("connection to the agent lost"), "{s}");
    // The guest's prompt line was ended before mvm's message.
    assert!(s.lines().any(|l| l.starts_with("mvm: error:")), "{s}");
    t.assert_restored();
}

/// `mvm exec NAME -- ARGV` (no terminal), its stdout.
fn guest(home: &Path, name: &str, argv: &[&str]) -> String {
    let out = mvm_std(home)
        .args(["exec", name, "--"])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kill(pid: i32, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), sig).unwrap();
}

/// The instance directory whose owner is process `pid` (a transient
/// `mvm exec` supervises its own machine).
fn instance_supervised_by(home: &Path, pid: u32) -> Option<PathBuf> {
    let rd = std::fs::read_dir(home.join("instances")).ok()?;
    rd.flatten().map(|e| e.path()).find(|p| {
        fs_err::read_to_string(p.join("instance.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["owner"]["pid"] == pid)
    })
}

fn has_line(screen: &str, line: &str) -> bool {
    screen.lines().any(|l| l.trim_end() == line)
}

/// The host shell printed `EXIT=code` (at the end of a line: the guest may
/// have left the cursor after its prompt).
fn exited(screen: &str, code: i32) -> bool {
    let want = format!("EXIT={code}");
    screen.lines().any(|l| l.trim_end().ends_with(&want))
}

/// `NAME=digits` on the screen (the last one, so not the echo of the
/// command that printed it).
fn number(screen: &str, name: &str) -> Option<i32> {
    screen.lines().rev().find_map(|l| {
        let i = l.find(&format!("{name}="))?;
        let d: String = l[i + name.len() + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        d.parse().ok()
    })
}

fn have_tmux(test: &str) -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        mvm_core::testing::skip(&format!(
            "SKIPPED: {test}: tmux is not installed (apt-get install tmux)"
        ));
    }
    ok
}

/// A tmux server of our own (private socket) with one 80x24 window running
/// a host shell (prompt `host$ `) whose `MVM_HOME` is the tests' home.
struct Tmux {
    socket: String,
    dir: tempfile::TempDir,
}

impl Tmux {
    fn start(home: &Path) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        // In the test's own directory: private, and gone with it.
        let socket = dir.path().join("tmux.sock").display().to_string();
        let t = Tmux { socket, dir };
        let home = format!("MVM_HOME={}", home.display());
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
            "-u",
            "MVM_BACKEND",
            &home,
            "MVM_NETWORK=none",
            "PS1=host$ ",
            "sh",
        ]);
        t.wait_for("host prompt", SCREEN, |s| s.contains("host$"));
        t
    }

    fn run(&self, args: &[&str]) -> String {
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

    /// On a cleared screen: save `stty -a`, run `mvm ARGS`, print its exit
    /// status, save `stty -a` again.
    fn launch(&self, args: &str) {
        let mvm = assert_cmd::cargo::cargo_bin("mvm");
        self.line(&format!(
            "clear; stty -a > {before}; {mvm} {args}; echo EXIT=$?; stty -a > {after}",
            before = self.path("before"),
            after = self.path("after"),
            mvm = mvm.display(),
        ));
    }

    /// The host terminal's settings are the same after `mvm` as before (all
    /// of `stty -a` but the size, which a check may have changed).
    fn assert_restored(&self) {
        let settings = |name| {
            let path = self.dir.path().join(name);
            let mut s = String::new();
            let written = wait_until(SCREEN, || {
                s = fs_err::read_to_string(&path).unwrap_or_default();
                !s.is_empty()
            });
            assert!(written, "{} never written", path.display());
            s.split(';')
                .filter(|f| !f.trim().starts_with("rows") && !f.trim().starts_with("columns"))
                .collect::<Vec<_>>()
                .join(";")
        };
        let after = settings("after");
        let before = settings("before");
        assert!(
            before.contains(" icanon") && before.contains(" echo "),
            "{before}"
        );
        assert_eq!(before, after, "the host terminal was not restored");
        for f in ["before", "after"] {
            let _ = fs_err::remove_file(self.dir.path().join(f));
        }
    }

    /// Type `text` and press Enter.
    fn line(&self, text: &str) {
        self.type_text(text);
        self.keys(&["Enter"]);
    }

    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", text]);
    }

    /// Press keys by tmux name (`C-c`, `Escape`, ...).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn screen(&self) -> String {
        // -J: wrapped lines joined, so messages can be matched whole.
        self.run(&["capture-pane", "-p", "-J", "-t", "t"])
    }

    /// Wait until the screen satisfies `pred`; returns it.
    fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + within;
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "no {what} within {within:?}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Wait until the last non-empty line of the screen ends with `prompt`.
    fn wait_prompt(&self, prompt: &str, within: Duration) -> String {
        self.wait_for(&format!("prompt {prompt:?}"), within, |s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim_end().ends_with(prompt.trim_end()))
        })
    }

    fn resize(&self, cols: u16, rows: u16) {
        let (x, y) = (cols.to_string(), rows.to_string());
        self.run(&["resize-window", "-t", "t", "-x", &x, "-y", &y]);
    }

    /// The pid of the `mvm` the pane's shell runs.
    fn mvm_pid(&self) -> i32 {
        let pane: i32 = self
            .run(&["display-message", "-p", "-t", "t", "#{pane_pid}"])
            .trim()
            .parse()
            .unwrap();
        fs_err::read_to_string(format!("/proc/{pane}/task/{pane}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .find(|p: &i32| {
                fs_err::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "mvm")
            })
            .expect("mvm is not running in the pane")
    }

    fn path(&self, name: &str) -> String {
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
