//! Guest images for mvm: a kernel (bzImage for QEMU, ELF `vmlinux` for
//! Firecracker), an initramfs and an ext4 root filesystem, built from the
//! host's parts and cached by content.
//!
//! # Cache layout (under `$MVM_HOME/images`)
//!
//! ```text
//! images/<digest>/bzImage          the kernel as distributed
//! images/<digest>/vmlinux          the ELF kernel extracted from it
//! images/<digest>/initramfs.cpio   mvm's initramfs (uncompressed newc)
//! images/<digest>/rootfs.ext4      the image's tree as ext4
//! images/<digest>/tree/            that tree
//! images/<digest>/machine-<N>M.ext4  template of machine disks (see [`disk`])
//! images/<digest>/manifest.json    what it was built from (see Manifest)
//! images/tags/<name>               the digest a name points to
//! ```
//!
//! `<digest>` is a sha256 over every input (builder format version, agent,
//! kernel, busybox, module set, user tree, size), so unchanged inputs are a
//! cache hit that only hashes files. An image is built in `images/.tmp-*`
//! and renamed into place; `manifest.json` is written last, so a directory
//! without it is never used. Two builders of the same image race harmlessly:
//! the second rename fails and the loser discards its temporary directory.
//! Tags are written atomically (temp + rename).
//!
//! Other modules: [`kernel`] (bzImage → vmlinux, the Debian package),
//! [`modules`] (modules.dep closure), [`initramfs`] (cpio), [`tree`].
#![warn(missing_docs)]

pub mod agent;
mod cmd;
pub mod disk;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod tree;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mvm_core::MvmHome;
use mvm_core::backend::KernelPaths;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use agent::{AGENT_BINARY, AGENT_SHA256};
pub use cmd::{CommandError, which};
pub use disk::{DiskCopy, machine_disk};
pub use initramfs::InitramfsError;
pub use kernel::KernelError;
pub use modules::ModulesError;
pub use tree::TreeError;

/// Bump when the layout or content of built images changes.
pub const FORMAT_VERSION: u32 = 1;
/// The tag of the image [`ensure_default`] builds.
pub const DEFAULT_IMAGE: &str = "default";
/// Root filesystem size of the default image, MiB.
pub const DEFAULT_SIZE_MIB: u64 = 256;
/// The ext4 label of image and machine disks.
pub const ROOT_LABEL: &str = "mvm-root";

const MKFS_TIMEOUT: Duration = Duration::from_secs(300);

/// Building, finding or removing an image failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file operation failed (fs-err names the path).
    #[error("image store file error")]
    Io(#[from] std::io::Error),
    /// Getting the kernel failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Resolving or copying modules failed.
    #[error(transparent)]
    Modules(#[from] ModulesError),
    /// Assembling the tree failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Writing the initramfs failed.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// A host tool failed (mkfs.ext4).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// No image has this name.
    #[error("no image named {name:?} (see `mvm image ls`)")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The name cannot be a tag.
    #[error("invalid image name {name:?}: use 1-64 of [A-Za-z0-9._-], not starting with '.'")]
    BadName {
        /// The name given.
        name: String,
    },
    /// An image's manifest is unreadable.
    #[error("image manifest {path} is corrupt")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A tag could not be written.
    #[error(transparent)]
    Tag(#[from] mvm_core::atomic::AtomicWriteError),
}

/// Progress reports from long operations; the CLI shows them (indicatif),
/// the library never prints.
pub trait Progress: Sync {
    /// A new step began.
    fn step(&self, message: &str);
    /// Bytes transferred so far in the current step (total if known).
    fn bytes(&self, _done: u64, _total: Option<u64>) {}
}

/// A [`Progress`] that discards everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn step(&self, _message: &str) {}
}

/// Whether an image is mvm's own or built from a user's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// busybox + agent; runs entirely from the initramfs if no disk is used.
    Default,
    /// A user's tree on the root disk; the initramfs switches root to it
    /// (`mvm.root=/dev/vda`).
    Custom,
}

/// What an image's root filesystem is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// mvm's own tree (busybox, agent, modules).
    Default,
    /// A directory on the host.
    FromDir(PathBuf),
    /// A `.tar` or `.tar.gz` on the host.
    FromTar(PathBuf),
}

/// Which kernel to use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KernelSource {
    /// Debian's `linux-image-cloud-amd64`, downloaded with apt.
    #[default]
    Debian,
    /// A kernel file of the user's own (bzImage or ELF; config `kernel`).
    /// It gets no modules: its virtio drivers must be built in.
    Path(PathBuf),
}

/// A built image, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The tag it was asked for by.
    pub name: String,
    /// Its content digest (directory name under `images/`).
    pub digest: String,
    /// Default or custom.
    pub kind: ImageKind,
    /// bzImage and ELF vmlinux.
    pub kernel: KernelPaths,
    /// The initramfs (uncompressed newc cpio).
    pub initramfs: PathBuf,
    /// The image's ext4 root filesystem (never attach it writable: use
    /// [`create_machine_disk`]).
    pub rootfs: PathBuf,
    /// The kernel release (`uname -r` in the guest).
    pub kernel_release: String,
    /// The image directory.
    pub dir: PathBuf,
}

impl Image {
    /// The image's tree on the host.
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }
}

/// An entry of [`list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The tag.
    pub name: String,
    /// The digest it points to.
    pub digest: String,
    /// Default or custom.
    pub kind: ImageKind,
    /// Bytes the image's files take on disk.
    pub disk_bytes: u64,
    /// Root filesystem size, MiB.
    pub rootfs_mib: u64,
    /// When it was built (RFC 3339).
    pub created: String,
}

/// Sizes of an image's files, bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    /// bzImage.
    pub bzimage: u64,
    /// vmlinux.
    pub vmlinux: u64,
    /// initramfs.cpio.
    pub initramfs: u64,
    /// rootfs.ext4, apparent size.
    pub rootfs: u64,
    /// rootfs.ext4, allocated on the host.
    pub rootfs_allocated: u64,
}

/// `manifest.json`: what an image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] at build time.
    pub format: u32,
    /// The digest.
    pub digest: String,
    /// Default or custom.
    pub kind: ImageKind,
    /// The kernel release.
    pub kernel_release: String,
    /// Where the kernel came from (package name or path).
    pub kernel_source: String,
    /// sha256 of the bzImage (or ELF kernel).
    pub kernel_sha256: String,
    /// sha256 of the embedded agent.
    pub agent_sha256: String,
    /// sha256 of busybox.
    pub busybox_sha256: String,
    /// Modules in load order (paths under /lib/modules/<release>/).
    pub modules: Vec<String>,
    /// Wanted modules that are built in.
    pub builtin_modules: Vec<String>,
    /// Root filesystem size, MiB.
    pub rootfs_mib: u64,
    /// File sizes.
    pub sizes: Sizes,
    /// Build time, RFC 3339.
    pub created: String,
}

/// The files of image directory `dir`.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }
    fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio")
    }
    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs.ext4")
    }
    fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }
    fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
}

fn tags_dir(home: &MvmHome) -> PathBuf {
    home.images_dir().join("tags")
}

fn check_name(name: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadName {
            name: name.to_owned(),
        })
    }
}

/// The default image: return it if its inputs are unchanged, else build it.
pub fn ensure_default(home: &MvmHome, progress: &dyn Progress) -> Result<Image, ImageError> {
    build(
        home,
        DEFAULT_IMAGE,
        ImageSource::Default,
        DEFAULT_SIZE_MIB,
        progress,
    )
}

/// Build (or find in the cache) the image `name` from `source` with a root
/// filesystem of `size_mib`, using Debian's cloud kernel.
pub fn build(
    home: &MvmHome,
    name: &str,
    source: ImageSource,
    size_mib: u64,
    progress: &dyn Progress,
) -> Result<Image, ImageError> {
    build_with_kernel(
        home,
        name,
        source,
        size_mib,
        &KernelSource::Debian,
        progress,
    )
}

/// A kernel ready for an image build.
struct KernelInput {
    bzimage: PathBuf,
    sha256: String,
    release: String,
    source: String,
    /// `lib/modules/<release>` of the package, if any.
    modules_dir: Option<PathBuf>,
}

fn kernel_input(
    home: &MvmHome,
    kernel: &KernelSource,
    progress: &dyn Progress,
) -> Result<KernelInput, ImageError> {
    match kernel {
        KernelSource::Debian => {
            let k =
                kernel::ensure_debian_kernel(&home.cache_dir().join("kernel"), false, progress)?;
            Ok(KernelInput {
                sha256: if k.sha256.len() == 64 {
                    k.sha256.clone()
                } else {
                    tree::file_sha256(&k.bzimage)?
                },
                modules_dir: Some(k.modules_dir()),
                bzimage: k.bzimage,
                release: k.release,
                source: k.package,
            })
        }
        KernelSource::Path(p) => {
            let mut head = vec![0u8; 0x210];
            let n = std::io::Read::read(&mut fs_err::File::open(p)?, &mut head)?;
            if kernel::detect_format(&head[..n]).is_none() {
                return Err(KernelError::NotAKernel { path: p.clone() }.into());
            }
            Ok(KernelInput {
                sha256: tree::file_sha256(p)?,
                modules_dir: None,
                bzimage: p.clone(),
                release: String::new(),
                source: p.display().to_string(),
            })
        }
    }
}

/// Ask apt for the current Debian cloud kernel and download it if it is
/// new; later builds use it (image builds themselves never ask apt when a
/// kernel is already unpacked). Returns the package name.
pub fn update_kernel(home: &MvmHome, progress: &dyn Progress) -> Result<String, ImageError> {
    Ok(kernel::ensure_debian_kernel(&home.cache_dir().join("kernel"), true, progress)?.package)
}

/// What the user's tree contributes to the digest.
fn source_digest(source: &ImageSource) -> Result<String, ImageError> {
    Ok(match source {
        ImageSource::Default => "default".to_owned(),
        ImageSource::FromDir(d) => {
            if !d.is_dir() {
                return Err(TreeError::BadSource {
                    path: d.clone(),
                    expected: "directory",
                }
                .into());
            }
            format!("dir:{}", tree::dir_digest(d)?)
        }
        ImageSource::FromTar(t) => {
            if !t.is_file() {
                return Err(TreeError::BadSource {
                    path: t.clone(),
                    expected: "tar file",
                }
                .into());
            }
            format!("tar:{}", tree::file_sha256(t)?)
        }
    })
}

/// [`build`] with an explicit kernel choice.
pub fn build_with_kernel(
    home: &MvmHome,
    name: &str,
    source: ImageSource,
    size_mib: u64,
    kernel: &KernelSource,
    progress: &dyn Progress,
) -> Result<Image, ImageError> {
    check_name(name)?;
    let images = home.images_dir();
    fs_err::create_dir_all(tags_dir(home))?;
    let k = kernel_input(home, kernel, progress)?;
    let busybox = tree::host_busybox()?;
    let resolved = match &k.modules_dir {
        Some(dir) => modules::resolve_dir(dir, modules::GUEST_MODULES)?,
        None => modules::Resolved::default(),
    };
    let kind = match source {
        ImageSource::Default => ImageKind::Default,
        _ => ImageKind::Custom,
    };
    let user = source_digest(&source)?;
    let digest = {
        let mut h = Sha256::new();
        for line in [
            format!("format {FORMAT_VERSION}"),
            format!("agent {}", AGENT_SHA256.trim()),
            format!("kernel {}", k.sha256),
            format!("busybox {}", busybox.sha256),
            format!("modules {}", resolved.order.join(" ")),
            format!("tree {user}"),
            format!("size {size_mib}"),
        ] {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    };
    let final_dir = images.join(&digest);
    if !final_dir.join("manifest.json").is_file() {
        sweep_stale_temps(&images);
        progress.step(&format!("building image {name} ({})", &digest[..12]));
        build_into(
            home, &final_dir, &digest, kind, &source, size_mib, &k, &busybox, &resolved, progress,
        )?;
    }
    mvm_core::atomic::write_atomic(
        &tags_dir(home).join(name),
        format!("{digest}\n").as_bytes(),
        0o644,
    )?;
    open(name, &final_dir)
}

#[allow(clippy::too_many_arguments)]
fn build_into(
    home: &MvmHome,
    final_dir: &Path,
    digest: &str,
    kind: ImageKind,
    source: &ImageSource,
    size_mib: u64,
    k: &KernelInput,
    busybox: &tree::Busybox,
    resolved: &modules::Resolved,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let images = home.images_dir();
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(&images)?;
    let l = Layout {
        dir: tmp.path().to_owned(),
    };

    // Kernel: the bzImage as given, and the vmlinux cached by its sha256.
    link_or_copy(&k.bzimage, &l.bzimage())?;
    let bz = fs_err::read(&k.bzimage)?;
    if kernel::detect_format(&bz) == Some(kernel::KernelFormat::Elf) {
        link_or_copy(&k.bzimage, &l.vmlinux())?;
    } else {
        progress.step("extracting vmlinux from the bzImage");
        let cached =
            kernel::cached_vmlinux(&bz, &k.sha256, &home.cache_dir().join("kernel/vmlinux"))?;
        link_or_copy(&cached, &l.vmlinux())?;
    }
    drop(bz);

    // mvm's base tree: the initramfs, and for the default image the rootfs too.
    progress.step("assembling the initramfs");
    let base = if kind == ImageKind::Default {
        l.tree()
    } else {
        l.dir.join("base")
    };
    tree::build_base(&base, AGENT_BINARY, busybox)?;
    let order = match &k.modules_dir {
        Some(dir) => modules::install(resolved, dir, &k.release, &base)?,
        None => {
            modules::write_order(&[], &base)?;
            Vec::new()
        }
    };
    fs_err::write(
        base.join("etc/mvm/kernel-release"),
        format!("{}\n", k.release),
    )?;
    let initramfs_size = initramfs::write_cpio(&base, &l.initramfs())?;

    if kind == ImageKind::Custom {
        progress.step("assembling the root filesystem tree");
        let t = l.tree();
        fs_err::create_dir_all(&t)?;
        match source {
            ImageSource::FromDir(d) => tree::copy_dir(d, &t)?,
            ImageSource::FromTar(f) => tree::unpack_tar(f, &t)?,
            ImageSource::Default => {}
        }
        tree::confine(&t)?;
        tree::add_agent_and_mountpoints(&t, AGENT_BINARY, false)?;
        if let Some(dir) = &k.modules_dir {
            modules::install(resolved, dir, &k.release, &t)?;
        } else {
            modules::write_order(&[], &t)?;
        }
        fs_err::write(t.join("etc/mvm/kernel-release"), format!("{}\n", k.release))?;
        fs_err::remove_dir_all(&base)?;
    }

    progress.step(&format!("creating the {size_mib} MiB ext4 root filesystem"));
    mkfs_ext4(&l.tree(), &l.rootfs(), size_mib)?;

    let meta = |p: PathBuf| fs_err::metadata(p);
    let rootfs_meta = meta(l.rootfs())?;
    let manifest = Manifest {
        format: FORMAT_VERSION,
        digest: digest.to_owned(),
        kind,
        kernel_release: k.release.clone(),
        kernel_source: k.source.clone(),
        kernel_sha256: k.sha256.clone(),
        agent_sha256: AGENT_SHA256.trim().to_owned(),
        busybox_sha256: busybox.sha256.clone(),
        modules: order,
        builtin_modules: resolved.builtin.clone(),
        rootfs_mib: size_mib,
        sizes: Sizes {
            bzimage: meta(l.bzimage())?.len(),
            vmlinux: meta(l.vmlinux())?.len(),
            initramfs: initramfs_size,
            rootfs: rootfs_meta.len(),
            rootfs_allocated: std::os::unix::fs::MetadataExt::blocks(&rootfs_meta) * 512,
        },
        created: now_rfc3339(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
        path: l.manifest(),
        source,
    })?;
    mvm_core::atomic::write_atomic(&l.manifest(), &json, 0o644)?;
    match fs_err::rename(tmp.path(), final_dir) {
        Ok(()) => {
            // The directory now lives at `final_dir`; nothing left to clean.
            let _ = tmp.keep();
            Ok(())
        }
        // Another builder finished the same image first; `tmp` is removed on drop.
        Err(_) if final_dir.join("manifest.json").is_file() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Remove `images/.tmp-*` directories left by builders that died (older
/// than an hour, so a live concurrent build is never touched).
fn sweep_stale_temps(images: &Path) {
    let Ok(entries) = fs_err::read_dir(images) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if stale && e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = fs_err::remove_dir_all(e.path());
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Hard-link `src` to `dst` (both under `$MVM_HOME`, usually one
/// filesystem), else copy.
fn link_or_copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    if fs_err::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    fs_err::copy(src, dst).map(|_| ())
}

/// `mkfs.ext4 -q -F -L mvm-root -E root_owner=0:0 -d <tree> <file> <size>M`:
/// an ext4 image of `tree`, built without mounting anything.
fn mkfs_ext4(tree: &Path, file: &Path, size_mib: u64) -> Result<(), ImageError> {
    let mkfs = cmd::require("mkfs.ext4", "e2fsprogs")?;
    let size = format!("{size_mib}M");
    cmd::run(
        &mkfs,
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-L".as_ref(),
            ROOT_LABEL.as_ref(),
            "-E".as_ref(),
            "root_owner=0:0".as_ref(),
            "-d".as_ref(),
            tree.as_os_str(),
            file.as_os_str(),
            size.as_ref(),
        ],
        None,
        MKFS_TIMEOUT,
    )?;
    Ok(())
}

fn read_manifest(dir: &Path) -> Result<Manifest, ImageError> {
    let path = Layout {
        dir: dir.to_owned(),
    }
    .manifest();
    let bytes = fs_err::read(&path)?;
    serde_json::from_slice(&bytes).map_err(|source| ImageError::Manifest { path, source })
}

fn open(name: &str, dir: &Path) -> Result<Image, ImageError> {
    let m = read_manifest(dir)?;
    let l = Layout {
        dir: dir.to_owned(),
    };
    Ok(Image {
        name: name.to_owned(),
        digest: m.digest,
        kind: m.kind,
        kernel: KernelPaths {
            bzimage: l.bzimage(),
            vmlinux: l.vmlinux(),
        },
        initramfs: l.initramfs(),
        rootfs: l.rootfs(),
        kernel_release: m.kernel_release,
        dir: dir.to_owned(),
    })
}

fn read_tag(home: &MvmHome, name: &str) -> Result<String, ImageError> {
    check_name(name)?;
    match fs_err::read_to_string(tags_dir(home).join(name)) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ImageError::NotFound {
            name: name.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The image tagged `name`.
pub fn get(home: &MvmHome, name: &str) -> Result<Image, ImageError> {
    let digest = read_tag(home, name)?;
    let dir = home.images_dir().join(&digest);
    if !dir.join("manifest.json").is_file() {
        return Err(ImageError::NotFound {
            name: name.to_owned(),
        });
    }
    open(name, &dir)
}

/// Every tagged image, sorted by name.
pub fn list(home: &MvmHome) -> Result<Vec<ImageInfo>, ImageError> {
    let dir = tags_dir(home);
    let entries = match fs_err::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if check_name(&name).is_err() {
            continue; // temporary files of atomic writes
        }
        let digest = read_tag(home, &name)?;
        let idir = home.images_dir().join(&digest);
        let Ok(m) = read_manifest(&idir) else {
            continue;
        };
        out.push(ImageInfo {
            name,
            digest,
            kind: m.kind,
            disk_bytes: disk_usage(&idir)?,
            rootfs_mib: m.rootfs_mib,
            created: m.created,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn disk_usage(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::BTreeSet::new();
    Ok(tree::walk(dir)?
        .values()
        .filter(|m| seen.insert((m.dev(), m.ino())))
        .map(|m| m.blocks() * 512)
        .sum())
}

/// Remove the tag `name`; the image's files go too when no other tag
/// points to them. Machines already created keep their own disks.
pub fn remove(home: &MvmHome, name: &str) -> Result<(), ImageError> {
    let digest = read_tag(home, name)?;
    fs_err::remove_file(tags_dir(home).join(name))?;
    let still_used = fs_err::read_dir(tags_dir(home))?
        .filter_map(Result::ok)
        .filter(|e| check_name(&e.file_name().to_string_lossy()).is_ok())
        .any(|e| fs_err::read_to_string(e.path()).is_ok_and(|d| d.trim() == digest));
    if !still_used {
        let dir = home.images_dir().join(&digest);
        if dir.exists() {
            // Rename first so a half-deleted directory is never taken for an image.
            let doomed = home.images_dir().join(format!(".tmp-rm-{digest}"));
            if doomed.exists() {
                fs_err::remove_dir_all(&doomed)?; // left by an interrupted remove
            }
            fs_err::rename(&dir, &doomed)?;
            fs_err::remove_dir_all(&doomed)?;
        }
    }
    Ok(())
}

/// Create a fresh writable ext4 disk of `size_mib` at `dest` holding the
/// image's tree (label `mvm-root`, new UUID). `dest` is replaced.
pub fn create_machine_disk(image: &Image, dest: &Path, size_mib: u64) -> Result<(), ImageError> {
    mkfs_ext4(&image.tree(), dest, size_mib)
}

/// One host tool mvm-image needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCheck {
    /// The tool.
    pub tool: String,
    /// Present and usable.
    pub ok: bool,
    /// What was found or what is wrong.
    pub detail: String,
    /// The command that fixes it.
    pub fix: String,
}

/// Check the host tools image builds use (for `mvm doctor` / `mvm setup`).
pub fn host_tools() -> Vec<ToolCheck> {
    let mut out = Vec::new();
    // Reading the ELF headers is enough (and cheap: this runs on every
    // `mvm run`); the applets are listed when an image is built.
    let bb = match tree::host_busybox() {
        Ok(_) => (true, format!("{} (static)", tree::HOST_BUSYBOX)),
        Err(e) => (false, e.to_string()),
    };
    out.push(ToolCheck {
        tool: "busybox".into(),
        ok: bb.0,
        detail: bb.1,
        fix: "apt-get install -y busybox-static".into(),
    });
    for (tool, package) in [
        ("mkfs.ext4", "e2fsprogs"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
        ("apt-cache", "apt"),
    ] {
        let found = cmd::which(tool);
        out.push(ToolCheck {
            tool: tool.into(),
            ok: found.is_some(),
            detail: found.map_or_else(|| "not found".into(), |p| p.display().to_string()),
            fix: format!("apt-get install -y {package}"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["default", "my-img_1.2"] {
            check_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn agent_is_embedded_with_its_digest() {
        assert!(AGENT_BINARY.starts_with(b"\x7fELF"));
        assert_eq!(
            AGENT_SHA256.trim(),
            hex::encode(Sha256::digest(AGENT_BINARY))
        );
        tree::check_static_elf(AGENT_BINARY).unwrap();
    }

    #[test]
    fn missing_image_is_named() {
        let d = tempfile::tempdir().unwrap();
        let home = MvmHome::new(d.path());
        let err = get(&home, "nope").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(list(&home).unwrap().is_empty());
    }

    #[test]
    fn host_tools_lists_fixes() {
        let t = host_tools();
        assert!(
            t.iter()
                .any(|c| c.tool == "mkfs.ext4" && c.fix.contains("e2fsprogs"))
        );
        assert!(
            t.iter()
                .any(|c| c.tool == "busybox" && c.fix.contains("busybox-static"))
        );
    }
}
