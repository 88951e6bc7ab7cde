//! `mvm logs`: the guest console (or the VMM log), optionally followed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::LogsArgs;
use crate::commands::runtime;

pub async fn run(a: LogsArgs) -> Result<u8> {
    let rt = runtime()?;
    let (rec, _) = rt.observe(&a.name)?;
    let dir = rt.registry.dir(&rec.name);
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
    // Follow until the machine stops. The console file only grows while a
    // VMM writes it; a short read interval is the simplest correct way to
    // tail a file (as `tail -f` does without inotify).
    let mut buf = vec![0u8; 64 * 1024];
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        ticker.tick().await;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
        let (_, obs) = rt.observe(&a.name)?;
        if !obs.status.expects_vmm() {
            return Ok(0);
        }
    }
}
