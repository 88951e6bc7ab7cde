//! Progress display for long work (downloads, image builds) with indicatif,
//! on stderr, hidden with `-q` or when stderr is not a terminal.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Implements the image builder's progress trait with indicatif.
pub struct Bars {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Progress on stderr (nothing when `quiet`).
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            bar: Mutex::new(None),
        }
    }

    fn target(&self) -> ProgressDrawTarget {
        if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        }
    }

    fn finish_current(&self) {
        if let Some(b) = self.bar.lock().expect("not poisoned").take() {
            b.finish_and_clear();
        }
    }

    /// A step without a size.
    pub fn step(&self, msg: &str) {
        self.finish_current();
        let b = ProgressBar::with_draw_target(None, self.target());
        b.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"));
        b.set_message(msg.to_owned());
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        if !self.quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("mvm: {msg}");
        }
        *self.bar.lock().expect("not poisoned") = Some(b);
    }

    /// Start a byte-counted step.
    pub fn start_bytes(&self, msg: &str, total: Option<u64>) {
        self.finish_current();
        let b = ProgressBar::with_draw_target(total, self.target());
        b.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid")
            .progress_chars("=> "),
        );
        b.set_message(msg.to_owned());
        if !self.quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("mvm: {msg}");
        }
        *self.bar.lock().expect("not poisoned") = Some(b);
    }

    /// Advance the byte counter.
    pub fn set_bytes(&self, done: u64) {
        if let Some(b) = self.bar.lock().expect("not poisoned").as_ref() {
            b.set_position(done);
        }
    }

    /// The current step is done.
    pub fn done(&self) {
        self.finish_current();
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish_current();
    }
}

impl mvm_image::Progress for Bars {
    fn step(&self, message: &str) {
        Bars::step(self, message);
    }

    fn bytes(&self, done: u64, total: Option<u64>) {
        let needs_bar = self
            .bar
            .lock()
            .expect("not poisoned")
            .as_ref()
            .is_none_or(|b| b.length() != total);
        if needs_bar {
            self.start_bytes("downloading", total);
        }
        self.set_bytes(done);
    }
}

impl mvm_firecracker::install::Progress for Bars {
    fn begin(&self, what: &str, total: Option<u64>) {
        self.start_bytes(what, total);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().expect("not poisoned").as_ref() {
            b.inc(n);
        }
    }

    fn end(&self) {
        self.done();
    }
}

/// Pull and import progress: one bar per layer, plus a line for each
/// conversion step (indicatif `MultiProgress` on stderr). Without a
/// terminal, one line per finished layer and per step.
pub struct LayerBars {
    quiet: bool,
    tty: bool,
    multi: indicatif::MultiProgress,
    bars: Mutex<std::collections::HashMap<String, ProgressBar>>,
    step: Mutex<Option<ProgressBar>>,
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    hex.get(..12).unwrap_or(hex)
}

impl LayerBars {
    /// Bars on stderr (nothing when `quiet`).
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Self {
            quiet,
            tty,
            multi: indicatif::MultiProgress::with_draw_target(target),
            bars: Mutex::default(),
            step: Mutex::default(),
        }
    }

    fn line(&self, msg: &str) {
        if !self.quiet && !self.tty {
            eprintln!("mvm: {msg}");
        }
    }

    fn bar(&self, digest: &str, size: u64) -> ProgressBar {
        let mut bars = self.bars.lock().expect("not poisoned");
        bars.entry(digest.to_owned())
            .or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(size));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .expect("valid")
                    .progress_chars("=> "),
                );
                b.set_prefix(short(digest).to_owned());
                b
            })
            .clone()
    }

    /// Clear everything still drawn.
    pub fn finish(&self) {
        if let Some(b) = self.step.lock().expect("not poisoned").take() {
            b.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

impl mvm_image::Progress for LayerBars {
    fn step(&self, message: &str) {
        let mut step = self.step.lock().expect("not poisoned");
        if let Some(b) = step.take() {
            b.finish_and_clear();
        }
        let b = self.multi.add(ProgressBar::new_spinner());
        b.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"));
        b.set_message(message.to_owned());
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        *step = Some(b);
        drop(step);
        self.line(message);
    }
}

impl mvm_oci::PullProgress for LayerBars {
    fn layer(&self, event: mvm_oci::LayerEvent<'_>) {
        use mvm_oci::LayerEvent;
        match event {
            LayerEvent::Cached { digest, size } => {
                let b = self.bar(digest, size);
                b.set_position(size);
                b.finish_with_message("already cached");
                self.line(&format!(
                    "layer {}: already cached ({size} bytes)",
                    short(digest)
                ));
            }
            LayerEvent::Start {
                digest,
                size,
                offset,
            } => {
                let b = self.bar(digest, size);
                b.set_position(offset);
                if offset > 0 {
                    b.set_message(format!("resuming at {offset}"));
                }
            }
            LayerEvent::Bytes { digest, done } => {
                if let Some(b) = self.bars.lock().expect("not poisoned").get(digest) {
                    b.set_position(done);
                }
            }
            LayerEvent::Done { digest } => {
                if let Some(b) = self.bars.lock().expect("not poisoned").get(digest) {
                    b.finish_with_message("done");
                    self.line(&format!(
                        "layer {}: downloaded ({} bytes)",
                        short(digest),
                        b.position()
                    ));
                }
            }
            LayerEvent::Failed { digest } => {
                if let Some(b) = self.bars.lock().expect("not poisoned").get(digest) {
                    b.abandon_with_message("failed");
                }
            }
        }
    }
}
