//! What every process of a machine starts with, and its main process
//! (model: `mvm_core::main_process`).
//!
//! For a machine of an OCI image the image's config decides, as for a
//! container:
//!
//! | | image | machine (`mvm run`) | command (`mvm exec`) |
//! |---|---|---|---|
//! | environment | `Env` | `-e` (the record's `env`) | `-e` |
//! | working directory | `WorkingDir` | `-w` | `-w` |
//! | user | `User` | `--user` | `--user` |
//!
//! each column overriding the one on its left. The image and machine
//! columns are resolved once, when the machine is created, into
//! [`ProcessDefaults`] (kept in `<instance>/process.json`, so a machine
//! keeps what its disk was made with even when its image's tag moves on);
//! the command's column is applied by `ops::exec`.
//!
//! The **main process** is Entrypoint followed by the command given to
//! `mvm run IMAGE -- CMD...`, or else by the image's Cmd (Docker's rule),
//! with the defaults above; none when both are empty. It is kept in the
//! record and written to the config drive, where the guest agent finds it.

use mvm_core::InstanceDir;
use mvm_core::main_process::{MainProcess, ProcessDefaults};
use mvm_image::{Image, ImageConfig};

use crate::RuntimeError;

/// The OCI config of `image`, if it was made from an OCI image.
pub fn image_config(image: &Image) -> Result<Option<ImageConfig>, RuntimeError> {
    Ok(image.oci()?.map(|o| o.config))
}

/// The defaults of a new machine: the image's Env, WorkingDir and User,
/// with `workdir` and `user` (`mvm run -w/--user`) over the image's.
pub fn defaults(
    config: Option<&ImageConfig>,
    workdir: Option<&str>,
    user: Option<&str>,
) -> ProcessDefaults {
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    ProcessDefaults {
        env: config.map(ImageConfig::env_pairs).unwrap_or_default(),
        cwd: workdir
            .map(str::to_owned)
            .or_else(|| config.and_then(|c| non_empty(&c.working_dir))),
        user: user
            .map(str::to_owned)
            .or_else(|| config.and_then(|c| non_empty(&c.user))),
    }
}

/// The main process of a new machine: Entrypoint + (`cmd` if not empty,
/// else Cmd), with `defaults` and the machine's environment over the
/// image's; `None` when that argv is empty.
pub fn main_process(
    config: Option<&ImageConfig>,
    defaults: &ProcessDefaults,
    machine_env: &[(String, String)],
    cmd: &[String],
) -> Option<MainProcess> {
    let argv = match config {
        Some(c) => c.main_argv(Some(cmd)),
        None => cmd.to_vec(),
    };
    if argv.is_empty() {
        return None;
    }
    let mut env = defaults.env.clone();
    env.extend(machine_env.iter().cloned());
    Some(MainProcess {
        argv,
        process: ProcessDefaults {
            env,
            cwd: defaults.cwd.clone(),
            user: defaults.user.clone(),
        },
    })
}

/// Keep `defaults` with the machine (nothing is written when they are
/// empty: a machine of a built image has none).
pub fn save(dir: &InstanceDir, defaults: &ProcessDefaults) -> Result<(), RuntimeError> {
    if defaults.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_vec_pretty(defaults).expect("plain data serialises");
    mvm_core::atomic::write_atomic(&dir.process_defaults(), &json, 0o644)
        .map_err(|e| std::io::Error::new(e.source.kind(), e))?;
    Ok(())
}

/// The defaults of the machine of `dir` (empty when it has none).
pub fn load(dir: &InstanceDir) -> Result<ProcessDefaults, RuntimeError> {
    let p = dir.process_defaults();
    match fs_err::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", p.display()),
            )
            .into()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProcessDefaults::default()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> ImageConfig {
        ImageConfig {
            env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=hello".into()],
            working_dir: Some("/work".into()),
            user: Some("app".into()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec!["echo hi".into()]),
            ..Default::default()
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_machine_overrides_the_image() {
        let c = app();
        let d = defaults(Some(&c), None, None);
        assert_eq!(d.cwd.as_deref(), Some("/work"));
        assert_eq!(d.user.as_deref(), Some("app"));
        assert_eq!(d.env[1], ("GREETING".into(), "hello".into()));
        let d = defaults(Some(&c), Some("/tmp"), Some("0:0"));
        assert_eq!(d.cwd.as_deref(), Some("/tmp"));
        assert_eq!(d.user.as_deref(), Some("0:0"));
        // An image without config (built with `mvm image build`).
        let d = defaults(None, None, Some("nobody"));
        assert!(d.env.is_empty() && d.cwd.is_none());
        assert_eq!(d.user.as_deref(), Some("nobody"));
        // Empty strings in an image config mean "not set".
        let empty = ImageConfig {
            working_dir: Some(String::new()),
            user: Some(String::new()),
            ..Default::default()
        };
        assert!(defaults(Some(&empty), None, None).is_empty());
    }

    #[test]
    fn main_process_follows_docker_run() {
        let c = app();
        let d = defaults(Some(&c), None, None);
        let machine_env = vec![("GREETING".to_owned(), "machine".to_owned())];
        let m = main_process(Some(&c), &d, &machine_env, &[]).unwrap();
        assert_eq!(m.argv, s(&["/bin/sh", "-c", "echo hi"]));
        // Later entries win in the guest: the machine's over the image's.
        assert_eq!(m.process.env.last().unwrap().1, "machine");
        assert_eq!(m.process.cwd.as_deref(), Some("/work"));
        assert_eq!(m.process.user.as_deref(), Some("app"));
        // `mvm run IMAGE -- CMD` replaces Cmd, keeps Entrypoint.
        let m = main_process(Some(&c), &d, &[], &s(&["exit 3"])).unwrap();
        assert_eq!(m.argv, s(&["/bin/sh", "-c", "exit 3"]));
        // Neither Entrypoint nor Cmd nor a command: no main process.
        let none = ImageConfig::default();
        assert!(main_process(Some(&none), &d, &[], &[]).is_none());
        assert!(main_process(None, &d, &[], &[]).is_none());
        // A built image runs the command as given.
        let m = main_process(None, &ProcessDefaults::default(), &[], &s(&["sleep", "1"])).unwrap();
        assert_eq!(m.argv, s(&["sleep", "1"]));
    }

    #[test]
    fn saved_defaults_load_back_and_none_is_empty() {
        let t = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(t.path());
        assert!(load(&dir).unwrap().is_empty());
        let d = defaults(Some(&app()), None, None);
        save(&dir, &d).unwrap();
        assert_eq!(load(&dir).unwrap(), d);
    }
}
