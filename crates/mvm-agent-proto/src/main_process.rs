//! The guest's **main process** (protocol 2): what `mvm run IMAGE` runs
//! when the image defines Entrypoint/Cmd, like a container's process.
//!
//! The host writes a [`MainSpec`] into the config drive's `config.json`
//! (key `main`, see mvm-data's `ConfigJson`); the config drive is mounted
//! at `/mnt/config`, so the agent reads [`CONFIG_JSON_PATH`] after boot.
//! The agent starts the process once, in its own session, with stdin
//! `/dev/null` and stdout/stderr on the guest console (which the host keeps
//! as `console.log`: `mvm logs` shows it). When it exits the agent logs
//! the status, answers every `WaitMain` request with
//! [`crate::Response::MainExited`], and powers the guest off — right after
//! the answer was sent, or after [`MainSpec::poweroff_grace_ms`] if no host
//! asks.

use serde::{Deserialize, Serialize};

use crate::message::ExecRequest;

/// Where the agent finds the config drive's `config.json`.
pub const CONFIG_JSON_PATH: &str = "/mnt/config/config.json";

/// How long the agent waits for a `WaitMain` after the main process
/// exited before powering off anyway, unless the spec says otherwise.
pub const DEFAULT_POWEROFF_GRACE_MS: u64 = 30_000;

/// The main process to start after boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MainSpec {
    /// Program and arguments (Entrypoint + Cmd); run directly, no shell.
    pub argv: Vec<String>,
    /// Environment added to (and overriding) the agent's defaults.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User to run as (as [`ExecRequest::user`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Power off this long after the process exited when no host asked
    /// with `WaitMain` (default [`DEFAULT_POWEROFF_GRACE_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poweroff_grace_ms: Option<u64>,
}

impl MainSpec {
    /// The spec as an exec request (no stdin, no timeout).
    pub fn exec_request(&self) -> ExecRequest {
        ExecRequest {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            stdin: false,
            timeout_ms: None,
            user: self.user.clone(),
            tty: None,
        }
    }
}

/// The part of `config.json` the agent reads (other keys are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigMain {
    /// The main process, if the machine has one.
    #[serde(default)]
    pub main: Option<MainSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_with_and_without_main() {
        let c: ConfigMain = serde_json::from_str(r#"{"version":1,"id":"x","name":"y"}"#).unwrap();
        assert!(c.main.is_none());
        let c: ConfigMain = serde_json::from_str(
            r#"{"version":1,"main":{"argv":["/bin/sh","-c","echo hi"],"env":[["A","1"]],"user":"app"}}"#,
        )
        .unwrap();
        let m = c.main.unwrap();
        assert_eq!(m.argv[0], "/bin/sh");
        let r = m.exec_request();
        assert_eq!(r.user.as_deref(), Some("app"));
        assert_eq!(r.env, [("A".to_owned(), "1".to_owned())]);
        assert!(!r.stdin);
    }
}
