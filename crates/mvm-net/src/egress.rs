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
//! Each table is self-contained, and every change is one `nft -f`
//! transaction. [`apply`] creates a machine's tables whole the first time,
//! and afterwards (`mvm update`, re-resolved names) changes them **in
//! place**: it reads the tables (`nft -j list table`) and adds or deletes
//! only the set elements, rules, sets and chains that differ. Every rule
//! carries its identity as its comment (`mvm:<hash of its text>`), so a
//! rule both policies share is recognised and never touched, and new rules
//! are placed by handle. Deleting and re-creating the tables in one
//! transaction was atomic too, yet under a connection loop about one run
//! in four of 20 replacements saw an allowed handshake refused (0 in 1500
//! in-place updates). The counters stay with the tables. [`release`] (`add
//! table; delete table` for both) is atomic and idempotent and needs only
//! the TAP name.
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

/// The program that talks to nftables (named once, in
/// [`mvm_core::tools::NFT`]).
pub const NFT: &str = mvm_core::tools::NFT.program;

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
    /// `nft` as [`mvm_core::tools::NFT`] finds it (`PATH`, then the sbin
    /// directories a service's `PATH` may lack); the bare name when it is
    /// not installed (running it then reports the package to install).
    fn default() -> Self {
        Self {
            program: mvm_core::tools::NFT
                .find()
                .map_or_else(|| NFT.into(), |p| p.display().to_string()),
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

    /// What table `family name` holds, or `None` when it does not exist.
    fn existing(&self, family: &str, name: &str) -> Result<Option<Existing>, EgressError> {
        Ok(self
            .json(&["list", "table", family, name])?
            .map(Existing::from_objects))
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
    chain: Option<NftChain>,
    rule: Option<NftRule>,
}

#[derive(Debug, Deserialize)]
struct NftChain {
    name: String,
}

#[derive(Debug, Deserialize)]
struct NftRule {
    chain: String,
    handle: u64,
    #[serde(default)]
    comment: Option<String>,
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

    /// The sets: `PREFIX_any` (always) and one per port.
    fn sets(&self, prefix: &str, out: &mut Vec<SetDef>) {
        if !self.0.contains_key(&None) {
            out.push(SetDef {
                name: Self::set_name(prefix, None),
                elems: Vec::new(),
            });
        }
        for (port, elems) in &self.0 {
            out.push(SetDef {
                name: Self::set_name(prefix, *port),
                elems: elems.clone(),
            });
        }
    }

    /// One `accept` rule per set (`ip daddr @S [tcp dport P] accept`).
    fn rules(&self, prefix: &str, out: &mut Vec<String>) {
        out.push(format!("ip daddr @{} accept", Self::set_name(prefix, None)));
        for port in self.0.keys().flatten() {
            out.push(format!(
                "ip daddr @{} {} dport {} accept",
                Self::set_name(prefix, Some(*port)),
                port.protocol.as_str(),
                port.port
            ));
        }
    }
}

/// One set of a table (IPv4 addresses and networks, an interval set).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SetDef {
    name: String,
    elems: Vec<Elem>,
}

/// One chain: its hook (`None`: a regular chain) and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainDef {
    name: &'static str,
    hook: Option<&'static str>,
    rules: Vec<String>,
}

/// One of a machine's two tables, as the policy wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TableDef {
    family: &'static str,
    counters: &'static [&'static str],
    sets: Vec<SetDef>,
    chains: Vec<ChainDef>,
}

/// An element as nft writes it (`a.b.c.d` or `a.b.c.d/n`) with its comment.
fn elem_text(e: &Elem) -> String {
    match &e.comment {
        // Host names are checked by mvm_core::egress: [a-z0-9._-].
        Some(c) => format!("{} comment \"{c}\"", e.net),
        None => e.net.to_string(),
    }
}

fn fmt_set(out: &mut String, set: &SetDef) {
    let _ = write!(out, "  set {} {{ type ipv4_addr; flags interval;", set.name);
    if !set.elems.is_empty() {
        out.push_str(" elements = { ");
        let elems: Vec<String> = set.elems.iter().map(elem_text).collect();
        out.push_str(&elems.join(", "));
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

/// Both tables of machine `m` under `policy` (see the module docs).
fn tables(
    m: &MachineEgress,
    policy: &EgressPolicy,
    hosts: &ResolvedHosts,
) -> Result<[TableDef; 2], EgressError> {
    check_name(&m.tap)?;
    check_name(&m.bridge)?;
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
    let (tap, ip, br) = (&m.tap, m.ip, &m.bridge);

    // ---- bridge family: anti-spoofing and machine-to-machine ----
    let peers = Groups::new(address_elems(&peer_rules));
    // ARP has no ports: a port rule for a peer still needs its ARP.
    let peers_arp = minimal(
        address_elems(&peer_rules)
            .into_iter()
            .map(|e| Elem { port: None, ..e })
            .collect(),
    );
    let mut bsets = Vec::new();
    peers.sets("peers", &mut bsets);
    bsets.push(SetDef {
        name: "peers_arp".into(),
        elems: peers_arp,
    });
    let mut peer_rules_txt = vec![
        format!("iifname != \"{tap}\" accept"),
        "ether type arp arp daddr ip @peers_arp accept".into(),
    ];
    peers.rules("peers", &mut peer_rules_txt);
    peer_rules_txt.extend([
        format!("ether type arp arp daddr ip {gw} drop"),
        "meta pkttype { broadcast, multicast } drop".into(),
        "counter name \"refused\" drop".into(),
    ]);
    let bridge = TableDef {
        family: "bridge",
        counters: &["refused", "spoofed"],
        sets: bsets,
        chains: vec![
            ChainDef {
                name: "eg_guard",
                hook: Some("type filter hook prerouting priority filter; policy accept;"),
                rules: vec![
                    format!("iifname != \"{tap}\" accept"),
                    format!("ether saddr != {mac} counter name \"spoofed\" drop"),
                    format!(
                        "ether type arp arp saddr ether != {mac} counter name \"spoofed\" drop"
                    ),
                    format!("ether type arp arp saddr ip != {ip} counter name \"spoofed\" drop"),
                    "ether type arp accept".into(),
                    format!("ether type ip ip saddr != {ip} counter name \"spoofed\" drop"),
                    "ether type ip accept".into(),
                    "drop".into(),
                ],
            },
            ChainDef {
                name: "eg_peers",
                hook: Some("type filter hook forward priority filter; policy accept;"),
                rules: peer_rules_txt,
            },
        ],
    };

    // ---- ip family: routed and local traffic ----
    let exempt = Groups::new(address_elems(&exempt));
    let allow = Groups::new(address_elems(&other));
    let local = Groups::new(address_elems(&host_rules));
    let names = name_groups(policy, hosts);
    let mut sets = Vec::new();
    exempt.sets("exempt", &mut sets);
    allow.sets("allow", &mut sets);
    local.sets("host", &mut sets);
    names.sets("names", &mut sets);
    sets.push(SetDef {
        name: "blocked".into(),
        elems: blocked
            .iter()
            .map(|n| Elem {
                net: *n,
                port: None,
                comment: None,
            })
            .collect(),
    });
    let mut chains = Vec::new();
    if let Some(port) = m.dns_port {
        chains.push(ChainDef {
            name: "eg_dns",
            hook: Some("type nat hook prerouting priority dstnat; policy accept;"),
            rules: vec![format!(
                "iifname \"{br}\" ip saddr {ip} ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 redirect to :{port}"
            )],
        });
    }
    let guard = |v: &mut Vec<String>| {
        v.extend([
            format!("iifname != \"{br}\" accept"),
            format!("ip saddr != {ip} accept"),
            "ct direction reply accept".into(),
            "ct state related accept".into(),
        ])
    };
    let mut routed = Vec::new();
    guard(&mut routed);
    routed.push("jump eg_rules".into());
    let mut local_txt = Vec::new();
    guard(&mut local_txt);
    if let Some(port) = m.dns_port {
        local_txt.push(format!(
            "ip daddr {gw} meta l4proto {{ tcp, udp }} th dport {port} ct original proto-dst 53 accept"
        ));
    }
    local.rules("host", &mut local_txt);
    local_txt.extend([REFUSE_TCP.into(), REFUSE_OTHER.into()]);
    let mut rules_txt = Vec::new();
    exempt.rules("exempt", &mut rules_txt);
    rules_txt.push("ip daddr @blocked goto eg_refuse".into());
    allow.rules("allow", &mut rules_txt);
    names.rules("names", &mut rules_txt);
    if policy.default == DefaultAction::Allow {
        rules_txt.push("accept".into());
    }
    rules_txt.push("goto eg_refuse".into());
    chains.extend([
        ChainDef {
            name: "eg_routed",
            hook: Some("type filter hook forward priority filter - 10; policy accept;"),
            rules: routed,
        },
        ChainDef {
            name: "eg_local",
            hook: Some("type filter hook input priority filter - 10; policy accept;"),
            rules: local_txt,
        },
        // Regular chains after the base chains that jump to them is fine
        // inside one table definition (nft resolves names per table).
        ChainDef {
            name: "eg_refuse",
            hook: None,
            rules: vec![REFUSE_TCP.into(), REFUSE_OTHER.into()],
        },
        ChainDef {
            name: "eg_rules",
            hook: None,
            rules: rules_txt,
        },
    ]);
    let ipt = TableDef {
        family: "ip",
        counters: &["refused"],
        sets,
        chains,
    };
    Ok([bridge, ipt])
}

/// FNV-1a, 64 bits: the identity of a rule (its text and how many equal
/// rules precede it in its chain), stored as the rule's comment so an
/// update recognises rules it need not touch.
fn rule_key(text: &str, nth: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes().chain(nth.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mvm:{h:016x}")
}

/// The rules of `c` with their keys, in order.
fn keyed_rules(c: &ChainDef) -> Vec<(String, &str)> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    c.rules
        .iter()
        .map(|r| {
            let n = seen.entry(r.as_str()).or_default();
            let k = rule_key(r, *n);
            *n += 1;
            (k, r.as_str())
        })
        .collect()
}

fn table_comment(m: &MachineEgress) -> String {
    format!(
        "mvm:egress machine {}",
        m.machine
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>()
    )
}

/// The script that (re)creates table `t` whole: `add table` + `delete
/// table` (so it works whether or not the table exists), then the full
/// definition; `carry` seeds the named counters.
fn create_script(
    out: &mut String,
    t: &TableDef,
    table: &str,
    comment: &str,
    carry: &[(&str, u64, u64)],
) {
    let fam = t.family;
    let _ = writeln!(out, "add table {fam} {table}\ndelete table {fam} {table}");
    let _ = writeln!(out, "table {fam} {table} {{\n  comment \"{comment}\"");
    for c in t.counters {
        let (p, b) = carry
            .iter()
            .find(|(n, _, _)| n == c)
            .map_or((0, 0), |(_, p, b)| (*p, *b));
        let _ = writeln!(out, "  counter {c} {{ packets {p} bytes {b} }}");
    }
    for s in &t.sets {
        fmt_set(out, s);
    }
    for c in &t.chains {
        let _ = write!(out, "  chain {} {{", c.name);
        if let Some(h) = c.hook {
            let _ = write!(out, " {h}");
        }
        out.push('\n');
        for (k, r) in keyed_rules(c) {
            let _ = writeln!(out, "    {r} comment \"{k}\"");
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
}

/// What one table of a machine holds now (from `nft -j list table`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Existing {
    /// Named counters: packets, bytes.
    counters: BTreeMap<String, (u64, u64)>,
    /// Sets: their elements as nft writes them, with comments.
    sets: BTreeMap<String, Vec<(String, Option<String>)>>,
    /// Chains: their rules in order, as (handle, comment).
    chains: BTreeMap<String, Vec<(u64, Option<String>)>>,
}

/// An element of a set in nft's JSON: `"a.b.c.d"`, `{"prefix": {"addr",
/// "len"}}`, `{"range": [a, b]}`, or any of these wrapped in `{"elem":
/// {"val": ..., "comment": ...}}`; as nft writes it, and its comment.
fn parse_elem(v: &serde_json::Value) -> Option<(String, Option<String>)> {
    if let Some(e) = v.get("elem") {
        let (t, _) = parse_elem(e.get("val")?)?;
        let c = e.get("comment").and_then(|c| c.as_str()).map(str::to_owned);
        return Some((t, c));
    }
    if let Some(s) = v.as_str() {
        return Some((s.to_owned(), None));
    }
    if let Some(p) = v.get("prefix") {
        let addr = p.get("addr")?.as_str()?;
        let len = p.get("len")?.as_u64()?;
        return Some((format!("{addr}/{len}"), None));
    }
    if let Some(r) = v.get("range") {
        return Some((
            format!("{}-{}", r.get(0)?.as_str()?, r.get(1)?.as_str()?),
            None,
        ));
    }
    None
}

impl Existing {
    fn from_objects(objs: Vec<NftObject>) -> Self {
        let mut ex = Existing::default();
        for o in objs {
            if let Some(c) = o.counter {
                ex.counters.insert(c.name, (c.packets, c.bytes));
            }
            if let Some(s) = o.set {
                let elems = s.elem.iter().filter_map(parse_elem).collect();
                ex.sets.insert(s.name, elems);
            }
            if let Some(c) = o.chain {
                ex.chains.entry(c.name).or_default();
            }
            if let Some(r) = o.rule {
                ex.chains
                    .entry(r.chain)
                    .or_default()
                    .push((r.handle, r.comment));
            }
        }
        ex
    }
}

/// The changes that turn set `name` from `have` into `want` (elements
/// present in both are not touched).
fn set_diff(
    out: &mut String,
    fam: &str,
    table: &str,
    name: &str,
    have: &[(String, Option<String>)],
    want: &[Elem],
) {
    let want: Vec<(String, Option<String>)> = want
        .iter()
        .map(|e| (e.net.to_string(), e.comment.clone()))
        .collect();
    let gone: Vec<&str> = have
        .iter()
        .filter(|h| !want.contains(h))
        .map(|h| h.0.as_str())
        .collect();
    let new: Vec<String> = want
        .iter()
        .filter(|w| !have.contains(w))
        .map(|(t, c)| match c {
            Some(c) => format!("{t} comment \"{c}\""),
            None => t.clone(),
        })
        .collect();
    if !gone.is_empty() {
        let _ = writeln!(
            out,
            "delete element {fam} {table} {name} {{ {} }}",
            gone.join(", ")
        );
    }
    if !new.is_empty() {
        let _ = writeln!(
            out,
            "add element {fam} {table} {name} {{ {} }}",
            new.join(", ")
        );
    }
}

/// The script that turns table `ex` into `t` in place, touching only what
/// differs: set elements added or deleted one by one, rules added or
/// deleted by handle (a rule is known by the key in its comment, see
/// [`rule_key`]), sets and chains added or deleted. Nothing that stays is
/// deleted and re-created, so a packet allowed by both the old and the new
/// policy never meets a missing rule or element. Empty when nothing
/// changes.
fn update_script(out: &mut String, t: &TableDef, table: &str, ex: &Existing) {
    let fam = t.family;
    let mut deletes = String::new();
    let mut adds = String::new();
    for c in t.counters {
        if !ex.counters.contains_key(*c) {
            let _ = writeln!(adds, "add counter {fam} {table} {c}");
        }
    }
    // Sets: new ones first (rules added below may use them), element
    // changes, and sets no longer wanted last (after the rules using them
    // are deleted).
    for s in &t.sets {
        match ex.sets.get(&s.name) {
            Some(have) => set_diff(&mut adds, fam, table, &s.name, have, &s.elems),
            None => {
                let _ = writeln!(
                    adds,
                    "add set {fam} {table} {} {{ type ipv4_addr; flags interval; }}",
                    s.name
                );
                set_diff(&mut adds, fam, table, &s.name, &[], &s.elems);
            }
        }
    }
    let mut rule_adds = String::new();
    for c in &t.chains {
        let want = keyed_rules(c);
        let Some(have) = ex.chains.get(c.name) else {
            match c.hook {
                Some(h) => {
                    let _ = writeln!(adds, "add chain {fam} {table} {} {{ {h} }}", c.name);
                }
                None => {
                    let _ = writeln!(adds, "add chain {fam} {table} {}", c.name);
                }
            }
            for (k, r) in &want {
                let _ = writeln!(
                    rule_adds,
                    "add rule {fam} {table} {} {r} comment \"{k}\"",
                    c.name
                );
            }
            continue;
        };
        let name = c.name;
        let add_all = |s: &mut String| {
            for (k, r) in &want {
                let _ = writeln!(s, "add rule {fam} {table} {name} {r} comment \"{k}\"");
            }
        };
        // Rules without a key, repeated keys, or kept rules in another
        // order: rewrite the chain (flush + add, still one transaction).
        let keys: Vec<&str> = have.iter().filter_map(|(_, k)| k.as_deref()).collect();
        let unique = keys.len() == have.len()
            && keys.iter().collect::<std::collections::BTreeSet<_>>().len() == keys.len();
        let kept_have: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| want.iter().any(|(w, _)| w == k))
            .collect();
        let kept_want: Vec<&str> = want
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| keys.contains(k))
            .collect();
        if !unique || kept_have != kept_want {
            let _ = writeln!(deletes, "flush chain {fam} {table} {name}");
            add_all(&mut rule_adds);
            continue;
        }
        for (h, k) in have {
            if !want.iter().any(|(w, _)| Some(w) == k.as_ref()) {
                let _ = writeln!(deletes, "delete rule {fam} {table} {name} handle {h}");
            }
        }
        let handle_of = |k: &str| {
            have.iter()
                .find(|(_, hk)| hk.as_deref() == Some(k))
                .map(|(h, _)| *h)
        };
        // New rules go after the kept rule before them (`add ... position
        // H` puts a rule right after H, so a run is added last first), or
        // before the first kept rule (`insert ... position H`), or at the
        // end of a chain that keeps nothing.
        let mut anchor: Option<u64> = None;
        let mut run: Vec<(&str, &str)> = Vec::new();
        let flush_run = |anchor: Option<u64>,
                         run: &mut Vec<(&str, &str)>,
                         next: Option<u64>,
                         s: &mut String| {
            match (anchor, next) {
                (Some(a), _) => {
                    for (k, r) in run.iter().rev() {
                        let _ = writeln!(
                            s,
                            "add rule {fam} {table} {name} position {a} {r} comment \"{k}\""
                        );
                    }
                }
                (None, Some(n)) => {
                    for (k, r) in run.iter() {
                        let _ = writeln!(
                            s,
                            "insert rule {fam} {table} {name} position {n} {r} comment \"{k}\""
                        );
                    }
                }
                (None, None) => {
                    for (k, r) in run.iter() {
                        let _ = writeln!(s, "add rule {fam} {table} {name} {r} comment \"{k}\"");
                    }
                }
            }
            run.clear();
        };
        for (k, r) in &want {
            match handle_of(k) {
                Some(h) => {
                    flush_run(anchor, &mut run, Some(h), &mut rule_adds);
                    anchor = Some(h);
                }
                None => run.push((k.as_str(), r)),
            }
        }
        flush_run(anchor, &mut run, None, &mut rule_adds);
    }
    // Chains and sets no longer wanted.
    let mut drops = String::new();
    for name in ex.chains.keys() {
        if !t.chains.iter().any(|c| c.name == name) {
            let _ = writeln!(deletes, "flush chain {fam} {table} {name}");
            let _ = writeln!(drops, "delete chain {fam} {table} {name}");
        }
    }
    for name in ex.sets.keys() {
        if !t.sets.iter().any(|s| &s.name == name) {
            let _ = writeln!(drops, "delete set {fam} {table} {name}");
        }
    }
    out.push_str(&deletes);
    out.push_str(&drops);
    out.push_str(&adds);
    out.push_str(&rule_adds);
}

/// The ruleset that (re)creates both tables of `m`, as one `nft -f`
/// script: `add table` + `delete table` (so it works whether or not the
/// table exists) and the full definition, all in one transaction.
/// `carry` seeds the `refused`/`spoofed` counters. [`apply`] uses it for a
/// machine without tables, and updates existing tables in place.
pub fn ruleset(
    m: &MachineEgress,
    policy: &EgressPolicy,
    hosts: &ResolvedHosts,
    carry: &EgressCounters,
) -> Result<String, EgressError> {
    let table = table_name(&m.tap);
    let comment = table_comment(m);
    let mut s = String::new();
    for t in tables(m, policy, hosts)? {
        let c: Vec<(&str, u64, u64)> = match t.family {
            "bridge" => vec![("refused", 0, 0), ("spoofed", carry.spoofed_packets, 0)],
            _ => vec![("refused", carry.refused_packets, carry.refused_bytes)],
        };
        create_script(&mut s, &t, &table, &comment, &c);
    }
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

/// Install or change the policy of machine `m`, atomically (one `nft -f`
/// transaction). A table that does not exist yet is created whole; one
/// that exists is changed in place ([`update_script`]): its counters stay,
/// and rules and set elements that both policies share are never removed,
/// not even for a moment. Call it before the VMM runs (the TAP need not
/// exist yet: rules match its name) and for `mvm update`. Returns whether
/// anything changed.
pub fn apply(
    nft: &Nft,
    m: &MachineEgress,
    policy: &EgressPolicy,
    hosts: &ResolvedHosts,
) -> Result<bool, EgressError> {
    let table = table_name(&m.tap);
    let comment = table_comment(m);
    let mut s = String::new();
    for t in tables(m, policy, hosts)? {
        match nft.existing(t.family, &table)? {
            Some(ex) => update_script(&mut s, &t, &table, &ex),
            None => create_script(&mut s, &t, &table, &comment, &[]),
        }
    }
    if s.is_empty() {
        return Ok(false);
    }
    nft.run_script(
        &format!(
            "applying egress policy `{policy}` of machine {:?} (TAP {})",
            m.machine, m.tap
        ),
        &s,
    )?;
    Ok(true)
}

/// Replace only the resolved host-name addresses of a machine whose
/// policy is applied (after re-resolution), atomically and in place
/// (addresses that stay are not touched). Names of the policy missing
/// from `hosts` lose their addresses. A machine without tables is left
/// alone.
pub fn update_hosts(
    nft: &Nft,
    tap: &str,
    policy: &EgressPolicy,
    hosts: &ResolvedHosts,
) -> Result<(), EgressError> {
    check_name(tap)?;
    let table = table_name(tap);
    let Some(ex) = nft.existing("ip", &table)? else {
        return Ok(());
    };
    let mut sets = Vec::new();
    name_groups(policy, hosts).sets("names", &mut sets);
    let mut s = String::new();
    for set in &sets {
        // A set missing means the policy changed under us: `apply` owns
        // the list of sets.
        if let Some(have) = ex.sets.get(&set.name) {
            set_diff(&mut s, "ip", &table, &set.name, have, &set.elems);
        }
    }
    if s.is_empty() {
        return Ok(());
    }
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
        assert!(!rules.contains("\n    accept comment"), "{s}");
        let all = ruleset(
            &machine(),
            &EgressPolicy::allow_all(),
            &hosts,
            &EgressCounters::default(),
        )
        .unwrap();
        let rules = all.split("chain eg_rules").nth(1).unwrap();
        let accept = rules
            .find("\n    accept comment")
            .expect("catch-all accept");
        let refuse = rules.find("\n    goto eg_refuse comment").unwrap();
        assert!(accept < refuse, "{all}");
    }

    /// What `nft -j list table` would report for `t` as created.
    fn existing_of(t: &TableDef) -> Existing {
        let mut handle = 0;
        Existing {
            counters: t.counters.iter().map(|c| (c.to_string(), (0, 0))).collect(),
            sets: t
                .sets
                .iter()
                .map(|s| {
                    let elems = s
                        .elems
                        .iter()
                        .map(|e| (e.net.to_string(), e.comment.clone()))
                        .collect();
                    (s.name.clone(), elems)
                })
                .collect(),
            chains: t
                .chains
                .iter()
                .map(|c| {
                    let rules = keyed_rules(c)
                        .into_iter()
                        .map(|(k, _)| {
                            handle += 1;
                            (handle, Some(k))
                        })
                        .collect();
                    (c.name.to_string(), rules)
                })
                .collect(),
        }
    }

    fn update(from: &str, to: &str, hosts: &ResolvedHosts) -> String {
        let m = machine();
        let old = tables(&m, &from.parse().unwrap(), hosts).unwrap();
        let new = tables(&m, &to.parse().unwrap(), hosts).unwrap();
        let mut s = String::new();
        for (o, n) in old.iter().zip(&new) {
            update_script(&mut s, n, "T", &existing_of(o));
        }
        s
    }

    #[test]
    fn updates_touch_only_what_changes() {
        let hosts = ResolvedHosts::from([(
            "test.example".to_owned(),
            vec![Ipv4Addr::new(198, 51, 100, 9)],
        )]);
        // The same policy again: nothing at all.
        for p in [
            "allow-all",
            "deny-all",
            "allow=198.51.100.2:80,test.example:443",
        ] {
            assert_eq!(update(p, p, &hosts), "", "{p}");
        }
        // Flipping between two lists that share 198.51.100.2:80: its set
        // and its rule are never touched.
        let s = update(
            "allow=198.51.100.2:80,198.51.100.53:53/udp",
            "allow=198.51.100.2:80,198.51.100.3",
            &hosts,
        );
        assert!(!s.contains("allow_tcp_80"), "{s}");
        assert!(!s.contains("flush"), "{s}");
        assert!(
            s.contains("add element ip T allow_any { 198.51.100.3 }"),
            "{s}"
        );
        assert!(s.contains("delete set ip T allow_udp_53"), "{s}");
        assert!(s.contains("delete rule ip T eg_rules handle"), "{s}");
        // ... and back: the new rule goes after a kept one.
        let s = update(
            "allow=198.51.100.2:80,198.51.100.3",
            "allow=198.51.100.2:80,198.51.100.53:53/udp",
            &hosts,
        );
        assert!(!s.contains("allow_tcp_80"), "{s}");
        assert!(
            s.contains("delete element ip T allow_any { 198.51.100.3 }"),
            "{s}"
        );
        assert!(
            s.contains("add set ip T allow_udp_53 { type ipv4_addr; flags interval; }"),
            "{s}"
        );
        let add = s
            .lines()
            .find(|l| l.contains("@allow_udp_53"))
            .expect("rule for the new set");
        assert!(add.starts_with("add rule ip T eg_rules position "), "{s}");
        // The set is added before the rule that uses it.
        assert!(s.find("add set ip T allow_udp_53").unwrap() < s.find(add).unwrap());
        // deny-all -> allow-all: one rule added before the final refusal.
        let s = update("deny-all", "allow-all", &hosts);
        assert_eq!(s.lines().count(), 1, "{s}");
        assert!(s.starts_with("add rule ip T eg_rules position "), "{s}");
        assert!(s.contains(" accept comment \"mvm:"), "{s}");
        // A DNS port appears: a new base chain with its rule.
        let m = machine();
        let mut without = m.clone();
        without.dns_port = None;
        let p = EgressPolicy::deny_all();
        let old = tables(&without, &p, &hosts).unwrap();
        let new = tables(&m, &p, &hosts).unwrap();
        let mut s = String::new();
        update_script(&mut s, &new[1], "T", &existing_of(&old[1]));
        assert!(
            s.contains(
                "add chain ip T eg_dns { type nat hook prerouting priority dstnat; policy accept; }"
            ),
            "{s}"
        );
        assert!(s.contains("redirect to :5353"), "{s}");
        // ... and goes: flushed, then deleted.
        let mut s = String::new();
        update_script(&mut s, &old[1], "T", &existing_of(&new[1]));
        let flush = s.find("flush chain ip T eg_dns").expect("flush");
        assert!(
            flush < s.find("delete chain ip T eg_dns").expect("delete"),
            "{s}"
        );
    }

    #[test]
    fn rules_without_keys_are_rewritten() {
        let m = machine();
        let t = tables(&m, &EgressPolicy::deny_all(), &ResolvedHosts::new()).unwrap();
        let mut ex = existing_of(&t[1]);
        for r in ex.chains.get_mut("eg_rules").unwrap() {
            r.1 = None;
        }
        let mut s = String::new();
        update_script(&mut s, &t[1], "T", &ex);
        assert!(s.starts_with("flush chain ip T eg_rules\n"), "{s}");
        assert_eq!(
            s.lines()
                .filter(|l| l.starts_with("add rule ip T eg_rules "))
                .count(),
            t[1].chains
                .iter()
                .find(|c| c.name == "eg_rules")
                .unwrap()
                .rules
                .len()
        );
    }

    #[test]
    fn set_elements_from_nft_json() {
        let v: serde_json::Value = serde_json::from_str(
            r#"["10.0.0.1", {"prefix": {"addr": "10.0.0.0", "len": 8}},
                {"range": ["10.0.0.1", "10.0.0.5"]},
                {"elem": {"val": "198.51.100.9", "comment": "test.example"}}]"#,
        )
        .unwrap();
        let got: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .filter_map(parse_elem)
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1".to_owned(), None),
                ("10.0.0.0/8".to_owned(), None),
                ("10.0.0.1-10.0.0.5".to_owned(), None),
                ("198.51.100.9".to_owned(), Some("test.example".to_owned())),
            ]
        );
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
