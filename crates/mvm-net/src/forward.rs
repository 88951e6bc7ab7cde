//! A host-side TCP port forwarder, run as tokio tasks inside the per-VM
//! supervisor so it lives and dies with the machine.
//!
//! Unlike a DNAT rule, a userspace forwarder also serves connections made
//! from the host itself (`curl 127.0.0.1:8080`): locally generated packets
//! never pass PREROUTING. Each accepted connection gets its own task that
//! connects to the guest (with a deadline) and copies both directions with
//! `copy_bidirectional` until either side closes. The listener stops when
//! the shutdown future completes; open connections are aborted with it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How long connecting to the guest may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwarder errors.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The host port cannot be bound.
    #[error("cannot listen on {listen} (host port {port})", port = listen.port())]
    Bind {
        /// The address.
        listen: SocketAddr,
        /// Cause (e.g. address in use).
        #[source]
        source: std::io::Error,
    },
    /// `accept` failed in a way that stops the listener.
    #[error("accepting connections on {listen} failed")]
    Accept {
        /// The address.
        listen: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A bound forwarder, not yet serving.
#[derive(Debug)]
pub struct Forwarder {
    listener: TcpListener,
    listen: SocketAddr,
    target: SocketAddr,
    connect_timeout: Duration,
}

impl Forwarder {
    /// Bind `listen` (so a port conflict is reported before the machine is
    /// declared started); connections will go to `target`.
    pub async fn bind(listen: SocketAddr, target: SocketAddr) -> Result<Self, ForwardError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ForwardError::Bind { listen, source })?;
        let listen = listener.local_addr().unwrap_or(listen);
        Ok(Self {
            listener,
            listen,
            target,
            connect_timeout: CONNECT_TIMEOUT,
        })
    }

    /// Change the connect deadline (default [`CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Serve until `shutdown` completes. Open connections are aborted when
    /// this returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ForwardError> {
        let Forwarder {
            listener,
            listen,
            target,
            connect_timeout,
        } = self;
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                // Reap finished connection tasks so the set does not grow.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((client, peer)) => {
                        conns.spawn(connection(client, peer, target, connect_timeout));
                    }
                    // Per-connection failures (peer reset before accept,
                    // out of fds for a moment) do not stop the listener.
                    Err(e) if is_transient(&e) => {
                        tracing::warn!(%listen, error = %e, "accept failed");
                    }
                    Err(source) => return Err(ForwardError::Accept { listen, source }),
                },
            }
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || matches!(e.raw_os_error(), Some(23) | Some(24) | Some(105) | Some(12))
}

async fn connection(
    mut client: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    connect_timeout: Duration,
) {
    let mut upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(target)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, %target, error = %e, "cannot reach the guest port");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, %target, "connecting to the guest port timed out");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%peer, %target, error = %e, "forwarded connection ended with an error");
    }
}

/// Bind `listen` and forward every connection to `target` until `shutdown`
/// completes.
pub async fn serve(
    listen: SocketAddr,
    target: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ForwardError> {
    Forwarder::bind(listen, target).await?.run(shutdown).await
}
