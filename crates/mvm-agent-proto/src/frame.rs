//! Frames: the unit on the wire (see the crate docs for the layout) and the
//! typed [`Message`] each frame carries.

use bytes::Bytes;

use crate::decoder::ProtoError;
use crate::message::{ErrorMsg, ExitStatus, Hello, Request, Response, WinSize};

/// Largest accepted value of the length field (everything after it).
pub const MAX_FRAME_LEN: u32 = 1024 * 1024;
/// Largest payload of a data frame (`Stdin`, `Stdout`, `Stderr`, `Data`).
pub const DATA_CHUNK_MAX: usize = 64 * 1024;
/// Bytes of the fixed header: length (4) + session (4) + kind (1).
pub const HEADER_LEN: usize = 9;
/// Credit every data sender starts with, per session and direction.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// One frame: a session id and the message it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `0` for the connection itself, otherwise a host-chosen session id.
    pub session: u32,
    /// The message.
    pub message: Message,
}

impl Frame {
    /// A frame on `session`.
    pub fn new(session: u32, message: Message) -> Self {
        Self { session, message }
    }
}

/// Every message of the protocol, one per frame kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Kind 1: handshake.
    Hello(Hello),
    /// Kind 2: opens a session.
    Request(Request),
    /// Kind 3: a reply to a request.
    Response(Response),
    /// Kind 4: bytes for the command's stdin.
    Stdin(Bytes),
    /// Kind 5: end of the command's stdin.
    StdinEof,
    /// Kind 6: bytes the command wrote to stdout.
    Stdout(Bytes),
    /// Kind 7: bytes the command wrote to stderr.
    Stderr(Bytes),
    /// Kind 8: the command ended.
    Exit(ExitStatus),
    /// Kind 9: deliver this signal to the command's process group.
    Signal(i32),
    /// Kind 10: the session (or on session 0, the connection) failed.
    Error(ErrorMsg),
    /// Kind 11: flow-control credit for the opposite direction.
    Window(u32),
    /// Kind 12: a chunk of file contents.
    Data(Bytes),
    /// Kind 13: end of file contents.
    DataEnd,
    /// Kind 14: the host abandons the session.
    Cancel,
    /// Kind 15 (protocol >= 2): the session's terminal changed size.
    Resize(WinSize),
}

impl Message {
    /// The kind byte on the wire.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::Request(_) => 2,
            Message::Response(_) => 3,
            Message::Stdin(_) => 4,
            Message::StdinEof => 5,
            Message::Stdout(_) => 6,
            Message::Stderr(_) => 7,
            Message::Exit(_) => 8,
            Message::Signal(_) => 9,
            Message::Error(_) => 10,
            Message::Window(_) => 11,
            Message::Data(_) => 12,
            Message::DataEnd => 13,
            Message::Cancel => 14,
            Message::Resize(_) => 15,
        }
    }

    /// Bytes this message counts against the flow-control window (the
    /// length of a data payload, 0 for every other message).
    pub fn data_len(&self) -> usize {
        match self {
            Message::Stdin(b) | Message::Stdout(b) | Message::Stderr(b) | Message::Data(b) => {
                b.len()
            }
            _ => 0,
        }
    }

    /// Decode a payload of the given kind.
    pub fn decode(kind: u8, payload: Bytes) -> Result<Message, ProtoError> {
        fn json<T: serde::de::DeserializeOwned>(kind: u8, p: &[u8]) -> Result<T, ProtoError> {
            serde_json::from_slice(p).map_err(|source| ProtoError::BadPayload { kind, source })
        }
        /// A request, or [`Request::Unknown`] for well-formed JSON naming a
        /// request this side does not know (externally tagged: `"Name"` or
        /// `{"Name": {...}}`).
        fn request(p: &[u8]) -> Result<Request, ProtoError> {
            json::<Request>(2, p).or_else(|e| {
                let name = match serde_json::from_slice::<serde_json::Value>(p) {
                    Ok(serde_json::Value::String(s)) => s,
                    Ok(serde_json::Value::Object(o)) if o.len() == 1 => {
                        o.keys().next().cloned().unwrap_or_default()
                    }
                    _ => return Err(e),
                };
                Ok(Request::Unknown(name.chars().take(64).collect()))
            })
        }
        fn data(kind: u8, p: Bytes) -> Result<Bytes, ProtoError> {
            if p.len() > DATA_CHUNK_MAX {
                return Err(ProtoError::DataTooLarge { kind, len: p.len() });
            }
            Ok(p)
        }
        fn empty(kind: u8, p: &[u8], m: Message) -> Result<Message, ProtoError> {
            if p.is_empty() {
                Ok(m)
            } else {
                Err(ProtoError::BadLength { kind, len: p.len() })
            }
        }
        fn four(kind: u8, p: &[u8]) -> Result<[u8; 4], ProtoError> {
            p.try_into()
                .map_err(|_| ProtoError::BadLength { kind, len: p.len() })
        }
        Ok(match kind {
            1 => Message::Hello(json(kind, &payload)?),
            2 => Message::Request(request(&payload)?),
            3 => Message::Response(json(kind, &payload)?),
            4 => Message::Stdin(data(kind, payload)?),
            5 => empty(kind, &payload, Message::StdinEof)?,
            6 => Message::Stdout(data(kind, payload)?),
            7 => Message::Stderr(data(kind, payload)?),
            8 => Message::Exit(json(kind, &payload)?),
            9 => Message::Signal(i32::from_le_bytes(four(kind, &payload)?)),
            10 => Message::Error(json(kind, &payload)?),
            11 => Message::Window(u32::from_le_bytes(four(kind, &payload)?)),
            12 => Message::Data(data(kind, payload)?),
            13 => empty(kind, &payload, Message::DataEnd)?,
            14 => empty(kind, &payload, Message::Cancel)?,
            15 => {
                let b = four(kind, &payload)?;
                Message::Resize(WinSize {
                    rows: u16::from_le_bytes([b[0], b[1]]),
                    cols: u16::from_le_bytes([b[2], b[3]]),
                })
            }
            other => return Err(ProtoError::UnknownKind(other)),
        })
    }
}

/// Append the wire form of `frame` to `out`.
///
/// Fails (appending nothing) if a data payload exceeds [`DATA_CHUNK_MAX`] or
/// the frame would exceed [`MAX_FRAME_LEN`].
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&frame.session.to_le_bytes());
    let kind = frame.message.kind();
    out.push(kind);
    let body = (|| -> Result<(), ProtoError> {
        let json_err = |source| ProtoError::BadPayload { kind, source };
        match &frame.message {
            Message::Hello(m) => serde_json::to_writer(&mut *out, m).map_err(json_err)?,
            // An unknown request travels on (the multiplexer forwards it) as
            // its bare name, which decodes as unknown again.
            Message::Request(Request::Unknown(name)) => {
                serde_json::to_writer(&mut *out, name).map_err(json_err)?
            }
            Message::Request(m) => serde_json::to_writer(&mut *out, m).map_err(json_err)?,
            Message::Response(m) => serde_json::to_writer(&mut *out, m).map_err(json_err)?,
            Message::Exit(m) => serde_json::to_writer(&mut *out, m).map_err(json_err)?,
            Message::Error(m) => serde_json::to_writer(&mut *out, m).map_err(json_err)?,
            Message::Stdin(b) | Message::Stdout(b) | Message::Stderr(b) | Message::Data(b) => {
                if b.len() > DATA_CHUNK_MAX {
                    return Err(ProtoError::DataTooLarge { kind, len: b.len() });
                }
                out.extend_from_slice(b);
            }
            Message::Signal(s) => out.extend_from_slice(&s.to_le_bytes()),
            Message::Window(n) => out.extend_from_slice(&n.to_le_bytes()),
            Message::Resize(w) => {
                out.extend_from_slice(&w.rows.to_le_bytes());
                out.extend_from_slice(&w.cols.to_le_bytes());
            }
            Message::StdinEof | Message::DataEnd | Message::Cancel => {}
        }
        Ok(())
    })();
    if let Err(e) = body {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - 4;
    if len > MAX_FRAME_LEN as usize {
        out.truncate(start);
        return Err(ProtoError::FrameTooLarge { len: len as u64 });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_layout_is_little_endian() {
        let mut out = Vec::new();
        encode(&Frame::new(7, Message::Window(0x0102_0304)), &mut out).unwrap();
        assert_eq!(out, [9, 0, 0, 0, 7, 0, 0, 0, 11, 4, 3, 2, 1]);
    }

    #[test]
    fn resize_layout_is_rows_then_cols_little_endian() {
        let mut out = Vec::new();
        let m = Message::Resize(WinSize {
            rows: 0x0102,
            cols: 0x0304,
        });
        encode(&Frame::new(2, m), &mut out).unwrap();
        assert_eq!(out, [9, 0, 0, 0, 2, 0, 0, 0, 15, 2, 1, 4, 3]);
    }

    #[test]
    fn oversize_data_is_refused_and_nothing_appended() {
        let mut out = vec![1, 2];
        let f = Frame::new(1, Message::Stdout(Bytes::from(vec![0; DATA_CHUNK_MAX + 1])));
        assert!(matches!(
            encode(&f, &mut out),
            Err(ProtoError::DataTooLarge { .. })
        ));
        assert_eq!(out, [1, 2]);
    }
}
