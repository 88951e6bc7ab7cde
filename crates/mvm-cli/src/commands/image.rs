//! `mvm image ls|build|pull|import|inspect|rm`, and building the default
//! image on first use.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use mvm_runtime::Runtime;

use crate::cli::{ImageCommand, PullArgs};
use crate::commands::runtime;
use crate::progress::{Bars, LayerBars};

/// [`resolve`] with the default pull policy (`missing`).
pub async fn ensure(rt: &Runtime, name: &str, quiet: bool) -> Result<mvm_image::Image> {
    resolve(rt, name, &PullArgs::default(), quiet).await
}

/// The image `name` (a tag or an OCI reference) to boot: the default image
/// is built on first use, an OCI image pulled as `pull` says (progress bars
/// and the summary line as `mvm image pull` prints them).
pub async fn resolve(
    rt: &Runtime,
    name: &str,
    pull: &PullArgs,
    quiet: bool,
) -> Result<mvm_image::Image> {
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
    let opts = mvm_oci::PullOptions {
        insecure: pull.insecure,
        kernel: kernel_source(rt),
        ..mvm_oci::PullOptions::default()
    };
    let bars = Arc::new(LayerBars::new(quiet));
    let token = mvm_oci::CancellationToken::new();
    let r = interruptible(
        mvm_oci::ensure(
            rt.home(),
            name,
            pull.pull.into(),
            &opts,
            bars.clone(),
            token.clone(),
        ),
        &token,
    )
    .await;
    bars.finish();
    let r = r?;
    if let Some(p) = &r.pulled
        && !quiet
    {
        eprintln!("{}", pull_summary(p));
    }
    Ok(r.image)
}

/// The line `mvm image pull` prints when it is done.
fn pull_summary(r: &mvm_oci::PullReport) -> String {
    format!(
        "mvm: pulled {} ({}): {} layer(s), {} downloaded ({}{}), {} from the cache; {} in {:.1} s",
        r.reference,
        r.manifest_digest,
        r.layers,
        r.layers_downloaded,
        mb(r.downloaded_bytes),
        if r.resumed_bytes > 0 {
            format!(", resumed after {}", mb(r.resumed_bytes))
        } else {
            String::new()
        },
        mb(r.cached_bytes),
        if r.unpacked.is_some() {
            "converted"
        } else {
            "already converted"
        },
        (r.download_time + r.convert_time).as_secs_f64()
    )
}

/// The kernel the configuration asks for.
pub fn kernel_source(rt: &Runtime) -> mvm_image::KernelSource {
    match &rt.config().kernel {
        Some(p) => mvm_image::KernelSource::Path(p.clone()),
        None => mvm_image::KernelSource::Debian,
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// What `mvm image pull --json` prints: the pull's figures, exact.
fn pull_json(r: &mvm_oci::PullReport) -> serde_json::Value {
    serde_json::json!({
        "reference": r.reference,
        "manifest_digest": r.manifest_digest,
        "index_digest": r.index_digest,
        "image_digest": r.image.digest,
        "layers": r.layers,
        "layers_downloaded": r.layers_downloaded,
        "downloaded_bytes": r.downloaded_bytes,
        "resumed_bytes": r.resumed_bytes,
        "cached_bytes": r.cached_bytes,
        "converted": r.unpacked.is_some(),
        "download_ms": r.download_time.as_millis() as u64,
        "convert_ms": r.convert_time.as_millis() as u64,
    })
}

/// Run `fut`; the first SIGINT/SIGTERM cancels `token` and the future is
/// awaited to its (prompt) end, so temporary files are cleaned up.
async fn interruptible<T>(
    fut: impl std::future::Future<Output = T>,
    token: &mvm_oci::CancellationToken,
) -> T {
    tokio::pin!(fut);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut interrupted = false;
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                token.cancel();
            }
            Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } }, if !interrupted => {
                interrupted = true;
                token.cancel();
            }
        }
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
                    "{:<40} {:<19} {:<14} {:>10}  CREATED",
                    "NAME", "DIGEST", "SOURCE", "SIZE"
                )?;
                for i in images {
                    let digest = match &i.manifest_digest {
                        Some(m) => m.trim_start_matches("sha256:").get(..12).unwrap_or(m),
                        None => &i.digest[..12.min(i.digest.len())],
                    };
                    writeln!(
                        out,
                        "{:<40} sha256:{:<12} {:<14} {:>8}MB  {}",
                        i.name,
                        digest,
                        i.source,
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
            let r = mvm_oci::remove(rt.home(), &name)?;
            println!("{name}");
            if !quiet {
                match r.gc {
                    Some(g) if g.blobs + g.partials > 0 => eprintln!(
                        "mvm: removed {} unused blob(s), {} freed",
                        g.blobs + g.partials,
                        mb(g.bytes)
                    ),
                    Some(_) => {}
                    None => eprintln!(
                        "mvm: a pull or import is running; unused blobs are collected by a later `mvm image rm`"
                    ),
                }
            }
            Ok(0)
        }
        ImageCommand::Pull {
            reference,
            insecure,
            username,
            password_stdin,
            json,
        } => {
            mvm_runtime::host::ensure_tools(rt.home(), true, &Bars::new(quiet))?;
            let credentials = match (username, password_stdin) {
                (Some(username), true) => {
                    let mut password = String::new();
                    std::io::stdin()
                        .read_to_string(&mut password)
                        .context("reading the password from stdin")?;
                    let password = password.trim_end_matches(['\n', '\r']).to_owned();
                    if password.is_empty() {
                        bail!("--password-stdin: standard input was empty");
                    }
                    Some(mvm_oci::Credentials { username, password })
                }
                _ => None,
            };
            let opts = mvm_oci::PullOptions {
                insecure,
                credentials,
                kernel: kernel_source(&rt),
                ..mvm_oci::PullOptions::default()
            };
            let bars = Arc::new(LayerBars::new(quiet));
            let token = mvm_oci::CancellationToken::new();
            let r = interruptible(
                mvm_oci::pull(rt.home(), &reference, &opts, bars.clone(), token.clone()),
                &token,
            )
            .await;
            bars.finish();
            let r = r?;
            if !quiet {
                eprintln!("{}", pull_summary(&r));
            }
            if json {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer_pretty(&mut out, &pull_json(&r))?;
                writeln!(out)?;
            } else {
                println!("{}", r.reference);
            }
            Ok(0)
        }
        ImageCommand::Import { path, name } => {
            mvm_runtime::host::ensure_tools(rt.home(), true, &Bars::new(quiet))?;
            let bars = Arc::new(LayerBars::new(quiet));
            let token = mvm_oci::CancellationToken::new();
            let flag = Arc::new(AtomicBool::new(false));
            let (home, kernel, b, f) = (
                rt.home().clone(),
                kernel_source(&rt),
                bars.clone(),
                flag.clone(),
            );
            let job = tokio::task::spawn_blocking(move || {
                mvm_oci::import(&home, &path, name.as_deref(), &kernel, &*b, f)
            });
            let watch = {
                let (t, f) = (token.clone(), flag.clone());
                tokio::spawn(async move {
                    t.cancelled().await;
                    f.store(true, Ordering::Relaxed);
                })
            };
            let r = interruptible(job, &token).await;
            watch.abort();
            bars.finish();
            let r = r.context("the import task failed")?;
            let r = match r {
                Err(_) if flag.load(Ordering::Relaxed) => {
                    bail!("import interrupted; nothing was added")
                }
                r => r?,
            };
            if !quiet {
                eprintln!(
                    "mvm: imported {} ({}, {}): {} layer(s), {} in {:.1} s",
                    r.reference,
                    r.source.as_str(),
                    r.manifest_digest,
                    r.layers,
                    if r.unpacked.is_some() {
                        "converted"
                    } else {
                        "already converted"
                    },
                    r.time.as_secs_f64()
                );
            }
            println!("{}", r.reference);
            Ok(0)
        }
        ImageCommand::Inspect { name, json: _ } => {
            let Some(image) = mvm_oci::find(rt.home(), &name)? else {
                bail!("no image {name:?} (see `mvm image ls`)");
            };
            let m = image.manifest()?;
            let reference = mvm_image::oci::read_ref(rt.home(), &image.name)?;
            let doc = serde_json::json!({
                "name": image.name,
                "digest": image.digest,
                "kind": m.kind,
                "source": reference.as_ref().map_or("built", |r| r.source.as_str()),
                "reference": reference.as_ref().map(|r| &r.reference),
                "manifest_digest": reference.as_ref().map(|r| &r.manifest_digest),
                "index_digest": reference.as_ref().and_then(|r| r.index_digest.as_ref()),
                "imported_from": reference.as_ref().and_then(|r| r.imported_from.as_ref()),
                "created": reference.as_ref().map_or(&m.created, |r| &r.created),
                "config": m.oci.as_ref().map(|o| &o.config),
                "config_digest": m.oci.as_ref().map(|o| &o.config_digest),
                "layers": m.oci.as_ref().map(|o| &o.layers),
                "unpacked_bytes": m.oci.as_ref().map(|o| o.unpacked_bytes),
                "rootfs_mib": m.rootfs_mib,
                "kernel_release": m.kernel_release,
                "dir": image.dir,
            });
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
            Ok(0)
        }
    }
}
