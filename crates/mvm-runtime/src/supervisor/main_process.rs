//! The supervisor's side of a machine's main process (`mvm run IMAGE`).
//!
//! Once the guest is ready, the supervisor asks its guest agent
//! (`WaitMain`, protocol 2) for the main process's end, as one more
//! client of the machine's agent socket, while it serves the others. When
//! the answer comes, it records [`MainExit`] in the record, marks the
//! machine `Stopping` and lets the guest power off (the agent does so right
//! after answering; the supervisor's usual graceful stop backs that up).
//! The machine's `last_exit` then says how the main process ended
//! (`main process exited with code 3`), which `mvm ps` and `mvm inspect`
//! show.

use mvm_agent_proto::ExitStatus;
use mvm_agent_proto::client::ClientError;
use mvm_core::main_process::MainExit;
use mvm_core::{InstanceDir, Status};

use crate::{Runtime, RuntimeError};

/// How many times a lost `WaitMain` link is made again while the VMM runs.
pub const WAIT_RETRIES: u32 = 5;

/// Wait until the main process of the machine of `dir` has exited (after
/// `delay`: a retry's back-off); never returns when `has_main` is false.
pub async fn wait(
    dir: &InstanceDir,
    has_main: bool,
    delay: std::time::Duration,
) -> Result<ExitStatus, RuntimeError> {
    if !has_main {
        return std::future::pending().await;
    }
    if delay.is_zero() {
        // The first ask only: a test breaks it to see the supervisor ask again.
        crate::fault::point("sup.main_wait", None)?;
    }
    tokio::time::sleep(delay).await;
    let client = crate::resources::agent::connect(dir).await?;
    client
        .wait_main()
        .await
        .map_err(|source| RuntimeError::Agent {
            name: dir.name(),
            source,
        })
}

/// What the end of a [`wait`] means for the machine.
pub enum Ended {
    /// The main process ended: the machine stops, described so.
    Exited(String),
    /// The guest cannot run a main process: the machine stops with this
    /// error.
    Unsupported(String),
    /// The agent link went away: the guest is going down, or the link
    /// broke; the supervisor asks again while the VMM runs (the agent keeps
    /// the status, and powers off by itself when nobody asks).
    Lost,
}

/// Record how the main process of machine `name` ended (or why it cannot
/// run), and mark the machine `Stopping` when it should stop.
pub fn ended(rt: &Runtime, name: &str, r: Result<ExitStatus, RuntimeError>) -> Ended {
    let outcome = match r {
        Ok(st) => {
            let exit = MainExit {
                code: st.code,
                signal: st.signal,
                at: time::OffsetDateTime::now_utc(),
            };
            tracing::info!("machine {name:?}: {exit}");
            let description = exit.to_string();
            if let Err(e) = rt.registry().update(name, |r| {
                r.main_exit = Some(exit.clone());
                Ok(())
            }) {
                tracing::warn!("{}", crate::error_chain(&e));
            }
            Ended::Exited(description)
        }
        Err(RuntimeError::Agent {
            source: e @ ClientError::Unsupported { .. },
            ..
        }) => Ended::Unsupported(format!(
            "{e}: the image's guest agent is too old to run its main process; \
             remove and pull (or build) the image again"
        )),
        Err(e) => {
            tracing::info!(
                "machine {name:?}: no status of the main process: {}",
                crate::error_chain(&e)
            );
            return Ended::Lost;
        }
    };
    let r = rt.registry().update(name, |r| {
        if let Ended::Unsupported(msg) = &outcome {
            r.error = Some(msg.clone());
        }
        if r.status().can_become(Status::Stopping) {
            r.transition(Status::Stopping)?;
        }
        Ok(())
    });
    if let Err(e) = r {
        tracing::warn!("{}", crate::error_chain(&e));
    }
    outcome
}
