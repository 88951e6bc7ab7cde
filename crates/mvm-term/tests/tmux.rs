//! A person at a terminal: tmux types, resizes and reads the screen.

use std::time::{Duration, Instant};

use crate::common::{Agent, MVM_TTY, Tmux, children, have_tmux, number, wait_file, wait_gone};

/// In the pane's host shell: save `stty -a`, run `mvm-tty ARGS`, print its
/// exit status, save `stty -a` again.
fn launch(t: &Tmux, agent: &Agent, args: &str) {
    t.line(&format!(
        "stty -a > {before}; {MVM_TTY} {sock} {args}; echo EXIT=$?; stty -a > {after}",
        before = t.path("before"),
        after = t.path("after"),
        sock = agent.socket.display(),
    ));
}

/// The host terminal's settings are the same after as before (all of
/// `stty -a` but the size, which a test may have changed on purpose).
fn assert_terminal_restored(t: &Tmux) {
    let settings = |name| {
        let s = wait_file(&t.dir.path().join(name));
        s.split(';')
            .filter(|f| !f.trim().starts_with("rows") && !f.trim().starts_with("columns"))
            .collect::<Vec<_>>()
            .join(";")
    };
    let (before, after) = (settings("before"), settings("after"));
    assert!(
        before.contains("icanon") && before.contains("echo"),
        "{before}"
    );
    assert_eq!(before, after, "the host terminal was not restored");
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

/// The pid of the running `mvm-tty` (a child of the pane's shell).
fn mvm_tty_pid(t: &Tmux) -> i32 {
    let pane = t.pane_pid();
    children(pane)
        .into_iter()
        .find(|p| {
            fs_err::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "mvm-tty")
        })
        .expect("mvm-tty is not running in the pane")
}

/// Wait until the guest shell `sh` runs a `sleep` child.
fn wait_sleep_child(sh: i32) {
    let end = Instant::now() + Duration::from_secs(10);
    while !children(sh).into_iter().any(|c| {
        fs_err::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "sleep")
    }) {
        assert!(Instant::now() < end, "no sleep under the guest shell {sh}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exec_it_sh_size_resize_ctrl_c_ctrl_d_exit_status_and_restore() {
    if !have_tmux("exec_it_sh_size_resize_ctrl_c_ctrl_d_exit_status_and_restore") {
        return;
    }
    let agent = Agent::start();
    let t = Tmux::start();
    launch(&t, &agent, "-e 'PS1=guest$ ' -- sh");
    t.wait_prompt("guest$");

    t.line("echo $((6*7))");
    t.wait_for("42", |s| has_line(s, "42"));
    t.line("stty size");
    t.wait_for("24 80", |s| has_line(s, "24 80"));
    t.resize(100, 30);
    t.line("stty size; tput cols");
    t.wait_for("30 100 and 100", |s| {
        has_line(s, "30 100") && has_line(s, "100")
    });

    // Ctrl-C reaches the foreground job, not mvm; the shell lives on.
    t.line("echo SH=$$");
    let s = t.wait_for("SH=", |s| number(s, "SH").is_some());
    let sh = number(&s, "SH").unwrap();
    t.line("sleep 100");
    wait_sleep_child(sh);
    let pressed = Instant::now();
    t.keys(&["C-c"]);
    t.wait_prompt("guest$");
    let back = pressed.elapsed();
    assert!(back < Duration::from_secs(1), "prompt back after {back:?}");
    t.line("echo alive");
    t.wait_for("alive", |s| has_line(s, "alive"));

    // Ctrl-D ends cat, not the shell.
    t.line("cat");
    t.line("abc123");
    t.wait_for("abc123 twice", |s| {
        s.lines().filter(|l| l.trim_end() == "abc123").count() == 2
    });
    t.keys(&["C-d"]);
    t.wait_prompt("guest$");

    t.line("exit 3");
    t.wait_for("EXIT=3", |s| exited(s, 3));
    assert_terminal_restored(&t);
}

#[test]
fn sigterm_to_mvm_restores_the_terminal_and_leaves_no_guest_process() {
    if !have_tmux("sigterm_to_mvm_restores_the_terminal_and_leaves_no_guest_process") {
        return;
    }
    let agent = Agent::start();
    let t = Tmux::start();
    launch(&t, &agent, "-e 'PS1=guest$ ' -- sh");
    t.wait_prompt("guest$");
    t.line("sleep 1000 & echo BG=$! SH=$$");
    let s = t.wait_for("BG= SH=", |s| number(s, "SH").is_some());
    let (bg, sh) = (number(&s, "BG").unwrap(), number(&s, "SH").unwrap());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mvm_tty_pid(&t)),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    t.wait_for("EXIT=143", |s| exited(s, 143));
    assert_terminal_restored(&t);
    for pid in [bg, sh] {
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "guest process {pid} survived"
        );
    }
}

#[test]
fn guest_death_restores_the_terminal_and_says_why() {
    if !have_tmux("guest_death_restores_the_terminal_and_says_why") {
        return;
    }
    let mut agent = Agent::start();
    let t = Tmux::start();
    launch(&t, &agent, "-e 'PS1=guest$ ' -- sh");
    t.wait_prompt("guest$");
    // The agent (the guest, as far as the host can tell) dies.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let s = t.wait_for("EXIT=125", |s| exited(s, 125));
    assert!(s.contains("mvm-tty: error:"), "{s}");
    assert!(s.contains("connection to the agent lost"), "{s}");
    assert_terminal_restored(&t);
}

#[test]
fn tty_without_stdin_is_not_raw_and_host_ctrl_c_reaches_the_guest() {
    if !have_tmux("tty_without_stdin_is_not_raw_and_host_ctrl_c_reaches_the_guest") {
        return;
    }
    let agent = Agent::start();
    let t = Tmux::start();
    launch(
        &t,
        &agent,
        "--no-stdin -- sh -c 'tty; stty size; exec sleep 100'",
    );
    t.wait_for("a pty and its size", |s| {
        s.contains("/dev/pts/") && has_line(s, "24 80")
    });
    // Not raw: the host's line discipline makes Ctrl-C a SIGINT to mvm-tty,
    // which forwards it to the guest's foreground job.
    t.keys(&["C-c"]);
    t.wait_for("EXIT=130", |s| exited(s, 130));
    assert_terminal_restored(&t);
}

#[test]
fn login_shell_has_the_hostname_in_the_prompt_and_the_host_term() {
    if !have_tmux("login_shell_has_the_hostname_in_the_prompt_and_the_host_term") {
        return;
    }
    let agent = Agent::start();
    let t = Tmux::start();
    t.line("echo HOSTTERM=$TERM");
    let s = t.wait_for("HOSTTERM=", |s| {
        s.lines().any(|l| l.starts_with("HOSTTERM="))
    });
    let host_term = s
        .lines()
        .find_map(|l| l.strip_prefix("HOSTTERM="))
        .unwrap()
        .trim()
        .to_owned();
    t.line("clear");
    launch(&t, &agent, "--shell");
    let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let short = hostname.split('.').next().unwrap().to_owned();
    t.wait_for("a prompt with the hostname", |s| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.contains(&short))
    });
    t.line("echo GUESTTERM=$TERM; pwd");
    let s = t.wait_for("GUESTTERM=", |s| {
        s.lines().any(|l| l.starts_with("GUESTTERM="))
    });
    assert!(has_line(&s, &format!("GUESTTERM={host_term}")), "{s}");
    assert!(has_line(&s, "/root"), "{s}");
    t.line("exit");
    t.wait_for("EXIT=0", |s| exited(s, 0));
    assert_terminal_restored(&t);
}

/// `-t` with stdin not a terminal: refused before anything starts, with
/// Docker's message, exit 125 (docs/decisions.md).
#[test]
fn tty_with_stdin_not_a_terminal_is_refused() {
    use std::io::Write;
    let agent = Agent::start();
    let mut child = std::process::Command::new(MVM_TTY)
        .arg(&agent.socket)
        .args(["--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // mvm-tty may have refused (and exited) before this is written.
    let _ = child.stdin.take().unwrap().write_all(b"hi\n");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the input device is not a TTY"), "{err}");
    assert!(o.stdout.is_empty());
}
