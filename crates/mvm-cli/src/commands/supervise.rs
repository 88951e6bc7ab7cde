//! The hidden `mvm __supervise NAME`: the per-machine supervisor, spawned
//! by `mvm start` (see `mvm_runtime::supervisor::detached`).

use anyhow::Result;
use mvm_core::MvmHome;

use crate::cli::NameArg;

pub async fn run(a: NameArg) -> Result<u8> {
    let ended = mvm_runtime::supervisor::detached::main(MvmHome::from_env(), &a.name).await?;
    tracing::info!("machine {}: VMM {}", a.name, ended.description);
    Ok(0)
}
