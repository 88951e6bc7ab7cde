//! `mvm start NAME...`: start stopped machines (a running one is left as
//! it is, like `docker start`).

use anyhow::Result;
use mvm_runtime::ops::start::{StartOutcome, WaitFor, start};

use crate::cli::NamesArgs;
use crate::commands::{report, runtime};

pub async fn run(a: NamesArgs) -> Result<u8> {
    let rt = runtime()?;
    let mut failed = false;
    for name in &a.names {
        let r = start(&rt, name, WaitFor::Ready).await;
        failed |= report(name, r, |o| match o {
            StartOutcome::AlreadyRunning(s) => format!(" (already {s})"),
            StartOutcome::Started(_) => String::new(),
        });
    }
    Ok(failed as u8)
}
