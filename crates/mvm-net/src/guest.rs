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
