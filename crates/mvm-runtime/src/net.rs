//! Machine networking glue between the registry and `mvm-net`.
//!
//! - **create** (under the registry's global lock): allocate IP, MAC and TAP
//!   name from the addresses every registered machine holds, so allocations
//!   are unique across processes and restarts; a stopped machine holds none
//!   (the supervisor's exit record releases it).
//! - **start** (in the supervisor, before the VMM launches): make sure the
//!   bridge and NAT rules exist, create the TAP, bind the port forwarders
//!   (so a taken host port fails the start, before the guest boots).
//! - **VMM exit**: the supervisor drops [`MachineNetwork`]: forwarders stop,
//!   the TAP is deleted.
//! - **rm**: the TAP is deleted if still there; when no machine has an
//!   address any more, the bridge and mvm's NAT rules go too.
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

use mvm_core::instance::{InstanceRecord, NetAllocation, NetworkMode};
use mvm_core::registry::Registry;
use mvm_net::NetConfig;

use crate::RuntimeError;

fn net_err(e: impl std::error::Error + 'static) -> RuntimeError {
    RuntimeError::Invalid(crate::error_chain(&e))
}

/// The network settings of the configuration.
pub fn config(cfg: &mvm_core::config::Config) -> Result<NetConfig, RuntimeError> {
    NetConfig::from_core(&cfg.network).map_err(net_err)
}

/// Whether machines get a TAP on the bridge (root), or user-mode
/// networking (QEMU without root).
pub fn use_tap() -> bool {
    mvm_net::host::have_privileges()
}

/// Allocate a network identity for `name`. Call under the global lock.
pub fn allocate(
    registry: &Registry,
    cfg: &NetConfig,
    name: &str,
) -> Result<NetAllocation, RuntimeError> {
    let taken: Vec<NetAllocation> = registry
        .list()?
        .into_iter()
        .filter_map(|l| l.record.ok().and_then(|r| r.net))
        .collect();
    mvm_net::alloc::allocate(&taken, name, &cfg.subnet).map_err(net_err)
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
pub async fn start(
    rt_config: &mvm_core::config::Config,
    registry: &Registry,
    rec: &InstanceRecord,
) -> Result<Option<MachineNetwork>, RuntimeError> {
    let Some(alloc) = rec.net.as_ref() else {
        return Ok(None);
    };
    let cfg = config(rt_config)?;
    {
        let _g = registry.global_lock()?;
        mvm_net::host::ensure_host(&cfg).map_err(net_err)?;
    }
    let tap = mvm_net::host::setup_machine(&cfg, alloc).map_err(net_err)?;
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
            .map_err(net_err)?;
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

/// Delete the machine's TAP if it is still there (idempotent).
pub fn release_tap(rec: &InstanceRecord) {
    if let Some(alloc) = rec.net.as_ref()
        && let Err(e) = mvm_net::host::teardown_machine(alloc)
    {
        tracing::warn!("{}", crate::error_chain(&e));
    }
}

/// Remove what a machine may have left on the host (its TAP), and the
/// bridge and NAT rules when no machine has an address any more. Idempotent.
pub fn release(
    rt_config: &mvm_core::config::Config,
    registry: &Registry,
    rec: &InstanceRecord,
) -> Result<(), RuntimeError> {
    if rec.network == NetworkMode::None || !use_tap() {
        return Ok(());
    }
    release_tap(rec);
    let cfg = config(rt_config)?;
    let _g = registry.global_lock()?;
    let others = registry
        .list()?
        .into_iter()
        .filter_map(|l| l.record.ok())
        .any(|r| r.name != rec.name && r.net.is_some());
    // TAPs that still exist belong to machines of another MVM_HOME sharing
    // this bridge: leave the bridge and rules to them.
    let ipt = mvm_net::nat::Iptables::default();
    let foreign_taps = mvm_net::host::leftovers(&cfg, &[], &ipt)
        .map_err(net_err)?
        .into_iter()
        .any(|l| matches!(l, mvm_net::host::Leftover::Tap { .. }));
    if !others && !foreign_taps {
        mvm_net::host::teardown_host(&cfg, &ipt).map_err(net_err)?;
    }
    Ok(())
}

/// Network objects of mvm's that no running machine owns.
pub fn leftovers(
    rt_config: &mvm_core::config::Config,
    registry: &Registry,
) -> Result<Vec<mvm_net::host::Leftover>, RuntimeError> {
    let cfg = config(rt_config)?;
    let running = running_allocations(registry)?;
    mvm_net::host::leftovers(&cfg, &running, &mvm_net::nat::Iptables::default()).map_err(net_err)
}

/// Remove [`leftovers`].
pub fn gc(
    rt_config: &mvm_core::config::Config,
    registry: &Registry,
) -> Result<mvm_net::host::GcReport, RuntimeError> {
    let cfg = config(rt_config)?;
    let _g = registry.global_lock()?;
    let running = running_allocations(registry)?;
    mvm_net::host::gc(&cfg, &running, &mvm_net::nat::Iptables::default()).map_err(net_err)
}

fn running_allocations(registry: &Registry) -> Result<Vec<NetAllocation>, RuntimeError> {
    Ok(registry
        .list()?
        .into_iter()
        .filter_map(|l| l.record.ok())
        .filter(|r| r.observe().status.expects_vmm())
        .filter_map(|r| r.net)
        .collect())
}

/// Whether `rec` uses QEMU user-mode networking (NAT mode without root).
pub fn uses_user_net(rec: &InstanceRecord) -> bool {
    rec.network == NetworkMode::Nat && rec.net.is_none()
}
