//! Async framing over tokio streams: a [`FrameReader`], [`write_frame`], and
//! a writer task ([`spawn_writer`]) that owns a write half and batches the
//! frames many tasks queue for it.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::decoder::{FrameDecoder, ProtoError};
use crate::frame::{Frame, encode};

/// A failure of a frame stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading or writing the stream failed.
    #[error("agent stream I/O failed")]
    Io(#[source] io::Error),
    /// The peer sent a malformed frame.
    #[error("malformed frame from peer")]
    Proto(#[source] ProtoError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the partial frame.
        buffered: usize,
    },
}

impl StreamError {
    /// For a well-framed frame that could not be decoded (the stream is
    /// still usable): its session and kind.
    pub fn undecodable(&self) -> Option<(u32, u8)> {
        match self {
            StreamError::Proto(ProtoError::Undecodable { session, kind, .. }) => {
                Some((*session, *kind))
            }
            _ => None,
        }
    }
}

/// Reads frames from an [`AsyncRead`]. `read_frame` is cancel-safe; after
/// an error for which [`StreamError::undecodable`] is `Some`, reading may
/// go on.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
    buf: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wrap a reader.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            decoder: FrameDecoder::new(),
            buf: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, StreamError> {
        loop {
            if let Some(r) = self.decoder.next_frame() {
                return r.map(Some).map_err(StreamError::Proto);
            }
            let n = self
                .inner
                .read(&mut self.buf)
                .await
                .map_err(StreamError::Io)?;
            if n == 0 {
                let buffered = self.decoder.buffered();
                return if buffered == 0 {
                    Ok(None)
                } else {
                    Err(StreamError::Truncated { buffered })
                };
            }
            self.decoder.feed(&self.buf[..n]);
        }
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Encode and write one frame, then flush.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), StreamError> {
    let mut out = Vec::new();
    encode(frame, &mut out).map_err(StreamError::Proto)?;
    w.write_all(&out).await.map_err(StreamError::Io)?;
    w.flush().await.map_err(StreamError::Io)
}

enum WriterCmd {
    Frame(Frame),
    Flush(oneshot::Sender<()>),
}

/// A cheap, cloneable handle that queues frames for a writer task.
///
/// The queue is unbounded on purpose: data frames in it are bounded by the
/// flow-control window of their session, and everything else is small
/// control traffic, so a slow stream cannot make a producer block the other
/// sessions.
#[derive(Debug, Clone)]
pub struct FrameSender {
    tx: mpsc::UnboundedSender<WriterCmd>,
}

impl std::fmt::Debug for WriterCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterCmd::Frame(fr) => fr.fmt(f),
            WriterCmd::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl FrameSender {
    /// Queue a frame; `false` if the writer is gone.
    pub fn send(&self, frame: Frame) -> bool {
        self.tx.send(WriterCmd::Frame(frame)).is_ok()
    }

    /// Wait until everything queued before this call is written; `false` if
    /// the writer is gone.
    pub async fn flush(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(WriterCmd::Flush(tx)).is_err() {
            return false;
        }
        rx.await.is_ok()
    }

    /// Whether the writer task has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Start a task that owns `w` and writes every frame queued on the returned
/// sender, in order. It stops when every sender is dropped (then shuts the
/// write side down) or on the first write error (returned by the handle).
pub fn spawn_writer<W>(mut w: W) -> (FrameSender, JoinHandle<Result<(), StreamError>>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<WriterCmd>();
    let task = tokio::spawn(async move {
        let mut out = Vec::with_capacity(128 * 1024);
        let mut flushes = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut cmd = Some(first);
            while let Some(c) = cmd.take() {
                match c {
                    WriterCmd::Frame(f) => {
                        if let Err(e) = encode(&f, &mut out) {
                            // A frame we built ourselves is invalid: skip it
                            // rather than corrupt the stream.
                            let _ = e;
                        }
                    }
                    WriterCmd::Flush(done) => flushes.push(done),
                }
                if out.len() < 256 * 1024 {
                    cmd = rx.try_recv().ok();
                }
            }
            w.write_all(&out).await.map_err(StreamError::Io)?;
            w.flush().await.map_err(StreamError::Io)?;
            out.clear();
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
        let _ = w.shutdown().await;
        Ok(())
    });
    (FrameSender { tx }, task)
}
