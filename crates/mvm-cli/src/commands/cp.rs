//! `mvm cp SRC DST`: one side is `NAME:GUEST_PATH`.

use anyhow::Result;
use mvm_runtime::ops::cp::{Side, copy};

use crate::cli::CpArgs;
use crate::commands::runtime;

pub async fn run(a: CpArgs) -> Result<u8> {
    let rt = runtime()?;
    let t = std::time::Instant::now();
    let bytes = copy(&rt, &Side::parse(&a.src), &Side::parse(&a.dst)).await?;
    tracing::info!("copied {bytes} bytes in {} ms", t.elapsed().as_millis());
    Ok(0)
}
