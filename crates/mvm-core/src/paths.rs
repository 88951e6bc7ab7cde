//! Every file and directory mvm owns, named once (lima `pkg/limatype/filenames`).
//!
//! ```text
//! $MVM_HOME/
//!   config.toml             user configuration
//!   lock                    global lock (allocation of names, CIDs, addresses)
//!   bin/                    installed VMM binaries (firecracker, jailer)
//!   cache/                  downloads (kernel packages, release tarballs)
//!   images/<digest>/        content-addressed image artefacts
//!   images/tags/<name>      tag -> digest
//!   images/refs/<sha256>    OCI reference -> digest (see mvm-image)
//!   images/blobs/           OCI blob cache (see mvm-oci)
//!   volumes/<name>.ext4     named volumes
//!   instances/<name>/       one directory per machine (see InstanceDir)
//!   templates/              templates (layout in the `mvm-template` crate)
//!     jail/                 the VMM's chroot, when it runs jailed
//! ```

use std::path::{Path, PathBuf};

/// The root of all mvm state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MvmHome {
    root: PathBuf,
}

impl MvmHome {
    /// Use `root` as the state directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The default location: `$MVM_HOME`, else `/var/lib/mvm` for root,
    /// else `$XDG_DATA_HOME/mvm`, else `~/.local/share/mvm`.
    pub fn from_env() -> Self {
        if let Some(h) = std::env::var_os("MVM_HOME").filter(|v| !v.is_empty()) {
            return Self::new(h);
        }
        if rustix::process::geteuid().is_root() {
            return Self::new("/var/lib/mvm");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Self::new(PathBuf::from(x).join("mvm"));
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        Self::new(PathBuf::from(home).join(".local/share/mvm"))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// The global lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// Installed binaries.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }
    /// Download cache.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// Content-addressed images.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    /// OCI references pulled or imported (`images/refs`).
    pub fn image_refs_dir(&self) -> PathBuf {
        self.images_dir().join("refs")
    }
    /// The content-addressed OCI blob cache shared by all images
    /// (`images/blobs`).
    pub fn blobs_dir(&self) -> PathBuf {
        self.images_dir().join("blobs")
    }
    /// Named volumes.
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    /// Templates (image + snapshot of a booted machine); the layout inside
    /// belongs to the `mvm-template` crate.
    pub fn templates_dir(&self) -> PathBuf {
        self.root.join("templates")
    }
    /// All instance directories.
    pub fn instances_dir(&self) -> PathBuf {
        self.root.join("instances")
    }
    /// The directory of the machine `name`.
    pub fn instance(&self, name: &str) -> InstanceDir {
        InstanceDir::new(self.instances_dir().join(name))
    }
}

/// The directory of one machine and every file in it.
///
/// Unix socket paths are limited to 107 bytes; keep `$MVM_HOME` short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDir {
    root: PathBuf,
}

impl InstanceDir {
    /// Wrap an instance directory path.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The machine's name (the directory's last component).
    pub fn name(&self) -> String {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    /// The persisted [`crate::InstanceRecord`] (JSON, written atomically).
    pub fn record(&self) -> PathBuf {
        self.root.join("instance.json")
    }
    /// Per-instance lock, held while changing the record or the VMM.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// The owner lock: held by the machine's owner process for as long as
    /// it owns the machine (see `Registry::try_own`).
    pub fn owner_lock(&self) -> PathBuf {
        self.root.join("owner.lock")
    }
    /// Guest serial console output.
    pub fn console_log(&self) -> PathBuf {
        self.root.join("console.log")
    }
    /// The VMM's own log (QEMU stderr, Firecracker logger).
    pub fn vmm_log(&self) -> PathBuf {
        self.root.join("vmm.log")
    }
    /// The mvm supervisor's log.
    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervisor.log")
    }
    /// The socket clients (`mvm exec`, `mvm cp`) connect to; served by the
    /// supervisor, which multiplexes all clients onto the one guest stream.
    pub fn agent_socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }
    /// The raw host end of the guest agent channel: QEMU's virtio-serial
    /// chardev socket, or Firecracker's hybrid vsock `uds_path`.
    pub fn guest_socket(&self) -> PathBuf {
        self.root.join("guest.sock")
    }
    /// QEMU's QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.root.join("qmp.sock")
    }
    /// Firecracker's API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.root.join("fc.sock")
    }
    /// Firecracker's metrics file.
    pub fn metrics_file(&self) -> PathBuf {
        self.root.join("metrics.json")
    }
    /// The machine's own writable root disk.
    pub fn disk(&self) -> PathBuf {
        self.root.join("disk.ext4")
    }
    /// The config drive image.
    pub fn config_drive(&self) -> PathBuf {
        self.root.join("config.ext4")
    }
    /// The secrets drive image (mode 0600).
    pub fn secrets_drive(&self) -> PathBuf {
        self.root.join("secrets.ext4")
    }
    /// The machine's jail: the base directory of its VMM's chroot
    /// (`jail/<exec name>/<name>/root` for the Firecracker jailer). Only
    /// the VMM's view of its files, hard links and bind mounts; removed
    /// whenever the VMM is gone.
    pub fn jail_dir(&self) -> PathBuf {
        self.root.join("jail")
    }
    /// Where a VMM pid is written by the VMM itself, when it supports it.
    pub fn vmm_pidfile(&self) -> PathBuf {
        self.root.join("vmm.pid")
    }
    /// The defaults of every command run in the machine (an OCI image's
    /// Env, WorkingDir and User; `mvm_core::main_process::ProcessDefaults`).
    pub fn process_defaults(&self) -> PathBuf {
        self.root.join("process.json")
    }
    /// What the supervisor enforces of the machine's egress policy now
    /// (applied policy, resolved names, DNS refusals; JSON, written
    /// atomically by the supervisor, removed by the teardown).
    pub fn egress_state(&self) -> PathBuf {
        self.root.join("egress.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_files_are_inside_the_instance_dir() {
        let home = MvmHome::new("/x");
        let d = home.instance("a");
        assert_eq!(d.name(), "a");
        for p in [
            d.record(),
            d.console_log(),
            d.agent_socket(),
            d.guest_socket(),
            d.qmp_socket(),
            d.api_socket(),
            d.disk(),
        ] {
            assert!(p.starts_with("/x/instances/a"), "{p:?}");
        }
    }
}
