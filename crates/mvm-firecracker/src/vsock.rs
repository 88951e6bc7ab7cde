//! Host side of Firecracker's hybrid vsock.
//!
//! Firecracker exposes the guest's vsock as a Unix socket (`uds_path`). To
//! reach guest port `P`, the host connects to it and writes the line
//! `CONNECT P\n`. If a guest process listens on `P`, Firecracker answers
//! `OK <host-port>\n` and from then on the stream carries the guest
//! connection's bytes. If nothing listens yet (the guest is still booting),
//! Firecracker closes the connection (or resets it); the host retries with a
//! short bounded backoff until its deadline. Any other answer is a protocol
//! error and is not retried.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The guest port the mvm agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// Longest acceptable handshake answer (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 32;

/// Errors of the vsock connector.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest did not accept before the deadline.
    #[error(
        "guest port {port} behind {socket} did not accept a connection within {waited:?} (last: {last})"
    )]
    Timeout {
        /// The hybrid vsock socket.
        socket: PathBuf,
        /// Guest port.
        port: u32,
        /// How long we tried.
        waited: Duration,
        /// The last failure, in words.
        last: String,
    },
    /// Firecracker answered something that is not `OK <n>`.
    #[error("unexpected vsock handshake reply {reply:?} from {socket} for port {port}")]
    BadReply {
        /// The hybrid vsock socket.
        socket: PathBuf,
        /// Guest port.
        port: u32,
        /// What came back.
        reply: String,
    },
    /// A non-retryable IO error.
    #[error("vsock connection to {socket} failed")]
    Io {
        /// The hybrid vsock socket.
        socket: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Outcome of one handshake attempt.
enum Attempt {
    Connected(UnixStream),
    /// Retry: the guest (or Firecracker's socket) is not there yet.
    NotYet(String),
}

/// Connect to guest port `port` through the hybrid vsock socket `socket`,
/// retrying until `deadline`. Returns the stream positioned after the
/// `OK <n>\n` line.
pub async fn connect(
    socket: &Path,
    port: u32,
    deadline: Instant,
) -> Result<UnixStream, VsockError> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(5);
    let mut last = String::from("no attempt made");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(VsockError::Timeout {
                socket: socket.to_owned(),
                port,
                waited: now - start,
                last,
            });
        }
        match tokio::time::timeout(deadline - now, attempt(socket, port)).await {
            Ok(Ok(Attempt::Connected(s))) => return Ok(s),
            Ok(Ok(Attempt::NotYet(why))) => last = why,
            Ok(Err(e)) => return Err(e),
            Err(_) => last = "handshake did not complete before the deadline".into(),
        }
        let now = Instant::now();
        if now >= deadline {
            continue;
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

async fn attempt(socket: &Path, port: u32) -> Result<Attempt, VsockError> {
    use std::io::ErrorKind as K;
    let io_err = |source| VsockError::Io {
        socket: socket.to_owned(),
        source,
    };
    let retryable = |k: K| {
        matches!(
            k,
            K::NotFound
                | K::ConnectionRefused
                | K::ConnectionReset
                | K::BrokenPipe
                | K::UnexpectedEof
        )
    };
    let mut s = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if retryable(e.kind()) => return Ok(Attempt::NotYet(format!("connect: {e}"))),
        Err(e) => return Err(io_err(e)),
    };
    if let Err(e) = s.write_all(format!("CONNECT {port}\n").as_bytes()).await {
        return if retryable(e.kind()) {
            Ok(Attempt::NotYet(format!("write: {e}")))
        } else {
            Err(io_err(e))
        };
    }
    // Read the reply one byte at a time: anything after the newline belongs
    // to the guest protocol and must stay in the stream.
    let mut reply = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(0) if reply.is_empty() => {
                return Ok(Attempt::NotYet(
                    "closed without reply (guest not listening)".into(),
                ));
            }
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => {
                reply.push(b'\n');
                break;
            }
            Ok(_) => {
                reply.push(b[0]);
                if reply.len() > MAX_REPLY {
                    break;
                }
            }
            Err(e) if retryable(e.kind()) && reply.is_empty() => {
                return Ok(Attempt::NotYet(format!("read: {e}")));
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    if parse_ok(&reply).is_some() {
        Ok(Attempt::Connected(s))
    } else {
        Err(VsockError::BadReply {
            socket: socket.to_owned(),
            port,
            reply: String::from_utf8_lossy(&reply).into_owned(),
        })
    }
}

/// Parse `OK <n>\n`, returning `n`.
pub fn parse_ok(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let n = s.strip_prefix("OK ")?.strip_suffix('\n')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_lines() {
        assert_eq!(parse_ok(b"OK 1073741824\n"), Some(1073741824));
        assert_eq!(parse_ok(b"OK 5"), None);
        assert_eq!(parse_ok(b"OK \n"), None);
        assert_eq!(parse_ok(b"OK -1\n"), None);
        assert_eq!(parse_ok(b"ok 1\n"), None);
        assert_eq!(parse_ok(b"HTTP/1.1 400\n"), None);
    }
}
