//! What the runtime calls: prepare the host once ([`ensure_host`]), give
//! each machine its TAP ([`setup_machine`] / [`teardown_machine`]), and
//! find and remove what no registered machine owns ([`leftovers`], [`gc`]).
//!
//! Ownership: a [`MachineNet`] owns its TAP; dropping it (or calling
//! [`MachineNet::teardown`]) deletes the TAP, unless
//! [`MachineNet::persist`] handed the TAP over to the machine's record
//! (then `rm` calls [`teardown_machine`]). Host objects (bridge, rules
//! tagged `mvm:host:<bridge>`) are shared by all machines and stay.

use mvm_core::instance::NetAllocation;

use crate::config::NetConfig;
use crate::egress::{self, EgressError, Nft};
use crate::link::{self, LinkError};
use crate::nat::{self, Iptables, NatError};
use crate::netlink::{Netlink, NetlinkError};

/// Host networking errors.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A link operation failed.
    #[error("{what}")]
    Link {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: LinkError,
    },
    /// A rule operation failed.
    #[error("{what}")]
    Nat {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: NatError,
    },
    /// An egress table operation failed.
    #[error("{what}")]
    Egress {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: EgressError,
    },
    /// Missing privilege.
    #[error(
        "{what} needs root (CAP_NET_ADMIN); run mvm as root, or use --network none (QEMU can also use user-mode networking without root)"
    )]
    NeedsRoot {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: LinkError,
    },
}

fn link_err(what: impl Into<String>) -> impl FnOnce(LinkError) -> HostError {
    let what = what.into();
    move |source| {
        if source.is_permission() {
            HostError::NeedsRoot { what, source }
        } else {
            HostError::Link { what, source }
        }
    }
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> HostError {
    let f = link_err(what);
    move |e| f(LinkError::Netlink(e))
}

fn nat_err(what: impl Into<String>) -> impl FnOnce(NatError) -> HostError {
    let what = what.into();
    move |source| HostError::Nat { what, source }
}

/// Files read by [`guest_dns`], in order.
pub const RESOLV_CONFS: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

/// Name servers to give guests: the host's, minus loopback ones (a guest
/// cannot reach the host's 127.0.0.53 stub). Falls back to systemd-resolved's
/// upstream list; empty if nothing usable is found.
pub fn guest_dns() -> Vec<std::net::Ipv4Addr> {
    for path in RESOLV_CONFS {
        if let Ok(text) = fs_err::read_to_string(path) {
            let v = parse_resolv_conf(&text);
            if !v.is_empty() {
                return v;
            }
        }
    }
    Vec::new()
}

/// The non-loopback IPv4 `nameserver` lines of a resolv.conf (at most 3).
pub fn parse_resolv_conf(text: &str) -> Vec<std::net::Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<std::net::Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .take(crate::cmdline::MAX_DNS)
        .collect()
}

/// Whether the calling process can manage host networking (effective uid 0).
/// Without it, Firecracker cannot get a NIC and QEMU should use user-mode
/// networking.
pub fn have_privileges() -> bool {
    rustix::process::geteuid().is_root()
}

/// Prepare the host: bridge up with the gateway address, IPv4 forwarding,
/// MASQUERADE + FORWARD rules tagged `mvm:host:<bridge>`. Idempotent.
/// Call it under the registry's global lock: two processes checking
/// (`iptables -C`) and adding a rule at the same time could add it twice.
pub fn ensure_host(cfg: &NetConfig) -> Result<(), HostError> {
    ensure_host_with(cfg, &Iptables::default())
}

/// [`ensure_host`] with a given iptables front end.
pub fn ensure_host_with(cfg: &NetConfig, ipt: &Iptables) -> Result<(), HostError> {
    let what = format!("setting up bridge {:?} for {}", cfg.bridge, cfg.subnet);
    let mut nl = Netlink::open().map_err(nl_err(what.clone()))?;
    link::ensure_bridge(
        &mut nl,
        &cfg.bridge,
        cfg.subnet.gateway(),
        cfg.subnet.prefix(),
    )
    .map_err(link_err(what.clone()))?;
    link::enable_ip_forward().map_err(link_err(what.clone()))?;
    for r in nat::host_rules(&cfg.subnet.to_string(), &cfg.bridge) {
        ipt.ensure(&r).map_err(nat_err(what.clone()))?;
    }
    Ok(())
}

/// Remove the host objects of `cfg`: its rules and its bridge (for
/// uninstall; machines need them).
pub fn teardown_host(cfg: &NetConfig, ipt: &Iptables) -> Result<(), HostError> {
    let what = format!("removing bridge {:?}", cfg.bridge);
    ipt.remove_owned(&nat::host_tag(&cfg.bridge))
        .map_err(nat_err(what.clone()))?;
    let mut nl = Netlink::open().map_err(nl_err(what.clone()))?;
    nl.del_link(&cfg.bridge).map_err(nl_err(what))?;
    Ok(())
}

/// The host side of one machine's NIC: its TAP, attached to the bridge.
/// Deletes the TAP on drop unless [`MachineNet::persist`] was called.
#[derive(Debug)]
pub struct MachineNet {
    alloc: NetAllocation,
    armed: bool,
}

impl MachineNet {
    /// The allocation this TAP belongs to.
    pub fn allocation(&self) -> &NetAllocation {
        &self.alloc
    }

    /// The TAP name to give the VMM.
    pub fn tap(&self) -> &str {
        &self.alloc.tap
    }

    /// Keep the TAP after this value is dropped (the machine record owns
    /// it from now on; `rm` calls [`teardown_machine`]).
    pub fn persist(mut self) -> NetAllocation {
        self.armed = false;
        self.alloc.clone()
    }

    /// Delete the TAP now, reporting errors.
    pub fn teardown(mut self) -> Result<(), HostError> {
        self.armed = false;
        teardown_machine(&self.alloc)
    }
}

impl Drop for MachineNet {
    fn drop(&mut self) {
        if self.armed {
            let _ = teardown_machine(&self.alloc);
        }
    }
}

/// Create the machine's persistent TAP and attach it to the bridge (up).
/// The bridge must exist ([`ensure_host`]). If a later step fails, the TAP
/// created here is removed again.
pub fn setup_machine(cfg: &NetConfig, alloc: &NetAllocation) -> Result<MachineNet, HostError> {
    setup_machine_owned(cfg, alloc, None)
}

/// [`setup_machine`], with the TAP given to `owner` (uid, gid) when set:
/// the machine's VMM runs as that uid and opens the TAP by name (a jailed
/// Firecracker).
pub fn setup_machine_owned(
    cfg: &NetConfig,
    alloc: &NetAllocation,
    owner: Option<(u32, u32)>,
) -> Result<MachineNet, HostError> {
    let what = format!("setting up TAP {:?} for {}", alloc.tap, alloc.ip);
    let mut nl = Netlink::open().map_err(nl_err(what.clone()))?;
    link::create_tap(&mut nl, &alloc.tap).map_err(link_err(what.clone()))?;
    // From here on the owner removes the TAP if attaching fails.
    let machine = MachineNet {
        alloc: alloc.clone(),
        armed: true,
    };
    if let Some((uid, gid)) = owner {
        link::set_tap_owner(&alloc.tap, uid, gid).map_err(link_err(what.clone()))?;
    }
    link::attach(&mut nl, &alloc.tap, &cfg.bridge).map_err(link_err(what))?;
    Ok(machine)
}

/// Delete the machine's TAP and its egress tables
/// ([`egress::release`]). Idempotent: a missing TAP or table is not an
/// error.
pub fn teardown_machine(alloc: &NetAllocation) -> Result<(), HostError> {
    let what = format!("removing TAP {:?}", alloc.tap);
    let mut nl = Netlink::open().map_err(nl_err(what.clone()))?;
    link::delete(&mut nl, &alloc.tap).map_err(link_err(what))?;
    egress::release(&Nft::default(), &alloc.tap).map_err(|source| HostError::Egress {
        what: format!("removing the egress rules of TAP {:?}", alloc.tap),
        source,
    })?;
    Ok(())
}

/// Something of mvm's on the host that no registered machine owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// A TAP named `mvm-*` that no allocation names.
    Tap {
        /// Its name.
        name: String,
        /// A process (a VMM) holds it open; [`gc`] leaves it alone.
        attached: bool,
    },
    /// A rule tagged `mvm:` that is not one of the current host rules.
    Rule(nat::Rule),
    /// An egress table (`mvm-eg-<TAP>`) whose TAP no allocation names.
    Egress(egress::EgressTable),
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leftover::Tap { name, attached } => write!(
                f,
                "TAP {name} (owned by no machine{})",
                if *attached {
                    ", still held open by a process"
                } else {
                    ""
                }
            ),
            Leftover::Rule(r) => write!(f, "iptables rule `{}`", r.display()),
            Leftover::Egress(t) => write!(f, "{t} (owned by no machine)"),
        }
    }
}

/// List leftovers: `mvm-*` TAPs not named by `registered`, `mvm:` rules
/// other than the host rules of `cfg`, and egress tables (`mvm-eg-<TAP>`)
/// of TAPs not named by `registered`.
pub fn leftovers(
    cfg: &NetConfig,
    registered: &[NetAllocation],
    ipt: &Iptables,
) -> Result<Vec<Leftover>, HostError> {
    let what = "looking for leftover network objects";
    let mut nl = Netlink::open().map_err(nl_err(what))?;
    let mut out = Vec::new();
    for t in link::list_taps(&mut nl).map_err(link_err(what))? {
        if !registered.iter().any(|a| a.tap == t.name) {
            out.push(Leftover::Tap {
                name: t.name,
                attached: t.carrier,
            });
        }
    }
    let expected = nat::host_rules(&cfg.subnet.to_string(), &cfg.bridge);
    for r in ipt.list_owned().map_err(nat_err(what))? {
        if !expected.contains(&r) {
            out.push(Leftover::Rule(r));
        }
    }
    for t in egress::leftovers(&Nft::default(), registered).map_err(|source| HostError::Egress {
        what: what.into(),
        source,
    })? {
        out.push(Leftover::Egress(t));
    }
    Ok(out)
}

/// What [`gc`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Removed objects.
    pub removed: Vec<Leftover>,
    /// Leftovers not removed (TAPs held open by a process).
    pub kept: Vec<Leftover>,
}

/// Remove the [`leftovers`], except TAPs a process still holds open.
pub fn gc(
    cfg: &NetConfig,
    registered: &[NetAllocation],
    ipt: &Iptables,
) -> Result<GcReport, HostError> {
    let mut report = GcReport::default();
    let mut nl = Netlink::open().map_err(nl_err("removing leftovers"))?;
    for l in leftovers(cfg, registered, ipt)? {
        match &l {
            Leftover::Tap { attached: true, .. } => report.kept.push(l),
            Leftover::Tap { name, .. } => {
                link::delete(&mut nl, name).map_err(link_err(format!("removing TAP {name:?}")))?;
                report.removed.push(l);
            }
            Leftover::Rule(r) => {
                ipt.delete(r)
                    .map_err(nat_err(format!("removing rule `{}`", r.display())))?;
                report.removed.push(l);
            }
            Leftover::Egress(t) => {
                // Both families go at once; the second table of a pair is
                // then already gone, which release accepts.
                egress::release(&Nft::default(), &t.tap).map_err(|source| HostError::Egress {
                    what: format!("removing {t}"),
                    source,
                })?;
                report.removed.push(l);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_skips_loopback() {
        let v = parse_resolv_conf(
            "# x\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\nsearch lan\nnameserver 192.0.2.2\n",
        );
        assert_eq!(
            v,
            [
                std::net::Ipv4Addr::new(192, 0, 2, 1),
                std::net::Ipv4Addr::new(192, 0, 2, 2)
            ]
        );
    }
}
