//! Boot configuration: how a [`VmSpec`] becomes Firecracker API calls.
//!
//! Order of calls (each pre-boot, then `InstanceStart`):
//!
//! 1. `PUT /logger` — level `Warning` (Firecracker logs every request body
//!    at `Info`), to `vmm.log`; Firecracker creates the file if missing.
//! 2. `PUT /boot-source` — the ELF vmlinux, the initramfs, and
//!    `console=ttyS0 reboot=k panic=1` followed by the spec's parameters.
//! 3. `PUT /machine-config` — vCPUs and memory.
//! 4. `PUT /drives/{id}` for each drive, in guest order; none is the root
//!    device (the initramfs agent mounts root itself).
//! 5. `PUT /vsock` — the hybrid vsock on `guest.sock`.
//! 6. `PUT /entropy` — virtio-rng.
//! 7. `PUT /network-interfaces/eth0` — when the spec has a TAP.
//! 8. `PUT /actions InstanceStart`.
//!
//! The same values can instead be written as a `--config-file`
//! ([`BootConfig::to_config_file`]), with which Firecracker configures and
//! boots at start-up.

use std::path::Path;

use mvm_core::backend::VmSpec;
use mvm_core::paths::InstanceDir;

use crate::api::{
    ApiError, BootSource, Client, Drive, EntropyDevice, FullVmConfiguration, LogLevel, Logger,
    MachineConfiguration, NetworkInterface, Vsock,
};

/// Kernel parameters the Firecracker backend always sets.
pub const BASE_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1";

/// The guest network interface id.
pub const IFACE_ID: &str = "eth0";

/// Every pre-boot setting of one VM, typed as the API bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// `PUT /logger`.
    pub logger: Logger,
    /// `PUT /boot-source`.
    pub boot_source: BootSource,
    /// `PUT /machine-config`.
    pub machine: MachineConfiguration,
    /// `PUT /drives/{id}`, in order.
    pub drives: Vec<Drive>,
    /// `PUT /vsock`.
    pub vsock: Vsock,
    /// `PUT /entropy`.
    pub entropy: EntropyDevice,
    /// `PUT /network-interfaces/eth0`.
    pub net: Option<NetworkInterface>,
}

/// The kernel command line for `spec`.
pub fn boot_args(spec: &VmSpec) -> String {
    let mut s = String::from(BASE_BOOT_ARGS);
    for a in &spec.kernel_args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

impl BootConfig {
    /// The configuration of `spec`, with its files in `dir`.
    pub fn new(spec: &VmSpec, dir: &InstanceDir) -> Self {
        Self::with_paths(spec, &dir.vmm_log(), &dir.guest_socket())
    }

    /// The configuration of `spec` with the logger writing to `vmm_log`
    /// and the hybrid vsock on `guest_socket` (paths as the VMM sees them:
    /// inside the chroot when jailed).
    pub fn with_paths(spec: &VmSpec, vmm_log: &Path, guest_socket: &Path) -> Self {
        Self {
            logger: Logger {
                level: Some(LogLevel::Warning),
                log_path: Some(vmm_log.to_owned()),
                show_level: Some(true),
                show_log_origin: Some(false),
                module: None,
            },
            boot_source: BootSource {
                boot_args: Some(boot_args(spec)),
                initrd_path: spec.initrd.clone(),
                kernel_image_path: spec.kernel.vmlinux.clone(),
            },
            machine: MachineConfiguration {
                cpu_template: None,
                smt: None,
                mem_size_mib: spec.memory_mib,
                track_dirty_pages: None,
                vcpu_count: spec.cpus,
                huge_pages: None,
            },
            drives: spec
                .drives
                .iter()
                .map(|d| Drive {
                    drive_id: d.id.clone(),
                    partuuid: None,
                    is_root_device: false,
                    cache_type: None,
                    is_read_only: Some(d.read_only),
                    path_on_host: Some(d.path.clone()),
                    rate_limiter: None,
                    io_engine: None,
                    socket: None,
                })
                .collect(),
            vsock: Vsock {
                guest_cid: spec.vsock_cid,
                uds_path: guest_socket.to_owned(),
                vsock_id: None,
            },
            entropy: EntropyDevice::default(),
            net: spec.net.as_ref().map(|n| NetworkInterface {
                guest_mac: Some(n.mac.clone()),
                host_dev_name: n.tap.clone(),
                iface_id: IFACE_ID.into(),
                mtu: None,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            }),
        }
    }

    /// Send every setting (not `InstanceStart`).
    pub async fn apply(&self, client: &Client) -> Result<(), ApiError> {
        client.put_logger(&self.logger).await?;
        client.put_boot_source(&self.boot_source).await?;
        client.put_machine_config(&self.machine).await?;
        for d in &self.drives {
            client.put_drive(d).await?;
        }
        client.put_vsock(&self.vsock).await?;
        client.put_entropy(&self.entropy).await?;
        if let Some(n) = &self.net {
            client.put_network_interface(n).await?;
        }
        Ok(())
    }

    /// The same settings as a `--config-file` document.
    pub fn to_config_file(&self) -> FullVmConfiguration {
        FullVmConfiguration {
            drives: Some(self.drives.clone()),
            boot_source: Some(self.boot_source.clone()),
            logger: Some(self.logger.clone()),
            machine_config: Some(self.machine.clone()),
            network_interfaces: Some(self.net.iter().cloned().collect()),
            vsock: Some(self.vsock.clone()),
            entropy: Some(self.entropy.clone()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_core::backend::{DriveSpec, KernelPaths, NetSpec};

    fn spec() -> VmSpec {
        VmSpec {
            name: "a".into(),
            cpus: 2,
            memory_mib: 256,
            kernel: KernelPaths {
                bzimage: "/k/bz".into(),
                vmlinux: "/k/vmlinux".into(),
            },
            initrd: Some("/k/initrd".into()),
            kernel_args: vec!["mvm.a=1".into(), "quiet".into()],
            drives: vec![
                DriveSpec {
                    id: "rootfs".into(),
                    path: "/i/r".into(),
                    read_only: true,
                },
                DriveSpec {
                    id: "disk".into(),
                    path: "/i/d".into(),
                    read_only: false,
                },
            ],
            net: Some(NetSpec {
                tap: "mvm-a".into(),
                mac: "06:00:ac:10:00:02".into(),
            }),
            vsock_cid: 7,
            transient: false,
            isolation: None,
        }
    }

    #[test]
    fn spec_maps_to_bodies() {
        let dir = InstanceDir::new("/h/instances/a");
        let c = BootConfig::new(&spec(), &dir);
        assert_eq!(
            c.boot_source.boot_args.as_deref(),
            Some("console=ttyS0 reboot=k panic=1 mvm.a=1 quiet")
        );
        assert_eq!(c.machine.vcpu_count, 2);
        assert_eq!(c.drives.len(), 2);
        assert_eq!(c.drives[0].drive_id, "rootfs");
        assert!(c.drives.iter().all(|d| !d.is_root_device));
        assert_eq!(c.drives[0].is_read_only, Some(true));
        assert_eq!(c.vsock.uds_path, dir.guest_socket());
        assert_eq!(c.net.as_ref().unwrap().iface_id, "eth0");
        assert_eq!(c.logger.log_path, Some(dir.vmm_log()));
        let f = serde_json::to_value(c.to_config_file()).unwrap();
        assert!(f.get("boot-source").is_some() && f.get("machine-config").is_some());
    }
}
