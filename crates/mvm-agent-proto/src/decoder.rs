//! The sans-IO frame decoder: feed it any byte slices, take complete frames.
//!
//! The decoder never panics on any input. The length prefix is checked as
//! soon as its four bytes are present, so an oversize frame is rejected
//! before its body is awaited or any buffer is grown for it.
//!
//! Two classes of errors:
//! - a broken frame *header* (length too large or too small): the stream is
//!   out of sync, the decoder is poisoned and the connection must be closed;
//! - a well-framed frame whose payload cannot be decoded (an unknown kind, a
//!   request this version does not know, a bad JSON or a wrong size):
//!   [`ProtoError::Undecodable`], which names the session. The frame is
//!   skipped and the stream stays usable, so a peer can answer an error on
//!   that session instead of dropping the link ([`ProtoError::is_fatal`]).

use bytes::{Buf, BytesMut};

use crate::frame::{Frame, HEADER_LEN, MAX_FRAME_LEN, Message};

/// A malformed stream or frame.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The length field exceeds [`MAX_FRAME_LEN`].
    #[error("frame length {len} exceeds the limit of {MAX_FRAME_LEN} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
    },
    /// The length field is smaller than the session id + kind.
    #[error("frame length {len} is shorter than the 5-byte minimum")]
    FrameTooShort {
        /// The announced length.
        len: u32,
    },
    /// The kind byte is not known.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A data payload exceeds 64 KiB.
    #[error("data payload of {len} bytes in a frame of kind {kind} exceeds 64 KiB")]
    DataTooLarge {
        /// The kind byte.
        kind: u8,
        /// Payload length.
        len: usize,
    },
    /// A fixed-size payload has the wrong size.
    #[error("payload of {len} bytes is the wrong size for frame kind {kind}")]
    BadLength {
        /// The kind byte.
        kind: u8,
        /// Payload length.
        len: usize,
    },
    /// A JSON payload does not parse (or cannot be written).
    #[error("bad JSON payload in a frame of kind {kind}")]
    BadPayload {
        /// The kind byte.
        kind: u8,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A well-framed frame whose payload cannot be decoded; the stream is
    /// still in sync (see the module docs).
    #[error("frame of kind {kind} on session {session} cannot be decoded")]
    Undecodable {
        /// The session id of the frame.
        session: u32,
        /// Its kind byte.
        kind: u8,
        /// Why its payload was refused.
        #[source]
        source: Box<ProtoError>,
    },
    /// An earlier error left the stream out of sync.
    #[error("the frame stream failed earlier and is out of sync")]
    Poisoned,
}

impl ProtoError {
    /// Whether the stream is out of sync after this error (everything but
    /// [`ProtoError::Undecodable`]).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, ProtoError::Undecodable { .. })
    }
}

/// Incremental decoder of the frame stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    poisoned: bool,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append received bytes. Nothing is buffered once the decoder failed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.poisoned {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `None` if more bytes are needed, or the
    /// error that makes the stream unusable.
    pub fn next_frame(&mut self) -> Option<Result<Frame, ProtoError>> {
        if self.poisoned {
            return Some(Err(ProtoError::Poisoned));
        }
        let r = self.try_next();
        if let Some(Err(e)) = &r
            && e.is_fatal()
        {
            self.poisoned = true;
            self.buf = BytesMut::new();
        }
        r
    }

    fn try_next(&mut self) -> Option<Result<Frame, ProtoError>> {
        let len_bytes: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        let len = u32::from_le_bytes(len_bytes);
        if len > MAX_FRAME_LEN {
            return Some(Err(ProtoError::FrameTooLarge { len: len.into() }));
        }
        if (len as usize) < HEADER_LEN - 4 {
            return Some(Err(ProtoError::FrameTooShort { len }));
        }
        let total = 4 + len as usize;
        if self.buf.len() < total {
            // Reserve once for the whole (bounded) frame to avoid regrowth.
            self.buf.reserve(total - self.buf.len());
            return None;
        }
        let mut frame = self.buf.split_to(total);
        frame.advance(4);
        let session = frame.get_u32_le();
        let kind = frame.get_u8();
        Some(
            Message::decode(kind, frame.freeze())
                .map(|message| Frame { session, message })
                .map_err(|e| ProtoError::Undecodable {
                    session,
                    kind,
                    source: Box::new(e),
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_length_is_rejected_from_the_prefix_alone() {
        let mut d = FrameDecoder::new();
        d.feed(&(MAX_FRAME_LEN + 1).to_le_bytes());
        assert!(matches!(
            d.next_frame(),
            Some(Err(ProtoError::FrameTooLarge { .. }))
        ));
        assert!(matches!(d.next_frame(), Some(Err(ProtoError::Poisoned))));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn short_length_is_rejected() {
        let mut d = FrameDecoder::new();
        d.feed(&[4, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            d.next_frame(),
            Some(Err(ProtoError::FrameTooShort { len: 4 }))
        ));
    }

    #[test]
    fn partial_frame_waits() {
        let mut d = FrameDecoder::new();
        d.feed(&[6, 0, 0, 0, 1, 0]);
        assert!(d.next_frame().is_none());
        d.feed(&[0, 0, 5, 9]);
        match d.next_frame() {
            Some(Err(ProtoError::Undecodable {
                session: 1,
                kind: 5,
                source,
            })) => assert!(matches!(*source, ProtoError::BadLength { .. })),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_undecodable_frame_is_skipped_and_the_stream_goes_on() {
        let mut d = FrameDecoder::new();
        // Kind 200 on session 3 (unknown), then a Cancel on session 4.
        d.feed(&[5, 0, 0, 0, 3, 0, 0, 0, 200]);
        d.feed(&[5, 0, 0, 0, 4, 0, 0, 0, 14]);
        match d.next_frame() {
            Some(Err(e @ ProtoError::Undecodable { session: 3, .. })) => assert!(!e.is_fatal()),
            other => panic!("{other:?}"),
        }
        match d.next_frame() {
            Some(Ok(f)) => assert_eq!(f, Frame::new(4, Message::Cancel)),
            other => panic!("{other:?}"),
        }
        assert!(d.next_frame().is_none());
    }
}
