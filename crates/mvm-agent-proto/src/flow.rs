//! Flow-control bookkeeping for both ends of a session direction.
//!
//! - The sender side holds a [`Credit`]: data frames take bytes from it
//!   (waiting while it is empty), `Window(n)` frames from the peer add to it.
//! - The receiver side holds a [`Grants`]: it counts bytes *consumed* (written
//!   out) and says when to send `Window(n)`. Grants are batched at
//!   [`GRANT_BATCH`] bytes; because that is below [`INITIAL_WINDOW`], a sender
//!   whose credit is exhausted always has at least one batch consumed and
//!   granted once the receiver drained its queue, so the two never deadlock.

use tokio::sync::Semaphore;

use crate::frame::INITIAL_WINDOW;

/// Consumed bytes accumulated before a `Window` is sent.
pub const GRANT_BATCH: u32 = INITIAL_WINDOW / 4;

/// Credit above this is ignored (a peer cannot make us buffer more, and the
/// semaphore cannot overflow).
const MAX_CREDIT: usize = 64 * 1024 * 1024;

/// Send-side credit of one session direction.
#[derive(Debug)]
pub struct Credit {
    sem: Semaphore,
}

/// The credit was closed (session or connection ended).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the session ended while waiting for flow-control credit")]
pub struct CreditClosed;

impl Default for Credit {
    fn default() -> Self {
        Self::new(INITIAL_WINDOW)
    }
}

impl Credit {
    /// Credit of `initial` bytes.
    pub fn new(initial: u32) -> Self {
        Self {
            sem: Semaphore::new(initial as usize),
        }
    }

    /// Add `n` bytes of credit (a `Window(n)` from the peer).
    pub fn grant(&self, n: u32) {
        let room = MAX_CREDIT.saturating_sub(self.sem.available_permits());
        let n = (n as usize).min(room);
        if n > 0 {
            self.sem.add_permits(n);
        }
    }

    /// Wait for at least one byte of credit, then take up to `max` bytes.
    pub async fn take(&self, max: usize) -> Result<usize, CreditClosed> {
        if max == 0 {
            return Ok(0);
        }
        let first = self.sem.acquire().await.map_err(|_| CreditClosed)?;
        first.forget();
        let extra = self.sem.available_permits().min(max - 1);
        if extra > 0
            && let Ok(p) = self.sem.try_acquire_many(extra as u32)
        {
            p.forget();
            return Ok(1 + extra);
        }
        Ok(1)
    }

    /// Wake every waiter with [`CreditClosed`].
    pub fn close(&self) {
        self.sem.close();
    }

    /// Bytes currently available.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }
}

/// Receive-side accounting of consumed bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Grants {
    pending: u32,
}

impl Grants {
    /// Record `n` consumed bytes; returns the `Window` to send, if one is due.
    pub fn consumed(&mut self, n: usize) -> Option<u32> {
        self.pending = self.pending.saturating_add(n as u32);
        if self.pending >= GRANT_BATCH {
            Some(std::mem::take(&mut self.pending))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn take_is_bounded_by_credit_and_waits_for_grants() {
        let c = Credit::new(10);
        assert_eq!(c.take(4).await.unwrap(), 4);
        assert_eq!(c.take(100).await.unwrap(), 6);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), c.take(1))
                .await
                .is_err()
        );
        c.grant(3);
        assert_eq!(c.take(100).await.unwrap(), 3);
        c.close();
        assert!(c.take(1).await.is_err());
    }

    #[test]
    fn grants_are_batched() {
        let mut g = Grants::default();
        assert_eq!(g.consumed(GRANT_BATCH as usize - 1), None);
        assert_eq!(g.consumed(1), Some(GRANT_BATCH));
        assert_eq!(g.consumed(5), None);
    }
}
