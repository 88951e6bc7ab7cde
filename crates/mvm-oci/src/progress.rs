//! Progress reports of pulls and imports. The library never prints; the
//! CLI draws one bar per layer (indicatif) from these events.

/// What happens to one layer during a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerEvent<'a> {
    /// The blob is already in the cache: nothing to download.
    Cached {
        /// The layer digest.
        digest: &'a str,
        /// Its size.
        size: u64,
    },
    /// A download starts (`offset` > 0 when an earlier one is resumed).
    Start {
        /// The layer digest.
        digest: &'a str,
        /// Its size.
        size: u64,
        /// Bytes already there from an interrupted download.
        offset: u64,
    },
    /// Bytes of the blob present so far.
    Bytes {
        /// The layer digest.
        digest: &'a str,
        /// Bytes present (offset included).
        done: u64,
    },
    /// The blob is complete and verified.
    Done {
        /// The layer digest.
        digest: &'a str,
    },
    /// The download failed (the error is returned separately).
    Failed {
        /// The layer digest.
        digest: &'a str,
    },
}

/// Receives progress of a pull: layer events, and the conversion's steps
/// through [`mvm_image::Progress`].
pub trait PullProgress: mvm_image::Progress + Send + Sync {
    /// A layer event.
    fn layer(&self, event: LayerEvent<'_>);
}

/// A [`PullProgress`] that discards everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl mvm_image::Progress for Quiet {
    fn step(&self, _message: &str) {}
}

impl PullProgress for Quiet {
    fn layer(&self, _event: LayerEvent<'_>) {}
}
