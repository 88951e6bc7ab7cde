//! The machine subnet: parsing `A.B.C.D/N`, its gateway and its guest pool.
//!
//! Layout of a subnet `N.0/P` (e.g. the default `172.16.0.0/24`):
//!
//! ```text
//! 172.16.0.0     network address      never given out
//! 172.16.0.1     gateway              the bridge's address on the host
//! 172.16.0.2     first guest address
//! ...
//! 172.16.0.254   last guest address   (broadcast - 1)
//! 172.16.0.255   broadcast            never given out
//! ```
//!
//! Prefixes from /8 to /30 are accepted: a /30 has exactly one guest.

use std::net::Ipv4Addr;

/// Errors in the network configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The subnet is not `A.B.C.D/N`.
    #[error("invalid subnet {value:?}: {reason}")]
    BadSubnet {
        /// The value given.
        value: String,
        /// Why it is wrong.
        reason: String,
    },
    /// The bridge name is not a valid interface name.
    #[error("invalid bridge name {value:?}: {reason}")]
    BadBridge {
        /// The value given.
        value: String,
        /// Why it is wrong.
        reason: String,
    },
}

/// The smallest accepted prefix length (a /8 is 16 million addresses).
pub const MIN_PREFIX: u8 = 8;
/// The largest accepted prefix length (a /30 holds the gateway and one guest).
pub const MAX_PREFIX: u8 = 30;
/// Linux limit on interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// An IPv4 subnet in canonical form (host bits of `network` are zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// Parse `A.B.C.D/N`. Host bits must be zero (`172.16.0.5/24` is an
    /// error naming the value, not silently `172.16.0.0/24`).
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::BadSubnet {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = value
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 172.16.0.0/24"))?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad(&format!("{addr:?} is not an IPv4 address")))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad(&format!("{prefix:?} is not a prefix length")))?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(bad(&format!(
                "prefix /{prefix} is outside /{MIN_PREFIX}../{MAX_PREFIX}"
            )));
        }
        let s = Self { network, prefix };
        if u32::from(network) & !s.mask() != 0 {
            return Err(bad(&format!(
                "host bits are set; did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(network) & s.mask())
            )));
        }
        Ok(s)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask as a number.
    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The gateway: network + 1 (the bridge's address).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// Whether `ip` lies in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// Whether `ip` may be given to a guest (in the subnet, not network,
    /// gateway or broadcast).
    pub fn is_guest_address(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.gateway() && ip != self.broadcast()
    }

    /// The guest pool in ascending order: `.2 ..= broadcast - 1`.
    pub fn guest_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let first = u32::from(self.network) + 2;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last).map(Ipv4Addr::from)
    }

    /// Number of guest addresses.
    pub fn pool_size(&self) -> u32 {
        (!self.mask()) - 2
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl std::str::FromStr for Subnet {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Check a Linux interface name: 1..=15 bytes, no `/`, whitespace or `:`.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an interface name cannot be empty".into());
    }
    if name.len() > MAX_IFNAME {
        return Err(format!(
            "{} bytes is longer than the {MAX_IFNAME} Linux allows",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are not interface names".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{c:?} is not allowed in an interface name"));
    }
    Ok(())
}

/// The validated host network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Machine subnet.
    pub subnet: Subnet,
    /// Bridge name (gets the gateway address).
    pub bridge: String,
}

impl NetConfig {
    /// Validate `subnet` and `bridge`.
    pub fn new(subnet: &str, bridge: &str) -> Result<Self, ConfigError> {
        let subnet = Subnet::parse(subnet)?;
        validate_ifname(bridge).map_err(|reason| ConfigError::BadBridge {
            value: bridge.to_owned(),
            reason,
        })?;
        Ok(Self {
            subnet,
            bridge: bridge.to_owned(),
        })
    }

    /// From the `[network]` table of mvm's configuration file.
    pub fn from_core(cfg: &mvm_core::config::NetworkConfig) -> Result<Self, ConfigError> {
        Self::new(&cfg.subnet, &cfg.bridge)
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self::from_core(&mvm_core::config::NetworkConfig::default())
            .expect("the default network configuration is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_subnet_layout() {
        let s = Subnet::parse("172.16.0.0/24").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(172, 16, 0, 255));
        let pool: Vec<_> = s.guest_addresses().collect();
        assert_eq!(pool.len(), 253);
        assert_eq!(s.pool_size(), 253);
        assert_eq!(pool[0], Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(*pool.last().unwrap(), Ipv4Addr::new(172, 16, 0, 254));
        assert!(!s.is_guest_address(s.gateway()));
        assert!(!s.is_guest_address(s.network()));
        assert!(!s.is_guest_address(s.broadcast()));
        assert_eq!(s.to_string(), "172.16.0.0/24");
    }

    #[test]
    fn small_and_large_prefixes() {
        let s = Subnet::parse("10.0.0.4/30").unwrap();
        assert_eq!(
            s.guest_addresses().collect::<Vec<_>>(),
            [Ipv4Addr::new(10, 0, 0, 6)]
        );
        let s = Subnet::parse("10.0.0.0/8").unwrap();
        assert_eq!(s.pool_size(), (1 << 24) - 3);
    }

    #[test]
    fn errors_name_the_value() {
        for bad in [
            "172.16.0.0",
            "172.16.0/24",
            "172.16.0.0/33",
            "172.16.0.0/31",
            "172.16.0.0/4",
            "172.16.0.5/24",
            "x/24",
            "172.16.0.0/x",
            "",
        ] {
            let e = Subnet::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        let e = Subnet::parse("172.16.0.5/24").unwrap_err().to_string();
        assert!(e.contains("172.16.0.0/24"), "{e}");
    }

    #[test]
    fn bridge_names() {
        assert!(NetConfig::new("172.16.0.0/24", "mvmbr0").is_ok());
        for bad in ["", "a-very-long-bridge-name", "a b", "a/b", "a:b"] {
            let e = NetConfig::new("172.16.0.0/24", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(NetConfig::default().bridge, "mvmbr0");
    }
}
