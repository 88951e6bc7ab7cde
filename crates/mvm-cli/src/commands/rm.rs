//! `mvm rm NAME... [-f]`.

use anyhow::Result;

use crate::cli::RmArgs;
use crate::commands::{report, runtime};

pub async fn run(a: RmArgs) -> Result<u8> {
    let rt = runtime()?;
    let mut failed = false;
    for name in &a.names {
        let r = mvm_runtime::ops::rm::remove(&rt, name, a.force).await;
        failed |= report(name, r, |_| String::new());
    }
    Ok(failed as u8)
}
