//! Launch plans: the `launch.json` read by `mvm exec --launch-plan FILE`.
//!
//! ```json
//! {
//!   "apps": [
//!     {
//!       "name": "web",
//!       "env": { "MODE": "prod", "PORT": "80" },
//!       "entrypoint": {
//!         "command": ["python3", "app.py", "--port", "80"],
//!         "working_dir": "/app",
//!         "env": { "PORT": "8080" }
//!       }
//!     }
//!   ]
//! }
//! ```
//!
//! - `apps` must hold **exactly one** app; zero or several is an error that
//!   lists the app names found.
//! - `entrypoint.command` is the **argv** (a JSON list of strings, at least
//!   one, the first non-empty). It is executed directly, never through a
//!   shell. A single string is refused with an error that suggests the list
//!   form: splitting it ourselves would either need shell semantics (`&&`,
//!   globbing, `$VAR`: a security and surprise risk) or would silently
//!   mis-split quoted arguments. If a shell is wanted, say so explicitly:
//!   `["/bin/sh", "-c", "..."]`.
//! - `entrypoint.working_dir` is optional and must be absolute.
//! - Environment precedence, lowest first: `app.env` < `entrypoint.env` <
//!   the CLI's `-e`. Variable names follow the `-e` rules. The resolved list
//!   keeps the first position a name appeared at.
//! - Unknown fields anywhere are ignored, so plans written for richer
//!   launchers still load.

use crate::spec::{EnvVar, is_env_key};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Plans larger than this are refused (they are tiny in practice).
pub const MAX_PLAN_BYTES: u64 = 1 << 20;

/// A launch plan could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file could not be read.
    #[error("cannot read launch plan {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is too large.
    #[error("launch plan {path} is larger than {MAX_PLAN_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid launch-plan JSON.
    #[error("launch plan {path} is not valid")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// `apps` is empty.
    #[error("launch plan {path} has no apps (exactly one is needed)")]
    NoApps {
        /// The file.
        path: PathBuf,
    },
    /// `apps` has several entries.
    #[error("launch plan {path} has {} apps ({}); exactly one is needed", names.len(), names.join(", "))]
    ManyApps {
        /// The file.
        path: PathBuf,
        /// The names of the apps found (`#N` for unnamed ones).
        names: Vec<String>,
    },
    /// `entrypoint.command` is empty or its program is empty.
    #[error("launch plan {path}: app {app}: entrypoint.command is empty")]
    EmptyCommand {
        /// The file.
        path: PathBuf,
        /// The app.
        app: String,
    },
    /// `entrypoint.command` is a string.
    #[error(
        "launch plan {path}: app {app}: entrypoint.command must be a list of strings (argv), e.g. {suggestion}; it is never run through a shell"
    )]
    CommandIsString {
        /// The file.
        path: PathBuf,
        /// The app.
        app: String,
        /// The string split on whitespace, as a JSON list.
        suggestion: String,
    },
    /// `entrypoint.working_dir` is relative.
    #[error("launch plan {path}: app {app}: working_dir {dir:?} is not absolute")]
    RelativeWorkingDir {
        /// The file.
        path: PathBuf,
        /// The app.
        app: String,
        /// The directory.
        dir: String,
    },
    /// An environment variable name broke the `-e` rules.
    #[error("launch plan {path}: app {app}: invalid environment variable name {key:?}")]
    BadEnvKey {
        /// The file.
        path: PathBuf,
        /// The app.
        app: String,
        /// The name.
        key: String,
    },
}

/// The `launch.json` document (unknown fields ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct LaunchPlan {
    /// The apps; exactly one is accepted.
    #[serde(default)]
    pub apps: Vec<App>,
}

/// One app of a plan.
#[derive(Debug, Clone, Deserialize)]
pub struct App {
    /// Its name, for messages.
    #[serde(default)]
    pub name: Option<String>,
    /// Base environment.
    #[serde(default, deserialize_with = "ordered_env")]
    pub env: Vec<(String, String)>,
    /// What to run.
    pub entrypoint: Entrypoint,
}

/// The command of an app.
#[derive(Debug, Clone, Deserialize)]
pub struct Entrypoint {
    /// The argv (a list) — or a string, which is refused at resolve time.
    pub command: Command,
    /// Working directory in the guest.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Environment overriding the app's.
    #[serde(default, deserialize_with = "ordered_env")]
    pub env: Vec<(String, String)>,
}

/// `entrypoint.command` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// A list of strings: the argv.
    Argv(Vec<String>),
    /// A single string (refused).
    String(String),
}

/// A plan resolved against the CLI's `-e` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPlan {
    /// The argv (non-empty, `argv[0]` non-empty).
    pub argv: Vec<String>,
    /// The guest working directory, if set.
    pub working_dir: Option<PathBuf>,
    /// The environment, precedence applied, first-appearance order.
    pub env: Vec<(String, String)>,
}

/// Deserialize a JSON object of strings keeping its order.
fn ordered_env<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of string values")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, String)> = Vec::new();
            while let Some((k, v)) = m.next_entry::<String, String>()? {
                set(&mut out, k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

fn set(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    }
}

impl LaunchPlan {
    /// Read and parse `path` (not yet resolved).
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let read = |source| PlanError::Read {
            path: path.into(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > MAX_PLAN_BYTES {
            return Err(PlanError::TooLarge { path: path.into() });
        }
        let text = fs_err::read_to_string(path).map_err(read)?;
        Self::parse(&text, path)
    }

    /// Parse `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PlanError> {
        serde_json::from_str(text).map_err(|source| PlanError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Check the plan and apply the environment precedence with the CLI's
    /// `-e` values on top. `path` is only used in messages.
    pub fn resolve(&self, path: &Path, cli_env: &[EnvVar]) -> Result<ResolvedPlan, PlanError> {
        let app = match self.apps.as_slice() {
            [] => return Err(PlanError::NoApps { path: path.into() }),
            [one] => one,
            many => {
                return Err(PlanError::ManyApps {
                    path: path.into(),
                    names: many
                        .iter()
                        .enumerate()
                        .map(|(i, a)| a.name.clone().unwrap_or_else(|| format!("#{}", i + 1)))
                        .collect(),
                });
            }
        };
        let name = app.name.clone().unwrap_or_else(|| "#1".into());
        let argv = match &app.entrypoint.command {
            Command::Argv(v) if v.first().is_some_and(|p| !p.is_empty()) => v.clone(),
            Command::Argv(_) => {
                return Err(PlanError::EmptyCommand {
                    path: path.into(),
                    app: name,
                });
            }
            Command::String(s) if s.trim().is_empty() => {
                return Err(PlanError::EmptyCommand {
                    path: path.into(),
                    app: name,
                });
            }
            Command::String(s) => {
                let words: Vec<&str> = s.split_whitespace().collect();
                return Err(PlanError::CommandIsString {
                    path: path.into(),
                    app: name,
                    suggestion: serde_json::to_string(&words).unwrap_or_default(),
                });
            }
        };
        let working_dir = match &app.entrypoint.working_dir {
            None => None,
            Some(d) if d.starts_with('/') => Some(PathBuf::from(d)),
            Some(d) => {
                return Err(PlanError::RelativeWorkingDir {
                    path: path.into(),
                    app: name,
                    dir: d.clone(),
                });
            }
        };
        let mut env = Vec::new();
        for (k, v) in app.env.iter().chain(&app.entrypoint.env) {
            if !is_env_key(k) {
                return Err(PlanError::BadEnvKey {
                    path: path.into(),
                    app: name,
                    key: k.clone(),
                });
            }
            set(&mut env, k.clone(), v.clone());
        }
        for e in cli_env {
            set(&mut env, e.key.clone(), e.value.clone());
        }
        Ok(ResolvedPlan {
            argv,
            working_dir,
            env,
        })
    }
}

/// Load `path` and resolve it against `cli_env` in one step.
pub fn load_resolved(path: &Path, cli_env: &[EnvVar]) -> Result<ResolvedPlan, PlanError> {
    LaunchPlan::load(path)?.resolve(path, cli_env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, cli: &[&str]) -> Result<ResolvedPlan, PlanError> {
        let cli: Vec<EnvVar> = cli.iter().map(|a| EnvVar::parse(a).unwrap()).collect();
        LaunchPlan::parse(text, Path::new("launch.json"))?.resolve(Path::new("launch.json"), &cli)
    }

    #[test]
    fn precedence_and_unknown_fields() {
        let text = r#"{
          "version": 3, "extra": {"x": 1},
          "apps": [{
            "name": "web", "image": "ignored",
            "env": {"A": "app", "B": "app", "C": "app"},
            "entrypoint": {
              "command": ["python3", "app.py", "--flag=a b"],
              "working_dir": "/app",
              "env": {"B": "entry", "D": "entry"},
              "unknown": true
            }
          }]
        }"#;
        let r = resolve(text, &["C=cli", "E=cli", "B=cli2"]).unwrap();
        assert_eq!(r.argv, ["python3", "app.py", "--flag=a b"]);
        assert_eq!(r.working_dir.as_deref(), Some(Path::new("/app")));
        let env: Vec<(&str, &str)> = r
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("A", "app"),
                ("B", "cli2"),
                ("C", "cli"),
                ("D", "entry"),
                ("E", "cli")
            ]
        );
    }

    #[test]
    fn minimal_plan() {
        let r = resolve(r#"{"apps":[{"entrypoint":{"command":["true"]}}]}"#, &[]).unwrap();
        assert_eq!(r.argv, ["true"]);
        assert_eq!(r.working_dir, None);
        assert!(r.env.is_empty());
    }

    #[test]
    fn app_count_errors_list_names() {
        let e = resolve(r#"{"apps":[]}"#, &[]).unwrap_err();
        assert!(matches!(e, PlanError::NoApps { .. }), "{e}");
        let e = resolve(r#"{}"#, &[]).unwrap_err();
        assert!(matches!(e, PlanError::NoApps { .. }), "{e}");
        let e = resolve(
            r#"{"apps":[{"name":"a","entrypoint":{"command":["x"]}},
                        {"entrypoint":{"command":["y"]}},
                        {"name":"c","entrypoint":{"command":["z"]}}]}"#,
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "launch plan launch.json has 3 apps (a, #2, c); exactly one is needed"
        );
    }

    #[test]
    fn command_errors() {
        for bad in [r#"[]"#, r#"[""]"#, r#""""#, r#""  ""#] {
            let text = format!(r#"{{"apps":[{{"name":"w","entrypoint":{{"command":{bad}}}}}]}}"#);
            let e = resolve(&text, &[]).unwrap_err();
            assert!(matches!(e, PlanError::EmptyCommand { .. }), "{bad}: {e}");
        }
        let e = resolve(
            r#"{"apps":[{"name":"w","entrypoint":{"command":"make  test"}}]}"#,
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains(r#"["make","test"]"#), "{e}");
        let e = resolve(
            r#"{"apps":[{"name":"w","entrypoint":{"command":["x"],"working_dir":"app"}}]}"#,
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::RelativeWorkingDir { .. }), "{e}");
        let e = resolve(
            r#"{"apps":[{"name":"w","env":{"1X":"v"},"entrypoint":{"command":["x"]}}]}"#,
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"1X\""), "{e}");
        let e = resolve(r#"{"apps":[{"name":"w"}]}"#, &[]).unwrap_err();
        assert!(matches!(e, PlanError::Parse { .. }), "{e}");
        let e = resolve(
            r#"{"apps":[{"env":{"A":1},"entrypoint":{"command":["x"]}}]}"#,
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::Parse { .. }), "{e}");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("launch.json");
        fs_err::write(&p, r#"{"apps":[{"entrypoint":{"command":["id"]}}]}"#).unwrap();
        assert_eq!(load_resolved(&p, &[]).unwrap().argv, ["id"]);
        let e = load_resolved(&dir.path().join("nope.json"), &[]).unwrap_err();
        assert!(e.to_string().contains("nope.json"), "{e}");
    }
}
