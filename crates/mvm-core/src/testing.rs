//! Support for tests across the workspace.
//!
//! libtest has no way to mark a test skipped at run time, and it hides the
//! stderr of passing tests. A test whose prerequisite is absent calls
//! [`skip`]: the reason goes to stderr and, when `MVM_SKIP_LOG` names a file
//! (`scripts/test` sets it), is appended there, so the test run ends with the
//! list of everything that was skipped instead of counting it silently as
//! passed.

use std::io::Write;

/// Report a skipped test (see the module docs). `msg` should start with
/// `SKIPPED:` and name the test and the missing prerequisite.
pub fn skip(msg: &str) {
    eprintln!("{msg}");
    if let Some(path) = std::env::var_os("MVM_SKIP_LOG").filter(|p| !p.is_empty())
        && let Ok(mut f) = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{}", msg.replace('\n', " "));
    }
}

/// The path in environment variable `var` (a test instrument such as
/// `MVM_FIRECRACKER_BIN`), or `None` after reporting `test` as skipped
/// ([`skip`]) because it is not set.
pub fn path_from_env(var: &str, test: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(p) => Some(p.into()),
        None => {
            skip(&format!("SKIPPED: {var} not set ({test})"));
            None
        }
    }
}
