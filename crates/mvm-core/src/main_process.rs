//! What every process of a machine starts with, and the machine's **main
//! process** — the model behind `mvm run IMAGE` for OCI images, as a
//! container has one.
//!
//! - [`ProcessDefaults`]: the environment, working directory and user
//!   every command run in the machine starts with. For a machine of an OCI
//!   image they come from the image's config (`Env`, `WorkingDir`,
//!   `User`), overridden by `mvm run -w/--user`; `mvm run -e` stays in the
//!   record's `env`, and `mvm exec -e/-w/--user` override both. Persisted
//!   per machine (`InstanceDir::process_defaults`), so a machine keeps what
//!   its disk was made with even when its image's tag moves on.
//! - [`MainProcess`]: Entrypoint + Cmd (Docker's rules), resolved when the
//!   machine is created and persisted in the record; the guest agent starts
//!   it after boot and the machine stops when it exits.
//! - [`MainExit`]: how the main process last ended, as the supervisor
//!   recorded it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The defaults of every command run in a machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessDefaults {
    /// Environment under the machine's own (`run -e`) and the command's
    /// (`exec -e`): the image's `Env`, in order.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (`run -w`, else the image's `WorkingDir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User (`run --user`, else the image's `User`): `user`, `uid`,
    /// `user:group` or `uid:gid`, resolved in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ProcessDefaults {
    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.cwd.is_none() && self.user.is_none()
    }
}

/// A machine's main process: started by the guest agent after boot, output
/// on the console (`mvm logs`); the machine stops when it exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MainProcess {
    /// Program and arguments (Entrypoint + Cmd), run without a shell.
    pub argv: Vec<String>,
    /// Its environment (the image's `Env` under the machine's `run -e`),
    /// working directory and user; stored flat beside `argv`.
    #[serde(flatten)]
    pub process: ProcessDefaults,
}

/// How a machine's main process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MainExit {
    /// Exit code, when it exited.
    #[serde(default)]
    pub code: Option<i32>,
    /// Signal, when a signal killed it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// When the supervisor learnt it.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl MainExit {
    /// The status a shell would report: the code, or 128 + the signal.
    pub fn exit_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 125,
        }
    }
}

impl std::fmt::Display for MainExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "main process exited with code {c}"),
            (None, Some(s)) => write!(f, "main process killed by signal {s}"),
            (None, None) => f.write_str("main process ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions_and_codes() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let e = MainExit {
            code: Some(3),
            signal: None,
            at,
        };
        assert_eq!(e.to_string(), "main process exited with code 3");
        assert_eq!(e.exit_code(), 3);
        let e = MainExit {
            code: None,
            signal: Some(9),
            at,
        };
        assert_eq!(e.to_string(), "main process killed by signal 9");
        assert_eq!(e.exit_code(), 137);
    }

    #[test]
    fn defaults_round_trip_and_tolerate_missing_keys() {
        let d: ProcessDefaults = serde_json::from_str("{}").unwrap();
        assert!(d.is_empty());
        let d = ProcessDefaults {
            env: vec![("A".into(), "1".into())],
            cwd: Some("/work".into()),
            user: Some("app".into()),
        };
        let back: ProcessDefaults =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn a_main_process_is_stored_flat() {
        // The record's form: what earlier versions wrote and read.
        let stored =
            r#"{"argv":["/bin/sh","-c","exit 3"],"env":[["A","1"]],"cwd":"/work","user":"app"}"#;
        let m: MainProcess = serde_json::from_str(stored).unwrap();
        assert_eq!(m.argv, ["/bin/sh", "-c", "exit 3"]);
        assert_eq!(m.process.env, [("A".to_owned(), "1".to_owned())]);
        assert_eq!(m.process.cwd.as_deref(), Some("/work"));
        assert_eq!(m.process.user.as_deref(), Some("app"));
        let back: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(stored).unwrap()
        );
        let bare: MainProcess = serde_json::from_str(r#"{"argv":["true"]}"#).unwrap();
        assert!(bare.process.is_empty());
    }
}
