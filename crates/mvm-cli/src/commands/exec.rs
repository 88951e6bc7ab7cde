//! `mvm exec`: in a running machine, or in a fresh transient one.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use mvm_runtime::ops::create::CreateOptions;
use mvm_runtime::ops::exec::ExecOptions;

use crate::cli::ExecArgs;
use crate::commands::{egress_note, parse_egress, parse_env, runtime};
use crate::progress::Bars;

pub async fn run(a: ExecArgs, quiet: bool) -> Result<u8> {
    // `exec --image IMAGE` without a command runs the image's Entrypoint +
    // Cmd (checked by the runtime).
    if a.command.is_empty() && a.launch_plan.is_none() && a.image.is_none() {
        bail!("no command given (usage: mvm exec [NAME] -- CMD [ARG...])");
    }
    if !a.command.is_empty() && a.launch_plan.is_some() {
        bail!("give either a command after -- or --launch-plan, not both");
    }
    if a.tty {
        mvm_runtime::ops::exec::check_tty()?;
    }
    let rt = runtime()?;
    let mut opts = ExecOptions {
        argv: a.command.clone(),
        env: parse_env(&a.env)?,
        cwd: a.workdir.clone(),
        timeout: a.timeout.map(Duration::from_secs),
        stdin: a.interactive,
        tty: a.tty,
        user: a.user.clone(),
    };
    if let Some(plan) = &a.launch_plan {
        // argv, working directory, and the environment with precedence
        // app.env < entrypoint.env < -e.
        let cli_env = a
            .env
            .iter()
            .map(|e| mvm_data::spec::EnvVar::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        let plan = mvm_data::plan::load_resolved(plan, &cli_env)?;
        opts.argv = plan.argv;
        opts.env = plan.env;
        if opts.cwd.is_none() {
            opts.cwd = plan.working_dir.map(|p| p.display().to_string());
        }
    }
    if let Some(name) = &a.name {
        let outcome = mvm_runtime::ops::exec::exec(&rt, name, &opts).await?;
        return Ok(outcome.exit_code() as u8);
    }

    let home_dir = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let create = CreateOptions {
        backend: a.backend.map(Into::into).unwrap_or(rt.config().backend),
        cpus: a.cpus,
        memory_mib: a.memory,
        egress: parse_egress(&a.egress)?,
        data: mvm_runtime::resources::drives::DataOptions {
            add_dirs: a
                .add_dirs
                .iter()
                .map(|d| mvm_data::spec::AddDir::parse(d, home_dir.as_deref()))
                .collect::<Result<_, _>>()?,
            ..Default::default()
        },
        no_jailer: a.no_jailer,
        cpu_quota: a.cpu_quota,
        ..Default::default()
    };
    if let Some(t) = &a.template {
        let req = mvm_runtime::ops::template::CloneRequest {
            template: t.clone(),
            require_snapshot: a.require_snapshot,
            backend: a.backend.map(Into::into),
        };
        return crate::commands::template::exec_clone(&rt, &req, create, &opts).await;
    }
    mvm_runtime::ops::create::check(&rt, &create)?;
    // Transient: set the host up on first use (packages, default image).
    let ti = Instant::now();
    mvm_runtime::host::ensure_tools(rt.home(), true, &Bars::new(quiet))?;
    let image_name = a.image.clone().unwrap_or_else(|| "default".into());
    let image = crate::commands::image::resolve(&rt, &image_name, &a.pull, quiet).await?;
    let image_ms = ti.elapsed().as_millis() as u64;
    egress_note(&rt, create.egress.as_ref(), create.network, quiet);
    let (outcome, t) =
        mvm_runtime::ops::exec::exec_transient(&rt, &image, image_ms, create, &opts).await?;
    tracing::info!(
        "timings: image {} ms, launch {} ms, boot {} ms, command {} ms, teardown {} ms",
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
