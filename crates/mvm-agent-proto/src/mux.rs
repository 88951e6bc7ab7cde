//! The host multiplexer, run by the per-VM supervisor.
//!
//! QEMU's chardev socket (and a Firecracker vsock connection) is one byte
//! stream, but any number of `mvm exec` / `mvm cp` processes want to talk to
//! the guest at once. The supervisor owns the guest stream and runs
//! [`serve`]: it is the host toward the guest agent and acts as the agent
//! toward each client that connects to the instance's `agent.sock`.
//!
//! - [`wait_guest_ready`] handshakes with the guest agent; its return is the
//!   "agent ready" moment (`mvm run` returns then).
//! - Each client gets its own handshake. A client's `Request` on a new
//!   session id is given a fresh guest session id (never reused while the
//!   mux lives: a `u32` counter); every frame of that session is rewritten
//!   both ways. `Window` credits pass through unchanged, so the data queued
//!   for a session in the mux is bounded by the window the receiver granted,
//!   and a slow client does not stall the others (each client has its own
//!   writer task and queue).
//! - A route is dropped when the agent sends the session's final frame
//!   (see [`Request::is_final`]) or the client cancels it.
//! - A client that disconnects gets every open session cancelled in the guest
//!   (`Cancel`: the agent SIGKILLs the process group).
//! - Losing the guest stream closes every client (after an `Error` on session
//!   0 naming the reason) and makes [`serve`] return an error.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::frame::{Frame, Message};
use crate::handshake::{self, HandshakeError, Negotiated};
use crate::io::{FrameReader, FrameSender, spawn_writer};
use crate::message::{ErrorKind, ErrorMsg, Request, Role};

/// How long a connecting client has to complete its handshake.
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure of the multiplexer.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The handshake with the guest agent failed.
    #[error("handshake with the guest agent failed")]
    GuestHandshake(#[source] HandshakeError),
    /// The guest stream ended or failed.
    #[error("guest agent stream lost: {reason}")]
    GuestLost {
        /// Why.
        reason: String,
    },
    /// Accepting a client connection failed.
    #[error("accepting a client on the agent socket failed")]
    Accept(#[source] std::io::Error),
}

/// The guest stream after a successful handshake, ready for [`serve`].
pub struct GuestLink<S> {
    reader: FrameReader<ReadHalf<S>>,
    writer: WriteHalf<S>,
    negotiated: Negotiated,
}

impl<S> std::fmt::Debug for GuestLink<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestLink")
            .field("negotiated", &self.negotiated)
            .finish()
    }
}

impl<S> GuestLink<S> {
    /// The version in use and the agent's `Hello`.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }
}

/// Handshake with the guest agent (as host) before `deadline`.
pub async fn wait_guest_ready<S>(stream: S, deadline: Instant) -> Result<GuestLink<S>, MuxError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, mut writer) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let ours = handshake::hello(Role::Host, concat!("mvm-mux/", env!("CARGO_PKG_VERSION")));
    let negotiated = handshake::initiate(&mut reader, &mut writer, &ours, deadline)
        .await
        .map_err(MuxError::GuestHandshake)?;
    Ok(GuestLink {
        reader,
        writer,
        negotiated,
    })
}

struct Route {
    client: u64,
    client_session: u32,
    request: Request,
}

struct ClientEntry {
    out: FrameSender,
    sessions: HashMap<u32, u32>,
}

#[derive(Default)]
struct State {
    routes: HashMap<u32, Route>,
    clients: HashMap<u64, ClientEntry>,
    next_guest_session: u32,
}

impl State {
    fn alloc(&mut self) -> u32 {
        loop {
            self.next_guest_session = self.next_guest_session.wrapping_add(1);
            let id = self.next_guest_session;
            if id != 0 && !self.routes.contains_key(&id) {
                return id;
            }
        }
    }
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serve clients of `listener` over the guest link until `shutdown`
/// completes (→ `Ok`) or the guest stream is lost (→ `Err`). Every client is
/// closed when this returns.
pub async fn serve<S, F>(
    guest: GuestLink<S>,
    listener: UnixListener,
    shutdown: F,
) -> Result<(), MuxError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = ()>,
{
    let GuestLink {
        mut reader,
        writer,
        negotiated,
    } = guest;
    let (guest_out, mut guest_writer) = spawn_writer(writer);
    let state = Arc::new(Mutex::new(State::default()));
    let mut clients = JoinSet::new();
    let mut next_client = 0u64;
    let software = format!(
        "mvm-mux/{} (guest: {})",
        env!("CARGO_PKG_VERSION"),
        negotiated.peer.software
    );
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => break Err(MuxError::Accept(e)),
                };
                next_client += 1;
                clients.spawn(client_task(
                    next_client,
                    stream,
                    state.clone(),
                    guest_out.clone(),
                    software.clone(),
                    negotiated.version,
                ));
            }
            frame = reader.read_frame() => {
                match frame {
                    Ok(Some(f)) => {
                        if let Some(reason) = route_from_guest(&state, f) {
                            break Err(MuxError::GuestLost { reason });
                        }
                    }
                    Ok(None) => break Err(MuxError::GuestLost { reason: "the guest closed the stream".into() }),
                    Err(e) => break Err(MuxError::GuestLost { reason: crate::error_chain(&e) }),
                }
            }
            w = &mut guest_writer => {
                let reason = match w {
                    Ok(Err(e)) => crate::error_chain(&e),
                    _ => "guest writer stopped".into(),
                };
                break Err(MuxError::GuestLost { reason });
            }
            // Reap finished client tasks so the set does not grow.
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    };
    // Close every client: tell them why, then drop their writers (which
    // flush and shut down) and stop their readers.
    let message = match &result {
        Ok(()) => "the multiplexer is shutting down".to_owned(),
        Err(e) => crate::error_chain(e),
    };
    let entries: Vec<ClientEntry> = {
        let mut st = lock(&state);
        st.routes.clear();
        st.clients.drain().map(|(_, c)| c).collect()
    };
    for c in &entries {
        c.out.send(Frame::new(
            0,
            Message::Error(ErrorMsg::new(ErrorKind::Other, message.clone())),
        ));
    }
    for c in &entries {
        c.out.flush().await;
    }
    drop(entries);
    clients.shutdown().await;
    result
}

/// Route one frame from the guest. Returns the reason if the guest closed
/// the connection.
fn route_from_guest(state: &Mutex<State>, f: Frame) -> Option<String> {
    if f.session == 0 {
        if let Message::Error(e) = f.message {
            return Some(format!("guest agent: {}", e.message));
        }
        return None;
    }
    let mut st = lock(state);
    let route = st.routes.get(&f.session)?;
    let client = route.client;
    let client_session = route.client_session;
    let last = route.request.is_final(&f.message);
    if last {
        st.routes.remove(&f.session);
    }
    if let Some(entry) = st.clients.get_mut(&client) {
        entry.out.send(Frame::new(client_session, f.message));
        if last {
            entry.sessions.remove(&client_session);
        }
    }
    None
}

async fn client_task(
    id: u64,
    stream: UnixStream,
    state: Arc<Mutex<State>>,
    guest: FrameSender,
    software: String,
    guest_version: u32,
) {
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    // Offer clients no more than the guest speaks, so a client's version
    // checks (protocol 2 features) see the guest agent's version.
    let mut ours = handshake::hello(Role::Agent, software);
    ours.max_version = ours.max_version.min(guest_version);
    let deadline = Instant::now() + CLIENT_HANDSHAKE_TIMEOUT;
    if handshake::respond(&mut reader, &mut w, &ours, deadline)
        .await
        .is_err()
    {
        return;
    }
    let (out, _writer) = spawn_writer(w);
    lock(&state).clients.insert(
        id,
        ClientEntry {
            out: out.clone(),
            sessions: HashMap::new(),
        },
    );
    while let Ok(Some(f)) = reader.read_frame().await {
        if f.session == 0 {
            if matches!(f.message, Message::Error(_)) {
                break;
            }
            continue;
        }
        let mut st = lock(&state);
        let Some(entry) = st.clients.get(&id) else {
            break; // the mux is shutting down
        };
        let mapped = entry.sessions.get(&f.session).copied();
        match (mapped, f.message) {
            (None, Message::Request(req)) => {
                let gsid = st.alloc();
                st.routes.insert(
                    gsid,
                    Route {
                        client: id,
                        client_session: f.session,
                        request: req.clone(),
                    },
                );
                if let Some(e) = st.clients.get_mut(&id) {
                    e.sessions.insert(f.session, gsid);
                }
                guest.send(Frame::new(gsid, Message::Request(req)));
            }
            (Some(_), Message::Request(_)) => {
                out.send(Frame::new(
                    f.session,
                    Message::Error(ErrorMsg::new(
                        ErrorKind::InvalidRequest,
                        format!("session {} is already open", f.session),
                    )),
                ));
            }
            (Some(gsid), Message::Cancel) => {
                st.routes.remove(&gsid);
                if let Some(e) = st.clients.get_mut(&id) {
                    e.sessions.remove(&f.session);
                }
                guest.send(Frame::new(gsid, Message::Cancel));
            }
            (Some(gsid), m) => {
                guest.send(Frame::new(gsid, m));
            }
            (None, _) => {} // late frame for a finished session
        }
    }
    // The client is gone: cancel what it left running in the guest.
    let mut st = lock(&state);
    if let Some(entry) = st.clients.remove(&id) {
        for gsid in entry.sessions.into_values() {
            st.routes.remove(&gsid);
            guest.send(Frame::new(gsid, Message::Cancel));
        }
    }
}
