//! `mvm gc`: remove what no registered machine owns.

use anyhow::Result;

use crate::commands::runtime;

pub async fn run() -> Result<u8> {
    let rt = runtime()?;
    let report = mvm_runtime::ops::gc::gc(&rt).await?;
    for m in &report.recovered {
        println!("recovered machine {m}");
    }
    for l in &report.removed {
        println!("removed {l}");
    }
    for l in &report.kept {
        eprintln!("mvm: kept {l}");
    }
    if report.recovered.is_empty() && report.removed.is_empty() {
        eprintln!("mvm: nothing to clean up");
    }
    Ok(0)
}
