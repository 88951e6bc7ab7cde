//! `mvm image ls|build|rm`, and building the default image on first use.

use std::io::Write;

use anyhow::{Result, bail};
use mvm_runtime::Runtime;

use crate::cli::ImageCommand;
use crate::commands::runtime;
use crate::progress::Bars;

/// The image `name`, building the default image on first use.
pub async fn ensure(rt: &Runtime, name: &str, quiet: bool) -> Result<mvm_image::Image> {
    if name == "default" {
        let bars = Bars::new(quiet);
        mvm_runtime::host::ensure_tools(rt.home(), true, &bars)?;
        // Blocking is fine here: nothing else runs on the CLI's runtime yet.
        let image = mvm_image::build_with_kernel(
            rt.home(),
            mvm_image::DEFAULT_IMAGE,
            mvm_image::ImageSource::Default,
            mvm_image::DEFAULT_SIZE_MIB,
            &kernel_source(rt),
            &bars,
        )?;
        return Ok(image);
    }
    match mvm_image::get(rt.home(), name) {
        Ok(i) => Ok(i),
        Err(e) => bail!("{e}; build it with `mvm image build {name} --from-dir DIR`"),
    }
}

/// The kernel the configuration asks for.
pub fn kernel_source(rt: &Runtime) -> mvm_image::KernelSource {
    match &rt.config().kernel {
        Some(p) => mvm_image::KernelSource::Path(p.clone()),
        None => mvm_image::KernelSource::Debian,
    }
}

pub async fn run(c: ImageCommand, quiet: bool) -> Result<u8> {
    let rt = runtime()?;
    match c {
        ImageCommand::Ls { json } => {
            let images = mvm_image::list(rt.home())?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &images)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<20} {:<14} {:<8} {:>10}  CREATED",
                    "NAME", "DIGEST", "KIND", "SIZE"
                )?;
                for i in images {
                    let kind = match i.kind {
                        mvm_image::ImageKind::Default => "default",
                        mvm_image::ImageKind::Custom => "custom",
                    };
                    writeln!(
                        out,
                        "{:<20} {:<14} {:<8} {:>8}MB  {}",
                        i.name,
                        &i.digest[..12.min(i.digest.len())],
                        kind,
                        i.disk_bytes / 1_000_000,
                        i.created
                    )?;
                }
            }
            Ok(0)
        }
        ImageCommand::Build {
            name,
            from_dir,
            from_tar,
            size,
        } => {
            mvm_runtime::host::ensure_tools(rt.home(), true, &Bars::new(quiet))?;
            let source = match (from_dir, from_tar) {
                (Some(d), None) => mvm_image::ImageSource::FromDir(d),
                (None, Some(t)) => mvm_image::ImageSource::FromTar(t),
                (None, None) => mvm_image::ImageSource::Default,
                (Some(_), Some(_)) => bail!("--from-dir and --from-tar exclude each other"),
            };
            let bars = Bars::new(quiet);
            let image = mvm_image::build_with_kernel(
                rt.home(),
                &name,
                source,
                size.map(u64::from).unwrap_or(mvm_image::DEFAULT_SIZE_MIB),
                &kernel_source(&rt),
                &bars,
            )?;
            drop(bars);
            println!("{} {}", image.name, image.digest);
            Ok(0)
        }
        ImageCommand::Rm { name } => {
            mvm_image::remove(rt.home(), &name)?;
            println!("{name}");
            Ok(0)
        }
    }
}
