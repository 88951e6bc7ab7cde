//! The runtime context: state root, effective settings and the registry.

use mvm_core::config::Config;
use mvm_core::registry::Registry;
use mvm_core::{InstanceDir, MvmHome};

use crate::RuntimeError;

/// What every operation needs: where state lives, the effective settings
/// (file + environment; flags are applied by the operations' options), and
/// the registry of machines.
#[derive(Debug, Clone)]
pub struct Runtime {
    home: MvmHome,
    config: Config,
    registry: Registry,
}

impl Runtime {
    /// Open the runtime for `home`, reading its configuration. Reads nothing
    /// else: commands that list or change machines call
    /// [`crate::ops::recover::reap`] first.
    pub fn open(home: MvmHome) -> Result<Self, RuntimeError> {
        fs_err::create_dir_all(home.root())?;
        let config = Config::load(&home.config_file())?;
        let registry = Registry::open(&home)?;
        Ok(Self {
            home,
            config,
            registry,
        })
    }

    /// The state root.
    pub fn home(&self) -> &MvmHome {
        &self.home
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registry of machines.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The instance directory of `name`.
    pub fn dir(&self, name: &str) -> InstanceDir {
        self.registry.dir(name)
    }
}
