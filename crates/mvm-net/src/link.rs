//! Host links: the bridge with the gateway address, one persistent TAP per
//! machine attached to it, and IPv4 forwarding.
//!
//! A TAP is created with `TUNSETIFF` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//! single queue) and made persistent with `TUNSETPERSIST`, then the creating
//! file descriptor is closed. The VMM later opens the device by name —
//! QEMU `-netdev tap,ifname=NAME,script=no,downscript=no` and Firecracker
//! `host_dev_name` both call `TUNSETIFF` on `/dev/net/tun` with that name;
//! the kernel lets the opener choose `IFF_NO_PI`/`IFF_VNET_HDR` again, only
//! the multi-queue flag must match (we create single-queue, as both VMMs
//! open it). A persistent TAP has carrier only while a VMM holds it.
//!
//! Everything else (bridge, addresses, up/down, master, delete) goes
//! through [`crate::netlink`].

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use crate::alloc::TAP_PREFIX;
use crate::config::validate_ifname;
use crate::netlink::{Link, Netlink, NetlinkError};

/// Where IPv4 forwarding is switched on (per network namespace).
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The TUN/TAP clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Link errors.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A TUN/TAP ioctl failed.
    #[error("cannot create TAP device {name:?} through {TUN_DEVICE} ({step})")]
    Tap {
        /// TAP name.
        name: String,
        /// `open`, `TUNSETIFF` or `TUNSETPERSIST`.
        step: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An interface name is not valid.
    #[error("invalid interface name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A name exists but is not the expected kind of device.
    #[error("interface {name:?} exists but is a {found} device, not a {expected}")]
    WrongKind {
        /// Name.
        name: String,
        /// Kind found.
        found: String,
        /// Kind expected.
        expected: &'static str,
    },
    /// Writing a sysctl failed.
    #[error("cannot enable IPv4 forwarding in {path}")]
    Sysctl {
        /// The file.
        path: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl LinkError {
    /// Whether the failure is a missing privilege (needs root / CAP_NET_ADMIN).
    pub fn is_permission(&self) -> bool {
        match self {
            LinkError::Netlink(e) => e.is_permission(),
            LinkError::Tap { source, .. } | LinkError::Sysctl { source, .. } => {
                source.kind() == std::io::ErrorKind::PermissionDenied
            }
            _ => false,
        }
    }
}

fn check_name(name: &str) -> Result<(), LinkError> {
    validate_ifname(name).map_err(|reason| LinkError::BadName {
        name: name.to_owned(),
        reason,
    })
}

/// Ensure bridge `name` exists, is up and has `gateway/prefix`. Idempotent.
pub fn ensure_bridge(
    nl: &mut Netlink,
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<Link, LinkError> {
    check_name(name)?;
    let link = match nl.link(name)? {
        Some(l) => l,
        None => {
            nl.add_bridge(name)?;
            nl.require_link(name)?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(LinkError::WrongKind {
            name: name.to_owned(),
            found: link.kind.unwrap_or_else(|| "plain".into()),
            expected: "bridge",
        });
    }
    if !nl
        .addresses(link.index)?
        .iter()
        .any(|(ip, p)| *ip == gateway && *p == prefix)
    {
        nl.add_address(link.index, gateway, prefix, name)?;
    }
    if !link.up {
        nl.set_up(link.index, true, name)?;
    }
    Ok(nl.require_link(name)?)
}

/// Create a persistent TAP named `name` (no-op if a TAP of that name exists).
pub fn create_tap(nl: &mut Netlink, name: &str) -> Result<Link, LinkError> {
    check_name(name)?;
    if let Some(l) = nl.link(name)? {
        return if l.kind.as_deref() == Some("tun") {
            Ok(l)
        } else {
            Err(LinkError::WrongKind {
                name: name.to_owned(),
                found: l.kind.unwrap_or_else(|| "plain".into()),
                expected: "tun",
            })
        };
    }
    tap_ioctls(name)?;
    Ok(nl.require_link(name)?)
}

// <linux/if_tun.h>
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETIFF: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<i32>(b'T', 202);
const TUNSETPERSIST: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<i32>(b'T', 203);
const TUNSETOWNER: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<i32>(b'T', 204);
const TUNSETGROUP: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<i32>(b'T', 206);

/// `struct ifreq` as TUNSETIFF reads it: name, flags, padding to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Open TAP `name` the way QEMU and Firecracker do (`TUNSETIFF` with
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), creating a non-persistent one if
/// it does not exist. While the returned file is open the TAP has carrier.
pub fn open_tap(name: &str) -> Result<std::fs::File, LinkError> {
    check_name(name)?;
    let file = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(|source| LinkError::Tap {
            name: name.to_owned(),
            step: "open",
            source,
        })?;
    attach_tap(file.into_parts().0, name)
}

/// Attach `tun`, an open [`TUN_DEVICE`], to TAP `name` (`TUNSETIFF`, as
/// [`open_tap`]). The kernel checks the TAP's owner against the caller's
/// credentials here, not at `open`.
pub fn attach_tap(tun: std::fs::File, name: &str) -> Result<std::fs::File, LinkError> {
    check_name(name)?;
    let tap_err = |step, source| LinkError::Tap {
        name: name.to_owned(),
        step,
        source,
    };
    let file = fs_err::File::from_parts(tun, TUN_DEVICE);
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes back a `struct ifreq`; `IfReq` has
    // its layout (16-byte name, short flags, padded to sizeof(ifreq) = 40)
    // and lives for the whole call.
    unsafe {
        rustix::ioctl::ioctl(
            file.file().as_fd(),
            rustix::ioctl::Updater::<TUNSETIFF, IfReq>::new(&mut req),
        )
    }
    .map_err(|e| tap_err("TUNSETIFF", e.into()))?;
    Ok(file.into_parts().0)
}

fn tap_ioctls(name: &str) -> Result<(), LinkError> {
    let file = open_tap(name)?;
    // SAFETY: TUNSETPERSIST takes its argument by value (an int flag), which
    // is what `IntegerSetter` passes; no memory is read.
    unsafe {
        rustix::ioctl::ioctl(
            file.as_fd(),
            rustix::ioctl::IntegerSetter::<TUNSETPERSIST>::new_usize(1),
        )
    }
    .map_err(|e| LinkError::Tap {
        name: name.to_owned(),
        step: "TUNSETPERSIST",
        source: e.into(),
    })?;
    // Closing `file` leaves the persistent device behind, without carrier.
    Ok(())
}

/// Give persistent TAP `name` to `uid`/`gid` (`TUNSETOWNER`,
/// `TUNSETGROUP`): a process with those credentials may then attach to it
/// by name without `CAP_NET_ADMIN` (a jailed Firecracker does).
pub fn set_tap_owner(name: &str, uid: u32, gid: u32) -> Result<(), LinkError> {
    let file = open_tap(name)?;
    let fail = |step| {
        move |e: rustix::io::Errno| LinkError::Tap {
            name: name.to_owned(),
            step,
            source: e.into(),
        }
    };
    // SAFETY: TUNSETOWNER and TUNSETGROUP take the id by value (an
    // unsigned long argument), which is what `IntegerSetter` passes; no
    // memory is read.
    unsafe {
        rustix::ioctl::ioctl(
            file.as_fd(),
            rustix::ioctl::IntegerSetter::<TUNSETOWNER>::new_usize(uid as usize),
        )
    }
    .map_err(fail("TUNSETOWNER"))?;
    // SAFETY: as above.
    unsafe {
        rustix::ioctl::ioctl(
            file.as_fd(),
            rustix::ioctl::IntegerSetter::<TUNSETGROUP>::new_usize(gid as usize),
        )
    }
    .map_err(fail("TUNSETGROUP"))?;
    Ok(())
}

/// Attach link `name` to `bridge` and bring it up.
pub fn attach(nl: &mut Netlink, name: &str, bridge: &str) -> Result<(), LinkError> {
    let l = nl.require_link(name)?;
    let br = nl.require_link(bridge)?;
    if l.master != Some(br.index) {
        nl.set_master(l.index, br.index, name)?;
    }
    if !l.up {
        nl.set_up(l.index, true, name)?;
    }
    Ok(())
}

/// Delete TAP `name`; `Ok(false)` if it did not exist. Idempotent.
pub fn delete(nl: &mut Netlink, name: &str) -> Result<bool, LinkError> {
    check_name(name)?;
    Ok(nl.del_link(name)?)
}

/// Every TUN/TAP device whose name starts with [`TAP_PREFIX`].
pub fn list_taps(nl: &mut Netlink) -> Result<Vec<Link>, LinkError> {
    Ok(nl
        .links()?
        .into_iter()
        .filter(|l| l.name.starts_with(TAP_PREFIX) && l.kind.as_deref() == Some("tun"))
        .collect())
}

/// Write `1` to [`IP_FORWARD`] (of the calling thread's network namespace),
/// unless it is already `1`.
pub fn enable_ip_forward() -> Result<(), LinkError> {
    let err = |source| LinkError::Sysctl {
        path: IP_FORWARD,
        source,
    };
    if fs_err::read_to_string(IP_FORWARD).map_err(err)?.trim() == "1" {
        return Ok(());
    }
    fs_err::write(IP_FORWARD, b"1\n").map_err(err)
}
