//! Parsing of the `mvm.*` parameters on the kernel command line
//! (`/proc/cmdline`), which is how the host configures the guest at boot:
//!
//! - `mvm.hostname=NAME` — the guest hostname;
//! - `mvm.root=/dev/vda` — the block device holding the persistent root
//!   filesystem (ext4); without it the agent stays on the initramfs;
//! - `mvm.net=IP/PREFIX,GATEWAY[,DNS]` — static network configuration;
//! - `mvm.mount=LABEL,ro|rw,PATH` (repeatable) — mount the ext4 drive with
//!   that label at PATH (see [`crate::mounts`]).
//!
//! Unknown `mvm.*` keys are reported (the caller logs them) and ignored;
//! everything else on the command line belongs to the kernel.

use std::net::IpAddr;

/// A value that could not be parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// `mvm.net` is malformed.
    #[error("invalid mvm.net={value:?}: {reason}")]
    Net {
        /// The raw value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `mvm.hostname` is not a valid hostname.
    #[error("invalid mvm.hostname={0:?}")]
    Hostname(String),
    /// `mvm.mount` is malformed.
    #[error("{0}")]
    Mount(String),
}

/// Static network parameters from `mvm.net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetParams {
    /// The guest's address.
    pub addr: IpAddr,
    /// Prefix length of the guest's subnet.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: IpAddr,
    /// The DNS server, if any.
    pub dns: Option<IpAddr>,
}

impl NetParams {
    /// Parse `IP/PREFIX,GATEWAY[,DNS]`.
    pub fn parse(value: &str) -> Result<Self, CmdlineError> {
        let err = |reason| CmdlineError::Net {
            value: value.to_owned(),
            reason,
        };
        let mut parts = value.split(',');
        let cidr = parts.next().ok_or_else(|| err("missing address"))?;
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| err("address lacks /PREFIX"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("bad address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("bad prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err("prefix too long"));
        }
        let gateway: IpAddr = parts
            .next()
            .ok_or_else(|| err("missing gateway"))?
            .parse()
            .map_err(|_| err("bad gateway"))?;
        let dns = match parts.next() {
            None | Some("") => None,
            Some(d) => Some(d.parse().map_err(|_| err("bad DNS server"))?),
        };
        if parts.next().is_some() {
            return Err(err("too many fields"));
        }
        Ok(NetParams {
            addr,
            prefix,
            gateway,
            dns,
        })
    }
}

/// The `mvm.*` parameters of one command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `mvm.hostname`.
    pub hostname: Option<String>,
    /// `mvm.root`.
    pub root: Option<String>,
    /// `mvm.net`.
    pub net: Option<NetParams>,
    /// Every `mvm.mount`, in order.
    pub mounts: Vec<crate::mounts::MountParam>,
    /// Unknown `mvm.*` parameters, as written.
    pub unknown: Vec<String>,
    /// Known parameters whose value was invalid (ignored).
    pub invalid: Vec<CmdlineError>,
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with('-')
}

impl BootParams {
    /// Parse a kernel command line.
    pub fn parse(cmdline: &str) -> Self {
        let mut p = BootParams::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("mvm.") else {
                continue;
            };
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            match key {
                "hostname" if valid_hostname(value) => p.hostname = Some(value.to_owned()),
                "hostname" => p.invalid.push(CmdlineError::Hostname(value.to_owned())),
                "root" if !value.is_empty() => p.root = Some(value.to_owned()),
                "net" => match NetParams::parse(value) {
                    Ok(n) => p.net = Some(n),
                    Err(e) => p.invalid.push(e),
                },
                "mount" => match crate::mounts::MountParam::parse(value) {
                    Ok(m) => p.mounts.push(m),
                    Err(e) => p.invalid.push(CmdlineError::Mount(e)),
                },
                _ => p.unknown.push(word.to_owned()),
            }
        }
        p
    }
}

/// Configure the guest network from `mvm.net` (netlink, via
/// `mvm_net::guest`): bring up `lo` and `eth0`, add the address and the
/// default route, write `/etc/resolv.conf` and `/etc/hosts`. Failures are
/// logged; the agent still serves (the host can see the error in the
/// console log).
pub fn configure_network(net: &NetParams, hostname: Option<&str>) {
    let (IpAddr::V4(ip), IpAddr::V4(gateway)) = (net.addr, net.gateway) else {
        crate::log!("network: only IPv4 is supported, got {}", net.addr);
        return;
    };
    let guest = mvm_net::cmdline::GuestNet {
        ip,
        prefix: net.prefix,
        gateway,
        dns: match net.dns {
            Some(IpAddr::V4(d)) => vec![d],
            _ => vec![],
        },
    };
    match mvm_net::guest::configure("eth0", &guest, hostname) {
        Ok(()) => crate::log!("network: eth0 {}/{} via {}", ip, net.prefix, gateway),
        Err(e) => crate::log!("network: configuring eth0 failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys_and_reports_unknown() {
        let p = BootParams::parse(
            "console=ttyS0 mvm.hostname=box-1 mvm.root=/dev/vda mvm.net=10.0.0.2/24,10.0.0.1,1.1.1.1 mvm.color=red quiet",
        );
        assert_eq!(p.hostname.as_deref(), Some("box-1"));
        assert_eq!(p.root.as_deref(), Some("/dev/vda"));
        let n = p.net.unwrap();
        assert_eq!(n.addr.to_string(), "10.0.0.2");
        assert_eq!(n.prefix, 24);
        assert_eq!(n.gateway.to_string(), "10.0.0.1");
        assert_eq!(n.dns.unwrap().to_string(), "1.1.1.1");
        assert_eq!(p.unknown, ["mvm.color=red"]);
        assert!(p.invalid.is_empty());
    }

    #[test]
    fn net_without_dns_and_bad_values() {
        let n = NetParams::parse("192.168.5.9/30,192.168.5.10").unwrap();
        assert_eq!(n.dns, None);
        for bad in [
            "10.0.0.2,10.0.0.1",
            "10.0.0.2/33,10.0.0.1",
            "x/24,10.0.0.1",
            "10.0.0.2/24",
            "1.2.3.4/8,1.1.1.1,8.8.8.8,9",
        ] {
            assert!(NetParams::parse(bad).is_err(), "{bad}");
        }
        let p = BootParams::parse("mvm.net=garbage mvm.hostname=-bad");
        assert_eq!(p.net, None);
        assert_eq!(p.hostname, None);
        assert_eq!(p.invalid.len(), 2);
    }
}
