//! `mvm shell [NAME]`: a login shell in a running machine, or in a fresh
//! transient one torn down on exit.

use anyhow::Result;
use mvm_runtime::ops::create::CreateOptions;
use mvm_runtime::ops::exec::{ExecOptions, check_tty};

use crate::cli::ShellArgs;
use crate::commands::{parse_env, runtime};
use crate::progress::Bars;

pub async fn run(a: ShellArgs, quiet: bool) -> Result<u8> {
    check_tty()?;
    let rt = runtime()?;
    let opts = ExecOptions {
        user: a.user.clone(),
        ..ExecOptions::login_shell(parse_env(&a.env)?)
    };
    if let Some(name) = &a.name {
        let outcome = mvm_runtime::ops::exec::exec(&rt, name, &opts).await?;
        return Ok(outcome.exit_code() as u8);
    }
    if let Some(t) = &a.template {
        let req = mvm_runtime::ops::template::CloneRequest {
            template: t.clone(),
            require_snapshot: a.require_snapshot,
            backend: None,
        };
        let create = CreateOptions {
            backend: rt.config().backend,
            ..Default::default()
        };
        return crate::commands::template::exec_clone(&rt, &req, create, &opts).await;
    }
    mvm_runtime::host::ensure_tools(rt.home(), true, &Bars::new(quiet))?;
    let image_name = a.image.clone().unwrap_or_else(|| "default".into());
    let image = crate::commands::image::resolve(&rt, &image_name, &a.pull, quiet).await?;
    let create = CreateOptions {
        backend: rt.config().backend,
        ..Default::default()
    };
    let (outcome, _) =
        mvm_runtime::ops::exec::exec_transient(&rt, &image, 0, create, &opts).await?;
    Ok(outcome.exit_code() as u8)
}
