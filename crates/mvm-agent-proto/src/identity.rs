//! Making a restored clone a machine of its own (protocol version 2).
//!
//! A machine restored from a template's snapshot resumes with the
//! template's memory: its hostname, the kernel's random pool and CRNG
//! state, its clock (frozen when the snapshot was taken), its machine-id
//! and its network configuration are the template's. Before any user
//! command runs, the host sends [`Request::Reidentify`] with what makes
//! this clone distinct:
//!
//! - `hostname`: set with `sethostname` and written to `/etc/hostname` and
//!   `/etc/hosts`;
//! - `entropy`: at least [`MIN_ENTROPY_BYTES`] fresh random bytes from the
//!   host, mixed into the guest's input pool and credited
//!   (`RNDADDENTROPY`), after which the CRNG is reseeded at once
//!   (`RNDRESEEDCRNG`), so the next `getrandom`/`/dev/urandom` read of two
//!   clones of one snapshot can never be the same;
//! - `unix_time_ns`: the host's wall clock, set with `clock_settime`;
//! - `machine_id`: a new `/etc/machine-id` (32 lowercase hex digits), only
//!   where the image has that file;
//! - `net`: the clone's own address: eth0 gets the new MAC (the device
//!   state restored from the snapshot carries the template's), its old
//!   IPv4 addresses are replaced by the new one, the default route and
//!   `/etc/resolv.conf`/`/etc/hosts` are rewritten;
//! - `remount`: mount points whose drive's *contents* changed under the
//!   same device (the clone's config drive): unmounted, the block device's
//!   cache dropped, mounted again.
//!
//! The agent answers [`Response::Reidentified`] with a [`ReidentifyReport`]
//! once every step succeeded, or an `Error` naming the step that failed
//! (the host then must not use the clone). A host must only send this
//! request when the negotiated version is at least
//! [`REIDENTIFY_MIN_VERSION`]; [`crate::client::AgentClient::reidentify`]
//! checks that and fails naming the missing feature otherwise.
//!
//! [`Request::Reidentify`]: crate::Request::Reidentify
//! [`Response::Reidentified`]: crate::Response::Reidentified

use serde::{Deserialize, Serialize};

/// The first protocol version with [`crate::Request::Reidentify`].
pub const REIDENTIFY_MIN_VERSION: u32 = 2;

/// The least host entropy the agent accepts (256 bits).
pub const MIN_ENTROPY_BYTES: usize = 32;
/// The most host entropy the agent accepts (the kernel caps one
/// `RNDADDENTROPY` far higher; this keeps the frame small).
pub const MAX_ENTROPY_BYTES: usize = 512;

/// What makes a clone distinct (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReidentifyRequest {
    /// The new hostname (the machine's name).
    pub hostname: String,
    /// Fresh random bytes from the host
    /// ([`MIN_ENTROPY_BYTES`]..=[`MAX_ENTROPY_BYTES`]).
    pub entropy: Vec<u8>,
    /// The host's wall clock, nanoseconds since the Unix epoch.
    pub unix_time_ns: u64,
    /// A new machine-id (32 lowercase hex digits); written only where
    /// `/etc/machine-id` exists.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// The clone's network address, if it has a network interface.
    #[serde(default)]
    pub net: Option<ReidentifyNet>,
    /// Mount points to unmount and mount again (their drive changed).
    #[serde(default)]
    pub remount: Vec<String>,
}

/// The clone's network configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReidentifyNet {
    /// Interface name in the guest (`eth0`).
    pub iface: String,
    /// New MAC address (`06:00:ac:10:00:05`).
    pub mac: String,
    /// New IPv4 address.
    pub ip: std::net::Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: std::net::Ipv4Addr,
    /// DNS servers for `/etc/resolv.conf`.
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
}

/// What the agent did, answer to a reidentify request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReidentifyReport {
    /// The hostname now set.
    pub hostname: String,
    /// Entropy bits credited to the guest's pool.
    pub entropy_bits: u32,
    /// Whether the CRNG was reseeded right away.
    pub crng_reseeded: bool,
    /// How far the clock was (or, with `clock_set` false, would have been)
    /// stepped, in ms (positive: forward).
    pub clock_step_ms: i64,
    /// Whether the clock was set (always, in a guest).
    pub clock_set: bool,
    /// The machine-id written, if the image has one.
    pub machine_id: Option<String>,
    /// `IP/PREFIX MAC` now on the interface, if any.
    pub net: Option<String>,
    /// Mount points remounted.
    pub remounted: Vec<String>,
    /// How long the whole request took in the guest, in µs.
    pub elapsed_us: u64,
}

/// Whether `s` is a valid machine-id (32 lowercase hex digits, not all
/// zero).
pub fn valid_machine_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Whether `h` is acceptable as a hostname (1..=64 of `[A-Za-z0-9.-]`, not
/// starting with `-`).
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with('-')
}

impl ReidentifyRequest {
    /// Check the fields a guest would otherwise reject half-way through.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_hostname(&self.hostname) {
            return Err(format!("invalid hostname {:?}", self.hostname));
        }
        if !(MIN_ENTROPY_BYTES..=MAX_ENTROPY_BYTES).contains(&self.entropy.len()) {
            return Err(format!(
                "entropy must be {MIN_ENTROPY_BYTES}..={MAX_ENTROPY_BYTES} bytes, got {}",
                self.entropy.len()
            ));
        }
        if let Some(id) = &self.machine_id
            && !valid_machine_id(id)
        {
            return Err(format!("invalid machine-id {id:?}"));
        }
        if let Some(n) = &self.net
            && n.prefix > 32
        {
            return Err(format!("invalid prefix /{}", n.prefix));
        }
        for m in &self.remount {
            if !m.starts_with('/') || m == "/" {
                return Err(format!("cannot remount {m:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> ReidentifyRequest {
        ReidentifyRequest {
            hostname: "clone-1".into(),
            entropy: vec![7; 32],
            unix_time_ns: 1,
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
            net: None,
            remount: vec!["/mnt/config".into()],
        }
    }

    #[test]
    fn validation() {
        req().validate().unwrap();
        let mut r = req();
        r.entropy.truncate(31);
        assert!(r.validate().unwrap_err().contains("entropy"));
        let mut r = req();
        r.hostname = "-x".into();
        assert!(r.validate().is_err());
        let mut r = req();
        r.machine_id = Some("0".repeat(32));
        assert!(r.validate().is_err());
        let mut r = req();
        r.remount = vec!["/".into()];
        assert!(r.validate().is_err());
    }

    #[test]
    fn unknown_requests_decode_as_unknown() {
        use crate::frame::Message;
        let m = Message::decode(
            2,
            bytes::Bytes::from_static(br#"{"Teleport": {"to": "mars"}}"#),
        )
        .unwrap();
        assert_eq!(
            m,
            Message::Request(crate::Request::Unknown("Teleport".into()))
        );
        let m = Message::decode(2, bytes::Bytes::from_static(br#""Dance""#)).unwrap();
        assert_eq!(m, Message::Request(crate::Request::Unknown("Dance".into())));
        let mut out = Vec::new();
        crate::encode(&crate::Frame::new(1, m.clone()), &mut out).unwrap();
        assert_eq!(&out[9..], br#""Dance""#);
        // Not JSON at all is still a protocol error.
        assert!(Message::decode(2, bytes::Bytes::from_static(b"{nope")).is_err());
        // A known request with a body this side cannot parse (a newer
        // peer's fields) is answered the same way, by name.
        let m = Message::decode(2, bytes::Bytes::from_static(br#"{"Exec": 5}"#)).unwrap();
        assert_eq!(m, Message::Request(crate::Request::Unknown("Exec".into())));
    }

    #[test]
    fn wire_shape_is_stable() {
        let v = serde_json::to_value(crate::Request::Reidentify(req())).unwrap();
        assert_eq!(v["Reidentify"]["hostname"], "clone-1");
        // Optional fields may be omitted by an older host.
        let r: ReidentifyRequest = serde_json::from_value(serde_json::json!({
            "hostname": "a", "entropy": [1, 2], "unix_time_ns": 5
        }))
        .unwrap();
        assert!(r.net.is_none() && r.remount.is_empty());
    }
}
