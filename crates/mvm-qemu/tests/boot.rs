//! A real boot under QEMU, when a kernel and initramfs are provided:
//! `MVM_TEST_KERNEL` (bzImage) and `MVM_TEST_INITRD`.
//!
//! The initramfs's `/init` must load the virtio-mmio and virtio-console
//! modules, write `hello from guest\n` to the `org.mvm.agent` port, read one
//! line back and power off. One that works with the Debian cloud kernel
//! (busybox at `/bin/busybox`, the four `.ko` files copied from
//! `lib/modules/<ver>/kernel/drivers/{virtio,char}/` to `/m/`, and a
//! `/dev/console` node 5:1):
//!
//! ```text
//! #!/bin/busybox sh
//! /bin/busybox --install -s /bin
//! export PATH=/bin
//! mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
//! for m in virtio_ring virtio virtio_mmio virtio_console; do insmod /m/$m.ko; done
//! # wait for /sys/class/virtio-ports/*/name == org.mvm.agent, then:
//! exec 3<>/dev/vport0p1
//! echo "hello from guest" >&3
//! read line <&3
//! echo "MVM-GOT $line"
//! poweroff -f
//! ```

use std::time::{Duration, Instant};

use mvm_core::InstanceDir;
use mvm_core::backend::VmBackend;
use mvm_qemu::QemuBackend;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::util::{deadline, short_tempdir, spec};

#[tokio::test]
#[ignore = "needs a hand-made kernel + initramfs (MVM_TEST_KERNEL, MVM_TEST_INITRD); the e2e suites boot mvm's image through the same launch"]
async fn boots_and_talks_over_the_agent_port() {
    let (Some(kernel), Some(initrd)) = (
        std::env::var_os("MVM_TEST_KERNEL"),
        std::env::var_os("MVM_TEST_INITRD"),
    ) else {
        mvm_core::testing::skip(
            "SKIPPED: boots_and_talks_over_the_agent_port: set MVM_TEST_KERNEL and MVM_TEST_INITRD",
        );
        return;
    };
    let backend = match QemuBackend::detect() {
        Ok(b) => b,
        Err(e) => {
            mvm_core::testing::skip(&format!(
                "SKIPPED: boots_and_talks_over_the_agent_port: {e}"
            ));
            return;
        }
    };
    eprintln!("{}", backend.doctor());
    let tmp = short_tempdir();
    let dir = InstanceDir::new(tmp.path());
    let spec = spec(kernel.as_ref(), Some(initrd.as_ref()));

    let t0 = Instant::now();
    let mut vmm = backend.launch(&spec, &dir, deadline(30)).await.unwrap();
    eprintln!("launch (spawn to QMP running): {:?}", t0.elapsed());
    let guest = vmm
        .guest
        .take()
        .expect("QEMU launch returns the guest stream");
    let (r, mut w) = guest.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line)).await;
    let console = fs_err::read_to_string(dir.console_log()).unwrap_or_default();
    assert!(
        read.is_ok(),
        "no line from the guest in 60 s; console:\n{console}"
    );
    assert_eq!(line, "hello from guest\n", "console:\n{console}");
    eprintln!("spawn to first guest agent byte: {:?}", t0.elapsed());
    w.write_all(b"bye\n").await.unwrap();

    let status = tokio::time::timeout(Duration::from_secs(30), vmm.child.wait())
        .await
        .expect("guest did not power off")
        .unwrap();
    eprintln!("spawn to QEMU exit after poweroff: {:?}", t0.elapsed());
    assert!(status.success(), "{status}");
    let console = fs_err::read_to_string(dir.console_log()).unwrap();
    assert!(console.contains("MVM-GOT bye"), "console:\n{console}");
}
