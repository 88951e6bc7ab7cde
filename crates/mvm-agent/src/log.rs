//! Logging: one line per event on stderr, prefixed `mvm-agent:`. As PID 1,
//! stderr is the kernel's `/dev/console` (the initramfs ships the node), so
//! the lines land in the guest console log the host keeps.

/// Log a line prefixed `mvm-agent:`.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => {
        eprintln!("mvm-agent: {}", format_args!($($t)*))
    };
}
