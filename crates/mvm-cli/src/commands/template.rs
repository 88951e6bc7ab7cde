//! `mvm template create|ls|inspect|rm`, and the clone side of `exec`,
//! `run` and `shell --template`.

use std::io::Write;

use anyhow::{Result, bail};
use mvm_runtime::Runtime;
use mvm_runtime::ops::create::CreateOptions;
use mvm_runtime::ops::exec::ExecOptions;
use mvm_runtime::ops::template::{ClonePlan, CloneRequest, TemplateOptions};

use crate::cli::{NetworkArg, TemplateCommand, TemplateCreateArgs};
use crate::commands::{parse_env, runtime};

pub async fn run(c: TemplateCommand, quiet: bool) -> Result<u8> {
    let rt = runtime()?;
    match c {
        TemplateCommand::Create(a) => create(&rt, a, quiet).await,
        TemplateCommand::Ls { json } => ls(&rt, json),
        TemplateCommand::Inspect { name, .. } => {
            let t = mvm_runtime::ops::template::inspect(&rt, &name)?;
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &t)?;
            writeln!(out)?;
            Ok(0)
        }
        TemplateCommand::Rm { names, force } => {
            let mut failed = false;
            for n in &names {
                let r = mvm_runtime::ops::template::remove(&rt, n, force);
                failed |= crate::commands::report(n, r, |r| {
                    if r.forced_past.is_empty() {
                        String::new()
                    } else {
                        format!(" (still used by {})", r.forced_past.join(", "))
                    }
                });
            }
            Ok(u8::from(failed))
        }
    }
}

async fn create(rt: &Runtime, a: TemplateCreateArgs, quiet: bool) -> Result<u8> {
    let created = match &a.from {
        Some(machine) => mvm_runtime::ops::template::create_from(rt, &a.name, machine).await?,
        None => {
            mvm_template::validate_name(&a.name)?;
            let opts = TemplateOptions {
                name: a.name.clone(),
                backend: a.backend.map(Into::into).unwrap_or(rt.config().backend),
                cpus: a.cpus,
                memory_mib: a.memory,
                network: a.network.map(|n| match n {
                    NetworkArg::None => mvm_core::instance::NetworkMode::None,
                    NetworkArg::Nat => mvm_core::instance::NetworkMode::Nat,
                }),
                env: parse_env(&a.env)?,
                warmup: a.warmup.clone(),
            };
            mvm_runtime::ops::create::check(
                rt,
                &CreateOptions {
                    backend: opts.backend,
                    cpus: opts.cpus,
                    memory_mib: opts.memory_mib,
                    network: opts.network,
                    ..Default::default()
                },
            )?;
            let image_name = a.image.clone().unwrap_or_else(|| "default".into());
            let image = crate::commands::image::ensure(rt, &image_name, quiet).await?;
            mvm_runtime::ops::template::create_template(rt, &opts, &image).await?
        }
    };
    tracing::info!(
        "template {}: create {} ms, boot {} ms, warm-up {} ms, snapshot {} ms, commit {} ms, total {} ms, {} MiB on disk",
        created.name,
        created.create_ms,
        created.boot_ms,
        created.warmup_ms,
        created.snapshot_ms,
        created.commit_ms,
        created.total_ms,
        created.size_bytes >> 20
    );
    if let Ok(path) = std::env::var(mvm_core::env::MVM_TIMINGS_FILE) {
        let _ = fs_err::write(&path, serde_json::to_vec(&created)?);
    }
    println!("{}", created.name);
    Ok(0)
}

fn ls(rt: &Runtime, json: bool) -> Result<u8> {
    let list = mvm_runtime::ops::template::list(rt)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &list)?;
        writeln!(out)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<20}  {:<12}  {:<11}  {:>4}  {:>7}  {:>8}  {:<20}  USED BY",
        "NAME", "IMAGE", "BACKEND", "CPUS", "MEMORY", "SIZE", "CREATED"
    )?;
    for t in &list {
        match &t.manifest {
            Some(m) => writeln!(
                out,
                "{:<20}  {:<12}  {:<11}  {:>4}  {:>7}  {:>8}  {:<20}  {}",
                t.name,
                m.provenance.image,
                m.backend.as_str(),
                m.cpus,
                format!("{}MiB", m.memory_mib),
                format!("{}MiB", m.sizes.total_allocated >> 20),
                m.created,
                if t.users.is_empty() {
                    "-".to_owned()
                } else {
                    t.users.join(",")
                }
            )?,
            None => writeln!(
                out,
                "{:<20}  (unusable: {})",
                t.name,
                t.error.as_deref().unwrap_or("unknown")
            )?,
        }
    }
    Ok(0)
}

/// The image and create options of a persistent clone (`run --template`):
/// printing the notice when it will be a cold boot.
pub fn clone_plan(
    rt: &Runtime,
    req: &CloneRequest,
    image_arg: &str,
    opts: CreateOptions,
) -> Result<(mvm_image::Image, CreateOptions)> {
    if image_arg != "default" {
        bail!("give an image or --template, not both (a clone runs its template's image)");
    }
    Ok(
        match mvm_runtime::ops::template::plan_clone(rt, req, opts)? {
            ClonePlan::Restore { image, opts } => (image, opts),
            ClonePlan::Cold {
                image,
                opts,
                reason,
            } => {
                eprintln!("mvm: {reason}");
                (image, opts)
            }
        },
    )
}

/// `exec --template` (and `shell --template`): a transient clone.
pub async fn exec_clone(
    rt: &Runtime,
    req: &CloneRequest,
    create: CreateOptions,
    opts: &ExecOptions,
) -> Result<u8> {
    let t = std::time::Instant::now();
    let (image, create) = clone_plan(rt, req, "default", create)?;
    let plan_ms = t.elapsed().as_millis() as u64;
    tracing::debug!("clone planned");
    let (outcome, t) =
        mvm_runtime::ops::exec::exec_transient(rt, &image, plan_ms, create, opts).await?;
    tracing::info!(
        "timings: template {} ms, launch {} ms, restore to ready {} ms, command {} ms, teardown {} ms",
        t.image_ms,
        t.launch_ms,
        t.boot_ms,
        t.command_ms,
        t.teardown_ms
    );
    if let Ok(path) = std::env::var(mvm_core::env::MVM_TIMINGS_FILE) {
        let _ = fs_err::write(&path, serde_json::to_vec(&t)?);
    }
    Ok(outcome.exit_code() as u8)
}
