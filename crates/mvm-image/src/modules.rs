//! The kernel modules a guest needs, resolved from the kernel's
//! `modules.dep` and copied into the image.
//!
//! # Formats
//!
//! `lib/modules/<release>/modules.dep` has one line per module: its path
//! relative to `lib/modules/<release>/`, a colon, then the paths of the
//! modules it needs, space separated:
//!
//! ```text
//! kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko
//! ```
//!
//! `modules.dep` is written by `depmod` when a kernel package is installed,
//! so an unpacked-but-not-installed `.deb` has none. Then the dependencies
//! come from each module's own ELF `.modinfo` section (NUL-separated
//! `key=value` strings; `depends=a,b` names the modules it needs), starting
//! from the wanted modules, with `modules.order` (or a directory walk) giving
//! each name's path; the result is the same `modules.dep` text for the
//! closure, so one resolver serves both.
//!
//! `modules.builtin` lists modules compiled into the kernel, one path a line.
//! A module's name is its file name without `.ko[.xz|.zst|.gz]`, with `-`
//! read as `_`.
//!
//! The image gets every needed module as a plain `.ko` (compressed ones are
//! decompressed here) and `/etc/mvm/modules.order`: their paths relative to
//! `/lib/modules/<release>/`, dependencies first, one a line, so the agent
//! can load them in order without depmod or modprobe.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The modules every mvm guest loads (when the kernel has them as modules).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "vsock",
    "vmw_vsock_virtio_transport",
    "overlay",
];

/// Where the load order lives in the image.
pub const MODULES_ORDER_PATH: &str = "etc/mvm/modules.order";

/// Resolving or copying modules failed.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A wanted module is neither a module nor built in.
    #[error("kernel module {name} is neither in modules.dep nor in modules.builtin")]
    NotFound {
        /// The module name.
        name: String,
    },
    /// A dependency listed in modules.dep has no line of its own.
    #[error("modules.dep lists {dep} (needed by {by}) but has no entry for it")]
    DanglingDep {
        /// The missing path.
        dep: String,
        /// The module that needs it.
        by: String,
    },
    /// A file could not be read, decompressed or written.
    #[error("cannot copy module {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// The module name of a path: `kernel/fs/overlayfs/overlay.ko.xz` → `overlay`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// The result of resolving a set of modules.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    /// Paths (as in modules.dep) in load order: dependencies first.
    pub order: Vec<String>,
    /// Wanted modules that are built into the kernel.
    pub builtin: Vec<String>,
}

/// Resolve the dependency closure of `wanted` in load order.
pub fn resolve(
    modules_dep: &str,
    modules_builtin: &str,
    wanted: &[&str],
) -> Result<Resolved, ModulesError> {
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_name: BTreeMap<String, &str> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        deps.insert(path, rest.split_whitespace().collect());
        by_name.insert(module_name(path), path);
    }
    let builtin: BTreeSet<String> = modules_builtin
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect();

    let mut out = Resolved::default();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for want in wanted {
        let want = want.replace('-', "_");
        if let Some(path) = by_name.get(&want) {
            visit(path, &deps, &mut done, &mut Vec::new(), &mut out.order)?;
        } else if builtin.contains(&want) {
            out.builtin.push(want);
        } else {
            return Err(ModulesError::NotFound { name: want });
        }
    }
    Ok(out)
}

/// Depth-first post-order; `stack` guards against cycles (which depmod
/// never writes, but a bad file must not recurse forever).
fn visit<'a>(
    path: &'a str,
    deps: &BTreeMap<&'a str, Vec<&'a str>>,
    done: &mut BTreeSet<&'a str>,
    stack: &mut Vec<&'a str>,
    order: &mut Vec<String>,
) -> Result<(), ModulesError> {
    if done.contains(path) || stack.contains(&path) {
        return Ok(());
    }
    stack.push(path);
    for dep in deps.get(path).into_iter().flatten() {
        if !deps.contains_key(dep) {
            return Err(ModulesError::DanglingDep {
                dep: (*dep).to_owned(),
                by: path.to_owned(),
            });
        }
        visit(dep, deps, done, stack, order)?;
    }
    stack.pop();
    done.insert(path);
    order.push(path.to_owned());
    Ok(())
}

/// Resolve `wanted` for the module directory `dir` (`lib/modules/<release>`),
/// from its `modules.dep`, or else from the modules' `.modinfo`.
pub fn resolve_dir(dir: &Path, wanted: &[&str]) -> Result<Resolved, ModulesError> {
    let read = |name: &str| {
        let path = dir.join(name);
        match fs_err::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ModulesError::Io { path, source }),
        }
    };
    let builtin = read("modules.builtin")?.unwrap_or_default();
    let dep = match read("modules.dep")? {
        Some(d) => d,
        None => dep_from_modinfo(dir, &builtin, wanted)?,
    };
    resolve(&dep, &builtin, wanted)
}

/// `modules.dep` lines for the closure of `wanted`, read from the modules'
/// `.modinfo` sections.
fn dep_from_modinfo(dir: &Path, builtin: &str, wanted: &[&str]) -> Result<String, ModulesError> {
    let index: Vec<String> = match fs_err::read_to_string(dir.join("modules.order")) {
        Ok(order) => order
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(_) => crate::tree::walk(dir)
            .map_err(|source| ModulesError::Io {
                path: dir.to_owned(),
                source,
            })?
            .keys()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p.contains(".ko"))
            .collect(),
    };
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for p in index {
        // modules.order may name `.ko` while the file is `.ko.xz`/`.ko.zst`.
        let actual = [String::new(), ".xz".into(), ".zst".into(), ".gz".into()]
            .iter()
            .map(|sfx| format!("{p}{sfx}"))
            .find(|c| dir.join(c).is_file());
        if let Some(actual) = actual {
            by_name.insert(module_name(&actual), actual);
        }
    }
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut lines = String::new();
    let mut seen = BTreeSet::new();
    let mut queue: Vec<String> = wanted.iter().map(|w| w.replace('-', "_")).collect();
    while let Some(name) = queue.pop() {
        if !seen.insert(name.clone()) || builtin.contains(&name) {
            continue;
        }
        let Some(path) = by_name.get(&name) else {
            continue;
        };
        let elf = read_module(&dir.join(path))?;
        let deps = modinfo_depends(&elf).map_err(|why| ModulesError::Io {
            path: dir.join(path),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        })?;
        let dep_paths: Vec<&str> = deps
            .iter()
            .map(|d| by_name.get(d).map_or(d.as_str(), String::as_str))
            .collect();
        lines.push_str(&format!("{path}: {}\n", dep_paths.join(" ")));
        queue.extend(deps);
    }
    Ok(lines)
}

/// The `depends=` names of a module's ELF `.modinfo` section.
pub fn modinfo_depends(elf: &[u8]) -> Result<Vec<String>, String> {
    let modinfo = elf_section(elf, ".modinfo")?.ok_or("no .modinfo section")?;
    Ok(modinfo
        .split(|b| *b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect())
}

/// The bytes of the section `name` of a 64-bit little-endian ELF file.
fn elf_section<'a>(b: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, String> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4")))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8")))
    };
    let trunc = || "truncated ELF section headers".to_owned();
    let shoff = u64_at(0x28).ok_or_else(trunc)? as usize;
    let shentsize = usize::from(u16_at(0x3a).ok_or_else(trunc)?);
    let shnum = usize::from(u16_at(0x3c).ok_or_else(trunc)?);
    let shstrndx = usize::from(u16_at(0x3e).ok_or_else(trunc)?);
    let section = |i: usize| -> Result<(u32, &'a [u8]), String> {
        let h = shoff + i * shentsize;
        let name = u32_at(h).ok_or_else(trunc)?;
        let off = u64_at(h + 24).ok_or_else(trunc)? as usize;
        let size = u64_at(h + 32).ok_or_else(trunc)? as usize;
        let data = b.get(off..off.saturating_add(size)).ok_or_else(trunc)?;
        Ok((name, data))
    };
    let (_, strtab) = section(shstrndx)?;
    for i in 0..shnum {
        let (n, data) = section(i)?;
        let Some(rest) = strtab.get(n as usize..) else {
            continue;
        };
        let end = rest.iter().position(|c| *c == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// `path` without a compression suffix: `a.ko.xz` → `a.ko`.
pub fn plain_ko_path(path: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|s| path.strip_suffix(s))
        .unwrap_or(path)
}

/// Read a module file, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz`.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ModulesError> {
    let err = |source| ModulesError::Io {
        path: path.to_owned(),
        source,
    };
    let raw = fs_err::read(path).map_err(err)?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        liblzma::read::XzDecoder::new_multi_decoder(&raw[..])
            .read_to_end(&mut out)
            .map_err(err)?;
    } else if name.ends_with(".zst") {
        out = zstd::decode_all(&raw[..]).map_err(err)?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(err)?;
    } else {
        out = raw;
    }
    Ok(out)
}

/// Copy the resolved modules from `src_modules_dir` (`lib/modules/<release>`
/// of the kernel package) into `tree` and write `etc/mvm/modules.order`.
/// Returns the plain paths in load order.
pub fn install(
    resolved: &Resolved,
    src_modules_dir: &Path,
    release: &str,
    tree: &Path,
) -> Result<Vec<String>, ModulesError> {
    let dest_dir = tree.join("lib/modules").join(release);
    let mut order = Vec::new();
    for path in &resolved.order {
        let bytes = read_module(&src_modules_dir.join(path))?;
        let plain = plain_ko_path(path);
        let dest = dest_dir.join(plain);
        let io = |source| ModulesError::Io {
            path: dest.clone(),
            source,
        };
        fs_err::create_dir_all(dest.parent().expect("module path has a parent")).map_err(io)?;
        fs_err::write(&dest, &bytes).map_err(io)?;
        order.push(plain.to_owned());
    }
    write_order(&order, tree)?;
    Ok(order)
}

/// Write `etc/mvm/modules.order` (possibly empty) into `tree`.
pub fn write_order(order: &[String], tree: &Path) -> Result<(), ModulesError> {
    let dest = tree.join(MODULES_ORDER_PATH);
    let io = |source| ModulesError::Io {
        path: dest.clone(),
        source,
    };
    fs_err::create_dir_all(dest.parent().expect("has a parent")).map_err(io)?;
    let mut text = order.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    fs_err::write(&dest, text).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_mmio.ko:
kernel/drivers/block/virtio_blk.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/drivers/net/virtio_net.ko: kernel/net/core/failover.ko kernel/drivers/net/net_failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.zst:
";
    const BUILTIN: &str =
        "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/char/virtio_console.ko\n";

    fn pos(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|p| module_name(p) == name)
            .unwrap_or_else(|| panic!("{name} missing from {order:?}"))
    }

    #[test]
    fn resolves_closure_in_dependency_order() {
        let r = resolve(DEP, BUILTIN, GUEST_MODULES).unwrap();
        assert_eq!(r.builtin, ["virtio_pci", "virtio_console"]);
        // Every module once.
        let set: BTreeSet<_> = r.order.iter().collect();
        assert_eq!(set.len(), r.order.len());
        assert_eq!(r.order.len(), 10);
        assert!(pos(&r.order, "vsock") < pos(&r.order, "vmw_vsock_virtio_transport_common"));
        assert!(
            pos(&r.order, "vmw_vsock_virtio_transport_common")
                < pos(&r.order, "vmw_vsock_virtio_transport")
        );
        assert!(pos(&r.order, "failover") < pos(&r.order, "net_failover"));
        assert!(pos(&r.order, "net_failover") < pos(&r.order, "virtio_net"));
        // `virtio-rng` on disk is `virtio_rng` by name.
        pos(&r.order, "virtio_rng");
    }

    /// A relocatable ELF with a `.modinfo` section, as modules have.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_off = b.len();
        b.extend_from_slice(modinfo);
        let strtab_off = b.len();
        b.extend_from_slice(shstrtab);
        let shoff = b.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            b.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, modinfo_off, modinfo.len());
        sh(10, strtab_off, shstrtab.len());
        b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        b[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        b
    }

    #[test]
    fn resolves_from_modinfo_without_modules_dep() {
        let d = tempfile::tempdir().unwrap();
        let put = |p: &str, modinfo: &[u8]| {
            let f = d.path().join(p);
            fs_err::create_dir_all(f.parent().unwrap()).unwrap();
            fs_err::write(f, fake_module(modinfo)).unwrap();
        };
        put("kernel/net/vsock.ko", b"license=GPL\0depends=\0");
        put(
            "kernel/net/vmw_vsock_virtio_transport_common.ko",
            b"depends=vsock\0",
        );
        put(
            "kernel/net/vmw_vsock_virtio_transport.ko",
            b"depends=vmw_vsock_virtio_transport_common,vsock\0name=x\0",
        );
        put("kernel/drivers/virtio-rng.ko", b"depends=\0");
        fs_err::write(
            d.path().join("modules.order"),
            "kernel/net/vsock.ko\nkernel/net/vmw_vsock_virtio_transport_common.ko\nkernel/net/vmw_vsock_virtio_transport.ko\nkernel/drivers/virtio-rng.ko\n",
        )
        .unwrap();
        fs_err::write(
            d.path().join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\n",
        )
        .unwrap();
        let r = resolve_dir(
            d.path(),
            &["vmw_vsock_virtio_transport", "virtio_pci", "virtio_rng"],
        )
        .unwrap();
        assert_eq!(
            r.order,
            [
                "kernel/net/vsock.ko",
                "kernel/net/vmw_vsock_virtio_transport_common.ko",
                "kernel/net/vmw_vsock_virtio_transport.ko",
                "kernel/drivers/virtio-rng.ko"
            ]
        );
        assert_eq!(r.builtin, ["virtio_pci"]);
        assert!(matches!(
            resolve_dir(d.path(), &["absent"]),
            Err(ModulesError::NotFound { .. })
        ));
    }

    #[test]
    fn missing_module_is_named() {
        let err = resolve(DEP, BUILTIN, &["nope_mod"]).unwrap_err();
        assert!(err.to_string().contains("nope_mod"));
    }

    #[test]
    fn dangling_dependency_is_reported() {
        let err = resolve("a.ko: b.ko\n", "", &["a"]).unwrap_err();
        assert!(matches!(err, ModulesError::DanglingDep { .. }), "{err}");
    }

    #[test]
    fn cycle_does_not_recurse_forever() {
        let r = resolve("a.ko: b.ko\nb.ko: a.ko\n", "", &["a"]).unwrap();
        assert_eq!(r.order.len(), 2);
    }

    #[test]
    fn installs_decompressed_modules_and_order() {
        use std::io::Write;
        let src = tempfile::tempdir().unwrap();
        let tree = tempfile::tempdir().unwrap();
        let put = |p: &str, b: &[u8]| {
            let f = src.path().join(p);
            fs_err::create_dir_all(f.parent().unwrap()).unwrap();
            fs_err::write(f, b).unwrap();
        };
        put("kernel/a.ko", b"plain");
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(b"xz-module").unwrap();
        put("kernel/b.ko.xz", &xz.finish().unwrap());
        put(
            "kernel/c.ko.zst",
            &zstd::encode_all(&b"zst-module"[..], 1).unwrap(),
        );
        let r = resolve(
            "kernel/a.ko: kernel/b.ko.xz kernel/c.ko.zst\nkernel/b.ko.xz:\nkernel/c.ko.zst:\n",
            "",
            &["a"],
        )
        .unwrap();
        let order = install(&r, src.path(), "9.9", tree.path()).unwrap();
        assert_eq!(order, ["kernel/b.ko", "kernel/c.ko", "kernel/a.ko"]);
        let m = tree.path().join("lib/modules/9.9");
        assert_eq!(fs_err::read(m.join("kernel/b.ko")).unwrap(), b"xz-module");
        assert_eq!(fs_err::read(m.join("kernel/c.ko")).unwrap(), b"zst-module");
        assert_eq!(
            fs_err::read_to_string(tree.path().join(MODULES_ORDER_PATH)).unwrap(),
            "kernel/b.ko\nkernel/c.ko\nkernel/a.ko\n"
        );
    }
}
