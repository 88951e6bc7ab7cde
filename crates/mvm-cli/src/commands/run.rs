//! `mvm run`: create and start a machine, detached; prints its name. An
//! OCI image is pulled on first use and its Entrypoint + Cmd (or the
//! command after `--`) becomes the machine's main process.

use anyhow::Result;
use mvm_runtime::ops::create::CreateOptions;
use mvm_runtime::ops::start::{StartOutcome, WaitFor};

use crate::cli::{NetworkArg, RunArgs};
use crate::commands::{egress_note, parse_egress, parse_env, runtime};

pub async fn run(a: RunArgs, quiet: bool) -> Result<u8> {
    let rt = runtime()?;
    tracing::debug!("timing: runtime open");
    let home_dir = std::env::var_os("HOME").map(std::path::PathBuf::from);
    // Every input is parsed and checked before anything is created or booted.
    let opts = CreateOptions {
        name: a.name.clone(),
        backend: a.backend.map(Into::into).unwrap_or(rt.config().backend),
        cpus: a.cpus,
        memory_mib: a.memory,
        transient: false,
        env: parse_env(&a.env)?,
        network: a.network.map(|n| match n {
            NetworkArg::None => mvm_core::instance::NetworkMode::None,
            NetworkArg::Nat => mvm_core::instance::NetworkMode::Nat,
        }),
        ports: a
            .publish
            .iter()
            .map(|p| mvm_net::ports::parse_port_spec(p))
            .collect::<Result<_, _>>()?,
        egress: parse_egress(&a.egress)?,
        data: mvm_runtime::resources::drives::DataOptions {
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
        },
        template: None,
        main: Some(a.command.clone()),
        user: a.user.clone(),
        workdir: a.workdir.clone(),
        no_jailer: a.no_jailer,
        cpu_quota: a.cpu_quota,
    };
    let (image, opts) = match &a.template {
        Some(t) => {
            let req = mvm_runtime::ops::template::CloneRequest {
                template: t.clone(),
                require_snapshot: a.require_snapshot,
                backend: a.backend.map(Into::into),
            };
            crate::commands::template::clone_plan(&rt, &req, &a.image, opts)?
        }
        None => {
            mvm_runtime::ops::create::check(&rt, &opts)?;
            let image = crate::commands::image::resolve(&rt, &a.image, &a.pull, quiet).await?;
            tracing::debug!("timing: options checked, image ready");
            (image, opts)
        }
    };
    let created = mvm_runtime::ops::create::create(&rt, &opts, &image)?;
    let name = created.record.name.clone();
    egress_note(&rt, opts.egress.as_ref(), opts.network, quiet);
    let wait = if a.no_wait {
        WaitFor::Started
    } else {
        WaitFor::Ready
    };
    if let StartOutcome::Started(r) =
        mvm_runtime::ops::start::start_owned(&rt, &name, created.lock, wait).await?
    {
        tracing::info!(
            "machine {name} started: VMM pid {}, launch {} ms, boot {:?} ms",
            r.vmm_pid,
            r.launch_ms,
            r.boot_ms
        );
    }
    println!("{name}");
    Ok(0)
}
