//! Where the protocol is served: the virtio-serial port named
//! `org.mvm.agent` (QEMU), AF_VSOCK port 1024 (Firecracker), a Unix socket
//! or stdio (tests, development).
//!
//! ## Why the virtio-serial port is polled
//!
//! A virtio-serial port is one byte stream that lives as long as the guest.
//! When the host end is not connected, `read` returns 0 at once and `poll`
//! reports `POLLHUP`; no event tells the guest that the host has come back.
//! The supervisor connects before the guest boots and stays connected, so an
//! end of file means the host went away: the agent cancels that stream's
//! sessions (killing their processes), then checks `POLLHUP` with a bounded
//! backoff (50 ms doubling to 1 s) until the host reconnects, and serves a
//! fresh handshake. It never spins.

use fs_err::os::unix::fs::OpenOptionsExt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, accept4, bind, listen, socket,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::serve::{Ctx, serve_stream};

/// The name the host gives the agent's virtio-serial port.
pub const PORT_NAME: &str = "org.mvm.agent";
/// The vsock port the agent listens on.
pub const VSOCK_PORT: u32 = 1024;

/// A byte stream over a non-blocking file descriptor (char device or
/// socket) registered with the tokio reactor.
pub struct FdStream {
    fd: AsyncFd<File>,
}

impl FdStream {
    /// Wrap `fd`, which must be in non-blocking mode.
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        // SAFETY: the File owns the descriptor and is owned by the AsyncFd
        // until it is dropped or `into_inner` returns it, so the fd stays
        // open and unchanged while registered.
        let fd = unsafe { AsyncFd::register(File::from(fd)) }?;
        Ok(Self { fd })
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(data)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The `/dev` node of the virtio port named [`PORT_NAME`], if present.
pub fn find_port(sys_class: &Path) -> Option<PathBuf> {
    let entries = fs_err::read_dir(sys_class).ok()?;
    for e in entries.flatten() {
        let name = fs_err::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

/// Wait for the agent's virtio port (sysfs entry and device node) until
/// `deadline`, polling with a bounded backoff (udev-less guest: devtmpfs
/// creates the node, nothing notifies us).
pub async fn wait_for_port(deadline: Instant) -> Option<PathBuf> {
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(p) = find_port(Path::new("/sys/class/virtio-ports"))
            && p.exists()
        {
            return Some(p);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

fn host_connected(f: &File) -> bool {
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => !fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        Err(_) => false,
    }
}

/// Serve the virtio port at `dev` forever, across host reconnections.
pub async fn serve_port(dev: PathBuf, ctx: Ctx) {
    let file = match fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(&dev)
    {
        Ok(f) => f.into_file(),
        Err(e) => {
            crate::log!("cannot open the agent port: {e}");
            return;
        }
    };
    loop {
        let mut delay = Duration::from_millis(50);
        while !host_connected(&file) {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        // Serve on a duplicate so the original stays ours across sessions.
        let fd = match file.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                crate::log!("cannot duplicate the agent port fd: {e}");
                return;
            }
        };
        match FdStream::new(fd) {
            Ok(s) => match serve_stream(s, ctx.clone()).await {
                Ok(()) => crate::log!("host disconnected from {}", dev.display()),
                Err(e) => crate::log!("agent port: {}", crate::error_chain(&e)),
            },
            Err(e) => {
                crate::log!("cannot register the agent port: {e}");
                return;
            }
        }
        // The host is gone (or misbehaved): wait before looking again.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Listen on AF_VSOCK port [`VSOCK_PORT`]; `Err` if vsock is unavailable.
pub fn vsock_listener() -> nix::Result<AsyncFd<OwnedFd>> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &VsockAddr::new(nix::libc::VMADDR_CID_ANY, VSOCK_PORT),
    )?;
    listen(&fd, Backlog::new(16)?)?;
    // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open
    // and unchanged while registered.
    unsafe { AsyncFd::register(fd) }.map_err(|e| {
        let (_, e) = e.into_parts();
        nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO))
    })
}

/// Accept vsock connections forever; each is an independent stream.
///
/// Firecracker resets every vsock *connection* when it snapshots (the
/// guest driver gets `TRANSPORT_RESET`); the listening socket survives and
/// accepts the new host of a restored clone. Should accepting fail anyway,
/// the listener is closed and created again (bounded backoff) rather than
/// left broken.
pub async fn serve_vsock(mut listener: AsyncFd<OwnedFd>, ctx: Ctx) {
    loop {
        let accepted = listener
            .async_io(tokio::io::Interest::READABLE, |fd| {
                accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(std::io::Error::from)
            })
            .await;
        let raw = match accepted {
            Ok(raw) => raw,
            Err(e) => {
                crate::log!("vsock accept failed: {e}; listening again");
                drop(listener);
                listener = relisten().await;
                continue;
            }
        };
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match FdStream::new(fd) {
                Ok(s) => {
                    if let Err(e) = serve_stream(s, ctx).await {
                        crate::log!("vsock connection: {}", crate::error_chain(&e));
                    }
                }
                Err(e) => crate::log!("cannot register a vsock connection: {e}"),
            }
        });
    }
}

/// A new vsock listener, retrying with a bounded backoff until it works.
async fn relisten() -> AsyncFd<OwnedFd> {
    let mut delay = Duration::from_millis(10);
    loop {
        match vsock_listener() {
            Ok(l) => {
                crate::log!("listening on vsock port {VSOCK_PORT} again");
                return l;
            }
            Err(e) => crate::log!("vsock listen failed: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Accept Unix-socket connections forever.
pub async fn serve_unix(listener: tokio::net::UnixListener, ctx: Ctx) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_stream(s, ctx).await {
                        crate::log!("unix connection: {}", crate::error_chain(&e));
                    }
                });
            }
            Err(e) => {
                crate::log!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
