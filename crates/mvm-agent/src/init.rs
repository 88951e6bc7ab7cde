//! PID-1 duties: early mounts, kernel modules, boot parameters, the switch
//! to the persistent root, hostname and network, then serving.
//!
//! Every step that fails is logged and the agent carries on: a guest whose
//! root disk is missing still answers the host, which can then report the
//! console log. Nothing here may panic PID 1 away (see `main`).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

use crate::cmdline::{BootParams, configure_network};

/// How long to wait for the root block device to appear.
pub const ROOT_DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the agent's virtio-serial port.
pub const PORT_TIMEOUT: Duration = Duration::from_secs(10);

fn mkdir(p: &str) {
    if let Err(e) = fs_err::create_dir_all(p) {
        crate::log!("{e}");
    }
}

fn mnt(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    mkdir(target);
    if let Err(e) = mount(Some(src), target, Some(fstype), flags, data) {
        // EBUSY: already mounted (e.g. the kernel's devtmpfs automount).
        if e != nix::errno::Errno::EBUSY {
            crate::log!("mounting {fstype} on {target}: {e}");
        }
    }
}

/// Mount the API filesystems every guest needs.
pub fn early_mounts() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nosuid, None);
    mnt("sysfs", "/sys", "sysfs", nosuid, None);
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=620,ptmxmode=666"),
    );
    mnt(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
    mnt(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    );
    mnt(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    fs_err::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Wait for a device node (devtmpfs creates it when the driver probes; no
/// udev runs to notify us), polling with a bounded backoff.
fn wait_for_path(p: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    while !p.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
    true
}

/// Mount `device` (ext4, rw) and make it the root, keeping the API mounts.
pub fn switch_root(device: &str) -> Result<(), String> {
    if !wait_for_path(Path::new(device), ROOT_DEVICE_TIMEOUT) {
        return Err(format!(
            "{device} did not appear within {ROOT_DEVICE_TIMEOUT:?}"
        ));
    }
    let new = "/newroot";
    mkdir(new);
    mount(
        Some(device),
        new,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mounting {device} (ext4) on {new}: {e}"))?;
    for m in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        let target = format!("{new}{m}");
        mkdir(&target);
        mount(
            Some(m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| format!("moving {m} to {target}: {e}"))?;
    }
    nix::unistd::chdir(new).map_err(|e| format!("chdir {new}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving {new} onto /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Write `path` by temp + rename: a symlink there (images often link
/// `/etc/hosts` or `/etc/resolv.conf` into `/run`, sometimes dangling) is
/// replaced instead of written through, and a reader never sees half a file.
fn replace_file(path: &str, text: &str) {
    let tmp = format!("{path}.mvm-tmp");
    if let Err(e) = fs_err::write(&tmp, text).and_then(|()| fs_err::rename(&tmp, path)) {
        crate::log!("{e}");
        let _ = fs_err::remove_file(&tmp);
    }
}

/// Set the hostname and record it in `/etc/hostname` and `/etc/hosts`
/// (created when the image has no `/etc`, `/etc/hosts`, or has them as
/// symlinks).
pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        crate::log!("sethostname {name}: {e}");
    }
    mkdir("/etc");
    replace_file("/etc/hostname", &format!("{name}\n"));
    let hosts = fs_err::read_to_string("/etc/hosts").unwrap_or_default();
    let line = format!("127.0.1.1\t{name}");
    if !hosts.lines().any(|l| l.trim() == line) {
        let mut text = hosts;
        if text.is_empty() {
            text.push_str("127.0.0.1\tlocalhost\n");
        } else if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        replace_file("/etc/hosts", &text);
    }
}

/// Everything PID 1 does before serving.
pub fn boot() -> BootParams {
    early_mounts();
    let release = kernel_release();
    let n = crate::modules::load_all(&release);
    crate::log!("kernel {release}, {n} modules loaded");
    let cmdline = fs_err::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = BootParams::parse(&cmdline);
    for u in &params.unknown {
        crate::log!("ignoring unknown boot parameter {u}");
    }
    for e in &params.invalid {
        crate::log!("ignoring {e}");
    }
    if let Some(root) = &params.root {
        match switch_root(root) {
            Ok(()) => crate::log!("root is now {root}"),
            Err(e) => crate::log!("staying on the initramfs: {e}"),
        }
    }
    crate::mounts::mount_all(&params.mounts);
    if let Some(h) = &params.hostname {
        set_hostname(h);
    }
    if let Some(net) = &params.net {
        configure_network(net, params.hostname.as_deref());
    }
    params
}
