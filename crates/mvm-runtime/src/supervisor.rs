//! The per-machine supervisor.
//!
//! One supervisor runs per running machine (`mvm __supervise NAME`, in its
//! own session so it outlives the CLI; or in-process for a transient
//! `mvm exec`). It
//! 1. launches the VMM as its child through the backend,
//! 2. takes the one stream to the guest agent and waits for the agent's
//!    handshake (the moment the machine is "ready"),
//! 3. serves `<instance>/agent.sock`, multiplexing every client onto that
//!    stream,
//! 4. waits for the VMM to exit and records how it ended,
//! 5. removes its sockets.
//!
//! Progress goes to whoever started it as [`Event`]s (JSON lines on stdout
//! for the detached supervisor).

use std::time::{Duration, Instant};

use mvm_core::process::ProcessIdentity;
use mvm_core::registry::Registry;
use mvm_core::{InstanceDir, Status};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;

use crate::RuntimeError;
use crate::backends::AnyBackend;
use crate::machine::Runtime;

/// How long the VMM may take to accept its configuration.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the guest may take from launch to the agent's handshake by
/// default (generous: TCG boots take ~5 s on an idle machine, far more
/// under load).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The boot deadline: `MVM_BOOT_TIMEOUT` seconds, else [`BOOT_TIMEOUT`].
pub fn boot_timeout() -> Duration {
    std::env::var("MVM_BOOT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .unwrap_or(BOOT_TIMEOUT)
}

/// Progress of a supervisor, as seen by the process that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// The VMM accepted its configuration and started the guest.
    Started {
        /// VMM pid.
        vmm_pid: u32,
        /// Milliseconds from supervisor start to this moment.
        launch_ms: u64,
    },
    /// The guest agent answered.
    Ready {
        /// Milliseconds from `started` to the agent's handshake.
        boot_ms: u64,
    },
    /// Start failed; nothing is left running.
    Failed {
        /// Why, with log tails.
        message: String,
    },
}

/// How a supervised VMM ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Human description ("exited with code 0", "killed by signal 9").
    pub description: String,
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".to_string(),
    }
}

/// Remove the machine's runtime sockets (never its data).
pub fn remove_sockets(dir: &InstanceDir) {
    for p in [
        dir.agent_socket(),
        dir.guest_socket(),
        dir.qmp_socket(),
        dir.api_socket(),
    ] {
        match fs_err::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// Record that no VMM runs any more. Idempotent; safe to call from the
/// supervisor and from `mvm stop` racing each other.
pub fn record_stopped(
    registry: &Registry,
    name: &str,
    last_exit: Option<String>,
    error: Option<String>,
) -> Result<(), RuntimeError> {
    registry.update(name, |r| {
        r.status = Status::Stopped;
        r.vmm = None;
        r.supervisor = None;
        // A stopped machine holds no address (as in Docker): the next start
        // allocates one again, under the global lock.
        r.net = None;
        if last_exit.is_some() {
            r.last_exit = last_exit;
        }
        if error.is_some() {
            r.error = error;
        }
        Ok(())
    })?;
    Ok(())
}

/// Run the supervisor for machine `name`, whose record the caller has put
/// in [`Status::Starting`]. Returns when the VMM has exited (or failed to
/// start). `notify` receives [`Event`]s.
pub async fn supervise(
    rt: &Runtime,
    name: &str,
    mut notify: impl FnMut(Event),
) -> Result<Ended, RuntimeError> {
    let t0 = Instant::now();
    let registry = &rt.registry;
    let dir = registry.dir(name);
    let me = ProcessIdentity::current();
    let (record, ()) = registry.update(name, |r| {
        r.supervisor = Some(me);
        r.error = None;
        Ok(())
    })?;

    let fail = |message: String| -> RuntimeError {
        RuntimeError::StartFailed {
            name: name.to_owned(),
            message,
        }
    };

    let prepared = async {
        let backend = AnyBackend::for_record(&record, &rt.config, &rt.home)?;
        crate::data::check_volumes_free(rt, &record)?;
        crate::data::prepare_start(&record, &dir)?;
        let spec = rt.spec_for(&record)?;
        remove_sockets(&dir);
        // Host side of the network (bridge, TAP, forwarders); dropped —
        // TAP deleted, forwarders stopped — when this function returns.
        let network = crate::net::start(&rt.config, registry, &record).await?;
        Ok::<_, RuntimeError>((backend, spec, network))
    }
    .await;
    let (backend, spec, _network) = match prepared {
        Ok(x) => x,
        Err(e) => {
            let msg = crate::error_chain(&e);
            record_stopped(registry, name, None, Some(msg.clone()))?;
            notify(Event::Failed { message: msg });
            return Err(e);
        }
    };

    let mut running = match backend
        .launch(&spec, &dir, Instant::now() + LAUNCH_TIMEOUT)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            record_stopped(registry, name, None, Some(msg.clone()))?;
            notify(Event::Failed {
                message: msg.clone(),
            });
            return Err(fail(msg));
        }
    };
    let vmm_pid = running.child.id().unwrap_or_default();
    let vmm = ProcessIdentity::of(vmm_pid);
    // "running" means the VMM runs the guest (as Docker's "running" means
    // the process runs); the agent's readiness is the separate `ready` event.
    registry.update(name, |r| {
        r.vmm = vmm;
        r.started_at = Some(time::OffsetDateTime::now_utc());
        if r.status == Status::Starting {
            Registry::set_status(r, Status::Running)?;
        }
        Ok(())
    })?;
    let launch_ms = t0.elapsed().as_millis() as u64;
    notify(Event::Started { vmm_pid, launch_ms });
    let t_started = Instant::now();

    // Everything from here on must end with the VMM gone if it fails.
    // One deadline for reaching the agent and its handshake.
    let boot_deadline = t_started + boot_timeout();
    let ready = async {
        let guest = match running.guest.take() {
            Some(s) => s,
            None => backend
                .connect_guest(&dir, boot_deadline)
                .await
                .map_err(|e| e.with_logs(&dir))?,
        };
        let link = mvm_agent_proto::mux::wait_guest_ready(guest, boot_deadline)
            .await
            .map_err(|e| {
                mvm_core::backend::BackendError::new(
                    backend.kind(),
                    format!("the guest agent did not answer: {e}"),
                )
                .with_logs(&dir)
            })?;
        let listener = UnixListener::bind(dir.agent_socket())?;
        Ok::<_, RuntimeError>((link, listener))
    };
    let ready = tokio::select! {
        r = ready => r,
        status = running.child.wait() => {
            let desc = status.map(describe).unwrap_or_else(|e| e.to_string());
            Err(fail(
                mvm_core::backend::BackendError::new(
                    backend.kind(),
                    format!("the VMM {desc} before the guest agent answered"),
                )
                .with_logs(&dir)
                .to_string(),
            ))
        }
    };
    let (link, listener) = match ready {
        Ok(x) => x,
        Err(e) => {
            let _ = running.child.start_kill();
            let status = running.child.wait().await.ok();
            let msg = crate::error_chain(&e);
            remove_sockets(&dir);
            // `mvm stop` before the agent answered is not a failure.
            let stop_requested = registry
                .load(name)
                .is_ok_and(|r| r.status == Status::Stopping);
            let error = (!stop_requested).then(|| msg.clone());
            record_stopped(registry, name, status.map(describe), error)?;
            notify(Event::Failed { message: msg });
            return Err(e);
        }
    };

    notify(Event::Ready {
        boot_ms: t_started.elapsed().as_millis() as u64,
    });

    // Serve clients until the VMM exits. A lost guest stream does not end
    // the machine (the guest may be rebooting or shutting down); the VMM's
    // exit does.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let serve = mvm_agent_proto::mux::serve(link, listener, std::future::pending::<()>());
    tokio::pin!(serve);
    let mut serving = true;
    let status = loop {
        tokio::select! {
            status = running.child.wait() => break status,
            r = &mut serve, if serving => {
                serving = false;
                if let Err(e) = r {
                    tracing::info!("guest agent stream ended: {e}");
                }
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: killing the VMM");
                let _ = running.child.start_kill();
            }
        }
    };
    let description = status
        .map(describe)
        .unwrap_or_else(|e| format!("unknown ({e})"));
    tracing::info!("VMM {description}");
    remove_sockets(&dir);
    // Host directories are written back once the VMM is gone.
    let wb_error = crate::data::write_back_all(&dir).err().map(|e| {
        let msg = crate::error_chain(&e);
        tracing::error!("{msg}");
        msg
    });
    record_stopped(registry, name, Some(description.clone()), wb_error)?;
    Ok(Ended { description })
}
