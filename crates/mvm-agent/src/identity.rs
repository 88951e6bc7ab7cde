//! `Reidentify` (protocol v2): make a clone restored from a snapshot a
//! machine of its own before any user command runs. The protocol side and
//! the list of steps are documented in `mvm_agent_proto::identity`; this
//! module performs them, in this order:
//!
//! 1. the clock (first, so everything after it carries the right time);
//! 2. the kernel's random pool: the host's bytes are added and credited
//!    (`RNDADDENTROPY`), then the CRNG is reseeded (`RNDRESEEDCRNG`): the
//!    next read of `/dev/urandom` in two clones of one snapshot differs;
//! 3. the hostname (`sethostname`, `/etc/hostname`, `/etc/hosts`);
//! 4. the machine-id, where the image has `/etc/machine-id`;
//! 5. the network: new MAC, address, route, `resolv.conf`, `hosts`;
//! 6. remounts of drives whose contents changed (the config drive).
//!
//! The first failing step ends the request with an error naming it.
//!
//! ## Outside a guest
//!
//! As PID 1 the agent owns the machine. Run by hand or by the host-side
//! tests (`--listen-unix`), it must not rename or re-address the *host*:
//! it then requires `MVM_AGENT_ETC` (the directory standing in for `/etc`)
//! and its own UTS and network namespaces (compared with PID 1's), and it
//! never sets the clock (the report says so).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mvm_agent_proto::identity::{MAX_ENTROPY_BYTES, ReidentifyReport, ReidentifyRequest};

/// The environment variable naming the stand-in for `/etc` outside a guest.
pub const ETC_ENV: &str = "MVM_AGENT_ETC";

nix::ioctl_write_ptr!(
    /// `RNDADDENTROPY`: add bytes to the input pool and credit them.
    rnd_add_entropy,
    b'R',
    0x03,
    [nix::libc::c_int; 2]
);
nix::ioctl_none!(
    /// `RNDRESEEDCRNG`: reseed the CRNG from the input pool now.
    rnd_reseed_crng,
    b'R',
    0x07
);
nix::ioctl_none!(
    /// `BLKFLSBUF`: flush and drop a block device's buffer cache.
    blk_flush_buf,
    0x12,
    97
);

/// `struct rand_pool_info` with room for [`MAX_ENTROPY_BYTES`].
#[repr(C)]
struct RandPoolInfo {
    entropy_count: nix::libc::c_int,
    buf_size: nix::libc::c_int,
    buf: [u8; MAX_ENTROPY_BYTES],
}

/// Where the steps apply.
#[derive(Debug, Clone)]
pub struct Target {
    /// `/etc`, or its stand-in.
    pub etc: PathBuf,
    /// Whether the clock may be set.
    pub set_clock: bool,
}

impl Target {
    /// The target for this process: the machine itself as PID 1, else a
    /// sandbox (see the module docs) or an error saying why not.
    pub fn current(pid1: bool) -> Result<Target, String> {
        if pid1 {
            return Ok(Target {
                etc: PathBuf::from("/etc"),
                set_clock: true,
            });
        }
        let Some(etc) = std::env::var_os(ETC_ENV).filter(|v| !v.is_empty()) else {
            return Err(format!(
                "reidentify outside a guest needs {ETC_ENV} (a directory standing in for /etc)"
            ));
        };
        for ns in ["uts", "net"] {
            let own = fs_err::read_link(format!("/proc/self/ns/{ns}")).ok();
            let init = fs_err::read_link(format!("/proc/1/ns/{ns}")).ok();
            if own.is_none() || own == init {
                return Err(format!(
                    "reidentify outside a guest needs its own {ns} namespace (refusing to change the host)"
                ));
            }
        }
        Ok(Target {
            etc: PathBuf::from(etc),
            set_clock: false,
        })
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Perform every step of `req` on `target`.
pub fn reidentify(req: &ReidentifyRequest, target: &Target) -> Result<ReidentifyReport, String> {
    let t0 = Instant::now();
    req.validate()?;
    let mut report = ReidentifyReport::default();
    let mut steps: Vec<(&str, Duration)> = Vec::new();
    let mut mark = Instant::now();
    let mut step = |name: &'static str| {
        steps.push((name, mark.elapsed()));
        mark = Instant::now();
    };

    // 1. Clock.
    let step_ns = i128::from(req.unix_time_ns) - now_ns();
    report.clock_step_ms = (step_ns / 1_000_000) as i64;
    if target.set_clock {
        let ts = nix::sys::time::TimeSpec::new(
            (req.unix_time_ns / 1_000_000_000) as nix::libc::time_t,
            (req.unix_time_ns % 1_000_000_000) as nix::libc::c_long,
        );
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(|e| format!("setting the clock: {e}"))?;
        report.clock_set = true;
    }
    step("clock");

    // 2. Entropy, then an immediate CRNG reseed.
    report.entropy_bits = add_entropy(&req.entropy)?;
    reseed_crng()?;
    report.crng_reseeded = true;
    step("entropy");

    // 3. Hostname.
    nix::unistd::sethostname(&req.hostname)
        .map_err(|e| format!("sethostname {:?}: {e}", req.hostname))?;
    write_atomic(
        &target.etc.join("hostname"),
        format!("{}\n", req.hostname).as_bytes(),
    )?;
    report.hostname = req.hostname.clone();
    step("hostname");

    // 4. machine-id, where the image has one.
    if let Some(id) = &req.machine_id {
        let path = target.etc.join("machine-id");
        if path.exists() {
            write_atomic(&path, format!("{id}\n").as_bytes())?;
            report.machine_id = Some(id.clone());
        }
    }

    step("machine-id");

    // 5. Network (also rewrites hosts with the new name and address);
    //    without one, hosts still gets the new name.
    if let Some(n) = &req.net {
        let mac = mvm_net::guest::parse_mac(&n.mac)
            .ok_or_else(|| format!("invalid MAC address {:?}", n.mac))?;
        let guest = mvm_net::GuestNet {
            ip: n.ip,
            prefix: n.prefix,
            gateway: n.gateway,
            dns: n.dns.clone(),
        };
        mvm_net::guest::readdress_in(&n.iface, mac, &guest, Some(&req.hostname), &target.etc)
            .map_err(|e| format!("network: {}", mvm_agent_proto::error_chain(&e)))?;
        report.net = Some(format!("{}/{} {}", n.ip, n.prefix, n.mac));
    } else {
        rewrite_hosts(&target.etc.join("hosts"), &req.hostname)?;
    }

    step("network");

    // 6. Remounts.
    for m in &req.remount {
        remount(Path::new(m))?;
        report.remounted.push(m.clone());
    }
    step("remount");

    report.elapsed_us = t0.elapsed().as_micros() as u64;
    let took: Vec<String> = steps
        .iter()
        .map(|(n, d)| format!("{n} {} µs", d.as_micros()))
        .collect();
    crate::log!(
        "reidentified as {} (clock step {} ms, {} entropy bits, net {}; {})",
        report.hostname,
        report.clock_step_ms,
        report.entropy_bits,
        report.net.as_deref().unwrap_or("none"),
        took.join(", ")
    );
    Ok(report)
}

fn open_random() -> Result<fs_err::File, String> {
    fs_err::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("entropy: {e}"))
}

/// Add `bytes` to the input pool, crediting 8 bits per byte.
fn add_entropy(bytes: &[u8]) -> Result<u32, String> {
    let f = open_random()?;
    let mut info = RandPoolInfo {
        entropy_count: (bytes.len() * 8) as nix::libc::c_int,
        buf_size: bytes.len() as nix::libc::c_int,
        buf: [0; MAX_ENTROPY_BYTES],
    };
    info.buf[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `info` is a `struct rand_pool_info` (two ints followed by
    // `buf_size` bytes) that outlives the call; the kernel reads
    // `buf_size` bytes of `buf`, which are initialized; the fd is open.
    unsafe { rnd_add_entropy(f.as_raw_fd(), (&raw const info).cast()) }
        .map_err(|e| format!("entropy: RNDADDENTROPY: {e}"))?;
    Ok((bytes.len() * 8) as u32)
}

fn reseed_crng() -> Result<(), String> {
    let f = open_random()?;
    // SAFETY: an argument-less ioctl on an open descriptor.
    unsafe { rnd_reseed_crng(f.as_raw_fd()) }
        .map_err(|e| format!("entropy: RNDRESEEDCRNG: {e}"))?;
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("mvm-tmp");
    fs_err::write(&tmp, data)
        .and_then(|()| fs_err::rename(&tmp, path))
        .map_err(|e| e.to_string())
}

/// Point the `127.0.1.1` line of `hosts` at `name` (keeping the rest).
fn rewrite_hosts(path: &Path, name: &str) -> Result<(), String> {
    let old = fs_err::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    let mut done = false;
    for line in old.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            if !done {
                out.push_str(&format!("127.0.1.1\t{name}\n"));
                done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !out
        .lines()
        .any(|l| l.split_whitespace().next() == Some("127.0.0.1"))
    {
        out.insert_str(0, "127.0.0.1\tlocalhost\n");
    }
    if !done {
        out.push_str(&format!("127.0.1.1\t{name}\n"));
    }
    write_atomic(path, out.as_bytes())
}

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    source: String,
    target: String,
    fstype: String,
    read_only: bool,
    data: String,
}

/// Decode the octal escapes (`\040`) of `/proc/self/mounts` fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [source, target, fstype, opts, ..] = f.as_slice() else {
                return None;
            };
            let opts: Vec<&str> = opts.split(',').collect();
            let read_only = opts.contains(&"ro");
            // Keep the filesystem-specific options; the generic flags are
            // passed as mount flags.
            let generic = [
                "ro", "rw", "nosuid", "nodev", "noexec", "relatime", "noatime", "sync",
            ];
            let data: Vec<&str> = opts
                .iter()
                .copied()
                .filter(|o| !generic.contains(o) && !o.starts_with("seclabel"))
                .collect();
            Some(MountEntry {
                source: unescape(source),
                target: unescape(target),
                fstype: (*fstype).to_owned(),
                read_only,
                data: data.join(","),
            })
        })
        .collect()
}

/// Unmount `target`, drop its block device's cache, mount it again with
/// the same filesystem and read-only flag.
fn remount(target: &Path) -> Result<(), String> {
    use nix::mount::{MntFlags, MsFlags};
    let text = fs_err::read_to_string("/proc/self/mounts").map_err(|e| e.to_string())?;
    let want = target.to_string_lossy();
    let entry = parse_mounts(&text)
        .into_iter()
        .rev()
        .find(|m| m.target == want)
        .ok_or_else(|| format!("remount: nothing is mounted at {want}"))?;
    if !entry.source.starts_with("/dev/") {
        return Err(format!(
            "remount: {want} is not a block device mount ({})",
            entry.source
        ));
    }
    nix::mount::umount2(target, MntFlags::empty())
        .map_err(|e| format!("remount: unmounting {want}: {e}"))?;
    if let Ok(dev) = fs_err::File::open(&entry.source) {
        // SAFETY: an argument-less ioctl on an open descriptor.
        if let Err(e) = unsafe { blk_flush_buf(dev.as_raw_fd()) } {
            crate::log!("remount: BLKFLSBUF on {}: {e}", entry.source);
        }
    }
    let mut flags = MsFlags::empty();
    if entry.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = (!entry.data.is_empty())
        .then(|| CString::new(entry.data.clone()).ok())
        .flatten();
    nix::mount::mount(
        Some(entry.source.as_str()),
        target,
        Some(entry.fstype.as_str()),
        flags,
        data.as_deref(),
    )
    .map_err(|e| format!("remount: mounting {} on {want}: {e}", entry.source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_parsed_with_escapes_and_flags() {
        let m = parse_mounts(
            "/dev/vdb /mnt/con\\040fig ext4 ro,relatime,errors=remount-ro 0 0\nproc /proc proc rw,nosuid 0 0\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, "/mnt/con fig");
        assert!(m[0].read_only);
        assert_eq!(m[0].data, "errors=remount-ro");
        assert!(!m[1].read_only);
        assert_eq!(m[1].data, "");
    }

    #[test]
    fn hosts_gets_the_new_name_once() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("hosts");
        fs_err::write(
            &p,
            "127.0.0.1\tlocalhost\n127.0.1.1\ttemplate\n127.0.1.1\told\n",
        )
        .unwrap();
        rewrite_hosts(&p, "clone-2").unwrap();
        assert_eq!(
            fs_err::read_to_string(&p).unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tclone-2\n"
        );
        let empty = t.path().join("none");
        rewrite_hosts(&empty, "c").unwrap();
        assert_eq!(
            fs_err::read_to_string(&empty).unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tc\n"
        );
    }

    #[test]
    fn outside_a_guest_without_a_sandbox_is_refused() {
        // This test process shares the host's namespaces.
        let e = Target::current(false).unwrap_err();
        assert!(e.contains(ETC_ENV) || e.contains("namespace"), "{e}");
    }
}
