//! Shared helpers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_core::backend::{KernelPaths, VmSpec};

/// The QEMU binary, or `None` after printing why the test is skipped.
pub fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    match mvm_qemu::QemuBackend::detect() {
        Ok(b) => Some(b.binary().to_owned()),
        Err(e) => {
            mvm_core::testing::skip(&format!("SKIPPED: {test}: no QEMU ({e})"));
            None
        }
    }
}

/// A temporary directory with a short path (Unix socket paths are limited).
pub fn short_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mvmq")
        .tempdir_in("/tmp")
        .unwrap()
}

/// A deadline `secs` from now.
pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// A minimal spec booting `kernel` (and `initrd`).
pub fn spec(kernel: &Path, initrd: Option<&Path>) -> VmSpec {
    VmSpec {
        name: "t".into(),
        cpus: 1,
        memory_mib: 256,
        kernel: KernelPaths {
            bzimage: kernel.to_owned(),
            vmlinux: kernel.to_owned(),
        },
        initrd: initrd.map(Path::to_owned),
        kernel_args: vec![],
        drives: vec![],
        net: None,
        vsock_cid: 3,
        transient: true,
        isolation: None,
    }
}

/// Pids of live processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs_err::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = fs_err::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        // Zombies have an empty cmdline: they are not running.
        if String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// An error and its causes on one line, as the CLI prints them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
