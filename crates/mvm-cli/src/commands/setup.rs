//! `mvm setup`: idempotently find or install what the backend needs, then
//! build the default image.

use anyhow::{Context, Result};
use mvm_core::BackendKind;
use mvm_runtime::resources::backend::select;

use crate::cli::SetupArgs;
use crate::commands::runtime;
use crate::progress::Bars;

pub async fn run(a: SetupArgs, quiet: bool) -> Result<u8> {
    let rt = runtime()?;
    mvm_runtime::host::ensure_tools(rt.home(), true, &Bars::new(quiet))?;
    let mut config = rt.config().clone();
    if let Some(bin) = &a.firecracker_bin {
        let version = mvm_firecracker::install::check_binary(bin)
            .with_context(|| format!("checking --firecracker-bin {}", bin.display()))?;
        eprintln!("mvm: using {} ({version})", bin.display());
        config.firecracker_bin = Some(bin.clone());
        persist_firecracker_bin(&rt, bin, &version)?;
    }
    let wants_fc = a.backend == crate::cli::BackendArg::Firecracker;
    if wants_fc && mvm_runtime::resources::backend::firecracker_binary(&config, rt.home()).is_none()
    {
        let version = a
            .firecracker_version
            .clone()
            .unwrap_or_else(|| config.firecracker_version.clone());
        let bars = Bars::new(quiet);
        let path = mvm_firecracker::install::install_release(
            &config,
            rt.home(),
            &version,
            std::env::consts::ARCH,
            &bars,
        )
        .with_context(|| {
            format!(
                "cannot install firecracker {version} from {}; download it yourself and run \
                 `mvm setup --backend firecracker --firecracker-bin PATH`",
                mvm_firecracker::install::release_base_url(&config)
            )
        })?;
        eprintln!("mvm: installed firecracker {version} at {}", path.display());
    }
    let sel = select(a.backend.into(), &config, rt.home());
    if sel.kind == BackendKind::Qemu {
        mvm_runtime::resources::backend::qemu(&config)?;
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

/// Remember `--firecracker-bin` and its version in config.toml, keeping
/// everything else in the file as it was, comments included (`toml_edit`).
fn persist_firecracker_bin(
    rt: &mvm_runtime::Runtime,
    bin: &std::path::Path,
    version: &str,
) -> Result<()> {
    let path = rt.home().config_file();
    let mut doc: toml_edit::DocumentMut = match fs_err::read_to_string(&path) {
        Ok(t) => t
            .parse()
            .with_context(|| format!("parsing {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml_edit::DocumentMut::new(),
        Err(e) => return Err(e.into()),
    };
    doc["firecracker_bin"] = toml_edit::value(bin.display().to_string());
    doc["firecracker_version"] = toml_edit::value(version);
    mvm_core::atomic::write_atomic(&path, doc.to_string().as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn persisting_keeps_comments_and_other_keys() {
        let t = tempfile::tempdir().unwrap();
        let home = mvm_core::MvmHome::new(t.path());
        fs_err::write(
            home.config_file(),
            "# my settings\ncpus = 2 # two is enough\n\n[network]\nbridge = \"br7\"\n",
        )
        .unwrap();
        let rt = mvm_runtime::Runtime::open(home.clone()).unwrap();
        super::persist_firecracker_bin(&rt, std::path::Path::new("/opt/fc"), "1.16.1").unwrap();
        let text = fs_err::read_to_string(home.config_file()).unwrap();
        assert!(text.contains("# my settings"), "{text}");
        assert!(text.contains("cpus = 2 # two is enough"), "{text}");
        assert!(text.contains("bridge = \"br7\""), "{text}");
        let cfg = mvm_core::config::Config::read_file(&home.config_file()).unwrap();
        assert_eq!(
            cfg.firecracker_bin.as_deref(),
            Some(std::path::Path::new("/opt/fc"))
        );
        assert_eq!(cfg.cpus, 2);
    }
}
