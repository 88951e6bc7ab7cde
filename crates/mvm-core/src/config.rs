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
//! boot_timeout_secs = 120
//! qemu_bin = "/usr/bin/qemu-system-x86_64"
//! qemu_accel = "tcg"           # optional: force kvm | tcg
//!
//! jailer = true                 # as root, confine every VMM (see below)
//! jailer_bin = "/usr/local/bin/jailer"  # else beside firecracker, else PATH
//! jail_uid_range = "1000000000-1000065535"
//! cpu_quota = 1.5               # optional: CPU cap of every machine, in CPUs
//!
//! [network]
//! subnet = "172.16.0.0/24"
//! bridge = "mvmbr0"
//! mode = "nat"                  # default for new machines: nat | none
//! egress = "allow-all"          # default egress policy: allow-all | deny-all | allow=SPEC,...
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
    /// Default egress policy of new machines (`allow-all`, `deny-all`,
    /// `allow=SPEC,...`; several separated by spaces).
    pub egress: crate::egress::EgressPolicy,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            subnet: "172.16.0.0/24".into(),
            bridge: "mvmbr0".into(),
            mode: crate::instance::NetworkMode::Nat,
            egress: crate::egress::EgressPolicy::default(),
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
    /// Where `mvm setup` downloads Firecracker releases from (a mirror);
    /// `None` means the official GitHub releases.
    pub firecracker_release_url: Option<String>,
    /// Default vCPUs.
    pub cpus: u8,
    /// Default memory in MiB.
    pub memory_mib: u32,
    /// A kernel of the user's own (bzImage or ELF vmlinux).
    pub kernel: Option<PathBuf>,
    /// Network settings.
    pub network: NetworkConfig,
    /// Seconds a guest may take from launch to the agent's first answer.
    pub boot_timeout_secs: u64,
    /// The QEMU binary (else `qemu-system-x86_64` on `PATH`).
    pub qemu_bin: Option<PathBuf>,
    /// Force the QEMU accelerator: `kvm` or `tcg` (else chosen by probing).
    pub qemu_accel: Option<QemuAccel>,
    /// As root, confine every VMM: Firecracker under its jailer, QEMU
    /// sandboxed as the machine's own uid, both in the machine's cgroup
    /// (`--no-jailer` turns it off for one machine).
    pub jailer: bool,
    /// The Firecracker jailer (else `jailer` beside the firecracker
    /// binary, else on `PATH`).
    pub jailer_bin: Option<PathBuf>,
    /// The uids (and gids) machines' VMMs run as, `FIRST-LAST`.
    pub jail_uid_range: crate::isolation::UidRange,
    /// CPU cap of every machine's cgroup, in CPUs (else its vCPUs).
    pub cpu_quota: Option<crate::isolation::CpuQuota>,
}

/// A forced QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QemuAccel {
    /// Hardware acceleration.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// Default boot deadline (generous: TCG boots take ~3-5 s on an idle
/// machine, far more under load).
pub const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 120;

impl Config {
    /// The boot deadline.
    pub fn boot_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.boot_timeout_secs)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            firecracker_bin: None,
            firecracker_release_url: None,
            firecracker_version: DEFAULT_FIRECRACKER_VERSION.into(),
            cpus: 1,
            memory_mib: 512,
            kernel: None,
            network: NetworkConfig::default(),
            boot_timeout_secs: DEFAULT_BOOT_TIMEOUT_SECS,
            qemu_bin: None,
            qemu_accel: None,
            jailer: true,
            jailer_bin: None,
            jail_uid_range: crate::isolation::UidRange::DEFAULT,
            cpu_quota: None,
        }
    }
}

impl Config {
    /// Read `path` (a missing file means defaults), then apply `MVM_*`
    /// environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg = Self::read_file(path)?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Read `path` only (a missing file means defaults), without the
    /// environment: what is stored, e.g. to check what `mvm setup` wrote.
    pub fn read_file(path: &Path) -> Result<Self, ConfigError> {
        let cfg = match fs_err::read_to_string(path) {
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
        Ok(cfg)
    }

    /// Apply the `MVM_*` settings variables (see [`crate::env`]); an
    /// invalid value is an error naming the variable.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        use crate::env::*;
        let bad = |var: &str, value: &str, reason: String| ConfigError::Env {
            var: var.into(),
            value: value.into(),
            reason,
        };
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        fn num<T: std::str::FromStr<Err = std::num::ParseIntError>>(
            var: &str,
            v: &str,
        ) -> Result<T, ConfigError> {
            v.parse()
                .map_err(|e: std::num::ParseIntError| ConfigError::Env {
                    var: var.into(),
                    value: v.into(),
                    reason: e.to_string(),
                })
        }
        if let Some(v) = get(MVM_BACKEND) {
            self.backend = v.parse().map_err(|e| bad(MVM_BACKEND, &v, e))?;
        }
        if let Some(v) = get(MVM_FIRECRACKER_BIN) {
            self.firecracker_bin = Some(v.into());
        }
        if let Some(v) = get(MVM_FIRECRACKER_RELEASE_URL).filter(|v| !v.is_empty()) {
            self.firecracker_release_url = Some(v);
        }
        if let Some(v) = get(MVM_FIRECRACKER_VERSION) {
            self.firecracker_version = v;
        }
        if let Some(v) = get(MVM_CPUS) {
            self.cpus = num(MVM_CPUS, &v)?;
        }
        if let Some(v) = get(MVM_MEMORY) {
            self.memory_mib = num(MVM_MEMORY, &v)?;
        }
        if let Some(v) = get(MVM_KERNEL) {
            self.kernel = Some(v.into());
        }
        if let Some(v) = get(MVM_SUBNET) {
            self.network.subnet = v;
        }
        if let Some(v) = get(MVM_BRIDGE) {
            self.network.bridge = v;
        }
        if let Some(v) = get(MVM_NETWORK) {
            self.network.mode = match v.as_str() {
                "nat" => crate::instance::NetworkMode::Nat,
                "none" => crate::instance::NetworkMode::None,
                _ => return Err(bad(MVM_NETWORK, &v, "expected nat or none".into())),
            };
        }
        if let Some(v) = get(MVM_EGRESS) {
            let flags: Vec<&str> = v.split_whitespace().collect();
            self.network.egress = crate::egress::EgressPolicy::from_flags(&flags)
                .map_err(|e| bad(MVM_EGRESS, &v, e.to_string()))?;
        }
        if let Some(v) = get(MVM_BOOT_TIMEOUT) {
            let secs: u64 = num(MVM_BOOT_TIMEOUT, &v)?;
            if secs == 0 {
                return Err(bad(
                    MVM_BOOT_TIMEOUT,
                    &v,
                    "must be at least 1 second".into(),
                ));
            }
            self.boot_timeout_secs = secs;
        }
        if let Some(v) = get(MVM_QEMU_BIN) {
            self.qemu_bin = Some(v.into());
        }
        if let Some(v) = get(MVM_QEMU_ACCEL) {
            self.qemu_accel = Some(match v.as_str() {
                "kvm" => QemuAccel::Kvm,
                "tcg" => QemuAccel::Tcg,
                _ => return Err(bad(MVM_QEMU_ACCEL, &v, "expected kvm or tcg".into())),
            });
        }
        if let Some(v) = get(MVM_JAILER) {
            self.jailer = match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(bad(MVM_JAILER, &v, "expected 1 or 0 (true/false)".into())),
            };
        }
        if let Some(v) = get(MVM_JAILER_BIN) {
            self.jailer_bin = Some(v.into());
        }
        if let Some(v) = get(MVM_JAIL_UID_RANGE) {
            self.jail_uid_range = v.parse().map_err(|e: crate::isolation::UidError| {
                bad(MVM_JAIL_UID_RANGE, &v, e.to_string())
            })?;
        }
        if let Some(v) = get(MVM_CPU_QUOTA) {
            self.cpu_quota = Some(v.parse().map_err(|e| bad(MVM_CPU_QUOTA, &v, e))?);
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
    fn isolation_settings_from_file_and_env() {
        let mut c: Config = toml::from_str(
            "jailer = false\njail_uid_range = \"2000000-2000099\"\ncpu_quota = 1.5\n",
        )
        .unwrap();
        assert!(!c.jailer);
        assert_eq!(c.jail_uid_range.to_string(), "2000000-2000099");
        assert_eq!(c.cpu_quota.unwrap().millis(), 1500);
        c.apply_env(|k| match k {
            "MVM_JAILER" => Some("1".into()),
            "MVM_JAILER_BIN" => Some("/opt/jailer".into()),
            "MVM_CPU_QUOTA" => Some("0.25".into()),
            _ => None,
        })
        .unwrap();
        assert!(c.jailer);
        assert_eq!(c.jailer_bin.as_deref(), Some(Path::new("/opt/jailer")));
        assert_eq!(c.cpu_quota.unwrap().millis(), 250);
        assert!(toml::from_str::<Config>("jail_uid_range = \"0-5\"").is_err());
        assert!(Config::default().jailer);
    }

    #[test]
    fn bad_values_name_their_source() {
        let e = toml::from_str::<Config>("cpus = \"x\"").unwrap_err();
        assert!(e.to_string().contains("cpus"), "{e}");
        let e = toml::from_str::<Config>("colour = 1").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let mut c = Config::default();
        for (var, value) in [
            ("MVM_BACKEND", "xen"),
            ("MVM_CPUS", "many"),
            ("MVM_BOOT_TIMEOUT", "0"),
            ("MVM_QEMU_ACCEL", "hvf"),
            ("MVM_NETWORK", "bridge"),
            ("MVM_JAILER", "maybe"),
            ("MVM_JAIL_UID_RANGE", "0-10"),
            ("MVM_CPU_QUOTA", "0"),
        ] {
            let e = c
                .apply_env(|k| (k == var).then(|| value.to_string()))
                .unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
            assert!(e.to_string().contains(value), "{e}");
        }
    }
}
