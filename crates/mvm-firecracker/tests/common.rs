//! Shared helpers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The Firecracker binary to test against, or `None` (after printing
/// `SKIPPED: ...`).
pub fn firecracker_bin(test: &str) -> Option<PathBuf> {
    mvm_core::testing::path_from_env("MVM_FIRECRACKER_BIN", test)
}

/// A deadline `secs` from now.
pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// A minimal x86_64 ELF "kernel" Firecracker loads: one PT_LOAD segment at
/// 16 MiB whose code is `hlt; jmp .-1`.
pub fn tiny_elf() -> Vec<u8> {
    const BASE: u64 = 0x100_0000;
    const CODE_OFF: u64 = 0x1000;
    let code: &[u8] = &[0xf4, 0xeb, 0xfd];
    let mut e = Vec::new();
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&BASE.to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    e.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    e.extend_from_slice(&1u16.to_le_bytes()); // phnum
    e.extend_from_slice(&64u16.to_le_bytes()); // shentsize
    e.extend_from_slice(&0u16.to_le_bytes()); // shnum
    e.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
    assert_eq!(e.len(), 64);
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&CODE_OFF.to_le_bytes());
    e.extend_from_slice(&BASE.to_le_bytes()); // vaddr
    e.extend_from_slice(&BASE.to_le_bytes()); // paddr
    e.extend_from_slice(&(code.len() as u64).to_le_bytes());
    e.extend_from_slice(&(code.len() as u64).to_le_bytes());
    e.extend_from_slice(&0x1000u64.to_le_bytes());
    e.resize(CODE_OFF as usize, 0);
    e.extend_from_slice(code);
    e
}
