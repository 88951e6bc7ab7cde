//! `mvm setup`: idempotently find or install what the backend needs, then
//! build the default image.

use anyhow::{Context, Result};
use mvm_core::BackendKind;
use mvm_runtime::backends::select;

use crate::cli::SetupArgs;
use crate::commands::runtime;
use crate::progress::Bars;

pub async fn run(a: SetupArgs, quiet: bool) -> Result<u8> {
    let rt = runtime()?;
    mvm_runtime::host::ensure_base(true)?;
    let mut config = rt.config.clone();
    if let Some(bin) = &a.firecracker_bin {
        let version = mvm_firecracker::install::check_binary(bin)
            .with_context(|| format!("checking --firecracker-bin {}", bin.display()))?;
        eprintln!("mvm: using {} ({version})", bin.display());
        config.firecracker_bin = Some(bin.clone());
        persist_firecracker_bin(&rt, bin, &version)?;
    }
    let wants_fc = a.backend == crate::cli::BackendArg::Firecracker;
    if wants_fc && mvm_runtime::backends::firecracker_binary(&config, &rt.home).is_none() {
        let version = a
            .firecracker_version
            .clone()
            .unwrap_or_else(|| config.firecracker_version.clone());
        let bars = Bars::new(quiet);
        let path = mvm_firecracker::install::install_release(
            &rt.home,
            &version,
            std::env::consts::ARCH,
            &bars,
        )
        .with_context(|| {
            format!(
                "cannot install firecracker {version} from {}; download it yourself and run \
                 `mvm setup --backend firecracker --firecracker-bin PATH`",
                mvm_firecracker::install::release_base_url()
            )
        })?;
        eprintln!("mvm: installed firecracker {version} at {}", path.display());
    }
    let sel = select(a.backend.into(), &config, &rt.home);
    if sel.kind == BackendKind::Qemu {
        mvm_qemu::QemuBackend::detect()?;
    }
    let image = crate::commands::image::ensure(&rt, "default", quiet).await?;
    eprintln!(
        "mvm: ready: backend {} ({}), default image {}",
        sel.kind,
        sel.reason,
        &image.digest[..12.min(image.digest.len())]
    );
    Ok(0)
}

/// Remember `--firecracker-bin` and its version in config.toml (keeping
/// the rest).
fn persist_firecracker_bin(
    rt: &mvm_runtime::Runtime,
    bin: &std::path::Path,
    version: &str,
) -> Result<()> {
    let path = rt.home.config_file();
    let mut doc: toml::Table = match fs_err::read_to_string(&path) {
        Ok(t) => t
            .parse()
            .with_context(|| format!("parsing {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => return Err(e.into()),
    };
    doc.insert(
        "firecracker_bin".into(),
        toml::Value::String(bin.display().to_string()),
    );
    doc.insert(
        "firecracker_version".into(),
        toml::Value::String(version.to_owned()),
    );
    mvm_core::atomic::write_atomic(&path, doc.to_string().as_bytes(), 0o644)?;
    Ok(())
}
