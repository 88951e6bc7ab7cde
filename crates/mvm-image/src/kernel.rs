//! The guest kernel: where it comes from and how the ELF `vmlinux` is pulled
//! out of a bzImage.
//!
//! # bzImage layout (Documentation/arch/x86/boot.rst)
//!
//! ```text
//! 0x000  boot sector (512 bytes) ... setup_sects at 0x1f1 (u8; 0 means 4)
//! 0x202  "HdrS" magic
//! 0x248  payload_offset (u32 LE), relative to the protected-mode code
//! 0x24c  payload_length (u32 LE)
//! (setup_sects + 1) * 512   start of the protected-mode code
//! ```
//!
//! The payload is the compressed `vmlinux` (an ELF file) followed by 4 bytes
//! with its uncompressed size. The codec is recognised by its magic: gzip,
//! xz, zstd, LZ4 legacy frame (what Debian uses), legacy lzma; bzip2 and lzo
//! are recognised but not supported.
//!
//! # Debian's cloud kernel
//!
//! `linux-image-cloud-amd64` is a metapackage; `apt-cache depends` names the
//! real `linux-image-<ver>-cloud-amd64`, which `apt-get download` fetches into
//! `$MVM_HOME/cache/kernel/` and `dpkg-deb -x` unpacks there (nothing is
//! installed on the host). It holds `boot/vmlinuz-<release>` and
//! `lib/modules/<release>/`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::{self, CommandError};

/// The Debian metapackage that tracks the current cloud kernel.
pub const DEBIAN_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Getting or unpacking a kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A file could not be read or written.
    #[error("kernel file error")]
    Io(#[from] std::io::Error),
    /// The file is neither a bzImage nor an ELF kernel.
    #[error("{path} is not a kernel: no bzImage header (\"HdrS\" at 0x202) and no ELF magic")]
    NotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// The bzImage header points outside the file.
    #[error("bzImage header is inconsistent: {what}")]
    BadHeader {
        /// What is wrong.
        what: String,
    },
    /// The payload's compression is not recognised.
    #[error("unrecognised bzImage payload compression, magic {magic}")]
    UnknownCompression {
        /// The first bytes of the payload in hex.
        magic: String,
    },
    /// The payload's compression is recognised but not supported.
    #[error("bzImage payload is {codec}-compressed, which mvm does not decompress")]
    UnsupportedCompression {
        /// The codec's name.
        codec: &'static str,
    },
    /// Decompression failed.
    #[error("cannot decompress the {codec} bzImage payload")]
    Decompress {
        /// The codec's name.
        codec: &'static str,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The decompressed payload is not an ELF file.
    #[error("the decompressed {codec} payload is not an ELF file (starts with {magic})")]
    NotElf {
        /// The codec's name.
        codec: &'static str,
        /// The first bytes in hex.
        magic: String,
    },
    /// A host tool failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// apt does not know the kernel package.
    #[error(
        "apt cannot resolve {package} (run `apt-get update`, or set `kernel = \"/path/to/bzImage\"` in config.toml)"
    )]
    NoPackage {
        /// The package asked for.
        package: String,
    },
    /// The unpacked package lacks an expected file.
    #[error("the unpacked kernel package {dir} has no {what}")]
    BadPackage {
        /// The unpack directory.
        dir: PathBuf,
        /// What is missing.
        what: &'static str,
    },
}

/// A payload codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// gzip (`1f 8b`).
    Gzip,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// LZ4 legacy frame (`02 21 4c 18`).
    Lz4Legacy,
    /// Legacy lzma "alone" format (`5d 00 00`).
    Lzma,
    /// bzip2 (`BZh`), recognised only.
    Bzip2,
    /// lzop (`89 4c 5a 4f`), recognised only.
    Lzo,
}

impl Codec {
    /// Recognise a codec by the payload's first bytes.
    pub fn detect(payload: &[u8]) -> Option<Codec> {
        let m = |magic: &[u8]| payload.starts_with(magic);
        Some(if m(&[0x1f, 0x8b]) {
            Codec::Gzip
        } else if m(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Codec::Xz
        } else if m(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Codec::Zstd
        } else if m(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
            Codec::Lz4Legacy
        } else if m(&[0x5d, 0, 0]) {
            Codec::Lzma
        } else if m(b"BZh") {
            Codec::Bzip2
        } else if m(&[0x89, b'L', b'Z', b'O']) {
            Codec::Lzo
        } else {
            return None;
        })
    }

    /// The codec's name.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Xz => "xz",
            Codec::Zstd => "zstd",
            Codec::Lz4Legacy => "lz4",
            Codec::Lzma => "lzma",
            Codec::Bzip2 => "bzip2",
            Codec::Lzo => "lzo",
        }
    }
}

const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Uncompressed size of every block but the last in an LZ4 legacy frame.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// What a kernel file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An x86 bzImage.
    BzImage,
    /// An ELF vmlinux.
    Elf,
}

/// Tell a bzImage from an ELF kernel by its first bytes.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

/// The compressed payload of a bzImage.
pub fn bzimage_payload(bz: &[u8]) -> Result<&[u8], KernelError> {
    let bad = |what: String| KernelError::BadHeader { what };
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no \"HdrS\" magic at 0x202".into()));
    }
    let u32_at = |o: usize| -> Result<u32, KernelError> {
        bz.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| bad(format!("file too short for the field at {o:#x}")))
    };
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = usize::try_from(u32_at(0x248)?).map_err(|_| bad("payload_offset".into()))?;
    let length = usize::try_from(u32_at(0x24c)?).map_err(|_| bad("payload_length".into()))?;
    let start = (setup_sects + 1) * 512 + offset;
    bz.get(start..start + length).ok_or_else(|| {
        bad(format!(
            "payload {start:#x}+{length:#x} runs past the end of the file ({:#x} bytes)",
            bz.len()
        ))
    })
}

/// Decompress a bzImage's payload into the ELF `vmlinux`.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>, KernelError> {
    let payload = bzimage_payload(bz)?;
    let codec = Codec::detect(payload).ok_or_else(|| KernelError::UnknownCompression {
        magic: hex::encode(&payload[..payload.len().min(8)]),
    })?;
    let dec = |source| KernelError::Decompress {
        codec: codec.name(),
        source,
    };
    let mut out = Vec::with_capacity(payload.len() * 4);
    match codec {
        Codec::Gzip => {
            // GzDecoder stops after the first member: the 4 size bytes the
            // kernel build appends are ignored.
            flate2::read::GzDecoder::new(payload)
                .read_to_end(&mut out)
                .map_err(dec)?;
        }
        Codec::Xz => {
            // Not the multi-stream decoder: stops at the end of the stream.
            liblzma::read::XzDecoder::new(payload)
                .read_to_end(&mut out)
                .map_err(dec)?;
        }
        Codec::Lzma => {
            let stream = liblzma::stream::Stream::new_lzma_decoder(u64::MAX)
                .map_err(|e| dec(std::io::Error::other(e)))?;
            liblzma::read::XzDecoder::new_stream(payload, stream)
                .read_to_end(&mut out)
                .map_err(dec)?;
        }
        Codec::Zstd => {
            zstd::stream::read::Decoder::new(payload)
                .map_err(dec)?
                .single_frame()
                .read_to_end(&mut out)
                .map_err(dec)?;
        }
        Codec::Lz4Legacy => out = lz4_legacy_decompress(payload).map_err(dec)?,
        Codec::Bzip2 | Codec::Lzo => {
            return Err(KernelError::UnsupportedCompression {
                codec: codec.name(),
            });
        }
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(KernelError::NotElf {
            codec: codec.name(),
            magic: hex::encode(&out[..out.len().min(8)]),
        });
    }
    Ok(out)
}

/// Decompress an LZ4 *legacy* frame (what `lz4 -l` and the kernel's
/// `cmd_lz4` write): the magic `0x184C2102`, then blocks, each a u32 LE
/// compressed size and an LZ4 block of at most 8 MiB uncompressed. A magic
/// may repeat between blocks (concatenated frames). The kernel build appends
/// the 4-byte uncompressed size, which reads as a block size that does not
/// fit the remaining input, so the loop ends there.
///
/// Written by hand because no crate reads the legacy frame format
/// (`lz4_flex::frame` reads only the modern one); the blocks themselves are
/// decoded by `lz4_flex::block`.
pub fn lz4_legacy_decompress(input: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut rest = input
        .strip_prefix(&LZ4_LEGACY_MAGIC.to_le_bytes())
        .ok_or_else(|| bad("no LZ4 legacy magic"))?;
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let size = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if size == LZ4_LEGACY_MAGIC {
            rest = &rest[4..];
            continue;
        }
        let size = size as usize;
        if size == 0 || size > rest.len() - 4 {
            break; // The appended size field (or padding): end of data.
        }
        let block = &rest[4..4 + size];
        let dec = lz4_flex::block::decompress(block, LZ4_LEGACY_BLOCK).map_err(|e| {
            bad(&format!(
                "bad LZ4 block at input offset {}: {e}",
                input.len() - rest.len()
            ))
        })?;
        out.extend_from_slice(&dec);
        rest = &rest[4 + size..];
    }
    if out.is_empty() {
        return Err(bad("the LZ4 legacy frame has no blocks"));
    }
    Ok(out)
}

/// A kernel unpacked from the Debian package, ready to use.
#[derive(Debug, Clone)]
pub struct DebianKernel {
    /// The real package name (`linux-image-<ver>-cloud-amd64`).
    pub package: String,
    /// The unpacked package root.
    pub root: PathBuf,
    /// The bzImage (`boot/vmlinuz-<release>`).
    pub bzimage: PathBuf,
    /// The kernel release (`uname -r`).
    pub release: String,
    /// sha256 of the bzImage, hex (recorded at unpack time; empty before).
    pub sha256: String,
}

impl DebianKernel {
    /// `lib/modules/<release>` inside the unpacked package.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

const APT_TIMEOUT: Duration = Duration::from_secs(600);
const LOCAL_TOOL_TIMEOUT: Duration = Duration::from_secs(120);
const COMPLETE_MARKER: &str = ".mvm-complete";

/// Resolve the metapackage to the real kernel package with `apt-cache`.
pub fn resolve_debian_package(metapackage: &str) -> Result<String, KernelError> {
    let apt_cache = mvm_core::tools::APT_CACHE.require()?;
    let out = cmd::run(
        &apt_cache,
        &["depends".as_ref(), metapackage.as_ref()],
        None,
        LOCAL_TOOL_TIMEOUT,
    )
    .map_err(|_| KernelError::NoPackage {
        package: metapackage.to_owned(),
    })?;
    parse_depends(&String::from_utf8_lossy(&out)).ok_or_else(|| KernelError::NoPackage {
        package: metapackage.to_owned(),
    })
}

/// The first `Depends: linux-image-*` of `apt-cache depends` output.
fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().trim_start_matches('<').trim_end_matches('>'))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_owned)
}

/// Get the Debian cloud kernel into `cache_dir` (`$MVM_HOME/cache/kernel`).
///
/// Without `refresh`, an already unpacked kernel is used as is (asking apt
/// costs seconds, too much for a cache hit). With `refresh`, or when none is
/// unpacked, apt names the current package, which is downloaded and unpacked
/// unless already there; if apt cannot answer, an unpacked copy is still used.
pub fn ensure_debian_kernel(
    cache_dir: &Path,
    refresh: bool,
    progress: &dyn crate::Progress,
) -> Result<DebianKernel, KernelError> {
    fs_err::create_dir_all(cache_dir)?;
    if !refresh && let Some(k) = newest_unpacked(cache_dir) {
        return Ok(k);
    }
    progress.step(&format!("asking apt for the current {DEBIAN_METAPACKAGE}"));
    let package = match resolve_debian_package(DEBIAN_METAPACKAGE) {
        Ok(p) => p,
        Err(e) => return newest_unpacked(cache_dir).ok_or(e),
    };
    let dir = cache_dir.join(&package);
    if dir.join(COMPLETE_MARKER).exists() {
        return open_unpacked(&package, &dir);
    }
    progress.step(&format!("downloading {package} with apt-get"));
    let apt_get = mvm_core::tools::APT_GET.require()?;
    let dpkg_deb = mvm_core::tools::DPKG_DEB.require()?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(cache_dir)?;
    cmd::run(
        &apt_get,
        &["download".as_ref(), package.as_ref()],
        Some(tmp.path()),
        APT_TIMEOUT,
    )?;
    let deb = fs_err::read_dir(tmp.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| KernelError::BadPackage {
            dir: tmp.path().to_owned(),
            what: "downloaded .deb",
        })?;
    progress.bytes(fs_err::metadata(&deb)?.len(), None);
    progress.step(&format!("unpacking {}", deb.display()));
    let root = tmp.path().join("root");
    cmd::run(
        &dpkg_deb,
        &["-x".as_ref(), deb.as_os_str(), root.as_os_str()],
        None,
        LOCAL_TOOL_TIMEOUT,
    )?;
    let k = open_unpacked(&package, &root)?;
    let sha = crate::tree::file_sha256(&k.bzimage)?;
    fs_err::write(root.join(COMPLETE_MARKER), format!("{sha}\n"))?;
    match fs_err::rename(&root, &dir) {
        Ok(()) => {}
        // Another builder unpacked it first: use theirs, ours goes with `tmp`.
        Err(_) if dir.join(COMPLETE_MARKER).exists() => {}
        Err(e) => return Err(e.into()),
    }
    open_unpacked(&package, &dir)
}

fn newest_unpacked(cache_dir: &Path) -> Option<DebianKernel> {
    let mut found: Vec<(std::time::SystemTime, String, PathBuf)> = fs_err::read_dir(cache_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let t = fs_err::metadata(e.path().join(COMPLETE_MARKER))
                .ok()?
                .modified()
                .ok()?;
            Some((t, e.file_name().to_string_lossy().into_owned(), e.path()))
        })
        .collect();
    found.sort();
    let (_, package, dir) = found.pop()?;
    open_unpacked(&package, &dir).ok()
}

fn open_unpacked(package: &str, root: &Path) -> Result<DebianKernel, KernelError> {
    let boot = root.join("boot");
    let bzimage = fs_err::read_dir(&boot)
        .map_err(|_| KernelError::BadPackage {
            dir: root.to_owned(),
            what: "boot/ directory",
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| KernelError::BadPackage {
            dir: root.to_owned(),
            what: "boot/vmlinuz-*",
        })?;
    let release = bzimage
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    let sha256 = fs_err::read_to_string(root.join(COMPLETE_MARKER))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let k = DebianKernel {
        sha256,
        package: package.to_owned(),
        root: root.to_owned(),
        bzimage,
        release,
    };
    if !k.modules_dir().is_dir() {
        return Err(KernelError::BadPackage {
            dir: root.to_owned(),
            what: "lib/modules/<release>/",
        });
    }
    Ok(k)
}

/// The ELF vmlinux for the bzImage `bz` (whose sha256 is `bz_sha`), cached
/// as `<vmlinux_cache>/<bz_sha>.elf`.
pub fn cached_vmlinux(
    bz: &[u8],
    bz_sha: &str,
    vmlinux_cache: &Path,
) -> Result<PathBuf, KernelError> {
    let path = vmlinux_cache.join(format!("{bz_sha}.elf"));
    if path.is_file() {
        return Ok(path);
    }
    fs_err::create_dir_all(vmlinux_cache)?;
    let elf = extract_vmlinux(bz)?;
    mvm_core::atomic::write_atomic(&path, &elf, 0o644)
        .map_err(|e| std::io::Error::new(e.source.kind(), e.to_string()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fake ELF vmlinux: the magic, then compressible but varied bytes.
    fn fake_elf() -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01\0".to_vec();
        for i in 0u32..200_000 {
            v.extend_from_slice(&(i / 7).to_le_bytes());
        }
        v
    }

    /// A minimal bzImage: setup_sects = 3, "HdrS", payload after 4 sectors
    /// plus a 16-byte payload_offset, followed by the 4-byte size trailer.
    fn fake_bzimage(compressed: &[u8], uncompressed_len: usize) -> Vec<u8> {
        let mut payload = compressed.to_vec();
        payload.extend_from_slice(&(uncompressed_len as u32).to_le_bytes());
        let mut bz = vec![0u8; 4 * 512 + 16];
        bz[0x1f1] = 3;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(&payload);
        bz.extend_from_slice(&[0xAA; 100]); // trailing setup data
        bz
    }

    fn roundtrip(compressed: Vec<u8>, codec: Codec) {
        let elf = fake_elf();
        assert_eq!(Codec::detect(&compressed), Some(codec));
        let bz = fake_bzimage(&compressed, elf.len());
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        let out = extract_vmlinux(&bz).unwrap();
        assert_eq!(out, elf, "{codec:?}");
    }

    #[test]
    fn gzip_payload() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&fake_elf()).unwrap();
        roundtrip(e.finish().unwrap(), Codec::Gzip);
    }

    #[test]
    fn xz_payload() {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(&fake_elf()).unwrap();
        roundtrip(e.finish().unwrap(), Codec::Xz);
    }

    #[test]
    fn lzma_payload() {
        let opts = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
        let s = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
        let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), s);
        e.write_all(&fake_elf()).unwrap();
        roundtrip(e.finish().unwrap(), Codec::Lzma);
    }

    #[test]
    fn zstd_payload() {
        roundtrip(zstd::encode_all(&fake_elf()[..], 1).unwrap(), Codec::Zstd);
    }

    /// Legacy frame with several blocks: the fake ELF is split at 300 KiB
    /// here (real frames use 8 MiB) to exercise the block loop, and a second
    /// magic sits between blocks as in concatenated frames.
    #[test]
    fn lz4_legacy_payload() {
        let elf = fake_elf();
        let mut c = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for (i, chunk) in elf.chunks(300 * 1024).enumerate() {
            if i == 2 {
                c.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
            }
            let b = lz4_flex::block::compress(chunk);
            c.extend_from_slice(&(b.len() as u32).to_le_bytes());
            c.extend_from_slice(&b);
        }
        roundtrip(c, Codec::Lz4Legacy);
    }

    #[test]
    fn unknown_magic_is_reported_in_hex() {
        let bz = fake_bzimage(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5], 9);
        let err = extract_vmlinux(&bz).unwrap_err();
        assert!(err.to_string().contains("deadbeef01020304"), "{err}");
        let bz = fake_bzimage(b"BZh91AY&SY", 9);
        assert!(matches!(
            extract_vmlinux(&bz),
            Err(KernelError::UnsupportedCompression { codec: "bzip2" })
        ));
    }

    #[test]
    fn non_elf_payload_is_rejected() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"not an elf at all").unwrap();
        let bz = fake_bzimage(&e.finish().unwrap(), 17);
        assert!(matches!(
            extract_vmlinux(&bz),
            Err(KernelError::NotElf { .. })
        ));
    }

    #[test]
    fn truncated_header_is_rejected() {
        let mut bz = fake_bzimage(&[0x1f, 0x8b], 2);
        bz[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            extract_vmlinux(&bz),
            Err(KernelError::BadHeader { .. })
        ));
        assert!(matches!(
            bzimage_payload(&[0u8; 16]),
            Err(KernelError::BadHeader { .. })
        ));
    }

    #[test]
    fn parses_apt_cache_depends() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("foo\n"), None);
    }

    /// The real Debian kernel, when this machine has one installed in
    /// `/boot` (run by hand with `--ignored`; the e2e suites extract the
    /// downloaded one on every image build and boot it).
    #[test]
    #[ignore = "needs a Debian cloud kernel in /boot; the e2e image build covers the downloaded one"]
    fn real_debian_kernel_extracts_to_elf() {
        let candidates: Vec<PathBuf> = std::fs::read_dir("/boot")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.to_string_lossy().contains("vmlinuz-") && p.to_string_lossy().contains("cloud")
            })
            .collect();
        let Some(path) = candidates.first() else {
            mvm_core::testing::skip(
                "SKIPPED: no Debian cloud kernel in /boot (the integration test covers the downloaded one)",
            );
            return;
        };
        let bz = fs_err::read(path).unwrap();
        let elf = extract_vmlinux(&bz).unwrap();
        assert!(elf.len() > bz.len(), "{path:?}");
    }
}
