//! Raw mode with guaranteed restore.

use std::os::fd::{AsFd, OwnedFd};

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcsetattr};

use crate::TermError;

/// A terminal in raw mode; dropping it puts the saved settings back
/// (also while unwinding from a panic).
#[derive(Debug)]
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Save the settings of the terminal `fd` and switch it to raw mode
    /// (no echo, no line editing, no signals from keys, no output
    /// processing: the guest terminal does all that).
    pub fn enter(fd: impl AsFd) -> Result<RawMode, TermError> {
        let err = |what| {
            move |e: rustix::io::Errno| TermError::Terminal {
                what,
                source: e.into(),
            }
        };
        let fd = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| TermError::Terminal {
                what: "duplicate",
                source,
            })?;
        let saved = tcgetattr(&fd).map_err(err("read the settings of"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&fd, OptionalActions::Now, &raw).map_err(err("switch to raw mode"))?;
        Ok(RawMode { fd, saved })
    }

    /// The settings that will be restored.
    pub fn saved(&self) -> &Termios {
        &self.saved
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing useful to do if this fails (the terminal is gone).
        let _ = tcsetattr(&self.fd, OptionalActions::Now, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::termios::LocalModes;

    fn pty() -> (OwnedFd, OwnedFd) {
        let p = nix::pty::openpty(None, None).unwrap();
        (p.master, p.slave)
    }

    #[test]
    fn raw_mode_is_entered_and_restored_on_drop() {
        let (_m, slave) = pty();
        let before = tcgetattr(&slave).unwrap();
        assert!(
            before
                .local_modes
                .contains(LocalModes::ICANON | LocalModes::ECHO)
        );
        let g = RawMode::enter(&slave).unwrap();
        let raw = tcgetattr(&slave).unwrap();
        assert!(
            !raw.local_modes
                .intersects(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG)
        );
        drop(g);
        let after = tcgetattr(&slave).unwrap();
        assert_eq!(format!("{after:?}"), format!("{before:?}"));
    }

    #[test]
    fn a_panic_restores_the_terminal() {
        let (_m, slave) = pty();
        let before = format!("{:?}", tcgetattr(&slave).unwrap());
        let fd = slave.try_clone().unwrap();
        let r = std::panic::catch_unwind(move || {
            let _g = RawMode::enter(&fd).unwrap();
            panic!("boom while in raw mode");
        });
        assert!(r.is_err());
        assert_eq!(format!("{:?}", tcgetattr(&slave).unwrap()), before);
    }

    #[test]
    fn a_non_terminal_is_refused() {
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(
            RawMode::enter(&f),
            Err(TermError::Terminal { .. })
        ));
    }
}
