//! Runtime errors: every cause keeps its own type (registry, image, backend,
//! drives, network, tools, agent client), so the CLI prints the whole chain.

use std::time::Duration;

use mvm_core::Status;

/// A life-cycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Registry problem (name taken, not found, corrupt record, forbidden
    /// transition...).
    #[error(transparent)]
    Registry(#[from] mvm_core::registry::RegistryError),
    /// Image problem.
    #[error(transparent)]
    Image(#[from] mvm_image::ImageError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] mvm_core::backend::BackendError),
    /// Drives, volumes, write-back.
    #[error(transparent)]
    Drives(Box<crate::resources::drives::DrivesError>),
    /// Host networking.
    #[error(transparent)]
    Network(Box<crate::resources::network::NetworkError>),
    /// Releasing a VMM's confinement (cgroup, chroot) failed.
    #[error(transparent)]
    Jail(Box<mvm_jail::JailError>),
    /// Egress policy enforcement.
    #[error(transparent)]
    Egress(Box<crate::resources::egress::EgressError>),
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] mvm_core::config::ConfigError),
    /// An external program failed.
    #[error(transparent)]
    Tool(#[from] mvm_core::tools::ToolError),
    /// The machine is not in a state that allows the operation.
    #[error("machine {name:?} is {status}{}", hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    WrongState {
        /// Machine.
        name: String,
        /// Its observed status.
        status: Status,
        /// What to do about it.
        hint: Option<String>,
    },
    /// Talking to the guest agent failed.
    #[error("guest agent of machine {name:?}")]
    Agent {
        /// Machine.
        name: String,
        /// What failed.
        #[source]
        source: mvm_agent_proto::client::ClientError,
    },
    /// The supervisor reported a failed start (its message crosses a process
    /// boundary, so it is text: the whole chain with log tails).
    #[error("machine {name:?} failed to start: {message}")]
    StartFailed {
        /// Machine.
        name: String,
        /// Why (includes log tails when known).
        message: String,
    },
    /// The machine was stopped (`mvm stop`, Ctrl-C) before it was ready.
    #[error("machine {name:?} was stopped before its guest agent answered")]
    StoppedWhileStarting {
        /// Machine.
        name: String,
    },
    /// Something did not happen in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// A prerequisite is missing.
    #[error("{what} is missing; fix: {fix}")]
    Missing {
        /// The missing thing.
        what: String,
        /// The command that fixes it.
        fix: String,
    },
    /// Process handling failed.
    #[error(transparent)]
    Process(#[from] mvm_core::process::ProcessError),
    /// IO error (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A template problem (store, files, compatibility).
    #[error(transparent)]
    Template(Box<mvm_template::TemplateError>),
    /// `--require-snapshot` and the template's snapshot cannot serve the
    /// machine (the reason says why).
    #[error("template {template:?}: {reason} (and --require-snapshot forbids a cold boot)")]
    SnapshotRequired {
        /// The template.
        template: String,
        /// Why a restore is not possible.
        reason: String,
    },
    /// Invalid user input (the message names the input).
    #[error("{0}")]
    Invalid(String),
    /// A fault injected by a test (`MVM_FAULT`, feature `fault-injection`).
    #[error("injected fault at {point}")]
    Injected {
        /// The fault point.
        point: String,
    },
}

impl From<crate::resources::drives::DrivesError> for RuntimeError {
    fn from(e: crate::resources::drives::DrivesError) -> Self {
        Self::Drives(Box::new(e))
    }
}

impl From<mvm_template::TemplateError> for RuntimeError {
    fn from(e: mvm_template::TemplateError) -> Self {
        Self::Template(Box::new(e))
    }
}

impl From<crate::resources::network::NetworkError> for RuntimeError {
    fn from(e: crate::resources::network::NetworkError) -> Self {
        Self::Network(Box::new(e))
    }
}

impl From<crate::resources::egress::EgressError> for RuntimeError {
    fn from(e: crate::resources::egress::EgressError) -> Self {
        Self::Egress(Box::new(e))
    }
}

impl From<mvm_core::egress::EgressError> for RuntimeError {
    fn from(e: mvm_core::egress::EgressError) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<mvm_core::instance::BadTransition> for RuntimeError {
    fn from(e: mvm_core::instance::BadTransition) -> Self {
        Self::Registry(e.into())
    }
}
