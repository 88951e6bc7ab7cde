//! Egress policy enforcement on the host, per machine, with nftables.
//!
//! # Rule layout
//!
//! Each machine gets **two nftables tables of its own**, both named
//! `mvm-eg-<TAP>` (so `nft list tables` shows whose they are, and gc finds
//! them by the prefix [`TABLE_PREFIX`]):
//!
//! ```text
//! table bridge mvm-eg-<TAP>               keyed on the TAP (the bridge port)
//!   chain eg_guard  hook prerouting  prio filter    frames entering from the TAP:
//!       source MAC must be the machine's, ARP/IPv4 source address must be
//!       the machine's (anti-spoofing: makes the source IP a reliable key
//!       below), ARP and IPv4 pass, everything else (IPv6 — hence
//!       fd00:ec2::254 —, VLAN tags, other ethertypes) is dropped
//!   chain eg_peers  hook forward     prio filter    frames bridged to another
//!       port, i.e. to other machines: only destinations inside the machine
//!       subnet that a rule names by address, and their ARP (stateless,
//!       see below)
//! table ip mvm-eg-<TAP>                   keyed on iif = bridge + source IP
//!   chain eg_dns    hook prerouting  prio dstnat    DNS to the gateway:53 goes
//!       to this machine's DNS filter (`redirect to :PORT`), if it has one
//!   chain eg_routed hook forward     prio filter-10 routed traffic (to the
//!       world, through the host's NAT)
//!   chain eg_local  hook input       prio filter-10 traffic to the host itself
//!       (any of its addresses): only replies, the DNS filter, and /32 rules
//!   chain eg_rules  (jumped to)      the policy, in this order:
//!       exempt rules (address rules inside an always-blocked range) accept,
//!       always-blocked ranges refuse, other address rules and resolved
//!       host names accept, `allow-all` accept, everything else refuse
//! ```
//!
//! Refused packets are counted in the named counter `refused` of each
//! table and answered (routed/local: TCP reset or ICMP admin-prohibited, so
//! a tool in the guest fails at once instead of hanging; bridge: dropped,
//! bridge-family reject is not available everywhere). Anti-spoofing drops
//! are counted in `spoofed`. IPv6 and multicast noise are dropped without
//! counting, so `refused` means "the guest tried to reach something".
//!
//! Why these hooks: on a bridge, traffic between two ports never reaches
//! the IP layer (unless the host-wide `br_netfilter` is on), so a rule
//! keyed on the TAP can only live in the bridge family. Routed and local
//! traffic is seen by the IP layer with the *bridge* as input interface,
//! where the bridge port is no longer known; the anti-spoofing chain makes
//! "input interface = the bridge and source = the machine's IP" name the
//! machine exactly, and the IP family gives conntrack (replies to
//! connections made *to* the guest, e.g. by the `-p` forwarder, are
//! accepted with `ct direction reply`). Every packet the guest originates
//! is checked against the policy, not just the first of a connection, so a
//! policy change cuts existing connections too.
//!
//! Each table is self-contained and is only ever replaced as a whole,
//! inside one `nft -f` transaction: [`apply`] (first policy, or `mvm
//! update`) is atomic, and [`release`] (`add table; delete table` for both)
//! is atomic and idempotent and needs only the TAP name. The `refused`
//! counters are carried over when a policy is replaced.
//!
//! Machine-to-machine traffic is stateless: a ping from A to B works only
//! when both A's and B's policies name the other (e.g. both
//! `allow=172.16.0.0/24`).
//!
//! Allowed addresses live in single-field interval sets, one per port
//! (`allow_any`, `allow_tcp_80`, `allow_udp_53`, ...; see `Groups` for why
//! not one concatenated `addr . proto . port` set). Host names are
//! resolved on the host ([`crate::dns::resolve`]) and their addresses put
//! into the sets `names_*` (with the name as element comment);
//! [`update_hosts`] replaces just those sets, atomically, when the
//! answers' TTL runs out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use mvm_core::egress::{AllowRule, DefaultAction, EgressPolicy, Ipv4Net, PortRule};
use mvm_core::instance::NetAllocation;
use serde::Deserialize;

use crate::config::{NetConfig, Subnet};
use crate::nat::{self, NatError};

/// Prefix of both tables of a machine: `mvm-eg-<TAP>`.
pub const TABLE_PREFIX: &str = "mvm-eg-";

/// The program that talks to nftables.
pub const NFT: &str = "nft";

/// Ranges no packet from a machine reaches unless a rule names an address
/// inside them (the machine subnet is added per machine). 169.254.0.0/16
/// holds the cloud metadata services.
pub const ALWAYS_BLOCKED: [(Ipv4Addr, u8); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Egress enforcement errors.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Running `nft` failed.
    #[error("{what}")]
    Nft {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: NatError,
    },
    /// `nft -j` printed something this module cannot read.
    #[error("cannot read the output of `nft -j {args}`")]
    Json {
        /// The arguments.
        args: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A name cannot go into a ruleset.
    #[error("invalid interface name {name:?} for an egress rule: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// The `nft` front end.
#[derive(Debug, Clone)]
pub struct Nft {
    /// Program (default [`NFT`]).
    pub program: String,
}

impl Default for Nft {
    fn default() -> Self {
        Self {
            program: NFT.into(),
        }
    }
}

impl Nft {
    /// Run one ruleset script as a single transaction (`nft -f -`).
    pub fn run_script(&self, what: &str, script: &str) -> Result<(), EgressError> {
        let args = vec!["-f".to_owned(), "-".to_owned()];
        let err = |source| EgressError::Nft {
            what: what.to_owned(),
            source,
        };
        let o = nat::run_with_input(
            &self.program,
            "nftables",
            &args,
            Some(script.as_bytes().to_vec()),
        )
        .map_err(err)?;
        if o.ok {
            Ok(())
        } else {
            Err(err(NatError::Failed {
                argv: format!("{} -f - <<'EOF'\n{script}EOF", self.program),
                status: o.status,
                stderr: o.stderr.trim().to_owned(),
            }))
        }
    }

    /// `nft -j ARGS`, parsed. `Ok(None)` when nft says the object does not
    /// exist.
    fn json(&self, args: &[&str]) -> Result<Option<Vec<NftObject>>, EgressError> {
        let mut v = vec!["-j".to_owned()];
        v.extend(args.iter().map(|s| s.to_string()));
        let what = format!("nft -j {}", args.join(" "));
        let o = nat::run_with_input(&self.program, "nftables", &v, None).map_err(|source| {
            EgressError::Nft {
                what: what.clone(),
                source,
            }
        })?;
        if !o.ok {
            if o.stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(EgressError::Nft {
                what: what.clone(),
                source: NatError::Failed {
                    argv: format!("{} {}", self.program, v.join(" ")),
                    status: o.status,
                    stderr: o.stderr.trim().to_owned(),
                },
            });
        }
        let out: NftOutput =
            serde_json::from_str(&o.stdout).map_err(|source| EgressError::Json {
                args: args.join(" "),
                source,
            })?;
        Ok(Some(out.nftables))
    }
}

// ---- what `nft -j list ...` prints (only the parts read here) ----

#[derive(Debug, Deserialize)]
struct NftOutput {
    nftables: Vec<NftObject>,
}

#[derive(Debug, Default, Deserialize)]
struct NftObject {
    table: Option<NftTable>,
    counter: Option<NftCounter>,
    set: Option<NftSet>,
}

#[derive(Debug, Deserialize)]
struct NftTable {
    family: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct NftCounter {
    name: String,
    packets: u64,
    bytes: u64,
}

#[derive(Debug, Deserialize)]
struct NftSet {
    name: String,
    #[serde(default)]
    elem: Vec<serde_json::Value>,
}

/// The table name of the machine whose TAP is `tap`.
pub fn table_name(tap: &str) -> String {
    format!("{TABLE_PREFIX}{tap}")
}

/// Names that go into a ruleset (inside double quotes) must be plain.
fn check_name(name: &str) -> Result<(), EgressError> {
    crate::config::validate_ifname(name)
        .and_then(|()| {
            match name
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            {
                Some(c) => Err(format!("{c:?} is not allowed here")),
                None => Ok(()),
            }
        })
        .map_err(|reason| EgressError::BadName {
            name: name.to_owned(),
            reason,
        })
}

/// What the rules need to know about one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineEgress {
    /// Machine name (a table comment, for people reading `nft list`).
    pub machine: String,
    /// Its TAP (the key of its rules).
    pub tap: String,
    /// The bridge the TAP is attached to.
    pub bridge: String,
    /// The guest's MAC.
    pub mac: String,
    /// The guest's IPv4 address.
    pub ip: Ipv4Addr,
    /// The machine subnet (its gateway is the bridge address).
    pub subnet: Subnet,
    /// Port of the machine's DNS filter on the gateway address
    /// ([`crate::dns::DnsFilter`]); guest queries to gateway:53 are
    /// redirected there. `None`: no DNS service on the gateway.
    pub dns_port: Option<u16>,
}

impl MachineEgress {
    /// From the network configuration and the machine's allocation.
    pub fn new(
        cfg: &NetConfig,
        machine: &str,
        alloc: &NetAllocation,
        dns_port: Option<u16>,
    ) -> Self {
        Self {
            machine: machine.to_owned(),
            tap: alloc.tap.clone(),
            bridge: cfg.bridge.clone(),
            mac: alloc.mac.clone(),
            ip: alloc.ip,
            subnet: cfg.subnet,
            dns_port,
        }
    }
}

/// Resolved host names: name → IPv4 addresses (empty when it did not
/// resolve).
pub type ResolvedHosts = BTreeMap<String, Vec<Ipv4Addr>>;

/// Refusal counters of one machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EgressCounters {
    /// Packets refused by the policy (connection attempts, datagrams).
    pub refused_packets: u64,
    /// Their bytes.
    pub refused_bytes: u64,
    /// Frames dropped because their source MAC/IP was not the machine's.
    pub spoofed_packets: u64,
}

/// What the host enforces for one machine right now (for `inspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EgressStatus {
    /// Counters.
    pub counters: EgressCounters,
    /// Host names of the policy and the addresses currently allowed for
    /// them.
    pub resolved: ResolvedHosts,
}

/// One element of an address set: a network, optionally with a port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Elem {
    net: Ipv4Net,
    port: Option<PortRule>,
    comment: Option<String>,
}

impl Elem {
    fn covers(&self, other: &Elem) -> bool {
        other.net.is_within(&self.net) && (self.port.is_none() || self.port == other.port)
    }
}

/// Drop elements covered by another one (interval sets reject overlaps).
fn minimal(mut v: Vec<Elem>) -> Vec<Elem> {
    v.sort();
    v.dedup_by(|a, b| a.net == b.net && a.port == b.port);
    let all = v.clone();
    v.into_iter()
        .filter(|e| {
            !all.iter()
                .any(|o| (o.net != e.net || o.port != e.port) && o.covers(e))
        })
        .collect()
}

/// Address sets of one kind, one per port (or "any port"): the elements
/// of `PREFIX_any` and of `PREFIX_tcp_80`, `PREFIX_udp_53`, ...
///
/// Single-field interval sets only: the kernel keeps them in an rbtree
/// whose elements switch generation atomically with the rules. A
/// concatenated `addr . proto . port` interval set (pipapo) is populated
/// from a clone that is swapped in only after the new rules are live; in
/// that window (measured here: a few SYNs in 1000 during repeated
/// updates) lookups miss and allowed packets were refused.
#[derive(Debug, Default)]
struct Groups(BTreeMap<Option<PortRule>, Vec<Elem>>);

impl Groups {
    fn new(v: Vec<Elem>) -> Self {
        let mut g = Groups::default();
        for e in minimal(v) {
            g.0.entry(e.port).or_default().push(e);
        }
        g
    }

    /// Add an empty group for every port `policy` names with a host name
    /// (so a later [`update_hosts`] finds the set).
    fn with_ports(mut self, ports: impl IntoIterator<Item = Option<PortRule>>) -> Self {
        for p in ports {
            self.0.entry(p).or_default();
        }
        self
    }

    fn set_name(prefix: &str, port: Option<PortRule>) -> String {
        match port {
            None => format!("{prefix}_any"),
            Some(p) => format!("{prefix}_{}_{}", p.protocol.as_str(), p.port),
        }
    }

    fn sets(&self, out: &mut String, prefix: &str) {
        if !self.0.contains_key(&None) {
            fmt_set(out, &Self::set_name(prefix, None), &[]);
        }
        for (port, elems) in &self.0 {
            fmt_set(out, &Self::set_name(prefix, *port), elems);
        }
    }

    /// One `accept` rule per set (`ip daddr @S [tcp dport P] accept`).
    fn rules(&self, out: &mut String, prefix: &str) {
        let _ = writeln!(out, "    ip daddr @{} accept", Self::set_name(prefix, None));
        for port in self.0.keys().flatten() {
            let _ = writeln!(
                out,
                "    ip daddr @{} {} dport {} accept",
                Self::set_name(prefix, Some(*port)),
                port.protocol.as_str(),
                port.port
            );
        }
    }
}

fn fmt_set(out: &mut String, name: &str, elems: &[Elem]) {
    let _ = write!(out, "  set {name} {{ type ipv4_addr; flags interval;");
    if !elems.is_empty() {
        out.push_str(" elements = { ");
        for (i, e) in elems.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}", e.net);
            if let Some(c) = &e.comment {
                // Host names are checked by mvm_core::egress: [a-z0-9._-].
                let _ = write!(out, " comment \"{c}\"");
            }
        }
        out.push_str(" }");
    }
    out.push_str(" }\n");
}

fn address_elems(rules: &[&AllowRule]) -> Vec<Elem> {
    rules
        .iter()
        .filter_map(|r| {
            r.net().map(|net| Elem {
                net,
                port: r.port,
                comment: None,
            })
        })
        .collect()
}

fn name_elems(policy: &EgressPolicy, hosts: &ResolvedHosts) -> Vec<Elem> {
    let mut v = Vec::new();
    for r in &policy.allow {
        if let Some(h) = r.host() {
            for ip in hosts.get(h).into_iter().flatten() {
                v.push(Elem {
                    net: Ipv4Net::host(*ip),
                    port: r.port,
                    comment: Some(h.to_owned()),
                });
            }
        }
    }
    v
}

fn name_groups(policy: &EgressPolicy, hosts: &ResolvedHosts) -> Groups {
    Groups::new(name_elems(policy, hosts)).with_ports(
        policy
            .allow
            .iter()
            .filter(|r| r.host().is_some())
            .map(|r| r.port),
    )
}

/// The always-blocked ranges for a machine of `subnet`.
pub fn blocked_ranges(subnet: &Subnet) -> Vec<Ipv4Net> {
    let mut v: Vec<Ipv4Net> = ALWAYS_BLOCKED
        .iter()
        .map(|(a, p)| Ipv4Net::truncate(*a, *p))
        .collect();
    v.push(Ipv4Net::truncate(subnet.network(), subnet.prefix()));
    v
}

const REFUSE_TCP: &str = "meta l4proto tcp counter name \"refused\" reject with tcp reset";
const REFUSE_OTHER: &str = "counter name \"refused\" reject with icmp type admin-prohibited";

/// The ruleset that (re)creates both tables of `m`, as one `nft -f`
/// script: `add table` + `delete table` (so it works whether or not the
/// table exists) and the full definition, all in one transaction.
/// `carry` seeds the `refused`/`spoofed` counters.
pub fn ruleset(
    m: &MachineEgress,
    policy: &EgressPolicy,
    hosts: &ResolvedHosts,
    carry: &EgressCounters,
) -> Result<String, EgressError> {
    check_name(&m.tap)?;
    check_name(&m.bridge)?;
    let table = table_name(&m.tap);
    let blocked = blocked_ranges(&m.subnet);
    let subnet = Ipv4Net::truncate(m.subnet.network(), m.subnet.prefix());
    let gw = m.subnet.gateway();
    // MAC: checked as six hex octets so nothing else reaches the script.
    let mac = parse_mac(&m.mac).ok_or_else(|| EgressError::BadName {
        name: m.mac.clone(),
        reason: "not a MAC address".into(),
    })?;

    let addr_rules: Vec<&AllowRule> = policy.allow.iter().filter(|r| r.net().is_some()).collect();
    let (exempt, other): (Vec<&AllowRule>, Vec<&AllowRule>) = addr_rules
        .iter()
        .partition(|r| blocked.iter().any(|b| r.net().unwrap().is_within(b)));
    let host_rules: Vec<&AllowRule> = addr_rules
        .iter()
        .copied()
        .filter(|r| r.net().unwrap().prefix() == 32)
        .collect();
    let peer_rules: Vec<&AllowRule> = addr_rules
        .iter()
        .copied()
        .filter(|r| r.net().unwrap().is_within(&subnet))
        .collect();

    let mut s = String::new();
    for fam in ["bridge", "ip"] {
        let _ = writeln!(s, "add table {fam} {table}\ndelete table {fam} {table}");
    }
    let comment = format!(
        "mvm:egress machine {}",
        m.machine
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>()
    );

    // ---- bridge family: anti-spoofing and machine-to-machine ----
    let peers = Groups::new(address_elems(&peer_rules));
    // ARP has no ports: a port rule for a peer still needs its ARP.
    let peers_arp = minimal(
        address_elems(&peer_rules)
            .into_iter()
            .map(|e| Elem { port: None, ..e })
            .collect(),
    );
    let _ = writeln!(s, "table bridge {table} {{\n  comment \"{comment}\"");
    let _ = writeln!(
        s,
        "  counter refused {{ packets 0 bytes 0 }}\n  counter spoofed {{ packets {} bytes 0 }}",
        carry.spoofed_packets
    );
    peers.sets(&mut s, "peers");
    fmt_set(&mut s, "peers_arp", &peers_arp);
    let mut peer_rules_txt = String::new();
    peers.rules(&mut peer_rules_txt, "peers");
    let tap = &m.tap;
    let ip = m.ip;
    let _ = write!(
        s,
        "  chain eg_guard {{ type filter hook prerouting priority filter; policy accept;
    iifname != \"{tap}\" accept
    ether saddr != {mac} counter name \"spoofed\" drop
    ether type arp arp saddr ether != {mac} counter name \"spoofed\" drop
    ether type arp arp saddr ip != {ip} counter name \"spoofed\" drop
    ether type arp accept
    ether type ip ip saddr != {ip} counter name \"spoofed\" drop
    ether type ip accept
    drop
  }}
  chain eg_peers {{ type filter hook forward priority filter; policy accept;
    iifname != \"{tap}\" accept
    ether type arp arp daddr ip @peers_arp accept
{peer_rules_txt}    ether type arp arp daddr ip {gw} drop
    meta pkttype {{ broadcast, multicast }} drop
    counter name \"refused\" drop
  }}
}}
"
    );

    // ---- ip family: routed and local traffic ----
    let exempt = Groups::new(address_elems(&exempt));
    let allow = Groups::new(address_elems(&other));
    let local = Groups::new(address_elems(&host_rules));
    let names = name_groups(policy, hosts);
    let br = &m.bridge;
    let _ = writeln!(s, "table ip {table} {{\n  comment \"{comment}\"");
    let _ = writeln!(
        s,
        "  counter refused {{ packets {} bytes {} }}",
        carry.refused_packets, carry.refused_bytes
    );
    exempt.sets(&mut s, "exempt");
    allow.sets(&mut s, "allow");
    local.sets(&mut s, "host");
    names.sets(&mut s, "names");
    let mut local_txt = String::new();
    local.rules(&mut local_txt, "host");
    let mut rules_txt = String::new();
    exempt.rules(&mut rules_txt, "exempt");
    rules_txt.push_str("    ip daddr @blocked goto eg_refuse\n");
    allow.rules(&mut rules_txt, "allow");
    names.rules(&mut rules_txt, "names");
    let blocked_list = blocked
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        s,
        "  set blocked {{ type ipv4_addr; flags interval; elements = {{ {blocked_list} }} }}"
    );
    if let Some(port) = m.dns_port {
        let _ = writeln!(
            s,
            "  chain eg_dns {{ type nat hook prerouting priority dstnat; policy accept;
    iifname \"{br}\" ip saddr {ip} ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 redirect to :{port}
  }}"
        );
    }
    let dns_rule = match m.dns_port {
        Some(port) => format!(
            "    ip daddr {gw} meta l4proto {{ tcp, udp }} th dport {port} ct original proto-dst 53 accept\n"
        ),
        None => String::new(),
    };
    let allow_all = match policy.default {
        DefaultAction::Allow => "    accept\n",
        DefaultAction::Deny => "",
    };
    let _ = write!(
        s,
        "  chain eg_routed {{ type filter hook forward priority filter - 10; policy accept;
    iifname != \"{br}\" accept
    ip saddr != {ip} accept
    ct direction reply accept
    ct state related accept
    jump eg_rules
  }}
  chain eg_local {{ type filter hook input priority filter - 10; policy accept;
    iifname != \"{br}\" accept
    ip saddr != {ip} accept
    ct direction reply accept
    ct state related accept
{dns_rule}{local_txt}    {REFUSE_TCP}
    {REFUSE_OTHER}
  }}
  chain eg_rules {{
{rules_txt}{allow_all}    goto eg_refuse
  }}
  chain eg_refuse {{
    {REFUSE_TCP}
    {REFUSE_OTHER}
  }}
}}
"
    );
    Ok(s)
}

fn parse_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    (parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit())))
    .then(|| s.to_ascii_lowercase())
}

/// Install or replace (atomically, in one transaction) the policy of
/// machine `m`, keeping its counters. Call it before the VMM runs (the
/// TAP need not exist yet: rules match its name) and for `mvm update`.
pub fn apply(
    nft: &Nft,
    m: &MachineEgress,
    policy: &EgressPolicy,
    hosts: &ResolvedHosts,
) -> Result<(), EgressError> {
    let carry = counters(nft, &m.tap)?.unwrap_or_default();
    let script = ruleset(m, policy, hosts, &carry)?;
    nft.run_script(
        &format!(
            "applying egress policy `{policy}` of machine {:?} (TAP {})",
            m.machine, m.tap
        ),
        &script,
    )
}

/// Replace only the resolved host-name addresses of a machine whose
/// policy is applied (after re-resolution), atomically. Names of the
/// policy missing from `hosts` lose their addresses.
pub fn update_hosts(
    nft: &Nft,
    tap: &str,
    policy: &EgressPolicy,
    hosts: &ResolvedHosts,
) -> Result<(), EgressError> {
    check_name(tap)?;
    let table = table_name(tap);
    let names = name_groups(policy, hosts);
    let mut s = String::new();
    for port in names.0.keys() {
        let _ = writeln!(
            s,
            "flush set ip {table} {}",
            Groups::set_name("names", *port)
        );
    }
    let mut sets = String::new();
    names.sets(&mut sets, "names");
    // Re-declaring an existing set (same type and flags) adds its elements.
    let _ = write!(s, "table ip {table} {{\n{sets}}}\n");
    nft.run_script(&format!("updating resolved host names of TAP {tap}"), &s)
}

/// Remove both tables of the machine whose TAP is `tap`. Idempotent
/// (`add table` first, so `delete` always has something to delete) and
/// atomic; needs nothing but the TAP name. A missing `nft` means mvm never
/// installed a table, so that is success too.
pub fn release(nft: &Nft, tap: &str) -> Result<(), EgressError> {
    check_name(tap)?;
    let table = table_name(tap);
    let mut s = String::new();
    for fam in ["bridge", "ip"] {
        let _ = writeln!(s, "add table {fam} {table}\ndelete table {fam} {table}");
    }
    match nft.run_script(&format!("removing the egress rules of TAP {tap}"), &s) {
        Err(EgressError::Nft {
            source: NatError::Missing { .. },
            ..
        }) => Ok(()),
        r => r,
    }
}

/// The counters of a machine's tables, or `None` when it has none.
pub fn counters(nft: &Nft, tap: &str) -> Result<Option<EgressCounters>, EgressError> {
    Ok(status(nft, tap)?.map(|s| s.counters))
}

/// Counters and resolved addresses of the machine whose TAP is `tap`,
/// read from the kernel; `None` when it has no tables.
pub fn status(nft: &Nft, tap: &str) -> Result<Option<EgressStatus>, EgressError> {
    check_name(tap)?;
    let table = table_name(tap);
    let mut st = EgressStatus::default();
    let mut found = false;
    for fam in ["bridge", "ip"] {
        let objs = match nft.json(&["list", "table", fam, &table]) {
            Ok(Some(o)) => o,
            Ok(None) => continue,
            Err(EgressError::Nft {
                source: NatError::Missing { .. },
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        found = true;
        for o in objs {
            if let Some(c) = o.counter {
                match c.name.as_str() {
                    "refused" => {
                        st.counters.refused_packets += c.packets;
                        st.counters.refused_bytes += c.bytes;
                    }
                    "spoofed" => st.counters.spoofed_packets += c.packets,
                    _ => {}
                }
            }
            if let Some(set) = o.set
                && set.name.starts_with("names_")
            {
                for e in set.elem {
                    if let Some((name, ip)) = named_elem(&e) {
                        let v = st.resolved.entry(name).or_default();
                        if !v.contains(&ip) {
                            v.push(ip);
                            v.sort();
                        }
                    }
                }
            }
        }
    }
    Ok(found.then_some(st))
}

/// `{"elem": {"val": ADDR | {"concat": [ADDR, ...]}, "comment": NAME}}`.
fn named_elem(e: &serde_json::Value) -> Option<(String, Ipv4Addr)> {
    let e = e.get("elem")?;
    let name = e.get("comment")?.as_str()?.to_owned();
    let val = e.get("val")?;
    let addr = match val.get("concat") {
        Some(c) => c.get(0)?,
        None => val,
    };
    Some((name, addr.as_str()?.parse().ok()?))
}

/// A table of mvm's egress rules found on the host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EgressTable {
    /// `bridge` or `ip`.
    pub family: String,
    /// `mvm-eg-<TAP>`.
    pub name: String,
    /// The TAP it belongs to.
    pub tap: String,
}

impl std::fmt::Display for EgressTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nftables table {} {}", self.family, self.name)
    }
}

/// Every egress table on the host (empty when `nft` is not installed).
pub fn list_tables(nft: &Nft) -> Result<Vec<EgressTable>, EgressError> {
    let objs = match nft.json(&["list", "tables"]) {
        Ok(o) => o.unwrap_or_default(),
        Err(EgressError::Nft {
            source: NatError::Missing { .. },
            ..
        }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut v: Vec<EgressTable> = objs
        .into_iter()
        .filter_map(|o| o.table)
        .filter_map(|t| {
            let tap = t.name.strip_prefix(TABLE_PREFIX)?.to_owned();
            Some(EgressTable {
                family: t.family,
                name: t.name,
                tap,
            })
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Egress tables whose TAP no registered allocation names.
pub fn leftovers(nft: &Nft, registered: &[NetAllocation]) -> Result<Vec<EgressTable>, EgressError> {
    Ok(list_tables(nft)?
        .into_iter()
        .filter(|t| !registered.iter().any(|a| a.tap == t.tap))
        .collect())
}

/// What QEMU user-mode networking (rootless) can enforce of a policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserModeEgress {
    /// Start QEMU's user-mode network with `restrict=on` (the guest reaches
    /// nothing; `-p` forwards still work).
    pub restrict: bool,
    /// Whether the policy is enforced exactly.
    pub enforced: bool,
    /// One sentence for `inspect`/the CLI.
    pub note: String,
}

/// How a policy maps onto user-mode networking, where mvm has no packet
/// filter: `deny-all` becomes `restrict=on` (exact); `allow-all` runs
/// unrestricted and cannot keep the guest from the metadata service or
/// the host's services (slirp connects from the host's own process);
/// allowlists cannot be enforced: the caller should refuse to start
/// (or require root for a TAP).
pub fn user_mode(policy: &EgressPolicy) -> UserModeEgress {
    match (policy.default, policy.allow.is_empty()) {
        (DefaultAction::Deny, true) => UserModeEgress {
            restrict: true,
            enforced: true,
            note: "user-mode networking with restrict=on: the machine reaches nothing (published ports still work)".into(),
        },
        (DefaultAction::Allow, true) => UserModeEgress {
            restrict: false,
            enforced: false,
            note: "user-mode networking cannot filter: the machine reaches everything the host's user reaches, including 169.254.169.254 and services on the host (run as root for an enforced policy)".into(),
        },
        _ => UserModeEgress {
            restrict: true,
            enforced: false,
            note: format!(
                "user-mode networking cannot enforce `{policy}`; it would run with restrict=on (nothing reachable). Run as root for an enforced allowlist"
            ),
        },
    }
}

/// How long to wait before re-resolving host names whose smallest TTL was
/// `ttl`: at least 30 s (no hammering the resolver for TTL-0 names), at
/// most an hour.
pub fn refresh_after(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_secs(30), Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MachineEgress {
        MachineEgress {
            machine: "web".into(),
            tap: "mvm-abc123".into(),
            bridge: "mvmbr0".into(),
            mac: "02:6d:76:10:00:02".into(),
            ip: Ipv4Addr::new(172, 16, 0, 2),
            subnet: Subnet::parse("172.16.0.0/24").unwrap(),
            dns_port: Some(5353),
        }
    }

    #[test]
    fn ruleset_places_rules_by_kind() {
        let p: EgressPolicy =
            "allow=169.254.169.254,172.16.0.0/24,198.51.100.2:80,10.0.0.0/8:53/udp,test.example:443,10.1.0.0/16:53/udp"
                .parse()
                .unwrap();
        let mut hosts = ResolvedHosts::new();
        hosts.insert("test.example".into(), vec![Ipv4Addr::new(198, 51, 100, 9)]);
        let s = ruleset(&machine(), &p, &hosts, &EgressCounters::default()).unwrap();
        let line = |name: &str| {
            s.lines()
                .find(|l| l.trim_start().starts_with(&format!("set {name} ")))
                .unwrap_or_else(|| panic!("no set {name} in\n{s}"))
                .to_owned()
        };
        assert!(
            line("exempt_any").contains("169.254.169.254, 172.16.0.0/24"),
            "{s}"
        );
        assert!(line("peers_any").contains("{ 172.16.0.0/24 }"), "{s}");
        assert!(line("allow_tcp_80").contains("{ 198.51.100.2 }"), "{s}");
        assert!(
            s.contains("ip daddr @allow_tcp_80 tcp dport 80 accept"),
            "{s}"
        );
        // 10.1.0.0/16:53/udp is covered by 10.0.0.0/8:53/udp.
        assert!(line("allow_udp_53").contains("{ 10.0.0.0/8 }"), "{s}");
        assert!(line("host_any").contains("169.254.169.254"), "{s}");
        assert!(line("host_tcp_80").contains("198.51.100.2"), "{s}");
        assert!(
            line("names_tcp_443").contains("198.51.100.9 comment \"test.example\""),
            "{s}"
        );
        assert!(s.contains("redirect to :5353"), "{s}");
        // deny: no catch-all accept in eg_rules.
        let rules = s.split("chain eg_rules").nth(1).unwrap();
        assert!(!rules.contains("\n    accept\n"), "{s}");
        let all = ruleset(
            &machine(),
            &EgressPolicy::allow_all(),
            &hosts,
            &EgressCounters::default(),
        )
        .unwrap();
        let rules = all.split("chain eg_rules").nth(1).unwrap();
        assert!(rules.contains("\n    accept\n    goto eg_refuse"), "{all}");
    }

    #[test]
    fn names_reaching_the_script_are_checked() {
        let mut m = machine();
        m.tap = "mvm-\"x".into();
        assert!(matches!(
            ruleset(
                &m,
                &EgressPolicy::deny_all(),
                &ResolvedHosts::new(),
                &Default::default()
            ),
            Err(EgressError::BadName { .. })
        ));
        let mut m = machine();
        m.mac = "02:6d:76:10:00:02; drop".into();
        assert!(
            ruleset(
                &m,
                &EgressPolicy::deny_all(),
                &ResolvedHosts::new(),
                &Default::default()
            )
            .is_err()
        );
    }

    #[test]
    fn user_mode_says_what_it_can_do() {
        assert!(user_mode(&EgressPolicy::deny_all()).enforced);
        assert!(user_mode(&EgressPolicy::deny_all()).restrict);
        let a = user_mode(&EgressPolicy::allow_all());
        assert!(!a.enforced && !a.restrict && a.note.contains("169.254.169.254"));
        let l = user_mode(&"allow=1.2.3.4:80".parse().unwrap());
        assert!(!l.enforced && l.note.contains("1.2.3.4:80"));
    }

    #[test]
    fn minimal_drops_covered_elements() {
        let e = |s: &str, port: Option<u16>| Elem {
            net: s.parse::<AllowRule>().unwrap().net().unwrap(),
            port: port.map(|port| PortRule {
                port,
                protocol: mvm_core::egress::Protocol::Tcp,
            }),
            comment: None,
        };
        let v = minimal(vec![
            e("10.0.0.0/8", None),
            e("10.1.2.3", Some(80)),
            e("10.1.2.3", None),
            e("192.0.2.1", Some(80)),
            e("192.0.2.1", Some(80)),
            e("192.0.2.1", Some(81)),
        ]);
        assert_eq!(
            v,
            [
                e("10.0.0.0/8", None),
                e("192.0.2.1", Some(80)),
                e("192.0.2.1", Some(81))
            ]
        );
    }
}
