//! `$MVM_HOME/config.toml`, overridden by `MVM_*` environment variables,
//! overridden in turn by command-line flags (applied by the CLI).
//!
//! ```toml
//! backend = "auto"              # auto | firecracker | qemu
//! firecracker_bin = "/usr/local/bin/firecracker"
//! firecracker_version = "1.16.1"
//! cpus = 1
//! memory_mib = 512
//! kernel = "/path/to/bzImage"   # optional: a kernel of your own
//!
//! [network]
//! subnet = "172.16.0.0/24"
//! bridge = "mvmbr0"
//! mode = "nat"                  # default for new machines: nat | none
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::BackendChoice;

/// Default Firecracker release.
pub const DEFAULT_FIRECRACKER_VERSION: &str = "1.16.1";

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid configuration in {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// An environment variable has a bad value.
    #[error("invalid value {value:?} in environment variable {var}: {reason}")]
    Env {
        /// Variable name.
        var: String,
        /// Its value.
        value: String,
        /// Why it is wrong.
        reason: String,
    },
}

/// Network settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Subnet for machine addresses (gateway = first host address).
    pub subnet: String,
    /// Bridge name.
    pub bridge: String,
    /// Default mode of new machines (`nat` or `none`).
    pub mode: crate::instance::NetworkMode,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            subnet: "172.16.0.0/24".into(),
            bridge: "mvmbr0".into(),
            mode: crate::instance::NetworkMode::Nat,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Backend choice.
    pub backend: BackendChoice,
    /// Path to a firecracker binary (else `$MVM_HOME/bin/firecracker`).
    pub firecracker_bin: Option<PathBuf>,
    /// Firecracker release to install.
    pub firecracker_version: String,
    /// Default vCPUs.
    pub cpus: u8,
    /// Default memory in MiB.
    pub memory_mib: u32,
    /// A kernel of the user's own (bzImage or ELF vmlinux).
    pub kernel: Option<PathBuf>,
    /// Network settings.
    pub network: NetworkConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            firecracker_bin: None,
            firecracker_version: DEFAULT_FIRECRACKER_VERSION.into(),
            cpus: 1,
            memory_mib: 512,
            kernel: None,
            network: NetworkConfig::default(),
        }
    }
}

impl Config {
    /// Read `path` (a missing file means defaults), then apply `MVM_*`
    /// environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg = match fs_err::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Apply `MVM_BACKEND`, `MVM_FIRECRACKER_BIN`, `MVM_FIRECRACKER_VERSION`,
    /// `MVM_CPUS`, `MVM_MEMORY`, `MVM_KERNEL`, `MVM_SUBNET`, `MVM_BRIDGE`,
    /// `MVM_NETWORK`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let bad = |var: &str, value: &str, reason: String| ConfigError::Env {
            var: var.into(),
            value: value.into(),
            reason,
        };
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        if let Some(v) = get("MVM_BACKEND") {
            self.backend = v.parse().map_err(|e| bad("MVM_BACKEND", &v, e))?;
        }
        if let Some(v) = get("MVM_FIRECRACKER_BIN") {
            self.firecracker_bin = Some(v.into());
        }
        if let Some(v) = get("MVM_FIRECRACKER_VERSION") {
            self.firecracker_version = v;
        }
        if let Some(v) = get("MVM_CPUS") {
            self.cpus = v
                .parse()
                .map_err(|e: std::num::ParseIntError| bad("MVM_CPUS", &v, e.to_string()))?;
        }
        if let Some(v) = get("MVM_MEMORY") {
            self.memory_mib = v
                .parse()
                .map_err(|e: std::num::ParseIntError| bad("MVM_MEMORY", &v, e.to_string()))?;
        }
        if let Some(v) = get("MVM_KERNEL") {
            self.kernel = Some(v.into());
        }
        if let Some(v) = get("MVM_SUBNET") {
            self.network.subnet = v;
        }
        if let Some(v) = get("MVM_BRIDGE") {
            self.network.bridge = v;
        }
        if let Some(v) = get("MVM_NETWORK") {
            self.network.mode = match v.as_str() {
                "nat" => crate::instance::NetworkMode::Nat,
                "none" => crate::instance::NetworkMode::None,
                _ => return Err(bad("MVM_NETWORK", &v, "expected nat or none".into())),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_gives_defaults() {
        let t = tempfile::tempdir().unwrap();
        let mut c: Config = toml::from_str("").unwrap();
        c.apply_env(|_| None).unwrap();
        assert_eq!(c, Config::default());
        assert!(Config::load(&t.path().join("nope.toml")).is_ok());
    }

    #[test]
    fn file_then_env_override() {
        let mut c: Config =
            toml::from_str("backend = \"qemu\"\ncpus = 2\n[network]\nbridge = \"br9\"\n").unwrap();
        assert_eq!(c.backend, BackendChoice::Qemu);
        assert_eq!(c.network.bridge, "br9");
        c.apply_env(|k| (k == "MVM_CPUS").then(|| "4".to_string()))
            .unwrap();
        assert_eq!(c.cpus, 4);
    }

    #[test]
    fn bad_values_name_their_source() {
        let e = toml::from_str::<Config>("cpus = \"x\"").unwrap_err();
        assert!(e.to_string().contains("cpus"), "{e}");
        let e = toml::from_str::<Config>("colour = 1").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let mut c = Config::default();
        let e = c
            .apply_env(|k| (k == "MVM_BACKEND").then(|| "xen".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("MVM_BACKEND"), "{e}");
    }
}
