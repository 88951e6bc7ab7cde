//! Loading kernel modules listed by the image builder.
//!
//! `/etc/mvm/modules.order` holds one path per line, relative to
//! `/lib/modules/<release>/`, already in dependency order (blank lines and
//! `#` comments are skipped). Each is loaded with `finit_module`; `EEXIST`
//! (built in or already loaded) is fine, other failures are logged and the
//! rest still load.

use std::ffi::CString;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

/// The list the image builder writes.
pub const MODULES_ORDER: &str = "/etc/mvm/modules.order";

/// The module paths of a `modules.order` text.
pub fn parse_order(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Load every module of [`MODULES_ORDER`] from `/lib/modules/<release>`.
/// Returns how many were loaded (or already present).
pub fn load_all(release: &str) -> usize {
    let text = match fs_err::read_to_string(MODULES_ORDER) {
        Ok(t) => t,
        Err(e) => {
            crate::log!("no modules loaded: {e}");
            return 0;
        }
    };
    let base = Path::new("/lib/modules").join(release);
    let params = CString::default();
    let mut ok = 0;
    for rel in parse_order(&text) {
        let path = base.join(rel);
        let file = match fs_err::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                crate::log!("module: {e}");
                continue;
            }
        };
        match finit_module(file.file(), &params, ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => ok += 1,
            Err(e) => crate::log!("loading module {}: {e}", path.display()),
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    #[test]
    fn order_skips_blanks_and_comments() {
        assert_eq!(
            super::parse_order("kernel/a.ko\n\n# x\n  kernel/b.ko  \n"),
            ["kernel/a.ko", "kernel/b.ko"]
        );
    }
}
