//! Reading the terminal in a thread that can be stopped.
//!
//! A blocking `read` on a terminal cannot be cancelled, and tokio's stdin
//! runs exactly such a read on a thread the runtime then waits for at
//! shutdown. Here a thread `poll`s the terminal and a wake-up pipe, so
//! dropping [`Input`] stops it at once. Chunks go through a bounded queue:
//! when the guest does not take input (no credit), the queue fills and the
//! thread stops reading.

use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

use bytes::Bytes;
use rustix::event::{PollFd, PollFlags, poll};
use tokio::sync::mpsc;

/// Chunks queued between the reader thread and the session.
const QUEUE: usize = 8;
/// Largest chunk read at once.
const CHUNK: usize = 4096;

/// The reader thread; dropping this stops it.
pub struct Input {
    wake: Option<OwnedFd>,
    _thread: JoinHandle<()>,
}

impl Input {
    /// Start reading `fd`; the receiver yields keystrokes as read, and
    /// `None` once the terminal reached end of file or the reader stopped.
    pub fn spawn(fd: OwnedFd) -> std::io::Result<(Input, mpsc::Receiver<Bytes>)> {
        let (wake_r, wake_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("mvm-term-input".into())
            .spawn(move || read_loop(fd, wake_r, tx))?;
        Ok((
            Input {
                wake: Some(wake_w),
                _thread: thread,
            },
            rx,
        ))
    }
}

fn read_loop(fd: OwnedFd, wake: OwnedFd, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut fds = [
            PollFd::new(&fd, PollFlags::IN),
            PollFd::new(&wake, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        if !fds[1].revents().is_empty() {
            return; // asked to stop (or the other end is gone)
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                    return;
                }
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        // Closing the pipe wakes the poll and the thread returns. It is not
        // joined: it may be waiting to hand over a chunk to a queue whose
        // receiver is dropped only later; it returns then.
        drop(self.wake.take());
    }
}
