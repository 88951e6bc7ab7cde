//! The guest's network settings on the kernel command line.
//!
//! ```text
//! mvm.net=IP/PREFIX,GATEWAY[,DNS[,DNS...]]
//! mvm.net=172.16.0.2/24,172.16.0.1,192.0.2.53
//! ```
//!
//! The host adds it from the machine's [`NetAllocation`]; the guest agent
//! reads `/proc/cmdline`, finds the parameter with [`find_in_cmdline`] and
//! configures `eth0` before it reports ready. No parameter means no network.

use std::net::Ipv4Addr;

use mvm_core::instance::NetAllocation;

/// The parameter name.
pub const PARAM: &str = "mvm.net";

/// At most this many DNS servers (resolv.conf's MAXNS).
pub const MAX_DNS: usize = 3;

/// What the guest needs to configure its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    /// Guest address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// Name servers for /etc/resolv.conf.
    pub dns: Vec<Ipv4Addr>,
}

impl GuestNet {
    /// The settings for an allocation.
    pub fn from_allocation(a: &NetAllocation, dns: &[Ipv4Addr]) -> Self {
        Self {
            ip: a.ip,
            prefix: a.prefix,
            gateway: a.gateway,
            dns: dns.iter().take(MAX_DNS).copied().collect(),
        }
    }

    /// QEMU user-mode networking's fixed layout (guest 10.0.2.15/24,
    /// gateway 10.0.2.2, DNS 10.0.2.3).
    pub fn qemu_user() -> Self {
        Self {
            ip: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
        }
    }

    /// `mvm.net=...` for this setting.
    pub fn to_cmdline(&self) -> String {
        let mut s = format!("{PARAM}={}/{},{}", self.ip, self.prefix, self.gateway);
        for d in &self.dns {
            s.push(',');
            s.push_str(&d.to_string());
        }
        s
    }
}

/// Errors in an `mvm.net=` value.
#[derive(Debug, thiserror::Error)]
#[error("invalid {PARAM}={value:?}: {reason}")]
pub struct CmdlineError {
    /// The value.
    pub value: String,
    /// Why it is bad.
    pub reason: String,
}

/// `mvm.net=IP/PREFIX,GATEWAY,DNS...` for an allocation.
pub fn format_cmdline(a: &NetAllocation, dns: &[Ipv4Addr]) -> String {
    GuestNet::from_allocation(a, dns).to_cmdline()
}

/// Parse the value of `mvm.net=` (with or without the `mvm.net=` prefix).
pub fn parse_cmdline(value: &str) -> Result<GuestNet, CmdlineError> {
    let v = value
        .strip_prefix(PARAM)
        .and_then(|r| r.strip_prefix('='))
        .unwrap_or(value);
    let bad = |reason: String| CmdlineError {
        value: v.to_owned(),
        reason,
    };
    let mut parts = v.split(',');
    let addr = parts
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("empty".into()))?;
    let (ip, prefix) = addr
        .split_once('/')
        .ok_or_else(|| bad(format!("{addr:?} is not IP/PREFIX")))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| bad(format!("{ip:?} is not an IPv4 address")))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| bad(format!("{prefix:?} is not a prefix length")))?;
    let gw = parts.next().ok_or_else(|| bad("no gateway".into()))?;
    let gateway: Ipv4Addr = gw
        .parse()
        .map_err(|_| bad(format!("{gw:?} is not an IPv4 gateway")))?;
    let mut dns = Vec::new();
    for d in parts {
        if dns.len() == MAX_DNS {
            return Err(bad(format!("more than {MAX_DNS} DNS servers")));
        }
        dns.push(
            d.parse()
                .map_err(|_| bad(format!("{d:?} is not an IPv4 DNS server")))?,
        );
    }
    Ok(GuestNet {
        ip,
        prefix,
        gateway,
        dns,
    })
}

/// Find and parse `mvm.net=` in a whole kernel command line
/// (`/proc/cmdline`); `Ok(None)` if absent.
pub fn find_in_cmdline(cmdline: &str) -> Result<Option<GuestNet>, CmdlineError> {
    let prefix = format!("{PARAM}=");
    cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .map(parse_cmdline)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc() -> NetAllocation {
        NetAllocation {
            ip: Ipv4Addr::new(172, 16, 0, 2),
            prefix: 24,
            gateway: Ipv4Addr::new(172, 16, 0, 1),
            mac: "02:6d:76:10:00:02".into(),
            tap: "mvm-abcdef".into(),
        }
    }

    #[test]
    fn round_trip() {
        let dns = [Ipv4Addr::new(192, 0, 2, 53), Ipv4Addr::new(192, 0, 2, 54)];
        let s = format_cmdline(&alloc(), &dns);
        assert_eq!(s, "mvm.net=172.16.0.2/24,172.16.0.1,192.0.2.53,192.0.2.54");
        let g = parse_cmdline(&s).unwrap();
        assert_eq!(g, GuestNet::from_allocation(&alloc(), &dns));
        let line = format!("console=ttyS0 {s} quiet");
        assert_eq!(find_in_cmdline(&line).unwrap(), Some(g));
        assert_eq!(find_in_cmdline("console=ttyS0").unwrap(), None);
        let none = parse_cmdline("mvm.net=10.0.0.2/8,10.0.0.1").unwrap();
        assert!(none.dns.is_empty());
        assert_eq!(
            parse_cmdline(&GuestNet::qemu_user().to_cmdline()).unwrap(),
            GuestNet::qemu_user()
        );
    }

    #[test]
    fn errors_name_the_bad_part() {
        for (v, token) in [
            ("", "empty"),
            ("172.16.0.2", "\"172.16.0.2\""),
            ("172.16.0.x/24,172.16.0.1", "\"172.16.0.x\""),
            ("172.16.0.2/40,172.16.0.1", "\"40\""),
            ("172.16.0.2/24", "no gateway"),
            ("172.16.0.2/24,gw", "\"gw\""),
            ("172.16.0.2/24,172.16.0.1,dns", "\"dns\""),
            (
                "172.16.0.2/24,172.16.0.1,1.1.1.1,1.1.1.2,1.1.1.3,1.1.1.4",
                "more than 3",
            ),
        ] {
            let e = parse_cmdline(v).unwrap_err().to_string();
            assert!(e.contains(token), "{v}: {e}");
        }
    }
}
