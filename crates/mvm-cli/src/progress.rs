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
