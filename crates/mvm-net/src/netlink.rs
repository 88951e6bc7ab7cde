//! A small synchronous rtnetlink client (links, IPv4 addresses, routes)
//! over `netlink-sys` + `netlink-packet-route`, shared by the host side and
//! the guest agent (which has no async runtime).
//!
//! Protocol: each request is one `NETLINK_ROUTE` message with a fresh
//! sequence number. A dump (`NLM_F_DUMP`) is answered by multipart
//! messages closed by `NLMSG_DONE`; any other request carries `NLM_F_ACK`
//! and is answered by an `NLMSG_ERROR` whose code is 0 (success) or
//! `-errno`. The socket is bound to the network namespace of the thread
//! that opens it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Netlink errors.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening the netlink socket failed.
    #[error("cannot open a NETLINK_ROUTE socket")]
    Open(#[source] io::Error),
    /// The kernel refused a request.
    #[error("netlink: cannot {op}")]
    Request {
        /// What was attempted, e.g. `create bridge "mvmbr0"`.
        op: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// A link does not exist.
    #[error("no network interface named {name:?}")]
    NoSuchLink {
        /// The name.
        name: String,
    },
    /// Timed out waiting for a link to appear.
    #[error("network interface {name:?} did not appear within {timeout:?}")]
    LinkTimeout {
        /// The name.
        name: String,
        /// How long we waited.
        timeout: Duration,
    },
}

impl NetlinkError {
    /// The OS error code, when the kernel refused a request.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            NetlinkError::Open(e) | NetlinkError::Request { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the failure is a missing privilege (EPERM/EACCES).
    pub fn is_permission(&self) -> bool {
        matches!(self.raw_os_error(), Some(EPERM) | Some(EACCES))
    }
}

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EACCES: i32 = 13;
const EADDRNOTAVAIL: i32 = 99;
/// How long the kernel may take to answer one request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Multicast group of link changes (`RTNLGRP_LINK`).
const RTNLGRP_LINK: u32 = 1;

/// What we know about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (for a TAP: a process has it open).
    pub carrier: bool,
    /// Index of the bridge it is attached to.
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND` (`bridge`, `tun`, `veth`, ...).
    pub kind: Option<String>,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
}

impl Link {
    fn from_msg(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            up: m.header.flags.contains(LinkFlags::Up),
            carrier: m.header.flags.contains(LinkFlags::LowerUp),
            master: None,
            kind: None,
            mac: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Controller(i) => l.master = Some(*i),
                LinkAttribute::Carrier(c) => l.carrier = *c != 0,
                LinkAttribute::Address(a) if a.len() == 6 => {
                    l.mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]]);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// A default (or other) IPv4 route as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network, `None` for the default route.
    pub destination: Option<(Ipv4Addr, u8)>,
    /// Gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
}

/// An open `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

fn req_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Request { op, source }
}

impl Netlink {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        sock.bind_auto().map_err(NetlinkError::Open)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Open)?;
        // Deadline on every answer: the kernel answers at once, so a
        // silent socket is a bug to report, not to wait on forever.
        rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(REPLY_TIMEOUT),
        )
        .map_err(|e| NetlinkError::Open(e.into()))?;
        Ok(Self { sock, seq: 1 })
    }

    /// Send one request; return the inner messages of the answer.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let data = match self.sock.recv_from_full() {
                Ok((d, _)) => d,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// The link named `name`, if it exists.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(v) => Ok(v.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_msg(l)),
                _ => None,
            })),
            Err(e) if matches!(e.raw_os_error(), Some(ENODEV) | Some(ENOENT)) => Ok(None),
            Err(e) => Err(req_err(format!("look up interface {name:?}"))(e)),
        }
    }

    /// The link named `name`, or [`NetlinkError::NoSuchLink`].
    pub fn require_link(&mut self, name: &str) -> Result<Link, NetlinkError> {
        self.link(name)?.ok_or_else(|| NetlinkError::NoSuchLink {
            name: name.to_owned(),
        })
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let v = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(req_err("list interfaces"))?;
        Ok(v.iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_msg(l)),
                _ => None,
            })
            .collect())
    }

    /// Create a bridge named `name` (EEXIST is not an error).
    pub fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.create(
            RouteNetlinkMessage::NewLink(m),
            &format!("create bridge {name:?}"),
        )
    }

    /// Create a veth pair `a` <-> `b` (used by tests to model a guest NIC).
    pub fn add_veth(&mut self, a: &str, b: &str) -> Result<(), NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(b.to_owned()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(a.to_owned()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.create(
            RouteNetlinkMessage::NewLink(m),
            &format!("create veth pair {a:?}/{b:?}"),
        )
    }

    fn create(&mut self, msg: RouteNetlinkMessage, op: &str) -> Result<(), NetlinkError> {
        match self.request(msg, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(EEXIST) => Ok(()),
            Err(e) => Err(req_err(op)(e)),
        }
    }

    /// Bring link `index` up (or down).
    pub fn set_up(&mut self, index: u32, up: bool, name: &str) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map(drop)
            .map_err(req_err(format!(
                "set interface {name:?} {}",
                if up { "up" } else { "down" }
            )))
    }

    /// Set the MAC address of link `index` (virtio-net and bridges accept
    /// this while up).
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6], name: &str) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map(drop)
            .map_err(req_err(format!("set the MAC address of {name:?}")))
    }

    /// Remove `ip/prefix` from link `index` (absent is not an error).
    pub fn del_address(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
        name: &str,
    ) -> Result<(), NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        match self.request(RouteNetlinkMessage::DelAddress(m), 0) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(req_err(format!(
                "remove address {ip}/{prefix} from {name:?}"
            ))(e)),
        }
    }

    /// Attach link `index` to bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32, name: &str) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Controller(master));
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map(drop)
            .map_err(req_err(format!("attach {name:?} to bridge index {master}")))
    }

    /// Move link `index` into the network namespace of `netns` (an fd of
    /// `/proc/.../ns/net`; used by tests to build machines and hosts).
    pub fn set_netns(
        &mut self,
        index: u32,
        netns: std::os::fd::BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), NetlinkError> {
        use std::os::fd::AsRawFd;
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map(drop)
            .map_err(req_err(format!(
                "move {name:?} to another network namespace"
            )))
    }

    /// Delete link `name`; `Ok(false)` if it did not exist.
    pub fn del_link(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let Some(l) = self.link(name)? else {
            return Ok(false);
        };
        let mut m = LinkMessage::default();
        m.header.index = l.index;
        match self.request(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(ENODEV) | Some(ENOENT)) => Ok(false),
            Err(e) => Err(req_err(format!("delete interface {name:?}"))(e)),
        }
    }

    /// IPv4 addresses of link `index`, with prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet;
        let v = self
            .request(RouteNetlinkMessage::GetAddress(q), NLM_F_DUMP)
            .map_err(req_err("list addresses"))?;
        let mut out = Vec::new();
        for m in v {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            for at in &a.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = at {
                    out.push((*ip, a.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Add `ip/prefix` to link `index` (already present is not an error).
    pub fn add_address(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
        name: &str,
    ) -> Result<(), NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        let host = (1u64 << (32 - u32::from(prefix))) - 1;
        if prefix < 31 {
            let bcast = Ipv4Addr::from(u32::from(ip) | host as u32);
            m.attributes.push(AddressAttribute::Broadcast(bcast));
        }
        self.create(
            RouteNetlinkMessage::NewAddress(m),
            &format!("add address {ip}/{prefix} to {name:?}"),
        )
    }

    /// Set (create or replace) the IPv4 default route via `gateway` on `oif`.
    pub fn replace_default_route(
        &mut self,
        gateway: Ipv4Addr,
        oif: u32,
    ) -> Result<(), NetlinkError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        m.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
        .map_err(req_err(format!("set the default route via {gateway}")))
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let v = self
            .request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)
            .map_err(req_err("list routes"))?;
        let mut out = Vec::new();
        for m in v {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let mut route = Route {
                destination: None,
                gateway: None,
                oif: None,
            };
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                        route.destination = Some((*d, r.header.destination_prefix_length));
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(*g),
                    RouteAttribute::Oif(o) => route.oif = Some(*o),
                    _ => {}
                }
            }
            out.push(route);
        }
        Ok(out)
    }

    /// Wait until a link named `name` exists (e.g. `eth0` while its driver
    /// module loads). Listens to link notifications; no polling loop.
    pub fn wait_for_link(&mut self, name: &str, timeout: Duration) -> Result<Link, NetlinkError> {
        let mut events = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        events.bind_auto().map_err(NetlinkError::Open)?;
        events
            .add_membership(RTNLGRP_LINK)
            .map_err(NetlinkError::Open)?;
        events.set_non_blocking(true).map_err(NetlinkError::Open)?;
        let deadline = Instant::now() + timeout;
        loop {
            // Subscribed first, then checked: no appearance can be missed.
            if let Some(l) = self.link(name)? {
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NetlinkError::LinkTimeout {
                    name: name.to_owned(),
                    timeout,
                });
            }
            let mut fds = [rustix::event::PollFd::new(
                &events,
                rustix::event::PollFlags::IN,
            )];
            let ts = rustix::event::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(NetlinkError::Open(e.into())),
            }
            // Drain the notifications; their content does not matter.
            while events.recv_from_full().is_ok() {}
        }
    }
}
