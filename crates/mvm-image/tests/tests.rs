//! Integration tests of mvm-image: real kernel package, real busybox, real
//! ext4, and a real boot under QEMU/TCG when QEMU is installed.

mod disks;
mod images;
