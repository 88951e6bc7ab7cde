//! `mvm pause NAME` / `mvm resume NAME`.

use anyhow::Result;

use crate::cli::NameArg;
use crate::commands::runtime;

pub async fn run(a: NameArg, pause: bool) -> Result<u8> {
    let rt = runtime()?;
    mvm_runtime::ops::pause::pause(&rt, &a.name, pause).await?;
    println!("{}", a.name);
    Ok(0)
}
