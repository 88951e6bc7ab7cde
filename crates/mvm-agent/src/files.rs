//! `WriteFile` and `ReadFile` sessions.
//!
//! Writing: the file is created (parent directories too, mode 0755) or
//! truncated, its mode set exactly (umask does not apply), then filled from
//! `Data` frames; each written chunk is granted back as credit; `DataEnd`
//! makes the agent flush and answer `Done`. Reading: `FileMeta` first, then
//! `Data` chunks within the host's credit, then `DataEnd`.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bytes::Bytes;
use mvm_agent_proto::flow::{Credit, Grants};
use mvm_agent_proto::io::FrameSender;
use mvm_agent_proto::{DATA_CHUNK_MAX, ErrorKind, ErrorMsg, FileMeta, Frame, Message, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// What the host sends during a `WriteFile` session.
#[derive(Debug)]
pub enum FileMsg {
    /// A chunk.
    Data(Bytes),
    /// The end.
    End,
}

fn io_error(path: &str, what: &str, e: &std::io::Error) -> ErrorMsg {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Other,
    };
    ErrorMsg::new(kind, format!("{path}: {what}: {e}"))
}

/// Serve a `WriteFile` session.
pub async fn write_file(
    session: u32,
    path: String,
    mode: u32,
    mut rx: mpsc::UnboundedReceiver<FileMsg>,
    out: FrameSender,
) {
    let reply = async {
        let p = std::path::Path::new(&path);
        if let Some(parent) = p.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_error(&path, "create parent directories", &e))?;
        }
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode & 0o7777)
            .open(p)
            .await
            .map_err(|e| io_error(&path, "create", &e))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .await
            .map_err(|e| io_error(&path, "chmod", &e))?;
        let mut grants = Grants::default();
        while let Some(msg) = rx.recv().await {
            match msg {
                FileMsg::Data(b) => {
                    f.write_all(&b)
                        .await
                        .map_err(|e| io_error(&path, "write", &e))?;
                    if let Some(n) = grants.consumed(b.len()) {
                        out.send(Frame::new(session, Message::Window(n)));
                    }
                }
                FileMsg::End => {
                    f.flush().await.map_err(|e| io_error(&path, "flush", &e))?;
                    return Ok(());
                }
            }
        }
        Err(ErrorMsg::new(
            ErrorKind::Other,
            format!("{path}: transfer aborted"),
        ))
    }
    .await;
    let m = match reply {
        Ok(()) => Message::Response(Response::Done),
        Err(e) => Message::Error(e),
    };
    out.send(Frame::new(session, m));
}

/// Serve a `ReadFile` session.
pub async fn read_file(session: u32, path: String, credit: Arc<Credit>, out: FrameSender) {
    let r = async {
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_error(&path, "open", &e))?;
        let md = f
            .metadata()
            .await
            .map_err(|e| io_error(&path, "stat", &e))?;
        if md.is_dir() {
            return Err(ErrorMsg::new(
                ErrorKind::InvalidRequest,
                format!("{path}: is a directory"),
            ));
        }
        out.send(Frame::new(
            session,
            Message::Response(Response::FileMeta(FileMeta {
                mode: md.permissions().mode() & 0o7777,
                size: md.len(),
            })),
        ));
        let mut buf = vec![0u8; DATA_CHUNK_MAX];
        loop {
            let Ok(k) = credit.take(DATA_CHUNK_MAX).await else {
                return Ok(()); // session cancelled
            };
            let n = f
                .read(&mut buf[..k])
                .await
                .map_err(|e| io_error(&path, "read", &e))?;
            if n < k {
                credit.grant((k - n) as u32);
            }
            if n == 0 {
                out.send(Frame::new(session, Message::DataEnd));
                return Ok(());
            }
            out.send(Frame::new(
                session,
                Message::Data(Bytes::copy_from_slice(&buf[..n])),
            ));
        }
    }
    .await;
    if let Err(e) = r {
        out.send(Frame::new(session, Message::Error(e)));
    }
}
