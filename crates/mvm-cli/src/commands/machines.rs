//! `run`, `start`, `stop`, `rm`, `ps`, `inspect`, `pause`, `resume`, `gc`,
//! and the hidden `__supervise`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use mvm_core::Status;
use mvm_core::instance::NetworkMode;
use mvm_runtime::machine::{CreateOptions, WaitFor};

use crate::cli::{InspectArgs, NameArg, NamesArgs, NetworkArg, PsArgs, RmArgs, RunArgs, StopArgs};
use crate::commands::runtime;

/// Parse `KEY=VAL` arguments.
pub fn parse_env(items: &[String]) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| {
            let v = mvm_data::spec::EnvVar::parse(s)?;
            Ok((v.key, v.value))
        })
        .collect()
}

pub async fn run(a: RunArgs, quiet: bool) -> Result<u8> {
    let rt = runtime()?;
    let ports = a
        .publish
        .iter()
        .map(|p| mvm_net::ports::parse_port_spec(p))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(n) = &a.name {
        mvm_core::name::validate(n)?;
    }
    // Every input is checked before anything is created or booted.
    let env = parse_env(&a.env)?;
    let home_dir = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let data = mvm_runtime::data::DataOptions {
        volumes: a
            .volumes
            .iter()
            .map(|v| mvm_data::spec::Volume::parse(v, home_dir.as_deref()))
            .collect::<Result<_, _>>()?,
        secrets: a
            .secrets
            .iter()
            .map(|s| mvm_data::spec::Secret::parse(s, home_dir.as_deref()))
            .collect::<Result<_, _>>()?,
        add_dirs: Vec::new(),
    };
    mvm_runtime::data::check(&rt, a.name.as_deref(), &data)?;
    let image = crate::commands::image::ensure(&rt, &a.image, quiet).await?;
    let opts = CreateOptions {
        name: a.name.clone(),
        image: a.image.clone(),
        backend: a.backend.map(Into::into).unwrap_or(rt.config.backend),
        cpus: a.cpus,
        memory_mib: a.memory,
        transient: false,
        env,
        network: match a.network {
            Some(NetworkArg::None) => NetworkMode::None,
            Some(NetworkArg::Nat) => NetworkMode::Nat,
            None => rt.config.network.mode,
        },
        ports,
        data,
    };
    let rec = rt.create(&opts, &image)?;
    let wait = if a.no_wait {
        WaitFor::Started
    } else {
        WaitFor::Ready
    };
    let report = rt.start(&rec.name, wait).await?;
    tracing::info!(
        "machine {} started: VMM pid {}, launch {} ms, boot {:?} ms",
        rec.name,
        report.vmm_pid,
        report.launch_ms,
        report.boot_ms
    );
    println!("{}", rec.name);
    Ok(0)
}

pub async fn start(a: NamesArgs) -> Result<u8> {
    let rt = runtime()?;
    let mut failed = false;
    for name in &a.names {
        match rt.start(name, WaitFor::Ready).await {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("mvm: error: {:#}", anyhow::Error::from(e));
                failed = true;
            }
        }
    }
    Ok(failed as u8)
}

pub async fn stop(a: StopArgs) -> Result<u8> {
    let rt = runtime()?;
    let names: Vec<String> = if a.all {
        rt.list()?
            .into_iter()
            .filter(|m| m.status.expects_vmm() || m.status == Status::Broken)
            .map(|m| m.name)
            .collect()
    } else {
        a.names.clone()
    };
    let mut failed = false;
    for name in &names {
        match rt.stop(name, Duration::from_secs(a.timeout)).await {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("mvm: error: {:#}", anyhow::Error::from(e));
                failed = true;
            }
        }
    }
    Ok(failed as u8)
}

pub async fn rm(a: RmArgs) -> Result<u8> {
    let rt = runtime()?;
    let mut failed = false;
    for name in &a.names {
        match rt.remove(name, a.force).await {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("mvm: error: {:#}", anyhow::Error::from(e));
                failed = true;
            }
        }
    }
    Ok(failed as u8)
}

pub fn ps(a: PsArgs) -> Result<u8> {
    let rt = runtime()?;
    let machines: Vec<_> = rt
        .list()?
        .into_iter()
        .filter(|m| a.all || m.status.expects_vmm() || m.status == Status::Broken)
        .collect();
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &machines)?;
        writeln!(out)?;
        return Ok(0);
    }
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
                m.backend
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into()),
                m.cpus.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                m.memory_mib
                    .map(|c| format!("{c}MiB"))
                    .unwrap_or_else(|| "-".into()),
                m.ip.clone().unwrap_or_else(|| "-".into()),
                if m.ports.is_empty() {
                    "-".into()
                } else {
                    m.ports.join(",")
                },
                m.created.clone().unwrap_or_else(|| "-".into()),
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

pub fn inspect(a: InspectArgs) -> Result<u8> {
    let rt = runtime()?;
    let view = rt.inspect(&a.name)?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &view)?;
    writeln!(out)?;
    Ok(0)
}

pub async fn pause(a: NameArg, pause: bool) -> Result<u8> {
    let rt = runtime()?;
    if pause {
        rt.pause(&a.name).await?;
    } else {
        rt.resume(&a.name).await?;
    }
    println!("{}", a.name);
    Ok(0)
}

pub async fn gc() -> Result<u8> {
    let rt = runtime()?;
    let mut removed = 0;
    for m in rt.list()? {
        // Transient machines whose `mvm exec` died without cleaning up.
        let orphan_transient = m.transient && !m.status.expects_vmm();
        let unreadable = m.backend.is_none();
        if orphan_transient || unreadable {
            rt.remove(&m.name, true)
                .await
                .with_context(|| format!("removing leftover machine {}", m.name))?;
            println!("removed machine {}", m.name);
            removed += 1;
        }
    }
    // Network objects (TAPs, mvm-tagged rules) that no running machine owns.
    if mvm_runtime::net::use_tap() {
        let report = mvm_runtime::net::gc(&rt.config, &rt.registry)?;
        for l in &report.removed {
            println!("removed {l}");
            removed += 1;
        }
        for l in &report.kept {
            eprintln!("mvm: kept {l}");
        }
    }
    if removed == 0 {
        eprintln!("mvm: nothing to clean up");
    }
    Ok(0)
}

/// The detached per-machine supervisor: reports progress as JSON lines on
/// stdout (read by the `mvm run`/`start` that spawned it).
pub async fn supervise(a: NameArg) -> Result<u8> {
    let rt = runtime()?;
    let ended = mvm_runtime::supervisor::supervise(&rt, &a.name, |ev| {
        let mut out = std::io::stdout().lock();
        if let Ok(line) = serde_json::to_string(&ev) {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    })
    .await?;
    tracing::info!("machine {}: VMM {}", a.name, ended.description);
    Ok(0)
}
