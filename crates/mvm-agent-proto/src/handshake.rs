//! Version negotiation.
//!
//! The initiator (host) sends its [`Hello`] first; the responder (agent)
//! reads it, answers with its own `Hello`, and both use the highest version
//! that lies in both `[min_version, max_version]` ranges. With no common
//! version, the side that finds out sends an `Error` frame on session 0 that
//! names both ranges, then closes. [`negotiate`] is the sans-IO rule;
//! [`initiate`] and [`respond`] (feature `tokio`) run the exchange on a stream
//! with a deadline.

use crate::message::{ErrorKind, ErrorMsg, Hello, Role};

/// The highest protocol version this crate speaks.
///
/// - 1: exec, files, ping/info, shutdown.
/// - 2: terminals (`ExecRequest::tty`, `Resize`), clones re-identified after
///   a restore (`Reidentify`), a second `Hello` restarting a live stream,
///   the exec `user` field and `WaitMain` (OCI images' main process); an
///   agent answers a request it cannot decode with `Error(InvalidRequest)`
///   on that session.
///
/// A feature of version N is used only when the negotiated version is >= N
/// (see `AgentClient::require`); otherwise the host fails with an error that
/// names the feature and the fix.
pub const PROTOCOL_VERSION: u32 = 2;

/// The lowest protocol version this crate still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The version that brought terminals (`ExecRequest::tty`, `Resize`).
pub const TTY_VERSION: u32 = 2;

/// The version that brought the exec `user` and `WaitMain` (OCI images).
pub const USER_VERSION: u32 = 2;

/// The highest version both hellos accept, or the error message naming
/// both ranges.
pub fn negotiate(ours: &Hello, theirs: &Hello) -> Result<u32, ErrorMsg> {
    let lo = ours.min_version.max(theirs.min_version);
    let hi = ours.max_version.min(theirs.max_version);
    if lo <= hi {
        Ok(hi)
    } else {
        Err(ErrorMsg::new(
            ErrorKind::Version,
            format!(
                "no common protocol version: {:?} {:?} speaks {}..={}, {:?} {:?} speaks {}..={}",
                ours.role,
                ours.software,
                ours.min_version,
                ours.max_version,
                theirs.role,
                theirs.software,
                theirs.min_version,
                theirs.max_version
            ),
        ))
    }
}

/// This crate's `Hello` for `role`, speaking
/// [`MIN_PROTOCOL_VERSION`]`..=`[`PROTOCOL_VERSION`].
pub fn hello(role: Role, software: impl Into<String>) -> Hello {
    hello_up_to(role, software, PROTOCOL_VERSION)
}

/// A `Hello` speaking [`MIN_PROTOCOL_VERSION`]`..=max_version` (the
/// multiplexer offers its clients no more than its guest speaks).
pub fn hello_up_to(role: Role, software: impl Into<String>, max_version: u32) -> Hello {
    Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: max_version.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        role,
        software: software.into(),
    }
}

#[cfg(feature = "tokio")]
pub use self::stream::*;

#[cfg(feature = "tokio")]
mod stream {
    use std::time::Instant;

    use tokio::io::{AsyncRead, AsyncWrite};

    use super::negotiate;
    use crate::frame::{Frame, Message};
    use crate::io::{FrameReader, StreamError, write_frame};
    use crate::message::{Hello, Role};

    /// The outcome of a successful handshake.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Negotiated {
        /// The version both sides use.
        pub version: u32,
        /// The peer's `Hello`.
        pub peer: Hello,
    }

    /// Why a handshake failed.
    #[derive(Debug, thiserror::Error)]
    pub enum HandshakeError {
        /// The deadline passed first.
        #[error("handshake timed out")]
        Timeout,
        /// The peer closed the stream before its `Hello`.
        #[error("peer closed the stream during the handshake")]
        Closed,
        /// Reading or writing failed.
        #[error("handshake stream failed")]
        Stream(#[source] StreamError),
        /// The peer sent something else than `Hello` first.
        #[error("expected Hello on session 0, got frame kind {kind} on session {session}")]
        Unexpected {
            /// The kind byte received.
            kind: u8,
            /// Its session id.
            session: u32,
        },
        /// The peer is not of the role expected.
        #[error("peer announced role {got:?}, expected {expected:?}")]
        WrongRole {
            /// The role the peer announced.
            got: Role,
            /// The role expected.
            expected: Role,
        },
        /// The peer refused (e.g. no common version).
        #[error("peer refused the handshake: {0}")]
        Rejected(String),
        /// No common version (we noticed and told the peer).
        #[error("{0}")]
        Version(String),
    }

    fn expected_peer(ours: &Hello) -> Role {
        match ours.role {
            Role::Host => Role::Agent,
            Role::Agent => Role::Host,
        }
    }

    async fn read_hello<R: AsyncRead + Unpin>(
        reader: &mut FrameReader<R>,
        ours: &Hello,
    ) -> Result<Hello, HandshakeError> {
        let frame = reader
            .read_frame()
            .await
            .map_err(HandshakeError::Stream)?
            .ok_or(HandshakeError::Closed)?;
        match frame {
            Frame {
                session: 0,
                message: Message::Hello(h),
            } => {
                let expected = expected_peer(ours);
                if h.role != expected {
                    return Err(HandshakeError::WrongRole {
                        got: h.role,
                        expected,
                    });
                }
                Ok(h)
            }
            Frame {
                message: Message::Error(e),
                ..
            } => Err(HandshakeError::Rejected(e.message)),
            f => Err(HandshakeError::Unexpected {
                kind: f.message.kind(),
                session: f.session,
            }),
        }
    }

    async fn finish<W: AsyncWrite + Unpin>(
        writer: &mut W,
        ours: &Hello,
        peer: Hello,
    ) -> Result<Negotiated, HandshakeError> {
        match negotiate(ours, &peer) {
            Ok(version) => Ok(Negotiated { version, peer }),
            Err(e) => {
                let msg = e.message.clone();
                // Best effort: the peer may already be gone.
                let _ = write_frame(writer, &Frame::new(0, Message::Error(e))).await;
                Err(HandshakeError::Version(msg))
            }
        }
    }

    /// Run the handshake as initiator (the host): send `ours`, then read
    /// the peer's `Hello`, all before `deadline`.
    pub async fn initiate<R, W>(
        reader: &mut FrameReader<R>,
        writer: &mut W,
        ours: &Hello,
        deadline: Instant,
    ) -> Result<Negotiated, HandshakeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let fut = async {
            write_frame(writer, &Frame::new(0, Message::Hello(ours.clone())))
                .await
                .map_err(HandshakeError::Stream)?;
            let peer = read_hello(reader, ours).await?;
            finish(writer, ours, peer).await
        };
        tokio::time::timeout_at(deadline.into(), fut)
            .await
            .map_err(|_| HandshakeError::Timeout)?
    }

    /// Run the handshake as responder (the agent): read the peer's `Hello`,
    /// answer with `ours`, all before `deadline`.
    pub async fn respond<R, W>(
        reader: &mut FrameReader<R>,
        writer: &mut W,
        ours: &Hello,
        deadline: Instant,
    ) -> Result<Negotiated, HandshakeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let fut = async {
            let peer = read_hello(reader, ours).await?;
            write_frame(writer, &Frame::new(0, Message::Hello(ours.clone())))
                .await
                .map_err(HandshakeError::Stream)?;
            finish(writer, ours, peer).await
        };
        tokio::time::timeout_at(deadline.into(), fut)
            .await
            .map_err(|_| HandshakeError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(min: u32, max: u32) -> Hello {
        Hello {
            min_version: min,
            max_version: max,
            role: Role::Host,
            software: "t".into(),
        }
    }

    #[test]
    fn highest_common_version_wins() {
        assert_eq!(negotiate(&h(1, 3), &h(2, 5)), Ok(3));
        assert_eq!(negotiate(&h(1, 1), &h(1, 1)), Ok(1));
    }

    #[test]
    fn disjoint_ranges_name_both() {
        let e = negotiate(&h(1, 1), &h(2, 3)).unwrap_err();
        assert!(
            e.message.contains("1..=1") && e.message.contains("2..=3"),
            "{}",
            e.message
        );
        assert_eq!(e.kind, ErrorKind::Version);
    }
}
