//! Data drives: the `mvm.mount=LABEL,ro|rw,PATH` boot parameters.
//!
//! The host attaches every data drive (config, secrets, volumes, host
//! directories) as a virtio block device and names it by its **ext4
//! label**, never by its position: the guest finds `/dev/vd*` whose
//! superblock label matches. The ext4 superblock starts at byte 1024 of
//! the device; its magic `0xEF53` (little-endian u16) is at offset 56 of
//! the superblock and the volume label (16 bytes, NUL-padded) at offset
//! 120.
//!
//! The label `mvm-secrets` is special: the drive is mounted read-only at a
//! private directory, every file is copied into a tmpfs mounted at PATH
//! (directory 0700, files 0400 owned by root), and the drive is unmounted
//! again, so the secrets live only in guest RAM.
//!
//! A failed mount is logged to the console and skipped; PID 1 carries on.
//! At power-off [`unmount_all`] unmounts every mount made here (in reverse
//! order) so what the guest wrote reaches the disk images.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// How long to wait for the labelled drives to appear.
pub const DRIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The label of the secrets drive.
pub const SECRETS_LABEL: &str = "mvm-secrets";

const SB_OFFSET: usize = 1024;
const MAGIC_OFFSET: usize = SB_OFFSET + 56;
const LABEL_OFFSET: usize = SB_OFFSET + 120;
const EXT4_MAGIC: u16 = 0xEF53;

/// One `mvm.mount=` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountParam {
    /// ext4 label of the drive.
    pub label: String,
    /// Mount read-only.
    pub read_only: bool,
    /// Absolute guest path.
    pub path: PathBuf,
}

impl MountParam {
    /// Parse `LABEL,ro|rw,PATH` (PATH percent-encoded).
    pub fn parse(value: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid mvm.mount={value:?}: {why}");
        let mut parts = value.splitn(3, ',');
        let (Some(label), Some(mode), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected LABEL,ro|rw,PATH"));
        };
        if label.is_empty() || label.len() > 16 {
            return Err(bad("bad label"));
        }
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            _ => return Err(bad("mode must be ro or rw")),
        };
        let path = percent_decode(path).ok_or_else(|| bad("bad percent-encoding"))?;
        if !path.starts_with("/") || path == Path::new("/") {
            return Err(bad("path must be absolute and not /"));
        }
        Ok(Self {
            label: label.to_owned(),
            read_only,
            path,
        })
    }
}

fn percent_decode(s: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// The ext4 label in the first 2 KiB of a device, if it holds ext2/3/4.
pub fn ext4_label_of(head: &[u8]) -> Option<String> {
    let magic = head.get(MAGIC_OFFSET..MAGIC_OFFSET + 2)?;
    if u16::from_le_bytes([magic[0], magic[1]]) != EXT4_MAGIC {
        return None;
    }
    let raw = head.get(LABEL_OFFSET..LABEL_OFFSET + 16)?;
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// Read the ext4 label of the device or image at `path`.
pub fn read_label(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut f = fs_err::File::open(path)?;
    let mut head = vec![0u8; LABEL_OFFSET + 16];
    f.read_exact(&mut head)?;
    Ok(ext4_label_of(&head))
}

/// `/dev/vd*` whole disks, with their labels.
fn labelled_devices() -> Vec<(PathBuf, String)> {
    let Ok(entries) = fs_err::read_dir("/dev") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let disk = name.strip_prefix("vd")?;
            (!disk.is_empty() && disk.bytes().all(|c| c.is_ascii_lowercase())).then_some(())?;
            let path = e.path();
            let label = read_label(&path).ok()??;
            Some((path, label))
        })
        .collect()
}

/// Find the device labelled `label`, waiting until `deadline` (devtmpfs
/// creates nodes as drivers probe; no udev runs to notify us).
fn find_device(label: &str, deadline: Instant) -> Option<PathBuf> {
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some((p, _)) = labelled_devices().into_iter().find(|(_, l)| l == label) {
            return Some(p);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

static MOUNTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn remember(p: &Path) {
    if let Ok(mut m) = MOUNTED.lock() {
        m.push(p.to_owned());
    }
}

fn mount_ext4(dev: &Path, target: &Path, read_only: bool) -> Result<(), String> {
    fs_err::create_dir_all(target).map_err(|e| e.to_string())?;
    let flags = if read_only {
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID
    } else {
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID
    };
    match mount(Some(dev), target, Some("ext4"), flags, None::<&str>) {
        Ok(()) => Ok(()),
        // A read-only drive whose journal needs replaying cannot be
        // mounted normally; skip the journal.
        Err(e) if read_only => mount(Some(dev), target, Some("ext4"), flags, Some("noload"))
            .map_err(|e2| {
                format!(
                    "mounting {} on {}: {e} (noload: {e2})",
                    dev.display(),
                    target.display()
                )
            }),
        Err(e) => Err(format!(
            "mounting {} on {}: {e}",
            dev.display(),
            target.display()
        )),
    }
}

/// Copy the secrets drive into a tmpfs at `target`.
fn mount_secrets(dev: &Path, target: &Path) -> Result<usize, String> {
    let src = Path::new("/run/.mvm-secrets-src");
    fs_err::create_dir_all(src).map_err(|e| e.to_string())?;
    let _ = fs_err::set_permissions(src, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    mount_ext4(dev, src, true)?;
    let copied = (|| {
        fs_err::create_dir_all(target).map_err(|e| e.to_string())?;
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700,uid=0,gid=0"),
        )
        .map_err(|e| format!("mounting tmpfs on {}: {e}", target.display()))?;
        remember(target);
        let mut n = 0;
        for e in fs_err::read_dir(src).map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            let ft = e.file_type().map_err(|e| e.to_string())?;
            if !ft.is_file() {
                continue;
            }
            let dest = target.join(e.file_name());
            fs_err::copy(e.path(), &dest).map_err(|e| e.to_string())?;
            nix::unistd::chown(&dest, Some(0.into()), Some(0.into()))
                .map_err(|e| format!("chown {}: {e}", dest.display()))?;
            fs_err::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o400))
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        Ok(n)
    })();
    if let Err(e) = umount2(src, MntFlags::empty()) {
        crate::log!("unmounting the secrets drive: {e}");
    }
    let _ = fs_err::remove_dir(src);
    copied
}

/// Perform every mount; failures are logged loudly and skipped.
pub fn mount_all(params: &[MountParam]) {
    let deadline = Instant::now() + DRIVE_TIMEOUT;
    for m in params {
        let Some(dev) = find_device(&m.label, deadline) else {
            crate::log!(
                "ERROR: no drive labelled {:?} appeared within {DRIVE_TIMEOUT:?}; {} is not mounted",
                m.label,
                m.path.display()
            );
            continue;
        };
        let r = if m.label == SECRETS_LABEL {
            mount_secrets(&dev, &m.path).map(|n| format!("{n} secrets copied to tmpfs"))
        } else {
            mount_ext4(&dev, &m.path, m.read_only).map(|()| {
                remember(&m.path);
                (if m.read_only { "ro" } else { "rw" }).to_owned()
            })
        };
        match r {
            Ok(what) => crate::log!(
                "mounted {} ({}) at {}: {what}",
                dev.display(),
                m.label,
                m.path.display()
            ),
            Err(e) => crate::log!("ERROR: mount {:?} at {}: {e}", m.label, m.path.display()),
        }
    }
}

/// Unmount everything [`mount_all`] mounted, newest first; a mount that
/// cannot be unmounted is remounted read-only so its data is on disk.
pub fn unmount_all() {
    let list = MOUNTED.lock().map(|m| m.clone()).unwrap_or_default();
    for p in list.iter().rev() {
        if let Err(e) = umount2(p.as_path(), MntFlags::empty()) {
            let r = mount(
                None::<&str>,
                p.as_path(),
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
            crate::log!("unmounting {}: {e}; remount read-only: {r:?}", p.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_params() {
        let m = MountParam::parse("mvmvol-data,rw,/data%20x").unwrap();
        assert_eq!(m.label, "mvmvol-data");
        assert!(!m.read_only);
        assert_eq!(m.path, Path::new("/data x"));
        assert!(
            MountParam::parse("mvm-config,ro,/mnt/config")
                .unwrap()
                .read_only
        );
        for bad in [
            "x,rx,/a",
            "x,ro,rel",
            "x,ro",
            ",ro,/a",
            "x,ro,/",
            "x,ro,/%zz",
        ] {
            assert!(MountParam::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_of_garbage_is_none() {
        assert_eq!(ext4_label_of(&[0u8; 2048]), None);
        assert_eq!(ext4_label_of(&[0u8; 10]), None);
    }

    #[test]
    fn reads_the_label_of_a_real_ext4_image() {
        let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(mkfs) = mkfs else {
            mvm_core::testing::skip("SKIPPED: reads_the_label_of_a_real_ext4_image: no mkfs.ext4");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.ext4");
        let st = std::process::Command::new(mkfs)
            .args(["-q", "-F", "-L", "mvm-secrets"])
            .arg(&img)
            .arg("4096k")
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(read_label(&img).unwrap().as_deref(), Some("mvm-secrets"));
        let plain = dir.path().join("plain");
        fs_err::write(&plain, vec![0u8; 4096]).unwrap();
        assert_eq!(read_label(&plain).unwrap(), None);
    }
}
