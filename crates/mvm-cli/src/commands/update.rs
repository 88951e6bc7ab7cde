//! `mvm update NAME --egress ...`: change a machine's egress policy (live
//! when it runs).

use anyhow::Result;
use mvm_runtime::ops::update::{Applied, UpdateOptions};

use crate::cli::UpdateArgs;
use crate::commands::runtime;

pub async fn run(a: UpdateArgs) -> Result<u8> {
    let egress = mvm_core::egress::EgressPolicy::from_flags(&a.egress)?;
    let rt = runtime()?;
    let opts = UpdateOptions {
        egress: egress.clone(),
    };
    match mvm_runtime::ops::update::update(&rt, &a.name, &opts).await? {
        Applied::Live { apply_ms } => {
            println!("{}: egress `{egress}` enforced ({apply_ms} ms)", a.name)
        }
        Applied::Recorded { reason } => {
            println!("{}: egress `{egress}` recorded ({reason})", a.name)
        }
    }
    Ok(0)
}
