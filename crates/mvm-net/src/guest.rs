//! Guest side: configure the machine's interface from [`GuestNet`] (read
//! from the kernel command line, see [`crate::cmdline`]) before the agent
//! reports ready.
//!
//! Steps, all idempotent: bring `lo` up; wait (with a deadline, on link
//! notifications) for the interface to appear, since its driver may still
//! be loading; add `IP/PREFIX`; bring it up; set the default route via the
//! gateway (replace); write `resolv.conf` and `hosts` atomically.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::cmdline::{GuestNet, find_in_cmdline, format_cmdline, parse_cmdline};
use crate::netlink::{Netlink, NetlinkError};

/// How long [`configure`] waits for the interface to appear.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// Guest configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A netlink step failed.
    #[error("cannot configure {iface:?}")]
    Netlink {
        /// The interface.
        iface: String,
        /// Cause.
        #[source]
        source: NetlinkError,
    },
    /// Writing a file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Configure `iface` and write `/etc/resolv.conf` and `/etc/hosts`.
pub fn configure(iface: &str, net: &GuestNet, hostname: Option<&str>) -> Result<(), GuestError> {
    configure_in(iface, net, hostname, Path::new("/etc"), LINK_TIMEOUT)
}

/// [`configure`] with the files written under `etc` instead of `/etc`.
pub fn configure_in(
    iface: &str,
    net: &GuestNet,
    hostname: Option<&str>,
    etc: &Path,
    link_timeout: Duration,
) -> Result<(), GuestError> {
    configure_links(iface, net, link_timeout).map_err(|source| GuestError::Netlink {
        iface: iface.to_owned(),
        source,
    })?;
    write_file(&etc.join("resolv.conf"), &resolv_conf(&net.dns))?;
    write_file(&etc.join("hosts"), &hosts(net.ip, hostname))?;
    Ok(())
}

/// Give `iface` a new identity (a restored clone, see
/// `mvm_agent_proto::identity`): the MAC `mac`, `net`'s address instead of
/// every IPv4 address it had, the default route via `net`'s gateway, and
/// `resolv.conf`/`hosts` under `etc`. Idempotent. The interface must exist
/// already (it does in a restored guest): every step is one netlink request
/// on one socket, because each costs a lot in an emulated guest kernel.
pub fn readdress_in(
    iface: &str,
    mac: [u8; 6],
    net: &GuestNet,
    hostname: Option<&str>,
    etc: &Path,
) -> Result<(), GuestError> {
    readdress_links(iface, mac, net).map_err(|source| GuestError::Netlink {
        iface: iface.to_owned(),
        source,
    })?;
    write_file(&etc.join("resolv.conf"), &resolv_conf(&net.dns))?;
    write_file(&etc.join("hosts"), &hosts(net.ip, hostname))?;
    Ok(())
}

fn readdress_links(iface: &str, mac: [u8; 6], net: &GuestNet) -> Result<(), NetlinkError> {
    let mut nl = Netlink::open()?;
    let link = nl.require_link(iface)?;
    if link.mac != Some(mac) {
        nl.set_mac(link.index, mac, iface)?;
    }
    let mut have = false;
    for (ip, prefix) in nl.addresses(link.index)? {
        if (ip, prefix) == (net.ip, net.prefix) {
            have = true;
        } else {
            nl.del_address(link.index, ip, prefix, iface)?;
        }
    }
    if !have {
        nl.add_address(link.index, net.ip, net.prefix, iface)?;
    }
    if !link.up {
        nl.set_up(link.index, true, iface)?;
    }
    nl.replace_default_route(net.gateway, link.index)?;
    Ok(())
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn configure_links(iface: &str, net: &GuestNet, timeout: Duration) -> Result<(), NetlinkError> {
    let mut nl = Netlink::open()?;
    if let Some(lo) = nl.link("lo")?
        && !lo.up
    {
        nl.set_up(lo.index, true, "lo")?;
    }
    let link = nl.wait_for_link(iface, timeout)?;
    if !nl.addresses(link.index)?.contains(&(net.ip, net.prefix)) {
        nl.add_address(link.index, net.ip, net.prefix, iface)?;
    }
    if !link.up {
        nl.set_up(link.index, true, iface)?;
    }
    nl.replace_default_route(net.gateway, link.index)?;
    Ok(())
}

/// `/etc/resolv.conf` text.
pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    let mut s = String::from("# written by mvm\n");
    for d in dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

/// `/etc/hosts` text.
pub fn hosts(ip: Ipv4Addr, hostname: Option<&str>) -> String {
    let mut s = String::from(
        "# written by mvm\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    if let Some(h) = hostname {
        s.push_str(&format!("127.0.1.1\t{h}\n{ip}\t{h}\n"));
    }
    s
}

fn write_file(path: &Path, text: &str) -> Result<(), GuestError> {
    let err = |source| GuestError::Write {
        path: path.to_owned(),
        source,
    };
    // temp + rename: a reader never sees a half-written file, and a
    // symlinked resolv.conf is replaced rather than written through.
    let tmp = path.with_extension("mvm-tmp");
    fs_err::write(&tmp, text).map_err(err)?;
    fs_err::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("06:00:ac:10:00:0a"),
            Some([6, 0, 0xac, 0x10, 0, 0x0a])
        );
        for bad in [
            "06:00:ac:10:00",
            "06:00:ac:10:00:0a:01",
            "6:00:ac:10:00:0a",
            "zz:00:ac:10:00:0a",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn files() {
        assert_eq!(
            resolv_conf(&[Ipv4Addr::new(192, 0, 2, 1)]),
            "# written by mvm\nnameserver 192.0.2.1\n"
        );
        let h = hosts(Ipv4Addr::new(172, 16, 0, 2), Some("web"));
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("172.16.0.2\tweb\n"));
    }
}
