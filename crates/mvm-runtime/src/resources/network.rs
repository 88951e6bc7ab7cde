//! A machine's network, between the registry and `mvm-net`.
//!
//! - **start** (in the supervisor, before the VMM launches): allocate IP,
//!   MAC and TAP name under the registry's global lock from the addresses
//!   every registered machine holds ([`allocate`]); make sure the bridge
//!   and NAT rules exist, create the TAP, bind the port forwarders (so a
//!   taken host port fails the start before the guest boots) — [`up`].
//! - **VMM exit**: the supervisor drops [`MachineNetwork`]: forwarders stop,
//!   the TAP is deleted; the teardown then calls [`release`], which is
//!   idempotent and needs only the record: it deletes the TAP if it is still
//!   there and, when no machine holds an address any more, the bridge and
//!   mvm's NAT rules.
//! - A stopped machine holds no address (as in Docker).
//!
//! Port forwarding is a TCP proxy owned by the supervisor rather than a
//! DNAT rule: DNAT in PREROUTING does not see connections made from the
//! host itself (`curl 127.0.0.1:PORT`), and DNAT in OUTPUT to a bridge
//! address needs `route_localnet`, a host-wide setting. The proxy works from
//! loopback and from outside alike, and dies with its machine.
//!
//! Without root, QEMU machines get user-mode networking (slirp) with the
//! same `-p` mappings as `hostfwd` rules; Firecracker needs root for TAPs.

use std::net::{Ipv4Addr, SocketAddr};

use mvm_core::config::Config;
use mvm_core::instance::{InstanceRecord, NetAllocation, NetworkMode};
use mvm_core::registry::{Registry, RegistryError};
use mvm_net::NetConfig;

/// A network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The network settings are invalid.
    #[error("invalid network settings")]
    Config(#[from] mvm_net::config::ConfigError),
    /// No address could be allocated.
    #[error("cannot allocate an address for machine {name:?}")]
    Alloc {
        /// The machine.
        name: String,
        /// Why.
        #[source]
        source: mvm_net::alloc::AllocError,
    },
    /// Setting up or tearing down the host side failed.
    #[error(transparent)]
    Host(#[from] mvm_net::host::HostError),
    /// A published port could not be bound.
    #[error("cannot publish port {listen}")]
    Forward {
        /// The host address.
        listen: SocketAddr,
        /// Why.
        #[source]
        source: mvm_net::forward::ForwardError,
    },
    /// The registry could not be read or locked.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Firecracker needs a TAP, which needs root.
    #[error(
        "the Firecracker machine needs a TAP device, which needs root (CAP_NET_ADMIN); run mvm as root, or use --network none"
    )]
    NeedsRoot,
}

/// How a machine is attached to a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// No network interface.
    None,
    /// A TAP on mvm's bridge, with NAT (root).
    Tap(NetAllocation),
    /// QEMU user-mode networking (no root): no TAP, same `-p` semantics.
    UserMode,
}

impl Attachment {
    /// The attachment of `rec` as recorded (a running TAP machine holds an
    /// allocation; a NAT machine without one uses user-mode networking).
    pub fn of(rec: &InstanceRecord) -> Self {
        match (rec.network, &rec.net) {
            (NetworkMode::None, _) => Attachment::None,
            (NetworkMode::Nat, Some(a)) => Attachment::Tap(a.clone()),
            (NetworkMode::Nat, None) => Attachment::UserMode,
        }
    }
}

/// The network settings of the configuration.
pub fn settings(config: &Config) -> Result<NetConfig, NetworkError> {
    Ok(NetConfig::from_core(&config.network)?)
}

/// Whether machines get a TAP on the bridge (root), or user-mode
/// networking (QEMU without root).
pub fn use_tap() -> bool {
    mvm_net::host::have_privileges()
}

/// Whether a NAT machine started now gets a TAP (and so an allocation).
pub fn wants_tap(rec: &InstanceRecord) -> bool {
    rec.network == NetworkMode::Nat && use_tap()
}

/// Allocate a network identity for `name`. Call under the global lock.
pub fn allocate(
    registry: &Registry,
    cfg: &NetConfig,
    name: &str,
) -> Result<NetAllocation, NetworkError> {
    let taken: Vec<NetAllocation> = registry
        .list()?
        .into_iter()
        .filter_map(|l| l.record.ok().and_then(|r| r.net))
        .collect();
    mvm_net::alloc::allocate(&taken, name, &cfg.subnet).map_err(|source| NetworkError::Alloc {
        name: name.to_owned(),
        source,
    })
}

/// Allocate a network identity for machine `name` and record it, under the
/// global lock (the supervisor does this before the VMM starts). Returns
/// the updated record.
pub fn allocate_and_record(
    registry: &Registry,
    cfg: &NetConfig,
    name: &str,
) -> Result<InstanceRecord, NetworkError> {
    let _g = registry.global_lock()?;
    let alloc = allocate(registry, cfg, name)?;
    Ok(registry
        .update(name, |r| {
            r.net = Some(alloc);
            Ok(())
        })?
        .0)
}

/// DNS servers given to guests (the host's, at most one: the kernel
/// command line format of the agent takes one).
pub fn guest_dns() -> Vec<Ipv4Addr> {
    mvm_net::host::guest_dns().into_iter().take(1).collect()
}

/// The host side of one running machine's network. Dropping it stops the
/// port forwarders and deletes the TAP.
pub struct MachineNetwork {
    tap: Option<mvm_net::host::MachineNet>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    _stop: tokio::sync::watch::Sender<()>,
}

impl Drop for MachineNetwork {
    fn drop(&mut self) {
        for f in &self.forwarders {
            f.abort();
        }
        if let Some(t) = self.tap.take()
            && let Err(e) = t.teardown()
        {
            tracing::warn!("{}", crate::error_chain(&e));
        }
    }
}

/// Set up the host side of `rec`'s network before its VMM launches.
pub async fn up(
    config: &Config,
    registry: &Registry,
    rec: &InstanceRecord,
) -> Result<Option<MachineNetwork>, NetworkError> {
    let Attachment::Tap(alloc) = Attachment::of(rec) else {
        return Ok(None);
    };
    let cfg = settings(config)?;
    {
        let _g = registry.global_lock()?;
        mvm_net::host::ensure_host(&cfg)?;
    }
    // A confined VMM runs as the machine's uid: a jailed Firecracker opens
    // the TAP by name, so the TAP is the machine's.
    let owner = crate::resources::jail::tap_owner(rec);
    let tap = mvm_net::host::setup_machine_owned(&cfg, &alloc, owner)?;
    let (stop, _) = tokio::sync::watch::channel(());
    let mut net = MachineNetwork {
        tap: Some(tap),
        forwarders: Vec::new(),
        _stop: stop,
    };
    for p in &rec.ports {
        let listen = SocketAddr::from((p.host_ip, p.host_port));
        let target = SocketAddr::from((alloc.ip, p.guest_port));
        let fwd = mvm_net::forward::Forwarder::bind(listen, target)
            .await
            .map_err(|source| NetworkError::Forward { listen, source })?;
        let mut rx = net._stop.subscribe();
        net.forwarders.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.changed().await;
            };
            if let Err(e) = fwd.run(shutdown).await {
                tracing::warn!("port forward {listen} -> {target}: {e}");
            }
        }));
    }
    Ok(Some(net))
}

/// Release what `rec` may hold on the host: its TAP, and the bridge and NAT
/// rules when no other machine holds an address. Idempotent; needs only the
/// record (runs in recoveries after the owner died).
pub fn release(
    config: &Config,
    registry: &Registry,
    rec: &InstanceRecord,
) -> Result<(), NetworkError> {
    if rec.network == NetworkMode::None || !use_tap() {
        return Ok(());
    }
    if let Some(alloc) = rec.net.as_ref() {
        mvm_net::host::teardown_machine(alloc)?;
    }
    let cfg = settings(config)?;
    let _g = registry.global_lock()?;
    let others = registry
        .list()?
        .into_iter()
        .filter_map(|l| l.record.ok())
        .any(|r| r.name != rec.name && r.net.is_some());
    // TAPs that still exist belong to machines of another MVM_HOME sharing
    // this bridge: leave the bridge and rules to them.
    let ipt = mvm_net::nat::Iptables::default();
    let foreign_taps = mvm_net::host::leftovers(&cfg, &[], &ipt)?
        .into_iter()
        .any(|l| matches!(l, mvm_net::host::Leftover::Tap { .. }));
    if !others && !foreign_taps {
        mvm_net::host::teardown_host(&cfg, &ipt)?;
    }
    Ok(())
}

/// Network objects of mvm's that no running machine owns.
pub fn leftovers(
    config: &Config,
    registry: &Registry,
) -> Result<Vec<mvm_net::host::Leftover>, NetworkError> {
    let cfg = settings(config)?;
    let running = running_allocations(registry)?;
    Ok(mvm_net::host::leftovers(
        &cfg,
        &running,
        &mvm_net::nat::Iptables::default(),
    )?)
}

/// Remove [`leftovers`].
pub fn gc(config: &Config, registry: &Registry) -> Result<mvm_net::host::GcReport, NetworkError> {
    let cfg = settings(config)?;
    let _g = registry.global_lock()?;
    let running = running_allocations(registry)?;
    Ok(mvm_net::host::gc(
        &cfg,
        &running,
        &mvm_net::nat::Iptables::default(),
    )?)
}

/// Addresses held by machines whose owner lives (their network is in use).
fn running_allocations(registry: &Registry) -> Result<Vec<NetAllocation>, NetworkError> {
    Ok(registry
        .list()?
        .into_iter()
        .filter_map(|l| l.record.ok())
        .filter(|r| registry.owner_alive(&r.name))
        .filter_map(|r| r.net)
        .collect())
}
