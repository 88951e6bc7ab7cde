//! `mvm image pull`: the OCI distribution API through oci-client.
//!
//! 1. Parse and normalise the reference; take the blob cache's shared lock.
//! 2. Authenticate: explicit credentials, else the Docker configuration,
//!    else anonymous (bearer-token registries hand out anonymous tokens;
//!    HTTP-basic registries get the credentials on every request).
//! 3. Fetch the manifest (digest checked against the registry's
//!    `Docker-Content-Digest` header and against a pinned digest); an index
//!    is resolved to its linux/amd64 manifest.
//! 4. Fetch the config and the layers into the blob cache — layers in
//!    parallel (at most [`PullOptions::parallel`]), each streamed to disk
//!    while being hashed, never held in memory; blobs already cached are
//!    not downloaded; an interrupted download is resumed with a range
//!    request (see [`crate::blobs`]).
//! 5. Convert (unless an image with the same config is already there) and
//!    point the reference at it.
//!
//! Every request has a deadline: connecting ([`PullOptions::connect_timeout`]),
//! each read of a body ([`PullOptions::read_timeout`]; a stalled layer
//! fails, a slow one does not), and each whole manifest, config or token
//! request ([`PullOptions::request_timeout`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use mvm_core::MvmHome;
use mvm_image::{Image, KernelSource, LayerInfo, RefRecord, SourceKind};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Credentials};
use crate::blobs::{BlobError, BlobStore, Digest};
use crate::model::{self, ConfigFile, Document, ModelError};
use crate::progress::{LayerEvent, PullProgress};
use crate::reference::{ImageRef, ReferenceError};
use crate::unpack::UnpackStats;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Speak plain HTTP to the reference's registry (`--insecure`).
    pub insecure: bool,
    /// Credentials from the command line; otherwise the Docker
    /// configuration is consulted (when [`Self::docker_config`] is set).
    pub credentials: Option<Credentials>,
    /// The Docker configuration file to look for credentials in.
    pub docker_config: Option<std::path::PathBuf>,
    /// Layers downloaded at the same time.
    pub parallel: usize,
    /// Deadline for establishing a connection.
    pub connect_timeout: Duration,
    /// Deadline for each read of a response body (stall detection).
    pub read_timeout: Duration,
    /// Deadline for a whole small request (token, manifest, config).
    pub request_timeout: Duration,
    /// The kernel of the image built from the pulled tree.
    pub kernel: KernelSource,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            insecure: false,
            credentials: None,
            docker_config: auth::docker_config_path(),
            parallel: 3,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            kernel: KernelSource::default(),
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The normalised reference.
    pub reference: String,
    /// The image manifest's digest.
    pub manifest_digest: String,
    /// The index it was selected from, if any.
    pub index_digest: Option<String>,
    /// The image, ready to boot.
    pub image: Image,
    /// Layers in the image.
    pub layers: usize,
    /// Layers that had to be downloaded.
    pub layers_downloaded: usize,
    /// Layer bytes received over the network by this pull.
    pub downloaded_bytes: u64,
    /// Layer bytes an earlier, interrupted pull had already fetched.
    pub resumed_bytes: u64,
    /// Layer bytes found in the cache (not downloaded).
    pub cached_bytes: u64,
    /// What the conversion did; `None` when an image with the same
    /// content was already converted.
    pub unpacked: Option<UnpackStats>,
    /// Time spent on the registry.
    pub download_time: Duration,
    /// Time spent converting.
    pub convert_time: Duration,
}

/// Why a layer (or the config blob) could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The registry refused or failed the request.
    #[error("the registry request failed")]
    Request(#[source] Box<OciDistributionError>),
    /// The connection ended early.
    #[error(
        "download interrupted after {got} of {size} bytes (a later pull resumes where it stopped)"
    )]
    Interrupted {
        /// Bytes present.
        got: u64,
        /// Bytes expected.
        size: u64,
        /// Why it ended.
        #[source]
        source: std::io::Error,
    },
    /// No byte arrived for a while.
    #[error("no data for {0:?}; the download stalled (a later pull resumes where it stopped)")]
    Stalled(Duration),
    /// The content is wrong (digest or size), or the cache failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The descriptor's digest is unusable.
    #[error(transparent)]
    Digest(#[from] crate::blobs::DigestError),
    /// Stopped on request.
    #[error("interrupted")]
    Cancelled,
}

/// A pull failed. Every message starts with the reference.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The Docker configuration could not be used.
    #[error("{reference}: cannot use the stored credentials")]
    Credentials {
        /// The reference.
        reference: String,
        /// Why.
        #[source]
        source: auth::AuthError,
    },
    /// The registry cannot be reached.
    #[error("{reference}: cannot reach the registry {registry}{hint}")]
    Unreachable {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// A hint (plain HTTP registries need --insecure).
        hint: &'static str,
        /// Why.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// A request ran past its deadline.
    #[error("{reference}: the registry {registry} did not answer within {timeout:?} ({what})")]
    Timeout {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// What was asked.
        what: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// The registry needs credentials and none were given.
    #[error(
        "{reference}: the registry {registry} requires authentication; pass --username USER --password-stdin (or `docker login {registry}`)"
    )]
    AuthRequired {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
    },
    /// The registry refused the credentials.
    #[error(
        "{reference}: the registry {registry} refused the credentials of user {username:?} (wrong username or password?)"
    )]
    BadCredentials {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// The user.
        username: String,
        /// The registry's answer.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// No such repository, tag or digest.
    #[error("{reference}: not found in {registry} (unknown repository, tag or digest)")]
    NotFound {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// The registry's answer.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// Any other registry failure.
    #[error("{reference}: registry request for the {what} failed")]
    Registry {
        /// The reference.
        reference: String,
        /// What was asked.
        what: &'static str,
        /// The error.
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The manifest, index or config is not usable.
    #[error("{reference}")]
    Model {
        /// The reference.
        reference: String,
        /// What is wrong.
        #[source]
        source: ModelError,
    },
    /// A layer or the config blob could not be fetched.
    #[error("{reference}: {what} {digest}")]
    Blob {
        /// The reference.
        reference: String,
        /// `layer` or `config`.
        what: &'static str,
        /// The blob digest.
        digest: String,
        /// Why.
        #[source]
        source: LayerError,
    },
    /// The blob cache failed.
    #[error("{reference}: blob cache")]
    Cache {
        /// The reference.
        reference: String,
        /// Why.
        #[source]
        source: BlobError,
    },
    /// Conversion or the image store failed.
    #[error("{reference}: cannot convert the image")]
    Convert {
        /// The reference.
        reference: String,
        /// Why.
        #[source]
        source: mvm_image::ImageError,
    },
    /// Stopped on request (Ctrl-C).
    #[error(
        "{reference}: interrupted; nothing was added (downloaded layers stay cached and a later pull resumes)"
    )]
    Cancelled {
        /// The reference.
        reference: String,
    },
}

/// An oci-client for the reference's registry.
fn client(r: &ImageRef, opts: &PullOptions) -> Result<Client, OciDistributionError> {
    // reqwest is built without a bundled crypto provider; use ring (the
    // workspace's rustls provider). Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if opts.insecure {
        ClientProtocol::HttpsExcept(vec![r.api_host().to_owned()])
    } else {
        ClientProtocol::Https
    };
    Client::try_from(ClientConfig {
        protocol,
        platform_resolver: None,
        connect_timeout: Some(opts.connect_timeout),
        read_timeout: Some(opts.read_timeout),
        user_agent: concat!("mvm/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    })
}

struct Ctx<'a> {
    r: &'a ImageRef,
    reference: String,
    opts: &'a PullOptions,
    username: Option<String>,
}

impl Ctx<'_> {
    fn registry(&self) -> String {
        self.r.registry().to_owned()
    }

    /// Classify a registry error.
    fn err(&self, what: &'static str, e: OciDistributionError) -> PullError {
        let reference = self.reference.clone();
        let registry = self.registry();
        let auth_err = |e: OciDistributionError| match &self.username {
            Some(u) => PullError::BadCredentials {
                reference: reference.clone(),
                registry: registry.clone(),
                username: u.clone(),
                source: Box::new(e),
            },
            None => PullError::AuthRequired {
                reference: reference.clone(),
                registry: registry.clone(),
            },
        };
        match &e {
            OciDistributionError::RequestError(re) if re.is_connect() => PullError::Unreachable {
                reference,
                registry,
                hint: if self.opts.insecure {
                    ""
                } else {
                    " (a plain-HTTP registry needs --insecure)"
                },
                source: Box::new(e),
            },
            OciDistributionError::RequestError(re) if re.is_timeout() => PullError::Timeout {
                reference,
                registry,
                what,
                timeout: self.opts.read_timeout,
            },
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => auth_err(e),
            OciDistributionError::ServerError { code: 404, .. } => PullError::NotFound {
                reference,
                registry,
                source: Box::new(e),
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|x| &x.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    PullError::NotFound {
                        reference,
                        registry,
                        source: Box::new(e),
                    }
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    auth_err(e)
                } else {
                    PullError::Registry {
                        reference,
                        what,
                        source: Box::new(e),
                    }
                }
            }
            _ => PullError::Registry {
                reference,
                what,
                source: Box::new(e),
            },
        }
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        f: impl std::future::Future<Output = Result<T, OciDistributionError>>,
    ) -> Result<T, PullError> {
        match tokio::time::timeout(self.opts.request_timeout, f).await {
            Ok(r) => r.map_err(|e| self.err(what, e)),
            Err(_) => Err(PullError::Timeout {
                reference: self.reference.clone(),
                registry: self.registry(),
                what,
                timeout: self.opts.request_timeout,
            }),
        }
    }

    fn model(&self, source: ModelError) -> PullError {
        PullError::Model {
            reference: self.reference.clone(),
            source,
        }
    }
}

/// Pull `reference` into the image store (see the module docs).
/// Cancelling `cancel` (Ctrl-C) stops downloads at once and the
/// conversion between two archive entries; the pull then fails with
/// [`PullError::Cancelled`] after cleaning up.
pub async fn pull(
    home: &MvmHome,
    reference: &str,
    opts: &PullOptions,
    progress: Arc<dyn PullProgress>,
    cancel: CancellationToken,
) -> Result<PullReport, PullError> {
    // The blocking conversion polls a flag; bridge the token to it.
    let flag = Arc::new(AtomicBool::new(cancel.is_cancelled()));
    let bridge = {
        let (flag, cancel) = (flag.clone(), cancel.clone());
        tokio::spawn(async move {
            cancel.cancelled().await;
            flag.store(true, Ordering::Relaxed);
        })
    };
    let r = pull_inner(home, reference, opts, progress, &cancel, flag).await;
    bridge.abort();
    r
}

async fn pull_inner(
    home: &MvmHome,
    reference: &str,
    opts: &PullOptions,
    progress: Arc<dyn PullProgress>,
    cancel: &CancellationToken,
    flag: Arc<AtomicBool>,
) -> Result<PullReport, PullError> {
    let r = ImageRef::parse(reference)?;
    let refname = r.canonical();
    let store = BlobStore::new(home);
    let cache_err = |source| PullError::Cache {
        reference: refname.clone(),
        source,
    };
    let lock_store = store.clone();
    let _lock = tokio::task::spawn_blocking(move || lock_store.lock_shared())
        .await
        .map_err(|e| cache_err(BlobError::Io(std::io::Error::other(e))))?
        .map_err(cache_err)?;

    let creds = match &opts.credentials {
        Some(c) => Some(c.clone()),
        None => match &opts.docker_config {
            Some(p) => auth::from_docker_config(p, r.registry()).map_err(|source| {
                PullError::Credentials {
                    reference: refname.clone(),
                    source,
                }
            })?,
            None => None,
        },
    };
    let ctx = Ctx {
        r: &r,
        reference: refname.clone(),
        opts,
        username: creds.as_ref().map(|c| c.username.clone()),
    };
    let auth = match &creds {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let started = Instant::now();
    let client = client(&r, opts).map_err(|e| ctx.err("client", e))?;
    ctx.timed(
        "token",
        client.auth(r.as_oci(), &auth, RegistryOperation::Pull),
    )
    .await?;

    // Manifest (through an index if need be).
    let (bytes, digest) = ctx
        .timed(
            "manifest",
            client.pull_manifest_raw(r.as_oci(), &auth, &model::ACCEPTED_MANIFESTS),
        )
        .await?;
    let (manifest, manifest_bytes, manifest_digest, index_digest) =
        match model::parse_document(&bytes).map_err(|e| ctx.model(e))? {
            Document::Manifest(m) => (*m, bytes, digest, None),
            Document::Index(index) => {
                let entry = model::select_platform(&index).map_err(|e| ctx.model(e))?;
                let pinned = r.with_digest(&entry.digest);
                let (b, d) = ctx
                    .timed(
                        "manifest",
                        client.pull_manifest_raw(
                            pinned.as_oci(),
                            &auth,
                            &model::ACCEPTED_MANIFESTS,
                        ),
                    )
                    .await?;
                match model::parse_document(&b).map_err(|e| ctx.model(e))? {
                    Document::Manifest(m) => (*m, b, d, Some(digest)),
                    Document::Index(_) => {
                        return Err(
                            ctx.model(ModelError::MediaType("an index inside an index".into()))
                        );
                    }
                }
            }
        };
    let manifest_digest_parsed =
        Digest::parse(&manifest_digest).map_err(|e| ctx.model(e.into()))?;
    store
        .insert(&mut &manifest_bytes[..], Some(&manifest_digest_parsed))
        .map_err(cache_err)?;

    // Config.
    let blob_err = |what, digest: &str, source| PullError::Blob {
        reference: refname.clone(),
        what,
        digest: digest.to_owned(),
        source,
    };
    let cfg_desc = &manifest.config;
    fetch_blob(&client, &r, cfg_desc, &store, opts, None, cancel)
        .await
        .map_err(|e| cancelled_or(&refname, e, |e| blob_err("config", &cfg_desc.digest, e)))?;
    let cfg_digest = Digest::parse(&cfg_desc.digest).map_err(|e| ctx.model(e.into()))?;
    let cfg_bytes = store.read(&cfg_digest).map_err(cache_err)?;
    let config = ConfigFile::parse(&cfg_bytes).map_err(|e| ctx.model(e))?;
    config.check_platform().map_err(|e| ctx.model(e))?;
    let layers = model::layers(&manifest, &config).map_err(|e| ctx.model(e))?;

    // Layers, in parallel.
    let stats = download_layers(&client, &r, &manifest, &store, opts, &progress, cancel)
        .await
        .map_err(|(digest, e)| cancelled_or(&refname, e, |e| blob_err("layer", &digest, e)))?;
    let download_time = started.elapsed();

    // Convert.
    let t = Instant::now();
    let (image, unpacked) = convert(
        home,
        &refname,
        &store,
        &manifest_digest,
        &cfg_desc.digest,
        layers,
        &config,
        &opts.kernel,
        progress.clone(),
        flag,
    )
    .await?;
    let convert_time = t.elapsed();
    mvm_image::oci::write_ref(
        home,
        &RefRecord {
            reference: refname.clone(),
            image_digest: image.digest.clone(),
            manifest_digest: manifest_digest.clone(),
            index_digest: index_digest.clone(),
            source: SourceKind::Registry,
            imported_from: None,
            created: now_rfc3339(),
        },
    )
    .map_err(|source| PullError::Convert {
        reference: refname.clone(),
        source,
    })?;
    Ok(PullReport {
        reference: refname,
        manifest_digest,
        index_digest,
        image,
        layers: manifest.layers.len(),
        layers_downloaded: stats.downloaded_layers,
        downloaded_bytes: stats.downloaded,
        resumed_bytes: stats.resumed,
        cached_bytes: stats.cached,
        unpacked,
        download_time,
        convert_time,
    })
}

fn cancelled_or(
    reference: &str,
    e: LayerError,
    f: impl FnOnce(LayerError) -> PullError,
) -> PullError {
    match e {
        LayerError::Cancelled => PullError::Cancelled {
            reference: reference.to_owned(),
        },
        e => f(e),
    }
}

/// Convert the layers in the cache into an image, off the async thread.
#[allow(clippy::too_many_arguments)]
async fn convert(
    home: &MvmHome,
    describe: &str,
    store: &BlobStore,
    manifest_digest: &str,
    config_digest: &str,
    layers: Vec<LayerInfo>,
    config: &ConfigFile,
    kernel: &KernelSource,
    progress: Arc<dyn PullProgress>,
    cancel: Arc<AtomicBool>,
) -> Result<(Image, Option<UnpackStats>), PullError> {
    let (home, store, kernel) = (home.clone(), store.clone(), kernel.clone());
    let (describe, manifest_digest, config_digest) = (
        describe.to_owned(),
        manifest_digest.to_owned(),
        config_digest.to_owned(),
    );
    let reference = describe.clone();
    let config = config.image_config();
    let c2 = cancel.clone();
    let joined = tokio::task::spawn_blocking(move || {
        crate::convert::build(
            &home,
            &describe,
            &store,
            &manifest_digest,
            &config_digest,
            layers,
            config,
            &kernel,
            &*progress,
            c2,
        )
    })
    .await;
    match joined {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(_)) if cancel.load(Ordering::Relaxed) => Err(PullError::Cancelled { reference }),
        Ok(Err(source)) => Err(PullError::Convert { reference, source }),
        Err(e) => Err(PullError::Convert {
            reference,
            source: mvm_image::ImageError::Io(std::io::Error::other(e)),
        }),
    }
}

#[derive(Default)]
struct DownloadStats {
    downloaded_layers: usize,
    downloaded: u64,
    resumed: u64,
    cached: u64,
}

enum Fetched {
    Cached(u64),
    Downloaded { received: u64, resumed: u64 },
}

async fn download_layers(
    client: &Client,
    r: &ImageRef,
    manifest: &OciImageManifest,
    store: &BlobStore,
    opts: &PullOptions,
    progress: &Arc<dyn PullProgress>,
    cancel: &CancellationToken,
) -> Result<DownloadStats, (String, LayerError)> {
    let mut stats = DownloadStats::default();
    let results = futures::stream::iter(manifest.layers.iter())
        .map(|desc| async move {
            fetch_blob(client, r, desc, store, opts, Some(&**progress), cancel)
                .await
                .map_err(|e| (desc.digest.clone(), e))
        })
        .buffer_unordered(opts.parallel.max(1))
        .try_collect::<Vec<Fetched>>()
        .await?;
    for f in results {
        match f {
            Fetched::Cached(n) => stats.cached += n,
            Fetched::Downloaded { received, resumed } => {
                stats.downloaded_layers += 1;
                stats.downloaded += received;
                stats.resumed += resumed;
            }
        }
    }
    Ok(stats)
}

/// Fetch one blob into the cache (see the module docs of
/// [`crate::blobs`]).
async fn fetch_blob(
    client: &Client,
    r: &ImageRef,
    desc: &OciDescriptor,
    store: &BlobStore,
    opts: &PullOptions,
    progress: Option<&dyn PullProgress>,
    cancel: &CancellationToken,
) -> Result<Fetched, LayerError> {
    let digest = Digest::parse(&desc.digest)?;
    let size = u64::try_from(desc.size).unwrap_or(0);
    if store.size(&digest) == Some(size) {
        if let Some(p) = progress {
            p.layer(LayerEvent::Cached {
                digest: &desc.digest,
                size,
            });
        }
        return Ok(Fetched::Cached(size));
    }
    let r2 = store.clone();
    let d2 = digest.clone();
    let mut partial = tokio::task::spawn_blocking(move || r2.begin(&d2, size))
        .await
        .map_err(|e| LayerError::Blob(BlobError::Io(std::io::Error::other(e))))??;
    // Another process may have finished it while we waited for its lock.
    if store.size(&digest) == Some(size) {
        if let Some(p) = progress {
            p.layer(LayerEvent::Cached {
                digest: &desc.digest,
                size,
            });
        }
        return Ok(Fetched::Cached(size));
    }
    let mut resumed = partial.offset();
    let report = |ev| {
        if let Some(p) = progress {
            p.layer(ev);
        }
    };
    let result = async {
        let stream = if resumed > 0 && resumed < size {
            match client
                .pull_blob_stream_partial(r.as_oci(), desc, resumed, None)
                .await
                .map_err(|e| LayerError::Request(Box::new(e)))?
            {
                BlobResponse::Partial(s) => s,
                BlobResponse::Full(s) => {
                    partial.restart()?;
                    resumed = 0;
                    s
                }
            }
        } else if resumed == size {
            // Complete but never committed (interrupted at the very end).
            futures_empty()
        } else {
            client
                .pull_blob_stream(r.as_oci(), desc)
                .await
                .map_err(|e| LayerError::Request(Box::new(e)))?
        };
        report(LayerEvent::Start {
            digest: &desc.digest,
            size,
            offset: resumed,
        });
        let mut stream = stream.stream;
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Err(LayerError::Cancelled),
                n = tokio::time::timeout(opts.read_timeout, stream.next()) => {
                    n.map_err(|_| LayerError::Stalled(opts.read_timeout))?
                }
            };
            match next {
                None => break,
                Some(Ok(chunk)) => {
                    partial.write(&chunk)?;
                    report(LayerEvent::Bytes {
                        digest: &desc.digest,
                        done: partial.offset(),
                    });
                }
                // oci-client's own digest check at the end of a full
                // download: ours below names both digests.
                Some(Err(_)) if partial.offset() == size => break,
                Some(Err(source)) => {
                    return Err(LayerError::Interrupted {
                        got: partial.offset(),
                        size,
                        source,
                    });
                }
            }
        }
        if partial.offset() < size {
            return Err(LayerError::Interrupted {
                got: partial.offset(),
                size,
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            });
        }
        let received = partial.offset() - resumed;
        tokio::task::spawn_blocking(move || partial.commit())
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))??;
        Ok(Fetched::Downloaded { received, resumed })
    }
    .await;
    report(match &result {
        Ok(_) => LayerEvent::Done {
            digest: &desc.digest,
        },
        Err(_) => LayerEvent::Failed {
            digest: &desc.digest,
        },
    });
    result
}

fn futures_empty() -> oci_client::client::SizedStream {
    oci_client::client::SizedStream {
        content_length: Some(0),
        digest_header_value: None,
        stream: futures::stream::empty().boxed(),
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
