//! `mvm shell`: what to run in the guest for a login shell.
//!
//! The guest image decides which shells exist, so the choice is made in the
//! guest by a fixed script (no user input is spliced into it): `bash -l`
//! when bash is installed, else `sh -l`, started in `$HOME` (falling back to
//! `/`). The environment carries the host's `TERM`, `HOME=/root` and a
//! prompt with the user, the guest's hostname and the working directory
//! (`root@web:/root# `); a login profile of the image may set its own prompt
//! (Debian's bash and Alpine's sh profiles do, with the hostname too).
//! [`crate::run_tty`] adds the window size.

use mvm_agent_proto::ExecRequest;

/// The script run by `/bin/sh -c` in the guest.
pub const LOGIN_SCRIPT: &str = r#"cd "$HOME" 2>/dev/null || cd /
u=$(id -un 2>/dev/null || echo root)
h=$(hostname 2>/dev/null || uname -n)
s='$'; [ "$(id -u 2>/dev/null || echo 0)" = 0 ] && s='#'
PS1="$u@$h:\$PWD$s "
export PS1
unset u h s
if command -v bash >/dev/null 2>&1; then exec bash -l; fi
exec sh -l"#;

/// What `mvm shell` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOptions {
    /// `TERM` for the guest (the host's: [`crate::tty::host_term`]).
    pub term: String,
    /// The home directory (default `/root`).
    pub home: String,
    /// Extra environment (`mvm shell -e`, the machine's own), applied last.
    pub env: Vec<(String, String)>,
}

impl Default for ShellOptions {
    fn default() -> Self {
        Self {
            term: crate::tty::host_term(),
            home: "/root".into(),
            env: Vec::new(),
        }
    }
}

/// The exec request of a login shell (terminal and stdin on; the window
/// size is filled in by [`crate::run_tty`]).
pub fn login_shell_request(opts: &ShellOptions) -> ExecRequest {
    let mut env = vec![
        ("TERM".to_owned(), opts.term.clone()),
        ("HOME".to_owned(), opts.home.clone()),
    ];
    env.extend(opts.env.iter().cloned());
    ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), LOGIN_SCRIPT.into()],
        env,
        cwd: None,
        stdin: true,
        timeout_ms: None,
        tty: None,
        user: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_a_fixed_script_with_term_and_home() {
        let r = login_shell_request(&ShellOptions {
            term: "tmux-256color".into(),
            home: "/home/u".into(),
            env: vec![("A".into(), "b".into())],
        });
        assert_eq!(r.argv, ["/bin/sh", "-c", LOGIN_SCRIPT]);
        assert!(r.stdin);
        assert_eq!(
            r.env,
            [
                ("TERM".to_owned(), "tmux-256color".to_owned()),
                ("HOME".to_owned(), "/home/u".to_owned()),
                ("A".to_owned(), "b".to_owned()),
            ]
        );
    }

    #[test]
    fn the_script_parses_and_prefers_bash_then_sh() {
        let st = std::process::Command::new("sh")
            .args(["-n", "-c", LOGIN_SCRIPT])
            .status()
            .unwrap();
        assert!(st.success());
        let bash = LOGIN_SCRIPT.find("exec bash -l").unwrap();
        let sh = LOGIN_SCRIPT.find("exec sh -l").unwrap();
        assert!(bash < sh);
    }
}
