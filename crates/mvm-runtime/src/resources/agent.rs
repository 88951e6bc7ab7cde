//! The way in to a running machine's guest agent: `<instance>/agent.sock`,
//! served by the machine's supervisor (which multiplexes every client onto
//! the one guest stream).

use std::time::{Duration, Instant};

use mvm_agent_proto::client::AgentClient;
use mvm_core::InstanceDir;

use crate::RuntimeError;

/// How long connecting to a running machine's agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect to the agent of the machine of `dir`.
pub async fn connect(dir: &InstanceDir) -> Result<AgentClient, RuntimeError> {
    AgentClient::connect_unix(&dir.agent_socket(), Instant::now() + CONNECT_TIMEOUT)
        .await
        .map_err(|source| RuntimeError::Agent {
            name: dir.name(),
            source,
        })
}

/// Ask the guest agent to power the machine off (it syncs first).
pub async fn request_shutdown(dir: &InstanceDir) -> Result<(), RuntimeError> {
    connect(dir)
        .await?
        .shutdown()
        .await
        .map_err(|source| RuntimeError::Agent {
            name: dir.name(),
            source,
        })
}
