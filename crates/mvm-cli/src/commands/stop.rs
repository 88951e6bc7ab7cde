//! `mvm stop NAME... | --all`: graceful, then forced after the timeout.

use std::time::Duration;

use anyhow::Result;
use mvm_runtime::ops::stop::{StopOutcome, stop};

use crate::cli::StopArgs;
use crate::commands::{report, runtime};

pub async fn run(a: StopArgs) -> Result<u8> {
    let rt = runtime()?;
    let names: Vec<String> = if a.all {
        mvm_runtime::ops::list::list(&rt)?
            .into_iter()
            .filter(|m| m.status.is_active())
            .map(|m| m.name)
            .collect()
    } else {
        a.names.clone()
    };
    let mut failed = false;
    for name in &names {
        let r = stop(&rt, name, Duration::from_secs(a.timeout)).await;
        failed |= report(name, r, |o| match o {
            StopOutcome::Forced => " (its owner did not answer: killed)".into(),
            _ => String::new(),
        });
    }
    Ok(failed as u8)
}
