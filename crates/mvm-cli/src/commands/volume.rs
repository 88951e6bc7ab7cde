//! `mvm volume ls|rm`: the named volumes under `$MVM_HOME/volumes`.

use std::io::Write;

use anyhow::Result;
use mvm_data::volume::VolumeStore;

use crate::cli::VolumeCommand;
use crate::commands::runtime;

pub fn run(c: VolumeCommand) -> Result<u8> {
    let rt = runtime()?;
    let store = VolumeStore::new(rt.home());
    // Every machine that records the volume, running or not: removing a
    // volume a stopped machine still lists would break its next start.
    let attached = mvm_runtime::resources::drives::volume_users(rt.registry(), false);
    match c {
        VolumeCommand::Ls { json } => {
            let vols = store.list()?;
            let mut out = std::io::stdout().lock();
            if json {
                let rows: Vec<serde_json::Value> = vols
                    .iter()
                    .map(|v| {
                        let users: Vec<&str> = attached
                            .iter()
                            .filter(|a| a.volume == v.name)
                            .map(|a| a.machine.as_str())
                            .collect();
                        serde_json::json!({
                            "name": v.name,
                            "path": v.path,
                            "size_bytes": v.size_bytes,
                            "used_bytes": v.used_bytes,
                            "machines": users,
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<24}  {:>10}  {:>10}  MACHINES",
                    "NAME", "SIZE", "USED"
                )?;
                for v in &vols {
                    let users: Vec<&str> = attached
                        .iter()
                        .filter(|a| a.volume == v.name)
                        .map(|a| a.machine.as_str())
                        .collect();
                    writeln!(
                        out,
                        "{:<24}  {:>8}Mi  {:>8}Mi  {}",
                        v.name,
                        v.size_bytes >> 20,
                        v.used_bytes >> 20,
                        if users.is_empty() {
                            "-".to_owned()
                        } else {
                            users.join(",")
                        }
                    )?;
                }
            }
            Ok(0)
        }
        VolumeCommand::Rm { names } => {
            let mut failed = false;
            for name in &names {
                match store.remove(name, &attached) {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("mvm: error: {:#}", anyhow::Error::from(e));
                        failed = true;
                    }
                }
            }
            Ok(failed as u8)
        }
    }
}
