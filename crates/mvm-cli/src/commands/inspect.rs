//! `mvm inspect NAME`: everything known, as JSON.

use std::io::Write;

use anyhow::Result;

use crate::cli::InspectArgs;
use crate::commands::runtime;

pub fn run(a: InspectArgs) -> Result<u8> {
    let rt = runtime()?;
    let view = mvm_runtime::ops::list::inspect(&rt, &a.name)?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &view)?;
    writeln!(out)?;
    Ok(0)
}
