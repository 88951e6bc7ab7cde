//! A machine's egress policy: what it may reach on the network.
//!
//! The command line and the configuration file use one syntax. Each
//! `--egress VALUE` is one of
//!
//! ```text
//! allow-all                 everything (but see "always blocked" below)
//! deny-all                  nothing beyond the gateway services mvm provides
//! allow=SPEC[,SPEC...]      only these destinations
//!
//! SPEC := TARGET [":" PORT ["/" ("tcp" | "udp")]]
//! TARGET := A.B.C.D | A.B.C.D/N | host.name
//! ```
//!
//! Several values add up: `--egress allow=a --egress allow=b:443` allows
//! both; `allow=` alone means "deny everything else"; `allow-all` together
//! with `allow=SPEC` keeps `allow-all` and lets the SPECs through the
//! always-blocked set (below). `allow-all` with `deny-all` is an error.
//! A port without a protocol is TCP. A whole policy is written as its
//! values separated by spaces (`allow-all allow=169.254.169.254`); that is
//! its [`Display`](std::fmt::Display) form, what [`FromStr`](std::str::FromStr)
//! reads and how it is stored (serde as that string).
//!
//! **Always blocked**, whatever the preset, unless a rule names the
//! destination *by address* at least as specifically as the blocked range
//! (a host name never does): link-local and cloud metadata
//! (`169.254.0.0/16`; IPv6, including `fd00:ec2::254`, is not forwarded for
//! machines at all), the host's own addresses other than the gateway
//! services mvm provides, and other machines' addresses (the machine
//! subnet). So `allow=169.254.169.254` reaches the metadata service and
//! `allow=172.16.0.0/24` the other machines, but `allow=0.0.0.0/0` reaches
//! neither. Enforcement lives in `mvm-net` (`egress`).
//!
//! Host names are resolved on the host (IPv4 only: machines have no IPv6
//! route), when the policy is applied and again when the answers' TTL runs
//! out; the resolved addresses are not part of the policy.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors in an egress policy; each names the value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// An `--egress` value is not `allow-all`, `deny-all` or `allow=...`.
    #[error(
        "invalid egress policy {value:?}: expected allow-all, deny-all or allow=SPEC[,SPEC...]"
    )]
    BadValue {
        /// The value given.
        value: String,
    },
    /// One SPEC of `allow=` is wrong.
    #[error("invalid egress rule {spec:?}: {reason}")]
    BadSpec {
        /// The SPEC as given.
        spec: String,
        /// Why it is wrong.
        reason: String,
    },
    /// `allow-all` and `deny-all` together.
    #[error("egress policy {value:?} says both allow-all and deny-all; choose one")]
    Conflict {
        /// The combined value.
        value: String,
    },
}

/// Transport protocol of a port rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (the default when a port has no `/proto`).
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A destination port with its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRule {
    /// Port number, 1..=65535.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// An IPv4 network in canonical form (no host bits set); a single address
/// is a `/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// A network; `None` when `prefix > 32` or host bits are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        if prefix > 32 {
            return None;
        }
        let n = Self { addr, prefix };
        (u32::from(addr) & !n.mask() == 0).then_some(n)
    }

    /// The network `addr/prefix` with its host bits cleared.
    pub fn truncate(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        let n = Self { addr, prefix };
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & n.mask()),
            prefix,
        }
    }

    /// One address.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, prefix: 32 }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask as a number.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The last address of the network.
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` lies in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether every address of `self` lies in `other`.
    pub fn is_within(&self, other: &Ipv4Net) -> bool {
        self.prefix >= other.prefix && other.contains(self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == 32 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Where a rule points.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// An address or a network.
    Net(Ipv4Net),
    /// A host name (lower case, no trailing dot), resolved on the host.
    Host(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Net(n) => n.fmt(f),
            Target::Host(h) => f.write_str(h),
        }
    }
}

/// One `allow=` SPEC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllowRule {
    /// The destination.
    pub target: Target,
    /// Only this port, or every port and protocol when `None`.
    pub port: Option<PortRule>,
}

impl AllowRule {
    /// The network, for address rules.
    pub fn net(&self) -> Option<Ipv4Net> {
        match &self.target {
            Target::Net(n) => Some(*n),
            Target::Host(_) => None,
        }
    }

    /// The host name, for host-name rules.
    pub fn host(&self) -> Option<&str> {
        match &self.target {
            Target::Host(h) => Some(h),
            Target::Net(_) => None,
        }
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.target.fmt(f)?;
        match self.port {
            None => Ok(()),
            Some(PortRule {
                port,
                protocol: Protocol::Tcp,
            }) => write!(f, ":{port}"),
            Some(PortRule {
                port,
                protocol: Protocol::Udp,
            }) => write!(f, ":{port}/udp"),
        }
    }
}

/// Longest host name (RFC 1035, without the trailing dot).
pub const MAX_HOST_LEN: usize = 253;

fn check_host(name: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("empty host name".into());
    }
    if name.len() > MAX_HOST_LEN {
        return Err(format!(
            "host name is {} bytes, longer than {MAX_HOST_LEN}",
            name.len()
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for l in &labels {
        if l.is_empty() {
            return Err("empty label in host name".into());
        }
        if l.len() > 63 {
            return Err(format!("label {l:?} is longer than 63 bytes"));
        }
        if let Some(c) = l
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "{c:?} is not allowed in a host name (letters, digits, '-' and '_')"
            ));
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err(format!("label {l:?} starts or ends with '-'"));
        }
    }
    // "10.0.0.300" or "1.2.3" are mistyped addresses, not names.
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("not an IPv4 address, and a host name cannot end in a numeric label".into());
    }
    Ok(name.to_ascii_lowercase())
}

fn parse_net(s: &str) -> Result<Option<Ipv4Net>, String> {
    match s.split_once('/') {
        Some((a, p)) => {
            let addr: Ipv4Addr = a
                .parse()
                .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
            let prefix: u8 = p
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| format!("{p:?} is not a prefix length (0..=32)"))?;
            Ipv4Net::new(addr, prefix).map(Some).ok_or_else(|| {
                format!(
                    "host bits are set; did you mean {}?",
                    Ipv4Net::truncate(addr, prefix)
                )
            })
        }
        None => Ok(s.parse::<Ipv4Addr>().ok().map(Ipv4Net::host)),
    }
}

impl FromStr for AllowRule {
    type Err = EgressError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| EgressError::BadSpec {
            spec: spec.to_owned(),
            reason,
        };
        let s = spec.trim();
        if s.is_empty() {
            return Err(bad("empty rule".into()));
        }
        if s.starts_with('[') || s.matches(':').count() > 1 {
            return Err(bad(
                "IPv6 destinations are not supported: machines have IPv4 networking only".into(),
            ));
        }
        let (target, port) = match s.rsplit_once(':') {
            Some((t, p)) => (t, Some(p)),
            None => (s, None),
        };
        let port = port
            .map(|p| {
                let (num, proto) = match p.split_once('/') {
                    Some((n, pr)) => (n, Some(pr)),
                    None => (p, None),
                };
                let protocol = match proto.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("tcp") => Protocol::Tcp,
                    Some("udp") => Protocol::Udp,
                    Some(other) => {
                        return Err(format!("protocol {other:?} is not tcp or udp"));
                    }
                };
                let port: u16 = num
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{num:?} is not a port (1..=65535)"))?;
                Ok(PortRule { port, protocol })
            })
            .transpose()
            .map_err(bad)?;
        let target = match parse_net(target).map_err(bad)? {
            Some(n) => Target::Net(n),
            None => Target::Host(check_host(target).map_err(bad)?),
        };
        Ok(AllowRule { target, port })
    }
}

/// What happens to destinations no rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DefaultAction {
    /// Allowed (`allow-all`).
    #[default]
    Allow,
    /// Refused (`deny-all`, or any `allow=` list without `allow-all`).
    Deny,
}

/// A machine's egress policy. The default, `allow-all`, is mvm's behaviour
/// before policies existed, minus the always-blocked set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct EgressPolicy {
    /// Destinations no rule names.
    pub default: DefaultAction,
    /// Allowed destinations, in the order given, without duplicates.
    pub allow: Vec<AllowRule>,
}

impl EgressPolicy {
    /// `allow-all`.
    pub fn allow_all() -> Self {
        Self {
            default: DefaultAction::Allow,
            allow: Vec::new(),
        }
    }

    /// `deny-all`.
    pub fn deny_all() -> Self {
        Self {
            default: DefaultAction::Deny,
            allow: Vec::new(),
        }
    }

    /// Only `rules`.
    pub fn allow_only(rules: impl IntoIterator<Item = AllowRule>) -> Self {
        let mut p = Self::deny_all();
        for r in rules {
            p.push(r);
        }
        p
    }

    fn push(&mut self, r: AllowRule) {
        if !self.allow.contains(&r) {
            self.allow.push(r);
        }
    }

    /// Combine the values of several `--egress` flags (see the module
    /// docs). An empty list is `allow-all`.
    pub fn from_flags<S: AsRef<str>>(values: &[S]) -> Result<Self, EgressError> {
        let mut preset: Option<DefaultAction> = None;
        let mut rules = Vec::new();
        for v in values {
            let v = v.as_ref().trim();
            match v {
                "allow-all" | "deny-all" => {
                    let d = if v == "allow-all" {
                        DefaultAction::Allow
                    } else {
                        DefaultAction::Deny
                    };
                    if preset.is_some_and(|p| p != d) {
                        return Err(EgressError::Conflict {
                            value: values
                                .iter()
                                .map(|s| s.as_ref())
                                .collect::<Vec<_>>()
                                .join(" "),
                        });
                    }
                    preset = Some(d);
                }
                _ => {
                    let list = v
                        .strip_prefix("allow=")
                        .ok_or_else(|| EgressError::BadValue { value: v.into() })?;
                    for spec in list.split(',') {
                        rules.push(spec.parse::<AllowRule>()?);
                    }
                }
            }
        }
        let default = match preset {
            Some(d) => d,
            None if rules.is_empty() => DefaultAction::Allow,
            None => DefaultAction::Deny,
        };
        let mut p = Self {
            default,
            allow: Vec::new(),
        };
        for r in rules {
            p.push(r);
        }
        Ok(p)
    }

    /// The flag values that give this policy (what [`fmt::Display`] joins
    /// with spaces).
    pub fn to_flags(&self) -> Vec<String> {
        let list = || {
            format!(
                "allow={}",
                self.allow
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        match (self.default, self.allow.is_empty()) {
            (DefaultAction::Allow, true) => vec!["allow-all".into()],
            (DefaultAction::Deny, true) => vec!["deny-all".into()],
            (DefaultAction::Allow, false) => vec!["allow-all".into(), list()],
            (DefaultAction::Deny, false) => vec![list()],
        }
    }

    /// The host names the policy names, sorted, without duplicates.
    pub fn host_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.allow.iter().filter_map(AllowRule::host).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether a DNS query for `name` may be answered: every name under
    /// `allow-all`, else exactly the host names of the rules
    /// (case-insensitive, a trailing dot ignored).
    pub fn allows_name(&self, name: &str) -> bool {
        if self.default == DefaultAction::Allow {
            return true;
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        self.allow
            .iter()
            .filter_map(AllowRule::host)
            .any(|h| h.eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_flags().join(" "))
    }
}

impl FromStr for EgressPolicy {
    type Err = EgressError;

    /// Flag values separated by whitespace; an empty string is an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let values: Vec<&str> = s.split_whitespace().collect();
        if values.is_empty() {
            return Err(EgressError::BadValue { value: s.into() });
        }
        Self::from_flags(&values)
    }
}

impl Serialize for EgressPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EgressPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for AllowRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AllowRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(s: &str) -> AllowRule {
        s.parse().unwrap()
    }

    #[test]
    fn presets_and_lists() {
        assert_eq!(
            EgressPolicy::from_flags(&["allow-all"]).unwrap(),
            EgressPolicy::allow_all()
        );
        assert_eq!(
            EgressPolicy::from_flags(&["deny-all"]).unwrap(),
            EgressPolicy::deny_all()
        );
        assert_eq!(
            EgressPolicy::from_flags::<&str>(&[]).unwrap(),
            EgressPolicy::allow_all()
        );
        let p =
            EgressPolicy::from_flags(&["allow=10.0.0.0/8,pypi.org:443", "allow=1.2.3.4:53/udp"])
                .unwrap();
        assert_eq!(p.default, DefaultAction::Deny);
        assert_eq!(p.allow.len(), 3);
        assert_eq!(
            p.to_string(),
            "allow=10.0.0.0/8,pypi.org:443,1.2.3.4:53/udp"
        );
        assert_eq!(p.host_names(), ["pypi.org"]);
        // deny-all with a list is the list.
        assert_eq!(
            EgressPolicy::from_flags(&["deny-all", "allow=10.0.0.0/8,pypi.org:443,1.2.3.4:53/udp"])
                .unwrap(),
            p
        );
        let p = EgressPolicy::from_flags(&["allow-all", "allow=169.254.169.254"]).unwrap();
        assert_eq!(p.default, DefaultAction::Allow);
        assert_eq!(p.to_string(), "allow-all allow=169.254.169.254");
        assert_eq!(p.to_string().parse::<EgressPolicy>().unwrap(), p);
        // Duplicates collapse.
        let p =
            EgressPolicy::from_flags(&["allow=a.example,a.example", "allow=A.Example."]).unwrap();
        assert_eq!(p.allow, [rule("a.example")]);
    }

    #[test]
    fn spec_forms() {
        let r = rule("203.0.113.7:80");
        assert_eq!(r.net(), Some(Ipv4Net::host("203.0.113.7".parse().unwrap())));
        assert_eq!(
            r.port,
            Some(PortRule {
                port: 80,
                protocol: Protocol::Tcp
            })
        );
        assert_eq!(rule("203.0.113.7:80/tcp"), r);
        assert_eq!(rule("203.0.113.7:80/TCP").to_string(), "203.0.113.7:80");
        assert_eq!(
            rule("192.0.2.0/24:53/udp").to_string(),
            "192.0.2.0/24:53/udp"
        );
        assert_eq!(rule("192.0.2.9/32").to_string(), "192.0.2.9");
        assert_eq!(rule("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(rule("Test-Host.Example.").to_string(), "test-host.example");
        assert_eq!(rule("localhost").host(), Some("localhost"));
    }

    #[test]
    fn errors_name_the_bad_spec() {
        for (bad, why) in [
            ("", "empty"),
            ("10.0.0.1/24", "did you mean 10.0.0.0/24"),
            ("10.0.0.0/33", "prefix"),
            ("10.0.0.300", "numeric label"),
            ("1.2.3", "numeric label"),
            ("host:0", "not a port"),
            ("host:65536", "not a port"),
            ("host:x", "not a port"),
            ("host:80/sctp", "not tcp or udp"),
            ("fd00:ec2::254", "IPv6"),
            ("[::1]:80", "IPv6"),
            ("bad_host!.example", "not allowed"),
            ("-x.example", "starts or ends"),
            ("a..b", "empty label"),
        ] {
            let e = EgressPolicy::from_flags(&[format!("allow=ok.example,{bad}")])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains(why),
                "{bad}: {e}"
            );
        }
        let e = EgressPolicy::from_flags(&["allow-none"]).unwrap_err();
        assert!(e.to_string().contains("\"allow-none\""), "{e}");
        let e = EgressPolicy::from_flags(&["allow-all", "deny-all"]).unwrap_err();
        assert!(matches!(e, EgressError::Conflict { .. }), "{e}");
        assert!("".parse::<EgressPolicy>().is_err());
    }

    #[test]
    fn names_allowed_by_dns() {
        let p: EgressPolicy = "allow=pypi.org:443,10.0.0.1".parse().unwrap();
        assert!(p.allows_name("pypi.org"));
        assert!(p.allows_name("PyPI.org."));
        assert!(!p.allows_name("files.pypi.org"));
        assert!(!p.allows_name("evil.example"));
        assert!(EgressPolicy::allow_all().allows_name("anything.example"));
        assert!(!EgressPolicy::deny_all().allows_name("pypi.org"));
    }

    #[test]
    fn within() {
        let sub = Ipv4Net::new("172.16.0.0".parse().unwrap(), 24).unwrap();
        let ll = Ipv4Net::new("169.254.0.0".parse().unwrap(), 16).unwrap();
        assert!(rule("172.16.0.0/24").net().unwrap().is_within(&sub));
        assert!(rule("172.16.0.9").net().unwrap().is_within(&sub));
        assert!(!rule("172.16.0.0/12").net().unwrap().is_within(&sub));
        assert!(!rule("0.0.0.0/0").net().unwrap().is_within(&ll));
        assert!(rule("169.254.169.254").net().unwrap().is_within(&ll));
        assert_eq!(
            Ipv4Net::truncate("10.1.2.3".parse().unwrap(), 8).to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(sub.last(), "172.16.0.255".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn serde_is_the_display_string() {
        let p: EgressPolicy = "allow-all allow=169.254.169.254,x.example:53/udp"
            .parse()
            .unwrap();
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, "\"allow-all allow=169.254.169.254,x.example:53/udp\"");
        assert_eq!(serde_json::from_str::<EgressPolicy>(&j).unwrap(), p);
        let e = serde_json::from_str::<EgressPolicy>("\"allow=1.2.3.4:0\"").unwrap_err();
        assert!(e.to_string().contains("1.2.3.4:0"), "{e}");
    }

    fn arb_label() -> impl Strategy<Value = String> {
        "[a-z0-9_]([a-z0-9_-]{0,10}[a-z0-9_])?"
    }

    fn arb_rule() -> impl Strategy<Value = AllowRule> {
        let net = (any::<u32>(), 0u8..=32)
            .prop_map(|(a, p)| Target::Net(Ipv4Net::truncate(Ipv4Addr::from(a), p)));
        let host = (
            proptest::collection::vec(arb_label(), 0..3),
            "[a-z][a-z0-9-]{0,5}[a-z]",
        )
            .prop_map(|(mut ls, tld)| {
                ls.push(tld);
                Target::Host(ls.join("."))
            });
        let port = proptest::option::of((1u16.., any::<bool>()).prop_map(|(port, udp)| PortRule {
            port,
            protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        }));
        (prop_oneof![net, host], port).prop_map(|(target, port)| AllowRule { target, port })
    }

    proptest! {
        #[test]
        fn rule_round_trips(r in arb_rule()) {
            let s = r.to_string();
            prop_assert_eq!(s.parse::<AllowRule>().unwrap(), r);
        }

        #[test]
        fn policy_round_trips(
            allow in any::<bool>(),
            rules in proptest::collection::vec(arb_rule(), 0..6),
        ) {
            let mut p = EgressPolicy::allow_only(rules);
            if allow {
                p.default = DefaultAction::Allow;
            }
            let s = p.to_string();
            prop_assert_eq!(s.parse::<EgressPolicy>().unwrap(), p.clone());
            prop_assert_eq!(EgressPolicy::from_flags(&p.to_flags()).unwrap(), p);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<AllowRule>();
            let _ = s.parse::<EgressPolicy>();
        }
    }
}
