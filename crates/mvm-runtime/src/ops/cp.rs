//! `mvm cp SRC DST`: copy one file between the host and a running machine,
//! streamed through the guest agent (flow-controlled, never whole in
//! memory), keeping the permission bits. Exactly one side is
//! `NAME:GUEST_PATH`. A copy to the host goes to a temporary file beside
//! the destination and is renamed into place only when complete.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{Runtime, RuntimeError};

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// A host path.
    Host(PathBuf),
    /// A path in a machine.
    Guest {
        /// The machine.
        machine: String,
        /// The absolute guest path.
        path: String,
    },
}

impl Side {
    /// `NAME:PATH` is a guest side (NAME has no `/` and does not start with
    /// `.`); anything else is a host path.
    pub fn parse(s: &str) -> Side {
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
}

fn base_name(p: &str) -> Option<&str> {
    Path::new(p).file_name().and_then(|n| n.to_str())
}

/// Copy `src` to `dst`; the number of bytes copied.
pub async fn copy(rt: &Runtime, src: &Side, dst: &Side) -> Result<u64, RuntimeError> {
    let invalid = |m: String| RuntimeError::Invalid(m);
    let machine = match (src, dst) {
        (Side::Guest { machine, .. }, Side::Host(_))
        | (Side::Host(_), Side::Guest { machine, .. }) => machine.clone(),
        _ => {
            return Err(invalid(
                "exactly one of SRC and DST must be NAME:GUEST_PATH".into(),
            ));
        }
    };
    let client = crate::ops::exec::connect_running(rt, &machine).await?;
    let agent = |source| RuntimeError::Agent {
        name: machine.clone(),
        source,
    };
    match (src, dst) {
        (Side::Host(h), Side::Guest { path, .. }) => {
            if !path.starts_with('/') {
                return Err(invalid(format!("guest path {path:?} must be absolute")));
            }
            let meta = fs_err::metadata(h)?;
            if meta.is_dir() {
                return Err(invalid(format!(
                    "{}: directories not supported yet (copy a tar archive instead)",
                    h.display()
                )));
            }
            let mut path = path.clone();
            if path.ends_with('/') {
                let name = h
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| invalid(format!("{} has no file name", h.display())))?;
                path.push_str(name);
            }
            let file = fs_err::tokio::File::open(h).await?;
            client
                .write_file(&path, meta.permissions().mode() & 0o7777, file)
                .await
                .map_err(agent)
        }
        (Side::Guest { path, .. }, Side::Host(h)) => {
            let mut h = h.clone();
            if h.is_dir() {
                h.push(
                    base_name(path)
                        .ok_or_else(|| invalid(format!("guest path {path:?} has no file name")))?,
                );
            }
            let tmp = h.with_file_name(format!(
                ".{}.mvm-cp-{}",
                h.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
                std::process::id()
            ));
            let file = fs_err::tokio::File::create(&tmp).await?;
            let mut w = tokio::io::BufWriter::new(file);
            let meta = match client.read_file(path, &mut w).await {
                Ok(m) => m,
                Err(e) => {
                    let _ = fs_err::remove_file(&tmp);
                    return Err(agent(e));
                }
            };
            let finish = async {
                tokio::io::AsyncWriteExt::flush(&mut w).await?;
                drop(w);
                fs_err::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode & 0o7777))?;
                fs_err::rename(&tmp, &h)?;
                Ok::<_, std::io::Error>(fs_err::metadata(&h)?.len())
            };
            match finish.await {
                Ok(n) => Ok(n),
                Err(e) => {
                    let _ = fs_err::remove_file(&tmp);
                    Err(e.into())
                }
            }
        }
        _ => unreachable!("checked above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides() {
        assert_eq!(
            Side::parse("web:/etc/hosts"),
            Side::Guest {
                machine: "web".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(Side::parse("./a:b"), Side::Host("./a:b".into()));
        assert_eq!(Side::parse("/x/y:z"), Side::Host("/x/y:z".into()));
        assert_eq!(Side::parse("file"), Side::Host("file".into()));
    }
}
