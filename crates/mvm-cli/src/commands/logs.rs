//! `mvm logs`: the guest console (or the VMM log), optionally followed.

use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::{Context, Result};

use crate::cli::LogsArgs;
use crate::commands::runtime;

pub async fn run(a: LogsArgs) -> Result<u8> {
    let rt = runtime()?;
    let (rec, _) = mvm_runtime::ops::list::observe(&rt, &a.name)?;
    let dir = rt.dir(&rec.name);
    let path = if a.hypervisor {
        dir.vmm_log()
    } else {
        dir.console_log()
    };
    let mut out = std::io::stdout().lock();
    let mut file = match fs_err::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !a.follow => return Ok(0),
        Err(e) => return Err(e).context("the machine has no log yet"),
    };
    match a.lines {
        Some(n) => {
            let text = mvm_core::backend::tail_lines(&path, n).unwrap_or_default();
            if !text.is_empty() {
                writeln!(out, "{text}")?;
            }
            file.seek(SeekFrom::End(0))?;
        }
        None => {
            std::io::copy(&mut file, &mut out)?;
        }
    }
    out.flush()?;
    if !a.follow {
        return Ok(0);
    }
    drop(out);
    let dir = rt.dir(&rec.name);
    let name = a.name.clone();
    // Follow in a blocking thread: it sleeps in read(2) on an inotify fd.
    tokio::task::spawn_blocking(move || follow(&rt, &name, &dir, file)).await??;
    Ok(0)
}

/// Print what is appended to `file` until the machine stops. Wakes on
/// inotify events of the instance directory: the log growing (IN_MODIFY) or
/// the record being replaced when the status changes (IN_MOVED_TO), so it
/// neither polls nor misses the end.
fn follow(
    rt: &mvm_runtime::Runtime,
    name: &str,
    dir: &mvm_core::InstanceDir,
    mut file: fs_err::File,
) -> Result<()> {
    use rustix::fs::inotify;
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC)?;
    inotify::add_watch(
        &fd,
        dir.root(),
        inotify::WatchFlags::MODIFY | inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CREATE,
    )?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    loop {
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
        let (_, obs) = mvm_runtime::ops::list::observe(rt, name)?;
        if !obs.status.expects_vmm() {
            return Ok(());
        }
        // Block until something in the instance directory changes.
        let mut reader = inotify::Reader::new(&fd, &mut events);
        reader.next()?;
    }
}
