//! `mvm ps [-a] [--json]`: NAME STATUS BACKEND CPUS MEMORY IP PORTS CREATED.

use std::io::Write;

use anyhow::Result;
use mvm_core::Status;

use crate::cli::PsArgs;
use crate::commands::runtime;

pub fn run(a: PsArgs) -> Result<u8> {
    let rt = runtime()?;
    let machines: Vec<_> = mvm_runtime::ops::list::list(&rt)?
        .into_iter()
        .filter(|m| a.all || m.status.is_active())
        .collect();
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &machines)?;
        writeln!(out)?;
        return Ok(0);
    }
    let dash = || "-".to_string();
    let rows: Vec<[String; 8]> = machines
        .iter()
        .map(|m| {
            let status = match &m.note {
                Some(n) if m.status != Status::Running => format!("{} ({n})", m.status),
                _ => m.status.to_string(),
            };
            [
                m.name.clone(),
                status,
                m.backend.map_or_else(dash, |b| b.to_string()),
                m.cpus.map_or_else(dash, |c| c.to_string()),
                m.memory_mib.map_or_else(dash, |c| format!("{c}MiB")),
                m.ip.clone().unwrap_or_else(dash),
                if m.ports.is_empty() {
                    dash()
                } else {
                    m.ports.join(",")
                },
                m.created.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let header = [
        "NAME", "STATUS", "BACKEND", "CPUS", "MEMORY", "IP", "PORTS", "CREATED",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(0)
}
