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
//! images/refs/<sha256>              an OCI reference and the digest it names ([`oci`])
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
//! Images made from OCI container images ([`ImageKind::Oci`]) get their tree
//! from a [`TreeSource`] (mvm-oci's layer unpacker) and keep the image's
//! configuration in `manifest.json` ([`oci::OciInfo`]); references name them
//! (`images/refs/`). Their tree is the image's files only: mvm's agent,
//! modules and busybox stay in the initramfs, which switches root to the
//! machine's disk. An OCI image's `tree/` is mode 0700: it holds the
//! image's setuid files with their owners, which no other host user may
//! execute.
//!
//! Other modules: [`kernel`] (bzImage → vmlinux, the Debian package),
//! [`modules`] (modules.dep closure), [`initramfs`] (cpio), [`tree`],
//! [`oci`].
#![warn(missing_docs)]

pub mod agent;
mod cmd;
pub mod disk;
pub mod initramfs;
pub mod kernel;
mod memo;
pub mod modules;
pub mod oci;
pub mod tree;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mvm_core::MvmHome;
use mvm_core::backend::KernelPaths;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use agent::{AGENT_BINARY, AGENT_SHA256};
pub use cmd::{CommandError, which};
pub use disk::{DiskCopy, clone_file, machine_disk};
pub use initramfs::InitramfsError;
pub use kernel::KernelError;
pub use modules::ModulesError;
pub use oci::{ImageConfig, LayerInfo, OciInfo, RefRecord, SourceKind};
pub use tree::TreeError;

/// Bump when the layout or content of built images changes (2: `/init` is
/// a hard link of `/sbin/mvm-agent`).
pub const FORMAT_VERSION: u32 = 2;
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
    /// A [`TreeSource`] could not produce the root filesystem tree.
    #[error("cannot produce the root filesystem of {what}")]
    Source {
        /// What was being converted (a reference or a file).
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
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
    /// An OCI container image's tree on the root disk (nothing of mvm's
    /// in it); booted like [`ImageKind::Custom`].
    Oci,
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

impl Manifest {
    /// The manifest of an image with no recorded inputs: a tree of
    /// `rootfs_mib` MiB and nothing else (for tests that make images by
    /// hand).
    pub fn bare(digest: &str, kind: ImageKind, rootfs_mib: u64) -> Self {
        Manifest {
            format: FORMAT_VERSION,
            digest: digest.to_owned(),
            kind,
            kernel_release: "0".into(),
            kernel_source: "none".into(),
            kernel_sha256: String::new(),
            agent_sha256: String::new(),
            busybox_sha256: String::new(),
            modules: Vec::new(),
            builtin_modules: Vec::new(),
            rootfs_mib,
            sizes: Default::default(),
            created: String::new(),
            inodes: None,
            oci: None,
        }
    }
}

impl Image {
    /// The image's tree on the host.
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    /// The image's `manifest.json`.
    pub fn manifest(&self) -> Result<Manifest, ImageError> {
        read_manifest(&self.dir)
    }

    /// The OCI configuration and blobs, for an image made from an OCI image.
    pub fn oci(&self) -> Result<Option<OciInfo>, ImageError> {
        Ok(self.manifest()?.oci)
    }
}

/// A root filesystem tree produced outside this crate (mvm-oci applies an
/// OCI image's layers with it).
pub trait TreeSource {
    /// What the tree is made of, as part of the image digest (unchanged
    /// content must give an unchanged key).
    fn key(&self) -> String;
    /// A name for messages (a reference or a file).
    fn describe(&self) -> String;
    /// Fill the empty directory `tree`.
    fn fill(
        &self,
        tree: &Path,
        progress: &dyn Progress,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>>;
    /// The OCI metadata stored with the image, given the unpacked tree's
    /// size in bytes and entries.
    fn oci_info(&self, unpacked_bytes: u64, unpacked_entries: u64) -> Option<OciInfo>;
}

/// What an image is built from, inside this crate.
enum Src<'a> {
    User(&'a ImageSource),
    Tree(&'a dyn TreeSource),
}

/// An entry of [`list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The tag, or the OCI reference.
    pub name: String,
    /// The image digest it points to.
    pub digest: String,
    /// `built` (`mvm image build`), `registry`, `docker-archive` or
    /// `oci-layout`.
    pub source: String,
    /// For OCI images: the manifest digest the reference resolved to.
    pub manifest_digest: Option<String>,
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
    /// Inodes the root filesystem was made with, when more than mkfs's
    /// default (trees of many small files); machine disks get as many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    /// For images made from an OCI image: its configuration and blobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciInfo>,
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
    fs_err::create_dir_all(tags_dir(home))?;
    let user = source_digest(&source)?;
    let digest = ensure_built(
        home,
        name,
        &Src::User(&source),
        &user,
        &size_mib.to_string(),
        size_mib,
        kernel,
        progress,
    )?;
    let tag = tags_dir(home).join(name);
    let line = format!("{digest}\n");
    // Rewritten (and synced) only when it changes: most runs find it so.
    if fs_err::read_to_string(&tag).ok().as_deref() != Some(line.as_str()) {
        mvm_core::atomic::write_atomic(&tag, line.as_bytes(), 0o644)?;
    }
    open(name, &home.images_dir().join(&digest))
}

/// Build (or find in the cache) an image whose tree comes from `source`
/// (an OCI image), with a root filesystem sized to fit it. No tag is
/// written: name it with [`oci::write_ref`]. The returned image's `name` is
/// `source.describe()`.
pub fn build_tree_image(
    home: &MvmHome,
    source: &dyn TreeSource,
    kernel: &KernelSource,
    progress: &dyn Progress,
) -> Result<Image, ImageError> {
    let name = source.describe();
    let digest = ensure_built(
        home,
        &name,
        &Src::Tree(source),
        &source.key(),
        "auto",
        0,
        kernel,
        progress,
    )?;
    open(&name, &home.images_dir().join(&digest))
}

/// The image `name|ref` by digest, without a tag (for callers that keep
/// their own names, e.g. after [`build_tree_image`]).
pub fn open_digest(home: &MvmHome, name: &str, digest: &str) -> Result<Image, ImageError> {
    let dir = home.images_dir().join(digest);
    if !dir.join("manifest.json").is_file() {
        return Err(ImageError::NotFound {
            name: name.to_owned(),
        });
    }
    open(name, &dir)
}

/// Build the image unless its digest is cached; returns the digest.
#[allow(clippy::too_many_arguments)]
fn ensure_built(
    home: &MvmHome,
    name: &str,
    source: &Src<'_>,
    tree_key: &str,
    size_key: &str,
    size_mib: u64,
    kernel: &KernelSource,
    progress: &dyn Progress,
) -> Result<String, ImageError> {
    let images = home.images_dir();
    fs_err::create_dir_all(&images)?;
    let k = kernel_input(home, kernel, progress)?;
    // The digest's inputs, remembered while their files are unchanged
    // (`memo`): busybox is read and hashed only when an image is built.
    let cache = home.cache_dir();
    let busybox_sha = memo::remember(
        &cache,
        "busybox-sha256",
        &[Path::new(tree::HOST_BUSYBOX)],
        || tree::host_busybox().map(|b| b.sha256),
    )?;
    let resolved = match &k.modules_dir {
        Some(dir) => {
            let files = ["modules.dep", "modules.builtin", "modules.order"].map(|f| dir.join(f));
            let key = format!(
                "modules-{}",
                &hex::encode(Sha256::digest(dir.as_os_str().as_encoded_bytes()))[..16]
            );
            memo::remember(
                &cache,
                &key,
                &files.each_ref().map(PathBuf::as_path),
                || modules::resolve_dir(dir, modules::GUEST_MODULES),
            )?
        }
        None => modules::Resolved::default(),
    };
    let kind = match source {
        Src::User(ImageSource::Default) => ImageKind::Default,
        Src::User(_) => ImageKind::Custom,
        Src::Tree(_) => ImageKind::Oci,
    };
    let digest = {
        let mut h = Sha256::new();
        for line in [
            format!("format {FORMAT_VERSION}"),
            format!("agent {}", AGENT_SHA256.trim()),
            format!("kernel {}", k.sha256),
            format!("busybox {busybox_sha}"),
            format!("modules {}", resolved.order.join(" ")),
            format!("tree {tree_key}"),
            format!("size {size_key}"),
        ] {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    };
    let final_dir = images.join(&digest);
    if !final_dir.join("manifest.json").is_file() {
        let busybox = tree::host_busybox()?;
        if busybox.sha256 != busybox_sha {
            return Err(ImageError::Io(std::io::Error::other(format!(
                "{} changed while the image was being built; try again",
                tree::HOST_BUSYBOX
            ))));
        }
        remove_stale_temps(home);
        progress.step(&format!("building image {name} ({})", &digest[..12]));
        build_into(
            home, &final_dir, &digest, kind, source, size_mib, &k, &busybox, &resolved, progress,
        )?;
    }
    Ok(digest)
}

#[allow(clippy::too_many_arguments)]
fn build_into(
    home: &MvmHome,
    final_dir: &Path,
    digest: &str,
    kind: ImageKind,
    source: &Src<'_>,
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

    let mut size_mib = size_mib;
    let mut inodes = None;
    let mut oci = None;
    if let Src::Tree(src) = source {
        let t = l.tree();
        fs_err::create_dir_all(&t)?;
        // The tree holds the image's setuid-root files with their owners:
        // nobody else on the host may reach them. (mkfs gives the ext4's
        // root its own mode, 0755.)
        fs_err::set_permissions(&t, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        src.fill(&t, progress)
            .map_err(|source| ImageError::Source {
                what: src.describe(),
                source,
            })?;
        fs_err::remove_dir_all(&base)?;
        let usage = tree::usage(&t)?;
        (size_mib, inodes) = usage.ext4_size();
        oci = src.oci_info(usage.bytes, usage.entries);
    }
    if kind == ImageKind::Custom {
        progress.step("assembling the root filesystem tree");
        let t = l.tree();
        fs_err::create_dir_all(&t)?;
        match source {
            Src::User(ImageSource::FromDir(d)) => tree::copy_dir(d, &t)?,
            Src::User(ImageSource::FromTar(f)) => tree::unpack_tar(f, &t)?,
            _ => {}
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
    mkfs_ext4(&l.tree(), &l.rootfs(), size_mib, inodes)?;

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
        inodes,
        oci,
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

/// How old an `images/.tmp-*` directory must be before it is taken for
/// the leftover of a builder that died (a live build never takes this long).
pub const STALE_BUILD_AGE: Duration = Duration::from_secs(3600);

/// `images/.tmp-*` directories left by builders (or removals) that died:
/// older than [`STALE_BUILD_AGE`], so a live concurrent build is never
/// listed.
pub fn stale_temps(home: &MvmHome) -> Vec<PathBuf> {
    let Ok(entries) = fs_err::read_dir(home.images_dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_BUILD_AGE)
        })
        .map(|e| e.path())
        .collect()
}

/// Remove the [`stale_temps`]; how many went.
pub fn remove_stale_temps(home: &MvmHome) -> usize {
    stale_temps(home)
        .into_iter()
        .filter(|p| fs_err::remove_dir_all(p).is_ok())
        .count()
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

/// `mkfs.ext4 -q -F -L mvm-root -E root_owner=0:0 [-N inodes] -d <tree>
/// <file> <size>M`: an ext4 image of `tree`, built without mounting
/// anything. mkfs copies owners, modes, times, xattrs and hard links.
fn mkfs_ext4(
    tree: &Path,
    file: &Path,
    size_mib: u64,
    inodes: Option<u64>,
) -> Result<(), ImageError> {
    let mkfs = mvm_core::tools::MKFS_EXT4.require()?;
    let size = format!("{size_mib}M");
    let inodes = inodes.map(|n| n.to_string());
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "-q".as_ref(),
        "-F".as_ref(),
        "-L".as_ref(),
        ROOT_LABEL.as_ref(),
        "-E".as_ref(),
        "root_owner=0:0".as_ref(),
    ];
    if let Some(n) = &inodes {
        args.extend::<[&std::ffi::OsStr; 2]>(["-N".as_ref(), n.as_ref()]);
    }
    args.extend::<[&std::ffi::OsStr; 4]>([
        "-d".as_ref(),
        tree.as_os_str(),
        file.as_os_str(),
        size.as_ref(),
    ]);
    cmd::run(&mkfs, &args, None, MKFS_TIMEOUT)?;
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

/// The image tagged `name`, or named by the OCI reference `name` (exact,
/// normalised string: see mvm-oci).
pub fn get(home: &MvmHome, name: &str) -> Result<Image, ImageError> {
    let digest = if check_name(name).is_ok() {
        read_tag(home, name)?
    } else {
        match oci::read_ref(home, name)? {
            Some(r) => r.image_digest,
            None => {
                return Err(ImageError::NotFound {
                    name: name.to_owned(),
                });
            }
        }
    };
    open_digest(home, name, &digest)
}

/// Every tagged image and every OCI reference, sorted by name.
pub fn list(home: &MvmHome) -> Result<Vec<ImageInfo>, ImageError> {
    let mut named: Vec<(String, String, Option<RefRecord>)> = Vec::new();
    match fs_err::read_dir(tags_dir(home)) {
        Ok(entries) => {
            for e in entries {
                let name = e?.file_name().to_string_lossy().into_owned();
                if check_name(&name).is_err() {
                    continue; // temporary files of atomic writes
                }
                let digest = read_tag(home, &name)?;
                named.push((name, digest, None));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    for r in oci::list_refs(home)? {
        named.push((r.reference.clone(), r.image_digest.clone(), Some(r)));
    }
    let mut out = Vec::new();
    for (name, digest, r) in named {
        let idir = home.images_dir().join(&digest);
        let Ok(m) = read_manifest(&idir) else {
            continue;
        };
        out.push(ImageInfo {
            name,
            source: r.as_ref().map_or("built", |r| r.source.as_str()).to_owned(),
            manifest_digest: r.as_ref().map(|r| r.manifest_digest.clone()),
            digest,
            kind: m.kind,
            disk_bytes: disk_usage(&idir)?,
            rootfs_mib: m.rootfs_mib,
            created: r.map_or(m.created, |r| r.created),
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

/// Whether any tag or reference names the image `digest`.
fn digest_in_use(home: &MvmHome, digest: &str) -> Result<bool, ImageError> {
    let tagged = match fs_err::read_dir(tags_dir(home)) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| check_name(&e.file_name().to_string_lossy()).is_ok())
            .any(|e| fs_err::read_to_string(e.path()).is_ok_and(|d| d.trim() == digest)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    Ok(tagged
        || oci::list_refs(home)?
            .iter()
            .any(|r| r.image_digest == digest))
}

/// Remove the tag or OCI reference `name`; the image's files go too when
/// nothing else names them (returns whether they did). Machines already
/// created keep their own disks. Blobs are collected separately (mvm-oci).
pub fn remove(home: &MvmHome, name: &str) -> Result<bool, ImageError> {
    let digest = if check_name(name).is_ok() {
        let digest = read_tag(home, name)?;
        fs_err::remove_file(tags_dir(home).join(name))?;
        digest
    } else {
        match oci::remove_ref(home, name)? {
            Some(r) => r.image_digest,
            None => {
                return Err(ImageError::NotFound {
                    name: name.to_owned(),
                });
            }
        }
    };
    if digest_in_use(home, &digest)? {
        return Ok(false);
    }
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
    Ok(true)
}

/// Every OCI blob (`sha256:...`) an image in the store was made from; the
/// blob cache keeps these and may drop the rest.
pub fn referenced_blobs(home: &MvmHome) -> Result<std::collections::BTreeSet<String>, ImageError> {
    let mut out = std::collections::BTreeSet::new();
    let entries = match fs_err::read_dir(home.images_dir()) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        match read_manifest(&e.path()) {
            Ok(m) => {
                if let Some(o) = m.oci {
                    out.extend(o.blobs().map(str::to_owned));
                }
            }
            // Being built or removed: not an image.
            Err(ImageError::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(out)
}

/// Create a fresh writable ext4 disk of `size_mib` at `dest` holding the
/// image's tree (label `mvm-root`, new UUID). `dest` is replaced. The disk
/// is never smaller than the image's own root filesystem, nor has fewer
/// inodes (see [`Image::min_disk_mib`]).
pub fn create_machine_disk(image: &Image, dest: &Path, size_mib: u64) -> Result<(), ImageError> {
    let m = image.manifest()?;
    mkfs_ext4(&image.tree(), dest, size_mib.max(m.rootfs_mib), m.inodes)
}

impl Image {
    /// The smallest machine disk that holds this image's tree, MiB.
    pub fn min_disk_mib(&self) -> Result<u64, ImageError> {
        Ok(self.manifest()?.rootfs_mib)
    }
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
    // `mvm run`; no hash); the applets are listed when an image is built.
    let bb = match tree::check_host_busybox() {
        Ok(_) => (true, format!("{} (static)", tree::HOST_BUSYBOX)),
        Err(e) => (false, e.to_string()),
    };
    out.push(ToolCheck {
        tool: "busybox".into(),
        ok: bb.0,
        detail: bb.1,
        fix: "apt-get install -y busybox-static".into(),
    });
    use mvm_core::tools::{APT_CACHE, APT_GET, DPKG_DEB, MKFS_EXT4};
    for t in [MKFS_EXT4, DPKG_DEB, APT_GET, APT_CACHE] {
        let found = t.find();
        out.push(ToolCheck {
            tool: t.program.into(),
            ok: found.is_some(),
            detail: found.map_or_else(|| "not found".into(), |p| p.display().to_string()),
            fix: format!("apt-get install -y {}", t.package),
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
