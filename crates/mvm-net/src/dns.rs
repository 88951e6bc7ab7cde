//! DNS for machines with an egress policy.
//!
//! - [`DnsFilter`]: a small forwarder, one per machine, run by the
//!   machine's supervisor on the gateway address (bridge IP) and an
//!   ephemeral port. The machine's nftables table redirects the guest's
//!   queries to `gateway:53` there (see [`crate::egress`]). It answers
//!   only names the policy allows ([`EgressPolicy::allows_name`]: every
//!   name under `allow-all`, exactly the rule host names otherwise, none
//!   under `deny-all`) by forwarding the query unchanged to the host's own
//!   resolvers ([`host_upstreams`], loopback ones included: the forwarder
//!   runs on the host) and relaying the answer; every other query gets
//!   `REFUSED` at once, and is counted. It serves UDP and TCP (RFC 1035
//!   §4.2.2 length prefix), answers only the machine's own address, and
//!   never forwards a message it cannot parse. Refusing names closes the
//!   DNS exfiltration channel a `deny-all` machine would otherwise have.
//! - [`resolve`]: the host-side resolution of a policy's host names (A
//!   records, through the same upstreams, UDP with a TCP retry when the
//!   answer is truncated), giving the addresses the rules allow and the
//!   smallest TTL, after which the supervisor resolves again
//!   ([`crate::egress::refresh_after`], [`crate::egress::update_hosts`]).
//!
//! Messages are parsed and built with `hickory-proto`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use mvm_core::egress::EgressPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::egress::ResolvedHosts;

/// Largest DNS message over UDP we accept or relay (EDNS buffers rarely
/// exceed 4096).
pub const MAX_UDP: usize = 4096;
/// How long one upstream may take to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP client may stay idle.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// DNS errors.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Binding the filter's sockets failed.
    #[error("cannot listen for DNS queries on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No upstream resolver is configured.
    #[error("no DNS resolver found in {}", crate::host::RESOLV_CONFS.join(" or "))]
    NoUpstream,
}

/// The host's own resolvers, port 53, from the first resolv.conf of
/// [`crate::host::RESOLV_CONFS`] that names any (loopback ones included).
pub fn host_upstreams() -> Vec<SocketAddr> {
    for path in crate::host::RESOLV_CONFS {
        if let Ok(text) = fs_err::read_to_string(path) {
            let v = parse_upstreams(&text);
            if !v.is_empty() {
                return v;
            }
        }
    }
    Vec::new()
}

/// The `nameserver` lines of a resolv.conf, as `addr:53` (IPv4 and IPv6).
pub fn parse_upstreams(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<std::net::IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

struct Shared {
    client: Ipv4Addr,
    policy: RwLock<EgressPolicy>,
    upstreams: Vec<SocketAddr>,
    refused: AtomicU64,
    forwarded: AtomicU64,
    /// Signalled on every refusal (see [`DnsFilterHandle::refusal`]).
    refusal: tokio::sync::Notify,
}

/// A handle on a running [`DnsFilter`]: change its policy (`mvm update`),
/// read its counters.
#[derive(Clone)]
pub struct DnsFilterHandle(Arc<Shared>);

impl DnsFilterHandle {
    /// Answer by `policy` from now on.
    pub fn set_policy(&self, policy: EgressPolicy) {
        *self.0.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// Queries refused so far.
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// Queries forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.0.forwarded.load(Ordering::Relaxed)
    }

    /// Completes after the next refusal (or at once when there was one
    /// since the last call), so an owner can publish the count without
    /// polling.
    pub async fn refusal(&self) {
        self.0.refusal.notified().await;
    }
}

/// One machine's filtering DNS forwarder (see the module docs).
pub struct DnsFilter {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    shared: Arc<Shared>,
}

impl DnsFilter {
    /// Listen on `listen` (the gateway address), UDP and TCP on the same
    /// ephemeral port, answering only `client` (the machine's address).
    pub async fn bind(
        listen: Ipv4Addr,
        client: Ipv4Addr,
        policy: EgressPolicy,
        upstreams: Vec<SocketAddr>,
    ) -> Result<Self, DnsError> {
        if upstreams.is_empty() {
            return Err(DnsError::NoUpstream);
        }
        // The UDP port is free; TCP on the same port almost always is.
        let mut last = None;
        for _ in 0..16 {
            let addr = SocketAddr::from((listen, 0));
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|source| DnsError::Bind { addr, source })?;
            let port = udp
                .local_addr()
                .map_err(|source| DnsError::Bind { addr, source })?
                .port();
            let taddr = SocketAddr::from((listen, port));
            match TcpListener::bind(taddr).await {
                Ok(tcp) => {
                    return Ok(Self {
                        udp: Arc::new(udp),
                        tcp,
                        shared: Arc::new(Shared {
                            client,
                            policy: RwLock::new(policy),
                            upstreams,
                            refused: AtomicU64::new(0),
                            forwarded: AtomicU64::new(0),
                            refusal: tokio::sync::Notify::new(),
                        }),
                    });
                }
                Err(source) => {
                    last = Some(DnsError::Bind {
                        addr: taddr,
                        source,
                    })
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// The port (UDP and TCP) to redirect the machine's queries to.
    pub fn port(&self) -> u16 {
        self.tcp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// A handle for policy changes and counters.
    pub fn handle(&self) -> DnsFilterHandle {
        DnsFilterHandle(self.shared.clone())
    }

    /// Serve until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut buf = vec![0u8; MAX_UDP];
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                r = self.udp.recv_from(&mut buf) => {
                    let Ok((n, peer)) = r else { continue };
                    if peer.ip() != self.shared.client {
                        continue;
                    }
                    let query = buf[..n].to_vec();
                    let (shared, udp) = (self.shared.clone(), self.udp.clone());
                    tokio::spawn(async move {
                        if let Some(answer) = answer(&shared, &query, false).await {
                            let _ = udp.send_to(&answer, peer).await;
                        }
                    });
                }
                r = self.tcp.accept() => {
                    let Ok((stream, peer)) = r else { continue };
                    if peer.ip() != self.shared.client {
                        continue;
                    }
                    let shared = self.shared.clone();
                    tokio::spawn(serve_tcp(shared, stream));
                }
            }
        }
    }
}

async fn serve_tcp(shared: Arc<Shared>, mut s: TcpStream) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, s.read_u16()).await else {
            return;
        };
        let mut q = vec![0u8; usize::from(len)];
        if s.read_exact(&mut q).await.is_err() {
            return;
        }
        let Some(a) = answer(&shared, &q, true).await else {
            return;
        };
        let Ok(alen) = u16::try_from(a.len()) else {
            return;
        };
        if s.write_u16(alen).await.is_err() || s.write_all(&a).await.is_err() {
            return;
        }
    }
}

/// What to do with one query: `None` drops it (unparseable, or no
/// upstream answered).
async fn answer(shared: &Shared, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    if msg.metadata.message_type != MessageType::Query {
        return None;
    }
    let reply = |code| {
        let mut r = Message::error_msg(msg.metadata.id, msg.metadata.op_code, code);
        r.metadata.recursion_desired = msg.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.add_queries(msg.queries.clone());
        r.to_vec().ok()
    };
    if msg.metadata.op_code != OpCode::Query {
        return reply(ResponseCode::NotImp);
    }
    let [q] = msg.queries.as_slice() else {
        return reply(ResponseCode::FormErr);
    };
    let name = q.name().to_ascii();
    let allowed = shared
        .policy
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .allows_name(&name);
    if !allowed {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        shared.refusal.notify_one();
        tracing::debug!("DNS filter: refused {name} for {}", shared.client);
        return reply(ResponseCode::Refused);
    }
    for up in &shared.upstreams {
        let r = if tcp {
            forward_tcp(*up, query).await
        } else {
            forward_udp(*up, query).await
        };
        if let Some(a) = r
            && Message::from_vec(&a).is_ok_and(|m| m.metadata.id == msg.metadata.id)
        {
            shared.forwarded.fetch_add(1, Ordering::Relaxed);
            return Some(a);
        }
    }
    reply(ResponseCode::ServFail)
}

async fn forward_udp(up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let local: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = UdpSocket::bind(local).await.ok()?;
    s.connect(up).await.ok()?;
    s.send(query).await.ok()?;
    let mut buf = vec![0u8; MAX_UDP];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, s.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

async fn forward_tcp(up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let io = async {
        let mut s = TcpStream::connect(up).await.ok()?;
        s.write_u16(u16::try_from(query.len()).ok()?).await.ok()?;
        s.write_all(query).await.ok()?;
        let len = s.read_u16().await.ok()?;
        let mut a = vec![0u8; usize::from(len)];
        s.read_exact(&mut a).await.ok()?;
        Some(a)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, io).await.ok()?
}

/// The answer for one host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Its IPv4 addresses (empty when it has none or resolution failed).
    pub addrs: Vec<Ipv4Addr>,
    /// The smallest TTL of the answer (re-resolve after it).
    pub ttl: Duration,
    /// Why there are no addresses, when resolution failed.
    pub error: Option<String>,
}

/// Resolve `names` (A records) through `upstreams`, each within
/// `timeout` per upstream. Never fails as a whole: a name that cannot be
/// resolved has no addresses and an `error`.
pub fn resolve(
    names: &[&str],
    upstreams: &[SocketAddr],
    timeout: Duration,
) -> BTreeMap<String, Resolved> {
    names
        .iter()
        .map(|n| (n.to_string(), resolve_one(n, upstreams, timeout)))
        .collect()
}

/// The addresses of a [`resolve`] result, for [`crate::egress::apply`].
pub fn to_hosts(r: &BTreeMap<String, Resolved>) -> ResolvedHosts {
    r.iter()
        .map(|(k, v)| (k.clone(), v.addrs.clone()))
        .collect()
}

/// The smallest TTL of a [`resolve`] result (an hour when there is none).
pub fn min_ttl(r: &BTreeMap<String, Resolved>) -> Duration {
    r.values()
        .filter(|v| !v.addrs.is_empty())
        .map(|v| v.ttl)
        .min()
        .unwrap_or(Duration::from_secs(3600))
}

fn resolve_one(name: &str, upstreams: &[SocketAddr], timeout: Duration) -> Resolved {
    let fail = |e: String| Resolved {
        addrs: Vec::new(),
        ttl: Duration::ZERO,
        error: Some(e),
    };
    let qname = match Name::from_ascii(format!("{name}.")) {
        Ok(n) => n,
        Err(e) => return fail(format!("invalid name: {e}")),
    };
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(qname, RecordType::A));
    let Ok(bytes) = msg.to_vec() else {
        return fail("cannot encode the query".into());
    };
    if upstreams.is_empty() {
        return fail("no DNS resolver configured on the host".into());
    }
    let mut last = String::new();
    for up in upstreams {
        match query_sync(*up, &bytes, msg.metadata.id, timeout) {
            Ok(m) => {
                if m.metadata.response_code != ResponseCode::NoError {
                    return fail(format!("{} from {up}", m.metadata.response_code));
                }
                let mut addrs = Vec::new();
                let mut ttl = u32::MAX;
                for r in &m.answers {
                    if let RData::A(a) = &r.data {
                        addrs.push(a.0);
                        ttl = ttl.min(r.ttl);
                    }
                }
                addrs.sort();
                addrs.dedup();
                if addrs.is_empty() {
                    return fail(format!("no IPv4 address (from {up})"));
                }
                return Resolved {
                    addrs,
                    ttl: Duration::from_secs(u64::from(ttl)),
                    error: None,
                };
            }
            Err(e) => last = format!("{up}: {e}"),
        }
    }
    fail(last)
}

fn query_sync(up: SocketAddr, bytes: &[u8], id: u16, timeout: Duration) -> Result<Message, String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    let local: SocketAddr = if up.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let s = std::net::UdpSocket::bind(local).map_err(|e| e.to_string())?;
    s.connect(up).map_err(|e| e.to_string())?;
    s.send(bytes).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MAX_UDP];
    let m = loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or("no answer in time")?;
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
        if let Ok(m) = Message::from_vec(&buf[..n])
            && m.metadata.id == id
            && m.metadata.message_type == MessageType::Response
        {
            break m;
        }
    };
    if !m.metadata.truncation {
        return Ok(m);
    }
    // Truncated: ask again over TCP.
    let left = deadline.saturating_duration_since(Instant::now());
    let mut t = std::net::TcpStream::connect_timeout(&up, left.max(Duration::from_millis(1)))
        .map_err(|e| e.to_string())?;
    t.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(bytes.len()).map_err(|e| e.to_string())?;
    t.write_all(&len.to_be_bytes())
        .and_then(|()| t.write_all(bytes))
        .map_err(|e| e.to_string())?;
    let mut l = [0u8; 2];
    t.read_exact(&mut l).map_err(|e| e.to_string())?;
    let mut a = vec![0u8; usize::from(u16::from_be_bytes(l))];
    t.read_exact(&mut a).map_err(|e| e.to_string())?;
    Message::from_vec(&a).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_keep_loopback() {
        let v = parse_upstreams(
            "nameserver 127.0.0.53\nnameserver ::1\nnameserver 0.0.0.0\nsearch x\n",
        );
        assert_eq!(
            v,
            [
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn shared(policy: &str) -> Shared {
        Shared {
            client: Ipv4Addr::LOCALHOST,
            policy: RwLock::new(policy.parse().unwrap()),
            // Nothing listens on the discard port of TEST-NET: never reached
            // in these tests (only refused names are asked).
            upstreams: vec!["127.0.0.1:9".parse().unwrap()],
            refused: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            refusal: tokio::sync::Notify::new(),
        }
    }

    #[tokio::test]
    async fn refused_names_get_refused_without_forwarding() {
        let s = shared("allow=ok.example:443");
        let a = answer(&s, &query("evil.example."), false).await.unwrap();
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(s.refused.load(Ordering::Relaxed), 1);
        let s = shared("deny-all");
        let a = answer(&s, &query("ok.example."), false).await.unwrap();
        assert_eq!(
            Message::from_vec(&a).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
        // Garbage is dropped, not forwarded.
        assert!(answer(&s, b"\x00\x01garbage", false).await.is_none());
    }
}
