//! Networking for mvm machines, the same for QEMU and Firecracker.
//!
//! Host side (feature `host`, default):
//! - [`config`]: the subnet (`172.16.0.0/24`), its gateway and guest pool;
//! - [`alloc`]: a machine's IP, MAC and TAP name, pure and deterministic,
//!   called under the registry's global lock;
//! - [`link`]: the bridge, persistent TAPs, IPv4 forwarding (netlink + ioctl);
//! - [`nat`]: MASQUERADE/FORWARD rules through `iptables`, tagged `mvm:<tag>`;
//! - [`egress`]: per-machine egress policy (nftables tables `mvm-eg-<TAP>`);
//! - [`dns`]: the per-machine filtering DNS forwarder, host-side resolution;
//! - [`forward`]: the TCP port forwarder run by the per-VM supervisor;
//! - [`ports`]: the `-p [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp]` syntax;
//! - [`host`]: what the runtime calls (ensure_host, setup/teardown_machine,
//!   leftovers, gc).
//!
//! Guest side (feature `guest`): [`guest::configure`] sets up `eth0` from
//! the `mvm.net=` kernel parameter ([`cmdline`]).
//!
//! Both use [`netlink`], a small synchronous rtnetlink client.
#![warn(missing_docs)]

pub mod alloc;
pub mod cmdline;
pub mod config;
pub mod netlink;
pub mod ports;

#[cfg(feature = "host")]
pub mod dns;
#[cfg(feature = "host")]
pub mod egress;
#[cfg(feature = "host")]
pub mod forward;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "host")]
pub mod link;
#[cfg(feature = "host")]
pub mod nat;

#[cfg(feature = "guest")]
pub mod guest;

pub use cmdline::GuestNet;
pub use config::{NetConfig, Subnet};
