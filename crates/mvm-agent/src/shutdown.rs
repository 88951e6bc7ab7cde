//! Powering the guest off.
//!
//! Order: SIGTERM every process, wait (with a deadline, checking with
//! `kill(-1, 0)` while the reaper collects the exits) for them to go, SIGKILL
//! what remains, `sync`, unmount the data drives ([`crate::mounts`]), remount the root read-only and unmount what can be,
//! then `reboot(RB_AUTOBOOT)`. QEMU runs with `-no-reboot` and Firecracker
//! exits when the guest reboots, so this ends the VMM. The host already got
//! its `Done` reply (flushed) before this runs.
//!
//! Not PID 1 (tests), "powering off" just exits the agent process.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Grace period between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// Whether any user-space process other than us is still alive. (Not
/// `kill(-1, 0)`: that also "reaches" kernel threads, so it never reports
/// ESRCH and every shutdown would wait out the whole grace period.)
fn others_alive() -> bool {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return kill(Pid::from_raw(-1), None) != Err(Errno::ESRCH);
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1 && pid != me)
        .any(|pid| {
            let Ok(stat) = fs_err::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the parenthesised name: state, ppid, ...
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut f = rest.split_whitespace();
            let state = f.next().unwrap_or("Z");
            let ppid = f.next().unwrap_or("0");
            // Kernel threads are kthreadd (2) and its children; zombies are
            // already gone (the reaper collects them).
            pid != 2 && ppid != "2" && state != "Z" && state != "X"
        })
}

async fn wait_gone(deadline: Instant) {
    let mut delay = Duration::from_millis(10);
    while others_alive() && Instant::now() < deadline {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Power off (PID 1) or exit (otherwise). Never returns.
pub async fn power_off(pid1: bool) -> ! {
    if !pid1 {
        crate::log!("not PID 1: exiting instead of powering off");
        std::process::exit(0);
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    wait_gone(Instant::now() + TERM_GRACE).await;
    if others_alive() {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        wait_gone(Instant::now() + Duration::from_secs(1)).await;
    }
    final_steps()
}

/// The synchronous tail of a power-off, also used after a panic.
pub fn final_steps() -> ! {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    crate::mounts::unmount_all();
    for m in ["/tmp", "/run", "/dev/shm", "/dev/pts"] {
        let _ = umount2(m, MntFlags::MNT_DETACH);
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        crate::log!("remounting / read-only failed: {e}");
    }
    nix::unistd::sync();
    crate::log!("powering off");
    let e = reboot(RebootMode::RB_AUTOBOOT);
    crate::log!("reboot failed: {e:?}");
    // PID 1 must not exit (the kernel would panic); there is nothing left
    // to do, so park forever.
    loop {
        std::thread::park();
    }
}
