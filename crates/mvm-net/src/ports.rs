//! The `-p [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp]` syntax.
//!
//! - `8080:80`            host 0.0.0.0:8080 -> guest port 80 (Docker's default address)
//! - `127.0.0.1:8080:80`  only on the host's loopback
//! - `8080:80/tcp`        the same as `8080:80`
//! - `.../udp`            rejected: UDP is not supported yet
//!
//! Ports are 1..=65535. IPv6 host addresses are not supported.

use std::net::Ipv4Addr;

use mvm_core::instance::PortMapping;

/// Errors in a `-p` value.
#[derive(Debug, thiserror::Error)]
pub enum PortSpecError {
    /// The value is malformed; `token` is the offending part.
    #[error(
        "invalid port mapping {spec:?}: {token:?} {reason} (expected [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp])"
    )]
    Invalid {
        /// The whole value.
        spec: String,
        /// The bad part.
        token: String,
        /// Why it is bad.
        reason: String,
    },
    /// A protocol other than TCP.
    #[error("invalid port mapping {spec:?}: protocol {protocol:?} is not supported yet (only tcp)")]
    Unsupported {
        /// The whole value.
        spec: String,
        /// The protocol given.
        protocol: String,
    },
}

/// Parse one `-p` value.
pub fn parse_port_spec(spec: &str) -> Result<PortMapping, PortSpecError> {
    let bad = |token: &str, reason: &str| PortSpecError::Invalid {
        spec: spec.to_owned(),
        token: token.to_owned(),
        reason: reason.to_owned(),
    };
    let (body, protocol) = match spec.rsplit_once('/') {
        Some((b, p)) => (b, p),
        None => (spec, "tcp"),
    };
    let protocol = protocol.to_ascii_lowercase();
    if protocol != "tcp" {
        if protocol == "udp" || protocol == "sctp" {
            return Err(PortSpecError::Unsupported {
                spec: spec.to_owned(),
                protocol,
            });
        }
        return Err(bad(&protocol, "is not a protocol"));
    }
    if body.contains('[') {
        return Err(bad(
            body,
            "is an IPv6 address; only IPv4 host addresses are supported",
        ));
    }
    let parts: Vec<&str> = body.split(':').collect();
    let (ip, host, guest) = match parts.as_slice() {
        [h, g] => (None, *h, *g),
        [ip, h, g] => (Some(*ip), *h, *g),
        [_] => return Err(bad(body, "has no GUEST_PORT")),
        _ => return Err(bad(body, "has too many `:`")),
    };
    let port = |t: &str| -> Result<u16, PortSpecError> {
        match t.parse::<u16>() {
            Ok(0) => Err(bad(t, "is not a port (1..=65535)")),
            Ok(p) => Ok(p),
            Err(_) => Err(bad(t, "is not a port (1..=65535)")),
        }
    };
    let host_ip = match ip {
        None => Ipv4Addr::UNSPECIFIED,
        Some(t) => t.parse().map_err(|_| bad(t, "is not an IPv4 address"))?,
    };
    Ok(PortMapping {
        host_ip,
        host_port: port(host)?,
        guest_port: port(guest)?,
        protocol,
    })
}

/// Render a mapping back into `-p` form (`HOST_IP:HOST_PORT:GUEST_PORT/tcp`).
pub fn format_port_spec(m: &PortMapping) -> String {
    format!(
        "{}:{}:{}/{}",
        m.host_ip, m.host_port, m.guest_port, m.protocol
    )
}

/// QEMU user-mode networking (`-netdev user,...`) options giving the same
/// `-p` semantics without root: one `hostfwd=tcp:HOST_IP:HOST_PORT-:GUEST_PORT`
/// per mapping.
pub fn qemu_user_hostfwds(ports: &[PortMapping]) -> Vec<String> {
    ports
        .iter()
        .map(|m| {
            format!(
                "hostfwd={}:{}:{}-:{}",
                m.protocol, m.host_ip, m.host_port, m.guest_port
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let m = parse_port_spec("8080:80").unwrap();
        assert_eq!(
            (m.host_ip, m.host_port, m.guest_port, m.protocol.as_str()),
            (Ipv4Addr::UNSPECIFIED, 8080, 80, "tcp")
        );
        let m = parse_port_spec("127.0.0.1:2222:22/tcp").unwrap();
        assert_eq!(m.host_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(format_port_spec(&m), "127.0.0.1:2222:22/tcp");
        assert_eq!(parse_port_spec(&format_port_spec(&m)).unwrap(), m);
        assert_eq!(qemu_user_hostfwds(&[m]), ["hostfwd=tcp:127.0.0.1:2222-:22"]);
    }

    #[test]
    fn errors_name_the_bad_token() {
        for (spec, token) in [
            ("80", "80"),
            ("x:80", "x"),
            ("8080:0", "0"),
            ("8080:70000", "70000"),
            ("1.2.3:8080:80", "1.2.3"),
            ("1:2:3:4", "1:2:3:4"),
            ("8080:80/xyz", "xyz"),
            ("[::1]:8080:80", "[::1]:8080:80"),
        ] {
            let e = parse_port_spec(spec).unwrap_err().to_string();
            assert!(e.contains(&format!("{token:?}")), "{spec}: {e}");
        }
        let e = parse_port_spec("53:53/udp").unwrap_err().to_string();
        assert!(e.contains("not supported yet"), "{e}");
    }
}
