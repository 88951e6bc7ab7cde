//! Allocation of a machine's network identity: guest IP, MAC and TAP name.
//!
//! [`allocate`] is pure and deterministic: given the allocations already
//! held (`taken`), it returns
//!
//! - **IP**: the lowest guest address of the subnet that no allocation holds
//!   (never the network, gateway or broadcast address);
//! - **MAC**: `02:6d:76:XX:YY:ZZ` — `02` is a locally administered unicast
//!   prefix, `6d:76` is "mv", and `XX:YY:ZZ` are the IP's last three octets,
//!   so it is unique within any subnet of /8 or longer;
//! - **TAP**: `mvm-` + 6 hex digits of an FNV-1a hash of the machine name and
//!   the IP (10 bytes, under the 15-byte limit), rehashed with a counter if
//!   another allocation holds that name.
//!
//! Uniqueness across concurrent mvm processes and across restarts comes
//! from the caller: it holds the registry's global lock while it reads the
//! allocations of all registered machines, calls [`allocate`], and records
//! the result. An allocation is released by removing the machine's record.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use mvm_core::instance::NetAllocation;

use crate::config::Subnet;

/// Prefix of every TAP device mvm creates; [`crate::host::leftovers`] uses
/// it to find mvm's devices.
pub const TAP_PREFIX: &str = "mvm-";

/// The first three bytes of every guest MAC (locally administered, "mv").
pub const MAC_PREFIX: [u8; 3] = [0x02, 0x6d, 0x76];

/// Allocation errors.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// Every guest address of the subnet is held.
    #[error(
        "no free address left in {subnet} for machine {name:?}: all {size} guest addresses are held (remove a machine or choose a larger subnet)"
    )]
    Exhausted {
        /// The subnet.
        subnet: Subnet,
        /// The machine being allocated.
        name: String,
        /// Number of guest addresses in the subnet.
        size: u32,
    },
}

/// The MAC derived from a guest IP: `02:6d:76` + the IP's last three octets.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format_mac([
        MAC_PREFIX[0],
        MAC_PREFIX[1],
        MAC_PREFIX[2],
        o[1],
        o[2],
        o[3],
    ])
}

/// `aa:bb:cc:dd:ee:ff` form.
pub fn format_mac(b: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}

fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in *p {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The TAP name for `name` at `ip`, attempt `n` (0 first).
pub fn tap_name(name: &str, ip: Ipv4Addr, n: u32) -> String {
    let h = fnv1a(&[name.as_bytes(), &ip.octets(), &n.to_le_bytes()]);
    format!("{TAP_PREFIX}{:06x}", h & 0x00ff_ffff)
}

/// Allocate the lowest free IP of `subnet`, its MAC and a TAP name for
/// machine `name`, avoiding everything in `taken`. Pure: the same inputs
/// give the same answer.
pub fn allocate(
    taken: &[NetAllocation],
    name: &str,
    subnet: &Subnet,
) -> Result<NetAllocation, AllocError> {
    let ips: HashSet<Ipv4Addr> = taken.iter().map(|a| a.ip).collect();
    let macs: HashSet<String> = taken.iter().map(|a| a.mac.to_ascii_lowercase()).collect();
    let taps: HashSet<&str> = taken.iter().map(|a| a.tap.as_str()).collect();
    let ip = subnet
        .guest_addresses()
        .find(|ip| !ips.contains(ip) && !macs.contains(&mac_for(*ip)))
        .ok_or_else(|| AllocError::Exhausted {
            subnet: *subnet,
            name: name.to_owned(),
            size: subnet.pool_size(),
        })?;
    // At most `taken.len()` names are held, so this ends within that many
    // attempts + 1.
    let tap = (0u32..)
        .map(|n| tap_name(name, ip, n))
        .find(|t| !taps.contains(t.as_str()))
        .expect("a free TAP name exists");
    Ok(NetAllocation {
        ip,
        prefix: subnet.prefix(),
        gateway: subnet.gateway(),
        mac: mac_for(ip),
        tap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subnet(s: &str) -> Subnet {
        Subnet::parse(s).unwrap()
    }

    #[test]
    fn first_allocation_is_dot_two() {
        let a = allocate(&[], "web", &subnet("172.16.0.0/24")).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(a.gateway, Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(a.prefix, 24);
        assert_eq!(a.mac, "02:6d:76:10:00:02");
        assert!(
            a.tap.starts_with(TAP_PREFIX) && a.tap.len() == 10,
            "{}",
            a.tap
        );
        // Deterministic.
        assert_eq!(a, allocate(&[], "web", &subnet("172.16.0.0/24")).unwrap());
    }

    #[test]
    fn lowest_free_is_reused_after_release() {
        let s = subnet("172.16.0.0/24");
        let a = allocate(&[], "a", &s).unwrap();
        let b = allocate(std::slice::from_ref(&a), "b", &s).unwrap();
        let c = allocate(&[a.clone(), b.clone()], "c", &s).unwrap();
        assert_eq!(c.ip, Ipv4Addr::new(172, 16, 0, 4));
        // `b` released: its address is the lowest free one again.
        let d = allocate(&[a, c], "d", &s).unwrap();
        assert_eq!(d.ip, b.ip);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let s = subnet("10.9.0.0/29"); // .2 ..= .6: five guests
        let mut taken = Vec::new();
        for i in 0..5 {
            taken.push(allocate(&taken, &format!("m{i}"), &s).unwrap());
        }
        let e = allocate(&taken, "late", &s).unwrap_err().to_string();
        assert!(e.contains("10.9.0.0/29") && e.contains("\"late\""), "{e}");
    }

    #[test]
    fn colliding_tap_name_is_rehashed() {
        let s = subnet("172.16.0.0/24");
        let first = allocate(&[], "x", &s).unwrap();
        // Someone holds the TAP name `x` would get at .2, but at another IP.
        let squatter = NetAllocation {
            ip: Ipv4Addr::new(172, 16, 0, 9),
            mac: mac_for(Ipv4Addr::new(172, 16, 0, 9)),
            ..first.clone()
        };
        let again = allocate(&[squatter], "x", &s).unwrap();
        assert_eq!(again.ip, first.ip);
        assert_ne!(again.tap, first.tap);
        assert_eq!(again.tap, tap_name("x", first.ip, 1));
    }

    proptest! {
        #[test]
        fn never_duplicates_nor_reserved(
            prefix in 22u8..=29,
            names in proptest::collection::vec("[a-z]{1,8}", 1..60),
            release in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let s = Subnet::parse(&format!("192.168.0.0/{prefix}")).unwrap();
            let mut taken: Vec<NetAllocation> = Vec::new();
            for (i, name) in names.iter().enumerate() {
                // Randomly release earlier allocations to exercise reuse.
                if release[i] && !taken.is_empty() {
                    taken.remove(i % taken.len());
                }
                match allocate(&taken, name, &s) {
                    Ok(a) => {
                        prop_assert!(s.is_guest_address(a.ip));
                        prop_assert!(a.tap.len() <= 15);
                        prop_assert!(taken.iter().all(|t| t.ip != a.ip && t.mac != a.mac && t.tap != a.tap));
                        taken.push(a);
                    }
                    Err(AllocError::Exhausted { .. }) => {
                        prop_assert_eq!(taken.len() as u32, s.pool_size());
                    }
                }
            }
        }
    }
}
