//! The config drive without a `mkfs` per machine.
//!
//! Building a machine's config drive with `mkfs.ext4 -d` and `debugfs`
//! costs two processes (7 ms on an idle host, 10–25 ms under load: the
//! largest step of `mvm run` after Firecracker's own boot). Its layout
//! never changes, only the bytes of `config.json` do, so the drive is made
//! from a template, built once per home:
//!
//! 1. the template is the config drive of a placeholder `config.json` of
//!    [`SLOT`] bytes (a unique marker and padding), built by the ordinary
//!    builder ([`mvm_data::drive::ConfigDrive::build`]: label, modes and
//!    owners as always); the placeholder's offset in the image is found by
//!    reading it back, and kept beside the template;
//! 2. a machine's drive is a copy of the template (its data extents only,
//!    [`mvm_image::clone_file`]) with the machine's `config.json`, padded
//!    with spaces to the slot's size (JSON ignores trailing whitespace),
//!    written over the placeholder's bytes — file data, which ext4 does not
//!    checksum; the inode (size, blocks) is the template's.
//!
//! Before each use the placeholder is checked again at its offset in the
//! template; a template that does not hold it, or a `config.json` larger
//! than the slot, makes the caller fall back to the ordinary builder.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use mvm_core::MvmHome;
use mvm_data::drive::{ConfigDrive, ConfigJson};

/// Size of `config.json` in the template, bytes (ample for id, name,
/// network and a main process; larger documents use the ordinary builder).
pub const SLOT: usize = 16 * 1024;

/// Bump when the template's content or layout changes.
const VERSION: u32 = 1;

/// The marker that makes the placeholder findable in the image.
const MARKER: &str = "mvm-config-drive-template-slot-7c1d09e4";

/// The template and where its placeholder lies.
struct Template {
    image: PathBuf,
    offset: u64,
}

fn template_path(home: &MvmHome) -> PathBuf {
    home.cache_dir()
        .join(format!("config-drive-template-v{VERSION}.ext4"))
}

fn offset_path(image: &Path) -> PathBuf {
    image.with_extension("offset")
}

/// The placeholder `config.json`, exactly [`SLOT`] bytes.
fn placeholder() -> Vec<u8> {
    let mut cfg = ConfigJson::new(MARKER, "x");
    cfg.extra
        .insert("pad".into(), serde_json::Value::String(String::new()));
    let bare = serde_json::to_vec_pretty(&cfg).expect("plain data serialises");
    cfg.extra.insert(
        "pad".into(),
        serde_json::Value::String("#".repeat(SLOT - bare.len())),
    );
    let p = serde_json::to_vec_pretty(&cfg).expect("plain data serialises");
    debug_assert_eq!(p.len(), SLOT);
    p
}

/// Whether `image` holds the placeholder at `offset`.
fn holds_placeholder(image: &Path, offset: u64, want: &[u8]) -> bool {
    let Ok(f) = fs_err::File::open(image) else {
        return false;
    };
    let mut buf = vec![0u8; want.len()];
    f.file().read_exact_at(&mut buf, offset).is_ok() && buf == want
}

/// The template of `home`, built on first use (racing builders each make a
/// valid one; the last rename wins).
fn ensure(home: &MvmHome) -> Result<Template, String> {
    let image = template_path(home);
    let want = placeholder();
    if let Ok(text) = fs_err::read_to_string(offset_path(&image))
        && let Ok(offset) = text.trim().parse::<u64>()
        && holds_placeholder(&image, offset, &want)
    {
        return Ok(Template { image, offset });
    }
    let dir = home.cache_dir();
    fs_err::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let tmp = tempfile::Builder::new()
        .prefix(".config-drive-")
        .suffix(".ext4")
        .tempfile_in(&dir)
        .map_err(|e| e.to_string())?;
    let cfg: ConfigJson = serde_json::from_slice(&want).map_err(|e| e.to_string())?;
    ConfigDrive::build(tmp.path(), &cfg, &[]).map_err(|e| e.to_string())?;
    // The builder serialises the same document the same way: find it.
    let bytes = fs_err::read(tmp.path()).map_err(|e| e.to_string())?;
    let lead = want
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
        .expect("the marker is in the placeholder");
    let offset = bytes
        .windows(MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == MARKER.as_bytes())
        .map(|(i, _)| i.saturating_sub(lead))
        .find(|&start| bytes.get(start..start + want.len()) == Some(&want[..]))
        .ok_or("the placeholder is not contiguous in the built image")? as u64;
    tmp.persist(&image).map_err(|e| e.error.to_string())?;
    fs_err::write(offset_path(&image), offset.to_string()).map_err(|e| e.to_string())?;
    Ok(Template { image, offset })
}

/// Write `dest` as the config drive of `cfg` from the template of `home`.
/// `Ok(false)`: not possible (document too large, template unusable); the
/// caller builds the drive the ordinary way.
pub fn write(home: &MvmHome, dest: &Path, cfg: &ConfigJson) -> std::io::Result<bool> {
    let mut json = serde_json::to_vec_pretty(cfg).map_err(std::io::Error::other)?;
    if json.len() > SLOT {
        return Ok(false);
    }
    let t = match ensure(home) {
        Ok(t) => t,
        Err(why) => {
            tracing::warn!("config drive template unusable ({why}); building with mkfs");
            return Ok(false);
        }
    };
    json.resize(SLOT, b' ');
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".config-")
        .tempfile_in(dir)?;
    mvm_image::clone_file(&t.image, tmp.path()).map_err(std::io::Error::other)?;
    let f = fs_err::OpenOptions::new().write(true).open(tmp.path())?;
    f.file().write_all_at(&json, t.offset)?;
    drop(f);
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placeholder_fills_the_slot_exactly() {
        let p = placeholder();
        assert_eq!(p.len(), SLOT);
        let back: ConfigJson = serde_json::from_slice(&p).unwrap();
        assert_eq!(back.id, MARKER);
        // A real document padded with spaces still parses.
        let mut j = serde_json::to_vec_pretty(&ConfigJson::new("id", "web")).unwrap();
        j.resize(SLOT, b' ');
        let back: ConfigJson = serde_json::from_slice(&j).unwrap();
        assert_eq!(back.name, "web");
    }

    #[test]
    fn drives_from_the_template_are_clean_ext4_with_the_document() {
        use mvm_core::tools::{DEBUGFS, E2FSCK, MKFS_EXT4};
        if [MKFS_EXT4, DEBUGFS, E2FSCK]
            .iter()
            .any(|t| t.find().is_none())
        {
            mvm_core::testing::skip("SKIPPED: config drive template test: needs e2fsprogs");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let home = MvmHome::new(t.path().join("home"));
        let mut cfg = ConfigJson::new("0123456789abcdef", "web");
        cfg.ip = Some("172.16.0.9".parse().unwrap());
        for (i, name) in ["a", "b"].iter().enumerate() {
            cfg.name = (*name).into();
            let dest = t.path().join(format!("{name}.ext4"));
            assert!(write(&home, &dest, &cfg).unwrap(), "template not used");
            let ok = E2FSCK.run(
                ["-fn".as_ref(), dest.as_os_str()],
                std::time::Duration::from_secs(30),
            );
            assert!(ok.is_ok(), "e2fsck: {ok:?}");
            let out = DEBUGFS
                .run(
                    ["-R".as_ref(), "cat /config.json".as_ref(), dest.as_os_str()],
                    std::time::Duration::from_secs(30),
                )
                .unwrap();
            let back: ConfigJson = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(back, cfg, "drive {i}");
            let label = DEBUGFS
                .run(
                    ["-R".as_ref(), "stats".as_ref(), dest.as_os_str()],
                    std::time::Duration::from_secs(30),
                )
                .unwrap()
                .stdout_text();
            assert!(label.contains("mvm-config"), "{label}");
        }
        // A document larger than the slot is left to the ordinary builder;
        // a template that lost its placeholder is rebuilt.
        cfg.extra.insert("big".into(), "x".repeat(SLOT).into());
        assert!(!write(&home, &t.path().join("c.ext4"), &cfg).unwrap());
        let image = template_path(&home);
        fs_err::write(offset_path(&image), "0").unwrap();
        cfg.extra.clear();
        assert!(write(&home, &t.path().join("d.ext4"), &cfg).unwrap());
    }
}
