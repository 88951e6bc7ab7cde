//! `mvm cp SRC DST`: copy one file between the host and a running machine,
//! streamed through the guest agent (flow-controlled, never whole in
//! memory), keeping the permission bits. Exactly one side is
//! `NAME:GUEST_PATH`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mvm_core::Status;

use crate::cli::CpArgs;
use crate::commands::runtime;

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Host(PathBuf),
    Guest { machine: String, path: String },
}

fn parse_side(s: &str) -> Side {
    match s.split_once(':') {
        Some((m, p))
            if !m.is_empty() && !m.contains('/') && !m.starts_with('.') && !p.is_empty() =>
        {
            Side::Guest {
                machine: m.to_owned(),
                path: p.to_owned(),
            }
        }
        _ => Side::Host(PathBuf::from(s)),
    }
}

fn base_name(p: &str) -> Option<&str> {
    Path::new(p).file_name().and_then(|n| n.to_str())
}

pub async fn run(a: CpArgs) -> Result<u8> {
    let (src, dst) = (parse_side(&a.src), parse_side(&a.dst));
    let rt = runtime()?;
    let machine = match (&src, &dst) {
        (Side::Guest { machine, .. }, Side::Host(_))
        | (Side::Host(_), Side::Guest { machine, .. }) => machine.clone(),
        _ => bail!("exactly one of SRC and DST must be NAME:GUEST_PATH"),
    };
    let (_, obs) = rt.observe(&machine)?;
    if obs.status != Status::Running {
        bail!(
            "machine {machine:?} is {}; start it with `mvm start {machine}`",
            obs.status
        );
    }
    let client = mvm_runtime::exec::connect(&rt.registry.dir(&machine)).await?;
    let t = std::time::Instant::now();
    let bytes = match (src, dst) {
        (Side::Host(h), Side::Guest { path, .. }) => {
            if !path.starts_with('/') {
                bail!("guest path {path:?} must be absolute");
            }
            let meta = fs_err::metadata(&h)?;
            if meta.is_dir() {
                bail!("{}: directories not supported yet", h.display());
            }
            let mut path = path;
            if path.ends_with('/') {
                let name = h
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("source has no file name")?;
                path.push_str(name);
            }
            let file = tokio::fs::File::open(&h)
                .await
                .with_context(|| format!("opening {}", h.display()))?;
            client
                .write_file(&path, meta.permissions().mode() & 0o7777, file)
                .await
                .with_context(|| format!("writing {machine}:{path}"))?
        }
        (Side::Guest { path, .. }, Side::Host(mut h)) => {
            if h.is_dir() {
                h.push(base_name(&path).context("guest path has no file name")?);
            }
            let tmp = h.with_file_name(format!(
                ".{}.mvm-cp-{}",
                h.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
                std::process::id()
            ));
            let file = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut w = tokio::io::BufWriter::new(file);
            let r = client.read_file(&path, &mut w).await;
            let meta = match r {
                Ok(m) => m,
                Err(e) => {
                    let _ = fs_err::remove_file(&tmp);
                    return Err(anyhow::Error::from(e).context(format!("reading {machine}:{path}")));
                }
            };
            tokio::io::AsyncWriteExt::flush(&mut w).await?;
            drop(w);
            fs_err::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode & 0o7777))?;
            fs_err::rename(&tmp, &h)?;
            fs_err::metadata(&h)?.len()
        }
        _ => unreachable!("checked above"),
    };
    tracing::info!("copied {bytes} bytes in {} ms", t.elapsed().as_millis());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides() {
        assert_eq!(
            parse_side("web:/etc/hosts"),
            Side::Guest {
                machine: "web".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(parse_side("./a:b"), Side::Host("./a:b".into()));
        assert_eq!(parse_side("/x/y:z"), Side::Host("/x/y:z".into()));
        assert_eq!(parse_side("file"), Side::Host("file".into()));
    }
}
