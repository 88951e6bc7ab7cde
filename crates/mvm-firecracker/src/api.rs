//! A typed client for Firecracker's REST API (v1.16, the OpenAPI file in
//! `shared/firecracker/`).
//!
//! Protocol: HTTP/1.1 over the Unix socket given by `--api-sock`. Every call
//! opens a fresh connection (Firecracker's server handles one request per
//! connection well and there is no benefit in keeping one open), sends one
//! request with a JSON body where the endpoint takes one, and reads one
//! response. Success is `204 No Content` for writes and `200 OK` with a JSON
//! body for reads. Any other status carries a fault body
//! `{"fault_message": "..."}`, which becomes [`ApiError::Fault`].
//!
//! Every call is bounded by the client's timeout; errors name the socket and
//! the endpoint (`PUT /drives/rootfs`).
//!
//! The serde types below mirror the OpenAPI definitions one to one: the
//! same field names, required fields as plain fields, optional fields as
//! `Option` skipped when `None`, enums with the spec's spelling. The
//! integration tests validate every body this client can send against the
//! schema in the YAML file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

/// Default deadline of one API call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// An endpoint of the API: method, path template (as in the spec) and the
/// definition its body must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template as written in the OpenAPI file (`/drives/{drive_id}`).
    pub path: &'static str,
    /// The OpenAPI definition of the request body, if the call sends one.
    pub body: Option<&'static str>,
}

macro_rules! endpoints {
    ($($name:ident = $method:literal $path:literal $body:expr;)*) => {
        /// The endpoints this client calls.
        pub mod endpoints {
            use super::Endpoint;
            $(
                #[doc = concat!("`", $method, " ", $path, "`")]
                pub const $name: Endpoint = Endpoint { method: $method, path: $path, body: $body };
            )*
            /// All of them.
            pub const ALL: &[Endpoint] = &[$($name),*];
        }
    };
}

endpoints! {
    DESCRIBE_INSTANCE = "GET" "/" None;
    VERSION = "GET" "/version" None;
    VM_CONFIG = "GET" "/vm/config" None;
    PUT_LOGGER = "PUT" "/logger" Some("Logger");
    PUT_METRICS = "PUT" "/metrics" Some("Metrics");
    PUT_BOOT_SOURCE = "PUT" "/boot-source" Some("BootSource");
    PUT_MACHINE_CONFIG = "PUT" "/machine-config" Some("MachineConfiguration");
    PUT_DRIVE = "PUT" "/drives/{drive_id}" Some("Drive");
    PATCH_DRIVE = "PATCH" "/drives/{drive_id}" Some("PartialDrive");
    PUT_NETWORK_INTERFACE = "PUT" "/network-interfaces/{iface_id}" Some("NetworkInterface");
    PUT_VSOCK = "PUT" "/vsock" Some("Vsock");
    PUT_ENTROPY = "PUT" "/entropy" Some("EntropyDevice");
    PUT_ACTIONS = "PUT" "/actions" Some("InstanceActionInfo");
    PATCH_VM = "PATCH" "/vm" Some("Vm");
    PUT_SNAPSHOT_CREATE = "PUT" "/snapshot/create" Some("SnapshotCreateParams");
    PUT_SNAPSHOT_LOAD = "PUT" "/snapshot/load" Some("SnapshotLoadParams");
    PUT_MMDS = "PUT" "/mmds" Some("MmdsContentsObject");
    PUT_BALLOON = "PUT" "/balloon" Some("Balloon");
}

impl Endpoint {
    /// The concrete path, with `{param}` replaced by `value` (which is
    /// percent-encoded if it contains anything but `[A-Za-z0-9_.-]`).
    pub fn path_with(&self, value: &str) -> String {
        let encoded: String = value
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        match (self.path.find('{'), self.path.find('}')) {
            (Some(a), Some(b)) => format!("{}{}{}", &self.path[..a], encoded, &self.path[b + 1..]),
            _ => self.path.to_string(),
        }
    }
}

/// Errors of API calls. Each names the socket and the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be connected.
    #[error("cannot connect to the Firecracker API socket {socket} ({endpoint})")]
    Connect {
        /// API socket.
        socket: PathBuf,
        /// `METHOD /path`.
        endpoint: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {socket} failed ({endpoint})")]
    Http {
        /// API socket.
        socket: PathBuf,
        /// `METHOD /path`.
        endpoint: String,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The call did not complete in time.
    #[error("{endpoint} on {socket} did not answer within {timeout:?}")]
    Timeout {
        /// API socket.
        socket: PathBuf,
        /// `METHOD /path`.
        endpoint: String,
        /// The deadline.
        timeout: Duration,
    },
    /// Firecracker refused the request.
    #[error("{endpoint} on {socket} failed with HTTP {status}: {fault_message}")]
    Fault {
        /// API socket.
        socket: PathBuf,
        /// `METHOD /path`.
        endpoint: String,
        /// HTTP status code.
        status: u16,
        /// Firecracker's `fault_message` (or the raw body if it had none).
        fault_message: String,
    },
    /// A request body could not be encoded or a response decoded.
    #[error("bad JSON in {endpoint} on {socket}")]
    Json {
        /// API socket.
        socket: PathBuf,
        /// `METHOD /path`.
        endpoint: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl ApiError {
    /// Whether the socket exists but nobody listens on it (a stale socket
    /// of a dead VMM).
    pub fn is_connection_refused(&self) -> bool {
        matches!(self, ApiError::Connect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
    /// Whether the socket file does not exist (yet).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Connect { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A Firecracker API client bound to one socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the API socket at `socket`, with [`DEFAULT_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Use another per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /`: instance information (state, id, version).
    pub async fn describe_instance(&self) -> Result<InstanceInfo, ApiError> {
        self.get(endpoints::DESCRIBE_INSTANCE).await
    }
    /// `GET /version`.
    pub async fn version(&self) -> Result<FirecrackerVersion, ApiError> {
        self.get(endpoints::VERSION).await
    }
    /// `GET /vm/config`: the whole configuration as Firecracker holds it.
    pub async fn vm_config(&self) -> Result<FullVmConfiguration, ApiError> {
        self.get(endpoints::VM_CONFIG).await
    }
    /// `PUT /logger`.
    pub async fn put_logger(&self, body: &Logger) -> Result<(), ApiError> {
        self.send(endpoints::PUT_LOGGER, None, body).await
    }
    /// `PUT /metrics`.
    pub async fn put_metrics(&self, body: &Metrics) -> Result<(), ApiError> {
        self.send(endpoints::PUT_METRICS, None, body).await
    }
    /// `PUT /boot-source`.
    pub async fn put_boot_source(&self, body: &BootSource) -> Result<(), ApiError> {
        self.send(endpoints::PUT_BOOT_SOURCE, None, body).await
    }
    /// `PUT /machine-config`.
    pub async fn put_machine_config(&self, body: &MachineConfiguration) -> Result<(), ApiError> {
        self.send(endpoints::PUT_MACHINE_CONFIG, None, body).await
    }
    /// `PUT /drives/{drive_id}` (id taken from the body).
    pub async fn put_drive(&self, body: &Drive) -> Result<(), ApiError> {
        self.send(endpoints::PUT_DRIVE, Some(&body.drive_id), body)
            .await
    }
    /// `PATCH /drives/{drive_id}` (post-boot; id taken from the body).
    pub async fn patch_drive(&self, body: &PartialDrive) -> Result<(), ApiError> {
        self.send(endpoints::PATCH_DRIVE, Some(&body.drive_id), body)
            .await
    }
    /// `PUT /network-interfaces/{iface_id}` (id taken from the body).
    pub async fn put_network_interface(&self, body: &NetworkInterface) -> Result<(), ApiError> {
        self.send(endpoints::PUT_NETWORK_INTERFACE, Some(&body.iface_id), body)
            .await
    }
    /// `PUT /vsock`.
    pub async fn put_vsock(&self, body: &Vsock) -> Result<(), ApiError> {
        self.send(endpoints::PUT_VSOCK, None, body).await
    }
    /// `PUT /entropy`.
    pub async fn put_entropy(&self, body: &EntropyDevice) -> Result<(), ApiError> {
        self.send(endpoints::PUT_ENTROPY, None, body).await
    }
    /// `PUT /actions`.
    pub async fn action(&self, action_type: ActionType) -> Result<(), ApiError> {
        self.send(
            endpoints::PUT_ACTIONS,
            None,
            &InstanceActionInfo { action_type },
        )
        .await
    }
    /// `PUT /actions` `InstanceStart`: boot the configured guest.
    pub async fn instance_start(&self) -> Result<(), ApiError> {
        self.action(ActionType::InstanceStart).await
    }
    /// `PUT /actions` `SendCtrlAltDel` (x86: keyboard reset request).
    pub async fn send_ctrl_alt_del(&self) -> Result<(), ApiError> {
        self.action(ActionType::SendCtrlAltDel).await
    }
    /// `PUT /actions` `FlushMetrics`.
    pub async fn flush_metrics(&self) -> Result<(), ApiError> {
        self.action(ActionType::FlushMetrics).await
    }
    /// `PATCH /vm`.
    pub async fn patch_vm(&self, state: VmState) -> Result<(), ApiError> {
        self.send(endpoints::PATCH_VM, None, &Vm { state }).await
    }
    /// `PATCH /vm` `Paused`.
    pub async fn pause(&self) -> Result<(), ApiError> {
        self.patch_vm(VmState::Paused).await
    }
    /// `PATCH /vm` `Resumed`.
    pub async fn resume(&self) -> Result<(), ApiError> {
        self.patch_vm(VmState::Resumed).await
    }
    /// `PUT /snapshot/create` (the VM must be paused).
    pub async fn create_snapshot(&self, body: &SnapshotCreateParams) -> Result<(), ApiError> {
        self.send(endpoints::PUT_SNAPSHOT_CREATE, None, body).await
    }
    /// `PUT /snapshot/load` (on a fresh process only).
    pub async fn load_snapshot(&self, body: &SnapshotLoadParams) -> Result<(), ApiError> {
        self.send(endpoints::PUT_SNAPSHOT_LOAD, None, body).await
    }
    /// `PUT /mmds`: replace the metadata store with `contents` (a JSON object).
    pub async fn put_mmds(&self, contents: &serde_json::Value) -> Result<(), ApiError> {
        self.send(endpoints::PUT_MMDS, None, contents).await
    }
    /// `PUT /balloon`.
    pub async fn put_balloon(&self, body: &Balloon) -> Result<(), ApiError> {
        self.send(endpoints::PUT_BALLOON, None, body).await
    }

    async fn get<T: DeserializeOwned>(&self, ep: Endpoint) -> Result<T, ApiError> {
        let path = ep.path.to_string();
        let name = format!("{} {}", ep.method, path);
        let body = self.call(Method::GET, &path, &name, None).await?;
        serde_json::from_slice(&body).map_err(|source| ApiError::Json {
            socket: self.socket.clone(),
            endpoint: name,
            source,
        })
    }

    async fn send<B: Serialize>(
        &self,
        ep: Endpoint,
        param: Option<&str>,
        body: &B,
    ) -> Result<(), ApiError> {
        let path = match param {
            Some(p) => ep.path_with(p),
            None => ep.path.to_string(),
        };
        let name = format!("{} {}", ep.method, path);
        let json = serde_json::to_vec(body).map_err(|source| ApiError::Json {
            socket: self.socket.clone(),
            endpoint: name.clone(),
            source,
        })?;
        let method = Method::from_bytes(ep.method.as_bytes()).unwrap_or(Method::PUT);
        self.call(method, &path, &name, Some(json)).await?;
        Ok(())
    }

    /// One request/response exchange under the deadline.
    async fn call(
        &self,
        method: Method,
        path: &str,
        name: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ApiError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path, name, body)).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout {
                socket: self.socket.clone(),
                endpoint: name.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        name: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ApiError> {
        let http_err = |source| ApiError::Http {
            socket: self.socket.clone(),
            endpoint: name.to_string(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    endpoint: name.to_string(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        // The connection task ends when the exchange is over (or with the
        // timeout, when this future and the sender are dropped).
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("method, path and headers are valid");
        let result = async {
            let resp = sender.send_request(req).await.map_err(http_err)?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(http_err)?
                .to_bytes();
            Ok::<_, ApiError>((status, bytes))
        }
        .await;
        conn_task.abort();
        let (status, bytes) = result?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(ApiError::Fault {
            socket: self.socket.clone(),
            endpoint: name.to_string(),
            status: status.as_u16(),
            fault_message: fault_message(status, &bytes),
        })
    }
}

/// The `fault_message` of an error body, or the raw body.
fn fault_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Fault {
        fault_message: String,
    }
    match serde_json::from_slice::<Fault>(body) {
        Ok(f) => f.fault_message,
        Err(_) if body.is_empty() => status
            .canonical_reason()
            .unwrap_or("no fault message")
            .to_string(),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

// ---------------------------------------------------------------------------
// Model types (definitions of the OpenAPI file).

/// `InstanceInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Application name.
    pub app_name: String,
    /// Instance id (`--id`).
    pub id: String,
    /// Current state.
    pub state: InstanceState,
    /// VMM version.
    pub vmm_version: String,
}

/// `InstanceInfo.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configured, not booted.
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
}

/// `FirecrackerVersion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    /// Build version.
    pub firecracker_version: String,
}

/// `Logger.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Informational (Firecracker logs request bodies at this level).
    Info,
    /// Debug.
    Debug,
    /// Trace.
    Trace,
    /// Nothing.
    Off,
}

/// `Logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    /// Level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// File or named pipe (created by Firecracker if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Print the level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print file:line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Module filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `Metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// File or named pipe for the JSON metrics.
    pub metrics_path: PathBuf,
}

/// `BootSource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Initrd on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Kernel on the host (ELF vmlinux on x86_64).
    pub kernel_image_path: PathBuf,
}

/// `CpuTemplate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// Intel C3.
    C3,
    /// Intel T2.
    T2,
    /// Intel T2S.
    T2S,
    /// Intel T2CL.
    T2CL,
    /// AMD T2A.
    T2A,
    /// ARM V1N1.
    V1N1,
    /// No template.
    None,
}

/// `MachineConfiguration.huge_pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Normal pages.
    None,
    /// 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Huge2M,
}

/// `MachineConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// Deprecated static CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Simultaneous multithreading (x86).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Memory in MiB.
    pub mem_size_mib: u32,
    /// Dirty page tracking (diff snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// vCPUs (1..=32).
    pub vcpu_count: u8,
    /// Huge pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// `TokenBucket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Initial burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Refill time in ms.
    pub refill_time: u64,
    /// Capacity.
    pub size: u64,
}

/// `RateLimiter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiter {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// `Drive.cache_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// No flush on guest request (default).
    Unsafe,
    /// Flush on guest request.
    Writeback,
}

/// `Drive.io_engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking IO (default).
    Sync,
    /// io_uring.
    Async,
}

/// `Drive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Drive id (also the path parameter).
    pub drive_id: String,
    /// Partition UUID of the root (only with `is_root_device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Whether Firecracker puts `root=/dev/vda` on the command line.
    pub is_root_device: bool,
    /// Cache strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// Read-only (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Backing file (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// IO engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// vhost-user-block backend socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// `PartialDrive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialDrive {
    /// Drive id.
    pub drive_id: String,
    /// New backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// New rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `NetworkInterface`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Guest MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Host TAP device.
    pub host_dev_name: String,
    /// Interface id (also the path parameter).
    pub iface_id: String,
    /// MTU advertised to the guest (68..=65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `Vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// Guest CID (>= 3).
    pub guest_cid: u32,
    /// Host Unix socket of the hybrid vsock.
    pub uds_path: PathBuf,
    /// Deprecated id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `EntropyDevice`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntropyDevice {
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `InstanceActionInfo.action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Flush metrics to the metrics file.
    FlushMetrics,
    /// Boot.
    InstanceStart,
    /// Send Ctrl+Alt+Del to the guest keyboard controller.
    SendCtrlAltDel,
}

/// `InstanceActionInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// `Vm.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Pause vCPUs.
    Paused,
    /// Resume vCPUs.
    Resumed,
}

/// `Vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// Desired state.
    pub state: VmState,
}

/// `SnapshotCreateParams.snapshot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All memory.
    Full,
    /// Memory dirtied since the last snapshot.
    Diff,
}

/// `SnapshotCreateParams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    /// Guest memory file.
    pub mem_file_path: PathBuf,
    /// VM state file.
    pub snapshot_path: PathBuf,
    /// Full (default) or diff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

/// `MemoryBackend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// A memory file.
    File,
    /// A userfaultfd handler socket.
    Uffd,
}

/// `MemoryBackend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// Kind.
    pub backend_type: MemoryBackendType,
    /// File or socket path.
    pub backend_path: PathBuf,
}

/// `NetworkOverride`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// Interface.
    pub iface_id: String,
    /// New TAP.
    pub host_dev_name: String,
}

/// `VsockOverride`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// New UDS path.
    pub uds_path: PathBuf,
}

/// `SnapshotLoadParams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    /// Deprecated alias of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Dirty page tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Deprecated: memory file (exclusive with `mem_backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    /// Memory backend (exclusive with `mem_file_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// VM state file.
    pub snapshot_path: PathBuf,
    /// Resume after loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// TAP overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// Vsock UDS override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the elapsed wall time (x86_64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

/// `Balloon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balloon {
    /// Target size in MiB.
    pub amount_mib: u32,
    /// Deflate under guest memory pressure.
    pub deflate_on_oom: bool,
    /// Statistics interval (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_polling_interval_s: Option<u32>,
    /// Free page hinting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_hinting: Option<bool>,
    /// Free page reporting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_reporting: Option<bool>,
}

/// `FullVmConfiguration` (the answer of `GET /vm/config`, and the format of
/// `--config-file`). Only the parts mvm configures are typed; the rest is
/// kept as raw JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FullVmConfiguration {
    /// Balloon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
    /// Block devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drives: Option<Vec<Drive>>,
    /// Boot source.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// Logger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// Machine configuration.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfiguration>,
    /// Metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// Network devices.
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub network_interfaces: Option<Vec<NetworkInterface>>,
    /// Vsock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// Entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
    /// Everything else (cpu-config, mmds-config, pmem, memory-hotplug).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_are_substituted_and_encoded() {
        assert_eq!(endpoints::PUT_DRIVE.path_with("rootfs"), "/drives/rootfs");
        assert_eq!(
            endpoints::PUT_NETWORK_INTERFACE.path_with("a b/c"),
            "/network-interfaces/a%20b%2Fc"
        );
    }

    #[test]
    fn fault_bodies_become_messages() {
        assert_eq!(
            fault_message(StatusCode::BAD_REQUEST, br#"{"fault_message":"bad drive"}"#),
            "bad drive"
        );
        assert_eq!(fault_message(StatusCode::BAD_REQUEST, b""), "Bad Request");
        assert_eq!(fault_message(StatusCode::BAD_REQUEST, b"oops\n"), "oops");
    }

    #[test]
    fn enums_use_the_spec_spelling() {
        assert_eq!(
            serde_json::to_string(&InstanceState::NotStarted).unwrap(),
            "\"Not started\""
        );
        assert_eq!(serde_json::to_string(&HugePages::Huge2M).unwrap(), "\"2M\"");
        let m = MachineConfiguration {
            cpu_template: None,
            smt: None,
            mem_size_mib: 128,
            track_dirty_pages: None,
            vcpu_count: 1,
            huge_pages: None,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"mem_size_mib":128,"vcpu_count":1}"#
        );
    }
}
