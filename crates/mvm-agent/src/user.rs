//! Running a command as another user (protocol 2, `ExecRequest::user`).
//!
//! The spec is Docker's `--user`: `name`, `uid`, `name:group`, `uid:gid`
//! (and mixes). Names are looked up in the guest's `/etc/passwd` and
//! `/etc/group` (the image's own files); a numeric uid need not exist
//! there. As in Docker/runc:
//!
//! - the primary group is the passwd entry's, else 0, unless given;
//! - the supplementary groups are the primary group plus every group that
//!   lists the user by name in `/etc/group` (also when a group is given);
//! - `HOME` is the passwd entry's home, else `/` (the request's own `env`
//!   still overrides it).
//!
//! The ids are resolved before `fork`; the child then only calls
//! `setgroups`, `setgid`, `setuid` (in that order, async-signal-safe) just
//! before `exec`.

use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::unistd::{Gid, Uid};

/// Resolved credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// `HOME` for the command.
    pub home: String,
}

/// A user spec that cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// The spec is empty or malformed.
    #[error("invalid user {0:?} (expected USER, UID, USER:GROUP or UID:GID)")]
    Invalid(String),
    /// A name not in `/etc/passwd`.
    #[error("unknown user {name:?}: no such entry in {root}/etc/passwd")]
    UnknownUser {
        /// The name.
        name: String,
        /// The root looked in.
        root: String,
    },
    /// A name not in `/etc/group`.
    #[error("unknown group {name:?}: no such entry in {root}/etc/group")]
    UnknownGroup {
        /// The name.
        name: String,
        /// The root looked in.
        root: String,
    },
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(root: &Path) -> Vec<Passwd> {
    let text = fs_err::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || l.starts_with('#') {
                return None;
            }
            Some(Passwd {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_owned(),
            })
        })
        .collect()
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn groups(root: &Path) -> Vec<Group> {
    let text = fs_err::read_to_string(root.join("etc/group")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            Some(Group {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// Resolve `spec` against the files under `root` (`/` in the guest).
pub fn resolve(spec: &str, root: &Path) -> Result<Ids, UserError> {
    let invalid = || UserError::Invalid(spec.to_owned());
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(invalid());
    }
    let rootname = root.display().to_string().trim_end_matches('/').to_owned();
    let pw = passwd(root);
    let entry = match user.parse::<u32>() {
        Ok(uid) => pw.iter().find(|p| p.uid == uid),
        Err(_) => {
            Some(
                pw.iter()
                    .find(|p| p.name == user)
                    .ok_or_else(|| UserError::UnknownUser {
                        name: user.to_owned(),
                        root: rootname.clone(),
                    })?,
            )
        }
    };
    let uid = match entry {
        Some(p) => p.uid,
        None => user.parse().map_err(|_| invalid())?,
    };
    let grp = groups(root);
    let gid = match group {
        None => entry.map_or(0, |p| p.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                grp.iter()
                    .find(|x| x.name == g)
                    .ok_or_else(|| UserError::UnknownGroup {
                        name: g.to_owned(),
                        root: rootname.clone(),
                    })?
                    .gid
            }
        },
    };
    let mut supplementary = vec![gid];
    if let Some(p) = entry {
        for g in &grp {
            if g.members.contains(&p.name) && !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(Ids {
        uid,
        gid,
        groups: supplementary,
        home: entry.map_or_else(|| "/".to_owned(), |p| p.home.clone()),
    })
}

/// The credentials an exec request asks for, resolved in the guest's
/// root; `None` for root (no `user`).
pub fn for_request(
    req: &mvm_agent_proto::ExecRequest,
) -> Result<Option<Ids>, mvm_agent_proto::ErrorMsg> {
    req.user
        .as_deref()
        .map(|u| resolve(u, Path::new("/")))
        .transpose()
        .map_err(|e| {
            mvm_agent_proto::ErrorMsg::new(
                mvm_agent_proto::ErrorKind::InvalidRequest,
                e.to_string(),
            )
        })
}

/// Make `cmd` drop to `ids` just before `exec` (after the other pre-exec
/// steps registered earlier, e.g. `setsid`).
pub fn apply(cmd: &mut std::process::Command, ids: &Ids) {
    let groups: Vec<Gid> = ids.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    let (uid, gid) = (Uid::from_raw(ids.uid), Gid::from_raw(ids.gid));
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setgroups(2), setgid(2) and setuid(2) on data prepared before
    // the fork; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
            nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
            nix::unistd::setuid(uid).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(d.path().join("etc")).unwrap();
        fs_err::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n# comment\n",
        )
        .unwrap();
        fs_err::write(
            d.path().join("etc/group"),
            "root:x:0:\nappgrp:x:1001:\nstaff:x:50:app,other\nvideo:x:44:\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn names_and_numbers() {
        let r = root();
        let p = r.path();
        assert_eq!(
            resolve("app", p).unwrap(),
            Ids {
                uid: 1000,
                gid: 1001,
                groups: vec![1001, 50],
                home: "/home/app".into()
            }
        );
        assert_eq!(resolve("1000", p).unwrap().home, "/home/app");
        let ids = resolve("app:video", p).unwrap();
        assert_eq!((ids.uid, ids.gid), (1000, 44));
        assert_eq!(ids.groups, [44, 50]);
        let ids = resolve("4242:77", p).unwrap();
        assert_eq!((ids.uid, ids.gid, ids.home.as_str()), (4242, 77, "/"));
        assert_eq!(resolve("4242", p).unwrap().gid, 0);
        assert_eq!(resolve("root", p).unwrap().uid, 0);
    }

    #[test]
    fn unknown_and_invalid() {
        let r = root();
        let p = r.path();
        assert!(matches!(
            resolve("nobody", p),
            Err(UserError::UnknownUser { .. })
        ));
        assert!(matches!(
            resolve("app:nogroup", p),
            Err(UserError::UnknownGroup { .. })
        ));
        for bad in ["", ":1", "1:", "x:y:z:"] {
            assert!(resolve(bad, p).is_err(), "{bad}");
        }
        // No /etc at all (distroless without passwd): numbers still work.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(resolve("65532", empty.path()).unwrap().uid, 65532);
        assert!(resolve("app", empty.path()).is_err());
    }
}
